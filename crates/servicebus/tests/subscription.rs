//! The source keeps its per-instance subscription through what Azure does at start and during
//! outages: a busy or throttled management API, a role assignment still propagating, a
//! managed identity endpoint not ready yet, a `PUT` whose answer was lost, a subscription
//! removed by `AutoDeleteOnIdle`. Each test drives the source against the emulator with
//! injected management faults and checks the exact requests it made.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use keyvault_invalidator_core::{EventSource, Settlement, SourceError, SourceErrorKind};
use keyvault_invalidator_servicebus::{ServiceBusConfig, ServiceBusSource};
use keyvault_invalidator_testkit::servicebus_emulator::{
    ManagementFault, ManagementRequest, ServiceBusEmulator, SubscriptionSettings,
};

/// Far longer than any step here takes; only a hang reaches it.
const GENEROUS: Duration = Duration::from_secs(60);

fn unique_topic(what: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{what}-{}", NEXT.fetch_add(1, Ordering::SeqCst))
}

async fn emulator_with(topic: &str) -> ServiceBusEmulator {
    let emulator = ServiceBusEmulator::start().await.unwrap();
    emulator.create_topic(topic);
    emulator
}

/// The connection-string registration, pointed at the emulator.
fn config(emulator: &ServiceBusEmulator, topic: &str) -> ServiceBusConfig {
    ServiceBusConfig::connection_string(&emulator.connection_string(Some(topic)))
        .and_then(|c| c.subscription_prefix("app"))
        .unwrap()
        .management_endpoint(emulator.management_endpoint())
        .unwrap()
}

/// Connects as the job would keep asking: again after every transient error. The transient
/// errors met on the way, or the first other error.
async fn connect_through_transients(
    source: &ServiceBusSource,
) -> Result<Vec<SourceError>, SourceError> {
    let attempts = async {
        let mut transients = Vec::new();
        loop {
            match source.connect().await {
                Ok(()) => return Ok(transients),
                Err(error) if error.kind == SourceErrorKind::Transient => transients.push(error),
                Err(error) => return Err(error),
            }
        }
    };
    tokio::time::timeout(GENEROUS, attempts)
        .await
        .expect("connecting ended in time")
}

fn puts(emulator: &ServiceBusEmulator) -> Vec<ManagementRequest> {
    emulator
        .management_requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .collect()
}

fn statuses(requests: &[ManagementRequest]) -> Vec<u16> {
    requests.iter().map(|r| r.status).collect()
}

/// Receives until a delivery comes, riding out transient errors (a lost link); completes it.
async fn receive_one(source: &ServiceBusSource) -> Vec<u8> {
    let receiving = async {
        loop {
            match source.receive(1).await {
                Ok(mut batch) if !batch.is_empty() => {
                    let delivery = batch.remove(0);
                    let body = delivery.body.to_vec();
                    source
                        .settle(delivery.token, Settlement::Complete)
                        .await
                        .unwrap();
                    return body;
                }
                Ok(_) => {}
                Err(error) => assert_eq!(error.kind, SourceErrorKind::Transient, "{error}"),
            }
        }
    };
    tokio::time::timeout(GENEROUS, receiving)
        .await
        .expect("a delivery came in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_busy_answers_then_success_connect_after_exactly_three_puts() {
    let topic = unique_topic("busy");
    let emulator = emulator_with(&topic).await;
    emulator.fail_next_management(503);
    emulator.fail_next_management(503);
    let source = ServiceBusSource::new(config(&emulator, &topic));

    let transients = connect_through_transients(&source).await.unwrap();

    assert_eq!(transients.len(), 2);
    assert_eq!(statuses(&puts(&emulator)), vec![503, 503, 201]);
    assert_eq!(
        emulator.subscriptions(&topic),
        vec![source.subscription_name()]
    );
    source.close().await.unwrap();
    assert_eq!(emulator.management_request_count("DELETE"), 1);
    assert_eq!(emulator.subscriptions(&topic), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_put_is_not_sent_again_before_its_retry_after() {
    let topic = unique_topic("throttled");
    let emulator = emulator_with(&topic).await;
    emulator.fail_management(ManagementFault::status(429).retry_after("2"));
    let source = ServiceBusSource::new(config(&emulator, &topic));

    let transients = connect_through_transients(&source).await.unwrap();

    assert_eq!(transients.len(), 1);
    assert_eq!(transients[0].retry_after, Some(Duration::from_secs(2)));
    let puts = puts(&emulator);
    assert_eq!(statuses(&puts), vec![429, 201]);
    let waited = puts[1].at.duration_since(puts[0].at);
    assert!(
        waited >= Duration::from_secs(2) && waited < GENEROUS,
        "the second PUT came {waited:?} after the first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_past_a_short_grace_are_fatal_and_name_the_role_needed() {
    let topic = unique_topic("refused");
    let emulator = emulator_with(&topic).await;
    for _ in 0..500 {
        emulator.fail_next_management(401);
    }
    let config = config(&emulator, &topic).unauthorized_grace(Duration::from_secs(2));
    let source = ServiceBusSource::new(config);

    let error = connect_through_transients(&source).await.unwrap_err();

    assert_eq!(error.kind, SourceErrorKind::Fatal);
    assert!(
        error.message.contains("Azure Service Bus Data Owner")
            && error
                .message
                .contains("shared access policy with Manage rights"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("past the grace of 2 s"),
        "{}",
        error.message
    );
    let puts = puts(&emulator);
    assert!(puts.len() >= 2, "retried within the grace: {puts:?}");
    assert!(puts.iter().all(|r| r.status == 401));
    let refused_for = puts[puts.len() - 1].at.duration_since(puts[0].at);
    assert!(refused_for >= Duration::from_secs(2), "{refused_for:?}");
    assert_eq!(emulator.subscriptions(&topic), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_refusals_within_the_grace_then_created_connect() {
    let topic = unique_topic("propagating");
    let emulator = emulator_with(&topic).await;
    emulator.fail_next_management(401);
    emulator.fail_next_management(403);
    let source = ServiceBusSource::new(config(&emulator, &topic));

    let transients = connect_through_transients(&source).await.unwrap();

    assert_eq!(transients.len(), 2);
    assert_eq!(statuses(&puts(&emulator)), vec![401, 403, 201]);
    assert_eq!(
        emulator.subscriptions(&topic),
        vec![source.subscription_name()]
    );
    assert!(emulator.publish(&topic, b"after the refusals", BTreeMap::new()));
    assert_eq!(receive_one(&source).await, b"after the refusals");
    source.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_on_our_own_name_is_ours_is_not_put_again_on_reconnect_and_is_deleted_at_close()
{
    let topic = unique_topic("conflict");
    let emulator = emulator_with(&topic).await;
    let source = ServiceBusSource::new(config(&emulator, &topic));
    // An earlier PUT of this instance created it, and its answer was lost.
    assert!(emulator.create_subscription(
        &topic,
        source.subscription_name(),
        SubscriptionSettings::default()
    ));

    connect_through_transients(&source).await.unwrap();
    assert_eq!(statuses(&puts(&emulator)), vec![409]);

    emulator.drop_connections();
    assert!(emulator.publish(&topic, b"after the reconnect", BTreeMap::new()));
    assert_eq!(receive_one(&source).await, b"after the reconnect");
    assert_eq!(
        emulator.management_request_count("PUT"),
        1,
        "reconnecting does not create it again"
    );

    source.close().await.unwrap();
    let deletes: Vec<ManagementRequest> = emulator
        .management_requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    assert_eq!(statuses(&deletes), vec![200]);
    assert_eq!(emulator.subscriptions(&topic), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_that_is_not_ready_at_first_connects_once_it_is() {
    let topic = unique_topic("identity");
    let emulator = emulator_with(&topic).await;
    let credential = Arc::new(NotReadyAtFirst::new(emulator.bearer_token(), 1));
    let config = ServiceBusConfig::with_credential("my-ns", credential.clone())
        .and_then(|c| c.topic(&topic))
        .and_then(|c| c.subscription_prefix("app"))
        .unwrap()
        .amqp_endpoint(&emulator.amqp_url())
        .unwrap()
        .management_endpoint(emulator.management_endpoint())
        .unwrap();
    let source = ServiceBusSource::new(config);

    let transients = connect_through_transients(&source).await.unwrap();

    assert_eq!(transients.len(), 1);
    assert!(
        transients[0]
            .message
            .contains("could not get a Service Bus token"),
        "{}",
        transients[0].message
    );
    assert_eq!(
        statuses(&puts(&emulator)),
        vec![201],
        "no request went out without a token"
    );
    assert_eq!(
        emulator.subscriptions(&topic),
        vec![source.subscription_name()]
    );
    source.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_removed_while_idle_is_created_again() {
    let topic = unique_topic("vanished");
    let emulator = emulator_with(&topic).await;
    let source = ServiceBusSource::new(config(&emulator, &topic));
    connect_through_transients(&source).await.unwrap();

    // AutoDeleteOnIdle during an outage: the receiver finds it gone.
    assert!(emulator.delete_subscription(&topic, source.subscription_name()));
    let published = async {
        // The topic fans out only to subscriptions that exist: publish until one gets it.
        while emulator
            .pending(&topic, source.subscription_name())
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(emulator.publish(&topic, b"after the re-creation", BTreeMap::new()));
    };
    let (body, ()) = tokio::join!(receive_one(&source), published);

    assert_eq!(body, b"after the re-creation");
    assert_eq!(statuses(&puts(&emulator)), vec![201, 201]);
    source.close().await.unwrap();
    assert_eq!(emulator.management_request_count("DELETE"), 1);
    assert_eq!(emulator.subscriptions(&topic), Vec::<String>::new());
}

/// A managed identity whose endpoint is not ready for the first `failures` requests, as at
/// pod start; then it hands out `token`.
#[derive(Debug)]
struct NotReadyAtFirst {
    token: String,
    failures_left: AtomicUsize,
}

impl NotReadyAtFirst {
    fn new(token: &str, failures: usize) -> Self {
        NotReadyAtFirst {
            token: token.to_owned(),
            failures_left: AtomicUsize::new(failures),
        }
    }
}

#[async_trait::async_trait]
impl TokenCredential for NotReadyAtFirst {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let not_ready = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if not_ready {
            return Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                "the managed identity endpoint is not available yet",
            ));
        }
        Ok(AccessToken::new(
            self.token.clone(),
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}
