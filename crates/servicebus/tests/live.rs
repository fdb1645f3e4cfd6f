//! The conformance suite against a real Service Bus namespace. Opt-in: it runs only when the
//! environment names a namespace, and says loudly that it skipped otherwise.
//!
//! - `KVI_LIVE_SERVICEBUS_CONNECTION_STRING`: a connection string whose policy has Manage
//!   and Send rights (it creates and deletes one subscription per check, and publishes), with
//!   `EntityPath=topic` or `KVI_LIVE_SERVICEBUS_TOPIC`; or
//! - `KVI_LIVE_SERVICEBUS_NAMESPACE` (`my-ns` or `my-ns.servicebus.windows.net`) and
//!   `KVI_LIVE_SERVICEBUS_TOPIC`, signed in with the developer tools (`az login`), with the
//!   Azure Service Bus Data Owner role on the topic.
//!
//! ```text
//! KVI_LIVE_SERVICEBUS_CONNECTION_STRING='Endpoint=sb://…;EntityPath=keyvault-events' \
//!   cargo test -p keyvault-invalidator-servicebus --test live -- --nocapture
//! ```
//!
//! The test publishes and reads the dead-letter sub-queue with `fe2o3-amqp` directly (the
//! source under test only receives).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use azure_core::credentials::TokenCredential;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::messaging::{Body, Message};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use fe2o3_amqp_cbs::client::CbsClient;
use fe2o3_amqp_cbs::token::CbsToken;
use keyvault_invalidator_core::secrecy::ExposeSecret;
use keyvault_invalidator_secrets::credential;
use keyvault_invalidator_servicebus::{
    fully_qualified_namespace, generate_subscription_name, sas_token, ConnectionString,
    ManagementAuth, ManagementClient, ServiceBusConfig, ServiceBusSource, SharedAccess,
    SubscriptionProperties, SERVICE_BUS_SCOPE,
};
use keyvault_invalidator_testkit::conformance::{self, ConformanceTarget, DeadLetter};

/// How the test reaches the namespace.
#[derive(Clone)]
enum Access {
    ConnectionString(ConnectionString),
    Credential(Arc<dyn TokenCredential>),
}

struct Live {
    namespace: String,
    topic: String,
    access: Access,
}

impl Live {
    fn from_environment() -> Option<Live> {
        let topic = std::env::var("KVI_LIVE_SERVICEBUS_TOPIC").ok();
        if let Ok(text) = std::env::var("KVI_LIVE_SERVICEBUS_CONNECTION_STRING") {
            let connection_string: ConnectionString = text
                .parse()
                .expect("KVI_LIVE_SERVICEBUS_CONNECTION_STRING is not a connection string");
            let topic = topic
                .or_else(|| connection_string.entity_path().map(str::to_owned))
                .expect("set KVI_LIVE_SERVICEBUS_TOPIC or EntityPath in the connection string");
            return Some(Live {
                namespace: connection_string.namespace().to_owned(),
                topic,
                access: Access::ConnectionString(connection_string),
            });
        }
        let namespace = std::env::var("KVI_LIVE_SERVICEBUS_NAMESPACE").ok()?;
        Some(Live {
            namespace: fully_qualified_namespace(&namespace).expect("a namespace"),
            topic: topic.expect("set KVI_LIVE_SERVICEBUS_TOPIC"),
            access: Access::Credential(credential::developer_tools().expect("developer tools")),
        })
    }

    /// A `$cbs` token for `path` (below the namespace).
    async fn token(&self, path: &str) -> (String, &'static str) {
        match &self.access {
            Access::ConnectionString(cs) => {
                let resource = format!("amqps://{}/{path}", self.namespace);
                let expiry = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
                    + 3600;
                let token = match cs.shared_access() {
                    SharedAccess::Key { name, key } => sas_token(&resource, name, key, expiry),
                    SharedAccess::Signature(signature) => signature.clone(),
                    other => panic!("a kind of shared access this test does not know: {other:?}"),
                };
                (
                    token.expose_secret().to_owned(),
                    "servicebus.windows.net:sastoken",
                )
            }
            Access::Credential(credential) => {
                let token = credential
                    .get_token(&[SERVICE_BUS_SCOPE], None)
                    .await
                    .expect("a token from the developer tools");
                (token.token.secret().to_owned(), "jwt")
            }
        }
    }

    /// Opens a connection and session authorised for `path`.
    async fn connect(
        &self,
        path: &str,
    ) -> (
        fe2o3_amqp::connection::ConnectionHandle<()>,
        fe2o3_amqp::session::SessionHandle<()>,
    ) {
        let mut connection = Connection::builder()
            .container_id(format!("kvi-live-{}", std::process::id()))
            .sasl_profile(SaslProfile::Anonymous)
            .alt_tls_establishment(true)
            .open(format!("amqps://{}:5671", self.namespace).as_str())
            .await
            .expect("connect to the namespace");
        let mut session = Session::begin(&mut connection).await.expect("session");
        let mut cbs = CbsClient::attach(&mut session).await.expect("$cbs");
        let (token, token_type) = self.token(path).await;
        cbs.put_token(
            format!("amqps://{}/{path}", self.namespace),
            CbsToken::new(token, token_type, None),
        )
        .await
        .expect("authorised");
        let _ = cbs.close().await;
        (connection, session)
    }

    fn config(&self) -> ServiceBusConfig {
        let config = match &self.access {
            Access::ConnectionString(_) => ServiceBusConfig::connection_string(&cs_text())
                .and_then(|c| c.subscription_prefix("kvi-live"))
                .expect("config"),
            Access::Credential(credential) => {
                ServiceBusConfig::with_credential(&self.namespace, credential.clone())
                    .and_then(|c| c.topic(&self.topic))
                    .and_then(|c| c.subscription_prefix("kvi-live"))
                    .expect("config")
            }
        };
        let config = match (&self.access, config.topic_name()) {
            (Access::ConnectionString(_), None) => config.topic(&self.topic).expect("topic"),
            _ => config,
        };
        config
            .subscription_properties(live_properties())
            .expect("properties")
    }
}

fn live_properties() -> SubscriptionProperties {
    SubscriptionProperties::default()
        .with_lock_duration(Duration::from_secs(5))
        .with_auto_delete_on_idle(Duration::from_secs(5 * 60))
}

fn cs_text() -> String {
    std::env::var("KVI_LIVE_SERVICEBUS_CONNECTION_STRING").unwrap_or_default()
}

#[async_trait::async_trait]
impl ConformanceTarget for Live {
    type Source = ServiceBusSource;

    async fn new_source(&self) -> ServiceBusSource {
        let source = ServiceBusSource::new(self.config());
        source
            .connect()
            .await
            .expect("connect to the live subscription");
        source
    }

    /// A subscription made through the management API beforehand, as infrastructure makes one
    /// for instances to share: closing a source does not delete it (its `AutoDeleteOnIdle`
    /// does, five minutes after the check).
    async fn new_shared_source(&self) -> ServiceBusSource {
        let auth = match &self.access {
            Access::ConnectionString(cs) => {
                ManagementAuth::SharedAccess(cs.shared_access().clone())
            }
            Access::Credential(credential) => ManagementAuth::Credential(credential.clone()),
        };
        let management = ManagementClient::new(&format!("https://{}/", self.namespace), auth)
            .expect("a management client");
        let subscription = generate_subscription_name("kvi-live-shared");
        management
            .create_subscription(&self.topic, &subscription, &live_properties())
            .await
            .expect("create the shared subscription");
        let source = ServiceBusSource::new(
            self.config()
                .existing_subscription(&subscription)
                .expect("config"),
        );
        source
            .connect()
            .await
            .expect("connect to the shared subscription");
        source
    }

    async fn reopen(&self, source: &ServiceBusSource) -> ServiceBusSource {
        let reopened = ServiceBusSource::new(
            self.config()
                .existing_subscription(source.subscription_name())
                .expect("config"),
        );
        reopened.connect().await.expect("connect again");
        reopened
    }

    async fn publish(&self, _source: &ServiceBusSource, message_id: &str, body: &[u8]) {
        let (mut connection, mut session) = self.connect(&self.topic).await;
        let mut sender = Sender::attach(
            &mut session,
            format!("kvi-live-sender-{message_id}"),
            self.topic.clone(),
        )
        .await
        .expect("sender");
        let message = Message::builder()
            .properties(fe2o3_amqp::types::messaging::Properties {
                message_id: Some(message_id.to_owned().into()),
                ..Default::default()
            })
            .data(Binary::from(body.to_vec()))
            .build();
        sender
            .send(message)
            .await
            .expect("sent")
            .accepted_or_else(|outcome| outcome)
            .expect("accepted");
        let _ = sender.close().await;
        let _ = session.end().await;
        let _ = connection.close().await;
    }

    async fn dead_letters(&self, source: &ServiceBusSource) -> Vec<DeadLetter> {
        let path = format!(
            "{}/subscriptions/{}/$deadletterqueue",
            self.topic,
            source.subscription_name()
        );
        let (mut connection, mut session) = self.connect(&path).await;
        let mut receiver = Receiver::attach(&mut session, "kvi-live-dead-letters", path)
            .await
            .expect("dead-letter receiver");
        let mut letters = Vec::new();
        while let Ok(Ok(delivery)) =
            tokio::time::timeout(Duration::from_secs(5), receiver.recv::<Body<Value>>()).await
        {
            let property = |name: &str| match delivery
                .message()
                .application_properties
                .as_ref()
                .and_then(|p| p.get(name))
            {
                Some(SimpleValue::String(text)) => text.clone(),
                _ => String::new(),
            };
            let body = match delivery.body() {
                Body::Data(sections) => sections.iter().flat_map(|d| d.0.to_vec()).collect(),
                _ => Vec::new(),
            };
            letters.push(DeadLetter {
                body,
                reason: property("DeadLetterReason"),
                description: property("DeadLetterErrorDescription"),
            });
            receiver.accept(&delivery).await.expect("accept");
        }
        let _ = receiver.close().await;
        let _ = session.end().await;
        let _ = connection.close().await;
        letters
    }

    fn lock_duration(&self) -> Option<Duration> {
        Some(Duration::from_secs(5))
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_service_bus_source_passes_the_conformance_suite_on_a_live_namespace() {
    let Some(live) = Live::from_environment() else {
        eprintln!(
            "SKIPPED: the live Service Bus test needs KVI_LIVE_SERVICEBUS_CONNECTION_STRING, or \
             KVI_LIVE_SERVICEBUS_NAMESPACE and KVI_LIVE_SERVICEBUS_TOPIC (see tests/live.rs)"
        );
        return;
    };
    conformance::run_all(&live).await;
}
