//! [`WebhookSource`]: the webhook as an [`EventSource`].

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use keyvault_invalidator_core::{Delivery, DeliveryToken, EventSource, Settlement, SourceError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::auth::Authenticator;
use super::config::{Transport, WebhookConfig};
use super::error::WebhookError;
use super::handler::Handler;
use super::pending::{Pending, Settled, Taken, TokenHandle};
use super::server;

/// Tells the sources of one process apart, so a token is settled only by its own.
static NEXT_SOURCE: AtomicU64 = AtomicU64::new(1);

/// An HTTP(S) endpoint Event Grid pushes to, as an [`EventSource`] for the job.
///
/// Each event of a request is one [`Delivery`] (its bytes, its `id` as the message id, the
/// `aeg-*` headers as properties, `aeg-delivery-count` as the delivery count). The request is
/// answered when all of its deliveries are settled: 200 when every one was completed, 503
/// when one was abandoned (Event Grid delivers the whole request again), else 400 when one was
/// dead-lettered (Event Grid dead-letters the whole request, or drops it). A request not
/// settled within the [answer deadline](WebhookConfig::answer_deadline) is answered 503.
///
/// One webhook subscription reaches one endpoint: there is no fan-out to several application
/// instances. See the [module docs](super) for when to use it.
///
/// ```no_run
/// use keyvault_invalidator_eventgrid::webhook::{WebhookConfig, WebhookSource};
/// use secrecy::SecretString;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = WebhookConfig::new("0.0.0.0:8443".parse()?)
///     .tls("/etc/webhook/cert.pem", "/etc/webhook/key.pem")
///     .shared_secret(SecretString::from(std::env::var("WEBHOOK_SECRET")?));
/// let source = WebhookSource::bind(config).await?;
/// println!("listening on {}", source.local_addr());
/// // Job::builder(source, invalidator).spawn()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WebhookSource {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    local_addr: SocketAddr,
    tls: bool,
    pending: Arc<Pending>,
    shutdown: CancellationToken,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl WebhookSource {
    /// Checks the configuration, reads the certificate, binds the address and starts
    /// answering. Port 0 picks a free port: see [`local_addr`](Self::local_addr).
    pub async fn bind(config: WebhookConfig) -> Result<Self, WebhookError> {
        config.validate()?;
        if config.entra_id.is_some() {
            ensure_jwt_crypto();
        }
        let (tls, acceptor) = match &config.transport {
            Transport::Tls { cert, key } => (true, Some(server::tls_acceptor(cert, key)?)),
            _ => (false, None),
        };
        let listener = server::bind(config.listen)?;
        let local_addr = listener.local_addr().map_err(|error| {
            WebhookError::new(
                super::error::WebhookErrorKind::Bind,
                "reading the bound address",
            )
            .with_source(error)
        })?;
        let id = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed);
        let pending = Arc::new(Pending::default());
        let handler = Arc::new(Handler {
            auth: Authenticator::new(&config),
            pending: pending.clone(),
            limits: config.limits,
            source: id,
        });
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(server::serve(
            listener,
            acceptor,
            handler,
            config.limits,
            shutdown.clone(),
        ));
        tracing::info!(
            address = %local_addr,
            tls,
            shared_secret = !config.shared_secrets.is_empty(),
            entra_id = config.entra_id.is_some(),
            "Event Grid webhook listening"
        );
        Ok(WebhookSource {
            inner: Arc::new(Inner {
                id,
                local_addr,
                tls,
                pending,
                shutdown,
                server: Mutex::new(Some(server)),
            }),
        })
    }

    /// The address it listens on (with the port picked when the configuration said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Whether it serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.inner.tls
    }
}

/// `jsonwebtoken` picks its crypto backend from its features, and finds none when another
/// crate in the build enables its second backend too; then every check would panic. Install
/// the aws-lc-rs backend this crate enables, only when no backend is there.
fn ensure_jwt_crypto() {
    if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
        // Losing a race to another installer is fine: a backend is there either way.
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    }
}

impl fmt::Debug for WebhookSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSource")
            .field("local_addr", &self.inner.local_addr)
            .field("tls", &self.inner.tls)
            .field("closed", &self.inner.pending.is_closed())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl EventSource for WebhookSource {
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, SourceError> {
        match self.inner.pending.take_waiting(max.max(1)).await {
            Taken::Deliveries(deliveries) => Ok(deliveries),
            Taken::Empty => Ok(Vec::new()),
            Taken::Closed => Err(SourceError::closed()),
        }
    }

    async fn settle(
        &self,
        token: DeliveryToken,
        settlement: Settlement,
    ) -> Result<(), SourceError> {
        let handle: TokenHandle = token.into_handle()?;
        if handle.source != self.inner.id {
            return Err(SourceError::fatal(
                "the token was issued by another webhook source",
            ));
        }
        match self
            .inner
            .pending
            .settle(handle.request, handle.index, settlement)
        {
            Settled::Recorded => Ok(()),
            Settled::Lost => Err(SourceError::settlement_lost(
                "the request was already answered (its deadline passed, its sender went away, \
                 or the source closed): Event Grid delivers it again",
            )),
        }
    }

    async fn close(&self) -> Result<(), SourceError> {
        self.inner.pending.close();
        self.inner.shutdown.cancel();
        let server = self
            .inner
            .server
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(server) = server {
            // Returns once the listener is closed and the connections finished their answers.
            let _ = server.await;
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A source dropped without close stops listening too.
        self.pending.close();
        self.shutdown.cancel();
    }
}
