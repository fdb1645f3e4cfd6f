//! The default [`Invalidator`] for Key Vault events.

use std::collections::BTreeSet;
use std::fmt;

use async_trait::async_trait;

use crate::cache::{NewVersion, SecretCache};
use crate::event::{Event, EventKind, KeyVaultEventType};
use crate::invalidator::{IgnoreReason, InvalidationError, Invalidator, Outcome};
use crate::names::NameMapping;

/// Invalidates cached secrets when Key Vault announces a change.
///
/// - It acts on a set of event types (default: `SecretNewVersionCreated`).
/// - It accepts events from an allow-list of vaults (matched without regard to case); with no
///   list it accepts every vault and warns once when built.
/// - It maps Key Vault names to cache keys with a [`NameMapping`]
///   ([`NameMapping::to_cache_key`]); give the provider under the cache the same mapping.
///
/// ```
/// use std::sync::Arc;
/// use keyvault_invalidator_core::{KeyVaultInvalidator, NameMapping, SecretCache, CacheError};
/// # struct NoCache;
/// # #[async_trait::async_trait]
/// # impl SecretCache for NoCache {
/// #     async fn invalidate(&self, _: &str) -> Result<(), CacheError> { Ok(()) }
/// # }
/// # let cache = Arc::new(NoCache);
///
/// let invalidator = KeyVaultInvalidator::builder(cache)
///     .allow_vault("my-vault")
///     .name_mapping(NameMapping::key_separator(":").vault_separator("--"))
///     .build();
/// assert_eq!(invalidator.cache_key_for("ServiceBus--ConnectionString"), "ServiceBus:ConnectionString");
/// ```
pub struct KeyVaultInvalidator<C> {
    cache: C,
    event_types: BTreeSet<KeyVaultEventType>,
    allowed_vaults: Option<BTreeSet<String>>,
    name_mapping: NameMapping,
}

impl<C: SecretCache> KeyVaultInvalidator<C> {
    /// Starts configuring an invalidator for `cache`.
    pub fn builder(cache: C) -> KeyVaultInvalidatorBuilder<C> {
        KeyVaultInvalidatorBuilder {
            cache,
            event_types: BTreeSet::from([KeyVaultEventType::SecretNewVersionCreated]),
            allowed_vaults: None,
            name_mapping: NameMapping::identity(),
        }
    }

    /// An invalidator with the defaults: new secret versions, any vault, names as they are.
    pub fn new(cache: C) -> Self {
        Self::builder(cache).build()
    }

    /// The cache key a Key Vault object name maps to.
    pub fn cache_key_for(&self, name: &str) -> String {
        self.name_mapping.to_cache_key(name)
    }

    fn vault_allowed(&self, vault: Option<&str>) -> bool {
        match (&self.allowed_vaults, vault) {
            (None, _) => true,
            (Some(list), Some(vault)) => list.contains(&vault.to_ascii_lowercase()),
            (Some(_), None) => false,
        }
    }
}

impl<C> fmt::Debug for KeyVaultInvalidator<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyVaultInvalidator")
            .field("event_types", &self.event_types)
            .field("allowed_vaults", &self.allowed_vaults)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<C: SecretCache> Invalidator for KeyVaultInvalidator<C> {
    async fn handle(&self, event: &Event) -> Result<Outcome, InvalidationError> {
        let kv = match &event.kind {
            EventKind::KeyVault(kv) => kv,
            EventKind::SubscriptionValidation(_) => {
                return Ok(Outcome::Ignored(IgnoreReason::SubscriptionValidation))
            }
            EventKind::SubscriptionDeleted { .. } => {
                return Ok(Outcome::Ignored(IgnoreReason::SubscriptionDeleted))
            }
            _ => return Ok(Outcome::Ignored(IgnoreReason::NotKeyVault)),
        };
        if !self.event_types.contains(&kv.event_type) {
            return Ok(Outcome::Ignored(IgnoreReason::EventTypeNotHandled(
                kv.event_type,
            )));
        }
        if !self.vault_allowed(kv.vault.as_deref()) {
            tracing::info!(
                vault = kv.vault.as_deref().unwrap_or("<none>"),
                secret = %kv.name,
                "ignoring an event from a vault that is not on the allow-list"
            );
            return Ok(Outcome::Ignored(IgnoreReason::VaultNotAllowed(
                kv.vault.clone(),
            )));
        }
        let key = self.name_mapping.to_cache_key(kv.name.as_str());
        let is_new_version = matches!(
            kv.event_type,
            KeyVaultEventType::SecretNewVersionCreated
                | KeyVaultEventType::KeyNewVersionCreated
                | KeyVaultEventType::CertificateNewVersionCreated
        );
        if is_new_version {
            let change = NewVersion {
                version: kv.version.clone(),
                event_time: event.time,
            };
            self.cache.new_version(&key, &change).await?;
        } else {
            self.cache.invalidate(&key).await?;
        }
        Ok(Outcome::Invalidated { keys: vec![key] })
    }
}

/// Configures a [`KeyVaultInvalidator`].
pub struct KeyVaultInvalidatorBuilder<C> {
    cache: C,
    event_types: BTreeSet<KeyVaultEventType>,
    allowed_vaults: Option<BTreeSet<String>>,
    name_mapping: NameMapping,
}

impl<C: SecretCache> KeyVaultInvalidatorBuilder<C> {
    /// Replaces the event types that invalidate (default: `SecretNewVersionCreated` alone).
    pub fn event_types(mut self, types: impl IntoIterator<Item = KeyVaultEventType>) -> Self {
        self.event_types = types.into_iter().collect();
        self
    }

    /// Adds a vault to the allow-list. Once any vault is added, events from other vaults (or
    /// naming none) are ignored.
    pub fn allow_vault(mut self, vault: impl AsRef<str>) -> Self {
        self.allowed_vaults
            .get_or_insert_with(BTreeSet::new)
            .insert(vault.as_ref().trim().to_ascii_lowercase());
        self
    }

    /// Adds several vaults to the allow-list.
    pub fn allow_vaults<V: AsRef<str>>(self, vaults: impl IntoIterator<Item = V>) -> Self {
        vaults.into_iter().fold(self, |b, v| b.allow_vault(v))
    }

    /// Sets how Key Vault names and cache keys relate (default: they are the same); the
    /// invalidator uses [`NameMapping::to_cache_key`].
    pub fn name_mapping(mut self, mapping: NameMapping) -> Self {
        self.name_mapping = mapping;
        self
    }

    /// Builds the invalidator. Warns once when no vault allow-list is set.
    pub fn build(self) -> KeyVaultInvalidator<C> {
        if self.allowed_vaults.is_none() {
            tracing::warn!(
                "no vault allow-list is set: events from every Key Vault will invalidate the cache; \
                 call allow_vault() to accept only your own vaults"
            );
        }
        KeyVaultInvalidator {
            cache: self.cache,
            event_types: self.event_types,
            allowed_vaults: self.allowed_vaults,
            name_mapping: self.name_mapping,
        }
    }
}
