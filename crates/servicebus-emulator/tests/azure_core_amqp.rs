//! The Service Bus emulator's AMQP endpoint, driven by the real `azure_core_amqp` client.
//!
//! The tests run on a current-thread runtime: the client's engine, `fe2o3-amqp` 0.14, can lose
//! the answer to a request on a multi-threaded runtime (it records the request only after
//! handing it over), and a `$cbs` put-token then waits forever. `crates/servicebus` avoids it
//! the same way, with a single-threaded runtime per connection.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration as StdDuration, SystemTime, UNIX_EPOCH};

use azure_core::credentials::Secret;
use azure_core::http::Url;
use azure_core::time::{Duration, OffsetDateTime};
use azure_core_amqp::message::{AmqpAnnotationKey, AmqpMessageBody, AmqpMessageId};
use azure_core_amqp::{
    AmqpClaimsBasedSecurity, AmqpClaimsBasedSecurityApis, AmqpConnection, AmqpConnectionApis,
    AmqpConnectionOptions, AmqpDelivery, AmqpDeliveryApis, AmqpError, AmqpErrorKind, AmqpReceiver,
    AmqpReceiverApis, AmqpReceiverOptions, AmqpSession, AmqpSessionApis, AmqpSource, AmqpValue,
    ReceiverCreditMode,
};
use base64::Engine;
use hmac::{Hmac, Mac};
use keyvault_invalidator_servicebus_emulator::{
    CbsRequest, RecordedSettlement, ServiceBusEmulator, SubscriptionSettings, POLICY_NAME,
};
use sha2::Sha256;

const TOPIC: &str = "keyvault-events";
const SUB: &str = "instance-1";
const SAS_TYPE: &str = "servicebus.windows.net:sastoken";
const TIMEOUT: StdDuration = StdDuration::from_secs(30);

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .expect("timed out after 30 s")
}

/// Polls `check` until it holds (the emulator settles asynchronously).
async fn eventually(mut check: impl FnMut() -> bool) {
    within(async {
        while !check() {
            tokio::time::sleep(StdDuration::from_millis(10)).await;
        }
    })
    .await;
}

/// A shared access signature, signed independently of the emulator's verifier.
fn sas_token(resource: &str, key_name: &str, key: &str, expiry: u64) -> String {
    let encode = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let sr = encode(&resource.to_ascii_lowercase());
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{sr}\n{expiry}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry}&skn={key_name}",
        encode(&sig)
    )
}

fn in_an_hour() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
}

async fn emulator_with(settings: SubscriptionSettings) -> ServiceBusEmulator {
    let emulator = ServiceBusEmulator::start().await.unwrap();
    emulator.create_topic(TOPIC);
    assert!(emulator.create_subscription(TOPIC, SUB, settings));
    emulator
}

async fn emulator() -> ServiceBusEmulator {
    emulator_with(SubscriptionSettings::default()).await
}

struct Client {
    connection: AmqpConnection,
    session: AmqpSession,
    cbs: AmqpClaimsBasedSecurity,
}

static LINKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Client {
    async fn connect(emulator: &ServiceBusEmulator) -> Client {
        let connection = AmqpConnection::new();
        connection
            .open(
                "emulator-test".to_owned(),
                Url::parse(&emulator.amqp_url()).unwrap(),
                Some(AmqpConnectionOptions {
                    idle_timeout: Some(Duration::seconds(60)),
                    ..Default::default()
                }),
            )
            .await
            .unwrap();
        let session = AmqpSession::new();
        session.begin(&connection, None).await.unwrap();
        let cbs = AmqpClaimsBasedSecurity::new(session.clone()).unwrap();
        cbs.attach().await.unwrap();
        Client {
            connection,
            session,
            cbs,
        }
    }

    async fn put_token(
        &self,
        audience: String,
        token_type: &str,
        token: String,
    ) -> Result<(), AmqpError> {
        self.cbs
            .authorize_path(
                audience,
                Some(token_type.to_owned()),
                &Secret::new(token),
                OffsetDateTime::now_utc() + Duration::hours(1),
            )
            .await
    }

    /// Authorises the subscription with a SAS token for the topic, as the SDKs do.
    async fn authorise(&self, emulator: &ServiceBusEmulator) {
        let resource = format!("sb://127.0.0.1:{}/{TOPIC}", emulator.amqp_port());
        let token = sas_token(&resource, POLICY_NAME, &emulator.policy_key(), in_an_hour());
        self.put_token(audience(emulator), SAS_TYPE, token)
            .await
            .unwrap();
    }

    async fn receiver(&self, prefetch: u32) -> Result<AmqpReceiver, AmqpError> {
        self.receiver_on(&format!("{TOPIC}/subscriptions/{SUB}"), prefetch)
            .await
    }

    async fn receiver_on(&self, address: &str, prefetch: u32) -> Result<AmqpReceiver, AmqpError> {
        let receiver = AmqpReceiver::new();
        receiver
            .attach(
                &self.session,
                AmqpSource::builder()
                    .with_address(address.to_owned())
                    .build(),
                Some(AmqpReceiverOptions {
                    // Link names are unique per session, including links the peer closed.
                    name: Some(format!(
                        "receiver-{}",
                        LINKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    )),
                    credit_mode: Some(ReceiverCreditMode::Auto(prefetch)),
                    auto_accept: false,
                    ..Default::default()
                }),
            )
            .await?;
        Ok(receiver)
    }

    async fn close(self) {
        let _ = self.cbs.detach().await;
        let _ = self.session.end().await;
        let _ = self.connection.close().await;
    }
}

fn audience(emulator: &ServiceBusEmulator) -> String {
    format!(
        "amqp://127.0.0.1:{}/{TOPIC}/subscriptions/{SUB}",
        emulator.amqp_port()
    )
}

fn body(delivery: &AmqpDelivery) -> Vec<u8> {
    match &delivery.message().body {
        AmqpMessageBody::Binary(sections) => sections.concat(),
        other => panic!("not a data body: {other:?}"),
    }
}

fn delivery_count(delivery: &AmqpDelivery) -> u32 {
    delivery.message().header.as_ref().unwrap().delivery_count
}

fn annotation(delivery: &AmqpDelivery, key: &str) -> AmqpValue {
    delivery
        .message()
        .message_annotations
        .as_ref()
        .unwrap()
        .0
        .get(&AmqpAnnotationKey::Symbol(key.into()))
        .unwrap_or_else(|| panic!("no {key}"))
        .clone()
}

fn lock_token(delivery: &AmqpDelivery) -> String {
    match annotation(delivery, "x-opt-lock-token") {
        AmqpValue::Uuid(uuid) => uuid.to_string(),
        other => panic!("lock token is not a uuid: {other:?}"),
    }
}

fn millis(value: AmqpValue) -> i64 {
    match value {
        AmqpValue::TimeStamp(t) => {
            let time: SystemTime = t.0.expect("a timestamp");
            time.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
        }
        other => panic!("not a timestamp: {other:?}"),
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The error condition of a link the emulator closed, as `azure_core_amqp` reports it.
fn link_error_condition(error: &AmqpError) -> String {
    use fe2o3_amqp::link::{LinkStateError, RecvError};
    match error.kind() {
        AmqpErrorKind::LinkStateError(inner) => match inner.downcast_ref::<RecvError>() {
            Some(RecvError::LinkStateError(
                LinkStateError::RemoteClosedWithError(e)
                | LinkStateError::RemoteDetachedWithError(e),
            )) => {
                let encoded = serde_amqp::to_vec(&e.condition).unwrap();
                serde_amqp::from_slice::<serde_amqp::primitives::Symbol>(&encoded)
                    .unwrap()
                    .0
            }
            other => panic!("unexpected link state error: {other:?}"),
        },
        AmqpErrorKind::AmqpDescribedError(e) => format!("{:?}", e.condition),
        _ => panic!("unexpected error kind: {}", kind_name(error)),
    }
}

fn kind_name(error: &AmqpError) -> String {
    let name = match error.kind() {
        AmqpErrorKind::ManagementStatusCode(code, description) => {
            return format!("ManagementStatusCode({code:?}, {description:?})")
        }
        AmqpErrorKind::AmqpDescribedError(e) => return format!("AmqpDescribedError({e:?})"),
        AmqpErrorKind::LinkStateError(_) => "LinkStateError",
        AmqpErrorKind::ConnectionDropped(_) => "ConnectionDropped",
        AmqpErrorKind::LinkClosedByRemote(_) => "LinkClosedByRemote",
        AmqpErrorKind::LinkDetachedByRemote(_) => "LinkDetachedByRemote",
        AmqpErrorKind::ConnectionClosedByRemote(_) => "ConnectionClosedByRemote",
        AmqpErrorKind::SessionClosedByRemote(_) => "SessionClosedByRemote",
        AmqpErrorKind::TransportImplementationError(_) => "TransportImplementationError",
        AmqpErrorKind::SimpleMessage(_) => "SimpleMessage",
        AmqpErrorKind::AzureCore(_) => "AzureCore",
        _ => "other",
    };
    format!("{name}: {error}")
}

fn settled(lock_token: &str, outcome: &'static str, applied: bool) -> RecordedSettlement {
    RecordedSettlement {
        lock_token: lock_token.to_owned(),
        outcome,
        applied,
    }
}

#[test]
fn connection_strings_name_the_amqp_port_and_the_policy() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let emulator = runtime.block_on(ServiceBusEmulator::start()).unwrap();
    let port = emulator.amqp_port();
    assert_eq!(emulator.amqp_url(), format!("amqp://127.0.0.1:{port}"));
    assert_eq!(
        emulator.connection_string(Some(TOPIC)),
        format!(
            "Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={};UseDevelopmentEmulator=true;EntityPath={TOPIC}",
            emulator.policy_key()
        )
    );
    assert!(!emulator.connection_string(None).contains("EntityPath"));
}

#[tokio::test(flavor = "current_thread")]
async fn a_valid_sas_token_authorises_and_the_message_arrives_exactly() {
    let emulator = emulator().await;
    let body_json = br#"{"id":"e1","eventType":"Microsoft.KeyVault.SecretNewVersionCreated"}"#;
    assert!(emulator.publish_as_event_grid(TOPIC, body_json));
    assert_eq!(emulator.pending(TOPIC, SUB), Some(1));

    let client = within(Client::connect(&emulator)).await;
    within(client.authorise(&emulator)).await;
    assert_eq!(
        emulator.cbs_requests(),
        vec![CbsRequest {
            audience: audience(&emulator),
            token_type: SAS_TYPE.to_owned(),
            status: 202,
        }]
    );
    let receiver = within(client.receiver(1)).await.unwrap();
    let delivery = within(receiver.receive_delivery()).await.unwrap();

    assert_eq!(body(&delivery), body_json);
    assert_eq!(delivery_count(&delivery), 0);
    assert_eq!(
        annotation(&delivery, "x-opt-sequence-number"),
        AmqpValue::Long(1)
    );
    let locked_until = millis(annotation(&delivery, "x-opt-locked-until"));
    assert!((locked_until - (now_millis() + 60_000)).abs() < 5_000);
    let enqueued = millis(annotation(&delivery, "x-opt-enqueued-time"));
    assert!((now_millis() - enqueued).abs() < 5_000);
    let message = delivery.message();
    let Some(AmqpMessageId::String(message_id)) =
        message.properties.as_ref().unwrap().message_id.clone()
    else {
        panic!("no string message id");
    };
    assert_eq!(message_id.len(), 36);
    let properties = &message.application_properties.as_ref().unwrap().0;
    let property = |key: &str| format!("{:?}", properties.get(&key.to_owned()).unwrap());
    assert_eq!(property("aeg-event-type"), r#"String("Notification")"#);
    assert_eq!(property("aeg-delivery-count"), r#"String("0")"#);
    assert_eq!(property("aeg-metadata-version"), r#"String("1")"#);
    assert_eq!(property("aeg-data-version"), r#"String("1")"#);
    assert!(properties.contains_key(&"aeg-subscription-name".to_owned()));
    assert!(properties.contains_key(&"aeg-output-event-id".to_owned()));

    assert_eq!(emulator.pending(TOPIC, SUB), Some(0));
    assert_eq!(emulator.locked(TOPIC, SUB), 1);
    let token = lock_token(&delivery);
    within(receiver.accept_delivery(&delivery)).await.unwrap();
    eventually(|| emulator.locked(TOPIC, SUB) == 0).await;
    assert_eq!(emulator.pending(TOPIC, SUB), Some(0));
    assert_eq!(
        emulator.settlements(TOPIC, SUB),
        vec![settled(&token, "accepted", true)]
    );
    assert!(emulator.dead_letters(TOPIC, SUB).is_empty());
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_invalid_sas_token_is_answered_401() {
    let emulator = emulator().await;
    let client = within(Client::connect(&emulator)).await;
    let resource = format!("sb://127.0.0.1:{}/{TOPIC}", emulator.amqp_port());
    let forged = sas_token(&resource, POLICY_NAME, "not-the-key", in_an_hour());
    let error = within(client.put_token(audience(&emulator), SAS_TYPE, forged))
        .await
        .unwrap_err();
    match error.kind() {
        AmqpErrorKind::ManagementStatusCode(code, description) => {
            assert_eq!(u16::from(*code), 401);
            assert_eq!(
                description.as_deref(),
                Some("InvalidSignature: The token has an invalid signature.")
            );
        }
        _ => panic!("unexpected error kind: {}", kind_name(&error)),
    }
    // A token for another topic does not cover this subscription either.
    let elsewhere = format!("sb://127.0.0.1:{}/other-topic", emulator.amqp_port());
    let wrong_audience = sas_token(
        &elsewhere,
        POLICY_NAME,
        &emulator.policy_key(),
        in_an_hour(),
    );
    assert!(
        within(client.put_token(audience(&emulator), SAS_TYPE, wrong_audience))
            .await
            .is_err()
    );
    let statuses: Vec<u16> = emulator.cbs_requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![401, 401]);
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_jwt_must_be_the_bearer_token_and_a_rejection_can_be_injected() {
    let emulator = emulator().await;
    let client = within(Client::connect(&emulator)).await;
    assert!(
        within(client.put_token(audience(&emulator), "jwt", "some-other-token".to_owned()))
            .await
            .is_err()
    );
    emulator.reject_next_put_token();
    let bearer = emulator.bearer_token().to_owned();
    assert!(
        within(client.put_token(audience(&emulator), "jwt", bearer.clone()))
            .await
            .is_err()
    );
    within(client.put_token(audience(&emulator), "jwt", bearer))
        .await
        .unwrap();
    let statuses: Vec<(String, u16)> = emulator
        .cbs_requests()
        .into_iter()
        .map(|r| (r.token_type, r.status))
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("jwt".to_owned(), 401),
            ("jwt".to_owned(), 401),
            ("jwt".to_owned(), 202)
        ]
    );
    emulator.publish(TOPIC, b"{}", BTreeMap::new());
    let receiver = within(client.receiver(1)).await.unwrap();
    let delivery = within(receiver.receive_delivery()).await.unwrap();
    assert_eq!(body(&delivery), b"{}");
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_released_message_comes_back_with_the_same_delivery_count() {
    let emulator = emulator().await;
    emulator.publish_message(TOPIC, b"{\"n\":1}", BTreeMap::new(), Some("m-1".to_owned()));
    let client = within(Client::connect(&emulator)).await;
    within(client.authorise(&emulator)).await;
    let receiver = within(client.receiver(1)).await.unwrap();

    let first = within(receiver.receive_delivery()).await.unwrap();
    assert_eq!(delivery_count(&first), 0);
    let first_token = lock_token(&first);
    within(receiver.release_delivery(&first)).await.unwrap();

    // Released does not count the delivery (Azure/amqpnetlite#342).
    let second = within(receiver.receive_delivery()).await.unwrap();
    assert_eq!(delivery_count(&second), 0);
    assert_eq!(body(&second), b"{\"n\":1}");
    assert_eq!(
        second.message().properties.as_ref().unwrap().message_id,
        Some(AmqpMessageId::String("m-1".to_owned()))
    );
    let second_token = lock_token(&second);
    assert_ne!(first_token, second_token);
    within(receiver.accept_delivery(&second)).await.unwrap();
    eventually(|| emulator.settlements(TOPIC, SUB).len() == 2).await;
    assert_eq!(
        emulator.settlements(TOPIC, SUB),
        vec![
            settled(&first_token, "released", true),
            settled(&second_token, "accepted", true)
        ]
    );
    assert_eq!(emulator.pending(TOPIC, SUB), Some(0));
    assert_eq!(emulator.locked(TOPIC, SUB), 0);
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_rejected_message_is_dead_lettered_without_a_reason() {
    let emulator = emulator().await;
    emulator.publish(TOPIC, b"not json", BTreeMap::new());
    let client = within(Client::connect(&emulator)).await;
    within(client.authorise(&emulator)).await;
    let receiver = within(client.receiver(1)).await.unwrap();
    let delivery = within(receiver.receive_delivery()).await.unwrap();
    let token = lock_token(&delivery);
    within(receiver.reject_delivery(&delivery)).await.unwrap();
    eventually(|| emulator.dead_letters(TOPIC, SUB).len() == 1).await;
    let dead = &emulator.dead_letters(TOPIC, SUB)[0];
    assert_eq!(dead.message.body, b"not json");
    assert_eq!(dead.message.delivery_count, 1);
    assert_eq!(dead.reason, "");
    assert_eq!(dead.description, "");
    assert_eq!(
        emulator.settlements(TOPIC, SUB),
        vec![settled(&token, "rejected", true)]
    );
    assert_eq!(emulator.pending(TOPIC, SUB), Some(0));
    assert_eq!(emulator.locked(TOPIC, SUB), 0);
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn releasing_more_than_max_delivery_count_times_never_dead_letters() {
    let emulator = emulator_with(SubscriptionSettings {
        max_delivery_count: 3,
        ..SubscriptionSettings::default()
    })
    .await;
    emulator.publish(TOPIC, b"poison", BTreeMap::new());
    let client = within(Client::connect(&emulator)).await;
    within(client.authorise(&emulator)).await;
    let receiver = within(client.receiver(1)).await.unwrap();
    for _ in 0..5 {
        let delivery = within(receiver.receive_delivery()).await.unwrap();
        assert_eq!(delivery_count(&delivery), 0);
        within(receiver.release_delivery(&delivery)).await.unwrap();
    }
    let delivery = within(receiver.receive_delivery()).await.unwrap();
    assert_eq!(delivery_count(&delivery), 0);
    within(receiver.accept_delivery(&delivery)).await.unwrap();
    eventually(|| emulator.settlements(TOPIC, SUB).len() == 6).await;
    assert!(emulator.dead_letters(TOPIC, SUB).is_empty());
    assert_eq!(emulator.pending(TOPIC, SUB), Some(0));
    let outcomes: Vec<_> = emulator
        .settlements(TOPIC, SUB)
        .into_iter()
        .map(|s| (s.outcome, s.applied))
        .collect();
    let mut expected = vec![("released", true); 5];
    expected.push(("accepted", true));
    assert_eq!(outcomes, expected);
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_settlement_after_the_lock_expired_is_lost_and_the_message_comes_back() {
    let emulator = emulator().await;
    emulator.publish(TOPIC, b"slow", BTreeMap::new());
    let client = within(Client::connect(&emulator)).await;
    within(client.authorise(&emulator)).await;
    let receiver = within(client.receiver(1)).await.unwrap();
    let first = within(receiver.receive_delivery()).await.unwrap();
    let first_token = lock_token(&first);

    emulator.expire_locks(TOPIC, SUB);
    // Back in the queue, or already taken again by the link, which waits for credit.
    assert_eq!(
        emulator.pending(TOPIC, SUB).unwrap() + emulator.locked(TOPIC, SUB),
        1
    );
    within(receiver.accept_delivery(&first)).await.unwrap();

    let again = within(receiver.receive_delivery()).await.unwrap();
    assert_eq!(delivery_count(&again), 1);
    assert_eq!(body(&again), b"slow");
    let again_token = lock_token(&again);
    within(receiver.accept_delivery(&again)).await.unwrap();
    eventually(|| emulator.settlements(TOPIC, SUB).len() == 2).await;
    assert_eq!(
        emulator.settlements(TOPIC, SUB),
        vec![
            settled(&first_token, "accepted", false),
            settled(&again_token, "accepted", true)
        ]
    );
    assert_eq!(emulator.pending(TOPIC, SUB), Some(0));
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_short_lock_runs_out_by_itself_and_the_message_is_redelivered() {
    let emulator = emulator_with(SubscriptionSettings {
        lock_duration: StdDuration::from_millis(300),
        ..SubscriptionSettings::default()
    })
    .await;
    emulator.publish(TOPIC, b"m", BTreeMap::new());
    let client = within(Client::connect(&emulator)).await;
    within(client.authorise(&emulator)).await;
    // Two credits: the redelivery needs no settlement of the first delivery.
    let receiver = within(client.receiver(2)).await.unwrap();
    let first = within(receiver.receive_delivery()).await.unwrap();
    let again = within(receiver.receive_delivery()).await.unwrap();
    assert_eq!(delivery_count(&first), 0);
    assert_eq!(delivery_count(&again), 1);
    assert_ne!(lock_token(&first), lock_token(&again));
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_link_without_authorisation_is_refused_and_an_unknown_subscription_is_not_found() {
    let emulator = emulator().await;
    emulator.publish(TOPIC, b"secret", BTreeMap::new());
    let client = within(Client::connect(&emulator)).await;
    let refused = match within(client.receiver(1)).await {
        Err(error) => error,
        Ok(receiver) => within(receiver.receive_delivery()).await.unwrap_err(),
    };
    assert_eq!(link_error_condition(&refused), "amqp:unauthorized-access");
    assert_eq!(emulator.pending(TOPIC, SUB), Some(1));

    // Authorised for the whole topic, but the subscription does not exist.
    let resource = format!("sb://127.0.0.1:{}/{TOPIC}", emulator.amqp_port());
    let token = sas_token(&resource, POLICY_NAME, &emulator.policy_key(), in_an_hour());
    let topic_audience = format!("sb://127.0.0.1:{}/{TOPIC}", emulator.amqp_port());
    within(client.put_token(topic_audience, SAS_TYPE, token))
        .await
        .unwrap();
    let missing = match within(client.receiver_on(&format!("{TOPIC}/subscriptions/nope"), 1)).await
    {
        Err(error) => error,
        Ok(receiver) => within(receiver.receive_delivery()).await.unwrap_err(),
    };
    assert_eq!(link_error_condition(&missing), "amqp:not-found");
    // The same connection's grant covers the real subscription, whatever the case.
    let receiver =
        within(client.receiver_on(&format!("{}/Subscriptions/{SUB}", TOPIC.to_uppercase()), 1))
            .await
            .unwrap();
    let delivery = within(receiver.receive_delivery()).await.unwrap();
    assert_eq!(body(&delivery), b"secret");
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_message_published_while_the_receiver_waits_arrives() {
    let emulator = emulator().await;
    let client = within(Client::connect(&emulator)).await;
    within(client.authorise(&emulator)).await;
    let receiver = within(client.receiver(1)).await.unwrap();
    let waiting = tokio::spawn(async move {
        let delivery = receiver.receive_delivery().await.unwrap();
        (body(&delivery), receiver)
    });
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    emulator.publish(TOPIC, b"late", BTreeMap::new());
    let (late, _receiver) = within(waiting).await.unwrap();
    assert_eq!(late, b"late");
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn dropped_connections_fail_the_receive_and_leave_the_lock_to_expire() {
    let emulator = emulator().await;
    emulator.publish(TOPIC, b"in flight", BTreeMap::new());
    let client = within(Client::connect(&emulator)).await;
    within(client.authorise(&emulator)).await;
    let receiver = within(client.receiver(1)).await.unwrap();
    let delivery = within(receiver.receive_delivery()).await.unwrap();
    assert_eq!(body(&delivery), b"in flight");
    emulator.drop_connections();
    let error = within(receiver.receive_delivery()).await.unwrap_err();
    // What azure_core_amqp 1.1.0 reports when the socket goes: the session is gone.
    assert!(
        matches!(error.kind(), AmqpErrorKind::LinkStateError(_)),
        "{}",
        kind_name(&error)
    );
    assert!(error.to_string().contains("IllegalSessionState"), "{error}");
    assert_eq!(emulator.locked(TOPIC, SUB), 1);
    assert!(emulator.settlements(TOPIC, SUB).is_empty());

    // A new connection works, and the message comes back once its lock is gone.
    emulator.expire_locks(TOPIC, SUB);
    let client = within(Client::connect(&emulator)).await;
    within(client.authorise(&emulator)).await;
    let receiver = within(client.receiver(1)).await.unwrap();
    let again = within(receiver.receive_delivery()).await.unwrap();
    assert_eq!(delivery_count(&again), 1);
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn links_can_be_detached_with_an_error() {
    let emulator = emulator().await;
    let client = within(Client::connect(&emulator)).await;
    within(client.authorise(&emulator)).await;
    let receiver = within(client.receiver(1)).await.unwrap();
    let waiting = tokio::spawn(async move { receiver.receive_delivery().await });
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    emulator.detach_links_with_error("com.microsoft:server-busy");
    let error = within(waiting).await.unwrap().unwrap_err();
    assert_eq!(link_error_condition(&error), "com.microsoft:server-busy");
    // The connection and its authorisation survive: a new link works.
    emulator.publish(TOPIC, b"after", BTreeMap::new());
    let receiver = within(client.receiver(1)).await.unwrap();
    let delivery = within(receiver.receive_delivery()).await.unwrap();
    assert_eq!(body(&delivery), b"after");
    client.close().await;
}
