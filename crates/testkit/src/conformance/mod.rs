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

mod lifecycle;
mod receiving;
mod settlement;

use std::time::Duration;

use async_trait::async_trait;
use keyvault_invalidator_core::{Delivery, EventSource, Settlement, SourceErrorKind};

pub use lifecycle::{
    close_stops_receiving, lock_is_kept_while_a_delivery_is_in_flight,
    unsettled_deliveries_come_back_after_close,
};
pub use receiving::{
    batches_never_exceed_the_requested_size, dropped_receive_loses_nothing,
    receive_dropped_with_a_message_in_flight_loses_nothing, receive_waits_for_a_publication,
};
pub use settlement::{
    abandon_redelivers_with_a_higher_count, complete_removes_the_delivery,
    dead_letter_records_the_reason,
};

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
