//! The emulator's entities: topics, their subscriptions, and each subscription's two queues
//! (the active one and the dead-letter sub-queue).

mod subscription;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

pub(crate) use subscription::Subscription;

/// The application property the service sets on a dead-lettered message: why.
pub const DEAD_LETTER_REASON: &str = "DeadLetterReason";
/// The application property the service sets on a dead-lettered message: the details.
pub const DEAD_LETTER_ERROR_DESCRIPTION: &str = "DeadLetterErrorDescription";
/// The reason the service gives when a message ran out of deliveries.
pub const MAX_DELIVERY_COUNT_EXCEEDED: &str = "MaxDeliveryCountExceeded";

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
    /// Application properties. A message in the dead-letter sub-queue also has
    /// `DeadLetterReason` and `DeadLetterErrorDescription` here, as the service sets them.
    pub properties: BTreeMap<String, String>,
    /// Deliveries so far, this one included while it is locked.
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
    /// The message as it was last delivered (its own application properties, without the
    /// two below).
    pub message: StoredMessage,
    /// `DeadLetterReason`.
    pub reason: String,
    /// `DeadLetterErrorDescription`.
    pub description: String,
}

/// Which queue of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubQueue {
    /// The subscription itself.
    Active,
    /// Its dead-letter sub-queue, `{topic}/subscriptions/{subscription}/$deadletterqueue`.
    DeadLetter,
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

/// One settlement (disposition) a receiver sent for a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedSettlement {
    /// The delivery's lock token (`x-opt-lock-token`), GUID text.
    pub lock_token: String,
    /// `"accepted"`, `"rejected"`, `"released"` or `"modified"` (on the receiver link), or
    /// `"completed"`, `"abandoned"`, `"suspended"` (an `update-disposition` on `$management`).
    pub outcome: &'static str,
    /// Whether it took effect: `false` when the lock had already expired (the message had
    /// gone back to the queue), as the service loses such a settlement.
    pub applied: bool,
}

/// One lock token of a `com.microsoft:renew-lock` request on `$management`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedLockRenewal {
    /// The lock token, GUID text.
    pub lock_token: String,
    /// The new expiry, or `None` when the lock was lost (the request was answered 410).
    pub locked_until: Option<SystemTime>,
}

/// A queue with peek-lock: the active queue of a subscription or its dead-letter sub-queue.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub(crate) messages: VecDeque<StoredMessage>,
    pub(crate) locked: BTreeMap<String, (StoredMessage, Instant)>,
    /// Messages handed to a receiver link that waits for link credit to transfer them: not
    /// delivered yet, so no lock runs (the lock starts on transfer, as on the service).
    pub(crate) reserved: BTreeMap<String, StoredMessage>,
    /// Every settlement a receiver sent, in order.
    pub(crate) settlements: Vec<RecordedSettlement>,
    /// Every lock token a `renew-lock` named, in order.
    pub(crate) lock_renewals: Vec<RecordedLockRenewal>,
    /// Woken whenever a message becomes available.
    pub(crate) available: Arc<Notify>,
}

impl Queue {
    fn push_front(&mut self, message: StoredMessage) {
        self.messages.push_front(message);
        self.available.notify_waiters();
    }

    fn push_back(&mut self, message: StoredMessage) {
        self.messages.push_back(message);
        self.available.notify_waiters();
    }

    /// Every message in the queue, locked or not, by sequence number.
    fn all(&self) -> Vec<&StoredMessage> {
        let mut all: Vec<&StoredMessage> = self
            .messages
            .iter()
            .chain(self.locked.values().map(|(m, _)| m))
            .chain(self.reserved.values())
            .collect();
        all.sort_by_key(|m| m.sequence_number);
        all
    }
}

/// When an `Instant` in the future or past falls on the system clock.
pub(crate) fn system_time(at: Instant) -> SystemTime {
    let now = Instant::now();
    let system_now = SystemTime::now();
    if at >= now {
        system_now + (at - now)
    } else {
        system_now - (now - at)
    }
}

/// A topic: its subscriptions, and the sequence numbers it hands out.
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
        message.delivery_count = 0;
        for subscription in topic.subscriptions.values_mut() {
            subscription.active.push_back(message.clone());
        }
        true
    }
}
