//! lapin's errors, sorted into what the job should do about them.

use std::time::Duration;

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

/// What the source says it was doing when it opens the connection: the one step where the
/// login happens, so the one where ACCESS_REFUSED means refused credentials.
pub(crate) const CONNECTING: &str = "connecting to RabbitMQ";

/// What a refused login says: the AMQP reply (ACCESS_REFUSED) alone reads like a permission
/// problem, but at login it is the user name or the password.
pub(crate) const LOGIN_REFUSED: &str = "login refused: check the user name and password";

/// Refusals that waiting will not fix (a declaration that conflicts with the broker's, a
/// missing queue, refused credentials) are fatal; everything else (a broker restart, a network
/// cut, a forced close) is transient. lapin's messages never hold the password.
pub(crate) fn classify(error: lapin::Error, doing: &str) -> LinkError {
    classify_at(error, doing, false)
}

/// [`classify`] for opening the connection, where the login happens.
pub(crate) fn classify_login(error: lapin::Error) -> LinkError {
    classify_at(error, CONNECTING, true)
}

/// [`classify`], told whether the error came from opening the connection (`at_login`).
///
/// Sorted by lapin's error type and the AMQP reply code, never by message text. RabbitMQ
/// answers a bad user name or password with a connection close, reply code 403
/// (ACCESS_REFUSED), because lapin announces the `authentication_failure_close` capability;
/// lapin reports a client-side SASL failure as `AuthProviderError`. The same 403 on a channel
/// later (declaring, consuming) is a missing permission, and 530 (NOT_ALLOWED) at connect is a
/// virtual host the user may not use: both keep pointing at permissions.
fn classify_at(error: lapin::Error, doing: &str, at_login: bool) -> LinkError {
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
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) if at_login => {
                (SourceErrorKind::Fatal, LOGIN_REFUSED)
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
        ErrorKind::AuthProviderError(_) => (SourceErrorKind::Fatal, LOGIN_REFUSED),
        _ => (SourceErrorKind::Transient, "the connection failed"),
    };
    LinkError {
        kind,
        message: format!("{doing}: {why} ({error})"),
        source: error,
    }
}

/// Why one step of a settlement (a publish, its confirm, an acknowledgement) failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepFailure {
    /// The broker answered the publish with `basic.nack`.
    #[error("the broker refused the publish (basic.nack)")]
    Refused,
    /// The broker confirmed the publish but no queue took the message (`basic.return`).
    #[error("no queue took the message (the broker returned it)")]
    Unroutable,
    /// The broker did not answer in time.
    #[error("the broker did not answer within {0:?}")]
    TimedOut(Duration),
    /// Not sent: [`RabbitMqConfig::fail_releases_for_tests`](crate::RabbitMqConfig) made it
    /// fail.
    #[error("the nack failed (a test hook made it fail)")]
    Injected,
    /// The channel the step needed is closed: lapin refuses the step without sending it.
    #[error("the channel is closed")]
    ChannelClosed,
    /// lapin failed the step.
    #[error(transparent)]
    Lapin(#[from] lapin::Error),
}

/// A settlement that could not be made: what it was doing, and why.
#[derive(Debug, thiserror::Error)]
#[error("{doing}: {failure}")]
pub(crate) struct SettleError {
    pub(crate) doing: &'static str,
    #[source]
    pub(crate) failure: StepFailure,
}

/// What became of a delivery whose settlement failed. The caller's error says it, and keeps
/// the settlement's error as its source.
pub(crate) enum Released {
    /// `basic.nack` with requeue went through: the broker delivers the message again.
    Nacked,
    /// The nack failed too, so the delivery's channel was closed: the broker requeues every
    /// delivery the channel held.
    ChannelClosed(StepFailure),
    /// The channel was already closed: the broker requeued the delivery when it closed.
    AlreadyGone,
}

impl SettleError {
    /// The error handed to the caller once the delivery has been released.
    pub(crate) fn released(self, released: Released) -> SourceError {
        let what = match released {
            Released::Nacked => {
                "the delivery was released to the broker (basic.nack with requeue) and comes back"
                    .to_owned()
            }
            Released::ChannelClosed(nack) => format!(
                "releasing the delivery failed too ({nack}), so its channel was closed: the \
                 broker requeues every delivery the channel held"
            ),
            Released::AlreadyGone => "the broker requeues the delivery with its channel".to_owned(),
        };
        SourceError::settlement_lost(format!("{self}; {what}")).with_source(self)
    }
}

#[cfg(test)]
mod tests {
    use lapin::protocol::AMQPError;

    use super::*;

    fn amqp_error(kind: AMQPErrorKind, text: &str) -> lapin::Error {
        ErrorKind::ProtocolError(AMQPError::new(kind, text.into())).into()
    }

    #[test]
    fn access_refused_while_connecting_is_a_refused_login() {
        // What RabbitMQ answers to a wrong password: connection.close 403.
        let error = amqp_error(
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED),
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN",
        );
        let link = classify_login(error);
        assert_eq!(link.kind, SourceErrorKind::Fatal);
        assert!(
            link.message.starts_with(
                "connecting to RabbitMQ: login refused: check the user name and password ("
            ),
            "{}",
            link.message
        );
        assert!(!link.message.contains("permissions"), "{}", link.message);
    }

    #[test]
    fn a_client_side_authentication_failure_is_a_refused_login() {
        let error: lapin::Error = ErrorKind::AuthProviderError("no mechanism".into()).into();
        let link = classify_login(error);
        assert_eq!(link.kind, SourceErrorKind::Fatal);
        assert!(
            link.message.starts_with(
                "connecting to RabbitMQ: login refused: check the user name and password"
            ),
            "{}",
            link.message
        );
    }

    #[test]
    fn access_refused_after_login_points_at_permissions() {
        let error = amqp_error(
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED),
            "ACCESS_REFUSED - access to queue 'q' refused",
        );
        let link = classify(error, "declaring queue `q`");
        assert_eq!(link.kind, SourceErrorKind::Fatal);
        assert!(
            link.message.starts_with(
                "declaring queue `q`: access was refused (check the user's permissions) ("
            ),
            "{}",
            link.message
        );
        // A virtual host the user may not open, at connect: permissions too.
        let error = amqp_error(
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED),
            "NOT_ALLOWED - access to vhost 'x' refused",
        );
        let link = classify_login(error);
        assert!(
            link.message.starts_with(
                "connecting to RabbitMQ: access was refused (check the user's permissions) ("
            ),
            "{}",
            link.message
        );
    }
}
