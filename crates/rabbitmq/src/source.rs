//! The [`EventSource`] over a RabbitMQ queue.

use std::fmt;

use async_trait::async_trait;
use keyvault_invalidator_core::{
    Bytes, Delivery, DeliveryToken, EventSource, Settlement, SourceError,
};
use keyvault_invalidator_transport::{Generation, Lifecycle};
use lapin::protocol::BasicProperties;
use lapin::types::AMQPValue;

use crate::config::RabbitMqConfig;
use crate::connector::QueueConnector;
use crate::errors::{Released, SettleError, StepFailure};
use crate::link::{self, Link, CLOSE_TIMEOUT};
use crate::metadata::{read_metadata, Metadata};

/// The header that carries how many times this source delivered a message before it abandoned
/// it and published it again: classic queues do not count redeliveries, so the count travels
/// with the message.
pub const DELIVERY_COUNT_HEADER: &str = "x-kvi-delivery-count";
/// The dead-letter reason header.
pub const DEAD_LETTER_REASON_HEADER: &str = "x-kvi-dead-letter-reason";
/// The dead-letter description header.
pub const DEAD_LETTER_DESCRIPTION_HEADER: &str = "x-kvi-dead-letter-description";
/// The header naming the queue a dead-lettered message came from.
pub const DEAD_LETTER_QUEUE_HEADER: &str = "x-kvi-dead-letter-queue";

/// Delivers Key Vault events from a RabbitMQ queue to the job.
///
/// - **Topology**: see [`RabbitMqConfig`]: a durable topic exchange (routing key = event type),
///   an instance queue per application instance with an idle expiry (or an existing queue), and
///   a dead-letter exchange and queue beside them. Declared on every (re)connection, idempotently.
/// - **Settlement**: complete = ack. Abandon = publish the message again to the queue with
///   [`DELIVERY_COUNT_HEADER`] raised, confirmed by the broker, then ack the original (classic
///   queues keep no delivery count; a quorum queue's `x-delivery-count` is honoured as well).
///   Dead-letter = publish to the dead-letter exchange with the reason and description in
///   headers, confirmed, then ack. Acks go one delivery at a time. Publishing goes on a channel
///   of its own, with publisher confirms, so a publish the broker refuses cannot close the
///   channel deliveries come on.
/// - **Failed settlements**: a publish the broker refuses (`basic.nack`), returns (no queue
///   took it) or does not confirm within the
///   [confirm timeout](RabbitMqConfig::confirm_timeout), and an ack that fails, all end with the
///   delivery handed back to the broker: `basic.nack` with requeue, or, if that fails too, its
///   channel closed (the broker then requeues all the channel held, and the source reconnects).
///   `settle` then reports
///   [`SourceErrorKind::SettlementLost`](keyvault_invalidator_core::SourceErrorKind) saying
///   which; the message comes back. No delivery keeps a prefetch slot after its settlement.
/// - **Faults**: when the connection or channel closes, `receive` reports a transient error
///   (a loss noticed in the middle of a batch hands over the batch first), logs a warning
///   naming the step, and the next call closes the old connection, waits out an exponential
///   backoff with jitter, reconnects, re-declares, and resumes. Messages published meanwhile
///   wait in the durable queue. Deliveries received on the old channel cannot be settled on
///   the new one: settling them reports `SettlementLost` and the broker redelivers them
///   (counted as one more delivery).
/// - **Shutdown**: `close` abandons a connection attempt under way (which closes what it
///   opened, deleting the instance queue if it declared it), cancels the consumer, deletes the
///   instance queue (never an existing one), and closes the connection. Nothing is declared or
///   consumed after `close` returns.
///
/// Connecting is lazy: the first `receive` connects, so building a source never fails on the
/// network.
///
/// **Threads**: lapin drives each connection's socket on an OS thread of its own, named
/// `lapin-io-loop`: one per source (a source and its clones hold one connection at a time),
/// started when the source connects and ended when that connection closes or is lost (a
/// reconnection starts the next). The source itself starts none; its work runs on the
/// application's tokio runtime.
///
/// **TLS**: for `amqps`, lapin's rustls connector takes rustls's process-wide crypto provider
/// and, when none is installed yet, installs the one its features select (aws-lc-rs) for the
/// whole process. An application that wants another one installs it before the first
/// connection.
#[derive(Clone)]
pub struct RabbitMqSource {
    lifecycle: Lifecycle<QueueConnector>,
}

/// What settles one delivery: which connection it came on, its ack handle, and what is needed
/// to publish it again.
struct Token {
    generation: Generation,
    acker: lapin::Acker,
    body: Bytes,
    properties: BasicProperties,
    routing_key: String,
    delivery_count: u32,
}

impl RabbitMqSource {
    /// A source for this configuration. Nothing connects until the first `receive`.
    pub fn new(config: RabbitMqConfig) -> Self {
        let backoff = config.reconnect_backoff;
        RabbitMqSource {
            lifecycle: Lifecycle::builder(QueueConnector::new(config))
                .backoff(backoff)
                // Each closing step of an attempt under way is bounded by `CLOSE_TIMEOUT`.
                .close_wait(4 * CLOSE_TIMEOUT)
                .build(),
        }
    }

    /// The queue this source consumes.
    pub fn queue_name(&self) -> &str {
        &self.lifecycle.connector().queue
    }

    /// The configuration.
    pub fn config(&self) -> &RabbitMqConfig {
        &self.lifecycle.connector().config
    }

    /// Connects now rather than at the first `receive`: declares the topology and starts
    /// consuming, so a configuration the broker refuses fails here.
    pub async fn connect(&self) -> Result<(), SourceError> {
        self.lifecycle.connect().await
    }

    fn delivery(&self, generation: Generation, delivery: lapin::message::Delivery) -> Delivery {
        let Metadata {
            message_id,
            delivery_count,
            properties,
        } = read_metadata(
            &delivery.properties,
            delivery.routing_key.as_str(),
            delivery.redelivered,
        );
        let body = Bytes::from(delivery.data);
        let token = DeliveryToken::new(Token {
            generation,
            acker: delivery.acker,
            body: body.clone(),
            properties: delivery.properties,
            routing_key: delivery.routing_key.to_string(),
            delivery_count,
        });
        let delivery = Delivery::new(body, token)
            .with_delivery_count(delivery_count)
            .with_properties(properties);
        match message_id {
            Some(id) => delivery.with_message_id(id),
            None => delivery,
        }
    }

    /// Publishes `token`'s message again (to `exchange` with `headers` added), confirmed, then
    /// acks the original.
    async fn publish_then_ack(
        &self,
        link: &Link,
        token: &Token,
        doing: &'static str,
        exchange: &str,
        routing_key: &str,
        headers: Vec<(&str, AMQPValue)>,
    ) -> Result<(), SettleError> {
        let mut table = token.properties.headers().clone().unwrap_or_default();
        for (key, value) in headers {
            table.insert(key.into(), value);
        }
        let properties = token
            .properties
            .clone()
            .with_headers(table)
            .with_delivery_mode(2);
        let timeout = self.config().confirm_timeout;
        link.publish(exchange, routing_key, &token.body, properties, timeout)
            .await
            .map_err(|failure| SettleError { doing, failure })?;
        link::ack(&token.acker, timeout)
            .await
            .map_err(|failure| SettleError {
                doing: "acknowledging the original after publishing it again",
                failure,
            })
    }

    async fn settle_on(
        &self,
        link: &Link,
        token: &Token,
        settlement: Settlement,
    ) -> Result<(), SettleError> {
        match settlement {
            Settlement::Complete => link::ack(&token.acker, self.config().confirm_timeout)
                .await
                .map_err(|failure| SettleError {
                    doing: "acknowledging",
                    failure,
                }),
            Settlement::DeadLetter {
                reason,
                description,
                ..
            } => {
                let exchange = self.config().dead_letter_exchange.clone();
                let headers = vec![
                    (
                        DEAD_LETTER_REASON_HEADER,
                        AMQPValue::LongString(reason.into()),
                    ),
                    (
                        DEAD_LETTER_DESCRIPTION_HEADER,
                        AMQPValue::LongString(description.into()),
                    ),
                    (
                        DEAD_LETTER_QUEUE_HEADER,
                        AMQPValue::LongString(self.queue_name().to_owned().into()),
                    ),
                    (
                        DELIVERY_COUNT_HEADER,
                        AMQPValue::LongUInt(token.delivery_count),
                    ),
                ];
                self.publish_then_ack(
                    link,
                    token,
                    "publishing to the dead-letter exchange",
                    &exchange,
                    &token.routing_key,
                    headers,
                )
                .await
            }
            // Abandon, and any settlement added later that this source does not know: the
            // message comes back, which never loses it.
            _ => {
                let count = AMQPValue::LongUInt(token.delivery_count);
                let queue = self.queue_name().to_owned();
                self.publish_then_ack(
                    link,
                    token,
                    "publishing the abandoned delivery again",
                    "",
                    &queue,
                    vec![(DELIVERY_COUNT_HEADER, count)],
                )
                .await
            }
        }
    }
}

#[async_trait]
impl EventSource for RabbitMqSource {
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, SourceError> {
        let batch = self.lifecycle.receive(max).await?;
        let generation = batch.generation;
        Ok(batch
            .items
            .into_iter()
            .map(|delivery| self.delivery(generation, delivery))
            .collect())
    }

    async fn settle(
        &self,
        token: DeliveryToken,
        settlement: Settlement,
    ) -> Result<(), SourceError> {
        let token = token.into_handle::<Token>()?;
        let link = self.lifecycle.connection_of(token.generation)?;
        if token.acker.poisoned() {
            return Err(SourceError::settlement_lost(
                "the channel the delivery came on is closed; the broker redelivers it",
            ));
        }
        match self.settle_on(&link, &token, settlement).await {
            Ok(()) => Ok(()),
            Err(failed) => {
                let released = match &failed.failure {
                    // Nothing more to send: the broker requeued it with the channel.
                    StepFailure::ChannelClosed => Released::AlreadyGone,
                    _ => link.release(&token.acker, self.config()).await,
                };
                Err(failed.released(released))
            }
        }
    }

    async fn close(&self) -> Result<(), SourceError> {
        self.lifecycle.close().await
    }
}

impl fmt::Debug for RabbitMqSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqSource")
            .field("config", &self.config())
            .field("connected", &self.lifecycle.is_connected())
            .finish()
    }
}
