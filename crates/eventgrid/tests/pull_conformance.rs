//! The pull source passes the conformance suite against the namespace stand-in.
//!
//! The suite's bodies are small JSON documents; they travel as the CloudEvents' `data`. The
//! source hands the job the whole CloudEvent (what the job parses), so the target's source is
//! the pull source seen through [`DataOf`], which compares the event's `data`: the very bytes
//! the suite published, since the stand-in keeps the JSON as published.

mod common;

use async_trait::async_trait;
use keyvault_invalidator_core::{
    Bytes, Delivery, DeliveryToken, EventSource, Settlement, SourceError,
};
use keyvault_invalidator_eventgrid::pull::PullSource;
use keyvault_invalidator_testkit::conformance::{self, ConformanceTarget, DeadLetter};
use keyvault_invalidator_testkit::eventgrid_namespace::NamespaceStandIn;
use serde_json::Value;

struct StandIn {
    standin: NamespaceStandIn,
}

/// The pull source, with each delivery's body narrowed to its CloudEvent's `data`.
struct DataOf {
    inner: PullSource,
    topic: String,
    subscription: String,
}

#[async_trait]
impl EventSource for DataOf {
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, SourceError> {
        let mut batch = self.inner.receive(max).await?;
        for delivery in &mut batch {
            delivery.body = Bytes::from(data_of(&delivery.body));
        }
        Ok(batch)
    }

    async fn settle(
        &self,
        token: DeliveryToken,
        settlement: Settlement,
    ) -> Result<(), SourceError> {
        self.inner.settle(token, settlement).await
    }

    async fn close(&self) -> Result<(), SourceError> {
        self.inner.close().await
    }
}

fn data_of(event: &[u8]) -> Vec<u8> {
    let event: Value = serde_json::from_slice(event).expect("the body is the CloudEvent JSON");
    serde_json::to_vec(&event["data"]).expect("serialisable")
}

#[async_trait]
impl ConformanceTarget for StandIn {
    type Source = DataOf;

    async fn new_source(&self) -> DataOf {
        let (topic, subscription) = common::new_subscription(&self.standin, "conformance");
        DataOf {
            inner: common::source(&self.standin, &topic, &subscription),
            topic,
            subscription,
        }
    }

    async fn publish(&self, source: &DataOf, message_id: &str, body: &[u8]) {
        let data: Value = serde_json::from_slice(body).expect("the suite's bodies are JSON");
        self.standin
            .publish(&source.topic, [common::cloud_event(message_id, data)])
            .expect("published");
    }

    async fn dead_letters(&self, source: &DataOf) -> Vec<DeadLetter> {
        self.standin
            .dead_letters(&source.topic, &source.subscription)
            .into_iter()
            .map(|letter| DeadLetter {
                body: serde_json::to_vec(&letter.event["data"]).expect("serialisable"),
                // Event Grid's reject carries none: the source logs them.
                reason: String::new(),
                description: String::new(),
            })
            .collect()
    }

    fn dead_letter_carries_reason(&self) -> bool {
        false
    }

    async fn reopen(&self, source: &DataOf) -> DataOf {
        DataOf {
            inner: common::source(&self.standin, &source.topic, &source.subscription),
            topic: source.topic.clone(),
            subscription: source.subscription.clone(),
        }
    }

    fn lock_duration(&self) -> Option<std::time::Duration> {
        Some(common::LOCK)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pull_source_passes_the_conformance_suite() {
    let target = StandIn {
        standin: common::standin().await,
    };
    conformance::run_all(&target).await;
}
