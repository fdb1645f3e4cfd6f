//! [`SecretStore`]: providers composed in order.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use keyvault_invalidator_core::secrecy::{ExposeSecret, SecretString};
use keyvault_invalidator_core::{
    NameMapping, ProviderError, ProviderErrorKind, Secret, SecretProvider,
};

use crate::error::{ProviderFailure, StoreFailures};

/// Providers asked in order, the way Arcus' secret store asks them.
///
/// For each provider in turn, the store asks for the name (after that provider's name mapping,
/// if any):
///
/// - a value ends the search;
/// - **not found** or **invalid name** (the name cannot exist there) moves on to the next
///   provider: only an answer that the secret is not there lets a later provider answer;
/// - a **critical** error ([`ProviderError::is_critical`]: access denied, authentication) stops
///   the search at once and is returned: a vault that refuses us must never be papered over by a
///   value from a provider further down, fallback or not;
/// - any other failure (**throttled**, **transient**, other) also stops the search and is
///   returned with its kind as it is (a throttled error keeps its exact `Retry-After`), so the
///   cache above serves its stale value and retries, instead of holding a default for a whole
///   TTL because Key Vault answered one 503 or 429. Providers added with
///   [`SecretStoreBuilder::fallback`] are the exception: they are still asked, in order, after
///   such a failure (and, like any provider, after a miss).
///
/// When no provider answers, the one error returned lists every provider's answer in its message
/// (`[label] kind: message; ...`), and carries them as a [`StoreFailures`] source, whose own
/// source is the decisive provider error (so the chain reaches the SDK's error). Its kind: the
/// critical error's (`AccessDenied`) after one; else the first failure's kind, unchanged, when a
/// provider failed (fallbacks that also failed or missed do not change it); else `NotFound` (or
/// `InvalidName` when every provider rejected the name).
///
/// A store is itself a [`SecretProvider`], so it can sit under a cache. Clones share the
/// providers. Nothing is ever logged about values.
///
/// ```
/// use keyvault_invalidator_core::{secrecy::ExposeSecret, NameMapping, SecretProvider};
/// use keyvault_invalidator_secrets::{EnvProvider, SecretStore, StaticProvider};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let vault = StaticProvider::new([("ServiceBus--ConnectionString", "Endpoint=sb://ns/;EntityPath=t")]);
/// let store = SecretStore::builder()
///     .add("environment", EnvProvider::builder().vars([("DB_PASSWORD", "from-env")]).build())
///     // Key Vault names cannot hold ':', so `ServiceBus:ConnectionString` is stored as `ServiceBus--ConnectionString`.
///     .add_with_names("key-vault", vault, NameMapping::key_separator(":").vault_separator("--"))
///     .build();
///
/// assert_eq!(store.get_secret("db-password").await?.value().expose_secret(), "from-env");
/// let connection = store.connection_string("ServiceBus:ConnectionString").await?;
/// assert_eq!(connection.expose_secret(), "Endpoint=sb://ns/;EntityPath=t");
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct SecretStore {
    sources: Arc<[Source]>,
}

struct Source {
    label: String,
    provider: Arc<dyn SecretProvider>,
    /// The name this provider is asked for, given the name asked of the store.
    names: NameMapping,
    /// Asked even after an earlier provider failed (not critically): see
    /// [`SecretStoreBuilder::fallback`].
    fallback: bool,
}

impl SecretStore {
    /// A builder; add providers in the order they are to be asked.
    pub fn builder() -> SecretStoreBuilder {
        SecretStoreBuilder {
            sources: Vec::new(),
        }
    }

    /// The providers' labels, in order.
    pub fn providers(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().map(|s| s.label.as_str())
    }

    /// Reads a connection string (for example Service Bus') stored under `key`: see
    /// [`read_connection_string`]. The value is never logged.
    pub async fn connection_string(&self, key: &str) -> Result<SecretString, ProviderError> {
        read_connection_string(self, key).await
    }
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStore")
            .field("providers", &self.providers().collect::<Vec<_>>())
            .finish()
    }
}

#[async_trait]
impl SecretProvider for SecretStore {
    async fn get_secret(&self, name: &str) -> Result<Secret, ProviderError> {
        self.read(name, None).await
    }

    /// The given version, asked of the providers in the same order and by the same rules as
    /// [`get_secret`](Self::get_secret): each provider's own
    /// [`get_secret_version`](SecretProvider::get_secret_version) answers.
    async fn get_secret_version(&self, name: &str, version: &str) -> Result<Secret, ProviderError> {
        self.read(name, Some(version)).await
    }
}

impl SecretStore {
    async fn read(&self, name: &str, version: Option<&str>) -> Result<Secret, ProviderError> {
        crate::error::reject_blank(name)?;
        let mut answers = Vec::new();
        // The first non-miss failure: once set, only fallback providers are asked, and it
        // decides the error's kind if none of them answers.
        let mut failed: Option<usize> = None;
        for source in self.sources.iter() {
            if failed.is_some() && !source.fallback {
                continue;
            }
            let asked = source.names.to_vault_name(name);
            let read = match version {
                Some(version) => source.provider.get_secret_version(&asked, version).await,
                None => source.provider.get_secret(&asked).await,
            };
            match read {
                Ok(secret) => {
                    if failed.is_some() {
                        tracing::warn!(secret = name, provider = %source.label, "secret read from a fallback provider after a failure");
                    } else {
                        tracing::debug!(secret = name, provider = %source.label, "secret read");
                    }
                    return Ok(secret);
                }
                Err(error) if error.is_critical() => {
                    tracing::debug!(secret = name, provider = %source.label, kind = %error.kind, "critical failure; not asking further providers");
                    answers.push(failure(source, error));
                    let decisive = answers.len() - 1;
                    return Err(aggregate(name, answers, Some(decisive)));
                }
                Err(error) if is_miss(&error) => {
                    tracing::debug!(secret = name, provider = %source.label, kind = %error.kind, "not there; asking the next provider");
                    answers.push(failure(source, error));
                }
                Err(error) => {
                    tracing::warn!(secret = name, provider = %source.label, kind = %error.kind, error = %error.message, "provider failed; only fallback providers are asked now");
                    answers.push(failure(source, error));
                    failed.get_or_insert(answers.len() - 1);
                }
            }
        }
        Err(aggregate(name, answers, failed))
    }
}

fn failure(source: &Source, error: ProviderError) -> ProviderFailure {
    ProviderFailure {
        provider: source.label.clone(),
        error,
    }
}

fn is_miss(error: &ProviderError) -> bool {
    matches!(
        error.kind,
        ProviderErrorKind::NotFound | ProviderErrorKind::InvalidName
    )
}

/// The store's error. `decisive` is the index in `answers` of the failure that decides the
/// kind (the critical one, or the first non-miss failure); `None` when every answer was a miss.
fn aggregate(name: &str, answers: Vec<ProviderFailure>, decisive: Option<usize>) -> ProviderError {
    let kind = match decisive {
        Some(index) => answers[index].error.kind,
        None => miss_kind(&answers),
    };
    let listed: Vec<String> = answers
        .iter()
        .map(|a| {
            let asked = if a.error.name == name {
                String::new()
            } else {
                format!(" as `{}`", a.error.name)
            };
            format!(
                "[{}{asked}] {}: {}",
                a.provider, a.error.kind, a.error.message
            )
        })
        .collect();
    let message = if answers.is_empty() {
        "the store has no providers".to_owned()
    } else {
        let summary = match kind {
            ProviderErrorKind::AccessDenied => "a provider refused access",
            ProviderErrorKind::NotFound | ProviderErrorKind::InvalidName => "no provider has it",
            _ => "no provider could read it",
        };
        format!("{summary}: {}", listed.join("; "))
    };
    ProviderError::new(name, kind, message).with_source(StoreFailures::new(answers, decisive))
}

/// The kind when every provider missed: `InvalidName` only when every one rejected the name.
fn miss_kind(answers: &[ProviderFailure]) -> ProviderErrorKind {
    let all_invalid = !answers.is_empty()
        && answers
            .iter()
            .all(|a| a.error.kind == ProviderErrorKind::InvalidName);
    if all_invalid {
        ProviderErrorKind::InvalidName
    } else {
        ProviderErrorKind::NotFound
    }
}

/// Reads a connection string stored under `key` in any provider (a store, a cache over one):
/// what the original .NET job's connection-string registration did with its secret store.
///
/// A blank key is rejected before any provider is asked (`InvalidName`); surrounding whitespace
/// of the value (a trailing newline from a file) is removed; an empty value is an error (kind
/// `Other`). The value is never logged nor put in an error.
///
/// ```
/// use keyvault_invalidator_core::secrecy::ExposeSecret;
/// use keyvault_invalidator_secrets::{read_connection_string, StaticProvider};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let provider = StaticProvider::new([("sb", "Endpoint=sb://ns/;EntityPath=t\n")]);
/// let value = read_connection_string(&provider, "sb").await.unwrap();
/// assert_eq!(value.expose_secret(), "Endpoint=sb://ns/;EntityPath=t");
/// # }
/// ```
pub async fn read_connection_string<P>(
    provider: &P,
    key: &str,
) -> Result<SecretString, ProviderError>
where
    P: SecretProvider + ?Sized,
{
    if key.trim().is_empty() {
        return Err(ProviderError::new(
            key,
            ProviderErrorKind::InvalidName,
            "a connection string key cannot be blank",
        ));
    }
    let secret = provider.get_secret(key).await?;
    let value = secret.value().expose_secret().trim();
    if value.is_empty() {
        return Err(ProviderError::new(
            key,
            ProviderErrorKind::Other,
            "the connection string is empty",
        ));
    }
    tracing::debug!(key, version = secret.version(), "connection string read");
    Ok(SecretString::from(value.to_owned()))
}

/// Builds a [`SecretStore`].
pub struct SecretStoreBuilder {
    sources: Vec<Source>,
}

impl SecretStoreBuilder {
    /// Adds `provider`, asked after those added before. `label` names it in logs and errors.
    pub fn add(self, label: impl Into<String>, provider: impl SecretProvider + 'static) -> Self {
        self.add_with_names(label, provider, NameMapping::identity())
    }

    /// Adds `provider`, asking it for [`NameMapping::to_vault_name`] of the name asked of the
    /// store: for example `NameMapping::key_separator(":").vault_separator("--")` for Key Vault, whose names cannot
    /// hold `:`. Give the invalidator the same mapping.
    pub fn add_with_names(
        self,
        label: impl Into<String>,
        provider: impl SecretProvider + 'static,
        names: NameMapping,
    ) -> Self {
        self.push(label.into(), Arc::new(provider), names, false)
    }

    /// Adds `provider` as a **fallback**, asked after those added before: like any provider
    /// when they do not have the secret, and also when one of them *failed* (throttled,
    /// transient, other), but never after a critical error (access denied).
    ///
    /// Choose it knowingly: a value served by a fallback during a Key Vault outage is what a
    /// cache above the store then holds for its TTL, instead of serving its last good (stale)
    /// value. Without fallbacks, such a failure is returned as it is. After a failure, only
    /// fallback providers are asked; ordinary ones added after it are skipped.
    ///
    /// ```
    /// use keyvault_invalidator_core::{secrecy::ExposeSecret, ProviderErrorKind, SecretProvider};
    /// use keyvault_invalidator_secrets::{SecretStore, StaticProvider};
    /// use keyvault_invalidator_testkit::InMemoryVault;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let vault = InMemoryVault::new();
    /// vault.fail_next(1, ProviderErrorKind::Transient); // a Key Vault 503, say
    /// let store = SecretStore::builder()
    ///     .add("key-vault", vault)
    ///     .fallback("defaults", StaticProvider::new([("feature-flags", "{}")]))
    ///     .build();
    /// let secret = store.get_secret("feature-flags").await.unwrap();
    /// assert_eq!(secret.value().expose_secret(), "{}");
    /// # }
    /// ```
    pub fn fallback(
        self,
        label: impl Into<String>,
        provider: impl SecretProvider + 'static,
    ) -> Self {
        self.fallback_with_names(label, provider, NameMapping::identity())
    }

    /// [`fallback`](Self::fallback) with a name mapping, as [`add_with_names`](Self::add_with_names).
    pub fn fallback_with_names(
        self,
        label: impl Into<String>,
        provider: impl SecretProvider + 'static,
        names: NameMapping,
    ) -> Self {
        self.push(label.into(), Arc::new(provider), names, true)
    }

    fn push(
        mut self,
        label: String,
        provider: Arc<dyn SecretProvider>,
        names: NameMapping,
        fallback: bool,
    ) -> Self {
        self.sources.push(Source {
            label,
            provider,
            names,
            fallback,
        });
        self
    }

    /// The store.
    pub fn build(self) -> SecretStore {
        SecretStore {
            sources: self.sources.into(),
        }
    }
}

impl fmt::Debug for SecretStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<&str> = self.sources.iter().map(|s| s.label.as_str()).collect();
        f.debug_struct("SecretStoreBuilder")
            .field("providers", &labels)
            .finish()
    }
}
