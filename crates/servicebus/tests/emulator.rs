//! The Service Bus source against the testkit's in-process emulator: the conformance suite,
//! both registrations end to end, and faults.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use keyvault_invalidator_core::secrecy::ExposeSecret;
use keyvault_invalidator_core::{
    parse_events, EventSource, Job, JobHandle, KeyVaultInvalidator, SecretCache, Settlement,
    SourceErrorKind,
};
use keyvault_invalidator_moka::CachedSecretProvider;
use keyvault_invalidator_servicebus::{ServiceBusConfig, ServiceBusSource};
use keyvault_invalidator_testkit::conformance::{self, ConformanceTarget, DeadLetter};
use keyvault_invalidator_testkit::keyvault_standin::FakeTokenCredential;
use keyvault_invalidator_testkit::servicebus_emulator::{ServiceBusEmulator, SubscriptionSettings};
use keyvault_invalidator_testkit::{
    eventually, InMemoryVault, KeyVaultEventBuilder, RecordingCache, EVENTUALLY_TIMEOUT,
};

/// Waits for one step, at most [`EVENTUALLY_TIMEOUT`].
async fn within<T>(step: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(EVENTUALLY_TIMEOUT, step)
        .await
        .expect("the step finished in time")
}

fn unique_topic(what: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{what}-{}", NEXT.fetch_add(1, Ordering::SeqCst))
}

/// The connection-string registration, pointed at the emulator.
fn connection_string_config(emulator: &ServiceBusEmulator, topic: &str) -> ServiceBusConfig {
    ServiceBusConfig::connection_string(&emulator.connection_string(Some(topic)))
        .and_then(|c| c.subscription_prefix("app"))
        .unwrap()
        .management_endpoint(emulator.management_endpoint())
        .unwrap()
}

/// Five seconds, the shortest lock Service Bus allows: deliveries stranded on a dead link
/// come back quickly.
fn short_lock() -> keyvault_invalidator_servicebus::SubscriptionProperties {
    keyvault_invalidator_servicebus::SubscriptionProperties::default()
        .with_lock_duration(Duration::from_secs(5))
}

/// The original's connection-string registration: the string in the secret store.
fn store_config(emulator: &ServiceBusEmulator, store: &InMemoryVault) -> ServiceBusConfig {
    ServiceBusConfig::connection_string_from_store(store.clone(), "ServiceBus--ConnectionString")
        .and_then(|c| c.subscription_prefix("app"))
        .unwrap()
        .management_endpoint(emulator.management_endpoint())
        .unwrap()
}

struct Emulated {
    emulator: ServiceBusEmulator,
}

#[async_trait::async_trait]
impl ConformanceTarget for Emulated {
    type Source = ServiceBusSource;

    async fn new_source(&self) -> ServiceBusSource {
        let topic = unique_topic("conformance");
        self.emulator.create_topic(&topic);
        // Short locks, so that the lock check outlasts them.
        let config = connection_string_config(&self.emulator, &topic)
            .subscription_properties(short_lock())
            .unwrap();
        let source = ServiceBusSource::new(config);
        source.connect().await.expect("connect");
        source
    }

    /// A subscription made beforehand, as infrastructure makes one for instances to share:
    /// unlike an automatic one, closing a source does not delete it. Short locks, so that what
    /// a closed source left locked comes back soon.
    async fn new_shared_source(&self) -> ServiceBusSource {
        let topic = unique_topic("conformance-shared");
        self.emulator.create_topic(&topic);
        let subscription = format!("{topic}-shared");
        let settings = SubscriptionSettings {
            lock_duration: short_lock().lock_duration,
            ..SubscriptionSettings::default()
        };
        assert!(self
            .emulator
            .create_subscription(&topic, &subscription, settings));
        let config = connection_string_config(&self.emulator, &topic)
            .existing_subscription(&subscription)
            .unwrap();
        let source = ServiceBusSource::new(config);
        source.connect().await.expect("connect");
        source
    }

    async fn reopen(&self, source: &ServiceBusSource) -> ServiceBusSource {
        let topic = topic_of(&self.emulator, source);
        let config = connection_string_config(&self.emulator, &topic)
            .existing_subscription(source.subscription_name())
            .unwrap();
        let reopened = ServiceBusSource::new(config);
        reopened.connect().await.expect("connect again");
        reopened
    }

    async fn publish(&self, source: &ServiceBusSource, message_id: &str, body: &[u8]) {
        assert!(self.emulator.publish_message(
            &topic_of(&self.emulator, source),
            body,
            Default::default(),
            Some(message_id.to_owned()),
        ));
    }

    async fn dead_letters(&self, source: &ServiceBusSource) -> Vec<DeadLetter> {
        let topic = topic_of(&self.emulator, source);
        self.emulator
            .dead_letters(&topic, source.subscription_name())
            .into_iter()
            .map(|d| DeadLetter {
                body: d.message.body,
                reason: d.reason,
                description: d.description,
            })
            .collect()
    }

    fn lock_duration(&self) -> Option<Duration> {
        Some(short_lock().lock_duration)
    }
}

/// The topic a source's subscription lives in, found through the emulator.
fn topic_of(emulator: &ServiceBusEmulator, source: &ServiceBusSource) -> String {
    emulator
        .topics()
        .into_iter()
        .find(|t| {
            emulator
                .subscriptions(t)
                .iter()
                .any(|s| s == source.subscription_name())
        })
        .expect("the source's subscription exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_bus_source_passes_the_conformance_suite() {
    let target = Emulated {
        emulator: ServiceBusEmulator::start().await.unwrap(),
    };
    conformance::run_all(&target).await;
}

async fn job_over<C: SecretCache + 'static>(
    config: ServiceBusConfig,
    cache: C,
) -> (ServiceBusSource, JobHandle) {
    let source = ServiceBusSource::new(config);
    source.connect().await.expect("connect");
    let invalidator = KeyVaultInvalidator::builder(cache)
        .allow_vault("prod-kv")
        .build();
    let handle = Job::builder(source.clone(), invalidator)
        .spawn()
        .expect("a Tokio runtime");
    (source, handle)
}

fn event(name: &str, version: &str) -> KeyVaultEventBuilder {
    KeyVaultEventBuilder::secret_new_version(name)
        .vault("prod-kv")
        .version(version)
        .now()
}

async fn run_end_to_end(emulator: &ServiceBusEmulator, topic: &str, config: ServiceBusConfig) {
    let vault = InMemoryVault::new();
    for name in ["db-password", "api-key", "untouched"] {
        vault.set(name, "v1");
    }
    let cache = CachedSecretProvider::new(vault.clone());
    for name in ["db-password", "api-key", "untouched"] {
        cache.get(name).await.unwrap();
    }
    let (source, handle) = job_over(config, cache.clone()).await;
    let subscription = source.subscription_name().to_owned();
    assert_eq!(
        emulator.subscriptions(topic),
        vec![subscription.clone()],
        "the subscription appears"
    );

    let db = vault.rotate("db-password", "v2");
    let api = vault.rotate("api-key", "v2");
    assert!(emulator.publish_as_event_grid(topic, &event("db-password", &db).cloud_event_bytes()));
    assert!(emulator.publish_as_event_grid(topic, &event("api-key", &api).event_grid_bytes()));
    let malformed =
        br#"{"id":"bad-1","eventType":"Microsoft.KeyVault.SecretNewVersionCreated","data":{}}"#;
    assert!(emulator.publish_as_event_grid(topic, malformed));

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
        assert_eq!(
            cache.get(name).await.unwrap().value().expose_secret(),
            expected,
            "{name}"
        );
    }
    assert_eq!(
        (
            vault.calls("db-password"),
            vault.calls("api-key"),
            vault.calls("untouched")
        ),
        (2, 2, 1)
    );
    // The job counts a settlement when it decides it; the emulator applies it a moment later.
    eventually(
        "the malformed payload reaches the dead-letter sub-queue",
        || emulator.dead_letters(topic, &subscription).len() == 1,
    )
    .await;
    eventually("nothing is left locked", || {
        emulator.locked(topic, &subscription) == 0
    })
    .await;
    let dead = emulator.dead_letters(topic, &subscription);
    assert_eq!(dead[0].message.body, malformed.to_vec());
    assert!(parse_events(malformed).is_err());
    assert_eq!(
        emulator.pending(topic, &subscription),
        Some(0),
        "completed, nothing left"
    );

    let stats = handle.shutdown().await.unwrap();
    assert_eq!(
        (stats.completed, stats.dead_lettered, stats.invalidated),
        (2, 1, 2)
    );
    assert_eq!(
        emulator.subscriptions(topic),
        Vec::<String>::new(),
        "shutdown deletes the subscription"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_with_a_connection_string() {
    let emulator = ServiceBusEmulator::start().await.unwrap();
    let topic = unique_topic("e2e-cs");
    emulator.create_topic(&topic);
    let config = connection_string_config(&emulator, &topic);
    run_end_to_end(&emulator, &topic, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_with_a_connection_string_from_the_secret_store() {
    let emulator = ServiceBusEmulator::start().await.unwrap();
    let topic = unique_topic("e2e-store");
    emulator.create_topic(&topic);
    let store = InMemoryVault::new();
    store.set(
        "ServiceBus--ConnectionString",
        &emulator.connection_string(Some(&topic)),
    );
    let config = store_config(&emulator, &store);
    run_end_to_end(&emulator, &topic, config).await;
    assert_eq!(store.calls("ServiceBus--ConnectionString"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_with_an_entra_id_credential() {
    let emulator = ServiceBusEmulator::start().await.unwrap();
    let topic = unique_topic("e2e-identity");
    emulator.create_topic(&topic);
    let credential = Arc::new(FakeTokenCredential::new(emulator.bearer_token()));
    let config = ServiceBusConfig::with_credential("my-ns", credential.clone())
        .and_then(|c| c.topic(&topic))
        .and_then(|c| c.subscription_prefix("app"))
        .unwrap()
        .amqp_endpoint(&emulator.amqp_url())
        .unwrap()
        .management_endpoint(emulator.management_endpoint())
        .unwrap();
    run_end_to_end(&emulator, &topic, config).await;
    assert_eq!(
        credential.last_scopes(),
        vec!["https://servicebus.azure.net/.default".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_lost_when_the_connection_drops_mid_stream_or_a_token_is_refused_once() {
    let emulator = ServiceBusEmulator::start().await.unwrap();
    let topic = unique_topic("faults");
    emulator.create_topic(&topic);
    let cache = RecordingCache::new();
    // Deliveries on the dropped connection come back when their locks expire: keep that short.
    let config = connection_string_config(&emulator, &topic)
        .subscription_properties(short_lock())
        .unwrap();
    let (_source, handle) = job_over(config, cache.clone()).await;

    let names: Vec<String> = (0..30).map(|n| format!("secret-{n}")).collect();
    for (n, name) in names.iter().enumerate() {
        if n == 10 {
            emulator.reject_next_put_token();
            emulator.drop_connections();
        }
        if n == 20 {
            emulator.detach_links_with_error("com.microsoft:server-busy");
        }
        assert!(emulator.publish_as_event_grid(&topic, &event(name, "abc").event_grid_bytes()));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eventually("every event's secret is invalidated", || {
        cache
            .invalidated()
            .into_iter()
            .collect::<BTreeSet<_>>()
            .len()
            == names.len()
    })
    .await;
    let seen: BTreeSet<String> = cache.invalidated().into_iter().collect();
    assert_eq!(
        seen,
        names.iter().cloned().collect::<BTreeSet<_>>(),
        "lost: none"
    );
    let stats = handle.stats();
    assert!(
        stats.receive_errors >= 2,
        "the drop and the detach were noticed: {stats:?}"
    );
    let subscription = emulator.subscriptions(&topic).remove(0);
    let settlements = emulator.settlements(&topic, &subscription);
    let tokens: BTreeSet<&str> = settlements.iter().map(|s| s.lock_token.as_str()).collect();
    assert_eq!(
        tokens.len(),
        settlements.len(),
        "no delivery was settled twice"
    );
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sas_tokens_are_renewed_before_they_end() {
    let emulator = ServiceBusEmulator::start().await.unwrap();
    let topic = unique_topic("renewal");
    emulator.create_topic(&topic);
    let config = connection_string_config(&emulator, &topic)
        .sas_token_lifetime(Duration::from_secs(10))
        .unwrap();
    let cache = RecordingCache::new();
    let (_source, handle) = job_over(config, cache.clone()).await;

    // A 10 s token is renewed halfway: within 12 s at least two more put-tokens.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let puts = emulator.cbs_requests();
    assert!(puts.len() >= 3, "{puts:?}");
    assert!(puts.iter().all(|p| p.status == 202), "{puts:?}");
    assert!(
        emulator.publish_as_event_grid(&topic, &event("after-renewal", "abc").event_grid_bytes())
    );
    eventually("an event after the renewals is handled", || {
        cache.invalidated() == vec!["after-renewal"]
    })
    .await;
    assert_eq!(
        handle.stats().receive_errors,
        0,
        "renewal did not disturb the link"
    );
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_authorisation_fails_in_time_and_the_next_attempt_connects() {
    let emulator = ServiceBusEmulator::start().await.unwrap();
    let topic = unique_topic("unanswered");
    emulator.create_topic(&topic);
    let config = connection_string_config(&emulator, &topic)
        .operation_timeout(Duration::from_secs(5))
        .unwrap();
    let source = ServiceBusSource::new(config);
    emulator.leave_put_tokens_unanswered(1);

    let error = within(source.connect()).await.unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::Transient);
    assert_eq!(
        error.message,
        "authorising on $cbs: Service Bus did not answer within 5s"
    );
    assert_eq!(emulator.unanswered_put_tokens(), 1);
    assert_eq!(emulator.cbs_requests(), vec![]);

    // The subscription was created before the authorisation; the next attempt connects anew.
    assert!(emulator.publish_as_event_grid(&topic, &event("db-password", "abc").event_grid_bytes()));
    let batch = within(source.receive(10)).await.unwrap();
    let events: Vec<String> = batch
        .iter()
        .flat_map(|delivery| parse_events(&delivery.body).unwrap())
        .filter_map(|event| Some(event.as_key_vault()?.name.as_str().to_owned()))
        .collect();
    assert_eq!(events, vec!["db-password"]);
    let statuses: Vec<u16> = emulator.cbs_requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![202]);
    for delivery in batch {
        within(source.settle(delivery.token, Settlement::Complete))
            .await
            .unwrap();
    }
    within(source.close()).await.unwrap();
    assert_eq!(emulator.unanswered_put_tokens(), 1);
}

/// A job over a subscription with 5 s locks whose one invalidation is held in flight.
struct HeldInvalidation {
    emulator: ServiceBusEmulator,
    topic: String,
    subscription: String,
    cache: RecordingCache,
    handle: JobHandle,
}

async fn hold_one_invalidation(what: &str, max_lock_renewal: Duration) -> HeldInvalidation {
    let emulator = ServiceBusEmulator::start().await.unwrap();
    let topic = unique_topic(what);
    emulator.create_topic(&topic);
    let config = connection_string_config(&emulator, &topic)
        .subscription_properties(short_lock())
        .unwrap()
        .max_lock_renewal(max_lock_renewal);
    let cache = RecordingCache::new();
    cache.hold();
    let (source, handle) = job_over(config, cache.clone()).await;
    let subscription = source.subscription_name().to_owned();
    assert!(emulator.publish_as_event_grid(&topic, &event("db-password", "abc").event_grid_bytes()));
    eventually("the invalidation is in flight", || cache.running() == 1).await;
    HeldInvalidation {
        emulator,
        topic,
        subscription,
        cache,
        handle,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_lock_expired_is_not_completed_and_comes_back() {
    // Renewal off: the lock runs out while the invalidation is held.
    let HeldInvalidation {
        emulator,
        topic,
        subscription,
        cache,
        handle,
    } = hold_one_invalidation("lock", Duration::ZERO).await;
    // Hold the invalidation past the 5 s lock: the service takes the message back.
    tokio::time::sleep(Duration::from_secs(6)).await;
    cache.release();

    // The job decides to complete both deliveries; the source refuses the one whose lock ran
    // out, so only the redelivery's completion reaches the service.
    eventually("the redelivery is invalidated and completed", || {
        cache.invalidated().len() == 2 && handle.stats().completed == 2
    })
    .await;
    let stats = handle.stats();
    assert_eq!(
        stats.settle_errors, 1,
        "the expired delivery was not completed: {stats:?}"
    );
    eventually("the completion is applied", || {
        emulator.locked(&topic, &subscription) == 0
    })
    .await;
    let settlements = emulator.settlements(&topic, &subscription);
    assert_eq!(
        settlements.len(),
        1,
        "one settlement sent, for the live lock: {settlements:?}"
    );
    assert_eq!(
        (settlements[0].outcome, settlements[0].applied),
        ("accepted", true)
    );
    assert_eq!(emulator.pending(&topic, &subscription), Some(0));
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_invalidation_keeps_its_lock_and_is_completed_once() {
    let HeldInvalidation {
        emulator,
        topic,
        subscription,
        cache,
        handle,
    } = hold_one_invalidation(
        "renewal",
        keyvault_invalidator_core::lock::LockRenewal::DEFAULT_MAX_DURATION,
    )
    .await;
    // Twice the 5 s lock: renewed at about 2.5 s, 5 s, 7.5 s...
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(
        emulator.pending(&topic, &subscription),
        Some(0),
        "never redelivered"
    );
    cache.release();
    eventually("the delivery is completed", || {
        handle.stats().completed == 1
    })
    .await;
    eventually("the completion is applied", || {
        emulator.locked(&topic, &subscription) == 0
    })
    .await;
    let settlements = emulator.settlements(&topic, &subscription);
    assert_eq!(settlements.len(), 1, "{settlements:?}");
    assert_eq!(
        (settlements[0].outcome, settlements[0].applied),
        ("accepted", true)
    );
    let renewals = emulator.lock_renewals(&topic, &subscription);
    assert!(renewals.len() >= 3, "renewed while held: {renewals:?}");
    assert!(renewals
        .iter()
        .all(|r| r.locked_until.is_some() && r.lock_token == settlements[0].lock_token));
    let stats = handle.shutdown().await.unwrap();
    assert_eq!((stats.completed, stats.settle_errors), (1, 0));
    assert_eq!(cache.invalidated(), vec!["db-password".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_the_service_reports_lost_is_not_settled_and_the_redelivery_is() {
    let HeldInvalidation {
        emulator,
        topic,
        subscription,
        cache,
        handle,
    } = hold_one_invalidation(
        "lost",
        keyvault_invalidator_core::lock::LockRenewal::DEFAULT_MAX_DURATION,
    )
    .await;
    // The service loses the lock early (as after a service update); the renewal at about
    // 2.5 s hears 410 Gone, well before the lock's nominal end.
    emulator.expire_locks(&topic, &subscription);
    eventually("the renewal is answered: lock lost", || {
        emulator
            .lock_renewals(&topic, &subscription)
            .iter()
            .any(|r| r.locked_until.is_none())
    })
    .await;
    // The answer reaches the source a moment after the emulator recorded it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cache.release();
    eventually("the redelivery is invalidated and completed", || {
        cache.invalidated().len() == 2 && handle.stats().completed == 2
    })
    .await;
    let stats = handle.stats();
    assert_eq!(
        stats.settle_errors, 1,
        "the lost delivery was not settled: {stats:?}"
    );
    eventually("the completion is applied", || {
        emulator.locked(&topic, &subscription) == 0
    })
    .await;
    let settlements = emulator.settlements(&topic, &subscription);
    assert_eq!(
        settlements.len(),
        1,
        "only the redelivery settled: {settlements:?}"
    );
    assert_eq!(
        (settlements[0].outcome, settlements[0].applied),
        ("accepted", true)
    );
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_subscription_is_a_clear_fatal_error() {
    let emulator = ServiceBusEmulator::start().await.unwrap();
    let topic = unique_topic("missing");
    emulator.create_topic(&topic);
    let config = connection_string_config(&emulator, &topic)
        .existing_subscription("nobody-made-this")
        .unwrap();
    let source = ServiceBusSource::new(config);
    // The service refuses the link right after the attach: the refusal shows at connect or at
    // the first receive.
    let error = match source.connect().await {
        Err(error) => error,
        Ok(()) => {
            use keyvault_invalidator_core::EventSource;
            tokio::time::timeout(Duration::from_secs(30), source.receive(1))
                .await
                .expect("the refusal arrives")
                .unwrap_err()
        }
    };
    assert_eq!(
        error.kind,
        keyvault_invalidator_core::SourceErrorKind::Fatal,
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("the topic or subscription does not exist"),
        "{error}"
    );
    assert_eq!(
        emulator.management_requests(),
        vec![],
        "an existing subscription is never created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqps_endpoint_is_reached_over_tls() {
    // The emulator speaks plain AMQP only, so a TLS handshake with it fails: what matters is
    // that the TLS path runs (a transient connection error), not a panic over rustls setup.
    let emulator = ServiceBusEmulator::start().await.unwrap();
    let topic = unique_topic("tls");
    emulator.create_topic(&topic);
    let tls_url = emulator.amqp_url().replace("amqp://", "amqps://");
    let config = connection_string_config(&emulator, &topic)
        .amqp_endpoint(&tls_url)
        .unwrap();
    let error = tokio::time::timeout(
        Duration::from_secs(30),
        ServiceBusSource::new(config).connect(),
    )
    .await
    .expect("the handshake fails promptly")
    .unwrap_err();
    assert_eq!(
        error.kind,
        keyvault_invalidator_core::SourceErrorKind::Transient,
        "{error}"
    );
    // rustls read the plain-AMQP answer as a TLS record of the wrong type.
    assert!(
        error.message.starts_with("opening the AMQP connection")
            && error.message.contains("InvalidContentType"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_connection_string_is_read_again_from_the_store() {
    let emulator = ServiceBusEmulator::start().await.unwrap();
    let topic = unique_topic("rotation");
    emulator.create_topic(&topic);
    let store = InMemoryVault::new();
    store.set(
        "ServiceBus--ConnectionString",
        &emulator.connection_string(Some(&topic)),
    );
    let config = store_config(&emulator, &store)
        .subscription_properties(short_lock())
        .unwrap();
    let cache = RecordingCache::new();
    let (_source, handle) = job_over(config, cache.clone()).await;
    assert!(emulator.publish_as_event_grid(&topic, &event("before", "abc").event_grid_bytes()));
    eventually("the first event is handled", || {
        cache.invalidated() == vec!["before"]
    })
    .await;

    // The key is rotated and the connection drops: the old string is refused until the store
    // holds the new one.
    emulator.rotate_policy_key();
    emulator.drop_connections();
    assert!(emulator.publish_as_event_grid(&topic, &event("after", "abc").event_grid_bytes()));
    eventually("the refusals are noticed", || {
        handle.stats().receive_errors >= 2
    })
    .await;
    store.rotate(
        "ServiceBus--ConnectionString",
        &emulator.connection_string(Some(&topic)),
    );

    eventually("the event after the rotation is handled", || {
        cache.invalidated() == vec!["before", "after"]
    })
    .await;
    let refused = emulator
        .cbs_requests()
        .iter()
        .filter(|request| request.status == 401)
        .count();
    assert!(refused >= 1, "the old key was refused at least once");
    assert!(
        store.calls("ServiceBus--ConnectionString") >= 3,
        "read at start and again after refusals"
    );
    handle.shutdown().await.unwrap();
}

/// On the service, only a counted abandon (Modified) makes `MaxDeliveryCount` and the job's
/// `max_attempts` fire; the emulator counts as the service does (Released is not counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_that_keeps_failing_is_abandoned_with_modified_and_dead_lettered_after_max_attempts(
) {
    let emulator = ServiceBusEmulator::start().await.unwrap();
    let topic = unique_topic("attempts");
    emulator.create_topic(&topic);
    let cache = RecordingCache::new();
    cache.fail_next(100, true);
    let source = ServiceBusSource::new(connection_string_config(&emulator, &topic));
    source.connect().await.expect("connect");
    let invalidator = KeyVaultInvalidator::builder(cache.clone())
        .allow_vault("prod-kv")
        .build();
    let handle = Job::builder(source.clone(), invalidator)
        .max_attempts(3)
        .retry_backoff(keyvault_invalidator_core::Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(50),
        ))
        .spawn()
        .expect("a Tokio runtime");
    let subscription = source.subscription_name().to_owned();
    assert!(emulator.publish_as_event_grid(&topic, &event("db-password", "v2").event_grid_bytes()));

    eventually("the message is dead-lettered", || {
        emulator.dead_letters(&topic, &subscription).len() == 1
    })
    .await;
    let dead = emulator.dead_letters(&topic, &subscription);
    assert_eq!(dead[0].reason, "MaxAttemptsExceeded");
    assert_eq!(dead[0].message.delivery_count, 3, "delivered three times");
    let outcomes: Vec<&str> = emulator
        .settlements(&topic, &subscription)
        .iter()
        .map(|s| s.outcome)
        .collect();
    assert_eq!(outcomes, vec!["modified", "modified", "rejected"]);
    assert_eq!(cache.attempts(), 3, "one invalidation attempt per delivery");
    let stats = handle.shutdown().await.unwrap();
    assert_eq!((stats.completed, stats.dead_lettered), (0, 1));
}
