//! The two servers under load: the agent (transport `none`, an in-memory vault holding
//! [`SECRET`]) and the floor, a minimal hyper server answering a fixed body.
//! Each prints `READY {address}` on its first stdout line and serves until its standard input
//! closes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use keyvault_invalidator_agent::config::{ApiToken, Settings, TokenSource};
use keyvault_invalidator_agent::Agent;
use keyvault_invalidator_testkit::InMemoryVault;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use super::{SECRET, TOKEN, VALUE_BYTES};

/// The value of the benchmark secret: `VALUE_BYTES` of printable text.
pub fn value() -> String {
    "x".repeat(VALUE_BYTES)
}

/// Starts the agent on a free loopback port; returns it with its vault.
pub async fn start_agent(max_connections: usize) -> (Agent, InMemoryVault) {
    let vault = InMemoryVault::new();
    vault.set(SECRET, &value());
    let mut settings = Settings::from_env(|_| None).expect("the defaults are valid");
    settings.server.listen = "127.0.0.1:0".parse().expect("an address");
    settings.server.max_connections = max_connections;
    let token = ApiToken::new(TOKEN, TokenSource::Environment).expect("a long token");
    let agent = Agent::start_with_provider(settings, token, Arc::new(vault.clone()))
        .await
        .expect("the agent starts");
    (agent, vault)
}

/// Serves the agent until standard input closes.
pub async fn serve_agent() {
    let (agent, _vault) = start_agent(1024).await;
    println!("READY {}", agent.local_addr());
    until_stdin_closes().await;
    let _ = agent.shutdown().await;
}

/// Serves `body` as the floor until standard input closes: hyper's HTTP/1.1 server, the same
/// headers the agent sends, nothing else.
pub async fn serve_floor(body: Bytes) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let address: SocketAddr = listener.local_addr().expect("an address");
    println!("READY {address}");
    let accept = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    let mut response = Response::new(Full::new(body.clone()));
                    let headers = response.headers_mut();
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = until_stdin_closes() => {}
    }
}

async fn until_stdin_closes() {
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buffer).await {
        if n == 0 {
            return;
        }
    }
}
