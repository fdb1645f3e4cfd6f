//! The checks of what each settlement does: complete removes, abandon redelivers counted, dead-letter
//! records the reason.
//!
//! One file per promise family, so an adapter author whose check fails finds the promise, its
//! wording and its test together.

use keyvault_invalidator_core::{DeadLetterReason, EventSource, Settlement};

use super::*;

/// A completed delivery is gone: it is not delivered again.
pub async fn complete_removes_the_delivery<T: ConformanceTarget>(target: &T) {
    let what = "complete removes the delivery";
    let source = target.new_source().await;
    target.publish(&source, "complete-1", &body(1)).await;
    let mut batch = receive_some(&source, 10, what).await;
    assert_eq!(
        batch.len(),
        1,
        "{what}: one message published, {} delivered",
        batch.len()
    );
    let delivery = batch.remove(0);
    assert_eq!(
        delivery.body.as_ref(),
        body(1).as_slice(),
        "{what}: body changed in transit"
    );
    assert_eq!(
        delivery.delivery_count, 1,
        "{what}: a first delivery has count 1"
    );
    settle(&source, delivery, Settlement::Complete, what).await;
    assert_quiet(&source, what).await;
    source.close().await.expect("close");
}

/// An abandoned delivery comes back, with a delivery count one higher.
pub async fn abandon_redelivers_with_a_higher_count<T: ConformanceTarget>(target: &T) {
    let what = "abandon redelivers with a higher count";
    let source = target.new_source().await;
    target.publish(&source, "abandon-1", &body(2)).await;
    let mut counts = Vec::new();
    for round in 0..3 {
        let mut batch = receive_some(&source, 10, what).await;
        assert_eq!(
            batch.len(),
            1,
            "{what}: round {round}: expected the one message"
        );
        let delivery = batch.remove(0);
        assert_eq!(
            delivery.body.as_ref(),
            body(2).as_slice(),
            "{what}: body changed"
        );
        counts.push(delivery.delivery_count);
        let settlement = if round < 2 {
            Settlement::Abandon
        } else {
            Settlement::Complete
        };
        settle(&source, delivery, settlement, what).await;
    }
    assert_eq!(
        counts,
        vec![1, 2, 3],
        "{what}: delivery counts across redeliveries"
    );
    assert_quiet(&source, what).await;
    source.close().await.expect("close");
}

/// A dead-lettered delivery is not delivered again and lands in the dead-letter store with the
/// exact reason and description.
pub async fn dead_letter_records_the_reason<T: ConformanceTarget>(target: &T) {
    let what = "dead-letter records the reason";
    let source = target.new_source().await;
    target.publish(&source, "dead-1", &body(3)).await;
    let delivery = receive_some(&source, 10, what).await.remove(0);
    let settlement = Settlement::dead_letter(
        DeadLetterReason::MalformedPayload,
        "event 0: the payload is not valid JSON",
    );
    settle(&source, delivery, settlement, what).await;
    assert_quiet(&source, what).await;
    let letters = target.dead_letters(&source).await;
    if target.dead_letter_carries_reason() {
        assert_eq!(
            letters,
            vec![DeadLetter {
                body: body(3),
                reason: "MalformedPayload".to_owned(),
                description: "event 0: the payload is not valid JSON".to_owned(),
            }],
            "{what}"
        );
    } else {
        let bodies: Vec<&[u8]> = letters.iter().map(|l| l.body.as_slice()).collect();
        assert_eq!(bodies, vec![body(3).as_slice()], "{what}");
    }
    source.close().await.expect("close");
}
