//! The Event Grid transports end to end, configured as an operator would: the webhook (plain
//! HTTP on loopback, a shared secret) pushed to as Event Grid does, and pull delivery from the
//! testkit's namespace stand-in. Each ends with the agent serving the rotated version.

mod common;

use std::sync::Arc;
use std::time::Duration;

use keyvault_invalidator_agent::config::Settings;
use keyvault_invalidator_agent::{Agent, AgentErrorKind};
use keyvault_invalidator_testkit::eventgrid_namespace::{NamespaceStandIn, Operation};
use keyvault_invalidator_testkit::eventgrid_push::{EventGridPusher, PushOutcome, RetrySchedule};
use keyvault_invalidator_testkit::InMemoryVault;

use common::{event, read, secret_body, webhook_toml, PATIENCE, VAULT, WEBHOOK_SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_push_is_answered_200_once_the_agent_serves_the_new_version() {
    let (agent, vault, base, webhook) = common::start_webhook_agent().await;
    assert_ne!(webhook.port(), 0);
    assert_ne!(webhook, agent.local_addr());
    let client = common::client();
    let (status, first) = read(&client, &base, "db-password").await;
    assert_eq!(status, 200);
    let v1 = vault.current_version("db-password").unwrap();
    assert_eq!(first["version"], v1.as_str());

    // Ready once bound: `/readyz` follows the job.
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let v2 = vault.rotate("db-password", "second-password");
    let pusher = EventGridPusher::new(&format!(
        "http://{webhook}/api/events?code={WEBHOOK_SECRET}"
    ))
    .unwrap()
    .retry_schedule(RetrySchedule::fast(Duration::from_millis(50), 5));
    let body = event("db-password", &v2, "webhook-1")
        .now()
        .event_grid_bytes();
    let outcome = pusher.push_events("webhook-1", &[&body]).await;
    assert_eq!(
        outcome,
        PushOutcome::Delivered {
            status: 200,
            attempts: 1,
            answer: String::new(),
        }
    );
    // Answered 200 only once the cache held v2: no waiting needed.
    let (status, second) = read(&client, &base, "db-password").await;
    assert_eq!(status, 200);
    assert_eq!(
        second,
        secret_body("db-password", "second-password", &v2, &second["created_on"])
    );

    // Without the secret, or with a wrong one: 401, and nothing reaches the job.
    let v3 = vault.rotate("db-password", "third-password");
    let unsigned = event("db-password", &v3, "webhook-2")
        .now()
        .event_grid_bytes();
    for url in [
        format!("http://{webhook}/api/events"),
        format!("http://{webhook}/api/events?code=not-the-secret"),
    ] {
        let response = client
            .post(&url)
            .header("aeg-event-type", "Notification")
            .header("content-type", "application/json")
            .body(format!(
                "[{}]",
                String::from_utf8(unsigned.clone()).unwrap()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{url}");
    }
    let (_, still) = read(&client, &base, "db-password").await;
    assert_eq!(still["version"], v2.as_str());
    assert_eq!(still["value"], "second-password");

    let stats = agent.shutdown().await.unwrap().expect("a job ran");
    assert_eq!((stats.received, stats.completed), (1, 1));
}

#[test]
fn check_config_masks_the_webhook_secret() {
    let path = std::env::temp_dir().join(format!("kvi-agent-webhook-{}.toml", std::process::id()));
    std::fs::write(&path, webhook_toml()).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kvi-agent"))
        .arg("check-config")
        .arg(&path)
        .env_clear()
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("kind = \"eventgrid-webhook\""), "{stdout}");
    assert!(stdout.contains("shared_secret = \"***\""), "{stdout}");
    assert!(!stdout.contains(WEBHOOK_SECRET), "{stdout}");
    assert!(!stderr.contains(WEBHOOK_SECRET), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_event_is_served_and_acknowledged_once() {
    let standin = NamespaceStandIn::builder()
        .wait_cap(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    standin.create_subscription("keyvault-events", "kvi-agent");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[vault]\nname = \"{VAULT}\"\n\
         [transport]\nkind = \"eventgrid-pull\"\nendpoint = \"{}\"\ntopic = \"keyvault-events\"\n\
         subscription = \"kvi-agent\"\naccess_key = \"{}\"\n",
        standin.endpoint(),
        standin.access_key()
    );
    let settings = Settings::from_toml_str(&text, "pull.toml", |_| None).unwrap();
    let vault = InMemoryVault::new();
    vault.set("db-password", "first-password");
    // The stand-in is reached through its own HTTP client (its host resolves to loopback,
    // its certificate trusted): the library path, as the eventgrid crate's tests use.
    let agent = Agent::start_with_provider_and_client_options(
        settings,
        common::token(),
        Arc::new(vault.clone()),
        Some(standin.client_options()),
    )
    .await
    .unwrap();
    let base = format!("http://{}", agent.local_addr());
    let client = common::client();
    assert_eq!(read(&client, &base, "db-password").await.0, 200);

    let v2 = vault.rotate("db-password", "second-password");
    standin
        .publish(
            "keyvault-events",
            [event("db-password", &v2, "pull-1").now().cloud_event()],
        )
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while standin.calls(Operation::Acknowledge) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not acknowledged within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = read(&client, &base, "db-password").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        secret_body("db-password", "second-password", &v2, &body["created_on"])
    );
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let stats = agent.shutdown().await.unwrap().expect("a job ran");
    assert_eq!((stats.received, stats.completed), (1, 1));
    assert_eq!(standin.calls(Operation::Acknowledge), 1);
    assert_eq!(standin.ready_count("keyvault-events", "kvi-agent"), 0);
    assert_eq!(standin.locked_count("keyvault-events", "kvi-agent"), 0);
}

#[tokio::test]
async fn a_webhook_that_cannot_start_says_why_by_kind() {
    let start = |transport: String| async move {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[transport]\nkind = \"eventgrid-webhook\"\n\
             shared_secret = \"{WEBHOOK_SECRET}\"\n{transport}"
        );
        let settings = Settings::from_toml_str(&text, "webhook.toml", |_| None).unwrap();
        Agent::start_with_provider(settings, common::token(), Arc::new(InMemoryVault::new()))
            .await
            .unwrap_err()
    };
    // The address is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let error = start(format!("listen = \"{address}\"\nplain_http = true\n")).await;
    assert_eq!(error.kind(), AgentErrorKind::Bind);
    assert!(
        error
            .to_string()
            .starts_with("transport: the Event Grid webhook: webhook could not listen"),
        "{error}"
    );
    // The certificate files are missing.
    let missing = std::env::temp_dir().join(format!("kvi-agent-no-such-{}", std::process::id()));
    let error = start(format!(
        "listen = \"127.0.0.1:0\"\ntls_cert_file = \"{0}.crt\"\ntls_key_file = \"{0}.key\"\n",
        missing.display()
    ))
    .await;
    assert_eq!(error.kind(), AgentErrorKind::Setup);
    assert!(
        error
            .to_string()
            .starts_with("transport: the Event Grid webhook: webhook TLS setup failed"),
        "{error}"
    );
}
