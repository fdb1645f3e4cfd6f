//! Declaring (and removing) what the source owns. Every declaration is idempotent; one that
//! conflicts with an existing entity is reported as a fatal error naming it.

use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::config::{QueueMode, RabbitMqConfig};
use crate::errors::{classify, LinkError};

/// Declares the exchanges and queues, or (topology declaration off, or an existing queue)
/// checks that the queue is there.
pub(crate) async fn declare(channel: &Channel, config: &RabbitMqConfig) -> Result<(), LinkError> {
    let queue = config.queue_name();
    if config.declare_topology {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                config.exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(|e| classify(e, &format!("declaring exchange `{}`", config.exchange)))?;
        channel
            .exchange_declare(
                config.dead_letter_exchange.as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                classify(
                    e,
                    &format!("declaring exchange `{}`", config.dead_letter_exchange),
                )
            })?;
        declare_queue(channel, &config.dead_letter_queue, FieldTable::default()).await?;
        channel
            .queue_bind(
                config.dead_letter_queue.as_str().into(),
                config.dead_letter_exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| classify(e, &format!("binding queue `{}`", config.dead_letter_queue)))?;
    }
    match &config.mode {
        QueueMode::Instance {
            binding_key,
            idle_expiry,
            ..
        } => {
            let mut arguments = FieldTable::default();
            let expiry_ms = i32::try_from(idle_expiry.as_millis()).unwrap_or(i32::MAX);
            arguments.insert("x-expires".into(), AMQPValue::LongInt(expiry_ms));
            declare_queue(channel, &queue, arguments).await?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    config.exchange.as_str().into(),
                    binding_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    classify(
                        e,
                        &format!("binding queue `{queue}` to `{}`", config.exchange),
                    )
                })?;
        }
        QueueMode::Existing { .. } => {
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
                .map_err(|e| classify(e, &format!("checking that queue `{queue}` exists")))?;
        }
    }
    Ok(())
}

async fn declare_queue(
    channel: &Channel,
    queue: &str,
    arguments: FieldTable,
) -> Result<(), LinkError> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), durable, arguments)
        .await
        .map(|_| ())
        .map_err(|e| classify(e, &format!("declaring queue `{queue}`")))
}

/// Deletes the instance queue at graceful shutdown.
pub(crate) async fn delete_instance_queue(
    channel: &Channel,
    config: &RabbitMqConfig,
) -> Result<(), LinkError> {
    let queue = config.queue_name();
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .map(|_| ())
        .map_err(|e| classify(e, &format!("deleting queue `{queue}`")))
}
