//! Microsoft Entra ID bearer tokens: RS256 signatures checked against the tenant's signing
//! keys (a JWKS document fetched and cached), then issuer, audience, expiry and the Event Grid
//! app role.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::Refusal;
use crate::webhook::config::EntraIdConfig;

/// How long a fetch of the signing keys may take.
const KEYS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The least time between two fetches after a failed one: short, since every request is
/// answered 503 until the keys are known, but not so short that an outage is hammered.
const FAILED_FETCH_RETRY: Duration = Duration::from_secs(10);
/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 60;

/// Checks bearer tokens for one tenant and audience.
pub(crate) struct EntraIdValidator {
    config: EntraIdConfig,
    validation: Validation,
    client: reqwest::Client,
    // A tokio lock held across a fetch, so concurrent requests with an unknown key id wait
    // for one fetch rather than each starting their own.
    keys: Mutex<KeyCache>,
}

#[derive(Default)]
struct KeyCache {
    by_id: HashMap<String, DecodingKey>,
    last_attempt: Option<Instant>,
    last_failed: bool,
}

/// The claims checked by hand (`jsonwebtoken` checks `exp`, `nbf`, `iss` and `aud`).
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    roles: Vec<String>,
}

impl EntraIdValidator {
    pub(crate) fn new(config: EntraIdConfig) -> Self {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(std::slice::from_ref(&config.audience));
        validation.set_issuer(&config.issuers);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        EntraIdValidator {
            config,
            validation,
            client: reqwest::Client::new(),
            keys: Mutex::new(KeyCache::default()),
        }
    }

    /// Passes a token that is signed by a tenant key, from an accepted issuer, for the
    /// audience, unexpired, and has the Event Grid role. The refusal names the failed check.
    pub(crate) async fn check(&self, token: &str) -> Result<(), Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Refusal::TokenInvalid("not a JWT".to_owned()))?;
        if header.alg != Algorithm::RS256 {
            return Err(Refusal::TokenInvalid(format!(
                "signed with {:?}, not RS256",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| Refusal::TokenInvalid("the token names no signing key (kid)".into()))?;
        let key = self.key(&kid).await?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map_err(|error| Refusal::TokenInvalid(describe(error.kind()).to_owned()))?;
        if !data.claims.roles.contains(&self.config.role) {
            return Err(Refusal::TokenInvalid(format!(
                "the token lacks the {} role",
                self.config.role
            )));
        }
        Ok(())
    }

    /// The key with this id, fetching the keys again if it is unknown and the last fetch is
    /// old enough.
    async fn key(&self, kid: &str) -> Result<DecodingKey, Refusal> {
        let mut cache = self.keys.lock().await;
        if let Some(key) = cache.by_id.get(kid) {
            return Ok(key.clone());
        }
        let pause = if cache.last_failed {
            FAILED_FETCH_RETRY.min(self.config.keys_min_refresh_interval)
        } else {
            self.config.keys_min_refresh_interval
        };
        let due = cache.last_attempt.is_none_or(|at| at.elapsed() >= pause);
        if !due {
            return Err(if cache.last_failed {
                Refusal::KeysUnavailable
            } else {
                Refusal::TokenInvalid("signed with an unknown key".to_owned())
            });
        }
        cache.last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::debug!(keys = keys.len(), "fetched the Entra ID signing keys");
                cache.by_id = keys;
                cache.last_failed = false;
            }
            Err(why) => {
                tracing::warn!(url = %self.config.keys_url, %why, "could not fetch the Entra ID signing keys");
                cache.last_failed = true;
                return Err(Refusal::KeysUnavailable);
            }
        }
        cache
            .by_id
            .get(kid)
            .cloned()
            .ok_or_else(|| Refusal::TokenInvalid("signed with an unknown key".to_owned()))
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, String> {
        let response = self
            .client
            .get(&self.config.keys_url)
            .timeout(KEYS_FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|error| format!("request failed: {error}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        let body = response
            .bytes()
            .await
            .map_err(|error| format!("reading the answer failed: {error}"))?;
        parse_keys(&body)
    }
}

/// The RSA signing keys of a JWKS document, by key id. Keys of other types or uses, and
/// entries that are not usable keys, are skipped; a document that is not a JWKS is an error.
fn parse_keys(body: &[u8]) -> Result<HashMap<String, DecodingKey>, String> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct RsaKey {
        kty: String,
        kid: String,
        n: String,
        e: String,
        #[serde(rename = "use")]
        usage: Option<String>,
    }
    let document: Document =
        serde_json::from_slice(body).map_err(|error| format!("not a JWKS document: {error}"))?;
    let keys = document
        .keys
        .into_iter()
        .filter_map(|entry| serde_json::from_value::<RsaKey>(entry).ok())
        .filter(|key| key.kty == "RSA" && key.usage.as_deref().is_none_or(|u| u == "sig"))
        .filter_map(|key| {
            let decoding = DecodingKey::from_rsa_components(&key.n, &key.e).ok()?;
            Some((key.kid, decoding))
        })
        .collect();
    Ok(keys)
}

/// What a failed check was, in words that name the check and never the token.
fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidSignature => "the signature does not verify",
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet",
        ErrorKind::InvalidIssuer => "the issuer is not the tenant's",
        ErrorKind::InvalidAudience => "the audience is not this webhook",
        ErrorKind::InvalidAlgorithm => "the algorithm is not RS256",
        ErrorKind::MissingRequiredClaim(_) => "a required claim (exp, iss, aud) is missing",
        _ => "the token is malformed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rsa_signing_keys_are_kept() {
        let body = br#"{"keys":[
            {"kty":"RSA","kid":"a","use":"sig","n":"sXch","e":"AQAB"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"sXch","e":"AQAB"},
            {"kty":"EC","kid":"ec","crv":"P-256","x":"AA","y":"AA"},
            {"kty":"RSA","kid":"no-n","e":"AQAB"},
            "not a key"
        ]}"#;
        let keys = parse_keys(body).expect("a JWKS document");
        let mut ids: Vec<_> = keys.keys().cloned().collect();
        ids.sort();
        assert_eq!(ids, vec!["a".to_owned()]);
    }

    #[test]
    fn a_document_without_keys_is_an_error() {
        assert!(parse_keys(b"{}").is_err());
        assert!(parse_keys(b"<html>").is_err());
    }
}
