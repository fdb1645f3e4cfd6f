//! The two registrations of the original library, with their argument checks.

use std::fmt;
use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use keyvault_invalidator_core::lock::LockRenewal;
use keyvault_invalidator_core::SecretProvider;
use keyvault_invalidator_secrets::credential;

use crate::connection_string::ConnectionString;
use crate::error::{non_blank, ConfigError};
use crate::management::SubscriptionProperties;
use crate::names::{
    check_subscription_name, check_subscription_prefix, check_topic, fully_qualified_namespace,
};

/// How the source proves who it is.
#[derive(Clone)]
pub enum Authorization {
    /// An Entra ID credential (managed identity, workload identity, developer login...): JWTs
    /// for `https://servicebus.azure.net/.default`.
    Credential(Arc<dyn TokenCredential>),
    /// A connection string given directly.
    ConnectionString(ConnectionString),
    /// A connection string read from a secret provider (the secret store) under a key at start
    /// and again at every reconnection, so a rotated one is picked up.
    ConnectionStringFromStore {
        /// Where it is read from.
        provider: Arc<dyn SecretProvider>,
        /// The key it is stored under.
        key: String,
    },
}

/// Which subscription the source receives from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionMode {
    /// Create `{prefix}-{unique}` at start (needs Manage rights, or the Azure Service Bus Data
    /// Owner role), delete it at graceful shutdown; `AutoDeleteOnIdle` removes it if the
    /// instance crashes.
    Automatic {
        /// The name's prefix.
        prefix: String,
        /// How it is created.
        properties: SubscriptionProperties,
    },
    /// Receive from a subscription infrastructure created (needs Listen rights, or the Azure
    /// Service Bus Data Receiver role).
    Existing {
        /// Its name.
        name: String,
    },
}

/// Everything a Service Bus source needs; built by one of the registrations, which check their
/// arguments and name the one that is wrong.
///
/// ```
/// use keyvault_invalidator_servicebus::ServiceBusConfig;
///
/// let config = ServiceBusConfig::connection_string(
///     "Endpoint=sb://my-ns.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=a2V5;EntityPath=keyvault-events",
///     "orders-api",
/// )?;
/// assert_eq!(config.topic_name(), Some("keyvault-events"));
/// assert_eq!(config.namespace(), Some("my-ns.servicebus.windows.net"));
///
/// let error = ServiceBusConfig::connection_string("Endpoint=sb://ns/;SharedAccessKeyName=l;SharedAccessKey=k", " ").unwrap_err();
/// assert_eq!(error.argument, "subscription name prefix");
/// # Ok::<(), keyvault_invalidator_servicebus::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct ServiceBusConfig {
    namespace: Option<String>,
    topic: Option<String>,
    authorization: Authorization,
    subscription: SubscriptionMode,
    prefetch: u32,
    management_endpoint: Option<String>,
    amqp_endpoint: Option<String>,
    sas_token_lifetime: std::time::Duration,
    operation_timeout: std::time::Duration,
    unauthorized_grace: std::time::Duration,
    lock_renewal: LockRenewal,
}

impl ServiceBusConfig {
    /// The managed-identity registration: the topic, the subscription name prefix, the
    /// namespace (`.servicebus.windows.net` is added when missing), and the client id of a
    /// user-assigned identity, if one is used.
    pub fn managed_identity(
        topic: &str,
        subscription_prefix: &str,
        namespace: &str,
        client_id: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let credential = match client_id {
            None => credential::managed_identity(),
            Some(id) => {
                non_blank("client id", id)?;
                credential::user_assigned_managed_identity(id)
            }
        }
        .map_err(|e| ConfigError::new("client id", e.to_string()))?;
        Self::with_credential(topic, subscription_prefix, namespace, credential)
    }

    /// The same with any `azure_identity` credential.
    pub fn with_credential(
        topic: &str,
        subscription_prefix: &str,
        namespace: &str,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<Self, ConfigError> {
        let topic = check_topic(topic)?.to_owned();
        let prefix = check_subscription_prefix(subscription_prefix)?.to_owned();
        Ok(ServiceBusConfig {
            namespace: Some(fully_qualified_namespace(namespace)?),
            topic: Some(topic),
            authorization: Authorization::Credential(credential),
            subscription: automatic(prefix),
            prefetch: DEFAULT_PREFETCH,
            management_endpoint: None,
            amqp_endpoint: None,
            sas_token_lifetime: DEFAULT_SAS_TOKEN_LIFETIME,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            unauthorized_grace: DEFAULT_UNAUTHORIZED_GRACE,
            lock_renewal: LockRenewal::default(),
        })
    }

    /// The connection-string registration with the string itself. The topic comes from its
    /// `EntityPath`, or from [`topic`](Self::topic).
    pub fn connection_string(
        connection_string: &str,
        subscription_prefix: &str,
    ) -> Result<Self, ConfigError> {
        let parsed: ConnectionString =
            non_blank("connection string", connection_string)?.parse()?;
        let prefix = check_subscription_prefix(subscription_prefix)?.to_owned();
        Ok(ServiceBusConfig {
            namespace: Some(parsed.namespace().to_owned()),
            topic: parsed.entity_path().map(str::to_owned),
            authorization: Authorization::ConnectionString(parsed),
            subscription: automatic(prefix),
            prefetch: DEFAULT_PREFETCH,
            management_endpoint: None,
            amqp_endpoint: None,
            sas_token_lifetime: DEFAULT_SAS_TOKEN_LIFETIME,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            unauthorized_grace: DEFAULT_UNAUTHORIZED_GRACE,
            lock_renewal: LockRenewal::default(),
        })
    }

    /// The connection-string registration of the original: the string is read at start from
    /// `provider` (the secret store) under `secret_key`, and again at every reconnection, so
    /// after a rotation the refusals end as soon as the store holds the new string.
    pub fn connection_string_from_store(
        provider: impl SecretProvider + 'static,
        secret_key: &str,
        subscription_prefix: &str,
    ) -> Result<Self, ConfigError> {
        let key = non_blank("secret key", secret_key)?.to_owned();
        let prefix = check_subscription_prefix(subscription_prefix)?.to_owned();
        Ok(ServiceBusConfig {
            namespace: None,
            topic: None,
            authorization: Authorization::ConnectionStringFromStore {
                provider: Arc::new(provider),
                key,
            },
            subscription: automatic(prefix),
            prefetch: DEFAULT_PREFETCH,
            management_endpoint: None,
            amqp_endpoint: None,
            sas_token_lifetime: DEFAULT_SAS_TOKEN_LIFETIME,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            unauthorized_grace: DEFAULT_UNAUTHORIZED_GRACE,
            lock_renewal: LockRenewal::default(),
        })
    }

    /// Names the topic (overriding a connection string's `EntityPath`).
    pub fn topic(mut self, topic: &str) -> Result<Self, ConfigError> {
        self.topic = Some(check_topic(topic)?.to_owned());
        Ok(self)
    }

    /// Receives from an existing subscription instead of creating one.
    pub fn existing_subscription(mut self, name: &str) -> Result<Self, ConfigError> {
        self.subscription = SubscriptionMode::Existing {
            name: check_subscription_name(name)?.to_owned(),
        };
        Ok(self)
    }

    /// How a created subscription is set up (lock duration, max delivery count, auto delete on
    /// idle). Ignored for an existing subscription.
    pub fn subscription_properties(
        mut self,
        properties: SubscriptionProperties,
    ) -> Result<Self, ConfigError> {
        properties.check()?;
        if let SubscriptionMode::Automatic {
            properties: current,
            ..
        } = &mut self.subscription
        {
            *current = properties;
        }
        Ok(self)
    }

    /// Messages the service sends ahead of receipt (default 4). Locks start ticking on transfer,
    /// so keep it small.
    pub fn prefetch(mut self, prefetch: u32) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// How long a delivery's lock is renewed at most while its invalidation runs (default
    /// 5 minutes, as the .NET processor's `MaxAutoLockRenewalDuration`; zero turns renewal
    /// off). Renewal stops at settlement; past this the lock runs out and Service Bus
    /// redelivers the message.
    ///
    /// ```
    /// use std::time::Duration;
    /// # use keyvault_invalidator_servicebus::ServiceBusConfig;
    /// let config = ServiceBusConfig::connection_string(
    ///     "Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=k;SharedAccessKey=a2V5;UseDevelopmentEmulator=true;EntityPath=t",
    ///     "app",
    /// )?
    /// .max_lock_renewal(Duration::from_secs(600));
    /// assert_eq!(config.lock_renewal().max_duration(), Duration::from_secs(600));
    /// # Ok::<(), keyvault_invalidator_servicebus::ConfigError>(())
    /// ```
    pub fn max_lock_renewal(mut self, max: std::time::Duration) -> Self {
        self.lock_renewal = LockRenewal::new(max);
        self
    }

    /// How locks are renewed.
    pub fn lock_renewal(&self) -> LockRenewal {
        self.lock_renewal
    }

    /// Where the management REST API is, when not `https://{namespace}/` (an emulator's own
    /// HTTP port, say).
    pub fn management_endpoint(mut self, endpoint: &str) -> Result<Self, ConfigError> {
        let endpoint = non_blank("management endpoint", endpoint)?;
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(ConfigError::new(
                "management endpoint",
                "must be an http(s) URL",
            ));
        }
        self.management_endpoint = Some(endpoint.to_owned());
        Ok(self)
    }

    /// Where to connect over AMQP, when not `amqps://{namespace}:5671`: `amqp://host:port` is
    /// plain AMQP (an emulator), `amqps://host:port` TLS on another port.
    pub fn amqp_endpoint(mut self, endpoint: &str) -> Result<Self, ConfigError> {
        let endpoint = non_blank("amqp endpoint", endpoint)?;
        let url = url::Url::parse(endpoint)
            .map_err(|_| ConfigError::new("amqp endpoint", "must be an amqp:// or amqps:// URL"))?;
        if !matches!(url.scheme(), "amqp" | "amqps") || url.host_str().is_none() {
            return Err(ConfigError::new(
                "amqp endpoint",
                "must be an amqp:// or amqps:// URL with a host",
            ));
        }
        self.amqp_endpoint = Some(endpoint.trim_end_matches('/').to_owned());
        Ok(self)
    }

    /// The AMQP endpoint override, if any.
    pub fn amqp_endpoint_override(&self) -> Option<&str> {
        self.amqp_endpoint.as_deref()
    }

    /// How long the SAS tokens signed for `$cbs` are valid (default 1 hour, at least 10
    /// seconds). They are renewed before they end: five minutes before, or halfway through a
    /// shorter lifetime.
    pub fn sas_token_lifetime(
        mut self,
        lifetime: std::time::Duration,
    ) -> Result<Self, ConfigError> {
        if lifetime < std::time::Duration::from_secs(10) {
            return Err(ConfigError::new(
                "sas token lifetime",
                "must be at least 10 seconds",
            ));
        }
        self.sas_token_lifetime = lifetime;
        Ok(self)
    }

    /// The lifetime of the SAS tokens the source signs.
    pub fn sas_token_lifetime_value(&self) -> std::time::Duration {
        self.sas_token_lifetime
    }

    /// The longest one step of connecting (opening the connection, beginning the session,
    /// attaching a link, a `$cbs` authorisation or renewal) may wait for the service's answer
    /// (default 60 seconds). A step that gets none fails as a transient error and the source
    /// reconnects with backoff, instead of waiting forever on a peer or a network that went
    /// silent.
    ///
    /// ```
    /// use std::time::Duration;
    /// use keyvault_invalidator_servicebus::ServiceBusConfig;
    ///
    /// let config = ServiceBusConfig::connection_string(
    ///     "Endpoint=sb://my-ns.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=a2V5;EntityPath=keyvault-events",
    ///     "orders-api",
    /// )?
    /// .operation_timeout(Duration::from_secs(20))?;
    /// assert_eq!(config.operation_timeout_value(), Duration::from_secs(20));
    ///
    /// let error = config.operation_timeout(Duration::ZERO).unwrap_err();
    /// assert_eq!(error.argument, "operation timeout");
    /// # Ok::<(), keyvault_invalidator_servicebus::ConfigError>(())
    /// ```
    pub fn operation_timeout(mut self, timeout: std::time::Duration) -> Result<Self, ConfigError> {
        if timeout.is_zero() {
            return Err(ConfigError::new(
                "operation timeout",
                "must be longer than zero",
            ));
        }
        self.operation_timeout = timeout;
        Ok(self)
    }

    /// How long one step of connecting may wait for an answer.
    pub fn operation_timeout_value(&self) -> std::time::Duration {
        self.operation_timeout
    }

    /// How long the management API may refuse (HTTP 401 or 403) to create the per-instance
    /// subscription before the source gives up (default 5 minutes; zero gives up at the first
    /// refusal).
    ///
    /// A role assignment (Azure Service Bus Data Owner) takes minutes to propagate, so an
    /// instance deployed together with its assignment is refused at first. During the grace
    /// the source retries with its reconnect backoff and logs each refusal at warn, with the
    /// count and the time left; after it, connecting fails with a fatal error that names the
    /// role needed (Azure Service Bus Data Owner, or a shared access policy with Manage
    /// rights). The grace starts at the first refusal of a run and ends with any success.
    /// Only automatic mode manages a subscription, so only it uses this setting.
    ///
    /// ```
    /// use std::time::Duration;
    /// use keyvault_invalidator_servicebus::{ServiceBusConfig, DEFAULT_UNAUTHORIZED_GRACE};
    ///
    /// let config = ServiceBusConfig::connection_string(
    ///     "Endpoint=sb://my-ns.servicebus.windows.net/;SharedAccessKeyName=manage;SharedAccessKey=a2V5;EntityPath=keyvault-events",
    ///     "orders-api",
    /// )?;
    /// assert_eq!(config.unauthorized_grace_value(), DEFAULT_UNAUTHORIZED_GRACE);
    /// let config = config.unauthorized_grace(Duration::from_secs(60));
    /// assert_eq!(config.unauthorized_grace_value(), Duration::from_secs(60));
    /// # Ok::<(), keyvault_invalidator_servicebus::ConfigError>(())
    /// ```
    pub fn unauthorized_grace(mut self, grace: std::time::Duration) -> Self {
        self.unauthorized_grace = grace;
        self
    }

    /// How long management refusals are retried before they are fatal.
    pub fn unauthorized_grace_value(&self) -> std::time::Duration {
        self.unauthorized_grace
    }

    /// The management endpoint override, if any.
    pub fn management_endpoint_override(&self) -> Option<&str> {
        self.management_endpoint.as_deref()
    }

    /// The fully qualified namespace, when known before start (not for a connection string
    /// still in the store).
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The topic, when known before start.
    pub fn topic_name(&self) -> Option<&str> {
        self.topic.as_deref()
    }

    /// How the source authorises.
    pub fn authorization(&self) -> &Authorization {
        &self.authorization
    }

    /// Which subscription it receives from.
    pub fn subscription(&self) -> &SubscriptionMode {
        &self.subscription
    }

    /// The prefetch.
    pub fn prefetch_count(&self) -> u32 {
        self.prefetch
    }
}

/// How long the SAS tokens the source signs for `$cbs` are valid, by default.
pub const DEFAULT_SAS_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

/// How long one step of connecting may wait for the service's answer, by default: far longer
/// than the service takes, short enough that a silent peer is noticed within a minute.
pub const DEFAULT_OPERATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How long the management API may refuse to create the subscription (HTTP 401/403) before
/// the source gives up, by default: long enough for a new role assignment to propagate.
pub const DEFAULT_UNAUTHORIZED_GRACE: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// Small: a prefetched message's lock runs while it waits.
const DEFAULT_PREFETCH: u32 = 4;

fn automatic(prefix: String) -> SubscriptionMode {
    SubscriptionMode::Automatic {
        prefix,
        properties: SubscriptionProperties::default(),
    }
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Authorization::Credential(_) => f.write_str("Credential(..)"),
            Authorization::ConnectionString(cs) => {
                f.debug_tuple("ConnectionString").field(cs).finish()
            }
            Authorization::ConnectionStringFromStore { key, .. } => f
                .debug_struct("ConnectionStringFromStore")
                .field("key", key)
                .finish_non_exhaustive(),
        }
    }
}

impl fmt::Debug for ServiceBusConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBusConfig")
            .field("namespace", &self.namespace)
            .field("topic", &self.topic)
            .field("authorization", &self.authorization)
            .field("subscription", &self.subscription)
            .field("prefetch", &self.prefetch)
            .field("operation_timeout", &self.operation_timeout)
            .field("unauthorized_grace", &self.unauthorized_grace)
            .field("max_lock_renewal", &self.lock_renewal.max_duration())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const CS: &str = "Endpoint=sb://my-ns.servicebus.windows.net/;SharedAccessKeyName=manage;SharedAccessKey=a2V5;EntityPath=keyvault-events";

    #[test]
    fn the_unauthorized_grace_defaults_to_five_minutes_and_can_be_set_for_every_registration() {
        let credential: Arc<dyn TokenCredential> = Arc::new(NoCredential);
        let configs = [
            ServiceBusConfig::connection_string(CS, "app").unwrap(),
            ServiceBusConfig::with_credential("t", "app", "my-ns", credential).unwrap(),
        ];
        for config in configs {
            assert_eq!(config.unauthorized_grace_value(), Duration::from_secs(300));
            let config = config.unauthorized_grace(Duration::from_secs(2));
            assert_eq!(config.unauthorized_grace_value(), Duration::from_secs(2));
            assert!(format!("{config:?}").contains("unauthorized_grace: 2s"));
            assert_eq!(
                config
                    .unauthorized_grace(Duration::ZERO)
                    .unauthorized_grace_value(),
                Duration::ZERO
            );
        }
    }

    #[derive(Debug)]
    struct NoCredential;

    #[async_trait::async_trait]
    impl TokenCredential for NoCredential {
        async fn get_token(
            &self,
            _: &[&str],
            _: Option<azure_core::credentials::TokenRequestOptions<'_>>,
        ) -> azure_core::Result<azure_core::credentials::AccessToken> {
            Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                "not used",
            ))
        }
    }
}
