//! Listening: the socket, TLS from PEM files (rustls with the ring provider named, never a
//! process-wide default), the connection limit, hyper's per-connection limits, and a graceful
//! stop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::config::Limits;
use super::error::{WebhookError, WebhookErrorKind};
use super::handler::Handler;

/// How long connections get, at close, to finish writing the answers they were given.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Connections waiting to be accepted.
const BACKLOG: u32 = 1024;

/// Binds `address` (with `SO_REUSEADDR`, so a restarted webhook takes its port back at once).
pub(crate) fn bind(address: SocketAddr) -> Result<TcpListener, WebhookError> {
    let fail = |error: std::io::Error| {
        WebhookError::new(WebhookErrorKind::Bind, format!("binding {address}")).with_source(error)
    };
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    socket.bind(address).map_err(fail)?;
    socket.listen(BACKLOG).map_err(fail)
}

/// A TLS acceptor from a PEM certificate chain and private key.
pub(crate) fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, WebhookError> {
    let tls = |message: String| WebhookError::new(WebhookErrorKind::Tls, message);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|error| {
            tls(format!("reading the certificate file {}", cert.display())).with_source(error)
        })?;
    if chain.is_empty() {
        return Err(tls(format!(
            "the certificate file {} holds no certificate",
            cert.display()
        )));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|error| {
        tls(format!("reading the private key file {}", key.display())).with_source(error)
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| {
            tls("the TLS provider supports no safe protocol version".into()).with_source(error)
        })?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|error| {
            tls("the certificate and private key do not make a usable pair".into())
                .with_source(error)
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections until `shutdown`, then lets the open ones finish their answers (for
/// at most [`SHUTDOWN_GRACE`]) and returns, the listener closed.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: Arc<Handler>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let tcp = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    tracing::debug!(%error, "webhook accept failed");
                    // Errors such as running out of file descriptors persist: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // Reap finished connections so the set does not grow with every one.
        while connections.try_join_next().is_some() {}
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(tcp, handler, limits, shutdown).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp));
                    match handshake.await {
                        Ok(Ok(stream)) => serve_connection(stream, handler, limits, shutdown).await,
                        Ok(Err(error)) => tracing::debug!(%error, "webhook TLS handshake failed"),
                        Err(_) => tracing::debug!("webhook TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    let finished = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, finished)
        .await
        .is_err()
    {
        connections.abort_all();
    }
}

async fn serve_connection<I>(
    io: I,
    handler: Arc<Handler>,
    limits: Limits,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| handler.clone().handle(request));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = shutdown.cancelled() => {
            // Answers already decided (503 at close) are written, then the connection closes.
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
