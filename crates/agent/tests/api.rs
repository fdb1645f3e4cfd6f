//! The HTTP API over loopback with a real client: exact statuses, bodies and headers.

mod common;

use std::time::Duration;

use common::{secret_body, TestAgent, PATIENCE, TOKEN};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn error_body(code: &str, message: &str) -> serde_json::Value {
    json!({ "error": code, "message": message })
}

#[tokio::test]
async fn a_read_answers_the_secret_with_no_store() {
    let agent = TestAgent::start().await;
    let response = agent.get("/v1/secrets/db-password").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    let version = agent.vault.current_version("db-password").unwrap();
    assert_eq!(
        body,
        secret_body(
            "db-password",
            "first-password",
            &version,
            &body["created_on"]
        )
    );
    assert!(body["created_on"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn the_token_rules() {
    let agent = TestAgent::start().await;
    let missing = agent
        .get_anonymous("/v1/secrets/db-password")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["cache-control"], "no-store");
    assert_eq!(
        missing.json::<serde_json::Value>().await.unwrap(),
        error_body("unauthorized", "missing X-KVI-Token header")
    );

    let wrong = agent
        .get_anonymous("/v1/secrets/db-password")
        .header("X-KVI-Token", "test-token-0123456789abcdeX")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        wrong.json::<serde_json::Value>().await.unwrap(),
        error_body("unauthorized", "wrong X-KVI-Token")
    );

    let shorter = agent
        .get_anonymous("/v1/watch?name=db-password")
        .header("X-KVI-Token", &TOKEN[..10])
        .send()
        .await
        .unwrap();
    assert_eq!(shorter.status(), 401);

    let twice = agent
        .get("/v1/secrets/db-password")
        .header("X-KVI-Token", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 401);
    assert_eq!(
        twice.json::<serde_json::Value>().await.unwrap(),
        error_body("unauthorized", "more than one X-KVI-Token header")
    );

    // No secret was read for any of them.
    assert_eq!(agent.vault.calls("db-password"), 0);

    // The probes and metrics need no token.
    let health = agent.get_anonymous("/healthz").send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.json::<serde_json::Value>().await.unwrap(),
        json!({"status": "ok"})
    );
    assert_eq!(
        agent
            .get_anonymous("/readyz")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        agent
            .get_anonymous("/metrics")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn forwarded_requests_are_refused_even_with_the_token() {
    let agent = TestAgent::start().await;
    for (header, value) in [
        ("X-Forwarded-For", "10.0.0.1"),
        ("Forwarded", "for=10.0.0.1"),
    ] {
        let response = agent
            .get("/v1/secrets/db-password")
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{header}");
        assert_eq!(
            response.json::<serde_json::Value>().await.unwrap(),
            error_body(
                "forwarded_request",
                "requests carrying X-Forwarded-For or Forwarded are refused: the agent serves local clients only"
            )
        );
    }
    assert_eq!(agent.vault.calls("db-password"), 0);
}

#[tokio::test]
async fn only_get_is_served() {
    let agent = TestAgent::start().await;
    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let response = agent
            .client
            .request(
                method.clone(),
                format!("{}/v1/secrets/db-password", agent.base),
            )
            .header("X-KVI-Token", TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method}");
        assert_eq!(response.headers()["allow"], "GET");
        assert_eq!(
            response.json::<serde_json::Value>().await.unwrap(),
            error_body("method_not_allowed", "only GET is served")
        );
    }
}

#[tokio::test]
async fn unknown_secrets_routes_and_parameters() {
    let agent = TestAgent::start().await;
    let (status, body) = agent.json("/v1/secrets/nope").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
    assert_eq!(body["message"], "secret `nope`: not found: no such secret");

    let (status, body) = agent.json("/v1/other").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "no_such_route");

    let (status, body) = agent.json("/v1/secrets/db-password?colour=red").await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        error_body(
            "invalid_query",
            "unknown query parameter `colour` (known: version, refresh, after_version, wait)"
        )
    );
    let (status, body) = agent
        .json("/v1/secrets/db-password?after_version=x&wait=61")
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["message"],
        "query parameter `wait` is whole seconds from 0 to 60"
    );
}

#[tokio::test]
async fn one_vault_call_per_rotation_however_many_reads() {
    let agent = TestAgent::start().await;
    for _ in 0..10 {
        assert_eq!(agent.json("/v1/secrets/db-password").await.0, 200);
    }
    assert_eq!(agent.vault.calls("db-password"), 1);
    let v2 = agent.rotate("db-password", "second-password");
    agent.settled(1).await;
    for _ in 0..10 {
        let (status, body) = agent.json("/v1/secrets/db-password").await;
        assert_eq!(status, 200);
        assert_eq!(body["version"], v2.as_str());
        assert_eq!(body["value"], "second-password");
    }
    assert_eq!(agent.vault.calls("db-password"), 2);
    assert_eq!(agent.publisher.log().completed(), vec!["message-1"]);
}

#[tokio::test]
async fn versioned_and_refreshed_reads_go_to_the_vault() {
    let agent = TestAgent::start().await;
    let v1 = agent.vault.current_version("db-password").unwrap();
    let v2 = agent.vault.rotate("db-password", "second-password"); // no event: the cache keeps v1
    assert_eq!(
        agent.json("/v1/secrets/db-password").await.1["version"],
        v2.as_str()
    );

    let (status, body) = agent
        .json(&format!("/v1/secrets/db-password?version={v1}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["version"], v1.as_str());
    assert_eq!(body["value"], "first-password");

    let v3 = agent.vault.rotate("db-password", "third-password");
    assert_eq!(
        agent.json("/v1/secrets/db-password").await.1["version"],
        v2.as_str()
    );
    let (status, body) = agent.json("/v1/secrets/db-password?refresh=true").await;
    assert_eq!(status, 200);
    assert_eq!(body["version"], v3.as_str());
    // The refreshed value replaced the cached one.
    assert_eq!(
        agent.json("/v1/secrets/db-password").await.1["value"],
        "third-password"
    );
    // first read, the version read, the refresh.
    assert_eq!(agent.vault.calls("db-password"), 3);
}

#[tokio::test]
async fn a_long_poll_answers_at_once_when_the_version_differs() {
    let agent = TestAgent::start().await;
    let v1 = agent.vault.current_version("db-password").unwrap();
    let (status, body) = agent
        .json("/v1/secrets/db-password?after_version=somethingelse&wait=30")
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["version"], v1.as_str());
}

#[tokio::test]
async fn a_quiet_long_poll_answers_304() {
    let agent = TestAgent::start().await;
    let v1 = agent.vault.current_version("db-password").unwrap();
    let response = agent
        .get(&format!(
            "/v1/secrets/db-password?after_version={v1}&wait=1"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 304);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.bytes().await.unwrap().len(), 0);
    // wait=0, or no wait: at once.
    let response = agent
        .get(&format!(
            "/v1/secrets/db-password?after_version={}",
            v1.to_uppercase()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 304);
}

#[tokio::test]
async fn a_long_poll_sees_a_rotation() {
    let agent = TestAgent::start().await;
    let (_, body) = agent.json("/v1/secrets/db-password").await;
    let v1 = body["version"].as_str().unwrap().to_owned();

    let poll = agent
        .get(&format!(
            "/v1/secrets/db-password?after_version={v1}&wait=60"
        ))
        .send();
    let poll = tokio::spawn(poll);
    // Whether the poll is waiting yet or not, it must answer the new version: a rotation before
    // it subscribed is a differing version at once, one after is a change it waits for.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let v2 = agent.rotate("db-password", "second-password");
    let response = tokio::time::timeout(PATIENCE, poll)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        secret_body("db-password", "second-password", &v2, &body["created_on"])
    );
    assert_eq!(agent.vault.calls("db-password"), 2);
}

/// Reads SSE chunks until `want` appears; returns everything read.
async fn read_until(response: &mut reqwest::Response, text: &mut String, want: &str) {
    tokio::time::timeout(PATIENCE, async {
        while !text.contains(want) {
            let chunk = response.chunk().await.unwrap().expect("the stream goes on");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {want:?} in {text:?}"));
}

#[tokio::test]
async fn an_sse_client_sees_each_rotation_and_never_a_value() {
    let agent = TestAgent::start().await;
    agent.vault.set("api-key", "first-key");
    let mut response = agent
        .get("/v1/watch?name=db-password&name=api-key")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let mut text = String::new();
    read_until(&mut response, &mut text, ": watching\n\n").await;
    assert_eq!(text, ": watching\n\n");

    let v2 = agent.rotate("db-password", "second-password");
    let event = format!("data: {{\"name\":\"db-password\",\"version\":\"{v2}\"}}\n\n");
    read_until(&mut response, &mut text, &event).await;
    let key2 = agent.rotate("api-key", "second-key");
    let event2 = format!("data: {{\"name\":\"api-key\",\"version\":\"{key2}\"}}\n\n");
    read_until(&mut response, &mut text, &event2).await;
    assert_eq!(text, format!(": watching\n\n{event}{event2}"));
    assert!(!text.contains("second-password") && !text.contains("second-key"));
}

#[tokio::test]
async fn a_watcher_that_goes_away_frees_its_slot() {
    let agent = TestAgent::start_with(|settings| settings.server.max_watchers = 1).await;
    let mut first = agent
        .get("/v1/watch?name=db-password")
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    read_until(&mut first, &mut text, ": watching\n\n").await;

    // The one slot is taken: a long poll and a second stream are refused.
    let v1 = agent.vault.current_version("db-password").unwrap();
    let (status, body) = agent
        .json(&format!(
            "/v1/secrets/db-password?after_version={v1}&wait=5"
        ))
        .await;
    assert_eq!(status, 429);
    assert_eq!(
        body,
        error_body(
            "too_many_watchers",
            "the limit of waiting clients (server.max_watchers) is reached"
        )
    );
    drop(first);
    // The stream's task notices the client left and gives the slot back.
    tokio::time::timeout(PATIENCE, async {
        loop {
            let response = agent
                .get(&format!("/v1/secrets/db-password?after_version={v1}"))
                .send()
                .await
                .unwrap();
            if response.status() == 304 {
                return;
            }
            assert_eq!(response.status(), 429);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the slot comes back");
}

#[tokio::test]
async fn connections_over_the_limit_get_429() {
    let agent = TestAgent::start_with(|settings| settings.server.max_connections = 1).await;
    // An idle connection holds the only slot (it has until the header timeout to speak).
    let mut idle = tokio::net::TcpStream::connect(agent.agent.local_addr())
        .await
        .unwrap();
    // Make sure the server accepted it before the next one comes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = common::client()
        .get(format!("{}/healthz", agent.base))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        refused.json::<serde_json::Value>().await.unwrap(),
        error_body(
            "too_many_connections",
            "the connection limit (server.max_connections) is reached"
        )
    );
    // The idle connection is served normally.
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    idle.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
}

#[tokio::test]
async fn malformed_requests_get_an_error_not_a_panic() {
    let agent = TestAgent::start().await;
    let mut stream = tokio::net::TcpStream::connect(agent.agent.local_addr())
        .await
        .unwrap();
    stream.write_all(b"\x00\x01garbage\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    // The server still serves.
    assert_eq!(agent.json("/v1/secrets/db-password").await.0, 200);
    let (status, body) = agent.json("/v1/secrets/%FF%FE").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_name");
}

#[tokio::test]
async fn metrics_hold_the_requests_the_cache_and_the_job() {
    let agent = TestAgent::start().await;
    assert_eq!(agent.json("/v1/secrets/db-password").await.0, 200);
    assert_eq!(
        agent
            .get_anonymous("/v1/secrets/db-password")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    agent.rotate("db-password", "second-password");
    agent.settled(1).await;
    let response = agent.get_anonymous("/metrics").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    for line in [
        "# TYPE kvi_agent_http_requests_total counter",
        "# TYPE kvi_agent_http_request_duration_seconds histogram",
        "# TYPE kvi_agent_cache_hits_total counter",
        "# TYPE kvi_agent_cache_refreshes_total counter",
        "# TYPE keyvault_invalidator_events_invalidated_total counter",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    let has = |prefix: &str| text.lines().any(|line| line.starts_with(prefix));
    assert!(
        has("kvi_agent_http_requests_total{route=\"/v1/secrets/{name}\",status=\"200\"}"),
        "{text}"
    );
    assert!(
        has("kvi_agent_http_requests_total{route=\"/v1/secrets/{name}\",status=\"401\"}"),
        "{text}"
    );
    assert!(has("kvi_agent_http_request_duration_seconds_bucket{route=\"/v1/secrets/{name}\",le=\"0.001\"}"), "{text}");
    assert!(
        has("keyvault_invalidator_events_invalidated_total{job=\"kvi-agent\"}"),
        "{text}"
    );
    assert!(!text.contains("first-password") && !text.contains(TOKEN));
}

#[tokio::test]
async fn readiness_follows_the_job() {
    let agent = TestAgent::start().await;
    let (status, body) = {
        let response = agent.get_anonymous("/readyz").send().await.unwrap();
        (
            response.status(),
            response.json::<serde_json::Value>().await.unwrap(),
        )
    };
    assert_eq!(status, 200);
    assert_eq!(body, json!({"status": "ready"}));
    let stats = agent.agent.shutdown().await.unwrap().unwrap();
    assert_eq!(stats.received, 0);
}
