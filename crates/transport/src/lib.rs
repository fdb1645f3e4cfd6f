//! The connection lifecycle shared by keyvault-invalidator's transports.
//!
//! Every [`EventSource`] over a network connection (RabbitMQ, Service Bus, an Event Grid
//! namespace's HTTP pull) does the same things around its protocol: connect lazily and keep
//! connecting in the background when the caller is gone, pause between failed attempts, notice
//! a lost connection and close it before the next one, refuse to settle a delivery on a
//! connection other than the one it came on, log and count outages, batch what has arrived,
//! and close cleanly. [`Lifecycle`] does them once; a transport implements [`Connector`]
//! (open one connection, close one) and [`Incoming`] (where its deliveries arrive). Nothing
//! here knows a protocol.
//!
//! # The lifecycle
//! A lifecycle is, at any moment, in one of these states:
//!
//! - **Idle**: nothing open. The first [`receive`](Lifecycle::receive) (or
//!   [`connect`](Lifecycle::connect)) starts an attempt, so building a source never fails on
//!   the network.
//! - **Connecting**: an attempt runs in a task of its own. It first closes the connections
//!   found lost ([`CloseReason::Lost`]), then pauses if the last attempts failed: the
//!   [backoff](LifecycleBuilder::backoff)'s delay for the count of consecutive failures
//!   (exponential with jitter; by default 100 ms doubling to 10 s), or longer if the other end
//!   asked for it with a [`retry_after`](keyvault_invalidator_core::SourceError::retry_after). Then it calls
//!   [`Connector::open`] with the connection's [`Generation`] (1, 2, ...). A failure counts
//!   one more consecutive failure, is logged as a warning (`connecting to {NAME} failed`) and
//!   is what `receive` returns; the next call starts the next attempt.
//! - **Connected**: the connection is live. `receive` waits for the first item and takes what
//!   else has already arrived, up to `max`, never waiting for more. Settlements ask
//!   [`connection_of`](Lifecycle::connection_of) for the connection of their delivery's
//!   generation.
//! - **Lost**: an error from [`Incoming`] ends the connection. It is retired, to be closed
//!   by the next attempt; the loss counts as a failure (so the next attempt pauses first) and
//!   is logged as a warning naming the step. Settlements of its deliveries are refused with
//!   [`SettlementLost`](keyvault_invalidator_core::SourceErrorKind::SettlementLost): the other end delivers them again.
//!   A loss met after the first item of a batch hands the batch over; the next `receive`
//!   reconnects.
//! - **Closed**: [`close`](Lifecycle::close) abandons an attempt under way, closes the
//!   connections found lost and then the live one ([`CloseReason::Shutdown`]). From then on
//!   `receive` and `connect` report [`Closed`](keyvault_invalidator_core::SourceErrorKind::Closed). An attempt that
//!   finishes after `close` closes its own connection.
//!
//! An **outage** starts with a loss or a failed first attempt and ends with the next
//! connection, which logs `reconnected to {NAME}` with the outage's length in `outage_ms`.
//! Metrics, named by [`Connector::METRICS_PREFIX`]: `{prefix}_connection_losses_total`
//! (outages begun), `{prefix}_reconnects_total` (outages ended) and the gauge
//! `{prefix}_connected` (1 while connected).
//!
//! # Cancel safety
//! [`EventSource::receive`] must be cancel safe: the job drops it at shutdown, and may time it
//! out. An attempt to connect belongs to the lifecycle, not to the call that started it
//! ([`ConnectSlot`]): a dropped call leaves the attempt running, and the next call awaits the
//! same attempt, so a connection is never opened twice nor left half open. A dropped call
//! waiting for an item loses none, given [`Incoming::next`] is cancel safe; what it had taken
//! from a batch it had not yet returned cannot exist, since the batch is taken without
//! waiting.
//!
//! # A toy source
//! A source over an in-memory broker: every connection is a channel the broker publishes
//! into, and a cut ends it.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//!
//! use keyvault_invalidator_core::{
//!     async_trait, Bytes, Delivery, DeliveryToken, EventSource, Settlement, SourceError,
//!     SourceErrorKind,
//! };
//! use keyvault_invalidator_transport::{
//!     Attempt, CloseReason, Connector, Generation, Incoming, Lifecycle,
//! };
//! use tokio::sync::mpsc;
//!
//! type Message = Result<String, SourceError>;
//!
//! /// Publishes to the live connection, and settles.
//! #[derive(Default)]
//! struct Broker {
//!     connection: Mutex<Option<mpsc::UnboundedSender<Message>>>,
//!     completed: Mutex<Vec<String>>,
//! }
//!
//! impl Broker {
//!     fn publish(&self, text: &str) {
//!         if let Some(connection) = &*self.connection.lock().unwrap() {
//!             let _ = connection.send(Ok(text.to_owned()));
//!         }
//!     }
//!
//!     fn cut(&self) {
//!         if let Some(connection) = self.connection.lock().unwrap().take() {
//!             let _ = connection.send(Err(SourceError::transient("the broker went away")));
//!         }
//!     }
//! }
//!
//! struct Messages(mpsc::UnboundedReceiver<Message>);
//!
//! impl Incoming for Messages {
//!     type Item = String;
//!
//!     async fn next(&mut self) -> Message {
//!         // `recv` is cancel safe.
//!         let ended = || Err(SourceError::transient("the connection ended"));
//!         self.0.recv().await.unwrap_or_else(ended)
//!     }
//!
//!     fn next_if_ready(&mut self) -> Option<Message> {
//!         self.0.try_recv().ok()
//!     }
//! }
//!
//! struct ToyConnector(Arc<Broker>);
//!
//! impl Connector for ToyConnector {
//!     const NAME: &'static str = "Toy";
//!     const METRICS_PREFIX: &'static str = "toy";
//!     type Connection = Arc<Broker>;
//!     type Incoming = Messages;
//!
//!     async fn open(&self, _: &Attempt) -> Result<(Arc<Broker>, Messages), SourceError> {
//!         let (sender, receiver) = mpsc::unbounded_channel();
//!         *self.0.connection.lock().unwrap() = Some(sender);
//!         Ok((self.0.clone(), Messages(receiver)))
//!     }
//!
//!     async fn close(&self, _: Arc<Arc<Broker>>, _: CloseReason) -> Result<(), SourceError> {
//!         Ok(())
//!     }
//!
//!     fn peer(&self) -> String {
//!         "the toy broker".to_owned()
//!     }
//! }
//!
//! struct ToySource(Lifecycle<ToyConnector>);
//!
//! /// What settles a delivery: the connection it came on, and the message.
//! struct Token(Generation, String);
//!
//! #[async_trait]
//! impl EventSource for ToySource {
//!     async fn receive(&self, max: usize) -> Result<Vec<Delivery>, SourceError> {
//!         let batch = self.0.receive(max).await?;
//!         let delivery = |text: String| {
//!             let body = Bytes::from(text.clone());
//!             Delivery::new(body, DeliveryToken::new(Token(batch.generation, text)))
//!         };
//!         Ok(batch.items.into_iter().map(delivery).collect())
//!     }
//!
//!     async fn settle(&self, token: DeliveryToken, _: Settlement) -> Result<(), SourceError> {
//!         let Token(generation, text) = token.into_handle()?;
//!         let broker = self.0.connection_of(generation)?;
//!         broker.completed.lock().unwrap().push(text);
//!         Ok(())
//!     }
//!
//!     async fn close(&self) -> Result<(), SourceError> {
//!         self.0.close().await
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), SourceError> {
//! let broker = Arc::new(Broker::default());
//! let source = ToySource(Lifecycle::builder(ToyConnector(broker.clone())).build());
//! source.0.connect().await?;
//! broker.publish("one");
//! broker.publish("two");
//! let mut batch = source.receive(10).await?;
//! assert_eq!(batch.len(), 2);
//! source.settle(batch.remove(0).token, Settlement::Complete).await?;
//!
//! // The connection is lost: the receive that meets the loss says so, and the delivery of
//! // the lost connection can no longer be settled.
//! broker.cut();
//! let lost = source.receive(10).await.unwrap_err();
//! assert_eq!(lost.kind, SourceErrorKind::Transient);
//! assert_eq!(lost.message, "lost the Toy connection while receiving: the broker went away");
//! let stale = source.settle(batch.remove(0).token, Settlement::Complete).await;
//! assert_eq!(stale.unwrap_err().kind, SourceErrorKind::SettlementLost);
//!
//! // The next call reconnects, after a pause.
//! source.0.connect().await?;
//! broker.publish("three");
//! let batch = source.receive(10).await?;
//! source.settle(batch.into_iter().next().unwrap().token, Settlement::Complete).await?;
//! assert_eq!(*broker.completed.lock().unwrap(), ["one", "three"]);
//!
//! source.close().await?;
//! assert_eq!(source.receive(1).await.unwrap_err().kind, SourceErrorKind::Closed);
//! # Ok(()) }
//! ```
//!
//! [`EventSource`]: keyvault_invalidator_core::EventSource
//! [`EventSource::receive`]: keyvault_invalidator_core::EventSource::receive
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod lifecycle;
mod slot;

pub use lifecycle::{
    Attempt, Batch, CloseReason, Connector, Generation, Incoming, ItemOf, Lifecycle,
    LifecycleBuilder, DEFAULT_CLOSE_WAIT,
};
pub use slot::ConnectSlot;
