//! The broker closes every connection in the middle of a stream of events: the source
//! reconnects and no invalidation is lost. Its own test binary, because closing every
//! connection would disturb the other broker tests running in parallel.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use keyvault_invalidator_core::{Job, KeyVaultInvalidator};
use keyvault_invalidator_rabbitmq::lapin::{Channel, Connection};
use keyvault_invalidator_rabbitmq::RabbitMqSource;
use keyvault_invalidator_testkit::{KeyVaultEventBuilder, RecordingCache};

const EVENTS: usize = 60;
const CUT_AFTER: usize = 20;

async fn close_all_connections() -> Result<(), String> {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(["close_all_connections", "keyvault-invalidator fault test"])
        .output()
        .await
        .map_err(|e| format!("cannot run rabbitmqctl: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Publishes until the broker confirms, reconnecting the publisher when the cut hits it too.
async fn publish_surely(
    url: &str,
    publisher: &mut (Connection, Channel),
    exchange: &str,
    body: &[u8],
) {
    for _ in 0..100 {
        let published = support::publish(
            &publisher.1,
            exchange,
            "Microsoft.KeyVault.SecretNewVersionCreated",
            body,
        )
        .await;
        if published.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(fresh) =
            tokio::time::timeout(Duration::from_secs(5), support::publisher(url)).await
        {
            *publisher = fresh;
        }
    }
    panic!("could not publish after 100 attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_invalidation_is_lost_when_the_broker_closes_every_connection_mid_stream() {
    let Some(url) = support::broker().await else {
        return;
    };
    if let Err(why) = close_all_connections().await {
        if std::env::var("KVI_REQUIRE_RABBITMQ").as_deref() == Ok("1") {
            panic!("rabbitmqctl is needed for the fault test: {why}");
        }
        eprintln!("\n*** SKIPPED: rabbitmqctl is not usable here ({why}) ***\n");
        return;
    }
    let config = support::isolated_instance(&url, "faults");
    let source = RabbitMqSource::new(config.clone());
    source.connect().await.expect("connect");
    let cache = RecordingCache::new();
    let handle = Job::builder(source.clone(), KeyVaultInvalidator::new(cache.clone()))
        .spawn()
        .expect("a Tokio runtime");
    let mut publisher = support::publisher(&url).await;

    let names: Vec<String> = (0..EVENTS).map(|n| format!("secret-{n}")).collect();
    for (n, name) in names.iter().enumerate() {
        if n == CUT_AFTER {
            close_all_connections()
                .await
                .expect("close_all_connections");
        }
        let body = KeyVaultEventBuilder::secret_new_version(name)
            .now()
            .event_grid_bytes();
        publish_surely(&url, &mut publisher, config.exchange_name(), &body).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let wait = async {
        loop {
            let seen: BTreeSet<String> = cache.invalidated().into_iter().collect();
            if seen.len() == EVENTS {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let seen = match tokio::time::timeout(Duration::from_secs(120), wait).await {
        Ok(seen) => seen,
        Err(_) => {
            let seen: BTreeSet<String> = cache.invalidated().into_iter().collect();
            let lost: Vec<&String> = names.iter().filter(|n| !seen.contains(*n)).collect();
            panic!("{} of {EVENTS} invalidations lost: {lost:?}", lost.len());
        }
    };
    let expected: BTreeSet<String> = names.into_iter().collect();
    assert_eq!(
        seen, expected,
        "every event's secret invalidated at least once; lost: 0"
    );
    let stats = handle.stats();
    assert!(stats.receive_errors >= 1, "the cut was noticed: {stats:?}");
    assert!(stats.received >= EVENTS as u64, "{stats:?}");
    handle.shutdown().await.unwrap();
    assert_eq!(support::queue_depth(&url, source.queue_name()).await, None);
    support::remove(&url, &config).await;
}
