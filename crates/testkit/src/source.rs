//! An in-memory [`EventSource`] with a publisher handle and a settlement log.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use keyvault_invalidator_core::{
    Delivery, DeliveryToken, EventSource, Settlement, SourceError, SourceErrorKind,
};
use tokio::sync::Notify;

/// How long the `wait_*` helpers wait before failing the test. Generous: test machines are
/// shared and slow.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// An in-memory queue that behaves like a peek-lock transport: deliveries stay locked until
/// settled, abandoned ones come back with a higher delivery count, dead-lettered ones move to a
/// dead-letter list, and every settlement is logged. Closing a source hands its unsettled
/// deliveries back to the queue, where [`reopen`](Self::reopen)ed sources (other instances
/// sharing the queue, or a restarted one) receive them again, counted once more.
///
/// ```
/// use keyvault_invalidator_core::{EventSource, Settlement};
/// use keyvault_invalidator_testkit::InMemoryEventSource;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let source = InMemoryEventSource::new();
/// let publisher = source.publisher();
/// publisher.publish("m1", br#"{"not":"an event"}"#.to_vec());
///
/// let mut batch = source.receive(10).await.unwrap();
/// let delivery = batch.remove(0);
/// assert_eq!(delivery.message_id.as_deref(), Some("m1"));
/// assert_eq!(delivery.delivery_count, 1);
/// source.settle(delivery.token, Settlement::Complete).await.unwrap();
/// assert_eq!(publisher.log().completed(), vec!["m1".to_string()]);
/// # }
/// ```
#[derive(Clone)]
pub struct InMemoryEventSource {
    shared: Arc<InMemoryQueue>,
    /// Which of the queue's sources this is (clones are the same source).
    id: u64,
}

impl Default for InMemoryEventSource {
    fn default() -> Self {
        Self::new()
    }
}

/// Publishes into an [`InMemoryEventSource`] and reads what happened to the messages.
#[derive(Clone)]
pub struct InMemoryPublisher {
    shared: Arc<InMemoryQueue>,
}

/// The queue every source opened over it and its publisher share.
#[derive(Default)]
struct InMemoryQueue {
    /// Which queue this is.
    id: u64,
    state: Mutex<QueueContents>,
    arrivals: Notify,
    settlements: Notify,
}

/// What the queue holds and what tests scripted or may ask about, behind one lock.
#[derive(Default)]
struct QueueContents {
    queue: VecDeque<Message>,
    /// By lock: the source that holds the delivery, and the message.
    in_flight: HashMap<u64, (u64, Message)>,
    next_lock: u64,
    /// The sources opened over the queue, and those of them closed.
    opened: BTreeSet<u64>,
    closed: BTreeSet<u64>,
    receive_faults: VecDeque<SourceError>,
    receive_panics: usize,
    settle_panics: usize,
    log: Vec<SettlementRecord>,
    dead_letters: Vec<DeadLetteredMessage>,
}

#[derive(Clone)]
struct Message {
    id: String,
    body: Bytes,
    properties: BTreeMap<String, String>,
    delivery_count: u32,
}

/// The token's payload: which queue and source, which lock.
struct Lock {
    queue: u64,
    source: u64,
    lock: u64,
}

/// One settlement, as the source saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementRecord {
    /// The message id.
    pub message_id: String,
    /// The delivery count of the delivery that was settled.
    pub delivery_count: u32,
    /// How it was settled.
    pub settlement: Settlement,
}

/// A message in the dead-letter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetteredMessage {
    /// The message id.
    pub message_id: String,
    /// The original body.
    pub body: Bytes,
    /// The reason given.
    pub reason: String,
    /// The description given.
    pub description: String,
}

/// All settlements so far, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettlementLog(pub Vec<SettlementRecord>);

impl SettlementLog {
    /// Ids of completed messages, in order.
    pub fn completed(&self) -> Vec<String> {
        self.filter(|s| matches!(s, Settlement::Complete))
            .map(|r| r.message_id.clone())
            .collect()
    }

    /// `(message id, delivery count)` of every abandon, in order.
    pub fn abandoned(&self) -> Vec<(String, u32)> {
        self.filter(|s| matches!(s, Settlement::Abandon))
            .map(|r| (r.message_id.clone(), r.delivery_count))
            .collect()
    }

    /// `(message id, reason, description)` of every dead-lettering, in order.
    pub fn dead_lettered(&self) -> Vec<(String, String, String)> {
        self.0
            .iter()
            .filter_map(|r| match &r.settlement {
                Settlement::DeadLetter {
                    reason,
                    description,
                    ..
                } => Some((r.message_id.clone(), reason.clone(), description.clone())),
                _ => None,
            })
            .collect()
    }

    /// How many settlements there were.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing was settled.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn filter(
        &self,
        keep: impl Fn(&Settlement) -> bool,
    ) -> impl Iterator<Item = &SettlementRecord> {
        self.0.iter().filter(move |r| keep(&r.settlement))
    }
}

static NEXT_SOURCE_ID: AtomicU64 = AtomicU64::new(1);

impl InMemoryEventSource {
    /// An empty, open source.
    pub fn new() -> Self {
        let source = InMemoryEventSource {
            shared: Arc::new(InMemoryQueue {
                id: NEXT_SOURCE_ID.fetch_add(1, Ordering::Relaxed),
                ..InMemoryQueue::default()
            }),
            id: NEXT_SOURCE_ID.fetch_add(1, Ordering::Relaxed),
        };
        source.shared.lock().opened.insert(source.id);
        source
    }

    /// Another open source over the same queue, as another instance sharing it (or this one
    /// restarted) would open: it receives what is queued, deliveries that closed sources left
    /// unsettled included. Its tokens settle only on it, as a broker's delivery tags belong to
    /// their channel.
    ///
    /// ```
    /// use keyvault_invalidator_core::{EventSource, Settlement};
    /// use keyvault_invalidator_testkit::InMemoryEventSource;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let first = InMemoryEventSource::new();
    /// first.publisher().publish("m1", b"{}".to_vec());
    /// let unsettled = first.receive(1).await.unwrap();
    /// first.close().await.unwrap();
    ///
    /// let second = first.reopen();
    /// let again = second.receive(1).await.unwrap().remove(0);
    /// assert_eq!((again.message_id.as_deref(), again.delivery_count), (Some("m1"), 2));
    /// second.settle(again.token, Settlement::Complete).await.unwrap();
    /// # drop(unsettled); }
    /// ```
    pub fn reopen(&self) -> InMemoryEventSource {
        let source = InMemoryEventSource {
            shared: self.shared.clone(),
            id: NEXT_SOURCE_ID.fetch_add(1, Ordering::Relaxed),
        };
        self.shared.lock().opened.insert(source.id);
        source
    }

    /// A handle that publishes into this source and reads its log.
    pub fn publisher(&self) -> InMemoryPublisher {
        InMemoryPublisher {
            shared: self.shared.clone(),
        }
    }

    /// Makes the next `count` calls to `receive` fail with `kind` (a lost connection, say).
    pub fn fail_next_receives(&self, count: usize, kind: SourceErrorKind) {
        let mut state = self.shared.lock();
        for _ in 0..count {
            state
                .receive_faults
                .push_back(SourceError::new(kind, "injected receive failure"));
        }
    }

    /// Makes the next `count` calls to `receive` panic (with the message `injected panic in
    /// InMemoryEventSource::receive`) instead of returning, to test that a panicking source
    /// does not stop the job. A call already waiting panics when it next wakes up. Nothing is
    /// taken from the queue by a panicking call.
    pub fn panic_next_receive(&self, count: usize) {
        self.shared.lock().receive_panics += count;
    }

    /// Makes the next `count` calls to `settle` panic (with the message `injected panic in
    /// InMemoryEventSource::settle`) before settling anything: the delivery stays locked, as a
    /// lost settlement on a broker, until the source is closed. Nothing is logged for it.
    pub fn panic_next_settle(&self, count: usize) {
        self.shared.lock().settle_panics += count;
    }
}

impl InMemoryQueue {
    fn lock(&self) -> MutexGuard<'_, QueueContents> {
        // Test state stays usable after a panicking test thread.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl EventSource for InMemoryEventSource {
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, SourceError> {
        loop {
            let arrived = self.shared.arrivals.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut state = self.shared.lock();
                if state.closed.contains(&self.id) {
                    return Err(SourceError::closed());
                }
                if state.receive_panics > 0 {
                    state.receive_panics -= 1;
                    drop(state);
                    panic!("injected panic in InMemoryEventSource::receive");
                }
                if let Some(fault) = state.receive_faults.pop_front() {
                    return Err(fault);
                }
                if !state.queue.is_empty() {
                    let take = max.max(1).min(state.queue.len());
                    let mut batch = Vec::with_capacity(take);
                    for _ in 0..take {
                        let mut message = state.queue.pop_front().expect("checked non-empty");
                        message.delivery_count += 1;
                        state.next_lock += 1;
                        let lock = state.next_lock;
                        let token = DeliveryToken::new(Lock {
                            queue: self.shared.id,
                            source: self.id,
                            lock,
                        });
                        batch.push(
                            Delivery::new(message.body.clone(), token)
                                .with_properties(message.properties.clone())
                                .with_message_id(message.id.clone())
                                .with_delivery_count(message.delivery_count),
                        );
                        state.in_flight.insert(lock, (self.id, message));
                    }
                    return Ok(batch);
                }
            }
            arrived.await;
        }
    }

    async fn settle(
        &self,
        token: DeliveryToken,
        settlement: Settlement,
    ) -> Result<(), SourceError> {
        let lock = match token.into_handle::<Lock>()? {
            lock if lock.queue == self.shared.id && lock.source == self.id => lock.lock,
            _ => return Err(SourceError::fatal("the token was issued by another source")),
        };
        let mut state = self.shared.lock();
        if state.settle_panics > 0 {
            state.settle_panics -= 1;
            drop(state);
            panic!("injected panic in InMemoryEventSource::settle");
        }
        let Some((_, message)) = state.in_flight.remove(&lock) else {
            return Err(SourceError::settlement_lost(
                "the delivery is no longer locked (the source was closed)",
            ));
        };
        state.log.push(SettlementRecord {
            message_id: message.id.clone(),
            delivery_count: message.delivery_count,
            settlement: settlement.clone(),
        });
        match settlement {
            Settlement::Complete => {}
            Settlement::DeadLetter {
                reason,
                description,
                ..
            } => state.dead_letters.push(DeadLetteredMessage {
                message_id: message.id,
                body: message.body,
                reason,
                description,
            }),
            // Abandon, and any settlement added later that this source does not know: the
            // message comes back, which never loses it.
            _ => {
                state.queue.push_back(message);
                self.shared.arrivals.notify_waiters();
            }
        }
        drop(state);
        self.shared.settlements.notify_waiters();
        Ok(())
    }

    async fn close(&self) -> Result<(), SourceError> {
        let mut state = self.shared.lock();
        state.closed.insert(self.id);
        // This source's unsettled deliveries go back to the queue, as a broker returns them to
        // other consumers.
        let mine: Vec<u64> = state
            .in_flight
            .iter()
            .filter(|(_, (source, _))| *source == self.id)
            .map(|(lock, _)| *lock)
            .collect();
        let mut returned: Vec<(u64, Message)> = mine
            .into_iter()
            .filter_map(|lock| Some((lock, state.in_flight.remove(&lock)?.1)))
            .collect();
        returned.sort_by_key(|(lock, _)| *lock);
        for (_, message) in returned.into_iter().rev() {
            state.queue.push_front(message);
        }
        drop(state);
        self.shared.arrivals.notify_waiters();
        Ok(())
    }
}

impl InMemoryPublisher {
    /// Queues a message with this id and body.
    pub fn publish(&self, message_id: impl Into<String>, body: impl Into<Bytes>) {
        self.publish_with_properties(message_id, body, BTreeMap::new());
    }

    /// Queues a message with transport properties (such as `aeg-event-type`).
    pub fn publish_with_properties(
        &self,
        message_id: impl Into<String>,
        body: impl Into<Bytes>,
        properties: BTreeMap<String, String>,
    ) {
        self.shared.lock().queue.push_back(Message {
            id: message_id.into(),
            body: body.into(),
            properties,
            delivery_count: 0,
        });
        self.shared.arrivals.notify_waiters();
    }

    /// Every settlement so far.
    pub fn log(&self) -> SettlementLog {
        SettlementLog(self.shared.lock().log.clone())
    }

    /// The dead-letter list.
    pub fn dead_letters(&self) -> Vec<DeadLetteredMessage> {
        self.shared.lock().dead_letters.clone()
    }

    /// Messages waiting to be delivered.
    pub fn queued(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Deliveries handed out and not yet settled.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().in_flight.len()
    }

    /// Whether every source over the queue (the first and those [`reopen`]ed) was closed.
    ///
    /// [`reopen`]: InMemoryEventSource::reopen
    pub fn is_closed(&self) -> bool {
        let state = self.shared.lock();
        state.closed.len() == state.opened.len()
    }

    /// Waits until at least `count` settlements are logged and returns the log.
    ///
    /// # Panics
    /// After [`WAIT_TIMEOUT`], with what the log held: this is a test helper.
    pub async fn wait_for_settlements(&self, count: usize) -> SettlementLog {
        self.wait_until(|log| log.len() >= count, &format!("{count} settlements"))
            .await
    }

    /// Waits until `done` holds for the log and returns it.
    ///
    /// # Panics
    /// After [`WAIT_TIMEOUT`]: this is a test helper.
    pub async fn wait_until(
        &self,
        done: impl Fn(&SettlementLog) -> bool,
        what: &str,
    ) -> SettlementLog {
        let wait = async {
            loop {
                let settled = self.shared.settlements.notified();
                tokio::pin!(settled);
                settled.as_mut().enable();
                let log = self.log();
                if done(&log) {
                    return log;
                }
                settled.await;
            }
        };
        match tokio::time::timeout(WAIT_TIMEOUT, wait).await {
            Ok(log) => log,
            Err(_) => panic!(
                "timed out waiting for {what}; the log holds {:?}",
                self.log()
            ),
        }
    }
}
