//! Starting an agent on loopback with an in-memory vault and event source, and a real HTTP
//! client for it.
#![allow(dead_code)] // each test file uses part of it

use std::sync::Arc;
use std::time::Duration;

use keyvault_invalidator_agent::config::{ApiToken, Settings, TokenSource};
use keyvault_invalidator_agent::Agent;
use keyvault_invalidator_testkit::{
    InMemoryEventSource, InMemoryPublisher, InMemoryVault, KeyVaultEventBuilder,
};

/// The token every test agent expects.
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// The vault the test events come from.
pub const VAULT: &str = "test-kv";

/// A generous bound for anything the tests wait for: the machine is shared and noisy.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub struct TestAgent {
    pub agent: Agent,
    pub vault: InMemoryVault,
    pub publisher: InMemoryPublisher,
    pub base: String,
    pub client: reqwest::Client,
    events: std::sync::atomic::AtomicUsize,
}

pub fn settings() -> Settings {
    let mut settings = Settings::from_env(|_| None).expect("the defaults are valid");
    settings.server.listen = "127.0.0.1:0".parse().unwrap();
    settings.vault.name = Some(VAULT.to_owned());
    settings
}

pub fn token() -> ApiToken {
    ApiToken::new(TOKEN, TokenSource::Environment).unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap()
}

impl TestAgent {
    pub async fn start() -> TestAgent {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(change: impl FnOnce(&mut Settings)) -> TestAgent {
        let mut settings = settings();
        change(&mut settings);
        let vault = InMemoryVault::new();
        vault.set("db-password", "first-password");
        let source = InMemoryEventSource::new();
        let publisher = source.publisher();
        let agent = Agent::start_with_source(settings, token(), Arc::new(vault.clone()), source)
            .await
            .expect("the agent starts");
        let base = format!("http://{}", agent.local_addr());
        TestAgent {
            agent,
            vault,
            publisher,
            base,
            client: client(),
            events: Default::default(),
        }
    }

    /// A GET of `path` with the right token.
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{path}", self.base))
            .header("X-KVI-Token", TOKEN)
    }

    /// A GET of `path` without a token.
    pub fn get_anonymous(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}{path}", self.base))
    }

    /// Rotates `name` in the vault and publishes the event Key Vault would send; returns the
    /// new version without waiting for the job.
    pub fn rotate(&self, name: &str, value: &str) -> String {
        let version = self.vault.rotate(name, value);
        let n = self
            .events
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let event = KeyVaultEventBuilder::secret_new_version(name)
            .vault(VAULT)
            .version(&version)
            .id(format!("event-{n}"))
            .now();
        self.publisher
            .publish(format!("message-{n}"), event.event_grid_bytes());
        version
    }

    /// Waits until the job has settled `count` deliveries.
    pub async fn settled(&self, count: usize) {
        self.publisher.wait_for_settlements(count).await;
    }

    pub async fn json(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self.get(path).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }
}

/// The body the agent answers for `name` holding `value` at `version` (the in-memory vault sets
/// no expiry nor not-before).
pub fn secret_body(
    name: &str,
    value: &str,
    version: &str,
    created_on: &serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "value": value,
        "version": version,
        "created_on": created_on,
        "expires_on": null,
        "not_before": null,
    })
}

/// The shared secret of [`webhook_toml`]'s webhook.
pub const WEBHOOK_SECRET: &str = "webhook-Secret_0123";

/// An agent on a free loopback port whose transport is an Event Grid webhook: plain HTTP on
/// another free loopback port, [`WEBHOOK_SECRET`] required, events from [`VAULT`].
pub fn webhook_toml() -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[vault]\nname = \"{VAULT}\"\n\
         [transport]\nkind = \"eventgrid-webhook\"\nlisten = \"127.0.0.1:0\"\nplain_http = true\n\
         shared_secret = \"{WEBHOOK_SECRET}\"\n"
    )
}

/// An agent started from [`webhook_toml`] over an in-memory vault holding `db-password` =
/// `first-password`: the agent, the vault, the API's base URL and the webhook's address.
pub async fn start_webhook_agent() -> (Agent, InMemoryVault, String, std::net::SocketAddr) {
    let settings = Settings::from_toml_str(&webhook_toml(), "webhook.toml", |_| None).unwrap();
    let vault = InMemoryVault::new();
    vault.set("db-password", "first-password");
    let agent = Agent::start_with_provider(settings, token(), Arc::new(vault.clone()))
        .await
        .expect("the agent starts");
    let base = format!("http://{}", agent.local_addr());
    let webhook = agent.webhook_addr().expect("the webhook is bound");
    (agent, vault, base, webhook)
}

/// Sends every log event of every crate, at `trace`, to a new file in the temporary directory
/// named after `what`; returns its path. Global: one such test per test binary.
pub fn capture_trace_logs(what: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("kvi-agent-{what}-{}.txt", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(file)
        .with_ansi(false)
        .init();
    path
}

/// Key Vault's `SecretNewVersionCreated` for `name` at `version` from [`VAULT`], id `id`.
pub fn event(name: &str, version: &str, id: &str) -> KeyVaultEventBuilder {
    KeyVaultEventBuilder::secret_new_version(name)
        .vault(VAULT)
        .version(version)
        .id(id)
}

/// `(status, body)` of `GET {base}/v1/secrets/{name}` with the token.
pub async fn read(client: &reqwest::Client, base: &str, name: &str) -> (u16, serde_json::Value) {
    let response = client
        .get(format!("{base}/v1/secrets/{name}"))
        .header("X-KVI-Token", TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}
