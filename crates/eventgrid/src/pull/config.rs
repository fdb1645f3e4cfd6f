//! [`PullConfig`]: where to pull from, how to authenticate, and the receive and lock settings,
//! validated once when built.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::http::ClientOptions;
use keyvault_invalidator_core::lock::LockRenewal;
use secrecy::SecretString;
use url::Url;

/// The Entra ID scope of Event Grid data-plane tokens.
pub const EVENT_GRID_SCOPE: &str = "https://eventgrid.azure.net/.default";
/// The data-plane API version this source speaks.
pub const API_VERSION: &str = "2024-06-01";
/// The most events one `:receive` may ask for (the REST spec's `maxEvents` range is 1..=100).
pub const MAX_EVENTS_LIMIT: usize = 100;
/// The range of `maxWaitTime`, the long poll's length, that the REST spec allows (10..=120 s).
pub const MAX_WAIT_TIME_RANGE: (Duration, Duration) =
    (Duration::from_secs(10), Duration::from_secs(120));
/// The lock duration assumed unless told: a subscription's default
/// `receiveLockDurationInSeconds` (Azure allows 60..=300 s).
pub const DEFAULT_LOCK_DURATION: Duration = Duration::from_secs(60);

/// How long an abandoned event waits before it is delivered again: `:release`'s
/// `releaseDelayInSeconds`, which takes only these values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReleaseDelay {
    /// Delivered again at once (0).
    #[default]
    None,
    /// After 10 seconds.
    TenSeconds,
    /// After 60 seconds.
    OneMinute,
    /// After 600 seconds.
    TenMinutes,
    /// After 3600 seconds.
    OneHour,
}

impl ReleaseDelay {
    /// The value of `releaseDelayInSeconds`.
    pub fn seconds(self) -> u32 {
        match self {
            ReleaseDelay::None => 0,
            ReleaseDelay::TenSeconds => 10,
            ReleaseDelay::OneMinute => 60,
            ReleaseDelay::TenMinutes => 600,
            ReleaseDelay::OneHour => 3600,
        }
    }

    /// The delay of `seconds`, if it is one the service takes.
    pub fn from_seconds(seconds: u32) -> Option<Self> {
        [
            ReleaseDelay::None,
            ReleaseDelay::TenSeconds,
            ReleaseDelay::OneMinute,
            ReleaseDelay::TenMinutes,
            ReleaseDelay::OneHour,
        ]
        .into_iter()
        .find(|delay| delay.seconds() == seconds)
    }
}

/// How requests are authorised.
#[derive(Clone)]
#[non_exhaustive]
pub enum PullAuth {
    /// A bearer token for [`EVENT_GRID_SCOPE`] from any Entra ID credential (the identity needs
    /// the **EventGrid Data Receiver** role on the namespace topic or its subscription).
    Credential(Arc<dyn TokenCredential>),
    /// One of the namespace's access keys, sent as `Authorization: SharedAccessKey <key>`.
    AccessKey(SecretString),
}

impl fmt::Debug for PullAuth {
    // The key stays out of Debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PullAuth::Credential(_) => f.write_str("Credential(..)"),
            PullAuth::AccessKey(_) => f.write_str("AccessKey(<redacted>)"),
        }
    }
}

/// What was wrong with a [`PullConfigBuilder`]'s arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Event Grid pull configuration: `{argument}` {message}")]
#[non_exhaustive]
pub struct PullConfigError {
    /// What kind of mistake.
    pub kind: PullConfigErrorKind,
    /// The builder argument at fault (`endpoint`, `max_events`, ...).
    pub argument: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl PullConfigError {
    fn new(kind: PullConfigErrorKind, argument: &'static str, message: impl Into<String>) -> Self {
        PullConfigError {
            kind,
            argument,
            message: message.into(),
        }
    }

    /// Always false: a configuration does not fix itself.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// The kinds of [`PullConfigError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PullConfigErrorKind {
    /// Neither a credential nor an access key was given.
    MissingAuth,
    /// Not a URL, or not a namespace endpoint (a path, a query).
    InvalidEndpoint,
    /// Plain `http://` to a host that is not loopback, without
    /// [`allowing_insecure_endpoint`](PullConfigBuilder::allowing_insecure_endpoint).
    InsecureEndpoint,
    /// A topic or subscription name the service would refuse.
    InvalidName,
    /// A number outside the range the service allows.
    OutOfRange,
}

/// Everything a [`PullSource`](super::PullSource) needs, validated. Built with
/// [`PullConfig::builder`].
///
/// The event subscription must exist (`deliveryMode: Queue`): infrastructure creates it (see
/// `deploy/eventgrid-namespace/main.bicep`), this source never does. Instances that each need
/// every event (each has its own cache) need a subscription each; instances that share one
/// subscription share its events, each event going to one of them.
///
/// ```
/// use std::time::Duration;
/// use keyvault_invalidator_eventgrid::pull::{PullConfig, ReleaseDelay};
///
/// let config = PullConfig::builder(
///     "https://my-namespace.westeurope-1.eventgrid.azure.net",
///     "keyvault-events",
///     "keyvault-invalidator",
/// )
/// .access_key("not-a-real-key")
/// .max_events(20)
/// .max_wait_time(Duration::from_secs(30))
/// .release_delay(ReleaseDelay::TenSeconds)
/// .build()?;
/// assert_eq!(config.max_events(), 20);
/// assert!(!format!("{config:?}").contains("not-a-real-key"));
///
/// let wrong = PullConfig::builder("https://ns.westeurope-1.eventgrid.azure.net", "t", "sub")
///     .access_key("k")
///     .build()
///     .unwrap_err();
/// assert_eq!(wrong.argument, "topic");
/// # Ok::<(), keyvault_invalidator_eventgrid::pull::PullConfigError>(())
/// ```
#[derive(Clone)]
pub struct PullConfig {
    pub(crate) endpoint: Url,
    pub(crate) topic: String,
    pub(crate) subscription: String,
    pub(crate) auth: PullAuth,
    pub(crate) max_events: usize,
    pub(crate) max_wait_time: Duration,
    pub(crate) release_delay: ReleaseDelay,
    pub(crate) lock_duration: Duration,
    pub(crate) lock_renewal: LockRenewal,
    pub(crate) client_options: ClientOptions,
}

impl PullConfig {
    /// A builder for the subscription `subscription` of the namespace topic `topic` at
    /// `endpoint` (`https://{namespace}.{region}-1.eventgrid.azure.net`).
    pub fn builder(
        endpoint: impl Into<String>,
        topic: impl Into<String>,
        subscription: impl Into<String>,
    ) -> PullConfigBuilder {
        PullConfigBuilder {
            endpoint: endpoint.into(),
            topic: topic.into(),
            subscription: subscription.into(),
            auth: None,
            max_events: 10,
            max_wait_time: Duration::from_secs(60),
            release_delay: ReleaseDelay::None,
            lock_duration: DEFAULT_LOCK_DURATION,
            max_lock_renewal: LockRenewal::DEFAULT_MAX_DURATION,
            allow_insecure: false,
            client_options: ClientOptions::default(),
        }
    }

    /// The namespace endpoint.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// The namespace topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The event subscription.
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// The most events one `:receive` asks for.
    pub fn max_events(&self) -> usize {
        self.max_events
    }

    /// How long one `:receive` waits for events.
    pub fn max_wait_time(&self) -> Duration {
        self.max_wait_time
    }

    /// The delay of abandoned events.
    pub fn release_delay(&self) -> ReleaseDelay {
        self.release_delay
    }

    /// The lock duration the source assumes (the subscription's).
    pub fn lock_duration(&self) -> Duration {
        self.lock_duration
    }

    /// How long a delivery's lock is renewed at most.
    pub fn lock_renewal(&self) -> LockRenewal {
        self.lock_renewal
    }
}

impl fmt::Debug for PullConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullConfig")
            .field("endpoint", &self.endpoint.as_str())
            .field("topic", &self.topic)
            .field("subscription", &self.subscription)
            .field("auth", &self.auth)
            .field("max_events", &self.max_events)
            .field("max_wait_time", &self.max_wait_time)
            .field("release_delay", &self.release_delay)
            .field("lock_duration", &self.lock_duration)
            .field("lock_renewal", &self.lock_renewal)
            .finish_non_exhaustive()
    }
}

/// Builds a [`PullConfig`]; [`build`](Self::build) validates.
pub struct PullConfigBuilder {
    endpoint: String,
    topic: String,
    subscription: String,
    auth: Option<PullAuth>,
    max_events: usize,
    max_wait_time: Duration,
    release_delay: ReleaseDelay,
    lock_duration: Duration,
    max_lock_renewal: Duration,
    allow_insecure: bool,
    client_options: ClientOptions,
}

impl PullConfigBuilder {
    /// Authenticates with an Entra ID credential (a managed identity, say): tokens for
    /// [`EVENT_GRID_SCOPE`]. Needs an `https` endpoint.
    pub fn credential(mut self, credential: Arc<dyn TokenCredential>) -> Self {
        self.auth = Some(PullAuth::Credential(credential));
        self
    }

    /// Authenticates with one of the namespace's access keys.
    pub fn access_key(mut self, key: impl Into<String>) -> Self {
        self.auth = Some(PullAuth::AccessKey(SecretString::from(key.into())));
        self
    }

    /// The most events one `:receive` asks for, 1..=100 (default 10). Also the most the source
    /// holds received and not yet handed to the job.
    pub fn max_events(mut self, max_events: usize) -> Self {
        self.max_events = max_events;
        self
    }

    /// How long one `:receive` waits when there is nothing, 10..=120 s in whole seconds
    /// (default 60 s).
    pub fn max_wait_time(mut self, wait: Duration) -> Self {
        self.max_wait_time = wait;
        self
    }

    /// How long an abandoned event waits before it is delivered again (default none).
    pub fn release_delay(mut self, delay: ReleaseDelay) -> Self {
        self.release_delay = delay;
        self
    }

    /// The subscription's `receiveLockDurationInSeconds` (default 60 s). The service's answers
    /// to `:receive` and `:renewLock` do not say when a lock ends, so the source counts from
    /// when the answer arrived; a value shorter than the subscription's only renews earlier.
    /// From 1 s, so a stand-in may use short locks.
    pub fn lock_duration(mut self, lock: Duration) -> Self {
        self.lock_duration = lock;
        self
    }

    /// How long a delivery's lock is renewed at most while the job works on it (default
    /// 5 minutes; zero: never renewed). The service allows renewal up to an hour after the first
    /// receive.
    pub fn max_lock_renewal(mut self, max: Duration) -> Self {
        self.max_lock_renewal = max;
        self
    }

    /// Accepts an `http://` endpoint that is not loopback. Requests (and an access key) then
    /// travel in clear: only for a stand-in on a private network.
    pub fn allowing_insecure_endpoint(mut self) -> Self {
        self.allow_insecure = true;
        self
    }

    /// The azure_core client options: a transport of the application's (a proxy, a stand-in's
    /// certificate), logging. The source sets the retry policy to none itself: it retries with
    /// its own backoff.
    pub fn client_options(mut self, options: ClientOptions) -> Self {
        self.client_options = options;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<PullConfig, PullConfigError> {
        use PullConfigErrorKind as Kind;
        let endpoint = parse_endpoint(&self.endpoint, self.allow_insecure)?;
        validate_name("topic", &self.topic)?;
        validate_name("subscription", &self.subscription)?;
        let auth = self.auth.ok_or_else(|| {
            PullConfigError::new(
                Kind::MissingAuth,
                "credential",
                "is missing: call `credential` (Entra ID) or `access_key`",
            )
        })?;
        if matches!(auth, PullAuth::Credential(_)) && endpoint.scheme() != "https" {
            return Err(PullConfigError::new(
                Kind::InsecureEndpoint,
                "endpoint",
                "must be https to send a bearer token (azure_core refuses tokens over http)",
            ));
        }
        if !(1..=MAX_EVENTS_LIMIT).contains(&self.max_events) {
            return Err(PullConfigError::new(
                Kind::OutOfRange,
                "max_events",
                format!("is {}; it must be 1..={MAX_EVENTS_LIMIT}", self.max_events),
            ));
        }
        let (least, most) = MAX_WAIT_TIME_RANGE;
        if self.max_wait_time < least
            || self.max_wait_time > most
            || self.max_wait_time.subsec_nanos() != 0
        {
            return Err(PullConfigError::new(
                Kind::OutOfRange,
                "max_wait_time",
                format!(
                    "is {:?}; it must be whole seconds, {}..={} s",
                    self.max_wait_time,
                    least.as_secs(),
                    most.as_secs()
                ),
            ));
        }
        if self.lock_duration < Duration::from_secs(1) || self.lock_duration > MAX_LOCK_DURATION {
            return Err(PullConfigError::new(
                Kind::OutOfRange,
                "lock_duration",
                format!(
                    "is {:?}; it must be 1..={} s (the subscription's receiveLockDurationInSeconds, 60..=300 on Azure)",
                    self.lock_duration,
                    MAX_LOCK_DURATION.as_secs()
                ),
            ));
        }
        if self.max_lock_renewal > MAX_LOCK_RENEWAL {
            return Err(PullConfigError::new(
                Kind::OutOfRange,
                "max_lock_renewal",
                format!(
                    "is {:?}; Event Grid renews locks for at most an hour after the first receive",
                    self.max_lock_renewal
                ),
            ));
        }
        Ok(PullConfig {
            endpoint,
            topic: self.topic,
            subscription: self.subscription,
            auth,
            max_events: self.max_events,
            max_wait_time: self.max_wait_time,
            release_delay: self.release_delay,
            lock_duration: self.lock_duration,
            lock_renewal: LockRenewal::new(self.max_lock_renewal),
            client_options: self.client_options,
        })
    }
}

/// The longest receive lock a subscription may have.
const MAX_LOCK_DURATION: Duration = Duration::from_secs(300);
/// Locks can be renewed within an hour of the first receive.
const MAX_LOCK_RENEWAL: Duration = Duration::from_secs(3600);

fn parse_endpoint(endpoint: &str, allow_insecure: bool) -> Result<Url, PullConfigError> {
    use PullConfigErrorKind as Kind;
    let invalid =
        |message: String| PullConfigError::new(Kind::InvalidEndpoint, "endpoint", message);
    let url = Url::parse(endpoint.trim()).map_err(|e| {
        invalid(format!(
            "is not a URL ({e}): expected https://{{namespace}}.{{region}}-1.eventgrid.azure.net"
        ))
    })?;
    let Some(host) = url.host_str() else {
        return Err(invalid("has no host".to_owned()));
    };
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            "must be the namespace's root, without a path or query".to_owned(),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "must not carry credentials; use `access_key`".to_owned(),
        ));
    }
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure || is_loopback(host) => {}
        "http" => {
            return Err(PullConfigError::new(
                Kind::InsecureEndpoint,
                "endpoint",
                format!("is plain http to `{host}`, which is not loopback: use https, or `allowing_insecure_endpoint`"),
            ))
        }
        other => return Err(invalid(format!("has the scheme `{other}`; expected https"))),
    }
    Ok(url)
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Namespace topic and event subscription names: 3-50 letters, digits and `-` (the resource
/// provider's rule), which also keeps them safe to put in a path unescaped.
fn validate_name(argument: &'static str, name: &str) -> Result<(), PullConfigError> {
    let valid = (3..=50).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(PullConfigError::new(
            PullConfigErrorKind::InvalidName,
            argument,
            format!("is `{name}`; it must be 3-50 letters, digits and '-'"),
        ))
    }
}
