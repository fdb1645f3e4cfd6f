//! The job on the Event Grid namespace pull source, against the testkit's namespace stand-in
//! (HTTPS on loopback: long-polled `:receive`, one `:acknowledge` per event). The same two
//! figures as the other transports: latency from publish to cache changed at a fixed rate, and
//! the most events per second for a burst.
//!
//! The fleet's events are in the Event Grid schema; a namespace topic takes CloudEvents only,
//! so the publisher turns each into its CloudEvent (as Key Vault's system topic does when it
//! forwards in the CloudEvents schema) and publishes it in process, as the Service Bus
//! emulator's publisher does. The turning (a JSON parse, a few microseconds) falls inside the
//! measured latency.

use keyvault_invalidator_eventgrid::pull::{PullConfig, PullSource};
use keyvault_invalidator_testkit::eventgrid_namespace::NamespaceStandIn;
use serde_json::{json, Value};
use std::sync::Arc;

use crate::end_to_end::{latency_run, throughput_run, Sizes, TransportResult};

/// The row's name.
pub const TRANSPORT: &str = "Event Grid namespace pull";

/// Both runs, each on a topic and subscription of its own.
pub async fn eventgrid_pull(sizes: Sizes) -> Result<TransportResult, String> {
    let standin = Arc::new(
        NamespaceStandIn::start()
            .await
            .map_err(|error| error.to_string())?,
    );
    let source = |run: &str| {
        let topic = format!("bench-{run}");
        standin.create_subscription(&topic, "bench");
        let config = PullConfig::builder(standin.endpoint(), &topic, "bench")
            .access_key(standin.access_key())
            .client_options(standin.client_options())
            .max_events(100)
            .build()
            .map_err(|error| error.to_string())?;
        Ok::<_, String>((PullSource::new(config), topic))
    };
    let publish = |topic: String| {
        let standin = standin.clone();
        move |_: usize, body: Vec<u8>| {
            standin
                .publish(&topic, [cloud_event(&body)])
                .expect("the stand-in takes the event");
        }
    };

    let (latency_source, topic) = source("latency")?;
    let latency = latency_run(latency_source, sizes, publish(topic)).await;
    let (throughput_source, topic) = source("throughput")?;
    let throughput = throughput_run(throughput_source, sizes.burst, publish(topic)).await;
    Ok(TransportResult {
        transport: TRANSPORT.to_owned(),
        rate: sizes.rate,
        latency_measured: true,
        latency,
        throughput_events: sizes.burst,
        throughput_per_second: throughput,
    })
}

/// The CloudEvent of an Event Grid-schema event (an object, or an array of one).
fn cloud_event(event_grid: &[u8]) -> Value {
    let parsed: Value = serde_json::from_slice(event_grid).expect("the fleet's events are JSON");
    let event = match parsed {
        Value::Array(mut events) => events.swap_remove(0),
        event => event,
    };
    json!({
        "id": event["id"],
        "source": event["topic"],
        "subject": event["subject"],
        "type": event["eventType"],
        "time": event["eventTime"],
        "data": event["data"],
        "specversion": "1.0",
    })
}
