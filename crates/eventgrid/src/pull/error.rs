//! [`PullError`]: what one data-plane request met, classified by HTTP status or azure_core
//! error kind (never by message text), and how it becomes core's [`SourceError`].

use std::time::Duration;

use azure_core::error::ErrorKind as CoreErrorKind;
use azure_core::http::headers::{HeaderName, Headers};
use keyvault_invalidator_core::{SourceError, SourceErrorKind};

/// The role an Entra ID identity needs to receive and settle, as error messages name it.
pub(crate) const RECEIVER_ROLE: &str = "EventGrid Data Receiver";
/// The longest `Retry-After` taken as given; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10 * 60);

/// A failed data-plane request.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct PullError {
    /// What kind of failure.
    pub kind: PullErrorKind,
    /// The HTTP status, when the service answered.
    pub status: Option<u16>,
    /// What happened, naming the operation (never a key or token).
    pub message: String,
    /// The wait the service asked for (`Retry-After`), if any.
    pub retry_after: Option<Duration>,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// The kinds of [`PullError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PullErrorKind {
    /// 401: the access key or token was refused.
    Unauthorized,
    /// 403: the identity lacks the EventGrid Data Receiver role.
    Forbidden,
    /// 404: no such topic or event subscription (infrastructure creates them).
    NotFound,
    /// 400 and other 4xx: the request was refused as it was.
    Rejected,
    /// 429: throttled.
    Throttled,
    /// 408 or 5xx: the service is busy or failing.
    Unavailable,
    /// No answer: the connection failed or was dropped, or the request timed out.
    Network,
    /// The credential gave no token.
    Credential,
    /// An answer this source cannot read.
    InvalidResponse,
}

impl PullError {
    pub(crate) fn new(kind: PullErrorKind, message: impl Into<String>) -> Self {
        PullError {
            kind,
            status: None,
            message: message.into(),
            retry_after: None,
            source: None,
        }
    }

    pub(crate) fn with_source(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Whether trying again later may succeed: throttling, a busy service, no answer, no token
    /// yet (a managed identity endpoint still starting).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            PullErrorKind::Throttled
                | PullErrorKind::Unavailable
                | PullErrorKind::Network
                | PullErrorKind::Credential
        )
    }

    /// The error of an answer with a status other than 200. `service` is the code and message
    /// of the answer's `{"error":{..}}` body, when it had one.
    pub(crate) fn status(
        operation: &str,
        status: u16,
        headers: &Headers,
        service: Option<String>,
    ) -> Self {
        let said = service.map(|s| format!(": {s}")).unwrap_or_default();
        let (kind, message) = match status {
            401 => (
                PullErrorKind::Unauthorized,
                format!("Event Grid refused the credentials for {operation} (401){said}: check the access key, or the credential's tenant and identity"),
            ),
            403 => (
                PullErrorKind::Forbidden,
                format!("Event Grid forbade {operation} (403){said}: the identity needs the {RECEIVER_ROLE} role on the namespace topic or its event subscription"),
            ),
            404 => (
                PullErrorKind::NotFound,
                format!("Event Grid found no such topic or event subscription for {operation} (404){said}: infrastructure creates them (deploy/eventgrid-namespace)"),
            ),
            429 => (
                PullErrorKind::Throttled,
                format!("Event Grid throttled {operation} (429){said}"),
            ),
            408 | 500..=599 => (
                PullErrorKind::Unavailable,
                format!("Event Grid answered {operation} with {status}{said}"),
            ),
            _ => (
                PullErrorKind::Rejected,
                format!("Event Grid rejected {operation} with {status}{said}"),
            ),
        };
        let mut error = PullError::new(kind, message);
        error.status = Some(status);
        if error.is_retryable() {
            error.retry_after = retry_after(headers);
        }
        error
    }

    /// The error of a request that got no HTTP answer.
    pub(crate) fn transport(operation: &str, error: azure_core::Error) -> Self {
        let (kind, what) = match error.kind() {
            CoreErrorKind::Credential => (
                PullErrorKind::Credential,
                format!(
                    "the credential gave no token for {} ({operation})",
                    super::EVENT_GRID_SCOPE
                ),
            ),
            CoreErrorKind::Connection | CoreErrorKind::Io => (
                PullErrorKind::Network,
                format!("no answer from Event Grid to {operation}"),
            ),
            CoreErrorKind::DataConversion => (
                PullErrorKind::InvalidResponse,
                format!("Event Grid's answer to {operation} could not be read"),
            ),
            _ => (
                PullErrorKind::Rejected,
                format!("{operation} could not be sent"),
            ),
        };
        PullError::new(kind, format!("{what}: {error}")).with_source(error)
    }
}

impl From<PullError> for SourceError {
    /// Retryable errors become [`SourceErrorKind::Transient`] (with the `Retry-After`), the
    /// rest [`SourceErrorKind::Fatal`]; the pull error is kept as the source.
    fn from(error: PullError) -> Self {
        let kind = if error.is_retryable() {
            SourceErrorKind::Transient
        } else {
            SourceErrorKind::Fatal
        };
        let mut converted = SourceError::new(kind, error.message.clone());
        if let Some(delay) = error.retry_after {
            converted = converted.with_retry_after(delay);
        }
        converted.with_source(error)
    }
}

/// The wait an answer asks for: `retry-after-ms` or `x-ms-retry-after-ms` (milliseconds), else
/// `Retry-After` in seconds. An HTTP-date `Retry-After` is not read (Event Grid sends
/// seconds); the caller's backoff applies then.
fn retry_after(headers: &Headers) -> Option<Duration> {
    let header = |name: &'static str| headers.get_optional_str(&HeaderName::from_static(name));
    let parsed = ["retry-after-ms", "x-ms-retry-after-ms"]
        .into_iter()
        .find_map(|name| header(name)?.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .or_else(|| {
            header("retry-after")?
                .trim()
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs)
        })?;
    Some(parsed.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> Headers {
        let mut headers = Headers::new();
        for (name, value) in pairs {
            headers.insert(HeaderName::from_static(name), value.to_string());
        }
        headers
    }

    #[test]
    fn statuses_are_classified_and_name_the_role_or_the_fix() {
        let none = Headers::new();
        let forbidden = PullError::status(":receive", 403, &none, None);
        assert_eq!(forbidden.kind, PullErrorKind::Forbidden);
        assert!(!forbidden.is_retryable());
        assert!(forbidden.message.contains("EventGrid Data Receiver"));
        let unauthorized =
            PullError::status(":receive", 401, &none, Some("Unauthorized: bad key".into()));
        assert_eq!(unauthorized.kind, PullErrorKind::Unauthorized);
        assert!(unauthorized
            .message
            .contains("(401): Unauthorized: bad key"));
        for status in [408, 500, 502, 503] {
            assert_eq!(
                PullError::status(":receive", status, &none, None).kind,
                PullErrorKind::Unavailable
            );
        }
        assert_eq!(
            PullError::status(":receive", 400, &none, None).kind,
            PullErrorKind::Rejected
        );
        let source: SourceError = PullError::status(":acknowledge", 404, &none, None).into();
        assert_eq!(source.kind, SourceErrorKind::Fatal);
    }

    #[test]
    fn retry_after_is_read_from_seconds_or_milliseconds_and_capped() {
        let throttled = PullError::status(":receive", 429, &headers(&[("retry-after", "3")]), None);
        assert_eq!(throttled.retry_after, Some(Duration::from_secs(3)));
        let source: SourceError = throttled.into();
        assert_eq!(source.kind, SourceErrorKind::Transient);
        assert_eq!(source.retry_after, Some(Duration::from_secs(3)));

        let ms = PullError::status(
            ":receive",
            503,
            &headers(&[("retry-after-ms", "250"), ("retry-after", "9")]),
            None,
        );
        assert_eq!(ms.retry_after, Some(Duration::from_millis(250)));
        let long = PullError::status(":receive", 429, &headers(&[("retry-after", "99999")]), None);
        assert_eq!(long.retry_after, Some(MAX_RETRY_AFTER));
        let date = PullError::status(
            ":receive",
            429,
            &headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            None,
        );
        assert_eq!(date.retry_after, None);
        // A refusal is not retried, whatever it says.
        let refused = PullError::status(":receive", 401, &headers(&[("retry-after", "3")]), None);
        assert_eq!(refused.retry_after, None);
    }
}
