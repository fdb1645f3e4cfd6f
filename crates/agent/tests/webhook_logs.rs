//! The webhook's shared secret in no log line at any level: every event of every crate at
//! `trace`, captured while the webhook is pushed to with the secret, without it and with a
//! wrong one.

mod common;

use std::time::Duration;

use keyvault_invalidator_testkit::eventgrid_push::{EventGridPusher, PushOutcome, RetrySchedule};

use common::{event, read, WEBHOOK_SECRET};

const WRONG_SECRET: &str = "wrong-Secret_4567";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_webhook_secret_reaches_the_logs_at_trace() {
    // This test binary's only test: the agent's tasks run on every worker thread.
    let path = common::capture_trace_logs("webhook-logs");
    let (agent, vault, base, webhook) = common::start_webhook_agent().await;
    let client = common::client();
    assert_eq!(read(&client, &base, "db-password").await.0, 200);

    let v2 = vault.rotate("db-password", "second-password");
    let body = event("db-password", &v2, "logs-1").now().event_grid_bytes();
    for (code, expected) in [(WEBHOOK_SECRET, 200), (WRONG_SECRET, 401)] {
        let pusher = EventGridPusher::new(&format!("http://{webhook}/api/events?code={code}"))
            .unwrap()
            .retry_schedule(RetrySchedule::fast(Duration::from_millis(50), 1));
        let outcome = pusher.push_events("logs-1", &[&body]).await;
        let status = match &outcome {
            PushOutcome::Delivered { status, .. } => Some(*status),
            PushOutcome::DeadLettered(dead) => dead.status,
        };
        assert_eq!(status, Some(expected), "{outcome:?}");
    }
    assert_eq!(
        read(&client, &base, "db-password").await.1["version"],
        v2.as_str()
    );
    agent.shutdown().await.unwrap();

    let logs = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    // The capture works: the webhook and the job logged.
    assert!(logs.contains("Event Grid webhook listening"), "{logs}");
    assert!(logs.contains("webhook request answered"), "{logs}");
    for secret in [WEBHOOK_SECRET, WRONG_SECRET, "second-password"] {
        assert!(!logs.contains(secret), "`{secret}` in the logs:\n{logs}");
    }
}
