//! No delivery is stuck: a settlement that fails hands the delivery back to the broker, a
//! confirm that never comes is bounded, publishing has its own channel, a link lost in the
//! middle of a batch is closed before the next, and `close` abandons a connection attempt.
//! Against the real broker, faults injected through a TCP proxy on loopback.

mod support;

use std::error::Error as _;
use std::net::SocketAddr;
use std::time::Duration;

use keyvault_invalidator_core::{Backoff, Delivery, EventSource, Settlement, SourceErrorKind};
use keyvault_invalidator_rabbitmq::lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use keyvault_invalidator_rabbitmq::lapin::types::{AMQPValue, FieldTable};
use keyvault_invalidator_rabbitmq::lapin::{Channel, ExchangeKind};
use keyvault_invalidator_rabbitmq::{RabbitMqConfig, RabbitMqSource};
use keyvault_invalidator_testkit::CapturedLogs;
use support::proxy::Proxy;

/// What every check waits at most for something that should happen.
const PATIENCE: Duration = Duration::from_secs(60);

fn broker_address(url: &str) -> SocketAddr {
    let parsed = url::Url::parse(url).expect("the broker URL");
    let host = parsed.host_str().expect("a host");
    let port = parsed.port().unwrap_or(5672);
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{port}")
        .parse()
        .expect("a loopback address")
}

async fn receive_one(source: &RabbitMqSource, what: &str) -> Delivery {
    let mut batch = tokio::time::timeout(PATIENCE, source.receive(1))
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing was delivered within {PATIENCE:?}"))
        .unwrap_or_else(|e| panic!("{what}: receive failed: {e}"));
    assert_eq!(batch.len(), 1, "{what}: asked for one");
    batch.remove(0)
}

/// `(message id, body, delivery count)` of a delivery.
fn seen(delivery: &Delivery) -> (Option<String>, Vec<u8>, u32) {
    (
        delivery.message_id.clone(),
        delivery.body.to_vec(),
        delivery.delivery_count,
    )
}

fn expected(id: &str, body: &[u8], count: u32) -> (Option<String>, Vec<u8>, u32) {
    (Some(id.to_owned()), body.to_vec(), count)
}

/// Declares a durable queue with `arguments`, as infrastructure would for an existing queue.
async fn declare_queue(channel: &Channel, queue: &str, arguments: FieldTable) {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), durable, arguments)
        .await
        .expect("declare the queue");
}

async fn delete_queue(channel: &Channel, queue: &str) {
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
}

/// A queue of `what`'s own that holds one message: with one ready it is full, and the broker
/// nacks every publish to it. Returns it and a prefetch-1 source config over it.
async fn full_queue(url: &str, channel: &Channel, what: &str) -> (String, RabbitMqConfig) {
    let queue = support::unique(what);
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(1));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    declare_queue(channel, &queue, arguments).await;
    let exchange = support::unique(&format!("{what}-ex"));
    let config = RabbitMqConfig::new(url)
        .and_then(|c| c.existing_queue(&queue))
        .unwrap()
        .exchange(&exchange)
        .dead_letter_exchange(&format!("{exchange}-dlx"))
        .dead_letter_queue(&format!("{exchange}-dlq"))
        .prefetch(1);
    (queue, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republish_the_broker_refuses_leaves_the_original_delivered_again() {
    let Some(url) = support::broker().await else {
        return;
    };
    let (_connection, channel) = support::publisher(&url).await;
    let (queue, config) = full_queue(&url, &channel, "refused-republish").await;
    let source = RabbitMqSource::new(config.clone());
    source.connect().await.expect("connect");

    support::publish_with_id(&channel, "", &queue, b"{\"n\":1}", Some("original-1"))
        .await
        .unwrap();
    let original = receive_one(&source, "the original").await;
    assert_eq!(seen(&original), expected("original-1", b"{\"n\":1}", 1));
    // The prefetch of one is taken by the original: the filler stays ready, and fills the queue.
    support::publish_with_id(&channel, "", &queue, b"{\"n\":2}", Some("filler-2"))
        .await
        .unwrap();
    assert_eq!(
        support::wait_for_counts(&queue, Some((1, 1))).await,
        Some((1, 1))
    );

    let error = source
        .settle(original.token, Settlement::Abandon)
        .await
        .unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::SettlementLost);
    assert_eq!(
        error.message,
        "publishing the abandoned delivery again: the broker refused the publish (basic.nack); \
         the delivery was released to the broker (basic.nack with requeue) and comes back"
    );
    assert_eq!(
        error.source().map(ToString::to_string).as_deref(),
        Some(
            "publishing the abandoned delivery again: the broker refused the publish (basic.nack)"
        )
    );

    let again = receive_one(&source, "the released original").await;
    assert_eq!(
        seen(&again),
        expected("original-1", b"{\"n\":1}", 2),
        "the original itself comes back, flagged redelivered"
    );
    source
        .settle(again.token, Settlement::Complete)
        .await
        .unwrap();
    let filler = receive_one(&source, "the filler").await;
    assert_eq!(seen(&filler), expected("filler-2", b"{\"n\":2}", 1));
    source
        .settle(filler.token, Settlement::Complete)
        .await
        .unwrap();
    assert_eq!(
        support::wait_for_counts(&queue, Some((0, 0))).await,
        Some((0, 0)),
        "nothing ready, nothing unacknowledged"
    );
    source.close().await.unwrap();
    delete_queue(&channel, &queue).await;
    support::remove(&url, &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_fails_closes_the_channel_and_the_original_comes_back() {
    let Some(url) = support::broker().await else {
        return;
    };
    let (_connection, channel) = support::publisher(&url).await;
    let (queue, config) = full_queue(&url, &channel, "failed-release").await;
    // A healthy broker takes every nack: the hook makes the release's nack fail instead.
    let config = config.fail_releases_for_tests();
    let source = RabbitMqSource::new(config.clone());
    source.connect().await.expect("connect");
    support::publish_with_id(&channel, "", &queue, b"{\"n\":1}", Some("original-1"))
        .await
        .unwrap();
    let original = receive_one(&source, "the original").await;
    support::publish_with_id(&channel, "", &queue, b"{\"n\":2}", Some("filler-2"))
        .await
        .unwrap();
    assert_eq!(
        support::wait_for_counts(&queue, Some((1, 1))).await,
        Some((1, 1))
    );

    let error = source
        .settle(original.token, Settlement::Abandon)
        .await
        .unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::SettlementLost);
    assert_eq!(
        error.message,
        "publishing the abandoned delivery again: the broker refused the publish (basic.nack); \
         releasing the delivery failed too (the nack failed (a test hook made it fail)), so its \
         channel was closed: the broker requeues every delivery the channel held"
    );
    // The consumer ended with its channel: the next receive says so, the one after reconnects.
    let lost = tokio::time::timeout(PATIENCE, source.receive(1))
        .await
        .expect("the loss is reported")
        .unwrap_err();
    assert_eq!(lost.kind, SourceErrorKind::Transient, "{lost}");
    assert!(
        lost.message
            .starts_with("lost the RabbitMQ connection while receiving: "),
        "{lost}"
    );
    let again = receive_one(&source, "the original after the reconnection").await;
    assert_eq!(seen(&again), expected("original-1", b"{\"n\":1}", 2));
    source
        .settle(again.token, Settlement::Complete)
        .await
        .unwrap();
    let filler = receive_one(&source, "the filler").await;
    assert_eq!(seen(&filler), expected("filler-2", b"{\"n\":2}", 1));
    source
        .settle(filler.token, Settlement::Complete)
        .await
        .unwrap();
    assert_eq!(
        support::wait_for_counts(&queue, Some((0, 0))).await,
        Some((0, 0))
    );
    source.close().await.unwrap();
    delete_queue(&channel, &queue).await;
    support::remove(&url, &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republish_whose_confirm_never_comes_fails_within_the_timeout_and_the_original_comes_back(
) {
    let Some(url) = support::broker().await else {
        return;
    };
    let proxy = Proxy::start(broker_address(&url)).await;
    let timeout = Duration::from_secs(2);
    let config = support::isolated_instance(&proxy.url(&url), "unconfirmed")
        .prefetch(1)
        .confirm_timeout(timeout);
    let source = RabbitMqSource::new(config.clone());
    source.connect().await.expect("connect");
    let (_connection, channel) = support::publisher(&url).await;
    support::publish_with_id(
        &channel,
        config.exchange_name(),
        "Microsoft.KeyVault.SecretNewVersionCreated",
        b"{\"n\":1}",
        Some("held-1"),
    )
    .await
    .unwrap();
    let original = receive_one(&source, "the original").await;
    assert_eq!(seen(&original), expected("held-1", b"{\"n\":1}", 1));

    // The broker gets the republish and the nack that follows; its confirm stays in the proxy.
    proxy.stall_downstream();
    let started = tokio::time::Instant::now();
    let error = tokio::time::timeout(PATIENCE, source.settle(original.token, Settlement::Abandon))
        .await
        .expect("the settlement ends although the confirm never comes")
        .unwrap_err();
    assert!(
        started.elapsed() >= timeout,
        "it waited for the confirm first"
    );
    assert_eq!(error.kind, SourceErrorKind::SettlementLost);
    assert_eq!(
        error.message,
        "publishing the abandoned delivery again: the broker did not answer within 2s; the \
         delivery was released to the broker (basic.nack with requeue) and comes back"
    );

    proxy.resume();
    // Both come back: the original the nack released, and the copy whose confirm was late
    // (at least once; the source cannot tell that the broker took the copy).
    // One at a time: the prefetch is one.
    let mut found = Vec::new();
    for what in ["the first after the stall", "the second after the stall"] {
        let delivery = receive_one(&source, what).await;
        found.push(seen(&delivery));
        source
            .settle(delivery.token, Settlement::Complete)
            .await
            .unwrap();
    }
    assert_eq!(
        found,
        vec![
            expected("held-1", b"{\"n\":1}", 2),
            expected("held-1", b"{\"n\":1}", 2)
        ]
    );
    assert_eq!(
        support::wait_for_counts(source.queue_name(), Some((0, 0))).await,
        Some((0, 0)),
        "nothing ready, nothing unacknowledged"
    );
    source.close().await.unwrap();
    support::remove(&url, &config).await;
}

/// An existing queue with a dead-letter exchange the test chooses (`declare`: declared with
/// nothing bound, or not at all), and a source on it.
async fn dead_letter_setup(
    url: &str,
    channel: &Channel,
    what: &str,
    declare: bool,
) -> (RabbitMqSource, RabbitMqConfig) {
    let queue = support::unique(what);
    declare_queue(channel, &queue, FieldTable::default()).await;
    let dead_letter_exchange = support::unique(&format!("{what}-dlx"));
    if declare {
        support::declare_exchange(channel, &dead_letter_exchange, ExchangeKind::Fanout).await;
    }
    let config = RabbitMqConfig::new(url)
        .and_then(|c| c.existing_queue(&queue))
        .unwrap()
        .declare_topology(false)
        .dead_letter_exchange(&dead_letter_exchange)
        .dead_letter_queue(&format!("{dead_letter_exchange}-q"))
        .prefetch(4);
    let source = RabbitMqSource::new(config.clone());
    source.connect().await.expect("connect");
    support::publish_with_id(channel, "", &queue, b"{\"n\":1}", Some("poison-1"))
        .await
        .unwrap();
    (source, config)
}

fn malformed() -> Settlement {
    Settlement::dead_letter_with_reason("MalformedPayload", "not JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_the_broker_refuses_outright_closes_only_the_publishing_channel() {
    let Some(url) = support::broker().await else {
        return;
    };
    let (_connection, channel) = support::publisher(&url).await;
    // The dead-letter exchange does not exist: the broker closes the publishing channel (404).
    let (source, config) = dead_letter_setup(&url, &channel, "missing-dlx", false).await;
    let delivery = receive_one(&source, "the message").await;
    assert_eq!(seen(&delivery), expected("poison-1", b"{\"n\":1}", 1));
    let error = source
        .settle(delivery.token, malformed())
        .await
        .unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::SettlementLost);
    assert!(
        error
            .message
            .starts_with("publishing to the dead-letter exchange: "),
        "{error}"
    );
    assert!(
        error.message.contains(&format!(
            "NOT_FOUND - no exchange '{}'",
            config.dead_letter_exchange_name()
        )),
        "{error}"
    );
    assert!(
        error.message.ends_with(
            "; the delivery was released to the broker (basic.nack with requeue) and comes back"
        ),
        "{error}"
    );

    // The consuming channel is untouched: the next receive hands the message back, with no
    // reconnection in between.
    let again = tokio::time::timeout(PATIENCE, source.receive(4))
        .await
        .expect("the message comes back")
        .expect("the consumer is still alive: no error, no reconnection");
    let found: Vec<_> = again.iter().map(seen).collect();
    assert_eq!(found, vec![expected("poison-1", b"{\"n\":1}", 2)]);
    // And the publishing channel is opened again for the next publish.
    let again = again.into_iter().next().unwrap();
    source
        .settle(again.token, Settlement::Abandon)
        .await
        .expect("the abandon publishes on a new publishing channel");
    let copy = receive_one(&source, "the republished copy").await;
    assert_eq!(seen(&copy), expected("poison-1", b"{\"n\":1}", 3));
    source
        .settle(copy.token, Settlement::Complete)
        .await
        .unwrap();
    assert_eq!(
        support::wait_for_counts(source.queue_name(), Some((0, 0))).await,
        Some((0, 0))
    );
    source.close().await.unwrap();
    delete_queue(&channel, source.queue_name()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_no_queue_takes_is_released_not_acknowledged() {
    let Some(url) = support::broker().await else {
        return;
    };
    let (_connection, channel) = support::publisher(&url).await;
    // The dead-letter exchange exists, but nothing is bound to it: the broker returns the
    // message, then confirms the publish.
    let (source, config) = dead_letter_setup(&url, &channel, "unbound-dlx", true).await;
    let delivery = receive_one(&source, "the message").await;
    let error = source
        .settle(delivery.token, malformed())
        .await
        .unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::SettlementLost);
    assert_eq!(
        error.message,
        "publishing to the dead-letter exchange: no queue took the message (the broker returned \
         it); the delivery was released to the broker (basic.nack with requeue) and comes back"
    );
    let again = receive_one(&source, "the released message").await;
    assert_eq!(seen(&again), expected("poison-1", b"{\"n\":1}", 2));
    source
        .settle(again.token, Settlement::Complete)
        .await
        .unwrap();
    assert_eq!(
        support::wait_for_counts(source.queue_name(), Some((0, 0))).await,
        Some((0, 0))
    );
    source.close().await.unwrap();
    delete_queue(&channel, source.queue_name()).await;
    support::remove(&url, &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_during_a_stalled_connect_returns_and_nothing_is_declared_afterwards() {
    let Some(url) = support::broker().await else {
        return;
    };
    let proxy = Proxy::start(broker_address(&url)).await;
    proxy.stall();
    let config = support::isolated_instance(&proxy.url(&url), "stalled-connect");
    let source = RabbitMqSource::new(config.clone());
    // The job drops a pending receive at shutdown, then closes the source: the connection
    // attempt the receive started goes on without it.
    let pending = tokio::time::timeout(Duration::from_millis(500), source.receive(1)).await;
    assert!(pending.is_err(), "the connect is stalled: {pending:?}");
    assert_eq!(proxy.accepted(), 1, "the attempt reached the proxy");

    tokio::time::timeout(PATIENCE, source.close())
        .await
        .expect("close returns while the connect is stalled")
        .expect("close succeeds");
    // Whatever the attempt had sent now reaches the broker; give it time to do all it would.
    proxy.resume();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        support::queue_depth(&url, source.queue_name()).await,
        None,
        "no instance queue was declared"
    );
    assert_eq!(
        support::wait_for_connections(&config.connection_name(), 0).await,
        0,
        "no connection of the source is left open"
    );
    let error = source.receive(1).await.unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::Closed);
    assert_eq!(proxy.accepted(), 1, "and no attempt after close");
    support::remove(&url, &config).await;
}

// One thread: the capturing subscriber is the thread's default, and `receive` logs the loss
// on the caller's task.
#[tokio::test(flavor = "current_thread")]
async fn a_link_lost_mid_batch_is_logged_backed_off_and_closed_before_reconnecting() {
    let Some(url) = support::broker().await else {
        return;
    };
    let captured = CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let captured = captured.clone();
            move || captured.clone()
        })
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // Long enough that the moment between the old connection and the new one is seen.
    let backoff = Duration::from_secs(6);
    let config = support::isolated_instance(&url, "mid-batch")
        .prefetch(10)
        .reconnect_backoff(Backoff::new(backoff, backoff));
    let source = RabbitMqSource::new(config.clone());
    source.connect().await.expect("connect");
    let (_connection, channel) = support::publisher(&url).await;
    for n in 1..=3 {
        support::publish_with_id(
            &channel,
            config.exchange_name(),
            "Microsoft.KeyVault.SecretNewVersionCreated",
            format!("{{\"n\":{n}}}").as_bytes(),
            Some(&format!("m{n}")),
        )
        .await
        .unwrap();
    }
    // All three are with the consumer; then the queue goes, and the broker cancels the
    // consumer behind them.
    assert_eq!(
        support::wait_for_counts(source.queue_name(), Some((0, 3))).await,
        Some((0, 3))
    );
    delete_queue(&channel, source.queue_name()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let batch = tokio::time::timeout(PATIENCE, source.receive(10))
        .await
        .expect("the batch")
        .expect("what arrived before the loss is handed over");
    let ids: Vec<_> = batch.iter().map(|d| d.message_id.clone()).collect();
    assert_eq!(
        ids,
        vec![Some("m1".into()), Some("m2".into()), Some("m3".into())]
    );
    let log = captured.text();
    assert_eq!(
        log.matches(" WARN ").count(),
        1,
        "one warning for the loss: {log}"
    );
    assert!(
        log.contains(
            "lost the RabbitMQ link while receiving the rest of a batch: the broker cancelled the \
             consumer; closing its connection and reconnecting after a backoff"
        ),
        "{log}"
    );
    let error = source
        .settle(
            batch.into_iter().next().unwrap().token,
            Settlement::Complete,
        )
        .await
        .unwrap_err();
    assert_eq!(
        (error.kind, error.message.as_str()),
        (
            SourceErrorKind::SettlementLost,
            "the delivery came on a connection that is gone; the broker redelivers it"
        )
    );

    // The next receive closes the old connection, waits out the backoff, and connects anew
    // (declaring the instance queue again).
    let started = tokio::time::Instant::now();
    let receiving = source.receive(10);
    tokio::pin!(receiving);
    let nothing = tokio::time::timeout(Duration::from_millis(200), &mut receiving).await;
    assert!(nothing.is_err(), "no message yet: {nothing:?}");
    assert_eq!(
        support::wait_for_connections(&config.connection_name(), 0).await,
        0,
        "the old connection was closed before the new one"
    );
    let publish = async {
        // The new queue must be there before the event is published to the exchange.
        while support::queue_depth(&url, source.queue_name())
            .await
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        support::publish_with_id(
            &channel,
            config.exchange_name(),
            "Microsoft.KeyVault.SecretNewVersionCreated",
            b"{\"n\":4}",
            Some("m4"),
        )
        .await
        .unwrap();
    };
    let (after, ()) = tokio::join!(tokio::time::timeout(PATIENCE, &mut receiving), publish);
    let after = after.expect("delivered after the reconnection").unwrap();
    assert!(
        started.elapsed() >= backoff / 2,
        "the reconnection waited out the backoff"
    );
    let ids: Vec<_> = after.iter().map(|d| d.message_id.clone()).collect();
    assert_eq!(ids, vec![Some("m4".into())]);
    assert_eq!(
        support::connections_named(&config.connection_name()).await,
        1
    );
    for delivery in after {
        source
            .settle(delivery.token, Settlement::Complete)
            .await
            .unwrap();
    }
    source.close().await.unwrap();
    support::remove(&url, &config).await;
}
