//! The data-plane client of one event subscription: `:receive`, `:acknowledge`, `:release`,
//! `:reject` and `:renewLock` over the azure_core HTTP pipeline, with the request and answer
//! shapes of the REST spec (`EventGrid.json`, api-version 2024-06-01).
//!
//! One request per call: the pipeline's own retries are off, because the source retries with
//! the backoff every transport shares (`keyvault_invalidator_transport::Lifecycle`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::http::headers::{HeaderName, AUTHORIZATION};
use azure_core::http::policies::auth::BearerTokenAuthorizationPolicy;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{
    Context, Method, Pipeline, PipelineSendOptions, RawResponse, Request, RetryOptions, Url,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::config::{PullAuth, PullConfig, ReleaseDelay, API_VERSION, EVENT_GRID_SCOPE};
use super::error::{PullError, PullErrorKind};

/// What a request other than `:receive` may take before it counts as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How much longer than its `maxWaitTime` a `:receive` may take before it counts as unanswered.
const RECEIVE_GRACE: Duration = Duration::from_secs(30);

/// One received event: the CloudEvent as the service sent it, and its broker properties.
pub(crate) struct ReceivedEvent {
    pub(crate) lock_token: String,
    pub(crate) delivery_count: u32,
    pub(crate) event_id: Option<String>,
    /// The CloudEvent JSON, byte for byte.
    pub(crate) event: Vec<u8>,
}

/// The settling operations, all with the body `{"lockTokens":[..]}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockOperation {
    Acknowledge,
    Release(ReleaseDelay),
    Reject,
    RenewLock,
}

impl LockOperation {
    pub(crate) fn name(self) -> &'static str {
        match self {
            LockOperation::Acknowledge => ":acknowledge",
            LockOperation::Release(_) => ":release",
            LockOperation::Reject => ":reject",
            LockOperation::RenewLock => ":renewLock",
        }
    }
}

/// A lock token the service did not settle, and its error code (`TokenLost`, `BadToken`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FailedLockToken {
    pub(crate) lock_token: String,
    pub(crate) code: String,
    pub(crate) message: String,
}

/// The client of `{endpoint}/topics/{topic}/eventsubscriptions/{subscription}`.
pub(crate) struct NamespaceClient {
    pipeline: Pipeline,
    /// The subscription's URL, to which `:{operation}` is appended.
    subscription_url: String,
    max_wait_time: Duration,
}

impl NamespaceClient {
    pub(crate) fn new(config: &PullConfig) -> Self {
        let auth: Arc<dyn Policy> = match &config.auth {
            PullAuth::Credential(credential) => Arc::new(BearerTokenAuthorizationPolicy::new(
                credential.clone(),
                [EVENT_GRID_SCOPE],
            )),
            PullAuth::AccessKey(key) => Arc::new(AccessKeyPolicy(key.clone())),
        };
        let mut options = config.client_options.clone();
        options.retry = RetryOptions::none();
        let pipeline = Pipeline::new(
            Some(env!("CARGO_PKG_NAME")),
            Some(env!("CARGO_PKG_VERSION")),
            options,
            Vec::new(),
            vec![auth],
            None,
        );
        let endpoint = config.endpoint.as_str().trim_end_matches('/');
        NamespaceClient {
            pipeline,
            subscription_url: format!(
                "{endpoint}/topics/{}/eventsubscriptions/{}",
                config.topic, config.subscription
            ),
            max_wait_time: config.max_wait_time,
        }
    }

    /// `:receive` up to `max_events` (1..=100), waiting up to the configured `maxWaitTime`.
    pub(crate) async fn receive(&self, max_events: usize) -> Result<Vec<ReceivedEvent>, PullError> {
        let query = format!(
            "maxEvents={max_events}&maxWaitTime={}",
            self.max_wait_time.as_secs()
        );
        let body = self
            .post(
                ":receive",
                &query,
                Vec::new(),
                self.max_wait_time + RECEIVE_GRACE,
            )
            .await?;
        let answer: ReceiveResult = parse(":receive", &body)?;
        answer
            .value
            .into_iter()
            .map(|details| {
                let raw = details.event.get();
                let event_id = serde_json::from_str::<EventId>(raw)
                    .map_err(|e| invalid(":receive", "an event that is not a JSON object", e))?
                    .id;
                Ok(ReceivedEvent {
                    lock_token: details.broker_properties.lock_token,
                    delivery_count: details.broker_properties.delivery_count,
                    event_id,
                    event: raw.as_bytes().to_vec(),
                })
            })
            .collect()
    }

    /// Settles or renews `lock_tokens`; the tokens the service did not take come back.
    pub(crate) async fn lock_operation(
        &self,
        operation: LockOperation,
        lock_tokens: &[String],
    ) -> Result<Vec<FailedLockToken>, PullError> {
        let query = match operation {
            LockOperation::Release(delay) => format!("releaseDelayInSeconds={}", delay.seconds()),
            _ => String::new(),
        };
        let body = serde_json::to_vec(&LockTokens { lock_tokens })
            .map_err(|e| invalid(operation.name(), "a request body", e))?;
        let answer = self
            .post(operation.name(), &query, body, REQUEST_TIMEOUT)
            .await?;
        let result: LockTokensResult = parse(operation.name(), &answer)?;
        Ok(result
            .failed_lock_tokens
            .into_iter()
            .map(|failed| FailedLockToken {
                lock_token: failed.lock_token,
                code: failed.error.code,
                message: failed.error.message,
            })
            .collect())
    }

    async fn post(
        &self,
        operation: &str,
        query: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, PullError> {
        let mut address = format!(
            "{}{operation}?api-version={API_VERSION}",
            self.subscription_url
        );
        if !query.is_empty() {
            address.push('&');
            address.push_str(query);
        }
        let url = Url::parse(&address).map_err(|e| {
            PullError::new(PullErrorKind::Rejected, format!("{operation}: bad URL")).with_source(e)
        })?;
        let mut request = Request::new(url, Method::Post);
        request.insert_header(
            HeaderName::from_static("content-type"),
            "application/json; charset=utf-8",
        );
        request.set_body(body);
        let options = PipelineSendOptions {
            skip_checks: true,
            ..Default::default()
        };
        let context = Context::new();
        let sent = self.pipeline.send(&context, &mut request, Some(options));
        let response: RawResponse = match tokio::time::timeout(timeout, sent).await {
            Err(_) => {
                return Err(PullError::new(
                    PullErrorKind::Network,
                    format!("Event Grid did not answer {operation} within {timeout:?}"),
                ))
            }
            Ok(Err(error)) => return Err(PullError::transport(operation, error)),
            Ok(Ok(response)) => response,
        };
        let status = u16::from(response.status());
        let (_, headers, body) = response.deconstruct();
        if status == 200 {
            return Ok(body.to_vec());
        }
        let service = serde_json::from_slice::<ErrorBody>(&body)
            .ok()
            .map(|e| format!("{} {}", e.error.code, e.error.message));
        Err(PullError::status(operation, status, &headers, service))
    }
}

impl fmt::Debug for NamespaceClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamespaceClient")
            .field("subscription_url", &self.subscription_url)
            .finish_non_exhaustive()
    }
}

/// Sends `Authorization: SharedAccessKey <key>`, as the data plane takes an access key.
struct AccessKeyPolicy(SecretString);

impl fmt::Debug for AccessKeyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessKeyPolicy(<redacted>)")
    }
}

#[async_trait]
impl Policy for AccessKeyPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        request.insert_header(
            AUTHORIZATION,
            format!("SharedAccessKey {}", self.0.expose_secret()),
        );
        next[0].send(ctx, request, &next[1..]).await
    }
}

fn parse<'a, T: Deserialize<'a>>(operation: &str, body: &'a [u8]) -> Result<T, PullError> {
    serde_json::from_slice(body).map_err(|e| invalid(operation, "an answer", e))
}

fn invalid(operation: &str, what: &str, error: serde_json::Error) -> PullError {
    PullError::new(
        PullErrorKind::InvalidResponse,
        format!("Event Grid sent {what} to {operation} that this source cannot read: {error}"),
    )
    .with_source(error)
}

#[derive(Deserialize)]
struct ReceiveResult<'a> {
    #[serde(borrow)]
    value: Vec<ReceiveDetails<'a>>,
}

#[derive(Deserialize)]
struct ReceiveDetails<'a> {
    #[serde(rename = "brokerProperties")]
    broker_properties: BrokerProperties,
    #[serde(borrow)]
    event: &'a RawValue,
}

#[derive(Deserialize)]
struct BrokerProperties {
    #[serde(rename = "lockToken")]
    lock_token: String,
    #[serde(rename = "deliveryCount")]
    delivery_count: u32,
}

#[derive(Deserialize)]
struct EventId {
    id: Option<String>,
}

#[derive(Serialize)]
struct LockTokens<'a> {
    #[serde(rename = "lockTokens")]
    lock_tokens: &'a [String],
}

#[derive(Deserialize)]
struct LockTokensResult {
    #[serde(rename = "failedLockTokens", default)]
    failed_lock_tokens: Vec<FailedLockTokenBody>,
}

#[derive(Deserialize)]
struct FailedLockTokenBody {
    #[serde(rename = "lockToken")]
    lock_token: String,
    error: ServiceError,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ServiceError,
}

#[derive(Deserialize)]
struct ServiceError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}
