//! The AMQP 1.0 endpoint: plain AMQP on loopback, SASL ANONYMOUS, `$cbs`, and receiver links on
//! topic subscriptions that deliver in peek-lock mode.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerConnectionHandle,
    ListenerSessionHandle, SaslAnonymousMechanism, SessionAcceptor,
};
use fe2o3_amqp::link::DetachError;
use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition, Fields};
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Data, Header, Message, MessageAnnotations, Outcome,
    Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Timestamp, Value};
use fe2o3_amqp::{Receiver, Sender};
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinSet;

use super::cbs::{self, Grants};
use super::state::{Lock, Settlement, StoredMessage};
use super::Shared;

/// The longest a waiting link sleeps without looking at the subscription again.
const IDLE_RECHECK: Duration = Duration::from_secs(1);

pub(crate) fn bind() -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
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
        // `drop_connections` can drop the socket at once by aborting the relay.
        let (near, far) = tokio::io::duplex(64 * 1024);
        let relay = tokio::spawn(relay(tcp, near));
        let connection = tokio::spawn({
            let acceptor = acceptor.clone();
            let shared = shared.clone();
            async move {
                if let Ok(connection) = acceptor.accept(far).await {
                    connection_main(connection, shared).await;
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

/// Relays a client's socket to the AMQP engine, acknowledging what the client sends at once.
///
/// A client that writes a disposition and then a flow as two small writes with Nagle's algorithm
/// on (`fe2o3-amqp`, under `azure_core_amqp`, does not set `TCP_NODELAY`) holds the flow back
/// until the disposition is acknowledged; a server that delays its ACKs (Linux does, by up to
/// 40 ms, when it has nothing to send back) then stalls every renewal of the link credit, and a
/// backlog drains at ~100 messages/s (seen with strace: 40 ms between the client's flow and the
/// next transfer). Whether Service Bus's front ends delay ACKs is not known; the emulator answers
/// at once so that what is measured through it is this library.
async fn relay(tcp: TcpStream, near: DuplexStream) {
    let (mut from_client, mut to_client) = tcp.into_split();
    let (mut from_engine, mut to_engine) = tokio::io::split(near);
    let inbound = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = from_client.read(&mut buffer).await?;
            if read == 0 {
                return to_engine.shutdown().await;
            }
            // Quick-ack mode is not permanent: Linux leaves it again on its own, so it is set
            // again after every read, which also sends an ACK that was being held back.
            let _ = SockRef::from(from_client.as_ref()).set_tcp_quickack(true);
            to_engine.write_all(&buffer[..read]).await?;
        }
    };
    let outbound = async {
        tokio::io::copy(&mut from_engine, &mut to_client).await?;
        to_client.shutdown().await
    };
    let _: std::io::Result<_> = tokio::try_join!(inbound, outbound);
}

async fn connection_main(mut connection: ListenerConnectionHandle, shared: Arc<Shared>) {
    // Service Bus authorises per connection, whichever session carried the put-token.
    let grants = Grants::default();
    let mut sessions = JoinSet::new();
    let acceptor = SessionAcceptor::new();
    while let Ok(session) = acceptor.accept(&mut connection).await {
        while sessions.try_join_next().is_some() {}
        sessions.spawn(session_main(session, shared.clone(), grants.clone()));
    }
    let _ = connection.on_close().await;
}

async fn session_main(mut session: ListenerSessionHandle, shared: Arc<Shared>, grants: Grants) {
    let acceptor = LinkAcceptor::new();
    let mut links = JoinSet::new();
    // Responses flow from the `$cbs` request link's task to the `$cbs` reply link's task.
    let (replies_tx, replies_rx) = mpsc::unbounded_channel();
    let mut replies_rx = Some(replies_rx);
    while let Ok(link) = acceptor.accept(&mut session).await {
        while links.try_join_next().is_some() {}
        match link {
            // A client's sender: only `$cbs` requests are served.
            LinkEndpoint::Receiver(receiver) => {
                let target = receiver
                    .target()
                    .as_ref()
                    .and_then(|t| t.address.clone())
                    .unwrap_or_default();
                if target == "$cbs" {
                    links.spawn(cbs_requests(
                        receiver,
                        shared.clone(),
                        grants.clone(),
                        replies_tx.clone(),
                    ));
                } else {
                    let error = definitions::Error::new(
                        AmqpError::NotImplemented,
                        Some(format!(
                            "The emulator does not accept messages over AMQP (target '{target}')."
                        )),
                        None,
                    );
                    links.spawn(async move {
                        let _ = receiver.close_with_error(error).await;
                    });
                }
            }
            // A client's receiver.
            LinkEndpoint::Sender(sender) => {
                let source = sender
                    .source()
                    .as_ref()
                    .and_then(|s| s.address.clone())
                    .unwrap_or_default();
                if source == "$cbs" {
                    if let Some(replies) = replies_rx.take() {
                        links.spawn(cbs_replies(sender, replies));
                        continue;
                    }
                }
                links.spawn(entity_link(sender, source, shared.clone(), grants.clone()));
            }
        }
    }
    let _ = session.on_end().await;
}

fn property(message: &Message<Body<Value>>, key: &str) -> Option<Value> {
    message
        .application_properties
        .as_ref()
        .and_then(|p| p.0.get(key))
        .map(|v| Value::from(v.clone()))
}

fn string_property(message: &Message<Body<Value>>, key: &str) -> String {
    match property(message, key) {
        Some(Value::String(s)) => s,
        Some(Value::Symbol(s)) => s.0,
        _ => String::new(),
    }
}

fn expiration(message: &Message<Body<Value>>) -> Option<SystemTime> {
    let secs = |s: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(s).unwrap_or(0));
    match property(message, "expiration")? {
        Value::Timestamp(t) => {
            Some(UNIX_EPOCH + Duration::from_millis(u64::try_from(t.milliseconds()).unwrap_or(0)))
        }
        Value::Long(s) => Some(secs(s)),
        Value::Int(s) => Some(secs(s.into())),
        Value::Ulong(s) => Some(secs(i64::try_from(s).unwrap_or(i64::MAX))),
        Value::Uint(s) => Some(secs(s.into())),
        _ => None,
    }
}

async fn cbs_requests(
    mut receiver: Receiver,
    shared: Arc<Shared>,
    grants: Grants,
    replies: mpsc::UnboundedSender<Message<AmqpValue<Value>>>,
) {
    while let Ok(delivery) = receiver.recv::<Body<Value>>().await {
        if string_property(delivery.message(), "operation") == "put-token"
            && shared.lock().take_put_token_to_leave_unanswered()
        {
            // Neither an outcome nor a response: the request is left waiting.
            continue;
        }
        // The management client reads the response only after its request is accepted.
        if receiver.accept(&delivery).await.is_err() {
            return;
        }
        let message = delivery.into_message();
        let token = match &message.body {
            Body::Value(AmqpValue(Value::String(token))) => token.clone(),
            _ => String::new(),
        };
        let (status, description) = if string_property(&message, "operation") == "put-token" {
            cbs::put_token(
                &shared,
                &grants,
                &string_property(&message, "name"),
                &string_property(&message, "type"),
                &token,
                expiration(&message),
            )
        } else {
            (400, "Bad Request: only put-token is supported.")
        };
        let request = message.properties.unwrap_or_default();
        let reply = Message::builder()
            .properties(Properties {
                correlation_id: request.message_id,
                to: request.reply_to,
                ..Default::default()
            })
            .application_properties(
                ApplicationProperties::builder()
                    .insert("status-code", SimpleValue::Int(i32::from(status)))
                    .insert("status-description", description.to_owned())
                    .build(),
            )
            .value(Value::Null)
            .build();
        if replies.send(reply).is_err() {
            return;
        }
    }
}

async fn cbs_replies(
    mut sender: Sender,
    mut replies: mpsc::UnboundedReceiver<Message<AmqpValue<Value>>>,
) {
    loop {
        tokio::select! {
            reply = replies.recv() => {
                let Some(reply) = reply else { return };
                if sender.send(reply).await.is_err() {
                    return;
                }
            }
            error = sender.on_detach() => {
                answer_detach(sender, error).await;
                return;
            }
        }
    }
}

/// A fe2o3 `Sender` does not answer the peer's detach by itself.
async fn answer_detach(sender: Sender, error: DetachError) {
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

/// `{topic}/subscriptions/{subscription}`, also as a URL; lower case.
fn entity_of(address: &str) -> Option<(String, String)> {
    let path = if address.contains("://") {
        cbs::path_of(address)
    } else {
        address.trim_matches('/').to_ascii_lowercase()
    };
    let mut parts = path.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(topic), Some("subscriptions"), Some(subscription), None)
            if !topic.is_empty() && !subscription.is_empty() =>
        {
            Some((topic.to_owned(), subscription.to_owned()))
        }
        _ => None,
    }
}

fn error(condition: &str, description: String) -> definitions::Error {
    definitions::Error::new(
        ErrorCondition::Custom(Symbol::from(condition)),
        Some(description),
        None,
    )
}

fn not_found(address: &str) -> definitions::Error {
    definitions::Error::new(
        AmqpError::NotFound,
        Some(format!(
            "The messaging entity '{address}' could not be found."
        )),
        None,
    )
}

/// A message reserved for a transfer. Settled explicitly by [`Reservation::give_back`] (it
/// certainly did not go out) or by being dropped, which starts its lock: a transfer cut short
/// (the link's task aborted with its connection) may have reached the client, so the message
/// is treated as delivered, as the service does.
struct Reservation {
    shared: Arc<Shared>,
    topic: String,
    subscription: String,
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
            .subscription_mut(&self.topic, &self.subscription)
        {
            sub.unreserve(&self.token);
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
                .subscription_mut(&self.topic, &self.subscription)
            {
                sub.transferred(&self.token, Instant::now());
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

async fn entity_link(mut sender: Sender, address: String, shared: Arc<Shared>, grants: Grants) {
    let mut faults = shared.link_faults.subscribe();
    let Some((topic, subscription)) = entity_of(&address) else {
        let _ = sender.close_with_error(not_found(&address)).await;
        return;
    };
    if !cbs::authorised(&grants, &format!("{topic}/subscriptions/{subscription}")) {
        let description =
            "Unauthorized access. 'Listen' claim(s) are required to perform this operation.";
        let _ = sender
            .close_with_error(error("amqp:unauthorized-access", description.to_owned()))
            .await;
        return;
    }
    let mut settlements = JoinSet::new();
    loop {
        while settlements.try_join_next().is_some() {}
        // Reserve the next message, or learn when to look again.
        let now = Instant::now();
        let looked = shared
            .lock()
            .entities
            .subscription_mut(&topic, &subscription)
            .map(|sub| {
                let next = match sub.reserve(now) {
                    Some(reserved) => Ok(reserved),
                    None => Err(sub.next_lock_expiry()),
                };
                (sub.available.clone(), next)
            });
        let Some((available, next)) = looked else {
            let _ = sender.close_with_error(not_found(&address)).await;
            return;
        };
        match next {
            Ok((message, lock)) => {
                let reservation = Reservation {
                    shared: shared.clone(),
                    topic: topic.clone(),
                    subscription: subscription.clone(),
                    token: lock.token.clone(),
                    given_back: false,
                };
                let lock_duration = shared
                    .lock()
                    .entities
                    .subscription(&topic, &subscription)
                    .map_or(Duration::from_secs(60), |s| s.settings.lock_duration);
                let amqp_message = to_amqp(&message, &lock, lock_duration);
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
                        let shared = shared.clone();
                        let (topic, subscription) = (topic.clone(), subscription.clone());
                        settlements.spawn(async move {
                            if let Ok(outcome) = outcome.await {
                                settle(&shared, &topic, &subscription, &lock.token, &outcome);
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
                    .is_none_or(|s| !s.messages.is_empty());
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

fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn to_amqp(message: &StoredMessage, lock: &Lock, lock_duration: Duration) -> Message<Data> {
    let lock_token = uuid::Uuid::parse_str(&lock.token).unwrap_or_default();
    let locked_until = SystemTime::now() + lock_duration;
    let mut properties = ApplicationProperties::builder();
    for (key, value) in &message.properties {
        properties = properties.insert(key.clone(), SimpleValue::String(value.clone()));
    }
    Message::builder()
        .header(Header {
            durable: true,
            // AMQP counts prior deliveries; the state counts this one too.
            delivery_count: message.delivery_count.saturating_sub(1),
            ..Default::default()
        })
        .message_annotations(
            MessageAnnotations::builder()
                .insert(
                    Symbol::from("x-opt-lock-token"),
                    Value::Uuid(lock_token.into_bytes().into()),
                )
                .insert(
                    Symbol::from("x-opt-locked-until"),
                    Value::Timestamp(Timestamp::from_milliseconds(millis(locked_until))),
                )
                .insert(
                    Symbol::from("x-opt-enqueued-time"),
                    Value::Timestamp(Timestamp::from_milliseconds(millis(message.enqueued_time))),
                )
                .insert(
                    Symbol::from("x-opt-sequence-number"),
                    Value::Long(message.sequence_number),
                )
                .build(),
        )
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
        _ => String::new(),
    }
}

fn settle(shared: &Shared, topic: &str, subscription: &str, token: &str, outcome: &Outcome) {
    let mut state = shared.lock();
    let Some(sub) = state.entities.subscription_mut(topic, subscription) else {
        return;
    };
    let now = Instant::now();
    let (name, result) = match outcome {
        Outcome::Accepted(_) => ("accepted", sub.complete(token, now)),
        Outcome::Released(_) => ("released", sub.abandon(token, now)),
        Outcome::Modified(_) => ("modified", sub.abandon(token, now)),
        Outcome::Rejected(rejected) => {
            // With `com.microsoft:dead-letter` and its info the receiver names a reason; a bare
            // Rejected dead-letters without one.
            let info = rejected.error.as_ref().and_then(|e| e.info.as_deref());
            let reason = info_string(info, "DeadLetterReason");
            let description = info_string(info, "DeadLetterErrorDescription");
            (
                "rejected",
                sub.dead_letter(token, &reason, &description, now),
            )
        }
        #[allow(unreachable_patterns)]
        _ => ("unknown", Ok(())),
    };
    sub.settlements.push(Settlement {
        lock_token: token.to_owned(),
        outcome: name,
        applied: result.is_ok(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_addresses_are_case_insensitive_paths_or_urls() {
        assert_eq!(
            entity_of("Topic/Subscriptions/Sub"),
            Some(("topic".to_owned(), "sub".to_owned()))
        );
        assert_eq!(
            entity_of("amqp://127.0.0.1:5672/topic/subscriptions/sub"),
            Some(("topic".to_owned(), "sub".to_owned()))
        );
        assert_eq!(entity_of("topic"), None);
        assert_eq!(entity_of("topic/subscriptions/sub/$deadletterqueue"), None);
    }
}
