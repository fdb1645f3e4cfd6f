//! The management client against the emulator's management endpoint: create, conflict,
//! delete, and the failures that must stop the job rather than loop.

use std::sync::Arc;
use std::time::Duration;

use keyvault_invalidator_core::SourceErrorKind;
use keyvault_invalidator_servicebus::{
    sas_token, Creation, Deletion, ManagementAuth, ManagementClient, SharedAccess,
    SubscriptionProperties,
};
use keyvault_invalidator_testkit::keyvault_standin::FakeTokenCredential;
use keyvault_invalidator_testkit::servicebus_emulator::{
    ServiceBusEmulator, SubscriptionSettings, POLICY_NAME,
};
use secrecy::SecretString;

const TOPIC: &str = "keyvault-events";

async fn emulator() -> ServiceBusEmulator {
    let emulator = ServiceBusEmulator::start().await.unwrap();
    emulator.create_topic(TOPIC);
    emulator
}

fn with_key(emulator: &ServiceBusEmulator, key: &str) -> ManagementClient {
    let access = SharedAccess::Key {
        name: POLICY_NAME.to_owned(),
        key: SecretString::from(key.to_owned()),
    };
    ManagementClient::new(
        emulator.management_endpoint(),
        ManagementAuth::SharedAccess(access),
    )
    .unwrap()
}

#[tokio::test]
async fn creates_the_subscription_as_described_then_reports_a_conflict() {
    let emulator = emulator().await;
    let client = with_key(&emulator, &emulator.policy_key());
    let properties = SubscriptionProperties {
        lock_duration: Duration::from_secs(30),
        max_delivery_count: 7,
        auto_delete_on_idle: Duration::from_secs(2 * 3600),
    };

    let first = client
        .create_subscription(TOPIC, "app-0123456789ab", &properties)
        .await
        .unwrap();
    let second = client
        .create_subscription(TOPIC, "app-0123456789ab", &properties)
        .await
        .unwrap();

    assert_eq!(
        (first, second),
        (Creation::Created, Creation::AlreadyExisted)
    );
    assert_eq!(emulator.subscriptions(TOPIC), vec!["app-0123456789ab"]);
    assert_eq!(
        emulator.subscription_settings(TOPIC, "app-0123456789ab"),
        Some(SubscriptionSettings {
            lock_duration: Duration::from_secs(30),
            max_delivery_count: 7,
            auto_delete_on_idle: Duration::from_secs(2 * 3600),
        })
    );
    let statuses: Vec<u16> = emulator
        .management_requests()
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![201, 409]);
}

#[tokio::test]
async fn deletes_once_and_then_finds_it_gone() {
    let emulator = emulator().await;
    let client = with_key(&emulator, &emulator.policy_key());
    client
        .create_subscription(TOPIC, "app-1", &SubscriptionProperties::default())
        .await
        .unwrap();
    assert_eq!(
        client.delete_subscription(TOPIC, "app-1").await.unwrap(),
        Deletion::Deleted
    );
    assert_eq!(
        client.delete_subscription(TOPIC, "app-1").await.unwrap(),
        Deletion::WasAbsent
    );
    assert_eq!(emulator.subscriptions(TOPIC), Vec::<String>::new());
}

#[tokio::test]
async fn a_missing_topic_or_a_refused_key_is_fatal_and_says_why() {
    let emulator = emulator().await;
    let error = with_key(&emulator, &emulator.policy_key())
        .create_subscription("no-such-topic", "app-1", &SubscriptionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::Fatal);
    assert_eq!(
        error.message,
        "creating subscription `app-1` of topic `no-such-topic`: HTTP 404, the topic does not exist"
    );

    let error = with_key(&emulator, "not-the-key")
        .create_subscription(TOPIC, "app-1", &SubscriptionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::Fatal);
    assert!(error.message.contains("HTTP 401"), "{}", error.message);
    assert!(!error.to_string().contains("not-the-key"));
    assert_eq!(emulator.subscriptions(TOPIC), Vec::<String>::new());
}

#[tokio::test]
async fn an_expired_or_misdirected_signature_is_refused() {
    let emulator = emulator().await;
    let key = SecretString::from(emulator.policy_key());
    let entity = format!(
        "{}{TOPIC}/subscriptions/app-1",
        emulator.management_endpoint()
    );
    let expired = sas_token(&entity, POLICY_NAME, &key, 1_000);
    let other = sas_token(
        &format!(
            "{}other/subscriptions/app-1",
            emulator.management_endpoint()
        ),
        POLICY_NAME,
        &key,
        4_000_000_000,
    );
    for token in [expired, other] {
        let client = ManagementClient::new(
            emulator.management_endpoint(),
            ManagementAuth::SharedAccess(SharedAccess::Signature(token)),
        )
        .unwrap();
        let error = client
            .create_subscription(TOPIC, "app-1", &SubscriptionProperties::default())
            .await
            .unwrap_err();
        assert!(error.message.contains("HTTP 401"), "{}", error.message);
    }
    let statuses: Vec<u16> = emulator
        .management_requests()
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![401, 401]);
}

#[tokio::test]
async fn an_entra_id_credential_sends_a_bearer_token_for_the_service_bus_scope() {
    let emulator = emulator().await;
    let credential = Arc::new(FakeTokenCredential::new(emulator.bearer_token()));
    let client = ManagementClient::new(
        emulator.management_endpoint(),
        ManagementAuth::Credential(credential.clone()),
    )
    .unwrap();
    let created = client
        .create_subscription(TOPIC, "app-2", &SubscriptionProperties::default())
        .await
        .unwrap();
    assert_eq!(created, Creation::Created);
    assert_eq!(
        credential.last_scopes(),
        vec!["https://servicebus.azure.net/.default".to_owned()]
    );

    let failing = ManagementClient::new(
        emulator.management_endpoint(),
        ManagementAuth::Credential(Arc::new(FakeTokenCredential::failing())),
    )
    .unwrap();
    let error = failing
        .create_subscription(TOPIC, "app-3", &SubscriptionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::Fatal);
}

#[tokio::test]
async fn a_busy_service_is_transient() {
    let emulator = emulator().await;
    emulator.fail_next_management(503);
    let client = with_key(&emulator, &emulator.policy_key());
    let error = client
        .create_subscription(TOPIC, "app-4", &SubscriptionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::Transient);
    assert_eq!(
        client
            .create_subscription(TOPIC, "app-4", &SubscriptionProperties::default())
            .await
            .unwrap(),
        Creation::Created,
        "the retry succeeds"
    );
}
