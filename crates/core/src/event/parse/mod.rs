//! The tolerant parser: raw message bytes in, typed events out.
//!
//! Real Key Vault deliveries differ from the documentation in small ways (key case, stray
//! spaces, numbers as strings); see the crate docs for the list. The parser accepts all of
//! them and rejects, with a precise error, only what cannot be a usable event.
//!
//! The parsed JSON is only borrowed: values are trimmed and compared in place, and copied only
//! into the returned [`Event`].

mod cloud_event;
mod envelope;
mod key_vault_event;
mod object_url;

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::error::{json_kind, ParseError, ParseErrorKind};
use super::model::{
    Event, EventKind, KeyVaultEventType, SubscriptionValidation, SUBSCRIPTION_DELETED_EVENT,
    SUBSCRIPTION_VALIDATION_EVENT,
};
use cloud_event::read_cloud_event;
use envelope::{read_event_grid_event, trimmed_text, Envelope, Field, Header};
use key_vault_event::read_key_vault;

/// Event Grid caps an event (and a webhook batch) at 1 MB; anything larger is not from it.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Event Grid batches hold at most 5,000 events.
pub const DEFAULT_MAX_EVENTS: usize = 5_000;

/// Parses a message body with the default limits. See [`EventParser::parse`].
///
/// ```
/// use keyvault_invalidator_core::event::{parse_events, KeyVaultEventType};
///
/// let body = br#"{"id":"1","topic":"/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/my-kv",
///   "subject":"db-password","eventType":"Microsoft.KeyVault.SecretNewVersionCreated",
///   "eventTime":"2026-11-28T10:00:00Z","dataVersion":"1","metadataVersion":"1",
///   "data":{"Id":"https://my-kv.vault.azure.net/secrets/db-password/0123abcd","VaultName":"my-kv",
///           "ObjectType":"Secret","ObjectName":"db-password","Version":"0123abcd","NBF":null,"EXP":null}}"#;
/// let events = parse_events(body)?;
/// let kv = events[0].as_key_vault().unwrap();
/// assert_eq!(kv.event_type, KeyVaultEventType::SecretNewVersionCreated);
/// assert_eq!(kv.name.as_str(), "db-password");
/// assert_eq!(kv.vault.as_deref(), Some("my-kv"));
/// assert_eq!(kv.version.as_deref(), Some("0123abcd"));
/// # Ok::<(), keyvault_invalidator_core::event::ParseError>(())
/// ```
pub fn parse_events(body: &[u8]) -> Result<Vec<Event>, ParseError> {
    EventParser::default().parse(body)
}

/// The parser, with its limits. Work is bounded by the payload limit: the JSON reader refuses
/// nesting deeper than 128 levels, and every later step is linear in the payload.
#[derive(Debug, Clone, Copy)]
pub struct EventParser {
    max_payload_bytes: usize,
    max_events: usize,
}

impl Default for EventParser {
    fn default() -> Self {
        EventParser {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_events: DEFAULT_MAX_EVENTS,
        }
    }
}

impl EventParser {
    /// A parser with the default limits (1 MiB, 5,000 events).
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuse payloads larger than this many bytes.
    pub fn max_payload_bytes(mut self, limit: usize) -> Self {
        self.max_payload_bytes = limit;
        self
    }

    /// Refuse arrays with more events than this.
    pub fn max_events(mut self, limit: usize) -> Self {
        self.max_events = limit;
        self
    }

    /// Reads the events in a message body: one event object, or an array of them (the types may
    /// be mixed), in the Event Grid or the CloudEvents 1.0 structured schema. A UTF-8
    /// byte-order mark and surrounding whitespace are ignored, and so is one level of JSON
    /// string wrapping (a body that is a JSON string holding the event).
    ///
    /// Either every event is returned, or the first problem is. Well-formed events of other
    /// types come back as [`EventKind::NotKeyVault`] rather than as errors.
    pub fn parse(&self, body: &[u8]) -> Result<Vec<Event>, ParseError> {
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        if body.len() > self.max_payload_bytes {
            return Err(ParseError::payload(ParseErrorKind::TooLarge {
                size: body.len(),
                limit: self.max_payload_bytes,
            }));
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ParseError::payload(ParseErrorKind::Empty));
        }
        let mut value = read_json(body)?;
        if let Value::String(text) = &value {
            // Some producers serialise the event twice; unwrap once, no deeper.
            let inner = text.trim_start_matches('\u{feff}').trim();
            if inner.starts_with('{') || inner.starts_with('[') {
                value = read_json(inner.as_bytes())?;
            }
        }
        match value {
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(ParseError::payload(ParseErrorKind::EmptyArray));
                }
                if items.len() > self.max_events {
                    return Err(ParseError::payload(ParseErrorKind::TooManyEvents {
                        count: items.len(),
                        limit: self.max_events,
                    }));
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(index, item)| parse_event(index, item))
                    .collect()
            }
            single => Ok(vec![parse_event(0, &single)?]),
        }
    }
}

fn read_json(body: &[u8]) -> Result<Value, ParseError> {
    serde_json::from_slice(body).map_err(|error| {
        // Syntax and end-of-input messages name a position, never the input; other categories
        // cannot occur when reading into `Value`, but stay generic just in case.
        let detail = match error.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                error.to_string()
            }
            _ => format!(
                "unreadable at line {} column {}",
                error.line(),
                error.column()
            ),
        };
        ParseError::payload(ParseErrorKind::InvalidJson { detail })
    })
}

fn parse_event(index: usize, value: &Value) -> Result<Event, ParseError> {
    let Value::Object(object) = value else {
        return Err(ParseError {
            index: Some(index),
            event_id: None,
            kind: ParseErrorKind::NotAnObject {
                found: json_kind(value),
            },
        });
    };
    let envelope = Envelope::read(object);
    // The shortened id is built only when there is an error to put it in.
    let fail = |kind| ParseError {
        index: Some(index),
        event_id: envelope.id_for_errors(),
        kind,
    };
    let parsed = if envelope.has(Field::SpecVersion) {
        read_cloud_event(&envelope)
    } else if envelope.has(Field::EventType) {
        read_event_grid_event(&envelope)
    } else {
        Err(ParseErrorKind::UnknownEnvelope)
    };
    let (header, data) = parsed.map_err(fail)?;
    let data = unwrap_stringified(data);
    let kind = classify(&header, &data).map_err(fail)?;
    Ok(Event {
        id: header.id,
        event_type: header.event_type,
        subject: header.subject,
        source: header.source,
        time: header.time,
        schema: header.schema,
        kind,
    })
}

/// Some publishers put the data object in as a JSON string; read it as the object it holds.
/// Bounded like everything else: the string came out of the size-limited payload.
fn unwrap_stringified(data: Cow<'_, Value>) -> Cow<'_, Value> {
    if let Value::String(text) = data.as_ref() {
        if text.trim_start().starts_with('{') {
            if let Ok(object) = serde_json::from_str(text) {
                return Cow::Owned(object);
            }
        }
    }
    data
}

fn classify(header: &Header, data: &Value) -> Result<EventKind, ParseErrorKind> {
    if let Some(event_type) = KeyVaultEventType::parse(&header.event_type) {
        return read_key_vault(header, event_type, data).map(EventKind::KeyVault);
    }
    let fields = data.as_object();
    let text = |name: &str| {
        fields
            .and_then(|f| lookup(f, name))
            .and_then(trimmed_text)
            .map(Cow::into_owned)
    };
    if header
        .event_type
        .eq_ignore_ascii_case(SUBSCRIPTION_VALIDATION_EVENT)
    {
        return Ok(EventKind::SubscriptionValidation(SubscriptionValidation {
            validation_code: text("validationCode"),
            validation_url: text("validationUrl"),
        }));
    }
    if header
        .event_type
        .eq_ignore_ascii_case(SUBSCRIPTION_DELETED_EVENT)
    {
        return Ok(EventKind::SubscriptionDeleted {
            event_subscription_id: text("eventSubscriptionId"),
        });
    }
    Ok(EventKind::NotKeyVault)
}

/// Looks a field up by name without regard to ASCII case or surrounding spaces in the key; the
/// exact spelling wins, then the first match in map order.
fn lookup<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    fields.get(name).or_else(|| {
        fields
            .iter()
            .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    })
}

/// Parses a body holding one event, for the submodules' unit tests.
#[cfg(test)]
fn event_grid(envelope: Value) -> Event {
    let body = serde_json::to_vec(&envelope).unwrap();
    parse_events(&body).unwrap().remove(0)
}
