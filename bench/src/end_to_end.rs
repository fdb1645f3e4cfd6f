//! Events through the whole job, over each transport: in process, RabbitMQ on loopback, and
//! the Service Bus emulator. Two figures each: latency percentiles at a fixed offered rate, and
//! the most events per second the job keeps up with when the events are all there at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyvault_invalidator_core::{EventSource, Job, JobHandle, KeyVaultInvalidator, SecretCache};
use keyvault_invalidator_moka::RefreshMode;
use keyvault_invalidator_rabbitmq::lapin::options::BasicPublishOptions;
use keyvault_invalidator_rabbitmq::lapin::{BasicProperties, Connection, ConnectionProperties};
use keyvault_invalidator_rabbitmq::{RabbitMqConfig, RabbitMqSource};
use keyvault_invalidator_servicebus::{ServiceBusConfig, ServiceBusSource};
use keyvault_invalidator_testkit::servicebus_emulator::ServiceBusEmulator;
use keyvault_invalidator_testkit::InMemoryEventSource;
use serde::{Deserialize, Serialize};

use crate::pipeline::{latencies, per_second, publish_at_rate, Fleet, Latency, VAULT};

/// How long any one run may take before it is reported as failed.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// What one transport achieved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransportResult {
    /// Which transport.
    pub transport: String,
    /// The fixed offered rate of the latency run, events per second.
    pub rate: u64,
    /// Whether this configuration had a latency run (some only measure throughput).
    pub latency_measured: bool,
    /// Latency from an event's publish time to the cache change, at `rate`. `None` when an
    /// event was lost or there was no latency run.
    pub latency: Option<Latency>,
    /// Events in the throughput run.
    pub throughput_events: usize,
    /// Events per second from the first publish to the last cache change (0 when lost).
    pub throughput_per_second: f64,
}

/// How big each run is.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Offered rate of the latency run.
    pub rate: u64,
    /// Seconds the latency run offers events for.
    pub seconds: u64,
    /// Events in the throughput run.
    pub burst: usize,
}

fn job<S, C>(source: S, cache: C) -> JobHandle
where
    S: EventSource + 'static,
    C: SecretCache + 'static,
{
    let invalidator = KeyVaultInvalidator::builder(cache)
        .allow_vault(VAULT)
        .build();
    Job::builder(source, invalidator)
        .name("bench")
        .spawn()
        .expect("a Tokio runtime")
}

/// Offers `sizes.rate` events per second for `sizes.seconds` through a fresh job, and records
/// each event's latency. `publish(i, body)` hands event `i` to the transport.
pub(crate) async fn latency_run<S>(
    source: S,
    sizes: Sizes,
    publish: impl FnMut(usize, Vec<u8>) + Send + 'static,
) -> Option<Latency>
where
    S: EventSource + 'static,
{
    let count = (sizes.rate * sizes.seconds) as usize;
    let mut fleet = Fleet::new(count).await;
    let handle = job(source, fleet.cache.clone());
    let mut bodies = std::mem::take(&mut fleet.events);
    let mut publish = publish;
    let start = Instant::now() + Duration::from_millis(50);
    let driver = tokio::task::spawn_blocking(move || {
        publish_at_rate(start, sizes.rate, count, |i| {
            publish(i, std::mem::take(&mut bodies[i]))
        })
    });
    let published = driver
        .await
        .expect("publisher task")
        .expect("publisher thread");
    let all_arrived = fleet.cache.wait_for(count, RUN_TIMEOUT).await;
    let _ = handle.shutdown().await;
    all_arrived
        .then(|| latencies(&fleet.cache, &published, start, sizes.rate))
        .flatten()
}

/// Publishes `count` events as fast as `publish` takes them while a fresh job consumes them;
/// events per second from the first publish to the last cache change.
pub(crate) async fn throughput_run<S>(
    source: S,
    count: usize,
    publish: impl FnMut(usize, Vec<u8>) + Send + 'static,
) -> f64
where
    S: EventSource + 'static,
{
    let mut fleet = Fleet::new(count).await;
    let handle = job(source, fleet.cache.clone());
    let bodies = std::mem::take(&mut fleet.events);
    let mut publish = publish;
    let started = Instant::now();
    let driver = tokio::task::spawn_blocking(move || {
        for (i, body) in bodies.into_iter().enumerate() {
            publish(i, body);
        }
    });
    driver.await.expect("publisher task");
    rate_when_done(&fleet, handle, count, started).await
}

/// Waits until all `count` secrets changed, stops the job, and gives the events per second since
/// `started`; 0 when an event was lost.
async fn rate_when_done(fleet: &Fleet, handle: JobHandle, count: usize, started: Instant) -> f64 {
    let all_arrived = fleet.cache.wait_for(count, RUN_TIMEOUT).await;
    let elapsed = started.elapsed();
    let _ = handle.shutdown().await;
    if all_arrived {
        per_second(count, elapsed)
    } else {
        0.0
    }
}

/// The job on the in-memory source: the engine's own cost (parse, invalidator, cache, settle).
/// Latency with the default cache; the most events per second in both cache modes, so the
/// table shows what a refresh (a provider call and a cache insert per event) adds.
pub async fn in_process(sizes: Sizes) -> Vec<TransportResult> {
    let source = InMemoryEventSource::new();
    let publisher = source.publisher();
    let latency = latency_run(source, sizes, move |i, body| {
        publisher.publish(format!("m{i}"), body)
    })
    .await;
    let mut results = Vec::new();
    for (mode, transport) in [
        (RefreshMode::RefreshAhead, "in-process"),
        (RefreshMode::Invalidate, "in-process, invalidate mode"),
    ] {
        results.push(TransportResult {
            transport: transport.to_owned(),
            rate: sizes.rate,
            latency_measured: mode == RefreshMode::RefreshAhead,
            latency: (mode == RefreshMode::RefreshAhead)
                .then_some(latency)
                .flatten(),
            throughput_events: sizes.burst,
            throughput_per_second: engine_throughput(sizes.burst, mode).await,
        });
    }
    results
}

/// All events queued before the job starts, so the engine alone sets the pace.
async fn engine_throughput(count: usize, mode: RefreshMode) -> f64 {
    let source = InMemoryEventSource::new();
    let publisher = source.publisher();
    let mut fleet = Fleet::with_mode(count, mode).await;
    for (i, body) in std::mem::take(&mut fleet.events).into_iter().enumerate() {
        publisher.publish(format!("m{i}"), body);
    }
    let started = Instant::now();
    let handle = job(source, fleet.cache.clone());
    rate_when_done(&fleet, handle, count, started).await
}

/// The job on RabbitMQ at `url`; events published with lapin to the source's exchange, as an
/// Event Grid bridge would.
pub async fn rabbitmq(url: &str, sizes: Sizes) -> Result<TransportResult, String> {
    let exchange = format!("kvi-bench-{}", std::process::id());
    let config = |run: &str| {
        RabbitMqConfig::new(url)
            .and_then(|c| c.instance_prefix(&format!("kvi-bench-{run}")))
            .map(|config| {
                config
                    .exchange(&exchange)
                    .dead_letter_exchange(&format!("{exchange}-dlx"))
                    .dead_letter_queue(&format!("{exchange}-dlq"))
            })
            .map_err(|error| error.to_string())
    };
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|error| format!("RabbitMQ at {url}: {error}"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|error| error.to_string())?;
    let runtime = tokio::runtime::Handle::current();
    let publish = |channel: keyvault_invalidator_rabbitmq::lapin::Channel| {
        let exchange = exchange.clone();
        let runtime = runtime.clone();
        move |_: usize, body: Vec<u8>| {
            // No publisher confirms: the figure is the job's, not the publisher's round trip.
            runtime
                .block_on(channel.basic_publish(
                    exchange.as_str().into(),
                    "Microsoft.KeyVault.SecretNewVersionCreated".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                ))
                .expect("publish to RabbitMQ");
        }
    };

    let source = RabbitMqSource::new(config("latency")?);
    source.connect().await.map_err(|error| error.to_string())?;
    let latency = latency_run(source, sizes, publish(channel.clone())).await;
    let source = RabbitMqSource::new(config("throughput")?);
    source.connect().await.map_err(|error| error.to_string())?;
    let throughput = throughput_run(source, sizes.burst, publish(channel.clone())).await;
    let _ = connection.close(200, "benchmark done".into()).await;
    Ok(TransportResult {
        transport: "RabbitMQ".to_owned(),
        rate: sizes.rate,
        latency_measured: true,
        latency,
        throughput_events: sizes.burst,
        throughput_per_second: throughput,
    })
}

/// The job on the in-process Service Bus emulator (AMQP over loopback, peek-lock, $cbs); events
/// published as Event Grid delivers them to a topic. The throughput is measured twice: with the
/// default prefetch, and with a prefetch of 64, since the link credit bounds a burst.
pub async fn servicebus_emulator(sizes: Sizes) -> Result<Vec<TransportResult>, String> {
    let emulator = Arc::new(
        ServiceBusEmulator::start()
            .await
            .map_err(|error| error.to_string())?,
    );
    let topic = "keyvault-events";
    emulator.create_topic(topic);
    let connect = |run: &str, prefetch: Option<u32>| {
        let emulator = emulator.clone();
        let run = run.to_owned();
        async move {
            let config =
                ServiceBusConfig::connection_string(&emulator.connection_string(Some(topic)))
                    .and_then(|c| c.subscription_prefix(&format!("bench-{run}")))
                    .and_then(|config| config.management_endpoint(emulator.management_endpoint()))
                    .map_err(|error| error.to_string())?;
            let config = match prefetch {
                Some(prefetch) => config.prefetch(prefetch),
                None => config,
            };
            let source = ServiceBusSource::new(config);
            source.connect().await.map_err(|error| error.to_string())?;
            Ok::<_, String>(source)
        }
    };
    let publish = || {
        let emulator = emulator.clone();
        move |_: usize, body: Vec<u8>| {
            emulator.publish_as_event_grid(topic, &body);
        }
    };

    let latency = latency_run(connect("latency", None).await?, sizes, publish()).await;
    let mut results = Vec::new();
    for (prefetch, transport) in [
        (None, "Service Bus emulator"),
        (Some(64), "Service Bus emulator, prefetch 64"),
    ] {
        let source = connect(&format!("throughput-{}", results.len()), prefetch).await?;
        results.push(TransportResult {
            transport: transport.to_owned(),
            rate: sizes.rate,
            latency_measured: prefetch.is_none(),
            latency: if prefetch.is_none() { latency } else { None },
            throughput_events: sizes.burst,
            throughput_per_second: throughput_run(source, sizes.burst, publish()).await,
        });
    }
    Ok(results)
}
