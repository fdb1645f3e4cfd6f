//! Each Service Bus connection runs on a thread of its own (see `source/link.rs` for why). This
//! binary holds one test only, so the threads it counts are that test's.
#![cfg(target_os = "linux")]

use std::time::Duration;

use keyvault_invalidator_core::{EventSource, Settlement};
use keyvault_invalidator_servicebus::{ServiceBusConfig, ServiceBusSource};
use keyvault_invalidator_testkit::servicebus_emulator::ServiceBusEmulator;
use keyvault_invalidator_testkit::{eventually, KeyVaultEventBuilder, EVENTUALLY_TIMEOUT};

/// The threads of this process named like a link's thread (Linux shows the name in `comm`).
fn link_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "servicebus-link")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_has_one_thread_which_ends_with_it() {
    let emulator = ServiceBusEmulator::start().await.unwrap();
    emulator.create_topic("threads");
    let config = ServiceBusConfig::connection_string(&emulator.connection_string(Some("threads")))
        .and_then(|c| c.subscription_prefix("app"))
        .unwrap()
        .management_endpoint(emulator.management_endpoint())
        .unwrap();
    let source = ServiceBusSource::new(config);
    assert_eq!(link_threads(), 0);
    tokio::time::timeout(EVENTUALLY_TIMEOUT, source.connect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(link_threads(), 1);

    // A lost connection ends its thread; the reconnection starts one.
    emulator.drop_connections();
    let body = KeyVaultEventBuilder::secret_new_version("db-password")
        .vault("prod-kv")
        .event_grid_bytes();
    assert!(emulator.publish_as_event_grid("threads", &body));
    let delivery = tokio::time::timeout(EVENTUALLY_TIMEOUT, async {
        loop {
            match source.receive(1).await {
                Ok(mut batch) => break batch.remove(0),
                // The receive that notices the drop fails; the next one reconnects.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(delivery.body.as_ref(), body.as_slice());
    source
        .settle(delivery.token, Settlement::Complete)
        .await
        .unwrap();
    eventually("only the new connection's thread runs", || {
        link_threads() == 1
    })
    .await;

    source.close().await.unwrap();
    eventually("the thread ended with the connection", || {
        link_threads() == 0
    })
    .await;
}
