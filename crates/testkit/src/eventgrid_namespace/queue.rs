//! One event subscription's queue as the service keeps it: events ready (some only after a
//! release delay), events locked by a receive, and the dead-lettered; the lock-token rules
//! of `:acknowledge`, `:release`, `:reject` and `:renewLock`.
//!
//! Separate from the HTTP side so the delivery rules read on their own.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::{DeadLetteredEvent, SubscriptionSettings};

/// Locks are renewable within an hour of the first receive (Microsoft Learn, "Pull delivery
/// with HTTP": "renew ... up to an hour").
const RENEWABLE_FOR: Duration = Duration::from_secs(3600);

/// An event and its delivery bookkeeping.
struct Queued {
    event: Value,
    /// Deliveries so far.
    delivery_count: u32,
    /// Not handed out before this (a release delay).
    available_at: Instant,
    first_received: Option<Instant>,
}

struct Locked {
    queued: Queued,
    until: Instant,
}

/// What a settling operation does to a locked event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LockAction {
    Acknowledge,
    Release(Duration),
    Reject,
    Renew,
}

/// A lock token that was not taken, with the service's error code.
pub(super) struct FailedToken {
    pub(super) token: String,
    pub(super) code: &'static str,
    pub(super) message: &'static str,
}

/// One event subscription (queue delivery mode).
pub(super) struct Subscription {
    settings: SubscriptionSettings,
    ready: VecDeque<Queued>,
    locked: HashMap<String, Locked>,
    dead_letters: Vec<DeadLetteredEvent>,
}

impl Subscription {
    pub(super) fn new(settings: SubscriptionSettings) -> Self {
        Subscription {
            settings,
            ready: VecDeque::new(),
            locked: HashMap::new(),
            dead_letters: Vec::new(),
        }
    }

    pub(super) fn enqueue(&mut self, event: Value, now: Instant) {
        self.ready.push_back(Queued {
            event,
            delivery_count: 0,
            available_at: now,
            first_received: None,
        });
    }

    /// Locks that ran out give their events back (or dead-letter them, past the maximum
    /// delivery count), as the service does at the end of `receiveLockDurationInSeconds`.
    pub(super) fn expire_locks(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .locked
            .iter()
            .filter(|(_, locked)| locked.until <= now)
            .map(|(token, _)| token.clone())
            .collect();
        for token in expired {
            if let Some(locked) = self.locked.remove(&token) {
                self.give_back(locked.queued, now);
            }
        }
    }

    /// Locks and returns up to `max` ready events: `(lock token, delivery count, event)`.
    pub(super) fn receive(
        &mut self,
        max: usize,
        now: Instant,
        mut new_token: impl FnMut() -> String,
    ) -> Vec<(String, u32, Value)> {
        let mut taken = Vec::new();
        let mut index = 0;
        while taken.len() < max && index < self.ready.len() {
            if self.ready[index].available_at > now {
                index += 1;
                continue;
            }
            let Some(mut queued) = self.ready.remove(index) else {
                break;
            };
            queued.delivery_count += 1;
            queued.first_received.get_or_insert(now);
            let token = new_token();
            taken.push((token.clone(), queued.delivery_count, queued.event.clone()));
            self.locked.insert(
                token,
                Locked {
                    queued,
                    until: now + self.settings.lock_duration,
                },
            );
        }
        taken
    }

    /// Whether a receive would find something now.
    pub(super) fn has_ready(&self, now: Instant) -> bool {
        self.ready.iter().any(|queued| queued.available_at <= now)
    }

    /// Applies `action` to the event locked by `token`; a token not locked now fails with
    /// `TokenLost` (`issued`: it was handed out once) or `BadToken` (never issued).
    pub(super) fn settle(
        &mut self,
        action: LockAction,
        token: &str,
        issued: bool,
        now: Instant,
    ) -> Result<(), FailedToken> {
        let failed = |code, message| FailedToken {
            token: token.to_owned(),
            code,
            message,
        };
        let Some(locked) = self.locked.remove(token) else {
            return Err(if issued {
                failed(
                    "TokenLost",
                    "The lock token has expired or was already settled.",
                )
            } else {
                failed("BadToken", "The lock token is not valid.")
            });
        };
        match action {
            LockAction::Acknowledge => {}
            LockAction::Release(delay) => {
                let mut queued = locked.queued;
                queued.available_at = now + delay;
                self.give_back(queued, now);
            }
            LockAction::Reject => self.dead_letter(locked.queued, "Rejected"),
            LockAction::Renew => {
                let first = locked.queued.first_received.unwrap_or(now);
                if now.duration_since(first) > RENEWABLE_FOR {
                    // The lock can no longer be renewed: it lasts what it lasts.
                    self.locked.insert(token.to_owned(), locked);
                    return Err(failed(
                        "TokenLost",
                        "The lock cannot be renewed more than an hour after the first receive.",
                    ));
                }
                let until = now + self.settings.lock_duration;
                self.locked
                    .insert(token.to_owned(), Locked { until, ..locked });
            }
        }
        Ok(())
    }

    fn give_back(&mut self, queued: Queued, now: Instant) {
        if queued.delivery_count >= self.settings.max_delivery_count {
            self.dead_letter(queued, "MaxDeliveryCountExceeded");
        } else {
            let available_at = queued.available_at.max(now);
            self.ready.push_back(Queued {
                available_at,
                ..queued
            });
        }
    }

    fn dead_letter(&mut self, queued: Queued, reason: &str) {
        self.dead_letters.push(DeadLetteredEvent {
            event: queued.event,
            delivery_count: queued.delivery_count,
            reason: reason.to_owned(),
        });
    }

    pub(super) fn dead_letters(&self) -> Vec<DeadLetteredEvent> {
        self.dead_letters.clone()
    }

    pub(super) fn ready_count(&self) -> usize {
        self.ready.len()
    }

    pub(super) fn locked_count(&self) -> usize {
        self.locked.len()
    }
}
