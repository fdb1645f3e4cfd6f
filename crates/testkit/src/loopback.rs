//! What the HTTP stand-ins share: a self-signed TLS server on loopback for an Azure host name,
//! the client that reaches it (trusting that certificate only, resolving the host to loopback,
//! no proxy), and the accept loop.
//!
//! TLS because the Azure SDK's bearer-token policy refuses `http://` endpoints.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use azure_core::http::{ClientOptions, HttpClient, RetryOptions, Transport};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// A stand-in's answer: a response, or a dropped connection.
pub(crate) type Answer = Result<Response<Full<Bytes>>, Dropped>;

/// The TLS side of a stand-in serving `host` at `address`.
pub(crate) struct LoopbackTls {
    pub(crate) acceptor: TlsAcceptor,
    /// Reaches the stand-in, and only it, under `host`.
    pub(crate) client: reqwest::Client,
}

impl LoopbackTls {
    /// A fresh self-signed certificate for `host`, and a client that trusts only it.
    pub(crate) fn new(host: &str, address: SocketAddr) -> io::Result<Self> {
        let certified = rcgen::generate_simple_self_signed(vec![host.to_owned()]).map_err(other)?;
        let certificate: CertificateDer<'static> = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        // Named explicitly: with more than one rustls provider compiled in, rustls cannot pick.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(other)?
            .with_no_client_auth()
            .with_single_cert(vec![certificate.clone()], key)
            .map_err(other)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];

        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_der(&certificate).map_err(other)?])
            .resolve(host, address)
            .no_proxy()
            .http1_only()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(other)?;
        Ok(LoopbackTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            client,
        })
    }
}

/// Client options with `transport` (a [`LoopbackTls::client`]) and the SDK's retries turned
/// off, so that one call is one request and tests can count them.
pub(crate) fn client_options(transport: Arc<dyn HttpClient>) -> ClientOptions {
    ClientOptions {
        transport: Some(Transport::new(transport)),
        retry: RetryOptions::none(),
        ..Default::default()
    }
}

/// Accepts TLS connections on `listener` and answers each request with `handle`; an
/// [`Dropped`] answer closes the connection without a response.
pub(crate) async fn serve<H, F>(listener: TcpListener, acceptor: TlsAcceptor, handle: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "stand-in accept failed");
                // Errors such as running out of file descriptors persist: do not spin on them.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // No Nagle: an answer's TLS records would otherwise wait for the client's delayed ACK
        // (tens of milliseconds), which is the stand-in's doing, not the code under test's.
        let _ = tcp.set_nodelay(true);
        // Reap finished connections so the set does not grow with every request.
        while connections.try_join_next().is_some() {}
        let acceptor = acceptor.clone();
        let handle = handle.clone();
        connections.spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(handle);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// Why a stand-in dropped a connection instead of answering (a scripted fault).
#[derive(Debug)]
pub(crate) struct Dropped;

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped by a scripted fault")
    }
}

impl std::error::Error for Dropped {}

/// A JSON answer, as the Azure services send them.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

pub(crate) fn other(error: impl fmt::Display) -> io::Error {
    io::Error::other(error.to_string())
}
