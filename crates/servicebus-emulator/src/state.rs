//! The emulator's entities: topics and their subscriptions.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

/// How a subscription was created (from the management API's Atom entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSettings {
    /// `LockDuration`.
    pub lock_duration: Duration,
    /// `MaxDeliveryCount`.
    pub max_delivery_count: u32,
    /// `AutoDeleteOnIdle`.
    pub auto_delete_on_idle: Duration,
}

impl Default for SubscriptionSettings {
    fn default() -> Self {
        // The service's own defaults.
        SubscriptionSettings {
            lock_duration: Duration::from_secs(60),
            max_delivery_count: 10,
            auto_delete_on_idle: Duration::from_secs(u32::MAX as u64),
        }
    }
}

/// A message as the emulator stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The body.
    pub body: Vec<u8>,
    /// Application properties.
    pub properties: BTreeMap<String, String>,
    /// Deliveries so far.
    pub delivery_count: u32,
    /// The message id (`properties.message-id`), if the sender set one.
    pub message_id: Option<String>,
    /// The sequence number the topic assigned (`x-opt-sequence-number`), from 1.
    pub sequence_number: i64,
    /// When the topic accepted the message (`x-opt-enqueued-time`).
    pub enqueued_time: SystemTime,
}

/// A message in a subscription's dead-letter sub-queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetteredMessage {
    /// The message as it was last delivered.
    pub message: StoredMessage,
    /// `DeadLetterReason`.
    pub reason: String,
    /// `DeadLetterErrorDescription`.
    pub description: String,
}

/// A peek-lock: the lock token (a GUID, as Service Bus issues) and its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lock {
    pub(crate) token: String,
    pub(crate) locked_until: Instant,
}

/// Why a settlement was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockLost {
    /// The lock expired (the message went back to the queue) or the token is unknown.
    Expired,
}

#[derive(Debug, Default)]
pub(crate) struct Subscription {
    pub(crate) settings: SubscriptionSettings,
    pub(crate) messages: VecDeque<StoredMessage>,
    pub(crate) locked: BTreeMap<String, (StoredMessage, Instant)>,
    pub(crate) dead_letters: Vec<DeadLetteredMessage>,
    /// Messages handed to a receiver link that waits for link credit to transfer them: not
    /// delivered yet, so no lock runs (the lock starts on transfer, as on the service).
    pub(crate) reserved: BTreeMap<String, StoredMessage>,
    /// Every settlement a receiver sent, in order.
    pub(crate) settlements: Vec<Settlement>,
    /// Woken whenever a message becomes available.
    pub(crate) available: Arc<Notify>,
    next_lock: u64,
}

/// One settlement (disposition) a receiver sent for a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The delivery's lock token (`x-opt-lock-token`), GUID text.
    pub lock_token: String,
    /// `"accepted"`, `"rejected"`, `"released"` or `"modified"`.
    pub outcome: &'static str,
    /// Whether it took effect: `false` when the lock had already expired (the message had
    /// gone back to the queue), as the service loses such a settlement.
    pub applied: bool,
}

impl Subscription {
    /// Returns expired locks' messages to the front of the queue, as the service does.
    pub(crate) fn expire_locks(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .locked
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(token, _)| token.clone())
            .collect();
        let any = !expired.is_empty();
        for token in expired.into_iter().rev() {
            if let Some((message, _)) = self.locked.remove(&token) {
                self.messages.push_front(message);
            }
        }
        if any {
            self.available.notify_waiters();
        }
    }

    /// When the earliest lock runs out.
    pub(crate) fn next_lock_expiry(&self) -> Option<Instant> {
        self.locked.values().map(|(_, until)| *until).min()
    }

    /// Like [`receive`](Self::receive), for a link that still has to wait for credit: the
    /// message is counted and gets its token, but its lock starts only at
    /// [`transferred`](Self::transferred); [`unreserve`](Self::unreserve) undoes it.
    pub(crate) fn reserve(&mut self, now: Instant) -> Option<(StoredMessage, Lock)> {
        let (message, lock) = self.receive(now)?;
        self.locked.remove(&lock.token);
        self.reserved.insert(lock.token.clone(), message.clone());
        Some((message, lock))
    }

    /// The reserved message went out: its lock starts now. Whether it was still reserved.
    pub(crate) fn transferred(&mut self, token: &str, now: Instant) -> bool {
        match self.reserved.remove(token) {
            Some(message) => {
                self.locked.insert(
                    token.to_owned(),
                    (message, now + self.settings.lock_duration),
                );
                true
            }
            None => false,
        }
    }

    /// The reserved message never went out: back to the front of the queue, uncounted.
    pub(crate) fn unreserve(&mut self, token: &str) {
        if let Some(mut message) = self.reserved.remove(token) {
            message.delivery_count = message.delivery_count.saturating_sub(1);
            self.messages.push_front(message);
            self.available.notify_waiters();
        }
    }

    /// Locks the next message: its delivery count rises; past `MaxDeliveryCount` it moves to
    /// the dead-letter sub-queue instead (reason `MaxDeliveryCountExceeded`).
    pub(crate) fn receive(&mut self, now: Instant) -> Option<(StoredMessage, Lock)> {
        self.expire_locks(now);
        while let Some(mut message) = self.messages.pop_front() {
            if message.delivery_count >= self.settings.max_delivery_count {
                self.dead_letters.push(DeadLetteredMessage {
                    message,
                    reason: "MaxDeliveryCountExceeded".to_owned(),
                    description: format!(
                        "Message could not be consumed after {} delivery attempts.",
                        self.settings.max_delivery_count
                    ),
                });
                continue;
            }
            message.delivery_count += 1;
            self.next_lock += 1;
            let token = lock_token(self.next_lock);
            let locked_until = now + self.settings.lock_duration;
            self.locked
                .insert(token.clone(), (message.clone(), locked_until));
            return Some((
                message,
                Lock {
                    token,
                    locked_until,
                },
            ));
        }
        None
    }

    fn take_locked(&mut self, token: &str, now: Instant) -> Result<StoredMessage, LockLost> {
        self.expire_locks(now);
        self.locked
            .remove(token)
            .map(|(message, _)| message)
            .ok_or(LockLost::Expired)
    }

    pub(crate) fn complete(&mut self, token: &str, now: Instant) -> Result<(), LockLost> {
        self.take_locked(token, now).map(|_| ())
    }

    /// Back to the front of the queue; the next receive counts one more delivery.
    pub(crate) fn abandon(&mut self, token: &str, now: Instant) -> Result<(), LockLost> {
        let message = self.take_locked(token, now)?;
        self.messages.push_front(message);
        self.available.notify_waiters();
        Ok(())
    }

    pub(crate) fn dead_letter(
        &mut self,
        token: &str,
        reason: &str,
        description: &str,
        now: Instant,
    ) -> Result<(), LockLost> {
        let message = self.take_locked(token, now)?;
        self.dead_letters.push(DeadLetteredMessage {
            message,
            reason: reason.to_owned(),
            description: description.to_owned(),
        });
        Ok(())
    }

    /// Expires every lock now (fault injection: "expire locks early").
    pub(crate) fn expire_all_locks(&mut self) {
        let now = Instant::now();
        for (_, until) in self.locked.values_mut() {
            *until = now;
        }
        self.expire_locks(now);
    }
}

/// A GUID-shaped lock token, unique within the emulator.
fn lock_token(n: u64) -> String {
    let n = u128::from(n) | (0x4000_8000u128 << 64);
    let hex = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[derive(Debug, Default)]
pub(crate) struct Topic {
    pub(crate) subscriptions: BTreeMap<String, Subscription>,
    /// The last sequence number assigned.
    pub(crate) last_sequence_number: i64,
}

#[derive(Debug, Default)]
pub(crate) struct Entities {
    /// Topic names are case-insensitive on the service; keys are lower-cased.
    pub(crate) topics: BTreeMap<String, Topic>,
}

/// What creating a subscription did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Creation {
    New,
    AlreadyExists,
    NoSuchTopic,
}

impl Entities {
    pub(crate) fn create_subscription(
        &mut self,
        topic: &str,
        name: &str,
        settings: SubscriptionSettings,
    ) -> Creation {
        let Some(topic) = self.topics.get_mut(&topic.to_ascii_lowercase()) else {
            return Creation::NoSuchTopic;
        };
        let key = name.to_ascii_lowercase();
        if topic.subscriptions.contains_key(&key) {
            return Creation::AlreadyExists;
        }
        topic.subscriptions.insert(
            key,
            Subscription {
                settings,
                ..Subscription::default()
            },
        );
        Creation::New
    }

    /// Whether the subscription existed.
    pub(crate) fn delete_subscription(&mut self, topic: &str, name: &str) -> bool {
        self.topics
            .get_mut(&topic.to_ascii_lowercase())
            .and_then(|t| t.subscriptions.remove(&name.to_ascii_lowercase()))
            .is_some()
    }

    pub(crate) fn subscription_mut(
        &mut self,
        topic: &str,
        name: &str,
    ) -> Option<&mut Subscription> {
        self.topics
            .get_mut(&topic.to_ascii_lowercase())?
            .subscriptions
            .get_mut(&name.to_ascii_lowercase())
    }

    pub(crate) fn subscription(&self, topic: &str, name: &str) -> Option<&Subscription> {
        self.topics
            .get(&topic.to_ascii_lowercase())?
            .subscriptions
            .get(&name.to_ascii_lowercase())
    }

    /// Every subscription of the topic gets its own copy. Whether the topic exists.
    /// The topic assigns the sequence number and the enqueued time.
    pub(crate) fn publish(&mut self, topic: &str, mut message: StoredMessage) -> bool {
        let Some(topic) = self.topics.get_mut(&topic.to_ascii_lowercase()) else {
            return false;
        };
        topic.last_sequence_number += 1;
        message.sequence_number = topic.last_sequence_number;
        message.enqueued_time = SystemTime::now();
        for subscription in topic.subscriptions.values_mut() {
            subscription.messages.push_back(message.clone());
            subscription.available.notify_waiters();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(max_delivery_count: u32) -> Subscription {
        let mut subscription = Subscription {
            settings: SubscriptionSettings {
                lock_duration: Duration::from_secs(60),
                max_delivery_count,
                ..SubscriptionSettings::default()
            },
            ..Subscription::default()
        };
        subscription.messages.push_back(StoredMessage {
            body: b"m".to_vec(),
            properties: BTreeMap::new(),
            delivery_count: 0,
            message_id: None,
            sequence_number: 1,
            enqueued_time: SystemTime::now(),
        });
        subscription
    }

    #[test]
    fn abandoned_messages_come_back_counted_and_are_dead_lettered_past_the_maximum() {
        let now = Instant::now();
        let mut sub = subscription(2);
        let (first, lock) = sub.receive(now).unwrap();
        assert_eq!(first.delivery_count, 1);
        sub.abandon(&lock.token, now).unwrap();
        let (second, lock) = sub.receive(now).unwrap();
        assert_eq!(second.delivery_count, 2);
        sub.abandon(&lock.token, now).unwrap();
        assert_eq!(sub.receive(now), None);
        assert_eq!(sub.dead_letters.len(), 1);
        assert_eq!(sub.dead_letters[0].reason, "MaxDeliveryCountExceeded");
    }

    #[test]
    fn an_expired_lock_cannot_settle_and_its_message_comes_back() {
        let now = Instant::now();
        let mut sub = subscription(10);
        let (_, lock) = sub.receive(now).unwrap();
        let later = now + Duration::from_secs(61);
        assert_eq!(sub.complete(&lock.token, later), Err(LockLost::Expired));
        let (again, second_lock) = sub.receive(later).unwrap();
        assert_eq!(again.delivery_count, 2);
        assert_ne!(lock.token, second_lock.token);
        sub.dead_letter(
            &second_lock.token,
            "MalformedPayload",
            "event 0: ...",
            later,
        )
        .unwrap();
        assert_eq!(sub.dead_letters[0].reason, "MalformedPayload");
        assert!(sub.messages.is_empty() && sub.locked.is_empty());
    }

    #[test]
    fn a_reserved_message_is_not_locked_until_transferred_and_can_go_back_uncounted() {
        let now = Instant::now();
        let mut sub = subscription(10);
        let (message, lock) = sub.reserve(now).unwrap();
        assert_eq!(message.delivery_count, 1);
        assert!(sub.locked.is_empty());
        sub.expire_all_locks();
        assert_eq!(sub.reserved.len(), 1);
        sub.unreserve(&lock.token);
        assert!(sub.reserved.is_empty());
        let (again, lock) = sub.reserve(now).unwrap();
        assert_eq!(again.delivery_count, 1);
        assert!(sub.transferred(&lock.token, now));
        assert_eq!(sub.next_lock_expiry(), Some(now + Duration::from_secs(60)));
        sub.complete(&lock.token, now).unwrap();
        assert!(!sub.transferred(&lock.token, now));
    }

    #[test]
    fn lock_tokens_look_like_guids() {
        assert_eq!(lock_token(1), "00000000-4000-8000-0000-000000000001");
        assert_ne!(lock_token(1), lock_token(2));
    }
}
