//! Wiring: the provider, the cache in front of it, the job over the transport, the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keyvault_invalidator_core::{
    CancellationToken, EventSource, JobError, JobHandle, SecretProvider, StatsSnapshot,
};
use keyvault_invalidator_moka::{CachedSecretProvider, RefreshMode};
use keyvault_invalidator_secrets::azure_core::credentials::TokenCredential;
use keyvault_invalidator_secrets::azure_core::http::ClientOptions;
use keyvault_invalidator_secrets::{credential, KeyVaultProvider};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::config::{ApiToken, CacheMode, CacheSettings, Credential, Settings, VaultSettings};
use crate::error::{AgentError, AgentErrorKind};
use crate::http::{self, AppState, Readiness};
use crate::metrics::AgentMetrics;
use crate::transport::{self, Events, VaultAccess};

/// The cache the agent serves from: any provider behind the moka cache.
pub type AgentCache = CachedSecretProvider<Arc<dyn SecretProvider>>;

/// A running agent: server, cache and job. Dropping it leaves them running until the runtime
/// ends; call [`shutdown`](Self::shutdown).
///
/// ```
/// use std::sync::Arc;
/// use keyvault_invalidator_agent::{config::{ApiToken, Settings, TokenSource}, Agent};
/// use keyvault_invalidator_testkit::InMemoryVault;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let vault = InMemoryVault::new();
/// vault.set("db-password", "s3cret");
/// let mut settings = Settings::from_env(|_| None)?;
/// settings.server.listen = "127.0.0.1:0".parse()?; // any free port
/// let token = ApiToken::new("0123456789abcdef", TokenSource::Environment)?;
/// let agent = Agent::start_with_provider(settings, token, Arc::new(vault)).await?;
/// println!("serving on {}", agent.local_addr());
/// agent.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Agent {
    address: SocketAddr,
    webhook_addr: Option<SocketAddr>,
    cache: AgentCache,
    job: Option<JobHandle>,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
}

impl Agent {
    /// Starts from `settings`: Key Vault at `vault.url` with its credential, and the transport.
    pub async fn start(settings: Settings, token: ApiToken) -> Result<Agent, AgentError> {
        let vault_url =
            settings.vault.url.clone().ok_or_else(|| {
                AgentError::config("vault.url is required (or KVI_AGENT_VAULT_URL)")
            })?;
        let provider = KeyVaultProvider::builder(&vault_url, credential_for(&settings.vault)?)
            .timeout(Duration::from_secs(settings.vault.timeout_secs))
            .build()
            .map_err(|e| AgentError::config(format!("vault.url: {e}")).with_source(e))?;
        Self::start_with_provider(settings, token, Arc::new(provider)).await
    }

    /// Starts with `provider` in place of Key Vault (a test stand-in, another store); the
    /// transport is the configured one.
    pub async fn start_with_provider(
        settings: Settings,
        token: ApiToken,
        provider: Arc<dyn SecretProvider>,
    ) -> Result<Agent, AgentError> {
        Self::start_with_provider_and_client_options(settings, token, provider, None).await
    }

    /// [`start_with_provider`](Self::start_with_provider), with the Azure SDK client options
    /// (its HTTP transport, trusted certificates, retries) the Event Grid pull transport uses:
    /// a test's stand-in reached through its own HTTP client, a proxy. `None` keeps the SDK's
    /// defaults.
    pub async fn start_with_provider_and_client_options(
        settings: Settings,
        token: ApiToken,
        provider: Arc<dyn SecretProvider>,
        client_options: Option<ClientOptions>,
    ) -> Result<Agent, AgentError> {
        settings.check()?;
        let shutdown = CancellationToken::new();
        let cache = build_cache(&settings, provider.clone());
        let vault_settings = settings.vault.clone();
        let access = VaultAccess {
            provider,
            credential: Box::new(move || credential_for(&vault_settings)),
            client_options,
        };
        let events = transport::spawn(&settings, &cache, &access, &shutdown).await?;
        Self::serve(settings, token, cache, events, shutdown).await
    }

    /// Starts with `provider` and the events of `source` (the demo's in-memory source, a
    /// test's), whatever `transport` says.
    pub async fn start_with_source<S: EventSource + 'static>(
        settings: Settings,
        token: ApiToken,
        provider: Arc<dyn SecretProvider>,
        source: S,
    ) -> Result<Agent, AgentError> {
        settings.check()?;
        let shutdown = CancellationToken::new();
        let cache = build_cache(&settings, provider);
        let job = transport::spawn_job(source, &settings, &cache, &shutdown)?;
        let events = Events {
            job: Some(job),
            ..Events::default()
        };
        Self::serve(settings, token, cache, events, shutdown).await
    }

    async fn serve(
        settings: Settings,
        token: ApiToken,
        cache: AgentCache,
        events: Events,
        shutdown: CancellationToken,
    ) -> Result<Agent, AgentError> {
        let listener = match TcpListener::bind(settings.server.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                shutdown.cancel();
                return Err(AgentError::new(
                    AgentErrorKind::Bind,
                    format!("cannot listen on {}", settings.server.listen),
                )
                .with_source(error));
            }
        };
        let address = listener.local_addr().map_err(|e| {
            AgentError::new(AgentErrorKind::Bind, "cannot read the listen address").with_source(e)
        })?;
        let state = Arc::new(AppState {
            cache: cache.clone(),
            token,
            readiness: Readiness {
                job: events.job.as_ref().map(JobHandle::monitor),
                connected_gauge: events.connected_gauge,
            },
            metrics: AgentMetrics::install(),
            watchers: Arc::new(Semaphore::new(settings.server.max_watchers)),
            request_timeout: settings.server.request_timeout(),
            shutdown: shutdown.clone(),
        });
        let server = tokio::spawn(http::serve(
            listener,
            state,
            settings.server.max_connections,
            settings.server.request_timeout(),
        ));
        tracing::info!(%address, transport = settings.transport.kind(), "kvi-agent listening");
        Ok(Agent {
            address,
            webhook_addr: events.webhook_addr,
            cache,
            job: events.job,
            shutdown,
            server,
        })
    }

    /// The address the server listens on (the OS's choice for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// The Event Grid webhook's address (the OS's choice for port 0), with
    /// `transport.kind = "eventgrid-webhook"`.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook_addr
    }

    /// The cache the server reads from.
    pub fn cache(&self) -> &AgentCache {
        &self.cache
    }

    /// The job, when there is a transport.
    pub fn job(&self) -> Option<&JobHandle> {
        self.job.as_ref()
    }

    /// A token cancelled when the agent shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, lets open requests finish (briefly), and shuts the job down: in-flight
    /// deliveries finish, the rest are abandoned for redelivery.
    pub async fn shutdown(self) -> Result<Option<StatsSnapshot>, JobError> {
        self.shutdown.cancel();
        let _ = self.server.await;
        match self.job {
            Some(job) => job.shutdown().await.map(Some),
            None => Ok(None),
        }
    }
}

fn build_cache(settings: &Settings, provider: Arc<dyn SecretProvider>) -> AgentCache {
    let names = settings.names.mapping();
    let provider: Arc<dyn SecretProvider> = Arc::new(provider.with_names(names));
    cache_builder(&settings.cache, provider)
}

fn cache_builder(settings: &CacheSettings, provider: Arc<dyn SecretProvider>) -> AgentCache {
    let mode = match settings.mode {
        CacheMode::RefreshAhead => RefreshMode::RefreshAhead,
        CacheMode::Invalidate => RefreshMode::Invalidate,
    };
    let mut builder = CachedSecretProvider::builder(provider)
        .mode(mode)
        .time_to_live(Duration::from_secs(settings.ttl_secs))
        .max_staleness(Duration::from_secs(settings.max_staleness_secs))
        .max_capacity(settings.capacity);
    if settings.jitter_ms > 0 {
        builder = builder.refresh_jitter(Duration::from_millis(settings.jitter_ms));
    }
    builder.build()
}

fn credential_for(vault: &VaultSettings) -> Result<Arc<dyn TokenCredential>, AgentError> {
    let credential = match (vault.credential, vault.client_id.as_deref()) {
        (Credential::ManagedIdentity, None) => credential::managed_identity(),
        (Credential::ManagedIdentity, Some(client_id)) => {
            credential::user_assigned_managed_identity(client_id)
        }
        (Credential::WorkloadIdentity, _) => credential::workload_identity(),
        (Credential::DeveloperTools, _) => credential::developer_tools(),
    };
    credential.map_err(|e| {
        AgentError::new(AgentErrorKind::Setup, format!("vault.credential: {e}")).with_source(e)
    })
}
