//! Which route a request is, the rules it passes first, and its metrics.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::time::Instant;

use super::response::{self, AgentBody};
use super::{auth, query, routes, AppState};

/// The routes, as labelled in the request metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Healthz,
    Readyz,
    Metrics,
    Secret(&'a str),
    Watch,
    UnknownV1,
    Unknown,
}

impl Route<'_> {
    fn of(path: &str) -> Route<'_> {
        match path {
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/metrics" => Route::Metrics,
            "/v1/watch" => Route::Watch,
            _ => match path.strip_prefix("/v1/secrets/") {
                Some(name) => Route::Secret(name),
                None if path.starts_with("/v1/") => Route::UnknownV1,
                None => Route::Unknown,
            },
        }
    }

    /// The index of its label in [`ROUTES`](crate::metrics::ROUTES).
    fn metric_index(self) -> usize {
        match self {
            Route::Secret(_) => 0,
            Route::Watch => 1,
            Route::Healthz => 2,
            Route::Readyz => 3,
            Route::Metrics => 4,
            Route::UnknownV1 | Route::Unknown => 5,
        }
    }

    fn needs_token(self) -> bool {
        matches!(self, Route::Secret(_) | Route::Watch | Route::UnknownV1)
    }
}

/// Answers one request. Never fails: every outcome is a response.
pub async fn handle(state: &AppState, request: Request<Incoming>) -> Response<AgentBody> {
    let started = Instant::now();
    let route = Route::of(request.uri().path());
    let response = answer(state, route, &request).await;
    crate::metrics::record_request(
        route.metric_index(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn answer(
    state: &AppState,
    route: Route<'_>,
    request: &Request<Incoming>,
) -> Response<AgentBody> {
    if let Some(refusal) = auth::refuse_forwarded(request.headers()) {
        return refusal;
    }
    if let Some(refusal) = auth::refuse_method(request.method()) {
        return refusal;
    }
    if route.needs_token() {
        if let Some(refusal) = auth::refuse_unauthorized(request.headers(), &state.token) {
            return refusal;
        }
    }
    let query = request.uri().query();
    match route {
        Route::Healthz => routes::healthz(),
        Route::Readyz => routes::readyz(state),
        Route::Metrics => routes::metrics(state),
        Route::Secret(segment) => match query::secret_name(segment) {
            Ok(name) => routes::secret(state, &name, query).await,
            Err(refusal) => *refusal,
        },
        Route::Watch => routes::watch(state, query).await,
        Route::UnknownV1 | Route::Unknown => response::error(
            StatusCode::NOT_FOUND,
            "no_such_route",
            "routes: /v1/secrets/{name}, /v1/watch, /healthz, /readyz, /metrics",
        ),
    }
}
