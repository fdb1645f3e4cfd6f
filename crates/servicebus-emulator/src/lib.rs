//! An Azure Service Bus emulator for tests that cannot reach Azure: a library
//! ([`ServiceBusEmulator`]) and a program (`keyvault-invalidator-servicebus-emulator`, see
//! below) that Microsoft's official Python client (`azure-servicebus` 7.15, its `_pyamqp`
//! stack) accepts with the connection string the emulator prints.
//!
//! Sources: "wire facts" are from the project's reference notes on Service Bus over AMQP
//! (`shared/reference/servicebus-amqp.md`), MicrosoftDocs "AMQP 1.0 in Azure Service Bus and
//! Event Hubs protocol guide" (`service-bus-amqp-protocol-guide.md`, below *AMQP guide*) and
//! "AMQP 1.0 in Microsoft Azure Service Bus: request-response-based operations"
//! (`service-bus-amqp-request-response.md`, *request-response*), and what the SDKs do:
//! azure-sdk-for-python `_pyamqp` and `_servicebus_receiver.py` (*Python SDK*),
//! azure-sdk-for-net `AmqpReceiver.cs` (*.NET SDK*), Azure/amqpnetlite#342 (Released).
//!
//! It serves two endpoints on 127.0.0.1, on random ports unless
//! [`EmulatorOptions`] fix them:
//!
//! - The **management endpoint** (plain HTTP, the Service Bus management REST API's Atom
//!   entries): `PUT` of a subscription (201 created, 409 exists, 404 no such topic) and `DELETE`
//!   (200, 404), with the `Authorization` header checked for real: a shared access signature
//!   must name a known policy, match its key, not be expired and cover the entity; a bearer
//!   token must be the emulator's test token. Anything else is 401.
//! - The **AMQP 1.0 endpoint** ([`amqp_url`](ServiceBusEmulator::amqp_url), plain AMQP, SASL
//!   ANONYMOUS, as the Service Bus emulator's `UseDevelopmentEmulator=true` connection strings
//!   use (reference notes); see [`connection_string`](ServiceBusEmulator::connection_string)):
//!   - **`$cbs` `put-token`** (AMQP guide, "Claims-based authorization"): request link and reply
//!     link, `status-code` and `status-description`, `correlation-id` = the request's
//!     `message-id`. A token shaped like a shared access signature
//!     (`SharedAccessSignature sr=..&sig=..&se=..&skn=..`) is verified like the management
//!     endpoint's, and its `sr` must cover the audience, whether its type is
//!     `servicebus.windows.net:sastoken` or `jwt` (the Python SDK puts a connection string's
//!     signature under `jwt`: `_common/utils.py` `create_authentication`, `_pyamqp/cbs.py`); any
//!     other `jwt` must be [`bearer_token`](ServiceBusEmulator::bearer_token). 202 on success,
//!     401 otherwise. Authorisations belong to the connection (any session) and cover the
//!     audience's path and below, until the token's expiry (SAS `se`; `expiration` for a
//!     bearer token). Audiences are compared by path: the scheme, host and port are ignored.
//!   - **Token expiry** (AMQP guide: the service detaches a link whose token expired): every
//!     link that needed an authorisation (receivers, senders, `$management`) looks again at
//!     least once a second and is detached with `amqp:unauthorized-access` once none covers it;
//!     a fresh `put-token` in time keeps it.
//!   - **Receiver links** on `{topic}/subscriptions/{subscription}` and its dead-letter
//!     sub-queue `{topic}/subscriptions/{subscription}/$deadletterqueue` (case-insensitive; a
//!     URL with that path works too; the Python SDK's `ServiceBusSubQueue.DEAD_LETTER`), in
//!     peek-lock: without an authorisation the link is closed with
//!     `amqp:unauthorized-access`, for an unknown subscription with `amqp:not-found` (after the
//!     attach, as the service does). Messages go out as the link's credit allows, with one
//!     `data` section (the body), a header with every field written out and
//!     `header.delivery-count` = prior deliveries (0 on the first: the Python SDK's
//!     `delivery_count` reads it), `message-id` if the message has one, the application
//!     properties (strings), and the annotations `x-opt-lock-token` (uuid),
//!     `x-opt-locked-until`, `x-opt-enqueued-time`, `x-opt-sequence-number`. The **delivery
//!     tag is the lock token**: its 16 bytes in .NET GUID order (reference notes; the Python
//!     SDK's `lock_token` is `uuid.UUID(bytes_le=delivery_tag)`). The lock starts when the
//!     transfer goes out and lasts the subscription's `LockDuration`; an expired lock sends the
//!     message back to the front of the queue and counts as a delivery.
//!   - **Settlement** (reference notes, "Settlement as the official SDKs send it"):
//!     - Accepted completes.
//!     - **Released** unlocks the message *without* counting the delivery: its delivery count
//!       is what it was before this delivery (Azure/amqpnetlite#342; the Python SDK releases
//!       the messages it prefetched when no receive call is waiting, and on close).
//!     - **Modified** abandons and counts the delivery, whether `delivery-failed` is true
//!       (the Python SDK's abandon) or false (the Go SDK's); `undeliverable-here` true (a
//!       defer in the SDKs) is treated the same way, as deferral is not emulated.
//!     - A delivery that reaches `MaxDeliveryCount` (by Modified or by an expired lock) is
//!       dead-lettered at once with reason `MaxDeliveryCountExceeded` and description
//!       `Message could not be consumed after {n} delivery attempts.`.
//!     - **Rejected** dead-letters, with `DeadLetterReason` and `DeadLetterErrorDescription`
//!       from the error's info when the receiver sent them (as `com.microsoft:dead-letter`
//!       does, the Python SDK's `dead_letter_message`) and empty otherwise (a bare Rejected,
//!       which the .NET SDK sends without a reason).
//!     - In **receiver-settle-mode second** (the Python SDK's peek-lock: it sends its outcome
//!       unsettled and waits for the service to settle it, `_pyamqp/receiver.py`), the
//!       emulator answers each unsettled disposition with one settled disposition carrying
//!       what it applied: Accepted, Released, Modified, a Rejected *without* error for a
//!       dead-letter (one with an error is a failure to the Python SDK,
//!       `check_disposition_outcome`), or, when the lock was gone, a Rejected with
//!       `com.microsoft:message-lock-lost` (the Python SDK raises `MessageLockLostError`).
//!       fe2o3 echoes the client's own state at once instead; see [`wire`](self#fe2o3).
//!     - A settlement that arrives after the lock expired is lost: it is recorded with
//!       `applied: false` and does nothing. Unsettled deliveries of a link or connection that
//!       goes away stay locked until their locks expire.
//!   - The **dead-letter sub-queue** is itself a peek-lock queue (completable, abandonable,
//!     with its own locks, without a `MaxDeliveryCount`); its messages carry
//!     `DeadLetterReason` and `DeadLetterErrorDescription` as application properties, where
//!     the Python SDK's `dead_letter_reason` and `dead_letter_error_description` read them.
//!   - **Sender links to a topic** (`{topic}`, or a URL with that path, as the Python SDK's
//!     `get_topic_sender` attaches): authorised via `$cbs` for the topic's path (else closed
//!     with `amqp:unauthorized-access`), `amqp:not-found` for an unknown topic. Each message
//!     is published to every subscription (body: the `data` sections concatenated, or an
//!     `amqp-value` string or binary; `message-id` and the string application properties
//!     kept; other bodies are rejected with `amqp:not-implemented`), including each message
//!     of a batch (message format `0x80013700`, the Python SDK's `ServiceBusMessageBatch`),
//!     then accepted, settled at once (the link runs in receiver-settle-mode first: the
//!     Python SDK's sender asks for second but only completes on a settled disposition).
//!   - **`$management`** on `{entity}/$management`, for a subscription or its dead-letter
//!     sub-queue (request-response; request link with that target, reply link with that
//!     source; application property `operation`; answers `statusCode`, `statusDescription`,
//!     `error-condition` on failure, `correlation-id` = the request's `message-id`):
//!     - `com.microsoft:renew-lock`: body `{"lock-tokens": [uuid, ...]}`, answer 200 with
//!       `{"expirations": [timestamp, ...]}` (each lock renewed for another `LockDuration`
//!       from now), or 410 with `error-condition` `com.microsoft:message-lock-lost` when any
//!       token holds no lock (the .NET SDK maps 410 to `MessageLockLost`). Inspect with
//!       [`lock_renewals`](ServiceBusEmulator::lock_renewals).
//!     - `com.microsoft:peek-message`: body `{"from-sequence-number": long,
//!       "message-count": int}`, answer 200 with `{"messages": [{"message": binary}, ...]}`
//!       (each an encoded message, locked ones included, nothing locked by the peek), or 204
//!       when there is none (the Python SDK's `peek_op` takes 204 as empty).
//!     - `com.microsoft:update-disposition` (the Python SDK's fallback when a settlement on
//!       the receiver link is not confirmed): `disposition-status` `completed`, `abandoned`
//!       or `suspended` (dead-letter, with `deadletter-reason` and `deadletter-description`)
//!       for `lock-tokens`; 200, or 410 as above.
//!     - Anything else: 400 with `amqp:not-implemented`; a body that is not a map, or bad
//!       fields: 400 with `amqp:decode-error`.
//!
//! Topics fan messages out to every subscription, assigning sequence numbers from 1 per topic.
//! Faults can be injected ([`drop_connections`](ServiceBusEmulator::drop_connections),
//! [`detach_links_with_error`](ServiceBusEmulator::detach_links_with_error),
//! [`reject_next_put_token`](ServiceBusEmulator::reject_next_put_token),
//! [`leave_put_tokens_unanswered`](ServiceBusEmulator::leave_put_tokens_unanswered),
//! [`expire_locks`](ServiceBusEmulator::expire_locks),
//! [`fail_next_management`](ServiceBusEmulator::fail_next_management)), and what happened
//! inspected ([`settlements`](ServiceBusEmulator::settlements),
//! [`dead_letter_settlements`](ServiceBusEmulator::dead_letter_settlements),
//! [`lock_renewals`](ServiceBusEmulator::lock_renewals),
//! [`cbs_requests`](ServiceBusEmulator::cbs_requests), [`pending`](ServiceBusEmulator::pending),
//! [`locked`](ServiceBusEmulator::locked), [`dead_letters`](ServiceBusEmulator::dead_letters)).
//!
//! # fe2o3
//!
//! The AMQP engine is `fe2o3-amqp` 0.14's acceptor. What it cannot be told to do is made up for
//! in the socket relay between the client and the engine (the crate's private `wire` module),
//! which rewrites a few frames:
//!
//! - `Sender` makes its own 4-byte delivery tags: the relay puts the lock token there.
//! - Its encoder leaves out a header's trailing default fields, so a first delivery had no
//!   `delivery-count` (the Python SDK shows `None`): the relay writes the header out whole
//!   (also inside peeked messages).
//! - In receiver-settle-mode second its session settles the client's disposition at once with
//!   the client's own state (`LinkRelay::on_incoming_disposition` in `link/mod.rs`,
//!   `Session::on_incoming_disposition` in `session/mod.rs`), before the emulator applied it:
//!   the relay drops that echo and sends the emulator's own settled disposition.
//! - It closes a connection with an error that lacks `description` and `info`, which makes the
//!   Python SDK fail with an `IndexError` (`Connection._incoming_close`): the relay writes all
//!   three fields.
//! - The client's `max-frame-size` is lowered by 64 bytes before the engine sees it, so the
//!   longer tag and header still fit.
//!
//! Management responses are sent without waiting for an outcome: the Python SDK's management
//! links never settle them.
//!
//! # Not emulated
//!
//! TLS (`amqps`, port 5671) and AMQP over WebSockets; SASL mechanisms other than ANONYMOUS;
//! queues (only topics and subscriptions), sessions, rules and filters, partitioning,
//! scheduled and deferred messages (Modified with `undeliverable-here` abandons; a deferral
//! by `update-disposition` is answered 400), receive-by-sequence-number, Modified's
//! annotations, duplicate detection, message time-to-live and expiry (`DeadLetteringOnMessageExpiration`), message properties other than `message-id` and string application
//! properties (content type, subject, correlation id... are dropped on the way in),
//! non-string application properties, `$management` on a topic (schedule, cancel), the
//! `x-opt-dead-letter-source` annotation, transactions, idle timeouts and `AutoDeleteOnIdle`;
//! the management API's `GET` and listing, and the `Retry-After` of a throttled management
//! call. A message's delivery count goes on in the dead-letter sub-queue from where it was.
//!
//! # The program
//!
//! `keyvault-invalidator-servicebus-emulator --topic NAME [--subscription NAME]... [--topic
//! ...] [--max-delivery-count N] [--lock-duration SECONDS] [--port PORT] [--management-port
//! PORT] [--policy-key KEY]` serves until SIGINT or SIGTERM, then exits 0; a subscription
//! belongs to the last `--topic` before it, and the settings apply to every subscription. Its
//! first line on standard output is one JSON object: `connection_string`, `amqp_url`,
//! `amqp_port`, `management_endpoint`, `policy_name`, `max_delivery_count`,
//! `lock_duration_seconds` and `topics` (`name`, `subscriptions`). Bad arguments: an error
//! naming the argument on standard error, exit status 2.
//!
//! ```
//! use keyvault_invalidator_servicebus_emulator::ServiceBusEmulator;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
//! let emulator = ServiceBusEmulator::start().await?;
//! emulator.create_topic("keyvault-events");
//! assert!(emulator.management_endpoint().starts_with("http://127.0.0.1:"));
//! assert_eq!(emulator.subscriptions("keyvault-events"), Vec::<String>::new());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod amqp;
mod cbs;
mod management;
mod node;
mod sas;
mod state;
mod wire;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;
use tokio::task::{AbortHandle, JoinHandle};

pub use cbs::CbsRequest;
pub use management::{ManagementFault, ManagementRequest};
pub use sas::{verify as verify_sas, SasRejection};
pub use state::{
    DeadLetteredMessage, LockRenewal, Settlement, StoredMessage, SubQueue, SubscriptionSettings,
    DEAD_LETTER_ERROR_DESCRIPTION, DEAD_LETTER_REASON, MAX_DELIVERY_COUNT_EXCEEDED,
};

use state::Entities;

/// The policy every emulator knows.
pub const POLICY_NAME: &str = "RootManageSharedAccessKey";

/// A running emulator. Dropping it stops it.
///
/// **Threads**: its AMQP endpoint runs on an OS thread of its own, named
/// `servicebus-emulator-amqp`, with a single-threaded tokio runtime (one per emulator, ended
/// when the emulator is dropped), so that `fe2o3-amqp`'s session engines cannot race their own
/// bookkeeping; the management endpoint runs on the caller's runtime.
pub struct ServiceBusEmulator {
    shared: Arc<Shared>,
    management: JoinHandle<()>,
    _amqp_engine: amqp::EngineThread,
}

pub(crate) struct Shared {
    pub(crate) management_endpoint: String,
    amqp_port: u16,
    policy_key: Mutex<String>,
    bearer_token: String,
    /// Conditions `detach_links_with_error` sends to every entity link.
    link_faults: broadcast::Sender<String>,
    state: Mutex<State>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) entities: Entities,
    pub(crate) management_requests: Vec<ManagementRequest>,
    pub(crate) management_faults: VecDeque<ManagementFault>,
    pub(crate) cbs_requests: Vec<CbsRequest>,
    pub(crate) reject_next_put_token: bool,
    /// How many of the next `put-token` requests to leave unanswered.
    pub(crate) put_tokens_to_leave_unanswered: usize,
    /// How many were left unanswered so far.
    pub(crate) unanswered_put_tokens: usize,
    /// Each AMQP connection's socket relay and engine task.
    pub(crate) connections: Vec<(AbortHandle, AbortHandle)>,
}

impl State {
    /// Whether this `put-token` is one to leave unanswered; counts it if so.
    pub(crate) fn take_put_token_to_leave_unanswered(&mut self) -> bool {
        if self.put_tokens_to_leave_unanswered == 0 {
            return false;
        }
        self.put_tokens_to_leave_unanswered -= 1;
        self.unanswered_put_tokens += 1;
        true
    }
}

impl Shared {
    pub(crate) fn policy_key(&self) -> String {
        self.policy_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn authorized(&self, header: Option<&str>, entity: &str) -> bool {
        match header {
            Some(token) if token.starts_with("SharedAccessSignature ") => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                sas::verify(token, entity, now, |name| {
                    (name == POLICY_NAME).then(|| self.policy_key())
                })
                .is_ok()
            }
            Some(header) => header
                .strip_prefix("Bearer ")
                .is_some_and(|token| token == self.bearer_token),
            None => false,
        }
    }
}

/// How to start an emulator: [`ServiceBusEmulator::start_with`]. The default is what
/// [`ServiceBusEmulator::start`] does: random ports on 127.0.0.1 and a random policy key.
#[derive(Clone, Default)]
pub struct EmulatorOptions {
    /// The AMQP endpoint's port on 127.0.0.1 (`None`: a random free port).
    pub amqp_port: Option<u16>,
    /// The management endpoint's port on 127.0.0.1 (`None`: a random free port).
    pub management_port: Option<u16>,
    /// The [`POLICY_NAME`] policy's key (`None`: a fresh random key).
    pub policy_key: Option<String>,
}

impl fmt::Debug for EmulatorOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatorOptions")
            .field("amqp_port", &self.amqp_port)
            .field("management_port", &self.management_port)
            .field(
                "policy_key",
                &self.policy_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl ServiceBusEmulator {
    /// Starts the emulator's endpoints on loopback, with a fresh random policy key.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(EmulatorOptions::default()).await
    }

    /// Starts the emulator's endpoints on loopback as `options` say.
    pub async fn start_with(options: EmulatorOptions) -> std::io::Result<Self> {
        let listener = match options.management_port {
            None => management::bind().await?,
            Some(port) => {
                tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)).await?
            }
        };
        let port = listener.local_addr()?.port();
        let amqp_listener = amqp::bind(options.amqp_port.unwrap_or(0))?;
        let amqp_port = amqp_listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            management_endpoint: format!("http://127.0.0.1:{port}/"),
            amqp_port,
            policy_key: Mutex::new(options.policy_key.unwrap_or_else(random_key)),
            bearer_token: format!("emulator-token-{}", random_key()),
            link_faults: broadcast::channel(16).0,
            state: Mutex::new(State::default()),
        });
        let management = tokio::spawn(management::serve(listener, shared.clone()));
        let amqp_engine = amqp::spawn_engine(amqp_listener, shared.clone())?;
        Ok(ServiceBusEmulator {
            shared,
            management,
            _amqp_engine: amqp_engine,
        })
    }

    /// The AMQP endpoint's port on 127.0.0.1.
    pub fn amqp_port(&self) -> u16 {
        self.shared.amqp_port
    }

    /// The AMQP endpoint, `amqp://127.0.0.1:{port}` (plain AMQP, SASL ANONYMOUS).
    pub fn amqp_url(&self) -> String {
        format!("amqp://127.0.0.1:{}", self.shared.amqp_port)
    }

    /// A connection string for the AMQP endpoint with the [`POLICY_NAME`] policy, in the
    /// Service Bus emulator's form: `Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=..;
    /// SharedAccessKey=..;UseDevelopmentEmulator=true[;EntityPath={entity_path}]`.
    pub fn connection_string(&self, entity_path: Option<&str>) -> String {
        let mut connection_string = format!(
            "Endpoint=sb://127.0.0.1:{};SharedAccessKeyName={POLICY_NAME};SharedAccessKey={};UseDevelopmentEmulator=true",
            self.shared.amqp_port,
            self.shared.policy_key()
        );
        if let Some(entity_path) = entity_path {
            connection_string.push_str(";EntityPath=");
            connection_string.push_str(entity_path);
        }
        connection_string
    }

    /// Creates a topic (idempotent).
    pub fn create_topic(&self, topic: &str) {
        self.shared
            .lock()
            .entities
            .topics
            .entry(topic.to_ascii_lowercase())
            .or_default();
    }

    /// Creates a subscription directly, as the management endpoint's `PUT` would. Whether it
    /// was created (`false`: no such topic, or it exists already).
    pub fn create_subscription(
        &self,
        topic: &str,
        name: &str,
        settings: SubscriptionSettings,
    ) -> bool {
        self.shared
            .lock()
            .entities
            .create_subscription(topic, name, settings)
            == state::Creation::New
    }

    /// The management endpoint's base URL, `http://127.0.0.1:{port}/`.
    pub fn management_endpoint(&self) -> &str {
        &self.shared.management_endpoint
    }

    /// The key of the [`POLICY_NAME`] policy.
    pub fn policy_key(&self) -> String {
        self.shared.policy_key()
    }

    /// Regenerates the [`POLICY_NAME`] policy's key, as an operator rotating it would: tokens
    /// signed with the old key are refused from now on (links already authorised keep working
    /// until their token expires, as on the service). Returns the new key.
    pub fn rotate_policy_key(&self) -> String {
        let key = random_key();
        *self
            .shared
            .policy_key
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = key.clone();
        key
    }

    /// The bearer token the emulator accepts (give it to a fake credential).
    pub fn bearer_token(&self) -> &str {
        &self.shared.bearer_token
    }

    /// The topics, sorted (lower-cased: topic names are case-insensitive).
    pub fn topics(&self) -> Vec<String> {
        self.shared.lock().entities.topics.keys().cloned().collect()
    }

    /// The names of the topic's subscriptions, sorted.
    pub fn subscriptions(&self, topic: &str) -> Vec<String> {
        self.shared
            .lock()
            .entities
            .topics
            .get(&topic.to_ascii_lowercase())
            .map(|t| t.subscriptions.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// How a subscription was created.
    pub fn subscription_settings(&self, topic: &str, name: &str) -> Option<SubscriptionSettings> {
        self.shared
            .lock()
            .entities
            .subscription(topic, name)
            .map(|s| s.settings.clone())
    }

    /// Publishes to a topic: every subscription gets a copy (no message id). Whether the
    /// topic exists.
    pub fn publish(&self, topic: &str, body: &[u8], properties: BTreeMap<String, String>) -> bool {
        self.publish_message(topic, body, properties, None)
    }

    /// Publishes to a topic as an Event Grid subscription with a Service Bus topic endpoint
    /// does: the body as given (one event, JSON), a fresh message id and Event Grid's
    /// application properties: `aeg-subscription-name`, `aeg-delivery-count` (`"0"`),
    /// `aeg-event-type` (`"Notification"`, as for every event rather than a handshake),
    /// `aeg-metadata-version` (`"1"`), `aeg-data-version` (`"1"`) and
    /// `aeg-output-event-id` (a fresh UUID). Whether the topic exists.
    pub fn publish_as_event_grid(&self, topic: &str, body: &[u8]) -> bool {
        let properties = BTreeMap::from([
            (
                "aeg-subscription-name".to_owned(),
                format!("{}-EMULATOR", topic.to_ascii_uppercase()),
            ),
            ("aeg-delivery-count".to_owned(), "0".to_owned()),
            // Event Grid marks every event it delivers (as opposed to its handshakes) this way.
            ("aeg-event-type".to_owned(), "Notification".to_owned()),
            ("aeg-metadata-version".to_owned(), "1".to_owned()),
            ("aeg-data-version".to_owned(), "1".to_owned()),
            (
                "aeg-output-event-id".to_owned(),
                uuid::Uuid::new_v4().to_string(),
            ),
        ]);
        let message_id = uuid::Uuid::new_v4().to_string();
        self.publish_message(topic, body, properties, Some(message_id))
    }

    /// Publishes with an explicit message id (`properties.message-id`). Whether the topic
    /// exists.
    pub fn publish_message(
        &self,
        topic: &str,
        body: &[u8],
        properties: BTreeMap<String, String>,
        message_id: Option<String>,
    ) -> bool {
        self.shared.lock().entities.publish(
            topic,
            StoredMessage {
                body: body.to_vec(),
                properties,
                delivery_count: 0,
                message_id,
                sequence_number: 0,
                enqueued_time: SystemTime::now(),
            },
        )
    }

    /// Messages queued in a subscription, not counting locked ones (see
    /// [`locked`](Self::locked)).
    pub fn pending(&self, topic: &str, subscription: &str) -> Option<usize> {
        self.shared
            .lock()
            .entities
            .subscription(topic, subscription)
            .map(|s| s.active.messages.len())
    }

    /// Messages handed to receiver links and not settled: locked (peek-lock, expired locks
    /// not counted), or being transferred (a link can hold one while it waits for link credit;
    /// its lock starts with the transfer).
    pub fn locked(&self, topic: &str, subscription: &str) -> usize {
        let mut state = self.shared.lock();
        match state.entities.subscription_mut(topic, subscription) {
            Some(s) => {
                s.expire_locks(std::time::Instant::now());
                s.active.locked.len() + s.active.reserved.len()
            }
            None => 0,
        }
    }

    /// Every settlement receivers sent on the subscription, in order (to check that no
    /// delivery was settled twice, or that a settlement came too late).
    pub fn settlements(&self, topic: &str, subscription: &str) -> Vec<Settlement> {
        self.shared
            .lock()
            .entities
            .subscription(topic, subscription)
            .map(|s| s.active.settlements.clone())
            .unwrap_or_default()
    }

    /// Every settlement receivers sent on the subscription's dead-letter sub-queue, in order.
    pub fn dead_letter_settlements(&self, topic: &str, subscription: &str) -> Vec<Settlement> {
        self.shared
            .lock()
            .entities
            .subscription(topic, subscription)
            .map(|s| s.dead_letter.settlements.clone())
            .unwrap_or_default()
    }

    /// Every lock token `com.microsoft:renew-lock` requests named on the subscription's
    /// `$management` node, in order, with the new expiry (`None`: the lock was lost, answered
    /// 410). Renewals on the dead-letter sub-queue are not included.
    pub fn lock_renewals(&self, topic: &str, subscription: &str) -> Vec<LockRenewal> {
        self.shared
            .lock()
            .entities
            .subscription(topic, subscription)
            .map(|s| s.active.lock_renewals.clone())
            .unwrap_or_default()
    }

    /// Every `put-token` request the `$cbs` node answered, in order.
    pub fn cbs_requests(&self) -> Vec<CbsRequest> {
        self.shared.lock().cbs_requests.clone()
    }

    /// Answers the next `put-token` with 401, even if its token is valid.
    pub fn reject_next_put_token(&self) {
        self.shared.lock().reject_next_put_token = true;
    }

    /// Leaves the next `count` `put-token` requests unanswered: no outcome, no response, as when
    /// the service stops answering or an outcome is lost on the way. A client that does not
    /// bound its wait hangs. They are not in [`cbs_requests`](Self::cbs_requests).
    pub fn leave_put_tokens_unanswered(&self, count: usize) {
        self.shared.lock().put_tokens_to_leave_unanswered = count;
    }

    /// How many `put-token` requests were left unanswered so far.
    pub fn unanswered_put_tokens(&self) -> usize {
        self.shared.lock().unanswered_put_tokens
    }

    /// Drops every AMQP connection abruptly: the sockets close without an AMQP `close`, as
    /// when the network or a gateway fails. Unsettled deliveries stay locked until their
    /// locks expire.
    pub fn drop_connections(&self) {
        for (relay, connection) in std::mem::take(&mut self.shared.lock().connections) {
            relay.abort();
            connection.abort();
        }
    }

    /// Detaches (closes) every receiver link on a subscription with the error `condition`,
    /// e.g. `com.microsoft:server-busy` or `amqp:link:detach-forced`. Connections, sessions
    /// and `$cbs` links stay.
    pub fn detach_links_with_error(&self, condition: &str) {
        let _ = self.shared.link_faults.send(condition.to_owned());
    }

    /// The subscription's dead-letter sub-queue, oldest first.
    pub fn dead_letters(&self, topic: &str, subscription: &str) -> Vec<DeadLetteredMessage> {
        self.shared
            .lock()
            .entities
            .subscription(topic, subscription)
            .map(|s| s.dead_letters())
            .unwrap_or_default()
    }

    /// Expires every lock of the subscription now: their messages go back to the queue, and a
    /// receiver's later settlement of them fails, as when a lock runs out on the service.
    pub fn expire_locks(&self, topic: &str, subscription: &str) {
        if let Some(subscription) = self
            .shared
            .lock()
            .entities
            .subscription_mut(topic, subscription)
        {
            subscription.expire_all_locks();
        }
    }

    /// Every management request so far.
    pub fn management_requests(&self) -> Vec<ManagementRequest> {
        self.shared.lock().management_requests.clone()
    }

    /// Answers the next authorised management request with `status` (503, 429...), after any
    /// faults queued before it.
    pub fn fail_next_management(&self, status: u16) {
        self.fail_management(ManagementFault::status(status));
    }

    /// Queues `fault`: authorised management requests (`PUT` or `DELETE`) take the queued
    /// faults in order, one each, instead of being carried out; they are recorded in
    /// [`management_requests`](Self::management_requests) with the fault's status. A status
    /// that is not a valid HTTP status is answered 500.
    ///
    /// ```
    /// use keyvault_invalidator_servicebus_emulator::{ManagementFault, ServiceBusEmulator};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
    /// let emulator = ServiceBusEmulator::start().await?;
    /// emulator.fail_management(ManagementFault::status(429).retry_after("2"));
    /// emulator.fail_next_management(503);
    /// assert_eq!(emulator.pending_management_faults(), 2);
    /// # Ok(()) }
    /// ```
    pub fn fail_management(&self, fault: ManagementFault) {
        self.shared.lock().management_faults.push_back(fault);
    }

    /// How many queued management faults no request has taken yet.
    pub fn pending_management_faults(&self) -> usize {
        self.shared.lock().management_faults.len()
    }

    /// How many management requests with `method` (`"PUT"`, `"DELETE"`) were answered so
    /// far, faults included.
    pub fn management_request_count(&self, method: &str) -> usize {
        self.shared
            .lock()
            .management_requests
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method))
            .count()
    }

    /// Deletes a subscription behind its receivers' backs, as `AutoDeleteOnIdle` does on the
    /// service: its messages go with it, receiver links attached to it are closed with
    /// `amqp:not-found` when they next look for a message, and so are later attaches. Not a
    /// management request (not recorded). Whether it existed.
    pub fn delete_subscription(&self, topic: &str, name: &str) -> bool {
        self.shared.lock().entities.delete_subscription(topic, name)
    }
}

impl Drop for ServiceBusEmulator {
    fn drop(&mut self) {
        self.management.abort();
        self.drop_connections();
    }
}

impl fmt::Debug for ServiceBusEmulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBusEmulator")
            .field("management_endpoint", &self.shared.management_endpoint)
            .field("amqp_port", &self.shared.amqp_port)
            .finish_non_exhaustive()
    }
}

fn random_key() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!(
        "{:016x}{:016x}",
        hasher.finish(),
        hasher.finish().rotate_left(17)
    )
}
