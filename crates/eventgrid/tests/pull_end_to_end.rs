//! End to end: a real job over the pull source refreshes a moka cache from an in-memory vault
//! when the stand-in delivers Key Vault's CloudEvents; a payload the job cannot read is
//! rejected into the dead-letter destination.

mod common;

use std::sync::Arc;

use keyvault_invalidator_core::secrecy::ExposeSecret;
use keyvault_invalidator_core::{Job, KeyVaultInvalidator};
use keyvault_invalidator_moka::CachedSecretProvider;
use keyvault_invalidator_testkit::eventgrid_namespace::Operation;
use keyvault_invalidator_testkit::{eventually, InMemoryVault, KeyVaultEventBuilder};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_reaches_the_cache_through_the_namespace_topic() {
    let standin = common::standin().await;
    let (topic, subscription) = common::new_subscription(&standin, "e2e");
    let vault = InMemoryVault::new();
    for name in ["db-password", "api-key", "untouched"] {
        vault.set(name, "v1");
    }
    let cache = CachedSecretProvider::new(vault.clone());
    for name in ["db-password", "api-key", "untouched"] {
        cache.get(name).await.unwrap();
    }
    let source = Arc::new(common::source(&standin, &topic, &subscription));
    let invalidator = KeyVaultInvalidator::builder(cache.clone())
        .allow_vault("prod-kv")
        .build();
    let handle = Job::builder(source.clone(), invalidator)
        .spawn()
        .expect("a Tokio runtime");

    let db = vault.rotate("db-password", "v2");
    let api = vault.rotate("api-key", "v2");
    let event = |name: &str, version: &str| {
        KeyVaultEventBuilder::secret_new_version(name)
            .vault("prod-kv")
            .version(version)
            .now()
            .cloud_event()
    };
    // A CloudEvent the service takes, whose data is no Key Vault event.
    let unreadable = json!({
        "id": "bad-1", "source": "/vaults/prod-kv", "specversion": "1.0",
        "type": "Microsoft.KeyVault.SecretNewVersionCreated", "data": "not an object"
    });
    standin
        .publish(
            &topic,
            [
                event("db-password", &db),
                event("api-key", &api),
                unreadable.clone(),
            ],
        )
        .expect("published");

    eventually("all three deliveries are settled", || {
        let stats = handle.stats();
        stats.completed + stats.dead_lettered == 3
    })
    .await;
    for (name, value, version) in [
        ("db-password", "v2", Some(db.as_str())),
        ("api-key", "v2", Some(api.as_str())),
        ("untouched", "v1", None),
    ] {
        let secret = cache.get(name).await.unwrap();
        assert_eq!(secret.value().expose_secret(), value, "{name}");
        if let Some(version) = version {
            assert_eq!(secret.version(), Some(version), "{name}");
        }
    }
    assert_eq!(
        (
            vault.calls("db-password"),
            vault.calls("api-key"),
            vault.calls("untouched")
        ),
        (2, 2, 1)
    );
    eventually("the unreadable event is dead-lettered", || {
        standin.dead_letters(&topic, &subscription).len() == 1
    })
    .await;
    let letters = standin.dead_letters(&topic, &subscription);
    assert_eq!(
        (&letters[0].event, letters[0].reason.as_str()),
        (&unreadable, "Rejected")
    );

    let stats = handle.shutdown().await.unwrap();
    // The job counts a settlement when it decides it; after shutdown every one was sent.
    assert_eq!(
        (
            standin.calls(Operation::Acknowledge),
            standin.calls(Operation::Reject),
            standin.calls(Operation::Release)
        ),
        (2, 1, 0)
    );
    assert_eq!(
        (stats.completed, stats.dead_lettered, stats.invalidated),
        (2, 1, 2)
    );
    assert_eq!(
        common::ready_and_locked(&standin, &topic, &subscription),
        (0, 0),
        "nothing left"
    );
}
