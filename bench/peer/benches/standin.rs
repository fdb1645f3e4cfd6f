//! A local stand-in of the AWS Secrets Manager endpoint: just enough of the AWS JSON 1.1 protocol
//! for the SDK client that `aws_secretsmanager_caching` wraps, over plain HTTP/1.1 on loopback
//! (keep-alive included, since the SDK pools its connections).
//!
//! It answers `GetSecretValue` and `DescribeSecret` (which the caching client calls when it
//! refreshes an expired entry) and counts the requests per operation, so the benchmark can check
//! that its measured reads were all cache hits.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

const GET_SECRET_VALUE: &str = "secretsmanager.GetSecretValue";
const DESCRIBE_SECRET: &str = "secretsmanager.DescribeSecret";
const AMZ_JSON: &str = "application/x-amz-json-1.1";

/// One secret the stand-in holds: its current value under one version.
struct Entry {
    arn: String,
    version_id: String,
    value: String,
}

#[derive(Default)]
struct Counters {
    get_secret_value: AtomicUsize,
    describe_secret: AtomicUsize,
    other: AtomicUsize,
}

struct State {
    secrets: HashMap<String, Entry>,
    counters: Counters,
}

/// The running stand-in. Its server task lives on the Tokio runtime it was started on.
pub struct SecretsManagerStandIn {
    addr: SocketAddr,
    state: Arc<State>,
}

impl SecretsManagerStandIn {
    /// Starts serving `secrets` (name, value) on `127.0.0.1:0`. Call within a Tokio runtime.
    pub async fn start(secrets: impl IntoIterator<Item = (String, String)>) -> Self {
        let secrets = secrets
            .into_iter()
            .enumerate()
            .map(|(index, (name, value))| {
                let entry = Entry {
                    arn: format!(
                        "arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}-AbCdEf"
                    ),
                    version_id: format!("5e2f9c1a-7b3d-4e8f-9a6b-{index:012x}"),
                    value,
                };
                (name, entry)
            })
            .collect();
        let state = Arc::new(State {
            secrets,
            counters: Counters::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stand-in on loopback");
        let addr = listener.local_addr().expect("the stand-in's address");
        let server_state = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&server_state);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(answer(&state, request).await) }
                    });
                    // A client that goes away mid-request is no concern of the benchmark.
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        SecretsManagerStandIn { addr, state }
    }

    /// The endpoint to give the SDK client (`endpoint_url`).
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many `GetSecretValue` requests arrived.
    pub fn get_secret_value_requests(&self) -> usize {
        self.state.counters.get_secret_value.load(Ordering::SeqCst)
    }

    /// How many `DescribeSecret` requests arrived.
    pub fn describe_secret_requests(&self) -> usize {
        self.state.counters.describe_secret.load(Ordering::SeqCst)
    }

    /// How many requests of any other kind (or malformed) arrived.
    pub fn other_requests(&self) -> usize {
        self.state.counters.other.load(Ordering::SeqCst)
    }
}

async fn answer(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let target = request
        .headers()
        .get("x-amz-target")
        .and_then(|target| target.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let is_post_to_root = request.method() == Method::POST && request.uri().path() == "/";
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return error(state, "SerializationException", "unreadable body"),
    };
    if !is_post_to_root {
        return error(state, "UnknownOperationException", "expected POST /");
    }
    let secret_id = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|input| input.get("SecretId")?.as_str().map(str::to_owned));
    let Some(secret_id) = secret_id else {
        return error(state, "InvalidParameterException", "SecretId is missing");
    };
    // A secret is asked for by name or by ARN (DescribeSecret after a refresh uses the ARN).
    let found = state
        .secrets
        .iter()
        .find(|(name, entry)| **name == secret_id || entry.arn == secret_id);
    match target.as_str() {
        GET_SECRET_VALUE => {
            state
                .counters
                .get_secret_value
                .fetch_add(1, Ordering::SeqCst);
            match found {
                Some((name, entry)) => ok(json!({
                    "ARN": entry.arn,
                    "Name": name,
                    "VersionId": entry.version_id,
                    "SecretString": entry.value,
                    "VersionStages": ["AWSCURRENT"],
                    "CreatedDate": 1_700_000_000.0,
                })),
                None => not_found(),
            }
        }
        DESCRIBE_SECRET => {
            state
                .counters
                .describe_secret
                .fetch_add(1, Ordering::SeqCst);
            match found {
                Some((name, entry)) => ok(json!({
                    "ARN": entry.arn,
                    "Name": name,
                    "VersionIdsToStages": { entry.version_id.clone(): ["AWSCURRENT"] },
                })),
                None => not_found(),
            }
        }
        _ => error(state, "UnknownOperationException", "unknown X-Amz-Target"),
    }
}

fn ok(body: Value) -> Response<Full<Bytes>> {
    respond(StatusCode::OK, body)
}

fn not_found() -> Response<Full<Bytes>> {
    respond(
        StatusCode::BAD_REQUEST,
        json!({
            "__type": "ResourceNotFoundException",
            "message": "Secrets Manager can't find the specified secret.",
        }),
    )
}

fn error(state: &State, kind: &str, message: &str) -> Response<Full<Bytes>> {
    state.counters.other.fetch_add(1, Ordering::SeqCst);
    respond(
        StatusCode::BAD_REQUEST,
        json!({ "__type": kind, "message": message }),
    )
}

fn respond(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(AMZ_JSON));
    response
}
