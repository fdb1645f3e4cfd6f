//! The invalidation job behind an Event Grid webhook, on plain HTTP on loopback (put a
//! TLS-terminating proxy in front of it for Event Grid, or use `WebhookConfig::tls`).
//!
//! ```text
//! cargo run -q --example webhook --features eventgrid -- --listen 127.0.0.1:8080 --shared-secret SECRET
//! ```
//!
//! The cache is a moka cache over an in-memory vault holding `db-password`, already rotated
//! once so the cached value is stale; the invalidator accepts events from every vault. The
//! example prints `curl` lines to try: the Event Grid validation handshake, the CloudEvents
//! `OPTIONS` handshake, and a Key Vault CloudEvent that refreshes `db-password` (each applied
//! event is logged with the secret's name). A request without the secret gets 401, a
//! malformed body 400. Runs until Ctrl-C.

use std::net::SocketAddr;

use keyvault_invalidator::eventgrid::webhook::{WebhookConfig, WebhookSource};
use keyvault_invalidator::prelude::*;
use keyvault_invalidator::secrecy::SecretString;
use keyvault_invalidator_testkit::{InMemoryVault, KeyVaultEventBuilder};

const SECRET: &str = "db-password";

struct Args {
    listen: SocketAddr,
    shared_secret: String,
}

fn args() -> Result<Args, String> {
    let mut listen = "127.0.0.1:8080".to_owned();
    let mut shared_secret = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs an address")?,
            "--shared-secret" => {
                shared_secret = Some(args.next().ok_or("--shared-secret needs a value")?)
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Args {
        listen: listen
            .parse()
            .map_err(|_| format!("--listen `{listen}` is not an address such as 127.0.0.1:8080"))?,
        shared_secret: shared_secret.ok_or("--shared-secret SECRET is required")?,
    })
}

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
    let args = args().map_err(|why| {
        format!("{why}\nusage: webhook --listen 127.0.0.1:PORT --shared-secret SECRET")
    })?;

    let vault = InMemoryVault::new();
    vault.set(SECRET, "first password");
    let cache = CachedSecretProvider::new(vault.clone());
    cache.get(SECRET).await?;
    let new_version = vault.rotate(SECRET, "second password");

    let config = WebhookConfig::new(args.listen)
        .plain_http()
        .shared_secret(SecretString::from(args.shared_secret.clone()));
    let source = WebhookSource::bind(config).await?;
    let job = Job::builder(source.clone(), KeyVaultInvalidator::new(cache.clone())).spawn()?;

    let url = format!(
        "http://{}/api/events?code={}",
        source.local_addr(),
        args.shared_secret
    );
    let event = KeyVaultEventBuilder::secret_new_version(SECRET)
        .vault("example-kv")
        .version(&new_version)
        .now()
        .cloud_event();
    println!(
        "webhook listening on http://{}/ ; try:",
        source.local_addr()
    );
    println!(
        "curl -i '{url}' -H 'aeg-event-type: SubscriptionValidation' -d \
         '[{{\"id\":\"1\",\"eventType\":\"Microsoft.EventGrid.SubscriptionValidationEvent\",\"data\":{{\"validationCode\":\"512d38b6\"}}}}]'"
    );
    println!("curl -i -X OPTIONS '{url}' -H 'WebHook-Request-Origin: eventgrid.azure.net'");
    println!(
        "curl -i '{url}' -H 'aeg-event-type: Notification' -H 'content-type: application/cloudevents+json' -d '{event}'"
    );
    println!("(without ?code=... the answer is 401; a malformed body gets 400; Ctrl-C stops)");

    tokio::signal::ctrl_c().await?;
    let stats = job.shutdown().await?;
    let current = cache.get(SECRET).await?;
    println!(
        "job received {}, invalidated {}, dead-lettered {}; {SECRET} is at version {}",
        stats.received,
        stats.invalidated,
        stats.dead_lettered,
        current.version().unwrap_or("?")
    );
    Ok(())
}
