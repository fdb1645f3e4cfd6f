//! What each route answers.

use std::time::Duration;

use http_body_util::Either;
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};
use keyvault_invalidator_core::{ProviderError, Secret, SecretProvider};
use serde::Serialize;
use tokio::time::Instant;

use super::query::{self, SecretQuery};
use super::response::{self, AgentBody};
use super::sse::{self, Watched};
use super::{AppState, WatcherGauge};

/// `GET /healthz`: the process answers.
pub fn healthz() -> Response<AgentBody> {
    response::json(
        StatusCode::OK,
        &Status {
            status: "ok",
            reason: None,
        },
    )
}

#[derive(Serialize)]
struct Status<'a> {
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// `GET /readyz`: 200 while the job runs and its transport is connected, else 503 saying why.
pub fn readyz(state: &AppState) -> Response<AgentBody> {
    match state.readiness.check(state.metrics.as_ref()) {
        Ok(()) => response::json(
            StatusCode::OK,
            &Status {
                status: "ready",
                reason: None,
            },
        ),
        Err(reason) => response::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &Status {
                status: "not_ready",
                reason: Some(reason),
            },
        ),
    }
}

/// `GET /metrics`: the Prometheus text format.
pub fn metrics(state: &AppState) -> Response<AgentBody> {
    match &state.metrics {
        Some(metrics) => response::with_body(
            StatusCode::OK,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            metrics.render(&state.cache.stats()).into(),
        ),
        None => response::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "another metrics recorder was installed in this process",
        ),
    }
}

/// `GET /v1/secrets/{name}`, with its query.
pub async fn secret(state: &AppState, name: &str, query: Option<&str>) -> Response<AgentBody> {
    let query = match SecretQuery::parse(query) {
        Ok(query) => query,
        Err(refusal) => return *refusal,
    };
    if let Some(after) = &query.after_version {
        return long_poll(state, name, after, query.wait_secs.unwrap_or(0)).await;
    }
    let read = async {
        match (&query.version, query.refresh) {
            // A pinned version never changes: the cache answers it when it holds that version,
            // else the vault does, and the answer is not cached (the cache holds current
            // versions only).
            (Some(version), _) => state.cache.get_secret_version(name, version).await,
            // From the vault; the answer replaces the cached value.
            (None, true) => state.cache.get_uncached(name).await,
            (None, false) => state.cache.get(name).await,
        }
    };
    match bounded(state, name, read).await {
        Ok(Ok(secret)) => response::secret(name, &secret),
        Ok(Err(error)) => failed(name, &error),
        Err(timeout) => timeout,
    }
}

/// Runs a read within the request timeout; past it, 504.
async fn bounded(
    state: &AppState,
    name: &str,
    read: impl std::future::Future<Output = Result<Secret, ProviderError>>,
) -> Result<Result<Secret, ProviderError>, Response<AgentBody>> {
    tokio::time::timeout(state.request_timeout, read)
        .await
        .map_err(|_| response::upstream_timeout(name, state.request_timeout))
}

fn failed(name: &str, error: &ProviderError) -> Response<AgentBody> {
    // The kind and message only: a provider error never holds a value.
    tracing::debug!(secret = name, kind = %error.kind, "read failed");
    response::provider_error(error)
}

fn differs(secret: &Secret, known: &str) -> bool {
    secret
        .version()
        .is_none_or(|version| !version.eq_ignore_ascii_case(known))
}

/// `?after_version=V&wait=S`: the secret at once when its version is not `V`, else when a
/// rotation brings another one within `S` seconds, else 304.
async fn long_poll(
    state: &AppState,
    name: &str,
    known: &str,
    wait_secs: u64,
) -> Response<AgentBody> {
    let Ok(permit) = state.watchers.clone().try_acquire_owned() else {
        return too_many_watchers();
    };
    let _permit = permit;
    let _gauge = WatcherGauge::enter();
    // Subscribed before the read, so a rotation between the two is not missed.
    let mut versions = state.cache.subscribe(name).await;
    match bounded(state, name, state.cache.get(name)).await {
        Ok(Ok(secret)) if differs(&secret, known) => return response::secret(name, &secret),
        Ok(Ok(_)) => {}
        Ok(Err(error)) => return failed(name, &error),
        Err(timeout) => return timeout,
    }
    let deadline = Instant::now() + Duration::from_secs(wait_secs);
    loop {
        let changed = tokio::select! {
            changed = tokio::time::timeout_at(deadline, versions.changed()) => changed,
            _ = state.shutdown.cancelled() => return response::not_modified(),
        };
        match changed {
            // The wait ended, or the cache went away: nothing new.
            Err(_) | Ok(Err(_)) => return response::not_modified(),
            Ok(Ok(())) => {
                let news = versions
                    .borrow_and_update()
                    .as_deref()
                    .is_some_and(|version| !version.eq_ignore_ascii_case(known));
                if !news {
                    continue;
                }
                match bounded(state, name, state.cache.get(name)).await {
                    Ok(Ok(secret)) if differs(&secret, known) => {
                        return response::secret(name, &secret)
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => return failed(name, &error),
                    Err(timeout) => return timeout,
                }
            }
        }
    }
}

fn too_many_watchers() -> Response<AgentBody> {
    let mut response = response::error(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_watchers",
        "the limit of waiting clients (server.max_watchers) is reached",
    );
    response
        .headers_mut()
        .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// `GET /v1/watch?name=a&name=b`: Server-Sent Events.
pub async fn watch(state: &AppState, query: Option<&str>) -> Response<AgentBody> {
    let names = match query::watched_names(query) {
        Ok(names) => names,
        Err(refusal) => return *refusal,
    };
    let Ok(permit) = state.watchers.clone().try_acquire_owned() else {
        return too_many_watchers();
    };
    let mut watched = Vec::with_capacity(names.len());
    for name in names {
        let versions = state.cache.subscribe(&name).await;
        // Loaded so the cache holds it: the cache refreshes (and announces) only what it holds.
        // A failure is not the watcher's business: it learns of the next version that loads.
        let known = match bounded(state, &name, state.cache.get(&name)).await {
            Ok(Ok(secret)) => secret.version().map(str::to_owned),
            Ok(Err(error)) => {
                tracing::debug!(secret = %name, kind = %error.kind, "watched secret not loaded");
                None
            }
            Err(_) => None,
        };
        watched.push(Watched {
            name,
            versions,
            known,
        });
    }
    let body = sse::start(watched, permit, state.shutdown.clone());
    let mut response = Response::new(Either::Right(body));
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}
