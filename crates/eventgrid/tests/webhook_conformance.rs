//! The webhook passes the EventSource conformance suite, with events pushed by the testkit's
//! Event Grid pusher: abandon is a 503 the pusher retries (one higher `aeg-delivery-count`),
//! dead-letter a 400 the pusher records, close answers 503 and the pusher retries to the
//! source reopened on the same address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use keyvault_invalidator_eventgrid::webhook::{WebhookConfig, WebhookSource};
use keyvault_invalidator_testkit::conformance::{self, ConformanceTarget, DeadLetter};
use keyvault_invalidator_testkit::eventgrid_push::{
    DeliverySchema, EventGridPusher, RetrySchedule,
};
use secrecy::SecretString;

const SECRET: &str = "conformance-secret";

/// One pusher per source address, so a reopened source (same address) is pushed to by the
/// pusher that holds its retries.
#[derive(Default)]
struct PushedWebhook {
    pushers: Mutex<HashMap<SocketAddr, EventGridPusher>>,
}

fn config(address: SocketAddr) -> WebhookConfig {
    WebhookConfig::new(address)
        .plain_http()
        .shared_secret(SecretString::from(SECRET))
}

impl PushedWebhook {
    fn pusher(&self, source: &WebhookSource) -> EventGridPusher {
        let address = source.local_addr();
        self.pushers
            .lock()
            .unwrap()
            .entry(address)
            .or_insert_with(|| {
                EventGridPusher::new(&format!("http://{address}/events?code={SECRET}"))
                    .expect("a loopback URL")
                    // A lone CloudEvent per request: its body is the suite's body, byte for byte.
                    .schema(DeliverySchema::CloudEvents)
                    // Long enough for a closed source to be reopened before the retry, so the
                    // retry is the second attempt, as the suite expects.
                    .retry_schedule(RetrySchedule::fast(Duration::from_millis(500), 20))
            })
            .clone()
    }
}

#[async_trait::async_trait]
impl ConformanceTarget for PushedWebhook {
    type Source = WebhookSource;

    async fn new_source(&self) -> WebhookSource {
        WebhookSource::bind(config("127.0.0.1:0".parse().unwrap()))
            .await
            .expect("bind")
    }

    async fn publish(&self, source: &WebhookSource, message_id: &str, body: &[u8]) {
        let pusher = self.pusher(source);
        let (id, body) = (message_id.to_owned(), body.to_vec());
        // Event Grid's request waits for the answer, which waits for the settlement: push in
        // the background, as Event Grid would, while the suite receives.
        tokio::spawn(async move { pusher.push_body(&id, &body, false).await });
    }

    async fn dead_letters(&self, source: &WebhookSource) -> Vec<DeadLetter> {
        self.pusher(source)
            .dead_letters()
            .into_iter()
            .map(|letter| DeadLetter {
                body: letter.body,
                // Event Grid's dead-letter blob carries its own reason, not ours: ours is in
                // the 400 answer's body and in the log (see `dead_letter_carries_reason`).
                reason: String::new(),
                description: letter.answer,
            })
            .collect()
    }

    fn dead_letter_carries_reason(&self) -> bool {
        false
    }

    async fn reopen(&self, source: &WebhookSource) -> WebhookSource {
        WebhookSource::bind(config(source.local_addr()))
            .await
            .expect("rebind the same address")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_passes_the_conformance_suite() {
    conformance::run_all(&PushedWebhook::default()).await;
}
