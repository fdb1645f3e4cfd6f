//! Who may push: the shared secret in the query string and the Entra ID bearer token, checked
//! before the body is read.

mod entra_id;
mod shared_secret;

use std::fmt;

use hyper::http::request::Parts;

pub(crate) use entra_id::EntraIdValidator;
pub(crate) use shared_secret::SharedSecrets;

use super::config::WebhookConfig;

/// Every configured check; a request must pass all of them.
pub(crate) struct Authenticator {
    shared_secrets: Option<SharedSecrets>,
    entra_id: Option<EntraIdValidator>,
}

/// Why a request was refused (logged, and answered 401 with a generic body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No shared secret in the query string.
    SecretMissing,
    /// A shared secret that matches neither accepted one.
    SecretWrong,
    /// No `Authorization: Bearer` header.
    TokenMissing,
    /// A bearer token that failed a check; says which (never the token).
    TokenInvalid(String),
    /// The tenant's signing keys could not be fetched, so no token can be checked: not the
    /// sender's fault, answered 503 so Event Grid retries (a 401 it would not).
    KeysUnavailable,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::SecretMissing => f.write_str("no shared secret in the query string"),
            Refusal::SecretWrong => f.write_str("the shared secret is not an accepted one"),
            Refusal::TokenMissing => f.write_str("no bearer token"),
            Refusal::TokenInvalid(why) => write!(f, "the bearer token was refused: {why}"),
            Refusal::KeysUnavailable => {
                f.write_str("the Entra ID signing keys could not be fetched")
            }
        }
    }
}

impl Refusal {
    /// Whether the refusal is about the bearer token (its answer carries a `WWW-Authenticate:
    /// Bearer` challenge).
    pub(crate) fn is_token(&self) -> bool {
        matches!(self, Refusal::TokenMissing | Refusal::TokenInvalid(_))
    }
}

impl Authenticator {
    pub(crate) fn new(config: &WebhookConfig) -> Self {
        Authenticator {
            shared_secrets: (!config.shared_secrets.is_empty()).then(|| {
                SharedSecrets::new(&config.shared_secrets, config.query_parameter.clone())
            }),
            entra_id: config.entra_id.clone().map(EntraIdValidator::new),
        }
    }

    /// Checks the request's head; the body is not read yet.
    pub(crate) async fn check(&self, head: &Parts) -> Result<(), Refusal> {
        if let Some(secrets) = &self.shared_secrets {
            secrets.check(head.uri.query())?;
        }
        if let Some(entra_id) = &self.entra_id {
            let header = head
                .headers
                .get(hyper::header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok());
            let token = header.and_then(bearer_token).ok_or(Refusal::TokenMissing)?;
            entra_id.check(token).await?;
        }
        Ok(())
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn bearer_tokens_are_read_whatever_the_scheme_case() {
        assert_eq!(bearer_token("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
