//! How the source opens and closes its links to the subscription (creating the subscription
//! first in automatic mode, and counting refusals of its identity); the shared
//! [`Lifecycle`](keyvault_invalidator_transport::Lifecycle) does the rest.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use keyvault_invalidator_core::{SourceError, SourceErrorKind};
use keyvault_invalidator_transport::{Attempt, CloseReason, Connector};

use super::errors::{self, is_unauthorized};
use super::link::{Deliveries, Link};
use super::resolve;
use crate::config::{Authorization, ServiceBusConfig, SubscriptionMode};
use crate::management_client::{is_management_error, Creation, SubscriptionUpkeep};
use crate::names::generate_subscription_name;
use crate::ManagementClient;

/// After this many unauthorized answers in a row the source warns that the connection string
/// (re-read from the store at every attempt) is still refused: it may have been rotated in
/// the namespace but not yet in the store.
const REREAD_AFTER_UNAUTHORIZED: u32 = 3;
/// After this many, the identity is taken to be refused for good and the job stops.
const FATAL_AFTER_UNAUTHORIZED: u32 = 8;

/// The subscription the source receives from, and what it knows about it.
pub(super) struct SubscriptionConnector {
    pub(super) config: ServiceBusConfig,
    /// Generated in automatic mode.
    pub(super) name: String,
    /// Whether this source created the subscription, which `close` then deletes.
    pub(super) created: AtomicBool,
    /// Refusals of the identity in a row.
    unauthorized: AtomicU32,
    /// The management client and topic of the last attempt, for deleting the subscription.
    pub(super) management: Mutex<Option<(ManagementClient, String)>>,
    /// Whether the next attempt must `PUT` the subscription (automatic mode), and the grace
    /// for refusals. When the receiver's attach finds no such entity in automatic mode,
    /// `subscription_may_be_gone()` makes the next attempt create it again.
    upkeep: SubscriptionUpkeep,
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl SubscriptionConnector {
    pub(super) fn new(config: ServiceBusConfig) -> Self {
        let name = match config.subscription() {
            SubscriptionMode::Automatic { prefix, .. } => generate_subscription_name(prefix),
            SubscriptionMode::Existing { name } => name.clone(),
        };
        let grace = config.unauthorized_grace_value();
        SubscriptionConnector {
            config,
            name,
            created: AtomicBool::new(false),
            unauthorized: AtomicU32::new(0),
            management: Mutex::new(None),
            upkeep: SubscriptionUpkeep::new(grace),
        }
    }

    async fn try_open(&self, attempt: &Attempt) -> Result<(Link, Deliveries), SourceError> {
        let resolved = resolve::resolve(&self.config, &self.name).await?;
        if let SubscriptionMode::Automatic { properties, .. } = self.config.subscription() {
            if self.upkeep.needs_put() {
                let creation = self
                    .upkeep
                    .put(
                        &resolved.management,
                        &resolved.topic,
                        &self.name,
                        properties,
                    )
                    .await?;
                // The generated name ends in a random suffix: a 409 is this instance's own
                // subscription (an earlier PUT whose answer was lost), so it is deleted at
                // close all the same.
                let again = self.created.swap(true, Ordering::SeqCst);
                tracing::info!(
                    topic = %resolved.topic,
                    subscription = %self.name,
                    existed = creation == Creation::AlreadyExisted,
                    again,
                    "created the subscription"
                );
            }
        }
        *lock(&self.management) = Some((resolved.management.clone(), resolved.topic.clone()));
        let link_name = format!(
            "keyvault-invalidator-{}-{}",
            self.name,
            attempt.generation()
        );
        Link::open(
            &resolved,
            &link_name,
            &self.name,
            self.config.prefetch_count(),
            self.config.operation_timeout_value(),
        )
        .await
    }

    /// Counts refusals; decides when they become fatal.
    fn count_unauthorized(&self, error: SourceError) -> SourceError {
        // Management refusals have their own grace period (see `SubscriptionUpkeep`).
        if is_management_error(&error) || !is_unauthorized(&error) {
            return error;
        }
        let count = self.unauthorized.fetch_add(1, Ordering::SeqCst) + 1;
        let rereads = matches!(
            self.config.authorization(),
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

    /// In automatic mode the subscription is this instance's own: when the service says it
    /// does not exist (`AutoDeleteOnIdle` removed it during an outage), the next attempt
    /// creates it again, and the error is transient. Otherwise `error` as it is.
    fn vanished(&self, mut error: SourceError) -> SourceError {
        let automatic = matches!(
            self.config.subscription(),
            SubscriptionMode::Automatic { .. }
        );
        if !automatic || errors::refusal(&error) != errors::Refusal::NotFound {
            return error;
        }
        tracing::warn!(subscription = %self.name, "the subscription is gone (removed while idle?); creating it again");
        self.upkeep.subscription_may_be_gone();
        error.kind = SourceErrorKind::Transient;
        error
    }
}

impl Connector for SubscriptionConnector {
    const NAME: &'static str = "Service Bus";
    const METRICS_PREFIX: &'static str = "keyvault_invalidator_servicebus";
    type Connection = Link;
    type Incoming = Deliveries;

    async fn open(&self, attempt: &Attempt) -> Result<(Link, Deliveries), SourceError> {
        // Dropping an attempt under way releases what it opened (the link's thread stops).
        match attempt.unless_closed(self.try_open(attempt)).await {
            Ok(opened) => {
                self.unauthorized.store(0, Ordering::SeqCst);
                Ok(opened)
            }
            Err(error) if error.kind == SourceErrorKind::Closed => Err(error),
            Err(error) => Err(self.vanished(self.count_unauthorized(error))),
        }
    }

    async fn close(&self, link: Arc<Link>, _: CloseReason) -> Result<(), SourceError> {
        link.close().await;
        Ok(())
    }

    fn peer(&self) -> String {
        format!("subscription `{}`", self.name)
    }

    fn on_loss(&self, cause: SourceError) -> SourceError {
        self.count_unauthorized(self.vanished(cause))
    }

    fn stale_settlement(&self) -> SourceError {
        SourceError::settlement_lost(
            "the delivery came on a link that is gone; its lock expires and Service Bus redelivers it",
        )
    }
}
