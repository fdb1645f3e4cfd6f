//! The checks of a source's lifetime: unsettled deliveries come back after `close`, a closed
//! source stops receiving, and a delivery in flight keeps its lock.
//!
//! Separate because they need a second source over the same queue
//! ([`ConformanceTarget::reopen`]) or a lock duration, which the other checks do not.

use keyvault_invalidator_core::{EventSource, Settlement, SourceErrorKind};

use super::*;

/// Deliveries received and never settled when their source closes come back, the very
/// messages, to a source opened afterwards over the same queue, counted once more; settling
/// one on the closed source fails as lost rather than passing for done.
pub async fn unsettled_deliveries_come_back_after_close<T: ConformanceTarget>(target: &T) {
    let what = "deliveries left unsettled at close come back";
    let source = target.new_shared_source().await;
    for n in 0..3 {
        target
            .publish(&source, &format!("unsettled-{n}"), &body(300 + n))
            .await;
    }
    let mut held = receive_exactly(&source, 3, what).await;
    let first: Vec<_> = (0..3)
        .map(|n| (Some(format!("unsettled-{n}")), body(300 + n), 1))
        .collect();
    assert_eq!(
        seen(&held),
        first,
        "{what}: the three messages, first delivery"
    );
    source
        .close()
        .await
        .unwrap_or_else(|e| panic!("{what}: close failed: {e}"));
    let late = held.remove(0);
    match source.settle(late.token, Settlement::Complete).await {
        Err(error) => assert_eq!(
            error.kind,
            SourceErrorKind::SettlementLost,
            "{what}: settling after close: {error}"
        ),
        Ok(()) => panic!("{what}: a delivery settled after its source closed"),
    }
    drop(held);

    let reopened = target.reopen(&source).await;
    let back = receive_exactly(&reopened, 3, what).await;
    let again: Vec<_> = (0..3)
        .map(|n| (Some(format!("unsettled-{n}")), body(300 + n), 2))
        .collect();
    assert_eq!(
        seen(&back),
        again,
        "{what}: the same three messages, counted once more"
    );
    for delivery in back {
        settle(&reopened, delivery, Settlement::Complete, what).await;
    }
    assert_quiet(&reopened, what).await;
    reopened.close().await.expect("close");
}

/// After `close`, `receive` fails with [`SourceErrorKind::Closed`].
pub async fn close_stops_receiving<T: ConformanceTarget>(target: &T) {
    let what = "close stops receiving";
    let source = target.new_source().await;
    source
        .close()
        .await
        .unwrap_or_else(|e| panic!("{what}: close failed: {e}"));
    let result = tokio::time::timeout(ARRIVAL_TIMEOUT, source.receive(1))
        .await
        .unwrap_or_else(|_| panic!("{what}: receive after close hung"));
    match result {
        Err(error) => assert_eq!(error.kind, SourceErrorKind::Closed, "{what}: {error}"),
        Ok(batch) => panic!(
            "{what}: receive after close returned {} deliveries",
            batch.len()
        ),
    }
}

/// A delivery held for longer than its lock (an invalidation waiting out a throttle) keeps
/// its lock: it is not delivered again meanwhile, and completing it afterwards succeeds and
/// removes it. Checked only for targets that name a [`lock_duration`](ConformanceTarget::lock_duration).
pub async fn lock_is_kept_while_a_delivery_is_in_flight<T: ConformanceTarget>(target: &T) {
    let what = "the lock is kept while a delivery is in flight";
    let Some(lock) = target.lock_duration() else {
        return;
    };
    let source = target.new_source().await;
    target.publish(&source, "held-1", &body(6)).await;
    let mut batch = receive_some(&source, 10, what).await;
    assert_eq!(batch.len(), 1, "{what}: one message published");
    let delivery = batch.remove(0);
    // Two and a half lock durations: without renewal the lock runs out twice over.
    let hold = lock * 5 / 2;
    if let Ok(Ok(again)) = tokio::time::timeout(hold, source.receive(10)).await {
        assert!(
            again.is_empty(),
            "{what}: the message came back after {:?} while held (lock {lock:?}): the lock was not renewed",
            hold
        );
    }
    settle(&source, delivery, Settlement::Complete, what).await;
    assert_quiet(&source, what).await;
    source.close().await.expect("close");
}
