//! Shared by the broker tests: finding the broker (or skipping loudly), isolated topologies,
//! publishing as an application would, reading the dead-letter queue.
#![allow(dead_code)] // each test binary uses a different part

pub mod proxy;

use std::time::Duration;

use keyvault_invalidator_rabbitmq::lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use keyvault_invalidator_rabbitmq::lapin::types::{AMQPValue, FieldTable};
use keyvault_invalidator_rabbitmq::lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
};
use keyvault_invalidator_rabbitmq::RabbitMqConfig;

pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub fn broker_url() -> String {
    std::env::var("RABBITMQ_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// The broker's URL, or `None` (after saying so loudly) when none answers, unless
/// `KVI_REQUIRE_RABBITMQ=1`, which makes a missing broker a failure.
pub async fn broker() -> Option<String> {
    let url = broker_url();
    match tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await
    {
        Ok(Ok(connection)) => {
            let _ = connection.close(200, "probe".into()).await;
            Some(url)
        }
        outcome => {
            let why = match outcome {
                Ok(Err(error)) => error.to_string(),
                _ => "timed out".to_owned(),
            };
            if std::env::var("KVI_REQUIRE_RABBITMQ").as_deref() == Ok("1") {
                panic!(
                    "KVI_REQUIRE_RABBITMQ=1 but no RabbitMQ broker answers at RABBITMQ_URL: {why}"
                );
            }
            eprintln!(
                "\n*** SKIPPED: no RabbitMQ broker answers at RABBITMQ_URL ({why}). \
                 Start one (rabbitmq-server -detached) or set KVI_REQUIRE_RABBITMQ=1 to fail instead. ***\n"
            );
            None
        }
    }
}

/// Names no other test uses.
pub fn unique(what: &str) -> String {
    format!("kvi-test-{what}-{:08x}", rand_u32())
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    hasher.finish() as u32
}

/// An instance-mode configuration on an exchange and dead-letter pair of its own.
pub fn isolated_instance(url: &str, test: &str) -> RabbitMqConfig {
    let exchange = unique(&format!("{test}-ex"));
    RabbitMqConfig::new(url)
        .and_then(|c| c.instance_prefix(&unique(test)))
        .unwrap()
        .exchange(&exchange)
        .dead_letter_exchange(&format!("{exchange}-dlx"))
        .dead_letter_queue(&format!("{exchange}-dlq"))
}

/// A publishing channel with confirms, as an application publishing events would open.
pub async fn publisher(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (connection, channel)
}

/// Publishes one persistent message and waits for the broker's confirm.
pub async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
) -> Result<(), String> {
    publish_with_id(channel, exchange, routing_key, body, None).await
}

/// [`publish`] with a `message-id` property.
pub async fn publish_with_id(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    message_id: Option<&str>,
) -> Result<(), String> {
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    if let Some(id) = message_id {
        properties = properties.with_message_id(id.into());
    }
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    if confirm.is_ack() {
        Ok(())
    } else {
        Err("nacked".to_owned())
    }
}

/// Declares a durable exchange, as infrastructure (or a conflicting declaration) would.
pub async fn declare_exchange(channel: &Channel, name: &str, kind: ExchangeKind) {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(name.into(), kind, durable, FieldTable::default())
        .await
        .unwrap();
}

/// A dead-lettered message: body, reason, description.
pub type DeadLettered = (Vec<u8>, String, String);

/// Takes everything in `queue`, waiting up to 30 s for at least `expected` messages.
pub async fn drain_dead_letters(
    channel: &Channel,
    queue: &str,
    expected: usize,
) -> Vec<DeadLettered> {
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            Some(message) => {
                let headers = message
                    .delivery
                    .properties
                    .headers()
                    .clone()
                    .unwrap_or_default();
                let text = |name: &str| match headers.inner().get(name) {
                    Some(AMQPValue::LongString(s)) => s.to_string(),
                    other => panic!("header {name} missing or not a string: {other:?}"),
                };
                found.push((
                    message.delivery.data.clone(),
                    text("x-kvi-dead-letter-reason"),
                    text("x-kvi-dead-letter-description"),
                ));
                message
                    .delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .unwrap();
            }
            None if found.len() >= expected || tokio::time::Instant::now() > deadline => {
                return found
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// How many messages wait in `queue`, or `None` when it does not exist.
pub async fn queue_depth(url: &str, queue: &str) -> Option<u32> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let depth = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .ok()
        .map(|q| q.message_count());
    let _ = connection.close(200, "done".into()).await;
    depth
}

/// Removes a test's exchanges and queues.
pub async fn remove(url: &str, config: &RabbitMqConfig) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    for queue in [
        config.queue_name(),
        config.dead_letter_queue_name().to_owned(),
    ] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in [config.exchange_name(), config.dead_letter_exchange_name()] {
        let _ = channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
}

/// Runs `rabbitmqctl` with `args`; its output, or why it failed.
pub async fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run rabbitmqctl: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// `(ready, unacknowledged)` messages of `queue`, from the broker's own count, or `None`
/// when the queue does not exist.
pub async fn queue_counts(queue: &str) -> Option<(u64, u64)> {
    let listing = rabbitmqctl(&[
        "list_queues",
        "-s",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ])
    .await
    .expect("rabbitmqctl list_queues");
    listing.lines().find_map(|line| {
        let mut fields = line.split('\t');
        if fields.next()? != queue {
            return None;
        }
        let ready = fields.next()?.trim().parse().ok()?;
        let unacked = fields.next()?.trim().parse().ok()?;
        Some((ready, unacked))
    })
}

/// Waits (up to 30 s) until `queue` holds `expected` `(ready, unacknowledged)` messages, and
/// returns what it last held.
pub async fn wait_for_counts(queue: &str, expected: Option<(u64, u64)>) -> Option<(u64, u64)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let counts = queue_counts(queue).await;
        if counts == expected || tokio::time::Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many connections the broker has open under this connection name (the client
/// property the source sets).
pub async fn connections_named(name: &str) -> usize {
    let listing = rabbitmqctl(&["list_connections", "-s", "client_properties"])
        .await
        .expect("rabbitmqctl list_connections");
    listing.lines().filter(|line| line.contains(name)).count()
}

/// Waits (up to 30 s) until the broker has `expected` connections under `name`, and returns
/// the last count.
pub async fn wait_for_connections(name: &str, expected: usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let count = connections_named(name).await;
        if count == expected || tokio::time::Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
