//! What happens to one delivery: parse, invalidate, decide, settle.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::backoff::Backoff;
use super::stats::{Settled, Stats};
use crate::event::{Event, EventKind, EventParser};
use crate::invalidator::{InvalidationError, Invalidator, Outcome};
use crate::source::{DeadLetterReason, Delivery, DeliveryToken, EventSource, Settlement};

pub(super) struct Worker {
    pub(super) source: Arc<dyn EventSource>,
    pub(super) invalidator: Arc<dyn Invalidator>,
    pub(super) stats: Arc<Stats>,
    pub(super) parser: EventParser,
    pub(super) max_attempts: u32,
    pub(super) retry_backoff: Backoff,
    /// Graceful shutdown began: stop waiting out retry backoffs.
    pub(super) shutdown: CancellationToken,
    /// The shutdown deadline passed: stop invalidating and abandon.
    pub(super) deadline_passed: CancellationToken,
}

impl Worker {
    pub(super) async fn process(&self, delivery: Delivery) {
        let span = tracing::info_span!(
            "delivery",
            message_id = delivery.message_id.as_deref().unwrap_or(""),
            delivery_count = delivery.delivery_count,
            event_id = tracing::field::Empty,
            vault = tracing::field::Empty,
            secret = tracing::field::Empty,
        );
        async {
            let started = Instant::now();
            // The invalidator's own panics are caught in `decide`; this catches the rest (the
            // parser, the engine's own bookkeeping) so that no panic ends a delivery unsettled:
            // it is retried like any failure that may pass, and dead-lettered after
            // `max_attempts` if it keeps panicking.
            let (settlement, settled) = match AssertUnwindSafe(self.decide(&delivery))
                .catch_unwind()
                .await
            {
                Ok(decided) => decided,
                Err(panic) => {
                    let failure = InvalidationError::retryable(format!(
                        "processing the delivery panicked: {}",
                        panic_message(panic.as_ref())
                    ));
                    self.after_failure(&delivery, failure).await
                }
            };
            self.stats.settled(settled, started.elapsed());
            match &settlement {
                Settlement::Complete => tracing::debug!("completing"),
                Settlement::Abandon => tracing::info!("abandoning; the delivery will come back"),
                Settlement::DeadLetter {
                    reason,
                    description,
                } => {
                    tracing::warn!(reason = %reason, description = %description, "dead-lettering")
                }
            }
            self.settle_now(delivery.token, settlement).await;
        }
        .instrument(span)
        .await
    }

    pub(super) async fn settle_now(&self, token: DeliveryToken, settlement: Settlement) {
        // A source whose `settle` panics has lost this settlement, just as one that returned an
        // error: count it the same way, and let the panic go no further than this delivery
        // (this also runs on the engine's own task, for deliveries beyond the asked-for batch).
        let settled = AssertUnwindSafe(self.source.settle(token, settlement))
            .catch_unwind()
            .await;
        let error = match settled {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(panic) => format!(
                "the source's settle panicked: {}",
                panic_message(panic.as_ref())
            ),
        };
        self.stats.settle_error();
        tracing::warn!(%error, "settling failed; the transport will redeliver the message");
    }

    async fn decide(&self, delivery: &Delivery) -> (Settlement, Settled) {
        let events = match self.parser.parse(&delivery.body) {
            Ok(events) => events,
            Err(error) => {
                return dead_letter(DeadLetterReason::MalformedPayload, error.to_string());
            }
        };
        self.stats.events(events.len());
        for event in &events {
            record_event(event);
            if let Some(age) = event
                .time
                .and_then(|time| (chrono::Utc::now() - time).to_std().ok())
            {
                self.stats.event_age(age);
            }
            let handled = tokio::select! {
                biased;
                _ = self.deadline_passed.cancelled() => {
                    return (Settlement::Abandon, Settled::Abandoned);
                }
                handled = AssertUnwindSafe(self.invalidator.handle(event)).catch_unwind() => handled,
            };
            let failure = match handled {
                Ok(Ok(Outcome::Invalidated { keys })) => {
                    self.stats.invalidated();
                    tracing::info!(keys = ?keys, "invalidated");
                    continue;
                }
                Ok(Ok(Outcome::Ignored(reason))) => {
                    self.stats.ignored();
                    tracing::debug!(%reason, "ignored");
                    continue;
                }
                Ok(Err(error)) => error,
                // A panicking invalidator (or the cache under it) must not lose the delivery:
                // treat it as a failure that may pass. The panic's message goes into the
                // dead-letter description should it keep happening.
                Err(panic) => InvalidationError::retryable(format!(
                    "the invalidator panicked: {}",
                    panic_message(panic.as_ref())
                )),
            };
            return self.after_failure(delivery, failure).await;
        }
        (Settlement::Complete, Settled::Completed)
    }

    async fn after_failure(
        &self,
        delivery: &Delivery,
        error: InvalidationError,
    ) -> (Settlement, Settled) {
        if !error.retryable {
            return dead_letter(DeadLetterReason::InvalidationRejected, error.to_string());
        }
        let attempt = delivery.delivery_count.max(1);
        if attempt >= self.max_attempts {
            return dead_letter(
                DeadLetterReason::MaxAttemptsExceeded,
                format!("invalidation failed on all {attempt} attempts; last error: {error}"),
            );
        }
        // The backend's Retry-After, when longer, sets the pause; capped at the backoff's
        // ceiling so a delivery is not held for longer than the job would ever wait (a cache
        // that honours Retry-After refuses early retries itself without calling the backend).
        let asked = error
            .retry_after
            .map_or(Duration::ZERO, |after| after.min(self.retry_backoff.max));
        let pause = self.retry_backoff.delay(attempt).max(asked);
        tracing::warn!(%error, attempt, pause_ms = pause.as_millis() as u64, "invalidation failed; abandoning after a pause so it is retried");
        // Waiting before the abandon (rather than after) is what spaces the retries: the
        // transport redelivers as soon as it is abandoned.
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            _ = tokio::time::sleep(pause) => {}
        }
        (Settlement::Abandon, Settled::Abandoned)
    }
}

/// The text a panic was raised with (`panic!("...")` gives a `&str` or a `String`), for logs
/// and dead-letter descriptions.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(text) = panic.downcast_ref::<&'static str>() {
        text
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text
    } else {
        "a panic with no message"
    }
}

fn dead_letter(reason: DeadLetterReason, description: String) -> (Settlement, Settled) {
    (
        Settlement::dead_letter(reason, description),
        Settled::DeadLettered(reason),
    )
}

fn record_event(event: &Event) {
    let span = tracing::Span::current();
    span.record("event_id", event.id.as_str());
    if let EventKind::KeyVault(kv) = &event.kind {
        span.record("secret", kv.name.as_str());
        if let Some(vault) = &kv.vault {
            span.record("vault", vault.as_str());
        }
    }
}
