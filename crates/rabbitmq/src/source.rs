//! The [`EventSource`] over a RabbitMQ queue.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use keyvault_invalidator_core::{
    Bytes, ConnectSlot, Delivery, DeliveryToken, EventSource, Settlement, SourceError,
};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::protocol::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, Consumer};

use crate::config::{QueueMode, RabbitMqConfig};
use crate::errors::{classify, LinkError};
use crate::topology;

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
///   headers, confirmed, then ack. Acks go one delivery at a time.
/// - **Faults**: when the connection or channel closes, `receive` reports a transient error and
///   the next call reconnects (with exponential backoff and jitter between failed attempts),
///   re-declares, and resumes. Messages published meanwhile wait in the durable queue.
///   Deliveries received on the old channel cannot be settled on the new one: settling them
///   reports [`SourceErrorKind::SettlementLost`](keyvault_invalidator_core::SourceErrorKind)
///   and the broker redelivers them (counted as one more delivery).
/// - **Shutdown**: `close` cancels the consumer, deletes the instance queue (never an existing
///   one), and closes the connection.
///
/// Connecting is lazy: the first `receive` connects, so building a source never fails on the
/// network.
#[derive(Clone)]
pub struct RabbitMqSource {
    inner: Arc<Inner>,
}

struct Inner {
    config: RabbitMqConfig,
    queue: String,
    /// The live connection, for settlements; replaced on reconnection.
    link: Mutex<Option<Link>>,
    /// The consumer stream, only ever read by `receive`, and the connection attempt under way.
    consumer: tokio::sync::Mutex<ConnectSlot<Consumer>>,
    generation: AtomicU64,
    closed: AtomicBool,
    failures: AtomicU32,
    outage_since: Mutex<Option<Instant>>,
}

#[derive(Clone)]
struct Link {
    generation: u64,
    connection: Arc<Connection>,
    channel: Channel,
}

/// What settles one delivery: which channel it came on, its ack handle, and what is needed to
/// publish it again.
struct Token {
    generation: u64,
    acker: lapin::Acker,
    body: Bytes,
    properties: BasicProperties,
    routing_key: String,
    delivery_count: u32,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl RabbitMqSource {
    /// A source for this configuration. Nothing connects until the first `receive`.
    pub fn new(config: RabbitMqConfig) -> Self {
        let queue = config.queue_name();
        RabbitMqSource {
            inner: Arc::new(Inner {
                config,
                queue,
                link: Mutex::new(None),
                consumer: tokio::sync::Mutex::new(ConnectSlot::new()),
                generation: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                failures: AtomicU32::new(0),
                outage_since: Mutex::new(None),
            }),
        }
    }

    /// The queue this source consumes.
    pub fn queue_name(&self) -> &str {
        &self.inner.queue
    }

    /// The configuration.
    pub fn config(&self) -> &RabbitMqConfig {
        &self.inner.config
    }

    /// Connects now rather than at the first `receive`: declares the topology and starts
    /// consuming, so a configuration the broker refuses fails here.
    pub async fn connect(&self) -> Result<(), SourceError> {
        let mut slot = self.inner.consumer.lock().await;
        self.ensure_consumer(&mut slot).await.map(|_| ())
    }

    async fn ensure_consumer<'a>(
        &self,
        slot: &'a mut ConnectSlot<Consumer>,
    ) -> Result<&'a mut Consumer, SourceError> {
        let this = self.clone();
        slot.get_or_open(|| async move { this.open().await })
            .await?;
        if self.inner.closed.load(Ordering::SeqCst) {
            // Closed while connecting: release what the attempt opened.
            drop(slot.take());
            let _ = EventSource::close(self).await;
            return Err(SourceError::closed());
        }
        Ok(slot.current().expect("opened above"))
    }

    async fn open(&self) -> Result<Consumer, SourceError> {
        let failures = self.inner.failures.load(Ordering::SeqCst);
        if failures > 0 {
            tokio::time::sleep(self.inner.config.reconnect_backoff.delay(failures)).await;
        }
        match self.open_link().await {
            Ok((link, consumer)) => {
                self.inner.failures.store(0, Ordering::SeqCst);
                if let Some(since) = lock(&self.inner.outage_since).take() {
                    tracing::info!(
                        queue = %self.inner.queue,
                        outage_ms = since.elapsed().as_millis() as u64,
                        "reconnected to RabbitMQ"
                    );
                    metrics::counter!("keyvault_invalidator_rabbitmq_reconnects_total")
                        .increment(1);
                }
                metrics::gauge!("keyvault_invalidator_rabbitmq_connected").set(1.0);
                *lock(&self.inner.link) = Some(link);
                Ok(consumer)
            }
            Err(error) => {
                self.inner.failures.fetch_add(1, Ordering::SeqCst);
                self.mark_outage();
                tracing::warn!(
                    uri = %self.inner.config.redacted_uri(),
                    error = %error.message,
                    "connecting to RabbitMQ failed"
                );
                Err(error.into())
            }
        }
    }

    async fn open_link(&self) -> Result<(Link, Consumer), LinkError> {
        let config = &self.inner.config;
        let properties =
            ConnectionProperties::default().with_connection_name(config.connection_name().into());
        let connection = Connection::connect(&config.uri, properties)
            .await
            .map_err(|e| classify(e, "connecting to RabbitMQ"))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| classify(e, "opening a channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| classify(e, "enabling publisher confirms"))?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| classify(e, "setting the prefetch"))?;
        topology::declare(&channel, config).await?;
        let consumer = channel
            .basic_consume(
                self.inner.queue.as_str().into(),
                config.connection_name().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| classify(e, &format!("consuming from queue `{}`", self.inner.queue)))?;
        let generation = self.inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
        Ok((
            Link {
                generation,
                connection: Arc::new(connection),
                channel,
            },
            consumer,
        ))
    }

    fn mark_outage(&self) {
        let mut since = lock(&self.inner.outage_since);
        if since.is_none() {
            *since = Some(Instant::now());
            metrics::counter!("keyvault_invalidator_rabbitmq_connection_losses_total").increment(1);
            metrics::gauge!("keyvault_invalidator_rabbitmq_connected").set(0.0);
        }
    }

    fn lost(&self, slot: &mut ConnectSlot<Consumer>, why: &str) -> SourceError {
        slot.take();
        *lock(&self.inner.link) = None;
        if self.inner.closed.load(Ordering::SeqCst) {
            return SourceError::closed();
        }
        self.mark_outage();
        tracing::warn!(queue = %self.inner.queue, "lost the RabbitMQ connection: {why}; reconnecting");
        SourceError::transient(format!("lost the RabbitMQ connection: {why}"))
    }

    fn delivery(&self, generation: u64, delivery: lapin::message::Delivery) -> Delivery {
        let headers = delivery.properties.headers().as_ref();
        let republished = header_u32(headers, DELIVERY_COUNT_HEADER).unwrap_or(0);
        // A redelivery after a lost connection is one more delivery the header does not know.
        let ours = republished + 1 + u32::from(delivery.redelivered);
        let quorum = header_u32(headers, "x-delivery-count").map(|prior| prior + 1);
        let delivery_count = quorum.map_or(ours, |q| q.max(ours));
        let mut properties = BTreeMap::new();
        if let Some(table) = headers {
            for (key, value) in table.inner() {
                if let Some(text) = scalar_text(value) {
                    properties.insert(key.to_string(), text);
                }
            }
        }
        if let Some(content_type) = delivery.properties.content_type() {
            properties.insert("content-type".to_owned(), content_type.to_string());
        }
        properties.insert("routing-key".to_owned(), delivery.routing_key.to_string());
        let body = Bytes::from(delivery.data);
        Delivery {
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string()),
            delivery_count,
            properties,
            body: body.clone(),
            token: DeliveryToken::new(Token {
                generation,
                acker: delivery.acker,
                body,
                properties: delivery.properties,
                routing_key: delivery.routing_key.to_string(),
                delivery_count,
            }),
        }
    }

    async fn publish_then_ack(
        &self,
        link: &Link,
        token: Token,
        exchange: &str,
        routing_key: &str,
        headers: Vec<(&str, AMQPValue)>,
    ) -> Result<(), SourceError> {
        let mut table = token.properties.headers().clone().unwrap_or_default();
        for (key, value) in headers {
            table.insert(key.into(), value);
        }
        let properties = token
            .properties
            .clone()
            .with_headers(table)
            .with_delivery_mode(2);
        let confirmation = link
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &token.body,
                properties,
            )
            .await
            .map_err(|e| SourceError::from(classify(e, "publishing")))?
            .await
            .map_err(|e| SourceError::from(classify(e, "waiting for the publish confirm")))?;
        if !confirmation.is_ack() {
            // The original stays unacknowledged: the broker redelivers it, nothing is lost.
            return Err(SourceError::transient(
                "the broker refused the publish (nack); the delivery will come back",
            ));
        }
        token
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| classify(e, "acknowledging").into())
    }
}

#[async_trait]
impl EventSource for RabbitMqSource {
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, SourceError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(SourceError::closed());
        }
        let mut slot = self.inner.consumer.lock().await;
        let stream = self.ensure_consumer(&mut slot).await?;
        let generation = lock(&self.inner.link)
            .as_ref()
            .map_or(0, |link| link.generation);
        let first = match stream.next().await {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => return Err(self.lost(&mut slot, &error.to_string())),
            None => return Err(self.lost(&mut slot, "the consumer was cancelled")),
        };
        let mut batch = vec![self.delivery(generation, first)];
        while batch.len() < max.max(1) {
            // Take what is already here; never wait for more.
            match stream.next().now_or_never() {
                Some(Some(Ok(delivery))) => batch.push(self.delivery(generation, delivery)),
                Some(Some(Err(_)) | None) => {
                    // Hand over what arrived; the next receive sees the loss and reconnects.
                    slot.take();
                    break;
                }
                None => break,
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
        let link = lock(&self.inner.link).clone();
        let link = match link {
            Some(link) if link.generation == token.generation => link,
            _ => {
                return Err(SourceError::settlement_lost(
                    "the delivery came on a connection that is gone; the broker redelivers it",
                ))
            }
        };
        match settlement {
            Settlement::Complete => token
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map(|_| ())
                .map_err(|e| classify(e, "acknowledging").into()),
            Settlement::Abandon => {
                let count = AMQPValue::LongUInt(token.delivery_count);
                let queue = self.inner.queue.clone();
                self.publish_then_ack(
                    &link,
                    token,
                    "",
                    &queue,
                    vec![(DELIVERY_COUNT_HEADER, count)],
                )
                .await
            }
            Settlement::DeadLetter {
                reason,
                description,
            } => {
                let exchange = self.inner.config.dead_letter_exchange.clone();
                let routing_key = token.routing_key.clone();
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
                        AMQPValue::LongString(self.inner.queue.clone().into()),
                    ),
                    (
                        DELIVERY_COUNT_HEADER,
                        AMQPValue::LongUInt(token.delivery_count),
                    ),
                ];
                self.publish_then_ack(&link, token, &exchange, &routing_key, headers)
                    .await
            }
        }
    }

    async fn close(&self) -> Result<(), SourceError> {
        self.inner.closed.store(true, Ordering::SeqCst);
        let link = lock(&self.inner.link).take();
        let Some(link) = link else {
            return Ok(());
        };
        let mut result = Ok(());
        if matches!(self.inner.config.mode, QueueMode::Instance { .. }) {
            if let Err(error) =
                topology::delete_instance_queue(&link.channel, &self.inner.config).await
            {
                tracing::warn!(error = %error.message, "could not delete the instance queue; its idle expiry will");
                result = Err(error.into());
            }
        }
        let _ = link.channel.close(200, "shutting down".into()).await;
        let _ = link.connection.close(200, "shutting down".into()).await;
        metrics::gauge!("keyvault_invalidator_rabbitmq_connected").set(0.0);
        result
    }
}

impl fmt::Debug for RabbitMqSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqSource")
            .field("config", &self.inner.config)
            .field("connected", &lock(&self.inner.link).is_some())
            .finish()
    }
}

fn header_u32(headers: Option<&FieldTable>, name: &str) -> Option<u32> {
    let value = headers?.inner().get(&ShortString::from(name))?;
    u32::try_from(header_i64(value)?).ok()
}

fn scalar_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::LongString(s) => s.to_string(),
        AMQPValue::ShortShortInt(_)
        | AMQPValue::ShortShortUInt(_)
        | AMQPValue::ShortInt(_)
        | AMQPValue::ShortUInt(_)
        | AMQPValue::LongInt(_)
        | AMQPValue::LongUInt(_)
        | AMQPValue::LongLongInt(_) => header_i64(value)?.to_string(),
        _ => return None,
    })
}

fn header_i64(value: &AMQPValue) -> Option<i64> {
    Some(match value {
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        _ => return None,
    })
}
