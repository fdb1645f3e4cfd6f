//! Secret providers for keyvault-invalidator, and a store that composes them.
//!
//! - [`KeyVaultProvider`] (feature `azure`, on by default): Azure Key Vault through the official
//!   Azure SDK (`azure_security_keyvault_secrets` 1.x), with [`credential`] helpers for managed
//!   identity, workload identity and developer logins.
//! - [`EnvProvider`]: environment variables (`ServiceBus:ConnectionString` reads
//!   `SERVICEBUS_CONNECTIONSTRING`).
//! - [`StaticProvider`]: fixed in-memory values.
//! - [`SecretStore`]: providers asked in order, with per-provider name mapping; only *not
//!   found* moves on to the next provider, while throttled, transient and critical errors are
//!   returned as they are (so a cache above serves its stale value rather than a default),
//!   except that providers added with [`SecretStoreBuilder::fallback`] are also asked after a
//!   non-critical failure; [`SecretStore::connection_string`] reads a connection string in one
//!   line.
//!
//! Every provider implements [`SecretProvider`](keyvault_invalidator_core::SecretProvider), so
//! any of them, or a store of them, can sit under the cache the invalidation job keeps fresh.
//! Values are [`SecretString`](keyvault_invalidator_core::secrecy::SecretString)s and never
//! appear in `Debug`, errors or logs.
//!
//! ```
//! use keyvault_invalidator_core::{secrecy::ExposeSecret, ProviderErrorKind, SecretProvider};
//! use keyvault_invalidator_secrets::{EnvProvider, SecretStore, StaticProvider};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = SecretStore::builder()
//!     .add("environment", EnvProvider::builder().vars([("API_KEY", "from-env")]).build())
//!     .add("defaults", StaticProvider::new([("api-key", "default"), ("region", "westeurope")]))
//!     .build();
//! assert_eq!(store.get_secret("api-key").await.unwrap().value().expose_secret(), "from-env");
//! assert_eq!(store.get_secret("region").await.unwrap().value().expose_secret(), "westeurope");
//! assert_eq!(store.get_secret("missing").await.unwrap_err().kind, ProviderErrorKind::NotFound);
//! # }
//! ```
//!
//! Threads: none of its own. With the `azure` feature, the Azure SDK's workload identity
//! credential reads its token file on a short-lived thread (at most every ten minutes), the
//! developer credentials run the Azure CLI from one, and `reqwest` resolves names on tokio's
//! blocking pool. No process-wide rustls provider is installed: `reqwest` uses the installed
//! one, or its own without installing it.
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod env;
mod error;
#[cfg(feature = "azure")]
mod keyvault;
mod static_provider;
mod store;

pub use env::{EnvProvider, EnvProviderBuilder};
pub use error::{ConfigError, ProviderFailure, StoreFailures};
#[cfg(feature = "azure")]
#[cfg_attr(docsrs, doc(cfg(feature = "azure")))]
pub use keyvault::{credential, KeyVaultProvider, KeyVaultProviderBuilder, DEFAULT_TIMEOUT};
pub use static_provider::{StaticProvider, StaticProviderBuilder};
pub use store::{read_connection_string, SecretStore, SecretStoreBuilder};

/// The Azure SDK crates this one builds on, so applications name the same versions
/// (`azure_core::credentials::TokenCredential`, `azure_core::http::RetryOptions`).
#[cfg(feature = "azure")]
#[cfg_attr(docsrs, doc(cfg(feature = "azure")))]
pub use {azure_core, azure_identity};
