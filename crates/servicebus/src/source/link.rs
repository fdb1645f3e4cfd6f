//! One AMQP connection to the subscription: connection, session, `$cbs` authorisation kept
//! fresh, and a receiver driven by a pump task.
//!
//! Why a pump: `azure_core_amqp` 1.1 holds the receiver's lock for the whole of
//! `receive_delivery`, so a settlement made while a receive waits would wait for the next
//! message. The pump owns the receiver, waits for either a delivery or a settlement command,
//! and drops the pending receive (fe2o3's `recv` is cancel safe) to settle at once.

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
use super::target::{Access, Target};

/// The longest closing waits for each AMQP step (`end`, `close`) to be answered.
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

/// A live link. Dropping it stops the pump and closes the connection.
pub(crate) struct Link {
    pub(crate) deliveries: mpsc::Receiver<Result<AmqpDelivery, AmqpError>>,
    pub(crate) commands: mpsc::Sender<Command>,
    stop: CancellationToken,
    pump: Option<tokio::task::JoinHandle<()>>,
    /// Held so the session lives as long as the link: its receiver needs it to detach.
    session: AmqpSession,
    connection: Arc<AmqpConnection>,
}

impl Link {
    pub(crate) async fn open(
        target: &Target,
        name: &str,
        subscription: &str,
        prefetch: u32,
    ) -> Result<Link, SourceError> {
        install_crypto_provider();
        let connection = Arc::new(AmqpConnection::new());
        let options = AmqpConnectionOptions {
            idle_timeout: Some(azure_core::time::Duration::seconds(60)),
            ..Default::default()
        };
        connection
            .open(name.to_owned(), target.amqp_url.clone(), Some(options))
            .await
            .map_err(|e| classify(e, "connecting to Service Bus"))?;
        let session = AmqpSession::new();
        session
            .begin(&connection, None)
            .await
            .map_err(|e| classify(e, "beginning a session"))?;
        let cbs = Arc::new(
            AmqpClaimsBasedSecurity::new(session.clone())
                .map_err(|e| classify(e, "opening $cbs"))?,
        );
        cbs.attach()
            .await
            .map_err(|e| classify(e, "attaching to $cbs"))?;
        let expires_at = authorize(&cbs, &target.access, &target.audience).await?;

        let receiver = AmqpReceiver::new();
        let address = format!("{}/subscriptions/{subscription}", target.topic);
        let options = AmqpReceiverOptions {
            name: Some(format!("{name}-receiver")),
            credit_mode: Some(ReceiverCreditMode::Auto(prefetch.max(1))),
            auto_accept: false,
            ..Default::default()
        };
        receiver
            .attach(
                &session,
                AmqpSource::builder().with_address(address.clone()).build(),
                Some(options),
            )
            .await
            .map_err(|e| classify(e, &format!("attaching a receiver to `{address}`")))?;

        let stop = CancellationToken::new();
        let (deliveries_tx, deliveries) = mpsc::channel(prefetch.max(1) as usize);
        let (commands, commands_rx) = mpsc::channel(64);
        let pump = tokio::spawn(pump(receiver, commands_rx, deliveries_tx, stop.clone()));
        tokio::spawn(renew(
            cbs,
            target.access.clone(),
            target.audience.clone(),
            expires_at,
            stop.clone(),
        ));
        Ok(Link {
            deliveries,
            commands,
            stop,
            pump: Some(pump),
            session,
            connection,
        })
    }

    /// Stops the pump (which detaches the receiver) and closes the connection.
    pub(crate) async fn close(mut self) {
        self.stop.cancel();
        // The receiver detaches before the connection goes (the pump does it on its way out).
        if let Some(pump) = self.pump.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), pump).await;
        }
        // A peer that never answers `end` or `close` must not hold the application's shutdown.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.session.end()).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.connection.close()).await;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.cancel();
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

async fn authorize(
    cbs: &AmqpClaimsBasedSecurity,
    access: &Access,
    audience: &str,
) -> Result<SystemTime, SourceError> {
    let token = access.token(audience).await?;
    let expires_on = OffsetDateTime::from(token.expires_at);
    cbs.authorize_path(
        audience.to_owned(),
        Some(token.token_type.to_owned()),
        &Secret::new(token.token.expose_secret().to_owned()),
        expires_on,
    )
    .await
    .map_err(|e| classify(e, "authorising on $cbs"))?;
    Ok(token.expires_at)
}

/// Puts a fresh token before the current one ends, for as long as the link lives.
async fn renew(
    cbs: Arc<AmqpClaimsBasedSecurity>,
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
        match authorize(&cbs, &access, &audience).await {
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
    receiver: AmqpReceiver,
    mut commands: mpsc::Receiver<Command>,
    deliveries: mpsc::Sender<Result<AmqpDelivery, AmqpError>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(command) = commands.recv() => settle(&receiver, command).await,
            permit = deliveries.reserve() => {
                let Ok(permit) = permit else { break };
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    Some(command) = commands.recv() => settle(&receiver, command).await,
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
    // channel and report the lock as lost.
    drop(commands);
    let _ = tokio::time::timeout(Duration::from_secs(5), receiver.detach()).await;
}

async fn settle(receiver: &AmqpReceiver, command: Command) {
    let result = match command.outcome {
        Outcome::Accept => receiver.accept_delivery(&command.delivery).await,
        Outcome::Reject => receiver.reject_delivery(&command.delivery).await,
        Outcome::Release => receiver.release_delivery(&command.delivery).await,
    };
    let _ = command.reply.send(result);
}
