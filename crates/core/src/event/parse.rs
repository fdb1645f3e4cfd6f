//! The tolerant parser: raw message bytes in, typed events out.
//!
//! Real Key Vault deliveries differ from the documentation in small ways (key case, stray
//! spaces, numbers as strings); see the crate docs for the list. The parser accepts all of
//! them and rejects, with a precise error, only what cannot be a usable event.
//!
//! The parsed JSON is only borrowed: values are trimmed and compared in place, and copied only
//! into the returned [`Event`].

use std::borrow::Cow;

use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Value};

use super::error::{json_kind, ParseError, ParseErrorKind};
use super::model::{
    Event, EventKind, EventSchema, KeyVaultEvent, KeyVaultEventType, ObjectType,
    SubscriptionValidation, SUBSCRIPTION_DELETED_EVENT, SUBSCRIPTION_VALIDATION_EVENT,
};
use super::names::{is_valid_object_name, is_valid_vault_name, ObjectName};

/// Event Grid caps an event (and a webhook batch) at 1 MB; anything larger is not from it.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Event Grid batches hold at most 5,000 events.
pub const DEFAULT_MAX_EVENTS: usize = 5_000;
/// How much of an event id an error message repeats.
const MAX_ID_IN_ERRORS: usize = 64;

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

/// The envelope fields both schemas share.
struct Header {
    id: String,
    event_type: String,
    subject: Option<String>,
    source: Option<String>,
    time: Option<DateTime<Utc>>,
    schema: EventSchema,
}

// ---------------------------------------------------------------------------------------------
// Envelope fields
// ---------------------------------------------------------------------------------------------

/// The envelope attributes the parser reads, in both schemas. Their names are distinct without
/// regard to case, so a key names at most one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Id,
    Subject,
    Data,
    // Event Grid
    EventType,
    Topic,
    EventTime,
    // CloudEvents (1.0, and 0.3's `schemaurl` and `datacontentencoding`)
    SpecVersion,
    Type,
    Source,
    Time,
    DataContentType,
    DataSchema,
    DataBase64,
    SchemaUrl,
    DataContentEncoding,
}

impl Field {
    /// One past the last variant's index: keep `DataContentEncoding` last.
    const COUNT: usize = Field::DataContentEncoding as usize + 1;

    /// The field a trimmed, lower-cased key names.
    fn named(key: &[u8]) -> Option<Field> {
        Some(match key {
            b"id" => Field::Id,
            b"subject" => Field::Subject,
            b"data" => Field::Data,
            b"eventtype" => Field::EventType,
            b"topic" => Field::Topic,
            b"eventtime" => Field::EventTime,
            b"specversion" => Field::SpecVersion,
            b"type" => Field::Type,
            b"source" => Field::Source,
            b"time" => Field::Time,
            b"datacontenttype" => Field::DataContentType,
            b"dataschema" => Field::DataSchema,
            b"data_base64" => Field::DataBase64,
            b"schemaurl" => Field::SchemaUrl,
            b"datacontentencoding" => Field::DataContentEncoding,
            _ => return None,
        })
    }
}

/// The longest field name either table matches, `datacontentencoding`.
const LONGEST_FIELD_NAME: usize = 19;

/// `key` trimmed and lower-cased (ASCII only) into `buffer`, or `None` when it is longer than
/// any field name. Matching the result against lower-case names is one comparison per key,
/// where comparing each key with each name without regard to case was a tenth of a parse.
fn lower_case_key<'b>(key: &str, buffer: &'b mut [u8; LONGEST_FIELD_NAME]) -> Option<&'b [u8]> {
    let key = trim(key).as_bytes();
    let lower = buffer.get_mut(..key.len())?;
    for (to, from) in lower.iter_mut().zip(key) {
        *to = from.to_ascii_lowercase();
    }
    Some(lower)
}

/// `str::trim`, without its Unicode decoding when the text starts and ends with a visible ASCII
/// character, as nearly every key and value does (then there is nothing to trim).
fn trim(text: &str) -> &str {
    match (text.as_bytes().first(), text.as_bytes().last()) {
        (Some(first), Some(last)) if first.is_ascii_graphic() && last.is_ascii_graphic() => text,
        _ => text.trim(),
    }
}

/// The envelope's fields, borrowed from the parsed object, found in one pass over its keys
/// (rather than by rebuilding the object with lower-cased keys, which cost a tenth of a parse).
///
/// Keys are compared trimmed and without regard to ASCII case. Of several spellings of one field
/// (`id` and `ID`), the first in the object's iteration order wins: `serde_json`'s map is sorted
/// by key, so a padded spelling comes before an upper-case one, which comes before a lower-case
/// one. A field present with `null` counts as present (and so still shadows later spellings).
struct Envelope<'a> {
    values: [Option<&'a Value>; Field::COUNT],
}

impl<'a> Envelope<'a> {
    fn read(object: &'a Map<String, Value>) -> Self {
        let mut values = [None; Field::COUNT];
        let mut buffer = [0; LONGEST_FIELD_NAME];
        for (key, value) in object {
            let field = lower_case_key(key, &mut buffer).and_then(Field::named);
            if let Some(field) = field {
                values[field as usize].get_or_insert(value);
            }
        }
        Envelope { values }
    }

    fn get(&self, field: Field) -> Option<&'a Value> {
        self.values[field as usize]
    }

    fn has(&self, field: Field) -> bool {
        self.get(field).is_some()
    }

    /// The event id as error messages show it: at most 64 characters.
    fn id_for_errors(&self) -> Option<String> {
        let id = self.get(Field::Id).and_then(trimmed_text)?;
        let mut shown: String = id.chars().take(MAX_ID_IN_ERRORS).collect();
        if shown.len() < id.len() {
            shown.push('…');
        }
        Some(shown)
    }

    fn text(&self, field: Field) -> Option<Cow<'a, str>> {
        self.get(field).and_then(trimmed_text)
    }

    fn required_text(
        &self,
        field: Field,
        name: &'static str,
    ) -> Result<Cow<'a, str>, ParseErrorKind> {
        match self.get(field) {
            None | Some(Value::Null) => Err(ParseErrorKind::MissingField { field: name }),
            Some(value @ (Value::String(_) | Value::Number(_))) => {
                trimmed_text(value).ok_or(ParseErrorKind::MissingField { field: name })
            }
            Some(other) => Err(ParseErrorKind::InvalidField {
                field: name,
                expected: "a string",
                found: json_kind(other),
            }),
        }
    }

    /// `data`, or `null` when absent.
    fn data(&self) -> Cow<'a, Value> {
        self.get(Field::Data)
            .map_or(Cow::Owned(Value::Null), Cow::Borrowed)
    }
}

fn read_event_grid_event<'a>(
    envelope: &Envelope<'a>,
) -> Result<(Header, Cow<'a, Value>), ParseErrorKind> {
    let id = envelope.required_text(Field::Id, "id")?;
    let event_type = envelope.required_text(Field::EventType, "eventType")?;
    let header = Header {
        id: id.into_owned(),
        event_type: event_type.into_owned(),
        subject: envelope.text(Field::Subject).map(Cow::into_owned),
        source: envelope.text(Field::Topic).map(Cow::into_owned),
        time: envelope.text(Field::EventTime).and_then(|t| parse_time(&t)),
        schema: EventSchema::EventGrid,
    };
    Ok((header, envelope.data()))
}

// ---------------------------------------------------------------------------------------------
// CloudEvents
// ---------------------------------------------------------------------------------------------
//
// CloudEvents are read straight from the envelope rather than through `cloudevents-sdk`: the
// SDK round trip (rebuilding the envelope in the shape the SDK accepts, then
// `serde_json::from_value::<cloudevents::Event>`) measured about 5 µs of the 12 µs the
// documentation sample took to parse. What that round trip accepted and refused is kept below,
// attribute by attribute, including its corners (noted where they are); the SDK remains the
// reference in `tests/parser_sdk_agreement.rs`, which checks that both agree on every payload
// it generates.

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

fn read_cloud_event<'a>(
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

// ---------------------------------------------------------------------------------------------
// Classification and the Key Vault data
// ---------------------------------------------------------------------------------------------

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

/// The fields of Key Vault's `data` the parser reads.
#[derive(Debug, Clone, Copy)]
enum DataField {
    Id,
    VaultName,
    ObjectName,
    Version,
    Nbf,
    Exp,
}

impl DataField {
    /// One past the last variant's index: keep `Exp` last.
    const COUNT: usize = DataField::Exp as usize + 1;

    /// The field a trimmed, lower-cased key names, and the field's exact spelling.
    fn named(key: &[u8]) -> Option<(DataField, &'static str)> {
        Some(match key {
            b"id" => (DataField::Id, "Id"),
            b"vaultname" => (DataField::VaultName, "VaultName"),
            b"objectname" => (DataField::ObjectName, "ObjectName"),
            b"version" => (DataField::Version, "Version"),
            b"nbf" => (DataField::Nbf, "NBF"),
            b"exp" => (DataField::Exp, "EXP"),
            _ => return None,
        })
    }
}

/// Key Vault's `data` fields, found in one pass with [`lookup`]'s rule: the exact spelling
/// first, else the first key in map order that matches trimmed and without regard to case.
struct DataFields<'a> {
    exact: [Option<&'a Value>; DataField::COUNT],
    loose: [Option<&'a Value>; DataField::COUNT],
}

impl<'a> DataFields<'a> {
    fn read(data: &'a Value) -> Self {
        let mut fields = DataFields {
            exact: [None; DataField::COUNT],
            loose: [None; DataField::COUNT],
        };
        let mut buffer = [0; LONGEST_FIELD_NAME];
        for (key, value) in data.as_object().into_iter().flatten() {
            let named = lower_case_key(key, &mut buffer).and_then(DataField::named);
            if let Some((field, exact_spelling)) = named {
                let slots = if key == exact_spelling {
                    &mut fields.exact
                } else {
                    &mut fields.loose
                };
                slots[field as usize].get_or_insert(value);
            }
        }
        fields
    }

    fn get(&self, field: DataField) -> Option<&'a Value> {
        self.exact[field as usize].or(self.loose[field as usize])
    }

    fn text(&self, field: DataField) -> Option<Cow<'a, str>> {
        self.get(field).and_then(trimmed_text)
    }
}

/// What the `Id` URL says: `https://{vault}.vault.azure.net/{collection}/{name}/{version}`.
#[derive(Debug, Default, PartialEq, Eq)]
struct ObjectUrl<'a> {
    vault: Option<Cow<'a, str>>,
    object_type: Option<ObjectType>,
    name: Option<Cow<'a, str>>,
    version: Option<Cow<'a, str>>,
}

impl ObjectUrl<'_> {
    fn into_owned(self) -> ObjectUrl<'static> {
        let owned = |text: Option<Cow<'_, str>>| text.map(|t| Cow::Owned(t.into_owned()));
        ObjectUrl {
            vault: owned(self.vault),
            object_type: self.object_type,
            name: owned(self.name),
            version: owned(self.version),
        }
    }
}

/// Reads an object URL: the plain shape every Key Vault event uses directly, anything else
/// through the `url` crate.
///
/// Why the plain reader exists: `url::Url::parse` was 15% of parsing an Event Grid sample. Why
/// it changes nothing: it accepts only text that `url` would leave exactly as it is (a
/// lower-case `https` scheme, a host of lower-case letter-digit-hyphen labels that is not
/// punycode and cannot be read as an IPv4 address, path segments of letters, digits and `-`, no
/// userinfo, port, query, fragment, percent sign, backslash or dot segment), so host and
/// segments are the ones `url` would give. All other text goes to `url`, as before; a unit
/// test compares both readers on generated URLs.
fn read_object_url(text: &str) -> Option<ObjectUrl<'_>> {
    plain_object_url(text).or_else(|| parsed_object_url(text))
}

/// The longest text the plain reader takes, far below the 4 GB `url` refuses.
const MAX_PLAIN_URL_LEN: usize = 4096;

/// `https://{host}[/{segment}...]` in the plain shape, or `None` to let `url` decide.
fn plain_object_url(text: &str) -> Option<ObjectUrl<'_>> {
    if text.len() > MAX_PLAIN_URL_LEN {
        return None;
    }
    let rest = text.strip_prefix("https://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let plain_path = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'/');
    if !plain_path || !is_plain_host(host) {
        return None;
    }
    // `url` gives `https://host` the path `/`, whose one segment is empty, as `"".split('/')`.
    Some(object_url_parts(host, pieces(path, b'/')))
}

/// Dot-separated labels of lower-case letters, digits and inner single hyphens (so never `xn--`
/// punycode), the last starting with a letter (so never an IPv4 address such as `1.2.3.4`,
/// `0x7f.1` or `10`). `url` keeps such a host exactly as written.
fn is_plain_host(host: &str) -> bool {
    let mut last_label = "";
    for label in pieces(host, b'.') {
        if !is_plain_label(label) {
            return false;
        }
        last_label = label;
    }
    last_label.starts_with(|c: char| c.is_ascii_lowercase())
}

/// A label of lower-case letters, digits and single hyphens inside it.
fn is_plain_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !label.is_empty()
        && !label.starts_with('-')
        && !label.ends_with('-')
        && !bytes.windows(2).any(|pair| pair == b"--")
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Any URL, through the `url` crate.
fn parsed_object_url(text: &str) -> Option<ObjectUrl<'static>> {
    let url = url::Url::parse(text).ok()?;
    let host = url.host_str()?;
    Some(object_url_parts(host, url.path_segments()?).into_owned())
}

fn object_url_parts<'a>(host: &'a str, segments: impl Iterator<Item = &'a str>) -> ObjectUrl<'a> {
    let mut parts = ObjectUrl {
        vault: host
            .split_once('.')
            .map(|(label, _)| label)
            .filter(|label| is_valid_vault_name(label))
            .map(Cow::Borrowed),
        ..ObjectUrl::default()
    };
    // Name and version are positional after the collection: an empty segment (`secrets//v1`)
    // means "no name", not "the next segment is the name".
    let mut segments = segments.skip_while(|s| s.is_empty());
    if let Some(collection) = segments.next() {
        parts.object_type = ObjectType::from_collection(collection);
        if parts.object_type.is_some() {
            let mut next = || segments.next().filter(|s| !s.is_empty()).map(Cow::Borrowed);
            parts.name = next();
            parts.version = next();
        }
    }
    parts
}

/// `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{vault}`.
fn vault_from_resource_path(path: &str) -> Option<&str> {
    // Anchored on `Microsoft.KeyVault/vaults`: a resource group may itself be named `vaults`.
    let (mut second_last, mut last) = ("", "");
    for segment in pieces(path, b'/').map(trim) {
        if second_last.eq_ignore_ascii_case("Microsoft.KeyVault")
            && last.eq_ignore_ascii_case("vaults")
        {
            return Some(segment);
        }
        (second_last, last) = (last, segment);
    }
    None
}

fn read_key_vault(
    header: &Header,
    event_type: KeyVaultEventType,
    data: &Value,
) -> Result<KeyVaultEvent, ParseErrorKind> {
    let fields = DataFields::read(data);
    let object_id = fields.text(DataField::Id);
    let url = object_id
        .as_deref()
        .and_then(read_object_url)
        .unwrap_or_default();
    let vault_name = fields.text(DataField::VaultName);
    let object_name = fields.text(DataField::ObjectName);
    let object_type = event_type.object_type();
    let warn = |what: &str, chosen: &str, other: &str, other_source: &str| {
        tracing::warn!(
            event_id = %header.id,
            "Key Vault event disagrees with itself on the {what}: using `{chosen}`, {other_source} says `{other}`"
        );
    };

    let vault_candidates = [
        ("data.Id", url.vault.as_deref()),
        ("data.VaultName", vault_name.as_deref()),
        (
            "topic/source",
            header.source.as_deref().and_then(vault_from_resource_path),
        ),
    ];
    let vault = first_agreeing(
        &vault_candidates,
        is_valid_vault_name,
        |chosen, other, source| warn("vault", chosen, other, source),
    );

    let name = if object_type == ObjectType::Vault {
        let candidates = [
            ("data.ObjectName", object_name.as_deref()),
            ("data.VaultName", vault_name.as_deref()),
            ("data.Id", vault),
            ("subject", header.subject.as_deref()),
        ];
        pick_name(event_type, &candidates)?
    } else {
        if let Some(url_type) = url.object_type.filter(|t| *t != object_type) {
            tracing::warn!(event_id = %header.id, "event type {event_type} names a {object_type}, but data.Id is a {url_type} URL");
        }
        let candidates = [
            ("data.Id", url.name.as_deref()),
            ("data.ObjectName", object_name.as_deref()),
            ("subject", header.subject.as_deref()),
        ];
        let name = pick_name(event_type, &candidates)?;
        for (source, other) in candidates {
            if let Some(other) = other {
                if !name.eq_ignore_case(other) && is_valid_object_name(other) {
                    warn("object name", name.as_str(), other, source);
                }
            }
        }
        name
    };

    let data_version = fields.text(DataField::Version);
    let version_candidates = [
        ("data.Id", url.version.as_deref()),
        ("data.Version", data_version.as_deref()),
    ];
    let version = first_agreeing(
        &version_candidates,
        is_plausible_version,
        |chosen, other, source| warn("version", chosen, other, source),
    );

    Ok(KeyVaultEvent {
        event_type,
        vault: vault.map(str::to_owned),
        object_type,
        name,
        version: version.map(str::to_owned),
        not_before: unix_time(header, fields.get(DataField::Nbf), "NBF"),
        expires: unix_time(header, fields.get(DataField::Exp), "EXP"),
        object_id: object_id.map(Cow::into_owned),
    })
}

/// The first candidate name present is the one used; if it is invalid the event is refused
/// rather than silently taking a weaker source.
fn pick_name(
    event_type: KeyVaultEventType,
    candidates: &[(&'static str, Option<&str>)],
) -> Result<ObjectName, ParseErrorKind> {
    let (field, text) = candidates
        .iter()
        .find_map(|(field, text)| text.map(|t| (*field, t)))
        .ok_or(ParseErrorKind::MissingObjectName {
            event_type: event_type.as_str(),
        })?;
    ObjectName::new(text).map_err(|reason| ParseErrorKind::InvalidObjectName { field, reason })
}

/// The first valid candidate wins; later valid ones that differ (ignoring case) are reported.
fn first_agreeing<'a>(
    candidates: &[(&'static str, Option<&'a str>)],
    valid: impl Fn(&str) -> bool,
    mut report: impl FnMut(&str, &str, &str),
) -> Option<&'a str> {
    let mut valid_ones = candidates
        .iter()
        .filter_map(|(source, text)| text.filter(|t| valid(t)).map(|t| (*source, t)));
    let (_, chosen) = valid_ones.next()?;
    for (source, other) in valid_ones {
        if !other.eq_ignore_ascii_case(chosen) {
            report(chosen, other, source);
        }
    }
    Some(chosen)
}

/// Key Vault versions are 32 hex digits; accept any short alphanumeric token.
fn is_plausible_version(version: &str) -> bool {
    (1..=64).contains(&version.len()) && version.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `NBF`/`EXP`: Unix seconds as a number or a string of digits, or null. Anything else is
/// ignored with a warning: a bad expiry must not cost the invalidation.
fn unix_time(header: &Header, value: Option<&Value>, field: &str) -> Option<DateTime<Utc>> {
    let seconds = match value? {
        Value::Null => return None,
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
        Value::String(s) if trim(s).is_empty() => return None,
        Value::String(s) => {
            let s = trim(s);
            s.parse::<i64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(|f| f as i64)
            })
        }
        _ => None,
    };
    let time = seconds.and_then(|s| Utc.timestamp_opt(s, 0).single());
    if time.is_none() {
        tracing::warn!(event_id = %header.id, "ignoring data.{field}: not a Unix time in seconds");
    }
    time
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

/// `text.split(separator)` for an ASCII separator. `str::split` finds each piece's end with
/// `memchr`, whose set-up costs more than scanning the few bytes of a path segment or host label
/// (splitting was 7% of a parse).
fn pieces(text: &str, separator: u8) -> impl Iterator<Item = &str> {
    debug_assert!(separator.is_ascii());
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.bytes().position(|b| b == separator) {
            // An ASCII byte is a whole character: both slices end on character boundaries.
            Some(end) => {
                rest = Some(&current[end + 1..]);
                Some(&current[..end])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// A trimmed, non-empty string; numbers are read as their decimal text (names may be digits).
fn trimmed_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(s) => Some(trim(s)).filter(|t| !t.is_empty()).map(Cow::Borrowed),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(trim(text))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::test_runner::Config;
    use serde_json::json;

    use super::*;

    const TOPIC: &str =
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/topic-kv";

    fn event_grid(envelope: Value) -> Event {
        let body = serde_json::to_vec(&envelope).unwrap();
        parse_events(&body).unwrap().remove(0)
    }

    /// Envelope keys are compared trimmed and without regard to case; of several spellings of one
    /// key, the first in the map's order (sorted: space < upper case < lower case) wins.
    #[test]
    fn duplicate_envelope_keys_take_the_first_spelling_in_map_order() {
        let event = event_grid(json!({
            "id": "lower",
            "ID": "upper",
            " id": "padded",
            "eventType": "Microsoft.KeyVault.SecretNewVersionCreated",
            "EVENTTYPE": "Microsoft.KeyVault.KeyExpired",
            "subject": "lower-subject",
            "Subject ": "padded-subject",
            "topic": TOPIC,
            "Topic": null,
            "data": {"ObjectName": "from-lower-data"},
            "DATA": {"ObjectName": "from-upper-data"},
        }));
        assert_eq!(event.id, "padded");
        assert_eq!(event.event_type, "Microsoft.KeyVault.KeyExpired");
        assert_eq!(event.subject.as_deref(), Some("padded-subject"));
        assert_eq!(event.source, None);
        let kv = event.as_key_vault().unwrap();
        assert_eq!(kv.name.as_str(), "from-upper-data");
        assert_eq!(kv.vault, None);
    }

    /// Data keys: the exact spelling wins; without it, the first spelling in map order.
    #[test]
    fn duplicate_data_keys_prefer_the_exact_spelling_then_map_order() {
        let event = event_grid(json!({
            "id": "1",
            "eventType": "Microsoft.KeyVault.SecretNewVersionCreated",
            "data": {
                "OBJECTNAME": "upper-name",
                "ObjectName": "exact-name",
                "VAULTNAME ": "upper-kv",
                " vaultname": "padded-kv",
                "Version": "v1",
                "version": "v2",
            },
        }));
        let kv = event.as_key_vault().unwrap();
        assert_eq!(kv.name.as_str(), "exact-name");
        assert_eq!(kv.vault.as_deref(), Some("padded-kv"));
        assert_eq!(kv.version.as_deref(), Some("v1"));
    }

    /// Every field name fits the key buffer and is found whatever its case and padding.
    #[test]
    fn every_field_name_is_found_trimmed_and_without_regard_to_case() {
        let envelope = [
            ("id", Field::Id),
            ("subject", Field::Subject),
            ("data", Field::Data),
            ("eventType", Field::EventType),
            ("topic", Field::Topic),
            ("eventTime", Field::EventTime),
            ("specversion", Field::SpecVersion),
            ("type", Field::Type),
            ("source", Field::Source),
            ("time", Field::Time),
            ("datacontenttype", Field::DataContentType),
            ("dataschema", Field::DataSchema),
            ("data_base64", Field::DataBase64),
            ("schemaurl", Field::SchemaUrl),
            ("datacontentencoding", Field::DataContentEncoding),
        ];
        assert_eq!(envelope.len(), Field::COUNT);
        let mut buffer = [0; LONGEST_FIELD_NAME];
        for (name, field) in envelope {
            for key in [name.to_owned(), format!(" {} ", name.to_ascii_uppercase())] {
                let found = lower_case_key(&key, &mut buffer).and_then(Field::named);
                assert_eq!(found, Some(field), "{key:?}");
            }
        }
        let data = ["Id", "VaultName", "ObjectName", "Version", "NBF", "EXP"];
        assert_eq!(data.len(), DataField::COUNT);
        for name in data {
            let key = format!("{} ", name.to_ascii_lowercase());
            let found = lower_case_key(&key, &mut buffer).and_then(DataField::named);
            assert_eq!(found.map(|(_, exact)| exact), Some(name), "{key:?}");
        }
        assert_eq!(lower_case_key("datacontentencodingX", &mut buffer), None);
    }

    // -----------------------------------------------------------------------------------------
    // The plain object URL reader against `url`
    // -----------------------------------------------------------------------------------------

    #[test]
    fn plain_object_urls_are_read_without_the_url_crate() {
        let plain = [
            "https://sample-kv.vault.azure.net/secrets/newsecret/ee059b2bb5bc48398a53b168c6cdcb10",
            "https://sample-kv.vault.azure.net/keys/k1",
            "https://sample-kv.vault.azure.net/Certificates/C-1/v1/extra",
            "https://sample-kv.vault.azure.net",
            "https://sample-kv.vault.azure.net/",
            "https://sample-kv.vault.azure.net//secrets/x",
            "https://sample-kv.vault.azure.net/secrets//v1",
            "https://sample-kv.vault.azure.net/secrets/x/",
            "https://kv.example/other/x",
            "https://a1.b-c.d",
        ];
        for text in plain {
            let fast = plain_object_url(text);
            assert!(fast.is_some(), "{text}");
            assert_eq!(fast, parsed_object_url(text), "{text}");
        }
    }

    #[test]
    fn unusual_object_urls_are_left_to_the_url_crate() {
        let unusual = [
            "HTTPS://sample-kv.vault.azure.net/secrets/x",
            "http://sample-kv.vault.azure.net/secrets/x",
            "https://Sample-KV.vault.azure.net/secrets/x",
            "https://sample-kv.vault.azure.net:443/secrets/x",
            "https://user@sample-kv.vault.azure.net/secrets/x",
            "https://sample-kv.vault.azure.net/secrets/x?api-version=7.4",
            "https://sample-kv.vault.azure.net/secrets/x#v",
            "https://sample-kv.vault.azure.net/secrets/%78",
            "https://sample-kv.vault.azure.net/secrets/./x",
            "https://sample-kv.vault.azure.net/secrets/../keys/x",
            "https://sample-kv.vault.azure.net\\secrets\\x",
            "https://sample-kv.vault.azure.net/secrets/db_password",
            "https://sample-kv.vault.azure.net/secrets/na\tme",
            "https://xn--nxasmq6b.example/secrets/x",
            "https://a--b.example/secrets/x",
            "https://-kv.example/secrets/x",
            "https://kv-.example/secrets/x",
            "https://sample-kv.vault.azure.net./secrets/x",
            "https://sample-kv..net/secrets/x",
            "https://1.2.3.4/secrets/x",
            "https://kv.0x7f/secrets/x",
            "https://kv.123/secrets/x",
            "https://[::1]/secrets/x",
            "https://ſample-kv.vault.azure.net/secrets/x",
            " https://sample-kv.vault.azure.net/secrets/x",
            "https://",
            "https:///secrets/x",
        ];
        for text in unusual {
            assert_eq!(plain_object_url(text), None, "{text}");
            assert_eq!(read_object_url(text), parsed_object_url(text), "{text}");
        }
    }

    fn config(cases: u32) -> Config {
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        }
    }

    /// Host labels, plain and not: case, punycode, hyphens, numbers (IPv4 in decimal, octal and
    /// hex), IPv6, percent signs, non-ASCII that IDNA maps, empty labels.
    const LABELS: &[&str] = &[
        "sample-kv",
        "kv1",
        "vault",
        "azure",
        "net",
        "a",
        "z9",
        "my-kv-2",
        "KV",
        "Kv",
        "xn--nxasmq6b",
        "xn--a",
        "xn--",
        "-kv",
        "kv-",
        "a--b",
        "ab-c",
        "1",
        "09",
        "0x7f",
        "0X1",
        "123",
        "1a",
        "0",
        "",
        "k_v",
        "k%41",
        "%",
        "[::1]",
        "[",
        "ſ",
        "ß",
        "é",
        "\u{ad}",
        "ｋｖ",
        "k v",
        "k\tv",
        "k:1",
        "k@v",
        "localhost",
    ];

    /// Path segments, plain and not: dot segments (also percent-encoded), characters `url`
    /// encodes, removes or treats as delimiters.
    const SEGMENTS: &[&str] = &[
        "secrets",
        "keys",
        "certificates",
        "Secrets",
        "KEYS",
        "other",
        "",
        "name",
        "db-password",
        "Db-Password-2",
        "ee059b2bb5bc48398a53b168c6cdcb10",
        ".",
        "..",
        "%2e",
        "%2E%2e",
        ".x",
        "a b",
        "a%20b",
        "x?y",
        "x#y",
        "é",
        "\\",
        "a\\b",
        "db_password",
        "\t",
        "a\nb",
        ";",
        "@",
        "a:b",
        "~",
        "{x}",
        "\"",
    ];

    fn object_url_text() -> impl Strategy<Value = String> {
        let scheme = prop::sample::select(vec![
            "https://",
            "https://",
            "https://",
            "HTTPS://",
            "Https://",
            "http://",
            "https:/",
            "https:///",
            "https:\\\\",
            "https://user@",
            "https://u:p@",
            "ftp://",
            "",
        ]);
        let host = prop::collection::vec(prop::sample::select(LABELS), 1..5);
        let port = prop::sample::select(vec!["", "", "", ":443", ":8080", ":"]);
        let path = prop::collection::vec(
            (
                prop::sample::select(vec!["/", "/", "/", "\\", "//"]),
                prop::sample::select(SEGMENTS),
            ),
            0..5,
        );
        let suffix = prop::sample::select(vec!["", "", "", "/", "?q=1", "#f", "?", "#", " "]);
        (scheme, host, port, path, suffix).prop_map(|(scheme, host, port, path, suffix)| {
            let path: String = path
                .into_iter()
                .map(|(sep, seg)| format!("{sep}{seg}"))
                .collect();
            format!("{scheme}{}{port}{path}{suffix}", host.join("."))
        })
    }

    fn plain_object_url_text() -> impl Strategy<Value = String> {
        let label = "[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?";
        let host = (prop::collection::vec(label, 0..3), "[a-z][a-z0-9]{0,4}")
            .prop_map(|(labels, last)| {
                labels
                    .into_iter()
                    .chain([last])
                    .collect::<Vec<_>>()
                    .join(".")
            })
            .prop_filter("no double hyphen", |host| !host.contains("--"));
        let path = prop::collection::vec("[a-zA-Z0-9-]{0,8}", 0..5);
        (host, path).prop_map(|(host, path)| {
            let path: String = path.iter().map(|segment| format!("/{segment}")).collect();
            format!("https://{host}{path}")
        })
    }

    proptest! {
        #![proptest_config(config(4096))]

        /// Whatever the text, reading it gives what `url` gives.
        #[test]
        fn object_urls_read_as_the_url_crate_reads_them(text in object_url_text()) {
            prop_assert_eq!(read_object_url(&text), parsed_object_url(&text), "{}", text);
        }

        #[test]
        fn any_text_reads_as_the_url_crate_reads_it(
            text in prop_oneof![
                "https://[a-zA-Z0-9:/.%@#?\\\\_ \\t\\[\\]-]{0,40}",
                ".{0,60}",
            ]
        ) {
            prop_assert_eq!(read_object_url(&text), parsed_object_url(&text), "{}", text);
        }

        /// The plain shape takes the fast path, and gives what `url` gives.
        #[test]
        fn plain_object_urls_take_the_fast_path(text in plain_object_url_text()) {
            let fast = plain_object_url(&text);
            prop_assert!(fast.is_some(), "{}", text);
            prop_assert_eq!(fast, parsed_object_url(&text), "{}", text);
        }
    }
}
