//! Key Vault errors, through the real Azure SDK client against the testkit's Key Vault
//! stand-in, mapped to statuses with the JSON error body.

mod common;

use std::sync::Arc;
use std::time::Duration;

use keyvault_invalidator_agent::Agent;
use keyvault_invalidator_secrets::KeyVaultProvider;
use keyvault_invalidator_testkit::keyvault_standin::{Fault, KeyVaultStandIn};

struct Setup {
    standin: KeyVaultStandIn,
    agent: Agent,
    base: String,
    client: reqwest::Client,
}

async fn setup(request_timeout_secs: u64) -> Setup {
    let standin = KeyVaultStandIn::start().await.unwrap();
    standin.set_secret("db-password", "s3cret-value");
    let provider = KeyVaultProvider::builder(standin.endpoint(), standin.credential())
        .transport(standin.transport())
        .build()
        .unwrap();
    let mut settings = common::settings();
    settings.server.request_timeout_secs = request_timeout_secs;
    let agent = Agent::start_with_provider(settings, common::token(), Arc::new(provider))
        .await
        .unwrap();
    let base = format!("http://{}", agent.local_addr());
    Setup {
        standin,
        agent,
        base,
        client: common::client(),
    }
}

impl Setup {
    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .header("X-KVI-Token", common::TOKEN)
            .send()
            .await
            .unwrap()
    }

    async fn error(&self, path: &str) -> (u16, String, String) {
        let response = self.get(path).await;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
        (
            status,
            body["error"].as_str().unwrap().to_owned(),
            body["message"].as_str().unwrap().to_owned(),
        )
    }
}

#[tokio::test]
async fn a_read_through_the_sdk_answers_the_secret() {
    let setup = setup(10).await;
    let response = setup.get("/v1/secrets/db-password").await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["value"], "s3cret-value");
    assert_eq!(body["name"], "db-password");
    assert_eq!(body["version"].as_str().unwrap().len(), 32);
    assert_eq!(setup.standin.calls("db-password"), 2); // the challenge, then the read
    setup.agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn access_denied_is_403() {
    let setup = setup(10).await;
    setup.standin.fail_next(1, Fault::Forbidden);
    let (status, code, message) = setup.error("/v1/secrets/db-password").await;
    assert_eq!((status, code.as_str()), (403, "access_denied"));
    assert!(
        message.starts_with("secret `db-password`: access denied"),
        "{message}"
    );
}

#[tokio::test]
async fn throttling_is_429_with_the_vaults_retry_after() {
    let setup = setup(10).await;
    setup.standin.fail_next(
        1,
        Fault::Throttled {
            retry_after_secs: 7,
        },
    );
    let response = setup.get("/v1/secrets/db-password").await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "throttled");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("secret `db-password`: throttled (retry after 7000 ms)"),
        "{body}"
    );
}

#[tokio::test]
async fn a_vault_5xx_is_502() {
    let setup = setup(10).await;
    for status in [500, 503] {
        setup.standin.fail_next(1, Fault::Status(status));
        let (status, code, message) = setup.error("/v1/secrets/db-password").await;
        assert_eq!((status, code.as_str()), (502, "upstream_unavailable"));
        assert!(
            message.starts_with("secret `db-password`: transient failure"),
            "{message}"
        );
    }
    // And the vault answering again: the value.
    assert_eq!(setup.get("/v1/secrets/db-password").await.status(), 200);
}

#[tokio::test]
async fn a_vault_that_does_not_answer_in_time_is_504() {
    let setup = setup(1).await;
    setup
        .standin
        .fail_next(1, Fault::Delay(Duration::from_secs(4)));
    let (status, code, message) = setup.error("/v1/secrets/db-password").await;
    assert_eq!((status, code.as_str()), (504, "upstream_timeout"));
    assert_eq!(
        message,
        "secret `db-password`: Key Vault did not answer within 1000 ms"
    );
}

#[tokio::test]
async fn a_missing_secret_and_an_invalid_name() {
    let setup = setup(10).await;
    let (status, code, message) = setup.error("/v1/secrets/no-such-secret").await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
    assert!(
        message.starts_with("secret `no-such-secret`: not found"),
        "{message}"
    );

    let (status, code, _) = setup.error("/v1/secrets/not_valid%21").await;
    assert_eq!((status, code.as_str()), (400, "invalid_name"));
    // Refused before any request.
    assert_eq!(setup.standin.calls("not_valid!"), 0);

    let (status, code, _) = setup
        .error("/v1/secrets/db-password?version=ffffffffffffffffffffffffffffffff")
        .await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
}
