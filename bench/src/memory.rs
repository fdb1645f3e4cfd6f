//! Resident memory: of an idle job, and per cached secret. Measured in a process of its own
//! (`kvi-bench memory-probe`), so nothing else the benchmark did is counted.

use std::time::Duration;

use keyvault_invalidator_core::{Job, KeyVaultInvalidator};
use keyvault_invalidator_moka::{CacheOptions, CachedSecretProvider};
use keyvault_invalidator_testkit::{InMemoryEventSource, InMemoryVault};
use serde::{Deserialize, Serialize};

use crate::hit_path::secret_value;
use crate::pipeline::secret_name;

/// What the probe found, in kibibytes (resident set, from `/proc/self/statm`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryResult {
    /// The process with its runtime started and nothing else.
    pub baseline_kib: u64,
    /// Added by an empty cache and a job idling on an in-memory source.
    pub idle_job_kib: u64,
    /// Secrets loaded for the per-secret figure.
    pub secrets: usize,
    /// Bytes of each secret's value.
    pub value_bytes: usize,
    /// Added per cached secret (entries, bookkeeping), beyond the vault's own copy.
    pub per_secret_bytes: f64,
}

/// The resident set size of this process, in KiB.
pub fn resident_kib() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // Pages are 4 KiB on every platform this benchmark is run on (x86_64, aarch64 Linux).
    Some(pages * 4)
}

/// Runs the probe; call it in a fresh process.
pub async fn probe(secrets: usize) -> Option<MemoryResult> {
    let settle = || tokio::time::sleep(Duration::from_millis(300));
    settle().await;
    let baseline = resident_kib()?;

    let vault = InMemoryVault::new();
    let mut options = CacheOptions::default();
    options.max_capacity = secrets as u64;
    let cache = CachedSecretProvider::with_options(vault.clone(), options);
    let source = InMemoryEventSource::new();
    let job = Job::builder(source, KeyVaultInvalidator::new(cache.clone()))
        .spawn()
        .expect("a Tokio runtime");
    settle().await;
    let with_job = resident_kib()?;

    let names: Vec<String> = (0..secrets).map(secret_name).collect();
    let value = secret_value("memory");
    for name in &names {
        vault.set(name, &value);
    }
    settle().await;
    let with_vault = resident_kib()?;
    for name in &names {
        cache.get(name).await.ok()?;
    }
    settle().await;
    let with_cache = resident_kib()?;
    let _ = job.shutdown().await;
    Some(MemoryResult {
        baseline_kib: baseline,
        idle_job_kib: with_job.saturating_sub(baseline),
        secrets,
        value_bytes: value.len(),
        per_secret_bytes: with_cache.saturating_sub(with_vault) as f64 * 1024.0
            / secrets.max(1) as f64,
    })
}
