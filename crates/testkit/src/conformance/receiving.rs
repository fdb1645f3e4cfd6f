//! The checks of receiving: batch sizes, waiting for a publication, and a `receive` dropped
//! mid-way (as at shutdown or by `select!`) losing nothing.
//!
//! Separate from the settlement checks (the module root lists them all): these are about what
//! arrives, not what settling it does.

use std::collections::BTreeSet;
use std::time::Duration;

use keyvault_invalidator_core::{EventSource, Settlement};

use super::*;

/// `receive(max)` never returns more than `max`, and every published message is delivered
/// exactly once across batches.
pub async fn batches_never_exceed_the_requested_size<T: ConformanceTarget>(target: &T) {
    let what = "batches never exceed the requested size";
    let source = target.new_source().await;
    for n in 0..7 {
        target
            .publish(&source, &format!("batch-{n}"), &body(100 + n))
            .await;
    }
    let mut seen = Vec::new();
    while seen.len() < 7 {
        let batch = receive_some(&source, 3, what).await;
        assert!(batch.len() <= 3, "{what}: asked for 3, got {}", batch.len());
        for delivery in batch {
            seen.push(delivery.body.to_vec());
            settle(&source, delivery, Settlement::Complete, what).await;
        }
    }
    let distinct: BTreeSet<_> = seen.iter().cloned().collect();
    let expected: BTreeSet<_> = (0..7).map(|n| body(100 + n)).collect();
    assert_eq!(seen.len(), 7, "{what}: deliveries");
    assert_eq!(distinct, expected, "{what}: every message once");
    assert_quiet(&source, what).await;
    source.close().await.expect("close");
}

/// A `receive` on an empty source waits, and returns the message published meanwhile.
pub async fn receive_waits_for_a_publication<T: ConformanceTarget>(target: &T) {
    let what = "receive waits for a publication";
    let source = target.new_source().await;
    let (batch, ()) = tokio::join!(receive_some(&source, 10, what), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        target.publish(&source, "late-1", &body(4)).await;
    });
    assert_eq!(batch.len(), 1, "{what}");
    assert_eq!(batch[0].body.as_ref(), body(4).as_slice(), "{what}");
    for delivery in batch {
        settle(&source, delivery, Settlement::Complete, what).await;
    }
    source.close().await.expect("close");
}

/// Dropping a pending `receive` (the job does at shutdown) loses nothing published afterwards.
pub async fn dropped_receive_loses_nothing<T: ConformanceTarget>(target: &T) {
    let what = "a dropped receive loses nothing";
    let source = target.new_source().await;
    let dropped = tokio::time::timeout(Duration::from_millis(200), source.receive(10)).await;
    if let Ok(Ok(batch)) = dropped {
        assert!(batch.is_empty(), "{what}: nothing was published yet");
    }
    target.publish(&source, "after-drop-1", &body(5)).await;
    let batch = receive_some(&source, 10, what).await;
    assert_eq!(batch.len(), 1, "{what}");
    assert_eq!(batch[0].body.as_ref(), body(5).as_slice(), "{what}");
    for delivery in batch {
        settle(&source, delivery, Settlement::Complete, what).await;
    }
    source.close().await.expect("close");
}

/// A `receive` dropped while a message is on its way to it (published while it waits, and
/// dropped as the publication returns or a moment later, as the job drops it at shutdown or
/// `select!` drops a losing branch) loses nothing: every message is delivered, once, with
/// count 1, by that receive if it finished first or by a later one.
pub async fn receive_dropped_with_a_message_in_flight_loses_nothing<T: ConformanceTarget>(
    target: &T,
) {
    let what = "a receive dropped with a message in flight loses nothing";
    let source = target.new_source().await;
    // Dropped as the publication returns (twice, as the first round also connects), and at
    // moments when the message is on the wire, in the transport's buffers, or handed over.
    let delays_ms = [0u64, 0, 1, 5, 20, 100];
    let mut received = Vec::new();
    for (round, delay) in delays_ms.iter().enumerate() {
        let id = format!("in-flight-{round}");
        let body = body(200 + round);
        let receive = source.receive(10);
        tokio::pin!(receive);
        let publish = async {
            target.publish(&source, &id, &body).await;
            tokio::time::sleep(Duration::from_millis(*delay)).await;
        };
        tokio::pin!(publish);
        tokio::select! {
            batch = &mut receive => {
                let batch = batch.unwrap_or_else(|e| panic!("{what}: round {round}: receive failed: {e}"));
                received.extend(complete_all(&source, batch, what).await);
                // The publication is part of the round whatever the receive did.
                publish.await;
            }
            () = &mut publish => {}
        }
    }
    while received.len() < delays_ms.len() {
        let batch = receive_some(&source, delays_ms.len() - received.len(), what).await;
        received.extend(complete_all(&source, batch, what).await);
    }
    received.sort();
    let expected: Vec<_> = (0..delays_ms.len())
        .map(|round| (Some(format!("in-flight-{round}")), body(200 + round), 1))
        .collect();
    assert_eq!(
        received, expected,
        "{what}: every message once, as first delivered"
    );
    assert_quiet(&source, what).await;
    source.close().await.expect("close");
}
