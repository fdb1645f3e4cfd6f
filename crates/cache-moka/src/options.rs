//! How a [`CachedSecretProvider`](crate::CachedSecretProvider) behaves.

use std::time::Duration;

use keyvault_invalidator_core::Backoff;

/// The default time-to-live: a safety net for lost events.
pub const DEFAULT_TIME_TO_LIVE: Duration = Duration::from_secs(30 * 60);
/// The default number of cached secrets.
pub const DEFAULT_MAX_CAPACITY: u64 = 10_000;
/// The default bound on serving a value after it should have been replaced, when the provider
/// is throttling or failing.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(15 * 60);

/// What the cache does when told that a secret has a new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RefreshMode {
    /// Load the new version in the background (one provider call however many readers) and
    /// swap it in; readers keep getting the previous value until then and never wait for the
    /// provider. Time-to-live expiry refreshes the same way.
    #[default]
    RefreshAhead,
    /// Drop the entry; the next reader loads the new version (and waits for it).
    Invalidate,
}

/// The cache's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CacheOptions {
    /// Invalidate or refresh ahead. Default [`RefreshMode::RefreshAhead`].
    pub mode: RefreshMode,
    /// How long a value is served without an event before it is reloaded. Default 30 minutes.
    pub time_to_live: Duration,
    /// How many secrets the cache holds. Default 10,000.
    pub max_capacity: u64,
    /// Before a refresh, wait a random time up to this bound, so a fleet of instances told of
    /// the same rotation at the same instant does not hit the vault together. Default none.
    pub refresh_jitter: Option<Duration>,
    /// How long after it should have been replaced a value may still be served while the
    /// provider throttles or fails transiently. Past it, readers get the provider's error.
    /// Critical errors are never hidden. Default 15 minutes.
    pub max_staleness: Duration,
    /// The wait between failed refresh attempts, raised to the provider's `Retry-After` when it
    /// gives one. Default 1 s doubling to 60 s.
    pub retry_backoff: Backoff,
    /// How many failed attempts a background refresh makes before leaving the next one to the
    /// next event, time-to-live expiry or read. Default 10.
    pub max_refresh_attempts: u32,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            mode: RefreshMode::default(),
            time_to_live: DEFAULT_TIME_TO_LIVE,
            max_capacity: DEFAULT_MAX_CAPACITY,
            refresh_jitter: None,
            max_staleness: DEFAULT_MAX_STALENESS,
            retry_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            max_refresh_attempts: 10,
        }
    }
}
