//! Acting on new-version events: version awareness, refresh-ahead, jitter, background retries.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keyvault_invalidator_core::{
    CacheError, NewVersion, ProviderError, ProviderErrorKind, Secret, SecretCache, SecretProvider,
};
use rand::Rng;
use tokio::time::Instant;

use super::{cache_key, lock, CachedEntry, CachedSecretProvider, KeyState};
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
    fn classify(entry: &CachedEntry, change: &NewVersion) -> Change {
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
    fn is_news(&self, entry: &CachedEntry, change: &NewVersion) -> bool {
        match Self::classify(entry, change) {
            Change::Duplicate => bump(&self.inner.counters.duplicate_events),
            Change::Older => bump(&self.inner.counters.older_events),
            Change::Newer => return true,
        }
        false
    }

    /// Loads the current version and swaps it in, one refresh per key at a time.
    ///
    /// With a `change` (an event's new version), skips the call when a refresh that finished
    /// meanwhile already brought that version (or a newer one) in, and installs only a load that
    /// is that version or a newer one: when the current version the provider answers is older
    /// (a lagging replica, a fallback) or cannot be placed, it reads the event's version itself,
    /// and fails (retryably) when it cannot. The previous value stays in place on failure.
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
        let previous = self.fresh_entry(key).await;
        if let (Some(change), Some(entry)) = (change, &previous) {
            if !self.is_news(entry, change) {
                return Ok(());
            }
        }
        let loaded = match self.load(key, name).await {
            Ok(entry) => match change {
                Some(change) => {
                    self.at_least(key, name, entry, previous.as_deref(), change)
                        .await
                }
                None => Ok(entry),
            },
            Err(error) => Err(error),
        };
        match loaded {
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

    /// `loaded` when it is `change`'s version or a newer one (or nothing tells and the event
    /// named no version); else the event's version, read by id; else a transient error, so
    /// the event is retried.
    async fn at_least(
        &self,
        key: &str,
        name: &str,
        loaded: CachedEntry,
        previous: Option<&CachedEntry>,
        change: &NewVersion,
    ) -> Result<CachedEntry, ProviderError> {
        let standing = standing(&loaded.secret, previous, change);
        match (standing, change.version.as_deref()) {
            (Standing::AtLeast, _) | (Standing::Unknown, None) => Ok(loaded),
            (_, Some(version)) => {
                bump(&self.inner.counters.version_reads);
                self.load_version(key, name, Some(version))
                    .await
                    .map_err(|error| match error.kind {
                        // The event says the version exists: a miss is a replica that has not
                        // seen it yet, and a later attempt may find it.
                        ProviderErrorKind::NotFound => ProviderError::new(
                            name,
                            ProviderErrorKind::Transient,
                            format!("version `{version}` is not readable yet"),
                        )
                        .with_source(error),
                        _ => error,
                    })
            }
            (Standing::Older, None) => Err(ProviderError::new(
                name,
                ProviderErrorKind::Transient,
                format!(
                    "the provider answered version `{}`, older than the event's",
                    loaded.secret.version().unwrap_or_default()
                ),
            )),
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
                // A load that succeeded meanwhile (a redelivered event, a read) cleared the
                // overdue mark: another call would only cost the provider.
                if lock(&state.status).overdue_since.is_none() {
                    break;
                }
                let pending = lock(&state.status).pending.clone();
                match this.refresh(&key, &name, pending.as_ref()).await {
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
    /// previous one, and answers `Ok` only once the cache holds it (or a newer one).
    ///
    /// A failure that may pass (throttled, transient, a provider still answering an older
    /// version) is a retryable error carrying the provider's `Retry-After`, so the job retries
    /// the event; readers are served the previous value meanwhile, within the staleness bound.
    /// While a backoff or `Retry-After` runs, the provider is not called and the error says how
    /// long is left. A critical error (access denied) and a name the provider rejects are
    /// permanent errors. A secret that is gone from the provider is dropped from the cache.
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
        let waiting = {
            let mut status = lock(&state.status);
            status.overdue_since.get_or_insert_with(Instant::now);
            remember(&mut status.pending, change);
            let now = Instant::now();
            let wait = status.retry_at.filter(|at| *at > now).map(|at| at - now);
            wait.map(|wait| (wait, status.last_error.clone()))
        };
        if let Some((wait, last_error)) = waiting {
            bump(&self.inner.counters.deferred_events);
            let error = CacheError::retryable(
                name,
                format!(
                    "the provider is backing off for {} ms more; the previous value is served meanwhile",
                    wait.as_millis()
                ),
            )
            .with_retry_after(Some(wait));
            return Err(match last_error {
                Some(last) => error.with_source(SharedError(last)),
                None => error,
            });
        }
        self.jitter().await;
        match self.refresh_with(&state, &key, name, Some(change)).await {
            Ok(()) => Ok(()),
            Err(error) => self.refresh_failed(&key, name, error).await,
        }
    }
}

impl<P: SecretProvider + 'static> CachedSecretProvider<P> {
    /// What a failed event refresh means for the job.
    async fn refresh_failed(
        &self,
        key: &str,
        name: &str,
        error: Arc<ProviderError>,
    ) -> Result<(), CacheError> {
        if error.is_retryable() {
            let message = format!("refreshing failed and may pass: {error}");
            return Err(CacheError::retryable(name, message)
                .with_retry_after(super::retry_after(&error))
                .with_source(SharedError(error)));
        }
        if error.kind == ProviderErrorKind::NotFound {
            // Gone from the provider: nothing the event replaced may be served any more, and
            // the next reader learns it is gone.
            self.drop_entry(key).await;
            return Ok(());
        }
        let message = if error.is_critical() {
            format!("refreshing failed with a critical error: {error}")
        } else {
            format!("refreshing failed and will not pass: {error}")
        };
        Err(CacheError::permanent(name, message).with_source(SharedError(error)))
    }
}

/// Keeps the newest announced version: by event time when both have one, else the latest told.
fn remember(pending: &mut Option<NewVersion>, change: &NewVersion) {
    let keep_current = match (
        pending.as_ref().and_then(|p| p.event_time),
        change.event_time,
    ) {
        (Some(current), Some(told)) => current > told,
        _ => false,
    };
    if !keep_current {
        *pending = Some(change.clone());
    }
}

/// Where a load stands against the version an event announced.
#[derive(Debug, PartialEq, Eq)]
enum Standing {
    /// The event's version, or one created after the event.
    AtLeast,
    /// A version the cache replaced, or one created before the event.
    Older,
    /// Nothing tells: no version, or no times to compare (Key Vault's ids are not ordered).
    Unknown,
}

fn standing(loaded: &Secret, previous: Option<&CachedEntry>, change: &NewVersion) -> Standing {
    let Some(version) = loaded.version() else {
        return Standing::Unknown;
    };
    if change
        .version
        .as_deref()
        .is_some_and(|wanted| wanted.eq_ignore_ascii_case(version))
    {
        return Standing::AtLeast;
    }
    let replaced = previous.is_some_and(|entry| {
        entry
            .secret
            .version()
            .is_some_and(|v| v.eq_ignore_ascii_case(version))
            || entry
                .superseded
                .iter()
                .any(|v| v.eq_ignore_ascii_case(version))
    });
    if replaced {
        return Standing::Older;
    }
    // A version is created before its event is sent, so another version created at or after
    // the event's time is newer; one created before it is older.
    match (loaded.created_on(), change.event_time) {
        (Some(created), Some(event)) if created >= event => Standing::AtLeast,
        (Some(_), Some(_)) => Standing::Older,
        _ => Standing::Unknown,
    }
}

/// A provider error shared with the cache's failure state, as an error source.
#[derive(Debug)]
struct SharedError(Arc<ProviderError>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}
