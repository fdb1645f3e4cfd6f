//! The job engine: receive deliveries, parse them, invalidate, settle.
//!
//! ```
//! use std::sync::Arc;
//! use keyvault_invalidator_core::{Job, KeyVaultInvalidator};
//! # use keyvault_invalidator_core::{SecretCache, CacheError, EventSource, Delivery, DeliveryToken, Settlement, SourceError};
//! # struct NoCache;
//! # #[async_trait::async_trait]
//! # impl SecretCache for NoCache { async fn invalidate(&self, _: &str) -> Result<(), CacheError> { Ok(()) } }
//! # struct Idle;
//! # #[async_trait::async_trait]
//! # impl EventSource for Idle {
//! #     async fn receive(&self, _: usize) -> Result<Vec<Delivery>, SourceError> { std::future::pending().await }
//! #     async fn settle(&self, _: DeliveryToken, _: Settlement) -> Result<(), SourceError> { Ok(()) }
//! #     async fn close(&self) -> Result<(), SourceError> { Ok(()) }
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (source, cache) = (Idle, Arc::new(NoCache));
//! let job = Job::builder(source, KeyVaultInvalidator::new(cache))
//!     .concurrency(8)
//!     .max_attempts(10)
//!     .spawn()?;
//! // ... the application runs ...
//! let stats = job.shutdown().await?;
//! assert_eq!(stats.received, 0);
//! # Ok(()) }
//! ```

mod backoff;
mod delivery;
mod handle;
mod run;
mod state;
mod stats;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use backoff::Backoff;
pub use handle::{JobHandle, JobMonitor, JobRun};
pub use state::{EnginePanic, JobError, JobState, SpawnError};
pub use stats::{names as metric_names, StatsSnapshot};

use crate::event::EventParser;
use crate::invalidator::Invalidator;
use crate::source::EventSource;
use stats::Stats;

/// Entry point of the job engine; see [`Job::builder`].
#[derive(Debug)]
pub struct Job;

impl Job {
    /// Starts configuring a job that feeds `source`'s deliveries to `invalidator`.
    pub fn builder<S, I>(source: S, invalidator: I) -> JobBuilder
    where
        S: EventSource + 'static,
        I: Invalidator + 'static,
    {
        JobBuilder {
            source: Arc::new(source),
            invalidator: Arc::new(invalidator),
            options: JobOptions::default(),
            cancellation: CancellationToken::new(),
        }
    }
}

/// The job's settings. Every field has a default suited to Key Vault rotations.
///
/// New settings may be added: start from [`JobOptions::default`] and change fields, or use
/// the [`JobBuilder`]'s methods.
///
/// ```
/// use keyvault_invalidator_core::JobOptions;
///
/// let mut options = JobOptions::default();
/// options.concurrency = 16;
/// assert_eq!(options.max_attempts, 10);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobOptions {
    /// A name for logs and the `job` metric label. Default `keyvault-invalidator`.
    pub name: String,
    /// Deliveries processed at once; also the most a single `receive` asks for. Default 8.
    pub concurrency: usize,
    /// Deliveries of one message before a failing invalidation is dead-lettered. Default 10.
    pub max_attempts: u32,
    /// The wait before abandoning a delivery whose invalidation failed, by delivery count.
    /// Default 1 s doubling to 30 s (below Service Bus's 60 s lock).
    pub retry_backoff: Backoff,
    /// The wait after a failed `receive`, by consecutive failures. Default 100 ms to 30 s.
    pub receive_backoff: Backoff,
    /// How long shutdown waits for in-flight deliveries before abandoning them. Default 30 s.
    pub shutdown_deadline: Duration,
    /// The payload parser and its limits.
    pub parser: EventParser,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            name: "keyvault-invalidator".to_owned(),
            concurrency: 8,
            max_attempts: 10,
            retry_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            receive_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
            shutdown_deadline: Duration::from_secs(30),
            parser: EventParser::default(),
        }
    }
}

/// Configures and spawns a job.
pub struct JobBuilder {
    source: Arc<dyn EventSource>,
    invalidator: Arc<dyn Invalidator>,
    options: JobOptions,
    cancellation: CancellationToken,
}

impl JobBuilder {
    /// Replaces every option at once.
    pub fn options(mut self, options: JobOptions) -> Self {
        self.options = options;
        self
    }

    /// See [`JobOptions::name`].
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.options.name = name.into();
        self
    }

    /// See [`JobOptions::concurrency`]. Values below 1 are taken as 1.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.options.concurrency = concurrency.max(1);
        self
    }

    /// See [`JobOptions::max_attempts`]. Values below 1 are taken as 1.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.options.max_attempts = attempts.max(1);
        self
    }

    /// See [`JobOptions::retry_backoff`].
    pub fn retry_backoff(mut self, backoff: Backoff) -> Self {
        self.options.retry_backoff = backoff;
        self
    }

    /// See [`JobOptions::receive_backoff`].
    pub fn receive_backoff(mut self, backoff: Backoff) -> Self {
        self.options.receive_backoff = backoff;
        self
    }

    /// See [`JobOptions::shutdown_deadline`].
    pub fn shutdown_deadline(mut self, deadline: Duration) -> Self {
        self.options.shutdown_deadline = deadline;
        self
    }

    /// See [`JobOptions::parser`].
    pub fn parser(mut self, parser: EventParser) -> Self {
        self.options.parser = parser;
        self
    }

    /// Stops the job when this token is cancelled (for example the application's own shutdown
    /// token).
    ///
    /// The job listens on a [child](CancellationToken::child_token) of it: cancelling `token`
    /// stops the job, but [`JobHandle::shutdown`] (which cancels the child) never cancels
    /// `token` itself, so stopping the job does not stop the application that lent it.
    pub fn cancellation_token(mut self, token: CancellationToken) -> Self {
        self.cancellation = token;
        self
    }

    /// Starts the job on the current Tokio runtime and returns its handle.
    ///
    /// Metric handles are registered now: install a `metrics` recorder before calling this.
    ///
    /// # Errors
    /// [`SpawnError`] outside a Tokio runtime (where `tokio::spawn` would panic). To drive the
    /// job on a task of your own, or without spawning at all, use [`run`](Self::run).
    pub fn spawn(self) -> Result<JobHandle, SpawnError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(SpawnError)?;
        let JobRun { future, monitor } = self.run();
        let task = runtime.spawn(future);
        Ok(JobHandle { task, monitor })
    }

    /// The job as a future the application drives itself (in its own `select!`, a
    /// `JoinSet`, a runtime of its choosing), instead of a task [`spawn`](Self::spawn)ed for it.
    ///
    /// The future ends like [`JobHandle::wait`]: with the final counters once the job's
    /// cancellation token (see [`cancellation_token`](Self::cancellation_token)) is cancelled
    /// and the in-flight deliveries are drained, or with the error that stopped the job.
    /// [`JobRun::monitor`] watches it meanwhile. Dropping the future stops the job at once,
    /// without the graceful drain: deliveries in flight are not settled and come back from the
    /// transport (at least once, never lost), and the state says
    /// [`Failed`](JobState::Failed) with [`JobError::Dropped`].
    ///
    /// Metric handles are registered now: install a `metrics` recorder before calling this.
    ///
    /// ```
    /// use keyvault_invalidator_core::{CancellationToken, Job, JobState, KeyVaultInvalidator};
    /// # use std::sync::Arc;
    /// # use keyvault_invalidator_core::{SecretCache, CacheError, EventSource, Delivery, DeliveryToken, Settlement, SourceError};
    /// # struct NoCache;
    /// # #[async_trait::async_trait]
    /// # impl SecretCache for NoCache { async fn invalidate(&self, _: &str) -> Result<(), CacheError> { Ok(()) } }
    /// # struct Idle;
    /// # #[async_trait::async_trait]
    /// # impl EventSource for Idle {
    /// #     async fn receive(&self, _: usize) -> Result<Vec<Delivery>, SourceError> { std::future::pending().await }
    /// #     async fn settle(&self, _: DeliveryToken, _: Settlement) -> Result<(), SourceError> { Ok(()) }
    /// #     async fn close(&self) -> Result<(), SourceError> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (source, cache) = (Idle, Arc::new(NoCache));
    /// let app_shutdown = CancellationToken::new();
    /// let job = Job::builder(source, KeyVaultInvalidator::new(cache))
    ///     .cancellation_token(app_shutdown.clone())
    ///     .run();
    /// let monitor = job.monitor();
    /// assert!(matches!(monitor.state(), JobState::Running));
    ///
    /// app_shutdown.cancel(); // the application is stopping: the job drains and ends
    /// let stats = job.await?;
    /// assert_eq!(stats.received, 0);
    /// assert!(matches!(monitor.state(), JobState::Stopped));
    /// # Ok(()) }
    /// ```
    pub fn run(self) -> JobRun {
        let mut options = self.options;
        options.concurrency = options.concurrency.max(1);
        options.max_attempts = options.max_attempts.max(1);
        // The job's own token: the lent one (or the default) cancels it, but cancelling it,
        // as `shutdown` does, reaches no further than this job.
        let cancellation = self.cancellation.child_token();
        let monitor = JobMonitor {
            stats: Arc::new(Stats::new(&options.name)),
            state: Arc::new(Mutex::new(JobState::Running)),
            cancellation: cancellation.clone(),
        };
        let engine = run::Engine {
            source: self.source,
            invalidator: self.invalidator,
            options,
            stats: monitor.stats.clone(),
            state: monitor.state.clone(),
            shutdown: cancellation,
        };
        let stats = monitor.stats.clone();
        let future = Box::pin(async move {
            engine.supervised().await?;
            Ok(stats.snapshot())
        });
        JobRun { future, monitor }
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The state is a plain value: a panic while holding the lock cannot leave it half-written.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
