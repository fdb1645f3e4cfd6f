//! The [`EventSource`] over a Service Bus topic subscription.

mod amqp;
mod errors;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod link;
mod message;
mod renew_lock;
mod resolve;
mod subscription;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::types::primitives::Uuid;
use keyvault_invalidator_core::lock::{HeldLock, LockRenewer};
use keyvault_invalidator_core::{
    Backoff, Bytes, Delivery, DeliveryToken, EventSource, Settlement, SourceError, SourceErrorKind,
};
use keyvault_invalidator_transport::{Generation, Lifecycle};
use tokio::sync::oneshot;

use crate::config::ServiceBusConfig;
use link::{AmqpDelivery, Command, Disposition};
use subscription::{lock, SubscriptionConnector};

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
///   error too, never a hang.
///   Deliveries from the old link cannot be settled on the new one; their locks expire and the
///   service redelivers them. A missing topic or subscription is fatal.
/// - **Threads**: each connection runs on an OS thread of its own, named `servicebus-link`,
///   with a single-threaded tokio runtime on it: one thread per source (a source and its clones
///   hold one connection at a time), started when the source connects and ended when that
///   connection closes or is lost (a reconnection starts the next). Why: with the connection
///   and everything that uses it on one thread, `fe2o3-amqp` 0.14 cannot lose the answer to a
///   `$cbs` or `$management` request between handing it over and recording it, which it can on
///   a multi-threaded runtime. Everything else (tokens, the management API, the deliveries
///   handed to the job) stays on the application's runtime.
/// - **TLS**: `amqps` runs on rustls with its ring provider named in the connection's own
///   configuration and the web PKI roots; the source installs no process-wide rustls provider
///   and reads none.
#[derive(Clone)]
pub struct ServiceBusSource {
    lifecycle: Lifecycle<SubscriptionConnector>,
}

/// What settles one delivery.
struct Token {
    generation: Generation,
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

impl ServiceBusSource {
    /// A source for this configuration. Nothing connects until the first `receive` (or
    /// [`connect`](Self::connect)).
    pub fn new(config: ServiceBusConfig) -> Self {
        let connector = SubscriptionConnector::new(config);
        ServiceBusSource {
            lifecycle: Lifecycle::builder(connector)
                .backoff(Backoff::new(
                    Duration::from_millis(200),
                    Duration::from_secs(30),
                ))
                .build(),
        }
    }

    /// The subscription this source receives from (generated in automatic mode).
    pub fn subscription_name(&self) -> &str {
        &self.lifecycle.connector().name
    }

    /// Connects now: creates the subscription (automatic mode), authorises and attaches, so a
    /// configuration the service refuses fails here.
    pub async fn connect(&self) -> Result<(), SourceError> {
        self.lifecycle.connect().await
    }

    fn delivery(
        &self,
        generation: Generation,
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
                self.lifecycle.connector().config.lock_renewal(),
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
}

#[async_trait]
impl EventSource for ServiceBusSource {
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, SourceError> {
        let batch = self.lifecycle.receive(max).await?;
        let renewer = Arc::new(LinkLocks {
            commands: batch.connection.commands.clone(),
        });
        let generation = batch.generation;
        Ok(batch
            .items
            .into_iter()
            .map(|delivery| self.delivery(generation, delivery, &renewer))
            .collect())
    }

    async fn settle(
        &self,
        token: DeliveryToken,
        settlement: Settlement,
    ) -> Result<(), SourceError> {
        let token = token.into_handle::<Token>()?;
        let link = self.lifecycle.connection_of(token.generation)?;
        if !token.lock_holds() {
            return Err(SourceError::settlement_lost(
                "the lock ended before the settlement; Service Bus redelivers the message",
            ));
        }
        let disposition = match settlement {
            Settlement::Complete => Disposition::Accept,
            Settlement::DeadLetter {
                reason,
                description,
                ..
            } => Disposition::DeadLetter {
                reason,
                description,
            },
            // Abandon, and any settlement added later that this source does not know: the
            // message comes back, which never loses it.
            _ => Disposition::Abandon,
        };
        let (reply, answer) = oneshot::channel();
        let command = Command::Settle {
            delivery: token.delivery,
            disposition,
            reply,
        };
        let lost =
            || SourceError::settlement_lost("the link closed before the settlement was made");
        link.commands.send(command).await.map_err(|_| lost())?;
        // The lock is kept until the disposition is on its way.
        let settled = match tokio::time::timeout(SETTLE_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            _ => Err(lost()),
        };
        drop(token.lock);
        settled
    }

    async fn close(&self) -> Result<(), SourceError> {
        self.lifecycle.close().await?;
        let subscription = self.lifecycle.connector();
        if subscription
            .created
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            let management = lock(&subscription.management).clone();
            if let Some((client, topic)) = management {
                match client.delete_subscription(&topic, &subscription.name).await {
                    Ok(_) => {
                        tracing::info!(subscription = %subscription.name, "deleted the subscription")
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
        let subscription = self.lifecycle.connector();
        f.debug_struct("ServiceBusSource")
            .field("config", &subscription.config)
            .field("subscription", &subscription.name)
            .finish_non_exhaustive()
    }
}
