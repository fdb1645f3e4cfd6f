//! Authentication: an access key or an Entra ID credential is accepted, a wrong key is a fatal
//! error naming the problem, a missing role names the role, and the key never shows in Debug
//! output, errors or logs.

mod common;

use keyvault_invalidator_core::{EventSource, Settlement, SourceErrorKind};
use keyvault_invalidator_eventgrid::pull::{PullSource, EVENT_GRID_SCOPE};
use keyvault_invalidator_testkit::conformance::receive_some;
use keyvault_invalidator_testkit::eventgrid_namespace::{Fault, Operation};
use keyvault_invalidator_testkit::CapturedLogs;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entra_id_credential_gets_tokens_for_the_event_grid_scope() {
    let standin = common::standin().await;
    let (topic, subscription) = common::new_subscription(&standin, "auth-credential");
    standin
        .publish(&topic, [common::cloud_event("e-1", json!({}))])
        .unwrap();
    let credential = standin.credential();
    let config = common::builder(&standin, &topic, &subscription)
        .credential(credential.clone())
        .build()
        .unwrap();
    let source = PullSource::new(config);
    let delivery = receive_some(&source, 10, "with a token").await.remove(0);
    source
        .settle(delivery.token, Settlement::Complete)
        .await
        .unwrap();
    assert_eq!(credential.last_scopes(), vec![EVENT_GRID_SCOPE.to_owned()]);
    assert_eq!(standin.calls(Operation::Acknowledge), 1);
    source.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_role_is_fatal_and_names_the_role() {
    let standin = common::standin().await;
    let (topic, subscription) = common::new_subscription(&standin, "auth-role");
    standin.fail_next(Operation::Receive, 1, Fault::Status(403));
    let source = common::source(&standin, &topic, &subscription);
    let error = source.receive(10).await.unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::Fatal, "{error}");
    assert!(
        error.message.contains("EventGrid Data Receiver role"),
        "{error}"
    );
    source.close().await.unwrap();
}

// Current-thread, so that the subscriber set for this thread sees every task's logs.
#[tokio::test(flavor = "current_thread")]
async fn a_wrong_key_is_fatal_names_the_problem_and_no_key_is_ever_shown() {
    let captured = CapturedLogs::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let standin = common::standin().await;
    let (topic, subscription) = common::new_subscription(&standin, "auth-key");
    let wrong_key = "wrong-key-9f8e7d";
    let config = common::builder(&standin, &topic, &subscription)
        .access_key(wrong_key)
        .build()
        .unwrap();
    let config_debug = format!("{config:?}");
    let source = PullSource::new(config);
    let error = source.receive(10).await.unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::Fatal, "{error}");
    assert!(
        error
            .message
            .contains("Event Grid refused the credentials for :receive (401)")
            && error.message.contains("check the access key"),
        "{error}"
    );
    assert_eq!(standin.calls(Operation::Receive), 1);

    // The right key works, and shows nowhere either.
    let right = common::source(&standin, &topic, &subscription);
    standin
        .publish(&topic, [common::cloud_event("e-1", json!({}))])
        .unwrap();
    let delivery = receive_some(&right, 10, "with the key").await.remove(0);
    right
        .settle(delivery.token, Settlement::Complete)
        .await
        .unwrap();
    right.close().await.unwrap();
    source.close().await.unwrap();

    let logs = captured.text();
    assert!(
        logs.contains("Event Grid"),
        "the logs were captured: {logs}"
    );
    for shown in [
        config_debug,
        format!("{source:?}"),
        format!("{error:?}"),
        error.to_string(),
        logs,
    ] {
        assert!(!shown.contains(wrong_key), "the wrong key leaked: {shown}");
        assert!(
            !shown.contains(standin.access_key()),
            "the key leaked: {shown}"
        );
    }
}
