//! `kvi-agent --demo`: the agent on embedded defaults, no Azure, no broker.
//!
//! An in-memory vault holds `demo-secret`; every `rotate_every` a new version is written and
//! the event Key Vault would send goes through the in-memory event source to the job, which
//! refreshes the cache, as Event Grid and a transport would in production. The in-memory pieces
//! are the testkit's (a regular dependency: they are small, and the demo is part of the agent).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keyvault_invalidator_core::CancellationToken;
use keyvault_invalidator_testkit::{InMemoryEventSource, InMemoryVault, KeyVaultEventBuilder};
use tokio::task::JoinHandle;

use crate::config::{ApiToken, Settings};
use crate::error::AgentError;
use crate::runtime::Agent;

/// The secret the demo rotates.
pub const DEMO_SECRET: &str = "demo-secret";

/// The vault name in the demo's events (and its allow-list).
pub const DEMO_VAULT: &str = "demo-kv";

/// The default rotation period.
pub const DEFAULT_ROTATE_EVERY: Duration = Duration::from_secs(5);

/// A running demo: the agent, its in-memory vault, and the task rotating the secret.
pub struct Demo {
    agent: Agent,
    vault: InMemoryVault,
    rotator: JoinHandle<()>,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl Demo {
    /// Starts the agent on `listen` with the demo vault, rotating `demo-secret` every
    /// `rotate_every`.
    pub async fn start(
        listen: SocketAddr,
        rotate_every: Duration,
        token: ApiToken,
    ) -> Result<Demo, AgentError> {
        let mut settings = Settings::from_env(|_| None)?;
        settings.server.listen = listen;
        settings.server.allow_non_loopback = !listen.ip().is_loopback();
        settings.vault.name = Some(DEMO_VAULT.to_owned());
        let vault = InMemoryVault::new();
        vault.set(DEMO_SECRET, "demo-value-1");
        let source = InMemoryEventSource::new();
        let publisher = source.publisher();
        let agent =
            Agent::start_with_source(settings, token, Arc::new(vault.clone()), source).await?;
        let rotator = tokio::spawn(rotate(
            vault.clone(),
            publisher,
            rotate_every,
            agent.shutdown_token(),
        ));
        Ok(Demo {
            agent,
            vault,
            rotator,
        })
    }

    /// The running agent.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The demo's vault (its versions, its call counts).
    pub fn vault(&self) -> &InMemoryVault {
        &self.vault
    }

    /// The lines to try, with the token and the address.
    pub fn instructions(&self, token: &ApiToken) -> String {
        let address = self.agent.local_addr();
        let token = token.expose();
        format!(
            "kvi-agent demo on http://{address}: {DEMO_SECRET} rotates every few seconds.\n\
             Try:\n\
             \x20 curl -s -H 'X-KVI-Token: {token}' http://{address}/v1/secrets/{DEMO_SECRET}\n\
             \x20 # wait for the next rotation (put the version you have after after_version):\n\
             \x20 curl -s -H 'X-KVI-Token: {token}' 'http://{address}/v1/secrets/{DEMO_SECRET}?after_version=VERSION&wait=30'\n\
             \x20 # every rotation as Server-Sent Events:\n\
             \x20 curl -sN -H 'X-KVI-Token: {token}' 'http://{address}/v1/watch?name={DEMO_SECRET}'\n\
             \x20 curl -s http://{address}/metrics | grep kvi_agent\n"
        )
    }

    /// Stops rotating and shuts the agent down.
    pub async fn shutdown(self) -> Result<(), AgentError> {
        self.rotator.abort();
        self.agent.shutdown().await.map_err(|e| {
            AgentError::new(crate::AgentErrorKind::Setup, "the demo's job failed").with_source(e)
        })?;
        Ok(())
    }
}

async fn rotate(
    vault: InMemoryVault,
    publisher: keyvault_invalidator_testkit::InMemoryPublisher,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    for n in 2u64.. {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let version = vault.rotate(DEMO_SECRET, &format!("demo-value-{n}"));
        let event = KeyVaultEventBuilder::secret_new_version(DEMO_SECRET)
            .vault(DEMO_VAULT)
            .version(&version)
            .id(format!("demo-rotation-{n}"))
            .now();
        publisher.publish(format!("demo-rotation-{n}"), event.event_grid_bytes());
        tracing::info!(secret = DEMO_SECRET, %version, "rotated; the event is on its way");
    }
}
