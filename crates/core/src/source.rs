//! Where events come from: the [`EventSource`] trait and what it hands out.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// A transport that hands out message deliveries and takes their settlements: a Service Bus
/// subscription, a RabbitMQ queue, an in-memory queue in tests.
///
/// # Contract
/// - [`receive`](EventSource::receive) waits until at least one delivery is available and returns
///   at most `max` of them. It may return an empty batch (an idle timeout, say); the job simply
///   asks again. It must be **cancel safe**: the job drops the future at shutdown, and a delivery
///   must not be lost by that.
/// - Every delivery is settled at most once, by handing its [`DeliveryToken`] (which cannot be
///   cloned) to [`settle`](EventSource::settle). A delivery that is never settled (its token
///   dropped, the process killed) must come back later: at-least-once.
/// - [`Settlement::Abandon`] makes the delivery come back with a higher
///   [`delivery_count`](Delivery::delivery_count).
/// - After [`close`](EventSource::close), `receive` returns an error of kind
///   [`SourceErrorKind::Closed`].
///
/// The testkit's conformance suite checks all of this for any implementation.
#[async_trait]
pub trait EventSource: Send + Sync {
    /// Waits for deliveries and returns up to `max` (`max >= 1`).
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, SourceError>;

    /// Settles one delivery.
    async fn settle(&self, token: DeliveryToken, settlement: Settlement)
        -> Result<(), SourceError>;

    /// Stops handing out deliveries and releases the transport. Deliveries not yet settled come
    /// back to other consumers (or to this one, later).
    async fn close(&self) -> Result<(), SourceError>;
}

#[async_trait]
impl<S: EventSource + ?Sized> EventSource for std::sync::Arc<S> {
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, SourceError> {
        (**self).receive(max).await
    }

    async fn settle(
        &self,
        token: DeliveryToken,
        settlement: Settlement,
    ) -> Result<(), SourceError> {
        (**self).settle(token, settlement).await
    }

    async fn close(&self) -> Result<(), SourceError> {
        (**self).close().await
    }
}

#[async_trait]
impl<S: EventSource + ?Sized> EventSource for Box<S> {
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, SourceError> {
        (**self).receive(max).await
    }

    async fn settle(
        &self,
        token: DeliveryToken,
        settlement: Settlement,
    ) -> Result<(), SourceError> {
        (**self).settle(token, settlement).await
    }

    async fn close(&self) -> Result<(), SourceError> {
        (**self).close().await
    }
}

/// One message as the transport delivered it.
///
/// Sources build one with [`Delivery::new`] and the `with_*` methods (fields may be added, so
/// there is no struct literal outside this crate); everyone reads the fields.
///
/// ```
/// use keyvault_invalidator_core::{Bytes, Delivery, DeliveryToken};
///
/// let delivery = Delivery::new(Bytes::from_static(b"[]"), DeliveryToken::new(7u64))
///     .with_message_id("m-1")
///     .with_delivery_count(2)
///     .with_property("aeg-event-type", "Notification");
/// assert_eq!(delivery.message_id.as_deref(), Some("m-1"));
/// assert_eq!(delivery.delivery_count, 2);
/// assert_eq!(delivery.properties["aeg-event-type"], "Notification");
/// ```
#[non_exhaustive]
pub struct Delivery {
    /// The message body: the event payload.
    pub body: Bytes,
    /// Transport properties (Service Bus application properties such as `aeg-event-type`,
    /// AMQP headers), as text.
    pub properties: BTreeMap<String, String>,
    /// The transport's message id, when it has one.
    pub message_id: Option<String>,
    /// How many times this message has been delivered, this time included (1 on the first).
    pub delivery_count: u32,
    /// What settles this delivery.
    pub token: DeliveryToken,
}

impl Delivery {
    /// A first delivery (count 1) of `body`, settled through `token`, with no properties and no
    /// message id.
    pub fn new(body: Bytes, token: DeliveryToken) -> Self {
        Delivery {
            body,
            properties: BTreeMap::new(),
            message_id: None,
            delivery_count: 1,
            token,
        }
    }

    /// Sets the transport's message id.
    pub fn with_message_id(mut self, message_id: impl Into<String>) -> Self {
        self.message_id = Some(message_id.into());
        self
    }

    /// Sets how many times the message has been delivered, this time included.
    pub fn with_delivery_count(mut self, delivery_count: u32) -> Self {
        self.delivery_count = delivery_count;
        self
    }

    /// Replaces the transport properties.
    pub fn with_properties(mut self, properties: BTreeMap<String, String>) -> Self {
        self.properties = properties;
        self
    }

    /// Adds (or replaces) one transport property.
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }
}

impl fmt::Debug for Delivery {
    // The body may hold anything; it stays out of Debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message_id", &self.message_id)
            .field("delivery_count", &self.delivery_count)
            .field("body_len", &self.body.len())
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The proof of one unsettled delivery. Only the source that issued it can read it, and since
/// it cannot be cloned, a delivery can be settled at most once.
pub struct DeliveryToken(Box<dyn Any + Send + Sync>);

impl DeliveryToken {
    /// Wraps a source's own handle (a lock token, a delivery tag and channel generation...).
    pub fn new<T: Any + Send + Sync>(handle: T) -> Self {
        DeliveryToken(Box::new(handle))
    }

    /// Takes the handle back out for a source's `settle`; a token of another type came from
    /// another source, which is a fatal mistake of the caller.
    pub fn into_handle<T: Any>(self) -> Result<T, SourceError> {
        self.downcast()
            .map_err(|_| SourceError::fatal("the token was issued by another source"))
    }

    /// Takes the handle back out; gives the token back if it holds another type (it came from
    /// another source).
    pub fn downcast<T: Any>(self) -> Result<T, DeliveryToken> {
        match self.0.downcast::<T>() {
            Ok(handle) => Ok(*handle),
            Err(other) => Err(DeliveryToken(other)),
        }
    }
}

impl fmt::Debug for DeliveryToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeliveryToken(..)")
    }
}

/// How a delivery ends.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settlement {
    /// Done: remove the message.
    Complete,
    /// Not done: make the message available again (with a higher delivery count).
    Abandon,
    /// Never going to work: move the message aside for a person to look at. Built with
    /// [`Settlement::dead_letter`].
    #[non_exhaustive]
    DeadLetter {
        /// A short machine-readable reason (see [`DeadLetterReason`]).
        reason: String,
        /// A human-readable description (never a secret value).
        description: String,
    },
}

impl Settlement {
    /// A dead-letter settlement with one of the job's reasons.
    ///
    /// ```
    /// use keyvault_invalidator_core::{DeadLetterReason, Settlement};
    ///
    /// let settlement = Settlement::dead_letter(DeadLetterReason::MalformedPayload, "not JSON");
    /// match settlement {
    ///     Settlement::DeadLetter { reason, description, .. } => {
    ///         assert_eq!((reason.as_str(), description.as_str()), ("MalformedPayload", "not JSON"));
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// ```
    pub fn dead_letter(reason: DeadLetterReason, description: impl Into<String>) -> Self {
        Self::dead_letter_with_reason(reason.as_str(), description)
    }

    /// A dead-letter settlement with a reason of the application's own (a custom
    /// [`Invalidator`](crate::Invalidator) or source, say).
    pub fn dead_letter_with_reason(
        reason: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Settlement::DeadLetter {
            reason: reason.into(),
            description: description.into(),
        }
    }
}

/// The reasons the job dead-letters with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// The body is not a readable event payload.
    MalformedPayload,
    /// Invalidation failed and retrying cannot help.
    InvalidationRejected,
    /// Invalidation kept failing until the attempts ran out.
    MaxAttemptsExceeded,
}

impl DeadLetterReason {
    /// The reason as written into the dead-letter record.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::MalformedPayload => "MalformedPayload",
            DeadLetterReason::InvalidationRejected => "InvalidationRejected",
            DeadLetterReason::MaxAttemptsExceeded => "MaxAttemptsExceeded",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong in a transport.
///
/// Built with [`SourceError::transient`], [`fatal`](SourceError::fatal) and the other
/// constructors; fields may be added, so there is no struct literal outside this crate.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
#[non_exhaustive]
pub struct SourceError {
    /// Whether waiting helps.
    pub kind: SourceErrorKind,
    /// What happened (never a credential or connection string).
    pub message: String,
    /// The transport's own error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// The least time to wait before trying again, when the service said so (an HTTP
    /// `Retry-After`, say). Only meaningful for a transient error; `None` when the service
    /// named no delay, and the caller's own backoff applies.
    pub retry_after: Option<Duration>,
}

impl SourceError {
    /// A failure that may clear up: a lost connection, a timeout, a busy broker.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(SourceErrorKind::Transient, message)
    }

    /// A failure that will not clear up by itself: bad credentials, a missing entity.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(SourceErrorKind::Fatal, message)
    }

    /// The source was closed.
    pub fn closed() -> Self {
        Self::new(SourceErrorKind::Closed, "the event source is closed")
    }

    /// A settlement that can no longer be made: the lock expired, the channel it came on is
    /// gone. The message comes back by itself.
    pub fn settlement_lost(message: impl Into<String>) -> Self {
        Self::new(SourceErrorKind::SettlementLost, message)
    }

    /// An error of the given kind.
    pub fn new(kind: SourceErrorKind, message: impl Into<String>) -> Self {
        SourceError {
            kind,
            message: message.into(),
            source: None,
            retry_after: None,
        }
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Whether trying again, after a pause, may succeed: a [`Transient`](SourceErrorKind::Transient)
    /// error. A lost settlement is not retried by the caller (the message comes back by
    /// itself), and fatal or closed never clear up.
    ///
    /// ```
    /// use keyvault_invalidator_core::SourceError;
    ///
    /// assert!(SourceError::transient("connection reset").is_retryable());
    /// assert!(!SourceError::fatal("login refused").is_retryable());
    /// assert!(!SourceError::settlement_lost("lock expired").is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        self.kind == SourceErrorKind::Transient
    }

    /// Records that the service asked for at least `delay` before the next attempt.
    ///
    /// ```
    /// use std::time::Duration;
    /// use keyvault_invalidator_core::SourceError;
    ///
    /// let error = SourceError::transient("throttled").with_retry_after(Duration::from_secs(2));
    /// assert_eq!(error.retry_after, Some(Duration::from_secs(2)));
    /// assert_eq!(SourceError::transient("busy").retry_after, None);
    /// ```
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }
}

/// The classes of [`SourceError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SourceErrorKind {
    /// Retry after a pause.
    Transient,
    /// Give up: the job ends with this error.
    Fatal,
    /// The source was closed.
    Closed,
    /// The delivery can no longer be settled; it will be redelivered.
    SettlementLost,
}

impl fmt::Display for SourceErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceErrorKind::Transient => "transient source error",
            SourceErrorKind::Fatal => "fatal source error",
            SourceErrorKind::Closed => "source closed",
            SourceErrorKind::SettlementLost => "settlement lost",
        })
    }
}
