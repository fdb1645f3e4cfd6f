//! The management client against the emulator's management endpoint: create, conflict,
//! delete, and how each failure is classified (by type: the status, the transport failure,
//! the credential), with the `Retry-After` kept.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyvault_invalidator_core::{SourceError, SourceErrorKind};
use keyvault_invalidator_servicebus::{
    sas_token, Creation, Deletion, ManagementAuth, ManagementClient, ManagementFailure,
    SharedAccess, SubscriptionProperties,
};
use keyvault_invalidator_testkit::keyvault_standin::FakeTokenCredential;
use keyvault_invalidator_testkit::servicebus_emulator::{
    ManagementFault, ServiceBusEmulator, SubscriptionSettings, POLICY_NAME,
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
    let properties = SubscriptionProperties::default()
        .with_lock_duration(Duration::from_secs(30))
        .with_max_delivery_count(7)
        .with_auto_delete_on_idle(Duration::from_secs(2 * 3600));

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
    assert_eq!(error.failure(), ManagementFailure::Status(404));
    assert!(!error.is_transient() && !error.is_refused());
    assert_eq!(
        error.to_string(),
        "creating subscription `app-1` of topic `no-such-topic`: HTTP 404, the topic does not exist"
    );
    assert_eq!(SourceError::from(error).kind, SourceErrorKind::Fatal);

    let error = with_key(&emulator, "not-the-key")
        .create_subscription(TOPIC, "app-1", &SubscriptionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(401));
    assert!(error.is_refused() && !error.is_transient());
    assert!(
        error.message().contains("Azure Service Bus Data Owner"),
        "{error}"
    );
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
        assert_eq!(error.status(), Some(401), "{error}");
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
    // At pod start the managed identity endpoint may not be ready yet: worth retrying.
    assert_eq!(error.failure(), ManagementFailure::Credential);
    assert!(error.is_transient());
    assert!(
        std::error::Error::source(&error).is_some(),
        "the credential's error is kept"
    );
    assert_eq!(SourceError::from(error).kind, SourceErrorKind::Transient);
    assert_eq!(
        emulator.management_request_count("PUT"),
        1,
        "no request without a token"
    );
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
    assert_eq!(error.status(), Some(503));
    assert!(error.is_transient());
    assert_eq!(error.retry_after(), None);
    assert_eq!(
        client
            .create_subscription(TOPIC, "app-4", &SubscriptionProperties::default())
            .await
            .unwrap(),
        Creation::Created,
        "the retry succeeds"
    );
}

#[tokio::test]
async fn timeouts_throttling_and_server_errors_are_transient_and_others_fatal() {
    let emulator = emulator().await;
    let client = with_key(&emulator, &emulator.policy_key());
    for (status, transient) in [
        (408, true),
        (429, true),
        (500, true),
        (502, true),
        (503, true),
        (400, false),
        (401, false),
        (403, false),
    ] {
        emulator.fail_next_management(status);
        let error = client
            .create_subscription(TOPIC, "app-5", &SubscriptionProperties::default())
            .await
            .unwrap_err();
        assert_eq!(error.status(), Some(status));
        assert_eq!(error.is_transient(), transient, "HTTP {status}");
        assert_eq!(
            error.is_refused(),
            matches!(status, 401 | 403),
            "HTTP {status}"
        );
        let expected = if transient {
            SourceErrorKind::Transient
        } else {
            SourceErrorKind::Fatal
        };
        assert_eq!(SourceError::from(error).kind, expected, "HTTP {status}");
    }
    assert_eq!(emulator.subscriptions(TOPIC), Vec::<String>::new());
    assert_eq!(emulator.management_request_count("PUT"), 8);
}

#[tokio::test]
async fn a_refusal_names_the_role_needed() {
    let emulator = emulator().await;
    let client = with_key(&emulator, &emulator.policy_key());
    emulator.fail_next_management(403);
    let error = client
        .create_subscription(TOPIC, "app-6", &SubscriptionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "creating subscription `app-6` of topic `keyvault-events`: HTTP 403, forbidden: the identity needs the Azure Service Bus Data Owner role on the namespace or topic (a connection string needs a shared access policy with Manage rights)"
    );
}

#[tokio::test]
async fn a_throttled_answer_keeps_its_retry_after_in_seconds() {
    let emulator = emulator().await;
    let client = with_key(&emulator, &emulator.policy_key());
    emulator.fail_management(ManagementFault::status(429).retry_after("2"));
    let error = client
        .create_subscription(TOPIC, "app-7", &SubscriptionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(429));
    assert_eq!(error.retry_after(), Some(Duration::from_secs(2)));
    let error = SourceError::from(error);
    assert_eq!(error.kind, SourceErrorKind::Transient);
    assert_eq!(error.retry_after, Some(Duration::from_secs(2)));
}

#[tokio::test]
async fn a_busy_answer_keeps_its_retry_after_as_an_http_date() {
    let emulator = emulator().await;
    let client = with_key(&emulator, &emulator.policy_key());
    let at = SystemTime::now() + Duration::from_secs(30);
    emulator.fail_management(ManagementFault::status(503).retry_after(http_date(at)));
    let error = client
        .create_subscription(TOPIC, "app-8", &SubscriptionProperties::default())
        .await
        .unwrap_err();
    let delay = error.retry_after().expect("the date is read");
    // The date has whole seconds; the request took a moment.
    assert!(
        delay > Duration::from_secs(25) && delay <= Duration::from_secs(30),
        "{delay:?}"
    );

    emulator.fail_management(ManagementFault::status(503).retry_after("in a while"));
    let error = client
        .create_subscription(TOPIC, "app-8", &SubscriptionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(error.retry_after(), None, "an unreadable value is ignored");
    assert!(error.is_transient());
}

#[tokio::test]
async fn no_answer_is_a_transient_network_failure() {
    // A port nothing listens on: the connection is refused.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let access = SharedAccess::Key {
        name: POLICY_NAME.to_owned(),
        key: SecretString::from("a2V5".to_owned()),
    };
    let client = ManagementClient::new(
        &format!("http://127.0.0.1:{port}/"),
        ManagementAuth::SharedAccess(access),
    )
    .unwrap();
    let error = client
        .create_subscription(TOPIC, "app-9", &SubscriptionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(error.failure(), ManagementFailure::Network);
    assert!(error.is_transient());
    assert_eq!(
        error.to_string(),
        "creating subscription `app-9` of topic `keyvault-events` failed: could not connect to the management endpoint"
    );
    assert!(!format!("{error:?}").contains("a2V5"));
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`, as `Retry-After` dates are written.
fn http_date(at: SystemTime) -> String {
    azure_core::time::to_rfc7231(&azure_core::time::OffsetDateTime::from(at))
}
