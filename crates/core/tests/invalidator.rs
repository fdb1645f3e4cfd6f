//! The default Key Vault invalidator, against a scripted cache: exact keys, exact call counts.

use keyvault_invalidator_core::{
    parse_events, Event, IgnoreReason, Invalidator, KeyVaultEventType, KeyVaultInvalidator,
    NameMapping, NewVersion, Outcome,
};
use keyvault_invalidator_testkit::events::{
    storage_blob_created, subscription_validation, to_bytes,
};
use keyvault_invalidator_testkit::mocks::MockSecretCache;
use keyvault_invalidator_testkit::KeyVaultEventBuilder;

fn event(body: &[u8]) -> Event {
    parse_events(body).unwrap().remove(0)
}

/// The builder's default version and event time.
const VERSION: &str = "ee059b2bb5bc48398a53b168c6cdcb10";
const EVENT_TIME: &str = "2019-07-25T01:08:33.1036736Z";

fn expect_one_new_version(key: &'static str) -> MockSecretCache {
    let mut cache = MockSecretCache::new();
    let expected = NewVersion::to(VERSION).at(EVENT_TIME.parse().unwrap());
    cache
        .expect_new_version()
        .withf(move |k, change| k == key && *change == expected)
        .times(1)
        .returning(|_, _| Ok(()));
    cache.expect_invalidate().never();
    cache
}

fn expect_nothing() -> MockSecretCache {
    let mut cache = MockSecretCache::new();
    cache.expect_invalidate().never();
    cache.expect_new_version().never();
    cache
}

#[tokio::test]
async fn a_new_version_from_an_allowed_vault_invalidates_the_mapped_key_once() {
    let invalidator =
        KeyVaultInvalidator::builder(expect_one_new_version("ServiceBus:ConnectionString"))
            .allow_vault("Sample-KV")
            .name_mapping(NameMapping::key_separator(":").vault_separator("--"))
            .build();
    let body =
        KeyVaultEventBuilder::secret_new_version("ServiceBus--ConnectionString").event_grid_bytes();
    let outcome = invalidator.handle(&event(&body)).await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Invalidated {
            keys: vec!["ServiceBus:ConnectionString".to_owned()]
        }
    );
}

#[tokio::test]
async fn events_from_other_vaults_are_ignored_with_the_vault_named() {
    let invalidator = KeyVaultInvalidator::builder(expect_nothing())
        .allow_vaults(["prod-kv", "prod-kv-2"])
        .build();
    let body = KeyVaultEventBuilder::secret_new_version("db-password")
        .vault("attacker-kv")
        .event_grid_bytes();
    let outcome = invalidator.handle(&event(&body)).await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Ignored(IgnoreReason::VaultNotAllowed(Some(
            "attacker-kv".to_owned()
        )))
    );
}

#[tokio::test]
async fn with_an_allow_list_an_event_naming_no_vault_is_ignored() {
    let invalidator = KeyVaultInvalidator::builder(expect_nothing())
        .allow_vault("prod-kv")
        .build();
    let body = br#"{"id":"1","eventType":"Microsoft.KeyVault.SecretNewVersionCreated","subject":"db-password","data":{}}"#;
    let outcome = invalidator.handle(&event(body)).await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Ignored(IgnoreReason::VaultNotAllowed(None))
    );
}

#[tokio::test]
async fn without_an_allow_list_every_vault_is_accepted() {
    let invalidator = KeyVaultInvalidator::new(expect_one_new_version("db-password"));
    let body = KeyVaultEventBuilder::secret_new_version("db-password")
        .vault("any-kv")
        .event_grid_bytes();
    assert!(matches!(
        invalidator.handle(&event(&body)).await.unwrap(),
        Outcome::Invalidated { .. }
    ));
}

#[tokio::test]
async fn other_event_types_and_other_events_are_ignored_with_their_reason() {
    let invalidator = KeyVaultInvalidator::new(expect_nothing());
    let cases = [
        (
            KeyVaultEventBuilder::new(KeyVaultEventType::KeyNewVersionCreated, "signing-key")
                .event_grid_bytes(),
            IgnoreReason::EventTypeNotHandled(KeyVaultEventType::KeyNewVersionCreated),
        ),
        (to_bytes(&storage_blob_created()), IgnoreReason::NotKeyVault),
        (
            to_bytes(&subscription_validation("code")),
            IgnoreReason::SubscriptionValidation,
        ),
    ];
    for (body, reason) in cases {
        assert_eq!(
            invalidator.handle(&event(&body)).await.unwrap(),
            Outcome::Ignored(reason)
        );
    }
}

#[tokio::test]
async fn a_cache_failure_comes_back_with_its_retry_class() {
    let mut cache = MockSecretCache::new();
    cache.expect_new_version().times(1).returning(|key, _| {
        Err(keyvault_invalidator_core::CacheError::retryable(
            key,
            "backend busy",
        ))
    });
    let invalidator = KeyVaultInvalidator::new(cache);
    let body = KeyVaultEventBuilder::secret_new_version("db-password").event_grid_bytes();
    let error = invalidator.handle(&event(&body)).await.unwrap_err();
    assert!(error.retryable);
    assert_eq!(error.to_string(), "cache entry `db-password`: backend busy");
}
