//! What the webhook tests share: a plain-HTTP webhook on loopback, raw HTTP requests, and a
//! stand-in of the Entra ID keys endpoint with keys that sign the tests' tokens.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RsaKeyPair, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use keyvault_invalidator_eventgrid::webhook::{WebhookConfig, WebhookSource};
use secrecy::SecretString;
use serde_json::{json, Value};

pub const SECRET: &str = "s3cret-Code_1";

/// A plain-HTTP webhook on a free loopback port, with the shared secret [`SECRET`].
pub fn loopback_config() -> WebhookConfig {
    WebhookConfig::new("127.0.0.1:0".parse().unwrap())
        .plain_http()
        .shared_secret(SecretString::from(SECRET))
}

pub async fn bind(config: WebhookConfig) -> WebhookSource {
    WebhookSource::bind(config).await.expect("bind")
}

/// `http://{address}/api/events?code={code}`.
pub fn url(source: &WebhookSource, code: &str) -> String {
    format!("http://{}/api/events?code={code}", source.local_addr())
}

/// A plain client that never uses a proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// The status and body of a POST of `body` to `url` with `headers`.
pub async fn post(url: &str, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> (u16, String) {
    let mut request = client().post(url).body(body.into());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the request is answered");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// A Key Vault `SecretNewVersionCreated` event in the Event Grid schema, from vault
/// `test-kv`, timed now (the cache ignores events older than what it loaded).
pub fn event_grid_event(id: &str, secret: &str, version: &str) -> Value {
    keyvault_invalidator_testkit::KeyVaultEventBuilder::secret_new_version(secret)
        .vault("test-kv")
        .version(version)
        .id(id)
        .now()
        .event_grid()
}

/// An RSA key pair that signs RS256 tokens under a key id.
pub struct SigningKey {
    pub kid: String,
    pair: RsaKeyPair,
}

impl SigningKey {
    pub fn generate(kid: &str) -> Self {
        SigningKey {
            kid: kid.to_owned(),
            pair: RsaKeyPair::generate(KeySize::Rsa2048).expect("an RSA key"),
        }
    }

    /// The public key as a JWKS entry.
    pub fn jwk(&self) -> Value {
        let public = self.pair.public_key();
        json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
        })
    }

    /// A compact JWS of `claims`, signed RS256, naming `kid`.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let header = json!({ "alg": "RS256", "typ": "JWT", "kid": kid });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .expect("signing");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }
}

pub const TENANT: &str = "11111111-2222-3333-4444-555555555555";
pub const AUDIENCE: &str = "api://kvi-webhook";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The claims of a token Event Grid would send: v2 issuer, our audience, the role, valid for
/// an hour.
pub fn event_grid_claims() -> Value {
    json!({
        "iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
        "aud": AUDIENCE,
        "exp": now() + 3600,
        "nbf": now() - 60,
        "iat": now() - 60,
        "appid": "4962773b-9cdb-44cf-a8bf-237846a00ab7",
        "roles": ["AzureEventGridSecureWebhookSubscriber"],
    })
}

/// A stand-in of `https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys` (plain HTTP
/// on loopback): serves a JWKS document of the keys it is given, and counts its requests.
pub struct KeysStandIn {
    pub url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    requests: Arc<AtomicUsize>,
}

impl KeysStandIn {
    pub async fn start(keys: Vec<Value>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let keys = Arc::new(Mutex::new(keys));
        let requests = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (keys.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (served, counted) = (served.clone(), counted.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_request| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let document = json!({ "keys": *served.lock().unwrap() });
                        async move {
                            let mut response =
                                Response::new(Full::new(Bytes::from(document.to_string())));
                            *response.status_mut() = StatusCode::OK;
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        KeysStandIn {
            url: format!("http://{address}/{TENANT}/discovery/v2.0/keys"),
            keys,
            requests,
        }
    }

    /// Serves these keys from now on (a key rotation).
    pub fn set_keys(&self, keys: Vec<Value>) {
        *self.keys.lock().unwrap() = keys;
    }

    /// How many times the keys were fetched.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}
