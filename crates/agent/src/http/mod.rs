//! The HTTP server: hyper 1 over HTTP/1.1, small and explicit.
//!
//! - `router`: which route, the rules before it (forwarded headers, method, token), metrics;
//! - `routes`: what each route answers; `query`: parameters and names; `sse`: `/v1/watch`;
//! - `auth`: the rules; `response`: bodies, the error shape and the status of each error.
//!
//! Limits: `server.max_connections` connections at once (the next one gets a 429 and is
//! closed), headers within the request timeout, each read within it too (504 past it), and
//! `server.max_watchers` long polls and SSE streams at once (429 beyond).

mod auth;
mod query;
mod response;
mod router;
mod routes;
mod sse;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use keyvault_invalidator_core::{CancellationToken, JobMonitor};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ApiToken;
use crate::metrics::{AgentMetrics, CONNECTIONS, CONNECTIONS_REFUSED, WATCHERS};
use crate::runtime::AgentCache;

pub use auth::TOKEN_HEADER;
pub use query::{MAX_WAIT_SECS, MAX_WATCHED_NAMES};
pub use sse::{KEEP_ALIVE, READY_COMMENT};

/// How long a refused connection (over the limit) gets to read its 429.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

/// How long open connections get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What `/readyz` checks.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    /// The job, when there is one (`transport.kind` other than `none`).
    pub job: Option<JobMonitor>,
    /// The transport's `..._connected` gauge, when it has one.
    pub connected_gauge: Option<&'static str>,
}

impl Readiness {
    /// `Ok` when ready, else why not.
    pub fn check(&self, metrics: Option<&AgentMetrics>) -> Result<(), String> {
        if let Some(job) = &self.job {
            let state = job.state();
            if !state.is_running() {
                return Err(match state.error() {
                    Some(error) => format!("the job stopped: {error}"),
                    None => format!("the job is not running ({state:?})"),
                });
            }
        }
        if let Some(gauge) = self.connected_gauge {
            let connected = metrics
                .and_then(|m| m.connected_gauge(gauge))
                .is_some_and(|value| value >= 1.0);
            if !connected {
                return Err("the transport is not connected".to_owned());
            }
        }
        Ok(())
    }
}

/// Everything a request may need.
pub(crate) struct AppState {
    pub(crate) cache: AgentCache,
    pub(crate) token: ApiToken,
    pub(crate) readiness: Readiness,
    pub(crate) metrics: Option<AgentMetrics>,
    pub(crate) watchers: Arc<Semaphore>,
    pub(crate) request_timeout: Duration,
    pub(crate) shutdown: CancellationToken,
}

/// Counts a waiting client in the watchers gauge for as long as it lives.
pub(crate) struct WatcherGauge;

impl WatcherGauge {
    pub(crate) fn enter() -> Self {
        metrics::gauge!(WATCHERS).increment(1.0);
        WatcherGauge
    }
}

impl Drop for WatcherGauge {
    fn drop(&mut self) {
        metrics::gauge!(WATCHERS).decrement(1.0);
    }
}

/// Serves connections from `listener` until `shutdown`, then lets open ones finish briefly.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    max_connections: usize,
    header_timeout: Duration,
) {
    let connections = Arc::new(Semaphore::new(max_connections));
    let shutdown = state.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, say: wait a little rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match connections.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(connection(
                    stream,
                    peer,
                    state.clone(),
                    permit,
                    header_timeout,
                ));
            }
            Err(_) => {
                metrics::counter!(CONNECTIONS_REFUSED).increment(1);
                tokio::spawn(refuse(stream));
            }
        }
    }
    // Wait until every connection has given its permit back, for a bounded time.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, connections.acquire_many(all)).await;
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<AppState>,
    permit: OwnedSemaphorePermit,
    header_timeout: Duration,
) {
    let _permit = permit;
    metrics::gauge!(CONNECTIONS).increment(1.0);
    let shutdown = state.shutdown.clone();
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(router::handle(&state, request).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    let result = tokio::select! {
        result = served.as_mut() => result,
        _ = shutdown.cancelled() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
    metrics::gauge!(CONNECTIONS).decrement(1.0);
}

/// Answers 429 to a connection over the limit and closes it.
async fn refuse(stream: TcpStream) {
    let service = service_fn(|_request| async {
        let mut refusal = response::error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            "the connection limit (server.max_connections) is reached",
        );
        refusal.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("1"),
        );
        Ok::<_, Infallible>(refusal)
    });
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSAL_TIMEOUT);
    let served = builder.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, served).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_the_transports_connected_gauge_at_one() {
        let metrics = AgentMetrics::install().expect("the first recorder of this process");
        let readiness = Readiness {
            job: None,
            connected_gauge: Some("kvi_test_transport_connected"),
        };
        assert_eq!(
            readiness.check(Some(&metrics)),
            Err("the transport is not connected".to_owned())
        );
        metrics::gauge!("kvi_test_transport_connected").set(1.0);
        assert_eq!(readiness.check(Some(&metrics)), Ok(()));
        metrics::gauge!("kvi_test_transport_connected").set(0.0);
        assert!(readiness.check(Some(&metrics)).is_err());
        metrics::gauge!("kvi_test_transport_connected").increment(1.0);
        assert_eq!(readiness.check(Some(&metrics)), Ok(()));
        // Without a recorder of ours nothing can be known: not ready.
        assert!(readiness.check(None).is_err());
        assert_eq!(Readiness::default().check(None), Ok(()));
    }
}
