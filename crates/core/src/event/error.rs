//! Errors the parser reports.

use std::fmt;

use super::names::InvalidObjectName;

/// Why a payload could not be accepted.
///
/// The message says what was wrong and where: which event in the payload (by position and id),
/// which field. It never repeats the payload's values beyond event ids and object names, so it
/// is safe to log and to put into a dead-letter description.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParseError {
    /// Position of the offending event in the payload (0 for a single object); `None` when the
    /// payload as a whole is unusable.
    pub index: Option<usize>,
    /// The offending event's `id`, when it had a readable one (shortened for display).
    pub event_id: Option<String>,
    /// What was wrong.
    pub kind: ParseErrorKind,
}

impl ParseError {
    /// An error of the payload as a whole (no event in it is to blame): what the parser
    /// reports, and what a test compares against.
    ///
    /// ```
    /// use keyvault_invalidator_core::event::{parse_events, ParseError, ParseErrorKind};
    ///
    /// assert_eq!(parse_events(b"[]"), Err(ParseError::payload(ParseErrorKind::EmptyArray)));
    /// assert_eq!(
    ///     parse_events(b"[1]"),
    ///     Err(ParseError::payload(ParseErrorKind::NotAnObject { found: "a number" }).at_index(0)),
    /// );
    /// ```
    pub fn payload(kind: ParseErrorKind) -> Self {
        ParseError {
            index: None,
            event_id: None,
            kind,
        }
    }

    /// The same error, blamed on the event at `index` in the payload.
    pub fn at_index(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }

    /// The same error, naming the offending event's id.
    pub fn for_event_id(mut self, event_id: impl Into<String>) -> Self {
        self.event_id = Some(event_id.into());
        self
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(index) = self.index {
            write!(f, "event {index}")?;
            if let Some(id) = &self.event_id {
                write!(f, " (id \"{}\")", id.escape_debug())?;
            }
            f.write_str(": ")?;
        }
        fmt::Display::fmt(&self.kind, f)
    }
}

impl std::error::Error for ParseError {}

/// What was wrong with a payload or one of its events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// No bytes, or only whitespace and a byte-order mark.
    #[error("the payload is empty")]
    Empty,
    /// Larger than the parser's limit.
    #[error("the payload is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Its size in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Not JSON (or nested deeper than the JSON reader allows).
    #[error("the payload is not valid JSON: {detail}")]
    InvalidJson {
        /// The JSON reader's description and position (it never quotes the payload).
        detail: String,
    },
    /// A JSON array without events.
    #[error("the payload is an empty array")]
    EmptyArray,
    /// An array with more events than the parser's limit.
    #[error("the payload holds {count} events, more than the limit of {limit}")]
    TooManyEvents {
        /// How many elements the array has.
        count: usize,
        /// The configured limit.
        limit: usize,
    },
    /// An event that is not a JSON object.
    #[error("expected a JSON object, found {found}")]
    NotAnObject {
        /// The JSON kind found instead (`array`, `string`, ...).
        found: &'static str,
    },
    /// Neither `specversion` (CloudEvents) nor `eventType` (Event Grid).
    #[error(
        "neither a CloudEvents event (no `specversion`) nor an Event Grid event (no `eventType`)"
    )]
    UnknownEnvelope,
    /// A required envelope field is absent, null or blank.
    #[error("required field `{field}` is missing or blank")]
    MissingField {
        /// The field's name.
        field: &'static str,
    },
    /// A field has the wrong JSON type.
    #[error("field `{field}` must be {expected}, found {found}")]
    InvalidField {
        /// The field's name.
        field: &'static str,
        /// What it should be.
        expected: &'static str,
        /// The JSON kind found instead.
        found: &'static str,
    },
    /// `specversion` is not a CloudEvents version the parser reads (1.0, or the older 0.3).
    #[error("unsupported CloudEvents `specversion` (expected \"1.0\")")]
    UnsupportedSpecVersion,
    /// The envelope breaks a CloudEvents rule the CloudEvents SDK also enforces, such as an
    /// attribute of the wrong type, both `data` and `data_base64`, or invalid base64 data.
    #[error("the CloudEvents envelope is invalid ({detail})")]
    InvalidCloudEvent {
        /// Which rule it breaks, in general terms (never quoting the payload).
        detail: &'static str,
    },
    /// A Key Vault event with no object name in `data.Id`, `data.ObjectName` or `subject`.
    #[error("Key Vault event `{event_type}` names no object (looked in data.Id, data.ObjectName and subject)")]
    MissingObjectName {
        /// The Key Vault event type.
        event_type: &'static str,
    },
    /// A Key Vault event whose object name is not a valid Key Vault name.
    #[error("the object name in `{field}` is invalid: {reason}")]
    InvalidObjectName {
        /// Where the name was read from.
        field: &'static str,
        /// Why it is invalid.
        reason: InvalidObjectName,
    },
}

/// The JSON kind of a value, for error messages that must not quote it.
pub(crate) fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
