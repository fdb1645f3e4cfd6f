//! The in-memory source passes the conformance suite it offers to every adapter.

use keyvault_invalidator_testkit::conformance::{self, ConformanceTarget, DeadLetter};
use keyvault_invalidator_testkit::InMemoryEventSource;

struct InMemory;

#[async_trait::async_trait]
impl ConformanceTarget for InMemory {
    type Source = InMemoryEventSource;

    async fn new_source(&self) -> InMemoryEventSource {
        InMemoryEventSource::new()
    }

    async fn publish(&self, source: &InMemoryEventSource, message_id: &str, body: &[u8]) {
        source
            .publisher()
            .publish(message_id.to_owned(), body.to_vec());
    }

    async fn dead_letters(&self, source: &InMemoryEventSource) -> Vec<DeadLetter> {
        source
            .publisher()
            .dead_letters()
            .into_iter()
            .map(|m| DeadLetter {
                body: m.body.to_vec(),
                reason: m.reason,
                description: m.description,
            })
            .collect()
    }

    async fn reopen(&self, source: &InMemoryEventSource) -> InMemoryEventSource {
        source.reopen()
    }
}

#[tokio::test]
async fn the_in_memory_source_passes_the_conformance_suite() {
    conformance::run_all(&InMemory).await;
}

#[tokio::test]
async fn closing_returns_unsettled_deliveries_to_the_queue() {
    use keyvault_invalidator_core::EventSource;
    let source = InMemoryEventSource::new();
    let publisher = source.publisher();
    publisher.publish("m1", b"{}".to_vec());
    let batch = source.receive(1).await.unwrap();
    assert_eq!(publisher.in_flight(), 1);
    source.close().await.unwrap();
    assert_eq!((publisher.in_flight(), publisher.queued()), (0, 1));
    let error = source
        .settle(
            batch.into_iter().next().unwrap().token,
            keyvault_invalidator_core::Settlement::Complete,
        )
        .await
        .unwrap_err();
    assert_eq!(
        error.kind,
        keyvault_invalidator_core::SourceErrorKind::SettlementLost
    );
}

#[tokio::test]
async fn a_token_from_another_source_is_refused() {
    use keyvault_invalidator_core::{EventSource, Settlement, SourceErrorKind};
    let (a, b) = (InMemoryEventSource::new(), InMemoryEventSource::new());
    a.publisher().publish("m1", b"{}".to_vec());
    let delivery = a.receive(1).await.unwrap().remove(0);
    let error = b
        .settle(delivery.token, Settlement::Complete)
        .await
        .unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::Fatal);
    assert_eq!(a.publisher().in_flight(), 1, "a's delivery is untouched");
}
