//! Errors of this crate besides [`ProviderError`]: configuration mistakes, and the per-provider
//! detail behind a [`SecretStore`](crate::SecretStore) failure.

use std::fmt;

use keyvault_invalidator_core::{ProviderError, ProviderErrorKind};

/// Refuses a blank name before any lookup: no provider can hold one, and an empty key would
/// otherwise surface as a confusing "not found".
pub(crate) fn reject_blank(name: &str) -> Result<(), ProviderError> {
    if name.trim().is_empty() {
        return Err(ProviderError::new(
            name,
            ProviderErrorKind::InvalidName,
            "a secret name cannot be blank",
        ));
    }
    Ok(())
}

/// A provider could not be set up: a malformed vault URL, a blank client id, a credential the
/// Azure SDK refused to create. Never holds a secret value.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct ConfigError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ConfigError {
    #[cfg(feature = "azure")]
    pub(crate) fn new(message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
            source: None,
        }
    }

    #[cfg(feature = "azure")]
    pub(crate) fn with_source(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        self.source = Some(Box::new(source));
        self
    }
}

/// What one provider of a [`SecretStore`](crate::SecretStore) answered when the store could not
/// return a secret.
#[derive(Debug)]
#[non_exhaustive]
pub struct ProviderFailure {
    /// The label the provider was added with.
    pub provider: String,
    /// Its error; `error.name` is the name the provider was asked for (after its name mapping).
    pub error: ProviderError,
}

/// The [`source`](std::error::Error::source) of a [`ProviderError`] returned by a
/// [`SecretStore`](crate::SecretStore): every provider's answer, in the order they were asked.
/// The error's message already lists them; this is for code that wants to inspect them. Its
/// own `source` is the provider error that decided the store's answer (the critical or first
/// failure), so walking the chain reaches the SDK's error.
///
/// ```
/// use keyvault_invalidator_core::{ProviderErrorKind, SecretProvider};
/// use keyvault_invalidator_secrets::{SecretStore, StaticProvider, StoreFailures};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let store = SecretStore::builder()
///     .add("defaults", StaticProvider::new([("other", "x")]))
///     .build();
/// let error = store.get_secret("db-password").await.unwrap_err();
/// assert_eq!(error.kind, ProviderErrorKind::NotFound);
/// let failures = error.source.as_ref().and_then(|s| s.downcast_ref::<StoreFailures>()).unwrap();
/// assert_eq!(failures.failures()[0].provider, "defaults");
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct StoreFailures {
    failures: Vec<ProviderFailure>,
    decisive: Option<usize>,
}

impl StoreFailures {
    pub(crate) fn new(failures: Vec<ProviderFailure>, decisive: Option<usize>) -> Self {
        StoreFailures { failures, decisive }
    }

    /// Each provider's answer, in order.
    pub fn failures(&self) -> &[ProviderFailure] {
        &self.failures
    }

    /// The answer that decided the store's error: the critical failure, or the first failure
    /// that was not a miss. `None` when every provider only missed.
    pub fn decisive(&self) -> Option<&ProviderFailure> {
        self.decisive.and_then(|i| self.failures.get(i))
    }
}

impl fmt::Display for StoreFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short on purpose: the store's error message already lists every failure.
        write!(f, "{} provider answer(s)", self.failures.len())
    }
}

impl std::error::Error for StoreFailures {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.decisive()
            .map(|f| &f.error as &(dyn std::error::Error + 'static))
    }
}
