//! [`ManagementError`]: what a management request ran into ([`ManagementFailure`], by type),
//! how each failure is worded (what was being done, to which subscription, what the identity
//! needs), and the `Retry-After` it carries.
//!
//! Separate from the client ([`super::ManagementClient`]) because callers decide on these
//! types, and because every message is built here, in one place that never formats a secret.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyvault_invalidator_core::{SourceError, SourceErrorKind};

use super::{MANAGE_RIGHTS, MAX_RETRY_AFTER};

/// What a management request ran into, by type: decide on this, never on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManagementFailure {
    /// The credential could not get a token, as when the managed identity endpoint is not
    /// ready yet at pod start. Transient.
    Credential,
    /// No answer came: connecting failed, the request timed out, or the connection broke.
    /// Transient.
    Network,
    /// The request could not even be formed (the HTTP client or the URL is unusable). Fatal.
    InvalidRequest,
    /// The service answered with this HTTP status. 408, 429 and 5xx are transient; 401 and
    /// 403 are [refusals](ManagementError::is_refused); the rest are fatal.
    Status(u16),
}

/// A failed management request.
///
/// The message says what was being done, to which subscription, and why it failed; it never
/// holds a token or key (they travel in a header, which is never formatted). The underlying
/// error (reqwest's, the credential's) is the [source](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct ManagementError {
    failure: ManagementFailure,
    message: String,
    // Set by the client from the response, and by the tests.
    pub(super) retry_after: Option<Duration>,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ManagementError {
    pub(super) fn new(failure: ManagementFailure, message: String) -> Self {
        ManagementError {
            failure,
            message,
            retry_after: None,
            source: None,
        }
    }

    pub(super) fn with_source(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// What went wrong.
    pub fn failure(&self) -> ManagementFailure {
        self.failure
    }

    /// The HTTP status the service answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self.failure {
            ManagementFailure::Status(status) => Some(status),
            _ => None,
        }
    }

    /// How long the service asked to wait (its `Retry-After`, in seconds or as an HTTP date,
    /// at most [`MAX_RETRY_AFTER`]). The next attempt should wait at least this long.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether trying again later may succeed: no token yet, no answer, 408, 429 or 5xx.
    pub fn is_transient(&self) -> bool {
        match self.failure {
            ManagementFailure::Credential | ManagementFailure::Network => true,
            ManagementFailure::InvalidRequest => false,
            ManagementFailure::Status(status) => is_transient_status(status),
        }
    }

    /// Whether the service refused this identity (401 or 403). Retrying helps only while a
    /// role assignment or a new key is still propagating, which is why the source retries
    /// these for a [grace period](crate::ServiceBusConfig::unauthorized_grace) only.
    pub fn is_refused(&self) -> bool {
        matches!(self.failure, ManagementFailure::Status(401 | 403))
    }

    /// The human-readable message (also the `Display`).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<ManagementError> for SourceError {
    /// Transient when [`is_transient`](ManagementError::is_transient), fatal otherwise; the
    /// `Retry-After` travels as [`SourceError::retry_after`] and the management error as the
    /// source.
    fn from(error: ManagementError) -> Self {
        let kind = if error.is_transient() {
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

/// Whether a source error came from the management API (its source is a
/// [`ManagementError`]): those refusals have their own grace period and are not counted with
/// the AMQP side's.
pub(crate) fn is_management_error(error: &SourceError) -> bool {
    error
        .source
        .as_deref()
        .is_some_and(|source| source.downcast_ref::<ManagementError>().is_some())
}

pub(super) fn is_transient_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// A credential failure in a few words, from its kind (the source error has the details).
pub(super) fn credential_failure(kind: &azure_core::error::ErrorKind) -> String {
    use azure_core::error::ErrorKind;
    match kind {
        ErrorKind::HttpResponse { status, .. } => {
            format!("the identity endpoint answered HTTP {}", u16::from(*status))
        }
        ErrorKind::Connection | ErrorKind::Io => "the identity endpoint is unreachable".to_owned(),
        ErrorKind::Credential => "no identity is available yet".to_owned(),
        _ => "the identity endpoint's answer was unusable".to_owned(),
    }
}

/// The request a failure is about, as messages name it.
#[derive(Clone, Copy)]
pub(super) enum Doing<'a> {
    Creating { topic: &'a str, name: &'a str },
    Deleting { topic: &'a str, name: &'a str },
}

impl fmt::Display for Doing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (doing, topic, name) = match *self {
            Doing::Creating { topic, name } => ("creating", topic, name),
            Doing::Deleting { topic, name } => ("deleting", topic, name),
        };
        write!(f, "{doing} subscription `{name}` of topic `{topic}`")
    }
}

pub(super) fn transport_error(doing: Doing<'_>, error: reqwest::Error) -> ManagementError {
    let (failure, why) = if error.is_builder() {
        (
            ManagementFailure::InvalidRequest,
            "the request could not be formed",
        )
    } else if error.is_timeout() {
        (ManagementFailure::Network, "the request timed out")
    } else if error.is_connect() {
        (
            ManagementFailure::Network,
            "could not connect to the management endpoint",
        )
    } else {
        (
            ManagementFailure::Network,
            "the connection failed before an answer came",
        )
    };
    // reqwest's own message (the source) names the URL, which holds no secret: the token
    // travels in a header.
    ManagementError::new(failure, format!("{doing} failed: {why}")).with_source(error)
}

pub(super) fn status_error(doing: Doing<'_>, response: &reqwest::Response) -> ManagementError {
    let status = response.status().as_u16();
    let why = match status {
        401 => format!("unauthorized: the token or key was refused; {MANAGE_RIGHTS}"),
        403 => format!("forbidden: {MANAGE_RIGHTS}"),
        404 => "the topic does not exist".to_owned(),
        400 => "the service refused the request as malformed".to_owned(),
        408 => "the service timed out waiting for the request".to_owned(),
        429 => "throttled: too many requests".to_owned(),
        500..=599 => "the service is unavailable or busy".to_owned(),
        _ => "an answer this client does not expect".to_owned(),
    };
    let mut error = ManagementError::new(
        ManagementFailure::Status(status),
        format!("{doing}: HTTP {status}, {why}"),
    );
    if is_transient_status(status) {
        error.retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
    }
    error
}

/// A `Retry-After` value: delay seconds, or an HTTP date (IMF-fixdate, `Sun, 06 Nov 1994
/// 08:49:37 GMT`) taken relative to `now` (a date already past is no delay). At most
/// [`MAX_RETRY_AFTER`]; `None` when unreadable.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = azure_core::time::parse_rfc7231(value).ok()?;
            let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(at.unix_timestamp()).ok()?);
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(delay.min(MAX_RETRY_AFTER))
}
