//! [`NameMapping`]: the application's secret names and the vault's, declared once, used both
//! ways; [`MappedNames`], a provider that asks for the vault's name.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::provider::{ProviderError, Secret, SecretProvider};

type Map = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// How the names an application reads (its cache keys) and the names its vault holds relate.
///
/// Declared once and used both ways: the invalidator turns the Key Vault name an event carries
/// into a cache key ([`to_cache_key`](Self::to_cache_key)), and the provider under the cache turns
/// a cache key into the name to ask the vault for ([`to_vault_name`](Self::to_vault_name); see
/// [`SecretProvider::with_names`], or a secret store's per-provider names). With one value for
/// both, the two directions cannot drift apart.
///
/// Key Vault names hold only letters, digits and `-`, so applications often keep
/// `ServiceBus:ConnectionString` in Key Vault as `ServiceBus--ConnectionString`:
///
/// ```
/// use keyvault_invalidator_core::NameMapping;
///
/// let names = NameMapping::key_separator(":").vault_separator("--");
/// assert_eq!(names.to_vault_name("ServiceBus:ConnectionString"), "ServiceBus--ConnectionString");
/// assert_eq!(names.to_cache_key("ServiceBus--ConnectionString"), "ServiceBus:ConnectionString");
/// ```
#[derive(Clone)]
pub struct NameMapping {
    to_cache_key: Map,
    to_vault_name: Map,
}

impl NameMapping {
    /// Cache keys are the vault's names.
    pub fn identity() -> Self {
        NameMapping {
            to_cache_key: Arc::new(str::to_owned),
            to_vault_name: Arc::new(str::to_owned),
        }
    }

    /// The application writes `key_separator` where the vault's names hold a separator of
    /// their own, named next with [`SeparatorMapping::vault_separator`]:
    /// `NameMapping::key_separator(":").vault_separator("--")` for Key Vault. Two steps, so the
    /// two separators cannot be swapped unnoticed. An empty separator leaves names as they are:
    /// it would otherwise insert the other one between every character.
    ///
    /// Every Key Vault name survives the round trip vault → key → vault. The other way, a key
    /// comes back unchanged unless the vault's separator could form across a key separator:
    /// with `:` and `--`, keys holding `--`, or a `-` beside a `:` (`A-:B` and `A:-B` are both
    /// `A---B` in the vault).
    pub fn key_separator(key_separator: impl Into<String>) -> SeparatorMapping {
        SeparatorMapping {
            key_separator: key_separator.into(),
        }
    }

    fn separators(key: String, vault: String) -> Self {
        if key.is_empty() || vault.is_empty() {
            return Self::identity();
        }
        let (key_for_vault, vault_for_key) = (key.clone(), vault.clone());
        NameMapping {
            to_cache_key: Arc::new(move |name| name.replace(&vault_for_key, &key)),
            to_vault_name: Arc::new(move |name| name.replace(&key_for_vault, &vault)),
        }
    }

    /// Any pair of functions, one for each direction. They should be inverses of each other:
    /// an event for a name the cache cannot map back to its key is an invalidation lost.
    pub fn custom(
        to_cache_key: impl Fn(&str) -> String + Send + Sync + 'static,
        to_vault_name: impl Fn(&str) -> String + Send + Sync + 'static,
    ) -> Self {
        NameMapping {
            to_cache_key: Arc::new(to_cache_key),
            to_vault_name: Arc::new(to_vault_name),
        }
    }

    /// The cache key for the vault's name `vault_name` (what an event carries).
    pub fn to_cache_key(&self, vault_name: &str) -> String {
        (self.to_cache_key)(vault_name)
    }

    /// The vault's name for the cache key `key` (what a provider asks for).
    pub fn to_vault_name(&self, key: &str) -> String {
        (self.to_vault_name)(key)
    }
}

impl Default for NameMapping {
    fn default() -> Self {
        Self::identity()
    }
}

/// The first half of a separator mapping, from [`NameMapping::key_separator`]: name the
/// vault's separator to finish it.
#[derive(Debug, Clone)]
#[must_use = "a separator mapping needs the vault's separator: call vault_separator"]
pub struct SeparatorMapping {
    key_separator: String,
}

impl SeparatorMapping {
    /// The separator the vault's names hold where the application's keys hold the key
    /// separator (`--` for Key Vault, whose names cannot hold `:`).
    pub fn vault_separator(self, vault_separator: impl Into<String>) -> NameMapping {
        NameMapping::separators(self.key_separator, vault_separator.into())
    }
}

impl fmt::Debug for NameMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NameMapping(..)")
    }
}

/// A provider asked for [`NameMapping::to_vault_name`] of every name it is asked for: see
/// [`SecretProvider::with_names`].
#[derive(Clone, Debug)]
pub struct MappedNames<P> {
    provider: P,
    names: NameMapping,
}

impl<P> MappedNames<P> {
    /// `provider`, asked for the vault's names.
    pub fn new(provider: P, names: NameMapping) -> Self {
        MappedNames { provider, names }
    }

    /// The wrapped provider.
    pub fn provider(&self) -> &P {
        &self.provider
    }

    /// The mapping.
    pub fn names(&self) -> &NameMapping {
        &self.names
    }
}

#[async_trait]
impl<P: SecretProvider> SecretProvider for MappedNames<P> {
    async fn get_secret(&self, name: &str) -> Result<Secret, ProviderError> {
        self.provider
            .get_secret(&self.names.to_vault_name(name))
            .await
    }

    async fn get_secret_version(&self, name: &str, version: &str) -> Result<Secret, ProviderError> {
        self.provider
            .get_secret_version(&self.names.to_vault_name(name), version)
            .await
    }
}
