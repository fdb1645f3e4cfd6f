//! The job behind the Event Grid webhook: events POSTed over loopback HTTP as Event Grid
//! pushes them (one event per request, in an array, with the `aeg-*` headers, via the
//! testkit's `EventGridPusher`), each answered once the cache holds the new version.
//!
//! Latency runs from the moment a request is handed to the HTTP client to the cache change.
//! The burst keeps at most [`IN_FLIGHT`] requests open at once, as Event Grid bounds the
//! deliveries it has outstanding to one endpoint; a request holds its connection until the
//! event is applied, so this also bounds the job's concurrency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keyvault_invalidator_eventgrid::webhook::{WebhookConfig, WebhookSource};
use keyvault_invalidator_testkit::eventgrid_push::{EventGridPusher, PushOutcome, RetrySchedule};
use secrecy::SecretString;
use tokio::sync::Semaphore;

use crate::end_to_end::{latency_run, throughput_run, Sizes, TransportResult};

/// The row's transport name.
pub const TRANSPORT: &str = "Event Grid webhook";
/// Requests open at once, at most.
pub const IN_FLIGHT: usize = 64;
const SECRET: &str = "bench-webhook-secret";

async fn webhook() -> Result<(WebhookSource, EventGridPusher), String> {
    let config = WebhookConfig::new("127.0.0.1:0".parse().expect("an address"))
        .plain_http()
        .shared_secret(SecretString::from(SECRET));
    let source = WebhookSource::bind(config)
        .await
        .map_err(|error| error.to_string())?;
    let url = format!("http://{}/api/events?code={SECRET}", source.local_addr());
    let pusher = EventGridPusher::new(&url)
        .map_err(|error| error.to_string())?
        .retry_schedule(RetrySchedule::fast(Duration::from_millis(10), 30));
    Ok((source, pusher))
}

/// What `publish(i, body)` does for the webhook: a push of its own, in the background (the
/// publisher never waits for the answer), at most [`IN_FLIGHT`] at once. Counts pushes that
/// did not end in a 200, which the run reports as lost events.
fn publisher(
    pusher: EventGridPusher,
    failures: Arc<AtomicUsize>,
) -> impl FnMut(usize, Vec<u8>) + Send + 'static {
    let runtime = tokio::runtime::Handle::current();
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    move |i: usize, body: Vec<u8>| {
        let (pusher, permits, failures) = (pusher.clone(), permits.clone(), failures.clone());
        runtime.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let outcome = pusher
                .push_events(&format!("m{i}"), &[body.as_slice()])
                .await;
            if !matches!(outcome, PushOutcome::Delivered { status: 200, .. }) {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

/// Latency at `sizes.rate` and the most events per second of a burst of `sizes.burst`.
pub async fn webhook_push(sizes: Sizes) -> Result<TransportResult, String> {
    let failures = Arc::new(AtomicUsize::new(0));
    let (source, pusher) = webhook().await?;
    let latency = latency_run(source, sizes, publisher(pusher, failures.clone())).await;
    let (source, pusher) = webhook().await?;
    let throughput = throughput_run(source, sizes.burst, publisher(pusher, failures.clone())).await;
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(format!("{failed} pushes were not answered 200"));
    }
    Ok(TransportResult {
        transport: TRANSPORT.to_owned(),
        rate: sizes.rate,
        latency_measured: true,
        latency,
        throughput_events: sizes.burst,
        throughput_per_second: throughput,
    })
}
