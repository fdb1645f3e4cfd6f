//! # keyvault-invalidator
//!
//! Keeps an application's cached secrets fresh. When a secret gets a new version in Azure Key
//! Vault, Key Vault emits `Microsoft.KeyVault.SecretNewVersionCreated`; Event Grid delivers it to
//! a transport; the [`Job`] in every instance receives it and invalidates that secret in the
//! application's in-process cache. No polling, no stale connection strings after a rotation, no
//! restart.
//!
//! This crate is the bundle applications depend on: it re-exports the core traits and engine
//! ([`keyvault_invalidator_core`]) and, behind features, the adapters:
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `moka` | yes | [`CachedSecretProvider`], the moka-backed cache (refresh-ahead, version aware) |
//! | `secrets` | no | `secrets`: environment and static providers, the composite `SecretStore` |
//! | `azure` | no | `secrets::KeyVaultProvider` on the official Azure SDK (implies `secrets`) |
//! | `rabbitmq` | no | `rabbitmq`: the RabbitMQ transport and `rabbitmq::spawn_job` |
//! | `servicebus` | no | `servicebus`: the Azure Service Bus transport and its two registrations |
//! | `testkit` | no | `testkit`: in-memory source, vault, recording cache, event builders |
//!
//! ```
//! use keyvault_invalidator::prelude::*;
//! use keyvault_invalidator_testkit::{InMemoryEventSource, InMemoryVault, KeyVaultEventBuilder};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let vault = InMemoryVault::new();
//! vault.set("db-password", "v1");
//! let cache = CachedSecretProvider::new(vault.clone());
//! let source = InMemoryEventSource::new();
//! let publisher = source.publisher();
//!
//! let job = Job::builder(source, KeyVaultInvalidator::builder(cache.clone()).allow_vault("sample-kv").build())
//!     .spawn()?;
//!
//! assert_eq!(cache.get("db-password").await?.value().expose_secret(), "v1");
//! let v2 = vault.rotate("db-password", "v2");
//! publisher.publish("m1", KeyVaultEventBuilder::secret_new_version("db-password").version(&v2).now().event_grid_bytes());
//! publisher.wait_for_settlements(1).await;
//! assert_eq!(cache.get("db-password").await?.value().expose_secret(), "v2");
//!
//! job.shutdown().await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use keyvault_invalidator_core::*;

/// The moka-backed cache.
#[cfg(feature = "moka")]
#[cfg_attr(docsrs, doc(cfg(feature = "moka")))]
pub use keyvault_invalidator_moka::{
    CacheOptions, CacheStats, CachedSecretProvider, CachedSecretProviderBuilder, RefreshMode,
    SecretInfo,
};

/// Secret providers (feature `secrets`; Azure Key Vault with feature `azure`).
#[cfg(feature = "secrets")]
#[cfg_attr(docsrs, doc(cfg(feature = "secrets")))]
pub use keyvault_invalidator_secrets as secrets;

#[cfg(feature = "rabbitmq")]
#[cfg_attr(docsrs, doc(cfg(feature = "rabbitmq")))]
pub mod rabbitmq;

#[cfg(feature = "servicebus")]
#[cfg_attr(docsrs, doc(cfg(feature = "servicebus")))]
pub mod servicebus;

/// The Event Grid transports: a webhook Event Grid pushes to, and pull from a namespace topic
/// (feature `eventgrid`).
#[cfg(feature = "eventgrid")]
#[cfg_attr(docsrs, doc(cfg(feature = "eventgrid")))]
pub use keyvault_invalidator_eventgrid as eventgrid;

/// Test doubles and the conformance suite (feature `testkit`).
#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
pub use keyvault_invalidator_testkit as testkit;

/// What most applications need, in one import.
pub mod prelude {
    #[cfg(feature = "moka")]
    #[cfg_attr(docsrs, doc(cfg(feature = "moka")))]
    pub use keyvault_invalidator_moka::{CachedSecretProvider, RefreshMode};

    pub use keyvault_invalidator_core::secrecy::ExposeSecret;
    pub use keyvault_invalidator_core::{
        CancellationToken, EventSource, Invalidator, Job, JobHandle, KeyVaultEventType,
        KeyVaultInvalidator, MappedNames, NameMapping, SecretCache, SecretProvider,
    };
}
