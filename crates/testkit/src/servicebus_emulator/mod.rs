//! An in-process Azure Service Bus emulator, for tests that cannot reach Azure.
//!
//! So far it emulates the **management endpoint** (plain HTTP on loopback): Atom `PUT` of a
//! subscription (201 created, 409 exists, 404 no such topic) and `DELETE` (200, 404), with the
//! `Authorization` header checked for real: a shared access signature must name a known policy,
//! match its key, not be expired and cover the entity; a bearer token must be the emulator's
//! test token. Anything else is 401. Topics fan messages out to every subscription.
//!
//! Not emulated yet: the AMQP 1.0 endpoint (receivers, `$cbs`, peek-lock). Not emulated at
//! all: rules and filters, sessions, queues, partitioning, the management API's `GET` and
//! listing, the `Retry-After` of a throttled management call.
//!
//! ```
//! use keyvault_invalidator_testkit::servicebus_emulator::ServiceBusEmulator;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
//! let emulator = ServiceBusEmulator::start().await?;
//! emulator.create_topic("keyvault-events");
//! assert!(emulator.management_endpoint().starts_with("http://127.0.0.1:"));
//! assert_eq!(emulator.subscriptions("keyvault-events"), Vec::<String>::new());
//! # Ok(()) }
//! ```

mod management;
mod sas;
mod state;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::StatusCode;
use tokio::task::JoinHandle;

pub use management::ManagementRequest;
pub use sas::{verify as verify_sas, SasRejection};
pub use state::{DeadLetteredMessage, StoredMessage, SubscriptionSettings};

use state::Entities;

/// The policy every emulator knows.
pub const POLICY_NAME: &str = "RootManageSharedAccessKey";

/// A running emulator. Dropping it stops it.
pub struct ServiceBusEmulator {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

pub(crate) struct Shared {
    pub(crate) management_endpoint: String,
    policy_key: String,
    bearer_token: String,
    state: Mutex<State>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) entities: Entities,
    pub(crate) management_requests: Vec<ManagementRequest>,
    pub(crate) management_faults: VecDeque<StatusCode>,
}

impl Shared {
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
                    (name == POLICY_NAME).then(|| self.policy_key.clone())
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

impl ServiceBusEmulator {
    /// Starts the emulator's endpoints on loopback, with a fresh random policy key.
    pub async fn start() -> std::io::Result<Self> {
        let listener = management::bind().await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            management_endpoint: format!("http://127.0.0.1:{port}/"),
            policy_key: random_key(),
            bearer_token: format!("emulator-token-{}", random_key()),
            state: Mutex::new(State::default()),
        });
        let tasks = vec![tokio::spawn(management::serve(listener, shared.clone()))];
        Ok(ServiceBusEmulator { shared, tasks })
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

    /// The management endpoint's base URL, `http://127.0.0.1:{port}/`.
    pub fn management_endpoint(&self) -> &str {
        &self.shared.management_endpoint
    }

    /// The key of the [`POLICY_NAME`] policy.
    pub fn policy_key(&self) -> &str {
        &self.shared.policy_key
    }

    /// The bearer token the emulator accepts (give it to a fake credential).
    pub fn bearer_token(&self) -> &str {
        &self.shared.bearer_token
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

    /// Publishes to a topic: every subscription gets a copy. Whether the topic exists.
    pub fn publish(&self, topic: &str, body: &[u8], properties: BTreeMap<String, String>) -> bool {
        self.shared.lock().entities.publish(
            topic,
            StoredMessage {
                body: body.to_vec(),
                properties,
                delivery_count: 0,
            },
        )
    }

    /// Messages waiting in a subscription.
    pub fn pending(&self, topic: &str, subscription: &str) -> Option<usize> {
        self.shared
            .lock()
            .entities
            .subscription(topic, subscription)
            .map(|s| s.messages.len())
    }

    /// The subscription's dead-letter sub-queue, oldest first.
    pub fn dead_letters(&self, topic: &str, subscription: &str) -> Vec<DeadLetteredMessage> {
        self.shared
            .lock()
            .entities
            .subscription(topic, subscription)
            .map(|s| s.dead_letters.clone())
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

    /// Answers the next authorised management request with `status` (503, 429...).
    pub fn fail_next_management(&self, status: u16) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.shared.lock().management_faults.push_back(status);
    }
}

impl Drop for ServiceBusEmulator {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl fmt::Debug for ServiceBusEmulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBusEmulator")
            .field("management_endpoint", &self.shared.management_endpoint)
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
