//! An in-memory vault: a [`SecretProvider`] with versions, rotation and call counting.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_invalidator_core::{ProviderError, ProviderErrorKind, Secret, SecretProvider};

/// Secrets with versions, looked up without regard to case as Key Vault does. Clones share the
/// vault.
///
/// ```
/// use keyvault_invalidator_core::{SecretProvider, secrecy::ExposeSecret};
/// use keyvault_invalidator_testkit::InMemoryVault;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let vault = InMemoryVault::new();
/// let v1 = vault.set("db-password", "first");
/// let v2 = vault.rotate("db-password", "second");
/// let secret = vault.get_secret("DB-Password").await.unwrap();
/// assert_eq!(secret.value().expose_secret(), "second");
/// assert_eq!(secret.version(), Some(v2.as_str()));
/// assert_ne!(v1, v2);
/// assert_eq!(vault.calls("db-password"), 1);
/// # }
/// ```
#[derive(Clone, Default)]
pub struct InMemoryVault {
    shared: Arc<Mutex<VaultContents>>,
}

/// The vault's secrets, the calls it answered and the faults scripted for the next ones.
#[derive(Default)]
struct VaultContents {
    /// Per name: (version, value, created), oldest first.
    secrets: HashMap<String, Vec<(String, String, DateTime<Utc>)>>,
    calls: HashMap<String, usize>,
    next_version: u64,
    latency: Duration,
    faults: VecDeque<ProviderErrorKind>,
    /// How many more reads of the current version answer the one before it.
    lagging_reads: usize,
}

impl InMemoryVault {
    /// An empty vault.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a new version of `name` holding `value` and returns the version (32 hex digits, as
    /// Key Vault's).
    pub fn set(&self, name: &str, value: &str) -> String {
        let mut state = self.lock();
        state.next_version += 1;
        let version = format!("{:032x}", state.next_version);
        state
            .secrets
            .entry(name.to_ascii_lowercase())
            .or_default()
            .push((version.clone(), value.to_owned(), Utc::now()));
        version
    }

    /// The same as [`set`](Self::set); reads better in rotation tests.
    pub fn rotate(&self, name: &str, value: &str) -> String {
        self.set(name, value)
    }

    /// The current version of `name`.
    pub fn current_version(&self, name: &str) -> Option<String> {
        self.lock()
            .secrets
            .get(&name.to_ascii_lowercase())
            .and_then(|versions| versions.last())
            .map(|(version, _, _)| version.clone())
    }

    /// How many times `name` was read.
    pub fn calls(&self, name: &str) -> usize {
        self.lock()
            .calls
            .get(&name.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// How many reads there were, of any secret.
    pub fn total_calls(&self) -> usize {
        self.lock().calls.values().sum()
    }

    /// Makes every read take this long (on Tokio's clock, so paused-time tests stay fast).
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Makes the next `count` reads fail with `kind`.
    pub fn fail_next(&self, count: usize, kind: ProviderErrorKind) {
        self.lock().faults.extend(std::iter::repeat_n(kind, count));
    }

    /// Makes the next `count` reads of the current version answer the version before the
    /// newest, as a replica that has not seen the rotation yet would. Reads of a given version
    /// ([`get_secret_version`](SecretProvider::get_secret_version)) answer it all the same.
    pub fn lag_next(&self, count: usize) {
        self.lock().lagging_reads += count;
    }

    fn lock(&self) -> MutexGuard<'_, VaultContents> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl SecretProvider for InMemoryVault {
    async fn get_secret(&self, name: &str) -> Result<Secret, ProviderError> {
        self.read(name, None).await
    }

    async fn get_secret_version(&self, name: &str, version: &str) -> Result<Secret, ProviderError> {
        self.read(name, Some(version)).await
    }
}

impl InMemoryVault {
    async fn read(&self, name: &str, version: Option<&str>) -> Result<Secret, ProviderError> {
        let key = name.to_ascii_lowercase();
        // The answer is decided when the request "reaches the vault" (now), then travels back
        // for `latency`: a rotation during that time does not change it, as with a real vault.
        let (answer, latency) = {
            let mut state = self.lock();
            *state.calls.entry(key.clone()).or_default() += 1;
            let answer = match state.faults.pop_front() {
                Some(kind) => Err(ProviderError::new(name, kind, "injected failure")),
                None => {
                    let lagging = version.is_none() && state.lagging_reads > 0;
                    if lagging {
                        state.lagging_reads -= 1;
                    }
                    let versions = state.secrets.get(&key).map(Vec::as_slice).unwrap_or(&[]);
                    let found = match version {
                        Some(wanted) => versions
                            .iter()
                            .find(|(v, _, _)| v.eq_ignore_ascii_case(wanted)),
                        None if lagging && versions.len() > 1 => versions.get(versions.len() - 2),
                        None => versions.last(),
                    };
                    match found {
                        Some((version, value, created)) => Ok(Secret::new(value.clone())
                            .with_version(version.clone())
                            .with_created_on(*created)),
                        None => Err(ProviderError::not_found(name)),
                    }
                }
            };
            (answer, state.latency)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        answer
    }
}
