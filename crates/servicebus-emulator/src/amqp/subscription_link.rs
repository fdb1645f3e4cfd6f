//! A client's receiver on a subscription or its dead-letter sub-queue: peek-lock deliveries as
//! the link's credit allows, the lock each transfer starts, and the settlement the client sends
//! back (complete, abandon, dead-letter, or a lost lock).
//!
//! Separate from the connection and session handling in [`super`] because this is where the
//! delivery contract a source relies on lives: one place to read for "what happens to a
//! message between the queue and the client's settlement".

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fe2o3_amqp::types::definitions::Fields;
use fe2o3_amqp::types::messaging::{
    Accepted, ApplicationProperties, Data, DeliveryState, Header, Message, MessageAnnotations,
    Modified, Outcome, Properties, Rejected, Released,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Timestamp, Value};
use fe2o3_amqp::Sender;
use tokio::sync::broadcast;
use tokio::task::JoinSet;

use crate::entities::{system_time, Lock, RecordedSettlement, StoredMessage};

use crate::Namespace;

use super::{
    answer_detach, error, not_found, token_expired, unauthorized, Conn, Entity, IDLE_RECHECK,
    LOCK_LOST, LOCK_LOST_DESCRIPTION,
};

/// A message reserved for a transfer. Settled explicitly by [`Reservation::give_back`] (it
/// certainly did not go out) or by being dropped, which starts its lock: a transfer cut short
/// (the link's task aborted with its connection) may have reached the client, so the message
/// is treated as delivered, as the service does.
struct Reservation {
    shared: Arc<Namespace>,
    entity: Entity,
    token: String,
    given_back: bool,
}

impl Reservation {
    fn give_back(mut self) {
        self.given_back = true;
        if let Some(sub) = self
            .shared
            .lock()
            .entities
            .subscription_mut(&self.entity.topic, &self.entity.subscription)
        {
            sub.unreserve(self.entity.queue, &self.token);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.given_back {
            if let Some(sub) = self
                .shared
                .lock()
                .entities
                .subscription_mut(&self.entity.topic, &self.entity.subscription)
            {
                sub.transferred(self.entity.queue, &self.token, Instant::now());
            }
        }
    }
}

/// The next condition `detach_links_with_error` asks for.
async fn next_fault(faults: &mut broadcast::Receiver<String>) -> String {
    loop {
        match faults.recv().await {
            Ok(condition) => return condition,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// A client's receiver on a subscription or its dead-letter sub-queue: peek-lock deliveries.
pub(super) async fn entity_link(mut sender: Sender, address: String, entity: Entity, conn: Conn) {
    let shared = conn.shared.clone();
    let mut faults = shared.link_faults.subscribe();
    if !conn.authorised(&entity.path()) {
        let _ = sender.close_with_error(unauthorized("Listen")).await;
        return;
    }
    let (topic, subscription, queue) = (
        entity.topic.clone(),
        entity.subscription.clone(),
        entity.queue,
    );
    let mut settlements = JoinSet::new();
    loop {
        while settlements.try_join_next().is_some() {}
        if !conn.authorised(&entity.path()) {
            let _ = sender.close_with_error(token_expired()).await;
            return;
        }
        // Reserve the next message, or learn when to look again.
        let now = Instant::now();
        let looked = shared
            .lock()
            .entities
            .subscription_mut(&topic, &subscription)
            .map(|sub| {
                let next = match sub.reserve(queue, now) {
                    Some(reserved) => Ok(reserved),
                    None => Err(sub.next_lock_expiry(queue)),
                };
                (
                    sub.queue(queue).available.clone(),
                    sub.settings.lock_duration,
                    next,
                )
            });
        let Some((available, lock_duration, next)) = looked else {
            let _ = sender.close_with_error(not_found(&address)).await;
            return;
        };
        match next {
            Ok((message, lock)) => {
                let reservation = Reservation {
                    shared: shared.clone(),
                    entity: entity.clone(),
                    token: lock.token.clone(),
                    given_back: false,
                };
                let amqp_message = to_amqp(&message, Some((&lock, lock_duration)));
                // Waits for link credit; the lock starts once the transfer went out.
                let sent = tokio::select! {
                    sent = sender.send_batchable(amqp_message) => Some(sent),
                    condition = next_fault(&mut faults) => {
                        reservation.give_back();
                        let _ = sender
                            .close_with_error(error(&condition, fault_description(&condition)))
                            .await;
                        return;
                    }
                };
                match sent {
                    Some(Ok(outcome)) => {
                        drop(reservation);
                        let conn = conn.clone();
                        let entity = entity.clone();
                        settlements.spawn(async move {
                            if let Ok(outcome) = outcome.await {
                                let state = settle(&conn.shared, &entity, &lock.token, &outcome);
                                conn.wire.settle(&lock.token, state);
                            }
                        });
                    }
                    _ => {
                        reservation.give_back();
                        let error = sender.on_detach().await;
                        answer_detach(sender, error).await;
                        return;
                    }
                }
            }
            Err(next_expiry) => {
                let notified = available.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                // A message may have arrived between the look and `enable`.
                let ready = shared
                    .lock()
                    .entities
                    .subscription(&topic, &subscription)
                    .is_none_or(|s| !s.queue(queue).messages.is_empty());
                if ready {
                    continue;
                }
                let wake = next_expiry
                    .map_or(IDLE_RECHECK, |at| {
                        at.saturating_duration_since(Instant::now())
                    })
                    .min(IDLE_RECHECK);
                tokio::select! {
                    () = &mut notified => {}
                    () = tokio::time::sleep(wake) => {}
                    error = sender.on_detach() => {
                        answer_detach(sender, error).await;
                        return;
                    }
                    condition = next_fault(&mut faults) => {
                        let _ = sender
                            .close_with_error(error(&condition, fault_description(&condition)))
                            .await;
                        return;
                    }
                }
            }
        }
    }
}

fn fault_description(condition: &str) -> String {
    format!("The emulator detached the link ({condition}).")
}

pub(crate) fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The message as it goes to a receiver: with its lock's annotations when it is delivered
/// (`lock` and the lock duration), without when it is peeked.
pub(crate) fn to_amqp(message: &StoredMessage, lock: Option<(&Lock, Duration)>) -> Message<Data> {
    let mut properties = ApplicationProperties::builder();
    for (key, value) in &message.properties {
        properties = properties.insert(key.clone(), SimpleValue::String(value.clone()));
    }
    let mut annotations = MessageAnnotations::builder();
    if let Some((lock, lock_duration)) = lock {
        let lock_token = uuid::Uuid::parse_str(&lock.token).unwrap_or_default();
        let locked_until = system_time(Instant::now() + lock_duration);
        annotations = annotations
            .insert(
                Symbol::from("x-opt-lock-token"),
                Value::Uuid(lock_token.into_bytes().into()),
            )
            .insert(
                Symbol::from("x-opt-locked-until"),
                Value::Timestamp(Timestamp::from_milliseconds(millis(locked_until))),
            );
    }
    let annotations = annotations
        .insert(
            Symbol::from("x-opt-enqueued-time"),
            Value::Timestamp(Timestamp::from_milliseconds(millis(message.enqueued_time))),
        )
        .insert(
            Symbol::from("x-opt-sequence-number"),
            Value::Long(message.sequence_number),
        )
        .build();
    Message::builder()
        .header(Header {
            durable: true,
            // AMQP counts prior deliveries; the state counts this one too (a peeked message:
            // those so far).
            delivery_count: if lock.is_some() {
                message.delivery_count.saturating_sub(1)
            } else {
                message.delivery_count
            },
            ..Default::default()
        })
        .message_annotations(annotations)
        .properties(Properties {
            message_id: message.message_id.clone().map(Into::into),
            ..Default::default()
        })
        .application_properties(properties.build())
        .data(Binary::from(message.body.clone()))
        .build()
}

fn info_string(info: Option<&Fields>, key: &str) -> String {
    match info.and_then(|info| info.get(&Symbol::from(key))) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Symbol(s)) => s.0.clone(),
        _ => String::new(),
    }
}

/// The settled state the service answers when a lock was lost.
pub(crate) fn lock_lost_state() -> DeliveryState {
    DeliveryState::Rejected(Rejected {
        error: Some(error(LOCK_LOST, LOCK_LOST_DESCRIPTION.to_owned())),
    })
}

/// Applies a receiver's outcome; returns the state to settle the delivery with: the outcome
/// applied (a dead-letter as a bare Rejected), or a lost lock.
fn settle(shared: &Namespace, entity: &Entity, token: &str, outcome: &Outcome) -> DeliveryState {
    let mut state = shared.lock();
    let Some(sub) = state
        .entities
        .subscription_mut(&entity.topic, &entity.subscription)
    else {
        return lock_lost_state();
    };
    let now = Instant::now();
    let queue = entity.queue;
    let (name, result, applied) = match outcome {
        Outcome::Accepted(_) => (
            "accepted",
            sub.complete(queue, token, now),
            DeliveryState::Accepted(Accepted {}),
        ),
        // Released does not count the delivery (Azure/amqpnetlite#342).
        Outcome::Released(_) => (
            "released",
            sub.release(queue, token, now),
            DeliveryState::Released(Released {}),
        ),
        // Modified counts it, whatever `delivery-failed` says; `undeliverable-here` (a defer in
        // the SDKs) is treated the same: deferral is not emulated.
        Outcome::Modified(modified) => (
            "modified",
            sub.abandon(queue, token, now),
            DeliveryState::Modified(Modified {
                delivery_failed: modified.delivery_failed,
                undeliverable_here: modified.undeliverable_here,
                message_annotations: None,
            }),
        ),
        Outcome::Rejected(rejected) => {
            // With `com.microsoft:dead-letter` and its info the receiver names a reason; a bare
            // Rejected dead-letters without one.
            let info = rejected.error.as_ref().and_then(|e| e.info.as_deref());
            let reason = info_string(info, "DeadLetterReason");
            let description = info_string(info, "DeadLetterErrorDescription");
            (
                "rejected",
                sub.dead_letter(queue, token, &reason, &description, now),
                // The service confirms a dead-letter with a Rejected without an error: one with
                // an error is a failure to azure-sdk-for-python (`check_disposition_outcome`).
                DeliveryState::Rejected(Rejected { error: None }),
            )
        }
        #[allow(unreachable_patterns)]
        _ => ("unknown", Ok(()), DeliveryState::Accepted(Accepted {})),
    };
    let answer = if result.is_ok() {
        applied
    } else {
        lock_lost_state()
    };
    sub.queue_mut(queue).settlements.push(RecordedSettlement {
        lock_token: token.to_owned(),
        outcome: name,
        applied: result.is_ok(),
    });
    answer
}
