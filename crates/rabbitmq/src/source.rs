//! The [`EventSource`] over a RabbitMQ queue.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use keyvault_invalidator_core::{
    Bytes, ConnectSlot, Delivery, DeliveryToken, EventSource, Settlement, SourceError,
};
use lapin::protocol::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::Consumer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::RabbitMqConfig;
use crate::errors::{Released, SettleError, StepFailure};
use crate::link::{self, Link, OpenError, CLOSE_TIMEOUT};

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
#[derive(Clone)]
pub struct RabbitMqSource {
    inner: Arc<Inner>,
}

struct Inner {
    config: RabbitMqConfig,
    queue: String,
    /// The live connection, for settlements; replaced on reconnection.
    link: Mutex<Option<Link>>,
    /// A connection found lost, closed by the next attempt before it connects.
    retired: Mutex<Option<Link>>,
    /// The consumer stream, only ever read by `receive`, and the connection attempt under way.
    consumer: tokio::sync::Mutex<ConnectSlot<Consumer>>,
    generation: AtomicU64,
    /// Cancelled by `close`: abandons a connection attempt under way.
    shutdown: CancellationToken,
    /// The connection attempts under way, which `close` waits for.
    attempts: TaskTracker,
    failures: AtomicU32,
    outage_since: Mutex<Option<Instant>>,
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
                retired: Mutex::new(None),
                consumer: tokio::sync::Mutex::new(ConnectSlot::new()),
                generation: AtomicU64::new(0),
                shutdown: CancellationToken::new(),
                attempts: TaskTracker::new(),
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

    fn is_closed(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    async fn ensure_consumer<'a>(
        &self,
        slot: &'a mut ConnectSlot<Consumer>,
    ) -> Result<&'a mut Consumer, SourceError> {
        let this = self.clone();
        let attempts = self.inner.attempts.clone();
        slot.get_or_open(|| attempts.track_future(async move { this.open().await }))
            .await?;
        if self.is_closed() {
            // Closed just after the attempt handed over its link: `close` took the link and
            // closes it; the consumer goes with it.
            slot.take();
            return Err(SourceError::closed());
        }
        slot.current()
            .ok_or_else(|| SourceError::transient("the connection was lost as it opened"))
    }

    async fn open(&self) -> Result<Consumer, SourceError> {
        let shutdown = &self.inner.shutdown;
        let retired = lock(&self.inner.retired).take();
        if let Some(old) = retired {
            // Before connecting again: the old connection may still hold deliveries (which
            // the broker requeues only when it closes) and a consumer.
            old.close().await;
        }
        let failures = self.inner.failures.load(Ordering::SeqCst);
        if failures > 0 {
            let delay = self.inner.config.reconnect_backoff.delay(failures);
            tokio::select! {
                () = shutdown.cancelled() => return Err(SourceError::closed()),
                () = tokio::time::sleep(delay) => {}
            }
        }
        let generation = self.inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let opened = Link::open(&self.inner.config, &self.inner.queue, generation, shutdown).await;
        match opened {
            Ok((link, consumer)) => {
                {
                    let mut current = lock(&self.inner.link);
                    if !self.is_closed() {
                        *current = Some(link);
                        drop(current);
                        self.connected();
                        return Ok(consumer);
                    }
                }
                // `close` ran while this attempt finished: it found no link to close, so the
                // attempt closes its own.
                let _ = link::delete_instance_queue(&link.channel, &self.inner.config).await;
                link.close().await;
                Err(SourceError::closed())
            }
            Err(OpenError::Closed) => Err(SourceError::closed()),
            Err(OpenError::Failed(error)) => {
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

    fn connected(&self) {
        self.inner.failures.store(0, Ordering::SeqCst);
        if let Some(since) = lock(&self.inner.outage_since).take() {
            tracing::info!(
                queue = %self.inner.queue,
                outage_ms = since.elapsed().as_millis() as u64,
                "reconnected to RabbitMQ"
            );
            metrics::counter!("keyvault_invalidator_rabbitmq_reconnects_total").increment(1);
        }
        metrics::gauge!("keyvault_invalidator_rabbitmq_connected").set(1.0);
    }

    fn mark_outage(&self) {
        let mut since = lock(&self.inner.outage_since);
        if since.is_none() {
            *since = Some(Instant::now());
            metrics::counter!("keyvault_invalidator_rabbitmq_connection_losses_total").increment(1);
            metrics::gauge!("keyvault_invalidator_rabbitmq_connected").set(0.0);
        }
    }

    /// The consumer's stream ended or failed while `step`: the link is retired (the next
    /// attempt closes its connection before connecting, after a backoff).
    fn lost(&self, slot: &mut ConnectSlot<Consumer>, step: &str, why: &str) -> SourceError {
        slot.take();
        let link = lock(&self.inner.link).take();
        if self.is_closed() {
            return SourceError::closed();
        }
        if let Some(link) = link {
            *lock(&self.inner.retired) = Some(link);
        }
        self.inner.failures.fetch_add(1, Ordering::SeqCst);
        self.mark_outage();
        tracing::warn!(
            queue = %self.inner.queue,
            step,
            "lost the RabbitMQ link while {step}: {why}; closing its connection and reconnecting after a backoff"
        );
        SourceError::transient(format!("lost the RabbitMQ connection while {step}: {why}"))
    }

    fn delivery(&self, generation: u64, delivery: lapin::message::Delivery) -> Delivery {
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
        let timeout = self.inner.config.confirm_timeout;
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
            Settlement::Complete => link::ack(&token.acker, self.inner.config.confirm_timeout)
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
                let exchange = self.inner.config.dead_letter_exchange.clone();
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
                let queue = self.inner.queue.clone();
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
        if self.is_closed() {
            return Err(SourceError::closed());
        }
        let mut slot = self.inner.consumer.lock().await;
        let stream = self.ensure_consumer(&mut slot).await?;
        let generation = lock(&self.inner.link)
            .as_ref()
            .map_or(0, |link| link.generation);
        let first = match stream.next().await {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => return Err(self.lost(&mut slot, "receiving", &error.to_string())),
            None => {
                return Err(self.lost(&mut slot, "receiving", "the broker cancelled the consumer"))
            }
        };
        let mut batch = vec![self.delivery(generation, first)];
        while batch.len() < max.max(1) {
            // Take what is already here; never wait for more.
            match stream.next().now_or_never() {
                Some(Some(Ok(delivery))) => batch.push(self.delivery(generation, delivery)),
                Some(Some(Err(error))) => {
                    // Hand over what arrived; the next receive reconnects.
                    let _ = self.lost(
                        &mut slot,
                        "receiving the rest of a batch",
                        &error.to_string(),
                    );
                    break;
                }
                Some(None) => {
                    let _ = self.lost(
                        &mut slot,
                        "receiving the rest of a batch",
                        "the broker cancelled the consumer",
                    );
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
                    _ => link.release(&token.acker, &self.inner.config).await,
                };
                Err(failed.released(released))
            }
        }
    }

    async fn close(&self) -> Result<(), SourceError> {
        self.inner.shutdown.cancel();
        // An attempt under way gives up at its next step and releases what it opened; wait
        // for that, so that nothing it started reaches the broker after `close` returns.
        self.inner.attempts.close();
        let _ = tokio::time::timeout(4 * CLOSE_TIMEOUT, self.inner.attempts.wait()).await;
        let retired = lock(&self.inner.retired).take();
        if let Some(old) = retired {
            old.close().await;
        }
        let link = lock(&self.inner.link).take();
        let Some(link) = link else {
            return Ok(());
        };
        let result = link::delete_instance_queue(&link.channel, &self.inner.config).await;
        link.close().await;
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

/// What a delivery's properties say, read once on arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The `message-id` property.
    pub message_id: Option<String>,
    /// How many times the message was delivered, this one included: at least 1.
    pub delivery_count: u32,
    /// The scalar headers as text, then `content-type` and `routing-key`.
    pub properties: BTreeMap<String, String>,
}

/// Reads the message id, the delivery count and the properties of a delivery. Everything in
/// `properties` came from whoever published the message: nothing is trusted.
pub fn read_metadata(
    properties: &BasicProperties,
    routing_key: &str,
    redelivered: bool,
) -> Metadata {
    let headers = properties.headers().as_ref();
    let mut text = BTreeMap::new();
    if let Some(table) = headers {
        for (key, value) in table.inner() {
            if let Some(value) = scalar_text(value) {
                text.insert(key.to_string(), value);
            }
        }
    }
    if let Some(content_type) = properties.content_type() {
        text.insert("content-type".to_owned(), content_type.to_string());
    }
    text.insert("routing-key".to_owned(), routing_key.to_owned());
    Metadata {
        message_id: properties.message_id().as_ref().map(|id| id.to_string()),
        delivery_count: delivery_count(headers, redelivered),
        properties: text,
    }
}

/// How many times this message has been delivered, this time included: one more than
/// [`DELIVERY_COUNT_HEADER`] (what this source counted before it republished the message), one
/// more again if the broker flags it redelivered (a delivery lost with a connection, which the
/// header does not know of), or a quorum queue's `x-delivery-count` (prior deliveries) plus one
/// if that is higher.
///
/// The headers come from whoever published the message, so they are untrusted: the arithmetic
/// saturates at `u32::MAX` (a message delivered that often is dead-lettered by any
/// `max_attempts` anyway), and see [`header_count`] for what a header may hold. The result is
/// always at least 1.
fn delivery_count(headers: Option<&FieldTable>, redelivered: bool) -> u32 {
    let republished = header_count(headers, DELIVERY_COUNT_HEADER).unwrap_or(0);
    let ours = republished
        .saturating_add(1)
        .saturating_add(u32::from(redelivered));
    let quorum = header_count(headers, "x-delivery-count").map(|prior| prior.saturating_add(1));
    quorum.map_or(ours, |q| q.max(ours))
}

/// A count from header `name`: an AMQP integer of any width, or a string holding one (a
/// publisher that writes headers as text); clamped into `u32` (negatives count as 0, values
/// above `u32::MAX` as `u32::MAX`). Anything else (floats, booleans, tables, text that is no
/// integer) is ignored, as if the header were absent, rather than guessed at.
fn header_count(headers: Option<&FieldTable>, name: &str) -> Option<u32> {
    let value = headers?.inner().get(&ShortString::from(name))?;
    let count = match value {
        AMQPValue::ShortString(text) => text_count(text.as_str())?,
        AMQPValue::LongString(text) => text_count(std::str::from_utf8(text.as_bytes()).ok()?)?,
        other => i128::from(header_i64(other)?),
    };
    Some(u32::try_from(count.max(0)).unwrap_or(u32::MAX))
}

/// An integer written as text: trimmed, an optional sign, digits. One of any length counts:
/// past what `i128` holds it stands for the largest (or smallest) value, which clamps the same.
fn text_count(text: &str) -> Option<i128> {
    let text = text.trim();
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    // Checked first: `parse` reports an overflow before it sees a later character that is no
    // digit.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<i128>().unwrap_or(if text.starts_with('-') {
        i128::MIN
    } else {
        i128::MAX
    }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const QUORUM: &str = "x-delivery-count";

    fn table(headers: &[(&str, AMQPValue)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (name, value) in headers {
            table.insert(ShortString::from(*name), value.clone());
        }
        table
    }

    #[test]
    fn the_delivery_count_saturates_and_ignores_what_is_not_an_integer() {
        use AMQPValue as V;
        let long = |text: &str| V::LongString(text.into());
        let short = |text: &str| V::ShortString(text.into());
        // (our header, the quorum header, redelivered, expected count)
        let cases: Vec<(Option<V>, Option<V>, bool, u32)> = vec![
            (None, None, false, 1),
            (None, None, true, 2),
            (Some(V::LongUInt(2)), None, false, 3),
            (Some(V::LongUInt(2)), None, true, 4),
            (Some(V::ShortShortUInt(7)), None, false, 8),
            (Some(V::ShortInt(7)), None, false, 8),
            (Some(V::LongLongInt(7)), None, false, 8),
            // The overflow this function exists for: `u32::MAX + 1` panicked.
            (Some(V::LongUInt(u32::MAX)), None, false, u32::MAX),
            (Some(V::LongUInt(u32::MAX)), None, true, u32::MAX),
            (Some(V::LongUInt(u32::MAX - 1)), None, false, u32::MAX),
            (Some(V::LongUInt(u32::MAX - 1)), None, true, u32::MAX),
            (Some(V::LongLongInt(i64::MAX)), None, false, u32::MAX),
            (None, Some(V::LongUInt(u32::MAX)), false, u32::MAX),
            (None, Some(V::LongLongInt(i64::MAX)), true, u32::MAX),
            // Negatives count as 0.
            (Some(V::LongInt(-5)), None, false, 1),
            (Some(V::LongLongInt(i64::MIN)), None, true, 2),
            (Some(V::ShortShortInt(-1)), Some(V::LongInt(-1)), false, 1),
            // Integers written as text are read, clamped the same way.
            (Some(long("4")), None, false, 5),
            (Some(short(" 4 ")), None, false, 5),
            (Some(long("-3")), None, false, 1),
            (Some(long("4294967295")), None, false, u32::MAX),
            (Some(long("99999999999999999999")), None, false, u32::MAX),
            (None, Some(short("6")), false, 7),
            // Anything else is as if absent.
            (Some(long("four")), None, false, 1),
            (Some(long("4.5")), None, true, 2),
            (Some(long("")), None, false, 1),
            (Some(V::LongString(vec![0xff, 0xfe].into())), None, false, 1),
            (Some(V::Float(9.0)), None, false, 1),
            (Some(V::Double(f64::NAN)), None, false, 1),
            (Some(V::Boolean(true)), None, false, 1),
            (Some(V::Timestamp(9)), None, false, 1),
            (
                Some(V::Void),
                Some(V::FieldTable(FieldTable::default())),
                false,
                1,
            ),
            (
                Some(V::FieldArray(vec![V::LongUInt(9)].into())),
                None,
                false,
                1,
            ),
            // The higher of the two counts wins.
            (Some(V::LongUInt(1)), Some(V::LongUInt(5)), false, 6),
            (Some(V::LongUInt(5)), Some(V::LongUInt(1)), true, 7),
            (Some(V::LongUInt(5)), Some(V::Float(100.0)), false, 6),
        ];
        for (ours, quorum, redelivered, expected) in cases {
            let mut headers = Vec::new();
            if let Some(value) = &ours {
                headers.push((DELIVERY_COUNT_HEADER, value.clone()));
            }
            if let Some(value) = &quorum {
                headers.push((QUORUM, value.clone()));
            }
            let headers = table(&headers);
            assert_eq!(
                delivery_count(Some(&headers), redelivered),
                expected,
                "ours {ours:?}, quorum {quorum:?}, redelivered {redelivered}"
            );
        }
        assert_eq!(delivery_count(None, false), 1, "no headers at all");
        assert_eq!(delivery_count(None, true), 2);
    }

    /// Found by the `rabbitmq_metadata` fuzz target: integer text longer than `i128` holds was
    /// ignored (count 1) instead of clamped to `u32::MAX` as the documentation says. Its second
    /// find: such text followed by what is no digit is still no integer (`parse` reports the
    /// overflow first, so a fix that trusted its error kind alone counted it as `u32::MAX`).
    #[test]
    fn integer_text_too_long_for_any_integer_type_still_counts() {
        use AMQPValue as V;
        // The fuzzer's input: a quorum count of 41 digits, not flagged redelivered.
        let found = V::ShortString("+97755555555555555555555555555555555155580".into());
        assert_eq!(
            delivery_count(Some(&table(&[(QUORUM, found)])), false),
            u32::MAX
        );
        let digits = "9".repeat(200);
        for text in [
            digits.clone(),
            format!("  +{digits}\t"),
            format!("000{digits}"),
        ] {
            for value in [
                V::ShortString(text.as_str().into()),
                V::LongString(text.as_str().into()),
            ] {
                assert_eq!(
                    delivery_count(
                        Some(&table(&[(DELIVERY_COUNT_HEADER, value.clone())])),
                        false
                    ),
                    u32::MAX
                );
                assert_eq!(
                    delivery_count(Some(&table(&[(QUORUM, value)])), false),
                    u32::MAX
                );
            }
        }
        // As long and negative: no prior deliveries.
        let negative = V::LongString(format!("-{digits}").as_str().into());
        assert_eq!(
            delivery_count(Some(&table(&[(DELIVERY_COUNT_HEADER, negative)])), true),
            2
        );
        // The second input: past the overflow, characters that are no digits (NULs, which `trim`
        // keeps). Not an integer, so ignored: this delivery and the redelivery make 2.
        let found = format!(
            "{}{}{}\0\0\0\0",
            "\u{c}".repeat(44),
            "6".repeat(123),
            "\u{c}".repeat(19)
        );
        let value = V::ShortString(found.as_str().into());
        assert_eq!(
            delivery_count(Some(&table(&[(DELIVERY_COUNT_HEADER, value)])), true),
            2
        );
        // Still not integers: a sign alone, digits with a letter, inner spaces.
        let overflowing_then_letter = format!("{digits}x");
        for text in ["+", "-", "1 2", "12a", "++1", "", &overflowing_then_letter] {
            let value = V::ShortString(text.into());
            assert_eq!(
                delivery_count(Some(&table(&[(QUORUM, value)])), false),
                1,
                "{text:?}"
            );
        }
    }

    /// Every AMQP integer type, any value, with the edges weighted up: uniform values almost
    /// never hit them.
    fn integer_value() -> impl Strategy<Value = AMQPValue> {
        use AMQPValue as V;
        prop_oneof![
            1 => any::<i8>().prop_map(V::ShortShortInt),
            1 => any::<u8>().prop_map(V::ShortShortUInt),
            1 => any::<i16>().prop_map(V::ShortInt),
            1 => any::<u16>().prop_map(V::ShortUInt),
            1 => any::<i32>().prop_map(V::LongInt),
            1 => any::<u32>().prop_map(V::LongUInt),
            1 => any::<i64>().prop_map(V::LongLongInt),
            3 => prop_oneof![Just(0), Just(u32::MAX - 1), Just(u32::MAX)].prop_map(V::LongUInt),
            3 => prop_oneof![
                Just(i64::MIN),
                Just(-1),
                Just(i64::from(u32::MAX) + 1),
                Just(i64::MAX)
            ]
            .prop_map(V::LongLongInt),
        ]
    }

    /// Any scalar AMQP value; integers (the values that matter) about as often as all the
    /// rest together.
    fn scalar() -> impl Strategy<Value = AMQPValue> {
        use AMQPValue as V;
        prop_oneof![
            9 => integer_value(),
            1 => any::<bool>().prop_map(V::Boolean),
            1 => any::<f32>().prop_map(V::Float),
            1 => any::<f64>().prop_map(V::Double),
            1 => any::<u64>().prop_map(V::Timestamp),
            1 => Just(V::Void),
            1 => ".{0,24}".prop_map(|s| V::ShortString(s.into())),
            1 => "[ +-]?[0-9]{0,25} ?".prop_map(|s| V::LongString(s.into())),
            1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(|b| V::LongString(b.into())),
            1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(|b| V::ByteArray(b.into())),
        ]
    }

    fn value() -> impl Strategy<Value = AMQPValue> {
        scalar().prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|values| AMQPValue::FieldArray(values.into())),
                proptest::collection::vec(("[a-z-]{1,8}", inner), 0..4).prop_map(|entries| {
                    let mut table = FieldTable::default();
                    for (name, value) in entries {
                        table.insert(name.into(), value);
                    }
                    AMQPValue::FieldTable(table)
                }),
            ]
        })
    }

    /// Header tables with any values under any names, our two names included often.
    fn headers() -> impl Strategy<Value = FieldTable> {
        let name = prop_oneof![
            Just(DELIVERY_COUNT_HEADER.to_owned()),
            Just(QUORUM.to_owned()),
            "[a-z-]{1,12}",
        ];
        proptest::collection::vec((name, value()), 0..6).prop_map(|entries| {
            let mut table = FieldTable::default();
            for (name, value) in entries {
                table.insert(name.into(), value);
            }
            table
        })
    }

    /// The count a header value stands for, computed independently: any integer width, clamped.
    fn integer(value: &AMQPValue) -> Option<i128> {
        use AMQPValue as V;
        Some(match value {
            V::ShortShortInt(n) => (*n).into(),
            V::ShortShortUInt(n) => (*n).into(),
            V::ShortInt(n) => (*n).into(),
            V::ShortUInt(n) => (*n).into(),
            V::LongInt(n) => (*n).into(),
            V::LongUInt(n) => (*n).into(),
            V::LongLongInt(n) => (*n).into(),
            _ => return None,
        })
    }

    proptest! {
        #[test]
        fn any_header_table_gives_a_count_of_at_least_one_without_panicking(
            headers in headers(),
            redelivered in any::<bool>(),
        ) {
            let count = delivery_count(Some(&headers), redelivered);
            prop_assert!(count >= 1);
            // A message the broker flags redelivered was delivered at least twice.
            prop_assert!(count > u32::from(redelivered));
        }

        #[test]
        fn numeric_headers_give_the_exact_count(
            ours in proptest::option::of(integer_value()),
            quorum in proptest::option::of(integer_value()),
            redelivered in any::<bool>(),
            others in proptest::collection::vec(("[a-z]{1,12}", value()), 0..4),
        ) {
            let ours_n = ours.as_ref().map(|v| integer(v).expect("an integer"));
            let quorum_n = quorum.as_ref().map(|v| integer(v).expect("an integer"));
            // Headers under other names change nothing.
            let mut entries: Vec<(&str, AMQPValue)> =
                others.iter().map(|(name, value)| (name.as_str(), value.clone())).collect();
            if let Some(value) = ours {
                entries.push((DELIVERY_COUNT_HEADER, value));
            }
            if let Some(value) = quorum {
                entries.push((QUORUM, value));
            }
            let clamp = |n: i128| n.clamp(0, i128::from(u32::MAX));
            let by_us = clamp(ours_n.unwrap_or(0)) + 1 + i128::from(redelivered);
            let expected = match quorum_n {
                Some(prior) => by_us.max(clamp(prior) + 1),
                None => by_us,
            }
            .min(i128::from(u32::MAX));
            prop_assert_eq!(
                i128::from(delivery_count(Some(&table(&entries)), redelivered)),
                expected
            );
        }
    }
}
