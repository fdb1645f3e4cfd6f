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

mod credential;
mod server;

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::http::{ClientOptions, HttpClient};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::loopback::{client_options, serve, LoopbackTls};
pub use credential::FakeTokenCredential;
use server::{handle, unix_now, ServerContext, StoredSecret, StoredVersion, VaultState};

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
///
/// A test starts one, writes secrets with [`set_secret`](Self::set_secret) (each write is a new
/// version, as a rotation), gives the SDK [`endpoint`](Self::endpoint),
/// [`credential`](Self::credential) and [`client_options`](Self::client_options), scripts
/// failures with [`fail_next`](Self::fail_next), and counts what the code under test asked for
/// with [`calls`](Self::calls).
///
/// ```
/// use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
/// use keyvault_invalidator_testkit::keyvault_standin::{Fault, KeyVaultStandIn};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let standin = KeyVaultStandIn::start().await?;
/// let first = standin.set_secret("db-password", "old");
/// let options = SecretClientOptions { client_options: standin.client_options(), ..Default::default() };
/// let client = SecretClient::new(standin.endpoint(), standin.credential(), Some(options))?;
///
/// // The fault is spent by the first authorized request, after the challenge round trip.
/// standin.fail_next(1, Fault::Forbidden);
/// assert!(client.get_secret("db-password", None).await.is_err());
///
/// let second = standin.rotate("db-password", "new");
/// assert_ne!(first, second);
/// let secret = client.get_secret("db-password", None).await?.into_model()?;
/// assert_eq!(secret.value.as_deref(), Some("new"));
/// # Ok(()) }
/// ```
pub struct KeyVaultStandIn {
    shared: Arc<ServerContext>,
    endpoint: String,
    transport: Arc<dyn HttpClient>,
    credential: Arc<FakeTokenCredential>,
    server: JoinHandle<()>,
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
        let tls = LoopbackTls::new(&host, address)?;

        let token = format!("standin-token-{}", address.port());
        let shared = Arc::new(ServerContext {
            state: Mutex::new(VaultState::default()),
            token: token.clone(),
            base_url: endpoint.trim_end_matches('/').to_owned(),
        });
        let context = shared.clone();
        let server = tokio::spawn(serve(listener, tls.acceptor, move |request| {
            let context = context.clone();
            async move { handle(&context, request).await }
        }));
        Ok(KeyVaultStandIn {
            shared,
            endpoint,
            transport: Arc::new(tls.client),
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
        client_options(self.transport())
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
