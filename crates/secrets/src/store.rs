//! [`SecretStore`]: providers composed in order.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

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
///   provider;
/// - a **critical** error ([`ProviderError::is_critical`]: access denied, authentication) stops
///   the search at once and is returned: a vault that refuses us must never be papered over by a
///   value from a provider further down;
/// - any other failure (throttled, transient, other) is logged and the search moves on, so a
///   later provider can still answer.
///
/// When no provider answers, the one error returned lists every provider's answer in its message
/// (`[label] kind: message; ...`), and carries them as a [`StoreFailures`] source. Its kind:
/// `AccessDenied` after a critical error; `NotFound` (or `InvalidName` when every provider
/// rejected the name) when nothing failed otherwise; else the failures' kind when they agree,
/// `Throttled` (with the longest `Retry-After` announced) when all were retryable and one was
/// throttled, `Transient` when all were transient, and `Other` when any was not retryable.
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
///     .add_with_names("key-vault", vault, NameMapping::replace(":", "--"))
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
        crate::error::reject_blank(name)?;
        let mut answers = Vec::new();
        for source in self.sources.iter() {
            let asked = source.names.apply(name);
            match source.provider.get_secret(&asked).await {
                Ok(secret) => {
                    tracing::debug!(secret = name, provider = %source.label, "secret read");
                    return Ok(secret);
                }
                Err(error) if error.is_critical() => {
                    tracing::debug!(secret = name, provider = %source.label, kind = %error.kind, "critical failure; not asking further providers");
                    answers.push(failure(source, error));
                    return Err(aggregate(name, answers));
                }
                Err(error) if is_miss(&error) => {
                    tracing::debug!(secret = name, provider = %source.label, kind = %error.kind, "not there; asking the next provider");
                    answers.push(failure(source, error));
                }
                Err(error) => {
                    tracing::warn!(secret = name, provider = %source.label, kind = %error.kind, error = %error.message, "provider failed; asking the next provider");
                    answers.push(failure(source, error));
                }
            }
        }
        Err(aggregate(name, answers))
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

fn aggregate(name: &str, answers: Vec<ProviderFailure>) -> ProviderError {
    let kind = aggregate_kind(&answers);
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
    ProviderError::new(name, kind, message).with_source(StoreFailures::new(answers))
}

fn aggregate_kind(answers: &[ProviderFailure]) -> ProviderErrorKind {
    if answers.iter().any(|a| a.error.is_critical()) {
        return ProviderErrorKind::AccessDenied;
    }
    let failures: Vec<&ProviderError> = answers
        .iter()
        .map(|a| &a.error)
        .filter(|e| !is_miss(e))
        .collect();
    if failures.is_empty() {
        let all_invalid = !answers.is_empty()
            && answers
                .iter()
                .all(|a| a.error.kind == ProviderErrorKind::InvalidName);
        return if all_invalid {
            ProviderErrorKind::InvalidName
        } else {
            ProviderErrorKind::NotFound
        };
    }
    if failures.iter().all(|e| e.kind == failures[0].kind) {
        return failures[0].kind;
    }
    if !failures.iter().all(|e| e.is_retryable()) {
        return ProviderErrorKind::Other;
    }
    let throttled: Vec<Option<Duration>> = failures
        .iter()
        .filter_map(|e| match e.kind {
            ProviderErrorKind::Throttled { retry_after } => Some(retry_after),
            _ => None,
        })
        .collect();
    if throttled.is_empty() {
        ProviderErrorKind::Transient
    } else {
        ProviderErrorKind::Throttled {
            retry_after: throttled.into_iter().flatten().max(),
        }
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

    /// Adds `provider`, asking it for the mapped name instead of the store's: for example
    /// `NameMapping::replace(":", "--")` for Key Vault, whose names cannot hold `:`.
    pub fn add_with_names(
        mut self,
        label: impl Into<String>,
        provider: impl SecretProvider + 'static,
        names: NameMapping,
    ) -> Self {
        self.sources.push(Source {
            label: label.into(),
            provider: Arc::new(provider),
            names,
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
