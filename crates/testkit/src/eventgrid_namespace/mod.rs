//! A stand-in of an Event Grid namespace topic's data plane (`:publish`, `:receive`,
//! `:acknowledge`, `:release`, `:reject`, `:renewLock`), for testing a pull receiver without
//! Azure (feature `eventgrid-namespace`).
//!
//! An HTTPS server on `127.0.0.1` (TLS because azure_core's bearer-token policy refuses
//! `http://`), reached through [`NamespaceStandIn::client_options`] under the host
//! `standin-ns.local-1.eventgrid.azure.net`. What it does, and where that is documented:
//!
//! - **Operations and shapes** (REST spec `EventGrid.json`, api-version 2024-06-01, the only
//!   one accepted): `POST /topics/{topic}:publish` takes one CloudEvent
//!   (`application/cloudevents+json`) or a batch (`application/cloudevents-batch+json`), each
//!   with `id`, `source`, `type` and `specversion` "1.0" (CloudEvents 1.0, required
//!   attributes), and adds it to every event subscription of the topic. `:receive`
//!   (`maxEvents` 1..=100, default 1; `maxWaitTime` 10..=120 s, default 60) answers
//!   `{"value":[{"brokerProperties":{"lockToken","deliveryCount"},"event":{..}}]}`; the settling
//!   operations take `{"lockTokens":[..]}` (1 to 100) and answer
//!   `{"succeededLockTokens":[..],"failedLockTokens":[{"lockToken","error":{"code","message"}}]}`.
//!   Errors answer `{"error":{"code","message"}}`.
//! - **Long poll** (Learn, "Pull delivery with HTTP"): a `:receive` answers as soon as an event
//!   is ready, or empty after `maxWaitTime`; [`NamespaceStandInBuilder::wait_cap`] shortens the
//!   wait for tests.
//! - **Locks and delivery counts** (Learn, "Pull delivery", `receiveLockDurationInSeconds`,
//!   `maxDeliveryCount`): a received event is locked for the subscription's lock duration and
//!   its delivery count rises by one at each receive. A lock that runs out gives the event
//!   back; `:release` gives it back after `releaseDelayInSeconds` (0, 10, 60, 600 or 3600 only);
//!   an event given back after `maxDeliveryCount` deliveries is dead-lettered
//!   (`MaxDeliveryCountExceeded`). `:acknowledge` removes it; `:reject` dead-letters it
//!   (`Rejected`; the stand-in keeps a dead-letter destination, readable with
//!   [`dead_letters`](NamespaceStandIn::dead_letters)). `:renewLock` restarts a lock's duration,
//!   within an hour of the first receive.
//! - **Lock tokens**: a token not locked now fails with `TokenLost` if it was issued (expired,
//!   or settled already), `BadToken` if it never was.
//! - **Authentication** (Learn, "Authenticate publishing/receiving clients"):
//!   `Authorization: SharedAccessKey <key>` with [`access_key`](NamespaceStandIn::access_key),
//!   or `Authorization: Bearer <token>` from [`credential`](NamespaceStandIn::credential);
//!   anything else is 401.
//! - **Faults** ([`Fault`], per [`Operation`], spent by authenticated requests): a status
//!   (500, 503...), 429 with `Retry-After`, a slow answer, a dropped connection.
//!   [`calls`](NamespaceStandIn::calls) counts every request per operation.
//!
//! ```
//! use keyvault_invalidator_testkit::eventgrid_namespace::{NamespaceStandIn, Operation};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
//! let standin = NamespaceStandIn::start().await?;
//! standin.create_subscription("keyvault-events", "instance-1");
//! standin
//!     .publish("keyvault-events", [serde_json::json!({
//!         "id": "e-1", "source": "/vaults/kv", "type": "Microsoft.KeyVault.SecretNewVersionCreated",
//!         "specversion": "1.0", "data": {}
//!     })])
//!     .expect("a valid CloudEvent");
//! assert_eq!(standin.ready_count("keyvault-events", "instance-1"), 1);
//! assert_eq!(standin.calls(Operation::Receive), 0);
//! # Ok(()) }
//! ```

mod queue;
mod server;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::http::{ClientOptions, HttpClient};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::keyvault_standin::FakeTokenCredential;
use crate::loopback::{client_options, serve, LoopbackTls};
use queue::Subscription;
use server::{cloud_event_problem, handle, NamespaceState, Shared};

/// The namespace host the stand-in serves.
pub const STANDIN_HOST: &str = "standin-ns.local-1.eventgrid.azure.net";
/// The only api-version the stand-in accepts.
pub const API_VERSION: &str = "2024-06-01";

/// A data-plane operation, for faults and call counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// `POST /topics/{topic}:publish`.
    Publish,
    /// `:receive`.
    Receive,
    /// `:acknowledge`.
    Acknowledge,
    /// `:release`.
    Release,
    /// `:reject`.
    Reject,
    /// `:renewLock`.
    RenewLock,
}

/// A scripted failure of an operation's next authenticated requests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// This status, with an error body (500, 503...).
    Status(u16),
    /// 429 with `Retry-After: {retry_after_secs}`.
    Throttled {
        /// The seconds announced.
        retry_after_secs: u64,
    },
    /// The normal answer, after this long.
    Delay(Duration),
    /// The request is carried out, then the connection is closed without an answer: for
    /// `:receive`, the events it took stay locked, as when an answer is lost on its way.
    Disconnect,
}

/// Per-subscription settings (the subscription's `receiveLockDurationInSeconds` and
/// `maxDeliveryCount`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionSettings {
    /// How long a receive locks an event (Azure: 60..=300 s, default 60; any here).
    pub lock_duration: Duration,
    /// Deliveries before an event given back is dead-lettered (Azure default 10).
    pub max_delivery_count: u32,
}

impl Default for SubscriptionSettings {
    fn default() -> Self {
        SubscriptionSettings {
            lock_duration: Duration::from_secs(60),
            max_delivery_count: 10,
        }
    }
}

/// An event in the dead-letter destination.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetteredEvent {
    /// The CloudEvent as published.
    pub event: Value,
    /// How many times it was delivered.
    pub delivery_count: u32,
    /// `Rejected` or `MaxDeliveryCountExceeded`.
    pub reason: String,
}

/// Builds a [`NamespaceStandIn`].
#[derive(Debug, Clone)]
pub struct NamespaceStandInBuilder {
    settings: SubscriptionSettings,
    wait_cap: Duration,
}

impl NamespaceStandInBuilder {
    /// The lock duration of the subscriptions created afterwards (default 60 s).
    pub fn lock_duration(mut self, lock: Duration) -> Self {
        self.settings.lock_duration = lock;
        self
    }

    /// The `maxDeliveryCount` of the subscriptions created afterwards (default 10).
    pub fn max_delivery_count(mut self, count: u32) -> Self {
        self.settings.max_delivery_count = count;
        self
    }

    /// The longest a `:receive` waits, whatever its `maxWaitTime` (default: no cap, 120 s).
    pub fn wait_cap(mut self, cap: Duration) -> Self {
        self.wait_cap = cap;
        self
    }

    /// Starts the server.
    pub async fn start(self) -> io::Result<NamespaceStandIn> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let tls = LoopbackTls::new(STANDIN_HOST, address)?;
        let port = address.port();
        let shared = Arc::new(Shared {
            state: Mutex::new(NamespaceState::default()),
            arrivals: Notify::new(),
            access_key: format!("standin-access-key-{port}"),
            token: format!("standin-eventgrid-token-{port}"),
            wait_cap: self.wait_cap,
        });
        let context = shared.clone();
        let server = tokio::spawn(serve(listener, tls.acceptor, move |request| {
            let context = context.clone();
            async move { handle(&context, request).await }
        }));
        Ok(NamespaceStandIn {
            credential: Arc::new(FakeTokenCredential::new(shared.token.clone())),
            shared,
            settings: self.settings,
            endpoint: format!("https://{STANDIN_HOST}:{port}"),
            transport: Arc::new(tls.client),
            server,
        })
    }
}

/// A local stand-in of an Event Grid namespace's data plane. Dropping it stops the server.
pub struct NamespaceStandIn {
    shared: Arc<Shared>,
    settings: SubscriptionSettings,
    endpoint: String,
    transport: Arc<dyn HttpClient>,
    credential: Arc<FakeTokenCredential>,
    server: JoinHandle<()>,
}

impl NamespaceStandIn {
    /// A builder: lock duration, max delivery count, wait cap.
    pub fn builder() -> NamespaceStandInBuilder {
        NamespaceStandInBuilder {
            settings: SubscriptionSettings::default(),
            wait_cap: Duration::from_secs(120),
        }
    }

    /// Starts a stand-in with the defaults.
    pub async fn start() -> io::Result<Self> {
        Self::builder().start().await
    }

    /// Creates the event subscription `subscription` (queue mode) of `topic`, creating the
    /// topic if need be, with the builder's settings; an existing one is left as it is.
    pub fn create_subscription(&self, topic: &str, subscription: &str) {
        self.create_subscription_with(topic, subscription, self.settings);
    }

    /// Creates an event subscription with settings of its own.
    pub fn create_subscription_with(
        &self,
        topic: &str,
        subscription: &str,
        settings: SubscriptionSettings,
    ) {
        self.shared
            .lock()
            .topics
            .entry(topic.to_owned())
            .or_default()
            .entry(subscription.to_owned())
            .or_insert_with(|| Subscription::new(settings));
    }

    /// `https://standin-ns.local-1.eventgrid.azure.net:{port}`, reachable only through
    /// [`client_options`](Self::client_options).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The HTTP client that reaches the stand-in (trusting its certificate only, the host on
    /// loopback, no proxy).
    pub fn transport(&self) -> Arc<dyn HttpClient> {
        self.transport.clone()
    }

    /// Client options with [`transport`](Self::transport) and no SDK retries.
    pub fn client_options(&self) -> ClientOptions {
        client_options(self.transport())
    }

    /// The access key the stand-in accepts.
    pub fn access_key(&self) -> &str {
        &self.shared.access_key
    }

    /// A credential whose token the stand-in accepts.
    pub fn credential(&self) -> Arc<FakeTokenCredential> {
        self.credential.clone()
    }

    /// Publishes CloudEvents to `topic` (as `:publish` does, without HTTP); an event without
    /// the required attributes, or an unknown topic, is refused with the service's message.
    pub fn publish(
        &self,
        topic: &str,
        events: impl IntoIterator<Item = Value>,
    ) -> Result<(), String> {
        let events: Vec<Value> = events.into_iter().collect();
        if let Some(problem) = events.iter().find_map(cloud_event_problem) {
            return Err(problem);
        }
        self.shared.lock().publish(topic, events)?;
        self.shared.arrivals.notify_waiters();
        Ok(())
    }

    /// Makes the next `count` authenticated requests of `operation` meet `fault`.
    pub fn fail_next(&self, operation: Operation, count: usize, fault: Fault) {
        self.shared
            .lock()
            .faults
            .entry(operation)
            .or_default()
            .extend(std::iter::repeat_n(fault, count));
    }

    /// How many requests of `operation` arrived (authenticated or not).
    pub fn calls(&self, operation: Operation) -> usize {
        self.shared
            .lock()
            .calls
            .get(&operation)
            .copied()
            .unwrap_or(0)
    }

    /// Every operation's request count.
    pub fn all_calls(&self) -> HashMap<Operation, usize> {
        self.shared.lock().calls.clone()
    }

    /// What the subscription dead-lettered, oldest first.
    pub fn dead_letters(&self, topic: &str, subscription: &str) -> Vec<DeadLetteredEvent> {
        self.with_subscription(topic, subscription, |s| s.dead_letters())
            .unwrap_or_default()
    }

    /// Events waiting to be received (including those in a release delay).
    pub fn ready_count(&self, topic: &str, subscription: &str) -> usize {
        self.with_subscription(topic, subscription, |s| s.ready_count())
            .unwrap_or(0)
    }

    /// Events locked by a receive now (locks that ran out count until the next request).
    pub fn locked_count(&self, topic: &str, subscription: &str) -> usize {
        self.with_subscription(topic, subscription, |s| s.locked_count())
            .unwrap_or(0)
    }

    fn with_subscription<T>(
        &self,
        topic: &str,
        subscription: &str,
        read: impl FnOnce(&mut Subscription) -> T,
    ) -> Option<T> {
        let mut state = self.shared.lock();
        let queue = state.subscription(topic, subscription)?;
        queue.expire_locks(tokio::time::Instant::now());
        Some(read(queue))
    }
}

impl fmt::Debug for NamespaceStandIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamespaceStandIn")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Drop for NamespaceStandIn {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every open connection.
        self.server.abort();
    }
}
