//! The requests waiting for their answer, and their deliveries waiting for `receive`: what
//! the HTTP side and the `EventSource` side share.
//!
//! A request's answer is decided when its last delivery is settled: any abandon → retry
//! (503), else any dead-letter → refused (400, with the reasons), else done (200). A request
//! that is answered otherwise (its deadline passed, its sender went away, the source closed)
//! leaves the table with its deliveries: those still queued are never handed out, and those
//! handed out fail to settle as lost.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use keyvault_invalidator_core::{Delivery, Settlement};
use tokio::sync::{oneshot, Notify};

/// How a request is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Every event was applied: 200.
    Done,
    /// An event should be tried again (or the source is going away): 503, Event Grid retries.
    Retry,
    /// An event can never be applied: 400, Event Grid dead-letters (or drops) the request.
    Refused(Vec<RefusedEvent>),
}

/// One dead-lettered event of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefusedEvent {
    /// Its position in the request.
    pub(crate) index: usize,
    /// Its `id`, when it had one.
    pub(crate) id: Option<String>,
    /// The job's reason and description.
    pub(crate) reason: String,
    pub(crate) description: String,
}

/// The handle inside a [`DeliveryToken`](keyvault_invalidator_core::DeliveryToken).
#[derive(Debug)]
pub(crate) struct TokenHandle {
    /// Which source issued it (a reopened source has another).
    pub(crate) source: u64,
    pub(crate) request: u64,
    pub(crate) index: usize,
}

/// Where a settlement went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Recorded; the request may have been answered by it.
    Recorded,
    /// The request was already answered (deadline, sender gone, closed).
    Lost,
}

struct Request {
    unsettled: usize,
    abandoned: bool,
    refusals: Vec<RefusedEvent>,
    ids: Vec<Option<String>>,
    answer: oneshot::Sender<Answer>,
}

struct Queued {
    request: u64,
    delivery: Delivery,
}

#[derive(Default)]
struct State {
    closed: bool,
    next_request: u64,
    requests: HashMap<u64, Request>,
    queue: VecDeque<Queued>,
}

/// The shared table.
#[derive(Default)]
pub(crate) struct Pending {
    state: Mutex<State>,
    arrived: Notify,
}

/// What `take` found.
pub(crate) enum Taken {
    Deliveries(Vec<Delivery>),
    Empty,
    Closed,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code holding the lock can panic midway, but stay usable if one did.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a request and queues its deliveries (built by `deliveries(request_id)`, in
    /// order). `None` when the source is closed.
    pub(crate) fn admit(
        &self,
        ids: Vec<Option<String>>,
        deliveries: impl FnOnce(u64) -> Vec<Delivery>,
    ) -> Option<(u64, oneshot::Receiver<Answer>)> {
        let (sender, receiver) = oneshot::channel();
        let mut state = self.lock();
        if state.closed {
            return None;
        }
        let request = state.next_request;
        state.next_request += 1;
        let deliveries = deliveries(request);
        state.requests.insert(
            request,
            Request {
                unsettled: deliveries.len(),
                abandoned: false,
                refusals: Vec::new(),
                ids,
                answer: sender,
            },
        );
        state.queue.extend(
            deliveries
                .into_iter()
                .map(|delivery| Queued { request, delivery }),
        );
        drop(state);
        self.arrived.notify_waiters();
        Some((request, receiver))
    }

    /// Forgets a request answered without its settlements (deadline, sender gone): its queued
    /// deliveries go, and later settlements of the others are lost. Whether it was still there.
    pub(crate) fn forget(&self, request: u64) -> bool {
        let mut state = self.lock();
        let known = state.requests.remove(&request).is_some();
        if known {
            state.queue.retain(|queued| queued.request != request);
        }
        known
    }

    /// Up to `max` queued deliveries, without waiting.
    pub(crate) fn take(&self, max: usize) -> Taken {
        let mut state = self.lock();
        if state.closed {
            return Taken::Closed;
        }
        if state.queue.is_empty() {
            return Taken::Empty;
        }
        let count = max.min(state.queue.len());
        Taken::Deliveries(
            state
                .queue
                .drain(..count)
                .map(|queued| queued.delivery)
                .collect(),
        )
    }

    /// Waits for `take` to find something (or the close). Cancel safe: nothing is taken here.
    pub(crate) async fn take_waiting(&self, max: usize) -> Taken {
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            // Registered before looking, so an admission between the look and the wait wakes it.
            arrived.as_mut().enable();
            match self.take(max) {
                Taken::Empty => arrived.await,
                found => return found,
            }
        }
    }

    /// Records one settlement; answers the request when it was its last.
    pub(crate) fn settle(&self, request: u64, index: usize, settlement: Settlement) -> Settled {
        let mut state = self.lock();
        if state.closed {
            return Settled::Lost;
        }
        let Some(entry) = state.requests.get_mut(&request) else {
            return Settled::Lost;
        };
        match settlement {
            Settlement::Abandon => entry.abandoned = true,
            Settlement::DeadLetter {
                reason,
                description,
                ..
            } => entry.refusals.push(RefusedEvent {
                index,
                id: entry.ids.get(index).cloned().flatten(),
                reason,
                description,
            }),
            // Complete, and any settlement added later, count as applied.
            _ => {}
        }
        entry.unsettled = entry.unsettled.saturating_sub(1);
        if entry.unsettled == 0 {
            if let Some(entry) = state.requests.remove(&request) {
                let answer = if entry.abandoned {
                    Answer::Retry
                } else if entry.refusals.is_empty() {
                    Answer::Done
                } else {
                    let mut refusals = entry.refusals;
                    refusals.sort_by_key(|refusal| refusal.index);
                    Answer::Refused(refusals)
                };
                // The sender may have gone meanwhile; then nobody is owed the answer.
                let _ = entry.answer.send(answer);
            }
        }
        Settled::Recorded
    }

    /// Closes: every waiting request is answered 503 (Event Grid retries it, to whichever
    /// endpoint listens then), queued deliveries are dropped, and `take` reports the close.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.queue.clear();
        for (_, request) in state.requests.drain() {
            let _ = request.answer.send(Answer::Retry);
        }
        drop(state);
        self.arrived.notify_waiters();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }
}
