//! One AMQP connection to the subscription: connection, session, `$cbs` authorisation kept
//! fresh, and a receiver driven by a pump task, all on a thread of the link's own.
//!
//! Why a thread of its own: `fe2o3-amqp` 0.14 (under `azure_core_amqp` 1.1) hands a `$cbs`
//! put-token request to its session engine and only then records it as unsettled. On a
//! multi-threaded runtime the session engine can take the service's accepted outcome in between
//! (the requesting task preempted right after the hand-over: a busy or CPU-throttled machine)
//! and drop it, and the put-token then waits forever on a healthy connection. With the
//! connection, the session and every task that uses them on one single-threaded runtime,
//! nothing runs between the hand-over and the record. Tokens are still fetched on the
//! application's runtime, where the credential's HTTP client belongs, and handed over.
//!
//! Why a pump: `azure_core_amqp` 1.1 holds the receiver's lock for the whole of
//! `receive_delivery`, so a settlement made while a receive waits would wait for the next
//! message. The pump owns the receiver, waits for either a delivery or a settlement command,
//! and drops the pending receive (fe2o3's `recv` is cancel safe) to settle at once.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use azure_core::credentials::Secret;
use azure_core::time::OffsetDateTime;
use azure_core_amqp::{
    AmqpClaimsBasedSecurity, AmqpClaimsBasedSecurityApis, AmqpConnection, AmqpConnectionApis,
    AmqpConnectionOptions, AmqpDelivery, AmqpError, AmqpReceiver, AmqpReceiverApis,
    AmqpReceiverOptions, AmqpSession, AmqpSessionApis, AmqpSource, ReceiverCreditMode,
};
use keyvault_invalidator_core::SourceError;
use secrecy::ExposeSecret;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::errors::classify;
use super::target::{Access, CbsToken, Target};

/// The longest closing waits for each AMQP step (`detach`, `end`, `close`) to be answered.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Renew a `$cbs` token this long before it ends, as the SDKs do.
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// How a delivery is settled on the wire. `azure_core_amqp` 1.1 can send only these three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Accept,
    /// Rejected without an error: Service Bus dead-letters it; the reason cannot travel.
    Reject,
    /// Released: Service Bus unlocks it and counts the delivery.
    Release,
}

pub(crate) struct Command {
    pub(crate) delivery: AmqpDelivery,
    pub(crate) outcome: Outcome,
    pub(crate) reply: oneshot::Sender<Result<(), AmqpError>>,
}

/// A fresh token for the link's thread to put on `$cbs`.
struct Renewal {
    token: CbsToken,
    reply: oneshot::Sender<Result<(), SourceError>>,
}

/// A live link. Dropping it stops the link's thread, which closes the connection.
pub(crate) struct Link {
    pub(crate) deliveries: mpsc::Receiver<Result<AmqpDelivery, AmqpError>>,
    pub(crate) commands: mpsc::Sender<Command>,
    stop: CancellationToken,
    /// Answered (or dropped) when the link's thread has closed the connection.
    finished: oneshot::Receiver<()>,
}

/// What the link's thread needs to connect.
struct Plan {
    name: String,
    amqp_url: url::Url,
    audience: String,
    address: String,
    prefetch: u32,
    timeout: Duration,
}

impl Link {
    /// Opens the connection, session, `$cbs` and receiver on the link's thread; each step waits
    /// at most `timeout`.
    pub(crate) async fn open(
        target: &Target,
        name: &str,
        subscription: &str,
        prefetch: u32,
        timeout: Duration,
    ) -> Result<Link, SourceError> {
        install_crypto_provider();
        let token = target.access.token(&target.audience).await?;
        let expires_at = token.expires_at;
        let plan = Plan {
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
                Ok(amqp) => {
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
        let _ = tokio::time::timeout(4 * CLOSE_TIMEOUT, &mut self.finished).await;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Runs `link` to completion on a new thread with a single-threaded runtime, logging through
/// the caller's `tracing` dispatcher.
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
    connection: AmqpConnection,
    session: AmqpSession,
    cbs: Arc<AmqpClaimsBasedSecurity>,
    receiver: AmqpReceiver,
}

impl Amqp {
    async fn open(plan: &Plan, token: CbsToken) -> Result<Amqp, SourceError> {
        let timeout = plan.timeout;
        let connection = AmqpConnection::new();
        let options = AmqpConnectionOptions {
            idle_timeout: Some(azure_core::time::Duration::seconds(60)),
            ..Default::default()
        };
        bounded(
            timeout,
            "connecting to Service Bus",
            connection.open(plan.name.clone(), plan.amqp_url.clone(), Some(options)),
        )
        .await?;
        let session = AmqpSession::new();
        bounded(
            timeout,
            "beginning a session",
            session.begin(&connection, None),
        )
        .await?;
        let cbs = Arc::new(
            AmqpClaimsBasedSecurity::new(session.clone())
                .map_err(|e| classify(e, "opening $cbs"))?,
        );
        bounded(timeout, "attaching to $cbs", cbs.attach()).await?;
        authorize(&cbs, &plan.audience, token, timeout).await?;

        let receiver = AmqpReceiver::new();
        let options = AmqpReceiverOptions {
            name: Some(format!("{}-receiver", plan.name)),
            credit_mode: Some(ReceiverCreditMode::Auto(plan.prefetch)),
            auto_accept: false,
            ..Default::default()
        };
        bounded(
            timeout,
            &format!("attaching a receiver to `{}`", plan.address),
            receiver.attach(
                &session,
                AmqpSource::builder()
                    .with_address(plan.address.clone())
                    .build(),
                Some(options),
            ),
        )
        .await?;
        Ok(Amqp {
            connection,
            session,
            cbs,
            receiver,
        })
    }

    /// Receives, settles and puts renewed tokens until `stop` or a failed receive.
    async fn run(
        &self,
        plan: &Plan,
        commands: mpsc::Receiver<Command>,
        deliveries: mpsc::Sender<Result<AmqpDelivery, AmqpError>>,
        mut renewals: mpsc::Receiver<Renewal>,
        stop: CancellationToken,
    ) {
        // A renewal runs beside the pump: a slow put-token must not hold up deliveries.
        let renewing = async {
            while let Some(Renewal { token, reply }) = renewals.recv().await {
                let result = authorize(&self.cbs, &plan.audience, token, plan.timeout).await;
                let _ = reply.send(result);
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = pump(&self.receiver, commands, deliveries, stop) => {}
            () = renewing => {}
        }
    }

    /// Detaches the receiver, ends the session and closes the connection, each bounded: a
    /// peer that never answers must not hold the application's shutdown.
    async fn close(self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.receiver.detach()).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.session.end()).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.connection.close()).await;
    }
}

/// fe2o3 builds its rustls client config from the process-wide crypto provider, and rustls
/// refuses to choose one when the build has several (this workspace's HTTP stack brings
/// aws-lc-rs, fe2o3 brings ring). Install ring unless the application already chose one.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Err means another thread installed one first: that one serves as well.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}

/// Waits at most `timeout` for one step of connecting or renewing.
///
/// Why: `azure_core_amqp` 1.1 bounds none of them, and with the connection still healthy a
/// step can wait forever for an answer that never comes: a peer that stops answering, or an
/// outcome lost on the way (the `fe2o3-amqp` race this module's thread avoids is one such).
/// Unbounded, the source would never connect and no invalidation would arrive; bounded, the
/// step fails as transient and the source reconnects on a fresh connection.
async fn bounded<T>(
    timeout: Duration,
    step: &str,
    future: impl Future<Output = Result<T, AmqpError>>,
) -> Result<T, SourceError> {
    match tokio::time::timeout(timeout, future).await {
        Ok(result) => result.map_err(|e| classify(e, step)),
        Err(_) => Err(SourceError::transient(format!(
            "{step}: Service Bus did not answer within {timeout:?}"
        ))),
    }
}

async fn authorize(
    cbs: &AmqpClaimsBasedSecurity,
    audience: &str,
    token: CbsToken,
    timeout: Duration,
) -> Result<(), SourceError> {
    let expires_on = OffsetDateTime::from(token.expires_at);
    let secret = Secret::new(token.token.expose_secret().to_owned());
    bounded(
        timeout,
        "authorising on $cbs",
        cbs.authorize_path(
            audience.to_owned(),
            Some(token.token_type.to_owned()),
            &secret,
            expires_on,
        ),
    )
    .await
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

async fn pump(
    receiver: &AmqpReceiver,
    mut commands: mpsc::Receiver<Command>,
    deliveries: mpsc::Sender<Result<AmqpDelivery, AmqpError>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(command) = commands.recv() => settle(receiver, command).await,
            permit = deliveries.reserve() => {
                let Ok(permit) = permit else { break };
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    Some(command) = commands.recv() => settle(receiver, command).await,
                    received = receiver.receive_delivery() => {
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

async fn settle(receiver: &AmqpReceiver, command: Command) {
    let result = match command.outcome {
        Outcome::Accept => receiver.accept_delivery(&command.delivery).await,
        Outcome::Reject => receiver.reject_delivery(&command.delivery).await,
        Outcome::Release => receiver.release_delivery(&command.delivery).await,
    };
    let _ = command.reply.send(result);
}
