//! What a registration resolves to at connection time: where to connect, which entity, and
//! how to authorise. A connection string in the secret store is read here, so a rotated one is
//! picked up on the next resolution.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use azure_core::credentials::TokenCredential;
use keyvault_invalidator_core::{ProviderErrorKind, SourceError};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{is_loopback_host, Authorization, ServiceBusConfig};
use crate::connection_string::{ConnectionString, SharedAccess, AMQPS_PORT};
use crate::management_client::{ManagementAuth, ManagementClient, SERVICE_BUS_SCOPE};
use crate::sas::sas_token;

/// The real emulator's management port, used for emulator connection strings without an
/// explicit management endpoint.
const EMULATOR_MANAGEMENT_PORT: u16 = 5300;

/// A resolved connection target.
pub(crate) struct Target {
    pub(crate) amqp_url: url::Url,
    /// `{scheme}://{host}[:{port}]/{topic}/subscriptions/{subscription}`: the `$cbs` audience.
    pub(crate) audience: String,
    pub(crate) topic: String,
    pub(crate) access: Access,
    pub(crate) management: ManagementClient,
}

/// How tokens for the `$cbs` node are made.
#[derive(Clone)]
pub(crate) enum Access {
    /// Signs (or presents) SAS tokens; signed ones live `lifetime`.
    SharedAccess(SharedAccess, Duration),
    Credential(Arc<dyn TokenCredential>),
}

/// A token for the `$cbs` node.
pub(crate) struct CbsToken {
    pub(crate) token_type: &'static str,
    pub(crate) token: SecretString,
    pub(crate) expires_at: SystemTime,
}

impl Access {
    pub(crate) async fn token(&self, audience: &str) -> Result<CbsToken, SourceError> {
        match self {
            Access::SharedAccess(SharedAccess::Key { name, key }, lifetime) => {
                let expires_at = SystemTime::now() + *lifetime;
                let expiry = expires_at
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                Ok(CbsToken {
                    token_type: "servicebus.windows.net:sastoken",
                    token: sas_token(audience, name, key, expiry),
                    expires_at,
                })
            }
            Access::SharedAccess(SharedAccess::Signature(signature), lifetime) => Ok(CbsToken {
                token_type: "servicebus.windows.net:sastoken",
                token: signature.clone(),
                expires_at: signature_expiry(signature.expose_secret())
                    .unwrap_or_else(|| SystemTime::now() + *lifetime),
            }),
            Access::Credential(credential) => {
                let token = credential
                    .get_token(&[SERVICE_BUS_SCOPE], None)
                    .await
                    .map_err(|e| {
                        SourceError::transient("the credential could not get a Service Bus token")
                            .with_source(e)
                    })?;
                let expires_at = UNIX_EPOCH
                    + Duration::from_secs(
                        u64::try_from(token.expires_on.unix_timestamp()).unwrap_or(0),
                    );
                Ok(CbsToken {
                    token_type: "jwt",
                    token: SecretString::from(token.token.secret().to_owned()),
                    expires_at,
                })
            }
        }
    }
}

/// `se=` of a ready-made signature.
fn signature_expiry(signature: &str) -> Option<SystemTime> {
    let seconds: u64 = signature
        .split(['&', ' '])
        .find_map(|field| field.strip_prefix("se="))?
        .parse()
        .ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(seconds))
}

/// Resolves the configuration for one connection attempt.
pub(crate) async fn resolve(
    config: &ServiceBusConfig,
    subscription: &str,
) -> Result<Target, SourceError> {
    let (endpoint, access, topic) = match config.authorization() {
        Authorization::Credential(credential) => {
            let namespace = config
                .namespace()
                .ok_or_else(|| SourceError::fatal("no namespace is configured"))?;
            let endpoint = Endpoint {
                host: namespace.to_owned(),
                port: None,
                emulator: false,
            };
            (
                endpoint,
                Access::Credential(credential.clone()),
                config.topic_name().map(str::to_owned),
            )
        }
        Authorization::ConnectionString(cs) => from_connection_string(cs, config),
        Authorization::ConnectionStringFromStore { provider, key } => {
            let secret = provider.get_secret(key).await.map_err(|error| {
                let message = format!(
                    "reading the connection string under `{key}` failed: {}",
                    error.kind
                );
                match error.kind {
                    ProviderErrorKind::Throttled { .. } | ProviderErrorKind::Transient => {
                        SourceError::transient(message).with_source(error)
                    }
                    _ => SourceError::fatal(message).with_source(error),
                }
            })?;
            let cs: ConnectionString = secret.value().expose_secret().parse().map_err(|_| {
                // The parse error would be safe, but keep even its shape of the value out.
                SourceError::fatal(format!(
                    "the secret under `{key}` is not a Service Bus connection string"
                ))
            })?;
            // Checked here, not at build time: the string is only known once read.
            if cs.is_development_emulator()
                && !config.allows_insecure_endpoint()
                && !is_loopback_host(cs.namespace())
            {
                return Err(SourceError::fatal(format!(
                    "the connection string under `{key}` sets `UseDevelopmentEmulator=true` \
                     with `{}`, which is not a loopback host, and would send the tokens \
                     unencrypted; use the emulator on 127.0.0.1, or opt in with \
                     `ServiceBusConfig::allow_insecure_endpoint`",
                    cs.namespace()
                )));
            }
            from_connection_string(&cs, config)
        }
    };
    let endpoint = match config.amqp_endpoint_override() {
        Some(url) => {
            let url = url::Url::parse(url)
                .map_err(|_| SourceError::fatal("the AMQP endpoint is not a URL"))?;
            Endpoint {
                host: url.host_str().unwrap_or_default().to_owned(),
                port: url.port(),
                emulator: url.scheme() == "amqp",
            }
        }
        None => endpoint,
    };
    let topic = topic.ok_or_else(|| {
        SourceError::fatal(
            "no topic: the connection string has no EntityPath and none was configured",
        )
    })?;
    let management_endpoint = match config.management_endpoint_override() {
        Some(endpoint) => endpoint.to_owned(),
        None if endpoint.emulator => {
            format!("http://{}:{EMULATOR_MANAGEMENT_PORT}/", endpoint.host)
        }
        None => format!("https://{}/", endpoint.host),
    };
    let management_auth = match &access {
        Access::SharedAccess(shared, _) => ManagementAuth::SharedAccess(shared.clone()),
        Access::Credential(credential) => ManagementAuth::Credential(credential.clone()),
    };
    let base = endpoint.base();
    Ok(Target {
        amqp_url: url::Url::parse(&endpoint.amqp_url())
            .map_err(|_| SourceError::fatal("the namespace does not form a valid AMQP URL"))?,
        audience: format!("{base}/{topic}/subscriptions/{subscription}"),
        topic,
        access,
        management: ManagementClient::new(&management_endpoint, management_auth)?,
    })
}

struct Endpoint {
    host: String,
    port: Option<u16>,
    emulator: bool,
}

impl Endpoint {
    fn amqp_url(&self) -> String {
        let scheme = if self.emulator { "amqp" } else { "amqps" };
        let port = self
            .port
            .unwrap_or(if self.emulator { 5672 } else { AMQPS_PORT });
        format!("{scheme}://{}:{port}", self.host)
    }

    /// The audience base: the AMQP URL, without the default TLS port the service omits.
    fn base(&self) -> String {
        match (self.emulator, self.port) {
            (false, None) => format!("amqps://{}", self.host),
            _ => self.amqp_url(),
        }
    }
}

fn from_connection_string(
    cs: &ConnectionString,
    config: &ServiceBusConfig,
) -> (Endpoint, Access, Option<String>) {
    let port = cs
        .amqp_url()
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .filter(|port| cs.is_development_emulator() || *port != AMQPS_PORT);
    let endpoint = Endpoint {
        host: cs.namespace().to_owned(),
        port,
        emulator: cs.is_development_emulator(),
    };
    let topic = config.topic_name().or(cs.entity_path()).map(str::to_owned);
    (
        endpoint,
        Access::SharedAccess(
            cs.shared_access().clone(),
            config.sas_token_lifetime_value(),
        ),
        topic,
    )
}

#[cfg(test)]
mod tests {
    use keyvault_invalidator_core::SourceErrorKind;
    use keyvault_invalidator_secrets::StaticProvider;

    use super::*;

    const REMOTE_EMULATOR: &str = "Endpoint=sb://servicebus-emulator:5672;SharedAccessKeyName=k;SharedAccessKey=s3cr3t-key;UseDevelopmentEmulator=true;EntityPath=t";

    fn from_store(connection_string: &str) -> ServiceBusConfig {
        let store = StaticProvider::new([("sb", connection_string)]);
        ServiceBusConfig::connection_string_from_store(store, "sb")
            .and_then(|c| c.subscription_prefix("app"))
            .unwrap()
    }

    #[tokio::test]
    async fn a_remote_emulator_string_from_the_store_is_refused_at_connect() {
        let Err(error) = resolve(&from_store(REMOTE_EMULATOR), "app-1").await else {
            panic!("a remote emulator string must be refused");
        };
        assert_eq!(error.kind, SourceErrorKind::Fatal);
        assert_eq!(
            error.message,
            "the connection string under `sb` sets `UseDevelopmentEmulator=true` with \
             `servicebus-emulator`, which is not a loopback host, and would send the tokens \
             unencrypted; use the emulator on 127.0.0.1, or opt in with \
             `ServiceBusConfig::allow_insecure_endpoint`"
        );
        assert!(!format!("{error:?}").contains("s3cr3t-key"));
    }

    #[tokio::test]
    async fn a_remote_emulator_string_from_the_store_is_used_with_the_opt_in() {
        let config = from_store(REMOTE_EMULATOR).allow_insecure_endpoint();
        let Ok(target) = resolve(&config, "app-1").await else {
            panic!("the opt-in accepts it");
        };
        assert_eq!(target.amqp_url.as_str(), "amqp://servicebus-emulator:5672");
        assert_eq!(target.topic, "t");

        let local = REMOTE_EMULATOR.replace("servicebus-emulator", "127.0.0.1");
        let Ok(target) = resolve(&from_store(&local), "app-1").await else {
            panic!("a loopback emulator needs no opt-in");
        };
        assert_eq!(target.amqp_url.as_str(), "amqp://127.0.0.1:5672");
    }
}
