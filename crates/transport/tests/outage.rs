//! An outage's log lines and metrics. Its own test binary: the log capture is the thread's
//! default subscriber, which tracing's per-callsite caching can miss while other tests log on
//! other threads.

mod support;

use std::time::Duration;

use keyvault_invalidator_core::{SourceError, SourceErrorKind};
use keyvault_invalidator_testkit::CapturedLogs;
use keyvault_invalidator_transport::CloseReason;
use support::{fake, lifecycle, refused, Event, Step};

fn metrics(snapshotter: &metrics_util::debugging::Snapshotter) -> Vec<(String, String)> {
    let mut metrics: Vec<(String, String)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key.key().name().to_owned(), format!("{value:?}")))
        .collect();
    metrics.sort();
    metrics
}

// One thread: the log capture and the metrics recorder are the thread's own.
#[tokio::test(start_paused = true)]
async fn an_outage_is_logged_with_its_length_and_counted() {
    let captured = CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let captured = captured.clone();
            move || captured.clone()
        })
        .with_ansi(false)
        .without_time()
        .finish();
    let _logs = tracing::subscriber::set_default(subscriber);
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _metrics = metrics::set_default_local_recorder(&recorder);

    let (fake, probe) = fake(vec![Step::Connect, Step::Fail(refused(1))]);
    let lifecycle = lifecycle(fake);
    lifecycle.connect().await.unwrap();
    assert!(
        captured.lines().is_empty(),
        "a first connection is no reconnection"
    );
    assert_eq!(
        metrics(&snapshotter),
        [("fake_connected".to_owned(), "Gauge(1.0)".to_owned())]
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    probe.send(1, Err(SourceError::transient("cut")));
    let lost = lifecycle.receive(1).await.unwrap_err();
    assert_eq!(
        (lost.kind, lost.message.as_str()),
        (
            SourceErrorKind::Transient,
            "lost the Fake connection while receiving: cut"
        )
    );
    lifecycle.connect().await.unwrap_err();
    lifecycle.connect().await.unwrap();
    // Lost at 1 s; the failed attempt at 1.1 s, the connection at 1.3 s.
    assert_eq!(
        probe.events(),
        [
            Event::Open(1, 0),
            Event::Close(1, CloseReason::Lost),
            Event::Open(2, 1_100),
            Event::Open(3, 1_300)
        ]
    );
    assert_eq!(
        captured.lines(),
        [
            " WARN keyvault_invalidator_transport::lifecycle: lost the Fake link while receiving: \
             cut; closing its connection and reconnecting after a backoff transport=\"Fake\" \
             peer=the fake step=\"receiving\"",
            " WARN keyvault_invalidator_transport::lifecycle: connecting to Fake failed \
             transport=\"Fake\" peer=the fake error=refused 1",
            " INFO keyvault_invalidator_transport::lifecycle: reconnected to Fake \
             transport=\"Fake\" peer=the fake outage_ms=300",
        ]
    );
    assert_eq!(
        metrics(&snapshotter),
        [
            ("fake_connected".to_owned(), "Gauge(1.0)".to_owned()),
            (
                "fake_connection_losses_total".to_owned(),
                "Counter(1)".to_owned()
            ),
            ("fake_reconnects_total".to_owned(), "Counter(1)".to_owned()),
        ]
    );
}
