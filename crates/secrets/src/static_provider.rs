//! [`StaticProvider`]: secrets fixed at construction, for defaults, tests and local runs.

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use keyvault_invalidator_core::secrecy::{ExposeSecret, SecretString};
use keyvault_invalidator_core::{ProviderError, Secret, SecretProvider};

/// Secrets held in memory, built from name/value pairs; versions are optional. Names are
/// matched without regard to ASCII case, as Key Vault matches them. `Debug` shows the names,
/// never the values.
///
/// ```
/// use keyvault_invalidator_core::{secrecy::ExposeSecret, SecretProvider};
/// use keyvault_invalidator_secrets::StaticProvider;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let provider = StaticProvider::builder()
///     .secret("db-password", "hunter2")
///     .versioned_secret("api-key", "k-2", "0000000000000000000000000000000b")
///     .build();
/// let secret = provider.get_secret("DB-Password").await.unwrap();
/// assert_eq!(secret.value().expose_secret(), "hunter2");
/// assert_eq!(secret.version(), None);
/// assert_eq!(provider.get_secret("api-key").await.unwrap().version(), Some("0000000000000000000000000000000b"));
/// assert!(!format!("{provider:?}").contains("hunter2"));
/// # }
/// ```
#[derive(Clone, Default)]
pub struct StaticProvider {
    // Keyed by lower-case name; the entry keeps the spelling it was given.
    secrets: HashMap<String, Entry>,
}

#[derive(Clone)]
struct Entry {
    name: String,
    value: SecretString,
    version: Option<String>,
}

impl StaticProvider {
    /// A provider holding `pairs` of (name, value), without versions. A later pair replaces an
    /// earlier one with the same name.
    pub fn new<N, V>(pairs: impl IntoIterator<Item = (N, V)>) -> Self
    where
        N: Into<String>,
        V: Into<String>,
    {
        pairs
            .into_iter()
            .fold(Self::builder(), |b, (name, value)| b.secret(name, value))
            .build()
    }

    /// A builder, to give some secrets versions.
    pub fn builder() -> StaticProviderBuilder {
        StaticProviderBuilder::default()
    }

    /// How many secrets it holds.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// Whether it holds no secret.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The names it holds, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.secrets.values().map(|e| e.name.as_str())
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for StaticProvider {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> Self {
        Self::new(pairs)
    }
}

impl fmt::Debug for StaticProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.names().collect();
        names.sort_unstable();
        f.debug_struct("StaticProvider")
            .field("names", &names)
            .finish()
    }
}

#[async_trait]
impl SecretProvider for StaticProvider {
    async fn get_secret(&self, name: &str) -> Result<Secret, ProviderError> {
        crate::error::reject_blank(name)?;
        let entry = self
            .secrets
            .get(&name.to_ascii_lowercase())
            .ok_or_else(|| ProviderError::not_found(name))?;
        let secret = Secret::new(entry.value.expose_secret());
        Ok(match &entry.version {
            Some(version) => secret.with_version(version.clone()),
            None => secret,
        })
    }
}

/// Builds a [`StaticProvider`].
#[derive(Default)]
pub struct StaticProviderBuilder {
    secrets: HashMap<String, Entry>,
}

impl StaticProviderBuilder {
    /// Adds (or replaces) a secret without a version.
    pub fn secret(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(name.into(), value.into(), None)
    }

    /// Adds (or replaces) a secret with a version.
    pub fn versioned_secret(
        self,
        name: impl Into<String>,
        value: impl Into<String>,
        version: impl Into<String>,
    ) -> Self {
        self.insert(name.into(), value.into(), Some(version.into()))
    }

    /// The provider.
    pub fn build(self) -> StaticProvider {
        StaticProvider {
            secrets: self.secrets,
        }
    }

    fn insert(mut self, name: String, value: String, version: Option<String>) -> Self {
        self.secrets.insert(
            name.to_ascii_lowercase(),
            Entry {
                name,
                value: SecretString::from(value),
                version,
            },
        );
        self
    }
}

impl fmt::Debug for StaticProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticProviderBuilder")
            .field("secrets", &self.secrets.len())
            .finish()
    }
}
