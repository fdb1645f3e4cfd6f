//! What the job changes: the [`SecretCache`] trait.

use async_trait::async_trait;

/// A cache of secrets that can be told a secret changed.
#[async_trait]
pub trait SecretCache: Send + Sync {
    /// Drops the cached value of `key`, so the next read loads it afresh. Succeeds when nothing
    /// was cached.
    async fn invalidate(&self, key: &str) -> Result<(), CacheError>;

    /// A new version of `key` exists (`version`, when the event named it). The default drops the
    /// entry; a cache that knows versions may ignore a version it already holds or reload in the
    /// background instead.
    async fn new_version(&self, key: &str, version: Option<&str>) -> Result<(), CacheError> {
        let _ = version;
        self.invalidate(key).await
    }
}

#[async_trait]
impl<C: SecretCache + ?Sized> SecretCache for std::sync::Arc<C> {
    async fn invalidate(&self, key: &str) -> Result<(), CacheError> {
        (**self).invalidate(key).await
    }

    async fn new_version(&self, key: &str, version: Option<&str>) -> Result<(), CacheError> {
        (**self).new_version(key, version).await
    }
}

/// Why a cache could not be changed.
#[derive(Debug, thiserror::Error)]
#[error("cache entry `{key}`: {message}")]
pub struct CacheError {
    /// The key being changed.
    pub key: String,
    /// What happened.
    pub message: String,
    /// Whether trying again may help.
    pub retryable: bool,
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
