//! Where rotation events come from: the transport `transport.kind` names, each started as the
//! core `Job` over that transport's source.
//!
//! Adding a transport is one arm in [`spawn`] (build its config, call [`spawn_job`]) and its
//! `connected` gauge.

use std::net::SocketAddr;
use std::sync::Arc;

use keyvault_invalidator_core::{
    CancellationToken, EventSource, Job, JobHandle, KeyVaultInvalidator, SecretProvider,
};
use keyvault_invalidator_eventgrid::pull::{PullConfig, PullSource};
use keyvault_invalidator_eventgrid::webhook::{
    EntraIdConfig, WebhookConfig, WebhookError, WebhookErrorKind, WebhookSource,
};
use keyvault_invalidator_rabbitmq::{RabbitMqConfig, RabbitMqSource};
use keyvault_invalidator_secrets::azure_core::credentials::TokenCredential;
use keyvault_invalidator_secrets::azure_core::http::ClientOptions;
use keyvault_invalidator_servicebus::{ServiceBusConfig, ServiceBusSource};

use crate::config::{
    EventGridPullSettings, EventGridWebhookSettings, RabbitMqSettings, ServiceBusRegistration,
    ServiceBusSettings, Settings, TransportSettings,
};
use crate::error::{AgentError, AgentErrorKind};
use crate::runtime::AgentCache;

/// The job's name in its metrics (`job` label) and logs.
pub const JOB_NAME: &str = "kvi-agent";

/// The default prefix of the instance's own subscription or queue.
pub const DEFAULT_INSTANCE_PREFIX: &str = "kvi-agent";

/// A running source of events, or none.
#[derive(Debug, Default)]
pub struct Events {
    /// The job, unless `transport.kind = "none"`.
    pub job: Option<JobHandle>,
    /// The transport's `..._connected` gauge, for `/readyz`.
    pub connected_gauge: Option<&'static str>,
    /// The Event Grid webhook's bound address, with `transport.kind = "eventgrid-webhook"`.
    pub webhook_addr: Option<SocketAddr>,
}

/// What a transport may need from the vault side: the credential (Service Bus with a managed
/// identity) and the provider (a connection string kept in the vault).
pub struct VaultAccess {
    /// The vault provider, before any name mapping.
    pub provider: Arc<dyn SecretProvider>,
    /// The `[vault]` credential, built on first use.
    pub credential: Box<dyn Fn() -> Result<Arc<dyn TokenCredential>, AgentError> + Send + Sync>,
    /// The Azure SDK client options of the Event Grid pull transport, when not the defaults.
    pub client_options: Option<ClientOptions>,
}

/// Starts the transport `settings.transport` names (binding the webhook's listener, for the
/// Event Grid webhook).
pub async fn spawn(
    settings: &Settings,
    cache: &AgentCache,
    vault: &VaultAccess,
    shutdown: &CancellationToken,
) -> Result<Events, AgentError> {
    match &settings.transport {
        TransportSettings::None => Ok(Events::default()),
        TransportSettings::ServiceBus(bus) => {
            let source = ServiceBusSource::new(service_bus_config(bus, vault)?);
            Ok(Events {
                job: Some(spawn_job(source, settings, cache, shutdown)?),
                connected_gauge: Some("keyvault_invalidator_servicebus_connected"),
                webhook_addr: None,
            })
        }
        TransportSettings::RabbitMq(rabbit) => {
            let source = RabbitMqSource::new(rabbitmq_config(rabbit)?);
            Ok(Events {
                job: Some(spawn_job(source, settings, cache, shutdown)?),
                connected_gauge: Some("keyvault_invalidator_rabbitmq_connected"),
                webhook_addr: None,
            })
        }
        TransportSettings::EventGridPull(pull) => {
            let source = PullSource::new(pull_config(pull, vault)?);
            Ok(Events {
                job: Some(spawn_job(source, settings, cache, shutdown)?),
                connected_gauge: Some("keyvault_invalidator_eventgrid_pull_connected"),
                webhook_addr: None,
            })
        }
        TransportSettings::EventGridWebhook(webhook) => {
            let source = WebhookSource::bind(webhook_config(webhook)?)
                .await
                .map_err(webhook_error)?;
            let webhook_addr = Some(source.local_addr());
            Ok(Events {
                job: Some(spawn_job(source, settings, cache, shutdown)?),
                // Connected once bound, which it is before the API answers: `/readyz` then
                // follows the job alone.
                connected_gauge: None,
                webhook_addr,
            })
        }
    }
}

/// Starts the job over `source`, invalidating `cache` for events from the configured vault.
pub fn spawn_job<S: EventSource + 'static>(
    source: S,
    settings: &Settings,
    cache: &AgentCache,
    shutdown: &CancellationToken,
) -> Result<JobHandle, AgentError> {
    let mut invalidator =
        KeyVaultInvalidator::builder(cache.clone()).name_mapping(settings.names.mapping());
    if let Some(vault) = settings.vault.allowed_vault_name() {
        invalidator = invalidator.allow_vault(vault);
    }
    Job::builder(source, invalidator.build())
        .name(JOB_NAME)
        .cancellation_token(shutdown.clone())
        .spawn()
        .map_err(|e| AgentError::new(AgentErrorKind::Setup, "cannot start the job").with_source(e))
}

fn config_error(error: impl std::error::Error + Send + Sync + 'static) -> AgentError {
    AgentError::config(format!("transport: {error}")).with_source(error)
}

fn service_bus_config(
    settings: &ServiceBusSettings,
    vault: &VaultAccess,
) -> Result<ServiceBusConfig, AgentError> {
    let mut config = match settings.registration {
        ServiceBusRegistration::ManagedIdentity => {
            let namespace = settings.namespace.as_deref().unwrap_or_default();
            ServiceBusConfig::with_credential(namespace, (vault.credential)()?)
                .map_err(config_error)?
        }
        ServiceBusRegistration::ConnectionString => {
            let secret = settings
                .connection_string_secret
                .as_deref()
                .unwrap_or_default();
            ServiceBusConfig::connection_string_from_store(vault.provider.clone(), secret)
                .map_err(config_error)?
        }
    };
    if let Some(topic) = &settings.topic {
        config = config.topic(topic).map_err(config_error)?;
    }
    config = match &settings.existing_subscription {
        Some(name) => config.existing_subscription(name),
        None => config.subscription_prefix(
            settings
                .subscription_prefix
                .as_deref()
                .unwrap_or(DEFAULT_INSTANCE_PREFIX),
        ),
    }
    .map_err(config_error)?;
    Ok(config)
}

fn rabbitmq_config(settings: &RabbitMqSettings) -> Result<RabbitMqConfig, AgentError> {
    let uri = settings
        .uri
        .as_ref()
        .map(|uri| uri.expose())
        .unwrap_or_default();
    let config = if settings.allow_insecure_endpoint {
        RabbitMqConfig::new_allowing_insecure_endpoint(uri)
    } else {
        RabbitMqConfig::new(uri)
    }
    .map_err(config_error)?;
    match &settings.existing_queue {
        Some(queue) => config.existing_queue(queue),
        None => config.instance_prefix(
            settings
                .instance_prefix
                .as_deref()
                .unwrap_or(DEFAULT_INSTANCE_PREFIX),
        ),
    }
    .map_err(config_error)
}

fn pull_config(
    settings: &EventGridPullSettings,
    vault: &VaultAccess,
) -> Result<PullConfig, AgentError> {
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let builder = PullConfig::builder(
        text(&settings.endpoint),
        text(&settings.topic),
        text(&settings.subscription),
    );
    let builder = match &vault.client_options {
        Some(options) => builder.client_options(options.clone()),
        None => builder,
    };
    let builder = match &settings.access_key {
        Some(key) => builder.access_key(key.expose()),
        None => builder.credential((vault.credential)()?),
    };
    builder.build().map_err(config_error)
}

fn webhook_config(settings: &EventGridWebhookSettings) -> Result<WebhookConfig, AgentError> {
    let listen = settings.listen.ok_or_else(|| {
        AgentError::config("transport.listen is required for kind = \"eventgrid-webhook\"")
    })?;
    let mut config = WebhookConfig::new(listen);
    config = match (&settings.tls_cert_file, &settings.tls_key_file) {
        (Some(cert), Some(key)) => config.tls(cert, key),
        _ if settings.plain_http_allowing_non_loopback => config.plain_http_allowing_non_loopback(),
        _ => config.plain_http(),
    };
    if let Some(secret) = &settings.shared_secret {
        config = config.shared_secret(secret.resolve("transport.shared_secret")?);
    }
    if let Some(secret) = &settings.second_shared_secret {
        config =
            config.also_accept_shared_secret(secret.resolve("transport.second_shared_secret")?);
    }
    if let Some(name) = &settings.query_parameter {
        config = config.query_parameter(name.trim());
    }
    if let (Some(tenant), Some(audience)) = (&settings.entra_tenant, &settings.entra_audience) {
        config = config.entra_id(EntraIdConfig::new(tenant.trim(), audience.trim()));
    }
    if settings.without_authentication {
        config = config.without_authentication();
    }
    Ok(config)
}

/// The agent's error for a webhook that cannot start, classified by the webhook's kind: its
/// address (`Bind`), its configuration (`Config`), its certificate files (`Setup`).
fn webhook_error(error: WebhookError) -> AgentError {
    let kind = match error.kind() {
        WebhookErrorKind::Bind => AgentErrorKind::Bind,
        WebhookErrorKind::InvalidConfig => AgentErrorKind::Config,
        _ => AgentErrorKind::Setup,
    };
    AgentError::new(kind, format!("transport: the Event Grid webhook: {error}")).with_source(error)
}
