//! The job engine's delivery semantics, end to end through the testkit's in-memory source.

use std::time::Duration;

use keyvault_invalidator_core::{
    Backoff, DeadLetterReason, Job, JobBuilder, JobError, JobState, KeyVaultEventType,
    KeyVaultInvalidator, NameMapping, ParseError, SourceErrorKind, StatsSnapshot,
};
use keyvault_invalidator_testkit::events::{
    batch, storage_blob_created, subscription_validation, to_bytes,
};
use keyvault_invalidator_testkit::{
    eventually, CacheCall, InMemoryEventSource, KeyVaultEventBuilder, RecordingCache,
};

/// The counters a test expects: zero but for what `set` changes.
fn expected_stats(set: impl FnOnce(&mut StatsSnapshot)) -> StatsSnapshot {
    let mut stats = StatsSnapshot::default();
    set(&mut stats);
    stats
}

const VERSION: &str = "0123456789abcdef0123456789abcdef";

fn secret_event(name: &str) -> KeyVaultEventBuilder {
    KeyVaultEventBuilder::secret_new_version(name)
        .vault("prod-kv")
        .version(VERSION)
}

fn new_version(key: &str) -> CacheCall {
    CacheCall::NewVersion {
        key: key.to_owned(),
        version: Some(VERSION.to_owned()),
        succeeded: true,
    }
}

/// A job over `source` invalidating `cache` for vault `prod-kv`, with millisecond backoffs so
/// retries do not slow the tests down.
fn job(source: &InMemoryEventSource, cache: &RecordingCache) -> JobBuilder {
    let invalidator = KeyVaultInvalidator::builder(cache.clone())
        .allow_vault("prod-kv")
        .build();
    fast(Job::builder(source.clone(), invalidator))
}

fn fast(builder: JobBuilder) -> JobBuilder {
    builder
        .retry_backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(5),
        ))
        .receive_backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(5),
        ))
}

#[tokio::test]
async fn a_new_secret_version_invalidates_exactly_that_secret_and_completes() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    let handle = job(&source, &cache).spawn().expect("a Tokio runtime");

    publisher.publish("m1", secret_event("db-password").event_grid_bytes());
    let log = publisher.wait_for_settlements(1).await;

    assert_eq!(log.completed(), vec!["m1"]);
    assert_eq!(cache.calls(), vec![new_version("db-password")]);
    let stats = handle.shutdown().await.unwrap();
    assert_eq!(
        stats,
        expected_stats(|s| {
            s.received = 1;
            s.events = 1;
            s.invalidated = 1;
            s.completed = 1;
        })
    );
    assert!(publisher.is_closed(), "shutdown closes the source");
}

#[tokio::test]
async fn cloud_events_with_every_quirk_invalidate_the_mapped_key() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    let invalidator = KeyVaultInvalidator::builder(cache.clone())
        .allow_vault("PROD-KV")
        .name_mapping(NameMapping::key_separator(":").vault_separator("--"))
        .build();
    let handle = fast(Job::builder(source.clone(), invalidator))
        .spawn()
        .expect("a Tokio runtime");

    let body = secret_event("ServiceBus--ConnectionString")
        .camel_case_data()
        .trailing_space_in_keys()
        .padded_values()
        .times(keyvault_invalidator_testkit::TimeStyle::String)
        .cloud_event_bytes();
    publisher.publish("m1", keyvault_invalidator_testkit::events::with_bom(&body));
    let log = publisher.wait_for_settlements(1).await;

    assert_eq!(log.completed(), vec!["m1"]);
    assert_eq!(
        cache.calls(),
        vec![new_version("ServiceBus:ConnectionString")]
    );
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn events_that_do_not_concern_the_job_are_completed_and_counted_as_ignored() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    let handle = job(&source, &cache).spawn().expect("a Tokio runtime");

    publisher.publish(
        "other-vault",
        secret_event("db-password")
            .vault("dev-kv")
            .event_grid_bytes(),
    );
    publisher.publish(
        "near-expiry",
        KeyVaultEventBuilder::new(KeyVaultEventType::SecretNearExpiry, "db-password")
            .vault("prod-kv")
            .event_grid_bytes(),
    );
    publisher.publish("blob", to_bytes(&storage_blob_created()));
    publisher.publish("validation", batch([subscription_validation("512d38b6")]));
    let log = publisher.wait_for_settlements(4).await;

    let mut completed = log.completed();
    completed.sort();
    assert_eq!(
        completed,
        vec!["blob", "near-expiry", "other-vault", "validation"]
    );
    assert_eq!(cache.calls(), vec![]);
    let stats = handle.shutdown().await.unwrap();
    assert_eq!(
        (stats.ignored, stats.invalidated, stats.completed),
        (4, 0, 4)
    );
}

#[tokio::test]
async fn configured_event_types_invalidate_and_others_do_not() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    let invalidator = KeyVaultInvalidator::builder(cache.clone())
        .event_types([KeyVaultEventType::SecretExpired])
        .build();
    let handle = fast(Job::builder(source.clone(), invalidator))
        .spawn()
        .expect("a Tokio runtime");

    publisher.publish(
        "expired",
        KeyVaultEventBuilder::new(KeyVaultEventType::SecretExpired, "api-key").event_grid_bytes(),
    );
    publisher.publish(
        "new-version",
        secret_event("db-password").event_grid_bytes(),
    );
    publisher.wait_for_settlements(2).await;

    assert_eq!(
        cache.calls(),
        vec![CacheCall::Invalidate {
            key: "api-key".to_owned(),
            succeeded: true
        }]
    );
    let stats = handle.shutdown().await.unwrap();
    assert_eq!((stats.invalidated, stats.ignored), (1, 1));
}

#[tokio::test]
async fn a_batch_with_mixed_events_invalidates_each_key_vault_secret_in_order() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    let handle = job(&source, &cache).spawn().expect("a Tokio runtime");

    publisher.publish(
        "batch",
        batch([
            secret_event("first").event_grid(),
            storage_blob_created(),
            secret_event("second").event_grid(),
        ]),
    );
    let log = publisher.wait_for_settlements(1).await;

    assert_eq!(log.completed(), vec!["batch"]);
    assert_eq!(
        cache.calls(),
        vec![new_version("first"), new_version("second")]
    );
    let stats = handle.shutdown().await.unwrap();
    assert_eq!(
        (
            stats.received,
            stats.events,
            stats.invalidated,
            stats.ignored
        ),
        (1, 3, 2, 1)
    );
}

#[tokio::test]
async fn a_malformed_payload_is_dead_lettered_at_once_with_the_parse_error() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    let handle = job(&source, &cache).spawn().expect("a Tokio runtime");

    let bad_name = secret_event("db_password")
        .without_id_url()
        .event_grid_bytes();
    let expected = keyvault_invalidator_core::parse_events(&bad_name).unwrap_err();
    publisher.publish("bad-name", bad_name);
    publisher.publish("not-json", b"{\"id\": hunter2".to_vec());
    let log = publisher.wait_for_settlements(2).await;

    let mut dead = log.dead_lettered();
    dead.sort();
    let not_json: ParseError =
        keyvault_invalidator_core::parse_events(b"{\"id\": hunter2").unwrap_err();
    assert_eq!(
        dead,
        vec![
            (
                "bad-name".to_owned(),
                "MalformedPayload".to_owned(),
                expected.to_string()
            ),
            (
                "not-json".to_owned(),
                "MalformedPayload".to_owned(),
                not_json.to_string()
            ),
        ]
    );
    assert!(
        !dead[1].2.contains("hunter2"),
        "descriptions never quote the payload"
    );
    assert_eq!(cache.attempts(), 0);
    let stats = handle.shutdown().await.unwrap();
    assert_eq!(
        (stats.dead_lettered, stats.malformed, stats.completed),
        (2, 2, 0)
    );
}

#[tokio::test]
async fn a_failed_invalidation_is_abandoned_and_retried_until_it_succeeds() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    cache.fail_next(2, true);
    let handle = job(&source, &cache).spawn().expect("a Tokio runtime");

    publisher.publish("m1", secret_event("db-password").event_grid_bytes());
    let log = publisher.wait_for_settlements(3).await;

    assert_eq!(
        log.abandoned(),
        vec![("m1".to_owned(), 1), ("m1".to_owned(), 2)]
    );
    assert_eq!(log.completed(), vec!["m1"]);
    assert_eq!(cache.attempts(), 3);
    assert_eq!(cache.invalidated(), vec!["db-password"]);
    let stats = handle.shutdown().await.unwrap();
    assert_eq!(
        (stats.received, stats.abandoned, stats.completed),
        (3, 2, 1)
    );
}

#[tokio::test]
async fn a_failure_that_never_clears_is_dead_lettered_after_max_attempts() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    cache.fail_next(100, true);
    let handle = job(&source, &cache)
        .max_attempts(3)
        .spawn()
        .expect("a Tokio runtime");

    publisher.publish("m1", secret_event("db-password").event_grid_bytes());
    let log = publisher.wait_for_settlements(3).await;

    assert_eq!(
        log.abandoned(),
        vec![("m1".to_owned(), 1), ("m1".to_owned(), 2)]
    );
    let dead = log.dead_lettered();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1, DeadLetterReason::MaxAttemptsExceeded.as_str());
    assert_eq!(
        dead[0].2,
        "invalidation failed on all 3 attempts; last error: cache entry `db-password`: injected retryable failure"
    );
    assert_eq!(cache.attempts(), 3);
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_permanent_failure_is_dead_lettered_without_retrying() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    cache.fail_next(1, false);
    let handle = job(&source, &cache).spawn().expect("a Tokio runtime");

    publisher.publish("m1", secret_event("db-password").event_grid_bytes());
    let log = publisher.wait_for_settlements(1).await;

    assert_eq!(
        log.dead_lettered(),
        vec![(
            "m1".to_owned(),
            "InvalidationRejected".to_owned(),
            "cache entry `db-password`: injected permanent failure".to_owned()
        )]
    );
    assert_eq!(cache.attempts(), 1);
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_panicking_cache_does_not_lose_the_delivery() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    cache.panic_next(1);
    let handle = job(&source, &cache).spawn().expect("a Tokio runtime");

    publisher.publish("m1", secret_event("db-password").event_grid_bytes());
    let log = publisher.wait_for_settlements(2).await;

    assert_eq!(log.abandoned(), vec![("m1".to_owned(), 1)]);
    assert_eq!(log.completed(), vec!["m1"]);
    assert_eq!(cache.invalidated(), vec!["db-password"]);
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_bounded_and_so_is_what_is_taken_from_the_source() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    cache.hold();
    let handle = job(&source, &cache)
        .concurrency(3)
        .spawn()
        .expect("a Tokio runtime");

    for n in 0..20 {
        publisher.publish(
            format!("m{n}"),
            secret_event(&format!("secret-{n}")).event_grid_bytes(),
        );
    }
    eventually("three invalidations are running", || cache.running() == 3).await;
    // Give the job every chance to overreach before checking that it did not.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cache.running(), 3);
    assert_eq!(
        publisher.in_flight(),
        3,
        "only as many deliveries as slots are taken"
    );
    assert_eq!(publisher.queued(), 17);

    cache.release();
    let log = publisher.wait_for_settlements(20).await;
    assert_eq!(log.completed().len(), 20);
    assert_eq!(cache.most_running(), 3);
    let mut keys = cache.invalidated();
    keys.sort();
    let mut expected: Vec<String> = (0..20).map(|n| format!("secret-{n}")).collect();
    expected.sort();
    assert_eq!(keys, expected);
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn receive_errors_are_retried_and_do_not_stop_the_job() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    source.fail_next_receives(3, SourceErrorKind::Transient);
    let handle = job(&source, &cache).spawn().expect("a Tokio runtime");

    publisher.publish("m1", secret_event("db-password").event_grid_bytes());
    let log = publisher.wait_for_settlements(1).await;

    assert_eq!(log.completed(), vec!["m1"]);
    assert!(handle.state().is_running(), "{:?}", handle.state());
    let stats = handle.shutdown().await.unwrap();
    assert_eq!((stats.receive_errors, stats.completed), (3, 1));
}

#[tokio::test]
async fn a_fatal_source_error_ends_the_job_with_that_error() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    source.fail_next_receives(1, SourceErrorKind::Fatal);
    let handle = job(&source, &cache).spawn().expect("a Tokio runtime");

    eventually("the job stops", || handle.is_finished()).await;
    match handle.state() {
        JobState::Failed(JobError::Source(error)) => {
            assert_eq!(error.kind, SourceErrorKind::Fatal);
            assert_eq!(error.message, "injected receive failure");
        }
        other => panic!("expected Failed with the source error, got {other:?}"),
    }
    match handle.wait().await {
        Err(JobError::Source(error)) => assert_eq!(error.kind, SourceErrorKind::Fatal),
        other => panic!("expected the fatal source error, got {other:?}"),
    }
    assert!(publisher.is_closed());
}

#[tokio::test]
async fn a_source_closed_behind_the_jobs_back_ends_the_job() {
    use keyvault_invalidator_core::EventSource;
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let handle = job(&source, &cache).spawn().expect("a Tokio runtime");

    source.close().await.unwrap();
    match handle.wait().await {
        Err(JobError::Source(error)) => assert_eq!(error.kind, SourceErrorKind::Closed),
        other => panic!("expected the job to end with the closed source, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_deliveries_finish_within_the_deadline() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    cache.hold();
    let handle = job(&source, &cache)
        .concurrency(2)
        .spawn()
        .expect("a Tokio runtime");

    publisher.publish("m1", secret_event("one").event_grid_bytes());
    publisher.publish("m2", secret_event("two").event_grid_bytes());
    eventually("both are in flight", || cache.running() == 2).await;
    publisher.publish("m3", secret_event("three").event_grid_bytes());

    let releaser = {
        let cache = cache.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cache.release();
        })
    };
    let stats = handle.shutdown().await.unwrap();
    releaser.await.unwrap();

    let mut completed = publisher.log().completed();
    completed.sort();
    assert_eq!(completed, vec!["m1", "m2"]);
    assert_eq!(stats.completed, 2);
    assert_eq!(
        publisher.queued(),
        1,
        "m3 was never taken and stays for the next instance"
    );
    assert!(publisher.is_closed());
}

#[tokio::test]
async fn shutdown_abandons_what_is_still_in_flight_at_the_deadline() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    cache.hold();
    let handle = job(&source, &cache)
        .shutdown_deadline(Duration::from_millis(100))
        .spawn()
        .expect("a Tokio runtime");

    publisher.publish("m1", secret_event("db-password").event_grid_bytes());
    eventually("the invalidation is in flight", || cache.running() == 1).await;
    let stats = handle.shutdown().await.unwrap();

    assert_eq!(publisher.log().abandoned(), vec![("m1".to_owned(), 1)]);
    assert_eq!(stats.abandoned, 1);
    assert_eq!(cache.invalidated(), Vec::<String>::new());
    assert_eq!(
        publisher.queued(),
        1,
        "the abandoned delivery is back in the queue"
    );
}

#[tokio::test]
async fn shutdown_cuts_a_retry_pause_short_and_abandons() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    cache.fail_next(1, true);
    let handle = job(&source, &cache)
        .retry_backoff(Backoff::new(
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        ))
        .spawn()
        .expect("a Tokio runtime");

    publisher.publish("m1", secret_event("db-password").event_grid_bytes());
    eventually("the first attempt failed", || cache.attempts() == 1).await;
    let stats = tokio::time::timeout(Duration::from_secs(20), handle.shutdown())
        .await
        .expect("shutdown does not wait out an hour-long retry pause")
        .unwrap();

    assert_eq!(publisher.log().abandoned(), vec![("m1".to_owned(), 1)]);
    assert_eq!(stats.abandoned, 1);
}

#[tokio::test]
async fn an_external_cancellation_token_stops_the_job() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let token = keyvault_invalidator_core::CancellationToken::new();
    let handle = job(&source, &cache)
        .cancellation_token(token.clone())
        .spawn()
        .expect("a Tokio runtime");

    token.cancel();
    let stats = handle.wait().await.unwrap();
    assert_eq!(stats, StatsSnapshot::default());
    assert!(source.publisher().is_closed());
}

#[test]
fn counters_and_histograms_reach_the_metrics_facade() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
            let publisher = source.publisher();
            let handle = job(&source, &cache)
                .name("metrics-test")
                .spawn()
                .expect("a Tokio runtime");
            publisher.publish("ok", secret_event("db-password").event_grid_bytes());
            publisher.publish("ignored", to_bytes(&storage_blob_created()));
            publisher.publish("bad", b"not json".to_vec());
            publisher.wait_for_settlements(3).await;
            handle.shutdown().await.unwrap();
        })
    });

    let mut counters = std::collections::BTreeMap::new();
    let mut histogram_samples = std::collections::BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        match value {
            DebugValue::Counter(n) => {
                counters.insert(name, n);
            }
            DebugValue::Histogram(samples) => {
                histogram_samples.insert(name, samples.len());
            }
            DebugValue::Gauge(_) => {}
        }
    }
    let expect = |name: &str, n: u64| {
        assert_eq!(counters.get(name), Some(&n), "{name} in {counters:#?}");
    };
    expect(
        "keyvault_invalidator_deliveries_received_total{job=metrics-test}",
        3,
    );
    expect(
        "keyvault_invalidator_events_invalidated_total{job=metrics-test}",
        1,
    );
    expect(
        "keyvault_invalidator_events_ignored_total{job=metrics-test}",
        1,
    );
    expect(
        "keyvault_invalidator_deliveries_completed_total{job=metrics-test}",
        2,
    );
    expect("keyvault_invalidator_deliveries_dead_lettered_total{job=metrics-test,reason=MalformedPayload}", 1);
    expect(
        "keyvault_invalidator_deliveries_abandoned_total{job=metrics-test}",
        0,
    );
    expect(
        "keyvault_invalidator_receive_errors_total{job=metrics-test}",
        0,
    );
    assert_eq!(
        histogram_samples.get("keyvault_invalidator_processing_seconds{job=metrics-test}"),
        Some(&3)
    );
    assert_eq!(
        histogram_samples.get("keyvault_invalidator_event_age_seconds{job=metrics-test}"),
        Some(&2),
        "one age per timed event: the Key Vault event and the blob event"
    );
}

// A job never dies silently (issue 11, item 2).

#[tokio::test]
async fn a_panic_in_the_sources_receive_is_retried_like_a_transient_error() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    source.panic_next_receive(1);
    let handle = job(&source, &cache).spawn().expect("a Tokio runtime");

    publisher.publish("m1", secret_event("db-password").event_grid_bytes());
    let log = publisher.wait_for_settlements(1).await;

    assert_eq!(log.completed(), vec!["m1"]);
    assert_eq!(cache.calls(), vec![new_version("db-password")]);
    assert!(handle.state().is_running(), "{:?}", handle.state());
    let stats = handle.shutdown().await.unwrap();
    assert_eq!(
        stats,
        expected_stats(|s| {
            s.received = 1;
            s.events = 1;
            s.invalidated = 1;
            s.completed = 1;
            s.receive_errors = 1;
        })
    );
}

#[tokio::test]
async fn a_panic_in_the_sources_settle_counts_as_a_settle_error_and_the_job_goes_on() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    source.panic_next_settle(1);
    let handle = job(&source, &cache).spawn().expect("a Tokio runtime");

    publisher.publish("m1", secret_event("first").event_grid_bytes());
    eventually("the panicking settle is counted", || {
        handle.stats().settle_errors == 1
    })
    .await;
    publisher.publish("m2", secret_event("second").event_grid_bytes());
    let log = publisher.wait_for_settlements(1).await;

    assert_eq!(log.completed(), vec!["m2"]);
    assert_eq!(publisher.in_flight(), 1, "m1's settlement was lost");
    assert!(handle.state().is_running(), "{:?}", handle.state());
    let stats = handle.shutdown().await.unwrap();
    assert_eq!(
        stats,
        expected_stats(|s| {
            s.received = 2;
            s.events = 2;
            s.invalidated = 2;
            s.completed = 2;
            s.settle_errors = 1;
        })
    );
    assert_eq!(publisher.queued(), 1, "closing the source hands m1 back");
}

#[tokio::test]
async fn a_cache_that_always_panics_dead_letters_the_delivery_after_exactly_max_attempts() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    cache.panic_next(1000);
    let handle = job(&source, &cache)
        .max_attempts(3)
        .spawn()
        .expect("a Tokio runtime");

    publisher.publish("m1", secret_event("db-password").event_grid_bytes());
    publisher.wait_for_settlements(3).await;
    let stats = handle.shutdown().await.unwrap();

    let log = publisher.log();
    assert_eq!(
        log.abandoned(),
        vec![("m1".to_owned(), 1), ("m1".to_owned(), 2)]
    );
    assert_eq!(
        log.dead_lettered(),
        vec![(
            "m1".to_owned(),
            DeadLetterReason::MaxAttemptsExceeded.as_str().to_owned(),
            "invalidation failed on all 3 attempts; last error: the invalidator panicked: injected panic in RecordingCache".to_owned()
        )]
    );
    assert_eq!(log.len(), 3, "no delivery after the dead-lettering");
    assert_eq!(log.0[2].delivery_count, 3);
    assert_eq!(cache.invalidated(), Vec::<String>::new());
    assert_eq!(
        stats,
        expected_stats(|s| {
            s.received = 3;
            s.events = 3;
            s.abandoned = 2;
            s.dead_lettered = 1;
        })
    );
}

#[tokio::test]
async fn a_fatal_source_error_shows_as_failed_at_once_while_in_flight_deliveries_drain() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    cache.hold();
    let handle = job(&source, &cache)
        .shutdown_deadline(Duration::from_secs(3600))
        .spawn()
        .expect("a Tokio runtime");

    publisher.publish("m1", secret_event("db-password").event_grid_bytes());
    eventually("m1 is being invalidated", || cache.running() == 1).await;
    source.fail_next_receives(1, SourceErrorKind::Fatal);
    // Wakes the waiting `receive`, which meets the fault before the message.
    publisher.publish("m2", secret_event("api-key").event_grid_bytes());

    eventually("the state says Failed", || {
        matches!(handle.state(), JobState::Failed(JobError::Source(error)) if error.kind == SourceErrorKind::Fatal)
    })
    .await;
    assert!(
        !handle.is_finished(),
        "m1 is still in flight: the job is failed but not finished"
    );

    cache.release();
    match handle.wait().await {
        Err(JobError::Source(error)) => assert_eq!(error.kind, SourceErrorKind::Fatal),
        other => panic!("expected the fatal source error, got {other:?}"),
    }
    assert_eq!(publisher.log().completed(), vec!["m1"]);
    assert_eq!(publisher.queued(), 1, "m2 was never taken");
    assert!(publisher.is_closed());
}

#[test]
fn a_job_whose_runtime_shuts_down_does_not_claim_to_be_running() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let handle = runtime.block_on(async {
        let handle = job(&source, &cache).spawn().expect("a Tokio runtime");
        // Let the engine start and wait in `receive`.
        tokio::task::yield_now().await;
        handle
    });
    assert!(handle.state().is_running(), "{:?}", handle.state());

    drop(runtime);

    assert!(
        matches!(handle.state(), JobState::Failed(JobError::Dropped)),
        "{:?}",
        handle.state()
    );
}

#[tokio::test]
async fn shutdown_cancels_only_the_jobs_own_token_and_the_applications_token_stops_the_job() {
    let app_shutdown = keyvault_invalidator_core::CancellationToken::new();
    let (first_source, second_source) = (InMemoryEventSource::new(), InMemoryEventSource::new());
    let cache = RecordingCache::new();
    let first = job(&first_source, &cache)
        .cancellation_token(app_shutdown.clone())
        .spawn()
        .expect("a Tokio runtime");
    let second = job(&second_source, &cache)
        .cancellation_token(app_shutdown.clone())
        .spawn()
        .expect("a Tokio runtime");

    first.shutdown().await.unwrap();
    assert!(
        !app_shutdown.is_cancelled(),
        "stopping a job must not stop the application that lent its token"
    );
    assert!(first_source.publisher().is_closed());
    assert!(second.state().is_running(), "{:?}", second.state());
    assert!(!second.cancellation_token().is_cancelled());

    app_shutdown.cancel();
    let stats = tokio::time::timeout(Duration::from_secs(30), second.wait())
        .await
        .expect("the application's cancellation stops the job")
        .unwrap();
    assert_eq!(stats, StatsSnapshot::default());
    assert!(second_source.publisher().is_closed());
}

/// A source that breaks the contract: it hands out up to two more deliveries than asked for.
struct Greedy(InMemoryEventSource);

#[async_trait::async_trait]
impl keyvault_invalidator_core::EventSource for Greedy {
    async fn receive(
        &self,
        max: usize,
    ) -> Result<Vec<keyvault_invalidator_core::Delivery>, keyvault_invalidator_core::SourceError>
    {
        self.0.receive(max + 2).await
    }

    async fn settle(
        &self,
        token: keyvault_invalidator_core::DeliveryToken,
        settlement: keyvault_invalidator_core::Settlement,
    ) -> Result<(), keyvault_invalidator_core::SourceError> {
        self.0.settle(token, settlement).await
    }

    async fn close(&self) -> Result<(), keyvault_invalidator_core::SourceError> {
        self.0.close().await
    }
}

#[tokio::test]
async fn deliveries_beyond_what_the_job_asked_for_are_abandoned_and_handled_when_they_come_back() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    for (id, name) in [("m1", "a"), ("m2", "b"), ("m3", "c")] {
        publisher.publish(id, secret_event(name).event_grid_bytes());
    }
    let invalidator = KeyVaultInvalidator::builder(cache.clone())
        .allow_vault("prod-kv")
        .build();
    // One at a time: the job asks for one delivery and gets three.
    let handle = fast(Job::builder(Greedy(source.clone()), invalidator))
        .concurrency(1)
        .spawn()
        .expect("a Tokio runtime");

    // m1 is handled, m2 and m3 handed back untouched at once; then m2 is handled and m3 (an
    // extra again) handed back once more; then m3 is handled.
    let log = publisher.wait_for_settlements(6).await;
    assert_eq!(
        log.abandoned(),
        vec![
            ("m2".to_owned(), 1),
            ("m3".to_owned(), 1),
            ("m3".to_owned(), 2)
        ],
    );
    let mut completed = log.completed();
    completed.sort();
    assert_eq!(completed, vec!["m1", "m2", "m3"]);
    let mut invalidated = cache.invalidated();
    invalidated.sort();
    assert_eq!(invalidated, vec!["a", "b", "c"], "each secret once");
    let stats = handle.shutdown().await.unwrap();
    assert_eq!((stats.completed, stats.invalidated), (3, 3));
}

#[test]
fn spawn_outside_a_runtime_is_an_error_that_says_so_not_a_panic() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let error = job(&source, &cache).spawn().unwrap_err();
    assert_eq!(
        error.to_string(),
        "the invalidation job needs a Tokio runtime to spawn on: call spawn() from inside one, or drive JobBuilder::run() yourself"
    );
    assert!(
        std::error::Error::source(&error).is_some(),
        "tokio's own error is kept as the source"
    );
    assert_eq!(source.publisher().queued(), 0);
}

#[tokio::test]
async fn run_drives_the_job_on_the_callers_task_until_its_token_is_cancelled() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    let app_shutdown = keyvault_invalidator_core::CancellationToken::new();
    let run = job(&source, &cache)
        .cancellation_token(app_shutdown.clone())
        .run();
    let monitor = run.monitor();
    assert!(monitor.state().is_running(), "{:?}", monitor.state());
    let driven = tokio::spawn(run);

    publisher.publish("m1", secret_event("db-password").event_grid_bytes());
    let log = publisher.wait_for_settlements(1).await;
    assert_eq!(log.completed(), vec!["m1"]);
    assert_eq!(monitor.stats().completed, 1);

    app_shutdown.cancel();
    let stats = tokio::time::timeout(Duration::from_secs(30), driven)
        .await
        .expect("the job ends once its token is cancelled")
        .unwrap()
        .unwrap();
    assert_eq!(
        stats,
        expected_stats(|s| {
            s.received = 1;
            s.events = 1;
            s.invalidated = 1;
            s.completed = 1;
        })
    );
    assert!(
        matches!(monitor.state(), JobState::Stopped),
        "{:?}",
        monitor.state()
    );
    assert!(publisher.is_closed());
    assert_eq!(cache.calls(), vec![new_version("db-password")]);
}

#[tokio::test]
async fn dropping_the_run_future_mid_delivery_says_dropped_and_loses_nothing() {
    let (source, cache) = (InMemoryEventSource::new(), RecordingCache::new());
    let publisher = source.publisher();
    cache.hold();
    let run = job(&source, &cache).run();
    let monitor = run.monitor();
    let driven = tokio::spawn(run);

    publisher.publish("m1", secret_event("db-password").event_grid_bytes());
    eventually("m1 is being invalidated", || cache.running() == 1).await;
    driven.abort();
    let _ = driven.await;

    assert!(
        matches!(monitor.state(), JobState::Failed(JobError::Dropped)),
        "{:?}",
        monitor.state()
    );
    assert_eq!(
        monitor.state().error().unwrap().to_string(),
        "the job was dropped before it stopped (its task aborted, its runtime shut down, or its future dropped)"
    );
    assert!(
        publisher.log().0.is_empty(),
        "nothing was settled: the delivery was never completed"
    );
    assert_eq!(publisher.in_flight(), 1, "m1 is still locked, not lost");
    // As when the lock runs out (or the process ends): the unsettled delivery comes back.
    keyvault_invalidator_core::EventSource::close(&source)
        .await
        .unwrap();
    cache.release();
    let second = job(&source.reopen(), &cache)
        .spawn()
        .expect("a Tokio runtime");
    let log = publisher.wait_for_settlements(1).await;
    assert_eq!(log.completed(), vec!["m1"]);
    second.shutdown().await.unwrap();
}
