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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{self, ErrorCondition, Fields, ReceiverSettleMode};
use fe2o3_amqp::types::messaging::{Body, Modified};
use fe2o3_amqp::types::primitives::{Symbol, Timestamp, Uuid, Value};
use fe2o3_amqp::{Connection, Delivery, Receiver, Session};
use fe2o3_amqp_cbs::client::CbsClient;
use fe2o3_amqp_cbs::token::CbsToken as WireToken;
use fe2o3_amqp_management::client::MgmtClient;
use keyvault_invalidator_core::SourceError;
use secrecy::ExposeSecret;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::errors::{classified, classify, Refusal};
use super::renew_lock::RenewLock;
use super::target::{Access, CbsToken, Target};

/// The longest closing waits for each AMQP step (`detach`, `end`, `close`) to be answered.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Renew a `$cbs` token this long before it ends, as the SDKs do.
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// The service's limit on `DeadLetterReason` and `DeadLetterErrorDescription`, in characters.
pub(crate) const DEAD_LETTER_FIELD_LIMIT: usize = 4096;

/// A message as the receiver decodes it.
pub(crate) type AmqpDelivery = Delivery<Body<Value>>;

/// How a delivery is settled on the wire, as the official SDKs settle
/// (azure-sdk-for-net `AmqpReceiver.cs`, azure-sdk-for-python `_pyamqp_transport.py`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Complete: Accepted.
    Accept,
    /// Abandon: Modified, delivery failed, not undeliverable here. The service counts it.
    Abandon,
    /// Dead-letter: Rejected with `com.microsoft:dead-letter` and the reason.
    DeadLetter { reason: String, description: String },
}

pub(crate) enum Command {
    Settle {
        delivery: DeliveryInfo,
        outcome: Outcome,
        reply: oneshot::Sender<Result<(), SourceError>>,
    },
    RenewLock {
        lock_token: Uuid,
        reply: oneshot::Sender<Result<SystemTime, SourceError>>,
    },
}

/// A fresh token for the link's thread to put on `$cbs`.
struct Renewal {
    token: CbsToken,
    reply: oneshot::Sender<Result<(), SourceError>>,
}

/// A live link. Dropping it stops the link's thread, which closes the connection.
pub(crate) struct Link {
    pub(crate) deliveries: mpsc::Receiver<Result<AmqpDelivery, SourceError>>,
    pub(crate) commands: mpsc::Sender<Command>,
    stop: CancellationToken,
    /// Answered (or dropped) when the link's thread has closed the connection.
    finished: oneshot::Receiver<()>,
}

/// What the link's thread needs to connect: the names and addresses of one attempt.
struct LinkPlan {
    /// The TLS client for `amqps` (unused for the emulator's plain `amqp`).
    tls: TlsConnector,
    /// The link name stem (unique per attempt): the container id and link names derive from it.
    name: String,
    amqp_url: url::Url,
    audience: String,
    /// `{topic}/subscriptions/{subscription}`.
    address: String,
    prefetch: u32,
    timeout: Duration,
}

impl LinkPlan {
    fn receiver_name(&self) -> String {
        format!("{}-receiver", self.name)
    }
}

impl Link {
    /// Opens the connection, session, `$cbs`, `$management` and receiver on the link's thread;
    /// each step waits at most `timeout`.
    pub(crate) async fn open(
        target: &Target,
        name: &str,
        subscription: &str,
        prefetch: u32,
        timeout: Duration,
    ) -> Result<Link, SourceError> {
        let tls = tls_connector()?;
        let token = target.access.token(&target.audience).await?;
        let expires_at = token.expires_at;
        let plan = LinkPlan {
            tls,
            name: name.to_owned(),
            amqp_url: target.amqp_url.clone(),
            audience: target.audience.clone(),
            address: format!("{}/subscriptions/{subscription}", target.topic),
            prefetch: prefetch.max(1),
            timeout,
        };
        let stop = CancellationToken::new();
        // Connecting is abandoned if the caller stops waiting for it.
        let abandon = stop.clone().drop_guard();
        let (deliveries_tx, deliveries) = mpsc::channel(plan.prefetch as usize);
        let (commands, commands_rx) = mpsc::channel(64);
        let (renewals, renewals_rx) = mpsc::channel(1);
        let (opened_tx, opened) = oneshot::channel();
        let (finished_tx, finished) = oneshot::channel();
        let thread_stop = stop.clone();
        spawn_link_thread(async move {
            let connected = tokio::select! {
                connected = Amqp::open(&plan, token) => connected,
                () = thread_stop.cancelled() => Err(SourceError::closed()),
            };
            match connected {
                Ok(mut amqp) => {
                    if opened_tx.send(Ok(())).is_ok() {
                        amqp.run(&plan, commands_rx, deliveries_tx, renewals_rx, thread_stop)
                            .await;
                    }
                    amqp.close().await;
                }
                Err(error) => {
                    let _ = opened_tx.send(Err(error));
                }
            }
            let _ = finished_tx.send(());
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
            target.access.clone(),
            target.audience.clone(),
            expires_at,
            stop.clone(),
        ));
        Ok(Link {
            deliveries,
            commands,
            stop,
            finished,
        })
    }

    /// Stops the pump (which detaches the receiver) and closes the connection.
    pub(crate) async fn close(mut self) {
        self.stop.cancel();
        // Each closing step is bounded on the link's thread; this bounds them all together.
        let _ = tokio::time::timeout(6 * CLOSE_TIMEOUT, &mut self.finished).await;
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

/// The AMQP side of a link; it lives on the link's thread.
struct Amqp {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    cbs: CbsClient,
    management: MgmtClient,
    receiver: Receiver,
}

impl Amqp {
    async fn open(plan: &LinkPlan, token: CbsToken) -> Result<Amqp, SourceError> {
        let timeout = plan.timeout;
        let url = &plan.amqp_url;
        let host = url.host_str().unwrap_or_default();
        let stream = bounded(timeout, "connecting to Service Bus", connect_tcp(url)).await?;
        let builder = Connection::builder()
            .container_id(plan.name.clone())
            .scheme(url.scheme())
            .hostname(host)
            .sasl_hostname(host)
            .domain(url.domain())
            .sasl_profile(SaslProfile::Anonymous)
            .rustls_connector(plan.tls.clone())
            // Service Bus starts TLS before AMQP (no AMQP TLS upgrade header).
            .alt_tls_establishment(true)
            .max_frame_size(65536)
            .idle_time_out(60_000u32);
        let mut connection = bounded(
            timeout,
            "opening the AMQP connection",
            builder.open_with_stream(stream),
        )
        .await?;
        let session = bounded(
            timeout,
            "beginning a session",
            Session::begin(&mut connection),
        )
        .await;
        let mut session = match session {
            Ok(session) => session,
            Err(error) => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close()).await;
                return Err(error);
            }
        };
        let rest = Self::attach(plan, token, &mut session).await;
        match rest {
            Ok((cbs, management, receiver)) => Ok(Amqp {
                connection,
                session,
                cbs,
                management,
                receiver,
            }),
            Err(error) => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.end()).await;
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close()).await;
                Err(error)
            }
        }
    }

    async fn attach(
        plan: &LinkPlan,
        token: CbsToken,
        session: &mut SessionHandle<()>,
    ) -> Result<(CbsClient, MgmtClient, Receiver), SourceError> {
        let timeout = plan.timeout;
        let mut cbs = bounded(
            timeout,
            "attaching to $cbs",
            CbsClient::builder()
                .client_node_addr(format!("{}-cbs", plan.name))
                .attach(session),
        )
        .await?;
        authorize(&mut cbs, &plan.audience, token, timeout).await?;
        let management = bounded(
            timeout,
            "attaching to $management",
            MgmtClient::builder()
                .management_node_address(format!("{}/$management", plan.address))
                .client_node_addr(format!("{}-management", plan.name))
                .attach(session),
        )
        .await?;
        let receiver = bounded(
            timeout,
            &format!("attaching a receiver to `{}`", plan.address),
            Receiver::builder()
                .name(plan.receiver_name())
                .source(plan.address.clone())
                .target(format!("{}-target", plan.name))
                .receiver_settle_mode(ReceiverSettleMode::First)
                .credit_mode(CreditMode::Auto(plan.prefetch))
                .auto_accept(false)
                .attach(session),
        )
        .await?;
        Ok((cbs, management, receiver))
    }

    /// Receives, settles, renews locks and puts renewed tokens until `stop` or a failed
    /// receive.
    async fn run(
        &mut self,
        plan: &LinkPlan,
        commands: mpsc::Receiver<Command>,
        deliveries: mpsc::Sender<Result<AmqpDelivery, SourceError>>,
        mut renewals: mpsc::Receiver<Renewal>,
        stop: CancellationToken,
    ) {
        let Amqp {
            cbs,
            management,
            receiver,
            ..
        } = self;
        let (lock_requests, mut lock_requests_rx) =
            mpsc::unbounded_channel::<(Uuid, oneshot::Sender<Result<SystemTime, SourceError>>)>();
        // A token renewal runs beside the pump: a slow put-token must not hold up deliveries.
        let renewing_tokens = async {
            while let Some(Renewal { token, reply }) = renewals.recv().await {
                let result = authorize(cbs, &plan.audience, token, plan.timeout).await;
                let _ = reply.send(result);
            }
            std::future::pending::<()>().await;
        };
        // Lock renewals are request-response on `$management`, one at a time (the client
        // matches answers to requests by order).
        let receiver_name = plan.receiver_name();
        let renewing_locks = async {
            while let Some((lock_token, reply)) = lock_requests_rx.recv().await {
                let _ = reply
                    .send(renew_lock(management, lock_token, &receiver_name, plan.timeout).await);
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = pump(receiver, commands, deliveries, lock_requests, stop) => {}
            () = renewing_tokens => {}
            () = renewing_locks => {}
        }
    }

    /// Detaches the receiver and the request-response links, ends the session and closes the
    /// connection, each bounded: a peer that never answers must not hold the application's
    /// shutdown.
    async fn close(self) {
        let Amqp {
            mut connection,
            mut session,
            cbs,
            management,
            receiver,
        } = self;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, receiver.close()).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, management.close()).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, cbs.close()).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.end()).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close()).await;
    }
}

/// The TCP connection, with Nagle's algorithm off.
///
/// Why not fe2o3's `open(url)`, which connects by itself: it leaves Nagle on, so a disposition
/// followed by a credit `flow` (two small writes) holds the flow back until the disposition is
/// acknowledged, and a peer that delays its ACKs (Linux does, by up to 40 ms) stalls every
/// credit renewal: a backlog drained at about 100 messages a second in the benchmarks.
async fn connect_tcp(url: &url::Url) -> std::io::Result<tokio::net::TcpStream> {
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
async fn bounded<T, E>(
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

async fn authorize(
    cbs: &mut CbsClient,
    audience: &str,
    token: CbsToken,
    timeout: Duration,
) -> Result<(), SourceError> {
    let expires_at = token
        .expires_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let wire = WireToken::new(
        token.token.expose_secret(),
        token.token_type,
        Timestamp::from_milliseconds(expires_at),
    );
    bounded(
        timeout,
        "authorising on $cbs",
        cbs.put_token(audience.to_owned(), wire),
    )
    .await
}

async fn renew_lock(
    management: &mut MgmtClient,
    lock_token: Uuid,
    receiver_name: &str,
    timeout: Duration,
) -> Result<SystemTime, SourceError> {
    let request = RenewLock {
        lock_token,
        associated_link: receiver_name.to_owned(),
        server_timeout: timeout,
    };
    let renewed = bounded(timeout, "renewing a lock", management.call(request)).await?;
    renewed
        .locked_until
        .ok_or_else(|| SourceError::transient("renewing a lock: the answer named no new expiry"))
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

type LockRequests = mpsc::UnboundedSender<(Uuid, oneshot::Sender<Result<SystemTime, SourceError>>)>;

async fn pump(
    receiver: &mut Receiver,
    mut commands: mpsc::Receiver<Command>,
    deliveries: mpsc::Sender<Result<AmqpDelivery, SourceError>>,
    lock_requests: LockRequests,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(command) = commands.recv() => handle(receiver, command, &lock_requests).await,
            permit = deliveries.reserve() => {
                let Ok(permit) = permit else { break };
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    Some(command) = commands.recv() => handle(receiver, command, &lock_requests).await,
                    received = receiver.recv::<Body<Value>>() => {
                        let received = received.map_err(|e| classify(e, "receiving"));
                        let failed = received.is_err();
                        permit.send(received);
                        if failed {
                            break;
                        }
                    }
                }
            }
        }
    }
    // Settlements that arrive now cannot be made: the receivers of their replies see a closed
    // channel and report the lock as lost. The receiver is detached when the link closes.
    drop(commands);
}

async fn handle(receiver: &Receiver, command: Command, lock_requests: &LockRequests) {
    match command {
        Command::Settle {
            delivery,
            outcome,
            reply,
        } => {
            let _ = reply.send(settle(receiver, delivery, outcome).await);
        }
        Command::RenewLock { lock_token, reply } => {
            if let Err(mpsc::error::SendError((_, reply))) = lock_requests.send((lock_token, reply))
            {
                let _ = reply.send(Err(SourceError::transient("the link is closing")));
            }
        }
    }
}

async fn settle(
    receiver: &Receiver,
    delivery: DeliveryInfo,
    outcome: Outcome,
) -> Result<(), SourceError> {
    let result = match outcome {
        Outcome::Accept => receiver.accept(delivery).await,
        Outcome::Abandon => {
            receiver
                .modify(
                    delivery,
                    Modified {
                        delivery_failed: Some(true),
                        undeliverable_here: Some(false),
                        message_annotations: None,
                    },
                )
                .await
        }
        Outcome::DeadLetter {
            reason,
            description,
        } => {
            receiver
                .reject(delivery, dead_letter_error(&reason, &description))
                .await
        }
    };
    result.map_err(|e| {
        classified(
            Refusal::LockLost,
            Box::new(e),
            "settling: the link can no longer settle",
        )
    })
}

/// The error a dead-letter carries: condition `com.microsoft:dead-letter`, info
/// `DeadLetterReason` and `DeadLetterErrorDescription` (each cut to the service's 4096
/// characters), as the official SDKs send it.
pub(crate) fn dead_letter_error(reason: &str, description: &str) -> definitions::Error {
    let reason = truncate(reason, DEAD_LETTER_FIELD_LIMIT);
    let description = truncate(description, DEAD_LETTER_FIELD_LIMIT);
    let mut info = Fields::new();
    info.insert(
        Symbol::from("DeadLetterReason"),
        Value::String(reason.to_owned()),
    );
    info.insert(
        Symbol::from("DeadLetterErrorDescription"),
        Value::String(description.to_owned()),
    );
    definitions::Error::new(
        ErrorCondition::Custom(Symbol::from("com.microsoft:dead-letter")),
        Some(description.to_owned()),
        Some(info),
    )
}

/// The first `limit` characters of `text`.
fn truncate(text: &str, limit: usize) -> &str {
    match text.char_indices().nth(limit) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_names_its_reason_and_description_cut_to_the_service_limit() {
        let long = "é".repeat(5000);
        let error = dead_letter_error("MalformedPayload", &long);
        assert_eq!(
            error.condition,
            ErrorCondition::Custom(Symbol::from("com.microsoft:dead-letter"))
        );
        let info = error.info.expect("info");
        assert_eq!(
            info.get(&Symbol::from("DeadLetterReason")),
            Some(&Value::String("MalformedPayload".to_owned()))
        );
        match info.get(&Symbol::from("DeadLetterErrorDescription")) {
            Some(Value::String(description)) => {
                assert_eq!(description.chars().count(), DEAD_LETTER_FIELD_LIMIT)
            }
            other => panic!("description: {other:?}"),
        }
        assert_eq!(truncate("short", 4096), "short");
    }
}
