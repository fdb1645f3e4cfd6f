//! A [`SecretCache`] that records what it was told, with fault injection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use keyvault_invalidator_core::{CacheError, NewVersion, SecretCache};
use tokio::sync::watch;

/// Records every invalidation in order. Clones share the record.
///
/// Faults: [`fail_next`](RecordingCache::fail_next) makes the next calls fail,
/// [`panic_next`](RecordingCache::panic_next) makes them panic, and
/// [`hold`](RecordingCache::hold) makes calls wait until [`release`](RecordingCache::release),
/// to test concurrency limits and shutdown.
#[derive(Clone)]
pub struct RecordingCache {
    shared: Arc<RecorderShared>,
}

/// What the clones of a [`RecordingCache`] share.
struct RecorderShared {
    state: Mutex<RecorderState>,
    held: watch::Sender<bool>,
    running: AtomicUsize,
    most_running: AtomicUsize,
}

/// The calls recorded so far and the faults scripted for the next ones.
#[derive(Default)]
struct RecorderState {
    calls: Vec<CacheCall>,
    faults: VecDeque<CacheFault>,
}

/// A scripted failure of the next call.
#[derive(Clone, Copy)]
enum CacheFault {
    Fail { retryable: bool },
    Panic,
}

/// One call the cache received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheCall {
    /// `invalidate(key)`.
    Invalidate {
        /// The key.
        key: String,
        /// Whether it succeeded.
        succeeded: bool,
    },
    /// `new_version(key, change)`.
    NewVersion {
        /// The key.
        key: String,
        /// The version the event named.
        version: Option<String>,
        /// Whether it succeeded.
        succeeded: bool,
    },
}

impl CacheCall {
    fn key(&self) -> &str {
        match self {
            CacheCall::Invalidate { key, .. } | CacheCall::NewVersion { key, .. } => key,
        }
    }

    fn succeeded(&self) -> bool {
        match self {
            CacheCall::Invalidate { succeeded, .. } | CacheCall::NewVersion { succeeded, .. } => {
                *succeeded
            }
        }
    }
}

impl Default for RecordingCache {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordingCache {
    /// An empty record, no faults.
    pub fn new() -> Self {
        RecordingCache {
            shared: Arc::new(RecorderShared {
                state: Mutex::new(RecorderState::default()),
                held: watch::Sender::new(false),
                running: AtomicUsize::new(0),
                most_running: AtomicUsize::new(0),
            }),
        }
    }

    /// Makes the next `count` calls fail, retryably or not.
    pub fn fail_next(&self, count: usize, retryable: bool) {
        let mut state = self.lock();
        state
            .faults
            .extend(std::iter::repeat_n(CacheFault::Fail { retryable }, count));
    }

    /// Makes the next `count` calls panic.
    pub fn panic_next(&self, count: usize) {
        self.lock()
            .faults
            .extend(std::iter::repeat_n(CacheFault::Panic, count));
    }

    /// Makes calls wait until [`release`](Self::release).
    pub fn hold(&self) {
        self.shared.held.send_replace(true);
    }

    /// Lets held and future calls through.
    pub fn release(&self) {
        self.shared.held.send_replace(false);
    }

    /// Every call, in order.
    pub fn calls(&self) -> Vec<CacheCall> {
        self.lock().calls.clone()
    }

    /// Keys of successful calls (either kind), in order.
    pub fn invalidated(&self) -> Vec<String> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.succeeded())
            .map(|c| c.key().to_owned())
            .collect()
    }

    /// How many calls there were, successful or not.
    pub fn attempts(&self) -> usize {
        self.lock().calls.len()
    }

    /// Calls in progress now (held ones included).
    pub fn running(&self) -> usize {
        self.shared.running.load(Ordering::SeqCst)
    }

    /// The most calls that were ever in progress at once.
    pub fn most_running(&self) -> usize {
        self.shared.most_running.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, RecorderState> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn record(
        &self,
        key: &str,
        call: impl FnOnce(bool) -> CacheCall,
    ) -> Result<(), CacheError> {
        let now = self.shared.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.most_running.fetch_max(now, Ordering::SeqCst);
        let _running = RunningGuard(&self.shared.running);
        let mut held = self.shared.held.subscribe();
        // Only fails if the sender is gone, and `self` owns it.
        let _ = held.wait_for(|held| !held).await;
        let fault = self.lock().faults.pop_front();
        let result = match fault {
            Some(CacheFault::Panic) => panic!("injected panic in RecordingCache"),
            Some(CacheFault::Fail { retryable: true }) => {
                Err(CacheError::retryable(key, "injected retryable failure"))
            }
            Some(CacheFault::Fail { retryable: false }) => {
                Err(CacheError::permanent(key, "injected permanent failure"))
            }
            None => Ok(()),
        };
        self.lock().calls.push(call(result.is_ok()));
        result
    }
}

struct RunningGuard<'a>(&'a AtomicUsize);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl SecretCache for RecordingCache {
    async fn invalidate(&self, key: &str) -> Result<(), CacheError> {
        self.record(key, |succeeded| CacheCall::Invalidate {
            key: key.to_owned(),
            succeeded,
        })
        .await
    }

    async fn new_version(&self, key: &str, change: &NewVersion) -> Result<(), CacheError> {
        self.record(key, |succeeded| CacheCall::NewVersion {
            key: key.to_owned(),
            version: change.version.clone(),
            succeeded,
        })
        .await
    }
}
