//! How a webhook listens, whom it believes, and how much it takes: [`WebhookConfig`].

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use super::error::WebhookError;

/// The query parameter that carries the shared secret unless told otherwise: Event Grid's own
/// examples (`?code=...`) and Azure Functions use `code`.
pub const DEFAULT_QUERY_PARAMETER: &str = "code";
/// The largest request body taken by default. Event Grid batches are at most 1 MiB
/// (`preferred-batch-size-in-kilobytes` ≤ 1024), and an event at most 1 MB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long a request may take to be answered by default: under Event Grid's 30 s, so the
/// answer (a 503 at worst) arrives before Event Grid gives up on the attempt.
pub const DEFAULT_ANSWER_DEADLINE: Duration = Duration::from_secs(25);
/// How long the headers (and a TLS handshake) may take to arrive by default.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the body may take to arrive by default, once the headers did.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most request headers taken by default (hyper refuses more with 431).
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// The most connections open at once by default; more wait in the listen backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// The webhook's settings, built step by step and checked by
/// [`WebhookSource::bind`](super::WebhookSource::bind).
///
/// Choose a transport ([`tls`](Self::tls), or [`plain_http`](Self::plain_http) behind a
/// TLS-terminating proxy) and at least one authentication ([`shared_secret`](Self::shared_secret),
/// [`entra_id`](Self::entra_id)). When both authentications are configured, a request must
/// pass both.
///
/// ```
/// use std::time::Duration;
/// use keyvault_invalidator_eventgrid::webhook::{EntraIdConfig, WebhookConfig};
/// use secrecy::SecretString;
///
/// let config = WebhookConfig::new("0.0.0.0:8443".parse().unwrap())
///     .tls("/etc/webhook/cert.pem", "/etc/webhook/key.pem")
///     .shared_secret(SecretString::from("new-secret"))
///     .also_accept_shared_secret(SecretString::from("old-secret"))
///     .entra_id(EntraIdConfig::new("my-tenant-id", "api://my-webhook"))
///     .max_body_bytes(512 * 1024)
///     .answer_deadline(Duration::from_secs(20));
/// // The secrets stay out of Debug output.
/// let debug = format!("{config:?}");
/// assert!(!debug.contains("new-secret") && !debug.contains("old-secret"));
/// ```
#[derive(Clone)]
pub struct WebhookConfig {
    pub(crate) listen: SocketAddr,
    pub(crate) transport: Transport,
    pub(crate) shared_secrets: Vec<SecretString>,
    pub(crate) query_parameter: String,
    pub(crate) entra_id: Option<EntraIdConfig>,
    pub(crate) without_authentication: bool,
    pub(crate) limits: Limits,
}

/// How connections are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Not chosen yet: `bind` refuses it.
    Unset,
    /// HTTPS with this certificate chain and private key (PEM files).
    Tls { cert: PathBuf, key: PathBuf },
    /// Plain HTTP; on a non-loopback address only when `allow_non_loopback`.
    PlainHttp { allow_non_loopback: bool },
}

/// The limits on what a request may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_body_bytes: usize,
    pub(crate) max_headers: usize,
    pub(crate) max_connections: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) body_read_timeout: Duration,
    pub(crate) answer_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            answer_deadline: DEFAULT_ANSWER_DEADLINE,
        }
    }
}

impl WebhookConfig {
    /// A webhook listening on `listen` (port 0 picks a free port; read it back with
    /// [`WebhookSource::local_addr`](super::WebhookSource::local_addr)), with no transport and
    /// no authentication chosen yet, and the default limits.
    pub fn new(listen: SocketAddr) -> Self {
        WebhookConfig {
            listen,
            transport: Transport::Unset,
            shared_secrets: Vec::new(),
            query_parameter: DEFAULT_QUERY_PARAMETER.to_owned(),
            entra_id: None,
            without_authentication: false,
            limits: Limits::default(),
        }
    }

    /// Serves HTTPS with the certificate chain in `cert_path` and the private key in
    /// `key_path` (PEM files; PKCS#8, PKCS#1 or SEC1 keys). Event Grid refuses self-signed
    /// certificates: use one from a public CA.
    pub fn tls(mut self, cert_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Self {
        self.transport = Transport::Tls {
            cert: cert_path.into(),
            key: key_path.into(),
        };
        self
    }

    /// Serves plain HTTP, on a loopback address only: for a TLS-terminating proxy on the same
    /// host, and for tests. [`bind`](super::WebhookSource::bind) refuses any other address.
    pub fn plain_http(mut self) -> Self {
        self.transport = Transport::PlainHttp {
            allow_non_loopback: false,
        };
        self
    }

    /// Serves plain HTTP on any address: only behind a TLS-terminating proxy (an ingress, an
    /// App Service front end) on a network nobody else reaches, since the shared secret and
    /// tokens travel in clear between the proxy and this endpoint.
    pub fn plain_http_allowing_non_loopback(mut self) -> Self {
        self.transport = Transport::PlainHttp {
            allow_non_loopback: true,
        };
        self
    }

    /// Accepts requests whose query string carries this secret (in
    /// [`query_parameter`](Self::query_parameter), `code` by default), as the Event Grid
    /// subscription's endpoint URL `https://host/path?code=SECRET` sends it. Replaces the
    /// secrets set before.
    pub fn shared_secret(mut self, secret: SecretString) -> Self {
        self.shared_secrets = vec![secret];
        self
    }

    /// Accepts a second secret as well, while rotating: deploy with the new secret as the
    /// second, update the subscription's URL, then drop the old one. At most two secrets are
    /// kept; a third call replaces the second.
    pub fn also_accept_shared_secret(mut self, secret: SecretString) -> Self {
        self.shared_secrets.truncate(1);
        self.shared_secrets.push(secret);
        self
    }

    /// The query parameter that carries the shared secret (default `code`).
    pub fn query_parameter(mut self, name: impl Into<String>) -> Self {
        self.query_parameter = name.into();
        self
    }

    /// Accepts requests that carry a Microsoft Entra ID bearer token for this app, as a
    /// subscription with "Use Microsoft Entra authentication" sends them.
    pub fn entra_id(mut self, entra_id: EntraIdConfig) -> Self {
        self.entra_id = Some(entra_id);
        self
    }

    /// Accepts every request, authenticated or not.
    ///
    /// Dangerous: whoever reaches the endpoint can make the application refresh any cached
    /// secret at will (a load on Key Vault, up to its throttling) and can read the endpoint's
    /// answers. Only for a listener that nothing but a trusted proxy, which authenticates for
    /// it, can reach. Ignored when an authentication is configured.
    pub fn without_authentication(mut self) -> Self {
        self.without_authentication = true;
        self
    }

    /// The largest body taken (default 1 MiB); a larger one is answered 413.
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.limits.max_body_bytes = limit;
        self
    }

    /// The most headers a request may have (default 64); more are answered 431.
    pub fn max_headers(mut self, limit: usize) -> Self {
        self.limits.max_headers = limit;
        self
    }

    /// The most connections served at once (default 256).
    pub fn max_connections(mut self, limit: usize) -> Self {
        self.limits.max_connections = limit;
        self
    }

    /// How long a connection may take to send a request's headers, TLS handshake included
    /// (default 10 s); slower connections are closed.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.limits.header_read_timeout = timeout;
        self
    }

    /// How long the body may take to arrive after the headers (default 10 s); slower requests
    /// are answered 408.
    pub fn body_read_timeout(mut self, timeout: Duration) -> Self {
        self.limits.body_read_timeout = timeout;
        self
    }

    /// How long a request waits for its events to be settled (default 25 s, under Event
    /// Grid's 30 s). Past it the request is answered 503, Event Grid retries, and the
    /// deliveries' later settlements fail as lost.
    pub fn answer_deadline(mut self, deadline: Duration) -> Self {
        self.limits.answer_deadline = deadline;
        self
    }

    /// Checks the settings that can be checked without touching the network or the disk.
    pub(crate) fn validate(&self) -> Result<(), WebhookError> {
        match &self.transport {
            Transport::Unset => {
                return Err(WebhookError::invalid_config(
                    "no transport chosen: call `tls(cert, key)`, or `plain_http()` behind a \
                     TLS-terminating proxy",
                ))
            }
            Transport::PlainHttp {
                allow_non_loopback: false,
            } if !self.listen.ip().is_loopback() => {
                return Err(WebhookError::invalid_config(format!(
                    "plain HTTP on the non-loopback address {}: use `tls(cert, key)`, or \
                     `plain_http_allowing_non_loopback()` behind a TLS-terminating proxy",
                    self.listen
                )))
            }
            _ => {}
        }
        if self.shared_secrets.is_empty() && self.entra_id.is_none() && !self.without_authentication
        {
            return Err(WebhookError::invalid_config(
                "no authentication: configure `shared_secret(..)` and/or `entra_id(..)` (or, only \
                 behind a proxy that authenticates, `without_authentication()`)",
            ));
        }
        if self.query_parameter.is_empty() {
            return Err(WebhookError::invalid_config(
                "the shared secret's query parameter name is empty",
            ));
        }
        if self.shared_secrets.iter().any(|s| {
            use secrecy::ExposeSecret as _;
            s.expose_secret().is_empty()
        }) {
            return Err(WebhookError::invalid_config("a shared secret is empty"));
        }
        let limits = &self.limits;
        for (name, zero) in [
            ("max_body_bytes", limits.max_body_bytes == 0),
            ("max_headers", limits.max_headers == 0),
            ("max_connections", limits.max_connections == 0),
            ("header_read_timeout", limits.header_read_timeout.is_zero()),
            ("body_read_timeout", limits.body_read_timeout.is_zero()),
            ("answer_deadline", limits.answer_deadline.is_zero()),
        ] {
            if zero {
                return Err(WebhookError::invalid_config(format!(
                    "`{name}` must be more than zero"
                )));
            }
        }
        if let Some(entra_id) = &self.entra_id {
            entra_id.validate()?;
        }
        Ok(())
    }
}

impl fmt::Debug for WebhookConfig {
    // By hand: the shared secrets are counted, never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("listen", &self.listen)
            .field("transport", &self.transport)
            .field("shared_secrets", &self.shared_secrets.len())
            .field("query_parameter", &self.query_parameter)
            .field("entra_id", &self.entra_id)
            .field("without_authentication", &self.without_authentication)
            .field("limits", &self.limits)
            .finish()
    }
}

/// The issuers Entra ID puts in tokens for a tenant: v1 (`sts.windows.net`) and v2.
fn default_issuers(tenant: &str) -> Vec<String> {
    vec![
        format!("https://sts.windows.net/{tenant}/"),
        format!("https://login.microsoftonline.com/{tenant}/v2.0"),
    ]
}

/// The app role Event Grid's service principal is given on the webhook's app registration.
pub const EVENT_GRID_ROLE: &str = "AzureEventGridSecureWebhookSubscriber";
/// How often, at most, an unknown key id makes the signing keys be fetched again by default.
pub const DEFAULT_KEYS_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(300);

/// Microsoft Entra ID token checks: the tenant whose keys sign, the app the tokens are for.
///
/// A token passes when its RS256 signature verifies with one of the tenant's signing keys
/// (fetched from `https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys`, cached,
/// fetched again when a token names an unknown key id, at most every
/// [`keys_min_refresh_interval`](Self::keys_min_refresh_interval)), its issuer is the tenant's
/// (v1 or v2), its audience is `audience`, it has not expired (one minute of clock skew
/// allowed), and its `roles` include [`EVENT_GRID_ROLE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraIdConfig {
    pub(crate) audience: String,
    pub(crate) issuers: Vec<String>,
    pub(crate) keys_url: String,
    pub(crate) keys_min_refresh_interval: Duration,
    pub(crate) role: String,
}

impl EntraIdConfig {
    /// Tokens issued by `tenant` (its id, a GUID) for `audience`: the webhook app's
    /// Application ID URI (`api://...`) or its application (client) id, whichever the Event
    /// Grid subscription names.
    pub fn new(tenant: &str, audience: impl Into<String>) -> Self {
        EntraIdConfig {
            audience: audience.into(),
            issuers: default_issuers(tenant),
            keys_url: format!("https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys"),
            keys_min_refresh_interval: DEFAULT_KEYS_MIN_REFRESH_INTERVAL,
            role: EVENT_GRID_ROLE.to_owned(),
        }
    }

    /// Fetches the signing keys (a JWKS document) from `url` instead: a sovereign cloud, or a
    /// local stand-in in tests. Must be HTTPS, or HTTP on a loopback address.
    pub fn keys_url(mut self, url: impl Into<String>) -> Self {
        self.keys_url = url.into();
        self
    }

    /// Accepts these issuers instead of the tenant's v1 and v2 ones.
    pub fn issuers<I, S>(mut self, issuers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.issuers = issuers.into_iter().map(Into::into).collect();
        self
    }

    /// The least time between two fetches of the keys caused by unknown key ids (default
    /// 5 min), so a flood of tokens with made-up key ids cannot hammer the keys endpoint.
    pub fn keys_min_refresh_interval(mut self, interval: Duration) -> Self {
        self.keys_min_refresh_interval = interval;
        self
    }

    fn validate(&self) -> Result<(), WebhookError> {
        if self.audience.is_empty() {
            return Err(WebhookError::invalid_config(
                "the Entra ID audience is empty",
            ));
        }
        if self.issuers.is_empty() {
            return Err(WebhookError::invalid_config(
                "no Entra ID issuer is accepted",
            ));
        }
        let url = url::Url::parse(&self.keys_url).map_err(|error| {
            WebhookError::invalid_config(format!(
                "the Entra ID keys URL `{}` is not a URL",
                self.keys_url
            ))
            .with_source(error)
        })?;
        let loopback = url
            .host_str()
            .is_some_and(keyvault_invalidator_core::is_loopback_host);
        match url.scheme() {
            "https" => Ok(()),
            "http" if loopback => Ok(()),
            _ => Err(WebhookError::invalid_config(format!(
                "the Entra ID keys URL `{}` must be HTTPS (HTTP only on loopback)",
                self.keys_url
            ))),
        }
    }
}
