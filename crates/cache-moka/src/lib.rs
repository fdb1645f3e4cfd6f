//! A moka-backed secret cache that keyvault-invalidator keeps fresh.
//!
//! [`CachedSecretProvider`] sits in front of any [`SecretProvider`]:
//! - reads go through the cache; a thousand concurrent readers of a cold (or just invalidated)
//!   secret cause exactly one provider call (moka's `try_get_with` coalesces them);
//! - an invalidation that lands while a load is in flight is never undone by that load: the
//!   stale result is detected and loaded again;
//! - a time-to-live (default 30 minutes) is the safety net for lost events; events do the real
//!   work;
//! - keys are compared without regard to ASCII case, as Key Vault compares names;
//! - it implements [`SecretCache`] (so the job can invalidate it) and [`SecretProvider`] (so the
//!   application reads through it).
//!
//! ```
//! use keyvault_invalidator_core::{SecretCache, SecretProvider, secrecy::ExposeSecret};
//! use keyvault_invalidator_moka::CachedSecretProvider;
//! use keyvault_invalidator_testkit::InMemoryVault;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let vault = InMemoryVault::new();
//! vault.set("db-password", "v1");
//! let cache = CachedSecretProvider::new(vault.clone());
//!
//! assert_eq!(cache.get("db-password").await.unwrap().value().expose_secret(), "v1");
//! vault.rotate("db-password", "v2");
//! assert_eq!(cache.get("db-password").await.unwrap().value().expose_secret(), "v1"); // cached
//! cache.invalidate("db-password").await.unwrap();                                      // the event
//! assert_eq!(cache.get("db-password").await.unwrap().value().expose_secret(), "v2");
//! assert_eq!(vault.calls("db-password"), 2);
//! # }
//! ```
#![warn(missing_docs)]

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keyvault_invalidator_core::{CacheError, ProviderError, Secret, SecretCache, SecretProvider};

/// The default time-to-live: a safety net for lost events.
pub const DEFAULT_TIME_TO_LIVE: Duration = Duration::from_secs(30 * 60);
/// The default number of cached secrets.
pub const DEFAULT_MAX_CAPACITY: u64 = 10_000;
/// How many times a read retries a load that an invalidation overtook before it reads the
/// provider directly.
const MAX_OVERTAKEN_LOADS: usize = 3;

/// A single-flight, invalidatable cache in front of a [`SecretProvider`]. Clones share the cache.
pub struct CachedSecretProvider<P> {
    inner: Arc<Inner<P>>,
}

impl<P> Clone for CachedSecretProvider<P> {
    fn clone(&self) -> Self {
        CachedSecretProvider {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<P> {
    provider: P,
    entries: moka::future::Cache<String, Entry>,
    /// Bumped by every invalidation; an entry remembers its value at the start of its load.
    epoch: AtomicU64,
    /// The epoch of each key's last invalidation. An entry whose load started before that is
    /// stale. Kept in a bounded, idle-expiring moka cache: an eviction can only matter for a key
    /// with a load in flight across its eviction, which the idle time makes negligible.
    invalidated_at: moka::sync::Cache<String, u64>,
    counters: Counters,
}

#[derive(Clone)]
struct Entry {
    secret: Secret,
    loaded_at_epoch: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    load_errors: AtomicU64,
    invalidations: AtomicU64,
    overtaken_loads: AtomicU64,
}

/// The cache's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads served from the cache.
    pub hits: u64,
    /// Reads that had to wait for a load.
    pub misses: u64,
    /// Calls to the provider.
    pub loads: u64,
    /// Provider calls that failed.
    pub load_errors: u64,
    /// Invalidations received.
    pub invalidations: u64,
    /// Loads whose result an invalidation made stale before it was used.
    pub overtaken_loads: u64,
    /// Entries in the cache now (approximate, as moka counts them).
    pub entries: u64,
}

/// Configures a [`CachedSecretProvider`].
#[derive(Debug, Clone)]
pub struct CachedSecretProviderBuilder<P> {
    provider: P,
    time_to_live: Duration,
    max_capacity: u64,
}

impl<P: SecretProvider> CachedSecretProviderBuilder<P> {
    /// How long a value may be served without an event (default 30 minutes).
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.time_to_live = ttl;
        self
    }

    /// How many secrets the cache holds at most (default 10,000).
    pub fn max_capacity(mut self, capacity: u64) -> Self {
        self.max_capacity = capacity;
        self
    }

    /// Builds the cache.
    pub fn build(self) -> CachedSecretProvider<P> {
        let entries = moka::future::Cache::builder()
            .max_capacity(self.max_capacity)
            .time_to_live(self.time_to_live)
            .build();
        let invalidated_at = moka::sync::Cache::builder()
            .max_capacity(self.max_capacity.saturating_mul(10).max(10_000))
            .time_to_idle(self.time_to_live.max(Duration::from_secs(3600)))
            .build();
        CachedSecretProvider {
            inner: Arc::new(Inner {
                provider: self.provider,
                entries,
                epoch: AtomicU64::new(0),
                invalidated_at,
                counters: Counters::default(),
            }),
        }
    }
}

fn cache_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl<P: SecretProvider> CachedSecretProvider<P> {
    /// A cache with the defaults in front of `provider`.
    pub fn new(provider: P) -> Self {
        Self::builder(provider).build()
    }

    /// Starts configuring a cache in front of `provider`.
    pub fn builder(provider: P) -> CachedSecretProviderBuilder<P> {
        CachedSecretProviderBuilder {
            provider,
            time_to_live: DEFAULT_TIME_TO_LIVE,
            max_capacity: DEFAULT_MAX_CAPACITY,
        }
    }

    /// The wrapped provider.
    pub fn provider(&self) -> &P {
        &self.inner.provider
    }

    /// Reads `name` through the cache. Concurrent reads of a missing entry share one provider
    /// call. Errors are not cached.
    pub async fn get(&self, name: &str) -> Result<Secret, ProviderError> {
        let inner = &self.inner;
        let key = cache_key(name);
        if let Some(entry) = inner.entries.get(&key).await {
            if self.is_fresh(&key, &entry) {
                bump(&inner.counters.hits);
                return Ok(entry.secret);
            }
        }
        bump(&inner.counters.misses);
        for _ in 0..MAX_OVERTAKEN_LOADS {
            let entry = inner
                .entries
                .try_get_with(key.clone(), self.load(name))
                .await
                .map_err(|shared| shared_error(name, shared))?;
            if self.is_fresh(&key, &entry) {
                return Ok(entry.secret);
            }
            // An invalidation arrived after this value's load began: it may predate the
            // rotation. Drop it and load again.
            bump(&inner.counters.overtaken_loads);
            inner.entries.invalidate(&key).await;
        }
        self.get_uncached(name).await
    }

    /// Reads `name` from the provider, bypassing the cache, and stores the result.
    pub async fn get_uncached(&self, name: &str) -> Result<Secret, ProviderError> {
        let entry = self.load(name).await?;
        let secret = entry.secret.clone();
        self.inner.entries.insert(cache_key(name), entry).await;
        Ok(secret)
    }

    async fn drop_entry(&self, name: &str) {
        let inner = &self.inner;
        let key = cache_key(name);
        let epoch = inner.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        inner.invalidated_at.insert(key.clone(), epoch);
        inner.entries.invalidate(&key).await;
        bump(&inner.counters.invalidations);
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            hits: get(&c.hits),
            misses: get(&c.misses),
            loads: get(&c.loads),
            load_errors: get(&c.load_errors),
            invalidations: get(&c.invalidations),
            overtaken_loads: get(&c.overtaken_loads),
            entries: self.inner.entries.entry_count(),
        }
    }

    fn is_fresh(&self, key: &str, entry: &Entry) -> bool {
        let invalidated_at = self.inner.invalidated_at.get(key).unwrap_or(0);
        entry.loaded_at_epoch >= invalidated_at
    }

    async fn load(&self, name: &str) -> Result<Entry, ProviderError> {
        let inner = &self.inner;
        // Read before the call: an invalidation from here on makes this load stale.
        let loaded_at_epoch = inner.epoch.load(Ordering::SeqCst);
        bump(&inner.counters.loads);
        match inner.provider.get_secret(name).await {
            Ok(secret) => Ok(Entry {
                secret,
                loaded_at_epoch,
            }),
            Err(error) => {
                bump(&inner.counters.load_errors);
                Err(error)
            }
        }
    }
}

/// moka hands every coalesced reader the same `Arc` of the loader's error; give each its own.
fn shared_error(name: &str, shared: Arc<ProviderError>) -> ProviderError {
    ProviderError::new(name, shared.kind, shared.message.clone()).with_source(shared)
}

impl<P> fmt::Debug for CachedSecretProvider<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedSecretProvider")
            .field("entries", &self.inner.entries.entry_count())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<P: SecretProvider> SecretCache for CachedSecretProvider<P> {
    /// Drops the cached value of `key`; the next read loads it. Loads in flight now will not
    /// put their (possibly older) value back. Never fails.
    async fn invalidate(&self, key: &str) -> Result<(), CacheError> {
        self.drop_entry(key).await;
        Ok(())
    }
}

#[async_trait]
impl<P: SecretProvider> SecretProvider for CachedSecretProvider<P> {
    async fn get_secret(&self, name: &str) -> Result<Secret, ProviderError> {
        self.get(name).await
    }
}
