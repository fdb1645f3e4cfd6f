//! One connection to the broker and what the source does on it: opening it (abandoned when the
//! source closes), publishing with confirms on a channel of its own, acknowledging, and
//! handing a delivery back when its settlement fails.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keyvault_invalidator_core::SourceError;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::protocol::BasicProperties;
use lapin::types::FieldTable;
use lapin::{Acker, Channel, Confirmation, Connection, ConnectionProperties, Consumer};
use tokio_util::sync::CancellationToken;

use crate::config::{QueueMode, RabbitMqConfig};
use crate::errors::{classify, classify_login, LinkError, Released, StepFailure};
use crate::topology;

/// The longest each step of closing (deleting the instance queue, closing a channel or the
/// connection) waits for the broker: a broker that stopped answering must not hold up
/// shutdown or the next connection attempt.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A live connection: the channel deliveries come on, and the channel the source publishes
/// on (republished abandons, dead letters).
///
/// Publishing has a channel of its own because the broker closes a channel on a publish it
/// refuses outright (an exchange that does not exist, say): on the consuming channel that
/// would take every delivery in flight with it and stop the consumer.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) connection: Arc<Connection>,
    pub(crate) channel: Channel,
    publisher: Arc<tokio::sync::Mutex<Channel>>,
}

/// Why an attempt to connect ended without a link.
pub(crate) enum OpenError {
    Failed(LinkError),
    /// The source was closed during the attempt; the attempt released what it had opened.
    Closed,
}

impl From<LinkError> for OpenError {
    fn from(error: LinkError) -> Self {
        OpenError::Failed(error)
    }
}

/// `step`, unless `shutdown` comes first.
async fn unless_closed<T>(
    shutdown: &CancellationToken,
    step: impl Future<Output = Result<T, LinkError>>,
) -> Result<T, OpenError> {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => Err(OpenError::Closed),
        result = step => Ok(result?),
    }
}

impl Link {
    /// Connects, declares the topology and starts consuming `queue`, each step abandoned as
    /// soon as `shutdown` is cancelled. Whatever the attempt opened before it failed or was
    /// abandoned is released before it returns: the connection is closed, and when the source
    /// closed meanwhile, the instance queue the attempt may have declared is deleted, since no
    /// one will consume it.
    pub(crate) async fn open(
        config: &RabbitMqConfig,
        queue: &str,
        shutdown: &CancellationToken,
    ) -> Result<(Link, Consumer), OpenError> {
        let properties =
            ConnectionProperties::default().with_connection_name(config.connection_name().into());
        let connection = unless_closed(shutdown, async {
            Connection::connect(&config.uri, properties)
                .await
                .map_err(classify_login)
        })
        .await?;
        let connection = Arc::new(connection);
        let channel = match unless_closed(shutdown, async {
            connection
                .create_channel()
                .await
                .map_err(|e| classify(e, "opening a channel"))
        })
        .await
        {
            Ok(channel) => channel,
            Err(error) => {
                close_connection(&connection).await;
                return Err(error);
            }
        };
        let rest = unless_closed(shutdown, async {
            channel
                .basic_qos(config.prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| classify(e, "setting the prefetch"))?;
            topology::declare(&channel, config).await?;
            let publisher = open_publisher(&connection)
                .await
                .map_err(|e| classify(e, "opening the publishing channel"))?;
            let consumer = channel
                .basic_consume(
                    queue.into(),
                    config.connection_name().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| classify(e, &format!("consuming from queue `{queue}`")))?;
            Ok((publisher, consumer))
        })
        .await;
        match rest {
            Ok((publisher, consumer)) => Ok((
                Link {
                    connection,
                    channel,
                    publisher: Arc::new(tokio::sync::Mutex::new(publisher)),
                },
                consumer,
            )),
            Err(error) => {
                if matches!(error, OpenError::Closed) {
                    // On the channel that may have declared the queue: the broker handles one
                    // channel's methods in order, so the delete cannot overtake the declare.
                    let _ = delete_instance_queue(&channel, config).await;
                }
                close_connection(&connection).await;
                Err(error)
            }
        }
    }

    /// The publishing channel, opened again if the broker closed it (after a refused
    /// publish).
    async fn publishing_channel(&self) -> Result<Channel, StepFailure> {
        let mut publisher = self.publisher.lock().await;
        if !publisher.status().connected() {
            *publisher = open_publisher(&self.connection).await?;
        }
        Ok(publisher.clone())
    }

    /// Publishes a persistent message and waits for the broker's confirm, for at most
    /// `timeout` in all. `mandatory`, so that a message no queue takes (its queue deleted, a
    /// dead-letter exchange with nothing bound) fails here rather than vanishing.
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        timeout: Duration,
    ) -> Result<(), StepFailure> {
        let confirmed = async {
            let channel = self.publishing_channel().await?;
            let options = BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            };
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    body,
                    properties,
                )
                .await?;
            Ok::<_, StepFailure>(confirm.await?)
        };
        match tokio::time::timeout(timeout, confirmed).await {
            Err(_) => Err(StepFailure::TimedOut(timeout)),
            Ok(Err(failure)) => Err(failure),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(StepFailure::Unroutable),
            Ok(Ok(Confirmation::Nack(_) | Confirmation::NotRequested)) => Err(StepFailure::Refused),
        }
    }

    /// Hands a delivery whose settlement failed back to the broker: `basic.nack` with
    /// requeue, or, when that fails too, closing the channel it came on (the broker then
    /// requeues every delivery of the channel; the consumer ends with it and `receive`
    /// reconnects). Either way the delivery no longer holds a prefetch slot.
    pub(crate) async fn release(&self, acker: &Acker, config: &RabbitMqConfig) -> Released {
        if acker.poisoned() {
            return Released::AlreadyGone;
        }
        let requeue = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        let timeout = config.confirm_timeout;
        let nacked = if config.fail_releases {
            StepFailure::Injected
        } else {
            match tokio::time::timeout(timeout, acker.nack(requeue)).await {
                Ok(Ok(true)) => return Released::Nacked,
                Ok(Ok(false)) => StepFailure::ChannelClosed,
                Ok(Err(error)) => StepFailure::Lapin(error),
                Err(_) => StepFailure::TimedOut(timeout),
            }
        };
        tracing::warn!(error = %nacked, "could not release a delivery; closing its channel so that the broker requeues it");
        let closed = tokio::time::timeout(
            CLOSE_TIMEOUT,
            self.channel.close(200, "releasing deliveries".into()),
        )
        .await;
        if !matches!(closed, Ok(Ok(()))) {
            // The channel cannot even be closed: only closing the connection frees its
            // deliveries now.
            close_connection(&self.connection).await;
        }
        Released::ChannelClosed(nacked)
    }

    /// Closes the connection, each step bounded: the caller is shutting down or replacing it.
    pub(crate) async fn close(&self) {
        let _ =
            tokio::time::timeout(CLOSE_TIMEOUT, self.channel.close(200, "closing".into())).await;
        close_connection(&self.connection).await;
    }
}

/// Acknowledges a delivery, waiting at most `timeout`.
pub(crate) async fn ack(acker: &Acker, timeout: Duration) -> Result<(), StepFailure> {
    match tokio::time::timeout(timeout, acker.ack(BasicAckOptions::default())).await {
        Ok(Ok(true)) => Ok(()),
        // lapin sends nothing for an acker whose channel is closed, and says so only here.
        Ok(Ok(false)) => Err(StepFailure::ChannelClosed),
        Ok(Err(error)) => Err(StepFailure::Lapin(error)),
        Err(_) => Err(StepFailure::TimedOut(timeout)),
    }
}

async fn open_publisher(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Deletes the instance queue (never an existing queue), bounded. A failure is logged and
/// returned; the queue's idle expiry removes it anyway.
pub(crate) async fn delete_instance_queue(
    channel: &Channel,
    config: &RabbitMqConfig,
) -> Result<(), SourceError> {
    if !matches!(config.mode, QueueMode::Instance { .. }) {
        return Ok(());
    }
    let error = match tokio::time::timeout(
        CLOSE_TIMEOUT,
        topology::delete_instance_queue(channel, config),
    )
    .await
    {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(error)) => SourceError::from(error),
        Err(_) => SourceError::transient(format!(
            "deleting queue `{}`: the broker did not answer within {CLOSE_TIMEOUT:?}",
            config.queue_name()
        )),
    };
    tracing::warn!(error = %error.message, "could not delete the instance queue; its idle expiry will");
    Err(error)
}

pub(crate) async fn close_connection(connection: &Connection) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "closing".into())).await;
}
