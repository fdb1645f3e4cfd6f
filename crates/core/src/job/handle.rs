//! What the application holds of a running job: the [`JobHandle`] of a spawned one, the
//! [`JobRun`] future of one it drives itself, and the [`JobMonitor`] both give out.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::stats::{Stats, StatsSnapshot};
use super::{delivery, lock, EnginePanic, JobError, JobState};

/// Watches a job from anywhere: its state, its counters, its cancellation token. Cheap to
/// clone; from [`JobHandle::monitor`] or [`JobRun::monitor`].
#[derive(Clone)]
pub struct JobMonitor {
    pub(super) stats: Arc<Stats>,
    pub(super) state: Arc<Mutex<JobState>>,
    pub(super) cancellation: CancellationToken,
}

impl JobMonitor {
    /// The counters so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Where the job is in its life; a fatal error shows here as soon as it happens.
    pub fn state(&self) -> JobState {
        lock(&self.state).clone()
    }

    /// The token that stops the job: a child of the one lent to
    /// [`JobBuilder::cancellation_token`](super::JobBuilder::cancellation_token), so cancelling it stops this job only.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.cancellation
    }
}

impl std::fmt::Debug for JobMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobMonitor")
            .field("state", &self.state())
            .field("stats", &self.stats())
            .finish()
    }
}

/// The job as a future, from [`JobBuilder::run`](super::JobBuilder::run): it resolves to the final counters when the
/// job stops after its token is cancelled, or to the error that stopped it.
#[must_use = "a JobRun does nothing unless awaited (or spawned)"]
pub struct JobRun {
    pub(super) future: Pin<Box<dyn Future<Output = Result<StatsSnapshot, JobError>> + Send>>,
    pub(super) monitor: JobMonitor,
}

impl JobRun {
    /// Watches the job while the future runs, and after it ended.
    pub fn monitor(&self) -> JobMonitor {
        self.monitor.clone()
    }
}

impl Future for JobRun {
    type Output = Result<StatsSnapshot, JobError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.future.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for JobRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRun")
            .field("monitor", &self.monitor)
            .finish_non_exhaustive()
    }
}

/// Controls a running job.
///
/// Dropping the handle does **not** stop the job: it runs on, detached, until its cancellation
/// token (or the one lent to [`JobBuilder::cancellation_token`](super::JobBuilder::cancellation_token)) is cancelled or it fails, and
/// nobody can then learn why it stopped or close it gracefully. Keep the handle and stop the job
/// with [`shutdown`](JobHandle::shutdown).
#[must_use = "dropping a JobHandle detaches the job: it stops only through the handle's shutdown() or its cancellation token"]
pub struct JobHandle {
    pub(super) task: JoinHandle<Result<StatsSnapshot, JobError>>,
    pub(super) monitor: JobMonitor,
}

impl JobHandle {
    /// The counters so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.monitor.stats()
    }

    /// Where the job is in its life; a fatal error shows here as soon as it happens.
    pub fn state(&self) -> JobState {
        self.monitor.state()
    }

    /// A watcher of the job that outlives the handle (which [`shutdown`](Self::shutdown) and
    /// [`wait`](Self::wait) consume): for health checks, say.
    pub fn monitor(&self) -> JobMonitor {
        self.monitor.clone()
    }

    /// The token that stops the job: a child of the one lent to
    /// [`JobBuilder::cancellation_token`](super::JobBuilder::cancellation_token), so cancelling it stops this job only.
    pub fn cancellation_token(&self) -> &CancellationToken {
        self.monitor.cancellation_token()
    }

    /// Whether the job has stopped (shut down, or failed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops receiving, lets in-flight deliveries finish within the shutdown deadline, abandons
    /// the rest, closes the source, and returns the final counters, or the error that had
    /// already stopped the job.
    ///
    /// It cancels the job's own token only: a token lent to
    /// [`JobBuilder::cancellation_token`](super::JobBuilder::cancellation_token) stays uncancelled.
    pub async fn shutdown(self) -> Result<StatsSnapshot, JobError> {
        self.monitor.cancellation.cancel();
        self.wait().await
    }

    /// Waits until the job stops by itself (a fatal error, or its token cancelled elsewhere).
    pub async fn wait(self) -> Result<StatsSnapshot, JobError> {
        match self.task.await {
            Ok(result) => result,
            // The engine catches its own panics, so a join error is an aborted task, or a
            // panic that escaped the catch; either way the state already says `Failed`.
            Err(join_error) if join_error.is_panic() => Err(JobError::Panicked(EnginePanic::new(
                delivery::panic_message(join_error.into_panic().as_ref()),
            ))),
            Err(_) => Err(JobError::Dropped),
        }
    }
}

impl std::fmt::Debug for JobHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobHandle")
            .field("state", &self.state())
            .field("stats", &self.stats())
            .finish()
    }
}
