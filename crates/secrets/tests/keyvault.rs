//! The Key Vault provider against the local stand-in of the Key Vault REST API, through the real
//! Azure SDK client: TLS, the authentication challenge, the response shapes, the failures.
#![cfg(feature = "azure")]

use std::time::Duration;

use chrono::DateTime;
use keyvault_invalidator_core::secrecy::ExposeSecret;
use keyvault_invalidator_core::{NameMapping, ProviderError, ProviderErrorKind, SecretProvider};
use keyvault_invalidator_secrets::azure_core::http::{FixedRetryOptions, RetryOptions};
use keyvault_invalidator_secrets::{KeyVaultProvider, SecretStore};
use keyvault_invalidator_testkit::keyvault_standin::{
    FakeTokenCredential, Fault, KeyVaultStandIn, StandInAttributes, KEY_VAULT_SCOPE,
};

const VALUE: &str = "hunter2-do-not-print-me";

async fn standin() -> KeyVaultStandIn {
    KeyVaultStandIn::start()
        .await
        .expect("the stand-in starts on loopback")
}

fn provider(standin: &KeyVaultStandIn) -> KeyVaultProvider {
    KeyVaultProvider::builder(standin.endpoint(), standin.credential())
        .transport(standin.transport())
        .build()
        .expect("valid settings")
}

/// A provider that has been through the authentication challenge, with the request log emptied,
/// so each case below counts only its own requests.
async fn warm_provider(standin: &KeyVaultStandIn) -> KeyVaultProvider {
    let provider = provider(standin);
    standin.set_secret("warm-up", "x");
    provider
        .get_secret("warm-up")
        .await
        .expect("warm-up read succeeds");
    standin.clear_requests();
    provider
}

fn assert_no_value(error: &ProviderError) {
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains(VALUE), "the value leaked: {shown}");
}

#[tokio::test]
async fn reads_value_version_expiry_and_creation_time() {
    let standin = standin().await;
    let version = standin.set_secret_with(
        "db-password",
        VALUE,
        StandInAttributes {
            created: Some(1_700_000_000),
            not_before: Some(1_700_000_100),
            expires: Some(1_900_000_000),
            content_type: Some("text/plain".into()),
        },
    );
    let provider = provider(&standin);

    let secret = provider.get_secret("db-password").await.unwrap();

    assert_eq!(secret.value().expose_secret(), VALUE);
    assert_eq!(secret.version(), Some(version.as_str()));
    assert_eq!(version.len(), 32);
    assert_eq!(
        secret.expires_on(),
        DateTime::from_timestamp(1_900_000_000, 0)
    );
    assert_eq!(
        secret.created_on(),
        DateTime::from_timestamp(1_700_000_000, 0)
    );
    assert_eq!(
        secret.not_before(),
        DateTime::from_timestamp(1_700_000_100, 0)
    );
    // A fresh client: the unauthenticated request meets the challenge, then the authorized one.
    assert_eq!(standin.calls("db-password"), 2);
    assert_eq!(standin.total_requests(), 2);
    assert_eq!(standin.authorized_requests(), 1);
    let requests = standin.requests();
    assert!(!requests[0].authorization);
    assert!(requests[1].authorization);
    assert_eq!(requests[1].method, "GET");
    assert_eq!(requests[1].version, None);
    let credential = standin.credential();
    assert_eq!(credential.calls(), 1);
    assert_eq!(credential.last_scopes(), vec![KEY_VAULT_SCOPE.to_owned()]);

    // The token is cached: one request, no new token.
    provider.get_secret("db-password").await.unwrap();
    assert_eq!(standin.calls("db-password"), 3);
    assert_eq!(credential.calls(), 1);
}

#[tokio::test]
async fn a_secret_without_expiry_has_none() {
    let standin = standin().await;
    standin.set_secret("plain", "v");
    let secret = warm_provider(&standin)
        .await
        .get_secret("plain")
        .await
        .unwrap();
    assert_eq!(secret.expires_on(), None);
    assert!(secret.created_on().is_some());
    assert_eq!(standin.total_requests(), 1);
}

#[tokio::test]
async fn reads_the_new_version_after_a_rotation_and_old_versions_on_request() {
    let standin = standin().await;
    let provider = warm_provider(&standin).await;
    let v1 = standin.set_secret("api-key", "first");
    assert_eq!(
        provider.get_secret("api-key").await.unwrap().version(),
        Some(v1.as_str())
    );

    let v2 = standin.rotate("api-key", "second");
    let latest = provider.get_secret("API-Key").await.unwrap();
    assert_eq!(latest.value().expose_secret(), "second");
    assert_eq!(latest.version(), Some(v2.as_str()));

    let old = provider.get_secret_version("api-key", &v1).await.unwrap();
    assert_eq!(old.value().expose_secret(), "first");
    assert_eq!(old.version(), Some(v1.as_str()));
    assert_eq!(standin.calls("api-key"), 3);
    assert_eq!(standin.requests()[2].version.as_deref(), Some(v1.as_str()));
}

#[tokio::test]
async fn missing_secret_is_not_found_after_one_request() {
    let standin = standin().await;
    let provider = warm_provider(&standin).await;

    let error = provider.get_secret("nope").await.unwrap_err();

    assert_eq!(error.kind, ProviderErrorKind::NotFound);
    assert_eq!(error.name, "nope");
    assert!(error.message.contains("404"), "{}", error.message);
    assert!(
        error.message.contains("SecretNotFound"),
        "{}",
        error.message
    );
    assert!(!error.is_critical());
    assert_eq!(standin.total_requests(), 1);
}

#[tokio::test]
async fn unknown_version_is_not_found() {
    let standin = standin().await;
    standin.set_secret("api-key", "v");
    let provider = warm_provider(&standin).await;
    let error = provider
        .get_secret_version("api-key", "0123456789abcdef0123456789abcdef")
        .await
        .unwrap_err();
    assert_eq!(error.kind, ProviderErrorKind::NotFound);
    assert_eq!(standin.total_requests(), 1);
}

#[tokio::test]
async fn rejected_token_is_access_denied_and_critical() {
    let standin = standin().await;
    standin.set_secret("db-password", VALUE);
    let provider = warm_provider(&standin).await;
    let credential = standin.credential();
    assert_eq!(credential.calls(), 1);
    // The SDK answers a 401 with a new token and one more try; the vault rejects both.
    standin.fail_next(2, Fault::Unauthorized);

    let error = provider.get_secret("db-password").await.unwrap_err();

    assert_eq!(error.kind, ProviderErrorKind::AccessDenied);
    assert!(error.is_critical());
    assert!(error.message.contains("401"), "{}", error.message);
    assert_eq!(standin.calls("db-password"), 2);
    assert_eq!(standin.authorized_requests(), 2);
    assert_eq!(credential.calls(), 2);
    assert_no_value(&error);
}

#[tokio::test]
async fn one_rejected_token_is_renewed_transparently() {
    let standin = standin().await;
    standin.set_secret("db-password", VALUE);
    let provider = warm_provider(&standin).await;
    standin.fail_next(1, Fault::Unauthorized);

    let secret = provider.get_secret("db-password").await.unwrap();

    assert_eq!(secret.value().expose_secret(), VALUE);
    assert_eq!(standin.calls("db-password"), 2);
    assert_eq!(standin.credential().calls(), 2);
}

#[tokio::test]
async fn forbidden_is_access_denied_and_critical() {
    let standin = standin().await;
    standin.set_secret("db-password", VALUE);
    let provider = warm_provider(&standin).await;
    standin.fail_next(1, Fault::Forbidden);

    let error = provider.get_secret("db-password").await.unwrap_err();

    assert_eq!(error.kind, ProviderErrorKind::AccessDenied);
    assert!(error.is_critical());
    assert!(error.message.contains("403"), "{}", error.message);
    assert!(error.message.contains("Forbidden"), "{}", error.message);
    assert_eq!(standin.total_requests(), 1);
    assert_no_value(&error);
}

#[tokio::test]
async fn throttling_is_throttled_with_the_vaults_retry_after() {
    let standin = standin().await;
    standin.set_secret("db-password", VALUE);
    let provider = warm_provider(&standin).await;
    standin.fail_next(
        1,
        Fault::Throttled {
            retry_after_secs: 2,
        },
    );

    let error = provider.get_secret("db-password").await.unwrap_err();

    assert_eq!(
        error.kind,
        ProviderErrorKind::Throttled {
            retry_after: Some(Duration::from_secs(2))
        }
    );
    assert!(error.is_retryable());
    assert!(!error.is_critical());
    assert_eq!(standin.total_requests(), 1);
    // The fault is spent: the next read succeeds.
    assert!(provider.get_secret("db-password").await.is_ok());
    assert_eq!(standin.total_requests(), 2);
}

#[tokio::test]
async fn server_errors_are_transient_after_one_request_each() {
    let standin = standin().await;
    standin.set_secret("db-password", VALUE);
    let provider = warm_provider(&standin).await;

    for (i, status) in [500u16, 502, 503, 504].into_iter().enumerate() {
        standin.fail_next(1, Fault::Status(status));
        let error = provider.get_secret("db-password").await.unwrap_err();
        assert_eq!(error.kind, ProviderErrorKind::Transient, "status {status}");
        assert!(
            error.message.contains(&status.to_string()),
            "{}",
            error.message
        );
        assert_eq!(standin.total_requests(), i + 1, "status {status}");
        assert_no_value(&error);
    }
}

#[tokio::test]
async fn other_client_errors_are_other() {
    let standin = standin().await;
    let provider = warm_provider(&standin).await;
    standin.fail_next(1, Fault::Status(400));
    let error = provider.get_secret("db-password").await.unwrap_err();
    assert_eq!(error.kind, ProviderErrorKind::Other);
    assert!(!error.is_retryable());
    assert_eq!(standin.total_requests(), 1);
}

#[tokio::test]
async fn invalid_names_fail_before_any_request() {
    let standin = standin().await;
    let provider = provider(&standin);
    let too_long = "a".repeat(128);
    let longest = "a".repeat(127);

    for name in [
        "ServiceBus:ConnectionString",
        "",
        "has space",
        "under_score",
        "ümlaut",
        "../etc",
        too_long.as_str(),
    ] {
        let error = provider.get_secret(name).await.unwrap_err();
        assert_eq!(error.kind, ProviderErrorKind::InvalidName, "name {name:?}");
    }
    let error = provider
        .get_secret_version("db-password", "../x")
        .await
        .unwrap_err();
    assert_eq!(error.kind, ProviderErrorKind::InvalidName);
    assert_eq!(standin.total_requests(), 0);
    assert_eq!(standin.credential().calls(), 0);

    // The longest valid name does reach the vault.
    let error = provider.get_secret(&longest).await.unwrap_err();
    assert_eq!(error.kind, ProviderErrorKind::NotFound);
    assert_eq!(standin.calls(&longest), 2);
}

#[tokio::test]
async fn a_slow_vault_is_transient_after_the_timeout() {
    let standin = standin().await;
    standin.set_secret("db-password", VALUE);
    let provider = KeyVaultProvider::builder(standin.endpoint(), standin.credential())
        .transport(standin.transport())
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    provider.get_secret("db-password").await.unwrap();
    standin.clear_requests();
    standin.fail_next(1, Fault::Delay(Duration::from_secs(5)));

    let started = std::time::Instant::now();
    let error = provider.get_secret("db-password").await.unwrap_err();

    assert_eq!(error.kind, ProviderErrorKind::Transient);
    assert!(error.message.contains("500 ms"), "{}", error.message);
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(standin.total_requests(), 1);
}

#[tokio::test]
async fn a_short_delay_within_the_timeout_still_answers() {
    let standin = standin().await;
    standin.set_secret("db-password", VALUE);
    let provider = warm_provider(&standin).await;
    standin.fail_next(1, Fault::Delay(Duration::from_millis(200)));
    let secret = provider.get_secret("db-password").await.unwrap();
    assert_eq!(secret.value().expose_secret(), VALUE);
    assert_eq!(standin.total_requests(), 1);
}

#[tokio::test]
async fn a_dropped_connection_is_transient() {
    let standin = standin().await;
    standin.set_secret("db-password", VALUE);
    let provider = warm_provider(&standin).await;
    standin.fail_next(1, Fault::Disconnect);

    let error = provider.get_secret("db-password").await.unwrap_err();

    assert_eq!(error.kind, ProviderErrorKind::Transient, "{error}");
    assert!(
        error.message.contains("could not reach"),
        "{}",
        error.message
    );
    assert_eq!(standin.total_requests(), 1);
}

#[tokio::test]
async fn a_credential_without_identity_is_access_denied() {
    let standin = standin().await;
    standin.set_secret("db-password", VALUE);
    let credential = std::sync::Arc::new(FakeTokenCredential::failing());
    let provider = KeyVaultProvider::builder(standin.endpoint(), credential.clone())
        .transport(standin.transport())
        .build()
        .unwrap();

    let error = provider.get_secret("db-password").await.unwrap_err();

    assert_eq!(error.kind, ProviderErrorKind::AccessDenied);
    assert!(error.is_critical());
    assert!(error.message.contains("token"), "{}", error.message);
    // Only the unauthenticated request that drew the challenge reached the vault.
    assert_eq!(standin.total_requests(), 1);
    assert_eq!(standin.authorized_requests(), 0);
    assert_eq!(credential.calls(), 1);
}

#[tokio::test]
async fn sdk_retries_are_off_by_default_and_can_be_turned_on() {
    let standin = standin().await;
    standin.set_secret("db-password", VALUE);
    let provider = KeyVaultProvider::builder(standin.endpoint(), standin.credential())
        .transport(standin.transport())
        .retry(RetryOptions::fixed(FixedRetryOptions {
            delay: keyvault_invalidator_secrets::azure_core::time::Duration::milliseconds(10),
            max_retries: 2,
            ..Default::default()
        }))
        .build()
        .unwrap();
    provider.get_secret("db-password").await.unwrap();
    standin.clear_requests();
    standin.fail_next(1, Fault::Status(503));

    let secret = provider.get_secret("db-password").await.unwrap();

    assert_eq!(secret.value().expose_secret(), VALUE);
    assert_eq!(standin.total_requests(), 2);
    assert!(format!("{provider:?}").contains("sdk_retries: true"));

    // The default provider gives up after the one request.
    let default = warm_provider(&standin).await;
    standin.fail_next(1, Fault::Status(503));
    assert!(default.get_secret("db-password").await.is_err());
    assert_eq!(standin.total_requests(), 1);
    assert!(format!("{default:?}").contains("sdk_retries: false"));
}

#[tokio::test]
async fn values_never_show_in_debug_or_errors() {
    let standin = standin().await;
    standin.set_secret("db-password", VALUE);
    let provider = warm_provider(&standin).await;
    let secret = provider.get_secret("db-password").await.unwrap();

    assert!(!format!("{secret:?}").contains(VALUE));
    assert!(!format!("{provider:?}").contains(VALUE));
    assert!(!format!("{standin:?}").contains(VALUE));
    let credential = standin.credential();
    let shown = format!("{credential:?}");
    assert!(!shown.contains("standin-token"), "{shown}");

    for fault in [
        Fault::Forbidden,
        Fault::Throttled {
            retry_after_secs: 1,
        },
        Fault::Status(503),
        Fault::Disconnect,
    ] {
        standin.fail_next(1, fault);
        let error = provider.get_secret("db-password").await.unwrap_err();
        assert_no_value(&error);
    }
}

#[tokio::test]
async fn bad_settings_are_refused_at_build() {
    let credential = std::sync::Arc::new(FakeTokenCredential::new("t"));
    for url in ["http://my-kv.vault.azure.net/", "not a url", "", "https://"] {
        let result = KeyVaultProvider::new(url, credential.clone());
        assert!(result.is_err(), "{url:?} was accepted");
    }
    let zero = KeyVaultProvider::builder("https://my-kv.vault.azure.net/", credential.clone())
        .timeout(Duration::ZERO)
        .build();
    assert!(zero.is_err());
    let ok = KeyVaultProvider::new("https://my-kv.vault.azure.net", credential).unwrap();
    assert_eq!(ok.vault_url(), "https://my-kv.vault.azure.net/");
}

#[tokio::test]
async fn a_store_maps_names_for_key_vault_and_reads_a_connection_string() {
    let standin = standin().await;
    standin.set_secret(
        "ServiceBus--ConnectionString",
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=k;EntityPath=t",
    );
    let store = SecretStore::builder()
        .add_with_names(
            "key-vault",
            provider(&standin),
            NameMapping::key_separator(":").vault_separator("--"),
        )
        .build();

    let connection = store
        .connection_string("ServiceBus:ConnectionString")
        .await
        .unwrap();

    assert!(connection.expose_secret().starts_with("Endpoint=sb://ns."));
    assert_eq!(standin.calls("ServiceBus--ConnectionString"), 2);
    assert_eq!(standin.authorized_requests(), 1);
}
