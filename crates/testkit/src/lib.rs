//! Test doubles for keyvault-invalidator: run the job hermetically and test your own adapters
//! the same way the project tests its own.
//!
//! - [`InMemoryEventSource`]: a peek-lock queue with a publisher handle and a settlement log.
//! - [`RecordingCache`]: a [`SecretCache`](keyvault_invalidator_core::SecretCache) that records
//!   calls, with fault injection.
//! - [`InMemoryVault`]: a versioned [`SecretProvider`](keyvault_invalidator_core::SecretProvider)
//!   with `rotate`.
//! - [`KeyVaultEventBuilder`]: Event Grid and CloudEvents payloads with every real-world quirk.
//! - [`conformance`]: the suite every `EventSource` must pass.
//! - [`mocks`]: `mockall` mocks of the core traits.
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cache;
pub mod conformance;
#[cfg(feature = "eventgrid-namespace")]
#[cfg_attr(docsrs, doc(cfg(feature = "eventgrid-namespace")))]
pub mod eventgrid_namespace;
#[cfg(feature = "eventgrid-push")]
#[cfg_attr(docsrs, doc(cfg(feature = "eventgrid-push")))]
pub mod eventgrid_push;
pub mod events;
#[cfg(feature = "keyvault-standin")]
#[cfg_attr(docsrs, doc(cfg(feature = "keyvault-standin")))]
pub mod keyvault_standin;
mod logs;
#[cfg(feature = "keyvault-standin")]
mod loopback;
pub mod mocks;
mod source;
mod vault;
mod wait;

pub use cache::{CacheCall, RecordingCache};
pub use events::{KeyVaultEventBuilder, TimeStyle};
pub use logs::CapturedLogs;
pub use source::{
    DeadLetteredMessage, InMemoryEventSource, InMemoryPublisher, SettlementLog, SettlementRecord,
    WAIT_TIMEOUT,
};
pub use vault::InMemoryVault;
pub use wait::{eventually, EVENTUALLY_TIMEOUT};

/// The Service Bus emulator (the `keyvault-invalidator-servicebus-emulator` crate), with the
/// `servicebus-emulator` feature.
#[cfg(feature = "servicebus-emulator")]
#[cfg_attr(docsrs, doc(cfg(feature = "servicebus-emulator")))]
pub use keyvault_invalidator_servicebus_emulator as servicebus_emulator;
