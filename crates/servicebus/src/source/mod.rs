//! The [`EventSource`] over a Service Bus topic subscription.

mod errors;
mod link;
mod target;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use azure_core_amqp::message::{AmqpAnnotationKey, AmqpMessageBody, AmqpMessageId};
use azure_core_amqp::{AmqpDelivery, AmqpDeliveryApis, AmqpSimpleValue, AmqpValue};
use keyvault_invalidator_core::{
    Backoff, Bytes, ConnectSlot, Delivery, DeliveryToken, EventSource, Settlement, SourceError,
    SourceErrorKind,
};
use tokio::sync::oneshot;

use crate::config::{Authorization, ServiceBusConfig, SubscriptionMode};
use crate::management_client::Creation;
use crate::names::generate_subscription_name;
use errors::is_unauthorized;
use link::{Command, Link, Outcome};

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
/// - **Settlement** (what `azure_core_amqp` 1.1 can express): complete = Accepted; abandon =
///   Released (Service Bus unlocks the message and counts the delivery; the 1.1 API has no
///   Modified); dead-letter = Rejected, which Service Bus dead-letters, but 1.1 cannot attach
///   the `com.microsoft:dead-letter` error, so the reason and description are logged here,
///   with the message id and lock token, instead of travelling with the message. A delivery
///   whose lock (`x-opt-locked-until`) has passed is not completed blindly: the settlement is
///   reported lost and the service redelivers it.
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
}

/// What settles one delivery.
struct Token {
    generation: u64,
    delivery: AmqpDelivery,
    locked_until: Option<SystemTime>,
    lock_token: Option<String>,
    message_id: Option<String>,
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
            .await?;
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
        if failures > 0 {
            tokio::time::sleep(self.inner.backoff.delay(failures)).await;
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
                Err(self.count_unauthorized(error))
            }
        }
    }

    async fn try_open(&self) -> Result<Link, SourceError> {
        let inner = &self.inner;
        let target = target::resolve(&inner.config, &inner.subscription).await?;
        if let SubscriptionMode::Automatic { properties, .. } = inner.config.subscription() {
            if !inner.created.load(Ordering::SeqCst) {
                let creation = target
                    .management
                    .create_subscription(&target.topic, &inner.subscription, properties)
                    .await?;
                if creation == Creation::Created {
                    inner.created.store(true, Ordering::SeqCst);
                    tracing::info!(topic = %target.topic, subscription = %inner.subscription, "created the subscription");
                }
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
        if !is_unauthorized(&error) {
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

    fn delivery(&self, generation: u64, delivery: AmqpDelivery) -> Delivery {
        let message = delivery.message();
        let body = match &message.body {
            AmqpMessageBody::Binary(sections) => sections.concat(),
            AmqpMessageBody::Value(AmqpValue::String(text)) => text.clone().into_bytes(),
            AmqpMessageBody::Value(AmqpValue::Binary(bytes)) => bytes.clone(),
            // Anything else is not an Event Grid payload; an empty body is dead-lettered as
            // malformed by the job.
            _ => Vec::new(),
        };
        let prior = message.header.as_ref().map_or(0, |h| h.delivery_count);
        let annotation = |name: &str| {
            message
                .message_annotations
                .as_ref()
                .and_then(|a| a.0.get(&AmqpAnnotationKey::Symbol(name.into())))
        };
        let locked_until = match annotation("x-opt-locked-until") {
            Some(AmqpValue::TimeStamp(stamp)) => stamp.0,
            _ => None,
        };
        let lock_token = match annotation("x-opt-lock-token") {
            Some(AmqpValue::Uuid(uuid)) => Some(uuid.to_string()),
            _ => None,
        };
        let message_id = message
            .properties
            .as_ref()
            .and_then(|p| p.message_id.as_ref())
            .map(|id| match id {
                AmqpMessageId::String(s) => s.clone(),
                AmqpMessageId::Uuid(u) => u.to_string(),
                AmqpMessageId::Ulong(n) => n.to_string(),
                AmqpMessageId::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
            });
        let mut properties = BTreeMap::new();
        if let Some(application) = &message.application_properties {
            for (key, value) in application.0.iter() {
                if let Some(text) = simple_text(value) {
                    properties.insert(key.clone(), text);
                }
            }
        }
        if let Some(token) = &lock_token {
            properties.insert("x-opt-lock-token".to_owned(), token.clone());
        }
        Delivery {
            body: Bytes::from(body),
            properties,
            message_id: message_id.clone(),
            delivery_count: prior.saturating_add(1),
            token: DeliveryToken::new(Token {
                generation,
                delivery,
                locked_until,
                lock_token,
                message_id,
            }),
        }
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

fn simple_text(value: &AmqpSimpleValue) -> Option<String> {
    Some(match value {
        AmqpSimpleValue::String(s) => s.clone(),
        AmqpSimpleValue::Boolean(b) => b.to_string(),
        AmqpSimpleValue::Int(n) => n.to_string(),
        AmqpSimpleValue::Long(n) => n.to_string(),
        AmqpSimpleValue::UInt(n) => n.to_string(),
        AmqpSimpleValue::ULong(n) => n.to_string(),
        AmqpSimpleValue::Short(n) => n.to_string(),
        AmqpSimpleValue::UShort(n) => n.to_string(),
        AmqpSimpleValue::Uuid(u) => u.to_string(),
        _ => return None,
    })
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
        let first = match link.deliveries.recv().await {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                let error = errors::classify(error, "receiving");
                return Err(self.lost(&mut slot, error));
            }
            None => {
                return Err(self.lost(&mut slot, SourceError::transient("the receiver stopped")))
            }
        };
        let mut batch = vec![self.delivery(generation, first)];
        while batch.len() < max.max(1) {
            match link.deliveries.try_recv() {
                Ok(Ok(delivery)) => batch.push(self.delivery(generation, delivery)),
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
        let outcome = match &settlement {
            Settlement::Complete => {
                if token
                    .locked_until
                    .is_some_and(|until| until <= SystemTime::now())
                {
                    return Err(SourceError::settlement_lost(
                        "the lock expired before completion; Service Bus redelivers the message",
                    ));
                }
                Outcome::Accept
            }
            Settlement::Abandon => Outcome::Release,
            Settlement::DeadLetter {
                reason,
                description,
            } => {
                // azure_core_amqp 1.1 sends Rejected without an error: the reason cannot travel
                // with the message, so it is recorded here.
                tracing::warn!(
                    message_id = token.message_id.as_deref().unwrap_or(""),
                    lock_token = token.lock_token.as_deref().unwrap_or(""),
                    %reason,
                    %description,
                    "dead-lettering a Service Bus message"
                );
                Outcome::Reject
            }
        };
        let (reply, answer) = oneshot::channel();
        let command = Command {
            delivery: token.delivery,
            outcome,
            reply,
        };
        let lost =
            || SourceError::settlement_lost("the link closed before the settlement was made");
        commands.send(command).await.map_err(|_| lost())?;
        match tokio::time::timeout(SETTLE_TIMEOUT, answer).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(SourceError::new(
                SourceErrorKind::SettlementLost,
                format!("Service Bus did not take the settlement: {error}"),
            )),
            _ => Err(lost()),
        }
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
                        return Err(error);
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
