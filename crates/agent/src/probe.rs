//! `kvi-agent probe`: asks a running agent's `/healthz` or `/readyz` and exits 0 on 200, for
//! container probes in an image without curl (distroless): the kubelet's own HTTP probes come
//! from the node, not from loopback, where the agent listens.
//!
//! One GET over a plain TCP connection, read to its status line: written here rather than with
//! an HTTP client crate because that is all it needs, and the agent's own dependencies carry no
//! client.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{AgentError, AgentErrorKind};

/// How long the probe waits for the agent in all.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The status code the agent at `address` answers for `GET path`.
pub async fn status(address: SocketAddr, path: &str) -> Result<u16, AgentError> {
    let failed = |what: &str| {
        AgentError::new(
            AgentErrorKind::Setup,
            format!("probe of http://{address}{path}: {what}"),
        )
    };
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(failed("the path must start with `/` and hold no spaces"));
    }
    let exchange = async {
        let mut stream = TcpStream::connect(address).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::with_capacity(64);
        let mut byte = [0u8; 1];
        while head.len() < 64 && !head.ends_with(b"\r\n") {
            if stream.read(&mut byte).await? == 0 {
                break;
            }
            head.push(byte[0]);
        }
        Ok::<_, std::io::Error>(head)
    };
    let head = tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .map_err(|_| failed("no answer in time"))?
        .map_err(|e| failed("cannot connect").with_source(e))?;
    // `HTTP/1.1 200 OK`: the code is the second word.
    let line = String::from_utf8_lossy(&head);
    line.split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| failed("the answer is not HTTP"))
}
