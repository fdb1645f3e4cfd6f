//! The job, the RabbitMQ source and the moka cache together, against a real broker.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use keyvault_invalidator_core::secrecy::ExposeSecret;
use keyvault_invalidator_core::{
    parse_events, Job, JobError, JobHandle, KeyVaultInvalidator, SourceErrorKind,
};
use keyvault_invalidator_moka::CachedSecretProvider;
use keyvault_invalidator_rabbitmq::lapin::options::{QueueBindOptions, QueueDeclareOptions};
use keyvault_invalidator_rabbitmq::lapin::types::FieldTable;
use keyvault_invalidator_rabbitmq::lapin::ExchangeKind;
use keyvault_invalidator_rabbitmq::{RabbitMqConfig, RabbitMqSource};
use keyvault_invalidator_testkit::{
    eventually, InMemoryVault, KeyVaultEventBuilder, RecordingCache,
};

const ROUTING_KEY: &str = "Microsoft.KeyVault.SecretNewVersionCreated";

fn event(name: &str, version: &str) -> KeyVaultEventBuilder {
    KeyVaultEventBuilder::secret_new_version(name)
        .vault("prod-kv")
        .version(version)
        .now()
}

/// A connected source and a job invalidating `cache` over it.
async fn job<C>(config: RabbitMqConfig, cache: C) -> (RabbitMqSource, JobHandle)
where
    C: keyvault_invalidator_core::SecretCache + 'static,
{
    let source = RabbitMqSource::new(config);
    source.connect().await.expect("connect");
    let invalidator = KeyVaultInvalidator::builder(cache)
        .allow_vault("prod-kv")
        .build();
    let handle = Job::builder(source.clone(), invalidator)
        .spawn()
        .expect("a Tokio runtime");
    (source, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_refresh_exactly_their_secrets_and_malformed_ones_are_dead_lettered() {
    let Some(url) = support::broker().await else {
        return;
    };
    let vault = InMemoryVault::new();
    for name in ["db-password", "api-key", "untouched"] {
        vault.set(name, "v1");
    }
    let cache = CachedSecretProvider::new(vault.clone());
    for name in ["db-password", "api-key", "untouched"] {
        cache.get(name).await.unwrap();
    }
    let config = support::isolated_instance(&url, "e2e");
    let (source, handle) = job(config.clone(), cache.clone()).await;
    let (_connection, channel) = support::publisher(&url).await;

    let db = vault.rotate("db-password", "v2");
    let api = vault.rotate("api-key", "v2");
    let exchange = config.exchange_name();
    support::publish(
        &channel,
        exchange,
        ROUTING_KEY,
        &event("db-password", &db).cloud_event_bytes(),
    )
    .await
    .unwrap();
    support::publish(
        &channel,
        exchange,
        ROUTING_KEY,
        &event("api-key", &api).event_grid_bytes(),
    )
    .await
    .unwrap();
    let malformed =
        br#"{"id":"bad-1","eventType":"Microsoft.KeyVault.SecretNewVersionCreated","data":{}}"#;
    support::publish(&channel, exchange, ROUTING_KEY, malformed)
        .await
        .unwrap();

    eventually("all three deliveries are settled", || {
        let stats = handle.stats();
        stats.completed + stats.dead_lettered == 3
    })
    .await;
    for (name, expected) in [
        ("db-password", "v2"),
        ("api-key", "v2"),
        ("untouched", "v1"),
    ] {
        let secret = cache.get(name).await.unwrap();
        assert_eq!(secret.value().expose_secret(), expected, "{name}");
    }
    assert_eq!(
        (
            vault.calls("db-password"),
            vault.calls("api-key"),
            vault.calls("untouched")
        ),
        (2, 2, 1)
    );
    let expected_description = parse_events(malformed).unwrap_err().to_string();
    assert_eq!(
        support::drain_dead_letters(&channel, config.dead_letter_queue_name(), 1).await,
        vec![(
            malformed.to_vec(),
            "MalformedPayload".to_owned(),
            expected_description
        )]
    );
    assert_eq!(
        support::queue_depth(&url, source.queue_name()).await,
        Some(0),
        "nothing left"
    );

    let stats = handle.shutdown().await.unwrap();
    assert_eq!(
        (stats.completed, stats.dead_lettered, stats.invalidated),
        (2, 1, 2)
    );
    assert_eq!(
        support::queue_depth(&url, source.queue_name()).await,
        None,
        "graceful shutdown deletes the instance queue"
    );
    support::remove(&url, &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_receives_every_event() {
    let Some(url) = support::broker().await else {
        return;
    };
    let first = support::isolated_instance(&url, "fanout");
    let second = RabbitMqConfig::new(&url)
        .and_then(|c| c.instance_prefix(&support::unique("fanout-b")))
        .unwrap()
        .exchange(first.exchange_name())
        .dead_letter_exchange(first.dead_letter_exchange_name())
        .dead_letter_queue(first.dead_letter_queue_name());
    let (cache_a, cache_b) = (RecordingCache::new(), RecordingCache::new());
    let (_, job_a) = job(first.clone(), cache_a.clone()).await;
    let (_, job_b) = job(second.clone(), cache_b.clone()).await;
    let (_connection, channel) = support::publisher(&url).await;

    let names: Vec<String> = (0..5).map(|n| format!("secret-{n}")).collect();
    for name in &names {
        support::publish(
            &channel,
            first.exchange_name(),
            ROUTING_KEY,
            &event(name, "abc").event_grid_bytes(),
        )
        .await
        .unwrap();
    }
    eventually("both instances saw all five", || {
        cache_a.invalidated().len() == 5 && cache_b.invalidated().len() == 5
    })
    .await;
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(cache_a.invalidated()), names);
    assert_eq!(sorted(cache_b.invalidated()), names);
    job_a.shutdown().await.unwrap();
    job_b.shutdown().await.unwrap();
    support::remove(&url, &first).await;
    support::remove(&url, &second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_an_existing_queue_share_the_load() {
    let Some(url) = support::broker().await else {
        return;
    };
    let exchange = support::unique("shared-ex");
    let queue = support::unique("shared-q");
    // The queue is infrastructure's: declared and bound outside the library.
    let (_connection, channel) = support::publisher(&url).await;
    support::declare_exchange(&channel, &exchange, ExchangeKind::Topic).await;
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.as_str().into(), durable_queue, FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let config = |name: &str| {
        RabbitMqConfig::new(&url)
            .and_then(|c| c.existing_queue(&queue))
            .unwrap()
            .declare_topology(false)
            .dead_letter_exchange(&format!("{exchange}-dlx"))
            .dead_letter_queue(&format!("{exchange}-dlq"))
            .prefetch(1)
            .instance_id(name)
            .unwrap()
    };
    let (cache_a, cache_b) = (RecordingCache::new(), RecordingCache::new());
    let (_, job_a) = job(config("a"), cache_a.clone()).await;
    let (_, job_b) = job(config("b"), cache_b.clone()).await;

    for n in 0..20 {
        let body = event(&format!("secret-{n}"), "abc").event_grid_bytes();
        support::publish(&channel, &exchange, ROUTING_KEY, &body)
            .await
            .unwrap();
    }
    eventually("all twenty are handled", || {
        cache_a.invalidated().len() + cache_b.invalidated().len() == 20
    })
    .await;
    let (a, b) = (cache_a.invalidated(), cache_b.invalidated());
    let all: BTreeSet<String> = a.iter().chain(b.iter()).cloned().collect();
    assert_eq!(all.len(), 20, "each event handled once: {a:?} {b:?}");
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both instances took a share: {} and {}",
        a.len(),
        b.len()
    );
    job_a.shutdown().await.unwrap();
    job_b.shutdown().await.unwrap();
    assert_eq!(
        support::queue_depth(&url, &queue).await,
        Some(0),
        "an existing queue is never deleted"
    );
    let _ = channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topology_that_conflicts_with_the_brokers_is_a_clear_fatal_error() {
    let Some(url) = support::broker().await else {
        return;
    };
    let config = support::isolated_instance(&url, "mismatch");
    let (_connection, channel) = support::publisher(&url).await;
    // Someone declared the exchange as fanout; the library wants a topic exchange.
    support::declare_exchange(&channel, config.exchange_name(), ExchangeKind::Fanout).await;
    let invalidator = KeyVaultInvalidator::new(RecordingCache::new());
    let handle = Job::builder(RabbitMqSource::new(config.clone()), invalidator)
        .spawn()
        .expect("a Tokio runtime");

    let outcome = tokio::time::timeout(Duration::from_secs(60), handle.wait())
        .await
        .expect("the job stops instead of retrying forever");
    match outcome {
        Err(JobError::Source(error)) => {
            assert_eq!(error.kind, SourceErrorKind::Fatal);
            let message = error.to_string();
            assert!(
                message.contains(&format!("declaring exchange `{}`", config.exchange_name()))
                    && message.contains("PRECONDITION_FAILED"),
                "{message}"
            );
        }
        other => panic!("expected a fatal source error, got {other:?}"),
    }
    support::remove(&url, &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_existing_queue_is_a_clear_fatal_error() {
    let Some(url) = support::broker().await else {
        return;
    };
    let queue = support::unique("absent");
    let config = RabbitMqConfig::new(&url)
        .and_then(|c| c.existing_queue(&queue))
        .unwrap()
        .declare_topology(false);
    let error = RabbitMqSource::new(config).connect().await.unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::Fatal);
    assert!(
        error.to_string().contains(&format!(
            "checking that queue `{queue}` exists: it does not exist (NOT_FOUND)"
        )),
        "{error}"
    );
}
