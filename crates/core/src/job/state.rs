//! How a job stands: [`JobState`], and the errors that stop it or keep it from starting.

use std::sync::Arc;

use crate::source::SourceError;

/// Where a job is in its life.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum JobState {
    /// Receiving and processing.
    Running,
    /// Finishing in-flight deliveries.
    ShuttingDown,
    /// Stopped after a shutdown.
    Stopped,
    /// Stopped by an error it could not recover from: a fatal source error, a panic in the
    /// engine, or its task or future dropped before the job stopped. Set the moment the job
    /// gives up, without anyone awaiting the handle; deliveries already in flight may still be
    /// finishing then ([`JobHandle::is_finished`](super::JobHandle::is_finished) says when everything has ended).
    Failed(JobError),
}

impl JobState {
    /// Whether the job is receiving and processing.
    pub fn is_running(&self) -> bool {
        matches!(self, JobState::Running)
    }

    /// The error that stopped the job, if one did.
    pub fn error(&self) -> Option<&JobError> {
        match self {
            JobState::Failed(error) => Some(error),
            _ => None,
        }
    }
}

/// Why a job stopped on its own.
///
/// It is `Clone` (its source error is shared) so that [`JobState::Failed`] and
/// [`JobHandle::wait`](super::JobHandle::wait) give the same error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The source reported a fatal error (credentials that stay bad, an entity that is gone), or
    /// was closed while the job was not shutting down.
    #[error("the event source failed: {0}")]
    Source(#[source] Arc<SourceError>),
    /// The job's engine panicked (a panic in the source, the invalidator or the cache is caught
    /// per delivery and never gets here).
    #[error("the job's engine panicked: {0}")]
    Panicked(#[source] EnginePanic),
    /// The job's task was aborted, its runtime shut down, or the [`JobBuilder::run`](super::JobBuilder::run) future was
    /// dropped, before the job stopped.
    #[error("the job was dropped before it stopped (its task aborted, its runtime shut down, or its future dropped)")]
    Dropped,
}

impl JobError {
    pub(crate) fn source_failed(error: SourceError) -> Self {
        JobError::Source(Arc::new(error))
    }
}

/// A panic in the job's engine, with the message it panicked with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EnginePanic {
    message: String,
}

impl EnginePanic {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        EnginePanic {
            message: message.into(),
        }
    }

    /// What the engine panicked with (the panic's `&str` or `String` payload).
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// [`JobBuilder::spawn`](super::JobBuilder::spawn) was called outside a Tokio runtime.
#[derive(Debug, thiserror::Error)]
#[error("the invalidation job needs a Tokio runtime to spawn on: call spawn() from inside one, or drive JobBuilder::run() yourself")]
pub struct SpawnError(#[source] pub(super) tokio::runtime::TryCurrentError);
