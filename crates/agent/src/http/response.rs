//! Building responses: the body type, JSON bodies, the JSON error shape, and how provider errors
//! map to statuses.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http_body_util::{Either, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use keyvault_invalidator_core::{ProviderError, ProviderErrorKind, Secret};
use secrecy::ExposeSecret;
use serde::Serialize;

use super::sse::SseBody;

/// Every response's body: a complete one, or a Server-Sent-Events stream.
pub type AgentBody = Either<Full<Bytes>, SseBody>;

/// `Cache-Control: no-store` on every response: secret values must not be kept by a proxy or
/// client cache, and the others change from one request to the next.
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A response with `status` and a body, `Cache-Control: no-store` and `content_type`.
pub fn with_body(
    status: StatusCode,
    content_type: HeaderValue,
    body: Bytes,
) -> Response<AgentBody> {
    let mut response = Response::new(Either::Left(Full::new(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CACHE_CONTROL, NO_STORE);
    response
}

/// A JSON response.
pub fn json(status: StatusCode, value: &impl Serialize) -> Response<AgentBody> {
    match serde_json::to_vec(value) {
        Ok(body) => with_body(status, JSON, Bytes::from(body)),
        // Our bodies are plain structs and strings; serialising them cannot fail.
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "cannot encode the answer",
        ),
    }
}

/// 304 Not Modified: no body, as HTTP requires.
pub fn not_modified() -> Response<AgentBody> {
    let mut response = with_body(StatusCode::NOT_MODIFIED, JSON, Bytes::new());
    response.headers_mut().remove(header::CONTENT_TYPE);
    response
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

/// The error shape of every non-2xx answer: `{"error": code, "message": text}`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<AgentBody> {
    let body = ErrorBody {
        error: code,
        message,
    };
    // Serialising two strings cannot fail.
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    with_body(status, JSON, Bytes::from(bytes))
}

/// The answer to a read the provider failed, by the error's kind.
///
/// | kind | status | `error` |
/// |---|---|---|
/// | not found | 404 | `not_found` |
/// | access denied | 403 | `access_denied` |
/// | throttled | 429, `Retry-After` the vault's (at least 1 s) | `throttled` |
/// | transient (5xx, network) | 502 | `upstream_unavailable` |
/// | invalid name | 400 | `invalid_name` |
/// | other | 502 | `upstream_error` |
pub fn provider_error(error: &ProviderError) -> Response<AgentBody> {
    let message = error.to_string();
    match error.kind {
        ProviderErrorKind::NotFound => self::error(StatusCode::NOT_FOUND, "not_found", &message),
        ProviderErrorKind::AccessDenied => {
            self::error(StatusCode::FORBIDDEN, "access_denied", &message)
        }
        ProviderErrorKind::Throttled { retry_after } => {
            let mut response = self::error(StatusCode::TOO_MANY_REQUESTS, "throttled", &message);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after_seconds(retry_after));
            response
        }
        ProviderErrorKind::Transient => {
            self::error(StatusCode::BAD_GATEWAY, "upstream_unavailable", &message)
        }
        ProviderErrorKind::InvalidName => {
            self::error(StatusCode::BAD_REQUEST, "invalid_name", &message)
        }
        _ => self::error(StatusCode::BAD_GATEWAY, "upstream_error", &message),
    }
}

/// 504: the vault did not answer within the request timeout.
pub fn upstream_timeout(name: &str, timeout: Duration) -> Response<AgentBody> {
    error(
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
        &format!(
            "secret `{name}`: Key Vault did not answer within {} ms",
            timeout.as_millis()
        ),
    )
}

/// Whole seconds, rounded up, at least 1: `Retry-After` has no fractions and 0 invites a storm.
fn retry_after_seconds(retry_after: Option<Duration>) -> HeaderValue {
    let seconds = retry_after
        .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
        .unwrap_or(1)
        .max(1);
    HeaderValue::from(seconds)
}

#[derive(Serialize)]
struct SecretBody<'a> {
    name: &'a str,
    value: &'a str,
    version: Option<&'a str>,
    created_on: Option<String>,
    expires_on: Option<String>,
    not_before: Option<String>,
}

/// 200 with the secret: `{"name","value","version","created_on","expires_on","not_before"}`,
/// times in RFC 3339, absent ones `null`.
pub fn secret(name: &str, secret: &Secret) -> Response<AgentBody> {
    let body = SecretBody {
        name,
        value: secret.value().expose_secret(),
        version: secret.version(),
        created_on: secret.created_on().map(rfc3339),
        expires_on: secret.expires_on().map(rfc3339),
        not_before: secret.not_before().map(rfc3339),
    };
    json(StatusCode::OK, &body)
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}
