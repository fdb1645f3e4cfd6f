//! The stand-in's server side: what the vault holds (secrets, versions, scripted faults, the
//! request log) and how a request is answered (the routing of
//! `/secrets/{name}[/{version}]`, the authentication challenge and Key Vault's response and
//! error shapes).
//!
//! Separate from the handle ([`KeyVaultStandIn`](super::KeyVaultStandIn)) because a test author
//! needs the handle's methods, while only someone changing what the stand-in answers needs this.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::loopback::{json_response, Answer, Dropped};

use super::{Fault, RecordedRequest, StandInAttributes, CHALLENGE_TENANT};

/// What every request handler and the [`KeyVaultStandIn`](super::KeyVaultStandIn) handle share.
pub(super) struct ServerContext {
    pub(super) state: Mutex<VaultState>,
    /// The one bearer token the stand-in accepts.
    pub(super) token: String,
    /// `https://{vault}.vault.azure.net:{port}`, the prefix of every secret id.
    pub(super) base_url: String,
}

/// The vault's contents and what tests scripted or may ask about, behind one lock so a request
/// sees them consistently.
#[derive(Default)]
pub(super) struct VaultState {
    // Keyed by lower-case name: Key Vault names are case-insensitive.
    pub(super) secrets: HashMap<String, StoredSecret>,
    pub(super) next_version: u64,
    pub(super) faults: VecDeque<Fault>,
    pub(super) requests: Vec<RecordedRequest>,
}

/// One secret: the name as first written, and its versions, oldest first.
pub(super) struct StoredSecret {
    pub(super) name: String,
    pub(super) versions: Vec<StoredVersion>,
}

/// One version of a secret.
pub(super) struct StoredVersion {
    pub(super) version: String,
    pub(super) value: String,
    pub(super) attributes: StandInAttributes,
    pub(super) updated: i64,
}

impl ServerContext {
    pub(super) fn lock(&self) -> MutexGuard<'_, VaultState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) async fn handle(shared: &ServerContext, request: Request<Incoming>) -> Answer {
    let (answer, delay) = decide(shared, &request);
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    answer
}

/// Records the request and decides the answer now, so a rotation during a delayed answer does
/// not change it (as with a real vault).
fn decide(shared: &ServerContext, request: &Request<Incoming>) -> (Answer, Option<Duration>) {
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
    shared: &ServerContext,
    state: &VaultState,
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

pub(super) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
