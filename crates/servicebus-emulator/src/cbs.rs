//! Claims-based security: `put-token` requests on the `$cbs` node, and the authorisations they
//! grant to a connection.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{sas, Namespace, POLICY_NAME};

/// The token type of a shared access signature.
pub(crate) const SAS_TOKEN_TYPE: &str = "servicebus.windows.net:sastoken";
/// The token type of an Entra ID access token.
pub(crate) const JWT_TOKEN_TYPE: &str = "jwt";

/// One `put-token` request the `$cbs` node answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CbsRequest {
    /// The audience (`name` application property), as sent.
    pub audience: String,
    /// The token type (`type`), as sent.
    pub token_type: String,
    /// The `status-code` answered: 202 or 401 (400 for a request that is not a `put-token`).
    pub status: u16,
}

/// What one successful `put-token` authorised on a connection.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    /// The audience's path, lower case, without slashes at the ends (`""` is the namespace).
    path: String,
    expires: Option<SystemTime>,
}

/// A connection's authorisations.
pub(crate) type Grants = Arc<Mutex<Vec<Grant>>>;

/// Whether `grants` hold an unexpired authorisation covering the entity path.
pub(crate) fn authorised(grants: &Grants, entity: &str) -> bool {
    let entity = entity.trim_matches('/').to_ascii_lowercase();
    let now = SystemTime::now();
    grants
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|g| g.expires.is_none_or(|e| e > now) && covers(&g.path, &entity))
}

/// The path of an audience or resource URL, any scheme, host and port ignored, lower case.
pub(crate) fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = rest.split_once('/').map_or("", |(_, path)| path);
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.trim_matches('/').to_ascii_lowercase()
}

fn covers(granted: &str, entity: &str) -> bool {
    granted.is_empty()
        || entity == granted
        || entity
            .strip_prefix(granted)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Decides a `put-token`: the status code and description to answer. On success the grant is
/// recorded on the connection.
pub(crate) fn put_token(
    shared: &Namespace,
    grants: &Grants,
    audience: &str,
    token_type: &str,
    token: &str,
    expiration: Option<SystemTime>,
) -> (u16, &'static str) {
    let reject = std::mem::take(&mut shared.lock().reject_next_put_token);
    let now = SystemTime::now();
    let path = path_of(audience);
    let granted = match token_type {
        SAS_TOKEN_TYPE => sas_expiry(shared, token, &path, now),
        // Microsoft's Python client (azure-servicebus 7.x, `_pyamqp`) sends a connection
        // string's shared access signature as type `jwt`; the service accepts a signature under
        // either type and verifies it the same way.
        JWT_TOKEN_TYPE if is_sas(token) => sas_expiry(shared, token, &path, now),
        JWT_TOKEN_TYPE => (token == shared.bearer_token).then_some(expiration),
        _ => None,
    };
    let (status, description) = match granted {
        Some(expires) if !reject => {
            grants
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Grant { path, expires });
            (202, "Accepted")
        }
        _ => (401, "InvalidSignature: The token has an invalid signature."),
    };
    shared.lock().cbs_requests.push(CbsRequest {
        audience: audience.to_owned(),
        token_type: token_type.to_owned(),
        status,
    });
    (status, description)
}

/// Whether the token is shaped like a shared access signature.
fn is_sas(token: &str) -> bool {
    token.trim_start().starts_with("SharedAccessSignature ")
}

/// The token's expiry if it is a valid signature whose resource covers the audience's path.
fn sas_expiry(
    shared: &Namespace,
    token: &str,
    path: &str,
    now: SystemTime,
) -> Option<Option<SystemTime>> {
    let fields = token.trim().strip_prefix("SharedAccessSignature ")?;
    let field = |name: &str| {
        fields
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    };
    let sr = percent_encoding::percent_decode_str(field("sr")?)
        .decode_utf8_lossy()
        .into_owned();
    let se: u64 = field("se")?.parse().ok()?;
    // The host and its port are not compared: the emulator is the only namespace.
    if !covers(&path_of(&sr), path) {
        return None;
    }
    let unix_now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    sas::verify(token, &sr, unix_now, |name| {
        (name == POLICY_NAME).then(|| shared.policy_key())
    })
    .ok()?;
    Some(Some(UNIX_EPOCH + std::time::Duration::from_secs(se)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_are_compared_by_path_whatever_the_scheme_host_and_port() {
        assert_eq!(
            path_of("amqp://127.0.0.1:5672/Topic/subscriptions/Sub/"),
            "topic/subscriptions/sub"
        );
        assert_eq!(path_of("sb://127.0.0.1/topic"), "topic");
        assert_eq!(path_of("sb://127.0.0.1:5672"), "");
        assert!(covers("topic", "topic/subscriptions/sub"));
        assert!(covers("", "topic/subscriptions/sub"));
        assert!(!covers("top", "topic/subscriptions/sub"));
        assert!(!covers(
            "topic/subscriptions/sub",
            "topic/subscriptions/other"
        ));
    }
}
