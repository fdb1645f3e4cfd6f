//! The job driving the moka cache: a rotation event refreshes the secret once; a delivery is
//! completed only once the cache holds the event's version, whatever the provider does; a
//! critical provider error shows in the job's outcome.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use keyvault_invalidator_core::secrecy::ExposeSecret;
use keyvault_invalidator_core::{
    Backoff, Delivery, DeliveryToken, EventSource, Job, KeyVaultInvalidator, ProviderError,
    ProviderErrorKind, Secret, SecretProvider, Settlement, SourceError,
};
use keyvault_invalidator_moka::CachedSecretProvider;
use keyvault_invalidator_testkit::{InMemoryEventSource, InMemoryVault, KeyVaultEventBuilder};
use tokio::time::Instant;

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
    .spawn()
    .expect("a Tokio runtime");

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
    let job = Job::builder(source, KeyVaultInvalidator::new(cache.clone()))
        .spawn()
        .expect("a Tokio runtime");

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

/// The in-memory source, noting at each settlement what the cache held for `db-password` and
/// when (on Tokio's clock): what "settle only after the cache holds the event's version" means
/// is what the cache holds at that moment.
struct Observed<P> {
    source: InMemoryEventSource,
    cache: CachedSecretProvider<P>,
    seen: Arc<Mutex<Vec<Seen>>>,
    start: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    settlement: &'static str,
    cached_version: Option<String>,
    at: Duration,
}

#[async_trait]
impl<P: SecretProvider + 'static> EventSource for Observed<P> {
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, SourceError> {
        self.source.receive(max).await
    }

    async fn settle(
        &self,
        token: DeliveryToken,
        settlement: Settlement,
    ) -> Result<(), SourceError> {
        let name = match &settlement {
            Settlement::Complete => "complete",
            Settlement::Abandon => "abandon",
            Settlement::DeadLetter { .. } => "dead-letter",
            other => panic!("a settlement this test does not know: {other:?}"),
        };
        let cached_version = self
            .cache
            .secret_info("db-password")
            .await
            .and_then(|info| info.version);
        self.seen.lock().unwrap().push(Seen {
            settlement: name,
            cached_version,
            at: self.start.elapsed(),
        });
        self.source.settle(token, settlement).await
    }

    async fn close(&self) -> Result<(), SourceError> {
        self.source.close().await
    }
}

struct Rotation<P> {
    vault: InMemoryVault,
    cache: CachedSecretProvider<P>,
    publisher: keyvault_invalidator_testkit::InMemoryPublisher,
    seen: Arc<Mutex<Vec<Seen>>>,
    job: keyvault_invalidator_core::JobHandle,
    v1: String,
    start: Instant,
}

/// A warm cache over `provider(vault)` holding v1, and a job whose own backoff is `job_backoff`.
async fn rotation<P: SecretProvider + 'static>(
    provider: impl FnOnce(InMemoryVault) -> P,
    job_backoff: Backoff,
) -> Rotation<P> {
    let start = Instant::now();
    let vault = InMemoryVault::new();
    let v1 = vault.set("db-password", "v1");
    // No backoff of the cache's own: the job's pace alone decides when the vault is called.
    let cache = CachedSecretProvider::builder(provider(vault.clone()))
        .retry_backoff(Backoff::new(Duration::ZERO, Duration::ZERO))
        .build();
    cache.get("db-password").await.unwrap();
    let source = InMemoryEventSource::new();
    let publisher = source.publisher();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let observed = Observed {
        source,
        cache: cache.clone(),
        seen: seen.clone(),
        start,
    };
    let job = Job::builder(observed, KeyVaultInvalidator::new(cache.clone()))
        .retry_backoff(job_backoff)
        .max_attempts(4)
        .spawn()
        .expect("a Tokio runtime");
    Rotation {
        vault,
        cache,
        publisher,
        seen,
        job,
        v1,
        start,
    }
}

fn seen(rotation: &Rotation<impl Sized>) -> Vec<(&'static str, Option<String>)> {
    rotation
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| (s.settlement, s.cached_version.clone()))
        .collect()
}

fn fast() -> Backoff {
    Backoff::new(Duration::from_millis(1), Duration::from_millis(5))
}

#[tokio::test]
async fn transient_failures_abandon_and_the_delivery_completes_only_once_the_cache_holds_the_events_version(
) {
    let r = rotation(|vault| vault, fast()).await;
    let v2 = r.vault.rotate("db-password", "v2");
    r.vault.fail_next(2, ProviderErrorKind::Transient);
    r.publisher.publish("m1", event("db-password", &v2));
    let log = r.publisher.wait_for_settlements(3).await;

    assert_eq!(
        seen(&r),
        vec![
            ("abandon", Some(r.v1.clone())),
            ("abandon", Some(r.v1.clone())),
            ("complete", Some(v2.clone())),
        ]
    );
    assert_eq!(
        log.abandoned(),
        vec![("m1".to_owned(), 1), ("m1".to_owned(), 2)]
    );
    assert_eq!(
        r.vault.calls("db-password"),
        4,
        "the warm-up, two failed refreshes, one that worked"
    );
    r.job.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_replica_still_answering_the_old_version_makes_the_cache_read_the_events_version_by_id() {
    let r = rotation(|vault| vault, fast()).await;
    let v2 = r.vault.rotate("db-password", "v2");
    r.vault.lag_next(1);
    r.publisher.publish("m1", event("db-password", &v2));
    r.publisher.wait_for_settlements(1).await;

    assert_eq!(seen(&r), vec![("complete", Some(v2.clone()))]);
    assert_eq!(
        r.vault.calls("db-password"),
        3,
        "the warm-up, the current version (old), the event's version"
    );
    assert_eq!(r.cache.stats().version_reads, 1);
    assert_eq!(
        r.cache
            .get("db-password")
            .await
            .unwrap()
            .value()
            .expose_secret(),
        "v2"
    );
    r.job.shutdown().await.unwrap();
}

/// A provider that can only read the current version (the trait's default
/// `get_secret_version`), like a store whose first provider lags.
struct CurrentOnly(InMemoryVault);

#[async_trait]
impl SecretProvider for CurrentOnly {
    async fn get_secret(&self, name: &str) -> Result<Secret, ProviderError> {
        self.0.get_secret(name).await
    }
}

#[tokio::test]
async fn an_older_answer_from_a_provider_that_cannot_read_versions_is_never_settled_as_success() {
    let r = rotation(CurrentOnly, fast()).await;
    let v2 = r.vault.rotate("db-password", "v2");
    r.vault.lag_next(100);
    r.publisher.publish("m1", event("db-password", &v2));
    let log = r.publisher.wait_for_settlements(4).await;

    let v1 = Some(r.v1.clone());
    assert_eq!(
        seen(&r),
        vec![
            ("abandon", v1.clone()),
            ("abandon", v1.clone()),
            ("abandon", v1.clone()),
            ("dead-letter", v1.clone()),
        ]
    );
    let dead = log.dead_lettered();
    assert_eq!(dead[0].1, "MaxAttemptsExceeded");
    assert!(
        dead[0].2.contains(&format!(
            "version `{v2}` was asked for; the provider answered `{}`",
            r.v1
        )),
        "{}",
        dead[0].2
    );
    assert_eq!(
        r.vault.calls("db-password"),
        1 + 4 * 2,
        "each attempt reads the current version, then asks for the event's"
    );
    r.job.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_providers_retry_after_spaces_the_jobs_retries() {
    let r = rotation(
        |vault| vault,
        Backoff::new(Duration::from_millis(1), Duration::from_secs(60)),
    )
    .await;
    let v2 = r.vault.rotate("db-password", "v2");
    r.vault.fail_next(
        1,
        ProviderErrorKind::Throttled {
            retry_after: Some(Duration::from_secs(7)),
        },
    );
    let published = r.start.elapsed();
    r.publisher.publish("m1", event("db-password", &v2));
    r.publisher.wait_for_settlements(2).await;

    let seen = r.seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter()
            .map(|s| (s.settlement, s.cached_version.clone()))
            .collect::<Vec<_>>(),
        vec![
            ("abandon", Some(r.v1.clone())),
            ("complete", Some(v2.clone()))
        ]
    );
    let waited = seen[0].at - published;
    assert!(
        waited >= Duration::from_secs(7) && waited < Duration::from_secs(8),
        "abandoned after {waited:?}, not after the vault's Retry-After of 7 s"
    );
    assert_eq!(r.vault.calls("db-password"), 3);
    r.job.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_longer_than_the_jobs_backoff_holds_no_delivery_and_the_vault_is_not_called_early(
) {
    let r = rotation(|vault| vault, fast()).await;
    let v2 = r.vault.rotate("db-password", "v2");
    r.vault.fail_next(
        1,
        ProviderErrorKind::Throttled {
            retry_after: Some(Duration::from_secs(600)),
        },
    );
    r.publisher.publish("m1", event("db-password", &v2));
    let log = r.publisher.wait_for_settlements(4).await;

    assert_eq!(
        r.vault.calls("db-password"),
        2,
        "one throttled call; the retries inside the vault's Retry-After do not call it"
    );
    assert_eq!(r.cache.stats().deferred_events, 3);
    let dead = log.dead_lettered();
    assert_eq!(dead[0].1, "MaxAttemptsExceeded");
    assert!(
        dead[0].2.contains("the provider is backing off for"),
        "{}",
        dead[0].2
    );
    let seen = r.seen.lock().unwrap().clone();
    assert!(
        seen.last().unwrap().at < Duration::from_secs(1),
        "the job's backoff caps its pause: {seen:?}"
    );
    r.job.shutdown().await.unwrap();
}

#[tokio::test]
async fn one_name_mapping_serves_the_reader_and_the_event() {
    let names = keyvault_invalidator_core::NameMapping::key_separator(":").vault_separator("--");
    let vault = InMemoryVault::new();
    vault.set("ServiceBus--ConnectionString", "first");
    let cache = CachedSecretProvider::new(vault.clone().with_names(names.clone()));
    let read = cache.get("ServiceBus:ConnectionString").await.unwrap();
    assert_eq!(read.value().expose_secret(), "first");
    let source = InMemoryEventSource::new();
    let publisher = source.publisher();
    let job = Job::builder(
        source,
        KeyVaultInvalidator::builder(cache.clone())
            .allow_vault("prod-kv")
            .name_mapping(names)
            .build(),
    )
    .spawn()
    .expect("a Tokio runtime");

    let v2 = vault.rotate("ServiceBus--ConnectionString", "second");
    publisher.publish("m1", event("ServiceBus--ConnectionString", &v2));
    let log = publisher.wait_for_settlements(1).await;

    assert_eq!(log.completed(), vec!["m1"]);
    let info = cache
        .secret_info("ServiceBus:ConnectionString")
        .await
        .unwrap();
    assert_eq!(info.version, Some(v2));
    assert_eq!(vault.calls("ServiceBus--ConnectionString"), 2);
    job.shutdown().await.unwrap();
}
