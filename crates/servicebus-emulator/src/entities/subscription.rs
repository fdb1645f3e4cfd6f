//! One subscription's peek-lock rules: how messages are reserved, locked, settled (complete,
//! abandon, dead-letter, release), renewed, and how an expired lock or too many deliveries
//! move a message on.
//!
//! Separate from the entity tree ([`super`]) because this is the behaviour the emulator
//! promises to match the service on, and its tests sit next to it.

use std::time::Instant;

use super::*;

/// A subscription: its settings and its two queues (the active one and the dead-letter sub-queue).
#[derive(Debug, Default)]
pub(crate) struct Subscription {
    pub(crate) settings: SubscriptionSettings,
    pub(crate) active: Queue,
    pub(crate) dead_letter: Queue,
}

/// A fresh GUID lock token, unique across the emulator.
fn lock_token() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Subscription {
    pub(crate) fn queue(&self, which: SubQueue) -> &Queue {
        match which {
            SubQueue::Active => &self.active,
            SubQueue::DeadLetter => &self.dead_letter,
        }
    }

    pub(crate) fn queue_mut(&mut self, which: SubQueue) -> &mut Queue {
        match which {
            SubQueue::Active => &mut self.active,
            SubQueue::DeadLetter => &mut self.dead_letter,
        }
    }

    /// Moves a message to the dead-letter sub-queue with the service's two properties.
    fn dead_letter_message(&mut self, mut message: StoredMessage, reason: &str, description: &str) {
        message
            .properties
            .insert(DEAD_LETTER_REASON.to_owned(), reason.to_owned());
        message.properties.insert(
            DEAD_LETTER_ERROR_DESCRIPTION.to_owned(),
            description.to_owned(),
        );
        self.dead_letter.push_back(message);
    }

    fn max_delivery_count_description(&self) -> String {
        format!(
            "Message could not be consumed after {} delivery attempts.",
            self.settings.max_delivery_count
        )
    }

    /// A message that comes back to the active queue after a counted delivery: dead-lettered
    /// once its deliveries reached `MaxDeliveryCount`, as the service does.
    fn requeue_counted(&mut self, message: StoredMessage) {
        if message.delivery_count >= self.settings.max_delivery_count {
            let description = self.max_delivery_count_description();
            self.dead_letter_message(message, MAX_DELIVERY_COUNT_EXCEEDED, &description);
        } else {
            self.active.push_front(message);
        }
    }

    /// Returns expired locks' messages to the front of their queue, as the service does (an
    /// expired lock counts as a delivery: past `MaxDeliveryCount` the message is dead-lettered).
    pub(crate) fn expire_locks(&mut self, now: Instant) {
        for which in [SubQueue::Active, SubQueue::DeadLetter] {
            let queue = self.queue_mut(which);
            let expired: Vec<String> = queue
                .locked
                .iter()
                .filter(|(_, (_, until))| *until <= now)
                .map(|(token, _)| token.clone())
                .collect();
            for token in expired.into_iter().rev() {
                let Some((message, _)) = self.queue_mut(which).locked.remove(&token) else {
                    continue;
                };
                match which {
                    SubQueue::Active => self.requeue_counted(message),
                    SubQueue::DeadLetter => self.dead_letter.push_front(message),
                }
            }
        }
    }

    /// When the earliest lock of the queue runs out.
    pub(crate) fn next_lock_expiry(&self, which: SubQueue) -> Option<Instant> {
        self.queue(which)
            .locked
            .values()
            .map(|(_, until)| *until)
            .min()
    }

    /// Like [`receive`](Self::receive), for a link that still has to wait for credit: the
    /// message is counted and gets its token, but its lock starts only at
    /// [`transferred`](Self::transferred); [`unreserve`](Self::unreserve) undoes it.
    pub(crate) fn reserve(
        &mut self,
        which: SubQueue,
        now: Instant,
    ) -> Option<(StoredMessage, Lock)> {
        let (message, lock) = self.receive(which, now)?;
        let queue = self.queue_mut(which);
        queue.locked.remove(&lock.token);
        queue.reserved.insert(lock.token.clone(), message.clone());
        Some((message, lock))
    }

    /// The reserved message went out: its lock starts now. Whether it was still reserved.
    pub(crate) fn transferred(&mut self, which: SubQueue, token: &str, now: Instant) -> bool {
        let lock_duration = self.settings.lock_duration;
        let queue = self.queue_mut(which);
        match queue.reserved.remove(token) {
            Some(message) => {
                queue
                    .locked
                    .insert(token.to_owned(), (message, now + lock_duration));
                true
            }
            None => false,
        }
    }

    /// The reserved message never went out: back to the front of the queue, uncounted.
    pub(crate) fn unreserve(&mut self, which: SubQueue, token: &str) {
        let queue = self.queue_mut(which);
        if let Some(mut message) = queue.reserved.remove(token) {
            message.delivery_count = message.delivery_count.saturating_sub(1);
            queue.push_front(message);
        }
    }

    /// Locks the next message: its delivery count rises. A message of the active queue whose
    /// deliveries already reached `MaxDeliveryCount` moves to the dead-letter sub-queue
    /// instead (reason `MaxDeliveryCountExceeded`).
    pub(crate) fn receive(
        &mut self,
        which: SubQueue,
        now: Instant,
    ) -> Option<(StoredMessage, Lock)> {
        self.expire_locks(now);
        let lock_duration = self.settings.lock_duration;
        while let Some(mut message) = self.queue_mut(which).messages.pop_front() {
            if which == SubQueue::Active
                && message.delivery_count >= self.settings.max_delivery_count
            {
                let description = self.max_delivery_count_description();
                self.dead_letter_message(message, MAX_DELIVERY_COUNT_EXCEEDED, &description);
                continue;
            }
            message.delivery_count += 1;
            let token = lock_token();
            let locked_until = now + lock_duration;
            self.queue_mut(which)
                .locked
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

    fn take_locked(
        &mut self,
        which: SubQueue,
        token: &str,
        now: Instant,
    ) -> Result<StoredMessage, LockLost> {
        self.expire_locks(now);
        self.queue_mut(which)
            .locked
            .remove(token)
            .map(|(message, _)| message)
            .ok_or(LockLost::Expired)
    }

    /// Whether the token holds a lock now.
    #[cfg(test)]
    pub(crate) fn is_locked(&mut self, which: SubQueue, token: &str, now: Instant) -> bool {
        self.expire_locks(now);
        self.queue(which).locked.contains_key(token)
    }

    pub(crate) fn complete(
        &mut self,
        which: SubQueue,
        token: &str,
        now: Instant,
    ) -> Result<(), LockLost> {
        self.take_locked(which, token, now).map(|_| ())
    }

    /// Modified (abandon): back to the front of the queue, this delivery counted; past
    /// `MaxDeliveryCount` to the dead-letter sub-queue.
    pub(crate) fn abandon(
        &mut self,
        which: SubQueue,
        token: &str,
        now: Instant,
    ) -> Result<(), LockLost> {
        let message = self.take_locked(which, token, now)?;
        match which {
            SubQueue::Active => self.requeue_counted(message),
            SubQueue::DeadLetter => self.dead_letter.push_front(message),
        }
        Ok(())
    }

    /// Released: back to the front of the queue, this delivery not counted.
    pub(crate) fn release(
        &mut self,
        which: SubQueue,
        token: &str,
        now: Instant,
    ) -> Result<(), LockLost> {
        let mut message = self.take_locked(which, token, now)?;
        message.delivery_count = message.delivery_count.saturating_sub(1);
        self.queue_mut(which).push_front(message);
        Ok(())
    }

    /// Rejected: to the dead-letter sub-queue. A message of the dead-letter sub-queue stays
    /// there (the service cannot dead-letter it again): it is unlocked, this delivery counted.
    pub(crate) fn dead_letter(
        &mut self,
        which: SubQueue,
        token: &str,
        reason: &str,
        description: &str,
        now: Instant,
    ) -> Result<(), LockLost> {
        let message = self.take_locked(which, token, now)?;
        match which {
            SubQueue::Active => self.dead_letter_message(message, reason, description),
            SubQueue::DeadLetter => self.dead_letter.push_front(message),
        }
        Ok(())
    }

    /// Renews a lock for another `LockDuration` from now; recorded either way.
    pub(crate) fn renew_lock(
        &mut self,
        which: SubQueue,
        token: &str,
        now: Instant,
    ) -> Result<Instant, LockLost> {
        self.expire_locks(now);
        let until = now + self.settings.lock_duration;
        let queue = self.queue_mut(which);
        let renewed = match queue.locked.get_mut(token) {
            Some((_, locked_until)) => {
                *locked_until = until;
                Ok(until)
            }
            None => Err(LockLost::Expired),
        };
        queue.lock_renewals.push(RecordedLockRenewal {
            lock_token: token.to_owned(),
            locked_until: renewed.ok().map(system_time),
        });
        renewed
    }

    /// Up to `count` messages of the queue (locked or not) from sequence number `from`.
    pub(crate) fn peek(&self, which: SubQueue, from: i64, count: usize) -> Vec<StoredMessage> {
        self.queue(which)
            .all()
            .into_iter()
            .filter(|m| m.sequence_number >= from)
            .take(count)
            .cloned()
            .collect()
    }

    /// The dead-letter sub-queue's messages, by sequence number, with their reasons.
    pub(crate) fn dead_letters(&self) -> Vec<DeadLetteredMessage> {
        self.dead_letter
            .all()
            .into_iter()
            .map(|message| {
                let mut message = message.clone();
                let reason = message
                    .properties
                    .remove(DEAD_LETTER_REASON)
                    .unwrap_or_default();
                let description = message
                    .properties
                    .remove(DEAD_LETTER_ERROR_DESCRIPTION)
                    .unwrap_or_default();
                DeadLetteredMessage {
                    message,
                    reason,
                    description,
                }
            })
            .collect()
    }

    /// Expires every lock now (fault injection: "expire locks early").
    pub(crate) fn expire_all_locks(&mut self) {
        let now = Instant::now();
        for queue in [&mut self.active, &mut self.dead_letter] {
            for (_, until) in queue.locked.values_mut() {
                *until = now;
            }
        }
        self.expire_locks(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: SubQueue = SubQueue::Active;

    fn subscription(max_delivery_count: u32) -> Subscription {
        let mut subscription = Subscription {
            settings: SubscriptionSettings {
                lock_duration: Duration::from_secs(60),
                max_delivery_count,
                ..SubscriptionSettings::default()
            },
            ..Subscription::default()
        };
        subscription.active.messages.push_back(StoredMessage {
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
    fn abandoned_messages_come_back_counted_and_are_dead_lettered_at_the_maximum() {
        let now = Instant::now();
        let mut sub = subscription(2);
        let (first, lock) = sub.receive(A, now).unwrap();
        assert_eq!(first.delivery_count, 1);
        sub.abandon(A, &lock.token, now).unwrap();
        let (second, lock) = sub.receive(A, now).unwrap();
        assert_eq!(second.delivery_count, 2);
        sub.abandon(A, &lock.token, now).unwrap();
        // Dead-lettered by the abandon itself, not by a later receive.
        assert!(sub.active.messages.is_empty());
        let dead = sub.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, MAX_DELIVERY_COUNT_EXCEEDED);
        assert_eq!(
            dead[0].description,
            "Message could not be consumed after 2 delivery attempts."
        );
        assert_eq!(dead[0].message.delivery_count, 2);
        assert_eq!(sub.receive(A, now), None);
    }

    #[test]
    fn released_messages_come_back_uncounted() {
        let now = Instant::now();
        let mut sub = subscription(1);
        for _ in 0..3 {
            let (message, lock) = sub.receive(A, now).unwrap();
            assert_eq!(message.delivery_count, 1);
            sub.release(A, &lock.token, now).unwrap();
        }
        assert_eq!(sub.active.messages[0].delivery_count, 0);
        assert!(sub.dead_letters().is_empty());
    }

    #[test]
    fn an_expired_lock_cannot_settle_and_its_message_comes_back() {
        let now = Instant::now();
        let mut sub = subscription(10);
        let (_, lock) = sub.receive(A, now).unwrap();
        let later = now + Duration::from_secs(61);
        assert_eq!(sub.complete(A, &lock.token, later), Err(LockLost::Expired));
        let (again, second_lock) = sub.receive(A, later).unwrap();
        assert_eq!(again.delivery_count, 2);
        assert_ne!(lock.token, second_lock.token);
        sub.dead_letter(
            A,
            &second_lock.token,
            "MalformedPayload",
            "event 0: ...",
            later,
        )
        .unwrap();
        assert_eq!(sub.dead_letters()[0].reason, "MalformedPayload");
        assert!(sub.active.messages.is_empty() && sub.active.locked.is_empty());
    }

    #[test]
    fn the_dead_letter_sub_queue_locks_and_completes() {
        let now = Instant::now();
        let mut sub = subscription(10);
        let (_, lock) = sub.receive(A, now).unwrap();
        sub.dead_letter(A, &lock.token, "Bad", "very bad", now)
            .unwrap();
        let (dead, dead_lock) = sub.receive(SubQueue::DeadLetter, now).unwrap();
        assert_eq!(dead.properties[DEAD_LETTER_REASON], "Bad");
        assert_eq!(dead.properties[DEAD_LETTER_ERROR_DESCRIPTION], "very bad");
        assert_eq!(sub.dead_letters().len(), 1, "a locked one is still there");
        sub.complete(SubQueue::DeadLetter, &dead_lock.token, now)
            .unwrap();
        assert!(sub.dead_letters().is_empty());
    }

    #[test]
    fn renewing_extends_a_lock_and_a_lost_one_is_recorded() {
        let now = Instant::now();
        let mut sub = subscription(10);
        let (_, lock) = sub.receive(A, now).unwrap();
        let later = now + Duration::from_secs(30);
        assert_eq!(
            sub.renew_lock(A, &lock.token, later),
            Ok(later + Duration::from_secs(60))
        );
        // Past the first expiry, still locked.
        assert!(sub.is_locked(A, &lock.token, now + Duration::from_secs(61)));
        sub.complete(A, &lock.token, now + Duration::from_secs(61))
            .unwrap();
        assert_eq!(
            sub.renew_lock(A, &lock.token, later),
            Err(LockLost::Expired)
        );
        let renewals = &sub.active.lock_renewals;
        assert_eq!(renewals.len(), 2);
        assert!(renewals[0].locked_until.is_some());
        assert_eq!(renewals[1].locked_until, None);
    }

    #[test]
    fn a_reserved_message_is_not_locked_until_transferred_and_can_go_back_uncounted() {
        let now = Instant::now();
        let mut sub = subscription(10);
        let (message, lock) = sub.reserve(A, now).unwrap();
        assert_eq!(message.delivery_count, 1);
        assert!(sub.active.locked.is_empty());
        sub.expire_all_locks();
        assert_eq!(sub.active.reserved.len(), 1);
        sub.unreserve(A, &lock.token);
        assert!(sub.active.reserved.is_empty());
        let (again, lock) = sub.reserve(A, now).unwrap();
        assert_eq!(again.delivery_count, 1);
        assert!(sub.transferred(A, &lock.token, now));
        assert_eq!(sub.next_lock_expiry(A), Some(now + Duration::from_secs(60)));
        sub.complete(A, &lock.token, now).unwrap();
        assert!(!sub.transferred(A, &lock.token, now));
    }

    #[test]
    fn lock_tokens_are_guids() {
        let (a, b) = (lock_token(), lock_token());
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().to_string(), a);
        assert_ne!(a, b);
    }
}
