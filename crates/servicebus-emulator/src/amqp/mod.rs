//! The AMQP 1.0 endpoint: plain AMQP on loopback, SASL ANONYMOUS, the `$cbs` and `$management`
//! nodes ([`node`](super::node)), receiver links on subscriptions and their dead-letter
//! sub-queues that deliver in peek-lock mode, and sender links to topics.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerConnectionHandle,
    ListenerSessionHandle, SaslAnonymousMechanism, SessionAcceptor, SupportedReceiverSettleModes,
};
use fe2o3_amqp::link::DetachError;
use fe2o3_amqp::types::definitions::{
    self, AmqpError, ErrorCondition, Fields, ReceiverSettleMode, Role,
};
use fe2o3_amqp::types::messaging::{
    Accepted, ApplicationProperties, Body, Data, DeliveryState, Header, Message,
    MessageAnnotations, MessageId, Modified, Outcome, Properties, Rejected, Released,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Timestamp, Value};
use fe2o3_amqp::{Receiver, Sender};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinSet;

use super::cbs::{self, Grants};
use super::node::{self, Reply};
use super::state::{system_time, Lock, Settlement, StoredMessage, SubQueue};
use super::wire::{self, Wire};
use super::Shared;

/// The longest a waiting link sleeps without looking at the subscription (and at its
/// authorisation) again.
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// The message format of a batch: each `data` section is a whole encoded message
/// (azure-sdk-for-python's `BatchMessage`, the .NET SDK's `AmqpMessage` batches).
const BATCH_MESSAGE_FORMAT: u32 = 0x8001_3700;

/// The description of a lost lock, as the service words it.
pub(crate) const LOCK_LOST_DESCRIPTION: &str = "The lock supplied is invalid. Either the lock expired, or the message has already been removed from the queue.";
/// The condition of a lost lock.
pub(crate) const LOCK_LOST: &str = "com.microsoft:message-lock-lost";

pub(crate) fn bind(port: u16) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The AMQP engine's own thread. Dropping it stops the engine: every connection task goes
/// with the thread's runtime.
pub(crate) struct EngineThread {
    _stop: oneshot::Sender<()>,
}

/// Runs the AMQP endpoint on a thread of its own with a single-threaded runtime.
///
/// Why one thread: `fe2o3-amqp` 0.14's `Sender` hands a transfer to its session engine and only
/// then records the delivery as unsettled. On a multi-threaded runtime the session can take
/// the receiver's disposition for that delivery in between (the sending task preempted right
/// after the hand-over, on a busy machine), finds nothing to settle and drops it: the outcome
/// never arrives, the message stays locked for its whole lock duration, and a test waiting
/// for the redelivery times out. With the link tasks and the session engines on one thread,
/// nothing runs between the hand-over and the record.
pub(crate) fn spawn_engine(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
) -> std::io::Result<EngineThread> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("servicebus-emulator-amqp".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                tokio::select! {
                    () = serve(listener, shared) => {}
                    _ = stopped => {}
                }
            });
        })?;
    Ok(EngineThread { _stop: stop })
}

/// What every link of a connection shares.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) shared: Arc<Shared>,
    /// Service Bus authorises per connection, whichever session carried the put-token.
    pub(crate) grants: Grants,
    pub(crate) wire: Arc<Wire>,
}

impl Conn {
    pub(crate) fn authorised(&self, path: &str) -> bool {
        cbs::authorised(&self.grants, path)
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let acceptor = Arc::new(
        ConnectionAcceptor::builder()
            .container_id("keyvault-invalidator-servicebus-emulator")
            .sasl_acceptor(SaslAnonymousMechanism::new())
            .build(),
    );
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // The emulator's own small frames (transfers) go out at once.
        let _ = tcp.set_nodelay(true);
        // The socket is relayed to the AMQP engine through an in-memory pipe, so that
        // `drop_connections` can drop the socket at once by aborting the relay, and so that
        // the relay can rewrite the frames fe2o3 gets wrong (see `wire`).
        let (near, far) = tokio::io::duplex(64 * 1024);
        let (wire, relaying) = wire::relay(tcp, near);
        let relay = tokio::spawn(relaying);
        let connection = tokio::spawn({
            let acceptor = acceptor.clone();
            let conn = Conn {
                shared: shared.clone(),
                grants: Grants::default(),
                wire,
            };
            async move {
                if let Ok(connection) = acceptor.accept(far).await {
                    connection_main(connection, conn).await;
                }
            }
        });
        let mut state = shared.lock();
        state
            .connections
            .retain(|(relay, connection)| !relay.is_finished() || !connection.is_finished());
        state
            .connections
            .push((relay.abort_handle(), connection.abort_handle()));
    }
}

async fn connection_main(mut connection: ListenerConnectionHandle, conn: Conn) {
    let mut sessions = JoinSet::new();
    let acceptor = SessionAcceptor::new();
    while let Ok(session) = acceptor.accept(&mut connection).await {
        while sessions.try_join_next().is_some() {}
        sessions.spawn(session_main(session, conn.clone()));
    }
    let _ = connection.on_close().await;
}

/// The request/response nodes of a session (`$cbs`, `{entity}/$management`): responses flow
/// from the request link's task to the reply link's task.
#[derive(Default)]
struct Nodes {
    channels: HashMap<
        String,
        (
            mpsc::UnboundedSender<Reply>,
            Option<mpsc::UnboundedReceiver<Reply>>,
        ),
    >,
}

impl Nodes {
    fn requests(&mut self, node: &str) -> mpsc::UnboundedSender<Reply> {
        self.channels
            .entry(node.to_owned())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                (tx, Some(rx))
            })
            .0
            .clone()
    }

    fn replies(&mut self, node: &str) -> mpsc::UnboundedReceiver<Reply> {
        let entry = self.channels.entry(node.to_owned()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            (tx, Some(rx))
        });
        match entry.1.take() {
            Some(rx) => rx,
            None => {
                // A second reply link for the node: it gets the replies from now on.
                let (tx, rx) = mpsc::unbounded_channel();
                entry.0 = tx;
                rx
            }
        }
    }
}

/// What a link address names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Address {
    Cbs,
    /// `{entity}/$management` of a subscription or its dead-letter sub-queue.
    Management(Entity),
    /// A subscription or its dead-letter sub-queue.
    Entity(Entity),
    /// A topic (a sender's target).
    Topic(String),
    Unknown,
}

/// A subscription's queue; names lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entity {
    pub(crate) topic: String,
    pub(crate) subscription: String,
    pub(crate) queue: SubQueue,
}

impl Entity {
    /// The path an authorisation must cover (one for the subscription covers its dead-letter
    /// sub-queue too).
    pub(crate) fn path(&self) -> String {
        match self.queue {
            SubQueue::Active => format!("{}/subscriptions/{}", self.topic, self.subscription),
            SubQueue::DeadLetter => format!(
                "{}/subscriptions/{}/$deadletterqueue",
                self.topic, self.subscription
            ),
        }
    }
}

/// Parses a link address: a path (`{topic}/subscriptions/{subscription}[/$deadletterqueue]`,
/// `{topic}`, with `/$management` for the node), case-insensitive, or a URL with that path.
pub(crate) fn address_of(address: &str) -> Address {
    let path = if address.contains("://") {
        cbs::path_of(address)
    } else {
        address.trim_matches('/').to_ascii_lowercase()
    };
    if path == "$cbs" {
        return Address::Cbs;
    }
    let mut parts: Vec<&str> = path.split('/').collect();
    let management = parts.last() == Some(&"$management");
    if management {
        parts.pop();
    }
    let entity = match parts.as_slice() {
        [topic, "subscriptions", subscription] => Some((topic, subscription, SubQueue::Active)),
        [topic, "subscriptions", subscription, "$deadletterqueue"] => {
            Some((topic, subscription, SubQueue::DeadLetter))
        }
        [topic] if !management && !topic.is_empty() && !topic.starts_with('$') => {
            return Address::Topic((*topic).to_owned());
        }
        _ => None,
    };
    match entity {
        Some((topic, subscription, queue)) if !topic.is_empty() && !subscription.is_empty() => {
            let entity = Entity {
                topic: (*topic).to_owned(),
                subscription: (*subscription).to_owned(),
                queue,
            };
            if management {
                Address::Management(entity)
            } else {
                Address::Entity(entity)
            }
        }
        _ => Address::Unknown,
    }
}

fn node_key(address: &Address) -> String {
    match address {
        Address::Cbs => "$cbs".to_owned(),
        Address::Management(entity) => format!("{entity:?}"),
        _ => String::new(),
    }
}

async fn session_main(mut session: ListenerSessionHandle, conn: Conn) {
    // A client's receiver gets the settle mode it asks for (the Python client's peek-lock asks
    // for second, see `wire`).
    let acceptor = LinkAcceptor::new();
    // A client's sender is settled at once (mode first), as the service does: the Python
    // client's sender asks for rcv-settle-mode second but waits for a settled disposition, and
    // fe2o3's receiver in mode second would leave its Accepted unsettled.
    let settling_acceptor = LinkAcceptor::builder()
        .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
        .fallback_receiver_settle_mode(ReceiverSettleMode::First)
        .build();
    let mut links = JoinSet::new();
    let mut nodes = Nodes::default();
    while let Some(attach) = session.next_incoming_attach().await {
        while links.try_join_next().is_some() {}
        let accepted = match attach.role {
            Role::Sender => {
                settling_acceptor
                    .accept_incoming_attach(attach, &mut session)
                    .await
            }
            Role::Receiver => acceptor.accept_incoming_attach(attach, &mut session).await,
        };
        let Ok(link) = accepted else {
            continue;
        };
        match link {
            // A client's sender: requests to a node, or messages to a topic.
            LinkEndpoint::Receiver(receiver) => {
                let target = receiver
                    .target()
                    .as_ref()
                    .and_then(|t| t.address.clone())
                    .unwrap_or_default();
                let address = address_of(&target);
                match &address {
                    Address::Cbs | Address::Management(_) => {
                        let replies = nodes.requests(&node_key(&address));
                        links.spawn(node::requests(receiver, address, conn.clone(), replies));
                    }
                    Address::Topic(topic) => {
                        links.spawn(topic_link(
                            receiver,
                            target.clone(),
                            topic.clone(),
                            conn.clone(),
                        ));
                    }
                    Address::Entity(_) | Address::Unknown => {
                        let error = definitions::Error::new(
                            AmqpError::NotFound,
                            Some(format!(
                                "The messaging entity '{target}' could not be found, or cannot be sent to."
                            )),
                            None,
                        );
                        links.spawn(async move {
                            let _ = receiver.close_with_error(error).await;
                        });
                    }
                }
            }
            // A client's receiver: replies of a node, or messages of a subscription.
            LinkEndpoint::Sender(sender) => {
                let source = sender
                    .source()
                    .as_ref()
                    .and_then(|s| s.address.clone())
                    .unwrap_or_default();
                let address = address_of(&source);
                match address {
                    Address::Cbs | Address::Management(_) => {
                        let replies = nodes.replies(&node_key(&address));
                        links.spawn(node::replies(sender, replies));
                    }
                    Address::Entity(entity) => {
                        links.spawn(entity_link(sender, source, entity, conn.clone()));
                    }
                    Address::Topic(_) | Address::Unknown => {
                        links.spawn(async move {
                            let _ = sender.close_with_error(not_found(&source)).await;
                        });
                    }
                }
            }
        }
    }
    let _ = session.on_end().await;
}

/// A fe2o3 `Sender` does not answer the peer's detach by itself.
pub(crate) async fn answer_detach(sender: Sender, error: DetachError) {
    match error {
        DetachError::ClosedByRemote | DetachError::RemoteClosedWithError(_) => {
            let _ = sender.close().await;
        }
        DetachError::DetachedByRemote | DetachError::RemoteDetachedWithError(_) => {
            let _ = sender.detach().await;
        }
        _ => {}
    }
}

pub(crate) fn error(condition: &str, description: String) -> definitions::Error {
    definitions::Error::new(
        ErrorCondition::Custom(Symbol::from(condition)),
        Some(description),
        None,
    )
}

pub(crate) fn not_found(address: &str) -> definitions::Error {
    definitions::Error::new(
        AmqpError::NotFound,
        Some(format!(
            "The messaging entity '{address}' could not be found."
        )),
        None,
    )
}

pub(crate) fn unauthorized(claim: &str) -> definitions::Error {
    definitions::Error::new(
        AmqpError::UnauthorizedAccess,
        Some(format!(
            "Unauthorized access. '{claim}' claim(s) are required to perform this operation."
        )),
        None,
    )
}

/// The error a link is detached with once its authorisation expired, as the service does.
pub(crate) fn token_expired() -> definitions::Error {
    definitions::Error::new(
        AmqpError::UnauthorizedAccess,
        Some("The token has expired: the link is detached. Put a new token on $cbs and attach again.".to_owned()),
        None,
    )
}

/// A message reserved for a transfer. Settled explicitly by [`Reservation::give_back`] (it
/// certainly did not go out) or by being dropped, which starts its lock: a transfer cut short
/// (the link's task aborted with its connection) may have reached the client, so the message
/// is treated as delivered, as the service does.
struct Reservation {
    shared: Arc<Shared>,
    entity: Entity,
    token: String,
    given_back: bool,
}

impl Reservation {
    fn give_back(mut self) {
        self.given_back = true;
        if let Some(sub) = self
            .shared
            .lock()
            .entities
            .subscription_mut(&self.entity.topic, &self.entity.subscription)
        {
            sub.unreserve(self.entity.queue, &self.token);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.given_back {
            if let Some(sub) = self
                .shared
                .lock()
                .entities
                .subscription_mut(&self.entity.topic, &self.entity.subscription)
            {
                sub.transferred(self.entity.queue, &self.token, Instant::now());
            }
        }
    }
}

/// The next condition `detach_links_with_error` asks for.
async fn next_fault(faults: &mut broadcast::Receiver<String>) -> String {
    loop {
        match faults.recv().await {
            Ok(condition) => return condition,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// A client's receiver on a subscription or its dead-letter sub-queue: peek-lock deliveries.
async fn entity_link(mut sender: Sender, address: String, entity: Entity, conn: Conn) {
    let shared = conn.shared.clone();
    let mut faults = shared.link_faults.subscribe();
    if !conn.authorised(&entity.path()) {
        let _ = sender.close_with_error(unauthorized("Listen")).await;
        return;
    }
    let (topic, subscription, queue) = (
        entity.topic.clone(),
        entity.subscription.clone(),
        entity.queue,
    );
    let mut settlements = JoinSet::new();
    loop {
        while settlements.try_join_next().is_some() {}
        if !conn.authorised(&entity.path()) {
            let _ = sender.close_with_error(token_expired()).await;
            return;
        }
        // Reserve the next message, or learn when to look again.
        let now = Instant::now();
        let looked = shared
            .lock()
            .entities
            .subscription_mut(&topic, &subscription)
            .map(|sub| {
                let next = match sub.reserve(queue, now) {
                    Some(reserved) => Ok(reserved),
                    None => Err(sub.next_lock_expiry(queue)),
                };
                (
                    sub.queue(queue).available.clone(),
                    sub.settings.lock_duration,
                    next,
                )
            });
        let Some((available, lock_duration, next)) = looked else {
            let _ = sender.close_with_error(not_found(&address)).await;
            return;
        };
        match next {
            Ok((message, lock)) => {
                let reservation = Reservation {
                    shared: shared.clone(),
                    entity: entity.clone(),
                    token: lock.token.clone(),
                    given_back: false,
                };
                let amqp_message = to_amqp(&message, Some((&lock, lock_duration)));
                // Waits for link credit; the lock starts once the transfer went out.
                let sent = tokio::select! {
                    sent = sender.send_batchable(amqp_message) => Some(sent),
                    condition = next_fault(&mut faults) => {
                        reservation.give_back();
                        let _ = sender
                            .close_with_error(error(&condition, fault_description(&condition)))
                            .await;
                        return;
                    }
                };
                match sent {
                    Some(Ok(outcome)) => {
                        drop(reservation);
                        let conn = conn.clone();
                        let entity = entity.clone();
                        settlements.spawn(async move {
                            if let Ok(outcome) = outcome.await {
                                let state = settle(&conn.shared, &entity, &lock.token, &outcome);
                                conn.wire.settle(&lock.token, state);
                            }
                        });
                    }
                    _ => {
                        reservation.give_back();
                        let error = sender.on_detach().await;
                        answer_detach(sender, error).await;
                        return;
                    }
                }
            }
            Err(next_expiry) => {
                let notified = available.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                // A message may have arrived between the look and `enable`.
                let ready = shared
                    .lock()
                    .entities
                    .subscription(&topic, &subscription)
                    .is_none_or(|s| !s.queue(queue).messages.is_empty());
                if ready {
                    continue;
                }
                let wake = next_expiry
                    .map_or(IDLE_RECHECK, |at| {
                        at.saturating_duration_since(Instant::now())
                    })
                    .min(IDLE_RECHECK);
                tokio::select! {
                    () = &mut notified => {}
                    () = tokio::time::sleep(wake) => {}
                    error = sender.on_detach() => {
                        answer_detach(sender, error).await;
                        return;
                    }
                    condition = next_fault(&mut faults) => {
                        let _ = sender
                            .close_with_error(error(&condition, fault_description(&condition)))
                            .await;
                        return;
                    }
                }
            }
        }
    }
}

fn fault_description(condition: &str) -> String {
    format!("The emulator detached the link ({condition}).")
}

pub(crate) fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The message as it goes to a receiver: with its lock's annotations when it is delivered
/// (`lock` and the lock duration), without when it is peeked.
pub(crate) fn to_amqp(message: &StoredMessage, lock: Option<(&Lock, Duration)>) -> Message<Data> {
    let mut properties = ApplicationProperties::builder();
    for (key, value) in &message.properties {
        properties = properties.insert(key.clone(), SimpleValue::String(value.clone()));
    }
    let mut annotations = MessageAnnotations::builder();
    if let Some((lock, lock_duration)) = lock {
        let lock_token = uuid::Uuid::parse_str(&lock.token).unwrap_or_default();
        let locked_until = system_time(Instant::now() + lock_duration);
        annotations = annotations
            .insert(
                Symbol::from("x-opt-lock-token"),
                Value::Uuid(lock_token.into_bytes().into()),
            )
            .insert(
                Symbol::from("x-opt-locked-until"),
                Value::Timestamp(Timestamp::from_milliseconds(millis(locked_until))),
            );
    }
    let annotations = annotations
        .insert(
            Symbol::from("x-opt-enqueued-time"),
            Value::Timestamp(Timestamp::from_milliseconds(millis(message.enqueued_time))),
        )
        .insert(
            Symbol::from("x-opt-sequence-number"),
            Value::Long(message.sequence_number),
        )
        .build();
    Message::builder()
        .header(Header {
            durable: true,
            // AMQP counts prior deliveries; the state counts this one too (a peeked message:
            // those so far).
            delivery_count: if lock.is_some() {
                message.delivery_count.saturating_sub(1)
            } else {
                message.delivery_count
            },
            ..Default::default()
        })
        .message_annotations(annotations)
        .properties(Properties {
            message_id: message.message_id.clone().map(Into::into),
            ..Default::default()
        })
        .application_properties(properties.build())
        .data(Binary::from(message.body.clone()))
        .build()
}

fn info_string(info: Option<&Fields>, key: &str) -> String {
    match info.and_then(|info| info.get(&Symbol::from(key))) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Symbol(s)) => s.0.clone(),
        _ => String::new(),
    }
}

/// The settled state the service answers when a lock was lost.
pub(crate) fn lock_lost_state() -> DeliveryState {
    DeliveryState::Rejected(Rejected {
        error: Some(error(LOCK_LOST, LOCK_LOST_DESCRIPTION.to_owned())),
    })
}

/// Applies a receiver's outcome; returns the state to settle the delivery with: the outcome
/// applied (a dead-letter as a bare Rejected), or a lost lock.
fn settle(shared: &Shared, entity: &Entity, token: &str, outcome: &Outcome) -> DeliveryState {
    let mut state = shared.lock();
    let Some(sub) = state
        .entities
        .subscription_mut(&entity.topic, &entity.subscription)
    else {
        return lock_lost_state();
    };
    let now = Instant::now();
    let queue = entity.queue;
    let (name, result, applied) = match outcome {
        Outcome::Accepted(_) => (
            "accepted",
            sub.complete(queue, token, now),
            DeliveryState::Accepted(Accepted {}),
        ),
        // Released does not count the delivery (Azure/amqpnetlite#342).
        Outcome::Released(_) => (
            "released",
            sub.release(queue, token, now),
            DeliveryState::Released(Released {}),
        ),
        // Modified counts it, whatever `delivery-failed` says; `undeliverable-here` (a defer in
        // the SDKs) is treated the same: deferral is not emulated.
        Outcome::Modified(modified) => (
            "modified",
            sub.abandon(queue, token, now),
            DeliveryState::Modified(Modified {
                delivery_failed: modified.delivery_failed,
                undeliverable_here: modified.undeliverable_here,
                message_annotations: None,
            }),
        ),
        Outcome::Rejected(rejected) => {
            // With `com.microsoft:dead-letter` and its info the receiver names a reason; a bare
            // Rejected dead-letters without one.
            let info = rejected.error.as_ref().and_then(|e| e.info.as_deref());
            let reason = info_string(info, "DeadLetterReason");
            let description = info_string(info, "DeadLetterErrorDescription");
            (
                "rejected",
                sub.dead_letter(queue, token, &reason, &description, now),
                // The service confirms a dead-letter with a Rejected without an error: one with
                // an error is a failure to azure-sdk-for-python (`check_disposition_outcome`).
                DeliveryState::Rejected(Rejected { error: None }),
            )
        }
        #[allow(unreachable_patterns)]
        _ => ("unknown", Ok(()), DeliveryState::Accepted(Accepted {})),
    };
    let answer = if result.is_ok() {
        applied
    } else {
        lock_lost_state()
    };
    sub.queue_mut(queue).settlements.push(Settlement {
        lock_token: token.to_owned(),
        outcome: name,
        applied: result.is_ok(),
    });
    answer
}

/// A client's sender to a topic: every message is published, then accepted.
async fn topic_link(mut receiver: Receiver, target: String, topic: String, conn: Conn) {
    if !conn.authorised(&topic) {
        let _ = receiver.close_with_error(unauthorized("Send")).await;
        return;
    }
    if !conn.shared.lock().entities.topics.contains_key(&topic) {
        let _ = receiver.close_with_error(not_found(&target)).await;
        return;
    }
    let mut recheck = tokio::time::interval(IDLE_RECHECK);
    loop {
        let delivery = tokio::select! {
            delivery = receiver.recv::<Body<Value>>() => delivery,
            _ = recheck.tick() => {
                if !conn.authorised(&topic) {
                    let _ = receiver.close_with_error(token_expired()).await;
                    return;
                }
                continue;
            }
        };
        let delivery = match delivery {
            Ok(delivery) => delivery,
            // Detached or closed by the client, or a malformed transfer: the link ends.
            Err(_) => return,
        };
        if !conn.authorised(&topic) {
            let _ = receiver.close_with_error(token_expired()).await;
            return;
        }
        let format = *delivery.message_format();
        let (info, message) = delivery.into_parts();
        let published = match messages_of(format, message) {
            Some(messages) => {
                let mut state = conn.shared.lock();
                messages
                    .into_iter()
                    .all(|message| state.entities.publish(&topic, message))
            }
            None => false,
        };
        let result = if published {
            receiver.accept(info.clone()).await
        } else {
            receiver
                .reject(
                    info,
                    Some(definitions::Error::new(
                        AmqpError::NotImplemented,
                        Some(
                            "The emulator takes bodies of data sections, or an amqp-value string or binary."
                                .to_owned(),
                        ),
                        None,
                    )),
                )
                .await
        };
        if result.is_err() {
            return;
        }
    }
}

/// The messages a transfer carries: one, or each of a batch's.
fn messages_of(format: Option<u32>, message: Message<Body<Value>>) -> Option<Vec<StoredMessage>> {
    if format == Some(BATCH_MESSAGE_FORMAT) {
        let Body::Data(sections) = message.body else {
            return None;
        };
        sections
            .into_iter()
            .map(|Data(bytes)| {
                let inner: fe2o3_amqp::types::messaging::message::__private::Deserializable<
                    Message<Body<Value>>,
                > = serde_amqp::from_slice(&bytes).ok()?;
                stored(inner.0)
            })
            .collect()
    } else {
        Some(vec![stored(message)?])
    }
}

/// A received message as the emulator stores it: the body (`data` sections concatenated, or an
/// `amqp-value` string or binary), `message-id` and string application properties.
fn stored(message: Message<Body<Value>>) -> Option<StoredMessage> {
    let body = match message.body {
        Body::Data(sections) => sections
            .into_iter()
            .flat_map(|Data(bytes)| bytes.into_vec())
            .collect(),
        Body::Value(value) => match value.0 {
            Value::String(text) => text.into_bytes(),
            Value::Binary(bytes) => bytes.into_vec(),
            _ => return None,
        },
        Body::Empty => Vec::new(),
        Body::Sequence(_) => return None,
    };
    let message_id = message
        .properties
        .and_then(|p| p.message_id)
        .map(|id| match id {
            MessageId::String(s) => s,
            MessageId::Ulong(n) => n.to_string(),
            MessageId::Uuid(u) => uuid::Uuid::from_bytes(u.into_inner()).to_string(),
            MessageId::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
        });
    let properties: BTreeMap<String, String> = message
        .application_properties
        .map(|p| {
            p.0.into_iter()
                .filter_map(|(k, v)| match v {
                    SimpleValue::String(s) => Some((k, s)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(StoredMessage {
        body,
        properties,
        delivery_count: 0,
        message_id,
        sequence_number: 0,
        enqueued_time: SystemTime::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(topic: &str, subscription: &str, queue: SubQueue) -> Entity {
        Entity {
            topic: topic.to_owned(),
            subscription: subscription.to_owned(),
            queue,
        }
    }

    #[test]
    fn addresses_are_case_insensitive_paths_or_urls() {
        assert_eq!(
            address_of("Topic/Subscriptions/Sub"),
            Address::Entity(entity("topic", "sub", SubQueue::Active))
        );
        assert_eq!(
            address_of("amqp://127.0.0.1:5672/topic/subscriptions/sub"),
            Address::Entity(entity("topic", "sub", SubQueue::Active))
        );
        assert_eq!(address_of("Topic"), Address::Topic("topic".to_owned()));
        assert_eq!(
            address_of("topic/Subscriptions/sub/$DeadLetterQueue"),
            Address::Entity(entity("topic", "sub", SubQueue::DeadLetter))
        );
        assert_eq!(
            address_of("topic/subscriptions/sub/$management"),
            Address::Management(entity("topic", "sub", SubQueue::Active))
        );
        assert_eq!(address_of("$cbs"), Address::Cbs);
        assert_eq!(address_of("topic/subscriptions"), Address::Unknown);
        assert_eq!(address_of("topic/$management"), Address::Unknown);
        assert_eq!(address_of(""), Address::Unknown);
        assert_eq!(address_of("a/b/c/d/e"), Address::Unknown);
    }
}
