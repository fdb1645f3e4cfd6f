//! The invalidation job on Azure Service Bus, as the original library runs it.
//!
//! Without Azure, against the in-process emulator (the whole flow: subscription created, a
//! rotation event delivered, the cache refreshed, the subscription deleted):
//!
//! ```text
//! cargo run --example servicebus --features servicebus -- --emulator
//! ```
//!
//! Against Azure, from environment variables; runs until Ctrl-C:
//!
//! ```text
//! # the host's managed identity (a user-assigned one when AZURE_CLIENT_ID is set)
//! SERVICEBUS_NAMESPACE=my-ns SERVICEBUS_TOPIC=keyvault-events \
//!   cargo run --example servicebus --features servicebus
//! # on a developer machine: your own login (az login, then azd auth login)
//! SERVICEBUS_CREDENTIAL=developer SERVICEBUS_NAMESPACE=my-ns SERVICEBUS_TOPIC=keyvault-events \
//!   cargo run --example servicebus --features servicebus
//! # or a connection string (topic from its EntityPath)
//! SERVICEBUS_CONNECTION_STRING='Endpoint=sb://...;EntityPath=keyvault-events' \
//!   cargo run --example servicebus --features servicebus
//! ```
//!
//! `SERVICEBUS_SUBSCRIPTION=name` receives from an existing subscription instead of creating
//! one, and `SERVICEBUS_MANAGEMENT_ENDPOINT=url` points subscription management elsewhere (the
//! emulator binary's endpoint, say). The emulator's Python tests run the example this way.
//!
//! The Event Grid subscription of the Key Vault must deliver `SecretNewVersionCreated` to that
//! topic; the example's cache is an in-memory vault, so it shows the events rather than real
//! secret values.

use std::time::{Duration, Instant};

use keyvault_invalidator::prelude::*;
use keyvault_invalidator::servicebus::{
    credential, ManagedIdentity, ServiceBusConfig, ServiceBusSource,
};
use keyvault_invalidator_testkit::servicebus_emulator::ServiceBusEmulator;
use keyvault_invalidator_testkit::{InMemoryVault, KeyVaultEventBuilder};

const SECRET: &str = "db-password";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "warn,keyvault_invalidator_core=info,keyvault_invalidator_servicebus=info".into()
            }),
        )
        .with_target(false)
        .finish()
        // Never lapin's frames at trace, whatever RUST_LOG says: see `without_amqp_trace`.
        .with(without_amqp_trace())
        .init();
    if std::env::args().any(|a| a == "--emulator") {
        emulated().await
    } else {
        against_azure().await
    }
}

async fn emulated() -> Result<(), Box<dyn std::error::Error>> {
    let emulator = ServiceBusEmulator::start().await?;
    emulator.create_topic("keyvault-events");
    println!(
        "emulator AMQP at {}, management at {}",
        emulator.amqp_url(),
        emulator.management_endpoint()
    );

    let vault = InMemoryVault::new();
    vault.set(SECRET, "first password");
    let cache = CachedSecretProvider::new(vault.clone());
    cache.get(SECRET).await?;

    let config =
        ServiceBusConfig::connection_string(&emulator.connection_string(Some("keyvault-events")))?
            .subscription_prefix("example")?
            .management_endpoint(emulator.management_endpoint())?;
    let source = ServiceBusSource::new(config);
    source.connect().await?;
    println!("subscription {} created", source.subscription_name());
    let invalidator = KeyVaultInvalidator::builder(cache.clone())
        .allow_vault("example-kv")
        .build();
    let job = Job::builder(source.clone(), invalidator).spawn()?;

    let v2 = vault.rotate(SECRET, "second password");
    let event = KeyVaultEventBuilder::secret_new_version(SECRET)
        .vault("example-kv")
        .version(&v2)
        .now()
        .cloud_event_bytes();
    let started = Instant::now();
    emulator.publish_as_event_grid("keyvault-events", &event);
    while cache.get(SECRET).await?.version() != Some(v2.as_str()) {
        if started.elapsed() > Duration::from_secs(30) {
            return Err("the event did not arrive within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "event delivered as Event Grid would; cache refreshed to the new version in {:?}",
        started.elapsed()
    );
    let stats = job.shutdown().await?;
    println!(
        "job received {}, invalidated {}; subscriptions left on the topic: {}",
        stats.received,
        stats.invalidated,
        emulator.subscriptions("keyvault-events").len()
    );
    Ok(())
}

async fn against_azure() -> Result<(), Box<dyn std::error::Error>> {
    let config = match std::env::var("SERVICEBUS_CONNECTION_STRING") {
        Ok(connection_string) => ServiceBusConfig::connection_string(&connection_string)?
            .subscription_prefix("kvi-example")?,
        Err(_) => {
            let namespace = std::env::var("SERVICEBUS_NAMESPACE")
                .map_err(|_| "set SERVICEBUS_NAMESPACE and SERVICEBUS_TOPIC, or SERVICEBUS_CONNECTION_STRING, or pass --emulator")?;
            let topic =
                std::env::var("SERVICEBUS_TOPIC").unwrap_or_else(|_| "keyvault-events".to_owned());
            let config = if std::env::var("SERVICEBUS_CREDENTIAL").as_deref() == Ok("developer") {
                ServiceBusConfig::with_credential(&namespace, credential::developer_tools()?)?
            } else {
                let identity = match std::env::var("AZURE_CLIENT_ID") {
                    Ok(client_id) => ManagedIdentity::user_assigned(client_id),
                    Err(_) => ManagedIdentity::SystemAssigned,
                };
                ServiceBusConfig::managed_identity(&namespace, identity)?
            };
            config.topic(&topic)?.subscription_prefix("kvi-example")?
        }
    };
    let config = match std::env::var("SERVICEBUS_SUBSCRIPTION") {
        Ok(name) => config.existing_subscription(&name)?,
        Err(_) => config,
    };
    let config = match std::env::var("SERVICEBUS_MANAGEMENT_ENDPOINT") {
        Ok(endpoint) => config.management_endpoint(&endpoint)?,
        Err(_) => config,
    };
    let cache = CachedSecretProvider::new(InMemoryVault::new());
    let source = ServiceBusSource::new(config);
    let job = Job::builder(source.clone(), KeyVaultInvalidator::new(cache)).spawn()?;
    println!(
        "receiving on subscription {}; Ctrl-C to stop",
        source.subscription_name()
    );
    tokio::signal::ctrl_c().await?;
    let stats = job.shutdown().await?;
    println!(
        "job received {}, invalidated {}, dead-lettered {}",
        stats.received, stats.invalidated, stats.dead_lettered
    );
    Ok(())
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
