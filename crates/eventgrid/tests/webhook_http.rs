//! The webhook's HTTP contract, status by status: handshakes, authentication, malformed and
//! oversized bodies, the answer its settlements decide, the deadline, batches all or none.

mod support;

use std::time::Duration;

use keyvault_invalidator_core::{
    DeadLetterReason, Delivery, EventSource, Settlement, SourceErrorKind,
};
use keyvault_invalidator_eventgrid::webhook::{WebhookConfig, WebhookErrorKind, WebhookSource};
use keyvault_invalidator_testkit::eventgrid_push::{
    Attempt, AttemptOutcome, DeliverySchema, EventGridPusher, PushOutcome, RetrySchedule,
};
use secrecy::SecretString;
use serde_json::{json, Value};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn pusher(source: &WebhookSource) -> EventGridPusher {
    EventGridPusher::new(&url(source, SECRET))
        .unwrap()
        .retry_schedule(RetrySchedule::fast(Duration::from_millis(20), 5))
}

async fn receive(source: &WebhookSource, max: usize) -> Vec<Delivery> {
    tokio::time::timeout(WAIT, source.receive(max))
        .await
        .expect("a delivery arrives")
        .expect("receive")
}

async fn receive_exactly(source: &WebhookSource, count: usize) -> Vec<Delivery> {
    let mut all = Vec::new();
    while all.len() < count {
        all.extend(receive(source, count - all.len()).await);
    }
    all
}

fn validation_body(code: &str) -> String {
    json!([{
        "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
        "topic": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv",
        "subject": "",
        "data": { "validationCode": code, "validationUrl": "https://rp.eventgrid.azure.net/validate" },
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "eventTime": "2026-12-02T06:00:00Z",
        "metadataVersion": "1",
        "dataVersion": "2"
    }])
    .to_string()
}

#[tokio::test]
async fn the_event_grid_validation_handshake_is_answered_with_the_code() {
    let source = bind(loopback_config()).await;
    let answer = pusher(&source)
        .validate_subscription("512d38b6-c7b8-40c8-89fe-f46f9e9622b6")
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&answer.body).unwrap(),
        json!({ "validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6" })
    );
    assert!(answer.validated);
    source.close().await.unwrap();
}

#[tokio::test]
async fn the_cloudevents_options_handshake_grants_the_origin() {
    let source = bind(loopback_config()).await;
    let answer = pusher(&source)
        .schema(DeliverySchema::CloudEvents)
        .abuse_protection_handshake()
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.allowed_origin.as_deref(),
        Some("eventgrid.azure.net")
    );
    assert_eq!(answer.allowed_rate.as_deref(), Some("*"));
    assert!(answer.validated);
    source.close().await.unwrap();
}

#[tokio::test]
async fn a_subscription_deletion_notice_is_answered_200() {
    let source = bind(loopback_config()).await;
    let body = json!([{ "id": "d", "eventType": "Microsoft.EventGrid.SubscriptionDeletedEvent", "data": {} }]);
    let (status, _) = post(
        &url(&source, SECRET),
        &[("aeg-event-type", "SubscriptionDeletion")],
        body.to_string(),
    )
    .await;
    assert_eq!(status, 200);
    source.close().await.unwrap();
}

#[tokio::test]
async fn requests_without_an_accepted_secret_get_401_before_the_body_is_read() {
    let config = WebhookConfig::new("127.0.0.1:0".parse().unwrap())
        .plain_http()
        .shared_secret(SecretString::from("old-secret"))
        .also_accept_shared_secret(SecretString::from("new-secret"));
    let source = bind(config).await;
    let address = source.local_addr();
    let body = validation_body("abc");
    for (query, expected) in [
        ("", 401),
        ("?code=", 401),
        ("?code=wrong", 401),
        ("?key=old-secret", 401),
        ("?code=older-secret", 401),
        ("?code=old-secret", 200),
        ("?code=new-secret", 200),
    ] {
        let (status, _) = post(
            &format!("http://{address}/api/events{query}"),
            &[],
            body.clone(),
        )
        .await;
        assert_eq!(status, expected, "query `{query}`");
    }
    // Refused for the secret, not for the malformed body: authentication comes first.
    let (status, answer) = post(
        &format!("http://{address}/api/events?code=wrong"),
        &[],
        "{not json",
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap(),
        json!({ "error": { "code": "Unauthorized", "message": "the request is not authenticated" } })
    );
    // The CloudEvents handshake is authenticated too.
    let response = client()
        .request(
            reqwest::Method::OPTIONS,
            format!("http://{address}/api/events"),
        )
        .header("WebHook-Request-Origin", "eventgrid.azure.net")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert!(response.headers().get("webhook-allowed-origin").is_none());
    source.close().await.unwrap();
}

#[tokio::test]
async fn a_rotated_secret_is_accepted_under_another_query_parameter_name() {
    let config = WebhookConfig::new("127.0.0.1:0".parse().unwrap())
        .plain_http()
        .shared_secret(SecretString::from("first"))
        .query_parameter("token");
    let source = bind(config).await;
    let address = source.local_addr();
    let body = validation_body("abc");
    let (status, _) = post(&format!("http://{address}/?token=first"), &[], body.clone()).await;
    assert_eq!(status, 200);
    let (status, _) = post(&format!("http://{address}/?code=first"), &[], body).await;
    assert_eq!(status, 401);
    source.close().await.unwrap();
}

#[tokio::test]
async fn a_body_that_is_not_json_is_400_and_delivers_nothing() {
    let source = bind(loopback_config()).await;
    let (status, body) = post(
        &url(&source, SECRET),
        &[("aeg-event-type", "Notification")],
        "{not json",
    )
    .await;
    assert_eq!(status, 400);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "MalformedPayload");
    let (status, _) = post(&url(&source, SECRET), &[], "[]").await;
    assert_eq!(status, 400);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), source.receive(10))
            .await
            .is_err(),
        "nothing is delivered"
    );
    source.close().await.unwrap();
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let source = bind(loopback_config().max_body_bytes(1024)).await;
    let big = format!("[{}]", "1,".repeat(600) + "1");
    assert!(big.len() > 1024);
    let (status, body) = post(&url(&source, SECRET), &[], big).await;
    assert_eq!(status, 413);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({ "error": { "code": "PayloadTooLarge", "message": "the body is larger than 1024 bytes" } })
    );
    // Just under the limit is taken.
    let answer = pusher(&source).validate_subscription("fits").await.unwrap();
    assert_eq!(answer.status, 200);
    source.close().await.unwrap();
}

#[tokio::test]
async fn only_post_and_options_are_answered() {
    let source = bind(loopback_config()).await;
    let response = client().get(url(&source, SECRET)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "POST, OPTIONS");
    source.close().await.unwrap();
}

#[tokio::test]
async fn an_abandoned_event_is_503_and_its_retry_comes_with_delivery_count_2() {
    let source = bind(loopback_config()).await;
    let pusher = pusher(&source).subscription_name("kv-events");
    let event = event_grid_event("ev-1", "db-password", "v2").to_string();
    let push = tokio::spawn({
        let pusher = pusher.clone();
        async move { pusher.push_events("ev-1", &[event.as_bytes()]).await }
    });
    let first = receive_exactly(&source, 1).await.remove(0);
    assert_eq!(first.delivery_count, 1);
    assert_eq!(first.message_id.as_deref(), Some("ev-1"));
    assert_eq!(first.properties["aeg-event-type"], "Notification");
    assert_eq!(first.properties["aeg-subscription-name"], "KV-EVENTS");
    assert_eq!(first.properties["aeg-delivery-count"], "1");
    assert_eq!(first.properties["aeg-metadata-version"], "1");
    assert_eq!(first.properties["aeg-data-version"], "1");
    assert_eq!(first.properties["aeg-output-event-id"], "ev-1");
    source
        .settle(first.token, Settlement::Abandon)
        .await
        .unwrap();

    let again = receive_exactly(&source, 1).await.remove(0);
    assert_eq!(again.delivery_count, 2);
    assert_eq!(again.properties["aeg-delivery-count"], "2");
    assert_eq!(again.message_id.as_deref(), Some("ev-1"));
    source
        .settle(again.token, Settlement::Complete)
        .await
        .unwrap();

    let outcome = push.await.unwrap();
    assert!(
        matches!(
            outcome,
            PushOutcome::Delivered {
                status: 200,
                attempts: 2,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(
        pusher.attempts(),
        vec![
            Attempt {
                event_id: "ev-1".into(),
                delivery_count: 1,
                outcome: AttemptOutcome::Status(503)
            },
            Attempt {
                event_id: "ev-1".into(),
                delivery_count: 2,
                outcome: AttemptOutcome::Status(200)
            },
        ]
    );
    source.close().await.unwrap();
}

#[tokio::test]
async fn a_request_not_settled_by_its_deadline_is_503_and_its_settlement_is_lost() {
    let source = bind(loopback_config().answer_deadline(Duration::from_millis(300))).await;
    let pusher = EventGridPusher::new(&url(&source, SECRET))
        .unwrap()
        .retry_schedule(RetrySchedule::fast(Duration::from_millis(10), 1));
    let event = event_grid_event("late-1", "db-password", "v2").to_string();
    let push = tokio::spawn(async move { pusher.push_events("late-1", &[event.as_bytes()]).await });
    let delivery = receive_exactly(&source, 1).await.remove(0);
    let PushOutcome::DeadLettered(letter) = push.await.unwrap() else {
        panic!("one attempt only: the 503 ends it");
    };
    assert_eq!(letter.status, Some(503));
    assert_eq!(
        serde_json::from_str::<Value>(&letter.answer).unwrap()["error"]["code"],
        "DeadlineExceeded"
    );
    let error = source
        .settle(delivery.token, Settlement::Complete)
        .await
        .unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::SettlementLost);
    source.close().await.unwrap();
}

#[tokio::test]
async fn a_batch_is_answered_all_or_none() {
    let source = bind(loopback_config()).await;
    let pusher = pusher(&source);
    let events: Vec<String> = (1..=3)
        .map(|n| event_grid_event(&format!("b-{n}"), &format!("secret-{n}"), "v9").to_string())
        .collect();
    let push = tokio::spawn({
        let pusher = pusher.clone();
        async move {
            let bodies: Vec<&[u8]> = events.iter().map(|e| e.as_bytes()).collect();
            pusher.push_events("batch", &bodies).await
        }
    });
    // One delivery per event, the very bytes of each.
    let first = receive_exactly(&source, 3).await;
    let ids: Vec<_> = first
        .iter()
        .map(|d| d.message_id.clone().unwrap())
        .collect();
    assert_eq!(ids, vec!["b-1", "b-2", "b-3"]);
    let parsed: Value = serde_json::from_slice(&first[1].body).unwrap();
    assert_eq!(parsed["subject"], "secret-2");
    // Two applied, one to try again: the whole request comes back.
    let mut first = first.into_iter();
    source
        .settle(first.next().unwrap().token, Settlement::Complete)
        .await
        .unwrap();
    source
        .settle(first.next().unwrap().token, Settlement::Abandon)
        .await
        .unwrap();
    source
        .settle(first.next().unwrap().token, Settlement::Complete)
        .await
        .unwrap();
    let second = receive_exactly(&source, 3).await;
    assert!(second.iter().all(|d| d.delivery_count == 2));
    for delivery in second {
        source
            .settle(delivery.token, Settlement::Complete)
            .await
            .unwrap();
    }
    assert!(matches!(
        push.await.unwrap(),
        PushOutcome::Delivered {
            status: 200,
            attempts: 2,
            ..
        }
    ));
    let statuses: Vec<_> = pusher.attempts().into_iter().map(|a| a.outcome).collect();
    assert_eq!(
        statuses,
        vec![AttemptOutcome::Status(503), AttemptOutcome::Status(200)]
    );
    source.close().await.unwrap();
}

#[tokio::test]
async fn a_dead_lettered_event_makes_its_batch_400_with_the_reason() {
    let source = bind(loopback_config()).await;
    let pusher = pusher(&source);
    let good = event_grid_event("ok-1", "a", "v1").to_string();
    let poison = r#"{"id":"poison-1","eventType":"Microsoft.KeyVault.SecretNewVersionCreated"}"#;
    let push = tokio::spawn({
        let pusher = pusher.clone();
        async move {
            pusher
                .push_events("batch", &[good.as_bytes(), poison.as_bytes()])
                .await
        }
    });
    let mut deliveries = receive_exactly(&source, 2).await.into_iter();
    source
        .settle(deliveries.next().unwrap().token, Settlement::Complete)
        .await
        .unwrap();
    let settlement =
        Settlement::dead_letter(DeadLetterReason::MalformedPayload, "event 0: no data");
    source
        .settle(deliveries.next().unwrap().token, settlement)
        .await
        .unwrap();
    let PushOutcome::DeadLettered(letter) = push.await.unwrap() else {
        panic!("a 400 is not retried");
    };
    assert_eq!(letter.status, Some(400));
    assert_eq!(letter.attempts, 1);
    assert_eq!(
        serde_json::from_str::<Value>(&letter.answer).unwrap(),
        json!({
            "error": { "code": "DeadLettered", "message": "1 of 2 events can never be applied" },
            "deadLettered": [{ "index": 1, "id": "poison-1", "reason": "MalformedPayload", "description": "event 0: no data" }]
        })
    );
    source.close().await.unwrap();
}

#[tokio::test]
async fn close_answers_waiting_requests_503() {
    let source = bind(loopback_config()).await;
    let pusher = EventGridPusher::new(&url(&source, SECRET))
        .unwrap()
        .retry_schedule(RetrySchedule::fast(Duration::from_millis(10), 1));
    let event = event_grid_event("c-1", "a", "v1").to_string();
    let push = tokio::spawn(async move { pusher.push_events("c-1", &[event.as_bytes()]).await });
    let delivery = receive_exactly(&source, 1).await.remove(0);
    source.close().await.unwrap();
    let PushOutcome::DeadLettered(letter) = push.await.unwrap() else {
        panic!("one attempt only");
    };
    assert_eq!(letter.status, Some(503));
    let error = source
        .settle(delivery.token, Settlement::Complete)
        .await
        .unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::SettlementLost);
    assert_eq!(
        source.receive(1).await.unwrap_err().kind,
        SourceErrorKind::Closed
    );
}

#[tokio::test]
async fn plain_http_on_a_non_loopback_address_is_refused_unless_asked_for_by_name() {
    let public = "0.0.0.0:0".parse().unwrap();
    let secret = || SecretString::from(SECRET);
    let error = WebhookSource::bind(
        WebhookConfig::new(public)
            .plain_http()
            .shared_secret(secret()),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind(), WebhookErrorKind::InvalidConfig);
    assert!(!error.is_retryable());
    assert!(
        error
            .to_string()
            .contains("plain_http_allowing_non_loopback"),
        "{error}"
    );
    let allowed = WebhookConfig::new(public)
        .plain_http_allowing_non_loopback()
        .shared_secret(secret());
    let source = WebhookSource::bind(allowed).await.unwrap();
    assert!(!source.is_tls());
    source.close().await.unwrap();
}

#[tokio::test]
async fn a_webhook_needs_a_transport_and_an_authentication() {
    let loopback = "127.0.0.1:0".parse().unwrap();
    let no_transport = WebhookConfig::new(loopback).shared_secret(SecretString::from(SECRET));
    let no_auth = WebhookConfig::new(loopback).plain_http();
    let empty_secret = WebhookConfig::new(loopback)
        .plain_http()
        .shared_secret(SecretString::from(""));
    for config in [no_transport, no_auth, empty_secret] {
        let error = WebhookSource::bind(config).await.unwrap_err();
        assert_eq!(error.kind(), WebhookErrorKind::InvalidConfig, "{error}");
    }
    let open = WebhookConfig::new(loopback)
        .plain_http()
        .without_authentication();
    let source = WebhookSource::bind(open).await.unwrap();
    let (status, _) = post(
        &format!("http://{}/", source.local_addr()),
        &[],
        validation_body("x"),
    )
    .await;
    assert_eq!(status, 200);
    source.close().await.unwrap();
}

#[tokio::test]
async fn a_missing_certificate_file_is_a_tls_error_naming_it() {
    let config = WebhookConfig::new("127.0.0.1:0".parse().unwrap())
        .tls("/nonexistent/cert.pem", "/nonexistent/key.pem")
        .shared_secret(SecretString::from(SECRET));
    let error = WebhookSource::bind(config).await.unwrap_err();
    assert_eq!(error.kind(), WebhookErrorKind::Tls);
    assert!(
        error.to_string().contains("/nonexistent/cert.pem"),
        "{error}"
    );
}
