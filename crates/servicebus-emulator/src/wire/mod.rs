//! The socket relay between a client and the AMQP engine, and the few frames it rewrites to make
//! up for what `fe2o3-amqp` 0.14's acceptor cannot be told to do.
//!
//! The relay parses the frame boundaries of both directions (the protocol headers, SASL and AMQP
//! frames) and looks inside only these performatives; everything else, and any stream it cannot
//! parse, passes unchanged:
//!
//! - **Transfers of entity deliveries** (those whose message annotations carry
//!   `x-opt-lock-token`), on their way to the client:
//!   - the **delivery tag** becomes the lock token's 16 bytes in .NET GUID order (the first three
//!     groups little-endian), as the service sends it and as azure-sdk-for-python reads it
//!     (`ServiceBusReceivedMessage.lock_token` is `uuid.UUID(bytes_le=delivery_tag)`).
//!     fe2o3's `Sender` always makes its own 4-byte tags and has no way to set one.
//!   - the **header** is written out with every field, `delivery-count` included: fe2o3's
//!     encoder leaves out trailing fields that hold their default, so a first delivery
//!     (count 0) went out with no `delivery-count` at all, which the Python client reads as
//!     `None` (`ServiceBusReceivedMessage.delivery_count` is `header.delivery_count`).
//! - **The client's `open`**: its `max-frame-size` is lowered by [`FRAME_MARGIN`] before the
//!   engine sees it, so that a transfer the engine cut to the client's limit still fits once its
//!   tag and header grew.
//! - **Settlement in receiver-settle-mode *second*** (the Python client's peek-lock): the client
//!   sends its outcome unsettled and waits for the broker to settle it. fe2o3's session echoes
//!   the client's own state at once, settled, before the emulator has applied it
//!   (`LinkRelay::on_incoming_disposition` in fe2o3's `link/mod.rs` and
//!   `Session::on_incoming_disposition` in `session/mod.rs`): a lock that was lost would be
//!   confirmed as if applied, and a dead-letter comes back as a Rejected *with* the client's
//!   error, which the Python client treats as a failure. The relay drops fe2o3's echo for
//!   entity deliveries and sends the emulator's own settled disposition instead
//!   ([`Wire::settle`]): the outcome applied, or Rejected with
//!   `com.microsoft:message-lock-lost` when the lock was gone, as the service does.
//! - **Frames a client pipelines after its `begin`** (an `attach`, a `flow` sent before the
//!   engine's `begin` came back, as AMQP allows and azure-sdk-for-python does): fe2o3's
//!   listener hands a remote `begin` to the session acceptor through a queue and maps the
//!   channel only once the acceptor took it; a frame for that channel in between finds no
//!   session, and the engine closes the whole connection with `amqp:not-found`
//!   (`ConnectionEngine::forward_to_session` in fe2o3's `connection/engine.rs`; a CI run met it
//!   as a Python sender failing at open). The relay holds such frames back until the engine's
//!   answering `begin` goes out, then passes them on in order.
//! - **The engine's `close` with an error**: written with all three fields of the error
//!   (`condition`, `description`, `info`); fe2o3 leaves out the trailing empty ones, and
//!   azure-sdk-for-python's `Connection._incoming_close` indexes all three (an `IndexError`
//!   that takes the client down instead of the error).

mod codec;
mod rewrite;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fe2o3_amqp::types::definitions::{DeliveryNumber, Role};
use fe2o3_amqp::types::messaging::DeliveryState;
use fe2o3_amqp::types::performatives::Disposition;
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

pub(crate) use codec::with_full_header;
use codec::{frame, Framer};
// The unit tests below exercise the codec and the rewrites through this module.
#[cfg(test)]
use codec::{dotnet_guid_bytes, encode_header, parse, skip, HeaderFields};
#[cfg(test)]
use fe2o3_amqp::types::performatives::Close;
use rewrite::{inbound_frame, outbound_frame};

/// How many bytes the client's `max-frame-size` is lowered by (see the module docs).
pub(crate) const FRAME_MARGIN: u32 = 64;
/// The smallest `max-frame-size` AMQP allows.
const MIN_MAX_FRAME_SIZE: u32 = 512;
/// Frames larger than this end the parsing: the rest of the stream passes unchanged.
const MAX_PARSED_FRAME: usize = 16 * 1024 * 1024;

const OPEN: u8 = 0x10;
const BEGIN: u8 = 0x11;
const ATTACH: u8 = 0x12;
const TRANSFER: u8 = 0x14;
const DISPOSITION: u8 = 0x15;
const END: u8 = 0x17;
const CLOSE: u8 = 0x18;

/// An entity delivery the client has not settled.
#[derive(Debug)]
struct TrackedDelivery {
    lock_token: uuid::Uuid,
    /// Whether the link runs in receiver-settle-mode second (fe2o3 then echoes).
    second: bool,
    /// The client sent an unsettled outcome: it waits for the emulator to settle.
    awaiting: bool,
    /// fe2o3's echo went by (and was dropped).
    echo_seen: bool,
    /// The emulator's own settled disposition went out.
    settled: bool,
}

#[derive(Debug, Default)]
struct WireState {
    /// The client's channel of each session, to the engine's.
    channels: HashMap<u16, u16>,
    /// Whether each of the engine's sender links (channel, handle) is in mode second.
    second: HashMap<(u16, u32), bool>,
    /// Entity deliveries by (engine channel, delivery id).
    deliveries: HashMap<(u16, DeliveryNumber), TrackedDelivery>,
    by_token: HashMap<uuid::Uuid, (u16, DeliveryNumber)>,
    /// Client channels whose `begin` the engine has not answered yet, with the frames held
    /// back for them (see the module docs); `true` once the answer went out and the inbound
    /// side may pass them on.
    beginning: HashMap<u16, (bool, Vec<u8>)>,
}

/// A connection's relay state, shared with the links that settle its deliveries.
#[derive(Debug)]
pub(crate) struct Wire {
    state: Mutex<WireState>,
    frames: mpsc::UnboundedSender<Vec<u8>>,
    /// Woken when held-back frames may go to the engine.
    released: tokio::sync::Notify,
}

impl Wire {
    fn lock(&self) -> std::sync::MutexGuard<'_, WireState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Settles an entity delivery the client left unsettled, with `state`: what the emulator
    /// did with the client's outcome. Nothing is sent for a delivery the client settled
    /// itself.
    pub(crate) fn settle(&self, lock_token: &str, state: DeliveryState) {
        let Ok(token) = uuid::Uuid::parse_str(lock_token) else {
            return;
        };
        let frame = {
            let mut wire = self.lock();
            let Some(&key) = wire.by_token.get(&token) else {
                return;
            };
            let Some(tracked) = wire.deliveries.get_mut(&key) else {
                return;
            };
            if !tracked.awaiting || tracked.settled {
                return;
            }
            tracked.settled = true;
            if !tracked.second || tracked.echo_seen {
                wire.forget(key);
            }
            let disposition = Disposition {
                role: Role::Sender,
                first: key.1,
                last: None,
                settled: true,
                state: Some(state),
                batchable: false,
            };
            match serde_amqp::to_vec(&disposition) {
                Ok(body) => frame(key.0, &body),
                Err(_) => return,
            }
        };
        let _ = self.frames.send(frame);
    }
}

impl Wire {
    /// The held-back frames of every session the engine has answered, in order, to write to
    /// the engine now.
    fn take_released(&self) -> Vec<u8> {
        let mut wire = self.lock();
        let released: Vec<u16> = wire
            .beginning
            .iter()
            .filter(|(_, (answered, _))| *answered)
            .map(|(channel, _)| *channel)
            .collect();
        let mut out = Vec::new();
        for channel in released {
            if let Some((_, held)) = wire.beginning.remove(&channel) {
                out.extend_from_slice(&held);
            }
        }
        out
    }
}

impl WireState {
    fn forget(&mut self, key: (u16, DeliveryNumber)) {
        if let Some(tracked) = self.deliveries.remove(&key) {
            self.by_token.remove(&tracked.lock_token);
        }
    }

    /// Keys of tracked deliveries on `channel` within `first..=last` (walking what is
    /// tracked, not the peer's range, which could be huge).
    fn in_range(&self, channel: u16, first: u32, last: u32) -> Vec<(u16, DeliveryNumber)> {
        self.deliveries
            .keys()
            .filter(|(c, id)| *c == channel && first <= *id && *id <= last)
            .copied()
            .collect()
    }
}

/// Relays a client's socket to the AMQP engine, acknowledging what the client sends at once and
/// rewriting the frames the module docs list.
///
/// Why acknowledge at once: a client that writes a disposition and then a flow as two small
/// writes with Nagle's algorithm on (`fe2o3-amqp`, under `azure_core_amqp`, does not set
/// `TCP_NODELAY`) holds the flow back until the disposition is acknowledged; a server that
/// delays its ACKs (Linux does, by up to 40 ms, when it has nothing to send back) then stalls
/// every renewal of the link credit, and a backlog drains at ~100 messages/s (seen with strace:
/// 40 ms between the client's flow and the next transfer). Whether Service Bus's front ends
/// delay ACKs is not known; the emulator answers at once so that what is measured through it
/// is the client.
pub(crate) fn relay(
    tcp: TcpStream,
    near: DuplexStream,
) -> (Arc<Wire>, impl std::future::Future<Output = ()>) {
    let (frames_tx, frames_rx) = mpsc::unbounded_channel();
    let wire = Arc::new(Wire {
        state: Mutex::new(WireState::default()),
        frames: frames_tx,
        released: tokio::sync::Notify::new(),
    });
    let task = run(tcp, near, wire.clone(), frames_rx);
    (wire, task)
}

async fn run(
    tcp: TcpStream,
    near: DuplexStream,
    wire: Arc<Wire>,
    mut injected: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let (mut from_client, mut to_client) = tcp.into_split();
    let (mut from_engine, mut to_engine) = tokio::io::split(near);
    let inbound = async {
        let mut buffer = vec![0u8; 16 * 1024];
        let mut frames = Framer::default();
        loop {
            tokio::select! {
                read = from_client.read(&mut buffer) => {
                    let read = read?;
                    if read == 0 {
                        return to_engine.shutdown().await;
                    }
                    // Quick-ack mode is not permanent: Linux leaves it again on its own, so it
                    // is set again after every read, which also sends an ACK that was being
                    // held back.
                    let _ = SockRef::from(from_client.as_ref()).set_tcp_quickack(true);
                    let out = frames.push(&buffer[..read], |frame| inbound_frame(&wire, frame));
                    to_engine.write_all(&out).await?;
                }
                () = wire.released.notified() => {}
            }
            let held = wire.take_released();
            if !held.is_empty() {
                to_engine.write_all(&held).await?;
            }
        }
    };
    let outbound = async {
        let mut buffer = vec![0u8; 16 * 1024];
        let mut frames = Framer::default();
        loop {
            tokio::select! {
                read = from_engine.read(&mut buffer) => {
                    let read = read?;
                    if read == 0 {
                        break;
                    }
                    let out = frames.push(&buffer[..read], |frame| outbound_frame(&wire, frame));
                    to_client.write_all(&out).await?;
                }
                Some(frame) = injected.recv() => {
                    // Between whole frames: the framer only ever writes complete ones.
                    to_client.write_all(&frame).await?;
                }
            }
        }
        to_client.shutdown().await
    };
    let _: std::io::Result<_> = tokio::try_join!(inbound, outbound);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_encoded_values() {
        assert_eq!(skip(&[0x40]), Some(1));
        assert_eq!(skip(&[0x52, 7]), Some(2));
        assert_eq!(skip(&[0xa1, 2, b'h', b'i']), Some(4));
        assert_eq!(skip(&[0xa1, 3, b'h', b'i']), None);
        assert_eq!(skip(&[0x00, 0x53, 0x70, 0x45]), Some(4));
        assert_eq!(skip(&[0xff]), None);
        assert_eq!(skip(&[]), None);
    }

    #[test]
    fn a_default_header_is_written_out_whole() {
        let header = fe2o3_amqp::types::messaging::Header {
            durable: true,
            ..Default::default()
        };
        let encoded = serde_amqp::to_vec(&header).unwrap();
        let fields = HeaderFields {
            durable: true,
            priority: 4,
            ttl: None,
            first_acquirer: false,
            delivery_count: 0,
        };
        let full = encode_header(&fields);
        assert!(full.len() > encoded.len());
        let decoded: fe2o3_amqp::types::messaging::Header = serde_amqp::from_slice(&full).unwrap();
        assert_eq!(decoded, header);
        // Every field is there: a list of five.
        assert_eq!(&full[3..6], &[0xc0, (full.len() - 5) as u8, 5]);
    }

    #[test]
    fn a_close_error_goes_out_with_all_three_fields() {
        let close = Close {
            error: Some(fe2o3_amqp::types::definitions::Error::new(
                fe2o3_amqp::types::definitions::AmqpError::InternalError,
                None,
                None,
            )),
        };
        let body = serde_amqp::to_vec(&close).unwrap();
        let wire = relay_state();
        let rewritten = outbound_frame(&wire, &frame(0, &body)).unwrap();
        let (_, code, body) = parse(&rewritten).unwrap();
        assert_eq!(code, CLOSE);
        let decoded: Close = serde_amqp::from_slice(body).unwrap();
        let error = decoded.error.unwrap();
        assert_eq!(error.description.as_deref(), Some("amqp:internal-error"));
        // condition, description and an explicit null info.
        assert_eq!(body[body.len() - 1], 0x40);
    }

    fn relay_state() -> Wire {
        Wire {
            state: Mutex::new(WireState::default()),
            frames: mpsc::unbounded_channel().0,
            released: tokio::sync::Notify::new(),
        }
    }

    #[test]
    fn guids_go_out_in_dotnet_order() {
        let guid = uuid::Uuid::parse_str("00112233-4455-6677-8899-aabbccddeeff").unwrap();
        assert_eq!(
            dotnet_guid_bytes(&guid),
            [
                0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
                0xee, 0xff
            ]
        );
    }

    #[test]
    fn the_framer_splits_headers_and_frames_and_gives_up_on_garbage() {
        let mut framer = Framer::default();
        let mut seen = Vec::new();
        let mut stream = b"AMQP\x00\x01\x00\x00".to_vec();
        stream.extend_from_slice(&frame(3, &[0x00, 0x53, 0x18, 0x45]));
        let (a, b) = stream.split_at(10);
        let mut out = framer.push(a, |f| {
            seen.push(f.to_vec());
            None
        });
        out.extend(framer.push(b, |f| {
            seen.push(f.to_vec());
            None
        }));
        assert_eq!(out, stream);
        assert_eq!(seen.len(), 1);
        assert_eq!(
            parse(&seen[0]).map(|(c, code, _)| (c, code)),
            Some((3, 0x18))
        );
        let garbage = [0u8, 0, 0, 1, 9, 9];
        assert_eq!(framer.push(&garbage, |_| None), garbage.to_vec());
        assert!(framer.passthrough);
        assert_eq!(framer.push(b"xyz", |_| None), b"xyz".to_vec());
    }
}
