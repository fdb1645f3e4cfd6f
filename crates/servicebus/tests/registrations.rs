//! The original library's registration checks, re-expressed: every blank or invalid argument
//! is refused up front, naming the argument.

use std::time::Duration;

use keyvault_invalidator_servicebus::{
    Authorization, ConnectionString, ManagedIdentity, ServiceBusConfig, SubscriptionMode,
    SubscriptionProperties,
};
use keyvault_invalidator_testkit::InMemoryVault;

const CS: &str = "Endpoint=sb://my-ns.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=c2VjcmV0LWtleQ==;EntityPath=keyvault-events";

fn argument<T: std::fmt::Debug>(
    result: Result<T, keyvault_invalidator_servicebus::ConfigError>,
) -> &'static str {
    result.unwrap_err().argument
}

#[test]
fn managed_identity_refuses_each_blank_argument() {
    assert_eq!(
        argument(
            ServiceBusConfig::managed_identity("my-ns", ManagedIdentity::SystemAssigned)
                .and_then(|c| c.topic(" "))
                .and_then(|c| c.subscription_prefix("app"))
        ),
        "topic"
    );
    assert_eq!(
        argument(
            ServiceBusConfig::managed_identity("my-ns", ManagedIdentity::SystemAssigned)
                .and_then(|c| c.topic("t"))
                .and_then(|c| c.subscription_prefix(""))
        ),
        "subscription name prefix"
    );
    assert_eq!(
        argument(
            ServiceBusConfig::managed_identity("\t", ManagedIdentity::SystemAssigned)
                .and_then(|c| c.topic("t"))
                .and_then(|c| c.subscription_prefix("app"))
        ),
        "namespace"
    );
    assert_eq!(
        argument(
            ServiceBusConfig::managed_identity("my-ns", ManagedIdentity::user_assigned(" "))
                .and_then(|c| c.topic("t"))
                .and_then(|c| c.subscription_prefix("app"))
        ),
        "client id"
    );
}

#[test]
fn managed_identity_completes_the_namespace() {
    let config = ServiceBusConfig::managed_identity("my-ns", ManagedIdentity::SystemAssigned)
        .and_then(|c| c.topic("keyvault-events"))
        .and_then(|c| c.subscription_prefix("app"))
        .unwrap();
    assert_eq!(config.namespace(), Some("my-ns.servicebus.windows.net"));
    assert_eq!(config.topic_name(), Some("keyvault-events"));
    assert!(matches!(
        config.authorization(),
        Authorization::Credential(_)
    ));
    let user_assigned = ServiceBusConfig::managed_identity(
        "my-ns.servicebus.windows.net",
        ManagedIdentity::user_assigned("00000000-0000-0000-0000-000000000001"),
    )
    .and_then(|c| c.topic("keyvault-events"))
    .and_then(|c| c.subscription_prefix("app"))
    .unwrap();
    assert_eq!(
        user_assigned.namespace(),
        Some("my-ns.servicebus.windows.net")
    );
}

#[test]
fn connection_string_registration_takes_the_topic_from_entity_path() {
    let config = ServiceBusConfig::connection_string(CS)
        .and_then(|c| c.subscription_prefix("app"))
        .unwrap();
    assert_eq!(config.topic_name(), Some("keyvault-events"));
    assert_eq!(config.namespace(), Some("my-ns.servicebus.windows.net"));
    let without = CS.replace(";EntityPath=keyvault-events", "");
    let config = ServiceBusConfig::connection_string(&without)
        .and_then(|c| c.subscription_prefix("app"))
        .unwrap();
    assert_eq!(config.topic_name(), None);
    assert_eq!(config.topic("other").unwrap().topic_name(), Some("other"));
}

#[test]
fn connection_string_registration_refuses_bad_arguments() {
    assert_eq!(
        argument(
            ServiceBusConfig::connection_string("  ").and_then(|c| c.subscription_prefix("app"))
        ),
        "connection string"
    );
    assert_eq!(
        argument(ServiceBusConfig::connection_string(CS).and_then(|c| c.subscription_prefix(" "))),
        "subscription name prefix"
    );
    let no_key = "Endpoint=sb://my-ns.servicebus.windows.net/;SharedAccessKeyName=listen";
    let error = ServiceBusConfig::connection_string(no_key)
        .and_then(|c| c.subscription_prefix("app"))
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid Service Bus setting `connection string`: needs `SharedAccessKeyName` and `SharedAccessKey`, or `SharedAccessSignature`"
    );
    assert_eq!(
        argument(
            ServiceBusConfig::connection_string("SharedAccessKey=k")
                .and_then(|c| c.subscription_prefix("app"))
        ),
        "connection string"
    );
    assert_eq!(
        argument(
            ServiceBusConfig::connection_string(
                "Endpoint=http://x/;SharedAccessKeyName=a;SharedAccessKey=k"
            )
            .and_then(|c| c.subscription_prefix("app"))
        ),
        "connection string"
    );
}

#[test]
fn the_store_registration_refuses_a_blank_secret_key_or_prefix() {
    assert_eq!(
        argument(
            ServiceBusConfig::connection_string_from_store(InMemoryVault::new(), " ")
                .and_then(|c| c.subscription_prefix("app"))
        ),
        "secret key"
    );
    assert_eq!(
        argument(
            ServiceBusConfig::connection_string_from_store(
                InMemoryVault::new(),
                "ServiceBus--ConnectionString"
            )
            .and_then(|c| c.subscription_prefix(""))
        ),
        "subscription name prefix"
    );
    let config = ServiceBusConfig::connection_string_from_store(
        InMemoryVault::new(),
        "ServiceBus--ConnectionString",
    )
    .and_then(|c| c.subscription_prefix("app"))
    .unwrap();
    assert_eq!(
        (config.namespace(), config.topic_name()),
        (None, None),
        "known only once read"
    );
}

#[test]
fn emulator_connection_strings_use_plain_amqp_and_honour_the_port() {
    let emulator: ConnectionString =
        "Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;"
            .parse()
            .unwrap();
    assert_eq!(emulator.amqp_url(), "amqp://localhost:5672");
    assert!(emulator.is_development_emulator());
    let explicit: ConnectionString =
        "Endpoint=sb://127.0.0.1:40123;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true"
            .parse()
            .unwrap();
    assert_eq!(explicit.amqp_url(), "amqp://127.0.0.1:40123");
}

#[test]
fn subscriptions_existing_or_created_are_checked() {
    let config = ServiceBusConfig::connection_string(CS)
        .and_then(|c| c.subscription_prefix("app"))
        .unwrap();
    assert_eq!(
        argument(config.clone().existing_subscription(" ")),
        "subscription name"
    );
    assert_eq!(
        argument(config.clone().existing_subscription(&"s".repeat(51))),
        "subscription name"
    );
    let existing = config.clone().existing_subscription("shared-sub").unwrap();
    assert_eq!(
        existing.subscription(),
        &SubscriptionMode::Existing {
            name: "shared-sub".to_owned()
        }
    );
    let too_short =
        SubscriptionProperties::default().with_auto_delete_on_idle(Duration::from_secs(60));
    assert_eq!(
        argument(config.subscription_properties(too_short)),
        "auto delete on idle"
    );
}

#[test]
fn no_key_or_connection_string_reaches_debug_output() {
    let config = ServiceBusConfig::connection_string(CS)
        .and_then(|c| c.subscription_prefix("app"))
        .unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains("c2VjcmV0LWtleQ"), "{shown}");
    assert!(shown.contains("key of policy `listen`"), "{shown}");
    let signature: ConnectionString = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessSignature=SharedAccessSignature sr=x&sig=SECRETSIG&se=1&skn=k"
        .parse()
        .unwrap();
    assert!(!format!("{signature:?}").contains("SECRETSIG"));
}
