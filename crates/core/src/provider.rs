//! Where secret values come from: the [`SecretProvider`] trait.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

use crate::names::{MappedNames, NameMapping};

/// Reads secrets by name: Azure Key Vault, the environment, an in-memory map, a cache in front
/// of any of them.
#[async_trait]
pub trait SecretProvider: Send + Sync {
    /// The current version of the secret `name`.
    async fn get_secret(&self, name: &str) -> Result<Secret, ProviderError>;

    /// The version `version` of the secret `name`.
    ///
    /// A cache told of a new version reads this when the current version it read is not
    /// provably that version or a newer one: a lagging replica, or a provider that answered
    /// from elsewhere. Providers that can read a given version (Key Vault) override it.
    ///
    /// The default reads the current version and returns it when it is `version` (compared
    /// without regard to case, as Key Vault's ids are) or when the provider knows no versions
    /// at all (its one value is all it has). Otherwise it fails as
    /// [`ProviderErrorKind::Transient`], naming both versions: the version may still arrive,
    /// and the caller retries.
    ///
    /// ```
    /// # use async_trait::async_trait;
    /// # use keyvault_invalidator_core::{ProviderError, ProviderErrorKind, Secret, SecretProvider};
    /// struct OneVersion;
    ///
    /// #[async_trait]
    /// impl SecretProvider for OneVersion {
    ///     async fn get_secret(&self, _: &str) -> Result<Secret, ProviderError> {
    ///         Ok(Secret::new("value").with_version("aaa"))
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// assert_eq!(OneVersion.get_secret_version("db", "AAA").await.unwrap().version(), Some("aaa"));
    /// let error = OneVersion.get_secret_version("db", "bbb").await.unwrap_err();
    /// assert_eq!(error.kind, ProviderErrorKind::Transient);
    /// # }
    /// ```
    async fn get_secret_version(&self, name: &str, version: &str) -> Result<Secret, ProviderError> {
        let secret = self.get_secret(name).await?;
        match secret.version() {
            None => Ok(secret),
            Some(current) if current.eq_ignore_ascii_case(version) => Ok(secret),
            Some(current) => Err(ProviderError::new(
                name,
                ProviderErrorKind::Transient,
                format!(
                    "version `{version}` was asked for; the provider answered `{current}` and cannot read a given version"
                ),
            )),
        }
    }

    /// This provider, asked for [`NameMapping::to_vault_name`] of every name: the same mapping
    /// the invalidator turns Key Vault names into cache keys with.
    ///
    /// ```
    /// use keyvault_invalidator_core::{secrecy::ExposeSecret, NameMapping, SecretProvider};
    /// use keyvault_invalidator_testkit::InMemoryVault;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let vault = InMemoryVault::new();
    /// vault.set("ServiceBus--ConnectionString", "Endpoint=sb://ns/");
    /// let names = NameMapping::key_separator(":").vault_separator("--");
    /// let provider = vault.with_names(names.clone());
    /// let secret = provider.get_secret("ServiceBus:ConnectionString").await.unwrap();
    /// assert_eq!(secret.value().expose_secret(), "Endpoint=sb://ns/");
    /// # }
    /// ```
    fn with_names(self, names: NameMapping) -> MappedNames<Self>
    where
        Self: Sized,
    {
        MappedNames::new(self, names)
    }
}

#[async_trait]
impl<P: SecretProvider + ?Sized> SecretProvider for std::sync::Arc<P> {
    async fn get_secret(&self, name: &str) -> Result<Secret, ProviderError> {
        (**self).get_secret(name).await
    }

    async fn get_secret_version(&self, name: &str, version: &str) -> Result<Secret, ProviderError> {
        (**self).get_secret_version(name, version).await
    }
}

/// A secret value with what is known about it. `Debug` never shows the value.
#[derive(Clone)]
pub struct Secret {
    value: SecretString,
    version: Option<String>,
    expires_on: Option<DateTime<Utc>>,
    created_on: Option<DateTime<Utc>>,
    not_before: Option<DateTime<Utc>>,
}

impl Secret {
    /// A secret with no version information.
    pub fn new(value: impl Into<String>) -> Self {
        Secret {
            value: SecretString::from(value.into()),
            version: None,
            expires_on: None,
            created_on: None,
            not_before: None,
        }
    }

    /// Sets the version (Key Vault's 32-hex-digit id, or any tag the provider uses).
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Sets the expiry.
    pub fn with_expiry(mut self, expires_on: DateTime<Utc>) -> Self {
        self.expires_on = Some(expires_on);
        self
    }

    /// Sets when this version was created (Key Vault's `attributes.created`).
    pub fn with_created_on(mut self, created_on: DateTime<Utc>) -> Self {
        self.created_on = Some(created_on);
        self
    }

    /// Sets when this version becomes valid (Key Vault's `attributes.nbf`).
    pub fn with_not_before(mut self, not_before: DateTime<Utc>) -> Self {
        self.not_before = Some(not_before);
        self
    }

    /// When this version becomes valid, when set.
    pub fn not_before(&self) -> Option<DateTime<Utc>> {
        self.not_before
    }

    /// When this version was created, when the provider knows.
    pub fn created_on(&self) -> Option<DateTime<Utc>> {
        self.created_on
    }

    /// The value. Exposing it is explicit: see [`secrecy::ExposeSecret`].
    pub fn value(&self) -> &SecretString {
        &self.value
    }

    /// The version, when the provider knows one.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// When this version expires, when set.
    pub fn expires_on(&self) -> Option<DateTime<Utc>> {
        self.expires_on
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("value", &"[redacted]")
            .field("version", &self.version)
            .field("expires_on", &self.expires_on)
            .field("created_on", &self.created_on)
            .field("not_before", &self.not_before)
            .finish()
    }
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
#[error("secret `{name}`: {kind}: {message}")]
#[non_exhaustive]
pub struct ProviderError {
    /// The secret asked for.
    pub name: String,
    /// The class of failure.
    pub kind: ProviderErrorKind,
    /// What happened (never a secret value or credential).
    pub message: String,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ProviderError {
    /// An error of `kind` for the secret `name`.
    pub fn new(
        name: impl Into<String>,
        kind: ProviderErrorKind,
        message: impl Into<String>,
    ) -> Self {
        ProviderError {
            name: name.into(),
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The secret does not exist in this provider.
    pub fn not_found(name: impl Into<String>) -> Self {
        Self::new(name, ProviderErrorKind::NotFound, "no such secret")
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ProviderErrorKind::Throttled { .. } | ProviderErrorKind::Transient
        )
    }

    /// Whether the error must never be hidden (by a fallback to another provider or a stale
    /// value): access denied and authentication failures.
    pub fn is_critical(&self) -> bool {
        matches!(self.kind, ProviderErrorKind::AccessDenied)
    }
}

/// The classes of [`ProviderError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProviderErrorKind {
    /// No such secret.
    NotFound,
    /// Authentication failed or access was denied. Critical.
    AccessDenied,
    /// The backend throttled; retry after the given time when it said one.
    Throttled {
        /// The backend's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// A 5xx, a timeout, a network failure.
    Transient,
    /// The name is not valid for this provider.
    InvalidName,
    /// Anything else.
    Other,
}

impl fmt::Display for ProviderErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProviderErrorKind::NotFound => f.write_str("not found"),
            ProviderErrorKind::AccessDenied => f.write_str("access denied"),
            ProviderErrorKind::Throttled {
                retry_after: Some(after),
            } => write!(f, "throttled (retry after {} ms)", after.as_millis()),
            ProviderErrorKind::Throttled { retry_after: None } => f.write_str("throttled"),
            ProviderErrorKind::Transient => f.write_str("transient failure"),
            ProviderErrorKind::InvalidName => f.write_str("invalid name"),
            ProviderErrorKind::Other => f.write_str("failed"),
        }
    }
}
