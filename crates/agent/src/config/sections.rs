//! The sections of the configuration file, each with its defaults and checks.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Masked;
use crate::error::AgentError;

/// The default listen address: loopback, the port the AWS Secrets Manager Agent uses too.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 2773);

/// `[server]`: the HTTP server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ServerSettings {
    /// Where to listen. Default `127.0.0.1:2773`.
    pub listen: SocketAddr,
    /// Must be `true` for a `listen` address that is not loopback: the API is plain HTTP, and
    /// a sidecar's clients are on the same host (or in the same pod).
    pub allow_non_loopback: bool,
    /// A file holding the API token, read at start, when `KVI_AGENT_TOKEN` is not set.
    pub token_file: Option<PathBuf>,
    /// Connections served at once; the next ones get 429. Default 256.
    pub max_connections: usize,
    /// Long-poll and Server-Sent-Events clients at once; the next ones get 429. Default 1024.
    pub max_watchers: usize,
    /// How long a request may take (headers to response), long polls excepted (they are bounded
    /// by their own `wait`, at most 60 s). Default 10 s.
    pub request_timeout_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: DEFAULT_LISTEN,
            allow_non_loopback: false,
            token_file: None,
            max_connections: 256,
            max_watchers: 1024,
            request_timeout_secs: 10,
        }
    }
}

impl ServerSettings {
    /// [`request_timeout_secs`](Self::request_timeout_secs) as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub(crate) fn check(&self) -> Result<(), AgentError> {
        if !self.listen.ip().is_loopback() && !self.allow_non_loopback {
            return Err(AgentError::config(format!(
                "server.listen: `{}` is not a loopback address; the API is plain HTTP, so set \
                 server.allow_non_loopback = true (KVI_AGENT_ALLOW_NON_LOOPBACK=true) to listen there",
                self.listen
            )));
        }
        positive("server.max_connections", self.max_connections as u64)?;
        positive("server.max_watchers", self.max_watchers as u64)?;
        positive("server.request_timeout_secs", self.request_timeout_secs)
    }
}

/// Which `azure_identity` credential reads the vault (and Service Bus, with the managed-identity
/// registration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Credential {
    /// The host's managed identity: system-assigned, or user-assigned with `client_id`.
    #[default]
    ManagedIdentity,
    /// Kubernetes workload identity (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
    /// `AZURE_FEDERATED_TOKEN_FILE`).
    WorkloadIdentity,
    /// The developer's `az login` / `azd auth login`, for local runs.
    DeveloperTools,
}

/// `[vault]`: the Key Vault the secrets come from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct VaultSettings {
    /// `https://{vault}.vault.azure.net/`. Required, except with `--demo`.
    pub url: Option<String>,
    /// The vault name events must come from (the allow-list). Default: the first label of the
    /// URL's host.
    pub name: Option<String>,
    /// The credential. Default `managed-identity`.
    pub credential: Credential,
    /// The client id of a user-assigned managed identity.
    pub client_id: Option<String>,
    /// How long one Key Vault read may take; past it the request answers 504. Default 30 s.
    pub timeout_secs: u64,
}

impl Default for VaultSettings {
    fn default() -> Self {
        VaultSettings {
            url: None,
            name: None,
            credential: Credential::default(),
            client_id: None,
            timeout_secs: 30,
        }
    }
}

impl VaultSettings {
    /// The vault name accepted in events: `name`, or the URL's first host label, lower-cased.
    pub fn allowed_vault_name(&self) -> Option<String> {
        if let Some(name) = &self.name {
            return Some(name.trim().to_ascii_lowercase());
        }
        let url = url::Url::parse(self.url.as_deref()?.trim()).ok()?;
        let host = url.host_str()?;
        host.split('.')
            .next()
            .filter(|label| !label.is_empty())
            .map(str::to_ascii_lowercase)
    }

    pub(crate) fn check(&self) -> Result<(), AgentError> {
        if let Some(url) = &self.url {
            let parsed = url::Url::parse(url.trim()).map_err(|e| {
                AgentError::config(format!("vault.url: `{url}` is not a URL")).with_source(e)
            })?;
            if parsed.scheme() != "https" {
                return Err(AgentError::config(format!(
                    "vault.url: `{url}` is not an https:// URL"
                )));
            }
        }
        if self
            .client_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            return Err(AgentError::config("vault.client_id cannot be blank"));
        }
        if self.client_id.is_some() && self.credential != Credential::ManagedIdentity {
            return Err(AgentError::config(
                "vault.client_id is for credential = \"managed-identity\" (a user-assigned identity)",
            ));
        }
        positive("vault.timeout_secs", self.timeout_secs)
    }
}

/// `cache.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum CacheMode {
    /// Load a rotated secret in the background and swap it in; readers never wait.
    #[default]
    RefreshAhead,
    /// Drop a rotated secret; the next reader loads it.
    Invalidate,
}

/// `[cache]`: the cache in front of the vault (`CachedSecretProvider`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct CacheSettings {
    /// Default `refresh-ahead`.
    pub mode: CacheMode,
    /// The time-to-live, the safety net for lost events. Default 1800 s; with
    /// `transport.kind = "none"` it is the only way a rotation is seen.
    pub ttl_secs: u64,
    /// How long a value may be served past its time while the vault throttles or fails.
    /// Default 900 s.
    pub max_staleness_secs: u64,
    /// How many secrets are cached. Default 10,000.
    pub capacity: u64,
    /// A random delay up to this many milliseconds before a refresh, so a fleet does not hit
    /// the vault at once. Default 0.
    pub jitter_ms: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            mode: CacheMode::default(),
            ttl_secs: 1800,
            max_staleness_secs: 900,
            capacity: 10_000,
            jitter_ms: 0,
        }
    }
}

impl CacheSettings {
    pub(crate) fn check(&self) -> Result<(), AgentError> {
        positive("cache.ttl_secs", self.ttl_secs)?;
        positive("cache.capacity", self.capacity)
    }
}

/// `[names]`: the names applications ask for, and Key Vault's. Both separators or neither.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct NameSettings {
    /// The separator in the applications' names, for example `:` (`Db:Password`).
    pub key_separator: Option<String>,
    /// The separator in Key Vault names, for example `--` (`Db--Password`).
    pub vault_separator: Option<String>,
}

impl NameSettings {
    /// The mapping these settings describe.
    pub fn mapping(&self) -> keyvault_invalidator_core::NameMapping {
        match (&self.key_separator, &self.vault_separator) {
            (Some(key), Some(vault)) => {
                keyvault_invalidator_core::NameMapping::key_separator(key.as_str())
                    .vault_separator(vault.as_str())
            }
            _ => keyvault_invalidator_core::NameMapping::identity(),
        }
    }

    pub(crate) fn check(&self) -> Result<(), AgentError> {
        match (&self.key_separator, &self.vault_separator) {
            (Some(_), None) | (None, Some(_)) => Err(AgentError::config(
                "names: set both key_separator and vault_separator, or neither",
            )),
            (Some(key), Some(vault)) if key.is_empty() || vault.is_empty() => {
                Err(AgentError::config("names: a separator cannot be empty"))
            }
            _ => Ok(()),
        }
    }
}

/// `[transport]`: where rotation events come from, chosen by `kind`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum TransportSettings {
    /// No events: the time-to-live alone, as the TTL caches do.
    #[default]
    None,
    /// An Azure Service Bus topic Event Grid delivers to.
    #[serde(rename = "servicebus")]
    ServiceBus(ServiceBusSettings),
    /// A RabbitMQ exchange the events are published to.
    #[serde(rename = "rabbitmq")]
    RabbitMq(RabbitMqSettings),
    /// A webhook Event Grid pushes to, on a listener of its own.
    #[serde(rename = "eventgrid-webhook")]
    EventGridWebhook(super::EventGridWebhookSettings),
    /// Pull delivery from an Event Grid namespace topic's queue-mode subscription.
    #[serde(rename = "eventgrid-pull")]
    EventGridPull(EventGridPullSettings),
}

impl TransportSettings {
    /// The `kind` as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            TransportSettings::None => "none",
            TransportSettings::ServiceBus(_) => "servicebus",
            TransportSettings::RabbitMq(_) => "rabbitmq",
            TransportSettings::EventGridWebhook(_) => "eventgrid-webhook",
            TransportSettings::EventGridPull(_) => "eventgrid-pull",
        }
    }

    pub(crate) fn check(&self) -> Result<(), AgentError> {
        match self {
            TransportSettings::None => Ok(()),
            TransportSettings::ServiceBus(settings) => settings.check(),
            TransportSettings::RabbitMq(settings) => settings.check(),
            TransportSettings::EventGridPull(settings) => settings.check(),
            TransportSettings::EventGridWebhook(settings) => settings.check(),
        }
    }
}

/// `transport.registration` for Service Bus: the original library's two.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ServiceBusRegistration {
    /// `namespace` and `topic`, with the `[vault]` credential (Azure Service Bus Data Owner).
    #[default]
    ManagedIdentity,
    /// A connection string kept in the vault as `connection_string_secret`, read again at every
    /// reconnection (Manage rights).
    ConnectionString,
}

/// `[transport]` with `kind = "servicebus"`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ServiceBusSettings {
    /// Default `managed-identity`.
    pub registration: ServiceBusRegistration,
    /// The namespace (`my-ns` or `my-ns.servicebus.windows.net`), managed-identity registration.
    pub namespace: Option<String>,
    /// The topic; with a connection string, its `EntityPath` when not set.
    pub topic: Option<String>,
    /// The vault secret holding the connection string, connection-string registration.
    pub connection_string_secret: Option<String>,
    /// The prefix of the instance's own subscription. Default `kvi-agent`.
    pub subscription_prefix: Option<String>,
    /// An existing subscription to read instead (Listen rights suffice).
    pub existing_subscription: Option<String>,
}

impl ServiceBusSettings {
    fn check(&self) -> Result<(), AgentError> {
        match self.registration {
            ServiceBusRegistration::ManagedIdentity => {
                required("transport.namespace", &self.namespace)?;
                required("transport.topic", &self.topic)?;
                if self.connection_string_secret.is_some() {
                    return Err(AgentError::config(
                        "transport.connection_string_secret is for registration = \"connection-string\"",
                    ));
                }
            }
            ServiceBusRegistration::ConnectionString => {
                required(
                    "transport.connection_string_secret",
                    &self.connection_string_secret,
                )?;
                if self.namespace.is_some() {
                    return Err(AgentError::config(
                        "transport.namespace comes from the connection string with registration = \"connection-string\"",
                    ));
                }
            }
        }
        one_of(
            ("subscription_prefix", &self.subscription_prefix),
            ("existing_subscription", &self.existing_subscription),
        )
    }
}

/// `[transport]` with `kind = "rabbitmq"`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct RabbitMqSettings {
    /// `amqps://user:password@host:5671/vhost` (`amqp://` on loopback only). Masked when printed;
    /// better given as `KVI_AGENT_RABBITMQ_URI`.
    pub uri: Option<Masked>,
    /// `amqp://` to a host that is not loopback: the password crosses the network in clear.
    pub allow_insecure_endpoint: bool,
    /// The prefix of the instance's own queue. Default `kvi-agent`.
    pub instance_prefix: Option<String>,
    /// An existing queue to share instead.
    pub existing_queue: Option<String>,
}

impl RabbitMqSettings {
    fn check(&self) -> Result<(), AgentError> {
        if self.uri.is_none() {
            return Err(AgentError::config(
                "transport.uri is required for kind = \"rabbitmq\" (or KVI_AGENT_RABBITMQ_URI)",
            ));
        }
        one_of(
            ("instance_prefix", &self.instance_prefix),
            ("existing_queue", &self.existing_queue),
        )
    }
}

/// At most one of two alternatives (a generated name's prefix, or an existing entity).
fn one_of(
    (first_key, first): (&str, &Option<String>),
    (second_key, second): (&str, &Option<String>),
) -> Result<(), AgentError> {
    if first.is_some() && second.is_some() {
        return Err(AgentError::config(format!(
            "transport: set {first_key} or {second_key}, not both"
        )));
    }
    Ok(())
}

/// `[transport]` with `kind = "eventgrid-pull"`: an Event Grid namespace topic's queue-mode
/// event subscription, read with the `[vault]` credential (Event Grid Data Receiver) or an
/// access key.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct EventGridPullSettings {
    /// `https://{namespace}.{region}-1.eventgrid.azure.net`.
    pub endpoint: Option<String>,
    /// The namespace topic.
    pub topic: Option<String>,
    /// Its event subscription (queue delivery mode).
    pub subscription: Option<String>,
    /// An access key instead of the credential. Masked when printed; better given as
    /// `KVI_AGENT_EVENTGRID_ACCESS_KEY`.
    pub access_key: Option<Masked>,
}

impl EventGridPullSettings {
    fn check(&self) -> Result<(), AgentError> {
        required("transport.endpoint", &self.endpoint)?;
        required("transport.topic", &self.topic)?;
        required("transport.subscription", &self.subscription)
    }
}

fn positive(key: &str, value: u64) -> Result<(), AgentError> {
    if value == 0 {
        return Err(AgentError::config(format!("{key} must be at least 1")));
    }
    Ok(())
}

pub(super) fn required(key: &str, value: &Option<String>) -> Result<(), AgentError> {
    match value.as_deref().map(str::trim) {
        Some(value) if !value.is_empty() => Ok(()),
        _ => Err(AgentError::config(format!("{key} is required"))),
    }
}
