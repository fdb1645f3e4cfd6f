//! A moka-backed secret cache that keyvault-invalidator keeps fresh.
//!
//! [`CachedSecretProvider`] sits in front of any [`SecretProvider`]:
//! - **single flight**: a thousand concurrent readers of a cold secret cause one provider call
//!   (moka's `try_get_with` coalesces them), and a rotation costs one call however many
//!   readers there are;
//! - **refresh-ahead** (the default [`RefreshMode`]): a new-version event loads the new value and
//!   swaps it in while readers keep getting the previous one; they never wait for the vault.
//!   The event is answered `Ok` (and the job settles its delivery) only once the cache holds
//!   the event's version or a newer one: a provider still answering an older version (a
//!   lagging replica) makes it read the event's version by id
//!   ([`SecretProvider::get_secret_version`]), and a failure that may pass is a retryable
//!   error, with the provider's `Retry-After`, so the job retries the event.
//!   [`RefreshMode::Invalidate`] drops the entry instead and the next reader loads;
//! - **version awareness**: an event for the version already cached, or for an older one
//!   (a version it replaced, or an event from before the cached version was created), costs
//!   nothing; duplicates and redeliveries are common;
//! - **races**: an invalidation that lands while a load is in flight is never undone by that
//!   load;
//! - **serve stale on error, bounded**: while the provider throttles or fails transiently, the
//!   last good value is served for up to [`CacheOptions::max_staleness`], retries back off and
//!   honour `Retry-After`; critical errors (access denied) always reach the reader;
//! - **jitter** before refreshes, so a fleet does not stampede the vault;
//! - **tell the app**: [`CachedSecretProvider::subscribe`] yields the new version after a
//!   refresh;
//! - **numbers**: [`CacheStats`] and per-secret [`SecretInfo`] (version, age, overdue time);
//! - a **time-to-live** (default 30 minutes) as the safety net for lost events; keys compare
//!   without regard to ASCII case, as Key Vault names do.
//!
//! It implements [`SecretCache`](keyvault_invalidator_core::SecretCache) (so the job can change
//! it) and [`SecretProvider`] (so the application reads through it).
//!
//! ```
//! use keyvault_invalidator_core::{NewVersion, SecretCache, secrecy::ExposeSecret};
//! use keyvault_invalidator_moka::CachedSecretProvider;
//! use keyvault_invalidator_testkit::InMemoryVault;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let vault = InMemoryVault::new();
//! vault.set("db-password", "v1");
//! let cache = CachedSecretProvider::new(vault.clone());
//! let mut versions = cache.subscribe("db-password").await;
//!
//! assert_eq!(cache.get("db-password").await.unwrap().value().expose_secret(), "v1");
//! let v2 = vault.rotate("db-password", "v2");
//! cache.new_version("db-password", &NewVersion::to(&v2)).await.unwrap(); // the event
//! assert_eq!(cache.get("db-password").await.unwrap().value().expose_secret(), "v2");
//! assert_eq!(versions.borrow_and_update().as_deref(), Some(v2.as_str()));
//!
//! cache.new_version("db-password", &NewVersion::to(&v2)).await.unwrap(); // a redelivery
//! assert_eq!(vault.calls("db-password"), 2);
//! # }
//! ```
//!
//! No OS thread: moka 0.12's `future::Cache` runs its upkeep on the callers' tasks, and the
//! cache's refreshes are tasks on the application's tokio runtime.
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cache;
mod options;
mod stats;

use std::time::Duration;

use keyvault_invalidator_core::{Backoff, SecretProvider};

pub use cache::CachedSecretProvider;
pub use options::{
    CacheOptions, RefreshMode, DEFAULT_MAX_CAPACITY, DEFAULT_MAX_STALENESS, DEFAULT_TIME_TO_LIVE,
};
pub use stats::{CacheStats, SecretInfo};

/// Configures a [`CachedSecretProvider`]; every setting is a [`CacheOptions`] field.
#[derive(Debug, Clone)]
pub struct CachedSecretProviderBuilder<P> {
    provider: P,
    options: CacheOptions,
}

impl<P: SecretProvider + 'static> CachedSecretProviderBuilder<P> {
    pub(crate) fn new(provider: P) -> Self {
        CachedSecretProviderBuilder {
            provider,
            options: CacheOptions::default(),
        }
    }

    /// See [`CacheOptions::mode`].
    pub fn mode(mut self, mode: RefreshMode) -> Self {
        self.options.mode = mode;
        self
    }

    /// See [`CacheOptions::time_to_live`].
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.options.time_to_live = ttl;
        self
    }

    /// See [`CacheOptions::max_capacity`].
    pub fn max_capacity(mut self, capacity: u64) -> Self {
        self.options.max_capacity = capacity;
        self
    }

    /// See [`CacheOptions::refresh_jitter`].
    pub fn refresh_jitter(mut self, bound: Duration) -> Self {
        self.options.refresh_jitter = Some(bound);
        self
    }

    /// See [`CacheOptions::max_staleness`].
    pub fn max_staleness(mut self, bound: Duration) -> Self {
        self.options.max_staleness = bound;
        self
    }

    /// See [`CacheOptions::retry_backoff`].
    pub fn retry_backoff(mut self, backoff: Backoff) -> Self {
        self.options.retry_backoff = backoff;
        self
    }

    /// See [`CacheOptions::max_refresh_attempts`].
    pub fn max_refresh_attempts(mut self, attempts: u32) -> Self {
        self.options.max_refresh_attempts = attempts;
        self
    }

    /// Builds the cache.
    pub fn build(self) -> CachedSecretProvider<P> {
        CachedSecretProvider::with_options(self.provider, self.options)
    }
}
