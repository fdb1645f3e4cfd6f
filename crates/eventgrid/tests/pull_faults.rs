//! The pull source against the stand-in's faults: failed and throttled polls are retried
//! (after the service's `Retry-After`), a dropped answer loses nothing, and a lock that ran out
//! makes the settlement a `SettlementLost` error.

mod common;

use std::time::Duration;

use keyvault_invalidator_core::{EventSource, Settlement, SourceErrorKind};
use keyvault_invalidator_testkit::conformance::receive_some;
use keyvault_invalidator_testkit::eventgrid_namespace::{
    Fault, NamespaceStandIn, Operation, SubscriptionSettings,
};
use serde_json::json;
use tokio::time::Instant;

fn publish(standin: &NamespaceStandIn, topic: &str, id: &str) {
    standin
        .publish(topic, [common::cloud_event(id, json!({ "n": id }))])
        .expect("published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_polls_are_reported_retried_and_lose_nothing() {
    let standin = common::standin().await;
    let (topic, subscription) = common::new_subscription(&standin, "faults-5xx");
    publish(&standin, &topic, "e-1");
    standin.fail_next(Operation::Receive, 2, Fault::Status(503));
    let source = common::source(&standin, &topic, &subscription);

    // Each failed poll ends the poller: the caller hears of it, and nothing polls until the
    // next receive.
    for calls in 1..=2 {
        let error = source.receive(10).await.unwrap_err();
        assert_eq!(error.kind, SourceErrorKind::Transient, "{error}");
        assert!(
            error.message.contains("answered :receive with 503"),
            "{error}"
        );
        assert_eq!(standin.calls(Operation::Receive), calls);
    }
    let mut batch = source.receive(10).await.expect("the third poll succeeds");
    assert_eq!(batch.len(), 1);
    let delivery = batch.remove(0);
    assert_eq!(
        (delivery.message_id.as_deref(), delivery.delivery_count),
        (Some("e-1"), 1)
    );
    source
        .settle(delivery.token, Settlement::Complete)
        .await
        .expect("acknowledged");
    assert_eq!(standin.calls(Operation::Acknowledge), 1);
    assert_eq!(
        common::ready_and_locked(&standin, &topic, &subscription),
        (0, 0)
    );
    source.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_waited_out_as_the_service_asks() {
    let standin = common::standin().await;
    let (topic, subscription) = common::new_subscription(&standin, "faults-429");
    publish(&standin, &topic, "e-1");
    standin.fail_next(
        Operation::Receive,
        1,
        Fault::Throttled {
            retry_after_secs: 2,
        },
    );
    let source = common::source(&standin, &topic, &subscription);

    let error = source.receive(10).await.unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::Transient);
    assert_eq!(error.retry_after, Some(Duration::from_secs(2)));
    let throttled_at = Instant::now();
    let batch = source.receive(10).await.expect("received after the wait");
    assert!(
        throttled_at.elapsed() >= Duration::from_millis(1_900),
        "the next poll waited {:?}, less than the 2 s asked",
        throttled_at.elapsed()
    );
    assert_eq!(batch[0].message_id.as_deref(), Some("e-1"));
    source.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_lost_with_its_connection_loses_no_event() {
    let standin = common::standin().await;
    let (topic, subscription) = common::new_subscription(&standin, "faults-drop");
    publish(&standin, &topic, "e-1");
    // The stand-in locks the event, then drops the connection instead of answering.
    standin.fail_next(Operation::Receive, 1, Fault::Disconnect);
    let source = common::source(&standin, &topic, &subscription);

    let error = source.receive(10).await.unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::Transient, "{error}");
    assert_eq!(
        standin.locked_count(&topic, &subscription),
        1,
        "locked by the lost answer"
    );
    // Back once its lock runs out, counted twice.
    let mut batch = receive_some(&source, 10, "after the dropped answer").await;
    assert_eq!(batch.len(), 1);
    let delivery = batch.remove(0);
    assert_eq!(
        (delivery.message_id.as_deref(), delivery.delivery_count),
        (Some("e-1"), 2)
    );
    source
        .settle(delivery.token, Settlement::Complete)
        .await
        .expect("acknowledged");
    assert_eq!(
        common::ready_and_locked(&standin, &topic, &subscription),
        (0, 0)
    );
    source.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_after_the_lock_ran_out_is_a_lost_settlement_and_the_event_comes_back() {
    let standin = common::standin().await;
    let (topic, subscription) = common::new_subscription(&standin, "faults-lost");
    publish(&standin, &topic, "e-1");
    let config = common::builder(&standin, &topic, &subscription)
        .access_key(standin.access_key())
        .max_lock_renewal(Duration::ZERO)
        .build()
        .unwrap();
    let source = keyvault_invalidator_eventgrid::pull::PullSource::new(config);

    let delivery = receive_some(&source, 10, "first").await.remove(0);
    tokio::time::sleep(common::LOCK + Duration::from_secs(1)).await;
    let error = source
        .settle(delivery.token, Settlement::Complete)
        .await
        .unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::SettlementLost, "{error}");
    assert!(error.message.contains("(TokenLost:"), "{error}");
    assert_eq!(standin.calls(Operation::RenewLock), 0, "renewal was off");

    let again = receive_some(&source, 10, "again").await.remove(0);
    assert_eq!(again.delivery_count, 2);
    source
        .settle(again.token, Settlement::Complete)
        .await
        .expect("acknowledged");
    source.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_acknowledge_is_transient_and_the_event_comes_back() {
    let standin = common::standin().await;
    let (topic, subscription) = common::new_subscription(&standin, "faults-ack");
    publish(&standin, &topic, "e-1");
    standin.fail_next(Operation::Acknowledge, 1, Fault::Status(500));
    standin.fail_next(
        Operation::Release,
        1,
        Fault::Delay(Duration::from_millis(500)),
    );
    let source = common::source(&standin, &topic, &subscription);

    let delivery = receive_some(&source, 10, "first").await.remove(0);
    let error = source
        .settle(delivery.token, Settlement::Complete)
        .await
        .unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::Transient, "{error}");
    // Not acknowledged: it comes back when the lock runs out, and a slow release still works.
    let again = receive_some(&source, 10, "again").await.remove(0);
    assert_eq!(again.delivery_count, 2);
    source
        .settle(again.token, Settlement::Abandon)
        .await
        .expect("released, slowly");
    let third = receive_some(&source, 10, "third").await.remove(0);
    assert_eq!(third.delivery_count, 3);
    source
        .settle(third.token, Settlement::Complete)
        .await
        .expect("acknowledged");
    assert_eq!(
        (
            standin.calls(Operation::Acknowledge),
            standin.calls(Operation::Release)
        ),
        (2, 1)
    );
    source.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_max_delivery_count_an_abandoned_event_is_dead_lettered() {
    let standin = common::standin().await;
    standin.create_subscription_with(
        "faults-max-topic",
        "faults-max-sub",
        SubscriptionSettings {
            lock_duration: common::LOCK,
            max_delivery_count: 2,
        },
    );
    publish(&standin, "faults-max-topic", "e-1");
    let source = common::source(&standin, "faults-max-topic", "faults-max-sub");
    for count in 1..=2 {
        let delivery = receive_some(&source, 10, "abandoned").await.remove(0);
        assert_eq!(delivery.delivery_count, count);
        source
            .settle(delivery.token, Settlement::Abandon)
            .await
            .expect("released");
    }
    let letters = standin.dead_letters("faults-max-topic", "faults-max-sub");
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (
            letters[0].event["id"].as_str(),
            letters[0].delivery_count,
            letters[0].reason.as_str()
        ),
        (Some("e-1"), 2, "MaxDeliveryCountExceeded")
    );
    source.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poller_holds_no_more_than_max_events_received_ahead() {
    // Locks of a minute, so that none runs out while the test counts them.
    let standin = NamespaceStandIn::builder()
        .wait_cap(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let (topic, subscription) = common::new_subscription(&standin, "bounded");
    for n in 0..10 {
        publish(&standin, &topic, &format!("e-{n}"));
    }
    let config = common::builder(&standin, &topic, &subscription)
        .access_key(standin.access_key())
        .lock_duration(Duration::from_secs(60))
        .max_events(3)
        .build()
        .unwrap();
    let source = keyvault_invalidator_eventgrid::pull::PullSource::new(config);
    let first = source.receive(1).await.expect("one");
    assert_eq!(first.len(), 1);
    // One handed out, three held ahead: the rest stays with the service.
    keyvault_invalidator_testkit::eventually("the poller fills its buffer", || {
        standin.locked_count(&topic, &subscription) == 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        common::ready_and_locked(&standin, &topic, &subscription),
        (6, 4)
    );
    drop(first);
    source.close().await.expect("close");
    // Close released every lock it held, the handed-out one too (its token was dropped).
    assert_eq!(
        common::ready_and_locked(&standin, &topic, &subscription),
        (10, 0)
    );
}
