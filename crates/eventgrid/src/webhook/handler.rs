//! One HTTP request, start to answer: authentication (before the body is read), the
//! handshakes, the body's limits, the events handed to the job, and the answer their
//! settlements decide.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use keyvault_invalidator_core::{Delivery, DeliveryToken};
use serde_json::json;

use super::auth::{Authenticator, Refusal};
use super::config::Limits;
use super::payload::{self, Payload};
use super::pending::{Answer, Pending, TokenHandle};

/// Requests answered, labelled by `status` (the HTTP status code).
pub(crate) const REQUESTS_METRIC: &str = "keyvault_invalidator_webhook_requests_total";
/// Events handed to the job, one per delivery.
pub(crate) const EVENTS_METRIC: &str = "keyvault_invalidator_webhook_events_received_total";

/// What the methods a webhook answers are.
const ALLOWED_METHODS: &str = "POST, OPTIONS";

/// Everything a request needs; one per source, shared by its connections.
pub(crate) struct Handler {
    pub(crate) auth: Authenticator,
    pub(crate) pending: Arc<Pending>,
    pub(crate) limits: Limits,
    pub(crate) source: u64,
}

type Answered = Response<Full<Bytes>>;

impl Handler {
    /// Answers one request; never fails (hyper closes the connection on an error, and a
    /// webhook has an answer for everything).
    pub(crate) async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Answered, Infallible> {
        let (head, body) = request.into_parts();
        let path = head.uri.path().to_owned();
        let answer = self.answer(head, body).await;
        let status = answer.status().as_u16();
        // The path only: the query string holds the shared secret.
        tracing::debug!(%path, status, "webhook request answered");
        metrics::counter!(REQUESTS_METRIC, "status" => status.to_string()).increment(1);
        Ok(answer)
    }

    async fn answer(&self, head: Parts, body: Incoming) -> Answered {
        if self.pending.is_closed() {
            return closing();
        }
        if let Err(refusal) = self.auth.check(&head).await {
            return refused(&refusal);
        }
        if head.method == Method::OPTIONS {
            return abuse_protection_handshake(&head);
        }
        if head.method != Method::POST {
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "only POST and OPTIONS",
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
            return response;
        }
        let body = match self.read_body(&head, body).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        let event_type = header(&head, "aeg-event-type");
        let events = match payload::read(&body, event_type) {
            Ok(Payload::Validation { code }) => {
                tracing::info!("Event Grid subscription validation handshake answered");
                return json_response(StatusCode::OK, &json!({ "validationResponse": code }));
            }
            Ok(Payload::Deletion) => {
                tracing::warn!(
                    subscription = header(&head, "aeg-subscription-name").unwrap_or("?"),
                    "the Event Grid subscription was deleted: no more events will come"
                );
                return Response::new(Full::new(Bytes::new()));
            }
            Ok(Payload::Events(events)) => events,
            Err(why) => {
                tracing::warn!(%why, "webhook request refused: malformed payload");
                return error(
                    StatusCode::BAD_REQUEST,
                    "MalformedPayload",
                    &why.to_string(),
                );
            }
        };
        self.apply(&head, events).await
    }

    /// The body, within the size and time limits.
    async fn read_body(&self, head: &Parts, body: Incoming) -> Result<Bytes, Answered> {
        let max = self.limits.max_body_bytes;
        let declared = header(head, CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > max as u64) {
            return Err(too_large(max));
        }
        let read = tokio::time::timeout(
            self.limits.body_read_timeout,
            Limited::new(body, max).collect(),
        )
        .await;
        match read {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(failure)) if failure.downcast_ref::<LengthLimitError>().is_some() => {
                Err(too_large(max))
            }
            Ok(Err(_)) => Err(error(
                StatusCode::BAD_REQUEST,
                "UnreadableBody",
                "the body could not be read",
            )),
            Err(_) => Err(error(
                StatusCode::REQUEST_TIMEOUT,
                "BodyTimeout",
                "the body did not arrive in time",
            )),
        }
    }

    /// Hands the events to `receive` and waits for their settlements, up to the deadline.
    async fn apply(&self, head: &Parts, events: Vec<payload::SplitEvent>) -> Answered {
        let properties: BTreeMap<String, String> = head
            .headers
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("aeg-"))
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect();
        // Event Grid counts this attempt in `aeg-delivery-count`; a missing or zero count is a
        // first delivery.
        let delivery_count = properties
            .get("aeg-delivery-count")
            .and_then(|count| count.trim().parse::<u32>().ok())
            .unwrap_or(1)
            .max(1);
        // A lone event without an id of its own is named by the header Event Grid gives it.
        let lone_id = (events.len() == 1)
            .then(|| properties.get("aeg-output-event-id").cloned())
            .flatten();
        let ids: Vec<Option<String>> = events
            .iter()
            .map(|event| event.id.clone().or_else(|| lone_id.clone()))
            .collect();
        let count = events.len();
        metrics::counter!(EVENTS_METRIC).increment(count as u64);
        let source = self.source;
        let admitted = self.pending.admit(ids.clone(), |request| {
            events
                .into_iter()
                .zip(ids)
                .enumerate()
                .map(|(index, (event, id))| {
                    let token = DeliveryToken::new(TokenHandle {
                        source,
                        request,
                        index,
                    });
                    let delivery = Delivery::new(event.body, token)
                        .with_properties(properties.clone())
                        .with_delivery_count(delivery_count);
                    match id {
                        Some(id) => delivery.with_message_id(id),
                        None => delivery,
                    }
                })
                .collect()
        });
        let Some((request, answer)) = admitted else {
            return closing();
        };
        // Forgets the request if this future is dropped (the sender went away) or times out,
        // so its deliveries are not applied for nobody and their settlements say so.
        let guard = ForgetOnDrop {
            pending: &self.pending,
            request,
        };
        let answer = tokio::time::timeout(self.limits.answer_deadline, answer).await;
        drop(guard);
        match answer {
            Ok(Ok(Answer::Done)) => Response::new(Full::new(Bytes::new())),
            Ok(Ok(Answer::Retry)) | Ok(Err(_)) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "TryAgain",
                "an event could not be applied yet; deliver the request again",
            ),
            Ok(Ok(Answer::Refused(refusals))) => {
                for refusal in &refusals {
                    tracing::warn!(
                        index = refusal.index,
                        id = refusal.id.as_deref().unwrap_or(""),
                        reason = %refusal.reason,
                        description = %refusal.description,
                        "webhook event dead-lettered: the request is answered 400"
                    );
                }
                let letters: Vec<_> = refusals
                    .iter()
                    .map(|refusal| {
                        json!({
                            "index": refusal.index,
                            "id": refusal.id,
                            "reason": refusal.reason,
                            "description": refusal.description,
                        })
                    })
                    .collect();
                json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({
                        "error": {
                            "code": "DeadLettered",
                            "message": format!("{} of {count} events can never be applied", refusals.len()),
                        },
                        "deadLettered": letters,
                    }),
                )
            }
            Err(_) => {
                tracing::warn!(
                    deadline = ?self.limits.answer_deadline,
                    events = count,
                    "webhook request not settled before its deadline: answered 503"
                );
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "DeadlineExceeded",
                    "the events were not applied in time; deliver the request again",
                )
            }
        }
    }
}

struct ForgetOnDrop<'a> {
    pending: &'a Pending,
    request: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        // A no-op once the request was answered by its settlements or the close.
        self.pending.forget(self.request);
    }
}

fn header<'a>(head: &'a Parts, name: &str) -> Option<&'a str> {
    head.headers.get(name).and_then(|value| value.to_str().ok())
}

/// The CloudEvents abuse-protection handshake (HTTP webhook spec §4): delivery from the
/// requesting origin is granted, at any rate (the sender is authenticated already).
fn abuse_protection_handshake(head: &Parts) -> Answered {
    let mut response = Response::new(Full::new(Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
    if let Some(origin) = head.headers.get("webhook-request-origin") {
        headers.insert("webhook-allowed-origin", origin.clone());
        headers.insert("webhook-allowed-rate", HeaderValue::from_static("*"));
        tracing::info!("CloudEvents abuse-protection handshake answered");
    }
    response
}

fn refused(refusal: &Refusal) -> Answered {
    if *refusal == Refusal::KeysUnavailable {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "KeysUnavailable",
            "the token cannot be checked now; try again",
        );
    }
    tracing::warn!(why = %refusal, "webhook request refused: not authenticated");
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "the request is not authenticated",
    );
    if refusal.is_token() {
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
    }
    response
}

fn too_large(max: usize) -> Answered {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PayloadTooLarge",
        &format!("the body is larger than {max} bytes"),
    )
}

/// A 503 that also closes the connection, so the sender's retry opens a new one (to whatever
/// endpoint listens then).
fn closing() -> Answered {
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "Closing",
        "the webhook is shutting down; deliver the request again",
    );
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Answered {
    json_response(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Answered {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
