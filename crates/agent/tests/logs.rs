//! No secret value, and not the API token, in any log line at any level: every event of every
//! crate at `trace`, captured while the agent serves reads, refreshes, versioned reads, long
//! polls, a stream, a rotation and errors.

mod common;

use std::time::Duration;

use common::{TestAgent, TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_value_nor_token_reaches_the_logs_at_trace() {
    // Into a file (tracing-subscriber writes to a `File` as it is); global, this test binary's
    // only test: the agent's tasks run on every worker thread.
    let path = common::capture_trace_logs("logs");

    let agent = TestAgent::start().await;
    let v1 = agent.vault.current_version("db-password").unwrap();
    assert_eq!(agent.json("/v1/secrets/db-password").await.0, 200);
    assert_eq!(
        agent.json("/v1/secrets/db-password?refresh=true").await.0,
        200
    );
    assert_eq!(
        agent
            .json(&format!("/v1/secrets/db-password?version={v1}"))
            .await
            .0,
        200
    );
    assert_eq!(agent.json("/v1/secrets/missing").await.0, 404);
    let wrong = agent
        .get_anonymous("/v1/secrets/db-password")
        .header("X-KVI-Token", "not-the-token-but-long-enough")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let mut stream = agent
        .get("/v1/watch?name=db-password")
        .send()
        .await
        .unwrap();
    let poll = tokio::spawn(
        agent
            .get(&format!(
                "/v1/secrets/db-password?after_version={v1}&wait=30"
            ))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    agent.rotate("db-password", "second-password");
    agent.settled(1).await;
    let answer = poll.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.text().await.unwrap().contains("second-password"));
    let mut text = String::new();
    while !text.contains("data:") {
        let chunk = tokio::time::timeout(common::PATIENCE, stream.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    drop(stream);
    agent.vault.fail_next(
        1,
        keyvault_invalidator_core::ProviderErrorKind::AccessDenied,
    );
    assert_eq!(
        agent.json("/v1/secrets/db-password?refresh=true").await.0,
        403
    );
    agent.agent.shutdown().await.unwrap();

    let logs = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    // The capture works: the agent and the job logged, at trace level too.
    assert!(logs.contains("kvi-agent listening"), "{logs}");
    assert!(logs.contains("invalidated"), "{logs}");
    assert!(logs.contains("TRACE") || logs.contains("DEBUG"), "{logs}");
    for secret in ["first-password", "second-password", TOKEN] {
        assert!(!logs.contains(secret), "`{secret}` in the logs:\n{logs}");
    }
}
