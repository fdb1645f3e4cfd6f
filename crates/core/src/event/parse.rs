//! The tolerant parser: raw message bytes in, typed events out.
//!
//! Real Key Vault deliveries differ from the documentation in small ways (key case, stray
//! spaces, numbers as strings); see the crate docs for the list. The parser accepts all of
//! them and rejects, with a precise error, only what cannot be a usable event.

use chrono::{DateTime, TimeZone, Utc};
use cloudevents::AttributesReader;
use serde_json::{Map, Value};

use super::error::{json_kind, ParseError, ParseErrorKind};
use super::model::{
    Event, EventKind, EventSchema, KeyVaultEvent, KeyVaultEventType, ObjectType,
    SubscriptionValidation, SUBSCRIPTION_DELETED_EVENT, SUBSCRIPTION_VALIDATION_EVENT,
};
use super::names::{is_valid_vault_name, ObjectName};

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
                    .into_iter()
                    .enumerate()
                    .map(|(index, item)| parse_event(index, item))
                    .collect()
            }
            single => Ok(vec![parse_event(0, single)?]),
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

fn parse_event(index: usize, value: Value) -> Result<Event, ParseError> {
    let fail = |event_id: Option<String>, kind| ParseError {
        index: Some(index),
        event_id,
        kind,
    };
    let Value::Object(object) = value else {
        return Err(fail(
            None,
            ParseErrorKind::NotAnObject {
                found: json_kind(&value),
            },
        ));
    };
    let envelope = normalise_keys(object);
    let id_for_errors = envelope.get("id").and_then(trimmed_text).map(|id| {
        let mut shown: String = id.chars().take(MAX_ID_IN_ERRORS).collect();
        if shown.len() < id.len() {
            shown.push('…');
        }
        shown
    });
    let parsed = if envelope.contains_key("specversion") {
        read_cloud_event(envelope)
    } else if envelope.contains_key("eventtype") {
        read_event_grid_event(envelope)
    } else {
        Err(ParseErrorKind::UnknownEnvelope)
    };
    let (header, data) = parsed.map_err(|kind| fail(id_for_errors.clone(), kind))?;
    let data = unwrap_stringified(data);
    let kind = classify(&header, &data).map_err(|kind| fail(id_for_errors, kind))?;
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
fn unwrap_stringified(data: Value) -> Value {
    match data {
        Value::String(text) if text.trim_start().starts_with('{') => {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        }
        other => other,
    }
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

/// Lower-cases and trims the keys of an envelope. Both schemas' attribute names are distinct
/// without regard to case, so nothing is lost; the first spelling of a duplicate wins.
fn normalise_keys(object: Map<String, Value>) -> Map<String, Value> {
    let mut normalised = Map::with_capacity(object.len());
    for (key, value) in object {
        normalised
            .entry(key.trim().to_ascii_lowercase())
            .or_insert(value);
    }
    normalised
}

fn read_event_grid_event(
    mut envelope: Map<String, Value>,
) -> Result<(Header, Value), ParseErrorKind> {
    let id = required_text(&envelope, "id")?;
    let event_type = required_text(&envelope, "eventType")?;
    let header = Header {
        id,
        event_type,
        subject: optional_text(&envelope, "subject"),
        source: optional_text(&envelope, "topic"),
        time: optional_text(&envelope, "eventTime").and_then(|t| parse_time(&t)),
        schema: EventSchema::EventGrid,
    };
    let data = envelope.remove("data").unwrap_or(Value::Null);
    Ok((header, data))
}

/// The attributes CloudEvents 1.0 defines; anything else is an extension.
const CLOUD_EVENT_ATTRIBUTES: [&str; 8] = [
    "specversion",
    "id",
    "type",
    "source",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
];

fn read_cloud_event(envelope: Map<String, Value>) -> Result<(Header, Value), ParseErrorKind> {
    // Check what we can name precisely before handing the envelope to the SDK, whose own
    // messages may quote values.
    let spec_version = match envelope.get("specversion") {
        Some(Value::String(s)) => s.trim().to_owned(),
        // A number is a common slip (`"specversion": 1.0`).
        Some(Value::Number(n)) if n.as_f64() == Some(1.0) => "1.0".to_owned(),
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
    if spec_version != "1.0" && spec_version != "0.3" {
        return Err(ParseErrorKind::UnsupportedSpecVersion);
    }
    for field in ["id", "type", "source"] {
        required_text(&envelope, field)?;
    }
    let sdk_input = sanitise_for_sdk(envelope, spec_version);
    let mut event: cloudevents::Event =
        serde_json::from_value(Value::Object(sdk_input)).map_err(|_| {
            ParseErrorKind::InvalidCloudEvent {
                detail: "the data or an attribute does not have the type CloudEvents requires",
            }
        })?;
    let header = Header {
        id: event.id().trim().to_owned(),
        event_type: event.ty().trim().to_owned(),
        subject: event
            .subject()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        source: Some(event.source().trim().to_owned()).filter(|s| !s.is_empty()),
        time: event.time().copied(),
        schema: EventSchema::CloudEvents,
    };
    let (_, _, data) = event.take_data();
    let data = match data {
        Some(cloudevents::Data::Json(value)) => value,
        Some(cloudevents::Data::String(text)) => {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        }
        Some(cloudevents::Data::Binary(bytes)) => {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        }
        None => Value::Null,
    };
    Ok((header, data))
}

/// Rewrites a key-normalised envelope into what `cloudevents-sdk` accepts, dropping only what
/// would make it refuse an otherwise usable event: an unparseable `time` or `dataschema`, a
/// non-JSON content type on JSON data, and extension values that are not scalars.
fn sanitise_for_sdk(envelope: Map<String, Value>, spec_version: String) -> Map<String, Value> {
    let mut out = Map::with_capacity(envelope.len());
    let data_is_structured = matches!(
        envelope.get("data"),
        Some(Value::Object(_) | Value::Array(_))
    );
    for (key, value) in envelope {
        let value = match (key.as_str(), value) {
            ("specversion", _) => Value::String(spec_version.clone()),
            (_, Value::Null) => continue,
            ("time", Value::String(t)) if parse_time(&t).is_some() => {
                Value::String(t.trim().to_owned())
            }
            ("time", _) => continue,
            ("dataschema", Value::String(s)) if url::Url::parse(s.trim()).is_err() => continue,
            ("datacontenttype", _) if data_is_structured => continue,
            (attribute, Value::String(s)) if CLOUD_EVENT_ATTRIBUTES.contains(&attribute) => {
                Value::String(s.trim().to_owned())
            }
            // `required_text` accepted a numeric id; the SDK wants text.
            (attribute, Value::Number(n)) if CLOUD_EVENT_ATTRIBUTES.contains(&attribute) => {
                Value::String(n.to_string())
            }
            (attribute, _) if CLOUD_EVENT_ATTRIBUTES.contains(&attribute) => continue,
            ("data" | "data_base64", value) => value,
            (_, value @ (Value::String(_) | Value::Bool(_))) => value,
            (_, Value::Number(n)) if n.is_i64() => Value::Number(n),
            _ => continue,
        };
        out.insert(key, value);
    }
    out
}

fn classify(header: &Header, data: &Value) -> Result<EventKind, ParseErrorKind> {
    if let Some(event_type) = KeyVaultEventType::parse(&header.event_type) {
        return read_key_vault(header, event_type, data).map(EventKind::KeyVault);
    }
    let fields = data.as_object();
    let text = |name: &str| fields.and_then(|f| lookup(f, name)).and_then(trimmed_text);
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

/// What the `Id` URL says: `https://{vault}.vault.azure.net/{collection}/{name}/{version}`.
#[derive(Default)]
struct ObjectUrl {
    vault: Option<String>,
    object_type: Option<ObjectType>,
    name: Option<String>,
    version: Option<String>,
}

fn read_object_url(text: &str) -> Option<ObjectUrl> {
    let url = url::Url::parse(text).ok()?;
    let host = url.host_str()?;
    let mut parts = ObjectUrl {
        vault: host
            .split_once('.')
            .map(|(label, _)| label.to_owned())
            .filter(|label| is_valid_vault_name(label)),
        ..ObjectUrl::default()
    };
    // Name and version are positional after the collection: an empty segment (`secrets//v1`)
    // means "no name", not "the next segment is the name".
    let mut segments = url.path_segments()?.skip_while(|s| s.is_empty());
    if let Some(collection) = segments.next() {
        parts.object_type = ObjectType::from_collection(collection);
        if parts.object_type.is_some() {
            let mut next = || segments.next().filter(|s| !s.is_empty()).map(str::to_owned);
            parts.name = next();
            parts.version = next();
        }
    }
    Some(parts)
}

/// `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{vault}`.
fn vault_from_resource_path(path: &str) -> Option<String> {
    // Anchored on `Microsoft.KeyVault/vaults`: a resource group may itself be named `vaults`.
    let segments: Vec<&str> = path.split('/').map(str::trim).collect();
    segments
        .windows(3)
        .find(|w| {
            w[0].eq_ignore_ascii_case("Microsoft.KeyVault") && w[1].eq_ignore_ascii_case("vaults")
        })
        .map(|w| w[2].to_owned())
}

fn read_key_vault(
    header: &Header,
    event_type: KeyVaultEventType,
    data: &Value,
) -> Result<KeyVaultEvent, ParseErrorKind> {
    let empty = Map::new();
    let fields = data.as_object().unwrap_or(&empty);
    let text = |name: &str| lookup(fields, name).and_then(trimmed_text);
    let object_id = text("Id");
    let url = object_id
        .as_deref()
        .and_then(read_object_url)
        .unwrap_or_default();
    let object_type = event_type.object_type();
    let warn = |what: &str, chosen: &str, other: &str, other_source: &str| {
        tracing::warn!(
            event_id = %header.id,
            "Key Vault event disagrees with itself on the {what}: using `{chosen}`, {other_source} says `{other}`"
        );
    };

    let vault_candidates = [
        ("data.Id", url.vault.clone()),
        ("data.VaultName", text("VaultName")),
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
            ("data.ObjectName", text("ObjectName")),
            ("data.VaultName", text("VaultName")),
            ("data.Id", vault.clone()),
            ("subject", header.subject.clone()),
        ];
        pick_name(event_type, &candidates)?
    } else {
        if let Some(url_type) = url.object_type.filter(|t| *t != object_type) {
            tracing::warn!(event_id = %header.id, "event type {event_type} names a {object_type}, but data.Id is a {url_type} URL");
        }
        let candidates = [
            ("data.Id", url.name.clone()),
            ("data.ObjectName", text("ObjectName")),
            ("subject", header.subject.clone()),
        ];
        let name = pick_name(event_type, &candidates)?;
        for (source, other) in &candidates {
            if let Some(other) = other {
                if ObjectName::new(other.as_str()).is_ok() && !name.eq_ignore_case(other) {
                    warn("object name", name.as_str(), other, source);
                }
            }
        }
        name
    };

    let version_candidates = [
        ("data.Id", url.version.clone()),
        ("data.Version", text("Version")),
    ];
    let version = first_agreeing(
        &version_candidates,
        is_plausible_version,
        |chosen, other, source| warn("version", chosen, other, source),
    );

    Ok(KeyVaultEvent {
        event_type,
        vault,
        object_type,
        name,
        version,
        object_id,
        not_before: unix_time(header, lookup(fields, "NBF"), "NBF"),
        expires: unix_time(header, lookup(fields, "EXP"), "EXP"),
    })
}

/// The first candidate name present is the one used; if it is invalid the event is refused
/// rather than silently taking a weaker source.
fn pick_name(
    event_type: KeyVaultEventType,
    candidates: &[(&'static str, Option<String>)],
) -> Result<ObjectName, ParseErrorKind> {
    let (field, text) = candidates
        .iter()
        .find_map(|(field, text)| text.as_ref().map(|t| (*field, t)))
        .ok_or(ParseErrorKind::MissingObjectName {
            event_type: event_type.as_str(),
        })?;
    ObjectName::new(text.as_str())
        .map_err(|reason| ParseErrorKind::InvalidObjectName { field, reason })
}

/// The first valid candidate wins; later valid ones that differ (ignoring case) are reported.
fn first_agreeing(
    candidates: &[(&'static str, Option<String>)],
    valid: impl Fn(&str) -> bool,
    mut report: impl FnMut(&str, &str, &str),
) -> Option<String> {
    let mut valid_ones = candidates
        .iter()
        .filter_map(|(source, text)| text.as_deref().filter(|t| valid(t)).map(|t| (*source, t)));
    let (_, chosen) = valid_ones.next()?;
    for (source, other) in valid_ones {
        if !other.eq_ignore_ascii_case(chosen) {
            report(chosen, other, source);
        }
    }
    Some(chosen.to_owned())
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
        Value::String(s) if s.trim().is_empty() => return None,
        Value::String(s) => {
            let s = s.trim();
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

/// Looks a field up by name without regard to ASCII case or surrounding spaces in the key.
fn lookup<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    fields.get(name).or_else(|| {
        fields
            .iter()
            .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    })
}

/// A trimmed, non-empty string; numbers are read as their decimal text (names may be digits).
fn trimmed_text(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!text.is_empty()).then_some(text)
}

fn optional_text(envelope: &Map<String, Value>, field: &str) -> Option<String> {
    envelope
        .get(&field.to_ascii_lowercase())
        .and_then(trimmed_text)
}

fn required_text(
    envelope: &Map<String, Value>,
    field: &'static str,
) -> Result<String, ParseErrorKind> {
    match envelope.get(&field.to_ascii_lowercase()) {
        None | Some(Value::Null) => Err(ParseErrorKind::MissingField { field }),
        Some(value @ (Value::String(_) | Value::Number(_))) => {
            trimmed_text(value).ok_or(ParseErrorKind::MissingField { field })
        }
        Some(other) => Err(ParseErrorKind::InvalidField {
            field,
            expected: "a string",
            found: json_kind(other),
        }),
    }
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
