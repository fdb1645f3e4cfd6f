//! Property tests of the Key Vault event parser: it never panics on any input, it stays within
//! the JSON reader's depth limit on hostile nesting, and the quirks it tolerates (key case, key
//! and value padding, number-or-string times) do not change what it reads.

use chrono::{DateTime, TimeDelta, Utc};
use keyvault_invalidator_core::event::{
    parse_events, EventKind, EventParser, EventSchema, InvalidObjectName, KeyVaultEventType,
    ParseError, ParseErrorKind,
};
use keyvault_invalidator_testkit::events::to_bytes;
use keyvault_invalidator_testkit::KeyVaultEventBuilder;
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Map, Value};

const EVENT_ID: &str = "00eccf70-95a7-4e7c-8299-2eb17ee9ad64";
const VERSION: &str = "ee059b2bb5bc48398a53b168c6cdcb10";

fn config(cases: u32) -> Config {
    Config {
        cases,
        // Keep the source tree clean: a failure prints its minimal input anyway.
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// Keys the parser looks at, so that random objects reach its deeper paths.
const INTERESTING_KEYS: &[&str] = &[
    "id",
    "eventType",
    "type",
    "source",
    "topic",
    "subject",
    "specversion",
    "time",
    "eventTime",
    "data",
    "data_base64",
    "datacontenttype",
    "dataschema",
    "Id",
    "VaultName",
    "ObjectName",
    "ObjectType",
    "Version",
    "NBF",
    "EXP",
    "validationCode",
    "eventSubscriptionId",
];

/// Values the parser gives meaning to.
const INTERESTING_STRINGS: &[&str] = &[
    "Microsoft.KeyVault.SecretNewVersionCreated",
    "Microsoft.KeyVault.VaultAccessPolicyChanged",
    "Microsoft.KeyVault.KeyExpired",
    "Microsoft.EventGrid.SubscriptionValidationEvent",
    "Microsoft.EventGrid.SubscriptionDeletedEvent",
    "1.0",
    "0.3",
    "",
    " ",
    "db-password",
    "db_password",
    "https://sample-kv.vault.azure.net/secrets/db-password/ee059b2bb5bc48398a53b168c6cdcb10",
    "https://sample-kv.vault.azure.net/",
    "https://sample-kv.vault.azure.net/secrets//x",
    "https://[::1]/keys/k",
    "/subscriptions/s/resourceGroups/vaults/providers/Microsoft.KeyVault/vaults/kv1",
    "/vaults/",
    "2019-07-25T01:08:33.1036736Z",
    "1559081980",
    "-99999999999999999999",
    "1e400",
    "e30=",
    "not base64!",
    "application/json",
    "text/plain",
    "\u{feff}{\"id\":1}",
    "[[[[",
];

fn padding() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec![' ', '\t', '\n', '\r']), 0..3)
        .prop_map(|chars| chars.into_iter().collect())
}

/// `text` with each ASCII letter's case flipped where `mask` says so.
fn recase(text: &str, mask: &[bool]) -> String {
    text.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask.get(i).copied().unwrap_or(false) {
                if c.is_ascii_lowercase() {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            } else {
                c
            }
        })
        .collect()
}

/// An interesting key, re-cased and padded, or any short string.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (
            prop::sample::select(INTERESTING_KEYS),
            prop::collection::vec(any::<bool>(), 0..20),
            padding(),
            padding()
        )
            .prop_map(|(key, mask, left, right)| format!("{left}{}{right}", recase(key, &mask))),
        1 => ".{0,12}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        prop::sample::select(INTERESTING_STRINGS).prop_map(Value::from),
        ".{0,24}".prop_map(Value::String),
    ]
}

/// Any JSON value, a few levels deep, biased towards what the parser looks at.
fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

fn event_type() -> impl Strategy<Value = KeyVaultEventType> {
    prop::sample::select(KeyVaultEventType::ALL.to_vec())
}

fn schema() -> impl Strategy<Value = EventSchema> {
    prop_oneof![Just(EventSchema::EventGrid), Just(EventSchema::CloudEvents)]
}

fn build(builder: &KeyVaultEventBuilder, schema: EventSchema) -> Value {
    match schema {
        EventSchema::EventGrid => builder.event_grid(),
        EventSchema::CloudEvents => builder.cloud_event(),
        other => unreachable!("no builder for {other:?}"),
    }
}

/// A valid payload to mutate.
fn valid_payload() -> impl Strategy<Value = Vec<u8>> {
    (event_type(), schema(), any::<bool>()).prop_map(|(event_type, schema, in_array)| {
        let event = build(
            &KeyVaultEventBuilder::new(event_type, "db-password"),
            schema,
        );
        if in_array {
            to_bytes(&json!([event]))
        } else {
            to_bytes(&event)
        }
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, byte: u8 },
    Insert { at: usize, byte: u8 },
    Remove { at: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Flip { at, byte }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Remove { at }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        let len = bytes.len();
        match *mutation {
            Mutation::Flip { at, byte } if len > 0 => bytes[at % len] = byte,
            Mutation::Insert { at, byte } => bytes.insert(at % (len + 1), byte),
            Mutation::Remove { at } if len > 0 => {
                bytes.remove(at % len);
            }
            Mutation::Truncate { at } => bytes.truncate(at % (len + 1)),
            _ => {}
        }
    }
    bytes
}

/// Whether a JSON object has a key that, trimmed and without regard to case, is one of `names`.
fn has_key(value: &Value, names: &[&str]) -> bool {
    value.as_object().is_some_and(|object| {
        object
            .keys()
            .any(|key| names.iter().any(|n| key.trim().eq_ignore_ascii_case(n)))
    })
}

/// What Unix seconds mean, computed without the parser's own conversion.
fn unix(seconds: i64) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::UNIX_EPOCH.checked_add_signed(TimeDelta::try_seconds(seconds)?)
}

/// Parses, checks that parsing again gives the same answer, and that an error's message is not
/// empty. Returns the first answer.
fn parse_checked(body: &[u8]) -> Result<Vec<keyvault_invalidator_core::Event>, ParseError> {
    let first = parse_events(body);
    assert_eq!(first, parse_events(body), "the parser is not deterministic");
    if let Err(error) = &first {
        assert!(!error.to_string().is_empty());
    }
    first
}

// ---------------------------------------------------------------------------------------------
// Never panics
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_checked(&bytes);
        // The same bytes behind a byte-order mark, in an array and as a JSON-ish prefix.
        let mut with_bom = b"\xEF\xBB\xBF".to_vec();
        with_bom.extend_from_slice(&bytes);
        let _ = parse_checked(&with_bom);
        let mut in_array = b"[".to_vec();
        in_array.extend_from_slice(&bytes);
        let _ = parse_checked(&in_array);
    }

    #[test]
    fn mutated_valid_payloads_never_panic(
        payload in valid_payload(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let _ = parse_checked(&mutate(payload, &mutations));
    }

    #[test]
    fn arbitrary_json_never_panics_and_keeps_one_event_per_element(value in json_value()) {
        let result = parse_checked(&to_bytes(&value));
        // A top-level string may hold another payload; only objects and arrays are checked.
        let count = match &value {
            Value::Array(items) => Some(items.len()),
            Value::Object(_) => Some(1),
            _ => None,
        };
        match (count, &result) {
            (Some(0), _) => prop_assert_eq!(
                &result,
                &Err(ParseError::payload(ParseErrorKind::EmptyArray))
            ),
            (Some(count), Ok(events)) => prop_assert_eq!(events.len(), count),
            (Some(count), Err(error)) => {
                let index = error.index.expect("a valid JSON payload fails on an event");
                prop_assert!(index < count, "index {} of {}", index, count);
            }
            (None, _) => {}
        }
        if let Ok(events) = &result {
            for event in events {
                prop_assert!(!event.id.is_empty());
                prop_assert_eq!(event.id.trim(), event.id.as_str());
                prop_assert!(!event.event_type.is_empty());
                prop_assert_eq!(event.event_type.trim(), event.event_type.as_str());
            }
        }
        // The same object or array wrapped in a JSON string is read the same way.
        if count.is_some() {
            let wrapped = to_bytes(&Value::String(value.to_string()));
            prop_assert_eq!(parse_checked(&wrapped), result);
        }
    }

    #[test]
    fn arbitrary_data_in_a_valid_envelope_never_panics(
        event_type in event_type(),
        schema in schema(),
        data in json_value(),
    ) {
        let mut event = build(&KeyVaultEventBuilder::new(event_type, "db-password"), schema);
        event["data"] = data.clone();
        let result = parse_checked(&to_bytes(&event));
        let is_vault_event = event_type == KeyVaultEventType::VaultAccessPolicyChanged;
        // Where nothing in `data` can name the object or the vault, the name and the vault come
        // from the envelope: the subject (the vault, for a vault event) and the topic/source.
        if !has_key(&data, &["Id", "ObjectName", "VaultName"]) {
            let events = match result {
                Ok(events) => events,
                Err(error) => return Err(TestCaseError::fail(format!("refused: {error}"))),
            };
            prop_assert_eq!(events.len(), 1);
            prop_assert_eq!(events[0].schema, schema);
            prop_assert_eq!(events[0].id.as_str(), EVENT_ID);
            let kv = events[0].as_key_vault().expect("a Key Vault event");
            prop_assert_eq!(kv.event_type, event_type);
            prop_assert_eq!(kv.object_type, event_type.object_type());
            prop_assert_eq!(kv.vault.as_deref(), Some("sample-kv"));
            prop_assert_eq!(
                kv.name.as_str(),
                if is_vault_event { "sample-kv" } else { "db-password" }
            );
            prop_assert_eq!(kv.object_id.as_deref(), None);
            if !has_key(&data, &["Version"]) {
                prop_assert_eq!(kv.version.as_deref(), None);
            }
            if !has_key(&data, &["NBF"]) {
                prop_assert_eq!(kv.not_before, None);
            }
            if !has_key(&data, &["EXP"]) {
                prop_assert_eq!(kv.expires, None);
            }
        } else if let Ok(events) = result {
            prop_assert_eq!(events.len(), 1);
            let kv = events[0].as_key_vault().expect("a Key Vault event");
            prop_assert_eq!(kv.event_type, event_type);
        }
    }

    #[test]
    fn arbitrary_envelope_fields_never_panic(
        event_type in event_type(),
        schema in schema(),
        overrides in prop::collection::vec((key(), json_value()), 1..4),
    ) {
        let mut event = build(&KeyVaultEventBuilder::new(event_type, "db-password"), schema);
        for (key, value) in overrides {
            event[key] = value;
        }
        if let Ok(events) = parse_checked(&to_bytes(&event)) {
            prop_assert_eq!(events.len(), 1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile nesting
// ---------------------------------------------------------------------------------------------

fn assert_invalid_json(result: Result<Vec<keyvault_invalidator_core::Event>, ParseError>) {
    match result {
        Err(ParseError {
            index: None,
            event_id: None,
            kind: ParseErrorKind::InvalidJson { detail },
            ..
        }) => assert!(
            detail.starts_with("recursion limit exceeded"),
            "unexpected detail {detail:?}"
        ),
        other => panic!("expected InvalidJson, got {other:?}"),
    }
}

#[test]
fn a_hundred_thousand_open_brackets_are_refused_without_overflowing_the_stack() {
    let depth = 100_000;
    assert_invalid_json(parse_events(&vec![b'['; depth]));
    let mut closed = vec![b'['; depth];
    closed.extend(std::iter::repeat_n(b']', depth));
    assert_invalid_json(parse_events(&closed));
}

#[test]
fn a_hundred_thousand_nested_objects_are_refused_without_overflowing_the_stack() {
    let depth = 100_000;
    let mut body = br#"{"a":"#.repeat(depth);
    body.push(b'1');
    body.extend(std::iter::repeat_n(b'}', depth));
    assert_invalid_json(parse_events(&body));
}

#[test]
fn deep_nesting_inside_a_valid_event_is_refused() {
    let depth = 100_000;
    let body = format!(
        r#"{{"id":"1","eventType":"Microsoft.KeyVault.SecretNewVersionCreated","subject":"db-password","data":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert_invalid_json(parse_events(body.as_bytes()));
}

#[test]
fn deep_nesting_inside_a_json_string_is_refused() {
    let depth = 100_000;
    let inner = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let body = to_bytes(&Value::String(inner));
    assert_invalid_json(parse_events(&body));
}

#[test]
fn deep_nesting_is_refused_with_a_tiny_stack() {
    // The JSON reader's depth limit, not the size of the test thread's stack, keeps the parser
    // safe: run it on a 1 MiB stack (half a Tokio worker's), where 200,000 unchecked levels
    // would need tens of megabytes. Not smaller: an unoptimised build's frames grow with the
    // features the whole workspace's build unifies, and once the Event Grid and agent crates
    // joined it, 256 KiB no longer held the 128 levels the limit allows.
    let handle = std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(|| {
            let depth = 200_000;
            let mut body = vec![b'['; depth];
            body.extend(std::iter::repeat_n(b']', depth));
            assert_invalid_json(
                EventParser::new()
                    .max_payload_bytes(usize::MAX)
                    .parse(&body),
            );
            let mut body = br#"{"a":"#.repeat(depth);
            body.push(b'1');
            body.extend(std::iter::repeat_n(b'}', depth));
            assert_invalid_json(
                EventParser::new()
                    .max_payload_bytes(usize::MAX)
                    .parse(&body),
            );
        })
        .unwrap();
    handle.join().expect("the parser panicked or overflowed");
}

/// The deepest nesting the JSON reader accepts (serde_json's limit of 128 levels).
const MAX_DEPTH: usize = 127;

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn nested_arrays_are_refused_exactly_past_the_depth_limit(depth in 1usize..400) {
        let mut body = vec![b'['; depth];
        body.extend(std::iter::repeat_n(b']', depth));
        let result = parse_events(&body);
        if depth == 1 {
            prop_assert_eq!(
                result,
                Err(ParseError::payload(ParseErrorKind::EmptyArray))
            );
        } else if depth <= MAX_DEPTH {
            prop_assert_eq!(
                result,
                Err(ParseError::payload(ParseErrorKind::NotAnObject { found: "an array" }).at_index(0))
            );
        } else {
            assert_invalid_json(result);
        }
    }

    #[test]
    fn nested_objects_are_refused_exactly_past_the_depth_limit(depth in 1usize..400) {
        let mut body = br#"{"a":"#.repeat(depth);
        body.push(b'1');
        body.extend(std::iter::repeat_n(b'}', depth));
        let result = parse_events(&body);
        if depth <= MAX_DEPTH {
            prop_assert_eq!(
                result,
                Err(ParseError::payload(ParseErrorKind::UnknownEnvelope).at_index(0))
            );
        } else {
            assert_invalid_json(result);
        }
    }

    #[test]
    fn nesting_inside_data_is_read_up_to_the_depth_limit(depth in 1usize..300, schema in schema()) {
        let mut event = build(&KeyVaultEventBuilder::secret_new_version("db-password"), schema);
        let mut data = json!({"leaf": true});
        for _ in 1..depth {
            data = json!([data]);
        }
        // `data` sits one level inside the event object.
        event["data"] = data;
        let result = parse_events(&to_bytes(&event));
        if depth < MAX_DEPTH {
            let events = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let kv = events[0].as_key_vault().expect("a Key Vault event");
            prop_assert_eq!(kv.name.as_str(), "db-password");
            prop_assert_eq!(kv.vault.as_deref(), Some("sample-kv"));
        } else {
            assert_invalid_json(result);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the tolerated quirks must not change
// ---------------------------------------------------------------------------------------------

/// How one key (or value) is disguised: a case mask and padding on either side.
type Disguise = (Vec<bool>, String, String);

fn disguise() -> impl Strategy<Value = Disguise> {
    (
        prop::collection::vec(any::<bool>(), 0..16),
        padding(),
        padding(),
    )
}

fn disguised(text: &str, (mask, left, right): &Disguise) -> String {
    format!("{left}{}{right}", recase(text, mask))
}

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn recased_and_padded_keys_and_values_read_the_same(
        event_type in event_type(),
        schema in schema(),
        include_id in any::<bool>(),
        times_as_strings in any::<bool>(),
        data_keys in prop::collection::vec(disguise(), 7),
        envelope_keys in prop::collection::vec(disguise(), 8),
        value_padding in prop::collection::vec((padding(), padding()), 8),
    ) {
        let mut builder = KeyVaultEventBuilder::new(event_type, "Db-Password-01").vault("My-Vault-7");
        if !include_id {
            builder = builder.without_id_url();
        }
        if times_as_strings {
            builder = builder.times(keyvault_invalidator_testkit::TimeStyle::String);
        }
        let plain = build(&builder, schema);
        let baseline = parse_events(&to_bytes(&plain)).expect("the plain event parses");

        let Value::Object(envelope) = plain else { unreachable!() };
        let mut disguised_envelope = Map::new();
        for (i, (key, value)) in envelope.into_iter().enumerate() {
            let value = match value {
                Value::Object(data) if key == "data" => {
                    let mut disguised_data = Map::new();
                    for (j, (key, value)) in data.into_iter().enumerate() {
                        let value = match value {
                            // Values are trimmed; the object name's case is kept as sent, so
                            // only padding changes here.
                            Value::String(s) => {
                                let (left, right) = &value_padding[j % value_padding.len()];
                                Value::String(format!("{left}{s}{right}"))
                            }
                            other => other,
                        };
                        disguised_data.insert(disguised(&key, &data_keys[j % data_keys.len()]), value);
                    }
                    Value::Object(disguised_data)
                }
                other => other,
            };
            disguised_envelope.insert(disguised(&key, &envelope_keys[i % envelope_keys.len()]), value);
        }
        let body = to_bytes(&Value::Object(disguised_envelope));
        let events = parse_events(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(events.len(), 1);
        let (kv, expected) = (
            events[0].as_key_vault().expect("a Key Vault event"),
            baseline[0].as_key_vault().expect("a Key Vault event"),
        );
        prop_assert_eq!(kv, expected);
        prop_assert_eq!(events[0].schema, schema);
        prop_assert_eq!(events[0].id.as_str(), EVENT_ID);
        // And the baseline itself is right, so "the same" means "right".
        prop_assert_eq!(kv.name.as_str(), "Db-Password-01");
        prop_assert!(kv.vault.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("My-Vault-7")));
        if event_type.object_type() == keyvault_invalidator_core::event::ObjectType::Vault {
            prop_assert_eq!(kv.version.as_deref(), None);
        } else {
            prop_assert_eq!(kv.version.as_deref(), Some(VERSION));
        }
        prop_assert_eq!(kv.not_before, unix(1_559_081_980));
        prop_assert_eq!(kv.expires, unix(1_559_082_102));
    }

    #[test]
    fn every_valid_name_is_read_exactly(
        name in "[A-Za-z0-9-]{1,127}",
        schema in schema(),
        include_id in any::<bool>(),
    ) {
        let mut builder = KeyVaultEventBuilder::secret_new_version(name.clone());
        if !include_id {
            builder = builder.without_id_url();
        }
        let events = parse_events(&to_bytes(&build(&builder, schema)))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let kv = events[0].as_key_vault().expect("a Key Vault event");
        prop_assert_eq!(kv.name.as_str(), name.as_str());
        prop_assert_eq!(kv.vault.as_deref(), Some("sample-kv"));
        prop_assert_eq!(kv.version.as_deref(), Some(VERSION));
    }

    #[test]
    fn an_invalid_character_is_reported_by_position_and_never_echoed(
        prefix in "[A-Za-z0-9-]{0,20}",
        bad in prop::sample::select(vec!['_', '~', '!', '$', '*']),
        suffix in "[A-Za-z0-9_~!$*-]{0,20}",
        schema in schema(),
        include_id in any::<bool>(),
    ) {
        let name = format!("{prefix}{bad}{suffix}");
        let mut builder = KeyVaultEventBuilder::secret_new_version(name.clone());
        if !include_id {
            builder = builder.without_id_url();
        }
        let error = parse_events(&to_bytes(&build(&builder, schema)))
            .expect_err("an invalid name is refused");
        prop_assert_eq!(
            &error,
            &ParseError::payload(ParseErrorKind::InvalidObjectName {
                    field: if include_id { "data.Id" } else { "data.ObjectName" },
                    reason: InvalidObjectName::InvalidCharacter {
                        position: prefix.len(),
                        length: name.len(),
                    },
                }).at_index(0).for_event_id(EVENT_ID.to_owned())
        );
        prop_assert!(!error.to_string().contains(&name), "{}", error);
    }

    #[test]
    fn a_name_over_127_characters_is_too_long(
        name in "[A-Za-z0-9-]{128,300}",
        schema in schema(),
    ) {
        let builder = KeyVaultEventBuilder::secret_new_version(name.clone()).without_id_url();
        let error = parse_events(&to_bytes(&build(&builder, schema)))
            .expect_err("a long name is refused");
        prop_assert_eq!(
            error.kind,
            ParseErrorKind::InvalidObjectName {
                field: "data.ObjectName",
                reason: InvalidObjectName::TooLong { length: name.len() },
            }
        );
    }

    #[test]
    fn nbf_and_exp_read_as_numbers_or_padded_strings(
        seconds in prop_oneof![
            3 => -10_000_000_000i64..100_000_000_000,
            1 => any::<i64>(),
        ],
        as_string in any::<bool>(),
        (left, right) in (padding(), padding()),
        schema in schema(),
    ) {
        let mut event = build(&KeyVaultEventBuilder::secret_new_version("db-password"), schema);
        let value = if as_string {
            json!(format!("{left}{seconds}{right}"))
        } else {
            json!(seconds)
        };
        event["data"]["NBF"] = value.clone();
        event["data"]["EXP"] = value;
        let events = parse_events(&to_bytes(&event)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let kv = events[0].as_key_vault().expect("a Key Vault event");
        prop_assert_eq!(kv.not_before, unix(seconds));
        prop_assert_eq!(kv.expires, unix(seconds));
        prop_assert_eq!(kv.name.as_str(), "db-password");
    }

    #[test]
    fn arrays_of_valid_events_keep_order_and_count(
        types in prop::collection::vec((event_type(), schema()), 1..20),
    ) {
        let events: Vec<Value> = types
            .iter()
            .enumerate()
            .map(|(i, (event_type, schema))| {
                build(&KeyVaultEventBuilder::new(*event_type, "db-password").id(format!("evt-{i}")), *schema)
            })
            .collect();
        let parsed = parse_events(&to_bytes(&Value::Array(events)))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed.len(), types.len());
        for (i, (event, (event_type, schema))) in parsed.iter().zip(&types).enumerate() {
            prop_assert_eq!(event.id.clone(), format!("evt-{i}"));
            prop_assert_eq!(event.schema, *schema);
            prop_assert_eq!(event.event_type.as_str(), event_type.as_str());
            prop_assert!(matches!(&event.kind, EventKind::KeyVault(kv) if kv.event_type == *event_type));
        }
    }
}
