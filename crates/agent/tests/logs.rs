//! No secret value, and not the API token, in any log line at any level: every event of every
//! crate at `trace`, captured while the agent serves reads, refreshes, versioned reads, long
//! polls, a stream, a rotation and errors.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestAgent, TOKEN};
use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_value_nor_token_reaches_the_logs_at_trace() {
    let captured = Captured::default();
    // Global, this test binary's only test: the agent's tasks run on every worker thread.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .init();

    let agent = TestAgent::start().await;
    let v1 = agent.vault.current_version("db-password").unwrap();
    assert_eq!(agent.json("/v1/secrets/db-password").await.0, 200);
    assert_eq!(agent.json("/v1/secrets/db-password?refresh=true").await.0, 200);
    assert_eq!(agent.json(&format!("/v1/secrets/db-password?version={v1}")).await.0, 200);
    assert_eq!(agent.json("/v1/secrets/missing").await.0, 404);
    let wrong = agent
        .get_anonymous("/v1/secrets/db-password")
        .header("X-KVI-Token", "not-the-token-but-long-enough")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let mut stream = agent.get("/v1/watch?name=db-password").send().await.unwrap();
    let poll = tokio::spawn(
        agent
            .get(&format!("/v1/secrets/db-password?after_version={v1}&wait=30"))
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
    agent.vault.fail_next(1, keyvault_invalidator_core::ProviderErrorKind::AccessDenied);
    assert_eq!(agent.json("/v1/secrets/db-password?refresh=true").await.0, 403);
    agent.agent.shutdown().await.unwrap();

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    // The capture works: the agent and the job logged, at trace level too.
    assert!(logs.contains("kvi-agent listening"), "{logs}");
    assert!(logs.contains("invalidated"), "{logs}");
    assert!(logs.contains("TRACE") || logs.contains("DEBUG"), "{logs}");
    for secret in ["first-password", "second-password", TOKEN] {
        assert!(!logs.contains(secret), "`{secret}` in the logs:\n{logs}");
    }
}
