//! The cache itself: [`CachedSecretProvider`]'s public API and the state its clones share.
//!
//! How a read goes through the cache is in `load`, how an event changes it in `refresh`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use keyvault_invalidator_core::{
    NewVersion, ProviderError, ProviderErrorKind, Secret, SecretProvider,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::options::{CacheOptions, RefreshMode};
use crate::stats::{bump, CacheStats, Counters, SecretInfo};

mod load;
mod refresh;

/// How many times a read retries a load that an invalidation overtook before it reads the
/// provider directly.
const MAX_OVERTAKEN_LOADS: usize = 3;
/// How many replaced versions an entry remembers, to recognise events for older versions.
const REMEMBERED_VERSIONS: usize = 8;

/// A single-flight, event-driven cache in front of a [`SecretProvider`]. Clones share the cache.
///
/// See the [crate documentation](crate) for what it guarantees.
pub struct CachedSecretProvider<P> {
    inner: Arc<SharedCache<P>>,
}

impl<P> Clone for CachedSecretProvider<P> {
    fn clone(&self) -> Self {
        CachedSecretProvider {
            inner: self.inner.clone(),
        }
    }
}

/// The hasher of the cache's maps. moka's default, SipHash, was the largest single cost of a hit
/// and of an event (profiled in `bench/`); foldhash is several times faster and still seeded
/// per map, which is enough for keys that are secret names chosen by the application and its
/// vault.
type Hasher = foldhash::fast::RandomState;

/// What every clone of a [`CachedSecretProvider`] shares: the provider, the entries and the
/// per-key coordination around them.
struct SharedCache<P> {
    provider: P,
    options: CacheOptions,
    entries: moka::future::Cache<String, Arc<CachedEntry>, Hasher>,
    /// Bumped by every invalidation; an entry remembers its value at the start of its load.
    epoch: AtomicU64,
    /// The epoch of each key's last invalidation. An entry whose load started before that is
    /// stale. Bounded and idle-expiring: an eviction could only matter for a key with a load in
    /// flight across its eviction.
    invalidated_at: moka::sync::Cache<String, u64, Hasher>,
    /// Per-key refresh coordination and failure state, for keys that had a refresh or a failure.
    states: moka::sync::Cache<String, Arc<KeyState>, Hasher>,
    /// How many keys hold a failure (`KeyStatus::last_error`). While none does, a read skips the
    /// lookup in `states`: the hit path then costs one moka lookup, not two. A key state evicted
    /// while failing leaves the count high, which only costs that lookup again.
    failing_keys: AtomicUsize,
    watchers: Mutex<HashMap<String, watch::Sender<Option<String>>>>,
    counters: Counters,
}

/// One cached value, with what is needed to tell whether it is still fresh.
struct CachedEntry {
    secret: Secret,
    loaded_at_epoch: u64,
    fetched_at: Instant,
    /// Versions this key held before, oldest first.
    superseded: Vec<String>,
}

/// Per-key coordination of refreshes, and the key's failure state.
#[derive(Default)]
struct KeyState {
    /// One refresh at a time per key: that is what makes a rotation cost one provider call.
    refresh: tokio::sync::Mutex<()>,
    /// A background refresh task is scheduled or running.
    background: AtomicBool,
    status: Mutex<KeyStatus>,
}

/// A key's refresh and failure state, behind [`KeyState::status`]'s lock.
#[derive(Default)]
struct KeyStatus {
    /// A value taken out of service, kept to fall back on while the provider fails.
    last_good: Option<Arc<CachedEntry>>,
    /// Since when the cached value should have been replaced.
    overdue_since: Option<Instant>,
    /// No provider call before this (backoff, or the provider's `Retry-After`).
    retry_at: Option<Instant>,
    failures: u32,
    last_error: Option<Arc<ProviderError>>,
    /// The newest version an event announced that the cache does not hold yet: a background
    /// refresh loads it rather than whatever a lagging provider calls current.
    pending: Option<NewVersion>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are plain data; a panic elsewhere cannot leave them half-written.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn cache_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// The key for a read, without allocating when `name` is already lower-case (the common case:
/// Key Vault names are usually written in lower case).
fn read_key(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(cache_key(name))
    } else {
        Cow::Borrowed(name)
    }
}

/// moka hands every coalesced reader the same `Arc` of the loader's error; give each its own.
fn own_error(name: &str, shared: &Arc<ProviderError>) -> ProviderError {
    ProviderError::new(name, shared.kind, shared.message.clone()).with_source(shared.clone())
}

fn retry_after(error: &ProviderError) -> Option<Duration> {
    match error.kind {
        ProviderErrorKind::Throttled { retry_after } => retry_after,
        _ => None,
    }
}

impl<P: SecretProvider + 'static> CachedSecretProvider<P> {
    /// A cache with the default options in front of `provider`.
    pub fn new(provider: P) -> Self {
        Self::with_options(provider, CacheOptions::default())
    }

    /// Starts configuring a cache in front of `provider`.
    pub fn builder(provider: P) -> crate::CachedSecretProviderBuilder<P> {
        crate::CachedSecretProviderBuilder::new(provider)
    }

    /// A cache with these options in front of `provider`.
    pub fn with_options(provider: P, options: CacheOptions) -> Self {
        // Entries outlive their time-to-live by the staleness bound: refresh-ahead serves them
        // while the replacement loads, and a failing provider falls back on them.
        let hard_ttl = options.time_to_live.saturating_add(options.max_staleness);
        let entries = moka::future::Cache::builder()
            .max_capacity(options.max_capacity)
            .time_to_live(hard_ttl)
            .build_with_hasher(Hasher::default());
        let bookkeeping_idle = hard_ttl.max(Duration::from_secs(3600));
        let invalidated_at = moka::sync::Cache::builder()
            .max_capacity(options.max_capacity.saturating_mul(10).max(10_000))
            .time_to_idle(bookkeeping_idle)
            .build_with_hasher(Hasher::default());
        let states = moka::sync::Cache::builder()
            .max_capacity(options.max_capacity.max(1_000))
            .time_to_idle(bookkeeping_idle)
            .build_with_hasher(Hasher::default());
        CachedSecretProvider {
            inner: Arc::new(SharedCache {
                provider,
                options,
                entries,
                epoch: AtomicU64::new(0),
                invalidated_at,
                states,
                failing_keys: AtomicUsize::new(0),
                watchers: Mutex::new(HashMap::new()),
                counters: Counters::default(),
            }),
        }
    }

    /// The wrapped provider.
    pub fn provider(&self) -> &P {
        &self.inner.provider
    }

    /// The options in force.
    pub fn options(&self) -> &CacheOptions {
        &self.inner.options
    }

    /// Reads `name` through the cache. Concurrent reads of a missing entry share one provider
    /// call; in refresh-ahead mode a read never waits for the provider once a value is cached.
    /// Errors are not cached, but a critical one is returned to every reader until a load
    /// succeeds.
    pub async fn get(&self, name: &str) -> Result<Secret, ProviderError> {
        let key = read_key(name);
        if let Some(entry) = self.fresh_entry(&key).await {
            if let Some(answer) = self.answer_while_overdue(&key, name, &entry) {
                return answer;
            }
            let expired = entry.fetched_at.elapsed() >= self.inner.options.time_to_live;
            match (expired, self.inner.options.mode) {
                (false, _) => {
                    self.inner.counters.hits.bump();
                    return Ok(entry.secret.clone());
                }
                (true, RefreshMode::RefreshAhead) => {
                    self.refresh_in_background(&key, name);
                    self.inner.counters.hits.bump();
                    return Ok(entry.secret.clone());
                }
                (true, RefreshMode::Invalidate) => {
                    let due = entry.fetched_at + self.inner.options.time_to_live;
                    Box::pin(self.retire(&key, Some(entry), due)).await;
                }
            }
        }
        bump(&self.inner.counters.misses);
        // Boxed so that the future of a hit stays small: inline, the load's state machine made
        // every `get` future several times larger, and moving it cost more than the lookup.
        Box::pin(self.load_or_fall_back(&key, name)).await
    }

    /// Reads `name` from the provider, bypassing the cache, and stores the result.
    pub async fn get_uncached(&self, name: &str) -> Result<Secret, ProviderError> {
        let key = cache_key(name);
        match self.load(&key, name).await {
            Ok(entry) => {
                let entry = Arc::new(entry);
                self.inner.entries.insert(key.clone(), entry.clone()).await;
                self.loaded(&key, &entry);
                Ok(entry.secret.clone())
            }
            Err(error) => {
                let error = Arc::new(error);
                self.record_failure(&key, &error);
                Err(own_error(name, &error))
            }
        }
    }

    /// Receives the version of `name` after every load that changes it: a refresh after a
    /// rotation, or the first load. The current value is the cached version, if any.
    ///
    /// Use it to rebuild what depends on the secret (a connection pool, a client).
    pub async fn subscribe(&self, name: &str) -> watch::Receiver<Option<String>> {
        let key = cache_key(name);
        let current = self
            .fresh_entry(&key)
            .await
            .and_then(|entry| entry.secret.version().map(str::to_owned));
        let mut watchers = lock(&self.inner.watchers);
        watchers
            .entry(key)
            .or_insert_with(|| watch::Sender::new(current))
            .subscribe()
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        self.inner
            .counters
            .snapshot(self.inner.entries.entry_count())
    }

    /// What the cache holds for `name`, if anything.
    pub async fn secret_info(&self, name: &str) -> Option<SecretInfo> {
        let key = cache_key(name);
        let entry = self.fresh_entry(&key).await?;
        Some(self.describe(key, &entry))
    }

    /// What the cache holds, for every cached secret.
    pub fn secrets(&self) -> Vec<SecretInfo> {
        let mut all: Vec<SecretInfo> = self
            .inner
            .entries
            .iter()
            .map(|(key, entry)| self.describe(key.as_ref().clone(), &entry))
            .collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    fn describe(&self, key: String, entry: &CachedEntry) -> SecretInfo {
        let overdue = self
            .inner
            .states
            .get(&key)
            .and_then(|state| lock(&state.status).overdue_since)
            .map(|since| since.elapsed());
        SecretInfo {
            key,
            version: entry.secret.version().map(str::to_owned),
            age: entry.fetched_at.elapsed(),
            overdue,
        }
    }
}

impl<P> fmt::Debug for CachedSecretProvider<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedSecretProvider")
            .field("mode", &self.inner.options.mode)
            .field("entries", &self.inner.entries.entry_count())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<P: SecretProvider + 'static> SecretProvider for CachedSecretProvider<P> {
    async fn get_secret(&self, name: &str) -> Result<Secret, ProviderError> {
        self.get(name).await
    }

    /// The cached value when it is that version; otherwise the provider's answer, which is not
    /// cached (the cache holds current versions only).
    async fn get_secret_version(&self, name: &str, version: &str) -> Result<Secret, ProviderError> {
        if let Some(entry) = self.fresh_entry(&cache_key(name)).await {
            if entry
                .secret
                .version()
                .is_some_and(|cached| cached.eq_ignore_ascii_case(version))
            {
                self.inner.counters.hits.bump();
                return Ok(entry.secret.clone());
            }
        }
        self.inner.provider.get_secret_version(name, version).await
    }
}
