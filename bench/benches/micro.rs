//! The micro benchmarks: parsing Key Vault events, the cache hit path beside its baselines, and
//! what the job's metrics and tracing cost per delivery when the application installed neither
//! a recorder nor a subscriber.
//!
//! Run through `bench/run`, which also runs the peer in `bench/peer` and writes the report; or
//! alone with `cargo bench -p keyvault-invalidator-bench --bench micro`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::RwLock;

use criterion::{Criterion, Throughput};
use futures::executor::block_on;
use keyvault_invalidator_bench::hit_path::{bench_reads, secret_names, secret_value};
use keyvault_invalidator_core::{parse_events, Secret, SecretCache};
use keyvault_invalidator_moka::CachedSecretProvider;
use keyvault_invalidator_testkit::InMemoryVault;

/// Microsoft's documentation samples, byte for byte (the core parser tests use the same files).
const SAMPLES: [(&str, &[u8]); 2] = [
    (
        "event_grid",
        include_bytes!("../../crates/core/tests/fixtures/eventgrid-docs-sample.json"),
    ),
    (
        "cloud_events",
        include_bytes!("../../crates/core/tests/fixtures/cloudevents-docs-sample.json"),
    ),
];

/// This parser beside the floor: `serde_json` into a `Value`, which any parser of the same bytes
/// has to match at least.
fn parse(c: &mut Criterion) {
    for (schema, body) in SAMPLES {
        let events = parse_events(body).expect("the documentation sample parses");
        assert_eq!(events.len(), 1, "{schema}: one event in the sample");
        let mut group = c.benchmark_group(format!("parse_{schema}"));
        group.throughput(Throughput::Elements(1));
        group.bench_function("kvi_parse_events", |b| {
            b.iter(|| parse_events(black_box(body)))
        });
        group.bench_function("serde_json_value", |b| {
            b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(body)))
        });
        group.finish();
    }
}

/// A warm `CachedSecretProvider` beside raw moka and a `RwLock<HashMap>` holding the same
/// `Secret`s, each returning an owned `Secret` as the application gets one.
fn hit_path(c: &mut Criterion) {
    let names = secret_names();
    let vault = InMemoryVault::new();
    for name in &names {
        vault.set(name, &secret_value(name));
    }
    let cache = CachedSecretProvider::new(vault.clone());
    for name in &names {
        block_on(cache.get(name)).expect("warm-up read");
    }
    bench_reads(c, "kvi_cached_secret_provider", |name| {
        block_on(cache.get(name)).expect("a warm read")
    });
    assert_eq!(
        vault.total_calls(),
        names.len(),
        "the measured reads were all hits"
    );
    // Until they are reloaded, entries older than the last invalidation of any key take one more
    // lookup (the guard against a load overtaken by an invalidation): measure that case too.
    block_on(cache.invalidate("some-other-secret")).expect("an invalidation");
    bench_reads(c, "kvi_after_an_invalidation", |name| {
        block_on(cache.get(name)).expect("a warm read")
    });
    assert_eq!(vault.total_calls(), names.len(), "still all hits");

    let moka_cache = moka::future::Cache::<String, Secret>::builder()
        .max_capacity(10_000)
        .build();
    let map = RwLock::new(HashMap::<String, Secret>::new());
    for name in &names {
        let secret = Secret::new(secret_value(name)).with_version("0123456789abcdef");
        block_on(moka_cache.insert(name.clone(), secret.clone()));
        map.write()
            .expect("unpoisoned")
            .insert(name.clone(), secret);
    }
    bench_reads(c, "raw_moka", |name| {
        block_on(moka_cache.get(name)).expect("a cached secret")
    });
    bench_reads(c, "rwlock_hashmap", |name| {
        map.read()
            .expect("unpoisoned")
            .get(name)
            .cloned()
            .expect("a cached secret")
    });
}

/// What the job does per delivery for `metrics` and `tracing` (`crates/core/src/job/stats.rs`
/// and `job/delivery.rs`), written out the same way, in a process with no recorder and no
/// subscriber: the handles are made once per job, as the job makes them; each delivery then
/// updates them and opens its span.
fn observability(c: &mut Criterion) {
    let mut group = c.benchmark_group("observability_per_delivery");
    group.throughput(Throughput::Elements(1));
    let job = String::from("keyvault-invalidator");
    group.bench_function("metric_handles_per_job", |b| {
        b.iter(|| {
            let received = metrics::counter!("kvi_received", "job" => job.clone());
            let completed = metrics::counter!("kvi_completed", "job" => job.clone());
            let processing = metrics::histogram!("kvi_processing", "job" => job.clone());
            black_box((received, completed, processing))
        })
    });
    let received = metrics::counter!("kvi_received", "job" => job.clone());
    let invalidated = metrics::counter!("kvi_invalidated", "job" => job.clone());
    let completed = metrics::counter!("kvi_completed", "job" => job.clone());
    let processing = metrics::histogram!("kvi_processing", "job" => job.clone());
    let event_age = metrics::histogram!("kvi_event_age", "job" => job.clone());
    group.bench_function("metric_updates", |b| {
        b.iter(|| {
            let started = std::time::Instant::now();
            received.increment(1);
            invalidated.increment(1);
            event_age.record(black_box(1.5));
            completed.increment(1);
            processing.record(started.elapsed().as_secs_f64());
        })
    });
    let message_id = String::from("0b8c6a0e-1f2d-4c3b-9a8e-7d6c5b4a3f21");
    group.bench_function("span_and_records", |b| {
        b.iter(|| {
            let span = tracing::info_span!(
                "delivery",
                message_id = black_box(message_id.as_str()),
                delivery_count = black_box(1u32),
                event_id = tracing::field::Empty,
                vault = tracing::field::Empty,
                secret = tracing::field::Empty,
            );
            let _entered = span.enter();
            let current = tracing::Span::current();
            current.record("event_id", "1");
            current.record("secret", "db-password");
            current.record("vault", "prod-kv");
        })
    });
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    parse(&mut criterion);
    hit_path(&mut criterion);
    observability(&mut criterion);
    criterion.final_summary();
}
