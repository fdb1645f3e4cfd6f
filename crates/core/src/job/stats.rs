//! Counters the job keeps, read through [`JobHandle::stats`](super::JobHandle::stats), and the
//! same figures through the `metrics` facade.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Histogram};

/// A point-in-time copy of the job's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Deliveries received from the source.
    pub received: u64,
    /// Events read from those deliveries.
    pub events: u64,
    /// Events that invalidated cache entries.
    pub invalidated: u64,
    /// Well-formed events that did not concern this job.
    pub ignored: u64,
    /// Deliveries completed.
    pub completed: u64,
    /// Deliveries abandoned (to be retried, or at shutdown).
    pub abandoned: u64,
    /// Deliveries dead-lettered, for any reason.
    pub dead_lettered: u64,
    /// Of those, the ones whose payload could not be parsed.
    pub malformed: u64,
    /// Failed receive calls.
    pub receive_errors: u64,
    /// Failed settle calls.
    pub settle_errors: u64,
}

/// The metric names, all under the `keyvault_invalidator_` prefix and labelled with `job`.
pub mod names {
    /// Counter: deliveries received.
    pub const RECEIVED: &str = "keyvault_invalidator_deliveries_received_total";
    /// Counter: events that invalidated the cache.
    pub const INVALIDATED: &str = "keyvault_invalidator_events_invalidated_total";
    /// Counter: events ignored.
    pub const IGNORED: &str = "keyvault_invalidator_events_ignored_total";
    /// Counter: deliveries completed.
    pub const COMPLETED: &str = "keyvault_invalidator_deliveries_completed_total";
    /// Counter: deliveries abandoned.
    pub const ABANDONED: &str = "keyvault_invalidator_deliveries_abandoned_total";
    /// Counter: deliveries dead-lettered; label `reason`.
    pub const DEAD_LETTERED: &str = "keyvault_invalidator_deliveries_dead_lettered_total";
    /// Counter: failed receive calls.
    pub const RECEIVE_ERRORS: &str = "keyvault_invalidator_receive_errors_total";
    /// Counter: failed settle calls.
    pub const SETTLE_ERRORS: &str = "keyvault_invalidator_settle_errors_total";
    /// Histogram: seconds from receipt to settlement of a delivery.
    pub const PROCESSING_SECONDS: &str = "keyvault_invalidator_processing_seconds";
    /// Histogram: seconds from the event's time to its handling.
    pub const EVENT_AGE_SECONDS: &str = "keyvault_invalidator_event_age_seconds";
}

#[derive(Default)]
struct Counts {
    received: AtomicU64,
    events: AtomicU64,
    invalidated: AtomicU64,
    ignored: AtomicU64,
    completed: AtomicU64,
    abandoned: AtomicU64,
    dead_lettered: AtomicU64,
    malformed: AtomicU64,
    receive_errors: AtomicU64,
    settle_errors: AtomicU64,
}

/// The job's counters and metric handles. Handles are registered once, at spawn, so the hot
/// path does no label allocation or registry lookup.
pub(crate) struct Stats {
    counts: Counts,
    metrics: Handles,
}

struct Handles {
    received: Counter,
    invalidated: Counter,
    ignored: Counter,
    completed: Counter,
    abandoned: Counter,
    dead_lettered_malformed: Counter,
    dead_lettered_rejected: Counter,
    dead_lettered_exhausted: Counter,
    receive_errors: Counter,
    settle_errors: Counter,
    processing: Histogram,
    event_age: Histogram,
}

/// The outcome of one delivery, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    Completed,
    Abandoned,
    DeadLettered(crate::source::DeadLetterReason),
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    pub(crate) fn new(job: &str) -> Self {
        use crate::source::DeadLetterReason as R;
        let job = job.to_owned();
        let dead = |reason: R| metrics::counter!(names::DEAD_LETTERED, "job" => job.clone(), "reason" => reason.as_str());
        Stats {
            counts: Counts::default(),
            metrics: Handles {
                received: metrics::counter!(names::RECEIVED, "job" => job.clone()),
                invalidated: metrics::counter!(names::INVALIDATED, "job" => job.clone()),
                ignored: metrics::counter!(names::IGNORED, "job" => job.clone()),
                completed: metrics::counter!(names::COMPLETED, "job" => job.clone()),
                abandoned: metrics::counter!(names::ABANDONED, "job" => job.clone()),
                dead_lettered_malformed: dead(R::MalformedPayload),
                dead_lettered_rejected: dead(R::InvalidationRejected),
                dead_lettered_exhausted: dead(R::MaxAttemptsExceeded),
                receive_errors: metrics::counter!(names::RECEIVE_ERRORS, "job" => job.clone()),
                settle_errors: metrics::counter!(names::SETTLE_ERRORS, "job" => job.clone()),
                processing: metrics::histogram!(names::PROCESSING_SECONDS, "job" => job.clone()),
                event_age: metrics::histogram!(names::EVENT_AGE_SECONDS, "job" => job),
            },
        }
    }

    pub(crate) fn received(&self, deliveries: usize) {
        add(&self.counts.received, deliveries as u64);
        self.metrics.received.increment(deliveries as u64);
    }

    pub(crate) fn events(&self, events: usize) {
        add(&self.counts.events, events as u64);
    }

    pub(crate) fn invalidated(&self) {
        add(&self.counts.invalidated, 1);
        self.metrics.invalidated.increment(1);
    }

    pub(crate) fn ignored(&self) {
        add(&self.counts.ignored, 1);
        self.metrics.ignored.increment(1);
    }

    pub(crate) fn event_age(&self, age: Duration) {
        self.metrics.event_age.record(age.as_secs_f64());
    }

    pub(crate) fn settled(&self, outcome: Settled, processing: Duration) {
        use crate::source::DeadLetterReason as R;
        match outcome {
            Settled::Completed => {
                add(&self.counts.completed, 1);
                self.metrics.completed.increment(1);
            }
            Settled::Abandoned => {
                add(&self.counts.abandoned, 1);
                self.metrics.abandoned.increment(1);
            }
            Settled::DeadLettered(reason) => {
                add(&self.counts.dead_lettered, 1);
                let counter = match reason {
                    R::MalformedPayload => {
                        add(&self.counts.malformed, 1);
                        &self.metrics.dead_lettered_malformed
                    }
                    R::InvalidationRejected => &self.metrics.dead_lettered_rejected,
                    R::MaxAttemptsExceeded => &self.metrics.dead_lettered_exhausted,
                };
                counter.increment(1);
            }
        }
        self.metrics.processing.record(processing.as_secs_f64());
    }

    pub(crate) fn receive_error(&self) {
        add(&self.counts.receive_errors, 1);
        self.metrics.receive_errors.increment(1);
    }

    pub(crate) fn settle_error(&self) {
        add(&self.counts.settle_errors, 1);
        self.metrics.settle_errors.increment(1);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let c = &self.counts;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            received: get(&c.received),
            events: get(&c.events),
            invalidated: get(&c.invalidated),
            ignored: get(&c.ignored),
            completed: get(&c.completed),
            abandoned: get(&c.abandoned),
            dead_lettered: get(&c.dead_lettered),
            malformed: get(&c.malformed),
            receive_errors: get(&c.receive_errors),
            settle_errors: get(&c.settle_errors),
        }
    }
}
