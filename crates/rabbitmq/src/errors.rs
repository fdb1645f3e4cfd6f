//! lapin's errors, sorted into what the job should do about them.

use keyvault_invalidator_core::{SourceError, SourceErrorKind};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::ErrorKind;

/// A failure of the connection, channel or a declaration, with the job's view of it.
#[derive(Debug)]
pub(crate) struct LinkError {
    pub(crate) kind: SourceErrorKind,
    pub(crate) message: String,
    pub(crate) source: lapin::Error,
}

impl From<LinkError> for SourceError {
    fn from(error: LinkError) -> Self {
        SourceError::new(error.kind, error.message).with_source(error.source)
    }
}

/// Refusals that waiting will not fix (a declaration that conflicts with the broker's, a
/// missing queue, refused credentials) are fatal; everything else (a broker restart, a network
/// cut, a forced close) is transient. lapin's messages never hold the password.
pub(crate) fn classify(error: lapin::Error, doing: &str) -> LinkError {
    let (kind, why) = match error.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => (
                SourceErrorKind::Fatal,
                "it exists on the broker with different settings (PRECONDITION_FAILED); delete it or \
                 configure the same settings",
            ),
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => {
                (SourceErrorKind::Fatal, "it does not exist (NOT_FOUND)")
            }
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
            | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => {
                (SourceErrorKind::Fatal, "access was refused (check the user's permissions)")
            }
            AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED) => (
                SourceErrorKind::Fatal,
                "the queue is exclusive to another connection (RESOURCE_LOCKED)",
            ),
            _ => (SourceErrorKind::Transient, "the broker closed the channel or connection"),
        },
        ErrorKind::AuthProviderError(_) => {
            (SourceErrorKind::Fatal, "the broker refused the credentials")
        }
        _ => (SourceErrorKind::Transient, "the connection failed"),
    };
    LinkError {
        kind,
        message: format!("{doing}: {why} ({error})"),
        source: error,
    }
}
