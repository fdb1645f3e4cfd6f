//! Where to connect and what to consume.

use std::fmt;
use std::ops::Deref;
use std::time::Duration;

use keyvault_invalidator_core::secrecy::{ExposeSecret, SecretString};
use keyvault_invalidator_core::Backoff;
use rand::Rng;

/// The exchange Key Vault events are published to, by default.
pub const DEFAULT_EXCHANGE: &str = "keyvault-events";
/// The prefix of an instance queue's name unless [`RabbitMqConfig::instance_prefix`] sets one.
pub const DEFAULT_QUEUE_PREFIX: &str = "keyvault-invalidator";
/// The dead-letter exchange (and queue) declared alongside, by default.
pub const DEFAULT_DEAD_LETTER: &str = "keyvault-events.dead-letter";
/// How long an instance queue survives without a consumer: the safety net for crashed instances.
pub const DEFAULT_IDLE_EXPIRY: Duration = Duration::from_secs(30 * 60);
/// How long a settlement waits for the broker, by default: for the publisher confirm of a
/// republish or a dead-letter publish, and for each acknowledgement step.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// What the source consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueMode {
    /// A queue of this instance's own, `{prefix}-{instance id}`, bound to the exchange: every
    /// instance gets its own copy of every event, like a Service Bus subscription per instance.
    /// Durable, with an idle expiry; deleted at graceful shutdown.
    Instance {
        /// The queue name's prefix (the application's name, say).
        prefix: String,
        /// The binding key; `#` takes every event type.
        binding_key: String,
        /// `x-expires`: the broker deletes the queue after this long without a consumer.
        idle_expiry: Duration,
    },
    /// An existing queue declared by infrastructure; instances compete for its messages.
    Existing {
        /// The queue's name.
        queue: String,
    },
}

/// How a [`RabbitMqSource`](crate::RabbitMqSource) connects and what it consumes.
///
/// The URI (with its password) is kept as a [`SecretString`]: it never shows in `Debug`, logs
/// or errors, which print [`redacted_uri`](Self::redacted_uri) instead.
///
/// Plain `amqp://` sends the user name and password in clear (AMQP's PLAIN login), so it is
/// accepted only for a loopback host (`127.0.0.0/8`, `::1`, `localhost`): a broker on the same
/// machine or in a sidecar. Anything else needs `amqps://`, or the application opting in by name
/// with [`new_allowing_insecure_endpoint`](Self::new_allowing_insecure_endpoint) (a private
/// network it trusts, a test broker in a container).
///
/// ```
/// use keyvault_invalidator_rabbitmq::RabbitMqConfig;
///
/// let config = RabbitMqConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")?
///     .instance_prefix("orders-api")?
///     .prefetch(32);
/// assert!(config.queue_name().starts_with("orders-api-"));
/// assert!(!format!("{config:?}").contains("guest:guest"), "credentials never print");
///
/// let shared = RabbitMqConfig::new("amqps://app:pw@rabbit.internal:5671/%2f")?
///     .existing_queue("keyvault-events.orders")?;
/// assert_eq!(shared.queue_name(), "keyvault-events.orders");
///
/// let error = RabbitMqConfig::new("amqp://app:pw@rabbit.internal:5672/%2f").unwrap_err();
/// assert_eq!(error.argument, "uri");
/// assert!(error.to_string().starts_with("invalid RabbitMQ configuration: `uri` uses plain amqp://"));
/// assert!(!error.to_string().contains("pw"));
/// # Ok::<(), keyvault_invalidator_rabbitmq::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct RabbitMqConfig {
    pub(crate) uri: SecretUri,
    redacted_uri: String,
    insecure_endpoint_allowed: bool,
    pub(crate) mode: QueueMode,
    pub(crate) exchange: String,
    pub(crate) dead_letter_exchange: String,
    pub(crate) dead_letter_queue: String,
    pub(crate) declare_topology: bool,
    pub(crate) prefetch: u16,
    pub(crate) instance_id: String,
    pub(crate) reconnect_backoff: Backoff,
    pub(crate) confirm_timeout: Duration,
    pub(crate) fail_releases: bool,
}

/// The full connection URI, password included. Held as a [`SecretString`] (zeroed when dropped,
/// never printed); it dereferences to `str` only so that the crate's connecting code can hand it
/// to lapin, and that is the one place that should read it.
#[derive(Clone)]
pub(crate) struct SecretUri(SecretString);

impl SecretUri {
    /// The URI, password included: for lapin only.
    pub(crate) fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl Deref for SecretUri {
    type Target = str;

    fn deref(&self) -> &str {
        self.expose()
    }
}

impl fmt::Debug for SecretUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(self.expose()))
    }
}

/// A configuration mistake, caught before anything connects. The message names the argument and
/// never repeats the URI's password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid RabbitMQ configuration: `{argument}` {problem}")]
#[non_exhaustive]
pub struct ConfigError {
    /// The argument, as the configuration names it (`uri`, `prefix`, `queue`...).
    pub argument: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    fn new(argument: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            argument,
            problem: problem.into(),
        }
    }
}

impl RabbitMqConfig {
    /// Connect to the broker at `uri` and consume through a queue of this instance's own, named
    /// `{prefix}-{instance id}` with the prefix [`DEFAULT_QUEUE_PREFIX`] unless
    /// [`instance_prefix`](Self::instance_prefix) sets one, or from an
    /// [`existing_queue`](Self::existing_queue). `amqp://` is refused unless the host is
    /// loopback (see the type's docs).
    pub fn new(uri: &str) -> Result<Self, ConfigError> {
        Self::with_uri(uri, false)
    }

    /// [`new`](Self::new), also accepting plain `amqp://` to a host that is not loopback: the
    /// application's explicit choice to send the password unencrypted, over a network it trusts.
    ///
    /// ```
    /// use keyvault_invalidator_rabbitmq::RabbitMqConfig;
    ///
    /// // The broker's service name in docker compose.
    /// let config = RabbitMqConfig::new_allowing_insecure_endpoint("amqp://app:pw@rabbitmq:5672/%2f")?
    ///     .instance_prefix("orders-api")?;
    /// assert!(config.allows_insecure_endpoint());
    /// # Ok::<(), keyvault_invalidator_rabbitmq::ConfigError>(())
    /// ```
    pub fn new_allowing_insecure_endpoint(uri: &str) -> Result<Self, ConfigError> {
        Self::with_uri(uri, true)
    }

    /// Consume through a queue of this instance's own, `{prefix}-{instance id}`, bound to the
    /// exchange (replacing an [`existing_queue`](Self::existing_queue)).
    pub fn instance_prefix(mut self, prefix: &str) -> Result<Self, ConfigError> {
        let prefix = non_blank("prefix", prefix)?.to_owned();
        self.mode = match self.mode {
            QueueMode::Instance {
                binding_key,
                idle_expiry,
                ..
            } => QueueMode::Instance {
                prefix,
                binding_key,
                idle_expiry,
            },
            _ => instance_mode(prefix),
        };
        self.check_queue_name()?;
        Ok(self)
    }

    /// Consume from an existing queue that infrastructure declared; instances compete for its
    /// messages.
    pub fn existing_queue(mut self, queue: &str) -> Result<Self, ConfigError> {
        self.mode = QueueMode::Existing {
            queue: non_blank("queue", queue)?.to_owned(),
        };
        self.check_queue_name()?;
        Ok(self)
    }

    /// Whether the application opted in to plain `amqp://` to a host that is not loopback.
    pub fn allows_insecure_endpoint(&self) -> bool {
        self.insecure_endpoint_allowed
    }

    fn with_uri(uri: &str, allow_insecure: bool) -> Result<Self, ConfigError> {
        let uri = non_blank("uri", uri)?;
        let parsed = url::Url::parse(uri).map_err(|_| {
            ConfigError::new("uri", "is not a URI (expected amqp://... or amqps://...)")
        })?;
        if !matches!(parsed.scheme(), "amqp" | "amqps") {
            return Err(ConfigError::new(
                "uri",
                format!(
                    "has scheme `{}`; expected `amqp` or `amqps`",
                    parsed.scheme()
                ),
            ));
        }
        // lapin's own parser decides what it accepts; ask it now rather than at first connect.
        uri.parse::<lapin::uri::AMQPUri>()
            .map_err(|_| ConfigError::new("uri", "is not a valid AMQP URI"))?;
        if parsed.scheme() == "amqp" && !allow_insecure && !is_loopback(&parsed) {
            return Err(ConfigError::new(
                "uri",
                format!(
                    "uses plain amqp:// to `{}`, which is not a loopback host: the user name and \
                     password would cross the network unencrypted; use amqps://, or opt in with \
                     `RabbitMqConfig::new_allowing_insecure_endpoint`",
                    parsed.host_str().unwrap_or_default()
                ),
            ));
        }
        let instance_id = format!("{:012x}", rand::rng().random::<u64>() & 0xffff_ffff_ffff);
        let config = RabbitMqConfig {
            redacted_uri: redact(uri),
            uri: SecretUri(SecretString::from(uri.to_owned())),
            insecure_endpoint_allowed: allow_insecure,
            mode: instance_mode(DEFAULT_QUEUE_PREFIX.to_owned()),
            exchange: DEFAULT_EXCHANGE.to_owned(),
            dead_letter_exchange: DEFAULT_DEAD_LETTER.to_owned(),
            dead_letter_queue: DEFAULT_DEAD_LETTER.to_owned(),
            declare_topology: true,
            prefetch: 16,
            instance_id,
            reconnect_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
            fail_releases: false,
        };
        config.check_queue_name()?;
        Ok(config)
    }

    /// The exchange events are published to (default `keyvault-events`, a durable topic
    /// exchange; routing key = event type).
    pub fn exchange(mut self, exchange: &str) -> Self {
        self.exchange = exchange.trim().to_owned();
        self
    }

    /// The dead-letter exchange (default [`DEFAULT_DEAD_LETTER`]).
    pub fn dead_letter_exchange(mut self, exchange: &str) -> Self {
        self.dead_letter_exchange = exchange.trim().to_owned();
        self
    }

    /// The dead-letter queue, bound to the dead-letter exchange (default
    /// [`DEFAULT_DEAD_LETTER`]).
    pub fn dead_letter_queue(mut self, queue: &str) -> Self {
        self.dead_letter_queue = queue.trim().to_owned();
        self
    }

    /// Whether to declare the exchanges and queues (default yes; idempotent). Off, the source
    /// only checks that its queue exists.
    pub fn declare_topology(mut self, declare: bool) -> Self {
        self.declare_topology = declare;
        self
    }

    /// How many unacknowledged deliveries the broker sends ahead (default 16).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// The binding key of an instance queue (default `#`, every event type).
    pub fn binding_key(mut self, key: &str) -> Self {
        if let QueueMode::Instance { binding_key, .. } = &mut self.mode {
            *binding_key = key.trim().to_owned();
        }
        self
    }

    /// How long an instance queue outlives its consumer (default 30 minutes).
    pub fn idle_expiry(mut self, expiry: Duration) -> Self {
        if let QueueMode::Instance { idle_expiry, .. } = &mut self.mode {
            *idle_expiry = expiry.max(Duration::from_millis(1));
        }
        self
    }

    /// The instance id used in the queue name and the connection name (default random).
    pub fn instance_id(mut self, id: &str) -> Result<Self, ConfigError> {
        self.instance_id = non_blank("instance id", id)?.to_owned();
        self.check_queue_name()?;
        Ok(self)
    }

    /// The pause between reconnection attempts, by consecutive failures (default 100 ms to
    /// 10 s, with jitter).
    pub fn reconnect_backoff(mut self, backoff: Backoff) -> Self {
        self.reconnect_backoff = backoff;
        self
    }

    /// How long a settlement waits for the broker (default [`DEFAULT_CONFIRM_TIMEOUT`], 30 s):
    /// for the publisher confirm of an abandon's republish or a dead-letter publish, and for
    /// each acknowledgement. A confirm that does not come in time fails the settlement like a
    /// refused one: the delivery is released to the broker (`basic.nack` with requeue) and
    /// comes back. Without a bound, a broker that never answers would hold the delivery, and
    /// its prefetch slot, for as long as the connection lives.
    ///
    /// ```
    /// use std::time::Duration;
    /// use keyvault_invalidator_rabbitmq::RabbitMqConfig;
    ///
    /// let config = RabbitMqConfig::new("amqp://127.0.0.1")?.instance_prefix("orders-api")?
    ///     .confirm_timeout(Duration::from_secs(5));
    /// assert_eq!(config.confirm_timeout_value(), Duration::from_secs(5));
    /// # Ok::<(), keyvault_invalidator_rabbitmq::ConfigError>(())
    /// ```
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        // A zero bound would fail every settlement before the broker could answer.
        self.confirm_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The bound set by [`confirm_timeout`](Self::confirm_timeout).
    pub fn confirm_timeout_value(&self) -> Duration {
        self.confirm_timeout
    }

    /// Test hook, not part of the API: the `basic.nack` that releases a delivery whose
    /// settlement failed is taken as failed without being sent, so that what follows (closing
    /// the delivery's channel) can be tested against a healthy broker, where a nack does not
    /// fail.
    #[doc(hidden)]
    pub fn fail_releases_for_tests(mut self) -> Self {
        self.fail_releases = true;
        self
    }

    /// The queue consumed: the instance queue's full name, or the existing queue.
    pub fn queue_name(&self) -> String {
        match &self.mode {
            QueueMode::Instance { prefix, .. } => format!("{prefix}-{}", self.instance_id),
            QueueMode::Existing { queue } => queue.clone(),
        }
    }

    /// The exchange events are published to.
    pub fn exchange_name(&self) -> &str {
        &self.exchange
    }

    /// The dead-letter exchange.
    pub fn dead_letter_exchange_name(&self) -> &str {
        &self.dead_letter_exchange
    }

    /// The dead-letter queue, where an operator finds dead-lettered messages.
    pub fn dead_letter_queue_name(&self) -> &str {
        &self.dead_letter_queue
    }

    /// The mode.
    pub fn mode(&self) -> &QueueMode {
        &self.mode
    }

    /// The connection name the broker's management UI shows.
    pub fn connection_name(&self) -> String {
        format!("keyvault-invalidator {}", self.instance_id)
    }

    /// The URI without its password, for logs.
    pub fn redacted_uri(&self) -> String {
        self.redacted_uri.clone()
    }

    fn check_queue_name(&self) -> Result<(), ConfigError> {
        // AMQP short strings hold at most 255 bytes.
        if self.queue_name().len() > 255 {
            return Err(ConfigError::new(
                "queue",
                "makes a queue name longer than 255 bytes",
            ));
        }
        Ok(())
    }
}

fn instance_mode(prefix: String) -> QueueMode {
    QueueMode::Instance {
        prefix,
        binding_key: "#".to_owned(),
        idle_expiry: DEFAULT_IDLE_EXPIRY,
    }
}

/// Whether the URI's host is this machine: `127.0.0.0/8`, `::1` or `localhost`. No host at all
/// counts too, since lapin then connects to `localhost`.
fn is_loopback(uri: &url::Url) -> bool {
    match uri.host() {
        None => true,
        // `amqp` is not a scheme the url crate knows, so it keeps IPv4 addresses as names.
        Some(url::Host::Domain(name)) => {
            name.is_empty()
                || name.eq_ignore_ascii_case("localhost")
                || name
                    .parse::<std::net::Ipv4Addr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
    }
}

fn non_blank<'a>(what: &'static str, value: &'a str) -> Result<&'a str, ConfigError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ConfigError::new(what, "must not be blank"));
    }
    Ok(value)
}

fn redact(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        Err(_) => "<unparseable uri>".to_owned(),
    }
}

impl fmt::Debug for RabbitMqConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqConfig")
            .field("uri", &self.uri)
            .field("insecure_endpoint_allowed", &self.insecure_endpoint_allowed)
            .field("mode", &self.mode)
            .field("queue", &self.queue_name())
            .field("exchange", &self.exchange)
            .field("dead_letter_exchange", &self.dead_letter_exchange)
            .field("dead_letter_queue", &self.dead_letter_queue)
            .field("declare_topology", &self.declare_topology)
            .field("prefetch", &self.prefetch)
            .field("confirm_timeout", &self.confirm_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_blank_arguments_and_foreign_schemes_naming_the_argument() {
        let blank = RabbitMqConfig::new("amqp://127.0.0.1")
            .and_then(|c| c.instance_prefix(" "))
            .unwrap_err();
        assert_eq!(
            blank.to_string(),
            "invalid RabbitMQ configuration: `prefix` must not be blank"
        );
        let scheme = RabbitMqConfig::new("http://127.0.0.1")
            .and_then(|c| c.existing_queue("q"))
            .unwrap_err();
        assert_eq!(
            scheme.to_string(),
            "invalid RabbitMQ configuration: `uri` has scheme `http`; expected `amqp` or `amqps`"
        );
        assert!(RabbitMqConfig::new("amqps://host:5671/vh")
            .and_then(|c| c.existing_queue("q"))
            .is_ok());
    }

    #[test]
    fn the_password_never_reaches_debug_output() {
        for uri in [
            "amqp://app:s3cr3t@127.0.0.1:5672/%2f",
            "amqps://app:s3cr3t@broker:5671/%2f",
        ] {
            let config = RabbitMqConfig::new(uri)
                .and_then(|c| c.instance_prefix("api"))
                .unwrap();
            let shown = format!("{config:?} {:?} {}", config.uri, config.redacted_uri());
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(shown.contains("app:***@"), "{shown}");
            // The real URI is still there for lapin.
            assert_eq!(config.uri.expose(), uri);
        }
        let error = RabbitMqConfig::new("amqp://app:s3cr3t@broker:5672/%2f")
            .and_then(|c| c.instance_prefix("api"))
            .unwrap_err();
        assert!(!format!("{error} {error:?}").contains("s3cr3t"));
    }

    #[test]
    fn plain_amqp_to_a_remote_host_is_refused_naming_the_argument_and_why() {
        let error = RabbitMqConfig::new("amqp://app:pw@broker.internal:5672/%2f")
            .and_then(|c| c.instance_prefix("api"))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid RabbitMQ configuration: `uri` uses plain amqp:// to `broker.internal`, which \
             is not a loopback host: the user name and password would cross the network \
             unencrypted; use amqps://, or opt in with \
             `RabbitMqConfig::new_allowing_insecure_endpoint`"
        );
        for remote in [
            "amqp://10.0.0.5",
            "amqp://[2001:db8::1]:5672",
            "amqp://128.0.0.1",
        ] {
            let error = RabbitMqConfig::new(remote)
                .and_then(|c| c.existing_queue("q"))
                .unwrap_err();
            assert!(
                error
                    .to_string()
                    .starts_with("invalid RabbitMQ configuration: `uri` uses plain amqp://"),
                "{remote}: {error}"
            );
        }
    }

    #[test]
    fn plain_amqp_is_accepted_on_loopback_with_tls_or_with_the_opt_in() {
        for local in [
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "amqp://127.255.0.9",
            "amqp://[::1]:5672",
            "amqp://LOCALHOST:5672/%2f",
            "amqps://broker.internal:5671/%2f",
        ] {
            let config = RabbitMqConfig::new(local)
                .and_then(|c| c.instance_prefix("api"))
                .unwrap();
            assert!(!config.allows_insecure_endpoint(), "{local}");
        }
        let config = RabbitMqConfig::new_allowing_insecure_endpoint(
            "amqp://app:pw@broker.internal:5672/%2f",
        )
        .and_then(|c| c.instance_prefix("api"))
        .unwrap();
        assert!(config.allows_insecure_endpoint());
        assert_eq!(
            config.redacted_uri(),
            "amqp://app:***@broker.internal:5672/%2f"
        );
        let config = RabbitMqConfig::new_allowing_insecure_endpoint("amqp://10.0.0.5")
            .and_then(|c| c.existing_queue("q"))
            .unwrap();
        assert_eq!(config.queue_name(), "q");
        // The opt-in does not relax the other checks.
        let error = RabbitMqConfig::new_allowing_insecure_endpoint("amqp://10.0.0.5")
            .and_then(|c| c.instance_prefix(" "))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid RabbitMQ configuration: `prefix` must not be blank"
        );
    }

    #[test]
    fn instance_queues_are_named_prefix_dash_instance_id() {
        let config = RabbitMqConfig::new("amqp://localhost")
            .and_then(|c| c.instance_prefix("api"))
            .unwrap()
            .instance_id("i-7")
            .unwrap();
        assert_eq!(config.queue_name(), "api-i-7");
        assert_eq!(config.connection_name(), "keyvault-invalidator i-7");
    }

    #[test]
    fn settlements_wait_thirty_seconds_for_the_broker_unless_configured() {
        let config = RabbitMqConfig::new("amqp://localhost")
            .and_then(|c| c.instance_prefix("api"))
            .unwrap();
        assert_eq!(config.confirm_timeout_value(), Duration::from_secs(30));
        let config = config.confirm_timeout(Duration::ZERO);
        assert_eq!(config.confirm_timeout_value(), Duration::from_millis(1));
    }
}
