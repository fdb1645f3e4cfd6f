//! Version awareness, refresh-ahead, jitter, bounded stale serving, critical errors,
//! notifications and per-secret numbers. Time is Tokio's paused clock wherever it matters.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use keyvault_invalidator_core::secrecy::ExposeSecret;
use keyvault_invalidator_core::{NewVersion, ProviderErrorKind, SecretCache};
use keyvault_invalidator_moka::{CachedSecretProvider, RefreshMode};
use keyvault_invalidator_testkit::InMemoryVault;
use tokio::time::Instant;

fn value(secret: &keyvault_invalidator_core::Secret) -> String {
    secret.value().expose_secret().to_owned()
}

/// A vault holding `db-password` = v1 and a refresh-ahead cache that has read it once.
async fn warm() -> (InMemoryVault, CachedSecretProvider<InMemoryVault>) {
    let vault = InMemoryVault::new();
    vault.set("db-password", "v1");
    let cache = CachedSecretProvider::new(vault.clone());
    assert_eq!(value(&cache.get("db-password").await.unwrap()), "v1");
    (vault, cache)
}

#[tokio::test(start_paused = true)]
async fn a_thousand_readers_across_a_rotation_cost_one_call_and_never_go_back_a_version() {
    let (vault, cache) = warm().await;
    let cache = Arc::new(cache);
    vault.set_latency(Duration::from_millis(50));

    let readers: Vec<_> = (0..1000)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..40 {
                    let secret = cache.get("db-password").await.unwrap();
                    seen.push(secret.version().unwrap().to_owned());
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let v2 = vault.rotate("db-password", "v2");
    let started = Instant::now();
    cache
        .new_version("db-password", &NewVersion::to(&v2))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "the event waited for the load"
    );

    let mut saw_v2 = 0;
    for reader in readers {
        let seen = reader.await.unwrap();
        // Versions from the in-memory vault sort in creation order.
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "a reader went back a version: {seen:?}"
        );
        saw_v2 += usize::from(seen.last() == Some(&v2));
    }
    assert_eq!(saw_v2, 1000, "every reader ends on the new version");
    assert_eq!(
        vault.calls("db-password"),
        2,
        "one call to warm up, one for the rotation"
    );
    let stats = cache.stats();
    assert_eq!((stats.refreshes, stats.misses, stats.hits), (1, 1, 40_000));
}

#[tokio::test(start_paused = true)]
async fn the_same_event_five_times_costs_one_call_even_when_they_arrive_together() {
    let (vault, cache) = warm().await;
    vault.set_latency(Duration::from_millis(50));
    let v2 = vault.rotate("db-password", "v2");
    let change = NewVersion::to(&v2);

    let together = (0..5).map(|_| cache.new_version("db-password", &change));
    for result in futures::future::join_all(together).await {
        result.unwrap();
    }
    for _ in 0..5 {
        cache.new_version("db-password", &change).await.unwrap();
    }

    assert_eq!(
        vault.calls("db-password"),
        2,
        "one call to warm up, one for v2"
    );
    assert_eq!(cache.stats().duplicate_events, 9);
    assert_eq!(value(&cache.get("db-password").await.unwrap()), "v2");
}

#[tokio::test]
async fn an_event_for_a_replaced_version_changes_nothing() {
    let (vault, cache) = warm().await;
    let v1 = vault.current_version("db-password").unwrap();
    let v2 = vault.rotate("db-password", "v2");
    cache
        .new_version("db-password", &NewVersion::to(&v2))
        .await
        .unwrap();

    cache
        .new_version("db-password", &NewVersion::to(&v1))
        .await
        .unwrap();

    assert_eq!(value(&cache.get("db-password").await.unwrap()), "v2");
    assert_eq!(vault.calls("db-password"), 2);
    assert_eq!(cache.stats().older_events, 1);
}

#[tokio::test]
async fn an_event_from_before_the_cached_version_was_created_changes_nothing() {
    let vault = InMemoryVault::new();
    vault.set("db-password", "v1");
    let missed = vault.rotate("db-password", "v2");
    vault.rotate("db-password", "v3");
    let cache = CachedSecretProvider::new(vault.clone());
    assert_eq!(value(&cache.get("db-password").await.unwrap()), "v3");

    // The v2 event arrives late; this instance never held v2, but the event predates v3.
    let late = NewVersion::to(missed).at(Utc::now() - chrono::Duration::minutes(5));
    cache.new_version("db-password", &late).await.unwrap();

    assert_eq!(vault.calls("db-password"), 1);
    assert_eq!(cache.stats().older_events, 1);
    assert_eq!(value(&cache.get("db-password").await.unwrap()), "v3");
}

#[tokio::test]
async fn an_event_for_a_secret_nobody_read_costs_nothing() {
    let vault = InMemoryVault::new();
    vault.set("db-password", "v1");
    let cache = CachedSecretProvider::new(vault.clone());
    cache
        .new_version("db-password", &NewVersion::to("abc"))
        .await
        .unwrap();
    assert_eq!(vault.total_calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn throttled_with_retry_after_serves_the_stale_value_and_waits_at_least_that_long() {
    let (vault, cache) = warm().await;
    let v2 = vault.rotate("db-password", "v2");
    vault.fail_next(
        1,
        ProviderErrorKind::Throttled {
            retry_after: Some(Duration::from_secs(2)),
        },
    );

    let error = cache
        .new_version("db-password", &NewVersion::to(&v2))
        .await
        .unwrap_err();
    assert!(error.retryable, "{error}");
    assert_eq!(error.retry_after, Some(Duration::from_secs(2)));
    let throttled_at = Instant::now();
    assert_eq!(
        value(&cache.get("db-password").await.unwrap()),
        "v1",
        "stale, not an error"
    );
    assert_eq!(cache.stats().stale_serves, 1);
    assert_eq!(vault.calls("db-password"), 2);

    tokio::time::sleep(Duration::from_millis(1_990)).await;
    assert_eq!(vault.calls("db-password"), 2, "no retry before Retry-After");
    assert_eq!(value(&cache.get("db-password").await.unwrap()), "v1");

    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        vault.calls("db-password"),
        2,
        "nothing calls the vault by itself: the job's retry or a read does"
    );
    assert_eq!(
        value(&cache.get("db-password").await.unwrap()),
        "v1",
        "the read that finds the retry due is served the stale value and starts the refresh"
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        vault.calls("db-password"),
        3,
        "one retry once Retry-After passed"
    );
    assert!(throttled_at.elapsed() >= Duration::from_secs(2));
    assert_eq!(value(&cache.get("db-password").await.unwrap()), "v2");
    let stats = cache.stats();
    assert_eq!(
        (stats.stale_serves, stats.refreshes, stats.load_errors),
        (3, 1, 1)
    );
    cache
        .new_version("db-password", &NewVersion::to(&v2))
        .await
        .expect("the event's retry finds the version in the cache");
    assert_eq!(vault.calls("db-password"), 3);
}

#[tokio::test(start_paused = true)]
async fn past_the_staleness_bound_readers_get_the_error() {
    let vault = InMemoryVault::new();
    vault.set("db-password", "v1");
    let cache = CachedSecretProvider::builder(vault.clone())
        .max_staleness(Duration::from_secs(5))
        .build();
    cache.get("db-password").await.unwrap();
    let v2 = vault.rotate("db-password", "v2");
    vault.fail_next(1_000, ProviderErrorKind::Transient);

    let error = cache
        .new_version("db-password", &NewVersion::to(&v2))
        .await
        .unwrap_err();
    assert!(error.retryable, "{error}");
    assert_eq!(error.retry_after, None);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(value(&cache.get("db-password").await.unwrap()), "v1");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let error = cache.get("db-password").await.unwrap_err();
    assert_eq!(error.kind, ProviderErrorKind::Transient);
}

#[tokio::test(start_paused = true)]
async fn in_invalidate_mode_a_throttled_reload_falls_back_and_does_not_call_again_until_retry_after(
) {
    let vault = InMemoryVault::new();
    vault.set("db-password", "v1");
    let cache = CachedSecretProvider::builder(vault.clone())
        .mode(RefreshMode::Invalidate)
        .build();
    cache.get("db-password").await.unwrap();
    let v2 = vault.rotate("db-password", "v2");
    cache
        .new_version("db-password", &NewVersion::to(&v2))
        .await
        .unwrap();
    assert_eq!(
        vault.calls("db-password"),
        1,
        "invalidate mode does not load on the event"
    );
    vault.fail_next(
        1,
        ProviderErrorKind::Throttled {
            retry_after: Some(Duration::from_secs(3)),
        },
    );

    for _ in 0..10 {
        assert_eq!(value(&cache.get("db-password").await.unwrap()), "v1");
    }
    assert_eq!(
        vault.calls("db-password"),
        2,
        "one throttled call, then the reads wait"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(value(&cache.get("db-password").await.unwrap()), "v2");
    assert_eq!(vault.calls("db-password"), 3);
    assert_eq!(cache.stats().stale_serves, 10);
}

#[tokio::test(start_paused = true)]
async fn a_critical_error_reaches_the_reader_and_the_event_and_clears_once_access_returns() {
    let (vault, cache) = warm().await;
    let v2 = vault.rotate("db-password", "v2");
    vault.fail_next(1, ProviderErrorKind::AccessDenied);

    let error = cache
        .new_version("db-password", &NewVersion::to(&v2))
        .await
        .unwrap_err();
    assert!(!error.retryable);
    assert_eq!(
        error.to_string(),
        "cache entry `db-password`: refreshing failed with a critical error: secret `db-password`: access denied: injected failure"
    );
    let read = cache.get("db-password").await.unwrap_err();
    assert_eq!(
        read.kind,
        ProviderErrorKind::AccessDenied,
        "never hidden behind the stale value"
    );

    // Access is back: once the backoff passes, a read triggers a background retry.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = cache.get("db-password").await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(value(&cache.get("db-password").await.unwrap()), "v2");
    assert_eq!(vault.calls("db-password"), 3);
}

#[tokio::test(start_paused = true)]
async fn jitter_delays_each_refresh_by_up_to_its_bound() {
    let vault = InMemoryVault::new();
    let cache = CachedSecretProvider::builder(vault.clone())
        .refresh_jitter(Duration::from_secs(10))
        .build();
    let mut delays = Vec::new();
    for n in 0..20 {
        let name = format!("secret-{n}");
        vault.set(&name, "v1");
        cache.get(&name).await.unwrap();
        let v2 = vault.rotate(&name, "v2");
        let started = Instant::now();
        cache
            .new_version(&name, &NewVersion::to(&v2))
            .await
            .unwrap();
        delays.push(started.elapsed());
        assert_eq!(value(&cache.get(&name).await.unwrap()), "v2");
    }
    assert!(
        delays.iter().all(|d| *d <= Duration::from_secs(10)),
        "{delays:?}"
    );
    let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
    assert!(
        distinct.len() > 10,
        "delays are random, not fixed: {delays:?}"
    );
}

#[tokio::test]
async fn subscribers_are_told_the_new_version_after_a_refresh() {
    let (vault, cache) = warm().await;
    let v1 = vault.current_version("db-password");
    let mut versions = cache.subscribe("DB-Password").await;
    assert_eq!(*versions.borrow_and_update(), v1);

    let v2 = vault.rotate("db-password", "v2");
    let watcher = tokio::spawn(async move {
        versions.changed().await.unwrap();
        versions.borrow_and_update().clone()
    });
    cache
        .new_version("db-password", &NewVersion::to(&v2))
        .await
        .unwrap();
    let told = tokio::time::timeout(Duration::from_secs(30), watcher)
        .await
        .expect("the subscriber is told")
        .unwrap();
    assert_eq!(told, Some(v2));
}

#[tokio::test(start_paused = true)]
async fn a_value_past_its_time_to_live_is_served_while_one_background_call_refreshes_it() {
    let vault = InMemoryVault::new();
    vault.set("db-password", "v1");
    vault.set_latency(Duration::from_millis(100));
    let cache = CachedSecretProvider::builder(vault.clone())
        .time_to_live(Duration::from_secs(60))
        .build();
    cache.get("db-password").await.unwrap();
    vault.rotate("db-password", "v2");

    tokio::time::sleep(Duration::from_secs(61)).await;
    for _ in 0..50 {
        let started = Instant::now();
        assert_eq!(value(&cache.get("db-password").await.unwrap()), "v1");
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "readers never wait for the vault"
        );
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(value(&cache.get("db-password").await.unwrap()), "v2");
    assert_eq!(vault.calls("db-password"), 2);
}

#[tokio::test(start_paused = true)]
async fn per_secret_numbers_show_version_age_and_overdue_time() {
    let (vault, cache) = warm().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let info = cache.secret_info("db-password").await.unwrap();
    assert_eq!(
        (info.key.as_str(), info.version, info.age, info.overdue),
        (
            "db-password",
            vault.current_version("db-password"),
            Duration::from_secs(5),
            None
        )
    );

    let v2 = vault.rotate("db-password", "v2");
    vault.fail_next(100, ProviderErrorKind::Transient);
    let error = cache
        .new_version("db-password", &NewVersion::to(&v2))
        .await
        .unwrap_err();
    assert!(error.retryable, "{error}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let info = &cache.secrets()[0];
    assert_eq!(
        (info.age, info.overdue),
        (Duration::from_secs(8), Some(Duration::from_secs(3)))
    );
}

#[tokio::test]
async fn a_lagging_answer_created_before_the_event_is_older_and_the_events_version_is_read() {
    let (vault, cache) = warm().await;
    vault.rotate("db-password", "v2");
    let v3 = vault.rotate("db-password", "v3");
    vault.lag_next(1);
    let change = NewVersion::to(v3.clone()).at(Utc::now() + chrono::Duration::seconds(1));

    cache.new_version("db-password", &change).await.unwrap();

    assert_eq!(
        cache.secret_info("db-password").await.unwrap().version,
        Some(v3)
    );
    assert_eq!(value(&cache.get("db-password").await.unwrap()), "v3");
    assert_eq!(
        (vault.calls("db-password"), cache.stats().version_reads),
        (3, 1),
        "warm-up, v2 (created before the event: older), v3 by id"
    );
}

#[tokio::test]
async fn a_version_created_after_the_event_is_newer_and_is_kept_without_reading_the_events() {
    let (vault, cache) = warm().await;
    let v2 = vault.rotate("db-password", "v2");
    // Creation times are the wall clock's: space v1, the event and v3 apart on it.
    std::thread::sleep(Duration::from_millis(5));
    let event_time = Utc::now();
    std::thread::sleep(Duration::from_millis(5));
    let v3 = vault.rotate("db-password", "v3");
    let change = NewVersion::to(v2).at(event_time);

    cache.new_version("db-password", &change).await.unwrap();

    assert_eq!(
        cache.secret_info("db-password").await.unwrap().version,
        Some(v3)
    );
    assert_eq!(
        (vault.calls("db-password"), cache.stats().version_reads),
        (2, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn while_the_provider_asks_to_wait_an_event_is_deferred_without_a_call() {
    let (vault, cache) = warm().await;
    let v2 = vault.rotate("db-password", "v2");
    vault.fail_next(
        1,
        ProviderErrorKind::Throttled {
            retry_after: Some(Duration::from_secs(5)),
        },
    );
    let change = NewVersion::to(&v2);
    let first = cache.new_version("db-password", &change).await.unwrap_err();
    assert_eq!(first.retry_after, Some(Duration::from_secs(5)));

    tokio::time::sleep(Duration::from_secs(1)).await;
    let deferred = cache.new_version("db-password", &change).await.unwrap_err();
    assert!(deferred.retryable);
    assert_eq!(deferred.retry_after, Some(Duration::from_secs(4)));
    assert_eq!(
        std::error::Error::source(&deferred).map(|s| s.to_string()),
        Some("secret `db-password`: throttled (retry after 5000 ms): injected failure".to_owned()),
        "the error that set the wait is the source"
    );
    assert_eq!(
        (vault.calls("db-password"), cache.stats().deferred_events),
        (2, 1)
    );

    tokio::time::sleep(Duration::from_secs(4)).await;
    cache.new_version("db-password", &change).await.unwrap();
    assert_eq!(
        cache.secret_info("db-password").await.unwrap().version,
        Some(v2)
    );
    assert_eq!(vault.calls("db-password"), 3);
}

#[tokio::test]
async fn a_secret_gone_from_the_provider_is_dropped_and_the_event_succeeds() {
    let (vault, cache) = warm().await;
    let v2 = vault.rotate("db-password", "v2");
    vault.fail_next(1, ProviderErrorKind::NotFound);

    cache
        .new_version("db-password", &NewVersion::to(&v2))
        .await
        .unwrap();

    assert_eq!(cache.secret_info("db-password").await, None);
    assert_eq!(vault.calls("db-password"), 2);
}

#[tokio::test]
async fn a_name_the_provider_rejects_is_a_permanent_error_and_the_value_stays() {
    let (vault, cache) = warm().await;
    let v1 = vault.current_version("db-password");
    let v2 = vault.rotate("db-password", "v2");
    vault.fail_next(1, ProviderErrorKind::InvalidName);

    let error = cache
        .new_version("db-password", &NewVersion::to(&v2))
        .await
        .unwrap_err();

    assert!(!error.retryable);
    assert_eq!(
        error.to_string(),
        "cache entry `db-password`: refreshing failed and will not pass: secret `db-password`: invalid name: injected failure"
    );
    assert_eq!(cache.secret_info("db-password").await.unwrap().version, v1);
}

#[tokio::test]
async fn reading_a_version_through_the_cache_answers_the_cached_one_without_a_call() {
    use keyvault_invalidator_core::SecretProvider;
    let (vault, cache) = warm().await;
    let v1 = vault.current_version("db-password").unwrap();
    let v2 = vault.rotate("db-password", "v2");

    let cached = cache.get_secret_version("db-password", &v1).await.unwrap();
    assert_eq!(
        (value(&cached), vault.calls("db-password")),
        ("v1".to_owned(), 1)
    );
    let other = cache.get_secret_version("db-password", &v2).await.unwrap();
    assert_eq!(
        (value(&other), vault.calls("db-password")),
        ("v2".to_owned(), 2)
    );
    assert_eq!(
        cache.secret_info("db-password").await.unwrap().version,
        Some(v1),
        "a version read is not cached"
    );
}
