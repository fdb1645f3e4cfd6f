//! The lifecycle against a scripted connector, on paused time: every pause, generation and
//! close is exact.

mod support;

use std::sync::Arc;
use std::time::Duration;

use keyvault_invalidator_core::{SourceError, SourceErrorKind};
use keyvault_invalidator_transport::{CloseReason, Lifecycle};
use support::{fake, lifecycle, refused, Event, Fake, Probe, Step};
use tokio::sync::Notify;
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn failed_attempts_pause_by_the_count_of_consecutive_failures_exactly() {
    let (fake, probe) = fake(vec![
        Step::Fail(refused(1)),
        Step::Fail(refused(2)),
        Step::Fail(refused(3)),
    ]);
    let lifecycle = lifecycle(fake);
    for n in 1..=3 {
        let error = lifecycle.connect().await.unwrap_err();
        assert_eq!(
            (error.kind, error.message),
            (SourceErrorKind::Transient, format!("refused {n}"))
        );
        assert!(!lifecycle.is_connected());
    }
    lifecycle.connect().await.unwrap();
    assert!(lifecycle.is_connected());
    assert_eq!(
        probe.events(),
        [
            Event::Open(1, 0),
            Event::Open(2, 100),
            Event::Open(3, 300),
            Event::Open(4, 700)
        ]
    );

    // A connection resets the count: the loss that follows is the first failure again, and
    // the lost connection is closed before the next attempt.
    probe.send(4, Err(SourceError::transient("cut")));
    lifecycle.receive(1).await.unwrap_err();
    lifecycle.connect().await.unwrap();
    assert_eq!(
        probe.events()[4..],
        [Event::Close(4, CloseReason::Lost), Event::Open(5, 800)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_is_waited_out_when_longer_than_the_pause() {
    let (fake, probe) = fake(vec![
        Step::Fail(refused(1).with_retry_after(Duration::from_secs(5))),
        Step::Fail(refused(2).with_retry_after(Duration::from_millis(50))),
    ]);
    let lifecycle = lifecycle(fake);
    lifecycle.connect().await.unwrap_err();
    lifecycle.connect().await.unwrap_err();
    lifecycle.connect().await.unwrap();
    assert_eq!(
        probe.events(),
        [
            Event::Open(1, 0),
            // Asked for 5 s; the pause would have been 100 ms.
            Event::Open(2, 5_000),
            // Asked for 50 ms; the pause, 200 ms, is longer.
            Event::Open(3, 5_200)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_settlement_is_refused_on_any_connection_but_its_own() {
    let (fake, probe) = fake(vec![]);
    let lifecycle = lifecycle(fake);
    probe_send_after_connect(&lifecycle, &probe, 1, 7).await;
    let batch = lifecycle.receive(10).await.unwrap();
    assert_eq!((batch.generation.get(), batch.items), (1, vec![7]));
    assert_eq!(batch.connection.0, batch.generation);
    let first = batch.generation;
    assert_eq!(lifecycle.connection_of(first).unwrap().0, first);

    probe.send(1, Err(SourceError::transient("cut")));
    lifecycle.receive(10).await.unwrap_err();
    let stale = |lifecycle: &Lifecycle<Fake>| {
        let error = lifecycle.connection_of(first).err().unwrap();
        (error.kind, error.message)
    };
    let refusal = (
        SourceErrorKind::SettlementLost,
        "the delivery came on a Fake connection that is gone; it is delivered again".to_owned(),
    );
    assert_eq!(stale(&lifecycle), refusal, "lost, not yet replaced");
    assert!(lifecycle.connection().is_none());

    lifecycle.connect().await.unwrap();
    assert_eq!(stale(&lifecycle), refusal, "replaced");
    let (second, connection) = lifecycle.connection().unwrap();
    assert_eq!((second.get(), connection.0.get()), (2, 2));
    assert_eq!(lifecycle.connection_of(second).unwrap().0, second);
}

async fn probe_send_after_connect(
    lifecycle: &Lifecycle<Fake>,
    probe: &Probe,
    generation: u64,
    item: u32,
) {
    lifecycle.connect().await.unwrap();
    probe.send(generation, Ok(item));
}

#[tokio::test(start_paused = true)]
async fn a_caller_dropped_while_connecting_leaves_one_attempt_which_the_next_caller_awaits() {
    let opened = Arc::new(Notify::new());
    let (fake, probe) = fake(vec![Step::WaitFor(opened.clone())]);
    let lifecycle = lifecycle(fake);
    let dropped = tokio::time::timeout(Duration::from_secs(1), lifecycle.receive(1)).await;
    assert!(dropped.is_err(), "the attempt is still under way");
    assert_eq!(probe.events(), [Event::Open(1, 0)]);

    opened.notify_one();
    lifecycle.connect().await.unwrap();
    assert_eq!(probe.events(), [Event::Open(1, 0)], "no second attempt");
    assert_eq!(lifecycle.connection().unwrap().0.get(), 1);
    probe.send(1, Ok(3));
    assert_eq!(lifecycle.receive(1).await.unwrap().items, [3]);
}

#[tokio::test(start_paused = true)]
async fn a_batch_takes_what_has_arrived_and_a_loss_after_the_first_item_hands_it_over() {
    let (fake, probe) = fake(vec![]);
    let lifecycle = lifecycle(fake);
    lifecycle.connect().await.unwrap();
    for n in 1..=3 {
        probe.send(1, Ok(n));
    }
    assert_eq!(lifecycle.receive(2).await.unwrap().items, [1, 2]);
    assert_eq!(
        lifecycle.receive(0).await.unwrap().items,
        [3],
        "max 0 counts as 1"
    );

    probe.send(1, Ok(4));
    probe.send(1, Ok(5));
    probe.send(1, Err(SourceError::transient("cut")));
    probe.send(1, Ok(6));
    let batch = lifecycle.receive(10).await.unwrap();
    assert_eq!((batch.generation.get(), batch.items), (1, vec![4, 5]));
    assert!(!lifecycle.is_connected(), "the loss retired the connection");

    lifecycle.connect().await.unwrap();
    probe.send(2, Ok(7));
    let batch = lifecycle.receive(10).await.unwrap();
    assert_eq!((batch.generation.get(), batch.items), (2, vec![7]));
    assert_eq!(
        probe.events(),
        [
            Event::Open(1, 0),
            Event::Close(1, CloseReason::Lost),
            Event::Open(2, 100)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn close_abandons_an_attempt_in_its_pause_and_closes_what_is_open() {
    let (mut fake, probe) = fake(vec![Step::Connect, Step::Fail(refused(1))]);
    fake.shutdown_error = Some("could not delete the queue");
    let lifecycle = Lifecycle::builder(fake)
        .pause_with(|_| Duration::from_secs(3600))
        .build();
    lifecycle.connect().await.unwrap();
    probe.send(1, Err(SourceError::transient("cut")));
    lifecycle.receive(1).await.unwrap_err();
    // The next attempt closes the lost connection, then pauses for an hour.
    let dropped = tokio::time::timeout(Duration::from_secs(1), lifecycle.connect()).await;
    assert!(dropped.is_err());

    let started = Instant::now();
    lifecycle.close().await.unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "the pause was abandoned at once"
    );
    assert_eq!(
        probe.events(),
        [Event::Open(1, 0), Event::Close(1, CloseReason::Lost)],
        "no attempt after close"
    );
    for error in [
        lifecycle.connect().await.unwrap_err(),
        lifecycle.receive(1).await.unwrap_err(),
    ] {
        assert_eq!(error.kind, SourceErrorKind::Closed);
    }
}

#[tokio::test(start_paused = true)]
async fn close_closes_the_lost_connections_then_the_live_one_and_reports_its_error() {
    let (mut fake, probe) = fake(vec![]);
    fake.shutdown_error = Some("could not delete the queue");
    let lifecycle = lifecycle(fake);
    lifecycle.connect().await.unwrap();
    let error = lifecycle.close().await.unwrap_err();
    assert_eq!(error.message, "could not delete the queue");
    assert_eq!(
        probe.events(),
        [Event::Open(1, 0), Event::Close(1, CloseReason::Shutdown)]
    );
    lifecycle.close().await.unwrap();
    assert_eq!(probe.events().len(), 2, "closing again closes nothing");
    assert!(!lifecycle.is_connected());

    // A loss that is never followed by an attempt: `close` closes the lost connection.
    let (fake, probe) = self::fake(vec![]);
    let lifecycle = self::lifecycle(fake);
    lifecycle.connect().await.unwrap();
    probe.send(1, Err(SourceError::transient("cut")));
    lifecycle.receive(1).await.unwrap_err();
    lifecycle.close().await.unwrap();
    assert_eq!(
        probe.events(),
        [Event::Open(1, 0), Event::Close(1, CloseReason::Lost)]
    );
}

#[tokio::test(start_paused = true)]
async fn an_attempt_that_connects_after_close_closes_its_own_connection() {
    let opened = Arc::new(Notify::new());
    let (fake, probe) = fake(vec![Step::WaitIgnoringClose(opened.clone())]);
    let lifecycle = Lifecycle::builder(fake)
        .close_wait(Duration::from_secs(2))
        .build();
    let dropped = tokio::time::timeout(Duration::from_secs(1), lifecycle.connect()).await;
    assert!(dropped.is_err());

    let started = Instant::now();
    lifecycle.close().await.unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(2),
        "waited for the attempt"
    );
    opened.notify_one();
    while probe.events().len() < 2 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        probe.events(),
        [Event::Open(1, 0), Event::Close(1, CloseReason::Shutdown)]
    );
    assert!(!lifecycle.is_connected());
}

#[tokio::test(start_paused = true)]
async fn a_loss_keeps_its_kind_and_a_panicking_attempt_is_a_transient_error() {
    let (fake, probe) = fake(vec![Step::Panic]);
    let lifecycle = lifecycle(fake);
    let error = lifecycle.connect().await.unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::Transient);
    assert!(
        error.message.starts_with("the connection task failed: ")
            && error.message.contains("panicked"),
        "{error}"
    );
    lifecycle.connect().await.unwrap();
    probe.send(2, Err(SourceError::fatal("the queue is gone")));
    let error = lifecycle.receive(1).await.unwrap_err();
    assert_eq!(
        (error.kind, error.message.as_str()),
        (
            SourceErrorKind::Fatal,
            "lost the Fake connection while receiving: the queue is gone"
        )
    );
    // The panic was no failure: the attempt after it did not pause.
    assert_eq!(probe.events()[..2], [Event::Open(1, 0), Event::Open(2, 0)]);
}
