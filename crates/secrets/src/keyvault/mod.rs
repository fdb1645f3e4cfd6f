//! [`KeyVaultProvider`]: secrets from Azure Key Vault through the official Azure SDK.

mod classify;
pub mod credential;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, HttpClient, RetryOptions, Transport, Url};
use azure_core::time::OffsetDateTime;
use azure_security_keyvault_secrets::models::SecretClientGetSecretOptions;
use azure_security_keyvault_secrets::{ResourceExt, SecretClient, SecretClientOptions};
use chrono::{DateTime, Utc};
use keyvault_invalidator_core::event::ObjectName;
use keyvault_invalidator_core::{ProviderError, ProviderErrorKind, Secret, SecretProvider};

use crate::error::ConfigError;
use classify::classify;

/// How long one read may take, token included, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads secrets from an Azure Key Vault with the official SDK (`SecretClient`), with any
/// `azure_identity` credential (see [`credential`]).
///
/// A read returns the value, the version (from the secret's id), the expiry and the creation
/// time. Names are checked before any request: 1-127 ASCII letters, digits and `-`, else
/// `InvalidName` (map `:` to `--` in a [`SecretStore`](crate::SecretStore)). Failures are
/// classified: 404 `NotFound`; 401, 403 and credential failures `AccessDenied` (critical);
/// 429 `Throttled` with the vault's `Retry-After`; 408, 5xx, network failures and timeouts
/// `Transient`; the rest `Other`.
///
/// **Retries: none by default.** The SDK would retry 429 and 5xx up to 8 times over a minute,
/// holding the reader that long and hiding the vault's `Retry-After` from the layer above. In
/// this project a cache sits above the provider: it makes one call per secret however many
/// readers wait (single flight) and backs off itself, honouring `Retry-After`. So each read is
/// one attempt, and [`KeyVaultProviderBuilder::retry`] turns the SDK's retries back on for use
/// without such a cache.
///
/// ```no_run
/// use keyvault_invalidator_core::{secrecy::ExposeSecret, SecretProvider};
/// use keyvault_invalidator_secrets::{credential, KeyVaultProvider};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let vault = KeyVaultProvider::new("https://my-kv.vault.azure.net/", credential::managed_identity()?)?;
/// let secret = vault.get_secret("db-password").await?;
/// println!("version {:?}", secret.version());
/// # Ok(()) }
/// ```
pub struct KeyVaultProvider {
    client: SecretClient,
    vault_url: String,
    timeout: Duration,
    sdk_retries: bool,
}

impl KeyVaultProvider {
    /// A provider for the vault at `vault_url` (`https://{vault}.vault.azure.net/`) with the
    /// defaults: no SDK retries, a [`DEFAULT_TIMEOUT`] per read, the SDK's HTTP client.
    pub fn new(vault_url: &str, credential: Arc<dyn TokenCredential>) -> Result<Self, ConfigError> {
        Self::builder(vault_url, credential).build()
    }

    /// A builder, to change the timeout, the retries or the HTTP client.
    pub fn builder(
        vault_url: &str,
        credential: Arc<dyn TokenCredential>,
    ) -> KeyVaultProviderBuilder {
        KeyVaultProviderBuilder {
            vault_url: vault_url.to_owned(),
            credential,
            timeout: DEFAULT_TIMEOUT,
            retry: None,
            transport: None,
        }
    }

    /// The vault URL.
    pub fn vault_url(&self) -> &str {
        &self.vault_url
    }

    async fn read(&self, name: &str, version: Option<&str>) -> Result<Secret, ProviderError> {
        let object = ObjectName::new(name)
            .map_err(|e| ProviderError::new(name, ProviderErrorKind::InvalidName, e.to_string()))?;
        let options = SecretClientGetSecretOptions {
            secret_version: version.map(str::to_owned),
            ..Default::default()
        };
        let call = self.client.get_secret(object.as_str(), Some(options));
        let response = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Err(classify(name, error)),
            Err(_) => {
                return Err(ProviderError::new(
                    name,
                    ProviderErrorKind::Transient,
                    format!(
                        "Key Vault did not answer within {} ms",
                        self.timeout.as_millis()
                    ),
                ))
            }
        };
        let model = response.into_model().map_err(|e| classify(name, e))?;
        let version = model.resource_id().ok().and_then(|id| id.version);
        let attributes = model.attributes.unwrap_or_default();
        let value = model.value.ok_or_else(|| {
            ProviderError::new(
                name,
                ProviderErrorKind::Other,
                "Key Vault answered without a value",
            )
        })?;
        let mut secret = Secret::new(value);
        if let Some(version) = version {
            secret = secret.with_version(version);
        }
        if let Some(expires) = attributes.expires.and_then(to_chrono) {
            secret = secret.with_expiry(expires);
        }
        if let Some(created) = attributes.created.and_then(to_chrono) {
            secret = secret.with_created_on(created);
        }
        if let Some(not_before) = attributes.not_before.and_then(to_chrono) {
            secret = secret.with_not_before(not_before);
        }
        Ok(secret)
    }
}

fn to_chrono(time: OffsetDateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(time.unix_timestamp(), time.nanosecond())
}

impl fmt::Debug for KeyVaultProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyVaultProvider")
            .field("vault_url", &self.vault_url)
            .field("timeout", &self.timeout)
            .field("sdk_retries", &self.sdk_retries)
            .finish()
    }
}

#[async_trait]
impl SecretProvider for KeyVaultProvider {
    async fn get_secret(&self, name: &str) -> Result<Secret, ProviderError> {
        self.read(name, None).await
    }

    /// Reads the given version of `name` (`GET /secrets/{name}/{version}`), for example the
    /// version an event announced. A version is 1-64 ASCII letters and digits (Key Vault's are
    /// 32 hex digits), else `InvalidName` before any request; an unknown version is `NotFound`.
    async fn get_secret_version(&self, name: &str, version: &str) -> Result<Secret, ProviderError> {
        if version.is_empty()
            || version.len() > 64
            || !version.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(ProviderError::new(
                name,
                ProviderErrorKind::InvalidName,
                "a version is 1-64 ASCII letters and digits",
            ));
        }
        self.read(name, Some(version)).await
    }
}

/// Builds a [`KeyVaultProvider`].
pub struct KeyVaultProviderBuilder {
    vault_url: String,
    credential: Arc<dyn TokenCredential>,
    timeout: Duration,
    retry: Option<RetryOptions>,
    transport: Option<Arc<dyn HttpClient>>,
}

impl KeyVaultProviderBuilder {
    /// How long one read may take, token included, before it fails as `Transient`
    /// (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Lets the SDK retry with these options (for example `RetryOptions::default()`, its
    /// exponential policy). The default is none: see [`KeyVaultProvider`].
    pub fn retry(mut self, retry: RetryOptions) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Sends requests with this HTTP client instead of the SDK's own (a proxy, a custom TLS
    /// trust store, a test stand-in).
    pub fn transport(mut self, client: Arc<dyn HttpClient>) -> Self {
        self.transport = Some(client);
        self
    }

    /// The provider. Fails when the URL is not an `https://` URL with a host, or when the
    /// timeout is zero.
    pub fn build(self) -> Result<KeyVaultProvider, ConfigError> {
        let url = Url::parse(self.vault_url.trim()).map_err(|e| {
            ConfigError::new(format!("`{}` is not a vault URL", self.vault_url)).with_source(e)
        })?;
        // The SDK only sends tokens over TLS; saying so now beats failing every read.
        if url.scheme() != "https" || url.host_str().is_none_or(str::is_empty) {
            return Err(ConfigError::new(format!(
                "`{}` is not an https:// vault URL",
                self.vault_url
            )));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new("the timeout cannot be zero"));
        }
        let sdk_retries = self.retry.is_some();
        let client_options = ClientOptions {
            retry: self.retry.unwrap_or_else(RetryOptions::none),
            transport: self.transport.map(Transport::new),
            ..Default::default()
        };
        let options = SecretClientOptions {
            client_options,
            ..Default::default()
        };
        let client =
            SecretClient::new(url.as_str(), self.credential, Some(options)).map_err(|e| {
                ConfigError::new("the Azure SDK refused the vault settings").with_source(e)
            })?;
        Ok(KeyVaultProvider {
            client,
            vault_url: url.to_string(),
            timeout: self.timeout,
            sdk_retries,
        })
    }
}

impl fmt::Debug for KeyVaultProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyVaultProviderBuilder")
            .field("vault_url", &self.vault_url)
            .field("timeout", &self.timeout)
            .field("sdk_retries", &self.retry.is_some())
            .finish_non_exhaustive()
    }
}
