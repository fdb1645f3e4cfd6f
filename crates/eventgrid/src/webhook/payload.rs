//! What a POST body is: a validation handshake, a subscription's deletion notice, or events,
//! split one delivery per event.
//!
//! Each event of a batch becomes its own delivery (its exact bytes, sliced from the body, no
//! copy), so the job parses, applies and accounts for each alone: a poison event is
//! dead-lettered alone in the job's statistics while the rest are applied. The request is
//! still answered as a whole, as Event Grid requires (all or none).

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// Event Grid's validation event type (Event Grid schema handshake).
pub(crate) const VALIDATION_EVENT: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";
/// Event Grid's notice that the subscription was deleted.
pub(crate) const DELETION_EVENT: &str = "Microsoft.EventGrid.SubscriptionDeletedEvent";
/// The most events a request may hold: Event Grid's `max-events-per-batch` is at most 5,000.
pub(crate) const MAX_EVENTS: usize = 5_000;

/// What a body holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Payload {
    /// A subscription validation: answer with this code.
    Validation { code: String },
    /// The subscription was deleted: nothing more will come.
    Deletion,
    /// Events to apply, in order.
    Events(Vec<SplitEvent>),
}

/// One event of a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SplitEvent {
    /// The event's own bytes.
    pub(crate) body: Bytes,
    /// Its `id`, when it has a textual one.
    pub(crate) id: Option<String>,
}

/// Why a body is not a payload (answered 400: Event Grid does not retry it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PayloadError {
    #[error("the body is not UTF-8 JSON")]
    NotUtf8,
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body is an empty array")]
    EmptyArray,
    #[error("the body holds {0} events, more than {MAX_EVENTS}")]
    TooManyEvents(usize),
    #[error("the validation event has no data.validationCode")]
    ValidationWithoutCode,
}

/// What is read of each event to route it: never more.
#[derive(Deserialize, Default)]
struct Probe {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default, rename = "eventType")]
    event_type: Option<Value>,
    #[serde(default)]
    data: Option<Value>,
}

impl Probe {
    fn read(raw: &RawValue) -> Self {
        // Not an object (or an odd one): route it as an event; the job's parser says why it
        // is not one.
        serde_json::from_str(raw.get()).unwrap_or_default()
    }

    fn event_type(&self) -> Option<&str> {
        self.event_type.as_ref().and_then(Value::as_str)
    }
}

/// Reads `body`. `event_type_header` is `aeg-event-type`, which names handshakes and deletion
/// notices; the body's own event type is honoured too, for a sender that omits the header.
pub(crate) fn read(body: &Bytes, event_type_header: Option<&str>) -> Result<Payload, PayloadError> {
    let text = std::str::from_utf8(body).map_err(|_| PayloadError::NotUtf8)?;
    let text = text.trim_start_matches('\u{feff}');
    let whole: &RawValue =
        serde_json::from_str(text).map_err(|error| PayloadError::NotJson(error.to_string()))?;
    let elements: Vec<&RawValue> = if whole.get().starts_with('[') {
        serde_json::from_str(whole.get())
            .map_err(|error| PayloadError::NotJson(error.to_string()))?
    } else {
        vec![whole]
    };
    if elements.is_empty() {
        return Err(PayloadError::EmptyArray);
    }
    if elements.len() > MAX_EVENTS {
        return Err(PayloadError::TooManyEvents(elements.len()));
    }
    let probes: Vec<Probe> = elements.iter().map(|raw| Probe::read(raw)).collect();
    let first_type = probes[0].event_type();
    if event_type_header == Some("SubscriptionValidation") || first_type == Some(VALIDATION_EVENT) {
        let code = probes[0]
            .data
            .as_ref()
            .and_then(|data| data.get("validationCode"))
            .and_then(Value::as_str)
            .ok_or(PayloadError::ValidationWithoutCode)?;
        return Ok(Payload::Validation {
            code: code.to_owned(),
        });
    }
    if event_type_header == Some("SubscriptionDeletion") || first_type == Some(DELETION_EVENT) {
        return Ok(Payload::Deletion);
    }
    let single = elements.len() == 1 && !whole.get().starts_with('[');
    let events = elements
        .iter()
        .zip(probes)
        .map(|(raw, probe)| SplitEvent {
            // A lone object is handed over as the whole body, byte for byte; an array's
            // elements as slices of it.
            body: if single {
                body.clone()
            } else {
                body.slice_ref(raw.get().as_bytes())
            },
            id: probe.id.as_ref().and_then(Value::as_str).map(str::to_owned),
        })
        .collect();
    Ok(Payload::Events(events))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(body: &'static [u8]) -> Vec<(String, Option<String>)> {
        match read(&Bytes::from_static(body), Some("Notification")) {
            Ok(Payload::Events(events)) => events
                .into_iter()
                .map(|e| (String::from_utf8(e.body.to_vec()).unwrap(), e.id))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_array_is_split_into_its_elements_byte_for_byte() {
        assert_eq!(
            events(br#"[{"id":"a", "x":1} , {"id":7},"text"]"#),
            vec![
                (r#"{"id":"a", "x":1}"#.to_owned(), Some("a".to_owned())),
                (r#"{"id":7}"#.to_owned(), None),
                (r#""text""#.to_owned(), None),
            ]
        );
    }

    #[test]
    fn a_lone_object_is_handed_over_whole() {
        assert_eq!(
            events(b" {\"id\":\"c1\",\"type\":\"t\"}\n"),
            vec![(
                " {\"id\":\"c1\",\"type\":\"t\"}\n".to_owned(),
                Some("c1".to_owned())
            )]
        );
    }

    #[test]
    fn the_validation_code_is_read_by_header_or_by_event_type() {
        let body = Bytes::from_static(
            br#"[{"id":"v","eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","data":{"validationCode":"512d38b6","validationUrl":"https://x"}}]"#,
        );
        let expected = Payload::Validation {
            code: "512d38b6".to_owned(),
        };
        assert_eq!(read(&body, Some("SubscriptionValidation")), Ok(expected));
        assert!(matches!(read(&body, None), Ok(Payload::Validation { .. })));
        let no_code = Bytes::from_static(br#"[{"id":"v","data":{}}]"#);
        assert_eq!(
            read(&no_code, Some("SubscriptionValidation")),
            Err(PayloadError::ValidationWithoutCode)
        );
    }

    #[test]
    fn unreadable_bodies_are_refused() {
        assert_eq!(
            read(&Bytes::from_static(b"\xff"), None),
            Err(PayloadError::NotUtf8)
        );
        assert!(matches!(
            read(&Bytes::from_static(b"{not json"), None),
            Err(PayloadError::NotJson(_))
        ));
        assert_eq!(
            read(&Bytes::from_static(b" [ ] "), None),
            Err(PayloadError::EmptyArray)
        );
        assert_eq!(
            read(
                &Bytes::from_static(
                    br#"[{"eventType":"Microsoft.EventGrid.SubscriptionDeletedEvent"}]"#
                ),
                None
            ),
            Ok(Payload::Deletion)
        );
    }
}
