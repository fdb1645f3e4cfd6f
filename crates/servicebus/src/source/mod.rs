//! The [`EventSource`] over a Service Bus topic subscription.

mod errors;
mod link;
mod message;
mod renew_lock;
mod target;

/// The message reading, for the fuzz targets in `fuzz/` only: not part of the API.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    pub use fe2o3_amqp::types::messaging::{Body, Message};
    pub use fe2o3_amqp::types::primitives::Value;

    /// What the source reads from a message on arrival.
    #[derive(Debug, PartialEq)]
    pub struct Metadata {
        /// The body bytes handed to the parser.
        pub body: Vec<u8>,
        /// `header.delivery-count`.
        pub prior_deliveries: u32,
        /// The count the delivery carries: prior deliveries plus this one.
        pub delivery_count: u32,
        /// `x-opt-lock-token`, hyphenated.
        pub lock_token: Option<String>,
        /// `x-opt-locked-until`.
        pub locked_until: Option<SystemTime>,
        /// The message id as text.
        pub message_id: Option<String>,
        /// Application properties as text, and the lock token.
        pub properties: BTreeMap<String, String>,
    }

    /// Reads a message as the source does.
    pub fn read_message(message: &Message<Body<Value>>) -> Metadata {
        let received = super::message::read(message);
        Metadata {
            delivery_count: received.delivery_count(),
            lock_token: received
                .lock_token
                .as_ref()
                .map(super::message::format_uuid),
            body: received.body,
            prior_deliveries: received.prior_deliveries,
            locked_until: received.locked_until,
            message_id: received.message_id,
            properties: received.properties,
        }
    }
}

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::types::primitives::Uuid;
use keyvault_invalidator_core::lock::{HeldLock, LockRenewer};
use keyvault_invalidator_core::{
    Backoff, Bytes, ConnectSlot, Delivery, DeliveryToken, EventSource, Settlement, SourceError,
    SourceErrorKind,
};
use tokio::sync::oneshot;

use crate::config::{Authorization, ServiceBusConfig, SubscriptionMode};
use crate::management_client::{is_management_error, Creation, SubscriptionUpkeep};
use crate::names::generate_subscription_name;
use errors::is_unauthorized;
use link::{AmqpDelivery, Command, Link, Outcome};

/// After this many unauthorized answers in a row the source warns that the connection string
/// (re-read from the store at every attempt) is still refused: it may have been rotated in
/// the namespace but not yet in the store.
const REREAD_AFTER_UNAUTHORIZED: u32 = 3;
/// After this many, the identity is taken to be refused for good and the job stops.
const FATAL_AFTER_UNAUTHORIZED: u32 = 8;
/// How long a settlement may take before the lock is taken as lost.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Delivers Key Vault events from a Service Bus topic subscription to the job.
///
/// - **Subscription**: in automatic mode, `{prefix}-{unique}` is created at the first receive
///   through the management REST API (with `AutoDeleteOnIdle`, `MaxDeliveryCount` and the lock
///   duration set) and deleted at [`close`](EventSource::close), only if this source created it,
///   after the receiver is detached. In existing mode the named subscription is used as is.
/// - **Receiving**: peek-lock with a small prefetch; the delivery count is the message header's
///   count of prior deliveries plus one.
/// - **Settlement**, as the official SDKs settle: complete = Accepted; abandon = Modified
///   (delivery failed, not undeliverable here), which the service counts, so
///   `MaxDeliveryCount` and the job's `max_attempts` both fire (Released, which the service
///   does not count, is never sent); dead-letter = Rejected with `com.microsoft:dead-letter`
///   and `DeadLetterReason` / `DeadLetterErrorDescription` (each cut to 4096 characters), which
///   the dead-lettered message carries for operators to read.
/// - **Locks**: each delivery's lock is renewed with `com.microsoft:renew-lock` on the
///   subscription's `$management` node while the delivery is in flight, from when its
///   remaining time falls to `min(remaining / 2, 10 s)`, for at most
///   [`max_lock_renewal`](ServiceBusConfig::max_lock_renewal) (default 5 minutes), stopping at
///   settlement (see [`keyvault_invalidator_core::lock`]). A settlement whose lock has ended
///   (or that the service said is lost) is not sent: it is reported
///   [`SettlementLost`](SourceErrorKind::SettlementLost) and the service redelivers the
///   message, never a silent success.
/// - **Auth over time**: `$cbs` tokens are renewed five minutes before they end. A connection
///   string from the secret store is read again at every reconnection, so after a rotation the
///   refusals the old one meets end as soon as the store holds the new one; a warning is logged
///   after three refusals in a row, and after eight the job stops with the error.
/// - **Faults**: a lost connection or detached link makes `receive` report a transient error;
///   the next call reconnects (exponential backoff with jitter), re-authorises and re-attaches.
///   Every step of connecting waits at most the
///   [operation timeout](ServiceBusConfig::operation_timeout), so a silent peer is a transient
///   error too, never a hang. The connection runs on a thread of its own (see `link.rs` for
///   the `fe2o3-amqp` race this avoids).
///   Deliveries from the old link cannot be settled on the new one; their locks expire and the
///   service redelivers them. A missing topic or subscription is fatal.
#[derive(Clone)]
pub struct ServiceBusSource {
    inner: Arc<Inner>,
}

struct Inner {
    config: ServiceBusConfig,
    subscription: String,
    created: AtomicBool,
    link: tokio::sync::Mutex<ConnectSlot<Link>>,
    /// The command channel of the live link, for settlements.
    commands: Mutex<Option<(u64, tokio::sync::mpsc::Sender<Command>)>>,
    generation: AtomicU64,
    closed: AtomicBool,
    failures: AtomicU32,
    unauthorized: AtomicU32,
    backoff: Backoff,
    management: Mutex<Option<(crate::ManagementClient, String)>>,
    /// Whether the next attempt must `PUT` the subscription (automatic mode), and the grace
    /// for refusals. When the receiver's attach finds no such entity in automatic mode,
    /// `inner.upkeep.subscription_may_be_gone()` makes the next attempt create it again.
    upkeep: SubscriptionUpkeep,
    /// No attempt before this: the service's `Retry-After` on the last failure.
    not_before: Mutex<Option<tokio::time::Instant>>,
}

/// What settles one delivery.
struct Token {
    generation: u64,
    delivery: DeliveryInfo,
    /// The lock, renewed while the delivery is in flight; `None` when the message did not
    /// name its lock token and its end.
    lock: Option<HeldLock>,
    /// The lock's end as the message gave it, for a lock that cannot be renewed; `None`:
    /// unknown, and the settlement is sent.
    locked_until: Option<SystemTime>,
}

impl Token {
    /// Whether the service can still take a settlement for this delivery.
    fn lock_holds(&self) -> bool {
        match &self.lock {
            Some(lock) => lock.is_held(),
            None => self
                .locked_until
                .is_none_or(|until| until > SystemTime::now()),
        }
    }
}

/// Renews locks through one link's `$management` node.
struct LinkLocks {
    commands: tokio::sync::mpsc::Sender<Command>,
}

#[async_trait]
impl LockRenewer for LinkLocks {
    async fn renew_lock(&self, lock_token: &str) -> Result<SystemTime, SourceError> {
        let lock_token = parse_lock_token(lock_token)
            .ok_or_else(|| SourceError::fatal("renewing a lock: the lock token is not a uuid"))?;
        let (reply, answer) = oneshot::channel();
        let gone = || SourceError::new(SourceErrorKind::Closed, "the link is gone");
        self.commands
            .send(Command::RenewLock { lock_token, reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

fn parse_lock_token(text: &str) -> Option<Uuid> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(Uuid::from(bytes))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl ServiceBusSource {
    /// A source for this configuration. Nothing connects until the first `receive` (or
    /// [`connect`](Self::connect)).
    pub fn new(config: ServiceBusConfig) -> Self {
        let subscription = match config.subscription() {
            SubscriptionMode::Automatic { prefix, .. } => generate_subscription_name(prefix),
            SubscriptionMode::Existing { name } => name.clone(),
        };
        let config_grace = config.unauthorized_grace_value();
        ServiceBusSource {
            inner: Arc::new(Inner {
                config,
                subscription,
                created: AtomicBool::new(false),
                link: tokio::sync::Mutex::new(ConnectSlot::new()),
                commands: Mutex::new(None),
                generation: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                failures: AtomicU32::new(0),
                unauthorized: AtomicU32::new(0),
                backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
                management: Mutex::new(None),
                upkeep: SubscriptionUpkeep::new(config_grace),
                not_before: Mutex::new(None),
            }),
        }
    }

    /// The subscription this source receives from (generated in automatic mode).
    pub fn subscription_name(&self) -> &str {
        &self.inner.subscription
    }

    /// Connects now: creates the subscription (automatic mode), authorises and attaches, so a
    /// configuration the service refuses fails here.
    pub async fn connect(&self) -> Result<(), SourceError> {
        let mut slot = self.inner.link.lock().await;
        self.ensure_link(&mut slot).await.map(|_| ())
    }

    async fn ensure_link<'a>(
        &self,
        slot: &'a mut ConnectSlot<Link>,
    ) -> Result<&'a mut Link, SourceError> {
        let this = self.clone();
        slot.get_or_open(|| async move { this.open().await })
            .await
            .map_err(|error| self.vanished(error))?;
        if self.inner.closed.load(Ordering::SeqCst) {
            // Closed while connecting: release what the attempt opened.
            if let Some(link) = slot.take() {
                link.close().await;
            }
            return Err(SourceError::closed());
        }
        Ok(slot.current().expect("opened above"))
    }

    async fn open(&self) -> Result<Link, SourceError> {
        let failures = self.inner.failures.load(Ordering::SeqCst);
        let mut delay = if failures > 0 {
            self.inner.backoff.delay(failures)
        } else {
            Duration::ZERO
        };
        if let Some(not_before) = lock(&self.inner.not_before).take() {
            // At least as long as the service asked.
            delay = delay.max(not_before.saturating_duration_since(tokio::time::Instant::now()));
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match self.try_open().await {
            Ok(link) => {
                if failures > 0 {
                    tracing::info!(subscription = %self.inner.subscription, "reconnected to Service Bus");
                }
                self.inner.failures.store(0, Ordering::SeqCst);
                self.inner.unauthorized.store(0, Ordering::SeqCst);
                Ok(link)
            }
            Err(error) => {
                self.inner.failures.fetch_add(1, Ordering::SeqCst);
                if let Some(after) = error.retry_after {
                    *lock(&self.inner.not_before) = Some(tokio::time::Instant::now() + after);
                }
                Err(self.count_unauthorized(error))
            }
        }
    }

    async fn try_open(&self) -> Result<Link, SourceError> {
        let inner = &self.inner;
        let target = target::resolve(&inner.config, &inner.subscription).await?;
        if let SubscriptionMode::Automatic { properties, .. } = inner.config.subscription() {
            if inner.upkeep.needs_put() {
                let creation = inner
                    .upkeep
                    .put(
                        &target.management,
                        &target.topic,
                        &inner.subscription,
                        properties,
                    )
                    .await?;
                // The generated name ends in a random suffix: a 409 is this instance's own
                // subscription (an earlier PUT whose answer was lost), so it is deleted at
                // close all the same.
                let again = inner.created.swap(true, Ordering::SeqCst);
                tracing::info!(
                    topic = %target.topic,
                    subscription = %inner.subscription,
                    existed = creation == Creation::AlreadyExisted,
                    again,
                    "created the subscription"
                );
            }
        }
        *lock(&inner.management) = Some((target.management.clone(), target.topic.clone()));
        let generation = inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let name = format!("keyvault-invalidator-{}-{generation}", inner.subscription);
        let link = Link::open(
            &target,
            &name,
            &inner.subscription,
            inner.config.prefetch_count(),
            inner.config.operation_timeout_value(),
        )
        .await?;
        *lock(&inner.commands) = Some((generation, link.commands.clone()));
        Ok(link)
    }

    /// Counts refusals; decides when they become fatal.
    fn count_unauthorized(&self, error: SourceError) -> SourceError {
        // Management refusals have their own grace period (see `SubscriptionUpkeep`).
        if is_management_error(&error) || !is_unauthorized(&error) {
            return error;
        }
        let count = self.inner.unauthorized.fetch_add(1, Ordering::SeqCst) + 1;
        let rereads = matches!(
            self.inner.config.authorization(),
            Authorization::ConnectionStringFromStore { .. }
        );
        if rereads && count == REREAD_AFTER_UNAUTHORIZED {
            tracing::warn!(count, "Service Bus keeps refusing the connection string read from the secret store; was it rotated in the namespace but not in the store?");
        }
        if count >= FATAL_AFTER_UNAUTHORIZED {
            return SourceError::fatal(format!(
                "Service Bus refused the credentials {count} times in a row: {}",
                error.message
            ));
        }
        error
    }

    fn delivery(
        &self,
        generation: u64,
        delivery: AmqpDelivery,
        renewer: &Arc<LinkLocks>,
    ) -> Delivery {
        let received = message::read(delivery.message());
        // Renewable only when the message says both which lock it holds and until when.
        let lock = match (&received.lock_token, received.locked_until) {
            (Some(token), Some(until)) => Some(HeldLock::hold(
                renewer.clone(),
                message::format_uuid(token),
                until,
                self.inner.config.lock_renewal(),
            )),
            _ => None,
        };
        let token = DeliveryToken::new(Token {
            generation,
            delivery: DeliveryInfo::from(delivery),
            lock,
            locked_until: received.locked_until,
        });
        let delivery_count = received.delivery_count();
        let delivery = Delivery::new(Bytes::from(received.body), token)
            .with_delivery_count(delivery_count)
            .with_properties(received.properties);
        match received.message_id {
            Some(id) => delivery.with_message_id(id),
            None => delivery,
        }
    }

    /// In automatic mode the subscription is this instance's own: when the service says it
    /// does not exist (`AutoDeleteOnIdle` removed it during an outage), the next attempt
    /// creates it again, and the error is transient. Otherwise `error` as it is.
    fn vanished(&self, error: SourceError) -> SourceError {
        let automatic = matches!(
            self.inner.config.subscription(),
            SubscriptionMode::Automatic { .. }
        );
        if !automatic || errors::refusal(&error) != errors::Refusal::NotFound {
            return error;
        }
        tracing::warn!(subscription = %self.inner.subscription, "the subscription is gone (removed while idle?); creating it again");
        self.inner.upkeep.subscription_may_be_gone();
        let mut error = error;
        error.kind = SourceErrorKind::Transient;
        error
    }

    fn lost(&self, slot: &mut ConnectSlot<Link>, error: SourceError) -> SourceError {
        slot.take();
        *lock(&self.inner.commands) = None;
        if self.inner.closed.load(Ordering::SeqCst) {
            return SourceError::closed();
        }
        self.inner.failures.fetch_add(1, Ordering::SeqCst);
        tracing::warn!(subscription = %self.inner.subscription, %error, "lost the Service Bus link; reconnecting");
        self.count_unauthorized(error)
    }
}

#[async_trait]
impl EventSource for ServiceBusSource {
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, SourceError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(SourceError::closed());
        }
        let mut slot = self.inner.link.lock().await;
        let link = self.ensure_link(&mut slot).await?;
        let generation = self.inner.generation.load(Ordering::SeqCst);
        let renewer = Arc::new(LinkLocks {
            commands: link.commands.clone(),
        });
        let first = match link.deliveries.recv().await {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                let error = self.vanished(error);
                return Err(self.lost(&mut slot, error));
            }
            None => {
                return Err(self.lost(&mut slot, SourceError::transient("the receiver stopped")))
            }
        };
        let mut batch = vec![self.delivery(generation, first, &renewer)];
        while batch.len() < max.max(1) {
            match link.deliveries.try_recv() {
                Ok(Ok(delivery)) => batch.push(self.delivery(generation, delivery, &renewer)),
                Ok(Err(_)) => {
                    // Hand over what arrived; the next receive reconnects.
                    slot.take();
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(batch)
    }

    async fn settle(
        &self,
        token: DeliveryToken,
        settlement: Settlement,
    ) -> Result<(), SourceError> {
        let token = token.into_handle::<Token>()?;
        let commands = lock(&self.inner.commands).clone();
        let commands = match commands {
            Some((generation, commands)) if generation == token.generation => commands,
            _ => {
                return Err(SourceError::settlement_lost(
                    "the delivery came on a link that is gone; its lock expires and Service Bus redelivers it",
                ))
            }
        };
        if !token.lock_holds() {
            return Err(SourceError::settlement_lost(
                "the lock ended before the settlement; Service Bus redelivers the message",
            ));
        }
        let outcome = match settlement {
            Settlement::Complete => Outcome::Accept,
            Settlement::DeadLetter {
                reason,
                description,
                ..
            } => Outcome::DeadLetter {
                reason,
                description,
            },
            // Abandon, and any settlement added later that this source does not know: the
            // message comes back, which never loses it.
            _ => Outcome::Abandon,
        };
        let (reply, answer) = oneshot::channel();
        let command = Command::Settle {
            delivery: token.delivery,
            outcome,
            reply,
        };
        let lost =
            || SourceError::settlement_lost("the link closed before the settlement was made");
        commands.send(command).await.map_err(|_| lost())?;
        // The lock is kept until the disposition is on its way.
        let settled = match tokio::time::timeout(SETTLE_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            _ => Err(lost()),
        };
        drop(token.lock);
        settled
    }

    async fn close(&self) -> Result<(), SourceError> {
        self.inner.closed.store(true, Ordering::SeqCst);
        let link = {
            let mut slot = self.inner.link.lock().await;
            slot.take()
        };
        if let Some(link) = link {
            link.close().await;
        }
        *lock(&self.inner.commands) = None;
        if self.inner.created.swap(false, Ordering::SeqCst) {
            let management = lock(&self.inner.management).clone();
            if let Some((client, topic)) = management {
                match client
                    .delete_subscription(&topic, &self.inner.subscription)
                    .await
                {
                    Ok(_) => {
                        tracing::info!(subscription = %self.inner.subscription, "deleted the subscription")
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not delete the subscription; AutoDeleteOnIdle will");
                        return Err(error.into());
                    }
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ServiceBusSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBusSource")
            .field("config", &self.inner.config)
            .field("subscription", &self.inner.subscription)
            .finish_non_exhaustive()
    }
}
