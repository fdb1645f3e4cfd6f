//! The conformance suite every [`EventSource`] must pass.
//!
//! An adapter's own tests implement [`ConformanceTarget`] (how to make an isolated source, how to
//! publish into it, how to read what it dead-lettered, how to open a second source over the same
//! queue) and call [`run_all`], or the single checks.
//! Every check asserts exact outcomes and panics with a message naming the broken promise.
//!
//! ```
//! use keyvault_invalidator_testkit::conformance::{self, ConformanceTarget, DeadLetter};
//! use keyvault_invalidator_testkit::{InMemoryEventSource, InMemoryPublisher};
//!
//! struct InMemory;
//!
//! #[async_trait::async_trait]
//! impl ConformanceTarget for InMemory {
//!     type Source = InMemoryEventSource;
//!     async fn new_source(&self) -> InMemoryEventSource { InMemoryEventSource::new() }
//!     async fn publish(&self, source: &InMemoryEventSource, message_id: &str, body: &[u8]) {
//!         source.publisher().publish(message_id.to_owned(), body.to_vec());
//!     }
//!     async fn dead_letters(&self, source: &InMemoryEventSource) -> Vec<DeadLetter> {
//!         source.publisher().dead_letters().into_iter()
//!             .map(|m| DeadLetter { body: m.body.to_vec(), reason: m.reason, description: m.description })
//!             .collect()
//!     }
//!     async fn reopen(&self, source: &InMemoryEventSource) -> InMemoryEventSource {
//!         source.reopen()
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! conformance::run_all(&InMemory).await;
//! # }
//! ```

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use keyvault_invalidator_core::{Delivery, EventSource, Settlement, SourceErrorKind};

/// How long a check waits for a delivery that should come.
pub const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a check waits to be sure a delivery does not come.
pub const QUIET_PERIOD: Duration = Duration::from_millis(1_500);

/// What the suite needs from an adapter's test setup.
#[async_trait]
pub trait ConformanceTarget: Send + Sync {
    /// The source under test.
    type Source: EventSource + 'static;

    /// A fresh, open source over an empty, isolated queue (each check makes its own).
    async fn new_source(&self) -> Self::Source;

    /// Publishes a message so `source` will deliver it, with `message_id` as its transport
    /// message id (the suite checks that the very messages come back). The suite's bodies are
    /// small JSON documents.
    async fn publish(&self, source: &Self::Source, message_id: &str, body: &[u8]);

    /// A fresh, open source over an empty, isolated queue that outlives its sources: one that
    /// infrastructure declares and instances share, rather than one a source owns and deletes
    /// when it closes. [`unsettled_deliveries_come_back_after_close`] closes it and receives
    /// with [`reopen`](Self::reopen). The default is [`new_source`](Self::new_source), for a
    /// target whose queues all outlive their sources.
    ///
    /// Why a second kind of source: a RabbitMQ instance queue and an automatic Service Bus
    /// subscription belong to one application instance, and its source deletes them at close.
    /// Deliveries they held unsettled go with them, and that is the intent: every instance has
    /// its own copy of every event, for its own cache, which goes away with the instance; no
    /// other instance is owed them. What must come back is what a shared queue held.
    async fn new_shared_source(&self) -> Self::Source {
        self.new_source().await
    }

    /// Another open source over the same queue as `source` (which may be closed), as another
    /// instance sharing the queue, or the same one restarted, would open it.
    async fn reopen(&self, source: &Self::Source) -> Self::Source;

    // No check holds more than three deliveries unsettled at once: a transport that sends
    // ahead only as many as are settled (a prefetch, link credit) passes from three up.

    /// What `source` dead-lettered so far, read from outside the source (a dead-letter queue).
    /// May wait briefly for the transport to move the messages.
    async fn dead_letters(&self, source: &Self::Source) -> Vec<DeadLetter>;

    /// Whether the transport carries the dead-letter reason and description with the message.
    /// A transport that cannot says so here; the suite then checks only that the message was
    /// dead-lettered, and the adapter must document where the reason goes instead.
    fn dead_letter_carries_reason(&self) -> bool {
        true
    }

    /// How long the transport locks a delivery, for a peek-lock transport whose source renews
    /// the locks of deliveries in flight (Service Bus, Event Grid namespace topics). The
    /// target's sources must be made with locks this short (a few seconds) so that
    /// [`lock_is_kept_while_a_delivery_is_in_flight`] can outlast them. `None` (the
    /// default): the transport has no locks to keep, and that check passes at once.
    fn lock_duration(&self) -> Option<Duration> {
        None
    }
}

/// A dead-lettered message as the target reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The original body.
    pub body: Vec<u8>,
    /// The reason given at settlement.
    pub reason: String,
    /// The description given at settlement.
    pub description: String,
}

/// Runs every check, each on its own source. A check that does not finish within
/// [`CHECK_TIMEOUT`] fails with its name, rather than hanging the test run.
pub async fn run_all<T: ConformanceTarget>(target: &T) {
    bounded(
        "complete_removes_the_delivery",
        complete_removes_the_delivery(target),
    )
    .await;
    bounded(
        "abandon_redelivers_with_a_higher_count",
        abandon_redelivers_with_a_higher_count(target),
    )
    .await;
    bounded(
        "dead_letter_records_the_reason",
        dead_letter_records_the_reason(target),
    )
    .await;
    bounded(
        "batches_never_exceed_the_requested_size",
        batches_never_exceed_the_requested_size(target),
    )
    .await;
    bounded(
        "receive_waits_for_a_publication",
        receive_waits_for_a_publication(target),
    )
    .await;
    bounded(
        "dropped_receive_loses_nothing",
        dropped_receive_loses_nothing(target),
    )
    .await;
    bounded(
        "receive_dropped_with_a_message_in_flight_loses_nothing",
        receive_dropped_with_a_message_in_flight_loses_nothing(target),
    )
    .await;
    bounded("close_stops_receiving", close_stops_receiving(target)).await;
    bounded(
        "unsettled_deliveries_come_back_after_close",
        unsettled_deliveries_come_back_after_close(target),
    )
    .await;
    bounded(
        "lock_is_kept_while_a_delivery_is_in_flight",
        lock_is_kept_while_a_delivery_is_in_flight(target),
    )
    .await;
}

/// How long one check may take in all: its own waits are shorter, so only a hang reaches it.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

async fn bounded(check: &str, run: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(CHECK_TIMEOUT, run).await.is_err() {
        panic!("conformance check `{check}` did not finish within {CHECK_TIMEOUT:?}: something it awaited never completed");
    }
}

fn body(n: usize) -> Vec<u8> {
    format!("{{\"conformance\":{n}}}").into_bytes()
}

/// Receives until at least one delivery arrives; panics after [`ARRIVAL_TIMEOUT`].
pub async fn receive_some<S: EventSource + ?Sized>(
    source: &S,
    max: usize,
    what: &str,
) -> Vec<Delivery> {
    let wait = async {
        loop {
            match source.receive(max).await {
                Ok(batch) if !batch.is_empty() => return batch,
                Ok(_) => continue,
                Err(error) if error.kind == SourceErrorKind::Transient => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(error) => panic!("{what}: receive failed: {error}"),
            }
        }
    };
    tokio::time::timeout(ARRIVAL_TIMEOUT, wait)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing was delivered within {ARRIVAL_TIMEOUT:?}"))
}

/// Asserts that nothing is delivered for [`QUIET_PERIOD`], and that the source does not fail
/// meanwhile: a source that errors is not quiet, it is broken, and hiding that would let a
/// check pass that should not.
pub async fn assert_quiet<S: EventSource + ?Sized>(source: &S, what: &str) {
    match tokio::time::timeout(QUIET_PERIOD, source.receive(10)).await {
        Err(_) => {}
        Ok(Ok(batch)) => assert!(
            batch.is_empty(),
            "{what}: expected no delivery, got {} (first: {:?})",
            batch.len(),
            batch.first()
        ),
        Ok(Err(error)) => panic!("{what}: expected no delivery, but receive failed: {error}"),
    }
}

async fn settle<S: EventSource>(
    source: &S,
    delivery: Delivery,
    settlement: Settlement,
    what: &str,
) {
    source
        .settle(delivery.token, settlement)
        .await
        .unwrap_or_else(|error| panic!("{what}: settle failed: {error}"));
}

/// A completed delivery is gone: it is not delivered again.
pub async fn complete_removes_the_delivery<T: ConformanceTarget>(target: &T) {
    let what = "complete removes the delivery";
    let source = target.new_source().await;
    target.publish(&source, "complete-1", &body(1)).await;
    let mut batch = receive_some(&source, 10, what).await;
    assert_eq!(
        batch.len(),
        1,
        "{what}: one message published, {} delivered",
        batch.len()
    );
    let delivery = batch.remove(0);
    assert_eq!(
        delivery.body.as_ref(),
        body(1).as_slice(),
        "{what}: body changed in transit"
    );
    assert_eq!(
        delivery.delivery_count, 1,
        "{what}: a first delivery has count 1"
    );
    settle(&source, delivery, Settlement::Complete, what).await;
    assert_quiet(&source, what).await;
    source.close().await.expect("close");
}

/// An abandoned delivery comes back, with a delivery count one higher.
pub async fn abandon_redelivers_with_a_higher_count<T: ConformanceTarget>(target: &T) {
    let what = "abandon redelivers with a higher count";
    let source = target.new_source().await;
    target.publish(&source, "abandon-1", &body(2)).await;
    let mut counts = Vec::new();
    for round in 0..3 {
        let mut batch = receive_some(&source, 10, what).await;
        assert_eq!(
            batch.len(),
            1,
            "{what}: round {round}: expected the one message"
        );
        let delivery = batch.remove(0);
        assert_eq!(
            delivery.body.as_ref(),
            body(2).as_slice(),
            "{what}: body changed"
        );
        counts.push(delivery.delivery_count);
        let settlement = if round < 2 {
            Settlement::Abandon
        } else {
            Settlement::Complete
        };
        settle(&source, delivery, settlement, what).await;
    }
    assert_eq!(
        counts,
        vec![1, 2, 3],
        "{what}: delivery counts across redeliveries"
    );
    assert_quiet(&source, what).await;
    source.close().await.expect("close");
}

/// A dead-lettered delivery is not delivered again and lands in the dead-letter store with the
/// exact reason and description.
pub async fn dead_letter_records_the_reason<T: ConformanceTarget>(target: &T) {
    let what = "dead-letter records the reason";
    let source = target.new_source().await;
    target.publish(&source, "dead-1", &body(3)).await;
    let delivery = receive_some(&source, 10, what).await.remove(0);
    let settlement = Settlement::DeadLetter {
        reason: "MalformedPayload".to_owned(),
        description: "event 0: the payload is not valid JSON".to_owned(),
    };
    settle(&source, delivery, settlement, what).await;
    assert_quiet(&source, what).await;
    let letters = target.dead_letters(&source).await;
    if target.dead_letter_carries_reason() {
        assert_eq!(
            letters,
            vec![DeadLetter {
                body: body(3),
                reason: "MalformedPayload".to_owned(),
                description: "event 0: the payload is not valid JSON".to_owned(),
            }],
            "{what}"
        );
    } else {
        let bodies: Vec<&[u8]> = letters.iter().map(|l| l.body.as_slice()).collect();
        assert_eq!(bodies, vec![body(3).as_slice()], "{what}");
    }
    source.close().await.expect("close");
}

/// `receive(max)` never returns more than `max`, and every published message is delivered
/// exactly once across batches.
pub async fn batches_never_exceed_the_requested_size<T: ConformanceTarget>(target: &T) {
    let what = "batches never exceed the requested size";
    let source = target.new_source().await;
    for n in 0..7 {
        target
            .publish(&source, &format!("batch-{n}"), &body(100 + n))
            .await;
    }
    let mut seen = Vec::new();
    while seen.len() < 7 {
        let batch = receive_some(&source, 3, what).await;
        assert!(batch.len() <= 3, "{what}: asked for 3, got {}", batch.len());
        for delivery in batch {
            seen.push(delivery.body.to_vec());
            settle(&source, delivery, Settlement::Complete, what).await;
        }
    }
    let distinct: BTreeSet<_> = seen.iter().cloned().collect();
    let expected: BTreeSet<_> = (0..7).map(|n| body(100 + n)).collect();
    assert_eq!(seen.len(), 7, "{what}: deliveries");
    assert_eq!(distinct, expected, "{what}: every message once");
    assert_quiet(&source, what).await;
    source.close().await.expect("close");
}

/// A `receive` on an empty source waits, and returns the message published meanwhile.
pub async fn receive_waits_for_a_publication<T: ConformanceTarget>(target: &T) {
    let what = "receive waits for a publication";
    let source = target.new_source().await;
    let (batch, ()) = tokio::join!(receive_some(&source, 10, what), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        target.publish(&source, "late-1", &body(4)).await;
    });
    assert_eq!(batch.len(), 1, "{what}");
    assert_eq!(batch[0].body.as_ref(), body(4).as_slice(), "{what}");
    for delivery in batch {
        settle(&source, delivery, Settlement::Complete, what).await;
    }
    source.close().await.expect("close");
}

/// Dropping a pending `receive` (the job does at shutdown) loses nothing published afterwards.
pub async fn dropped_receive_loses_nothing<T: ConformanceTarget>(target: &T) {
    let what = "a dropped receive loses nothing";
    let source = target.new_source().await;
    let dropped = tokio::time::timeout(Duration::from_millis(200), source.receive(10)).await;
    if let Ok(Ok(batch)) = dropped {
        assert!(batch.is_empty(), "{what}: nothing was published yet");
    }
    target.publish(&source, "after-drop-1", &body(5)).await;
    let batch = receive_some(&source, 10, what).await;
    assert_eq!(batch.len(), 1, "{what}");
    assert_eq!(batch[0].body.as_ref(), body(5).as_slice(), "{what}");
    for delivery in batch {
        settle(&source, delivery, Settlement::Complete, what).await;
    }
    source.close().await.expect("close");
}

/// `(message id, body, delivery count)` of each delivery, sorted: what the checks compare.
fn seen(deliveries: &[Delivery]) -> Vec<(Option<String>, Vec<u8>, u32)> {
    let mut seen: Vec<_> = deliveries
        .iter()
        .map(|d| (d.message_id.clone(), d.body.to_vec(), d.delivery_count))
        .collect();
    seen.sort();
    seen
}

/// Receives until `count` deliveries have arrived in all (never asking for more than are
/// missing), and returns them unsettled.
async fn receive_exactly<S: EventSource + ?Sized>(
    source: &S,
    count: usize,
    what: &str,
) -> Vec<Delivery> {
    let mut received = Vec::new();
    while received.len() < count {
        let batch = receive_some(source, count - received.len(), what).await;
        received.extend(batch);
    }
    received
}

/// A `receive` dropped while a message is on its way to it (published while it waits, and
/// dropped as the publication returns or a moment later, as the job drops it at shutdown or
/// `select!` drops a losing branch) loses nothing: every message is delivered, once, with
/// count 1, by that receive if it finished first or by a later one.
pub async fn receive_dropped_with_a_message_in_flight_loses_nothing<T: ConformanceTarget>(
    target: &T,
) {
    let what = "a receive dropped with a message in flight loses nothing";
    let source = target.new_source().await;
    // Dropped as the publication returns (twice, as the first round also connects), and at
    // moments when the message is on the wire, in the transport's buffers, or handed over.
    let delays_ms = [0u64, 0, 1, 5, 20, 100];
    let mut received = Vec::new();
    for (round, delay) in delays_ms.iter().enumerate() {
        let id = format!("in-flight-{round}");
        let body = body(200 + round);
        let receive = source.receive(10);
        tokio::pin!(receive);
        let publish = async {
            target.publish(&source, &id, &body).await;
            tokio::time::sleep(Duration::from_millis(*delay)).await;
        };
        tokio::pin!(publish);
        tokio::select! {
            batch = &mut receive => {
                let batch = batch.unwrap_or_else(|e| panic!("{what}: round {round}: receive failed: {e}"));
                received.extend(complete_all(&source, batch, what).await);
                // The publication is part of the round whatever the receive did.
                publish.await;
            }
            () = &mut publish => {}
        }
    }
    while received.len() < delays_ms.len() {
        let batch = receive_some(&source, delays_ms.len() - received.len(), what).await;
        received.extend(complete_all(&source, batch, what).await);
    }
    received.sort();
    let expected: Vec<_> = (0..delays_ms.len())
        .map(|round| (Some(format!("in-flight-{round}")), body(200 + round), 1))
        .collect();
    assert_eq!(
        received, expected,
        "{what}: every message once, as first delivered"
    );
    assert_quiet(&source, what).await;
    source.close().await.expect("close");
}

/// Completes each delivery at once (a transport may send ahead only as many as are settled),
/// and returns what each was.
async fn complete_all<S: EventSource>(
    source: &S,
    batch: Vec<Delivery>,
    what: &str,
) -> Vec<(Option<String>, Vec<u8>, u32)> {
    let mut seen = Vec::with_capacity(batch.len());
    for delivery in batch {
        seen.push((
            delivery.message_id.clone(),
            delivery.body.to_vec(),
            delivery.delivery_count,
        ));
        settle(source, delivery, Settlement::Complete, what).await;
    }
    seen
}

/// Deliveries received and never settled when their source closes come back, the very
/// messages, to a source opened afterwards over the same queue, counted once more; settling
/// one on the closed source fails as lost rather than passing for done.
pub async fn unsettled_deliveries_come_back_after_close<T: ConformanceTarget>(target: &T) {
    let what = "deliveries left unsettled at close come back";
    let source = target.new_shared_source().await;
    for n in 0..3 {
        target
            .publish(&source, &format!("unsettled-{n}"), &body(300 + n))
            .await;
    }
    let mut held = receive_exactly(&source, 3, what).await;
    let first: Vec<_> = (0..3)
        .map(|n| (Some(format!("unsettled-{n}")), body(300 + n), 1))
        .collect();
    assert_eq!(
        seen(&held),
        first,
        "{what}: the three messages, first delivery"
    );
    source
        .close()
        .await
        .unwrap_or_else(|e| panic!("{what}: close failed: {e}"));
    let late = held.remove(0);
    match source.settle(late.token, Settlement::Complete).await {
        Err(error) => assert_eq!(
            error.kind,
            SourceErrorKind::SettlementLost,
            "{what}: settling after close: {error}"
        ),
        Ok(()) => panic!("{what}: a delivery settled after its source closed"),
    }
    drop(held);

    let reopened = target.reopen(&source).await;
    let back = receive_exactly(&reopened, 3, what).await;
    let again: Vec<_> = (0..3)
        .map(|n| (Some(format!("unsettled-{n}")), body(300 + n), 2))
        .collect();
    assert_eq!(
        seen(&back),
        again,
        "{what}: the same three messages, counted once more"
    );
    for delivery in back {
        settle(&reopened, delivery, Settlement::Complete, what).await;
    }
    assert_quiet(&reopened, what).await;
    reopened.close().await.expect("close");
}

/// After `close`, `receive` fails with [`SourceErrorKind::Closed`].
pub async fn close_stops_receiving<T: ConformanceTarget>(target: &T) {
    let what = "close stops receiving";
    let source = target.new_source().await;
    source
        .close()
        .await
        .unwrap_or_else(|e| panic!("{what}: close failed: {e}"));
    let result = tokio::time::timeout(ARRIVAL_TIMEOUT, source.receive(1))
        .await
        .unwrap_or_else(|_| panic!("{what}: receive after close hung"));
    match result {
        Err(error) => assert_eq!(error.kind, SourceErrorKind::Closed, "{what}: {error}"),
        Ok(batch) => panic!(
            "{what}: receive after close returned {} deliveries",
            batch.len()
        ),
    }
}

/// A delivery held for longer than its lock (an invalidation waiting out a throttle) keeps
/// its lock: it is not delivered again meanwhile, and completing it afterwards succeeds and
/// removes it. Checked only for targets that name a [`lock_duration`](ConformanceTarget::lock_duration).
pub async fn lock_is_kept_while_a_delivery_is_in_flight<T: ConformanceTarget>(target: &T) {
    let what = "the lock is kept while a delivery is in flight";
    let Some(lock) = target.lock_duration() else {
        return;
    };
    let source = target.new_source().await;
    target.publish(&source, "held-1", &body(6)).await;
    let mut batch = receive_some(&source, 10, what).await;
    assert_eq!(batch.len(), 1, "{what}: one message published");
    let delivery = batch.remove(0);
    // Two and a half lock durations: without renewal the lock runs out twice over.
    let hold = lock * 5 / 2;
    if let Ok(Ok(again)) = tokio::time::timeout(hold, source.receive(10)).await {
        assert!(
            again.is_empty(),
            "{what}: the message came back after {:?} while held (lock {lock:?}): the lock was not renewed",
            hold
        );
    }
    settle(&source, delivery, Settlement::Complete, what).await;
    assert_quiet(&source, what).await;
    source.close().await.expect("close");
}
