//! The emulator's entities: topics and their subscriptions.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

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
}

#[derive(Debug, Default)]
pub(crate) struct Subscription {
    pub(crate) settings: SubscriptionSettings,
    pub(crate) messages: VecDeque<StoredMessage>,
}

#[derive(Debug, Default)]
pub(crate) struct Topic {
    pub(crate) subscriptions: BTreeMap<String, Subscription>,
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
                messages: VecDeque::new(),
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

    pub(crate) fn subscription(&self, topic: &str, name: &str) -> Option<&Subscription> {
        self.topics
            .get(&topic.to_ascii_lowercase())?
            .subscriptions
            .get(&name.to_ascii_lowercase())
    }

    /// Every subscription of the topic gets its own copy. Whether the topic exists.
    pub(crate) fn publish(&mut self, topic: &str, message: StoredMessage) -> bool {
        let Some(topic) = self.topics.get_mut(&topic.to_ascii_lowercase()) else {
            return false;
        };
        for subscription in topic.subscriptions.values_mut() {
            subscription.messages.push_back(message.clone());
        }
        true
    }
}
