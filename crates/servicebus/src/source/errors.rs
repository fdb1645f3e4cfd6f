//! `fe2o3-amqp` errors, sorted by their AMQP error condition or status code into what the job
//! should do about them. Nothing here reads an error's message text.

use std::fmt;

use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition};
use keyvault_invalidator_core::{SourceError, SourceErrorKind};

/// What a refusal from the service means, kept as the [`SourceError`]'s source (wrapping the
/// engine's error, so the chain stays whole) so later decisions read it by type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Our identity or token was refused (`amqp:unauthorized-access`, status 401/403).
    Unauthorized,
    /// The topic or subscription does not exist (`amqp:not-found`, status 404).
    NotFound,
    /// The lock of the delivery is gone (`com.microsoft:message-lock-lost`, status 410).
    LockLost,
    /// Anything else: a dropped connection, a busy service, a timeout.
    Other,
}

/// The engine's error with what it means.
#[derive(Debug)]
pub(crate) struct Classified {
    pub(crate) refusal: Refusal,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl fmt::Display for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl std::error::Error for Classified {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// What the error means, if it came from [`classify`].
pub(crate) fn refusal(error: &SourceError) -> Refusal {
    error
        .source
        .as_deref()
        .and_then(|source| source.downcast_ref::<Classified>())
        .map_or(Refusal::Other, |c| c.refusal)
}

/// Whether the service refused our identity: counted, because a rotated connection string
/// shows up as a run of these.
pub(crate) fn is_unauthorized(error: &SourceError) -> bool {
    refusal(error) == Refusal::Unauthorized
}

/// By AMQP error condition.
pub(crate) fn refusal_of_condition(condition: &ErrorCondition) -> Refusal {
    match condition {
        ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess) => Refusal::Unauthorized,
        ErrorCondition::AmqpError(AmqpError::NotFound) => Refusal::NotFound,
        ErrorCondition::Custom(symbol) => match symbol.0.as_str() {
            "com.microsoft:message-lock-lost" => Refusal::LockLost,
            "amqp:unauthorized-access" => Refusal::Unauthorized,
            "amqp:not-found" | "com.microsoft:entity-not-found" => Refusal::NotFound,
            _ => Refusal::Other,
        },
        _ => Refusal::Other,
    }
}

/// By management status code.
pub(crate) fn refusal_of_status(status: u16) -> Refusal {
    match status {
        401 | 403 => Refusal::Unauthorized,
        404 => Refusal::NotFound,
        410 => Refusal::LockLost,
        _ => Refusal::Other,
    }
}

/// The condition an engine error carries, if the peer sent one.
pub(crate) fn remote_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a definitions::Error> {
    use fe2o3_amqp::link::{LinkStateError, ReceiverAttachError, RecvError, SenderAttachError};
    if let Some(RecvError::LinkStateError(state)) = error.downcast_ref::<RecvError>() {
        return link_state_error(state);
    }
    if let Some(ReceiverAttachError::RemoteClosedWithError(e)) =
        error.downcast_ref::<ReceiverAttachError>()
    {
        return Some(e);
    }
    if let Some(SenderAttachError::RemoteClosedWithError(e)) =
        error.downcast_ref::<SenderAttachError>()
    {
        return Some(e);
    }
    if let Some(state) = error.downcast_ref::<LinkStateError>() {
        return link_state_error(state);
    }
    None
}

fn link_state_error(state: &fe2o3_amqp::link::LinkStateError) -> Option<&definitions::Error> {
    use fe2o3_amqp::link::LinkStateError;
    match state {
        LinkStateError::RemoteDetachedWithError(e) | LinkStateError::RemoteClosedWithError(e) => {
            Some(e)
        }
        _ => None,
    }
}

/// Classifies an engine error met while `doing` something. Missing entities are fatal
/// (waiting will not create them; the source decides whether to create its own again);
/// refusals of our identity are transient here (the source counts them and decides when they
/// become fatal); everything else (a dropped connection, a busy server, a detached link) is
/// transient.
pub(crate) fn classify(
    error: impl std::error::Error + Send + Sync + 'static,
    doing: &str,
) -> SourceError {
    let refusal = match remote_error(&error) {
        Some(remote) => refusal_of_condition(&remote.condition),
        None => management_refusal(&error),
    };
    classified(refusal, Box::new(error), doing)
}

fn management_refusal(error: &(dyn std::error::Error + 'static)) -> Refusal {
    use fe2o3_amqp_management::error::Error as ManagementError;
    match error.downcast_ref::<ManagementError>() {
        Some(ManagementError::Status(status)) => refusal_of_status(status.code.0.get()),
        Some(ManagementError::Recv(recv)) => remote_error(recv).map_or(Refusal::Other, |remote| {
            refusal_of_condition(&remote.condition)
        }),
        _ => Refusal::Other,
    }
}

/// A [`SourceError`] for `refusal`, with `source` kept underneath.
pub(crate) fn classified(
    refusal: Refusal,
    source: Box<dyn std::error::Error + Send + Sync>,
    doing: &str,
) -> SourceError {
    let (kind, why) = match refusal {
        Refusal::NotFound => (
            SourceErrorKind::Fatal,
            "the topic or subscription does not exist",
        ),
        Refusal::Unauthorized => (
            SourceErrorKind::Transient,
            "unauthorized: the service refused the token",
        ),
        Refusal::LockLost => (
            SourceErrorKind::SettlementLost,
            "the lock was lost; Service Bus redelivers the message",
        ),
        Refusal::Other => (SourceErrorKind::Transient, "the connection or link failed"),
    };
    SourceError::new(kind, format!("{doing}: {why} ({source})"))
        .with_source(Classified { refusal, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::link::{LinkStateError, RecvError};
    use fe2o3_amqp::types::primitives::Symbol;

    fn detached(condition: ErrorCondition) -> RecvError {
        RecvError::LinkStateError(LinkStateError::RemoteDetachedWithError(
            definitions::Error::new(condition, None, None),
        ))
    }

    #[test]
    fn conditions_are_read_by_type() {
        let unauthorized = classify(detached(AmqpError::UnauthorizedAccess.into()), "receiving");
        assert!(is_unauthorized(&unauthorized));
        assert_eq!(unauthorized.kind, SourceErrorKind::Transient);
        let missing = classify(detached(AmqpError::NotFound.into()), "attaching");
        assert_eq!(refusal(&missing), Refusal::NotFound);
        assert_eq!(missing.kind, SourceErrorKind::Fatal);
        let busy = classify(
            detached(ErrorCondition::Custom(Symbol::from(
                "com.microsoft:server-busy",
            ))),
            "receiving",
        );
        assert_eq!(refusal(&busy), Refusal::Other);
        assert_eq!(busy.kind, SourceErrorKind::Transient);
        let lost = classify(
            detached(ErrorCondition::Custom(Symbol::from(
                "com.microsoft:message-lock-lost",
            ))),
            "settling",
        );
        assert_eq!(lost.kind, SourceErrorKind::SettlementLost);
        assert!(
            std::error::Error::source(&lost).is_some(),
            "the chain is kept"
        );
    }

    #[test]
    fn status_codes_are_read_by_number() {
        assert_eq!(refusal_of_status(401), Refusal::Unauthorized);
        assert_eq!(refusal_of_status(403), Refusal::Unauthorized);
        assert_eq!(refusal_of_status(404), Refusal::NotFound);
        assert_eq!(refusal_of_status(410), Refusal::LockLost);
        assert_eq!(refusal_of_status(503), Refusal::Other);
    }
}
