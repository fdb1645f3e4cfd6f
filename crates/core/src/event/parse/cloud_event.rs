//! CloudEvents: the header and data of a structured CloudEvents 1.0 (or 0.3) event.
//!
//! CloudEvents are read straight from the envelope rather than through `cloudevents-sdk`: the
//! SDK round trip (rebuilding the envelope in the shape the SDK accepts, then
//! `serde_json::from_value::<cloudevents::Event>`) measured about 5 µs of the 12 µs the
//! documentation sample took to parse. What that round trip accepted and refused is kept below,
//! attribute by attribute, including its corners (noted where they are); the SDK remains the
//! reference in `tests/parser_sdk_agreement.rs`, which checks that both agree on every payload
//! it generates.

use std::borrow::Cow;

use base64::Engine as _;
use serde_json::Value;

use super::envelope::{parse_time, trim, Envelope, Field, Header};
use crate::event::error::{json_kind, ParseErrorKind};
use crate::event::model::EventSchema;

/// The CloudEvents versions read: 1.0 and the older 0.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpecVersion {
    V1_0,
    V0_3,
}

/// What the SDK refused, in general terms: its own messages may quote values.
const INVALID_CLOUD_EVENT: ParseErrorKind = ParseErrorKind::InvalidCloudEvent {
    detail: "the data or an attribute does not have the type CloudEvents requires",
};

pub(super) fn read_cloud_event<'a>(
    envelope: &Envelope<'a>,
) -> Result<(Header, Cow<'a, Value>), ParseErrorKind> {
    let version = spec_version(envelope.get(Field::SpecVersion))?;
    let id = envelope.required_text(Field::Id, "id")?;
    let event_type = envelope.required_text(Field::Type, "type")?;
    let source = envelope.required_text(Field::Source, "source")?;
    if !typed_attributes_are_valid(envelope, version) {
        return Err(INVALID_CLOUD_EVENT);
    }
    let data = match version {
        SpecVersion::V1_0 => cloud_event_data(envelope),
        SpecVersion::V0_3 => cloud_event_data_v03(envelope),
    }
    .ok_or(INVALID_CLOUD_EVENT)?;
    let header = Header {
        id: id.into_owned(),
        event_type: event_type.into_owned(),
        subject: envelope.text(Field::Subject).map(Cow::into_owned),
        source: Some(source.into_owned()),
        // An unparseable time is dropped, not refused.
        time: envelope
            .get(Field::Time)
            .and_then(Value::as_str)
            .and_then(parse_time),
        schema: EventSchema::CloudEvents,
    };
    Ok((header, data))
}

fn spec_version(value: Option<&Value>) -> Result<SpecVersion, ParseErrorKind> {
    let version = match value {
        Some(Value::String(s)) => trim(s),
        // A number is a common slip (`"specversion": 1.0`).
        Some(Value::Number(n)) if n.as_f64() == Some(1.0) => "1.0",
        Some(other) if !other.is_null() => {
            return Err(ParseErrorKind::InvalidField {
                field: "specversion",
                expected: "a string",
                found: json_kind(other),
            })
        }
        _ => {
            return Err(ParseErrorKind::MissingField {
                field: "specversion",
            })
        }
    };
    match version {
        "1.0" => Ok(SpecVersion::V1_0),
        "0.3" => Ok(SpecVersion::V0_3),
        _ => Err(ParseErrorKind::UnsupportedSpecVersion),
    }
}

/// A present, non-null value: the SDK ignored nulls.
fn non_null(value: Option<&Value>) -> Option<&Value> {
    value.filter(|v| !v.is_null())
}

/// The attributes whose type the SDK enforced, where a wrong one refuses the event (unparseable
/// times, invalid `dataschema` strings and non-scalar extensions are dropped instead).
fn typed_attributes_are_valid(envelope: &Envelope<'_>, version: SpecVersion) -> bool {
    match version {
        // Corner kept from the SDK: a numeric `dataschema` reached it as text, which is not a
        // URL.
        SpecVersion::V1_0 => !matches!(envelope.get(Field::DataSchema), Some(Value::Number(_))),
        // In 0.3, `schemaurl` must be a URL (untrimmed) and `datacontentencoding` a string;
        // `data_base64` is only an extension there, so it must be a string, a boolean or an
        // integer.
        SpecVersion::V0_3 => {
            let schema_url_ok = match non_null(envelope.get(Field::SchemaUrl)) {
                Some(Value::String(url)) => url::Url::parse(url).is_ok(),
                Some(other) => !is_scalar_extension(other),
                None => true,
            };
            let encoding_ok = match non_null(envelope.get(Field::DataContentEncoding)) {
                Some(Value::String(_)) | None => true,
                Some(other) => !is_scalar_extension(other),
            };
            let data_base64_ok = non_null(envelope.get(Field::DataBase64)).is_none_or(|value| {
                matches!(value, Value::String(_)) || is_scalar_extension(value)
            });
            schema_url_ok && encoding_ok && data_base64_ok
        }
    }
}

/// A boolean or a 64-bit signed integer: the non-string extension values the SDK kept (it
/// dropped the others before reading).
fn is_scalar_extension(value: &Value) -> bool {
    match value {
        Value::Bool(_) => true,
        Value::Number(n) => n.is_i64(),
        _ => false,
    }
}

/// Whether the data is JSON, by `datacontenttype`: absent means JSON, and the content type is
/// ignored when the data is an object or an array (it often says `text/plain` wrongly).
fn data_is_json(envelope: &Envelope<'_>) -> bool {
    let structured = matches!(
        envelope.get(Field::Data),
        Some(Value::Object(_) | Value::Array(_))
    );
    match envelope.get(Field::DataContentType) {
        _ if structured => true,
        Some(Value::String(content_type)) => is_json_content_type(trim(content_type)),
        Some(Value::Number(n)) => is_json_content_type(&n.to_string()),
        _ => true,
    }
}

/// The SDK's test for a JSON content type.
fn is_json_content_type(content_type: &str) -> bool {
    content_type.starts_with("application/json")
        || content_type.starts_with("text/json")
        || content_type.ends_with("+json")
}

/// CloudEvents 1.0 data: `data`, or `data_base64` decoded, never both. `None` refuses the event.
fn cloud_event_data<'a>(envelope: &Envelope<'a>) -> Option<Cow<'a, Value>> {
    match (
        non_null(envelope.get(Field::Data)),
        non_null(envelope.get(Field::DataBase64)),
    ) {
        (Some(_), Some(_)) => None,
        (Some(data), None) => plain_data(data, data_is_json(envelope)),
        (None, Some(encoded)) => {
            let bytes = decode_base64(encoded)?;
            Some(Cow::Owned(
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            ))
        }
        (None, None) => Some(Cow::Owned(Value::Null)),
    }
}

/// CloudEvents 0.3 data: `data`, base64-encoded when `datacontentencoding` says so. `None`
/// refuses the event.
fn cloud_event_data_v03<'a>(envelope: &Envelope<'a>) -> Option<Cow<'a, Value>> {
    let Some(data) = non_null(envelope.get(Field::Data)) else {
        return Some(Cow::Owned(Value::Null));
    };
    let is_base64 = matches!(
        envelope.get(Field::DataContentEncoding),
        Some(Value::String(encoding)) if encoding.to_lowercase() == "base64"
    );
    let is_json = data_is_json(envelope);
    if !is_base64 {
        return plain_data(data, is_json);
    }
    let bytes = decode_base64(data)?;
    let value = serde_json::from_slice(&bytes);
    // Unlike 1.0, 0.3 refused base64 data that claims to be JSON and is not.
    Some(Cow::Owned(if is_json {
        value.ok()?
    } else {
        value.unwrap_or(Value::Null)
    }))
}

/// Data given as such: any JSON when the content type is JSON; otherwise text, read as the JSON
/// it holds if it holds any.
fn plain_data(data: &Value, is_json: bool) -> Option<Cow<'_, Value>> {
    match data {
        _ if is_json => Some(Cow::Borrowed(data)),
        Value::String(text) => Some(Cow::Owned(
            serde_json::from_str(text).unwrap_or_else(|_| data.clone()),
        )),
        _ => None,
    }
}

/// Standard base64 with padding, untrimmed, as the SDK decoded it.
fn decode_base64(value: &Value) -> Option<Vec<u8>> {
    let text = value.as_str()?;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}
