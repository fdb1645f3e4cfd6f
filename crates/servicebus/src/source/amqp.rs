//! The AMQP side of a link, on the link's thread (see `link.rs` for why a thread): opening the
//! connection, session, `$cbs`, `$management` and receiver; the pump that receives, settles and
//! renews; and settling on the wire as the official SDKs do.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{self, ErrorCondition, Fields, ReceiverSettleMode};
use fe2o3_amqp::types::messaging::{Body, Modified};
use fe2o3_amqp::types::primitives::{Symbol, Timestamp, Uuid, Value};
use fe2o3_amqp::{Connection, Receiver, Session};
use fe2o3_amqp_cbs::client::CbsClient;
use fe2o3_amqp_cbs::token::CbsToken as WireToken;
use fe2o3_amqp_management::client::MgmtClient;
use keyvault_invalidator_core::SourceError;
use secrecy::ExposeSecret;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::errors::{classified, classify, Refusal};
use super::link::{
    bounded, connect_tcp, AmqpDelivery, Command, Disposition, LinkSettings, Renewal, CLOSE_TIMEOUT,
};
use super::renew_lock::RenewLock;
use super::resolve::CbsToken;

/// The service's limit on `DeadLetterReason` and `DeadLetterErrorDescription`, in characters.
pub(crate) const DEAD_LETTER_FIELD_LIMIT: usize = 4096;

/// The AMQP side of a link; it lives on the link's thread.
pub(super) struct Amqp {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    cbs: CbsClient,
    management: MgmtClient,
    receiver: Receiver,
}

impl Amqp {
    pub(super) async fn open(
        settings: &LinkSettings,
        token: CbsToken,
    ) -> Result<Amqp, SourceError> {
        let timeout = settings.timeout;
        let url = &settings.amqp_url;
        let host = url.host_str().unwrap_or_default();
        let stream = bounded(timeout, "connecting to Service Bus", connect_tcp(url)).await?;
        let builder = Connection::builder()
            .container_id(settings.name.clone())
            .scheme(url.scheme())
            .hostname(host)
            .sasl_hostname(host)
            .domain(url.domain())
            .sasl_profile(SaslProfile::Anonymous)
            .rustls_connector(settings.tls.clone())
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
        let rest = Self::attach(settings, token, &mut session).await;
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
        settings: &LinkSettings,
        token: CbsToken,
        session: &mut SessionHandle<()>,
    ) -> Result<(CbsClient, MgmtClient, Receiver), SourceError> {
        let timeout = settings.timeout;
        let mut cbs = bounded(
            timeout,
            "attaching to $cbs",
            CbsClient::builder()
                .client_node_addr(format!("{}-cbs", settings.name))
                .attach(session),
        )
        .await?;
        authorize(&mut cbs, &settings.audience, token, timeout).await?;
        let management = bounded(
            timeout,
            "attaching to $management",
            MgmtClient::builder()
                .management_node_address(format!("{}/$management", settings.address))
                .client_node_addr(format!("{}-management", settings.name))
                .attach(session),
        )
        .await?;
        let receiver = bounded(
            timeout,
            &format!("attaching a receiver to `{}`", settings.address),
            Receiver::builder()
                .name(settings.receiver_name())
                .source(settings.address.clone())
                .target(format!("{}-target", settings.name))
                .receiver_settle_mode(ReceiverSettleMode::First)
                .credit_mode(CreditMode::Auto(settings.prefetch))
                .auto_accept(false)
                .attach(session),
        )
        .await?;
        Ok((cbs, management, receiver))
    }

    /// Receives, settles, renews locks and puts renewed tokens until `stop` or a failed
    /// receive.
    pub(super) async fn run(
        &mut self,
        settings: &LinkSettings,
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
                let result = authorize(cbs, &settings.audience, token, settings.timeout).await;
                let _ = reply.send(result);
            }
            std::future::pending::<()>().await;
        };
        // Lock renewals are request-response on `$management`, one at a time (the client
        // matches answers to requests by order).
        let receiver_name = settings.receiver_name();
        let renewing_locks = async {
            while let Some((lock_token, reply)) = lock_requests_rx.recv().await {
                let _ = reply.send(
                    renew_lock(management, lock_token, &receiver_name, settings.timeout).await,
                );
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
    pub(super) async fn close(self) {
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
                        let received = received.map_err(|e| classify(e, "the receiver"));
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
            disposition,
            reply,
        } => {
            let _ = reply.send(settle(receiver, delivery, disposition).await);
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
    disposition: Disposition,
) -> Result<(), SourceError> {
    let result = match disposition {
        Disposition::Accept => receiver.accept(delivery).await,
        Disposition::Abandon => {
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
        Disposition::DeadLetter {
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
