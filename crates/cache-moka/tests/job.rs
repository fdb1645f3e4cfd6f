//! The job driving the moka cache: a rotation event refreshes the secret once; a critical
//! provider error shows in the job's outcome.

use keyvault_invalidator_core::secrecy::ExposeSecret;
use keyvault_invalidator_core::{Job, KeyVaultInvalidator, ProviderErrorKind};
use keyvault_invalidator_moka::CachedSecretProvider;
use keyvault_invalidator_testkit::{InMemoryEventSource, InMemoryVault, KeyVaultEventBuilder};

fn event(name: &str, version: &str) -> Vec<u8> {
    KeyVaultEventBuilder::secret_new_version(name)
        .vault("prod-kv")
        .version(version)
        .now()
        .event_grid_bytes()
}

#[tokio::test]
async fn a_rotation_event_refreshes_the_cache_once_before_the_message_is_completed() {
    let vault = InMemoryVault::new();
    vault.set("db-password", "v1");
    let cache = CachedSecretProvider::new(vault.clone());
    cache.get("db-password").await.unwrap();
    let source = InMemoryEventSource::new();
    let publisher = source.publisher();
    let job = Job::builder(
        source,
        KeyVaultInvalidator::builder(cache.clone())
            .allow_vault("prod-kv")
            .build(),
    )
    .spawn();

    let v2 = vault.rotate("db-password", "v2");
    for n in 0..3 {
        publisher.publish(format!("redelivery-{n}"), event("db-password", &v2));
    }
    let log = publisher.wait_for_settlements(3).await;

    assert_eq!(log.completed().len(), 3);
    assert_eq!(
        vault.calls("db-password"),
        2,
        "warm-up plus one refresh for three deliveries"
    );
    let secret = cache.get("db-password").await.unwrap();
    assert_eq!(secret.value().expose_secret(), "v2");
    assert_eq!(cache.stats().duplicate_events, 2);
    job.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_critical_provider_error_is_dead_lettered_with_its_description() {
    let vault = InMemoryVault::new();
    vault.set("db-password", "v1");
    let cache = CachedSecretProvider::new(vault.clone());
    cache.get("db-password").await.unwrap();
    let source = InMemoryEventSource::new();
    let publisher = source.publisher();
    let job = Job::builder(source, KeyVaultInvalidator::new(cache.clone())).spawn();

    let v2 = vault.rotate("db-password", "v2");
    vault.fail_next(1, ProviderErrorKind::AccessDenied);
    publisher.publish("m1", event("db-password", &v2));
    let log = publisher.wait_for_settlements(1).await;

    assert_eq!(
        log.dead_lettered(),
        vec![(
            "m1".to_owned(),
            "InvalidationRejected".to_owned(),
            "cache entry `db-password`: refreshing failed with a critical error: secret `db-password`: access denied: injected failure".to_owned()
        )]
    );
    let stats = job.shutdown().await.unwrap();
    assert_eq!((stats.dead_lettered, stats.invalidated), (1, 0));
}
