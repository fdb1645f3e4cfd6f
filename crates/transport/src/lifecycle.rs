//! [`Lifecycle`]: connecting, losing and closing one transport's connections.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use keyvault_invalidator_core::{Backoff, SourceError, SourceErrorKind};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::slot::ConnectSlot;

/// How long [`Lifecycle::close`] waits, by default, for a connection attempt under way to give
/// up and release what it opened.
pub const DEFAULT_CLOSE_WAIT: Duration = Duration::from_secs(20);

/// What a transport does to open and close one connection; [`Lifecycle`] does the rest.
///
/// A connection comes in two parts: the [`Connection`](Connector::Connection), shared by every
/// settlement made on it (and closed by [`close`](Connector::close)), and its
/// [`Incoming`](Connector::Incoming) side, which only `receive` reads.
pub trait Connector: Send + Sync + 'static {
    /// The transport as logs and errors name it: `RabbitMQ`, `Service Bus`.
    const NAME: &'static str;
    /// What the metrics' names start with: `{prefix}_connection_losses_total` (outages begun),
    /// `{prefix}_reconnects_total` (outages ended) and the gauge `{prefix}_connected` (1 while
    /// connected).
    const METRICS_PREFIX: &'static str;

    /// What settlements use: a channel, a command queue, an HTTP client.
    type Connection: Send + Sync + 'static;
    /// Where deliveries arrive.
    type Incoming: Incoming;

    /// Opens one connection. It runs in a task of its own, so the caller that started it may
    /// be gone. It should give up at [`Attempt::shutdown`], release what it opened, and return
    /// an error of kind [`Closed`](SourceErrorKind::Closed) (not counted as a failure).
    /// An error with a [`retry_after`](SourceError::retry_after) makes the next attempt wait
    /// at least that long.
    fn open(
        &self,
        attempt: &Attempt,
    ) -> impl Future<Output = Result<(Self::Connection, Self::Incoming), SourceError>> + Send;

    /// Closes a connection: one found lost ([`CloseReason::Lost`], before the next attempt),
    /// or at shutdown ([`CloseReason::Shutdown`]: release what the source owns, such as a
    /// queue of its own). Only a shutdown's error is reported, by [`Lifecycle::close`].
    fn close(
        &self,
        connection: Arc<Self::Connection>,
        reason: CloseReason,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// What logs name as the other end: a queue, a subscription, an endpoint (never a
    /// credential).
    fn peer(&self) -> String;

    /// Turns the error a receive met into the one `receive` reports: a transport that counts
    /// refusals, or knows that an error is fatal, decides here. As it is by default.
    fn on_loss(&self, cause: SourceError) -> SourceError {
        cause
    }

    /// What settling a delivery of a connection that is gone reports (see
    /// [`Lifecycle::connection_of`]).
    fn stale_settlement(&self) -> SourceError {
        SourceError::settlement_lost(format!(
            "the delivery came on a {} connection that is gone; it is delivered again",
            Self::NAME
        ))
    }
}

/// Where one connection's deliveries arrive: a consumer stream, a channel fed by the
/// connection's task, a long poll and what it brought.
///
/// An error from either method ends the connection: [`Lifecycle`] retires it, and the next
/// `receive` reconnects.
pub trait Incoming: Send + 'static {
    /// What arrives: a message as the transport decoded it.
    type Item: Send;

    /// Waits for the next item. Must be cancel safe: when the future is dropped, no item is
    /// lost (the next call gets it).
    fn next(&mut self) -> impl Future<Output = Result<Self::Item, SourceError>> + Send;

    /// The next item if it is already here, without waiting; `None` if there is none yet.
    fn next_if_ready(&mut self) -> Option<Result<Self::Item, SourceError>>;
}

/// Which connection of a [`Lifecycle`] this is: 1 for the first, one more for each attempt.
///
/// A delivery token carries the generation of the connection it came on, and settles only on
/// that connection ([`Lifecycle::connection_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(u64);

impl Generation {
    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// One attempt to connect, as [`Connector::open`] sees it.
#[derive(Debug, Clone)]
pub struct Attempt {
    generation: Generation,
    shutdown: CancellationToken,
}

impl Attempt {
    /// The generation the connection will have.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// Cancelled when the lifecycle closes: the attempt should give up.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// `step`, or a [`Closed`](SourceErrorKind::Closed) error as soon as the lifecycle closes.
    /// For steps that release what they hold when dropped; a step that must clean up first
    /// should watch [`shutdown`](Self::shutdown) itself.
    pub async fn unless_closed<T>(
        &self,
        step: impl Future<Output = Result<T, SourceError>>,
    ) -> Result<T, SourceError> {
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Err(SourceError::closed()),
            result = step => result,
        }
    }
}

/// Why [`Connector::close`] is closing a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The connection was found lost; a new one follows.
    Lost,
    /// The source is closing, or closed while this connection opened: nothing follows.
    Shutdown,
}

/// What one `receive` brought: items that arrived on one connection.
#[non_exhaustive]
pub struct Batch<C, T> {
    /// The connection's generation, for the delivery tokens.
    pub generation: Generation,
    /// The connection the items came on.
    pub connection: Arc<C>,
    /// At least one item, at most the `max` asked for.
    pub items: Vec<T>,
}

impl<C, T> fmt::Debug for Batch<C, T> {
    // Items may hold anything a message held: only their count is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("generation", &self.generation)
            .field("items", &self.items.len())
            .finish_non_exhaustive()
    }
}

/// The item type of a connector's [`Incoming`] side.
pub type ItemOf<C> = <<C as Connector>::Incoming as Incoming>::Item;

/// One transport's connections over time: connecting lazily in a task of its own, pausing
/// between failed attempts, retiring lost connections, refusing settlements meant for an old
/// connection, and closing. See the [crate documentation](crate) for the whole lifecycle.
///
/// Cloning it shares it.
pub struct Lifecycle<C: Connector> {
    shared: Arc<Shared<C>>,
}

impl<C: Connector> Clone for Lifecycle<C> {
    fn clone(&self) -> Self {
        Lifecycle {
            shared: self.shared.clone(),
        }
    }
}

/// The pause before the next attempt, by consecutive failures (1 or more).
type Pause = Box<dyn Fn(u32) -> Duration + Send + Sync>;

struct Shared<C: Connector> {
    connector: C,
    pause: Pause,
    close_wait: Duration,
    /// `receive`'s side of the live connection, and the attempt under way to open one.
    receiving: tokio::sync::Mutex<ConnectSlot<Receiving<C>>>,
    state: Mutex<State<C>>,
    generation: AtomicU64,
    /// Cancelled by `close`: abandons an attempt under way.
    shutdown: CancellationToken,
    /// The attempts under way, which `close` waits for.
    attempts: TaskTracker,
}

struct Receiving<C: Connector> {
    generation: Generation,
    connection: Arc<C::Connection>,
    incoming: C::Incoming,
}

struct State<C: Connector> {
    /// The live connection, for settlements.
    live: Option<(Generation, Arc<C::Connection>)>,
    /// Connections found lost, closed by the next attempt before it connects.
    retired: Vec<Arc<C::Connection>>,
    /// Failed attempts and losses since the last connection.
    failures: u32,
    /// When the connection was lost, or the first attempt failed.
    outage_since: Option<Instant>,
    /// No attempt before this: a `Retry-After` the other end asked for.
    not_before: Option<Instant>,
}

/// Builds a [`Lifecycle`].
pub struct LifecycleBuilder<C: Connector> {
    connector: C,
    pause: Pause,
    close_wait: Duration,
}

impl<C: Connector> LifecycleBuilder<C> {
    /// The pause between failed attempts: `backoff.delay(failures)` (exponential, with jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.pause = Box::new(move |failures| backoff.delay(failures));
        self
    }

    /// The pause between failed attempts as a function of the consecutive failures (1 after
    /// the first): for a pacing of the transport's own, or a deterministic one in tests.
    pub fn pause_with(mut self, pause: impl Fn(u32) -> Duration + Send + Sync + 'static) -> Self {
        self.pause = Box::new(pause);
        self
    }

    /// How long [`Lifecycle::close`] waits for an attempt under way (default
    /// [`DEFAULT_CLOSE_WAIT`]).
    pub fn close_wait(mut self, wait: Duration) -> Self {
        self.close_wait = wait;
        self
    }

    /// The lifecycle. Nothing connects until the first [`receive`](Lifecycle::receive) or
    /// [`connect`](Lifecycle::connect).
    pub fn build(self) -> Lifecycle<C> {
        Lifecycle {
            shared: Arc::new(Shared {
                connector: self.connector,
                pause: self.pause,
                close_wait: self.close_wait,
                receiving: tokio::sync::Mutex::new(ConnectSlot::new()),
                state: Mutex::new(State {
                    live: None,
                    retired: Vec::new(),
                    failures: 0,
                    outage_since: None,
                    not_before: None,
                }),
                generation: AtomicU64::new(0),
                shutdown: CancellationToken::new(),
                attempts: TaskTracker::new(),
            }),
        }
    }
}

impl<C: Connector> Lifecycle<C> {
    /// A lifecycle for `connector`, pausing between failed attempts as the default
    /// [`Backoff`] of 100 ms to 10 s does.
    pub fn builder(connector: C) -> LifecycleBuilder<C> {
        LifecycleBuilder {
            connector,
            pause: Box::new(|failures| {
                Backoff::new(Duration::from_millis(100), Duration::from_secs(10)).delay(failures)
            }),
            close_wait: DEFAULT_CLOSE_WAIT,
        }
    }

    /// The connector.
    pub fn connector(&self) -> &C {
        &self.shared.connector
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    /// Whether a connection is live (opened, and not found lost since).
    pub fn is_connected(&self) -> bool {
        self.shared.state().live.is_some()
    }

    /// Connects now, unless connected: a configuration the other end refuses fails here
    /// rather than at the first `receive`. Cancel safe, like `receive`.
    pub async fn connect(&self) -> Result<(), SourceError> {
        if self.is_closed() {
            return Err(SourceError::closed());
        }
        let mut slot = self.shared.receiving.lock().await;
        self.ensure(&mut slot).await.map(|_| ())
    }

    /// Connects if need be, waits for the first item, and takes up to `max` (at least 1) in
    /// all: the first, then those already there, never waiting for more.
    ///
    /// A loss (an error from [`Incoming`]) retires the connection, logs a warning naming the
    /// step and reports a error of the cause's kind, `lost the {NAME} connection while
    /// receiving: {cause}`; met after the first item, the items that arrived are returned and
    /// the next call reports nothing of it. Either way the next call closes the lost
    /// connection, pauses, and connects again.
    ///
    /// Cancel safe: a dropped call loses no item (given [`Incoming::next`] is cancel safe)
    /// and no attempt to connect.
    pub async fn receive(
        &self,
        max: usize,
    ) -> Result<Batch<C::Connection, ItemOf<C>>, SourceError> {
        if self.is_closed() {
            return Err(SourceError::closed());
        }
        let mut slot = self.shared.receiving.lock().await;
        let receiving = self.ensure(&mut slot).await?;
        let generation = receiving.generation;
        let connection = receiving.connection.clone();
        let first = match receiving.incoming.next().await {
            Ok(item) => item,
            Err(cause) => return Err(self.lost(&mut slot, "receiving", cause)),
        };
        let mut items = vec![first];
        while items.len() < max.max(1) {
            let Some(receiving) = slot.current() else {
                break;
            };
            match receiving.incoming.next_if_ready() {
                Some(Ok(item)) => items.push(item),
                Some(Err(cause)) => {
                    // Hand over what arrived; the next receive reconnects.
                    let _ = self.lost(&mut slot, "receiving the rest of a batch", cause);
                    break;
                }
                None => break,
            }
        }
        Ok(Batch {
            generation,
            connection,
            items,
        })
    }

    /// The live connection, for a settlement of a delivery that came on connection
    /// `generation`; a connection since lost or replaced is the error of
    /// [`Connector::stale_settlement`] (kind [`SettlementLost`](SourceErrorKind::SettlementLost)):
    /// what was received on it cannot be settled on another.
    pub fn connection_of(&self, generation: Generation) -> Result<Arc<C::Connection>, SourceError> {
        match &self.shared.state().live {
            Some((live, connection)) if *live == generation => Ok(connection.clone()),
            _ => Err(self.shared.connector.stale_settlement()),
        }
    }

    /// The live connection and its generation, whichever it is: for a transport whose
    /// settlements do not depend on the connection (an HTTP lock token, say).
    pub fn connection(&self) -> Option<(Generation, Arc<C::Connection>)> {
        self.shared.state().live.clone()
    }

    /// Closes: abandons an attempt under way (waiting, at most the
    /// [close wait](LifecycleBuilder::close_wait), for it to release what it opened), closes the
    /// connections found lost, then the live one ([`CloseReason::Shutdown`]), whose error it
    /// returns. Afterwards `receive` and `connect` report [`Closed`](SourceErrorKind::Closed),
    /// and no attempt connects. Calling it again does nothing.
    pub async fn close(&self) -> Result<(), SourceError> {
        let shared = &self.shared;
        shared.shutdown.cancel();
        shared.attempts.close();
        let _ = tokio::time::timeout(shared.close_wait, shared.attempts.wait()).await;
        let (retired, live) = {
            let mut state = shared.state();
            (std::mem::take(&mut state.retired), state.live.take())
        };
        for old in retired {
            let _ = shared.connector.close(old, CloseReason::Lost).await;
        }
        let Some((_, live)) = live else {
            return Ok(());
        };
        let result = shared.connector.close(live, CloseReason::Shutdown).await;
        metrics::gauge!(metric::<C>("connected")).set(0.0);
        result
    }

    async fn ensure<'a>(
        &self,
        slot: &'a mut ConnectSlot<Receiving<C>>,
    ) -> Result<&'a mut Receiving<C>, SourceError> {
        let shared = self.shared.clone();
        let attempts = self.shared.attempts.clone();
        slot.get_or_open(|| attempts.track_future(async move { shared.attempt().await }))
            .await?;
        if self.is_closed() {
            // Closed just after the attempt handed over its connection: `close` closes it.
            slot.take();
            return Err(SourceError::closed());
        }
        slot.current()
            .ok_or_else(|| SourceError::transient("the connection was lost as it opened"))
    }

    /// The connection was found lost while `step`: retired (the next attempt closes it
    /// before connecting, after a pause).
    fn lost(
        &self,
        slot: &mut ConnectSlot<Receiving<C>>,
        step: &str,
        cause: SourceError,
    ) -> SourceError {
        slot.take();
        if self.is_closed() {
            // `close` closes the connection.
            return SourceError::closed();
        }
        let shared = &self.shared;
        let mut cause = shared.connector.on_loss(cause);
        {
            let mut state = shared.state();
            if let Some((_, connection)) = state.live.take() {
                state.retired.push(connection);
            }
            shared.failed(&mut state, &cause);
        }
        let name = C::NAME;
        let why = &cause.message;
        tracing::warn!(
            transport = name,
            peer = %shared.connector.peer(),
            step,
            "lost the {name} link while {step}: {why}; closing its connection and reconnecting after a backoff"
        );
        cause.message = format!("lost the {name} connection while {step}: {why}");
        cause
    }
}

impl<C: Connector> Shared<C> {
    fn state(&self) -> MutexGuard<'_, State<C>> {
        // A panic elsewhere while holding it leaves nothing half-written worth refusing.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn attempt(&self) -> Result<Receiving<C>, SourceError> {
        let retired = std::mem::take(&mut self.state().retired);
        for old in retired {
            // Before connecting again: the old connection may still hold deliveries, which the
            // other end hands out again only once it is closed.
            let _ = self.connector.close(old, CloseReason::Lost).await;
        }
        let pause = {
            let mut state = self.state();
            let mut pause = if state.failures > 0 {
                (self.pause)(state.failures)
            } else {
                Duration::ZERO
            };
            if let Some(not_before) = state.not_before.take() {
                // At least as long as the other end asked.
                pause = pause.max(not_before.saturating_duration_since(Instant::now()));
            }
            pause
        };
        if !pause.is_zero() {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Err(SourceError::closed()),
                () = tokio::time::sleep(pause) => {}
            }
        }
        let generation = Generation(self.generation.fetch_add(1, Ordering::SeqCst) + 1);
        let attempt = Attempt {
            generation,
            shutdown: self.shutdown.clone(),
        };
        match self.connector.open(&attempt).await {
            Ok((connection, incoming)) => {
                let connection = Arc::new(connection);
                {
                    let mut state = self.state();
                    // Checked under the lock `close` takes the live connection under: either
                    // `close` sees this connection, or this attempt sees `close`.
                    if !self.shutdown.is_cancelled() {
                        state.live = Some((generation, connection.clone()));
                        let outage = state.outage_since.take();
                        state.failures = 0;
                        drop(state);
                        self.connected(outage);
                        return Ok(Receiving {
                            generation,
                            connection,
                            incoming,
                        });
                    }
                }
                drop(incoming);
                let _ = self
                    .connector
                    .close(connection, CloseReason::Shutdown)
                    .await;
                Err(SourceError::closed())
            }
            Err(error) if error.kind == SourceErrorKind::Closed => Err(error),
            Err(error) => {
                self.failed(&mut self.state(), &error);
                let name = C::NAME;
                tracing::warn!(
                    transport = name,
                    peer = %self.connector.peer(),
                    error = %error.message,
                    "connecting to {name} failed"
                );
                Err(error)
            }
        }
    }

    /// Counts a failed attempt or a loss; the first of an outage starts it.
    fn failed(&self, state: &mut State<C>, error: &SourceError) {
        state.failures = state.failures.saturating_add(1);
        if let Some(after) = error.retry_after {
            state.not_before = Some(Instant::now() + after);
        }
        if state.outage_since.is_none() {
            state.outage_since = Some(Instant::now());
            metrics::counter!(metric::<C>("connection_losses_total")).increment(1);
            metrics::gauge!(metric::<C>("connected")).set(0.0);
        }
    }

    fn connected(&self, outage: Option<Instant>) {
        if let Some(since) = outage {
            let name = C::NAME;
            tracing::info!(
                transport = name,
                peer = %self.connector.peer(),
                outage_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                "reconnected to {name}"
            );
            metrics::counter!(metric::<C>("reconnects_total")).increment(1);
        }
        metrics::gauge!(metric::<C>("connected")).set(1.0);
    }
}

fn metric<C: Connector>(name: &str) -> String {
    format!("{}_{name}", C::METRICS_PREFIX)
}

impl<C: Connector> fmt::Debug for Lifecycle<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state();
        f.debug_struct("Lifecycle")
            .field("transport", &C::NAME)
            .field("generation", &state.live.as_ref().map(|(g, _)| g.get()))
            .field("failures", &state.failures)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}
