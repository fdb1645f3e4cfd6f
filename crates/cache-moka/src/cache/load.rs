//! Reading through the cache: whether an entry is still fresh, the single-flight load behind a
//! miss, the stale fallback while the provider fails, and the bookkeeping of each load
//! (watchers, failures, retired values).
//!
//! Separate from the public API (`mod.rs`) and from acting on events (`refresh`):
//! this is the path every read takes, and the place its guarantees are kept.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use keyvault_invalidator_core::{ProviderError, Secret, SecretProvider};
use tokio::time::Instant;

use super::*;

impl<P: SecretProvider + 'static> CachedSecretProvider<P> {
    /// The cached entry, unless an invalidation made it stale.
    pub(super) async fn fresh_entry(&self, key: &str) -> Option<Arc<CachedEntry>> {
        let entry = self.inner.entries.get(key).await?;
        self.is_fresh(key, &entry).then_some(entry)
    }

    pub(super) fn is_fresh(&self, key: &str, entry: &CachedEntry) -> bool {
        // Nothing was invalidated since this entry's load started: it cannot be overtaken, and
        // the hit path skips the lookup below.
        if entry.loaded_at_epoch >= self.inner.epoch.load(Ordering::SeqCst) {
            return true;
        }
        let invalidated_at = self.inner.invalidated_at.get(key).unwrap_or(0);
        entry.loaded_at_epoch >= invalidated_at
    }

    pub(super) fn state(&self, key: &str) -> Arc<KeyState> {
        self.inner.states.get_with(key.to_owned(), Default::default)
    }

    /// While a refresh is overdue and failing: the stale value within the bound, the error past
    /// it, and a critical error always.
    pub(super) fn answer_while_overdue(
        &self,
        key: &str,
        name: &str,
        entry: &CachedEntry,
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
    pub(super) async fn load_or_fall_back(
        &self,
        key: &str,
        name: &str,
    ) -> Result<Secret, ProviderError> {
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

    pub(super) async fn load_through_cache(
        &self,
        key: &str,
        name: &str,
    ) -> Result<Arc<CachedEntry>, Arc<ProviderError>> {
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
    pub(super) async fn load(&self, key: &str, name: &str) -> Result<CachedEntry, ProviderError> {
        self.load_version(key, name, None).await
    }

    /// One provider call, for `version` or (with `None`) the current version.
    pub(super) async fn load_version(
        &self,
        key: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<CachedEntry, ProviderError> {
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
        Ok(CachedEntry {
            secret,
            loaded_at_epoch,
            fetched_at: Instant::now(),
            superseded,
        })
    }

    /// Takes an entry out of service, keeping it to fall back on.
    pub(super) async fn retire(&self, key: &str, entry: Option<Arc<CachedEntry>>, due: Instant) {
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
    pub(super) fn loaded(&self, key: &str, entry: &CachedEntry) {
        if let Some(state) = self.inner.states.get(key) {
            let mut status = lock(&state.status);
            if status.last_error.is_some() {
                self.inner.failing_keys.fetch_sub(1, Ordering::SeqCst);
            }
            *status = KeyStatus::default();
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

    pub(super) fn record_failure(&self, key: &str, error: &Arc<ProviderError>) {
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
    pub(super) async fn drop_entry(&self, key: &str) {
        let inner = &self.inner;
        let epoch = inner.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        inner.invalidated_at.insert(key.to_owned(), epoch);
        let entry = inner.entries.get(key).await;
        self.retire(key, entry, Instant::now()).await;
        bump(&inner.counters.invalidations);
    }
}
