//! A local stand-in of the Azure Key Vault secrets REST API, for driving the real Azure SDK
//! client (`SecretClient`) in tests without Azure (feature `keyvault-standin`).
//!
//! The stand-in is an HTTPS server on `127.0.0.1` with a port the OS picks. It speaks what the
//! SDK insists on:
//!
//! - **TLS**: the SDK's bearer-token policy refuses `http://` endpoints, so the stand-in serves a
//!   self-signed certificate generated at start. [`KeyVaultStandIn::transport`] is an HTTP client
//!   for the SDK that trusts that certificate only, resolves the vault's host name to the
//!   stand-in's loopback address (no DNS) and ignores proxy settings, so nothing leaves the
//!   machine.
//! - **The authentication challenge**: a request without a valid bearer token gets the 401 that
//!   Key Vault sends (`WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/{tenant}",
//!   resource="https://vault.azure.net"`); the SDK then asks its credential for a token and sends
//!   the request again. A fresh client therefore makes two requests for its first read, then one
//!   per read. The endpoint is `https://{vault}.vault.azure.net:{port}/` so the SDK's check that
//!   the challenge's resource matches the vault's domain passes as it would against Azure.
//! - **Response shapes**: `GET /secrets/{name}` and `/secrets/{name}/{version}` answer
//!   `{"value":..,"id":"https://{host}/secrets/{name}/{version}","attributes":{..},"tags":{}}`;
//!   errors answer `{"error":{"code":..,"message":..}}`.
//!
//! Faults ([`Fault`]) are scripted with [`KeyVaultStandIn::fail_next`]. They are spent only by
//! requests that carry the stand-in's token: as with Key Vault, authentication comes first, so
//! the challenge round trip of a fresh client never eats a fault.
//!
//! Every request is recorded ([`RecordedRequest`]) so tests can assert exact call counts.
//!
//! ```
//! use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
//! use keyvault_invalidator_testkit::keyvault_standin::KeyVaultStandIn;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let standin = KeyVaultStandIn::start().await?;
//! let version = standin.set_secret("db-password", "s3cret");
//! let options = SecretClientOptions { client_options: standin.client_options(), ..Default::default() };
//! let client = SecretClient::new(standin.endpoint(), standin.credential(), Some(options))?;
//!
//! let secret = client.get_secret("db-password", None).await?.into_model()?;
//! assert_eq!(secret.value.as_deref(), Some("s3cret"));
//! assert!(secret.id.unwrap().ends_with(&format!("/secrets/db-password/{version}")));
//! // The challenge round trip, then the authorized read.
//! assert_eq!(standin.calls("db-password"), 2);
//! assert_eq!(standin.authorized_requests(), 1);
//! # Ok(()) }
//! ```
//!
//! (The example uses `azure_security_keyvault_secrets`, a dev-dependency of the crates that test
//! against the stand-in.)

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::http::{ClientOptions, HttpClient, RetryOptions, Transport};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// The vault name used by [`KeyVaultStandIn::start`].
pub const DEFAULT_VAULT_NAME: &str = "standin-kv";

/// The tenant named in the stand-in's authentication challenge.
pub const CHALLENGE_TENANT: &str = "72f988bf-0000-0000-0000-2d7cd011db47";

/// The scope the Azure SDK asks a credential for after the stand-in's challenge.
pub const KEY_VAULT_SCOPE: &str = "https://vault.azure.net/.default";

/// A scripted failure for the next authorized requests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// 429 with `Retry-After: {retry_after_secs}`, as Key Vault throttles.
    Throttled {
        /// The seconds announced in `Retry-After`.
        retry_after_secs: u64,
    },
    /// This status with a Key Vault error body (for example 500, 503).
    Status(u16),
    /// 401 with the authentication challenge, as for a token Key Vault rejects. The SDK answers
    /// it by fetching a new token and sending the request once more, which spends the next
    /// fault.
    Unauthorized,
    /// 403 `Forbidden`: the identity has no `get` permission on secrets.
    Forbidden,
    /// The normal answer, sent after this long.
    Delay(Duration),
    /// The connection is closed without an answer.
    Disconnect,
}

/// Optional attributes of a secret version, as Unix seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StandInAttributes {
    /// `attributes.created`; defaults to the time of [`KeyVaultStandIn::set_secret_with`].
    pub created: Option<i64>,
    /// `attributes.nbf`.
    pub not_before: Option<i64>,
    /// `attributes.exp`.
    pub expires: Option<i64>,
    /// `contentType`.
    pub content_type: Option<String>,
}

/// One request the stand-in received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The HTTP method.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The secret name in the path, as sent, when the path is under `/secrets/`.
    pub secret: Option<String>,
    /// The version in the path, when one was asked for.
    pub version: Option<String>,
    /// Whether the request had an `Authorization` header (valid or not).
    pub authorization: bool,
}

/// A local stand-in of Key Vault's secrets API. Dropping it stops the server.
pub struct KeyVaultStandIn {
    shared: Arc<Shared>,
    endpoint: String,
    transport: Arc<dyn HttpClient>,
    credential: Arc<FakeTokenCredential>,
    server: JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
    token: String,
    base_url: String,
}

#[derive(Default)]
struct State {
    // Keyed by lower-case name: Key Vault names are case-insensitive.
    secrets: HashMap<String, StoredSecret>,
    next_version: u64,
    faults: VecDeque<Fault>,
    requests: Vec<RecordedRequest>,
}

struct StoredSecret {
    name: String,
    versions: Vec<StoredVersion>,
}

struct StoredVersion {
    version: String,
    value: String,
    attributes: StandInAttributes,
    updated: i64,
}

impl KeyVaultStandIn {
    /// Starts a stand-in for the vault [`DEFAULT_VAULT_NAME`].
    pub async fn start() -> io::Result<Self> {
        Self::start_named(DEFAULT_VAULT_NAME).await
    }

    /// Starts a stand-in for the vault `vault_name` (3-24 letters, digits and `-`).
    pub async fn start_named(vault_name: &str) -> io::Result<Self> {
        let valid = (3..=24).contains(&vault_name.len())
            && vault_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !valid {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a vault name is 3-24 letters, digits and '-'",
            ));
        }
        let host = format!("{}.vault.azure.net", vault_name.to_ascii_lowercase());
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let endpoint = format!("https://{host}:{}/", address.port());

        let certified = rcgen::generate_simple_self_signed(vec![host.clone()]).map_err(other)?;
        let certificate: CertificateDer<'static> = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        // Named explicitly: with more than one rustls provider compiled in, rustls cannot pick.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(other)?
            .with_no_client_auth()
            .with_single_cert(vec![certificate.clone()], key)
            .map_err(other)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];

        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_der(&certificate).map_err(other)?])
            .resolve(&host, address)
            .no_proxy()
            .http1_only()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(other)?;

        let token = format!("standin-token-{}", address.port());
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            token: token.clone(),
            base_url: endpoint.trim_end_matches('/').to_owned(),
        });
        let server = tokio::spawn(serve(
            listener,
            TlsAcceptor::from(Arc::new(config)),
            shared.clone(),
        ));
        Ok(KeyVaultStandIn {
            shared,
            endpoint,
            transport: Arc::new(client),
            credential: Arc::new(FakeTokenCredential::new(token)),
            server,
        })
    }

    /// The vault URL to give the SDK: `https://{vault}.vault.azure.net:{port}/`. Reachable only
    /// through [`transport`](Self::transport).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// An HTTP client for the SDK (`ClientOptions::transport`) that reaches this stand-in: it
    /// trusts only the stand-in's certificate, resolves the vault host to loopback and uses no
    /// proxy.
    pub fn transport(&self) -> Arc<dyn HttpClient> {
        self.transport.clone()
    }

    /// Client options with [`transport`](Self::transport) and the SDK's retries turned off, so
    /// one read is one request (plus the challenge on a fresh client).
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            transport: Some(Transport::new(self.transport())),
            retry: RetryOptions::none(),
            ..Default::default()
        }
    }

    /// A credential whose token the stand-in accepts. Shared: its call count covers every
    /// client it was given to.
    pub fn credential(&self) -> Arc<FakeTokenCredential> {
        self.credential.clone()
    }

    /// Adds a new version of `name` and returns the version (32 hex digits, as Key Vault's).
    pub fn set_secret(&self, name: &str, value: &str) -> String {
        self.set_secret_with(name, value, StandInAttributes::default())
    }

    /// The same as [`set_secret`](Self::set_secret); reads better in rotation tests.
    pub fn rotate(&self, name: &str, value: &str) -> String {
        self.set_secret(name, value)
    }

    /// Adds a new version of `name` with attributes and returns the version.
    pub fn set_secret_with(
        &self,
        name: &str,
        value: &str,
        attributes: StandInAttributes,
    ) -> String {
        let now = unix_now();
        let mut state = self.shared.lock();
        state.next_version += 1;
        // Distinct per stand-in and per call, so versions from two stand-ins never collide.
        let version = format!("{:016x}{:016x}", now as u64, state.next_version);
        let attributes = StandInAttributes {
            created: attributes.created.or(Some(now)),
            ..attributes
        };
        state
            .secrets
            .entry(name.to_ascii_lowercase())
            .or_insert_with(|| StoredSecret {
                name: name.to_owned(),
                versions: Vec::new(),
            })
            .versions
            .push(StoredVersion {
                version: version.clone(),
                value: value.to_owned(),
                attributes,
                updated: now,
            });
        version
    }

    /// Removes `name` and all its versions; later reads answer 404.
    pub fn delete_secret(&self, name: &str) {
        self.shared
            .lock()
            .secrets
            .remove(&name.to_ascii_lowercase());
    }

    /// Makes the next `count` authorized requests meet `fault`.
    pub fn fail_next(&self, count: usize, fault: Fault) {
        self.shared
            .lock()
            .faults
            .extend(std::iter::repeat_n(fault, count));
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// How many requests named the secret `name` (case-insensitive, any version).
    pub fn calls(&self, name: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| {
                r.secret
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case(name))
            })
            .count()
    }

    /// How many requests there were, of any path.
    pub fn total_requests(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// How many requests carried an `Authorization` header.
    pub fn authorized_requests(&self) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.authorization)
            .count()
    }

    /// Forgets the recorded requests (not the secrets or faults).
    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }
}

impl fmt::Debug for KeyVaultStandIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyVaultStandIn")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Drop for KeyVaultStandIn {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every open connection.
        self.server.abort();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "stand-in accept failed");
                // Errors such as running out of file descriptors persist: do not spin on them.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Reap finished connections so the set does not grow with every request.
        while connections.try_join_next().is_some() {}
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        connections.spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { handle(&shared, request).await }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// Why the stand-in dropped a connection instead of answering ([`Fault::Disconnect`]).
#[derive(Debug)]
struct Dropped;

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped by a scripted fault")
    }
}

impl std::error::Error for Dropped {}

async fn handle(
    shared: &Shared,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let (answer, delay) = decide(shared, &request);
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    answer
}

type Answer = Result<Response<Full<Bytes>>, Dropped>;

/// Records the request and decides the answer now, so a rotation during a delayed answer does
/// not change it (as with a real vault).
fn decide(shared: &Shared, request: &Request<Incoming>) -> (Answer, Option<Duration>) {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (secret, version) = match segments.as_slice() {
        ["secrets", name] => (Some(*name), None),
        ["secrets", name, version] => (Some(*name), Some(*version)),
        _ => (None, None),
    };
    let authorization = request.headers().get(AUTHORIZATION);
    let mut state = shared.lock();
    state.requests.push(RecordedRequest {
        method: request.method().to_string(),
        path: path.clone(),
        secret: secret.map(str::to_owned),
        version: version.map(str::to_owned),
        authorization: authorization.is_some(),
    });

    let expected = format!("Bearer {}", shared.token);
    if authorization.and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        let message = if authorization.is_none() {
            "AKV10000: Request is missing a Bearer or PoP token."
        } else {
            "AKV10022: Invalid audience or token."
        };
        return (Ok(challenge(message)), None);
    }

    let mut delay = None;
    match state.faults.pop_front() {
        None => {}
        Some(Fault::Delay(after)) => delay = Some(after),
        Some(Fault::Disconnect) => return (Err(Dropped), None),
        Some(Fault::Unauthorized) => {
            return (Ok(challenge("AKV10022: Invalid audience or token.")), None)
        }
        Some(Fault::Forbidden) => {
            let message = "The user, group or application does not have secrets get permission \
                           on key vault. Caller is not authorized to perform action on resource.";
            return (
                Ok(error_response(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    message,
                    Some("AccessDenied"),
                )),
                None,
            );
        }
        Some(Fault::Throttled { retry_after_secs }) => {
            let mut response = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "Throttled",
                "Request was not processed because too many requests were received. Reason: \
                 VaultRequestTypeLimitReached",
                None,
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
            return (Ok(response), None);
        }
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let code = status
                .canonical_reason()
                .unwrap_or("Error")
                .replace(' ', "");
            return (
                Ok(error_response(status, &code, "Scripted failure.", None)),
                None,
            );
        }
    }

    let answer = match (request.method(), secret) {
        (&Method::GET, Some(name)) => read_secret(shared, &state, name, version),
        (_, Some(_)) => error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The stand-in serves GET only.",
            None,
        ),
        (_, None) => error_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            "The stand-in serves /secrets/{name}[/{version}] only.",
            None,
        ),
    };
    (Ok(answer), delay)
}

fn read_secret(
    shared: &Shared,
    state: &State,
    name: &str,
    version: Option<&str>,
) -> Response<Full<Bytes>> {
    let found = state.secrets.get(&name.to_ascii_lowercase()).and_then(|s| {
        let chosen = match version {
            Some(v) => s.versions.iter().find(|stored| stored.version == v),
            None => s.versions.last(),
        };
        chosen.map(|stored| (s, stored))
    });
    let Some((secret, stored)) = found else {
        let asked = match version {
            Some(v) => format!("{name}/{v}"),
            None => name.to_owned(),
        };
        return error_response(
            StatusCode::NOT_FOUND,
            "SecretNotFound",
            &format!("A secret with (name/id) {asked} was not found in this key vault."),
            None,
        );
    };
    let a = &stored.attributes;
    let mut attributes = json!({
        "enabled": true,
        "updated": stored.updated,
        "recoveryLevel": "Recoverable+Purgeable",
        "recoverableDays": 90,
    });
    for (key, value) in [
        ("created", a.created),
        ("nbf", a.not_before),
        ("exp", a.expires),
    ] {
        if let Some(value) = value {
            attributes[key] = json!(value);
        }
    }
    let mut body = json!({
        "value": stored.value,
        "id": format!("{}/secrets/{}/{}", shared.base_url, secret.name, stored.version),
        "attributes": attributes,
        "tags": {},
    });
    if let Some(content_type) = &a.content_type {
        body["contentType"] = json!(content_type);
    }
    json_response(StatusCode::OK, &body)
}

fn challenge(message: &str) -> Response<Full<Bytes>> {
    let mut response = error_response(StatusCode::UNAUTHORIZED, "Unauthorized", message, None);
    let value = format!(
        "Bearer authorization=\"https://login.microsoftonline.com/{CHALLENGE_TENANT}\", \
         resource=\"https://vault.azure.net\""
    );
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(WWW_AUTHENTICATE, value);
    }
    response
}

fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    inner: Option<&str>,
) -> Response<Full<Bytes>> {
    let mut error = json!({ "code": code, "message": message });
    if let Some(inner) = inner {
        error["innererror"] = json!({ "code": inner });
    }
    json_response(status, &json!({ "error": error }))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn other(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(error.to_string())
}

/// A [`TokenCredential`] that returns a fixed token (valid for an hour) without any login, and
/// counts the calls. `Debug` never shows the token.
///
/// ```
/// use azure_core::credentials::TokenCredential;
/// use keyvault_invalidator_testkit::keyvault_standin::FakeTokenCredential;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let credential = FakeTokenCredential::new("t0ken");
/// let token = credential.get_token(&["https://vault.azure.net/.default"], None).await.unwrap();
/// assert_eq!(token.token.secret(), "t0ken");
/// assert_eq!(credential.calls(), 1);
/// assert!(!format!("{credential:?}").contains("t0ken"));
/// # }
/// ```
pub struct FakeTokenCredential {
    token: Option<String>,
    calls: AtomicUsize,
    scopes: Mutex<Vec<String>>,
}

impl FakeTokenCredential {
    /// A credential that always returns `token`.
    pub fn new(token: impl Into<String>) -> Self {
        FakeTokenCredential {
            token: Some(token.into()),
            calls: AtomicUsize::new(0),
            scopes: Mutex::new(Vec::new()),
        }
    }

    /// A credential that always fails, as when no identity is available.
    pub fn failing() -> Self {
        FakeTokenCredential {
            token: None,
            calls: AtomicUsize::new(0),
            scopes: Mutex::new(Vec::new()),
        }
    }

    /// How many tokens were asked for.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The scopes of the last request for a token.
    pub fn last_scopes(&self) -> Vec<String> {
        self.scopes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl fmt::Debug for FakeTokenCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeTokenCredential")
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("calls", &self.calls())
            .finish()
    }
}

#[async_trait]
impl TokenCredential for FakeTokenCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.scopes.lock().unwrap_or_else(|p| p.into_inner()) =
            scopes.iter().map(|s| (*s).to_owned()).collect();
        match &self.token {
            Some(token) => Ok(AccessToken::new(
                token.clone(),
                azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
            )),
            None => Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                "FakeTokenCredential: no identity is available (scripted failure)",
            )),
        }
    }
}
