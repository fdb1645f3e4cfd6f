//! Integration tests of the Key Vault event parser: one payload variant per test, each asserting
//! the exact outcome (every field of the event, or the exact error).
//!
//! `fixtures/eventgrid-docs-sample.json` and `fixtures/cloudevents-docs-sample.json` are copies of
//! `shared/samples/` (public payloads in the shape of Microsoft's "Azure Key Vault as Event Grid
//! source" documentation examples, quirks included: the trailing space in `"ObjectName "`, the
//! leading space in the `Version` value, `NBF`/`EXP` as strings).

use chrono::{DateTime, Duration, TimeZone, Utc};
use keyvault_invalidator_core::event::{
    parse_events, Event, EventKind, EventParser, EventSchema, InvalidObjectName, KeyVaultEvent,
    KeyVaultEventType, ObjectName, ObjectType, ParseError, ParseErrorKind, SubscriptionValidation,
};
use keyvault_invalidator_testkit::events::{
    batch, storage_blob_created, subscription_validation, to_bytes, with_bom,
};
use keyvault_invalidator_testkit::{KeyVaultEventBuilder, TimeStyle};
use serde_json::{json, Value};

const EVENTGRID_SAMPLE: &[u8] = include_bytes!("fixtures/eventgrid-docs-sample.json");
const CLOUDEVENTS_SAMPLE: &[u8] = include_bytes!("fixtures/cloudevents-docs-sample.json");

/// The builder's defaults, spelled out independently so a builder change cannot hide a parser bug.
const EVENT_ID: &str = "00eccf70-95a7-4e7c-8299-2eb17ee9ad64";
const VERSION: &str = "ee059b2bb5bc48398a53b168c6cdcb10";
const TOPIC: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/sample-rg/providers/Microsoft.KeyVault/vaults/sample-kv";
const SECRET_CREATED: &str = "Microsoft.KeyVault.SecretNewVersionCreated";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `2019-07-25T01:08:33.1036736Z`, the samples' event time.
fn event_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2019, 7, 25, 1, 8, 33).unwrap() + Duration::nanoseconds(103_673_600)
}

/// `NBF` = 1559081980 = 2019-05-28T22:19:40Z.
fn nbf() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2019, 5, 28, 22, 19, 40).unwrap()
}

/// `EXP` = 1559082102 = 2019-05-28T22:21:42Z.
fn exp() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2019, 5, 28, 22, 21, 42).unwrap()
}

fn name(text: &str) -> ObjectName {
    ObjectName::new(text).expect("a valid test name")
}

fn secret_url(name: &str) -> String {
    format!("https://sample-kv.vault.azure.net/secrets/{name}/{VERSION}")
}

fn parse_all(body: &[u8]) -> Vec<Event> {
    parse_events(body).unwrap_or_else(|error| panic!("payload refused: {error}"))
}

fn parse_one(body: &[u8]) -> Event {
    let mut events = parse_all(body);
    assert_eq!(events.len(), 1, "expected exactly one event: {events:?}");
    events.remove(0)
}

fn parse_kv(body: &[u8]) -> KeyVaultEvent {
    match parse_one(body).kind {
        EventKind::KeyVault(kv) => kv,
        other => panic!("expected a Key Vault event, got {other:?}"),
    }
}

fn parse_err(body: &[u8]) -> ParseError {
    match parse_events(body) {
        Ok(events) => panic!("expected an error, got {events:?}"),
        Err(error) => error,
    }
}

/// The error an event at `index` with the builder's id produces.
fn event_error(index: usize, kind: ParseErrorKind) -> ParseError {
    ParseError::payload(kind)
        .at_index(index)
        .for_event_id(EVENT_ID)
}

fn payload_error(kind: ParseErrorKind) -> ParseError {
    ParseError::payload(kind)
}

/// The secret event every default `secret_new_version("db-password")` payload must give.
fn db_password_event() -> KeyVaultEvent {
    KeyVaultEvent {
        event_type: KeyVaultEventType::SecretNewVersionCreated,
        vault: Some("sample-kv".to_owned()),
        object_type: ObjectType::Secret,
        name: name("db-password"),
        version: Some(VERSION.to_owned()),
        object_id: Some(secret_url("db-password")),
        not_before: Some(nbf()),
        expires: Some(exp()),
    }
}

fn db_password() -> KeyVaultEventBuilder {
    KeyVaultEventBuilder::secret_new_version("db-password")
}

fn body(event: &Value) -> Vec<u8> {
    to_bytes(event)
}

fn envelope_mut(event: &mut Value) -> &mut serde_json::Map<String, Value> {
    event.as_object_mut().expect("an event object")
}

fn data_mut(event: &mut Value) -> &mut serde_json::Map<String, Value> {
    envelope_mut(event)
        .get_mut("data")
        .and_then(Value::as_object_mut)
        .expect("a data object")
}

/// `event` with `data[key] = value`.
fn with_data(mut event: Value, key: &str, value: Value) -> Value {
    data_mut(&mut event).insert(key.to_owned(), value);
    event
}

/// `event` without `data[key]`.
fn without_data(mut event: Value, key: &str) -> Value {
    assert!(
        data_mut(&mut event).remove(key).is_some(),
        "test bug: no data key {key:?}"
    );
    event
}

/// `event` with `envelope[key] = value`.
fn with_field(mut event: Value, key: &str, value: Value) -> Value {
    envelope_mut(&mut event).insert(key.to_owned(), value);
    event
}

/// `event` without `envelope[key]`.
fn without_field(mut event: Value, key: &str) -> Value {
    assert!(
        envelope_mut(&mut event).remove(key).is_some(),
        "test bug: no envelope key {key:?}"
    );
    event
}

fn both_schemas(builder: &KeyVaultEventBuilder) -> [(EventSchema, Value); 2] {
    [
        (EventSchema::EventGrid, builder.event_grid()),
        (EventSchema::CloudEvents, builder.cloud_event()),
    ]
}

// ---------------------------------------------------------------------------------------------
// The documentation samples
// ---------------------------------------------------------------------------------------------

fn sample_event(schema: EventSchema) -> Event {
    Event {
        id: EVENT_ID.to_owned(),
        event_type: SECRET_CREATED.to_owned(),
        subject: Some("newsecret".to_owned()),
        source: Some(TOPIC.to_owned()),
        time: Some(event_time()),
        schema,
        kind: EventKind::KeyVault(KeyVaultEvent {
            event_type: KeyVaultEventType::SecretNewVersionCreated,
            vault: Some("sample-kv".to_owned()),
            object_type: ObjectType::Secret,
            name: name("newsecret"),
            version: Some(VERSION.to_owned()),
            object_id: Some(secret_url("newsecret")),
            not_before: Some(nbf()),
            expires: Some(exp()),
        }),
    }
}

#[test]
fn eventgrid_documentation_sample() {
    assert_eq!(
        parse_all(EVENTGRID_SAMPLE),
        vec![sample_event(EventSchema::EventGrid)]
    );
}

#[test]
fn cloudevents_documentation_sample() {
    assert_eq!(
        parse_all(CLOUDEVENTS_SAMPLE),
        vec![sample_event(EventSchema::CloudEvents)]
    );
}

#[test]
fn samples_without_the_id_url_still_use_the_padded_fields() {
    // Without `Id`, the name comes from the key with a trailing space and the version from the
    // value with a leading space.
    for (sample, schema) in [
        (EVENTGRID_SAMPLE, EventSchema::EventGrid),
        (CLOUDEVENTS_SAMPLE, EventSchema::CloudEvents),
    ] {
        let mut value: Value = serde_json::from_slice(sample).unwrap();
        let event = match &mut value {
            Value::Array(items) => &mut items[0],
            single => single,
        };
        data_mut(event).remove("Id");
        envelope_mut(event).remove("subject");
        let kv = parse_kv(&body(&value));
        assert_eq!(
            kv,
            KeyVaultEvent {
                event_type: KeyVaultEventType::SecretNewVersionCreated,
                vault: Some("sample-kv".to_owned()),
                object_type: ObjectType::Secret,
                name: name("newsecret"),
                version: Some(VERSION.to_owned()),
                object_id: None,
                not_before: Some(nbf()),
                expires: Some(exp()),
            },
            "{schema:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The ten Key Vault event types, in both schemas
// ---------------------------------------------------------------------------------------------

fn expected_for_type(
    event_type: KeyVaultEventType,
    type_string: &str,
    object_type: ObjectType,
    collection: Option<&str>,
    object: &str,
    schema: EventSchema,
) -> Event {
    let (object_id, version) = match collection {
        Some(collection) => (
            format!("https://sample-kv.vault.azure.net/{collection}/{object}/{VERSION}"),
            Some(VERSION.to_owned()),
        ),
        None => ("https://sample-kv.vault.azure.net/".to_owned(), None),
    };
    Event {
        id: EVENT_ID.to_owned(),
        event_type: type_string.to_owned(),
        subject: Some(object.to_owned()),
        source: Some(TOPIC.to_owned()),
        time: Some(event_time()),
        schema,
        kind: EventKind::KeyVault(KeyVaultEvent {
            event_type,
            vault: Some("sample-kv".to_owned()),
            object_type,
            name: name(object),
            version,
            object_id: Some(object_id),
            not_before: Some(nbf()),
            expires: Some(exp()),
        }),
    }
}

macro_rules! event_type_tests {
    ($($eg_test:ident, $ce_test:ident: $variant:ident, $type_string:literal, $object_type:ident, $collection:expr, $object:literal;)*) => {$(
        #[test]
        fn $eg_test() {
            let builder = KeyVaultEventBuilder::new(KeyVaultEventType::$variant, $object);
            assert_eq!(
                parse_all(&builder.event_grid_bytes()),
                vec![expected_for_type(
                    KeyVaultEventType::$variant,
                    $type_string,
                    ObjectType::$object_type,
                    $collection,
                    $object,
                    EventSchema::EventGrid,
                )]
            );
        }

        #[test]
        fn $ce_test() {
            let builder = KeyVaultEventBuilder::new(KeyVaultEventType::$variant, $object);
            assert_eq!(
                parse_all(&builder.cloud_event_bytes()),
                vec![expected_for_type(
                    KeyVaultEventType::$variant,
                    $type_string,
                    ObjectType::$object_type,
                    $collection,
                    $object,
                    EventSchema::CloudEvents,
                )]
            );
        }
    )*};
}

event_type_tests! {
    secret_new_version_created_event_grid, secret_new_version_created_cloud_event:
        SecretNewVersionCreated, "Microsoft.KeyVault.SecretNewVersionCreated", Secret, Some("secrets"), "db-password";
    secret_near_expiry_event_grid, secret_near_expiry_cloud_event:
        SecretNearExpiry, "Microsoft.KeyVault.SecretNearExpiry", Secret, Some("secrets"), "api-key";
    secret_expired_event_grid, secret_expired_cloud_event:
        SecretExpired, "Microsoft.KeyVault.SecretExpired", Secret, Some("secrets"), "Old-Secret-1";
    key_new_version_created_event_grid, key_new_version_created_cloud_event:
        KeyNewVersionCreated, "Microsoft.KeyVault.KeyNewVersionCreated", Key, Some("keys"), "signing-key";
    key_near_expiry_event_grid, key_near_expiry_cloud_event:
        KeyNearExpiry, "Microsoft.KeyVault.KeyNearExpiry", Key, Some("keys"), "wrap-key";
    key_expired_event_grid, key_expired_cloud_event:
        KeyExpired, "Microsoft.KeyVault.KeyExpired", Key, Some("keys"), "k1";
    certificate_new_version_created_event_grid, certificate_new_version_created_cloud_event:
        CertificateNewVersionCreated, "Microsoft.KeyVault.CertificateNewVersionCreated", Certificate, Some("certificates"), "www-example-com";
    certificate_near_expiry_event_grid, certificate_near_expiry_cloud_event:
        CertificateNearExpiry, "Microsoft.KeyVault.CertificateNearExpiry", Certificate, Some("certificates"), "tls-cert";
    certificate_expired_event_grid, certificate_expired_cloud_event:
        CertificateExpired, "Microsoft.KeyVault.CertificateExpired", Certificate, Some("certificates"), "legacy-cert";
    vault_access_policy_changed_event_grid, vault_access_policy_changed_cloud_event:
        VaultAccessPolicyChanged, "Microsoft.KeyVault.VaultAccessPolicyChanged", Vault, None, "sample-kv";
}

#[test]
fn event_type_strings_are_matched_without_case_and_kept_as_sent() {
    for (schema, event) in
        both_schemas(&db_password().raw_event_type("  microsoft.KEYVAULT.secretnewversioncreated "))
    {
        let parsed = parse_one(&body(&event));
        assert_eq!(
            parsed.event_type, "microsoft.KEYVAULT.secretnewversioncreated",
            "{schema:?}"
        );
        assert_eq!(
            parsed.kind,
            EventKind::KeyVault(db_password_event()),
            "{schema:?}"
        );
    }
}

#[test]
fn an_unknown_key_vault_event_type_is_not_a_key_vault_event() {
    for (schema, event) in
        both_schemas(&db_password().raw_event_type("Microsoft.KeyVault.SecretDeleted"))
    {
        let parsed = parse_one(&body(&event));
        assert_eq!(
            parsed.event_type, "Microsoft.KeyVault.SecretDeleted",
            "{schema:?}"
        );
        assert_eq!(parsed.kind, EventKind::NotKeyVault, "{schema:?}");
        assert_eq!(parsed.schema, schema);
    }
}

#[test]
fn a_key_event_whose_id_is_a_secret_url_keeps_the_event_types_object_type() {
    // The URL's collection disagrees with the event type: the type decides the object type (a
    // warning is logged), the URL still names the object.
    let event = with_data(
        KeyVaultEventBuilder::new(KeyVaultEventType::KeyNewVersionCreated, "signing-key")
            .event_grid(),
        "Id",
        json!(secret_url("signing-key")),
    );
    let kv = parse_kv(&body(&event));
    assert_eq!(kv.object_type, ObjectType::Key);
    assert_eq!(kv.name, name("signing-key"));
    assert_eq!(kv.version.as_deref(), Some(VERSION));
    assert_eq!(kv.vault.as_deref(), Some("sample-kv"));
}

// ---------------------------------------------------------------------------------------------
// VaultAccessPolicyChanged: no object URL, the name falls back to ObjectName then VaultName
// ---------------------------------------------------------------------------------------------

fn policy_changed() -> KeyVaultEventBuilder {
    KeyVaultEventBuilder::new(KeyVaultEventType::VaultAccessPolicyChanged, "policy-target")
}

fn policy_event(object: &str) -> KeyVaultEvent {
    KeyVaultEvent {
        event_type: KeyVaultEventType::VaultAccessPolicyChanged,
        vault: Some("sample-kv".to_owned()),
        object_type: ObjectType::Vault,
        name: name(object),
        version: None,
        object_id: Some("https://sample-kv.vault.azure.net/".to_owned()),
        not_before: Some(nbf()),
        expires: Some(exp()),
    }
}

#[test]
fn vault_access_policy_changed_names_the_object_name() {
    for (schema, event) in both_schemas(&policy_changed()) {
        assert_eq!(
            parse_kv(&body(&event)),
            policy_event("policy-target"),
            "{schema:?}"
        );
    }
}

#[test]
fn vault_access_policy_changed_without_object_name_falls_back_to_vault_name() {
    for (schema, event) in both_schemas(&policy_changed().without_object_name()) {
        assert_eq!(
            parse_kv(&body(&event)),
            policy_event("sample-kv"),
            "{schema:?}"
        );
    }
}

#[test]
fn vault_access_policy_changed_without_object_or_vault_name_uses_the_vault_from_the_id() {
    let event = without_data(
        policy_changed()
            .without_object_name()
            .vault("other-kv")
            .event_grid(),
        "VaultName",
    );
    let kv = parse_kv(&body(&event));
    assert_eq!(kv.name, name("other-kv"));
    assert_eq!(kv.vault.as_deref(), Some("other-kv"));
    assert_eq!(kv.object_type, ObjectType::Vault);
}

#[test]
fn vault_access_policy_changed_falls_back_to_the_subject_for_its_name() {
    let event = without_data(
        without_data(
            policy_changed().without_object_name().event_grid(),
            "VaultName",
        ),
        "Id",
    );
    let event = with_field(event, "topic", json!("/subscriptions/s"));
    let parsed = parse_one(&body(&event));
    let kv = parsed.as_key_vault().expect("a Key Vault event");
    assert_eq!(kv.name.as_str(), "policy-target");
    assert_eq!(kv.vault, None);
}

#[test]
fn vault_access_policy_changed_with_no_name_anywhere_is_missing_object_name() {
    let event = without_data(
        without_data(
            policy_changed()
                .without_object_name()
                .without_subject()
                .event_grid(),
            "VaultName",
        ),
        "Id",
    );
    let event = with_field(event, "topic", json!("/subscriptions/s"));
    assert_eq!(
        parse_err(&body(&event)),
        event_error(
            0,
            ParseErrorKind::MissingObjectName {
                event_type: "Microsoft.KeyVault.VaultAccessPolicyChanged"
            }
        )
    );
}

#[test]
fn data_sent_as_a_json_string_is_read_as_the_object_it_holds() {
    for envelope in [db_password().event_grid(), db_password().cloud_event()] {
        let data = envelope["data"].to_string();
        let event = with_field(envelope, "data", json!(data));
        let parsed = parse_one(&body(&event));
        assert_eq!(parsed.kind, EventKind::KeyVault(db_password_event()));
    }
}

#[test]
fn a_numeric_cloud_event_id_is_read_as_text() {
    let event = with_field(db_password().cloud_event(), "id", json!(42));
    assert_eq!(parse_one(&body(&event)).id, "42");
}

#[test]
fn vault_access_policy_changed_with_a_secret_looking_vault_name_does_not_echo_it() {
    let event = with_data(
        policy_changed().without_object_name().event_grid(),
        "VaultName",
        json!("SuperSecretValue123_"),
    );
    let error = parse_err(&body(&event));
    assert_eq!(
        error,
        event_error(
            0,
            ParseErrorKind::InvalidObjectName {
                field: "data.VaultName",
                reason: InvalidObjectName::InvalidCharacter {
                    position: 19,
                    length: 20
                },
            }
        )
    );
    let message = error.to_string();
    assert_eq!(
        message,
        format!(
            "event 0 (id \"{EVENT_ID}\"): the object name in `data.VaultName` is invalid: \
             character 19 of 20 is not an ASCII letter, digit or '-'"
        )
    );
    assert!(!message.contains("SuperSecret"));
    assert!(!format!("{error:?}").contains("SuperSecret"));
}

// ---------------------------------------------------------------------------------------------
// Data key and value quirks
// ---------------------------------------------------------------------------------------------

#[test]
fn camel_case_data_keys() {
    for (schema, event) in both_schemas(&db_password().camel_case_data()) {
        assert!(event.to_string().contains("\"objectName\""));
        assert_eq!(parse_kv(&body(&event)), db_password_event(), "{schema:?}");
    }
}

#[test]
fn trailing_spaces_in_data_keys() {
    for (schema, event) in both_schemas(&db_password().trailing_space_in_keys()) {
        assert!(event.to_string().contains("\"ObjectName \""));
        assert_eq!(parse_kv(&body(&event)), db_password_event(), "{schema:?}");
    }
}

#[test]
fn padded_data_values() {
    for (schema, event) in both_schemas(&db_password().padded_values()) {
        assert!(event.to_string().contains("\" db-password \""));
        assert_eq!(parse_kv(&body(&event)), db_password_event(), "{schema:?}");
    }
}

#[test]
fn all_data_quirks_at_once_without_the_id_url() {
    // Without `Id` the name, vault and version come from the quirky keys themselves.
    let builder = db_password()
        .camel_case_data()
        .trailing_space_in_keys()
        .padded_values()
        .times(TimeStyle::String)
        .without_id_url();
    for (schema, event) in both_schemas(&builder) {
        assert_eq!(
            parse_kv(&body(&event)),
            KeyVaultEvent {
                object_id: None,
                ..db_password_event()
            },
            "{schema:?}"
        );
    }
}

#[test]
fn upper_case_and_padded_data_keys_without_the_id_url() {
    let event = json!({
        "id": "e1",
        "eventType": SECRET_CREATED,
        "data": {
            "  VAULTNAME": "sample-kv",
            "objectname\t": "db-password",
            " VeRsIoN ": VERSION,
            "nbf": 1_559_081_980,
            "Exp ": "1559082102",
        },
    });
    assert_eq!(
        parse_kv(&body(&event)),
        KeyVaultEvent {
            object_id: None,
            ..db_password_event()
        }
    );
}

#[test]
fn padded_id_url_and_camel_case_id_key() {
    let event = with_data(
        without_data(db_password().event_grid(), "Id"),
        "ID ",
        json!(format!("  {}\t", secret_url("db-password"))),
    );
    assert_eq!(parse_kv(&body(&event)), db_password_event());
}

// ---------------------------------------------------------------------------------------------
// NBF / EXP
// ---------------------------------------------------------------------------------------------

#[test]
fn nbf_and_exp_as_numbers_strings_null_or_absent() {
    let cases = [
        (TimeStyle::Number, Some(nbf()), Some(exp())),
        (TimeStyle::String, Some(nbf()), Some(exp())),
        (TimeStyle::Null, None, None),
        (TimeStyle::Absent, None, None),
    ];
    for (style, not_before, expires) in cases {
        for (schema, event) in both_schemas(&db_password().times(style)) {
            let kv = parse_kv(&body(&event));
            assert_eq!(
                (kv.not_before, kv.expires),
                (not_before, expires),
                "{style:?} {schema:?}"
            );
            assert_eq!(kv.name, name("db-password"), "{style:?} {schema:?}");
        }
    }
}

#[test]
fn garbage_nbf_and_exp_are_ignored_not_errors() {
    let garbage = [
        json!("soon"),
        json!(""),
        json!("   "),
        json!("12abc"),
        json!("NaN"),
        json!("inf"),
        json!(true),
        json!([1_559_081_980]),
        json!({"seconds": 1_559_081_980}),
        json!(1e300),
        json!(u64::MAX),
        json!("99999999999999999999999"),
        json!(i64::MAX),
        json!(i64::MIN),
    ];
    for value in garbage {
        for (schema, event) in both_schemas(&db_password()) {
            let event = with_data(with_data(event, "NBF", value.clone()), "EXP", value.clone());
            let kv = parse_kv(&body(&event));
            assert_eq!(
                kv,
                KeyVaultEvent {
                    not_before: None,
                    expires: None,
                    ..db_password_event()
                },
                "{value} {schema:?}"
            );
        }
    }
}

#[test]
fn nbf_and_exp_padded_strings_floats_and_negative_numbers() {
    let cases = [
        (json!(" 1559081980 "), Some(nbf())),
        (json!("\t1559081980\n"), Some(nbf())),
        (json!(1_559_081_980.0), Some(nbf())),
        (json!("1559081980.0"), Some(nbf())),
        (
            json!(0),
            Some(Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap()),
        ),
        (
            json!(-1),
            Some(Utc.with_ymd_and_hms(1969, 12, 31, 23, 59, 59).unwrap()),
        ),
        (
            json!("4102444800"),
            Some(Utc.with_ymd_and_hms(2100, 1, 1, 0, 0, 0).unwrap()),
        ),
    ];
    for (value, expected) in cases {
        let event = with_data(db_password().event_grid(), "NBF", value.clone());
        let kv = parse_kv(&body(&event));
        assert_eq!(kv.not_before, expected, "{value}");
        assert_eq!(kv.expires, Some(exp()), "{value}");
    }
}

// ---------------------------------------------------------------------------------------------
// Envelope quirks
// ---------------------------------------------------------------------------------------------

#[test]
fn upper_case_envelope_keys() {
    for (schema, event) in both_schemas(&db_password().upper_case_envelope()) {
        assert!(event.get("ID").is_some() && event.get("id").is_none());
        assert_eq!(
            parse_one(&body(&event)),
            Event {
                id: EVENT_ID.to_owned(),
                event_type: SECRET_CREATED.to_owned(),
                subject: Some("db-password".to_owned()),
                source: Some(TOPIC.to_owned()),
                time: Some(event_time()),
                schema,
                kind: EventKind::KeyVault(db_password_event()),
            }
        );
    }
}

#[test]
fn padded_mixed_case_envelope_keys_and_values() {
    let event = json!({
        " Id ": "  evt-1  ",
        "EventType\t": "  Microsoft.KeyVault.SecretNewVersionCreated ",
        "SUBJECT": " db-password ",
        "Topic": format!(" {TOPIC} "),
        "eventtime": " 2019-07-25T01:08:33.1036736Z ",
        " DATA": db_password().data(),
    });
    assert_eq!(
        parse_one(&body(&event)),
        Event {
            id: "evt-1".to_owned(),
            event_type: SECRET_CREATED.to_owned(),
            subject: Some("db-password".to_owned()),
            source: Some(TOPIC.to_owned()),
            time: Some(event_time()),
            schema: EventSchema::EventGrid,
            kind: EventKind::KeyVault(db_password_event()),
        }
    );
}

#[test]
fn event_grid_numeric_id_is_read_as_text() {
    let event = with_field(db_password().event_grid(), "id", json!(42));
    assert_eq!(parse_one(&body(&event)).id, "42");
}

#[test]
fn event_grid_time_offsets_are_converted_to_utc_and_bad_times_ignored() {
    let cases = [
        (
            "2019-07-25T03:08:33+02:00",
            Some(Utc.with_ymd_and_hms(2019, 7, 25, 1, 8, 33).unwrap()),
        ),
        ("yesterday", None),
        ("", None),
        ("2019-07-25", None),
    ];
    for (time, expected) in cases {
        let event = db_password().time(time).event_grid();
        let parsed = parse_one(&body(&event));
        assert_eq!(parsed.time, expected, "{time:?}");
        assert_eq!(
            parsed.kind,
            EventKind::KeyVault(db_password_event()),
            "{time:?}"
        );
    }
    let event = with_field(
        db_password().event_grid(),
        "eventTime",
        json!(1_564_016_913),
    );
    assert_eq!(parse_one(&body(&event)).time, None);
}

#[test]
fn byte_order_mark_prefix() {
    for (schema, event) in both_schemas(&db_password()) {
        let parsed = parse_one(&with_bom(&body(&event)));
        assert_eq!(parsed.schema, schema);
        assert_eq!(parsed.kind, EventKind::KeyVault(db_password_event()));
    }
    let events = parse_all(&with_bom(EVENTGRID_SAMPLE));
    assert_eq!(events, vec![sample_event(EventSchema::EventGrid)]);
}

#[test]
fn whitespace_around_the_body() {
    for (schema, event) in both_schemas(&db_password()) {
        let mut padded = b"\r\n\t  ".to_vec();
        padded.extend_from_slice(&body(&event));
        padded.extend_from_slice(b" \n\n\t ");
        let parsed = parse_one(&padded);
        assert_eq!(parsed.schema, schema);
        assert_eq!(parsed.kind, EventKind::KeyVault(db_password_event()));
        // A byte-order mark before the whitespace, too.
        let parsed = parse_one(&with_bom(&padded));
        assert_eq!(parsed.kind, EventKind::KeyVault(db_password_event()));
    }
}

#[test]
fn a_body_that_is_a_json_string_holding_the_event() {
    for (schema, event) in both_schemas(&db_password()) {
        let wrapped = serde_json::to_vec(&Value::String(event.to_string())).unwrap();
        assert_eq!(wrapped[0], b'"');
        let parsed = parse_one(&wrapped);
        assert_eq!(parsed.schema, schema);
        assert_eq!(parsed.id, EVENT_ID);
        assert_eq!(parsed.kind, EventKind::KeyVault(db_password_event()));
    }
}

#[test]
fn a_body_that_is_a_json_string_holding_a_padded_bom_prefixed_array() {
    let inner = format!(
        "\u{feff}  [{}, {}]\n",
        db_password().event_grid(),
        db_password().id("second").cloud_event()
    );
    let wrapped = serde_json::to_vec(&Value::String(inner)).unwrap();
    let events = parse_all(&wrapped);
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[0].id.as_str(), events[0].schema),
        (EVENT_ID, EventSchema::EventGrid)
    );
    assert_eq!(
        (events[1].id.as_str(), events[1].schema),
        ("second", EventSchema::CloudEvents)
    );
    for event in &events {
        assert_eq!(event.kind, EventKind::KeyVault(db_password_event()));
    }
}

#[test]
fn string_wrapping_is_undone_once_only() {
    let once = Value::String(db_password().event_grid().to_string());
    let twice = serde_json::to_vec(&Value::String(once.to_string())).unwrap();
    assert_eq!(
        parse_err(&twice),
        ParseError::payload(ParseErrorKind::NotAnObject { found: "a string" }).at_index(0)
    );
}

#[test]
fn a_json_string_that_is_not_an_event() {
    assert_eq!(
        parse_err(br#""hello""#),
        ParseError::payload(ParseErrorKind::NotAnObject { found: "a string" }).at_index(0)
    );
}

#[test]
fn a_json_string_holding_invalid_json_is_invalid_json() {
    let error = parse_err(br#""{\"id\": \"hunter2\" oops}""#);
    assert_eq!(error.index, None);
    assert_eq!(error.event_id, None);
    assert!(
        matches!(error.kind, ParseErrorKind::InvalidJson { .. }),
        "{error:?}"
    );
    assert!(!error.to_string().contains("hunter2"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// Arrays and the other event types
// ---------------------------------------------------------------------------------------------

#[test]
fn a_mixed_array_gives_each_event_its_kind() {
    let code = "512d38b6-c7b8-40c8-89fe-f46f9e9622b6";
    let payload = batch([
        db_password().event_grid(),
        storage_blob_created(),
        subscription_validation(code),
        db_password().id("ce-1").cloud_event(),
    ]);
    let events = parse_all(&payload);
    assert_eq!(events.len(), 4);

    assert_eq!(events[0].id, EVENT_ID);
    assert_eq!(events[0].event_type, SECRET_CREATED);
    assert_eq!(events[0].schema, EventSchema::EventGrid);
    assert_eq!(events[0].kind, EventKind::KeyVault(db_password_event()));

    assert_eq!(
        events[1],
        Event {
            id: "831e1650-001e-001b-66ab-eeb76e069631".to_owned(),
            event_type: "Microsoft.Storage.BlobCreated".to_owned(),
            subject: Some("/blobServices/default/containers/c/blobs/b.txt".to_owned()),
            source: Some(
                "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/acct"
                    .to_owned()
            ),
            time: Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()),
            schema: EventSchema::EventGrid,
            kind: EventKind::NotKeyVault,
        }
    );

    assert_eq!(
        events[2],
        Event {
            id: "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66".to_owned(),
            event_type: "Microsoft.EventGrid.SubscriptionValidationEvent".to_owned(),
            subject: None,
            source: Some("/subscriptions/00000000-0000-0000-0000-000000000000".to_owned()),
            time: Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()),
            schema: EventSchema::EventGrid,
            kind: EventKind::SubscriptionValidation(SubscriptionValidation {
                validation_code: Some(code.to_owned()),
                validation_url: Some(
                    "https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/sample/validate?id=0000&t=2026-01-01T00:00:00.0000000Z&apiVersion=2018-05-01-preview&token=1A1A1A1A"
                        .to_owned()
                ),
            }),
        }
    );

    assert_eq!(events[3].id, "ce-1");
    assert_eq!(events[3].schema, EventSchema::CloudEvents);
    assert_eq!(events[3].kind, EventKind::KeyVault(db_password_event()));
}

#[test]
fn a_single_event_in_an_array() {
    let events = parse_all(&batch([db_password().cloud_event()]));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::KeyVault(db_password_event()));
}

#[test]
fn subscription_validation_keeps_its_code_out_of_debug_output() {
    let event = parse_one(&body(&subscription_validation("hunter2-code")));
    let EventKind::SubscriptionValidation(validation) = &event.kind else {
        panic!("expected a validation event, got {:?}", event.kind);
    };
    assert_eq!(validation.validation_code.as_deref(), Some("hunter2-code"));
    let debug = format!("{event:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(!debug.contains("token=1A1A1A1A"), "{debug}");
    assert!(debug.contains("[redacted]"), "{debug}");
}

#[test]
fn subscription_validation_event_type_is_matched_without_case_and_reads_camel_or_pascal_keys() {
    let event = json!({
        "id": "v1",
        "eventType": "microsoft.eventgrid.subscriptionvalidationevent",
        "data": {"ValidationCode ": " abc "},
    });
    assert_eq!(
        parse_one(&body(&event)).kind,
        EventKind::SubscriptionValidation(SubscriptionValidation {
            validation_code: Some("abc".to_owned()),
            validation_url: None,
        })
    );
}

#[test]
fn subscription_deleted_event() {
    let event = json!({
        "id": "9f4d9e4a-8e6c-4e1a-a8b1-2f8e2c3d4e5f",
        "topic": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/sample-rg/providers/Microsoft.KeyVault/vaults/sample-kv",
        "subject": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/sample-rg/providers/Microsoft.EventGrid/eventSubscriptions/kv-sub",
        "eventType": "Microsoft.EventGrid.SubscriptionDeletedEvent",
        "eventTime": "2026-02-03T04:05:06Z",
        "data": {
            "eventSubscriptionId": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/sample-rg/providers/Microsoft.EventGrid/eventSubscriptions/kv-sub"
        },
        "dataVersion": "1",
        "metadataVersion": "1"
    });
    assert_eq!(
        parse_one(&body(&event)),
        Event {
            id: "9f4d9e4a-8e6c-4e1a-a8b1-2f8e2c3d4e5f".to_owned(),
            event_type: "Microsoft.EventGrid.SubscriptionDeletedEvent".to_owned(),
            subject: Some("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/sample-rg/providers/Microsoft.EventGrid/eventSubscriptions/kv-sub".to_owned()),
            source: Some(TOPIC.to_owned()),
            time: Some(Utc.with_ymd_and_hms(2026, 2, 3, 4, 5, 6).unwrap()),
            schema: EventSchema::EventGrid,
            kind: EventKind::SubscriptionDeleted {
                event_subscription_id: Some("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/sample-rg/providers/Microsoft.EventGrid/eventSubscriptions/kv-sub".to_owned()),
            },
        }
    );
    let without_data = without_field(event, "data");
    assert_eq!(
        parse_one(&body(&without_data)).kind,
        EventKind::SubscriptionDeleted {
            event_subscription_id: None
        }
    );
}

#[test]
fn a_cloud_event_of_another_type_is_not_key_vault() {
    let event = json!({
        "specversion": "1.0",
        "id": "a1",
        "type": "com.example.order.created",
        "source": "https://example.com/orders",
        "data": {"order": 1},
    });
    assert_eq!(
        parse_one(&body(&event)),
        Event {
            id: "a1".to_owned(),
            event_type: "com.example.order.created".to_owned(),
            subject: None,
            source: Some("https://example.com/orders".to_owned()),
            time: None,
            schema: EventSchema::CloudEvents,
            kind: EventKind::NotKeyVault,
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Where the name comes from
// ---------------------------------------------------------------------------------------------

/// Id says `from-id`, ObjectName says `from-object-name`, subject says `from-subject`.
fn three_names(schema: EventSchema) -> Value {
    let builder = KeyVaultEventBuilder::secret_new_version("from-id");
    let event = match schema {
        EventSchema::EventGrid => builder.event_grid(),
        EventSchema::CloudEvents => builder.cloud_event(),
        other => unreachable!("no builder for {other:?}"),
    };
    let event = with_data(event, "ObjectName", json!("from-object-name"));
    with_field(event, "subject", json!("from-subject"))
}

#[test]
fn the_id_url_wins_over_object_name_and_subject() {
    for schema in [EventSchema::EventGrid, EventSchema::CloudEvents] {
        let kv = parse_kv(&body(&three_names(schema)));
        assert_eq!(kv.name, name("from-id"), "{schema:?}");
        assert_eq!(kv.object_id, Some(secret_url("from-id")));
        assert_eq!(kv.version.as_deref(), Some(VERSION));
    }
}

#[test]
fn without_the_id_the_name_is_object_name() {
    for schema in [EventSchema::EventGrid, EventSchema::CloudEvents] {
        let kv = parse_kv(&body(&without_data(three_names(schema), "Id")));
        assert_eq!(
            kv,
            KeyVaultEvent {
                name: name("from-object-name"),
                object_id: None,
                ..db_password_event()
            },
            "{schema:?}"
        );
    }
}

#[test]
fn without_id_and_object_name_the_name_is_the_subject() {
    for schema in [EventSchema::EventGrid, EventSchema::CloudEvents] {
        let event = without_data(without_data(three_names(schema), "Id"), "ObjectName");
        let kv = parse_kv(&body(&event));
        assert_eq!(kv.name, name("from-subject"), "{schema:?}");
        assert_eq!(kv.vault.as_deref(), Some("sample-kv"));
        assert_eq!(kv.version.as_deref(), Some(VERSION));
    }
}

#[test]
fn blank_id_and_object_name_count_as_absent() {
    let event = with_data(
        with_data(three_names(EventSchema::EventGrid), "Id", json!("   ")),
        "ObjectName",
        json!(""),
    );
    let kv = parse_kv(&body(&event));
    assert_eq!(kv.name, name("from-subject"));
    assert_eq!(kv.object_id, None);
}

#[test]
fn no_name_anywhere_is_missing_object_name() {
    for schema in [EventSchema::EventGrid, EventSchema::CloudEvents] {
        let event = without_field(
            without_data(without_data(three_names(schema), "Id"), "ObjectName"),
            "subject",
        );
        let error = parse_err(&body(&event));
        assert_eq!(
            error,
            event_error(
                0,
                ParseErrorKind::MissingObjectName {
                    event_type: SECRET_CREATED
                }
            ),
            "{schema:?}"
        );
        assert_eq!(
            error.to_string(),
            format!(
                "event 0 (id \"{EVENT_ID}\"): Key Vault event `{SECRET_CREATED}` names no object \
                 (looked in data.Id, data.ObjectName and subject)"
            )
        );
    }
}

#[test]
fn no_data_at_all_takes_name_from_subject_and_vault_from_topic() {
    let event = without_field(db_password().event_grid(), "data");
    assert_eq!(
        parse_kv(&body(&event)),
        KeyVaultEvent {
            event_type: KeyVaultEventType::SecretNewVersionCreated,
            vault: Some("sample-kv".to_owned()),
            object_type: ObjectType::Secret,
            name: name("db-password"),
            version: None,
            object_id: None,
            not_before: None,
            expires: None,
        }
    );
    // `data` that is not an object is the same as no data.
    for data in [json!(null), json!("text"), json!([1, 2]), json!(7)] {
        let event = with_field(db_password().event_grid(), "data", data.clone());
        let kv = parse_kv(&body(&event));
        assert_eq!(
            (kv.name.as_str(), kv.vault.as_deref(), kv.version.as_deref()),
            ("db-password", Some("sample-kv"), None),
            "{data}"
        );
    }
}

#[test]
fn id_and_object_name_disagreeing_by_case_only() {
    let event = with_data(
        db_password().event_grid(),
        "ObjectName",
        json!("DB-PASSWORD"),
    );
    let kv = parse_kv(&body(&event));
    assert_eq!(kv.name.as_str(), "db-password");
    assert!(kv.name.eq_ignore_case("DB-PASSWORD"));
}

#[test]
fn the_names_spelling_is_kept() {
    let kv = parse_kv(
        &KeyVaultEventBuilder::secret_new_version("ServiceBus--ConnectionString")
            .event_grid_bytes(),
    );
    assert_eq!(kv.name.as_str(), "ServiceBus--ConnectionString");
}

#[test]
fn an_id_that_is_not_an_object_url_falls_back_to_object_name() {
    let ids = [
        "not a url",
        "https://sample-kv.vault.azure.net/",
        "https://sample-kv.vault.azure.net/secrets",
        "https://sample-kv.vault.azure.net/secrets/",
        "https://sample-kv.vault.azure.net/deletedsecrets",
        "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
    ];
    for id in ids {
        let event = with_data(
            with_data(db_password().event_grid(), "Id", json!(id)),
            "ObjectName",
            json!("from-object-name"),
        );
        let kv = parse_kv(&body(&event));
        assert_eq!(
            kv,
            KeyVaultEvent {
                name: name("from-object-name"),
                object_id: Some(id.to_owned()),
                ..db_password_event()
            },
            "{id}"
        );
    }
}

#[test]
fn an_id_url_with_an_empty_name_segment_does_not_shift_the_version_into_the_name() {
    let id = format!("https://sample-kv.vault.azure.net/secrets//{VERSION}");
    let event = with_data(db_password().event_grid(), "Id", json!(id));
    let kv = parse_kv(&body(&event));
    assert_eq!(
        kv,
        KeyVaultEvent {
            object_id: Some(id.clone()),
            ..db_password_event()
        }
    );
}

#[test]
fn an_id_url_with_a_doubled_leading_slash_or_a_trailing_slash() {
    let id = format!("https://sample-kv.vault.azure.net//secrets/db-password/{VERSION}");
    let event = with_data(db_password().event_grid(), "Id", json!(id));
    assert_eq!(
        parse_kv(&body(&event)),
        KeyVaultEvent {
            object_id: Some(id.clone()),
            ..db_password_event()
        }
    );
    let id = "https://sample-kv.vault.azure.net/secrets/db-password/";
    let event = with_data(
        with_data(db_password().event_grid(), "Id", json!(id)),
        "Version",
        json!("abc123"),
    );
    let kv = parse_kv(&body(&event));
    assert_eq!(kv.name, name("db-password"));
    assert_eq!(kv.version.as_deref(), Some("abc123"));
}

#[test]
fn an_id_url_without_a_version_takes_the_version_from_data() {
    let event = with_data(
        with_data(
            db_password().event_grid(),
            "Id",
            json!("https://sample-kv.vault.azure.net/secrets/db-password"),
        ),
        "Version",
        json!(" 0123456789abcdef "),
    );
    let kv = parse_kv(&body(&event));
    assert_eq!(kv.name, name("db-password"));
    assert_eq!(kv.version.as_deref(), Some("0123456789abcdef"));
}

#[test]
fn the_id_url_version_wins_over_data_version() {
    let event = with_data(db_password().event_grid(), "Version", json!("0000"));
    assert_eq!(parse_kv(&body(&event)).version.as_deref(), Some(VERSION));
}

#[test]
fn version_absent_or_implausible_is_none() {
    let event = without_data(without_data(db_password().event_grid(), "Id"), "Version");
    assert_eq!(parse_kv(&body(&event)).version, None);
    for version in [
        json!("not/a version"),
        json!(""),
        json!("x".repeat(65)),
        json!(null),
    ] {
        let event = with_data(
            without_data(db_password().event_grid(), "Id"),
            "Version",
            version.clone(),
        );
        let kv = parse_kv(&body(&event));
        assert_eq!(kv.version, None, "{version}");
        assert_eq!(kv.name, name("db-password"));
    }
}

// ---------------------------------------------------------------------------------------------
// Where the vault comes from
// ---------------------------------------------------------------------------------------------

#[test]
fn the_vault_from_the_id_wins_over_vault_name() {
    let event = with_data(db_password().event_grid(), "VaultName", json!("other-kv"));
    assert_eq!(parse_kv(&body(&event)).vault.as_deref(), Some("sample-kv"));
}

#[test]
fn an_upper_case_id_host_gives_the_lower_case_vault() {
    let event = with_data(
        db_password().event_grid(),
        "Id",
        json!(format!(
            "https://SAMPLE-KV.vault.azure.net/secrets/db-password/{VERSION}"
        )),
    );
    assert_eq!(parse_kv(&body(&event)).vault.as_deref(), Some("sample-kv"));
}

#[test]
fn without_the_id_the_vault_is_vault_name() {
    let event = with_data(
        without_data(db_password().event_grid(), "Id"),
        "VaultName",
        json!(" other-kv "),
    );
    assert_eq!(parse_kv(&body(&event)).vault.as_deref(), Some("other-kv"));
}

#[test]
fn without_id_and_vault_name_the_vault_comes_from_the_topic_or_source() {
    let builder = db_password().vault("topic-kv").without_id_url();
    for (schema, event) in both_schemas(&builder) {
        let kv = parse_kv(&body(&without_data(event, "VaultName")));
        assert_eq!(kv.vault.as_deref(), Some("topic-kv"), "{schema:?}");
        assert_eq!(kv.name, name("db-password"));
        assert_eq!(kv.version.as_deref(), Some(VERSION));
    }
}

#[test]
fn an_invalid_vault_name_is_skipped_for_the_topic_and_never_echoed() {
    let event = with_data(
        without_data(db_password().vault("topic-kv").event_grid(), "Id"),
        "VaultName",
        json!("SuperSecretValue123_"),
    );
    let kv = parse_kv(&body(&event));
    assert_eq!(kv.vault.as_deref(), Some("topic-kv"));
    assert!(!format!("{kv:?}").contains("SuperSecret"));
}

#[test]
fn a_resource_group_named_vaults_does_not_confuse_the_topic_path() {
    let topic = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/vaults/providers/Microsoft.KeyVault/vaults/topic-kv";
    for key in ["topic", "source"] {
        let builder = db_password().without_id_url();
        let event = if key == "topic" {
            builder.event_grid()
        } else {
            builder.cloud_event()
        };
        let event = with_field(without_data(event, "VaultName"), key, json!(topic));
        let parsed = parse_one(&body(&event));
        assert_eq!(parsed.source.as_deref(), Some(topic));
        assert_eq!(
            parsed.as_key_vault().unwrap().vault.as_deref(),
            Some("topic-kv"),
            "{key}"
        );
    }
}

#[test]
fn a_vault_named_vaults_in_a_resource_group_named_vaults() {
    let topic = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/Vaults/providers/microsoft.keyvault/VAULTS/vaults";
    let event = with_field(
        without_data(db_password().without_id_url().event_grid(), "VaultName"),
        "topic",
        json!(topic),
    );
    assert_eq!(parse_kv(&body(&event)).vault.as_deref(), Some("vaults"));
    // A topic that is not a Key Vault resource path names no vault.
    let event = with_field(
        without_data(db_password().without_id_url().event_grid(), "VaultName"),
        "topic",
        json!("/subscriptions/s/resourceGroups/vaults/providers/Microsoft.Storage/storageAccounts/acct"),
    );
    assert_eq!(parse_kv(&body(&event)).vault, None);
}

#[test]
fn no_vault_anywhere_is_not_an_error() {
    let event = without_field(
        without_data(without_data(db_password().event_grid(), "Id"), "VaultName"),
        "topic",
    );
    let kv = parse_kv(&body(&event));
    assert_eq!(kv.vault, None);
    assert_eq!(kv.name, name("db-password"));
}

// ---------------------------------------------------------------------------------------------
// Invalid object names
// ---------------------------------------------------------------------------------------------

fn invalid_name(field: &'static str, reason: InvalidObjectName) -> ParseError {
    event_error(0, ParseErrorKind::InvalidObjectName { field, reason })
}

#[test]
fn an_underscore_in_the_id_url_name() {
    let builder = KeyVaultEventBuilder::secret_new_version("db_password");
    for (schema, event) in both_schemas(&builder) {
        let error = parse_err(&body(&event));
        assert_eq!(
            error,
            invalid_name(
                "data.Id",
                InvalidObjectName::InvalidCharacter {
                    position: 2,
                    length: 11
                }
            ),
            "{schema:?}"
        );
        assert!(!error.to_string().contains("db_password"), "{error}");
    }
}

#[test]
fn an_invalid_id_name_is_refused_even_when_object_name_is_valid() {
    let event = with_data(
        KeyVaultEventBuilder::secret_new_version("db_password").event_grid(),
        "ObjectName",
        json!("db-password"),
    );
    assert_eq!(
        parse_err(&body(&event)),
        invalid_name(
            "data.Id",
            InvalidObjectName::InvalidCharacter {
                position: 2,
                length: 11
            }
        )
    );
}

#[test]
fn an_underscore_in_object_name_without_id() {
    let event = KeyVaultEventBuilder::secret_new_version("my_secret_hunter2")
        .without_id_url()
        .event_grid();
    let error = parse_err(&body(&event));
    assert_eq!(
        error,
        invalid_name(
            "data.ObjectName",
            InvalidObjectName::InvalidCharacter {
                position: 2,
                length: 17
            }
        )
    );
    let message = error.to_string();
    assert_eq!(
        message,
        format!(
            "event 0 (id \"{EVENT_ID}\"): the object name in `data.ObjectName` is invalid: \
             character 2 of 17 is not an ASCII letter, digit or '-'"
        )
    );
    assert!(!message.contains("hunter2"));
}

#[test]
fn an_invalid_subject_name_without_id_or_object_name() {
    let event = KeyVaultEventBuilder::secret_new_version("has space")
        .without_id_url()
        .without_object_name()
        .cloud_event();
    let error = parse_err(&body(&event));
    assert_eq!(
        error,
        invalid_name(
            "subject",
            InvalidObjectName::InvalidCharacter {
                position: 3,
                length: 9
            }
        )
    );
    assert!(!error.to_string().contains("has space"));
}

#[test]
fn a_name_of_128_characters_is_too_long_and_127_is_fine() {
    let long = "a".repeat(128);
    for (schema, event) in both_schemas(&KeyVaultEventBuilder::secret_new_version(long.clone())) {
        let error = parse_err(&body(&event));
        assert_eq!(
            error,
            invalid_name("data.Id", InvalidObjectName::TooLong { length: 128 }),
            "{schema:?}"
        );
        assert!(!error.to_string().contains(&long));
        assert_eq!(
            error.to_string(),
            format!(
                "event 0 (id \"{EVENT_ID}\"): the object name in `data.Id` is invalid: \
                 the name is 128 characters long; Key Vault allows at most 127"
            )
        );
    }
    let event = KeyVaultEventBuilder::secret_new_version(long.clone())
        .without_id_url()
        .event_grid();
    assert_eq!(
        parse_err(&body(&event)),
        invalid_name(
            "data.ObjectName",
            InvalidObjectName::TooLong { length: 128 }
        )
    );
    let ok = "b".repeat(127);
    let kv = parse_kv(&KeyVaultEventBuilder::secret_new_version(ok.clone()).event_grid_bytes());
    assert_eq!(kv.name.as_str(), ok);
}

#[test]
fn a_percent_encoded_character_in_the_id_url_is_invalid() {
    // A space in the name reaches the URL percent-encoded; the parser does not decode it.
    let event = with_data(
        db_password().event_grid(),
        "Id",
        json!(format!(
            "https://sample-kv.vault.azure.net/secrets/db%20password/{VERSION}"
        )),
    );
    assert_eq!(
        parse_err(&body(&event)),
        invalid_name(
            "data.Id",
            InvalidObjectName::InvalidCharacter {
                position: 2,
                length: 13
            }
        )
    );
}

#[test]
fn a_non_ascii_name_reports_character_positions() {
    let event = KeyVaultEventBuilder::secret_new_version("naïve-secret")
        .without_id_url()
        .event_grid();
    assert_eq!(
        parse_err(&body(&event)),
        invalid_name(
            "data.ObjectName",
            InvalidObjectName::InvalidCharacter {
                position: 2,
                length: 12
            }
        )
    );
}

#[test]
fn a_numeric_object_name_is_read_as_text() {
    let event = with_data(
        without_data(db_password().event_grid(), "Id"),
        "ObjectName",
        json!(12345),
    );
    assert_eq!(parse_kv(&body(&event)).name, name("12345"));
}

// ---------------------------------------------------------------------------------------------
// Payload-level errors and limits
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_bodies() {
    for body in [
        &b""[..],
        b"   ",
        b"\r\n\t ",
        b"\xEF\xBB\xBF",
        b"\xEF\xBB\xBF \n",
    ] {
        let error = parse_err(body);
        assert_eq!(error, payload_error(ParseErrorKind::Empty), "{body:?}");
        assert_eq!(error.to_string(), "the payload is empty");
    }
}

#[test]
fn empty_arrays() {
    for body in [&b"[]"[..], b" [ ] ", b"\xEF\xBB\xBF[\n]", br#""[]""#] {
        let error = parse_err(body);
        assert_eq!(error, payload_error(ParseErrorKind::EmptyArray), "{body:?}");
        assert_eq!(error.to_string(), "the payload is an empty array");
    }
}

#[test]
fn too_large_payloads() {
    let payload = db_password().event_grid_bytes();
    let size = payload.len();
    let error = EventParser::new()
        .max_payload_bytes(size - 1)
        .parse(&payload)
        .unwrap_err();
    assert_eq!(
        error,
        payload_error(ParseErrorKind::TooLarge {
            size,
            limit: size - 1
        })
    );
    assert_eq!(
        error.to_string(),
        format!(
            "the payload is {size} bytes, more than the limit of {}",
            size - 1
        )
    );
    // Exactly at the limit is accepted; the byte-order mark does not count.
    let events = EventParser::new()
        .max_payload_bytes(size)
        .parse(&with_bom(&payload))
        .unwrap();
    assert_eq!(events[0].kind, EventKind::KeyVault(db_password_event()));
    // The limit is checked before anything else, even for garbage.
    assert_eq!(
        EventParser::new()
            .max_payload_bytes(3)
            .parse(b"{{{{")
            .unwrap_err(),
        payload_error(ParseErrorKind::TooLarge { size: 4, limit: 3 })
    );
}

#[test]
fn the_default_payload_limit_is_one_mebibyte() {
    let mut payload = db_password().event_grid_bytes();
    payload.resize(1024 * 1024 + 1, b' ');
    assert_eq!(
        parse_err(&payload),
        payload_error(ParseErrorKind::TooLarge {
            size: 1024 * 1024 + 1,
            limit: 1024 * 1024
        })
    );
    payload.truncate(1024 * 1024);
    assert_eq!(parse_all(&payload).len(), 1);
}

#[test]
fn too_many_events() {
    let three = batch([
        db_password().event_grid(),
        db_password().event_grid(),
        db_password().event_grid(),
    ]);
    let error = EventParser::new().max_events(2).parse(&three).unwrap_err();
    assert_eq!(
        error,
        payload_error(ParseErrorKind::TooManyEvents { count: 3, limit: 2 })
    );
    assert_eq!(
        error.to_string(),
        "the payload holds 3 events, more than the limit of 2"
    );
    assert_eq!(
        EventParser::new()
            .max_events(3)
            .parse(&three)
            .unwrap()
            .len(),
        3
    );
    // Counted before any element is looked at.
    assert_eq!(
        EventParser::new()
            .max_events(2)
            .parse(b"[1, 2, 3]")
            .unwrap_err(),
        payload_error(ParseErrorKind::TooManyEvents { count: 3, limit: 2 })
    );
    // A single object is one event.
    assert_eq!(
        EventParser::new()
            .max_events(1)
            .parse(&db_password().event_grid_bytes())
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn non_object_array_elements() {
    let cases = [
        (json!(42), "a number"),
        (json!("text"), "a string"),
        (json!(null), "null"),
        (json!(true), "a boolean"),
        (json!([]), "an array"),
    ];
    for (element, found) in cases {
        let payload = batch([db_password().event_grid(), element.clone()]);
        let error = parse_err(&payload);
        assert_eq!(
            error,
            ParseError::payload(ParseErrorKind::NotAnObject { found }).at_index(1),
            "{element}"
        );
        assert_eq!(
            error.to_string(),
            format!("event 1: expected a JSON object, found {found}")
        );
    }
    // A top-level scalar is event 0.
    assert_eq!(
        parse_err(b"42"),
        ParseError::payload(ParseErrorKind::NotAnObject { found: "a number" }).at_index(0)
    );
}

#[test]
fn the_first_bad_event_is_reported() {
    let payload = batch([
        db_password().event_grid(),
        json!({"id": "no-type"}),
        json!(7),
    ]);
    assert_eq!(
        parse_err(&payload),
        ParseError::payload(ParseErrorKind::UnknownEnvelope)
            .at_index(1)
            .for_event_id("no-type".to_owned())
    );
}

#[test]
fn error_display_names_the_index_and_the_event_id() {
    let payload = batch([
        db_password().id("evt-1").event_grid(),
        KeyVaultEventBuilder::secret_new_version("db_password")
            .id("evt-2")
            .event_grid(),
    ]);
    let error = parse_err(&payload);
    assert_eq!(
        error,
        ParseError::payload(ParseErrorKind::InvalidObjectName {
            field: "data.Id",
            reason: InvalidObjectName::InvalidCharacter {
                position: 2,
                length: 11
            },
        })
        .at_index(1)
        .for_event_id("evt-2".to_owned())
    );
    assert_eq!(
        error.to_string(),
        "event 1 (id \"evt-2\"): the object name in `data.Id` is invalid: \
         character 2 of 11 is not an ASCII letter, digit or '-'"
    );
}

#[test]
fn long_and_odd_event_ids_are_shortened_and_escaped_in_errors() {
    let long_id = "x".repeat(100);
    let event = json!({"id": long_id, "eventType": ""});
    let error = parse_err(&body(&event));
    let shown = format!("{}…", "x".repeat(64));
    assert_eq!(
        error,
        ParseError::payload(ParseErrorKind::MissingField { field: "eventType" })
            .at_index(0)
            .for_event_id(shown.clone())
    );
    assert_eq!(
        error.to_string(),
        format!("event 0 (id \"{shown}\"): required field `eventType` is missing or blank")
    );

    let event = json!({"id": "a\"b\nc", "eventType": null});
    assert_eq!(
        parse_err(&body(&event)).to_string(),
        "event 0 (id \"a\\\"b\\nc\"): required field `eventType` is missing or blank"
    );
}

#[test]
fn invalid_json() {
    let error = parse_err(br#"{"id": "1" "eventType": "x"}"#);
    assert_eq!(
        error,
        payload_error(ParseErrorKind::InvalidJson {
            detail: "expected `,` or `}` at line 1 column 12".to_owned()
        })
    );
    assert_eq!(
        error.to_string(),
        "the payload is not valid JSON: expected `,` or `}` at line 1 column 12"
    );
}

#[test]
fn invalid_json_never_echoes_the_payload() {
    let bodies: [&[u8]; 8] = [
        br#"{"password": "hunter2""#,
        br#"{"password": hunter2}"#,
        br#"{"password": "hunter2" "#,
        br#"[{"id": "1", "password": "hunter2",]"#,
        br#"{"hunter2": }"#,
        br#"hunter2"#,
        b"{\"password\": \"hunter2\xff\xfe\"}",
        br#"{"password": "hunter2\q"}"#,
    ];
    for body in bodies {
        let error = parse_err(body);
        assert_eq!((error.index, &error.event_id), (None, &None), "{body:?}");
        assert!(
            matches!(error.kind, ParseErrorKind::InvalidJson { .. }),
            "{body:?}: {error:?}"
        );
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert!(!format!("{error:?}").contains("hunter2"), "{error:?}");
    }
}

#[test]
fn invalid_field_types_are_described_without_their_values() {
    let event = with_field(
        db_password().event_grid(),
        "id",
        json!({"secret": "hunter2"}),
    );
    let error = parse_err(&body(&event));
    assert_eq!(
        error,
        ParseError::payload(ParseErrorKind::InvalidField {
            field: "id",
            expected: "a string",
            found: "an object",
        })
        .at_index(0)
    );
    assert_eq!(
        error.to_string(),
        "event 0: field `id` must be a string, found an object"
    );

    let event = with_field(db_password().event_grid(), "eventType", json!(["hunter2"]));
    let error = parse_err(&body(&event));
    assert_eq!(
        error,
        event_error(
            0,
            ParseErrorKind::InvalidField {
                field: "eventType",
                expected: "a string",
                found: "an array",
            }
        )
    );
    assert!(!error.to_string().contains("hunter2"));
}

// ---------------------------------------------------------------------------------------------
// Envelope errors
// ---------------------------------------------------------------------------------------------

#[test]
fn event_grid_missing_id() {
    for id in [None, Some(json!(null)), Some(json!("")), Some(json!("   "))] {
        let mut event = without_field(db_password().event_grid(), "id");
        if let Some(id) = &id {
            event = with_field(event, "id", id.clone());
        }
        let error = parse_err(&body(&event));
        assert_eq!(
            error,
            ParseError::payload(ParseErrorKind::MissingField { field: "id" }).at_index(0),
            "{id:?}"
        );
        assert_eq!(
            error.to_string(),
            "event 0: required field `id` is missing or blank"
        );
    }
}

#[test]
fn event_grid_blank_event_type() {
    for event_type in [json!(null), json!(""), json!(" \t ")] {
        let event = with_field(db_password().event_grid(), "eventType", event_type.clone());
        assert_eq!(
            parse_err(&body(&event)),
            event_error(0, ParseErrorKind::MissingField { field: "eventType" }),
            "{event_type}"
        );
    }
}

#[test]
fn an_object_without_event_type_or_specversion_is_an_unknown_envelope() {
    let event = without_field(db_password().event_grid(), "eventType");
    let error = parse_err(&body(&event));
    assert_eq!(error, event_error(0, ParseErrorKind::UnknownEnvelope));
    assert_eq!(
        error.to_string(),
        format!(
            "event 0 (id \"{EVENT_ID}\"): neither a CloudEvents event (no `specversion`) nor an \
             Event Grid event (no `eventType`)"
        )
    );
    // A CloudEvent without `specversion` is not recognised either.
    let event = without_field(db_password().cloud_event(), "specversion");
    assert_eq!(
        parse_err(&body(&event)),
        event_error(0, ParseErrorKind::UnknownEnvelope)
    );
    assert_eq!(
        parse_err(b"{}"),
        ParseError::payload(ParseErrorKind::UnknownEnvelope).at_index(0)
    );
}

#[test]
fn cloud_event_missing_required_attributes() {
    for field in ["id", "type", "source"] {
        for value in [None, Some(json!(null)), Some(json!("  "))] {
            let mut event = without_field(db_password().cloud_event(), field);
            if let Some(value) = &value {
                event = with_field(event, field, value.clone());
            }
            let error = parse_err(&body(&event));
            assert_eq!(
                error,
                if field == "id" {
                    ParseError::payload(ParseErrorKind::MissingField { field }).at_index(0)
                } else {
                    event_error(0, ParseErrorKind::MissingField { field })
                },
                "{field} {value:?}"
            );
        }
    }
}

#[test]
fn cloud_event_null_specversion_is_missing() {
    let event = with_field(db_password().cloud_event(), "specversion", json!(null));
    assert_eq!(
        parse_err(&body(&event)),
        event_error(
            0,
            ParseErrorKind::MissingField {
                field: "specversion"
            }
        )
    );
}

#[test]
fn cloud_event_unsupported_specversion() {
    for version in ["2.0", "1", "0.2", "1.0.1"] {
        let event = with_field(db_password().cloud_event(), "specversion", json!(version));
        let error = parse_err(&body(&event));
        assert_eq!(
            error,
            event_error(0, ParseErrorKind::UnsupportedSpecVersion),
            "{version}"
        );
        assert_eq!(
            error.to_string(),
            format!(
                "event 0 (id \"{EVENT_ID}\"): unsupported CloudEvents `specversion` (expected \"1.0\")"
            )
        );
    }
}

#[test]
fn cloud_event_specversion_of_the_wrong_type() {
    for (version, found) in [
        (json!(true), "a boolean"),
        (json!(0.3), "a number"),
        (json!(2), "a number"),
        (json!({"v": "1.0"}), "an object"),
    ] {
        let event = with_field(db_password().cloud_event(), "specversion", version.clone());
        assert_eq!(
            parse_err(&body(&event)),
            event_error(
                0,
                ParseErrorKind::InvalidField {
                    field: "specversion",
                    expected: "a string",
                    found,
                }
            ),
            "{version}"
        );
    }
}

#[test]
fn cloud_event_specversion_as_the_number_one() {
    for version in [json!(1.0), json!(1), json!(" 1.0 ")] {
        let event = with_field(db_password().cloud_event(), "specversion", version.clone());
        let parsed = parse_one(&body(&event));
        assert_eq!(parsed.schema, EventSchema::CloudEvents, "{version}");
        assert_eq!(parsed.time, Some(event_time()));
        assert_eq!(
            parsed.kind,
            EventKind::KeyVault(db_password_event()),
            "{version}"
        );
    }
}

#[test]
fn cloud_event_specversion_0_3_is_read() {
    let event = with_field(db_password().cloud_event(), "specversion", json!("0.3"));
    let parsed = parse_one(&body(&event));
    assert_eq!(parsed.schema, EventSchema::CloudEvents);
    assert_eq!(parsed.source.as_deref(), Some(TOPIC));
    assert_eq!(parsed.kind, EventKind::KeyVault(db_password_event()));
}

#[test]
fn cloud_event_with_an_unparseable_time_still_parses() {
    for time in [
        json!("yesterday"),
        json!("2019-07-25"),
        json!(1_564_016_913),
        json!(true),
    ] {
        let event = with_field(db_password().cloud_event(), "time", time.clone());
        let parsed = parse_one(&body(&event));
        assert_eq!(
            parsed,
            Event {
                id: EVENT_ID.to_owned(),
                event_type: SECRET_CREATED.to_owned(),
                subject: Some("db-password".to_owned()),
                source: Some(TOPIC.to_owned()),
                time: None,
                schema: EventSchema::CloudEvents,
                kind: EventKind::KeyVault(db_password_event()),
            },
            "{time}"
        );
    }
}

#[test]
fn cloud_event_padded_time_with_offset() {
    let event = db_password()
        .time(" 2019-07-25T03:08:33.1036736+02:00 ")
        .cloud_event();
    assert_eq!(parse_one(&body(&event)).time, Some(event_time()));
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn the_base64_helper_is_right() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
}

#[test]
fn cloud_event_with_data_base64() {
    let data = db_password().data().to_string();
    for content_type in [
        None,
        Some("application/json"),
        Some("application/octet-stream"),
    ] {
        let mut event = without_field(db_password().cloud_event(), "data");
        event = with_field(event, "data_base64", json!(base64(data.as_bytes())));
        if let Some(content_type) = content_type {
            event = with_field(event, "datacontenttype", json!(content_type));
        }
        let parsed = parse_one(&body(&event));
        assert_eq!(
            parsed.kind,
            EventKind::KeyVault(db_password_event()),
            "{content_type:?}"
        );
    }
}

#[test]
fn cloud_event_with_invalid_data_base64_is_refused_without_echoing_it() {
    let event = with_field(
        without_field(db_password().cloud_event(), "data"),
        "data_base64",
        json!("hunter2!!not-base64"),
    );
    let error = parse_err(&body(&event));
    assert_eq!(
        error,
        event_error(
            0,
            ParseErrorKind::InvalidCloudEvent {
                detail: "the data or an attribute does not have the type CloudEvents requires"
            }
        )
    );
    assert!(!error.to_string().contains("hunter2"));
}

#[test]
fn cloud_event_with_both_data_and_data_base64_is_refused() {
    let event = with_field(db_password().cloud_event(), "data_base64", json!("e30="));
    assert_eq!(
        parse_err(&body(&event)),
        event_error(
            0,
            ParseErrorKind::InvalidCloudEvent {
                detail: "the data or an attribute does not have the type CloudEvents requires"
            }
        )
    );
}

#[test]
fn cloud_event_with_text_data_holding_json() {
    let event = with_field(
        with_field(
            db_password().cloud_event(),
            "data",
            json!(db_password().data().to_string()),
        ),
        "datacontenttype",
        json!("text/plain"),
    );
    assert_eq!(
        parse_one(&body(&event)).kind,
        EventKind::KeyVault(db_password_event())
    );
}

#[test]
fn cloud_event_with_a_non_json_content_type_on_object_data() {
    let event = with_field(
        db_password().cloud_event(),
        "datacontenttype",
        json!("text/plain"),
    );
    assert_eq!(
        parse_one(&body(&event)).kind,
        EventKind::KeyVault(db_password_event())
    );
}

#[test]
fn cloud_event_extension_attributes_of_any_type() {
    let extensions = [
        ("myobject", json!({"nested": {"deep": [1, 2, 3]}})),
        ("myarray", json!(["a", "b"])),
        ("myfloat", json!(1.5)),
        ("mybig", json!(u64::MAX)),
        ("mystring", json!("value")),
        ("mybool", json!(true)),
        ("myint", json!(-3)),
        ("mynull", json!(null)),
        ("dataschema", json!("not a url")),
        ("datacontenttype", json!({"not": "a string"})),
        ("subject", json!({"not": "a string"})),
    ];
    let mut event = db_password().cloud_event();
    for (key, value) in &extensions {
        event = with_field(event, key, value.clone());
    }
    let parsed = parse_one(&body(&event));
    assert_eq!(
        parsed,
        Event {
            id: EVENT_ID.to_owned(),
            event_type: SECRET_CREATED.to_owned(),
            subject: None,
            source: Some(TOPIC.to_owned()),
            time: Some(event_time()),
            schema: EventSchema::CloudEvents,
            kind: EventKind::KeyVault(db_password_event()),
        }
    );
}

#[test]
fn cloud_event_with_a_valid_dataschema_and_padded_attributes() {
    let event = json!({
        "SpecVersion": " 1.0 ",
        " ID": " ce-7 ",
        "Type ": " Microsoft.KeyVault.SecretNearExpiry ",
        "source": format!(" {TOPIC} "),
        "subject": " db-password ",
        "dataschema": "https://example.com/schema.json",
        "data": db_password().data(),
    });
    assert_eq!(
        parse_one(&body(&event)),
        Event {
            id: "ce-7".to_owned(),
            event_type: "Microsoft.KeyVault.SecretNearExpiry".to_owned(),
            subject: Some("db-password".to_owned()),
            source: Some(TOPIC.to_owned()),
            time: None,
            schema: EventSchema::CloudEvents,
            kind: EventKind::KeyVault(KeyVaultEvent {
                event_type: KeyVaultEventType::SecretNearExpiry,
                ..db_password_event()
            }),
        }
    );
}
