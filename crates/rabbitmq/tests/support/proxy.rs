//! A TCP proxy on loopback between a source and the broker, to stall or cut its traffic.
//!
//! Stalling holds every byte read in the stalled direction until it flows again, so a stall
//! is a broker (or a client) that stops answering, not a loss: what was sent arrives after
//! `resume`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    address: SocketAddr,
    /// Client to broker.
    upstream: watch::Sender<bool>,
    /// Broker to client.
    downstream: watch::Sender<bool>,
    cut: watch::Sender<u64>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `broker` (`host:port`), listening on an ephemeral loopback port.
    pub async fn start(broker: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let address = listener.local_addr().expect("the proxy's address");
        let (upstream, _) = watch::channel(true);
        let (downstream, _) = watch::channel(true);
        let (cut, _) = watch::channel(0u64);
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (upstream, downstream, cut) = (
                upstream.subscribe(),
                downstream.subscribe(),
                cut.subscribe(),
            );
            let accepted = accepted.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(relay(
                        client,
                        broker,
                        upstream.clone(),
                        downstream.clone(),
                        cut.clone(),
                    ));
                }
            }
        });
        Proxy {
            address,
            upstream,
            downstream,
            cut,
            accepted,
            task,
        }
    }

    /// `url` (an `amqp://user:password@host:port/vhost` URL) pointed at the proxy instead.
    pub fn url(&self, url: &str) -> String {
        let (scheme_and_user, rest) = url.split_once('@').expect("a URL with credentials");
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        format!("{scheme_and_user}@{}{path}", self.address)
    }

    /// Holds everything in both directions until [`resume`](Self::resume).
    pub fn stall(&self) {
        self.upstream.send_replace(false);
        self.downstream.send_replace(false);
    }

    /// Holds what the broker sends (confirms, deliveries) until [`resume`](Self::resume); what
    /// the client sends still reaches the broker.
    pub fn stall_downstream(&self) {
        self.downstream.send_replace(false);
    }

    /// Lets everything held, and everything after it, through.
    pub fn resume(&self) {
        self.upstream.send_replace(true);
        self.downstream.send_replace(true);
    }

    /// Closes every connection made through the proxy so far.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// How many connections the proxy accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

async fn relay(
    client: TcpStream,
    broker: SocketAddr,
    upstream: watch::Receiver<bool>,
    downstream: watch::Receiver<bool>,
    mut cut: watch::Receiver<u64>,
) {
    cut.mark_unchanged();
    let Ok(server) = TcpStream::connect(broker).await else {
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        () = pump(client_read, server_write, upstream) => {}
        () = pump(server_read, client_write, downstream) => {}
        _ = cut.changed() => {}
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut flowing: watch::Receiver<bool>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        // Bytes read during a stall wait here, so a stall delays traffic without losing it.
        if flowing.wait_for(|flowing| *flowing).await.is_err() {
            break;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
}
