//! Configuration validation: each mistake is refused with the argument it concerns.

use std::sync::Arc;
use std::time::Duration;

use keyvault_invalidator_eventgrid::pull::{
    PullConfig, PullConfigBuilder, PullConfigErrorKind, ReleaseDelay,
};
use keyvault_invalidator_testkit::keyvault_standin::FakeTokenCredential;

const ENDPOINT: &str = "https://my-ns.westeurope-1.eventgrid.azure.net";

fn valid() -> PullConfigBuilder {
    PullConfig::builder(ENDPOINT, "keyvault-events", "instance-1").access_key("k")
}

fn refused(builder: PullConfigBuilder) -> (PullConfigErrorKind, &'static str, String) {
    let error = builder.build().unwrap_err();
    assert!(!error.is_retryable());
    (error.kind, error.argument, error.to_string())
}

#[test]
fn a_valid_configuration_keeps_what_it_was_given() {
    let config = valid()
        .max_events(100)
        .max_wait_time(Duration::from_secs(120))
        .release_delay(ReleaseDelay::OneMinute)
        .lock_duration(Duration::from_secs(300))
        .max_lock_renewal(Duration::from_secs(3600))
        .build()
        .unwrap();
    assert_eq!(config.endpoint().as_str(), format!("{ENDPOINT}/"));
    assert_eq!(
        (config.topic(), config.subscription()),
        ("keyvault-events", "instance-1")
    );
    assert_eq!(config.max_events(), 100);
    assert_eq!(config.max_wait_time(), Duration::from_secs(120));
    assert_eq!(config.release_delay().seconds(), 60);
    assert_eq!(
        config.lock_renewal().max_duration(),
        Duration::from_secs(3600)
    );
    assert_eq!(
        ReleaseDelay::from_seconds(600),
        Some(ReleaseDelay::TenMinutes)
    );
    assert_eq!(ReleaseDelay::from_seconds(30), None);
}

#[test]
fn each_mistake_names_its_argument() {
    use PullConfigErrorKind::*;
    let cases: Vec<(PullConfigBuilder, PullConfigErrorKind, &str)> = vec![
        (
            PullConfig::builder(ENDPOINT, "keyvault-events", "instance-1"),
            MissingAuth,
            "credential",
        ),
        (valid().max_events(0), OutOfRange, "max_events"),
        (valid().max_events(101), OutOfRange, "max_events"),
        (
            valid().max_wait_time(Duration::from_secs(9)),
            OutOfRange,
            "max_wait_time",
        ),
        (
            valid().max_wait_time(Duration::from_secs(121)),
            OutOfRange,
            "max_wait_time",
        ),
        (
            valid().max_wait_time(Duration::from_millis(10_500)),
            OutOfRange,
            "max_wait_time",
        ),
        (
            valid().lock_duration(Duration::ZERO),
            OutOfRange,
            "lock_duration",
        ),
        (
            valid().lock_duration(Duration::from_secs(301)),
            OutOfRange,
            "lock_duration",
        ),
        (
            valid().max_lock_renewal(Duration::from_secs(3601)),
            OutOfRange,
            "max_lock_renewal",
        ),
        (
            PullConfig::builder(ENDPOINT, "t", "instance-1").access_key("k"),
            InvalidName,
            "topic",
        ),
        (
            PullConfig::builder(ENDPOINT, "keyvault-events", "a/b").access_key("k"),
            InvalidName,
            "subscription",
        ),
        (
            PullConfig::builder("not a url", "keyvault-events", "instance-1").access_key("k"),
            InvalidEndpoint,
            "endpoint",
        ),
        (
            PullConfig::builder(
                format!("{ENDPOINT}/topics"),
                "keyvault-events",
                "instance-1",
            )
            .access_key("k"),
            InvalidEndpoint,
            "endpoint",
        ),
        (
            PullConfig::builder("ftp://my-ns.example", "keyvault-events", "instance-1")
                .access_key("k"),
            InvalidEndpoint,
            "endpoint",
        ),
        (
            PullConfig::builder("http://my-ns.example", "keyvault-events", "instance-1")
                .access_key("k"),
            InsecureEndpoint,
            "endpoint",
        ),
        (
            PullConfig::builder("http://127.0.0.1:8080", "keyvault-events", "instance-1")
                .credential(Arc::new(FakeTokenCredential::new("t"))),
            InsecureEndpoint,
            "endpoint",
        ),
    ];
    for (builder, kind, argument) in cases {
        let (got_kind, got_argument, message) = refused(builder);
        assert_eq!((got_kind, got_argument), (kind, argument), "{message}");
        assert!(message.contains(&format!("`{argument}`")), "{message}");
    }
}

#[test]
fn plain_http_is_taken_on_loopback_or_when_asked_for_by_name() {
    for endpoint in [
        "http://127.0.0.1:8080",
        "http://localhost:8080",
        "http://[::1]:8080",
    ] {
        PullConfig::builder(endpoint, "keyvault-events", "instance-1")
            .access_key("k")
            .build()
            .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
    }
    let remote = PullConfig::builder("http://standin.internal", "keyvault-events", "instance-1")
        .access_key("k")
        .allowing_insecure_endpoint()
        .build()
        .unwrap();
    assert_eq!(remote.endpoint().scheme(), "http");
}
