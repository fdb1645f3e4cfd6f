//! Metrics: the Prometheus recorder (`metrics-exporter-prometheus`, rendered into `/metrics` by
//! the agent's own server, so it opens no listener), the request metrics, the cache's counters,
//! and the transports' `*_connected` gauges observed for `/readyz`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{
    Counter, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use keyvault_invalidator_moka::CacheStats;

/// Counter: requests answered, labelled `route` and `status`.
pub const REQUESTS: &str = "kvi_agent_http_requests_total";
/// Histogram: seconds from the request's headers to its response, labelled `route`.
pub const REQUEST_SECONDS: &str = "kvi_agent_http_request_duration_seconds";
/// Gauge: connections open now.
pub const CONNECTIONS: &str = "kvi_agent_http_connections";
/// Counter: connections refused with 429 because `server.max_connections` were open.
pub const CONNECTIONS_REFUSED: &str = "kvi_agent_http_connections_refused_total";
/// Gauge: long-poll and SSE clients waiting now.
pub const WATCHERS: &str = "kvi_agent_watchers";

/// The request-latency buckets, in seconds: a cache hit answers in tens of microseconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The process's recorder: installed once, shared by every agent in the process (tests start
/// several).
#[derive(Clone)]
pub struct AgentMetrics {
    handle: PrometheusHandle,
    connected: Arc<ConnectedGauges>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

static INSTALLED: OnceLock<Option<AgentMetrics>> = OnceLock::new();

impl AgentMetrics {
    /// Installs the recorder as the global one, the first time; later calls return the same.
    /// `None` when another recorder was installed first (by an embedding application).
    pub fn install() -> Option<AgentMetrics> {
        INSTALLED
            .get_or_init(|| {
                let recorder = PrometheusBuilder::new()
                    .set_buckets_for_metric(
                        Matcher::Full(REQUEST_SECONDS.to_owned()),
                        LATENCY_BUCKETS,
                    )
                    .ok()?
                    .build_recorder();
                let handle = recorder.handle();
                let connected = Arc::new(ConnectedGauges::default());
                let observing = ObservingRecorder {
                    inner: recorder,
                    connected: connected.clone(),
                };
                metrics::set_global_recorder(observing).ok()?;
                describe();
                Some(AgentMetrics { handle, connected })
            })
            .clone()
    }

    /// The Prometheus text exposition of every metric, after copying in the cache's counters.
    pub fn render(&self, cache: &CacheStats) -> String {
        record_cache_stats(cache);
        self.handle.render()
    }

    /// The last value of the gauge `name` (a transport's `..._connected`), if it was set.
    pub fn connected_gauge(&self, name: &str) -> Option<f64> {
        self.connected.value(name)
    }
}

fn describe() {
    metrics::describe_counter!(REQUESTS, "HTTP requests answered, by route and status");
    metrics::describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "HTTP request latency, by route"
    );
    metrics::describe_gauge!(CONNECTIONS, "HTTP connections open");
    metrics::describe_counter!(
        CONNECTIONS_REFUSED,
        "HTTP connections refused because the connection limit was reached"
    );
    metrics::describe_gauge!(WATCHERS, "long-poll and SSE clients waiting");
}

/// The route labels of the request metrics.
pub const ROUTES: [&str; 6] = [
    "/v1/secrets/{name}",
    "/v1/watch",
    "/healthz",
    "/readyz",
    "/metrics",
    "unknown",
];

/// The status labels of the request metrics, `other` last.
const STATUSES: [u16; 12] = [200, 304, 400, 401, 403, 404, 405, 429, 500, 502, 503, 504];

/// The request metrics' handles, registered once: looking a labelled metric up in the registry
/// on every request costs more than the rest of a cache hit's bookkeeping.
struct RequestMetrics {
    /// `ROUTES.len()` rows of `STATUSES.len() + 1` counters.
    counters: Vec<Counter>,
    histograms: Vec<Histogram>,
}

static REQUEST_METRICS: OnceLock<RequestMetrics> = OnceLock::new();

fn request_metrics() -> &'static RequestMetrics {
    REQUEST_METRICS.get_or_init(|| {
        let mut counters = Vec::with_capacity(ROUTES.len() * (STATUSES.len() + 1));
        let mut histograms = Vec::with_capacity(ROUTES.len());
        for route in ROUTES {
            for status in STATUSES
                .iter()
                .map(|s| s.to_string())
                .chain(["other".to_owned()])
            {
                counters.push(metrics::counter!(REQUESTS, "route" => route, "status" => status));
            }
            histograms.push(metrics::histogram!(REQUEST_SECONDS, "route" => route));
        }
        RequestMetrics {
            counters,
            histograms,
        }
    })
}

/// Counts one answered request on the route `ROUTES[route]`.
pub fn record_request(route: usize, status: u16, elapsed: Duration) {
    let metrics = request_metrics();
    let route = route.min(ROUTES.len() - 1);
    let status = STATUSES
        .iter()
        .position(|s| *s == status)
        .unwrap_or(STATUSES.len());
    metrics.counters[route * (STATUSES.len() + 1) + status].increment(1);
    metrics.histograms[route].record(elapsed.as_secs_f64());
}

fn record_cache_stats(stats: &CacheStats) {
    let counters: [(&'static str, u64); 12] = [
        ("kvi_agent_cache_hits_total", stats.hits),
        ("kvi_agent_cache_misses_total", stats.misses),
        ("kvi_agent_cache_loads_total", stats.loads),
        ("kvi_agent_cache_load_errors_total", stats.load_errors),
        ("kvi_agent_cache_refreshes_total", stats.refreshes),
        ("kvi_agent_cache_stale_serves_total", stats.stale_serves),
        ("kvi_agent_cache_invalidations_total", stats.invalidations),
        (
            "kvi_agent_cache_duplicate_events_total",
            stats.duplicate_events,
        ),
        ("kvi_agent_cache_older_events_total", stats.older_events),
        (
            "kvi_agent_cache_overtaken_loads_total",
            stats.overtaken_loads,
        ),
        ("kvi_agent_cache_version_reads_total", stats.version_reads),
        (
            "kvi_agent_cache_deferred_events_total",
            stats.deferred_events,
        ),
    ];
    for (name, value) in counters {
        metrics::counter!(name).absolute(value);
    }
    metrics::gauge!("kvi_agent_cache_entries").set(stats.entries as f64);
}

/// The last values of the `*_connected` gauges, by metric name.
#[derive(Default)]
struct ConnectedGauges {
    cells: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl ConnectedGauges {
    fn cell(&self, name: &str) -> Arc<AtomicU64> {
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        cells
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(AtomicU64::new(0f64.to_bits())))
            .clone()
    }

    fn value(&self, name: &str) -> Option<f64> {
        let cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        cells
            .get(name)
            .map(|cell| f64::from_bits(cell.load(Ordering::Acquire)))
    }
}

/// The Prometheus recorder, and a copy of every `*_connected` gauge's value: the transports
/// report their connection only through that gauge, and `/readyz` needs it.
struct ObservingRecorder<R> {
    inner: R,
    connected: Arc<ConnectedGauges>,
}

impl<R: Recorder> Recorder for ObservingRecorder<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.inner.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        let gauge = self.inner.register_gauge(key, metadata);
        if !key.name().ends_with("_connected") {
            return gauge;
        }
        Gauge::from_arc(Arc::new(ObservedGauge {
            inner: gauge,
            cell: self.connected.cell(key.name()),
        }))
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.inner.register_histogram(key, metadata)
    }
}

struct ObservedGauge {
    inner: Gauge,
    cell: Arc<AtomicU64>,
}

impl ObservedGauge {
    fn update(&self, change: impl Fn(f64) -> f64) {
        // A compare-and-swap loop: `AtomicU64` holds the f64's bits.
        let _ = self
            .cell
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                Some(change(f64::from_bits(bits)).to_bits())
            });
    }
}

impl GaugeFn for ObservedGauge {
    fn increment(&self, value: f64) {
        self.inner.increment(value);
        self.update(|old| old + value);
    }

    fn decrement(&self, value: f64) {
        self.inner.decrement(value);
        self.update(|old| old - value);
    }

    fn set(&self, value: f64) {
        self.inner.set(value);
        self.cell.store(value.to_bits(), Ordering::Release);
    }
}
