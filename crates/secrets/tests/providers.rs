//! The environment and static providers. Environment tests inject their variables, except the
//! ones that exercise the process environment, which use variable names no other test uses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use keyvault_invalidator_core::secrecy::ExposeSecret;
use keyvault_invalidator_core::{ProviderErrorKind, SecretProvider};
use keyvault_invalidator_secrets::env::default_variable_name;
use keyvault_invalidator_secrets::{EnvProvider, StaticProvider};

const VALUE: &str = "env-value-never-shown";

#[test]
fn default_mapping_upper_cases_and_turns_separators_into_underscores() {
    let cases = [
        ("db-password", "DB_PASSWORD"),
        ("ServiceBus:ConnectionString", "SERVICEBUS_CONNECTIONSTRING"),
        (
            "ServiceBus--ConnectionString",
            "SERVICEBUS__CONNECTIONSTRING",
        ),
        ("a.b/c d", "A_B_C_D"),
        ("Api2Key", "API2KEY"),
        ("ümlaut", "_MLAUT"),
        ("ALREADY_UPPER", "ALREADY_UPPER"),
    ];
    let provider = EnvProvider::new();
    for (name, variable) in cases {
        assert_eq!(default_variable_name(name), variable, "{name}");
        assert_eq!(provider.variable_name(name), variable, "{name}");
    }
}

#[test]
fn the_prefix_goes_in_front_as_given() {
    let provider = EnvProvider::builder().prefix("MyApp_").build();
    assert_eq!(provider.variable_name("db-password"), "MyApp_DB_PASSWORD");
    let exact = EnvProvider::builder().prefix("APP_").exact_names().build();
    assert_eq!(exact.variable_name("db-password"), "APP_db-password");
    let dotnet = EnvProvider::builder()
        .map_names(|n| n.replace(':', "__"))
        .build();
    assert_eq!(
        dotnet.variable_name("ServiceBus:ConnectionString"),
        "ServiceBus__ConnectionString"
    );
}

#[tokio::test]
async fn reads_injected_variables() {
    let provider = EnvProvider::builder()
        .prefix("APP_")
        .vars([
            ("APP_DB_PASSWORD", VALUE),
            ("APP_SERVICEBUS_CONNECTIONSTRING", "Endpoint=sb://ns/"),
        ])
        .build();

    let secret = provider.get_secret("db-password").await.unwrap();
    assert_eq!(secret.value().expose_secret(), VALUE);
    assert_eq!(secret.version(), None);
    assert_eq!(secret.expires_on(), None);
    let secret = provider
        .get_secret("ServiceBus:ConnectionString")
        .await
        .unwrap();
    assert_eq!(secret.value().expose_secret(), "Endpoint=sb://ns/");
}

#[tokio::test]
async fn unset_and_empty_variables_are_not_found() {
    let provider = EnvProvider::builder().vars([("EMPTY", "")]).build();
    for name in ["empty", "unset"] {
        let error = provider.get_secret(name).await.unwrap_err();
        assert_eq!(error.kind, ProviderErrorKind::NotFound, "{name}");
    }
    let error = provider.get_secret("unset").await.unwrap_err();
    assert_eq!(
        error.message,
        "environment variable `UNSET` is not set or empty"
    );
}

#[tokio::test]
async fn looks_up_exactly_the_mapped_variable_once() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let provider = EnvProvider::builder()
        .prefix("P_")
        .lookup(move |variable| {
            recorded.lock().unwrap().push(variable.to_owned());
            None
        })
        .build();

    let _ = provider.get_secret("Db:Password").await;

    assert_eq!(*seen.lock().unwrap(), vec!["P_DB_PASSWORD".to_owned()]);
}

#[tokio::test]
async fn invalid_names_are_rejected_without_a_lookup() {
    let lookups = Arc::new(AtomicUsize::new(0));
    let counter = lookups.clone();
    let provider = EnvProvider::builder()
        .map_names(|n| n.replace('x', "="))
        .lookup(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            Some("v".into())
        })
        .build();
    for name in ["", "  ", "x", "a\0b"] {
        let error = provider.get_secret(name).await.unwrap_err();
        assert_eq!(error.kind, ProviderErrorKind::InvalidName, "{name:?}");
    }
    assert_eq!(lookups.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn reads_the_process_environment() {
    // A name no other test touches, so parallel tests cannot race on it.
    let variable = format!("KVI_SECRETS_TEST_{}_PROCESS_ENV", std::process::id());
    std::env::set_var(&variable, VALUE);
    let provider = EnvProvider::builder()
        .prefix(format!("KVI_SECRETS_TEST_{}_", std::process::id()))
        .build();

    let secret = provider.get_secret("process-env").await.unwrap();
    assert_eq!(secret.value().expose_secret(), VALUE);

    std::env::remove_var(&variable);
    let error = provider.get_secret("process-env").await.unwrap_err();
    assert_eq!(error.kind, ProviderErrorKind::NotFound);
}

#[cfg(unix)]
#[tokio::test]
async fn a_variable_that_is_not_unicode_is_an_error() {
    use std::os::unix::ffi::OsStringExt;
    let variable = format!("KVI_SECRETS_TEST_{}_NOT_UNICODE", std::process::id());
    std::env::set_var(
        &variable,
        std::ffi::OsString::from_vec(vec![0x66, 0xff, 0x6f]),
    );
    let provider = EnvProvider::builder()
        .prefix(format!("KVI_SECRETS_TEST_{}_", std::process::id()))
        .build();

    let error = provider.get_secret("not-unicode").await.unwrap_err();

    std::env::remove_var(&variable);
    assert_eq!(error.kind, ProviderErrorKind::Other);
    assert!(
        error.message.contains("not valid Unicode"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn env_provider_debug_shows_no_values() {
    let provider = EnvProvider::builder()
        .prefix("APP_")
        .vars([("APP_X", VALUE)])
        .build();
    let shown = format!("{provider:?}");
    assert!(!shown.contains(VALUE), "{shown}");
    assert_eq!(
        shown,
        r#"EnvProvider { prefix: "APP_", mapping: "default", lookup: "custom" }"#
    );
}

#[tokio::test]
async fn static_provider_reads_pairs_case_insensitively() {
    let provider = StaticProvider::new([("Db-Password", VALUE), ("region", "westeurope")]);
    assert_eq!(provider.len(), 2);
    assert!(!provider.is_empty());

    let secret = provider.get_secret("db-password").await.unwrap();
    assert_eq!(secret.value().expose_secret(), VALUE);
    assert_eq!(secret.version(), None);
    let mut names: Vec<&str> = provider.names().collect();
    names.sort_unstable();
    assert_eq!(names, ["Db-Password", "region"]);
}

#[tokio::test]
async fn static_provider_versions_are_optional() {
    let provider = StaticProvider::builder()
        .secret("a", "1")
        .versioned_secret("b", "2", "v2")
        .secret("a", "replaced")
        .build();
    let a = provider.get_secret("a").await.unwrap();
    assert_eq!(a.value().expose_secret(), "replaced");
    assert_eq!(a.version(), None);
    assert_eq!(
        provider.get_secret("b").await.unwrap().version(),
        Some("v2")
    );
    assert_eq!(provider.len(), 2);
}

#[tokio::test]
async fn static_provider_misses_and_blank_names() {
    let provider: StaticProvider = HashMap::from([("a", "1")]).into_iter().collect();
    let error = provider.get_secret("b").await.unwrap_err();
    assert_eq!(error.kind, ProviderErrorKind::NotFound);
    let error = provider.get_secret(" ").await.unwrap_err();
    assert_eq!(error.kind, ProviderErrorKind::InvalidName);
    assert!(StaticProvider::default().is_empty());
}

#[tokio::test]
async fn static_provider_debug_shows_names_only() {
    let provider = StaticProvider::new([("b", VALUE), ("a", VALUE)]);
    let shown = format!("{provider:?}");
    assert_eq!(shown, r#"StaticProvider { names: ["a", "b"] }"#);
    let builder = StaticProvider::builder().secret("a", VALUE);
    assert!(!format!("{builder:?}").contains(VALUE));
}
