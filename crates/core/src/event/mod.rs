//! The Key Vault event model and its tolerant parser.
//!
//! [`parse_events`] takes a message body and returns the [`Event`]s in it. It reads both
//! envelopes Event Grid delivers in (its own schema and CloudEvents 1.0 structured JSON, the
//! latter as `cloudevents-sdk` reads it, checked against the SDK in the tests), a single object
//! or an array with mixed types, and every quirk real payloads show:
//!
//! - keys matched without regard to case or surrounding spaces (`ObjectName `, `objectName`);
//! - values trimmed (`" ee05..."`);
//! - `NBF`/`EXP` as a number, a string of digits or `null`;
//! - vault, name and version taken from the `Id` URL first, then `VaultName`/`ObjectName`/
//!   `Version`, then `subject` and the `topic`/`source` path, with a warning when they disagree;
//! - a UTF-8 byte-order mark, and a body that is a JSON string holding the event.

mod error;
mod model;
mod names;
mod parse;

pub use error::{ParseError, ParseErrorKind};
pub use model::{
    Event, EventKind, EventSchema, KeyVaultEvent, KeyVaultEventType, ObjectType,
    SubscriptionValidation, UnknownEventType, SUBSCRIPTION_DELETED_EVENT,
    SUBSCRIPTION_VALIDATION_EVENT,
};
pub use names::{InvalidObjectName, ObjectName, MAX_OBJECT_NAME_LEN};
pub use parse::{parse_events, EventParser, DEFAULT_MAX_EVENTS, DEFAULT_MAX_PAYLOAD_BYTES};
