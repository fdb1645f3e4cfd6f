//! The namespace stand-in over HTTP, as any client sees it: the REST spec's shapes, the
//! lock-token rules, and its refusals.
#![cfg(feature = "eventgrid-namespace")]

use azure_core::http::headers::{HeaderName, AUTHORIZATION};
use azure_core::http::{Method, Request, Url};
use keyvault_invalidator_testkit::eventgrid_namespace::{NamespaceStandIn, Operation};
use serde_json::{json, Value};

const TOPIC: &str = "keyvault-events";
const SUBSCRIPTION: &str = "instance-1";

/// POSTs `body` to `path` (with `?{query}`) and gives the status and the JSON answer.
async fn post(
    standin: &NamespaceStandIn,
    path: &str,
    query: &str,
    key: &str,
    content_type: &str,
    body: Value,
) -> (u16, Value) {
    let url = Url::parse(&format!("{}{path}?{query}", standin.endpoint())).unwrap();
    let mut request = Request::new(url, Method::Post);
    request.insert_header(AUTHORIZATION, format!("SharedAccessKey {key}"));
    request.insert_header(
        HeaderName::from_static("content-type"),
        content_type.to_owned(),
    );
    request.set_body(body.to_string());
    let response = standin.transport().execute_request(&request).await.unwrap();
    let status = u16::from(response.status());
    let bytes = response.into_body().collect().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn operation(
    standin: &NamespaceStandIn,
    name: &str,
    query: &str,
    body: Value,
) -> (u16, Value) {
    let path = format!("/topics/{TOPIC}/eventsubscriptions/{SUBSCRIPTION}:{name}");
    let query = format!("api-version=2024-06-01{query}");
    post(
        standin,
        &path,
        &query,
        standin.access_key(),
        "application/json",
        body,
    )
    .await
}

fn event(id: &str) -> Value {
    json!({ "id": id, "source": "/vaults/kv", "type": "T", "specversion": "1.0", "data": {"n": 1} })
}

#[tokio::test]
async fn publish_receive_and_settle_follow_the_rest_spec_shapes_and_lock_token_rules() {
    let standin = NamespaceStandIn::start().await.unwrap();
    standin.create_subscription(TOPIC, SUBSCRIPTION);
    let (status, answer) = post(
        &standin,
        &format!("/topics/{TOPIC}:publish"),
        "api-version=2024-06-01",
        standin.access_key(),
        "application/cloudevents-batch+json; charset=utf-8",
        json!([event("e-1"), event("e-2")]),
    )
    .await;
    assert_eq!((status, answer), (200, json!({})));

    let (status, answer) = operation(
        &standin,
        "receive",
        "&maxEvents=1&maxWaitTime=10",
        json!(null),
    )
    .await;
    assert_eq!(status, 200);
    let value = answer["value"].as_array().unwrap();
    assert_eq!(value.len(), 1, "maxEvents is honoured");
    assert_eq!(value[0]["event"], event("e-1"));
    assert_eq!(value[0]["brokerProperties"]["deliveryCount"], 1);
    let token = value[0]["brokerProperties"]["lockToken"]
        .as_str()
        .unwrap()
        .to_owned();

    let (status, answer) = operation(
        &standin,
        "acknowledge",
        "",
        json!({ "lockTokens": [token, "not-a-token"] }),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["succeededLockTokens"], json!([token]));
    assert_eq!(answer["failedLockTokens"][0]["lockToken"], "not-a-token");
    assert_eq!(answer["failedLockTokens"][0]["error"]["code"], "BadToken");

    let (_, answer) = operation(&standin, "renewLock", "", json!({ "lockTokens": [token] })).await;
    assert_eq!(
        answer["failedLockTokens"][0]["error"]["code"], "TokenLost",
        "settled already"
    );

    let (_, answer) = operation(&standin, "receive", "&maxEvents=10", json!(null)).await;
    let second = answer["value"][0]["brokerProperties"]["lockToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = operation(
        &standin,
        "release",
        "&releaseDelayInSeconds=30",
        json!({ "lockTokens": [second] }),
    )
    .await;
    assert_eq!(status, 400, "30 s is not an allowed release delay");
    let (_, answer) = operation(
        &standin,
        "release",
        "&releaseDelayInSeconds=0",
        json!({ "lockTokens": [second] }),
    )
    .await;
    assert_eq!(answer["succeededLockTokens"], json!([second]));
    let (_, answer) = operation(&standin, "receive", "&maxEvents=10", json!(null)).await;
    assert_eq!(answer["value"][0]["event"]["id"], "e-2");
    assert_eq!(answer["value"][0]["brokerProperties"]["deliveryCount"], 2);
    let third = answer["value"][0]["brokerProperties"]["lockToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, answer) = operation(&standin, "reject", "", json!({ "lockTokens": [third] })).await;
    assert_eq!(answer["succeededLockTokens"], json!([third]));
    let letters = standin.dead_letters(TOPIC, SUBSCRIPTION);
    assert_eq!(
        (
            letters.len(),
            letters[0].reason.as_str(),
            letters[0].delivery_count
        ),
        (1, "Rejected", 2)
    );
    assert_eq!(
        (
            standin.calls(Operation::Publish),
            standin.calls(Operation::Receive),
            standin.calls(Operation::Release)
        ),
        (1, 3, 2)
    );
}

#[tokio::test]
async fn what_the_service_refuses_the_stand_in_refuses() {
    let standin = NamespaceStandIn::start().await.unwrap();
    standin.create_subscription(TOPIC, SUBSCRIPTION);
    let path = format!("/topics/{TOPIC}/eventsubscriptions/{SUBSCRIPTION}:receive");
    let (status, answer) = post(
        &standin,
        &path,
        "api-version=2024-06-01",
        "wrong",
        "application/json",
        json!(null),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (401, Some("Unauthorized"))
    );
    let (status, _) = post(
        &standin,
        &path,
        "api-version=2023-11-01",
        standin.access_key(),
        "application/json",
        json!(null),
    )
    .await;
    assert_eq!(status, 400, "only 2024-06-01");
    let (status, _) = operation(&standin, "receive", "&maxEvents=101", json!(null)).await;
    assert_eq!(status, 400);
    let (status, _) = operation(&standin, "receive", "&maxWaitTime=5", json!(null)).await;
    assert_eq!(status, 400);
    let (status, _) = operation(&standin, "acknowledge", "", json!({ "lockTokens": [] })).await;
    assert_eq!(status, 400);
    let (status, answer) = post(
        &standin,
        &format!("/topics/{TOPIC}:publish"),
        "api-version=2024-06-01",
        standin.access_key(),
        "application/cloudevents+json",
        json!({ "id": "e-1", "source": "/s", "type": "T" }),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        answer["error"]["message"],
        "The CloudEvent has no `specversion` attribute."
    );
    let (status, _) = post(
        &standin,
        "/topics/no-such-topic:publish",
        "api-version=2024-06-01",
        standin.access_key(),
        "application/cloudevents+json",
        event("e-1"),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        standin.publish(TOPIC, [json!({"id": "x"})]),
        Err("The CloudEvent has no `source` attribute.".to_owned())
    );
}
