//! The payload parser on any bytes: it never panics, it gives the same answer twice, and every
//! event it returns is one the job can act on.
#![no_main]

use keyvault_invalidator_core::event::{
    parse_events, EventKind, EventParser, ObjectName, DEFAULT_MAX_EVENTS, MAX_OBJECT_NAME_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let first = parse_events(body);
    // Deterministic: nothing in the parser depends on state or time.
    assert_eq!(first, parse_events(body), "a second parse disagrees");

    let events = match first {
        Ok(events) => events,
        Err(error) => {
            // The message is built from the error alone; it must not fail to format.
            let _ = error.to_string();
            // A tighter limit never turns a refusal into an acceptance.
            assert!(EventParser::new().max_events(1).parse(body).is_err());
            return;
        }
    };
    assert!(!events.is_empty(), "Ok with no events");
    assert!(events.len() <= DEFAULT_MAX_EVENTS);

    for event in &events {
        assert!(!event.id.is_empty(), "an event without an id");
        assert!(!event.event_type.is_empty(), "an event without a type");
        if let EventKind::KeyVault(kv) = &event.kind {
            let name = kv.name.as_str();
            assert!(!name.is_empty(), "a Key Vault event without a name");
            assert!(name.len() <= MAX_OBJECT_NAME_LEN, "name too long: {name:?}");
            assert!(
                name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
                "name with a character Key Vault refuses: {name:?}"
            );
            assert_eq!(ObjectName::new(name).as_ref(), Ok(&kv.name));
            // The type string and the typed event agree.
            assert_eq!(
                kv.event_type.as_str().to_ascii_lowercase(),
                event.event_type.to_ascii_lowercase()
            );
            assert_eq!(kv.object_type, kv.event_type.object_type());
            if let Some(version) = &kv.version {
                assert!(!version.is_empty() && version.len() <= 64);
                assert!(version.bytes().all(|b| b.is_ascii_alphanumeric()));
            }
            if let Some(vault) = &kv.vault {
                assert!(!vault.is_empty(), "an empty vault name");
            }
        }
    }

    // A UTF-8 byte-order mark in front changes nothing (one is stripped, no more).
    if !body.starts_with(b"\xEF\xBB\xBF") {
        let mut with_bom = b"\xEF\xBB\xBF".to_vec();
        with_bom.extend_from_slice(body);
        assert_eq!(parse_events(&with_bom).as_ref(), Ok(&events));
    }
    // Limits that the payload fits in change nothing.
    let fitted = EventParser::new()
        .max_events(events.len())
        .max_payload_bytes(body.len());
    assert_eq!(fitted.parse(body).as_ref(), Ok(&events));
});
