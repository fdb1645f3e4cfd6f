//! Refresh-ahead on embedded defaults: a reader loop that never stalls while a secret rotates.
//!
//! The in-memory vault answers in 200 ms, like a distant Key Vault. A reader reads the secret
//! every 10 ms; meanwhile the secret rotates and the rotation event arrives. The cache loads the
//! new version in the background and swaps it in; the reader keeps getting the previous version
//! until then, without ever waiting 200 ms, and a subscriber is told the new version.
//!
//! ```text
//! cargo run --example refresh_ahead
//! ```

use std::time::{Duration, Instant};

use keyvault_invalidator::prelude::*;
use keyvault_invalidator_testkit::{InMemoryEventSource, InMemoryVault, KeyVaultEventBuilder};

const VAULT: &str = "example-kv";
const SECRET: &str = "db-password";
const VAULT_LATENCY: Duration = Duration::from_millis(200);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let vault = InMemoryVault::new();
    let v1 = vault.set(SECRET, "first password");
    vault.set_latency(VAULT_LATENCY);
    let cache = CachedSecretProvider::new(vault.clone()); // refresh-ahead is the default mode

    let source = InMemoryEventSource::new();
    let publisher = source.publisher();
    let invalidator = KeyVaultInvalidator::builder(cache.clone())
        .allow_vault(VAULT)
        .build();
    let job = Job::builder(source, invalidator).spawn()?;

    let started = Instant::now();
    cache.get(SECRET).await?;
    println!("cold read took {:?} (one vault call)", started.elapsed());

    let mut versions = cache.subscribe(SECRET).await;
    let watcher = tokio::spawn(async move {
        while versions.changed().await.is_ok() {
            let version = versions.borrow_and_update().clone().unwrap_or_default();
            println!("notified: {SECRET} is now version …{}", tail(&version));
        }
    });

    let reader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            let (mut reads, mut slowest, mut seen) = (0u32, Duration::ZERO, Vec::<String>::new());
            let until = Instant::now() + Duration::from_millis(1_200);
            while Instant::now() < until {
                let started = Instant::now();
                let secret = cache
                    .get(SECRET)
                    .await
                    .expect("the cached value is always there");
                slowest = slowest.max(started.elapsed());
                reads += 1;
                let version = secret.version().unwrap_or_default().to_owned();
                if seen.last() != Some(&version) {
                    println!("reader: version …{} after {reads} reads", tail(&version));
                    seen.push(version);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (reads, slowest, seen)
        })
    };

    tokio::time::sleep(Duration::from_millis(300)).await;
    let v2 = vault.rotate(SECRET, "second password");
    println!("rotated {SECRET} to version …{}", tail(&v2));
    let event = KeyVaultEventBuilder::secret_new_version(SECRET)
        .vault(VAULT)
        .version(&v2)
        .now()
        .event_grid_bytes();
    publisher.publish("rotation", event);

    let (reads, slowest, seen) = reader.await?;
    println!("reader: {reads} reads, slowest {slowest:?} (the vault takes {VAULT_LATENCY:?})");
    println!(
        "vault calls for {SECRET}: {} (cold read + one refresh)",
        vault.calls(SECRET)
    );
    job.shutdown().await?;
    watcher.abort();

    if seen != [v1, v2] || slowest >= VAULT_LATENCY {
        return Err("the reader stalled or missed the rotation".into());
    }
    Ok(())
}

fn tail(version: &str) -> &str {
    &version[version.len().saturating_sub(6)..]
}
