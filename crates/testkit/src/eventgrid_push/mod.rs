//! A client that pushes to a webhook as Event Grid does (handshakes, headers, retries by status).
//!
//! [`EventGridPusher`] imitates Event Grid's webhook delivery, as Microsoft documents it:
//!
//! - **Headers** on every delivery (*Receive events from Event Grid to an HTTP endpoint*,
//!   *Delivery properties* on learn.microsoft.com): `aeg-event-type: Notification`,
//!   `aeg-subscription-name`, `aeg-delivery-count` (this attempt's number, 1 on the first,
//!   one more on each retry), `aeg-metadata-version`, `aeg-data-version`,
//!   `aeg-output-event-id`; content type `application/json` for the Event Grid schema,
//!   `application/cloudevents+json` for one CloudEvent and `application/cloudevents-batch+json`
//!   for a CloudEvents batch.
//! - **Handshakes**: the Event Grid schema's validation (*Endpoint validation with Event Grid
//!   events schema*): a POST with `aeg-event-type: SubscriptionValidation` whose body is an
//!   array of one `Microsoft.EventGrid.SubscriptionValidationEvent`, succeeding only on 200
//!   with `{"validationResponse": code}`; and the CloudEvents abuse protection (*Endpoint
//!   validation with CloudEvents schema*, CloudEvents HTTP webhook spec §4): an `OPTIONS` with
//!   `WebHook-Request-Origin` and `WebHook-Request-Rate`, succeeding when the answer's
//!   `WebHook-Allowed-Origin` is that origin or `*`.
//! - **Status codes and retries** (*Event Grid message delivery and retry*): 200–204 are
//!   success; 400, 401, 403 and 413 are not retried and the request is dead-lettered (the
//!   pusher records it, with the status); every other status, a connection failure and no
//!   answer within the response timeout (Event Grid waits 30 s) are retried. Event Grid's
//!   schedule is 10 s, 30 s, 1 min, 5 min, 10 min, 30 min, 1 h, 3 h, 6 h, then every 12 h, with
//!   at least 2 min after a 408, 30 s after a 503 and 10 s after anything else, up to 30
//!   attempts: [`RetrySchedule::event_grid`]. Tests use [`RetrySchedule::fast`], the same
//!   rules on a schedule of their choosing.
//!
//! Plain HTTP only to loopback; HTTPS trusting a given certificate
//! ([`EventGridPusher::trusting_certificate_pem`]). Every attempt and every dead-letter is
//! recorded, for tests to assert.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The schema a subscription delivers in, which sets the content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliverySchema {
    /// The Event Grid event schema: `application/json`, an array of events.
    EventGrid,
    /// CloudEvents 1.0: `application/cloudevents+json` for one event (a JSON object),
    /// `application/cloudevents-batch+json` for an array.
    CloudEvents,
}

/// When to try a failed delivery again, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
    max_attempts: u32,
    response_timeout: Duration,
    status_minimums: bool,
}

impl RetrySchedule {
    /// Event Grid's own: 10 s, 30 s, 1 min, 5 min, 10 min, 30 min, 1 h, 3 h, 6 h, then every
    /// 12 h; at least 2 min after a 408, 30 s after a 503, 10 s after other failures; 30
    /// attempts; 30 s for an answer. (Event Grid also jitters; this does not.)
    pub fn event_grid() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        RetrySchedule {
            delays: vec![
                Duration::from_secs(10),
                Duration::from_secs(30),
                minutes(1),
                minutes(5),
                minutes(10),
                minutes(30),
                minutes(60),
                minutes(180),
                minutes(360),
                minutes(720),
            ],
            max_attempts: 30,
            response_timeout: Duration::from_secs(30),
            status_minimums: true,
        }
    }

    /// The same status rules, retrying after `delay` each time (no per-status minimums), up to
    /// `max_attempts` attempts in all, waiting 30 s for an answer.
    pub fn fast(delay: Duration, max_attempts: u32) -> Self {
        RetrySchedule {
            delays: vec![delay],
            max_attempts: max_attempts.max(1),
            response_timeout: Duration::from_secs(30),
            status_minimums: false,
        }
    }

    /// How long an attempt waits for its answer before it counts as failed (retried).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// The pause after failed attempt number `attempt` (1-based) that got `status`.
    fn delay_after(&self, attempt: u32, status: Option<StatusCode>) -> Duration {
        let index = (attempt as usize)
            .saturating_sub(1)
            .min(self.delays.len() - 1);
        let base = self.delays[index];
        if !self.status_minimums {
            return base;
        }
        let minimum = match status.map(|s| s.as_u16()) {
            Some(408) => Duration::from_secs(120),
            Some(503) => Duration::from_secs(30),
            _ => Duration::from_secs(10),
        };
        base.max(minimum)
    }
}

/// What one attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// An HTTP answer with this status.
    Status(u16),
    /// No connection, or it broke before an answer.
    ConnectionFailed,
    /// No answer within the response timeout.
    TimedOut,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The request's `aeg-output-event-id`.
    pub event_id: String,
    /// Its `aeg-delivery-count`.
    pub delivery_count: u32,
    /// What it got.
    pub outcome: AttemptOutcome,
}

/// A request Event Grid would have dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushDeadLetter {
    /// The request's `aeg-output-event-id`.
    pub event_id: String,
    /// The body that was pushed.
    pub body: Vec<u8>,
    /// The last status (`None` when the attempts ran out on connection failures).
    pub status: Option<u16>,
    /// The last answer's body (where the webhook says why).
    pub answer: String,
    /// How many attempts were made.
    pub attempts: u32,
}

/// How a push ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Accepted (200–204).
    Delivered {
        /// The accepting status.
        status: u16,
        /// Attempts made, the accepted one included.
        attempts: u32,
        /// The accepting answer's body.
        answer: String,
    },
    /// Not retried (400, 401, 403, 413) or out of attempts.
    DeadLettered(PushDeadLetter),
}

/// The answer to a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeAnswer {
    /// Its status.
    pub status: u16,
    /// Whether Event Grid would count the endpoint validated.
    pub validated: bool,
    /// Its body.
    pub body: String,
    /// `WebHook-Allowed-Origin`, for the CloudEvents handshake.
    pub allowed_origin: Option<String>,
    /// `WebHook-Allowed-Rate`, for the CloudEvents handshake.
    pub allowed_rate: Option<String>,
}

/// Why a handshake could not be made at all.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PushError(String);

#[derive(Default)]
struct Record {
    attempts: Vec<Attempt>,
    dead_letters: Vec<PushDeadLetter>,
}

/// Pushes to one webhook URL as an Event Grid subscription would. Cheap to clone (clones share
/// the record).
#[derive(Clone)]
pub struct EventGridPusher {
    client: reqwest::Client,
    url: reqwest::Url,
    schema: DeliverySchema,
    subscription: String,
    schedule: RetrySchedule,
    bearer: Option<String>,
    record: Arc<Mutex<Record>>,
}

/// The origin Event Grid names in its abuse-protection handshake.
pub const EVENT_GRID_ORIGIN: &str = "eventgrid.azure.net";

impl EventGridPusher {
    /// A pusher to `url` (its query string, `?code=SECRET`, is sent as is), in the Event Grid
    /// schema, subscription `kvi-test`, on Event Grid's retry schedule. HTTP only to a
    /// loopback address; HTTPS needs [`trusting_certificate_pem`](Self::trusting_certificate_pem)
    /// for a test certificate.
    pub fn new(url: &str) -> Result<Self, PushError> {
        let url = reqwest::Url::parse(url).map_err(|e| PushError(format!("`{url}`: {e}")))?;
        let loopback = url
            .host_str()
            .is_some_and(keyvault_invalidator_core::is_loopback_host);
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => {
                return Err(PushError(
                    "the pusher speaks HTTPS, or HTTP to a loopback address only".to_owned(),
                ))
            }
        }
        Ok(EventGridPusher {
            client: client(None)?,
            url,
            schema: DeliverySchema::EventGrid,
            subscription: "kvi-test".to_owned(),
            schedule: RetrySchedule::event_grid(),
            bearer: None,
            record: Arc::default(),
        })
    }

    /// Trusts only this PEM certificate for HTTPS (a test's self-signed one).
    pub fn trusting_certificate_pem(mut self, pem: &[u8]) -> Result<Self, PushError> {
        self.client = client(Some(pem))?;
        Ok(self)
    }

    /// Delivers in this schema.
    pub fn schema(mut self, schema: DeliverySchema) -> Self {
        self.schema = schema;
        self
    }

    /// Names the subscription (`aeg-subscription-name`).
    pub fn subscription_name(mut self, name: impl Into<String>) -> Self {
        self.subscription = name.into();
        self
    }

    /// Retries on this schedule.
    pub fn retry_schedule(mut self, schedule: RetrySchedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// Sends `Authorization: Bearer <token>` on every request, as a subscription with
    /// Microsoft Entra authentication does.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer = Some(token.into());
        self
    }

    /// The URL it pushes to.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// Every attempt so far, in order.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.lock().attempts.clone()
    }

    /// Every request dead-lettered so far, in order.
    pub fn dead_letters(&self) -> Vec<PushDeadLetter> {
        self.lock().dead_letters.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn request(&self, method: Method) -> reqwest::RequestBuilder {
        let request = self.client.request(method, self.url.clone());
        match &self.bearer {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The Event Grid schema validation handshake, with `validation_code`: validated only on
    /// 200 with `{"validationResponse": validation_code}`.
    pub async fn validate_subscription(
        &self,
        validation_code: &str,
    ) -> Result<HandshakeAnswer, PushError> {
        let event = json!([{
            "id": uuid::Uuid::new_v4().to_string(),
            "topic": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv",
            "subject": "",
            "data": {
                "validationCode": validation_code,
                "validationUrl": "https://rp-eastus.eventgrid.azure.net/eventsubscriptions/kvi-test/validate?id=x&t=2026-12-02T00:00:00Z&apiVersion=2025-02-15&token=x",
            },
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "eventTime": "2026-12-02T00:00:00Z",
            "metadataVersion": "1",
            "dataVersion": "2",
        }]);
        let response = self
            .request(Method::POST)
            .header(CONTENT_TYPE, "application/json")
            .header("aeg-event-type", "SubscriptionValidation")
            .header("aeg-subscription-name", self.subscription.to_uppercase())
            .header("aeg-delivery-count", "1")
            .header("aeg-metadata-version", "1")
            .header("aeg-data-version", "2")
            .timeout(self.schedule.response_timeout)
            .body(event.to_string())
            .send()
            .await
            .map_err(|e| PushError(format!("the validation request failed: {e}")))?;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        let answered = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("validationResponse")?.as_str().map(str::to_owned));
        Ok(HandshakeAnswer {
            status,
            validated: status == 200 && answered.as_deref() == Some(validation_code),
            body,
            allowed_origin: None,
            allowed_rate: None,
        })
    }

    /// The CloudEvents abuse-protection handshake: `OPTIONS` from [`EVENT_GRID_ORIGIN`]
    /// asking for 120 requests a minute; validated when the origin is allowed.
    pub async fn abuse_protection_handshake(&self) -> Result<HandshakeAnswer, PushError> {
        let response = self
            .request(Method::OPTIONS)
            .header("WebHook-Request-Origin", EVENT_GRID_ORIGIN)
            .header("WebHook-Request-Rate", "120")
            .timeout(self.schedule.response_timeout)
            .send()
            .await
            .map_err(|e| PushError(format!("the OPTIONS request failed: {e}")))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let allowed_origin = header("webhook-allowed-origin");
        let allowed_rate = header("webhook-allowed-rate");
        let body = response.text().await.unwrap_or_default();
        let validated = (200..=204).contains(&status)
            && matches!(
                allowed_origin.as_deref(),
                Some(EVENT_GRID_ORIGIN) | Some("*")
            )
            && allowed_rate.is_some();
        Ok(HandshakeAnswer {
            status,
            validated,
            body,
            allowed_origin,
            allowed_rate,
        })
    }

    /// Pushes `events` (each one event's JSON) as one request: an array, or for one
    /// CloudEvent the object alone. Retries until accepted or dead-lettered.
    pub async fn push_events(&self, event_id: &str, events: &[&[u8]]) -> PushOutcome {
        let body = if self.schema == DeliverySchema::CloudEvents && events.len() == 1 {
            events[0].to_vec()
        } else {
            let mut body = b"[".to_vec();
            for (n, event) in events.iter().enumerate() {
                if n > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(event);
            }
            body.push(b']');
            body
        };
        let batch = events.len() != 1;
        self.push_body(event_id, &body, batch).await
    }

    /// Pushes `body` exactly as given (`batch`: whether it is an array, for the CloudEvents
    /// content type). Retries until accepted or dead-lettered.
    pub async fn push_body(&self, event_id: &str, body: &[u8], batch: bool) -> PushOutcome {
        let content_type = match (self.schema, batch) {
            (DeliverySchema::EventGrid, _) => "application/json",
            (DeliverySchema::CloudEvents, false) => "application/cloudevents+json",
            (DeliverySchema::CloudEvents, true) => "application/cloudevents-batch+json",
        };
        let (metadata_version, data_version) = match self.schema {
            DeliverySchema::EventGrid => ("1", "1"),
            // CloudEvents: the spec version, and no data version.
            DeliverySchema::CloudEvents => ("1.0", ""),
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let sent = self
                .request(Method::POST)
                .header(CONTENT_TYPE, content_type)
                .header("aeg-event-type", "Notification")
                .header("aeg-subscription-name", self.subscription.to_uppercase())
                .header("aeg-delivery-count", attempt.to_string())
                .header("aeg-metadata-version", metadata_version)
                .header("aeg-data-version", data_version)
                .header("aeg-output-event-id", event_id)
                .timeout(self.schedule.response_timeout)
                .body(body.to_vec())
                .send()
                .await;
            let (outcome, status, answer) = match sent {
                Ok(response) => {
                    let status = response.status();
                    let answer = response.text().await.unwrap_or_default();
                    (
                        AttemptOutcome::Status(status.as_u16()),
                        Some(status),
                        answer,
                    )
                }
                Err(error) if error.is_timeout() => (AttemptOutcome::TimedOut, None, String::new()),
                Err(_) => (AttemptOutcome::ConnectionFailed, None, String::new()),
            };
            self.lock().attempts.push(Attempt {
                event_id: event_id.to_owned(),
                delivery_count: attempt,
                outcome,
            });
            let code = status.map(|s| s.as_u16());
            if let Some(code @ 200..=204) = code {
                return PushOutcome::Delivered {
                    status: code,
                    attempts: attempt,
                    answer,
                };
            }
            let not_retried = matches!(code, Some(400 | 401 | 403 | 413));
            if not_retried || attempt >= self.schedule.max_attempts {
                let letter = PushDeadLetter {
                    event_id: event_id.to_owned(),
                    body: body.to_vec(),
                    status: code,
                    answer,
                    attempts: attempt,
                };
                self.lock().dead_letters.push(letter.clone());
                return PushOutcome::DeadLettered(letter);
            }
            tokio::time::sleep(self.schedule.delay_after(attempt, status)).await;
        }
    }
}

fn client(trusted_pem: Option<&[u8]>) -> Result<reqwest::Client, PushError> {
    // No proxy: a test's loopback endpoint must not be sent to one named in the environment.
    let mut builder = reqwest::Client::builder().no_proxy().http1_only();
    if let Some(pem) = trusted_pem {
        let certificate = reqwest::Certificate::from_pem(pem)
            .map_err(|e| PushError(format!("the certificate is not PEM: {e}")))?;
        builder = builder.tls_certs_only([certificate]);
    }
    builder
        .build()
        .map_err(|e| PushError(format!("the HTTP client could not be built: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_grids_schedule_keeps_the_per_status_minimums() {
        let schedule = RetrySchedule::event_grid();
        let status = |code| Some(StatusCode::from_u16(code).unwrap());
        assert_eq!(
            schedule.delay_after(1, status(500)),
            Duration::from_secs(10)
        );
        assert_eq!(
            schedule.delay_after(1, status(503)),
            Duration::from_secs(30)
        );
        assert_eq!(
            schedule.delay_after(1, status(408)),
            Duration::from_secs(120)
        );
        assert_eq!(
            schedule.delay_after(4, status(503)),
            Duration::from_secs(300)
        );
        assert_eq!(
            schedule.delay_after(29, None),
            Duration::from_secs(720 * 60)
        );
        let fast = RetrySchedule::fast(Duration::from_millis(5), 3);
        assert_eq!(fast.delay_after(1, status(408)), Duration::from_millis(5));
    }

    #[test]
    fn plain_http_goes_to_loopback_only() {
        assert!(EventGridPusher::new("http://127.0.0.1:9/hook?code=x").is_ok());
        assert!(EventGridPusher::new("http://localhost:9/").is_ok());
        assert!(EventGridPusher::new("http://10.0.0.1:9/").is_err());
        assert!(EventGridPusher::new("https://10.0.0.1:9/").is_ok());
        assert!(EventGridPusher::new("not a url").is_err());
    }
}
