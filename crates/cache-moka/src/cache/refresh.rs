//! Acting on new-version events: version awareness, refresh-ahead, jitter, background retries.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keyvault_invalidator_core::{
    CacheError, NewVersion, ProviderError, SecretCache, SecretProvider,
};
use rand::Rng;
use tokio::time::Instant;

use super::{cache_key, lock, CachedSecretProvider, Entry, KeyState};
use crate::options::RefreshMode;
use crate::stats::bump;

/// What a new-version event means against the cached entry.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    Duplicate,
    Older,
    Newer,
}

impl<P: SecretProvider + 'static> CachedSecretProvider<P> {
    fn classify(entry: &Entry, change: &NewVersion) -> Change {
        let cached = entry.secret.version();
        match change.version.as_deref() {
            Some(version) if cached.is_some_and(|c| c.eq_ignore_ascii_case(version)) => {
                return Change::Duplicate
            }
            Some(version)
                if entry
                    .superseded
                    .iter()
                    .any(|v| v.eq_ignore_ascii_case(version)) =>
            {
                return Change::Older
            }
            _ => {}
        }
        // Key Vault version ids are not ordered; times are. An event from before the cached
        // version was created is about an older version.
        match (change.event_time, entry.secret.created_on()) {
            (Some(event), Some(created)) if event < created => Change::Older,
            _ => Change::Newer,
        }
    }

    /// Whether `change` is about a version newer than `entry`'s; counts the ones that are not.
    fn is_news(&self, entry: &Entry, change: &NewVersion) -> bool {
        match Self::classify(entry, change) {
            Change::Duplicate => bump(&self.inner.counters.duplicate_events),
            Change::Older => bump(&self.inner.counters.older_events),
            Change::Newer => return true,
        }
        false
    }

    /// Loads the current version and swaps it in, one refresh per key at a time. With a
    /// `change`, skips the call when a refresh that finished meanwhile already brought that
    /// version (or a newer one) in.
    async fn refresh(
        &self,
        key: &str,
        name: &str,
        change: Option<&NewVersion>,
    ) -> Result<(), Arc<ProviderError>> {
        self.refresh_with(&self.state(key), key, name, change).await
    }

    /// [`refresh`](Self::refresh) with the key's state already in hand (looking it up is a
    /// moka insert-or-get, a tenth of what an event costs).
    async fn refresh_with(
        &self,
        state: &KeyState,
        key: &str,
        name: &str,
        change: Option<&NewVersion>,
    ) -> Result<(), Arc<ProviderError>> {
        let _one_at_a_time = state.refresh.lock().await;
        if let (Some(change), Some(entry)) = (change, self.fresh_entry(key).await) {
            if !self.is_news(&entry, change) {
                return Ok(());
            }
        }
        match self.load(key, name).await {
            Ok(entry) => {
                let entry = Arc::new(entry);
                self.inner
                    .entries
                    .insert(key.to_owned(), entry.clone())
                    .await;
                bump(&self.inner.counters.refreshes);
                self.loaded(key, &entry);
                Ok(())
            }
            Err(error) => {
                let error = Arc::new(error);
                self.record_failure(key, &error);
                Err(error)
            }
        }
    }

    async fn jitter(&self) {
        if let Some(bound) = self.inner.options.refresh_jitter.filter(|b| !b.is_zero()) {
            let nanos = rand::rng().random_range(0..=bound.as_nanos().min(u64::MAX as u128) as u64);
            tokio::time::sleep(Duration::from_nanos(nanos)).await;
        }
    }

    /// Refreshes in a background task that retries failures (honouring `Retry-After`) until it
    /// succeeds, meets a critical error, or runs out of attempts. At most one per key.
    pub(super) fn refresh_in_background(&self, key: &str, name: &str) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Outside Tokio nothing can run in the background; the next read tries again.
            return;
        };
        let state = self.state(key);
        if state.background.swap(true, Ordering::SeqCst) {
            return;
        }
        lock(&state.status)
            .overdue_since
            .get_or_insert_with(Instant::now);
        let (this, key, name) = (self.clone(), key.to_owned(), name.to_owned());
        runtime.spawn(async move {
            this.jitter().await;
            for _ in 0..this.inner.options.max_refresh_attempts.max(1) {
                let retry_at = lock(&state.status).retry_at;
                if let Some(at) = retry_at {
                    tokio::time::sleep_until(at).await;
                }
                match this.refresh(&key, &name, None).await {
                    Ok(()) => break,
                    Err(error) if error.is_critical() => break,
                    Err(_) => continue,
                }
            }
            state.background.store(false, Ordering::SeqCst);
        });
    }
}

#[async_trait]
impl<P: SecretProvider + 'static> SecretCache for CachedSecretProvider<P> {
    /// Drops the cached value of `key`; the next read loads it. Loads in flight now will not
    /// put their (possibly older) value back. Never fails.
    async fn invalidate(&self, key: &str) -> Result<(), CacheError> {
        self.drop_entry(&cache_key(key)).await;
        Ok(())
    }

    /// Ignores the version already cached and older ones; otherwise invalidates or, in
    /// refresh-ahead mode, loads the new version (after the jitter) while readers keep the
    /// previous one. A transient failure is retried in the background, honouring `Retry-After`,
    /// and the previous value is served meanwhile within the staleness bound; a critical one is
    /// returned, so the job reports it.
    async fn new_version(&self, name: &str, change: &NewVersion) -> Result<(), CacheError> {
        let key = cache_key(name);
        let Some(entry) = self.fresh_entry(&key).await else {
            // Nothing cached; still make sure a load in flight cannot install an older value.
            self.drop_entry(&key).await;
            return Ok(());
        };
        if !self.is_news(&entry, change) {
            return Ok(());
        }
        if self.inner.options.mode == RefreshMode::Invalidate {
            self.drop_entry(&key).await;
            return Ok(());
        }
        let state = self.state(&key);
        lock(&state.status)
            .overdue_since
            .get_or_insert_with(Instant::now);
        self.jitter().await;
        match self.refresh_with(&state, &key, name, Some(change)).await {
            Ok(()) => Ok(()),
            Err(error) if error.is_critical() => Err(CacheError::permanent(
                name,
                format!("refreshing failed with a critical error: {error}"),
            )),
            Err(_) => {
                self.refresh_in_background(&key, name);
                Ok(())
            }
        }
    }
}
