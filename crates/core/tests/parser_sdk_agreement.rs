//! Differential test of the CloudEvents reader against `cloudevents-sdk`.
//!
//! The parser reads CloudEvents attributes straight from the envelope (the SDK round trip cost
//! about 5 µs of the 12 µs a documentation sample took). The SDK stays the reference here: for
//! every payload, the parser must answer what the former adapter answered, i.e. normalise the
//! keys, sanitise the envelope for the SDK, let `serde_json::from_value::<cloudevents::Event>`
//! read it, then read the Key Vault data out of the SDK's event. Where the SDK refuses the
//! sanitised envelope, the parser must refuse the event with `InvalidCloudEvent`.
//!
//! The reference is built by reading the SDK's attributes and data back into an Event Grid
//! envelope and parsing that: the Event Grid path shares no CloudEvents code.

use chrono::SecondsFormat;
use cloudevents::AttributesReader;
use keyvault_invalidator_core::event::{
    parse_events, Event, EventSchema, KeyVaultEventType, ParseError, ParseErrorKind,
};
use keyvault_invalidator_testkit::{KeyVaultEventBuilder, TimeStyle};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Map, Value};

const CLOUDEVENTS_SAMPLE: &[u8] = include_bytes!("fixtures/cloudevents-docs-sample.json");
const MAX_ID_IN_ERRORS: usize = 64;
const INVALID_CLOUD_EVENT: ParseErrorKind = ParseErrorKind::InvalidCloudEvent {
    detail: "the data or an attribute does not have the type CloudEvents requires",
};

// ---------------------------------------------------------------------------------------------
// The reference: the former SDK adapter
// ---------------------------------------------------------------------------------------------

/// Keys trimmed and lower-cased; the first spelling of a duplicate (in map order) wins.
fn normalise_keys(object: &Map<String, Value>) -> Map<String, Value> {
    let mut normalised = Map::new();
    for (key, value) in object {
        normalised
            .entry(key.trim().to_ascii_lowercase())
            .or_insert_with(|| value.clone());
    }
    normalised
}

fn trimmed_text(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!text.is_empty()).then_some(text)
}

/// The checks made before the SDK saw the envelope: `None` when they refuse it.
fn spec_version(envelope: &Map<String, Value>) -> Option<&'static str> {
    let version = match envelope.get("specversion")? {
        Value::String(s) => match s.trim() {
            "1.0" => "1.0",
            "0.3" => "0.3",
            _ => return None,
        },
        Value::Number(n) if n.as_f64() == Some(1.0) => "1.0",
        _ => return None,
    };
    let required = |field: &str| envelope.get(field).and_then(trimmed_text).is_some();
    ["id", "type", "source"]
        .into_iter()
        .all(required)
        .then_some(version)
}

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

fn parse_time(text: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(text.trim()).is_ok()
}

/// The former adapter's rewrite of a key-normalised envelope into what the SDK accepts.
fn sanitise_for_sdk(envelope: Map<String, Value>, spec_version: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let data_is_structured = matches!(
        envelope.get("data"),
        Some(Value::Object(_) | Value::Array(_))
    );
    for (key, value) in envelope {
        let value = match (key.as_str(), value) {
            ("specversion", _) => Value::String(spec_version.to_owned()),
            (_, Value::Null) => continue,
            ("time", Value::String(t)) if parse_time(&t) => Value::String(t.trim().to_owned()),
            ("time", _) => continue,
            ("dataschema", Value::String(s)) if url::Url::parse(s.trim()).is_err() => continue,
            ("datacontenttype", _) if data_is_structured => continue,
            (attribute, Value::String(s)) if CLOUD_EVENT_ATTRIBUTES.contains(&attribute) => {
                Value::String(s.trim().to_owned())
            }
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

/// What the SDK's event held, as an Event Grid envelope.
fn sdk_event_as_event_grid(mut event: cloudevents::Event) -> Value {
    let mut envelope = Map::new();
    envelope.insert("id".into(), json!(event.id()));
    envelope.insert("eventType".into(), json!(event.ty()));
    envelope.insert("topic".into(), json!(event.source().to_string()));
    if let Some(subject) = event.subject() {
        envelope.insert("subject".into(), json!(subject));
    }
    if let Some(time) = event.time() {
        let time = time.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        envelope.insert("eventTime".into(), json!(time));
    }
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
    envelope.insert("data".into(), data);
    Value::Object(envelope)
}

fn shown_id(envelope: &Map<String, Value>) -> Option<String> {
    envelope.get("id").and_then(trimmed_text).map(|id| {
        let mut shown: String = id.chars().take(MAX_ID_IN_ERRORS).collect();
        if shown.len() < id.len() {
            shown.push('…');
        }
        shown
    })
}

/// What the former adapter answered for one CloudEvents envelope, or `None` when the checks made
/// before the SDK refuse it (those did not change and `parser.rs` pins them).
fn reference(envelope: &Map<String, Value>) -> Option<Result<Vec<Event>, ParseError>> {
    let normalised = normalise_keys(envelope);
    let version = spec_version(&normalised)?;
    let event_id = shown_id(&normalised);
    let sdk_input = sanitise_for_sdk(normalised, version);
    let Ok(event) = serde_json::from_value::<cloudevents::Event>(Value::Object(sdk_input)) else {
        let error = ParseError::payload(INVALID_CLOUD_EVENT).at_index(0);
        return Some(Err(match event_id {
            Some(id) => error.for_event_id(id),
            None => error,
        }));
    };
    let body = serde_json::to_vec(&sdk_event_as_event_grid(event)).unwrap();
    Some(parse_events(&body).map(|events| {
        events
            .into_iter()
            .map(|mut event| {
                event.schema = EventSchema::CloudEvents;
                event
            })
            .collect()
    }))
}

/// Parses `envelope` and checks the answer against the reference. Returns whether the SDK
/// accepted it (for the tests that want to know the corners were reached).
fn assert_agrees(envelope: &Value) -> Option<bool> {
    let object = envelope.as_object().expect("an envelope object");
    let body = serde_json::to_vec(envelope).unwrap();
    let ours = parse_events(&body);
    match reference(object) {
        Some(expected) => {
            assert_eq!(ours, expected, "envelope: {envelope}");
            Some(!matches!(&expected, Err(e) if e.kind == INVALID_CLOUD_EVENT))
        }
        None => {
            let kind = ours.expect_err("the reference refused it first").kind;
            assert!(
                matches!(
                    kind,
                    ParseErrorKind::MissingField { .. }
                        | ParseErrorKind::InvalidField { .. }
                        | ParseErrorKind::UnsupportedSpecVersion
                        | ParseErrorKind::UnknownEnvelope
                ),
                "{kind:?} for {envelope}"
            );
            None
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn db_password() -> KeyVaultEventBuilder {
    KeyVaultEventBuilder::secret_new_version("db-password")
}

fn with(mut event: Value, key: &str, value: Value) -> Value {
    event.as_object_mut().unwrap().insert(key.to_owned(), value);
    event
}

fn without(mut event: Value, key: &str) -> Value {
    event.as_object_mut().unwrap().remove(key);
    event
}

// ---------------------------------------------------------------------------------------------
// Fixed payloads
// ---------------------------------------------------------------------------------------------

#[test]
fn the_documentation_sample_agrees() {
    let sample: Value = serde_json::from_slice(CLOUDEVENTS_SAMPLE).unwrap();
    assert_eq!(assert_agrees(&sample), Some(true));
}

#[test]
fn every_builder_variant_agrees() {
    for event_type in KeyVaultEventType::ALL {
        let base = KeyVaultEventBuilder::new(event_type, "db-password");
        let variants = [
            base.clone(),
            base.clone().camel_case_data(),
            base.clone().trailing_space_in_keys(),
            base.clone().padded_values(),
            base.clone().without_id_url(),
            base.clone().without_object_name(),
            base.clone().without_subject(),
            base.clone().upper_case_envelope(),
            base.clone().times(TimeStyle::String),
            base.clone().times(TimeStyle::Null),
            base.clone().times(TimeStyle::Absent),
            base.clone().time(" 2019-07-25T03:08:33.1036736+02:00 "),
            base.clone().raw_event_type("Microsoft.Storage.BlobCreated"),
            base.clone().id(" 42 "),
            base.clone()
                .without_id_url()
                .without_object_name()
                .without_subject(),
        ];
        for variant in variants {
            let event = variant.cloud_event();
            assert!(assert_agrees(&event).is_some());
            let v03 = with(event, "specversion", json!("0.3"));
            assert!(assert_agrees(&v03).is_some());
        }
    }
}

/// The corners of the former adapter, each pinned to the outcome it had (`true`: read, `false`:
/// refused as an invalid CloudEvent).
#[test]
fn the_adapters_corners_agree() {
    let data = db_password().data();
    let data_text = data.to_string();
    let event = || db_password().cloud_event();
    let v03 = || with(event(), "specversion", json!("0.3"));
    let base64_only = |text: &str| with(without(event(), "data"), "data_base64", json!(text));
    let cases: Vec<(&str, Value, bool)> = vec![
        ("numeric id", with(event(), "id", json!(42)), true),
        (
            "numeric specversion",
            with(event(), "specversion", json!(1)),
            true,
        ),
        ("numeric subject", with(event(), "subject", json!(7)), true),
        ("blank subject", with(event(), "subject", json!("  ")), true),
        ("object subject", with(event(), "subject", json!({})), true),
        (
            "numeric time",
            with(event(), "time", json!(1_564_016_913)),
            true,
        ),
        ("bad time", with(event(), "time", json!("yesterday")), true),
        (
            "valid dataschema",
            with(event(), "dataschema", json!(" https://x.example/s ")),
            true,
        ),
        (
            "invalid dataschema",
            with(event(), "dataschema", json!("not a url")),
            true,
        ),
        (
            "numeric dataschema (1.0)",
            with(event(), "dataschema", json!(5)),
            false,
        ),
        (
            "numeric dataschema (0.3)",
            with(v03(), "dataschema", json!(5)),
            true,
        ),
        (
            "boolean dataschema",
            with(event(), "dataschema", json!(true)),
            true,
        ),
        ("null data", with(event(), "data", json!(null)), true),
        ("no data", without(event(), "data"), true),
        (
            "data as JSON text",
            with(event(), "data", json!(data_text)),
            true,
        ),
        (
            "data as text twice encoded, JSON type",
            with(event(), "data", json!(json!(data_text).to_string())),
            true,
        ),
        (
            "data as text twice encoded, text type",
            with(
                with(event(), "data", json!(json!(data_text).to_string())),
                "datacontenttype",
                json!("text/plain"),
            ),
            true,
        ),
        ("numeric data", with(event(), "data", json!(5)), true),
        (
            "numeric data, text type",
            with(
                with(event(), "data", json!(5)),
                "datacontenttype",
                json!("text/plain"),
            ),
            false,
        ),
        (
            "numeric data, numeric type",
            with(with(event(), "data", json!(5)), "datacontenttype", json!(3)),
            false,
        ),
        (
            "numeric data, boolean type",
            with(
                with(event(), "data", json!(5)),
                "datacontenttype",
                json!(true),
            ),
            true,
        ),
        (
            "numeric data, +json type",
            with(
                with(event(), "data", json!(5)),
                "datacontenttype",
                json!(" application/cloudevents+json "),
            ),
            true,
        ),
        (
            "object data, text type",
            with(event(), "datacontenttype", json!("text/plain")),
            true,
        ),
        (
            "data_base64",
            base64_only(&base64(data_text.as_bytes())),
            true,
        ),
        (
            "data_base64 of text",
            base64_only(&base64(b"not json")),
            true,
        ),
        (
            "data_base64 of JSON text",
            base64_only(&base64(json!(data_text).to_string().as_bytes())),
            true,
        ),
        ("data_base64 unpadded", base64_only("Zm9vYg"), false),
        (
            "data_base64 padded with spaces",
            base64_only(" e30= "),
            false,
        ),
        (
            "data_base64 invalid",
            base64_only("hunter2!!not-base64"),
            false,
        ),
        (
            "data_base64 a number",
            with(without(event(), "data"), "data_base64", json!(5)),
            false,
        ),
        (
            "data_base64 null beside data",
            with(event(), "data_base64", json!(null)),
            true,
        ),
        (
            "data and data_base64",
            with(event(), "data_base64", json!("e30=")),
            false,
        ),
        (
            "data null and data_base64",
            with(
                with(event(), "data", json!(null)),
                "data_base64",
                json!("e30="),
            ),
            true,
        ),
        (
            "0.3 with data_base64 text",
            with(v03(), "data_base64", json!("e30=")),
            true,
        ),
        (
            "0.3 with data_base64 object",
            with(v03(), "data_base64", json!({})),
            false,
        ),
        (
            "0.3 with data_base64 float",
            with(v03(), "data_base64", json!(1.5)),
            false,
        ),
        (
            "0.3 with valid schemaurl",
            with(v03(), "schemaurl", json!("https://x.example/s")),
            true,
        ),
        (
            "0.3 with padded schemaurl",
            with(v03(), "schemaurl", json!(" https://x.example/s ")),
            true,
        ),
        (
            "0.3 with invalid schemaurl",
            with(v03(), "schemaurl", json!("not a url")),
            false,
        ),
        (
            "0.3 with boolean schemaurl",
            with(v03(), "schemaurl", json!(false)),
            false,
        ),
        (
            "0.3 with integer schemaurl",
            with(v03(), "schemaurl", json!(-1)),
            false,
        ),
        (
            "0.3 with float schemaurl",
            with(v03(), "schemaurl", json!(1.5)),
            true,
        ),
        (
            "1.0 with invalid schemaurl",
            with(event(), "schemaurl", json!("not a url")),
            true,
        ),
        (
            "0.3 with boolean encoding",
            with(v03(), "datacontentencoding", json!(true)),
            false,
        ),
        (
            "0.3 with integer encoding",
            with(v03(), "datacontentencoding", json!(1)),
            false,
        ),
        (
            "0.3 with float encoding",
            with(v03(), "datacontentencoding", json!(1.5)),
            true,
        ),
        (
            "0.3 with base64 encoding on object data",
            with(v03(), "datacontentencoding", json!("base64")),
            false,
        ),
        (
            "0.3 with BASE64 encoding",
            with(
                with(v03(), "datacontentencoding", json!("BASE64")),
                "data",
                json!(base64(data_text.as_bytes())),
            ),
            true,
        ),
        (
            "0.3 with base64 encoding of text",
            with(
                with(v03(), "datacontentencoding", json!("base64")),
                "data",
                json!(base64(b"not json")),
            ),
            false,
        ),
        (
            "0.3 with base64 encoding of text, binary type",
            with(
                with(
                    with(v03(), "datacontentencoding", json!("base64")),
                    "data",
                    json!(base64(b"not json")),
                ),
                "datacontenttype",
                json!("application/octet-stream"),
            ),
            true,
        ),
        (
            "0.3 with padded base64 encoding",
            with(
                with(v03(), "datacontentencoding", json!(" base64")),
                "data",
                json!(base64(data_text.as_bytes())),
            ),
            true,
        ),
        (
            "1.0 with base64 encoding",
            with(event(), "datacontentencoding", json!("base64")),
            true,
        ),
        (
            "0.3 with data_base64 only",
            with(without(v03(), "data"), "data_base64", json!("e30=")),
            true,
        ),
        (
            "extension of every type",
            with(
                with(with(event(), "ext", json!([1])), "e2", json!(1.5)),
                "e3",
                json!(u64::MAX),
            ),
            true,
        ),
    ];
    for (name, envelope, accepted) in cases {
        assert_eq!(assert_agrees(&envelope), Some(accepted), "{name}");
    }
}

/// Several spellings of one attribute: the first in map order wins, for the parser as for the
/// former adapter.
#[test]
fn duplicate_attribute_spellings_agree() {
    let event = db_password().cloud_event();
    let cases = [
        with(
            with(event.clone(), "ID", json!("upper")),
            " id",
            json!("padded"),
        ),
        with(event.clone(), "Subject", json!("other-name")),
        with(
            event.clone(),
            "TYPE",
            json!("Microsoft.KeyVault.KeyExpired"),
        ),
        with(event.clone(), "Data", json!(null)),
        with(event.clone(), " data", json!({"ObjectName": "other-name"})),
        with(event.clone(), "Data_Base64", json!("e30=")),
        with(event.clone(), "SpecVersion", json!("0.3")),
        with(event.clone(), "Time", json!("yesterday")),
    ];
    for envelope in cases {
        assert!(assert_agrees(&envelope).is_some(), "{envelope}");
    }
}

// ---------------------------------------------------------------------------------------------
// Generated payloads
// ---------------------------------------------------------------------------------------------

const ATTRIBUTES: &[&str] = &[
    "specversion",
    "id",
    "type",
    "source",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
    "schemaurl",
    "datacontentencoding",
    "myextension",
];

/// `name`, re-cased where `mask` says so and padded.
fn spelling(name: &str, mask: &[bool], left: &str, right: &str) -> String {
    let recased: String = name
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if mask.get(i).copied().unwrap_or(false) {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    format!("{left}{recased}{right}")
}

fn key() -> impl Strategy<Value = String> {
    (
        prop::sample::select(ATTRIBUTES),
        prop::collection::vec(prop::bool::weighted(0.2), 0..20),
        prop::sample::select(vec!["", "", "", " ", "\t"]),
        prop::sample::select(vec!["", "", "", " "]),
    )
        .prop_map(|(name, mask, left, right)| spelling(name, &mask, left, right))
}

fn values() -> Vec<Value> {
    let data = db_password().data();
    let data_text = data.to_string();
    let key_data = KeyVaultEventBuilder::new(KeyVaultEventType::KeyExpired, "k1")
        .without_id_url()
        .data();
    vec![
        Value::Null,
        json!(true),
        json!(0),
        json!(42),
        json!(-7),
        json!(u64::MAX),
        json!(1.5),
        json!(1.0),
        json!(""),
        json!("  "),
        json!("1.0"),
        json!("0.3"),
        json!(" ce-1 "),
        json!("Microsoft.KeyVault.SecretNewVersionCreated"),
        json!(" microsoft.keyvault.keyexpired "),
        json!("Microsoft.EventGrid.SubscriptionValidationEvent"),
        json!("Microsoft.Storage.BlobCreated"),
        json!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1"),
        json!("db-password"),
        json!(" other-name "),
        json!("db_password"),
        json!("2019-07-25T01:08:33.1036736Z"),
        json!(" 2019-07-25T03:08:33+02:00 "),
        json!("yesterday"),
        json!("https://x.example/schema.json"),
        json!(" https://x.example/s "),
        json!("not a url"),
        json!("urn:x"),
        json!("application/json"),
        json!(" text/plain "),
        json!("application/cloudevents+json"),
        json!("text/json; charset=utf-8"),
        json!("application/octet-stream"),
        json!("base64"),
        json!("Base64"),
        json!(" base64"),
        json!(base64(data_text.as_bytes())),
        json!(base64(json!(data_text).to_string().as_bytes())),
        json!(base64(b"not json")),
        json!(base64(b"[1]")),
        json!("e30="),
        json!("Zm9vYg"),
        json!("hunter2!!not-base64"),
        json!(data_text),
        json!(json!(data_text).to_string()),
        json!(" {\"ObjectName\": \"other-name\"} "),
        json!("[1,2]"),
        json!("42"),
        data,
        key_data,
        json!({}),
        json!([1, 2]),
        json!({"nested": {"deep": [1, 2, 3]}}),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop::sample::select(values())
}

fn base_envelope() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(KeyVaultEventType::ALL.to_vec()),
        prop::sample::select(vec!["1.0", "0.3"]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(event_type, version, camel_case, without_id_url)| {
            let mut builder = KeyVaultEventBuilder::new(event_type, "db-password");
            if camel_case {
                builder = builder.camel_case_data().trailing_space_in_keys();
            }
            if without_id_url {
                builder = builder.without_id_url();
            }
            with(builder.cloud_event(), "specversion", json!(version))
        })
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(3000))]

    /// A valid event with some attributes replaced (under any spelling, so duplicates too) or
    /// removed.
    #[test]
    fn generated_envelopes_agree(
        base in base_envelope(),
        replaced in prop::collection::vec((key(), value()), 0..6),
        removed in prop::collection::vec(prop::sample::select(ATTRIBUTES), 0..2),
    ) {
        let mut envelope = base;
        for name in removed {
            envelope = without(envelope, name);
        }
        for (key, value) in replaced {
            envelope = with(envelope, &key, value);
        }
        assert_agrees(&envelope);
    }
}
