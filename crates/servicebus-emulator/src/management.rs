//! The management endpoint: Atom create and delete of subscriptions, auth header checked.

use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::entities::{Creation, SubscriptionSettings};
use super::Namespace;

/// One request the management endpoint answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementRequest {
    /// `PUT` or `DELETE` (or anything else a client sent).
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// When the request arrived (its body read), to check how long a client waited between
    /// two requests.
    pub at: Instant,
}

/// An answer the management endpoint gives instead of doing what was asked: see
/// [`fail_management`](crate::ServiceBusEmulator::fail_management).
///
/// ```
/// use keyvault_invalidator_servicebus_emulator::ManagementFault;
///
/// let throttled = ManagementFault::status(429).retry_after("2");
/// assert_eq!(throttled.status, 429);
/// assert_eq!(throttled.retry_after.as_deref(), Some("2"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementFault {
    /// The status answered (401, 403, 408, 429, 503...).
    pub status: u16,
    /// The `Retry-After` header sent with it, verbatim: delay seconds (`"2"`) or an HTTP date.
    pub retry_after: Option<String>,
}

impl ManagementFault {
    /// An answer with `status` and no `Retry-After`.
    pub fn status(status: u16) -> Self {
        ManagementFault {
            status,
            retry_after: None,
        }
    }

    /// The same with a `Retry-After` header.
    pub fn retry_after(mut self, value: impl Into<String>) -> Self {
        self.retry_after = Some(value.into());
        self
    }
}

pub(crate) async fn bind() -> std::io::Result<TcpListener> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await
}

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Namespace>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            // Errors such as running out of file descriptors persist: do not spin on them.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while connections.try_join_next().is_some() {}
        let shared = shared.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn handle(shared: &Namespace, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let authorization = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let at = Instant::now();
    let (status, text, retry_after) =
        match answer(shared, &method, &path, authorization.as_deref(), &body) {
            Answer::Done(status, text) => (status, text, None),
            Answer::Fault(fault) => {
                let status =
                    StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (
                    status,
                    error_xml(status.as_u16(), "injected fault"),
                    fault.retry_after,
                )
            }
        };
    shared.lock().management_requests.push(ManagementRequest {
        method: method.to_string(),
        path,
        status: status.as_u16(),
        at,
    });
    let mut response = Response::builder().status(status).header(
        "content-type",
        "application/atom+xml;type=entry;charset=utf-8",
    );
    if let Some(retry_after) = retry_after {
        response = response.header("retry-after", retry_after);
    }
    response
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_else(|_| {
            // Only an injected `Retry-After` that is no valid header value gets here.
            let mut response = Response::new(Full::new(Bytes::from(error_xml(
                500,
                "the injected Retry-After is no valid header value",
            ))));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        })
}

/// What the endpoint answers.
enum Answer {
    /// The request was carried out (or refused on its merits).
    Done(StatusCode, String),
    /// An injected fault.
    Fault(ManagementFault),
}

impl From<(StatusCode, String)> for Answer {
    fn from((status, text): (StatusCode, String)) -> Self {
        Answer::Done(status, text)
    }
}

fn answer(
    shared: &Namespace,
    method: &Method,
    path: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> Answer {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let [topic, "subscriptions", name] = segments.as_slice() else {
        return (StatusCode::NOT_FOUND, error_xml(404, "no such entity path")).into();
    };
    let entity = format!(
        "{}{}",
        shared.management_endpoint,
        path.trim_start_matches('/')
    );
    if !shared.authorized(authorization, &entity) {
        return (
            StatusCode::UNAUTHORIZED,
            error_xml(401, "InvalidSignature: the token is invalid"),
        )
            .into();
    }
    let mut state = shared.lock();
    if let Some(fault) = state.management_faults.pop_front() {
        return Answer::Fault(fault);
    }
    let done = match *method {
        Method::PUT => {
            let text = String::from_utf8_lossy(body);
            if !text.contains("<SubscriptionDescription") {
                return (
                    StatusCode::BAD_REQUEST,
                    error_xml(400, "the body is not a SubscriptionDescription entry"),
                )
                    .into();
            }
            match state
                .entities
                .create_subscription(topic, name, settings_from(&text))
            {
                Creation::New => (StatusCode::CREATED, text.into_owned()),
                Creation::AlreadyExists => (
                    StatusCode::CONFLICT,
                    error_xml(409, "the subscription already exists"),
                ),
                Creation::NoSuchTopic => (
                    StatusCode::NOT_FOUND,
                    error_xml(404, "the topic does not exist"),
                ),
            }
        }
        Method::DELETE => {
            if state.entities.delete_subscription(topic, name) {
                (StatusCode::OK, String::new())
            } else {
                (
                    StatusCode::NOT_FOUND,
                    error_xml(404, "the subscription does not exist"),
                )
            }
        }
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            error_xml(405, "only PUT and DELETE are emulated"),
        ),
    };
    done.into()
}

fn settings_from(entry: &str) -> SubscriptionSettings {
    let defaults = SubscriptionSettings::default();
    let element = |name: &str| {
        let open = format!("<{name}>");
        let start = entry.find(&open)? + open.len();
        let end = entry[start..].find('<')? + start;
        Some(entry[start..end].trim().to_owned())
    };
    SubscriptionSettings {
        lock_duration: element("LockDuration")
            .and_then(|d| parse_duration(&d))
            .unwrap_or(defaults.lock_duration),
        max_delivery_count: element("MaxDeliveryCount")
            .and_then(|n| n.parse().ok())
            .unwrap_or(defaults.max_delivery_count),
        auto_delete_on_idle: element("AutoDeleteOnIdle")
            .and_then(|d| parse_duration(&d))
            .unwrap_or(defaults.auto_delete_on_idle),
    }
}

/// `P1DT2H3M4S`-style durations (the subset Service Bus writes).
fn parse_duration(text: &str) -> Option<Duration> {
    let rest = text.strip_prefix('P')?;
    let (mut seconds, mut number, mut in_time) = (0u64, String::new(), false);
    for c in rest.chars() {
        match c {
            'T' => in_time = true,
            '0'..='9' => number.push(c),
            unit => {
                let n: u64 = number.parse().ok()?;
                number.clear();
                seconds += n * match (unit, in_time) {
                    ('D', false) => 86_400,
                    ('H', true) => 3_600,
                    ('M', true) => 60,
                    ('S', true) => 1,
                    _ => return None,
                };
            }
        }
    }
    Some(Duration::from_secs(seconds))
}

fn error_xml(code: u16, detail: &str) -> String {
    format!("<Error><Code>{code}</Code><Detail>{detail}</Detail></Error>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_durations_service_bus_writes() {
        assert_eq!(parse_duration("PT1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("PT1M30S"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("P1DT2H"), Some(Duration::from_secs(93_600)));
        assert_eq!(parse_duration("1H"), None);
    }
}
