//! What the pull tests share: a stand-in with short locks and waits, a source over one of its
//! subscriptions, and CloudEvents to publish.
#![allow(dead_code)] // each test binary uses its own part

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keyvault_invalidator_eventgrid::pull::{PullConfig, PullConfigBuilder, PullSource};
use keyvault_invalidator_testkit::eventgrid_namespace::NamespaceStandIn;
use serde_json::{json, Value};

/// The stand-in's lock: short, so that the lock check outlasts it and lost locks come back soon.
pub const LOCK: Duration = Duration::from_secs(2);

/// A stand-in whose locks last [`LOCK`] and whose long polls end within a second.
pub async fn standin() -> NamespaceStandIn {
    NamespaceStandIn::builder()
        .lock_duration(LOCK)
        .wait_cap(Duration::from_secs(1))
        .start()
        .await
        .expect("the stand-in starts")
}

/// A fresh topic and subscription name pair, created on `standin`.
pub fn new_subscription(standin: &NamespaceStandIn, what: &str) -> (String, String) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let topic = format!("{what}-topic-{n}");
    let subscription = format!("{what}-sub-{n}");
    standin.create_subscription(&topic, &subscription);
    (topic, subscription)
}

/// A config builder for the subscription, with the stand-in's transport and [`LOCK`]; the
/// caller adds the authentication.
pub fn builder(standin: &NamespaceStandIn, topic: &str, subscription: &str) -> PullConfigBuilder {
    PullConfig::builder(standin.endpoint(), topic, subscription)
        .client_options(standin.client_options())
        .max_wait_time(Duration::from_secs(10))
        .lock_duration(LOCK)
}

/// A source authenticated with the stand-in's access key.
pub fn source(standin: &NamespaceStandIn, topic: &str, subscription: &str) -> PullSource {
    let config = builder(standin, topic, subscription)
        .access_key(standin.access_key())
        .build()
        .expect("a valid config");
    PullSource::new(config)
}

/// A CloudEvent with `id` and `data`.
pub fn cloud_event(id: &str, data: Value) -> Value {
    json!({
        "id": id,
        "source": "/conformance",
        "type": "Conformance.Message",
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "data": data,
    })
}

/// `(ready, locked)`: what the subscription holds.
pub fn ready_and_locked(
    standin: &NamespaceStandIn,
    topic: &str,
    subscription: &str,
) -> (usize, usize) {
    (
        standin.ready_count(topic, subscription),
        standin.locked_count(topic, subscription),
    )
}
