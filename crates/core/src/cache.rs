//! What the job changes: the [`SecretCache`] trait.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// A cache of secrets that can be told a secret changed.
#[async_trait]
pub trait SecretCache: Send + Sync {
    /// Drops the cached value of `key`, so the next read loads it afresh. Succeeds when nothing
    /// was cached.
    async fn invalidate(&self, key: &str) -> Result<(), CacheError>;

    /// A new version of `key` exists. The default drops the entry.
    ///
    /// The job settles the event's delivery once this returns `Ok`, so `Ok` must mean the cache
    /// no longer serves what the event replaced: it holds the event's version or a newer one,
    /// or nothing for `key`. A cache that knows versions may ignore a version it already holds
    /// (or an older one), and one that refreshes ahead loads the new version before answering;
    /// when that load fails and may pass, it answers a [retryable](CacheError::retryable)
    /// error (with the provider's `Retry-After`, when it gave one), and the job retries.
    async fn new_version(&self, key: &str, change: &NewVersion) -> Result<(), CacheError> {
        let _ = change;
        self.invalidate(key).await
    }
}

#[async_trait]
impl<C: SecretCache + ?Sized> SecretCache for std::sync::Arc<C> {
    async fn invalidate(&self, key: &str) -> Result<(), CacheError> {
        (**self).invalidate(key).await
    }

    async fn new_version(&self, key: &str, change: &NewVersion) -> Result<(), CacheError> {
        (**self).new_version(key, change).await
    }
}

/// What an event says about a new version of a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewVersion {
    /// The new version's id, when the event named it.
    pub version: Option<String>,
    /// When the event says it happened (its `eventTime`/`time`): lets a cache tell an event for
    /// an older version from one for a newer version, since Key Vault's version ids are not
    /// ordered.
    pub event_time: Option<DateTime<Utc>>,
}

impl NewVersion {
    /// A change to `version`, at no known time.
    pub fn to(version: impl Into<String>) -> Self {
        NewVersion {
            version: Some(version.into()),
            event_time: None,
        }
    }

    /// A change to a version the event did not name.
    pub fn unnamed() -> Self {
        NewVersion::default()
    }

    /// Sets when the event says the change happened.
    ///
    /// ```
    /// use chrono::{TimeZone, Utc};
    /// use keyvault_invalidator_core::NewVersion;
    ///
    /// let at = Utc.with_ymd_and_hms(2026, 12, 1, 8, 0, 0).unwrap();
    /// let change = NewVersion::to("3f2a").at(at);
    /// assert_eq!((change.version.as_deref(), change.event_time), (Some("3f2a"), Some(at)));
    /// ```
    pub fn at(mut self, event_time: DateTime<Utc>) -> Self {
        self.event_time = Some(event_time);
        self
    }
}

/// Why a cache could not be changed.
#[derive(Debug, thiserror::Error)]
#[error("cache entry `{key}`: {message}")]
#[non_exhaustive]
pub struct CacheError {
    /// The key being changed.
    pub key: String,
    /// What happened.
    pub message: String,
    /// Whether trying again may help.
    pub retryable: bool,
    /// Not before this long: the backend's `Retry-After`, when it gave one.
    pub retry_after: Option<Duration>,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl CacheError {
    /// A failure that may clear up.
    pub fn retryable(key: impl Into<String>, message: impl Into<String>) -> Self {
        CacheError {
            key: key.into(),
            message: message.into(),
            retryable: true,
            retry_after: None,
            source: None,
        }
    }

    /// A failure that will not clear up.
    pub fn permanent(key: impl Into<String>, message: impl Into<String>) -> Self {
        CacheError {
            retryable: false,
            ..Self::retryable(key, message)
        }
    }
}

impl CacheError {
    /// Sets how long to wait before trying again.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
}
