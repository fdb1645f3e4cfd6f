//! The cache itself: reads, loads, invalidation, refresh-ahead, stale fallback.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    inner: Arc<Inner<P>>,
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

struct Inner<P> {
    provider: P,
    options: CacheOptions,
    entries: moka::future::Cache<String, Arc<Entry>, Hasher>,
    /// Bumped by every invalidation; an entry remembers its value at the start of its load.
    epoch: AtomicU64,
    /// The epoch of each key's last invalidation. An entry whose load started before that is
    /// stale. Bounded and idle-expiring: an eviction could only matter for a key with a load in
    /// flight across its eviction.
    invalidated_at: moka::sync::Cache<String, u64, Hasher>,
    /// Per-key refresh coordination and failure state, for keys that had a refresh or a failure.
    states: moka::sync::Cache<String, Arc<KeyState>, Hasher>,
    /// How many keys hold a failure (`Status::last_error`). While none does, a read skips the
    /// lookup in `states`: the hit path then costs one moka lookup, not two. A key state evicted
    /// while failing leaves the count high, which only costs that lookup again.
    failing_keys: AtomicUsize,
    watchers: Mutex<HashMap<String, watch::Sender<Option<String>>>>,
    counters: Counters,
}

struct Entry {
    secret: Secret,
    loaded_at_epoch: u64,
    fetched_at: Instant,
    /// Versions this key held before, oldest first.
    superseded: Vec<String>,
}

#[derive(Default)]
struct KeyState {
    /// One refresh at a time per key: that is what makes a rotation cost one provider call.
    refresh: tokio::sync::Mutex<()>,
    /// A background refresh task is scheduled or running.
    background: AtomicBool,
    status: Mutex<Status>,
}

#[derive(Default)]
struct Status {
    /// A value taken out of service, kept to fall back on while the provider fails.
    last_good: Option<Arc<Entry>>,
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
            inner: Arc::new(Inner {
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

    fn describe(&self, key: String, entry: &Entry) -> SecretInfo {
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

    /// The cached entry, unless an invalidation made it stale.
    async fn fresh_entry(&self, key: &str) -> Option<Arc<Entry>> {
        let entry = self.inner.entries.get(key).await?;
        self.is_fresh(key, &entry).then_some(entry)
    }

    fn is_fresh(&self, key: &str, entry: &Entry) -> bool {
        // Nothing was invalidated since this entry's load started: it cannot be overtaken, and
        // the hit path skips the lookup below.
        if entry.loaded_at_epoch >= self.inner.epoch.load(Ordering::SeqCst) {
            return true;
        }
        let invalidated_at = self.inner.invalidated_at.get(key).unwrap_or(0);
        entry.loaded_at_epoch >= invalidated_at
    }

    fn state(&self, key: &str) -> Arc<KeyState> {
        self.inner.states.get_with(key.to_owned(), Default::default)
    }

    /// While a refresh is overdue and failing: the stale value within the bound, the error past
    /// it, and a critical error always.
    fn answer_while_overdue(
        &self,
        key: &str,
        name: &str,
        entry: &Entry,
    ) -> Option<Result<Secret, ProviderError>> {
        if self.inner.failing_keys.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let state = self.inner.states.get(key)?;
        let status = lock(&state.status);
        let since = status.overdue_since?;
        let error = status.last_error.clone()?;
        let retry_due = status.retry_at.is_none_or(|at| at <= Instant::now());
        drop(status);
        let answer = if error.is_critical() || since.elapsed() > self.inner.options.max_staleness {
            Err(own_error(name, &error))
        } else {
            bump(&self.inner.counters.stale_serves);
            Ok(entry.secret.clone())
        };
        if retry_due {
            self.refresh_in_background(key, name);
        }
        Some(answer)
    }

    /// A miss: load (one call for all concurrent readers), or fall back on the last good value
    /// while the provider throttles or fails, within the staleness bound.
    async fn load_or_fall_back(&self, key: &str, name: &str) -> Result<Secret, ProviderError> {
        let (fallback, retry_due) = match self.inner.states.get(key) {
            Some(state) => {
                let status = lock(&state.status);
                let within_bound = status
                    .overdue_since
                    .is_some_and(|since| since.elapsed() <= self.inner.options.max_staleness);
                let fallback = status.last_good.clone().filter(|_| within_bound);
                let retry_due = status.retry_at.is_none_or(|at| at <= Instant::now());
                (fallback, retry_due)
            }
            None => (None, true),
        };
        if let (Some(good), false) = (&fallback, retry_due) {
            // The provider asked us to wait: do not call it for every read meanwhile.
            bump(&self.inner.counters.stale_serves);
            return Ok(good.secret.clone());
        }
        match self.load_through_cache(key, name).await {
            Ok(entry) => {
                self.loaded(key, &entry);
                Ok(entry.secret.clone())
            }
            Err(error) => {
                self.record_failure(key, &error);
                match fallback {
                    Some(good) if error.is_retryable() => {
                        bump(&self.inner.counters.stale_serves);
                        Ok(good.secret.clone())
                    }
                    _ => Err(own_error(name, &error)),
                }
            }
        }
    }

    async fn load_through_cache(
        &self,
        key: &str,
        name: &str,
    ) -> Result<Arc<Entry>, Arc<ProviderError>> {
        for _ in 0..MAX_OVERTAKEN_LOADS {
            let entry = self
                .inner
                .entries
                .try_get_with(key.to_owned(), async {
                    self.load(key, name).await.map(Arc::new)
                })
                .await?;
            if self.is_fresh(key, &entry) {
                return Ok(entry);
            }
            // An invalidation arrived after this value's load began: it may predate the
            // rotation. Drop it and load again.
            bump(&self.inner.counters.overtaken_loads);
            self.inner.entries.invalidate(key).await;
        }
        let entry = Arc::new(self.load(key, name).await.map_err(Arc::new)?);
        self.inner
            .entries
            .insert(key.to_owned(), entry.clone())
            .await;
        Ok(entry)
    }

    /// One provider call, for the current version.
    async fn load(&self, key: &str, name: &str) -> Result<Entry, ProviderError> {
        self.load_version(key, name, None).await
    }

    /// One provider call, for `version` or (with `None`) the current version.
    async fn load_version(
        &self,
        key: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<Entry, ProviderError> {
        let inner = &self.inner;
        // Read before the call: an invalidation from here on makes this load stale.
        let loaded_at_epoch = inner.epoch.load(Ordering::SeqCst);
        bump(&inner.counters.loads);
        let read = match version {
            Some(version) => inner.provider.get_secret_version(name, version).await,
            None => inner.provider.get_secret(name).await,
        };
        let secret = read.inspect_err(|_| {
            bump(&inner.counters.load_errors);
        })?;
        let previous = match inner.entries.get(key).await {
            Some(entry) => Some(entry),
            None => self
                .inner
                .states
                .get(key)
                .and_then(|state| lock(&state.status).last_good.clone()),
        };
        let mut superseded = previous
            .as_ref()
            .map(|p| p.superseded.clone())
            .unwrap_or_default();
        if let Some(old) = previous.as_ref().and_then(|p| p.secret.version()) {
            if Some(old) != secret.version() && !superseded.iter().any(|v| v == old) {
                superseded.push(old.to_owned());
            }
        }
        if superseded.len() > REMEMBERED_VERSIONS {
            superseded.drain(..superseded.len() - REMEMBERED_VERSIONS);
        }
        Ok(Entry {
            secret,
            loaded_at_epoch,
            fetched_at: Instant::now(),
            superseded,
        })
    }

    /// Takes an entry out of service, keeping it to fall back on.
    async fn retire(&self, key: &str, entry: Option<Arc<Entry>>, due: Instant) {
        self.inner.entries.invalidate(key).await;
        let state = self.state(key);
        let mut status = lock(&state.status);
        if entry.is_some() {
            status.last_good = entry;
        }
        let since = status.overdue_since.map_or(due, |s| s.min(due));
        status.overdue_since = Some(since);
    }

    /// A load succeeded: clear failure state and tell subscribers.
    fn loaded(&self, key: &str, entry: &Entry) {
        if let Some(state) = self.inner.states.get(key) {
            let mut status = lock(&state.status);
            if status.last_error.is_some() {
                self.inner.failing_keys.fetch_sub(1, Ordering::SeqCst);
            }
            *status = Status::default();
        }
        let version = entry.secret.version().map(str::to_owned);
        let mut watchers = lock(&self.inner.watchers);
        if let Some(sender) = watchers.get(key) {
            if sender.receiver_count() == 0 {
                watchers.remove(key);
            } else {
                sender.send_if_modified(|current| {
                    let changed = *current != version;
                    if changed {
                        current.clone_from(&version);
                    }
                    changed
                });
            }
        }
    }

    fn record_failure(&self, key: &str, error: &Arc<ProviderError>) {
        let state = self.state(key);
        let mut status = lock(&state.status);
        status.failures = status.failures.saturating_add(1);
        let backoff = self.inner.options.retry_backoff.delay(status.failures);
        let wait = retry_after(error).map_or(backoff, |after| after.max(backoff));
        let now = Instant::now();
        status.retry_at = Some(now + wait);
        status.overdue_since.get_or_insert(now);
        if status.last_error.replace(error.clone()).is_none() {
            self.inner.failing_keys.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Drops the cached value of `key`: the next read loads it, falling back on the dropped
    /// value only while the provider fails, within the staleness bound.
    async fn drop_entry(&self, key: &str) {
        let inner = &self.inner;
        let epoch = inner.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        inner.invalidated_at.insert(key.to_owned(), epoch);
        let entry = inner.entries.get(key).await;
        self.retire(key, entry, Instant::now()).await;
        bump(&inner.counters.invalidations);
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
