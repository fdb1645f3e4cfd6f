//! Entra ID bearer tokens: every refusal with its exact status, the keys fetched, cached and
//! refreshed on an unknown key id (rate-limited). Tokens are signed by the tests' own keys,
//! served by a local stand-in of the tenant's keys endpoint.

mod support;

use std::time::Duration;

use keyvault_invalidator_core::EventSource as _;
use keyvault_invalidator_eventgrid::webhook::{EntraIdConfig, WebhookConfig, WebhookSource};
use secrecy::SecretString;
use serde_json::{json, Value};
use support::*;

fn entra_id(keys: &KeysStandIn) -> EntraIdConfig {
    EntraIdConfig::new(TENANT, AUDIENCE)
        .keys_url(&keys.url)
        .keys_min_refresh_interval(Duration::ZERO)
}

async fn webhook(entra_id: EntraIdConfig) -> WebhookSource {
    bind(
        WebhookConfig::new("127.0.0.1:0".parse().unwrap())
            .plain_http()
            .entra_id(entra_id),
    )
    .await
}

fn validation() -> String {
    json!([{
        "id": "v-1",
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "data": { "validationCode": "code-1" }
    }])
    .to_string()
}

/// The status of a validation handshake carrying `token` (200 means it was accepted).
async fn status_with(source: &WebhookSource, token: Option<&str>) -> (u16, Option<String>) {
    let mut request = client()
        .post(format!("http://{}/api/events", source.local_addr()))
        .body(validation());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), challenge)
}

fn with(claims: Value, changes: Value) -> Value {
    let mut claims = claims;
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

#[tokio::test]
async fn a_token_from_event_grid_is_accepted_with_either_issuer() {
    let key = SigningKey::generate("key-a");
    let keys = KeysStandIn::start(vec![key.jwk()]).await;
    let source = webhook(entra_id(&keys)).await;
    assert_eq!(
        status_with(&source, Some(&key.sign(&event_grid_claims())))
            .await
            .0,
        200
    );
    let v1 = with(
        event_grid_claims(),
        json!({ "iss": format!("https://sts.windows.net/{TENANT}/") }),
    );
    assert_eq!(status_with(&source, Some(&key.sign(&v1))).await.0, 200);
    assert_eq!(keys.requests(), 1, "the keys are fetched once and cached");
    source.close().await.unwrap();
}

#[tokio::test]
async fn every_failed_check_is_refused_401_with_a_bearer_challenge() {
    let key = SigningKey::generate("key-a");
    let impostor = SigningKey::generate("key-a");
    let keys = KeysStandIn::start(vec![key.jwk()]).await;
    let source = webhook(entra_id(&keys)).await;
    let claims = event_grid_claims();
    let cases = [
        ("no token", None),
        ("not a JWT", Some("not.a.jwt".to_owned())),
        ("bad signature", Some(impostor.sign(&claims))),
        (
            "wrong issuer",
            Some(key.sign(&with(
                claims.clone(),
                json!({ "iss": "https://login.microsoftonline.com/other-tenant/v2.0" }),
            ))),
        ),
        (
            "wrong audience",
            Some(key.sign(&with(
                claims.clone(),
                json!({ "aud": "api://someone-else" }),
            ))),
        ),
        (
            "expired",
            Some(key.sign(&with(claims.clone(), json!({ "exp": now() - 3600 })))),
        ),
        (
            "not yet valid",
            Some(key.sign(&with(claims.clone(), json!({ "nbf": now() + 3600 })))),
        ),
        (
            "no expiry",
            Some(key.sign(&with(claims.clone(), json!({ "exp": null })))),
        ),
        (
            "no role",
            Some(key.sign(&with(claims.clone(), json!({ "roles": null })))),
        ),
        (
            "another role",
            Some(key.sign(&with(claims.clone(), json!({ "roles": ["Reader"] })))),
        ),
    ];
    for (case, token) in cases {
        let (status, challenge) = status_with(&source, token.as_deref()).await;
        assert_eq!(status, 401, "{case}");
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer error=\"invalid_token\""),
            "{case}"
        );
    }
    source.close().await.unwrap();
}

#[tokio::test]
async fn an_unknown_key_id_fetches_the_keys_again() {
    let old = SigningKey::generate("key-old");
    let new = SigningKey::generate("key-new");
    let keys = KeysStandIn::start(vec![old.jwk()]).await;
    let source = webhook(entra_id(&keys)).await;
    assert_eq!(
        status_with(&source, Some(&old.sign(&event_grid_claims())))
            .await
            .0,
        200
    );
    assert_eq!(keys.requests(), 1);
    // The tenant rotates its keys: the first token with the new key id makes a fetch.
    keys.set_keys(vec![old.jwk(), new.jwk()]);
    assert_eq!(
        status_with(&source, Some(&new.sign(&event_grid_claims())))
            .await
            .0,
        200
    );
    assert_eq!(keys.requests(), 2);
    assert_eq!(
        status_with(&source, Some(&new.sign(&event_grid_claims())))
            .await
            .0,
        200
    );
    assert_eq!(keys.requests(), 2, "known now: no further fetch");
    source.close().await.unwrap();
}

#[tokio::test]
async fn made_up_key_ids_cannot_hammer_the_keys_endpoint() {
    let key = SigningKey::generate("key-a");
    let keys = KeysStandIn::start(vec![key.jwk()]).await;
    let config = entra_id(&keys).keys_min_refresh_interval(Duration::from_secs(3600));
    let source = webhook(config).await;
    assert_eq!(
        status_with(&source, Some(&key.sign(&event_grid_claims())))
            .await
            .0,
        200
    );
    for n in 0..5 {
        let token = key.sign_as(&format!("made-up-{n}"), &event_grid_claims());
        assert_eq!(status_with(&source, Some(&token)).await.0, 401);
    }
    assert_eq!(keys.requests(), 1, "one fetch within the refresh interval");
    source.close().await.unwrap();
}

#[tokio::test]
async fn unreachable_keys_answer_503_so_event_grid_retries() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/keys", closed.local_addr().unwrap());
    drop(closed);
    let key = SigningKey::generate("key-a");
    let source = webhook(EntraIdConfig::new(TENANT, AUDIENCE).keys_url(url)).await;
    assert_eq!(
        status_with(&source, Some(&key.sign(&event_grid_claims())))
            .await
            .0,
        503
    );
    source.close().await.unwrap();
}

#[tokio::test]
async fn with_both_authentications_a_request_needs_both() {
    let key = SigningKey::generate("key-a");
    let keys = KeysStandIn::start(vec![key.jwk()]).await;
    let source = bind(
        WebhookConfig::new("127.0.0.1:0".parse().unwrap())
            .plain_http()
            .shared_secret(SecretString::from(SECRET))
            .entra_id(entra_id(&keys)),
    )
    .await;
    let token = key.sign(&event_grid_claims());
    let address = source.local_addr();
    for (query, token, expected) in [
        ("", Some(token.as_str()), 401),
        ("?code=s3cret-Code_1", None, 401),
        ("?code=s3cret-Code_1", Some(token.as_str()), 200),
    ] {
        let mut request = client()
            .post(format!("http://{address}/{query}"))
            .body(validation());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        assert_eq!(
            request.send().await.unwrap().status().as_u16(),
            expected,
            "{query} {}",
            token.is_some()
        );
    }
    source.close().await.unwrap();
}

#[tokio::test]
async fn a_keys_url_in_clear_to_a_remote_host_is_refused() {
    let config = WebhookConfig::new("127.0.0.1:0".parse().unwrap())
        .plain_http()
        .entra_id(EntraIdConfig::new(TENANT, AUDIENCE).keys_url("http://keys.example.com/keys"));
    let error = WebhookSource::bind(config).await.unwrap_err();
    assert!(error.to_string().contains("must be HTTPS"), "{error}");
}
