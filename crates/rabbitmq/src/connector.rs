//! How the source opens and closes its connections to the broker; the shared
//! [`Lifecycle`](keyvault_invalidator_transport::Lifecycle) does the rest.

use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use keyvault_invalidator_core::SourceError;
use keyvault_invalidator_transport::{Attempt, CloseReason, Connector, Incoming};
use lapin::message::Delivery;
use lapin::Consumer;

use crate::config::RabbitMqConfig;
use crate::link::{self, Link, OpenError};

/// The queue the source consumes, and how to reach it.
pub(crate) struct QueueConnector {
    pub(crate) config: RabbitMqConfig,
    pub(crate) queue: String,
}

impl QueueConnector {
    pub(crate) fn new(config: RabbitMqConfig) -> Self {
        let queue = config.queue_name();
        QueueConnector { config, queue }
    }
}

impl Connector for QueueConnector {
    const NAME: &'static str = "RabbitMQ";
    const METRICS_PREFIX: &'static str = "keyvault_invalidator_rabbitmq";
    type Connection = Link;
    type Incoming = Deliveries;

    async fn open(&self, attempt: &Attempt) -> Result<(Link, Deliveries), SourceError> {
        match Link::open(&self.config, &self.queue, attempt.shutdown()).await {
            Ok((link, consumer)) => Ok((link, Deliveries(consumer))),
            Err(OpenError::Closed) => Err(SourceError::closed()),
            Err(OpenError::Failed(error)) => Err(error.into()),
        }
    }

    /// At shutdown the instance queue goes too (never an existing queue): no one will consume
    /// it again.
    async fn close(&self, link: Arc<Link>, reason: CloseReason) -> Result<(), SourceError> {
        let deleted = match reason {
            CloseReason::Shutdown => link::delete_instance_queue(&link.channel, &self.config).await,
            _ => Ok(()),
        };
        link.close().await;
        deleted
    }

    fn peer(&self) -> String {
        format!("queue `{}` at {}", self.queue, self.config.redacted_uri())
    }

    fn stale_settlement(&self) -> SourceError {
        SourceError::settlement_lost(
            "the delivery came on a connection that is gone; the broker redelivers it",
        )
    }
}

/// The consumer of one connection.
pub(crate) struct Deliveries(Consumer);

impl Incoming for Deliveries {
    type Item = Delivery;

    async fn next(&mut self) -> Result<Delivery, SourceError> {
        // lapin's consumer stream is cancel safe: a delivery it has not yet handed out stays.
        arrived(self.0.next().await)
    }

    fn next_if_ready(&mut self) -> Option<Result<Delivery, SourceError>> {
        self.0.next().now_or_never().map(arrived)
    }
}

fn arrived(next: Option<Result<Delivery, lapin::Error>>) -> Result<Delivery, SourceError> {
    match next {
        Some(Ok(delivery)) => Ok(delivery),
        Some(Err(error)) => Err(SourceError::transient(error.to_string())),
        None => Err(SourceError::transient("the broker cancelled the consumer")),
    }
}
