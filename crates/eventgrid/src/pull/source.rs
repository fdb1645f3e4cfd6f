//! [`PullSource`]: the [`EventSource`] of an event subscription, on the transport crate's
//! [`Lifecycle`].
//!
//! A "connection" here is a poller task: it long-polls `:receive` whenever the buffer it feeds
//! has room, and stops at the first failed request, which the lifecycle sees as a lost
//! connection (logged, counted, retried after the shared backoff or the service's
//! `Retry-After`). Because the poller, not the caller, holds what `:receive` returned, a
//! `receive` the job drops loses nothing; the buffer holds at most `max_events`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use keyvault_invalidator_core::lock::{HeldLock, LockRenewal, LockRenewer};
use keyvault_invalidator_core::{
    Bytes, Delivery, DeliveryToken, EventSource, Settlement, SourceError,
};
use keyvault_invalidator_transport::{Attempt, CloseReason, Connector, Incoming, Lifecycle};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::client::{LockOperation, NamespaceClient, ReceivedEvent};
use super::config::{PullConfig, ReleaseDelay};

/// What the metrics' names start with.
const METRICS_PREFIX: &str = "keyvault_invalidator_eventgrid_pull";
/// The most lock tokens one settling request carries (the REST spec's limit).
const LOCK_TOKENS_PER_REQUEST: usize = 100;

/// Receives Key Vault events from an Event Grid namespace topic's event subscription
/// (queue mode, peek-lock over HTTP).
///
/// - A delivery's body is the CloudEvent JSON as the service sent it, its message id the
///   event's `id`, its delivery count `brokerProperties.deliveryCount`, and its token the lock
///   token.
/// - [`Settlement::Complete`] is `:acknowledge`, [`Settlement::Abandon`] is `:release` (with the
///   configured [`ReleaseDelay`]), [`Settlement::DeadLetter`] is `:reject`. Event Grid's reject
///   carries no reason: the source logs the reason and description (a warning) instead, and
///   the event goes to the subscription's dead-letter destination, if it has one.
/// - A lock token the service does not take (`failedLockTokens`: `TokenLost`, `BadToken`) is
///   a [`SettlementLost`](keyvault_invalidator_core::SourceErrorKind::SettlementLost) error:
///   the event comes back by itself.
/// - While the job holds a delivery, its lock is renewed with `:renewLock`
///   ([`keyvault_invalidator_core::lock`]), up to the configured maximum.
/// - [`close`](EventSource::close) stops polling and releases every lock it still holds
///   (received, not yet settled), so those events come back at once rather than when their
///   locks run out; settling afterwards is `SettlementLost`.
///
/// ```no_run
/// use std::sync::Arc;
/// use keyvault_invalidator_core::EventSource;
/// use keyvault_invalidator_eventgrid::pull::{PullConfig, PullSource};
///
/// # async fn run(credential: Arc<dyn azure_core::credentials::TokenCredential>) -> Result<(), Box<dyn std::error::Error>> {
/// let config = PullConfig::builder(
///     "https://my-namespace.westeurope-1.eventgrid.azure.net",
///     "keyvault-events",
///     "keyvault-invalidator",
/// )
/// .credential(credential)
/// .build()?;
/// let source = PullSource::new(config);
/// let deliveries = source.receive(10).await?;
/// # Ok(()) }
/// ```
pub struct PullSource {
    lifecycle: Lifecycle<PullConnector>,
    client: Arc<NamespaceClient>,
    renewer: Arc<dyn LockRenewer>,
    held: Arc<HeldTokens>,
    release_delay: ReleaseDelay,
    lock_duration: Duration,
    lock_renewal: LockRenewal,
    closed: AtomicBool,
}

impl PullSource {
    /// A source for `config`. Nothing is requested until the first `receive`.
    pub fn new(config: PullConfig) -> Self {
        let client = Arc::new(NamespaceClient::new(&config));
        let held = Arc::new(HeldTokens::default());
        let connector = PullConnector {
            client: client.clone(),
            max_events: config.max_events,
            held: held.clone(),
            peer: format!(
                "{}topics/{}/eventsubscriptions/{}",
                config.endpoint, config.topic, config.subscription
            ),
        };
        PullSource {
            lifecycle: Lifecycle::builder(connector).build(),
            renewer: Arc::new(Renewer {
                client: client.clone(),
                lock_duration: config.lock_duration,
            }),
            client,
            held,
            release_delay: config.release_delay,
            lock_duration: config.lock_duration,
            lock_renewal: config.lock_renewal,
            closed: AtomicBool::new(false),
        }
    }

    fn delivery(&self, fetched: Fetched) -> Delivery {
        let Fetched { event, received_at } = fetched;
        let lock = HeldLock::hold(
            self.renewer.clone(),
            event.lock_token.clone(),
            received_at + self.lock_duration,
            self.lock_renewal,
        );
        let token = DeliveryToken::new(PullToken {
            lock_token: event.lock_token,
            _lock: lock,
        });
        let delivery = Delivery::new(Bytes::from(event.event), token)
            .with_delivery_count(event.delivery_count);
        match event.event_id {
            Some(id) => delivery.with_message_id(id),
            None => delivery,
        }
    }
}

impl std::fmt::Debug for PullSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullSource")
            .field("client", &self.client)
            .field("lifecycle", &self.lifecycle)
            .field("closed", &self.closed.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl EventSource for PullSource {
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, SourceError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(SourceError::closed());
        }
        let batch = self.lifecycle.receive(max).await?;
        tracing::debug!(events = batch.items.len(), "received from Event Grid");
        metrics::counter!(format!("{METRICS_PREFIX}_received_total"))
            .increment(batch.items.len() as u64);
        Ok(batch
            .items
            .into_iter()
            .map(|fetched| self.delivery(fetched))
            .collect())
    }

    async fn settle(
        &self,
        token: DeliveryToken,
        settlement: Settlement,
    ) -> Result<(), SourceError> {
        let PullToken { lock_token, _lock } = token.into_handle()?;
        if self.closed.load(Ordering::SeqCst) {
            return Err(SourceError::settlement_lost(
                "the Event Grid source is closed and released the event's lock; it is delivered again",
            ));
        }
        let operation = match &settlement {
            Settlement::Complete => LockOperation::Acknowledge,
            Settlement::DeadLetter {
                reason,
                description,
                ..
            } => {
                // `:reject` has no field for them: the log is where they go.
                tracing::warn!(
                    %reason,
                    %description,
                    "rejecting an Event Grid event (Event Grid's reject carries no reason)"
                );
                LockOperation::Reject
            }
            // Abandon, and any settlement added later: the event comes back.
            _ => LockOperation::Release(self.release_delay),
        };
        let tokens = [lock_token];
        let failed = match self.client.lock_operation(operation, &tokens).await {
            Ok(failed) => failed,
            Err(error) => {
                settlement_failed(operation);
                return Err(error.into());
            }
        };
        self.held.remove(&tokens[0]);
        match failed.into_iter().next() {
            None => Ok(()),
            Some(failed) => {
                settlement_failed(operation);
                Err(SourceError::settlement_lost(format!(
                    "Event Grid did not take {} for the event's lock ({}: {}); it is delivered again",
                    operation.name(),
                    failed.code,
                    failed.message
                )))
            }
        }
    }

    async fn close(&self) -> Result<(), SourceError> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let closed = self.lifecycle.close().await;
        let held = self.held.take_all();
        for tokens in held.chunks(LOCK_TOKENS_PER_REQUEST) {
            let release = LockOperation::Release(ReleaseDelay::None);
            match self.client.lock_operation(release, tokens).await {
                Ok(failed) if failed.is_empty() => {}
                Ok(failed) => tracing::debug!(
                    failed = failed.len(),
                    "some locks were gone already when the Event Grid source closed"
                ),
                Err(error) => tracing::warn!(
                    %error,
                    "releasing the locks held at close failed; those events come back when their locks run out"
                ),
            }
        }
        closed
    }
}

fn settlement_failed(operation: LockOperation) {
    metrics::counter!(
        format!("{METRICS_PREFIX}_settlement_failures_total"),
        "operation" => operation.name()
    )
    .increment(1);
}

/// What settles a delivery: its lock token, and the lock kept renewed until then.
struct PullToken {
    lock_token: String,
    _lock: HeldLock,
}

/// Lock tokens received and not yet settled, to release at close.
#[derive(Debug, Default)]
struct HeldTokens(Mutex<HashSet<String>>);

impl HeldTokens {
    fn lock(&self) -> MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, token: &str) {
        self.lock().insert(token.to_owned());
    }

    fn remove(&self, token: &str) {
        self.lock().remove(token);
    }

    fn take_all(&self) -> Vec<String> {
        self.lock().drain().collect()
    }
}

/// `:renewLock` for [`HeldLock`]. The answer does not say when the lock now ends: it is
/// counted as a full lock duration from the answer.
struct Renewer {
    client: Arc<NamespaceClient>,
    lock_duration: Duration,
}

#[async_trait]
impl LockRenewer for Renewer {
    async fn renew_lock(&self, lock_token: &str) -> Result<SystemTime, SourceError> {
        let tokens = [lock_token.to_owned()];
        let failed = self
            .client
            .lock_operation(LockOperation::RenewLock, &tokens)
            .await?;
        match failed.into_iter().next() {
            None => Ok(SystemTime::now() + self.lock_duration),
            Some(failed) => Err(SourceError::settlement_lost(format!(
                "Event Grid did not renew the lock ({}: {})",
                failed.code, failed.message
            ))),
        }
    }
}

/// One received event and when its answer arrived (its lock counts from then).
struct Fetched {
    event: ReceivedEvent,
    received_at: SystemTime,
}

/// Opens "connections": poller tasks.
#[derive(Debug)]
struct PullConnector {
    client: Arc<NamespaceClient>,
    max_events: usize,
    held: Arc<HeldTokens>,
    peer: String,
}

/// A running poller; dropping or closing it stops it.
#[derive(Debug)]
struct Poller(JoinHandle<()>);

impl Drop for Poller {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the poller fetched, in order; an error is the last item.
struct Polled(mpsc::Receiver<Result<Fetched, SourceError>>);

impl Incoming for Polled {
    type Item = Fetched;

    async fn next(&mut self) -> Result<Fetched, SourceError> {
        // `recv` is cancel safe.
        self.0
            .recv()
            .await
            .unwrap_or_else(|| Err(SourceError::transient("the Event Grid poller stopped")))
    }

    fn next_if_ready(&mut self) -> Option<Result<Fetched, SourceError>> {
        self.0.try_recv().ok()
    }
}

impl Connector for PullConnector {
    const NAME: &'static str = "Event Grid";
    const METRICS_PREFIX: &'static str = METRICS_PREFIX;
    type Connection = Poller;
    type Incoming = Polled;

    async fn open(&self, _attempt: &Attempt) -> Result<(Poller, Polled), SourceError> {
        let (sender, receiver) = mpsc::channel(self.max_events);
        let task = tokio::spawn(poll(
            self.client.clone(),
            self.max_events,
            self.held.clone(),
            sender,
        ));
        Ok((Poller(task), Polled(receiver)))
    }

    async fn close(&self, poller: Arc<Poller>, _reason: CloseReason) -> Result<(), SourceError> {
        poller.0.abort();
        Ok(())
    }

    fn peer(&self) -> String {
        self.peer.clone()
    }
}

/// Long-polls while the buffer has room, asking for no more than fits; ends at the first
/// failure, which it hands on after what it fetched before.
async fn poll(
    client: Arc<NamespaceClient>,
    max_events: usize,
    held: Arc<HeldTokens>,
    sender: mpsc::Sender<Result<Fetched, SourceError>>,
) {
    loop {
        let Ok(permit) = sender.reserve().await else {
            return; // the lifecycle dropped the connection
        };
        // This task is the only sender: the room seen now is there when the answer comes.
        let room = (sender.capacity() + 1).min(max_events);
        let events = match client.receive(room).await {
            Ok(events) => events,
            Err(error) => {
                permit.send(Err(error.into()));
                return;
            }
        };
        let received_at = SystemTime::now();
        let mut events = events.into_iter();
        let Some(first) = events.next() else {
            continue; // the long poll ended empty
        };
        let fetched = |event: ReceivedEvent| {
            held.add(&event.lock_token);
            Ok(Fetched { event, received_at })
        };
        permit.send(fetched(first));
        for event in events {
            if sender.send(fetched(event)).await.is_err() {
                return;
            }
        }
    }
}
