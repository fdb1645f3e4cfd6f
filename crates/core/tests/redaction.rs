//! Secret values, message bodies and validation codes never reach Debug output or errors.

use std::collections::BTreeMap;

use keyvault_invalidator_core::event::EventKind;
use keyvault_invalidator_core::{
    parse_events, Bytes, Delivery, DeliveryToken, ProviderError, ProviderErrorKind, Secret,
};
use keyvault_invalidator_testkit::events::{subscription_validation, to_bytes};

#[test]
fn a_secret_debug_shows_its_version_but_never_its_value() {
    let secret = Secret::new("hunter2").with_version("abc123");
    let shown = format!("{secret:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("abc123"), "{shown}");
}

#[test]
fn a_delivery_debug_never_shows_its_body_or_property_values() {
    let delivery = Delivery::new(
        Bytes::from_static(b"{\"password\":\"hunter2\"}"),
        DeliveryToken::new(7u64),
    )
    .with_properties(BTreeMap::from([(
        "connection".to_owned(),
        "SharedAccessKey=abc".to_owned(),
    )]))
    .with_message_id("m1")
    .with_delivery_count(2);
    let shown = format!("{delivery:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("SharedAccessKey"),
        "{shown}"
    );
    assert!(
        shown.contains("\"m1\"") && shown.contains("delivery_count: 2"),
        "{shown}"
    );
}

#[test]
fn a_subscription_validation_code_is_redacted_from_debug_output() {
    let events = parse_events(&to_bytes(&subscription_validation(
        "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
    )))
    .unwrap();
    let EventKind::SubscriptionValidation(validation) = &events[0].kind else {
        panic!("expected a validation event, got {:?}", events[0].kind);
    };
    assert_eq!(
        validation.validation_code.as_deref(),
        Some("512d38b6-c7b8-40c8-89fe-f46f9e9622b6")
    );
    let shown = format!("{events:?}");
    assert!(
        !shown.contains("512d38b6") && !shown.contains("token=1A1A1A1A"),
        "{shown}"
    );
}

#[test]
fn a_provider_error_names_the_secret_and_the_class_only() {
    let error = ProviderError::new(
        "db-password",
        ProviderErrorKind::Throttled {
            retry_after: Some(std::time::Duration::from_secs(2)),
        },
        "429 from the vault",
    );
    assert_eq!(
        error.to_string(),
        "secret `db-password`: throttled (retry after 2000 ms): 429 from the vault"
    );
    assert!(error.is_retryable() && !error.is_critical());
}

#[test]
fn a_delivery_token_gives_its_handle_back_only_as_the_right_type() {
    let token = DeliveryToken::new(42u64);
    let token = token.downcast::<String>().unwrap_err();
    assert_eq!(token.downcast::<u64>().unwrap(), 42);
}
