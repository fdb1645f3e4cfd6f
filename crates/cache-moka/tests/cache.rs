//! The moka cache: single flight, invalidation races, counters, case, errors, time-to-live.

use std::sync::Arc;
use std::time::Duration;

use keyvault_invalidator_core::secrecy::ExposeSecret;
use keyvault_invalidator_core::{ProviderErrorKind, SecretCache, SecretProvider};
use keyvault_invalidator_moka::{CacheStats, CachedSecretProvider, RefreshMode};
use keyvault_invalidator_testkit::InMemoryVault;

/// The stats a test expects: zero but for what `set` changes.
fn expected_cache_stats(set: impl FnOnce(&mut CacheStats)) -> CacheStats {
    let mut stats = CacheStats::default();
    set(&mut stats);
    stats
}

fn value(secret: &keyvault_invalidator_core::Secret) -> String {
    secret.value().expose_secret().to_owned()
}

/// Starts `readers` reads of `name` at once and returns the values they saw.
async fn read_concurrently<P: SecretProvider + 'static>(
    cache: &Arc<CachedSecretProvider<P>>,
    name: &'static str,
    readers: usize,
) -> Vec<String> {
    let tasks: Vec<_> = (0..readers)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { value(&cache.get(name).await.unwrap()) })
        })
        .collect();
    let mut seen = Vec::with_capacity(readers);
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    seen
}

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_readers_of_a_cold_secret_cause_one_provider_call() {
    let vault = InMemoryVault::new();
    vault.set("db-password", "v1");
    vault.set_latency(Duration::from_millis(50));
    let cache = Arc::new(CachedSecretProvider::new(vault.clone()));

    let seen = read_concurrently(&cache, "db-password", 1000).await;
    assert_eq!(seen, vec!["v1".to_owned(); 1000]);
    assert_eq!(vault.calls("db-password"), 1);
    let stats = cache.stats();
    assert_eq!((stats.loads, stats.hits + stats.misses), (1, 1000));
}

#[tokio::test(start_paused = true)]
async fn a_thousand_readers_right_after_an_invalidation_cause_one_more_call_and_all_see_v2() {
    let vault = InMemoryVault::new();
    vault.set("db-password", "v1");
    let cache = Arc::new(CachedSecretProvider::new(vault.clone()));
    assert_eq!(value(&cache.get("db-password").await.unwrap()), "v1");

    vault.rotate("db-password", "v2");
    vault.set_latency(Duration::from_millis(50));
    cache.invalidate("db-password").await.unwrap();
    let seen = read_concurrently(&cache, "db-password", 1000).await;
    assert_eq!(seen, vec!["v2".to_owned(); 1000]);
    assert_eq!(vault.calls("db-password"), 2);
}

#[tokio::test(start_paused = true)]
async fn an_invalidation_during_a_load_is_not_undone_by_that_load() {
    let vault = InMemoryVault::new();
    vault.set("db-password", "v1");
    vault.set_latency(Duration::from_millis(100));
    let cache = Arc::new(CachedSecretProvider::new(vault.clone()));

    // The reader's request reaches the vault before the rotation and answers v1 ...
    let reader = {
        let cache = cache.clone();
        tokio::spawn(async move { value(&cache.get("db-password").await.unwrap()) })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(vault.calls("db-password"), 1);
    // ... then the secret rotates and the event arrives while that answer is in transit.
    vault.rotate("db-password", "v2");
    cache.invalidate("db-password").await.unwrap();

    assert_eq!(
        reader.await.unwrap(),
        "v2",
        "the overtaken v1 answer is not used"
    );
    assert_eq!(
        value(&cache.get("db-password").await.unwrap()),
        "v2",
        "nor cached"
    );
    assert_eq!(vault.calls("db-password"), 2);
    assert_eq!(cache.stats().overtaken_loads, 1);
}

#[tokio::test]
async fn counters_are_exact() {
    let vault = InMemoryVault::new();
    vault.set("a", "1");
    let cache = CachedSecretProvider::new(vault.clone());

    cache.get("a").await.unwrap();
    cache.get("a").await.unwrap();
    cache.get("a").await.unwrap();
    cache.invalidate("a").await.unwrap();
    cache.get("a").await.unwrap();
    assert!(cache.get("missing").await.is_err());
    cache.get_uncached("a").await.unwrap();

    let mut stats = cache.stats();
    stats.entries = 0;
    assert_eq!(
        stats,
        expected_cache_stats(|s| {
            s.hits = 2;
            s.misses = 3;
            s.loads = 4;
            s.load_errors = 1;
            s.invalidations = 1;
        })
    );
    assert_eq!(vault.total_calls(), 4);
}

#[tokio::test]
async fn get_uncached_reads_through_and_refreshes_the_cache() {
    let vault = InMemoryVault::new();
    vault.set("db-password", "v1");
    let cache = CachedSecretProvider::new(vault.clone());
    assert_eq!(value(&cache.get("db-password").await.unwrap()), "v1");

    let v2 = vault.rotate("db-password", "v2");
    let fresh = cache.get_uncached("db-password").await.unwrap();
    assert_eq!(
        (value(&fresh), fresh.version()),
        ("v2".to_owned(), Some(v2.as_str()))
    );
    assert_eq!(value(&cache.get("db-password").await.unwrap()), "v2");
    assert_eq!(vault.calls("db-password"), 2);
}

#[tokio::test]
async fn keys_are_compared_without_regard_to_case_as_key_vault_does() {
    let vault = InMemoryVault::new();
    vault.set("Db-Password", "v1");
    let cache = CachedSecretProvider::new(vault.clone());
    cache.get("db-password").await.unwrap();
    cache.get("DB-PASSWORD").await.unwrap();
    assert_eq!(vault.calls("db-password"), 1);

    vault.rotate("db-password", "v2");
    cache.invalidate("DB-password").await.unwrap();
    assert_eq!(value(&cache.get("Db-Password").await.unwrap()), "v2");
    assert_eq!(vault.calls("db-password"), 2);
}

#[tokio::test]
async fn errors_are_returned_with_their_class_and_not_cached() {
    let vault = InMemoryVault::new();
    vault.set("db-password", "v1");
    vault.fail_next(1, ProviderErrorKind::Transient);
    let cache = CachedSecretProvider::new(vault.clone());

    let error = cache.get("db-password").await.unwrap_err();
    assert_eq!(error.kind, ProviderErrorKind::Transient);
    assert_eq!(error.name, "db-password");
    assert_eq!(value(&cache.get("db-password").await.unwrap()), "v1");
    assert_eq!(vault.calls("db-password"), 2);
    assert_eq!(cache.stats().load_errors, 1);
}

#[tokio::test]
async fn in_invalidate_mode_the_time_to_live_makes_the_next_reader_load() {
    let vault = InMemoryVault::new();
    vault.set("db-password", "v1");
    let cache = CachedSecretProvider::builder(vault.clone())
        .mode(RefreshMode::Invalidate)
        .time_to_live(Duration::from_millis(100))
        .build();
    cache.get("db-password").await.unwrap();
    vault.rotate("db-password", "v2");
    // moka keeps its own clock, so this waits in real time; well past the TTL.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(value(&cache.get("db-password").await.unwrap()), "v2");
    assert_eq!(vault.calls("db-password"), 2);
}

#[tokio::test]
async fn it_is_a_secret_provider_and_its_debug_output_holds_no_value() {
    let vault = InMemoryVault::new();
    vault.set("db-password", "hunter2");
    let cache = CachedSecretProvider::new(vault);
    let provider: &dyn SecretProvider = &cache;
    let secret = provider.get_secret("db-password").await.unwrap();
    assert!(!format!("{secret:?}").contains("hunter2"));
    assert!(!format!("{cache:?}").contains("hunter2"));
    assert_eq!(value(&secret), "hunter2");
}
