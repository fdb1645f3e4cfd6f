//! The receive loop and shutdown.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::delivery::{panic_message, Worker};
use super::stats::Stats;
use super::{lock, EnginePanic, JobError, JobOptions, JobState};
use crate::invalidator::Invalidator;
use crate::source::{EventSource, Settlement, SourceError, SourceErrorKind};

/// After the shutdown deadline, how long abandoning the stragglers may take before their tasks
/// are aborted (their deliveries then come back when the transport's lock expires).
const ABANDON_GRACE: Duration = Duration::from_secs(5);

pub(super) struct Engine {
    pub(super) source: Arc<dyn EventSource>,
    pub(super) invalidator: Arc<dyn Invalidator>,
    pub(super) options: JobOptions,
    pub(super) stats: Arc<Stats>,
    pub(super) state: Arc<Mutex<JobState>>,
    pub(super) shutdown: CancellationToken,
}

impl Engine {
    /// Runs the engine and makes sure that however it ends, [`JobState`] says so at once: a
    /// panic anywhere in the engine becomes [`JobError::Panicked`] and `Failed`, and a task dropped
    /// before the engine finished (aborted, or its runtime shut down) leaves `Failed` too, so
    /// that a job never looks `Running` when nothing runs.
    pub(super) async fn supervised(self) -> Result<(), JobError> {
        let state = self.state.clone();
        let source = self.source.clone();
        let _dropped = MarkFailedIfUnfinished(state.clone());
        match AssertUnwindSafe(self.run()).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => {
                let error = JobError::Panicked(EnginePanic::new(panic_message(panic.as_ref())));
                tracing::error!(%error, "the invalidation job stopped");
                *lock(&state) = JobState::Failed(error.clone());
                // The in-flight tasks were aborted with the engine's JoinSet; closing the source
                // hands their deliveries back now rather than when their locks expire.
                close_source(source.as_ref()).await;
                Err(error)
            }
        }
    }

    async fn run(self) -> Result<(), JobError> {
        let deadline_passed = CancellationToken::new();
        let worker = Arc::new(Worker {
            source: self.source.clone(),
            invalidator: self.invalidator.clone(),
            stats: self.stats.clone(),
            parser: self.options.parser,
            max_attempts: self.options.max_attempts,
            retry_backoff: self.options.retry_backoff,
            shutdown: self.shutdown.clone(),
            deadline_passed: deadline_passed.clone(),
        });
        tracing::info!(job = %self.options.name, concurrency = self.options.concurrency, "invalidation job started");

        let mut tasks = JoinSet::new();
        let result = self.receive_loop(&worker, &mut tasks).await;

        // A fatal error shows as `Failed` from the moment it happens, through the drain that
        // follows: only a requested stop is `ShuttingDown`.
        *lock(&self.state) = match &result {
            Ok(()) => JobState::ShuttingDown,
            Err(error) => JobState::Failed(error.clone()),
        };
        let in_flight = tasks.len();
        let drained = tokio::time::timeout(self.options.shutdown_deadline, drain(&mut tasks)).await;
        if drained.is_err() {
            tracing::warn!(
                remaining = tasks.len(),
                in_flight,
                "shutdown deadline passed: abandoning deliveries still in flight"
            );
            deadline_passed.cancel();
            if tokio::time::timeout(ABANDON_GRACE, drain(&mut tasks))
                .await
                .is_err()
            {
                tasks.abort_all();
                drain(&mut tasks).await;
            }
        }
        close_source(self.source.as_ref()).await;

        let final_state = match &result {
            Ok(()) => JobState::Stopped,
            Err(error) => JobState::Failed(error.clone()),
        };
        tracing::info!(job = %self.options.name, state = ?final_state, stats = ?self.stats.snapshot(), "invalidation job stopped");
        *lock(&self.state) = final_state;
        result
    }

    async fn receive_loop(
        &self,
        worker: &Arc<Worker>,
        tasks: &mut JoinSet<()>,
    ) -> Result<(), JobError> {
        let concurrency = self.options.concurrency;
        // Every delivery holds a permit from receipt to settlement, so at most `concurrency`
        // deliveries are in memory whatever the backlog.
        let permits = Arc::new(Semaphore::new(concurrency));
        let mut consecutive_failures = 0u32;
        loop {
            while let Some(joined) = tasks.try_join_next() {
                report_task_end(joined);
            }
            let first = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ok(()),
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let mut batch_permits = vec![first];
            while batch_permits.len() < concurrency {
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => batch_permits.push(permit),
                    Err(_) => break,
                }
            }

            let received = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ok(()),
                // A panicking `receive` is a source that failed this once: like a transient
                // error, it is retried after the receive backoff.
                received = AssertUnwindSafe(self.source.receive(batch_permits.len())).catch_unwind() => {
                    received.unwrap_or_else(|panic| Err(SourceError::transient(format!(
                        "the source's receive panicked: {}",
                        panic_message(panic.as_ref())
                    ))))
                }
            };
            match received {
                Ok(deliveries) => {
                    consecutive_failures = 0;
                    self.stats.received(deliveries.len());
                    let mut permits = batch_permits.into_iter();
                    for delivery in deliveries {
                        match permits.next() {
                            Some(permit) => {
                                let worker = worker.clone();
                                tasks.spawn(async move {
                                    worker.process(delivery).await;
                                    drop(permit);
                                });
                            }
                            None => {
                                // The source broke its contract; keep the memory bound and let
                                // the delivery come back.
                                tracing::error!(message_id = ?delivery.message_id, "the source returned more deliveries than asked for; abandoning the extra one");
                                worker.settle_now(delivery.token, Settlement::Abandon).await;
                            }
                        }
                    }
                }
                Err(error) => match error.kind {
                    SourceErrorKind::Closed if self.shutdown.is_cancelled() => return Ok(()),
                    // A source closed behind the job's back never delivers again: as fatal as
                    // bad credentials.
                    SourceErrorKind::Fatal | SourceErrorKind::Closed => {
                        self.stats.receive_error();
                        tracing::error!(%error, "the event source failed fatally; the job stops");
                        return Err(JobError::source_failed(error));
                    }
                    _ => {
                        self.stats.receive_error();
                        consecutive_failures = consecutive_failures.saturating_add(1);
                        let pause = self.options.receive_backoff.delay(consecutive_failures);
                        tracing::warn!(%error, consecutive_failures, pause_ms = pause.as_millis() as u64, "receiving failed; retrying after a pause");
                        tokio::select! {
                            _ = self.shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(pause) => {}
                        }
                    }
                },
            }
        }
    }
}

async fn close_source(source: &dyn EventSource) {
    match AssertUnwindSafe(source.close()).catch_unwind().await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "closing the event source failed"),
        Err(panic) => tracing::warn!(
            panic = panic_message(panic.as_ref()),
            "closing the event source panicked"
        ),
    }
}

/// Dropped with the engine's task: if the engine never reached a final state (the task was
/// aborted or its runtime shut down mid-way), the handle must not go on saying `Running`.
struct MarkFailedIfUnfinished(Arc<Mutex<JobState>>);

impl Drop for MarkFailedIfUnfinished {
    fn drop(&mut self) {
        let mut state = lock(&self.0);
        if matches!(*state, JobState::Running | JobState::ShuttingDown) {
            *state = JobState::Failed(JobError::Dropped);
        }
    }
}

async fn drain(tasks: &mut JoinSet<()>) {
    while let Some(joined) = tasks.join_next().await {
        report_task_end(joined);
    }
}

fn report_task_end(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined {
        if error.is_panic() {
            tracing::error!("a delivery task panicked outside the invalidator; its delivery comes back when the transport's lock expires");
        }
    }
}
