//! One AMQP connection to the subscription, on `fe2o3-amqp` directly: connection, session,
//! `$cbs` authorisation kept fresh, the entity's `$management` node for lock renewal, and a
//! receiver driven by a pump, all on a thread of the link's own.
//!
//! Why `fe2o3-amqp` and not `azure_core_amqp`: `azure_core_amqp` 1.1 (and 1.2.0-beta.1) can
//! settle only with Accepted, a bare Rejected and Released, and its management `call` sends no
//! body. Service Bus needs Modified for an abandon it counts (it does not count Released:
//! Azure/amqpnetlite#342), Rejected with `com.microsoft:dead-letter` and its reason for a
//! dead-letter operators can read, and `com.microsoft:renew-lock` with a body to keep a lock.
//! `fe2o3-amqp` is the engine `azure_core_amqp` wraps; `fe2o3-amqp-cbs` and
//! `fe2o3-amqp-management` (its companions) carry `$cbs` put-token and the request-response
//! exchange.
//!
//! Why a thread of its own: `fe2o3-amqp` 0.14's `Sender` hands a transfer (a `$cbs` put-token,
//! a renew-lock request) to its session engine and only then records it as unsettled. On a
//! multi-threaded runtime the session engine can take the service's accepted outcome in between
//! (the requesting task preempted right after the hand-over: a busy or CPU-throttled machine)
//! and drop it, and the request then waits forever on a healthy connection. With the
//! connection, the session and every task that uses them on one single-threaded runtime,
//! nothing runs between the hand-over and the record. Tokens are still fetched on the
//! application's runtime, where the credential's HTTP client belongs, and handed over.
//!
//! Why a pump: fe2o3's `Receiver::recv` needs the receiver mutably, so a settlement made while
//! a receive waits would wait for the next message. The pump owns the receiver, waits for
//! either a delivery or a settlement command, and drops the pending receive (fe2o3's `recv` is
//! cancel safe) to settle at once.
//!
//! Settle mode: the receiver attaches in receiver-settle-mode *first* and sends its
//! dispositions settled. fe2o3 0.14's `Receiver` records the service's answer to an unsettled
//! disposition (mode *second*) in its private unsettled map and offers no way to await it, so
//! mode second would only add a round trip nobody can read. Whether a settlement can still
//! apply is known from the lock instead: its end (`x-opt-locked-until`, then each renew-lock
//! answer) and the service's `com.microsoft:message-lock-lost` on renewal; a settlement whose
//! lock has ended is reported lost and not sent (see `ServiceBusSource::settle`).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::{Uuid, Value};
use fe2o3_amqp::Delivery;
use keyvault_invalidator_core::SourceError;
use keyvault_invalidator_transport::Incoming;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::amqp::Amqp;
use super::errors::classify;
use super::resolve::{Access, CbsToken, ResolvedConnection};

/// The longest closing waits for each AMQP step (`detach`, `end`, `close`) to be answered.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Renew a `$cbs` token this long before it ends, as the SDKs do.
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// A message as the receiver decodes it.
pub(crate) type AmqpDelivery = Delivery<Body<Value>>;

/// How a delivery is settled on the wire, as the official SDKs settle
/// (azure-sdk-for-net `AmqpReceiver.cs`, azure-sdk-for-python `_pyamqp_transport.py`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Complete: Accepted.
    Accept,
    /// Abandon: Modified, delivery failed, not undeliverable here. The service counts it.
    Abandon,
    /// Dead-letter: Rejected with `com.microsoft:dead-letter` and the reason.
    DeadLetter { reason: String, description: String },
}

/// What the application's side asks of the link's thread.
pub(crate) enum Command {
    Settle {
        delivery: DeliveryInfo,
        disposition: Disposition,
        reply: oneshot::Sender<Result<(), SourceError>>,
    },
    RenewLock {
        lock_token: Uuid,
        reply: oneshot::Sender<Result<SystemTime, SourceError>>,
    },
}

/// A fresh token for the link's thread to put on `$cbs`.
pub(super) struct Renewal {
    pub(super) token: CbsToken,
    pub(super) reply: oneshot::Sender<Result<(), SourceError>>,
}

/// A live link, for settlements and lock renewals. Dropping it stops the link's thread, which
/// closes the connection.
pub(crate) struct Link {
    pub(crate) commands: mpsc::Sender<Command>,
    stop: CancellationToken,
    /// Cancelled when the link's thread has closed the connection (or ended otherwise).
    finished: CancellationToken,
}

/// What the link receives: the pump's deliveries, and the error that ended it.
pub(crate) struct Deliveries(mpsc::Receiver<Result<AmqpDelivery, SourceError>>);

impl Incoming for Deliveries {
    type Item = AmqpDelivery;

    async fn next(&mut self) -> Result<AmqpDelivery, SourceError> {
        // `recv` is cancel safe.
        self.0.recv().await.unwrap_or_else(|| Err(stopped()))
    }

    fn next_if_ready(&mut self) -> Option<Result<AmqpDelivery, SourceError>> {
        match self.0.try_recv() {
            Ok(received) => Some(received),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(stopped())),
        }
    }
}

fn stopped() -> SourceError {
    SourceError::transient("the receiver stopped")
}

/// What the link's thread needs to connect: the names and addresses of one attempt.
pub(super) struct LinkSettings {
    /// The TLS client for `amqps` (unused for the emulator's plain `amqp`).
    pub(super) tls: TlsConnector,
    /// The link name stem (unique per attempt): the container id and link names derive from it.
    pub(super) name: String,
    pub(super) amqp_url: url::Url,
    pub(super) audience: String,
    /// `{topic}/subscriptions/{subscription}`.
    pub(super) address: String,
    pub(super) prefetch: u32,
    pub(super) timeout: Duration,
}

impl LinkSettings {
    pub(super) fn receiver_name(&self) -> String {
        format!("{}-receiver", self.name)
    }
}

impl Link {
    /// Opens the connection, session, `$cbs`, `$management` and receiver on the link's thread;
    /// each step waits at most `timeout`.
    pub(crate) async fn open(
        resolved: &ResolvedConnection,
        name: &str,
        subscription: &str,
        prefetch: u32,
        timeout: Duration,
    ) -> Result<(Link, Deliveries), SourceError> {
        let tls = tls_connector()?;
        let token = resolved.access.token(&resolved.audience).await?;
        let expires_at = token.expires_at;
        let settings = LinkSettings {
            tls,
            name: name.to_owned(),
            amqp_url: resolved.amqp_url.clone(),
            audience: resolved.audience.clone(),
            address: format!("{}/subscriptions/{subscription}", resolved.topic),
            prefetch: prefetch.max(1),
            timeout,
        };
        let stop = CancellationToken::new();
        // Connecting is abandoned if the caller stops waiting for it.
        let abandon = stop.clone().drop_guard();
        let (deliveries_tx, deliveries) = mpsc::channel(settings.prefetch as usize);
        let (commands, commands_rx) = mpsc::channel(64);
        let (renewals, renewals_rx) = mpsc::channel(1);
        let (opened_tx, opened) = oneshot::channel();
        let finished = CancellationToken::new();
        // Dropped when the thread's work ends, however it ends.
        let finishing = finished.clone().drop_guard();
        let thread_stop = stop.clone();
        spawn_link_thread(async move {
            let connected = tokio::select! {
                connected = Amqp::open(&settings, token) => connected,
                () = thread_stop.cancelled() => Err(SourceError::closed()),
            };
            match connected {
                Ok(mut amqp) => {
                    if opened_tx.send(Ok(())).is_ok() {
                        amqp.run(
                            &settings,
                            commands_rx,
                            deliveries_tx,
                            renewals_rx,
                            thread_stop,
                        )
                        .await;
                    }
                    amqp.close().await;
                }
                Err(error) => {
                    let _ = opened_tx.send(Err(error));
                }
            }
            drop(finishing);
        })?;
        match opened.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(SourceError::transient(
                    "the Service Bus link's thread stopped while connecting",
                ))
            }
        }
        abandon.disarm();
        tokio::spawn(renew(
            renewals,
            resolved.access.clone(),
            resolved.audience.clone(),
            expires_at,
            stop.clone(),
        ));
        let link = Link {
            commands,
            stop,
            finished,
        };
        Ok((link, Deliveries(deliveries)))
    }

    /// Stops the pump (which detaches the receiver) and closes the connection.
    pub(crate) async fn close(&self) {
        self.stop.cancel();
        // Each closing step is bounded on the link's thread; this bounds them all together.
        let _ = tokio::time::timeout(6 * CLOSE_TIMEOUT, self.finished.cancelled()).await;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Runs `link` to completion on a new OS thread named `servicebus-link`, on a single-threaded
/// runtime of its own, logging through the caller's `tracing` dispatcher.
///
/// One such thread runs per open connection (one per `ServiceBusSource`, since a source holds
/// one connection at a time), for the reason in this module's docs. It ends when the link does:
/// once the connection is closed (`Link::close`, or the `Link` dropped) or lost; a reconnection
/// starts a new one.
fn spawn_link_thread(link: impl Future<Output = ()> + Send + 'static) -> Result<(), SourceError> {
    let failed = |error: std::io::Error| {
        SourceError::transient("could not start the Service Bus link's thread").with_source(error)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(failed)?;
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    std::thread::Builder::new()
        .name("servicebus-link".to_owned())
        .spawn(move || tracing::dispatcher::with_default(&dispatch, || runtime.block_on(link)))
        .map_err(failed)?;
    Ok(())
}

/// The TCP connection, with Nagle's algorithm off.
///
/// Why not fe2o3's `open(url)`, which connects by itself: it leaves Nagle on, so a disposition
/// followed by a credit `flow` (two small writes) holds the flow back until the disposition is
/// acknowledged, and a peer that delays its ACKs (Linux does, by up to 40 ms) stalls every
/// credit renewal: a backlog drained at about 100 messages a second in the benchmarks.
pub(super) async fn connect_tcp(url: &url::Url) -> std::io::Result<tokio::net::TcpStream> {
    let host = url.host_str().unwrap_or_default();
    let port = url
        .port_or_known_default()
        .unwrap_or(if url.scheme() == "amqps" { 5671 } else { 5672 });
    let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The TLS client of a connection: rustls with its ring provider, named here, and the web PKI
/// roots (the roots fe2o3 would use by itself).
///
/// Why named here: left to itself, fe2o3 builds its rustls configuration on the process-wide
/// provider, which a process that never installed one lacks when its build holds more than one
/// (the Azure SDK's HTTP stack brings aws-lc-rs, fe2o3 brings ring): connecting would panic,
/// and installing one for it would choose for every other TLS client of the application. With
/// the provider in the configuration, nothing process-wide is read or written.
fn tls_connector() -> Result<TlsConnector, SourceError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| {
            SourceError::fatal("the TLS provider supports no safe protocol version")
                .with_source(error)
        })?
        .with_root_certificates(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Waits at most `timeout` for one step of connecting or renewing.
///
/// Why: `fe2o3-amqp` bounds none of them, and with the connection still healthy a step can
/// wait forever for an answer that never comes: a peer that stops answering, or an outcome
/// lost on the way (the race this module's thread avoids is one such). Unbounded, the source
/// would never connect and no invalidation would arrive; bounded, the step fails as transient
/// and the source reconnects on a fresh connection.
pub(super) async fn bounded<T, E>(
    timeout: Duration,
    step: &str,
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, SourceError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(timeout, future).await {
        Ok(result) => result.map_err(|e| classify(e, step)),
        Err(_) => Err(SourceError::transient(format!(
            "{step}: Service Bus did not answer within {timeout:?}"
        ))),
    }
}

/// Fetches a fresh token before the current one ends and has the link's thread put it, for
/// as long as the link lives.
async fn renew(
    renewals: mpsc::Sender<Renewal>,
    access: Access,
    audience: String,
    mut expires_at: SystemTime,
    stop: CancellationToken,
) {
    loop {
        let remaining = expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        // Five minutes ahead, or halfway through a token shorter than ten minutes.
        let wait = remaining
            .saturating_sub(RENEW_BEFORE.min(remaining / 2))
            .max(Duration::from_secs(1));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let renewed = async {
            let token = access.token(&audience).await?;
            let expires_at = token.expires_at;
            let (reply, answer) = oneshot::channel();
            let gone = || SourceError::closed();
            renewals
                .send(Renewal { token, reply })
                .await
                .map_err(|_| gone())?;
            answer.await.map_err(|_| gone())??;
            Ok::<_, SourceError>(expires_at)
        };
        let renewed = tokio::select! {
            _ = stop.cancelled() => return,
            renewed = renewed => renewed,
        };
        match renewed {
            Ok(next) => expires_at = next,
            Err(error) => {
                // The link fails when the old token ends; the source then reconnects.
                tracing::warn!(%error, "renewing the Service Bus token failed");
                return;
            }
        }
    }
}
