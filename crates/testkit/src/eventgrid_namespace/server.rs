//! The stand-in's HTTP side: routing of `/topics/{topic}:publish` and
//! `/topics/{topic}/eventsubscriptions/{subscription}:{operation}`, the query and body checks,
//! authentication, scripted faults, the long poll, and the answer and error shapes of the REST
//! spec.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::queue::{LockAction, Subscription};
use super::{Fault, Operation, API_VERSION};
use crate::loopback::{json_response, Answer, Dropped};

/// What the handlers and the handle share.
pub(super) struct Shared {
    pub(super) state: Mutex<NamespaceState>,
    /// Woken at every publication and release, for the long polls.
    pub(super) arrivals: Notify,
    pub(super) access_key: String,
    pub(super) token: String,
    /// The longest a `:receive` waits, whatever its `maxWaitTime`.
    pub(super) wait_cap: Duration,
}

#[derive(Default)]
pub(super) struct NamespaceState {
    pub(super) topics: HashMap<String, HashMap<String, Subscription>>,
    pub(super) faults: HashMap<Operation, VecDeque<Fault>>,
    pub(super) calls: HashMap<Operation, usize>,
    pub(super) issued: HashSet<String>,
    pub(super) next_token: u64,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, NamespaceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl NamespaceState {
    pub(super) fn subscription(&mut self, topic: &str, name: &str) -> Option<&mut Subscription> {
        self.topics.get_mut(topic)?.get_mut(name)
    }

    /// Adds `events` to every subscription of `topic` (a namespace topic fans out to all).
    pub(super) fn publish(&mut self, topic: &str, events: Vec<Value>) -> Result<(), String> {
        let subscriptions = self
            .topics
            .get_mut(topic)
            .ok_or_else(|| format!("The topic {topic} was not found."))?;
        let now = Instant::now();
        for subscription in subscriptions.values_mut() {
            for event in &events {
                subscription.enqueue(event.clone(), now);
            }
        }
        Ok(())
    }
}

/// The route of a request.
enum Route {
    Publish {
        topic: String,
    },
    Subscription {
        topic: String,
        subscription: String,
        operation: Operation,
    },
}

fn route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/topics/")?;
    if let Some(topic) = rest.strip_suffix(":publish") {
        return (!topic.contains('/')).then(|| Route::Publish {
            topic: topic.to_owned(),
        });
    }
    let (topic, rest) = rest.split_once("/eventsubscriptions/")?;
    let (subscription, operation) = rest.split_once(':')?;
    let operation = match operation {
        "receive" => Operation::Receive,
        "acknowledge" => Operation::Acknowledge,
        "release" => Operation::Release,
        "reject" => Operation::Reject,
        "renewLock" => Operation::RenewLock,
        _ => return None,
    };
    Some(Route::Subscription {
        topic: topic.to_owned(),
        subscription: subscription.to_owned(),
        operation,
    })
}

pub(super) async fn handle(shared: &Shared, request: Request<Incoming>) -> Answer {
    let (parts, body) = request.into_parts();
    let Some(route) = route(parts.uri.path()).filter(|_| parts.method == Method::POST) else {
        return Ok(error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "No such operation.",
        ));
    };
    let operation = match &route {
        Route::Publish { .. } => Operation::Publish,
        Route::Subscription { operation, .. } => *operation,
    };
    let query = parse_query(parts.uri.query().unwrap_or(""));
    let fault = {
        let mut state = shared.lock();
        *state.calls.entry(operation).or_default() += 1;
        let authorization = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let access_key = format!("SharedAccessKey {}", shared.access_key);
        let bearer = format!("Bearer {}", shared.token);
        if authorization != Some(access_key.as_str()) && authorization != Some(bearer.as_str()) {
            return Ok(error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "The request authorization key is not authorized for this resource.",
            ));
        }
        state
            .faults
            .get_mut(&operation)
            .and_then(VecDeque::pop_front)
    };
    if query.get("api-version").map(String::as_str) != Some(API_VERSION) {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "The api-version is missing or not supported.",
        ));
    }
    let mut drop_after = false;
    match fault {
        None => {}
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Ok(error(status, "InternalServerError", "Scripted failure."));
        }
        Some(Fault::Throttled { retry_after_secs }) => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "The request was throttled.",
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
            return Ok(response);
        }
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        // Acted on, then the answer is lost: for `:receive`, the events stay locked.
        Some(Fault::Disconnect) => drop_after = true,
    }
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(Dropped),
    };
    let answer = match route {
        Route::Publish { topic } => publish(shared, &topic, &parts.headers, &body),
        Route::Subscription {
            topic,
            subscription,
            operation: Operation::Receive,
        } => receive(shared, &topic, &subscription, &query).await,
        Route::Subscription {
            topic,
            subscription,
            operation,
        } => settle(shared, &topic, &subscription, operation, &query, &body),
    };
    if drop_after {
        return Err(Dropped);
    }
    Ok(answer)
}

fn publish(
    shared: &Shared,
    topic: &str,
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let parsed: Result<Value, _> = serde_json::from_slice(body);
    let events = match (parsed, content_type) {
        (Ok(Value::Array(events)), t) if t.starts_with("application/cloudevents-batch+json") => {
            events
        }
        (Ok(event @ Value::Object(_)), t) if t.starts_with("application/cloudevents+json") => {
            vec![event]
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "Expected a CloudEvent (application/cloudevents+json) or a batch (application/cloudevents-batch+json).",
            )
        }
    };
    if let Some(problem) = events.iter().find_map(cloud_event_problem) {
        return error(StatusCode::BAD_REQUEST, "BadRequest", &problem);
    }
    let published = shared.lock().publish(topic, events);
    match published {
        Ok(()) => {
            shared.arrivals.notify_waiters();
            json_response(StatusCode::OK, &json!({}))
        }
        Err(message) => error(StatusCode::NOT_FOUND, "NotFound", &message),
    }
}

/// Why `event` is not a CloudEvent 1.0 the service takes: the required attributes `id`,
/// `source`, `type` and `specversion` "1.0" (CloudEvents spec, "Required Attributes").
pub(super) fn cloud_event_problem(event: &Value) -> Option<String> {
    for attribute in ["id", "source", "type", "specversion"] {
        if !event.get(attribute).is_some_and(Value::is_string) {
            return Some(format!("The CloudEvent has no `{attribute}` attribute."));
        }
    }
    (event["specversion"] != "1.0").then(|| "The CloudEvent specversion must be 1.0.".to_owned())
}

async fn receive(
    shared: &Shared,
    topic: &str,
    subscription: &str,
    query: &HashMap<String, String>,
) -> Response<Full<Bytes>> {
    let max_events = match number(query, "maxEvents", 1, 1..=100) {
        Ok(n) => n as usize,
        Err(message) => return error(StatusCode::BAD_REQUEST, "BadRequest", &message),
    };
    let max_wait = match number(query, "maxWaitTime", 60, 10..=120) {
        Ok(n) => Duration::from_secs(n),
        Err(message) => return error(StatusCode::BAD_REQUEST, "BadRequest", &message),
    };
    let deadline = Instant::now() + max_wait.min(shared.wait_cap);
    loop {
        // Made before looking, so a publication after the look still wakes this poll.
        let arrival = shared.arrivals.notified();
        let now = Instant::now();
        {
            let mut state = shared.lock();
            let NamespaceState {
                topics,
                issued,
                next_token,
                ..
            } = &mut *state;
            let Some(queue) = topics.get_mut(topic).and_then(|t| t.get_mut(subscription)) else {
                return not_found(topic, subscription);
            };
            queue.expire_locks(now);
            if queue.has_ready(now) || now >= deadline {
                let taken = queue.receive(max_events, now, || {
                    *next_token += 1;
                    let token = format!("lock-{:012}", *next_token);
                    issued.insert(token.clone());
                    token
                });
                let value: Vec<Value> = taken
                    .into_iter()
                    .map(|(lock_token, delivery_count, event)| {
                        json!({
                            "brokerProperties": {
                                "lockToken": lock_token,
                                "deliveryCount": delivery_count,
                            },
                            "event": event,
                        })
                    })
                    .collect();
                return json_response(StatusCode::OK, &json!({ "value": value }));
            }
        }
        // Woken by a publication or release; otherwise look again soon, for locks running
        // out and release delays ending.
        let pause = deadline
            .saturating_duration_since(now)
            .min(Duration::from_millis(50));
        tokio::select! {
            () = arrival => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

fn settle(
    shared: &Shared,
    topic: &str,
    subscription: &str,
    operation: Operation,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let action = match operation {
        Operation::Acknowledge => LockAction::Acknowledge,
        Operation::Reject => LockAction::Reject,
        Operation::RenewLock => LockAction::Renew,
        _ => {
            let seconds = match number(query, "releaseDelayInSeconds", 0, 0..=3600) {
                Ok(n) => n,
                Err(message) => return error(StatusCode::BAD_REQUEST, "BadRequest", &message),
            };
            if ![0, 10, 60, 600, 3600].contains(&seconds) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "releaseDelayInSeconds must be one of 0, 10, 60, 600, 3600.",
                );
            }
            LockAction::Release(Duration::from_secs(seconds))
        }
    };
    let tokens: Vec<String> = match serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| serde_json::from_value(v.get("lockTokens")?.clone()).ok())
    {
        Some(tokens) => tokens,
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "The body must be {\"lockTokens\":[...]}.",
            )
        }
    };
    if tokens.is_empty() || tokens.len() > 100 {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "lockTokens must hold 1 to 100 tokens.",
        );
    }
    let now = Instant::now();
    let mut state = shared.lock();
    let NamespaceState { topics, issued, .. } = &mut *state;
    let Some(queue) = topics.get_mut(topic).and_then(|t| t.get_mut(subscription)) else {
        return not_found(topic, subscription);
    };
    queue.expire_locks(now);
    let mut succeeded = Vec::new();
    let mut failed = Vec::new();
    for token in tokens {
        match queue.settle(action, &token, issued.contains(&token), now) {
            Ok(()) => succeeded.push(token),
            Err(lost) => failed.push(json!({
                "lockToken": lost.token,
                "error": { "code": lost.code, "message": lost.message },
            })),
        }
    }
    drop(state);
    if matches!(action, LockAction::Release(_)) {
        shared.arrivals.notify_waiters();
    }
    json_response(
        StatusCode::OK,
        &json!({ "succeededLockTokens": succeeded, "failedLockTokens": failed }),
    )
}

/// The query parameter `name` as a number in `range`, `default` when absent; else what is
/// wrong, for a 400.
fn number(
    query: &HashMap<String, String>,
    name: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, String> {
    let Some(text) = query.get(name) else {
        return Ok(default);
    };
    match text.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(format!(
            "{name} must be {}..={}.",
            range.start(),
            range.end()
        )),
    }
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn not_found(topic: &str, subscription: &str) -> Response<Full<Bytes>> {
    error(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("The event subscription {subscription} of topic {topic} was not found."),
    )
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}
