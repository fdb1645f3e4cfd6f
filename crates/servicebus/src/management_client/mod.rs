//! Creating and deleting the per-instance subscription through the management REST API, and
//! the policy that keeps it in place while Azure is still getting ready (a managed identity
//! endpoint not up yet, a role assignment still propagating, a throttled or busy service).

mod error;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use azure_core::credentials::TokenCredential;
use keyvault_invalidator_core::SourceError;
#[cfg(test)]
use keyvault_invalidator_core::SourceErrorKind;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use crate::connection_string::SharedAccess;
use crate::management::{SubscriptionProperties, API_VERSION};
use crate::sas::sas_token;

pub(crate) use error::is_management_error;
#[cfg(test)]
use error::parse_retry_after;
use error::{credential_failure, status_error, transport_error, Doing};
pub use error::{ManagementError, ManagementFailure};

/// The Entra ID scope Service Bus tokens are issued for.
pub const SERVICE_BUS_SCOPE: &str = "https://servicebus.azure.net/.default";
/// How long the shared access signatures this client signs are valid: one request's worth.
const SAS_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// A management call that takes longer has hung.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `Retry-After` taken as given; a longer one (or a date far ahead) is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10 * 60);
/// What the identity needs to create and delete subscriptions, as error messages name it.
const MANAGE_RIGHTS: &str = "the identity needs the Azure Service Bus Data Owner role on the namespace or topic (a connection string needs a shared access policy with Manage rights)";

/// How management requests are authorised.
#[derive(Clone)]
#[non_exhaustive]
pub enum ManagementAuth {
    /// Signed with a shared access policy's key, or a ready-made signature.
    SharedAccess(SharedAccess),
    /// A bearer token from an Entra ID credential.
    Credential(Arc<dyn TokenCredential>),
}

/// What creating a subscription found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Creation {
    /// It was created (201).
    Created,
    /// It existed already (409). Whose it is depends on the name: the source's generated names
    /// end in a random suffix, so for one of those it is the source's own (an earlier `PUT`
    /// whose answer was lost), and the source owns and deletes it as if it had been created.
    AlreadyExisted,
}

/// What deleting a subscription found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Deletion {
    /// It was deleted (200).
    Deleted,
    /// It was already gone (404).
    WasAbsent,
}

/// A client of `https://{namespace}/{topic}/subscriptions/{name}`.
///
/// Creating and deleting needs Manage rights: a shared access policy with Manage, or the Azure
/// Service Bus Data Owner role for an Entra ID identity. One request per call: retrying is the
/// caller's decision, made on [`ManagementError`]'s type.
#[derive(Clone)]
pub struct ManagementClient {
    http: reqwest::Client,
    endpoint: String,
    auth: ManagementAuth,
}

impl ManagementClient {
    /// A client of the management endpoint at `endpoint` (`https://{namespace}/`, or the
    /// emulator's `http://127.0.0.1:{port}/`).
    pub fn new(endpoint: &str, auth: ManagementAuth) -> Result<Self, ManagementError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| {
                ManagementError::new(
                    ManagementFailure::InvalidRequest,
                    "cannot build the HTTP client for the management API".to_owned(),
                )
                .with_source(e)
            })?;
        let mut endpoint = endpoint.trim().to_owned();
        if !endpoint.ends_with('/') {
            endpoint.push('/');
        }
        Ok(ManagementClient {
            http,
            endpoint,
            auth,
        })
    }

    /// `PUT`s the subscription with `properties`.
    pub async fn create_subscription(
        &self,
        topic: &str,
        name: &str,
        properties: &SubscriptionProperties,
    ) -> Result<Creation, ManagementError> {
        let doing = Doing::Creating { topic, name };
        let entity = self.entity(topic, name);
        let authorization = self.authorization(&entity, doing).await?;
        let response = self
            .http
            .put(format!("{entity}?api-version={API_VERSION}"))
            .header("Authorization", authorization.expose_secret())
            .header(
                "Content-Type",
                "application/atom+xml;type=entry;charset=utf-8",
            )
            .body(properties.to_atom_entry())
            .send()
            .await
            .map_err(|e| transport_error(doing, e))?;
        match response.status().as_u16() {
            200 | 201 => Ok(Creation::Created),
            409 => Ok(Creation::AlreadyExisted),
            _ => Err(status_error(doing, &response)),
        }
    }

    /// `DELETE`s the subscription.
    pub async fn delete_subscription(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<Deletion, ManagementError> {
        let doing = Doing::Deleting { topic, name };
        let entity = self.entity(topic, name);
        let authorization = self.authorization(&entity, doing).await?;
        let response = self
            .http
            .delete(format!("{entity}?api-version={API_VERSION}"))
            .header("Authorization", authorization.expose_secret())
            .send()
            .await
            .map_err(|e| transport_error(doing, e))?;
        match response.status().as_u16() {
            200 | 204 => Ok(Deletion::Deleted),
            404 => Ok(Deletion::WasAbsent),
            _ => Err(status_error(doing, &response)),
        }
    }

    fn entity(&self, topic: &str, name: &str) -> String {
        format!("{}{topic}/subscriptions/{name}", self.endpoint)
    }

    /// Signed over the URL without its query, as the service checks it.
    async fn authorization(
        &self,
        entity: &str,
        doing: Doing<'_>,
    ) -> Result<SecretString, ManagementError> {
        match &self.auth {
            ManagementAuth::SharedAccess(SharedAccess::Key { name, key }) => {
                let expiry = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
                    + SAS_LIFETIME.as_secs();
                Ok(sas_token(entity, name, key, expiry))
            }
            ManagementAuth::SharedAccess(SharedAccess::Signature(signature)) => {
                Ok(signature.clone())
            }
            ManagementAuth::Credential(credential) => {
                let token = credential
                    .get_token(&[SERVICE_BUS_SCOPE], None)
                    .await
                    .map_err(|e| {
                        // Every kind is transient: at pod start the managed identity endpoint
                        // (or a user-assigned identity's binding) is not ready yet, and that
                        // shows up as a credential, connection, IO or HTTP error alike.
                        ManagementError::new(
                            ManagementFailure::Credential,
                            format!(
                                "{doing}: the credential could not get a Service Bus token ({})",
                                credential_failure(e.kind())
                            ),
                        )
                        .with_source(e)
                    })?;
                Ok(SecretString::from(format!(
                    "Bearer {}",
                    token.token.secret()
                )))
            }
        }
    }
}

impl fmt::Debug for ManagementClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagementClient")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Keeps the per-instance subscription in place across the source's connection attempts:
/// whether the next attempt must `PUT` it, and how long the service has been refusing to let
/// this identity create it.
///
/// Transient failures (no token yet, no answer, 408, 429 with its `Retry-After`, 5xx) come
/// back as transient errors and the source's reconnect backoff retries them. Refusals (401,
/// 403) are transient while the [grace](crate::ServiceBusConfig::unauthorized_grace) lasts,
/// each logged at warn with the count and the time left, then fatal, naming the role needed.
#[derive(Debug)]
pub(crate) struct SubscriptionUpkeep {
    needs_put: AtomicBool,
    refusals: Mutex<RefusalGrace>,
}

impl SubscriptionUpkeep {
    /// Nothing created yet; refusals retried for `grace`.
    pub(crate) fn new(grace: Duration) -> Self {
        SubscriptionUpkeep {
            needs_put: AtomicBool::new(true),
            refusals: Mutex::new(RefusalGrace::new(grace)),
        }
    }

    /// Whether the next connection attempt must `PUT` the subscription.
    pub(crate) fn needs_put(&self) -> bool {
        self.needs_put.load(Ordering::SeqCst)
    }

    /// The subscription may be gone (the receiver's attach found no such entity:
    /// `AutoDeleteOnIdle` removed it during a long outage): the next connection attempt `PUT`s
    /// it again. Has no effect in existing-subscription mode, which never creates one.
    pub(crate) fn subscription_may_be_gone(&self) {
        self.needs_put.store(true, Ordering::SeqCst);
    }

    /// `PUT`s the subscription. On success (201, or 409: the caller's name is its own) the
    /// next attempts do not `PUT` again until [`subscription_may_be_gone`](Self::subscription_may_be_gone).
    pub(crate) async fn put(
        &self,
        client: &ManagementClient,
        topic: &str,
        name: &str,
        properties: &SubscriptionProperties,
    ) -> Result<Creation, SourceError> {
        match client.create_subscription(topic, name, properties).await {
            Ok(creation) => {
                self.lock().succeeded();
                self.needs_put.store(false, Ordering::SeqCst);
                Ok(creation)
            }
            Err(error) if error.is_refused() => {
                let verdict = self.lock().refused(Instant::now());
                Err(refusal(error, verdict, topic, name))
            }
            Err(error) => Err(error.into()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RefusalGrace> {
        self.refusals.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn refusal(error: ManagementError, verdict: Verdict, topic: &str, name: &str) -> SourceError {
    let status = error.status().unwrap_or_default();
    match verdict {
        Verdict::Retry { count, left } => {
            tracing::warn!(
                topic,
                subscription = name,
                status,
                count,
                seconds_left = left.as_secs_f64(),
                "Service Bus refused to create the subscription; retrying while a new role assignment may still be propagating ({MANAGE_RIGHTS})"
            );
            SourceError::transient(format!(
                "{error} (refusal {count}; retried for {:.0} s more)",
                left.as_secs_f64()
            ))
            .with_source(error)
        }
        Verdict::GiveUp {
            count,
            refused_for,
            grace,
        } => SourceError::fatal(format!(
            "Service Bus refused to create subscription `{name}` of topic `{topic}` (HTTP {status}, {count} {} in {:.0} s), past the grace of {:.0} s for a role assignment to propagate: {MANAGE_RIGHTS}",
            if count == 1 { "time" } else { "times" },
            refused_for.as_secs_f64(),
            grace.as_secs_f64(),
        ))
        .with_source(error),
    }
}

/// The run of refusals under way: since when, how many, and how long it may last.
#[derive(Debug, Clone)]
pub(crate) struct RefusalGrace {
    grace: Duration,
    run: Option<(Instant, u32)>,
}

/// What one more refusal means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Still within the grace: retry.
    Retry {
        /// Refusals in this run, this one included.
        count: u32,
        /// How much of the grace is left.
        left: Duration,
    },
    /// The grace is over: give up.
    GiveUp {
        /// Refusals in this run, this one included.
        count: u32,
        /// Since the first refusal of the run.
        refused_for: Duration,
        /// The grace it exceeded.
        grace: Duration,
    },
}

impl RefusalGrace {
    pub(crate) fn new(grace: Duration) -> Self {
        RefusalGrace { grace, run: None }
    }

    /// Counts a refusal at `now`; the run starts at its first refusal.
    pub(crate) fn refused(&mut self, now: Instant) -> Verdict {
        let (since, count) = self.run.get_or_insert((now, 0));
        *count += 1;
        let refused_for = now.saturating_duration_since(*since);
        if refused_for >= self.grace {
            Verdict::GiveUp {
                count: *count,
                refused_for,
                grace: self.grace,
            }
        } else {
            Verdict::Retry {
                count: *count,
                left: self.grace - refused_for,
            }
        }
    }

    /// A success ends the run.
    pub(crate) fn succeeded(&mut self) {
        self.run = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_retried_until_the_grace_has_passed_since_the_first_one() {
        let start = Instant::now();
        let mut grace = RefusalGrace::new(Duration::from_secs(2));
        assert_eq!(
            grace.refused(start),
            Verdict::Retry {
                count: 1,
                left: Duration::from_secs(2)
            }
        );
        assert_eq!(
            grace.refused(start + Duration::from_millis(1500)),
            Verdict::Retry {
                count: 2,
                left: Duration::from_millis(500)
            }
        );
        assert_eq!(
            grace.refused(start + Duration::from_secs(2)),
            Verdict::GiveUp {
                count: 3,
                refused_for: Duration::from_secs(2),
                grace: Duration::from_secs(2)
            }
        );
    }

    #[test]
    fn a_success_starts_the_grace_over() {
        let start = Instant::now();
        let mut grace = RefusalGrace::new(Duration::from_secs(2));
        grace.refused(start);
        grace.succeeded();
        assert_eq!(
            grace.refused(start + Duration::from_secs(10)),
            Verdict::Retry {
                count: 1,
                left: Duration::from_secs(2)
            }
        );
    }

    #[test]
    fn no_grace_gives_up_at_the_first_refusal() {
        let mut grace = RefusalGrace::new(Duration::ZERO);
        assert!(matches!(
            grace.refused(Instant::now()),
            Verdict::GiveUp { count: 1, .. }
        ));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        // Sun, 06 Nov 1994 08:49:37 GMT
        let date = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let now = date - Duration::from_secs(7);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after(
                "Sun, 06 Nov 1994 08:49:37 GMT",
                date + Duration::from_secs(60)
            ),
            Some(Duration::ZERO),
            "a date already past is no delay"
        );
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn errors_convert_by_type_and_keep_the_delay_and_the_source() {
        let mut throttled = ManagementError::new(
            ManagementFailure::Status(429),
            "creating subscription `a` of topic `t`: HTTP 429, throttled".to_owned(),
        );
        throttled.retry_after = Some(Duration::from_secs(2));
        assert!(throttled.is_transient() && !throttled.is_refused());
        let converted = SourceError::from(throttled);
        assert_eq!(converted.kind, SourceErrorKind::Transient);
        assert_eq!(converted.retry_after, Some(Duration::from_secs(2)));
        assert!(is_management_error(&converted));

        for (failure, transient) in [
            (ManagementFailure::Credential, true),
            (ManagementFailure::Network, true),
            (ManagementFailure::InvalidRequest, false),
            (ManagementFailure::Status(408), true),
            (ManagementFailure::Status(500), true),
            (ManagementFailure::Status(503), true),
            (ManagementFailure::Status(400), false),
            (ManagementFailure::Status(401), false),
            (ManagementFailure::Status(403), false),
            (ManagementFailure::Status(404), false),
        ] {
            let error = ManagementError::new(failure, "x".to_owned());
            assert_eq!(error.is_transient(), transient, "{failure:?}");
            let kind = SourceError::from(error).kind;
            assert_eq!(kind == SourceErrorKind::Transient, transient, "{failure:?}");
        }
        assert!(!is_management_error(&SourceError::transient("amqp")));
    }

    mod against_the_emulator {
        use keyvault_invalidator_testkit::servicebus_emulator::{
            ManagementFault, ServiceBusEmulator, POLICY_NAME,
        };

        use super::*;

        async fn setup() -> (ServiceBusEmulator, ManagementClient) {
            let emulator = ServiceBusEmulator::start().await.unwrap();
            emulator.create_topic("t");
            let access = SharedAccess::Key {
                name: POLICY_NAME.to_owned(),
                key: SecretString::from(emulator.policy_key()),
            };
            let client = ManagementClient::new(
                emulator.management_endpoint(),
                ManagementAuth::SharedAccess(access),
            )
            .unwrap();
            (emulator, client)
        }

        #[tokio::test]
        async fn a_subscription_that_may_be_gone_is_put_again_and_a_conflict_settles_it() {
            let (emulator, client) = setup().await;
            let properties = SubscriptionProperties::default();
            let upkeep = SubscriptionUpkeep::new(Duration::from_secs(60));
            assert!(upkeep.needs_put());
            let created = upkeep.put(&client, "t", "app-1", &properties).await;
            assert_eq!(created.unwrap(), Creation::Created);
            assert!(!upkeep.needs_put());

            // AutoDeleteOnIdle removed it during an outage; the receiver's attach found it gone.
            assert!(emulator.delete_subscription("t", "app-1"));
            upkeep.subscription_may_be_gone();
            assert!(upkeep.needs_put());
            let created = upkeep.put(&client, "t", "app-1", &properties).await;
            assert_eq!(created.unwrap(), Creation::Created);
            assert_eq!(emulator.subscriptions("t"), vec!["app-1"]);

            // A false alarm: it is there, the 409 settles it as well.
            upkeep.subscription_may_be_gone();
            let existed = upkeep.put(&client, "t", "app-1", &properties).await;
            assert_eq!(existed.unwrap(), Creation::AlreadyExisted);
            assert!(!upkeep.needs_put());
            assert_eq!(emulator.management_request_count("PUT"), 3);
        }

        #[tokio::test]
        async fn a_refusal_within_the_grace_is_transient_and_past_it_fatal_naming_the_role() {
            let (emulator, client) = setup().await;
            let properties = SubscriptionProperties::default();
            let upkeep = SubscriptionUpkeep::new(Duration::from_secs(60));
            emulator.fail_next_management(403);
            let error = upkeep
                .put(&client, "t", "app-2", &properties)
                .await
                .unwrap_err();
            assert_eq!(error.kind, SourceErrorKind::Transient);
            assert!(error.message.contains("HTTP 403"), "{}", error.message);
            assert!(error.message.contains("(refusal 1;"), "{}", error.message);
            assert!(is_management_error(&error));
            assert!(upkeep.needs_put(), "still to be created");

            let upkeep = SubscriptionUpkeep::new(Duration::ZERO);
            emulator.fail_management(ManagementFault::status(401));
            let error = upkeep
                .put(&client, "t", "app-2", &properties)
                .await
                .unwrap_err();
            assert_eq!(error.kind, SourceErrorKind::Fatal);
            assert_eq!(
                error.message,
                "Service Bus refused to create subscription `app-2` of topic `t` (HTTP 401, 1 time in 0 s), past the grace of 0 s for a role assignment to propagate: the identity needs the Azure Service Bus Data Owner role on the namespace or topic (a connection string needs a shared access policy with Manage rights)"
            );
            assert!(
                is_management_error(&error),
                "the management error is the source"
            );
            assert_eq!(emulator.subscriptions("t"), Vec::<String>::new());
        }
    }
}
