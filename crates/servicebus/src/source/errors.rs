//! `azure_core_amqp` errors, sorted into what the job should do about them.

use azure_core_amqp::{AmqpError, AmqpErrorKind};
use keyvault_invalidator_core::{SourceError, SourceErrorKind};

/// Whether the service refused our identity: counted, because a rotated connection string
/// shows up as a run of these.
pub(crate) fn is_unauthorized(error: &SourceError) -> bool {
    error.message.contains("unauthorized")
}

/// Missing entities are fatal (waiting will not create them); refusals of our identity are
/// reported as unauthorized (the source decides when they become fatal); everything else (a
/// dropped connection, a busy server, a detached link) is transient.
pub(crate) fn classify(error: AmqpError, doing: &str) -> SourceError {
    // azure_core_amqp 1.1 does not expose the error condition as a type on every path, so the
    // conditions are recognised in the message it renders.
    let text = error.to_string();
    let lower = text.to_ascii_lowercase();
    let unauthorized = matches!(
        error.kind(),
        AmqpErrorKind::ManagementStatusCode(status, _) if matches!(u16::from(*status), 401 | 403)
    ) || lower.contains("unauthorized");
    let (kind, why) = if lower.contains("not-found") || lower.contains("notfound") {
        (
            SourceErrorKind::Fatal,
            "the topic or subscription does not exist",
        )
    } else if unauthorized {
        (
            SourceErrorKind::Transient,
            "unauthorized: the service refused the token",
        )
    } else {
        (SourceErrorKind::Transient, "the connection or link failed")
    };
    SourceError::new(kind, format!("{doing}: {why} ({text})")).with_source(error)
}
