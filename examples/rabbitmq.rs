//! The invalidation job on RabbitMQ.
//!
//! ```text
//! cargo run --example rabbitmq --features rabbitmq -- --demo
//! RABBITMQ_URL=amqp://user:pass@host:5672/%2f cargo run --example rabbitmq --features rabbitmq
//! ```
//!
//! The job consumes a queue of this instance's own, bound to the `keyvault-events` exchange, and
//! keeps a moka cache over an in-memory vault fresh. With `--demo` it rotates a secret and
//! publishes the Key Vault event itself (as Event Grid would), shows the refresh, and exits;
//! without it, it runs until Ctrl-C, printing what it does: publish events to `keyvault-events`
//! with any AMQP client to watch.

use std::time::{Duration, Instant};

use keyvault_invalidator::prelude::*;
use keyvault_invalidator::rabbitmq::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use keyvault_invalidator::rabbitmq::lapin::{BasicProperties, Connection, ConnectionProperties};
use keyvault_invalidator::rabbitmq::{RabbitMqConfig, RabbitMqSource, DEFAULT_EXCHANGE};
use keyvault_invalidator_testkit::{InMemoryVault, KeyVaultEventBuilder};

const SECRET: &str = "db-password";
const VAULT: &str = "demo-kv";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "warn,keyvault_invalidator_core=info,keyvault_invalidator_rabbitmq=info".into()
            }),
        )
        .with_target(false)
        .finish()
        // Never lapin's frames at trace, whatever RUST_LOG says: see `without_amqp_trace`.
        .with(without_amqp_trace())
        .init();
    let demo = std::env::args().any(|a| a == "--demo");
    let url = std::env::var("RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());

    let vault = InMemoryVault::new();
    vault.set(SECRET, "first password");
    let cache = CachedSecretProvider::new(vault.clone());
    let first = cache.get(SECRET).await?;
    println!("read   {SECRET}: version …{}", tail(first.version()));

    let config = RabbitMqConfig::new(&url)?.instance_prefix("rabbitmq-example")?;
    println!(
        "broker {} queue {}",
        config.redacted_uri(),
        config.queue_name()
    );
    let source = RabbitMqSource::new(config);
    // Connect before anything is published: the instance queue must exist to receive.
    source.connect().await?;
    let invalidator = KeyVaultInvalidator::builder(cache.clone())
        .allow_vault(VAULT)
        .build();
    let job = Job::builder(source, invalidator).spawn()?;

    if demo {
        let v2 = vault.rotate(SECRET, "second password");
        println!("rotate {SECRET}: new version …{}", tail(Some(&v2)));
        let event = KeyVaultEventBuilder::secret_new_version(SECRET)
            .vault(VAULT)
            .version(&v2)
            .now()
            .cloud_event_bytes();
        let started = Instant::now();
        publish(&url, &event).await?;
        while cache.get(SECRET).await?.version() != Some(v2.as_str()) {
            if started.elapsed() > Duration::from_secs(30) {
                return Err("the event did not arrive within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!(
            "event  published to `{DEFAULT_EXCHANGE}`; cache refreshed to …{} in {:?}",
            tail(Some(&v2)),
            started.elapsed()
        );
    } else {
        println!("running; publish Key Vault events to `{DEFAULT_EXCHANGE}`, Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    }
    let stats = job.shutdown().await?;
    println!(
        "job    received {}, invalidated {}, dead-lettered {}; instance queue deleted",
        stats.received, stats.invalidated, stats.dead_lettered
    );
    Ok(())
}

/// Publishes one event as Event Grid's RabbitMQ bridge (or any application) would.
async fn publish(url: &str, body: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/cloudevents+json".into());
    channel
        .basic_publish(
            DEFAULT_EXCHANGE.into(),
            "Microsoft.KeyVault.SecretNewVersionCreated".into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?
        .await?;
    connection.close(200, "published".into()).await?;
    Ok(())
}

fn tail(version: Option<&str>) -> &str {
    version.map_or("", |v| &v[v.len().saturating_sub(6)..])
}

/// The log filter: `RUST_LOG` (or the default above), except that the AMQP clients' `trace`
/// level is always off.
///
/// At `trace`, lapin logs every AMQP frame it sends, the login frame too, whose bytes are the
/// user name and the password; and `RUST_LOG=trace` (or `lapin::channel=trace`) is a common
/// thing to set while debugging. A `lapin=debug` directive added to the `EnvFilter` would lose
/// to a more specific one the user writes, so this is a filter of its own, applied after
/// `RUST_LOG`: nothing from `lapin` or the `amq_protocol*` crates at `trace` ever reaches the
/// output.
fn without_amqp_trace() -> tracing_subscriber::filter::FilterFn {
    tracing_subscriber::filter::filter_fn(|metadata| {
        // The crate is the target's first segment: `lapin`, `amq_protocol`, `amq_protocol_tcp`...
        let krate = metadata.target().split("::").next().unwrap_or_default();
        let amqp = krate == "lapin" || krate.starts_with("amq_protocol");
        !(amqp && *metadata.level() == tracing_subscriber::filter::LevelFilter::TRACE)
    })
}
