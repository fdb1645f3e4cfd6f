//! The request rules every route goes through before it runs: no forwarded requests, GET
//! only, and the API token on `/v1`.

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};

use super::response::{error, AgentBody};
use crate::config::ApiToken;

/// The header carrying the API token.
pub const TOKEN_HEADER: &str = "x-kvi-token";

/// 400 for a request that went through a proxy (`X-Forwarded-For` or `Forwarded`): a local
/// client never sends them, a server-side request forgery through a proxy often does.
pub fn refuse_forwarded(headers: &HeaderMap) -> Option<Response<AgentBody>> {
    let forwarded =
        headers.contains_key("x-forwarded-for") || headers.contains_key(header::FORWARDED);
    forwarded.then(|| {
        error(
            StatusCode::BAD_REQUEST,
            "forwarded_request",
            "requests carrying X-Forwarded-For or Forwarded are refused: the agent serves local clients only",
        )
    })
}

/// 405 with `Allow: GET` for any other method.
pub fn refuse_method(method: &Method) -> Option<Response<AgentBody>> {
    (method != Method::GET).then(|| {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET is served",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        response
    })
}

/// 401 unless the request carries exactly one `X-KVI-Token` equal to `token`.
pub fn refuse_unauthorized(headers: &HeaderMap, token: &ApiToken) -> Option<Response<AgentBody>> {
    let mut values = headers.get_all(TOKEN_HEADER).iter();
    let message = match (values.next(), values.next()) {
        (None, _) => "missing X-KVI-Token header",
        (Some(_), Some(_)) => "more than one X-KVI-Token header",
        (Some(value), None) if token.matches(value.as_bytes()) => return None,
        (Some(_), None) => "wrong X-KVI-Token",
    };
    Some(error(StatusCode::UNAUTHORIZED, "unauthorized", message))
}
