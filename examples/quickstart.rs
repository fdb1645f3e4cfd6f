//! The whole pipeline on embedded defaults: no Azure, no broker.
//!
//! An in-memory event source stands in for the Service Bus subscription, an in-memory vault for
//! Azure Key Vault, and the real moka cache sits in front of it. The example reads a secret,
//! rotates it in the vault, publishes the `SecretNewVersionCreated` event Key Vault would send,
//! and shows the job invalidating the cache so the next read returns the new version.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::time::{Duration, Instant};

use keyvault_invalidator::prelude::*;
use keyvault_invalidator_testkit::{InMemoryEventSource, InMemoryVault, KeyVaultEventBuilder};

const VAULT: &str = "quickstart-kv";
const SECRET: &str = "ServiceBus--ConnectionString";
const CACHE_KEY: &str = "ServiceBus:ConnectionString";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,keyvault_invalidator_core=info".into()),
        )
        .with_target(false)
        .finish()
        // Never lapin's frames at trace, whatever RUST_LOG says: see `without_amqp_trace`.
        .with(without_amqp_trace())
        .init();

    // The vault holds the secret under its Key Vault name; the application reads it under its
    // configuration key. One mapping says how the two relate: the provider under the cache
    // asks the vault for `A--B` when the application reads `A:B` ...
    let names = NameMapping::key_separator(":").vault_separator("--");
    let vault = InMemoryVault::new();
    let v1 = vault.set(SECRET, "Endpoint=sb://example/;SharedAccessKey=first");
    let cache = CachedSecretProvider::new(vault.clone().with_names(names.clone()));

    // ... and the invalidator turns the `A--B` an event names into the cache key `A:B`.
    let source = InMemoryEventSource::new();
    let publisher = source.publisher();
    let invalidator = KeyVaultInvalidator::builder(cache.clone())
        .allow_vault(VAULT)
        .name_mapping(names)
        .build();
    let job = Job::builder(source, invalidator).spawn()?;

    let started = Instant::now();
    let first = cache.get(CACHE_KEY).await?;
    println!(
        "read   {CACHE_KEY}: version {} ({} after a vault call, {:?})",
        short(first.version()),
        mask(first.value().expose_secret()),
        started.elapsed()
    );
    let started = Instant::now();
    let cached = cache.get(CACHE_KEY).await?;
    println!(
        "read   {CACHE_KEY}: version {} (from the cache, {:?})",
        short(cached.version()),
        started.elapsed()
    );
    assert_eq!(cached.version(), Some(v1.as_str()));

    let v2 = vault.rotate(SECRET, "Endpoint=sb://example/;SharedAccessKey=second");
    println!(
        "rotate {SECRET} in vault {VAULT}: new version {}",
        short(Some(&v2))
    );
    let stale = cache.get(CACHE_KEY).await?;
    println!(
        "read   {CACHE_KEY}: version {} (stale until the event arrives)",
        short(stale.version())
    );

    let event = KeyVaultEventBuilder::secret_new_version(SECRET)
        .vault(VAULT)
        .version(&v2)
        .now()
        .cloud_event_bytes();
    let published = Instant::now();
    publisher.publish("rotation-1", event);
    let log = publisher.wait_for_settlements(1).await;
    println!(
        "event  SecretNewVersionCreated for {SECRET}: settled {:?} in {:?}",
        log.0[0].settlement,
        published.elapsed()
    );

    let started = Instant::now();
    let fresh = cache.get(CACHE_KEY).await?;
    println!(
        "read   {CACHE_KEY}: version {} ({}, {:?})",
        short(fresh.version()),
        mask(fresh.value().expose_secret()),
        started.elapsed()
    );
    if fresh.version() != Some(v2.as_str()) {
        return Err("the cache still served the old version".into());
    }

    let stats = tokio::time::timeout(Duration::from_secs(30), job.shutdown()).await??;
    let cache_stats = cache.stats();
    println!(
        "job    received {}, invalidated {}, ignored {}, dead-lettered {}",
        stats.received, stats.invalidated, stats.ignored, stats.dead_lettered
    );
    println!(
        "cache  hits {}, misses {}, vault calls {}",
        cache_stats.hits,
        cache_stats.misses,
        vault.calls(SECRET)
    );
    Ok(())
}

fn short(version: Option<&str>) -> &str {
    version.map_or("<none>", |v| &v[v.len().saturating_sub(6)..])
}

/// Shows that a value is there without showing it.
fn mask(value: &str) -> String {
    format!("{} characters, masked", value.len())
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
