//! `/readyz` follows the transport: an Event Grid pull transport whose namespace does not
//! answer (nothing listens on the loopback port) leaves the agent alive but not ready.

mod common;

use std::sync::Arc;

use keyvault_invalidator_agent::config::Settings;
use keyvault_invalidator_agent::Agent;
use keyvault_invalidator_testkit::InMemoryVault;

#[tokio::test]
async fn a_transport_that_cannot_connect_is_not_ready() {
    // A port that was free a moment ago: connecting to it is refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[transport]\nkind = \"eventgrid-pull\"\n\
         endpoint = \"https://127.0.0.1:{port}\"\ntopic = \"keyvault\"\nsubscription = \"agent\"\n\
         access_key = \"c2VjcmV0LWtleQ==\"\n"
    );
    let settings = Settings::from_toml_str(&text, "readiness.toml", |_| None).unwrap();
    let vault = InMemoryVault::new();
    vault.set("db-password", "first-password");
    let agent = Agent::start_with_provider(settings, common::token(), Arc::new(vault))
        .await
        .unwrap();
    let base = format!("http://{}", agent.local_addr());
    let client = common::client();

    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"status": "not_ready", "reason": "the transport is not connected"})
    );
    // Alive, and serving from the vault meanwhile.
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let read = client
        .get(format!("{base}/v1/secrets/db-password"))
        .header("X-KVI-Token", common::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert!(agent.job().unwrap().state().is_running());
    agent.shutdown().await.unwrap();
}
