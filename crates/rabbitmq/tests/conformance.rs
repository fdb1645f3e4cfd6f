//! The RabbitMQ source passes the shared `EventSource` conformance suite against a real broker.

mod support;

use std::sync::Mutex;

use keyvault_invalidator_rabbitmq::lapin::options::{QueueBindOptions, QueueDeclareOptions};
use keyvault_invalidator_rabbitmq::lapin::types::FieldTable;
use keyvault_invalidator_rabbitmq::lapin::{Channel, Connection, ExchangeKind};
use keyvault_invalidator_rabbitmq::{RabbitMqConfig, RabbitMqSource};
use keyvault_invalidator_testkit::conformance::{self, ConformanceTarget, DeadLetter};

struct Broker {
    url: String,
    publisher: (Connection, Channel),
    configs: Mutex<Vec<RabbitMqConfig>>,
}

#[async_trait::async_trait]
impl ConformanceTarget for Broker {
    type Source = RabbitMqSource;

    async fn new_source(&self) -> RabbitMqSource {
        let config = support::isolated_instance(&self.url, "conformance");
        self.configs.lock().unwrap().push(config.clone());
        let source = RabbitMqSource::new(config);
        // Declare the queue before the suite publishes, as a running instance would have.
        source.connect().await.expect("connect");
        source
    }

    /// An existing queue, as infrastructure declares one for instances to share, bound to an
    /// exchange of its own: unlike an instance queue, it outlives its sources.
    async fn new_shared_source(&self) -> RabbitMqSource {
        let exchange = support::unique("conformance-shared-ex");
        let queue = support::unique("conformance-shared");
        let channel = &self.publisher.1;
        support::declare_exchange(channel, &exchange, ExchangeKind::Topic).await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.as_str().into(), durable, FieldTable::default())
            .await
            .expect("declare the shared queue");
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the shared queue");
        let config = RabbitMqConfig::new(&self.url)
            .and_then(|c| c.existing_queue(&queue))
            .unwrap()
            .exchange(&exchange)
            .dead_letter_exchange(&format!("{exchange}-dlx"))
            .dead_letter_queue(&format!("{exchange}-dlq"));
        self.configs.lock().unwrap().push(config.clone());
        let source = RabbitMqSource::new(config);
        source.connect().await.expect("connect");
        source
    }

    async fn reopen(&self, source: &RabbitMqSource) -> RabbitMqSource {
        let reopened = RabbitMqSource::new(source.config().clone());
        reopened.connect().await.expect("connect again");
        reopened
    }

    async fn publish(&self, source: &RabbitMqSource, message_id: &str, body: &[u8]) {
        let exchange = source.config().exchange_name().to_owned();
        support::publish_with_id(
            &self.publisher.1,
            &exchange,
            "Microsoft.KeyVault.SecretNewVersionCreated",
            body,
            Some(message_id),
        )
        .await
        .expect("publish");
    }

    async fn dead_letters(&self, source: &RabbitMqSource) -> Vec<DeadLetter> {
        let queue = source.config().dead_letter_queue_name().to_owned();
        support::drain_dead_letters(&self.publisher.1, &queue, 1)
            .await
            .into_iter()
            .map(|(body, reason, description)| DeadLetter {
                body,
                reason,
                description,
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rabbitmq_source_passes_the_conformance_suite() {
    let Some(url) = support::broker().await else {
        return;
    };
    let broker = Broker {
        publisher: support::publisher(&url).await,
        url,
        configs: Mutex::new(Vec::new()),
    };
    conformance::run_all(&broker).await;
    let configs = broker.configs.lock().unwrap().clone();
    for config in configs {
        support::remove(&broker.url, &config).await;
    }
}
