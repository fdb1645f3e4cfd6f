//! Resident memory of an agent: idle (started, nothing cached), and per cached secret (the
//! growth after `secrets` reads through its cache, beyond the in-memory vault's own copies).
//! Run in a fresh process (`kvi-agent-bench memory N`).

use serde::{Deserialize, Serialize};

use crate::memory::resident_kib;

/// What the probe found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentMemory {
    /// The process with its runtime started and nothing else, KiB.
    pub baseline_kib: u64,
    /// Added by a started agent (server, cache, metrics recorder), KiB.
    pub idle_agent_kib: u64,
    /// Secrets read for the per-secret figure.
    pub secrets: usize,
    /// Added per cached secret, bytes.
    pub per_secret_bytes: f64,
}

/// Runs the probe; call it in a fresh process.
pub async fn probe(secrets: usize) -> Option<AgentMemory> {
    let settle = || tokio::time::sleep(std::time::Duration::from_millis(300));
    settle().await;
    let baseline = resident_kib()?;
    let (agent, vault) = super::servers::start_agent(256).await;
    settle().await;
    let idle = resident_kib()?;
    let value = super::servers::value();
    let names: Vec<String> = (0..secrets).map(|n| format!("secret-{n:06}")).collect();
    for name in &names {
        vault.set(name, &value);
    }
    settle().await;
    let with_vault = resident_kib()?;
    for name in &names {
        agent.cache().get(name).await.ok()?;
    }
    settle().await;
    let with_cache = resident_kib()?;
    let _ = agent.shutdown().await;
    Some(AgentMemory {
        baseline_kib: baseline,
        idle_agent_kib: idle.saturating_sub(baseline),
        secrets,
        per_secret_bytes: with_cache.saturating_sub(with_vault) as f64 * 1024.0
            / secrets.max(1) as f64,
    })
}
