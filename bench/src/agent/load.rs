//! The load generator: `workers` keep-alive HTTP/1.1 connections (hyper's client), each sending
//! `GET path` one request after another, on one thread.
//!
//! Closed loop (`rate` none): each worker sends its next request when the previous answer is
//! read, for the most requests per second at that concurrency. Open loop (`rate` R): worker `i`
//! of `n` sends at `start + (i + k·n)/R`; a request sent late because the previous answer came
//! late is timed from when it was due, so a stall counts for every request it delayed (no
//! coordinated omission); one sent late because the timer woke late (tokio's timer has
//! millisecond resolution) is timed from when it was sent.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// The server.
    pub address: SocketAddr,
    /// The path and query.
    pub path: String,
    /// `X-KVI-Token`, when the server wants one.
    pub token: Option<String>,
    /// Connections, one request in flight on each.
    pub workers: usize,
    /// Requests per second in all, or as many as answered (closed loop).
    pub rate: Option<f64>,
    /// How long to measure, after `warm_up`.
    pub duration: Duration,
    /// How long to send before measuring.
    pub warm_up: Duration,
}

/// What the load found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadResult {
    /// Answers with status 200 in the measured window.
    pub ok: u64,
    /// Other answers and failures.
    pub errors: u64,
    /// `ok` per second of the measured window.
    pub requests_per_second: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// The slowest.
    pub max_us: f64,
    /// The body size of the last answer, bytes.
    pub body_bytes: usize,
}

struct WorkerResult {
    histogram: Histogram<u64>,
    ok: u64,
    errors: u64,
    body_bytes: usize,
}

/// Runs the plan on the current (single-threaded) runtime.
pub async fn run(plan: LoadPlan) -> LoadResult {
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + plan.warm_up;
    let end = measure_from + plan.duration;
    let workers: Vec<_> = (0..plan.workers)
        .map(|index| {
            tokio::task::spawn_local(worker(plan.clone(), index, start, measure_from, end))
        })
        .collect();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let (mut ok, mut errors, mut body_bytes) = (0, 0, 0);
    for worker in workers {
        let result = worker.await.expect("a worker");
        histogram.add(&result.histogram).expect("same bounds");
        ok += result.ok;
        errors += result.errors;
        body_bytes = body_bytes.max(result.body_bytes);
    }
    let us = |q: f64| histogram.value_at_quantile(q) as f64;
    LoadResult {
        ok,
        errors,
        requests_per_second: ok as f64 / plan.duration.as_secs_f64(),
        p50_us: us(0.5),
        p99_us: us(0.99),
        p999_us: us(0.999),
        max_us: histogram.max() as f64,
        body_bytes,
    }
}

async fn worker(
    plan: LoadPlan,
    index: usize,
    start: Instant,
    measure_from: Instant,
    end: Instant,
) -> WorkerResult {
    let mut result = WorkerResult {
        histogram: Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
        ok: 0,
        errors: 0,
        body_bytes: 0,
    };
    let stream = TcpStream::connect(plan.address)
        .await
        .expect("the server answers");
    stream.set_nodelay(true).expect("nodelay");
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("an HTTP/1.1 connection");
    tokio::task::spawn_local(connection);
    let period = plan
        .rate
        .map(|rate| Duration::from_secs_f64(plan.workers as f64 / rate));
    let offset = plan
        .rate
        .map(|rate| Duration::from_secs_f64(index as f64 / rate))
        .unwrap_or_default();
    tokio::time::sleep_until((start + offset).into()).await;
    let mut due = start + offset;
    loop {
        let now = Instant::now();
        if now >= end {
            return result;
        }
        let sent_at = match period {
            Some(period) => {
                let scheduled = due;
                due += period;
                if scheduled > now {
                    // Tokio's timer has millisecond resolution: the time it wakes late is the
                    // generator's, so the request is timed from when it could be sent.
                    tokio::time::sleep_until(scheduled.into()).await;
                    Instant::now()
                } else {
                    // Behind schedule (the previous answer came late): timed from when it was
                    // due, so the server's stall counts for every request it delayed.
                    scheduled
                }
            }
            None => now,
        };
        let mut request = Request::get(plan.path.as_str()).header("host", "127.0.0.1");
        if let Some(token) = &plan.token {
            request = request.header("x-kvi-token", token.as_str());
        }
        let request = request.body(Empty::<Bytes>::new()).expect("a request");
        let answer = async {
            let response = sender.send_request(request).await.ok()?;
            let status = response.status();
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some((status, body.len()))
        }
        .await;
        let elapsed = sent_at.elapsed();
        if sent_at < measure_from {
            if answer.is_none() {
                return result;
            }
            continue;
        }
        match answer {
            Some((status, bytes)) if status == 200 => {
                result.ok += 1;
                result.body_bytes = bytes;
                let _ = result.histogram.record((elapsed.as_micros() as u64).max(1));
            }
            Some(_) => result.errors += 1,
            None => {
                result.errors += 1;
                return result;
            }
        }
    }
}

/// One GET, its body: the floor answers the agent's exact bytes.
pub async fn fetch(address: SocketAddr, path: &str, token: &str) -> Bytes {
    let stream = TcpStream::connect(address)
        .await
        .expect("the server answers");
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("an HTTP/1.1 connection");
    tokio::spawn(connection);
    let request = Request::get(path)
        .header("host", "127.0.0.1")
        .header("x-kvi-token", token)
        .body(Empty::<Bytes>::new())
        .expect("a request");
    let response = sender.send_request(request).await.expect("an answer");
    assert_eq!(
        response.status(),
        200,
        "the agent answers the benchmark secret"
    );
    response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes()
}
