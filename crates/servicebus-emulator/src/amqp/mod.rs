//! The AMQP 1.0 endpoint: plain AMQP on loopback, SASL ANONYMOUS, the `$cbs` and `$management`
//! nodes ([`node`](super::node)), receiver links on subscriptions and their dead-letter
//! sub-queues that deliver in peek-lock mode, and sender links to topics.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerConnectionHandle,
    ListenerSessionHandle, SaslAnonymousMechanism, SessionAcceptor, SupportedReceiverSettleModes,
};
use fe2o3_amqp::link::DetachError;
use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition, ReceiverSettleMode, Role};
use fe2o3_amqp::types::primitives::Symbol;
use fe2o3_amqp::Sender;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

mod subscription_link;
mod topic_link;

use super::cbs::{self, Grants};
use super::entities::SubQueue;
use super::node::{self, Reply};
use super::wire::{self, Wire};
use super::Namespace;

use subscription_link::entity_link;
pub(crate) use subscription_link::{millis, to_amqp};
use topic_link::topic_link;

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
    shared: Arc<Namespace>,
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
    pub(crate) shared: Arc<Namespace>,
    /// Service Bus authorises per connection, whichever session carried the put-token.
    pub(crate) grants: Grants,
    pub(crate) wire: Arc<Wire>,
}

impl Conn {
    pub(crate) fn authorised(&self, path: &str) -> bool {
        cbs::authorised(&self.grants, path)
    }
}

async fn serve(listener: TcpListener, shared: Arc<Namespace>) {
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
