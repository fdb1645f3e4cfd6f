//! The registrations' argument checks and defaults.

use std::time::Duration;

use super::*;

const CS: &str = "Endpoint=sb://my-ns.servicebus.windows.net/;SharedAccessKeyName=manage;SharedAccessKey=a2V5;EntityPath=keyvault-events";

#[test]
fn the_unauthorized_grace_defaults_to_five_minutes_and_can_be_set_for_every_registration() {
    let credential: Arc<dyn TokenCredential> = Arc::new(NoCredential);
    let configs = [
        ServiceBusConfig::connection_string(CS)
            .and_then(|c| c.subscription_prefix("app"))
            .unwrap(),
        ServiceBusConfig::with_credential("my-ns", credential)
            .and_then(|c| c.topic("t"))
            .and_then(|c| c.subscription_prefix("app"))
            .unwrap(),
    ];
    for config in configs {
        assert_eq!(config.unauthorized_grace_value(), Duration::from_secs(300));
        let config = config.unauthorized_grace(Duration::from_secs(2));
        assert_eq!(config.unauthorized_grace_value(), Duration::from_secs(2));
        assert!(format!("{config:?}").contains("unauthorized_grace: 2s"));
        assert_eq!(
            config
                .unauthorized_grace(Duration::ZERO)
                .unauthorized_grace_value(),
            Duration::ZERO
        );
    }
}

const REMOTE_EMULATOR: &str = "Endpoint=sb://servicebus-emulator:5672;SharedAccessKeyName=k;SharedAccessKey=s3cr3t-key;UseDevelopmentEmulator=true;EntityPath=t";

#[test]
fn an_emulator_connection_string_on_a_remote_host_is_refused_naming_the_argument() {
    let error = ServiceBusConfig::connection_string(REMOTE_EMULATOR)
        .and_then(|c| c.subscription_prefix("app"))
        .unwrap_err();
    assert_eq!(error.argument, "connection string");
    assert_eq!(
        error.to_string(),
        "invalid Service Bus setting `connection string`: `UseDevelopmentEmulator=true` with \
         `servicebus-emulator`, which is not a loopback host, would send the tokens \
         unencrypted; use the emulator on 127.0.0.1, or opt in with \
         `ServiceBusConfig::connection_string_allowing_insecure_endpoint`"
    );
    assert!(!format!("{error:?}").contains("s3cr3t-key"));
    let error = ServiceBusConfig::connection_string("Endpoint=sb://10.0.0.7;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true").and_then(|c| c.subscription_prefix("app"))
    .unwrap_err();
    assert_eq!(error.argument, "connection string");
}

#[test]
fn an_emulator_connection_string_is_accepted_on_loopback_or_with_the_opt_in() {
    for local in ["127.0.0.1:5672", "127.9.9.9", "localhost", "LocalHost:5672"] {
        let cs = format!(
            "Endpoint=sb://{local};SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true;EntityPath=t"
        );
        let config = ServiceBusConfig::connection_string(&cs)
            .and_then(|c| c.subscription_prefix("app"))
            .unwrap();
        assert!(!config.allows_insecure_endpoint(), "{local}");
    }
    let config = ServiceBusConfig::connection_string_allowing_insecure_endpoint(REMOTE_EMULATOR)
        .and_then(|c| c.subscription_prefix("app"))
        .unwrap();
    assert!(config.allows_insecure_endpoint());
    assert_eq!(config.namespace(), Some("servicebus-emulator"));
    let shown = format!("{config:?}");
    assert!(shown.contains("insecure_endpoint_allowed: true"), "{shown}");
    assert!(!shown.contains("s3cr3t-key"), "{shown}");
    // The opt-in covers the endpoint settings too.
    let config = config
        .management_endpoint("http://servicebus-emulator:5300/")
        .unwrap()
        .amqp_endpoint("amqp://servicebus-emulator:5672")
        .unwrap();
    assert_eq!(
        config.amqp_endpoint_override(),
        Some("amqp://servicebus-emulator:5672")
    );
}

#[test]
fn plain_text_endpoints_on_a_remote_host_are_refused_naming_the_argument() {
    let config = ServiceBusConfig::connection_string(CS)
        .and_then(|c| c.subscription_prefix("app"))
        .unwrap();
    let error = config
        .clone()
        .management_endpoint("http://mgmt.example.net:5300/")
        .unwrap_err();
    assert_eq!(error.argument, "management endpoint");
    assert_eq!(
        error.to_string(),
        "invalid Service Bus setting `management endpoint`: `http://` to `mgmt.example.net`, \
         which is not a loopback host, would send the tokens unencrypted; use `https://`, or \
         call `ServiceBusConfig::allow_insecure_endpoint` first"
    );
    let error = config
        .clone()
        .amqp_endpoint("amqp://10.0.0.7:5672")
        .unwrap_err();
    assert_eq!(error.argument, "amqp endpoint");
    assert_eq!(
        error.to_string(),
        "invalid Service Bus setting `amqp endpoint`: `amqp://` to `10.0.0.7`, which is not a \
         loopback host, would send the tokens unencrypted; use `amqps://`, or call \
         `ServiceBusConfig::allow_insecure_endpoint` first"
    );
    let error = config
        .clone()
        .amqp_endpoint("amqp://[2001:db8::1]:5672")
        .unwrap_err();
    assert_eq!(error.argument, "amqp endpoint");
    let error = config.clone().management_endpoint("ftp://h/").unwrap_err();
    assert_eq!(error.problem, "must be an http(s) URL");
}

#[test]
fn plain_text_endpoints_are_accepted_on_loopback_with_tls_or_with_the_opt_in() {
    let config = ServiceBusConfig::connection_string(CS)
        .and_then(|c| c.subscription_prefix("app"))
        .unwrap();
    for (management, amqp) in [
        ("http://127.0.0.1:5300/", "amqp://127.0.0.1:5672"),
        ("http://[::1]:5300/", "amqp://[::1]:5672"),
        ("http://localhost:5300/", "amqp://localhost:5672"),
        ("https://mgmt.example.net/", "amqps://amqp.example.net:5671"),
    ] {
        let config = config
            .clone()
            .management_endpoint(management)
            .unwrap()
            .amqp_endpoint(amqp)
            .unwrap();
        assert_eq!(config.management_endpoint_override(), Some(management));
    }
    let config = config
        .allow_insecure_endpoint()
        .management_endpoint("http://mgmt.example.net:5300/")
        .unwrap()
        .amqp_endpoint("amqp://10.0.0.7:5672")
        .unwrap();
    assert!(config.allows_insecure_endpoint());
    assert_eq!(
        config.amqp_endpoint_override(),
        Some("amqp://10.0.0.7:5672")
    );
}

#[test]
fn loopback_hosts() {
    for host in [
        "127.0.0.1",
        "127.255.255.254",
        "::1",
        "[::1]",
        "localhost",
        "LOCALHOST",
    ] {
        assert!(is_loopback_host(host), "{host}");
    }
    for host in [
        "128.0.0.1",
        "10.0.0.1",
        "[2001:db8::1]",
        "localhost.example.net",
        "my-ns.servicebus.windows.net",
        "",
    ] {
        assert!(!is_loopback_host(host), "{host}");
    }
}

#[derive(Debug)]
struct NoCredential;

#[async_trait::async_trait]
impl TokenCredential for NoCredential {
    async fn get_token(
        &self,
        _: &[&str],
        _: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        Err(azure_core::Error::with_message(
            azure_core::error::ErrorKind::Credential,
            "not used",
        ))
    }
}
