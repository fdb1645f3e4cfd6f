//! [`ServiceBusEmulator`], the handle a test holds: starting the endpoints, creating entities,
//! publishing, scripting faults, and reading back what clients did.
//!
//! Separate from the endpoints it starts (`management`, `amqp`) because this is the part a test
//! author reads; how a request is served is theirs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::namespace::{Namespace, NamespaceState};
use crate::{
    amqp, management, CbsRequest, DeadLetteredMessage, ManagementFault, ManagementRequest,
    RecordedLockRenewal, RecordedSettlement, StoredMessage, SubscriptionSettings, POLICY_NAME,
};

/// A running emulator. Dropping it stops it.
///
/// **Threads**: its AMQP endpoint runs on an OS thread of its own, named
/// `servicebus-emulator-amqp`, with a single-threaded tokio runtime (one per emulator, ended
/// when the emulator is dropped), so that `fe2o3-amqp`'s session engines cannot race their own
/// bookkeeping; the management endpoint runs on the caller's runtime.
///
/// A test starts one, creates the topic and subscriptions it needs, points the client under
/// test at [`connection_string`](Self::connection_string) (or
/// [`management_endpoint`](Self::management_endpoint)), publishes, and reads back what the
/// client did: [`settlements`](Self::settlements), [`dead_letters`](Self::dead_letters),
/// [`management_requests`](Self::management_requests).
///
/// ```
/// use std::collections::BTreeMap;
///
/// use keyvault_invalidator_servicebus_emulator::{ServiceBusEmulator, SubscriptionSettings};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
/// let emulator = ServiceBusEmulator::start().await?;
/// emulator.create_topic("keyvault-events");
/// assert!(emulator.create_subscription("keyvault-events", "app-1", SubscriptionSettings::default()));
///
/// // Every subscription of the topic gets a copy; nothing is locked until a receiver takes it.
/// assert!(emulator.publish("keyvault-events", br#"{"id":"1"}"#, BTreeMap::new()));
/// assert_eq!(emulator.pending("keyvault-events", "app-1"), Some(1));
/// assert_eq!(emulator.locked("keyvault-events", "app-1"), 0);
///
/// // What a client under test is given.
/// let connection_string = emulator.connection_string(Some("keyvault-events"));
/// assert!(connection_string.ends_with(";UseDevelopmentEmulator=true;EntityPath=keyvault-events"));
/// # Ok(()) }
/// ```
pub struct ServiceBusEmulator {
    shared: Arc<Namespace>,
    management: JoinHandle<()>,
    _amqp_engine: amqp::EngineThread,
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
        let shared = Arc::new(Namespace {
            management_endpoint: format!("http://127.0.0.1:{port}/"),
            amqp_port,
            policy_key: Mutex::new(options.policy_key.unwrap_or_else(random_key)),
            bearer_token: format!("emulator-token-{}", random_key()),
            link_faults: broadcast::channel(16).0,
            state: Mutex::new(NamespaceState::default()),
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
            == crate::entities::Creation::New
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
    pub fn settlements(&self, topic: &str, subscription: &str) -> Vec<RecordedSettlement> {
        self.shared
            .lock()
            .entities
            .subscription(topic, subscription)
            .map(|s| s.active.settlements.clone())
            .unwrap_or_default()
    }

    /// Every settlement receivers sent on the subscription's dead-letter sub-queue, in order.
    pub fn dead_letter_settlements(
        &self,
        topic: &str,
        subscription: &str,
    ) -> Vec<RecordedSettlement> {
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
    pub fn lock_renewals(&self, topic: &str, subscription: &str) -> Vec<RecordedLockRenewal> {
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
