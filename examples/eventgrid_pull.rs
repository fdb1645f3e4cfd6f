//! The invalidation job pulling from an Event Grid namespace topic (no broker, HTTP only).
//!
//! Without Azure, against the testkit's namespace stand-in (a rotation end to end: the event
//! published, pulled, the cache refreshed, the event acknowledged):
//!
//! ```text
//! cargo run --example eventgrid_pull --features eventgrid -- --standin
//! ```
//!
//! Against Azure, with one of the namespace's access keys; runs until Ctrl-C:
//!
//! ```text
//! EVENTGRID_ENDPOINT=https://my-ns.westeurope-1.eventgrid.azure.net \
//! EVENTGRID_TOPIC=keyvault-events EVENTGRID_SUBSCRIPTION=keyvault-invalidator \
//! EVENTGRID_ACCESS_KEY=... cargo run --example eventgrid_pull --features eventgrid
//! ```
//!
//! (An application with an Entra ID identity gives `PullConfigBuilder::credential` any
//! `azure_identity` credential instead; the identity needs the EventGrid Data Receiver role.)
//! The topic, its event subscription and the Key Vault's forwarding are infrastructure's:
//! `deploy/eventgrid-namespace/main.bicep`. The example's cache is an in-memory vault, so it
//! shows the events rather than real secret values.

use std::time::{Duration, Instant};

use keyvault_invalidator::eventgrid::pull::{PullConfig, PullSource};
use keyvault_invalidator::prelude::*;
use keyvault_invalidator_testkit::eventgrid_namespace::{NamespaceStandIn, Operation};
use keyvault_invalidator_testkit::{InMemoryVault, KeyVaultEventBuilder};

const SECRET: &str = "db-password";
const TOPIC: &str = "keyvault-events";
const SUBSCRIPTION: &str = "keyvault-invalidator";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "warn,keyvault_invalidator_core=info,keyvault_invalidator_eventgrid=info".into()
            }),
        )
        .with_target(false)
        .init();
    if std::env::args().any(|a| a == "--standin") {
        with_the_standin().await
    } else {
        against_azure().await
    }
}

async fn with_the_standin() -> Result<(), Box<dyn std::error::Error>> {
    let standin = NamespaceStandIn::start().await?;
    standin.create_subscription(TOPIC, SUBSCRIPTION);
    println!("namespace stand-in at {}", standin.endpoint());

    let vault = InMemoryVault::new();
    vault.set(SECRET, "first password");
    let cache = CachedSecretProvider::new(vault.clone());
    cache.get(SECRET).await?;

    let config = PullConfig::builder(standin.endpoint(), TOPIC, SUBSCRIPTION)
        .access_key(standin.access_key())
        .client_options(standin.client_options())
        .build()?;
    let invalidator = KeyVaultInvalidator::builder(cache.clone())
        .allow_vault("example-kv")
        .build();
    let job = Job::builder(PullSource::new(config), invalidator).spawn()?;

    let v2 = vault.rotate(SECRET, "second password");
    let event = KeyVaultEventBuilder::secret_new_version(SECRET)
        .vault("example-kv")
        .version(&v2)
        .now()
        .cloud_event();
    let started = Instant::now();
    standin.publish(TOPIC, [event])?;
    while cache.get(SECRET).await?.version() != Some(v2.as_str()) {
        if started.elapsed() > Duration::from_secs(30) {
            return Err("the event did not arrive within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "event pulled from the namespace topic; cache refreshed to the new version in {:?}",
        started.elapsed()
    );
    let stats = job.shutdown().await?;
    println!(
        "job received {}, invalidated {}; the stand-in saw {} acknowledge(s), {} event(s) left",
        stats.received,
        stats.invalidated,
        standin.calls(Operation::Acknowledge),
        standin.ready_count(TOPIC, SUBSCRIPTION) + standin.locked_count(TOPIC, SUBSCRIPTION)
    );
    Ok(())
}

async fn against_azure() -> Result<(), Box<dyn std::error::Error>> {
    let variable = |name: &str| {
        std::env::var(name).map_err(|_| {
            format!("set {name} (and EVENTGRID_ENDPOINT, EVENTGRID_TOPIC, EVENTGRID_SUBSCRIPTION, EVENTGRID_ACCESS_KEY), or pass --standin")
        })
    };
    let config = PullConfig::builder(
        variable("EVENTGRID_ENDPOINT")?,
        variable("EVENTGRID_TOPIC")?,
        variable("EVENTGRID_SUBSCRIPTION")?,
    )
    .access_key(variable("EVENTGRID_ACCESS_KEY")?)
    .build()?;
    let cache = CachedSecretProvider::new(InMemoryVault::new());
    let job = Job::builder(PullSource::new(config), KeyVaultInvalidator::new(cache)).spawn()?;
    println!("pulling from the event subscription; Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    let stats = job.shutdown().await?;
    println!(
        "job received {}, invalidated {}, dead-lettered {}",
        stats.received, stats.invalidated, stats.dead_lettered
    );
    Ok(())
}
