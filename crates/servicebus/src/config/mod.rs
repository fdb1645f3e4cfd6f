//! The two registrations of the original library, with their argument checks.

use std::fmt;
use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use keyvault_invalidator_core::lock::LockRenewal;
use keyvault_invalidator_core::SecretProvider;
use keyvault_invalidator_secrets::credential;

mod registration;
#[cfg(test)]
mod tests;

pub use registration::{Authorization, ManagedIdentity, SubscriptionMode};

use crate::connection_string::ConnectionString;
use crate::error::{non_blank, ConfigError};
use crate::management::SubscriptionProperties;
use crate::names::{
    check_subscription_name, check_subscription_prefix, check_topic, fully_qualified_namespace,
};

/// Everything a Service Bus source needs; built by one of the registrations, which check their
/// arguments and name the one that is wrong.
///
/// ```
/// use keyvault_invalidator_servicebus::ServiceBusConfig;
///
/// let config = ServiceBusConfig::connection_string(
///     "Endpoint=sb://my-ns.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=a2V5;EntityPath=keyvault-events",
/// )?
/// .subscription_prefix("orders-api")?;
/// assert_eq!(config.topic_name(), Some("keyvault-events"));
/// assert_eq!(config.namespace(), Some("my-ns.servicebus.windows.net"));
///
/// let config = ServiceBusConfig::connection_string("Endpoint=sb://ns/;SharedAccessKeyName=l;SharedAccessKey=k")?;
/// let error = config.subscription_prefix(" ").unwrap_err();
/// assert_eq!(error.argument, "subscription name prefix");
/// # Ok::<(), keyvault_invalidator_servicebus::ConfigError>(())
/// ```
///
/// # Plain-text endpoints
///
/// An `http://` management endpoint, an `amqp://` AMQP endpoint and an emulator connection
/// string (`UseDevelopmentEmulator=true`, plain AMQP and HTTP) send the shared access key's
/// tokens unencrypted, so they are accepted only for a loopback host (`127.0.0.0/8`, `::1`,
/// `localhost`), where the emulator normally runs. For another host (an emulator in a
/// container network, say) the application opts in by name: with
/// [`allow_insecure_endpoint`](Self::allow_insecure_endpoint) before the endpoint settings, or
/// [`connection_string_allowing_insecure_endpoint`](Self::connection_string_allowing_insecure_endpoint)
/// for an emulator connection string. Otherwise the setting is refused here, naming it.
///
/// ```
/// use keyvault_invalidator_servicebus::ServiceBusConfig;
///
/// const CS: &str = "Endpoint=sb://my-ns.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=a2V5;EntityPath=t";
/// let error = ServiceBusConfig::connection_string(CS)?.subscription_prefix("app")?
///     .management_endpoint("http://10.1.2.3:5300/")
///     .unwrap_err();
/// assert_eq!(error.argument, "management endpoint");
///
/// let config = ServiceBusConfig::connection_string(CS)?.subscription_prefix("app")?
///     .allow_insecure_endpoint()
///     .management_endpoint("http://10.1.2.3:5300/")?;
/// assert_eq!(config.management_endpoint_override(), Some("http://10.1.2.3:5300/"));
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
    insecure_endpoint_allowed: bool,
}

impl ServiceBusConfig {
    /// The managed-identity registration: the namespace (`.servicebus.windows.net` is added when
    /// missing) and the identity. Name the topic with [`topic`](Self::topic); the subscription
    /// is per instance, named `{prefix}-{unique}`, with the prefix
    /// [`DEFAULT_SUBSCRIPTION_PREFIX`] unless [`subscription_prefix`](Self::subscription_prefix)
    /// sets one.
    ///
    /// ```
    /// use keyvault_invalidator_servicebus::{ManagedIdentity, ServiceBusConfig};
    ///
    /// let config = ServiceBusConfig::managed_identity("my-ns", ManagedIdentity::SystemAssigned)?
    ///     .topic("keyvault-events")?
    ///     .subscription_prefix("orders-api")?;
    /// assert_eq!(config.namespace(), Some("my-ns.servicebus.windows.net"));
    /// assert_eq!(config.topic_name(), Some("keyvault-events"));
    /// # Ok::<(), keyvault_invalidator_servicebus::ConfigError>(())
    /// ```
    pub fn managed_identity(
        namespace: &str,
        identity: ManagedIdentity,
    ) -> Result<Self, ConfigError> {
        let credential = match &identity {
            ManagedIdentity::SystemAssigned => credential::managed_identity(),
            ManagedIdentity::UserAssigned { client_id } => {
                non_blank("client id", client_id)?;
                credential::user_assigned_managed_identity(client_id.trim())
            }
        }
        .map_err(|e| ConfigError::new("client id", e.to_string()))?;
        Self::with_credential(namespace, credential)
    }

    /// The same with any `azure_identity` credential (workload identity, developer tools...).
    pub fn with_credential(
        namespace: &str,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<Self, ConfigError> {
        Ok(Self::with_authorization(
            Some(fully_qualified_namespace(namespace)?),
            None,
            Authorization::Credential(credential),
        ))
    }

    /// The connection-string registration with the string itself. The topic comes from its
    /// `EntityPath`, or from [`topic`](Self::topic). An emulator string
    /// (`UseDevelopmentEmulator=true`) is refused unless its host is loopback: see
    /// [plain-text endpoints](Self#plain-text-endpoints).
    ///
    /// ```
    /// use keyvault_invalidator_servicebus::ServiceBusConfig;
    ///
    /// let emulator = "Endpoint=sb://servicebus-emulator;SharedAccessKeyName=k;SharedAccessKey=a2V5;UseDevelopmentEmulator=true;EntityPath=t";
    /// let error = ServiceBusConfig::connection_string(emulator).unwrap_err();
    /// assert_eq!(error.argument, "connection string");
    /// ```
    pub fn connection_string(connection_string: &str) -> Result<Self, ConfigError> {
        Self::connection_string_with(connection_string, false)
    }

    /// [`connection_string`](Self::connection_string), also accepting an emulator string whose
    /// host is not loopback, and with [`allow_insecure_endpoint`](Self::allow_insecure_endpoint)
    /// already on: the application's explicit choice of plain text over a network it trusts.
    ///
    /// ```
    /// use keyvault_invalidator_servicebus::ServiceBusConfig;
    ///
    /// let emulator = "Endpoint=sb://servicebus-emulator;SharedAccessKeyName=k;SharedAccessKey=a2V5;UseDevelopmentEmulator=true;EntityPath=t";
    /// let config = ServiceBusConfig::connection_string_allowing_insecure_endpoint(emulator)?;
    /// assert!(config.allows_insecure_endpoint());
    /// # Ok::<(), keyvault_invalidator_servicebus::ConfigError>(())
    /// ```
    pub fn connection_string_allowing_insecure_endpoint(
        connection_string: &str,
    ) -> Result<Self, ConfigError> {
        Self::connection_string_with(connection_string, true)
    }

    fn connection_string_with(
        connection_string: &str,
        allow_insecure: bool,
    ) -> Result<Self, ConfigError> {
        let parsed: ConnectionString =
            non_blank("connection string", connection_string)?.parse()?;
        if !allow_insecure {
            check_emulator_host(&parsed)?;
        }
        let mut config = Self::with_authorization(
            Some(parsed.namespace().to_owned()),
            parsed.entity_path().map(str::to_owned),
            Authorization::ConnectionString(parsed),
        );
        config.insecure_endpoint_allowed = allow_insecure;
        Ok(config)
    }

    /// The connection-string registration of the original: the string is read at start from
    /// `provider` (the secret store) under `secret_key`, and again at every reconnection, so
    /// after a rotation the refusals end as soon as the store holds the new string.
    pub fn connection_string_from_store(
        provider: impl SecretProvider + 'static,
        secret_key: &str,
    ) -> Result<Self, ConfigError> {
        let key = non_blank("secret key", secret_key)?.to_owned();
        Ok(Self::with_authorization(
            None,
            None,
            Authorization::ConnectionStringFromStore {
                provider: Arc::new(provider),
                key,
            },
        ))
    }

    fn with_authorization(
        namespace: Option<String>,
        topic: Option<String>,
        authorization: Authorization,
    ) -> Self {
        ServiceBusConfig {
            namespace,
            topic,
            authorization,
            subscription: automatic(DEFAULT_SUBSCRIPTION_PREFIX.to_owned()),
            prefetch: DEFAULT_PREFETCH,
            management_endpoint: None,
            amqp_endpoint: None,
            sas_token_lifetime: DEFAULT_SAS_TOKEN_LIFETIME,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            unauthorized_grace: DEFAULT_UNAUTHORIZED_GRACE,
            lock_renewal: LockRenewal::default(),
            insecure_endpoint_allowed: false,
        }
    }

    /// Creates a subscription of this instance's own, named `{prefix}-{unique}` (the default,
    /// with [`DEFAULT_SUBSCRIPTION_PREFIX`]); the application's name is a good prefix, as it
    /// tells the instances' subscriptions apart in the portal. Replaces an
    /// [`existing_subscription`](Self::existing_subscription).
    pub fn subscription_prefix(mut self, prefix: &str) -> Result<Self, ConfigError> {
        let prefix = check_subscription_prefix(prefix)?.to_owned();
        self.subscription = match self.subscription {
            SubscriptionMode::Automatic { properties, .. } => {
                SubscriptionMode::Automatic { prefix, properties }
            }
            _ => automatic(prefix),
        };
        Ok(self)
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
    /// )?
    /// .subscription_prefix("app")?
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

    /// Opts in to plain-text endpoints on hosts that are not loopback: an `http://`
    /// [`management_endpoint`](Self::management_endpoint), an `amqp://`
    /// [`amqp_endpoint`](Self::amqp_endpoint), and an emulator connection string read from the
    /// store by [`connection_string_from_store`](Self::connection_string_from_store). Call it
    /// before those settings: each is checked when it is given.
    pub fn allow_insecure_endpoint(mut self) -> Self {
        self.insecure_endpoint_allowed = true;
        self
    }

    /// Whether the application opted in to plain-text endpoints on hosts that are not loopback.
    pub fn allows_insecure_endpoint(&self) -> bool {
        self.insecure_endpoint_allowed
    }

    /// Where the management REST API is, when not `https://{namespace}/` (an emulator's own
    /// HTTP port, say). `http://` is refused unless the host is loopback or
    /// [`allow_insecure_endpoint`](Self::allow_insecure_endpoint) was called before.
    pub fn management_endpoint(mut self, endpoint: &str) -> Result<Self, ConfigError> {
        const ARG: &str = "management endpoint";
        let endpoint = non_blank(ARG, endpoint)?;
        let url = url::Url::parse(endpoint)
            .ok()
            .filter(|url| matches!(url.scheme(), "https" | "http") && url.host_str().is_some())
            .ok_or_else(|| ConfigError::new(ARG, "must be an http(s) URL"))?;
        if url.scheme() == "http" {
            self.check_plain_text(ARG, &url)?;
        }
        self.management_endpoint = Some(endpoint.to_owned());
        Ok(self)
    }

    /// Where to connect over AMQP, when not `amqps://{namespace}:5671`: `amqp://host:port` is
    /// plain AMQP (an emulator), `amqps://host:port` TLS on another port. `amqp://` is refused
    /// unless the host is loopback or [`allow_insecure_endpoint`](Self::allow_insecure_endpoint)
    /// was called before.
    pub fn amqp_endpoint(mut self, endpoint: &str) -> Result<Self, ConfigError> {
        const ARG: &str = "amqp endpoint";
        let endpoint = non_blank(ARG, endpoint)?;
        let url = url::Url::parse(endpoint)
            .map_err(|_| ConfigError::new(ARG, "must be an amqp:// or amqps:// URL"))?;
        if !matches!(url.scheme(), "amqp" | "amqps") || url.host_str().is_none() {
            return Err(ConfigError::new(
                ARG,
                "must be an amqp:// or amqps:// URL with a host",
            ));
        }
        if url.scheme() == "amqp" {
            self.check_plain_text(ARG, &url)?;
        }
        self.amqp_endpoint = Some(endpoint.trim_end_matches('/').to_owned());
        Ok(self)
    }

    fn check_plain_text(&self, argument: &'static str, url: &url::Url) -> Result<(), ConfigError> {
        let host = url.host_str().unwrap_or_default();
        if self.insecure_endpoint_allowed || is_loopback_host(host) {
            return Ok(());
        }
        Err(ConfigError::new(
            argument,
            format!(
                "`{}://` to `{host}`, which is not a loopback host, would send the tokens \
                 unencrypted; use `{}://`, or call `ServiceBusConfig::allow_insecure_endpoint` \
                 first",
                url.scheme(),
                if url.scheme() == "http" {
                    "https"
                } else {
                    "amqps"
                },
            ),
        ))
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
    /// )?
    /// .subscription_prefix("orders-api")?
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
    /// )?
    /// .subscription_prefix("orders-api")?;
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

/// The prefix of a per-instance subscription's name unless
/// [`ServiceBusConfig::subscription_prefix`] sets one.
pub const DEFAULT_SUBSCRIPTION_PREFIX: &str = "keyvault-invalidator";

/// Small: a prefetched message's lock runs while it waits.
const DEFAULT_PREFETCH: u32 = 4;

/// Whether `host` is this machine: `127.0.0.0/8`, `::1` (bracketed or not) or `localhost`.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An emulator connection string (plain AMQP and HTTP) is accepted only for a loopback host.
pub(crate) fn check_emulator_host(cs: &ConnectionString) -> Result<(), ConfigError> {
    if !cs.is_development_emulator() || is_loopback_host(cs.namespace()) {
        return Ok(());
    }
    Err(ConfigError::new(
        "connection string",
        format!(
            "`UseDevelopmentEmulator=true` with `{}`, which is not a loopback host, would send \
             the tokens unencrypted; use the emulator on 127.0.0.1, or opt in with \
             `ServiceBusConfig::connection_string_allowing_insecure_endpoint`",
            cs.namespace()
        ),
    ))
}

fn automatic(prefix: String) -> SubscriptionMode {
    SubscriptionMode::Automatic {
        prefix,
        properties: SubscriptionProperties::default(),
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
            .field("insecure_endpoint_allowed", &self.insecure_endpoint_allowed)
            .finish()
    }
}
