//! The emulator's behaviours for the official SDKs, driven with `fe2o3-amqp` as a client, with
//! the frames the emulator sends captured by a loopback proxy where the exact wire matters.
//!
//! Current-thread runtimes, because `fe2o3-amqp` 0.14 can lose an outcome on a multi-threaded
//! one (see `azure_core_amqp.rs`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::link::{DetachError, LinkStateError, RecvError};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{self, ErrorCondition, ReceiverSettleMode, Role};
use fe2o3_amqp::types::messaging::{
    Accepted, AmqpValue, ApplicationProperties, Body, DeliveryState, Message, Modified, Outcome,
    Properties, Rejected,
};
use fe2o3_amqp::types::performatives::{Disposition, Transfer};
use fe2o3_amqp::types::primitives::{Array, Binary, OrderedMap, SimpleValue, Symbol, Value};
use fe2o3_amqp::{Connection, Delivery, Receiver, Sender, Session};
use hmac::{Hmac, Mac};
use keyvault_invalidator_servicebus_emulator::{
    RecordedLockRenewal, RecordedSettlement, ServiceBusEmulator, SubscriptionSettings, POLICY_NAME,
};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOPIC: &str = "keyvault-events";
const SUB: &str = "instance-1";
const ENTITY: &str = "keyvault-events/subscriptions/instance-1";
const DLQ: &str = "keyvault-events/subscriptions/instance-1/$deadletterqueue";
const SAS_TYPE: &str = "servicebus.windows.net:sastoken";
const TIMEOUT: Duration = Duration::from_secs(30);

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .expect("timed out after 30 s")
}

async fn eventually(mut check: impl FnMut() -> bool) {
    within(async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A shared access signature, signed independently of the emulator's verifier.
fn sas_token(resource: &str, key: &str, expiry: u64) -> String {
    let encode = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let sr = encode(&resource.to_ascii_lowercase());
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{sr}\n{expiry}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry}&skn={POLICY_NAME}",
        encode(&sig)
    )
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

fn max_deliveries(n: u32) -> SubscriptionSettings {
    SubscriptionSettings {
        max_delivery_count: n,
        ..SubscriptionSettings::default()
    }
}

/// A frame the emulator sent: its channel and performative body.
#[derive(Clone)]
struct Frame {
    code: u8,
    body: Vec<u8>,
}

type Captured = Arc<Mutex<Vec<Frame>>>;

/// A loopback proxy in front of the emulator's AMQP port that records the emulator's frames.
async fn proxy(port: u16) -> (u16, Captured) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap().port();
    let captured: Captured = Arc::default();
    let record = captured.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            let record = record.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buffer = vec![0u8; 16 * 1024];
                loop {
                    let Ok(read) = server_read.read(&mut buffer).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buffer[..read]);
                    loop {
                        if pending.len() >= 8 && &pending[..4] == b"AMQP" {
                            pending.drain(..8);
                            continue;
                        }
                        if pending.len() < 4 {
                            break;
                        }
                        let size = u32::from_be_bytes(pending[..4].try_into().unwrap()) as usize;
                        if pending.len() < size {
                            break;
                        }
                        let frame: Vec<u8> = pending.drain(..size).collect();
                        let offset = usize::from(frame[4]) * 4;
                        if frame[5] == 0 && frame.len() > offset + 3 && frame[offset] == 0 {
                            record.lock().unwrap().push(Frame {
                                code: frame[offset + 2],
                                body: frame[offset..].to_vec(),
                            });
                        }
                    }
                    if client_write.write_all(&buffer[..read]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (local, captured)
}

/// The settled dispositions the emulator sent as a sender.
fn sender_dispositions(captured: &Captured) -> Vec<Disposition> {
    captured
        .lock()
        .unwrap()
        .iter()
        .filter(|f| f.code == 0x15)
        .filter_map(|f| serde_amqp::from_slice::<Disposition>(&f.body).ok())
        .filter(|d| d.role == Role::Sender)
        .collect()
}

/// The transfers the emulator sent: the performative and the payload.
fn transfers(captured: &Captured) -> Vec<(Transfer, Vec<u8>)> {
    captured
        .lock()
        .unwrap()
        .iter()
        .filter(|f| f.code == 0x14)
        .filter_map(|f| {
            let transfer: Transfer = serde_amqp::from_slice(&f.body).ok()?;
            let len = serde_amqp::to_vec(&transfer).ok()?.len();
            Some((transfer, f.body[len..].to_vec()))
        })
        .collect()
}

struct Client {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    emulator_port: u16,
    links: u32,
}

impl Client {
    async fn connect(emulator: &ServiceBusEmulator) -> Client {
        Client::connect_to(emulator, emulator.amqp_port()).await
    }

    async fn connect_to(emulator: &ServiceBusEmulator, port: u16) -> Client {
        let mut connection = within(
            Connection::builder()
                .container_id("fe2o3-test")
                .sasl_profile(SaslProfile::Anonymous)
                .open(format!("amqp://127.0.0.1:{port}").as_str()),
        )
        .await
        .unwrap();
        let session = within(Session::begin(&mut connection)).await.unwrap();
        Client {
            connection,
            session,
            emulator_port: emulator.amqp_port(),
            links: 0,
        }
    }

    fn name(&mut self, prefix: &str) -> String {
        self.links += 1;
        format!("{prefix}-{}", self.links)
    }

    /// One request and its response on a node; the response's application properties and body.
    async fn request(
        &mut self,
        node: &str,
        operation: &str,
        extra: &[(&str, SimpleValue)],
        body: Value,
    ) -> (OrderedMap<String, SimpleValue>, Value) {
        let reply_name = self.name("reply");
        let mut replies = within(
            Receiver::builder()
                .name(reply_name.clone())
                .source(node)
                .target(reply_name.as_str())
                .attach(&mut self.session),
        )
        .await
        .unwrap();
        let request_name = self.name("request");
        let mut requests = within(Sender::attach(&mut self.session, request_name, node))
            .await
            .unwrap();
        let mut properties = ApplicationProperties::builder().insert("operation", operation);
        for (key, value) in extra {
            properties = properties.insert(*key, value.clone());
        }
        let request = Message::builder()
            .properties(Properties {
                message_id: Some(format!("request-{}", self.links).into()),
                reply_to: Some(reply_name),
                ..Default::default()
            })
            .application_properties(properties.build())
            .value(body)
            .build();
        let outcome = within(requests.send(request)).await.unwrap();
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
        let response: Delivery<Body<Value>> = within(replies.recv()).await.unwrap();
        within(replies.accept(&response)).await.unwrap();
        let correlation = response
            .message()
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.clone());
        assert_eq!(
            correlation,
            Some(format!("request-{}", self.links).into()),
            "correlation-id is the request's message-id"
        );
        let message = response.into_message();
        let properties = message.application_properties.unwrap_or_default().0;
        let body = match message.body {
            Body::Value(AmqpValue(value)) => value,
            other => panic!("not an amqp-value body: {other:?}"),
        };
        let _ = requests.close().await;
        let _ = replies.close().await;
        (properties, body)
    }

    async fn put_token(&mut self, audience: &str, token_type: &str, token: String) -> i32 {
        let (properties, _) = self
            .request(
                "$cbs",
                "put-token",
                &[
                    ("type", SimpleValue::String(token_type.to_owned())),
                    ("name", SimpleValue::String(audience.to_owned())),
                ],
                Value::String(token),
            )
            .await;
        match properties.get("status-code") {
            Some(SimpleValue::Int(code)) => *code,
            other => panic!("no status-code: {other:?}"),
        }
    }

    /// Authorises the namespace root with a SAS token, under `token_type`.
    async fn authorise_as(&mut self, token_type: &str, expiry: u64, key: &str) -> i32 {
        let resource = format!("sb://127.0.0.1:{}/", self.emulator_port);
        let audience = format!("sb://127.0.0.1:{}/{TOPIC}", self.emulator_port);
        self.put_token(&audience, token_type, sas_token(&resource, key, expiry))
            .await
    }

    async fn authorise(&mut self, emulator: &ServiceBusEmulator) {
        let status = self
            .authorise_as(SAS_TYPE, unix_now() + 3600, &emulator.policy_key())
            .await;
        assert_eq!(status, 202);
    }

    async fn receiver(&mut self, address: &str, mode: ReceiverSettleMode) -> Receiver {
        let name = self.name("receiver");
        within(
            Receiver::builder()
                .name(name)
                .source(address)
                .receiver_settle_mode(mode)
                .credit_mode(CreditMode::Auto(1))
                .auto_accept(false)
                .attach(&mut self.session),
        )
        .await
        .unwrap()
    }

    async fn close(mut self) {
        let _ = self.session.end().await;
        let _ = self.connection.close().await;
    }
}

type Received = Delivery<Body<Value>>;

async fn recv(receiver: &mut Receiver) -> Received {
    within(receiver.recv::<Body<Value>>()).await.unwrap()
}

fn body(delivery: &Received) -> Vec<u8> {
    match delivery.body() {
        Body::Data(sections) => sections.iter().flat_map(|d| d.0.to_vec()).collect(),
        other => panic!("not a data body: {other:?}"),
    }
}

fn delivery_count(delivery: &Received) -> u32 {
    delivery.message().header.as_ref().unwrap().delivery_count
}

fn annotation(delivery: &Received, key: &str) -> Value {
    delivery
        .message()
        .message_annotations
        .as_ref()
        .unwrap()
        .0
        .iter()
        .find_map(|(k, v)| (format!("{k:?}").contains(key)).then(|| v.clone()))
        .unwrap_or_else(|| panic!("no {key}"))
}

fn lock_token(delivery: &Received) -> uuid::Uuid {
    match annotation(delivery, "x-opt-lock-token") {
        Value::Uuid(u) => uuid::Uuid::from_bytes(u.into_inner()),
        other => panic!("not a uuid: {other:?}"),
    }
}

fn locked_until(delivery: &Received) -> i64 {
    match annotation(delivery, "x-opt-locked-until") {
        Value::Timestamp(t) => t.milliseconds(),
        other => panic!("not a timestamp: {other:?}"),
    }
}

fn string_property(delivery: &Received, key: &str) -> Option<String> {
    match delivery
        .message()
        .application_properties
        .as_ref()?
        .0
        .get(key)?
    {
        SimpleValue::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn settled(token: uuid::Uuid, outcome: &'static str, applied: bool) -> RecordedSettlement {
    RecordedSettlement {
        lock_token: token.to_string(),
        outcome,
        applied,
    }
}

fn dead_letter_error(reason: &str, description: &str) -> definitions::Error {
    let mut info = OrderedMap::new();
    info.insert(
        Symbol::from("DeadLetterReason"),
        Value::String(reason.to_owned()),
    );
    info.insert(
        Symbol::from("DeadLetterErrorDescription"),
        Value::String(description.to_owned()),
    );
    definitions::Error::new(
        ErrorCondition::Custom(Symbol::from("com.microsoft:dead-letter")),
        Some(description.to_owned()),
        Some(info),
    )
}

fn condition_of(error: &definitions::Error) -> String {
    let encoded = serde_amqp::to_vec(&error.condition).unwrap();
    serde_amqp::from_slice::<Symbol>(&encoded).unwrap().0
}

fn link_error_condition(error: &RecvError) -> String {
    match error {
        RecvError::LinkStateError(
            LinkStateError::RemoteClosedWithError(e) | LinkStateError::RemoteDetachedWithError(e),
        ) => condition_of(e),
        other => panic!("unexpected receive error: {other:?}"),
    }
}

fn status(properties: &OrderedMap<String, SimpleValue>) -> i32 {
    match properties.get("statusCode") {
        Some(SimpleValue::Int(code)) => *code,
        other => panic!("no statusCode: {other:?}"),
    }
}

fn symbol_property(properties: &OrderedMap<String, SimpleValue>, key: &str) -> Option<String> {
    match properties.get(key)? {
        SimpleValue::Symbol(s) => Some(s.0.clone()),
        SimpleValue::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn map_field<'a>(value: &'a Value, key: &str) -> &'a Value {
    match value {
        Value::Map(map) => map
            .get(&Value::String(key.to_owned()))
            .unwrap_or_else(|| panic!("no {key} in {value:?}")),
        other => panic!("not a map: {other:?}"),
    }
}

fn lock_tokens_body(tokens: &[uuid::Uuid]) -> Value {
    let mut map = OrderedMap::new();
    map.insert(
        Value::String("lock-tokens".to_owned()),
        Value::Array(Array(
            tokens
                .iter()
                .map(|t| Value::Uuid((*t.as_bytes()).into()))
                .collect(),
        )),
    );
    Value::Map(map)
}

#[tokio::test(flavor = "current_thread")]
async fn a_sas_token_under_type_jwt_is_verified_like_one_under_the_sas_type() {
    let emulator = emulator().await;
    let mut client = Client::connect(&emulator).await;
    let key = emulator.policy_key();
    assert_eq!(
        client.authorise_as("jwt", unix_now() + 3600, &key).await,
        202
    );
    assert_eq!(
        client
            .authorise_as("jwt", unix_now() + 3600, "not-the-key")
            .await,
        401
    );
    assert_eq!(client.authorise_as("jwt", unix_now() - 10, &key).await, 401);
    // A real jwt is still compared with the bearer token.
    let audience = format!("sb://127.0.0.1:{}/{TOPIC}", emulator.amqp_port());
    let bearer = emulator.bearer_token().to_owned();
    assert_eq!(client.put_token(&audience, "jwt", bearer).await, 202);
    assert_eq!(
        client
            .put_token(&audience, "jwt", "eyJhbGciOi.not.ours".to_owned())
            .await,
        401
    );
    let statuses: Vec<(String, u16)> = emulator
        .cbs_requests()
        .into_iter()
        .map(|r| (r.token_type, r.status))
        .collect();
    let jwt = |status| ("jwt".to_owned(), status);
    assert_eq!(
        statuses,
        vec![jwt(202), jwt(401), jwt(401), jwt(202), jwt(401)]
    );
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn the_tag_is_the_lock_token_and_the_header_carries_every_field() {
    let emulator = emulator().await;
    emulator.publish(TOPIC, b"first", BTreeMap::new());
    let (port, captured) = proxy(emulator.amqp_port()).await;
    let mut client = Client::connect_to(&emulator, port).await;
    client.authorise(&emulator).await;
    let mut receiver = client.receiver(ENTITY, ReceiverSettleMode::First).await;
    let delivery = recv(&mut receiver).await;
    assert_eq!(delivery_count(&delivery), 0);
    let token = lock_token(&delivery);
    // The tag is the lock token in .NET GUID order.
    assert_eq!(
        delivery.delivery_tag().to_vec(),
        token.to_bytes_le().to_vec()
    );
    let (transfer, payload) = transfers(&captured)
        .into_iter()
        .find(|(t, _)| t.delivery_tag.as_ref().is_some_and(|tag| tag.len() == 16))
        .unwrap();
    assert_eq!(
        transfer.delivery_tag.unwrap().to_vec(),
        token.to_bytes_le().to_vec()
    );
    // header: durable true, priority 4, ttl null, first-acquirer false, delivery-count uint 0.
    assert_eq!(
        &payload[..17],
        &[
            0x00, 0x53, 0x70, 0xc0, 0x0b, 0x05, 0x41, 0x50, 0x04, 0x40, 0x42, 0x70, 0, 0, 0, 0,
            0x00
        ][..17]
    );
    within(receiver.accept(&delivery)).await.unwrap();
    eventually(|| emulator.settlements(TOPIC, SUB).len() == 1).await;
    assert_eq!(
        emulator.settlements(TOPIC, SUB),
        vec![settled(token, "accepted", true)]
    );
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn in_mode_second_the_emulator_settles_each_outcome_once_with_what_it_applied() {
    let emulator = emulator().await;
    for body in [&b"a"[..], b"b", b"c"] {
        emulator.publish(TOPIC, body, BTreeMap::new());
    }
    let (port, captured) = proxy(emulator.amqp_port()).await;
    let mut client = Client::connect_to(&emulator, port).await;
    client.authorise(&emulator).await;
    let mut receiver = client.receiver(ENTITY, ReceiverSettleMode::Second).await;

    let a = recv(&mut receiver).await;
    assert_eq!(body(&a), b"a");
    within(receiver.accept(&a)).await.unwrap();
    let b = recv(&mut receiver).await;
    assert_eq!(body(&b), b"b");
    within(receiver.modify(
        &b,
        Modified {
            delivery_failed: Some(true),
            undeliverable_here: Some(false),
            message_annotations: None,
        },
    ))
    .await
    .unwrap();
    let c = recv(&mut receiver).await;
    assert_eq!(body(&c), b"c");
    within(receiver.reject(&c, dead_letter_error("Bad", "very bad")))
        .await
        .unwrap();

    eventually(|| sender_dispositions(&captured).len() >= 3).await;
    // The abandoned message comes back, counted, after the three settlements.
    let again = recv(&mut receiver).await;
    assert_eq!((body(&again), delivery_count(&again)), (b"b".to_vec(), 1));
    within(receiver.accept(&again)).await.unwrap();
    eventually(|| sender_dispositions(&captured).len() >= 4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let states: Vec<(u32, bool, String)> = sender_dispositions(&captured)
        .into_iter()
        .map(|d| (d.first, d.settled, format!("{:?}", d.state)))
        .collect();
    let state = |s: DeliveryState| format!("{:?}", Some(s));
    assert_eq!(
        states,
        vec![
            (
                *a.delivery_id(),
                true,
                state(DeliveryState::Accepted(Accepted {}))
            ),
            (
                *b.delivery_id(),
                true,
                state(DeliveryState::Modified(Modified {
                    delivery_failed: Some(true),
                    undeliverable_here: Some(false),
                    message_annotations: None,
                }))
            ),
            // A dead-letter is confirmed by a Rejected without an error.
            (
                *c.delivery_id(),
                true,
                state(DeliveryState::Rejected(Rejected { error: None }))
            ),
            (
                *again.delivery_id(),
                true,
                state(DeliveryState::Accepted(Accepted {}))
            ),
        ],
        "exactly one settled disposition per outcome, none echoed by fe2o3"
    );
    let dead = emulator.dead_letters(TOPIC, SUB);
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].reason.as_str(), dead[0].description.as_str()),
        ("Bad", "very bad")
    );
    let outcomes: Vec<_> = emulator
        .settlements(TOPIC, SUB)
        .into_iter()
        .map(|s| (s.outcome, s.applied))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("accepted", true),
            ("modified", true),
            ("rejected", true),
            ("accepted", true)
        ]
    );
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_settlement_on_a_lost_lock_is_rejected_with_message_lock_lost() {
    let emulator = emulator().await;
    emulator.publish(TOPIC, b"slow", BTreeMap::new());
    let (port, captured) = proxy(emulator.amqp_port()).await;
    let mut client = Client::connect_to(&emulator, port).await;
    client.authorise(&emulator).await;
    let mut receiver = client.receiver(ENTITY, ReceiverSettleMode::Second).await;
    let delivery = recv(&mut receiver).await;
    let token = lock_token(&delivery);
    emulator.expire_locks(TOPIC, SUB);
    within(receiver.accept(&delivery)).await.unwrap();
    eventually(|| !sender_dispositions(&captured).is_empty()).await;
    let disposition = sender_dispositions(&captured).remove(0);
    assert_eq!(disposition.first, *delivery.delivery_id());
    assert!(disposition.settled);
    let Some(DeliveryState::Rejected(rejected)) = disposition.state else {
        panic!("not a rejection: {:?}", disposition.state);
    };
    let error = rejected.error.unwrap();
    assert_eq!(condition_of(&error), "com.microsoft:message-lock-lost");
    assert_eq!(
        emulator.settlements(TOPIC, SUB),
        vec![settled(token, "accepted", false)]
    );
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn modified_counts_released_does_not_and_the_maximum_dead_letters() {
    let emulator = emulator_with(max_deliveries(3)).await;
    emulator.publish(TOPIC, b"poison", BTreeMap::new());
    let mut client = Client::connect(&emulator).await;
    client.authorise(&emulator).await;
    let mut receiver = client.receiver(ENTITY, ReceiverSettleMode::First).await;
    let mut counts = Vec::new();
    // Released: not counted.
    let d = recv(&mut receiver).await;
    counts.push(delivery_count(&d));
    within(receiver.release(&d)).await.unwrap();
    // Modified with delivery-failed false: counted.
    let d = recv(&mut receiver).await;
    counts.push(delivery_count(&d));
    within(receiver.modify(
        &d,
        Modified {
            delivery_failed: Some(false),
            undeliverable_here: Some(false),
            message_annotations: None,
        },
    ))
    .await
    .unwrap();
    // Modified with undeliverable-here true: counted as well (no deferral).
    let d = recv(&mut receiver).await;
    counts.push(delivery_count(&d));
    within(receiver.modify(
        &d,
        Modified {
            delivery_failed: Some(true),
            undeliverable_here: Some(true),
            message_annotations: None,
        },
    ))
    .await
    .unwrap();
    // Modified with delivery-failed true: the third counted delivery, the last.
    let d = recv(&mut receiver).await;
    counts.push(delivery_count(&d));
    within(receiver.modify(
        &d,
        Modified {
            delivery_failed: Some(true),
            undeliverable_here: Some(false),
            message_annotations: None,
        },
    ))
    .await
    .unwrap();
    assert_eq!(counts, vec![0, 0, 1, 2]);
    eventually(|| emulator.dead_letters(TOPIC, SUB).len() == 1).await;
    let dead = emulator.dead_letters(TOPIC, SUB).remove(0);
    assert_eq!(dead.reason, "MaxDeliveryCountExceeded");
    assert_eq!(
        dead.description,
        "Message could not be consumed after 3 delivery attempts."
    );
    assert_eq!(dead.message.delivery_count, 3);
    assert_eq!(dead.message.body, b"poison");
    assert_eq!(emulator.pending(TOPIC, SUB), Some(0));
    let outcomes: Vec<_> = emulator
        .settlements(TOPIC, SUB)
        .into_iter()
        .map(|s| (s.outcome, s.applied))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("released", true),
            ("modified", true),
            ("modified", true),
            ("modified", true)
        ]
    );
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn the_dead_letter_sub_queue_is_readable_and_completable() {
    let emulator = emulator().await;
    emulator.publish_message(TOPIC, b"bad", BTreeMap::new(), Some("m-9".to_owned()));
    let mut client = Client::connect(&emulator).await;
    client.authorise(&emulator).await;
    let mut receiver = client.receiver(ENTITY, ReceiverSettleMode::First).await;
    let d = recv(&mut receiver).await;
    within(receiver.reject(&d, dead_letter_error("MalformedPayload", "event 0: ...")))
        .await
        .unwrap();
    eventually(|| emulator.dead_letters(TOPIC, SUB).len() == 1).await;

    let mut dead_letters = client.receiver(DLQ, ReceiverSettleMode::First).await;
    let dead = recv(&mut dead_letters).await;
    assert_eq!(body(&dead), b"bad");
    assert_eq!(
        string_property(&dead, "DeadLetterReason").as_deref(),
        Some("MalformedPayload")
    );
    assert_eq!(
        string_property(&dead, "DeadLetterErrorDescription").as_deref(),
        Some("event 0: ...")
    );
    assert_eq!(
        dead.message().properties.as_ref().unwrap().message_id,
        Some("m-9".to_owned().into())
    );
    let token = lock_token(&dead);
    within(dead_letters.accept(&dead)).await.unwrap();
    eventually(|| emulator.dead_letters(TOPIC, SUB).is_empty()).await;
    assert_eq!(
        emulator.dead_letter_settlements(TOPIC, SUB),
        vec![settled(token, "accepted", true)]
    );
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn sender_links_publish_to_the_topic_when_authorised() {
    let emulator = emulator().await;
    let mut client = Client::connect(&emulator).await;
    // Not authorised yet.
    let mut refused = within(Sender::attach(&mut client.session, "s-0", TOPIC))
        .await
        .unwrap();
    // Refused right after the attach (fe2o3's client can miss that when it sends at once: it
    // waits for the outcome of a transfer the emulator never took).
    let error = within(refused.on_detach()).await;
    let (DetachError::RemoteClosedWithError(e) | DetachError::RemoteDetachedWithError(e)) = &error
    else {
        panic!("unexpected: {error:?}");
    };
    assert_eq!(condition_of(e), "amqp:unauthorized-access");
    client.authorise(&emulator).await;

    let mut missing = within(Sender::attach(&mut client.session, "s-1", "no-such-topic"))
        .await
        .unwrap();
    // Refused right after the attach (fe2o3's client can miss that when it sends at once: it
    // waits for the outcome of a transfer the emulator never took).
    let error = within(missing.on_detach()).await;
    let (DetachError::RemoteClosedWithError(e) | DetachError::RemoteDetachedWithError(e)) = &error
    else {
        panic!("unexpected: {error:?}");
    };
    // The grant is for the topic only: another topic is not covered, so this is a refusal.
    assert_eq!(condition_of(e), "amqp:unauthorized-access");

    let url = format!("amqp://127.0.0.1:{}/{TOPIC}", emulator.amqp_port());
    let mut sender = within(Sender::attach(&mut client.session, "s-2", url.as_str()))
        .await
        .unwrap();
    let data = Message::builder()
        .properties(Properties {
            message_id: Some("id-1".to_owned().into()),
            ..Default::default()
        })
        .application_properties(
            ApplicationProperties::builder()
                .insert("kind", "test")
                .insert("number", 7i32)
                .build(),
        )
        .data(Binary::from(b"{\"n\":1}".to_vec()))
        .build();
    let outcome = within(sender.send(data)).await.unwrap();
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    let outcome = within(sender.send(Message::builder().value("text").build()))
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");

    let mut receiver = client.receiver(ENTITY, ReceiverSettleMode::First).await;
    let first = recv(&mut receiver).await;
    assert_eq!(body(&first), b"{\"n\":1}");
    assert_eq!(string_property(&first, "kind").as_deref(), Some("test"));
    assert_eq!(
        string_property(&first, "number"),
        None,
        "only strings are kept"
    );
    assert_eq!(
        first.message().properties.as_ref().unwrap().message_id,
        Some("id-1".to_owned().into())
    );
    assert_eq!(annotation(&first, "x-opt-sequence-number"), Value::Long(1));
    within(receiver.accept(&first)).await.unwrap();
    let second = recv(&mut receiver).await;
    assert_eq!(body(&second), b"text");
    assert_eq!(annotation(&second, "x-opt-sequence-number"), Value::Long(2));
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_unknown_topic_is_not_found() {
    let emulator = emulator().await;
    let mut client = Client::connect(&emulator).await;
    let audience = format!("sb://127.0.0.1:{}/", emulator.amqp_port());
    let token = sas_token(&audience, &emulator.policy_key(), unix_now() + 3600);
    assert_eq!(client.put_token(&audience, SAS_TYPE, token).await, 202);
    let mut missing = within(Sender::attach(&mut client.session, "s-1", "no-such-topic"))
        .await
        .unwrap();
    // Refused right after the attach (fe2o3's client can miss that when it sends at once: it
    // waits for the outcome of a transfer the emulator never took).
    let error = within(missing.on_detach()).await;
    let (DetachError::RemoteClosedWithError(e) | DetachError::RemoteDetachedWithError(e)) = &error
    else {
        panic!("unexpected: {error:?}");
    };
    assert_eq!(condition_of(e), "amqp:not-found");
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn renew_lock_on_management_extends_the_lock_and_answers_410_for_a_lost_one() {
    let emulator = emulator().await;
    emulator.publish(TOPIC, b"m", BTreeMap::new());
    let mut client = Client::connect(&emulator).await;
    client.authorise(&emulator).await;
    let mut receiver = client.receiver(ENTITY, ReceiverSettleMode::First).await;
    let delivery = recv(&mut receiver).await;
    let token = lock_token(&delivery);
    let first_expiry = locked_until(&delivery);
    tokio::time::sleep(Duration::from_millis(50)).await;

    let node = format!("{ENTITY}/$management");
    let (properties, body) = client
        .request(
            &node,
            "com.microsoft:renew-lock",
            &[(
                "associated-link-name",
                SimpleValue::String("receiver-1".to_owned()),
            )],
            lock_tokens_body(&[token]),
        )
        .await;
    assert_eq!(status(&properties), 200);
    let Value::Array(Array(expirations)) = map_field(&body, "expirations") else {
        panic!("expirations is not an array: {body:?}");
    };
    assert_eq!(expirations.len(), 1);
    let Value::Timestamp(renewed) = &expirations[0] else {
        panic!("not a timestamp: {:?}", expirations[0]);
    };
    assert!(renewed.milliseconds() > first_expiry);
    let renewals = emulator.lock_renewals(TOPIC, SUB);
    assert_eq!(renewals.len(), 1);
    assert_eq!(renewals[0].lock_token, token.to_string());
    let until = renewals[0].locked_until.unwrap();
    assert_eq!(
        until.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64,
        renewed.milliseconds()
    );

    // Completed: the lock is gone, and so is the renewal.
    within(receiver.accept(&delivery)).await.unwrap();
    eventually(|| emulator.settlements(TOPIC, SUB).len() == 1).await;
    let (properties, body) = client
        .request(
            &node,
            "com.microsoft:renew-lock",
            &[],
            lock_tokens_body(&[token]),
        )
        .await;
    assert_eq!(status(&properties), 410);
    assert_eq!(
        symbol_property(&properties, "error-condition").as_deref(),
        Some("com.microsoft:message-lock-lost")
    );
    assert_eq!(body, Value::Null);
    assert_eq!(
        emulator.lock_renewals(TOPIC, SUB),
        vec![
            RecordedLockRenewal {
                lock_token: token.to_string(),
                locked_until: Some(until),
            },
            RecordedLockRenewal {
                lock_token: token.to_string(),
                locked_until: None,
            }
        ]
    );
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn peek_and_bad_management_requests_get_status_codes() {
    let emulator = emulator().await;
    for body in [&b"a"[..], b"b", b"c"] {
        emulator.publish(TOPIC, body, BTreeMap::new());
    }
    let mut client = Client::connect(&emulator).await;
    let node = format!("{ENTITY}/$management");
    client.authorise(&emulator).await;
    let peek = |from: i64, count: i32| {
        let mut map = OrderedMap::new();
        map.insert(
            Value::String("from-sequence-number".to_owned()),
            Value::Long(from),
        );
        map.insert(Value::String("message-count".to_owned()), Value::Int(count));
        Value::Map(map)
    };
    let (properties, body) = client
        .request(&node, "com.microsoft:peek-message", &[], peek(2, 10))
        .await;
    assert_eq!(status(&properties), 200);
    let Value::List(messages) = map_field(&body, "messages") else {
        panic!("messages is not a list: {body:?}");
    };
    let peeked: Vec<(Vec<u8>, i64)> = messages
        .iter()
        .map(|entry| {
            let Value::Binary(encoded) = map_field(entry, "message") else {
                panic!("not a binary message: {entry:?}");
            };
            let message: fe2o3_amqp::types::messaging::message::__private::Deserializable<
                Message<Body<Value>>,
            > = serde_amqp::from_slice(encoded).unwrap();
            let message = message.0;
            let sequence = message
                .message_annotations
                .as_ref()
                .unwrap()
                .0
                .iter()
                .find_map(|(k, v)| match v {
                    Value::Long(n) if format!("{k:?}").contains("sequence") => Some(*n),
                    _ => None,
                })
                .unwrap();
            let Body::Data(data) = message.body else {
                panic!("not data");
            };
            (data.iter().flat_map(|d| d.0.to_vec()).collect(), sequence)
        })
        .collect();
    assert_eq!(peeked, vec![(b"b".to_vec(), 2), (b"c".to_vec(), 3)]);
    assert_eq!(emulator.pending(TOPIC, SUB), Some(3), "peek locks nothing");

    let (properties, _) = client
        .request(&node, "com.microsoft:peek-message", &[], peek(100, 10))
        .await;
    assert_eq!(status(&properties), 204);

    let (properties, _) = client
        .request(&node, "com.microsoft:schedule-message", &[], peek(1, 1))
        .await;
    assert_eq!(status(&properties), 400);
    assert_eq!(
        symbol_property(&properties, "error-condition").as_deref(),
        Some("amqp:not-implemented")
    );
    let (properties, _) = client
        .request(
            &node,
            "com.microsoft:renew-lock",
            &[],
            Value::String("not a map".to_owned()),
        )
        .await;
    assert_eq!(status(&properties), 400);
    let mut bad_tokens = OrderedMap::new();
    bad_tokens.insert(
        Value::String("lock-tokens".to_owned()),
        Value::Array(Array(vec![Value::Long(1)])),
    );
    let (properties, _) = client
        .request(
            &node,
            "com.microsoft:renew-lock",
            &[],
            Value::Map(bad_tokens),
        )
        .await;
    assert_eq!(status(&properties), 400);
    assert!(emulator.lock_renewals(TOPIC, SUB).is_empty());
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_link_whose_token_expired_is_detached_with_unauthorized_access() {
    let emulator = emulator().await;
    let mut client = Client::connect(&emulator).await;
    let status = client
        .authorise_as(SAS_TYPE, unix_now() + 2, &emulator.policy_key())
        .await;
    assert_eq!(status, 202);
    let mut receiver = client.receiver(ENTITY, ReceiverSettleMode::First).await;
    let error = within(receiver.recv::<Body<Value>>()).await.unwrap_err();
    assert_eq!(link_error_condition(&error), "amqp:unauthorized-access");
    // A fresh token authorises a new link on the same connection.
    client.authorise(&emulator).await;
    emulator.publish(TOPIC, b"after", BTreeMap::new());
    let mut receiver = client.receiver(ENTITY, ReceiverSettleMode::First).await;
    assert_eq!(body(&recv(&mut receiver).await), b"after");
    client.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn garbage_on_the_socket_does_not_take_the_emulator_down() {
    let emulator = emulator().await;
    for garbage in [
        &b"AMQP\x00\x01\x00\x00\x00\x00\x00\x10\x02\x00\x00\x00\x00\x53\x10\xff\xff\xff\xff"[..],
        b"\x00\x00\x00\x01",
        b"GET / HTTP/1.1\r\n\r\n",
        b"AMQP\x03\x01\x00\x00\x00\x00\x00\x0c\x02\x01\x00\x00\x00\x53\x41\x45",
    ] {
        let mut socket = TcpStream::connect(("127.0.0.1", emulator.amqp_port()))
            .await
            .unwrap();
        let _ = socket.write_all(garbage).await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut sink)).await;
    }
    emulator.publish(TOPIC, b"still here", BTreeMap::new());
    let mut client = Client::connect(&emulator).await;
    client.authorise(&emulator).await;
    let mut receiver = client.receiver(ENTITY, ReceiverSettleMode::First).await;
    assert_eq!(body(&recv(&mut receiver).await), b"still here");
    client.close().await;
}
