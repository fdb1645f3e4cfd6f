//! What the relay does to each frame, one direction at a time: the performatives it looks
//! inside (`open`, `begin`, `attach`, `transfer`, `disposition`, `end`, `close`) and how it
//! rewrites, holds back or drops them (see the [module docs](super) for why each is needed).
//!
//! Separate from the byte-level codec ([`super::codec`]) so the rules read as rules.

use fe2o3_amqp::types::definitions::Role;
use fe2o3_amqp::types::performatives::{Attach, Begin, Close, Disposition, Open, Transfer};
use serde_amqp::primitives::Binary;

use super::codec::*;
use super::*;

pub(super) fn inbound_frame(wire: &Wire, raw: &[u8]) -> Option<Vec<u8>> {
    let (channel, code, body) = parse(raw)?;
    {
        let mut state = wire.lock();
        if let Some((_, held)) = state.beginning.get_mut(&channel) {
            // Held until the engine has the session (see the module docs): dropped here,
            // written later by the inbound side.
            held.extend_from_slice(raw);
            return Some(Vec::new());
        }
        if code == BEGIN {
            let begin: Begin = serde_amqp::from_slice(body).ok()?;
            if begin.remote_channel.is_none() {
                state.beginning.insert(channel, (false, Vec::new()));
            }
            return None;
        }
    }
    match code {
        OPEN => {
            let mut open: Open = serde_amqp::from_slice(body).ok()?;
            let size = open.max_frame_size.0;
            if size < MIN_MAX_FRAME_SIZE + FRAME_MARGIN {
                return None;
            }
            open.max_frame_size.0 = size - FRAME_MARGIN;
            let body = serde_amqp::to_vec(&open).ok()?;
            Some(frame(channel, &body))
        }
        DISPOSITION => {
            let disposition: Disposition = serde_amqp::from_slice(body).ok()?;
            if disposition.role != Role::Receiver {
                return None;
            }
            let mut wire = wire.lock();
            let engine_channel = *wire.channels.get(&channel)?;
            let last = disposition.last.unwrap_or(disposition.first);
            for key in wire.in_range(engine_channel, disposition.first, last) {
                if disposition.settled {
                    // The client settled by itself: nothing more to say about it.
                    wire.forget(key);
                } else if let Some(tracked) = wire.deliveries.get_mut(&key) {
                    tracked.awaiting = true;
                }
            }
            None
        }
        _ => None,
    }
}

pub(super) fn outbound_frame(wire: &Wire, raw: &[u8]) -> Option<Vec<u8>> {
    let (channel, code, body) = parse(raw)?;
    match code {
        BEGIN => {
            let begin: Begin = serde_amqp::from_slice(body).ok()?;
            if let Some(remote) = begin.remote_channel {
                let mut state = wire.lock();
                state.channels.insert(remote, channel);
                if let Some((answered, _)) = state.beginning.get_mut(&remote) {
                    *answered = true;
                    wire.released.notify_one();
                }
            }
            None
        }
        ATTACH => {
            let attach: Attach = serde_amqp::from_slice(body).ok()?;
            if attach.role == Role::Sender {
                let second = matches!(
                    attach.rcv_settle_mode,
                    fe2o3_amqp::types::definitions::ReceiverSettleMode::Second
                );
                wire.lock()
                    .second
                    .insert((channel, attach.handle.0), second);
            }
            None
        }
        TRANSFER => rewrite_transfer(wire, channel, body),
        CLOSE => {
            let close: Close = serde_amqp::from_slice(body).ok()?;
            let error = close.error?;
            let condition = serde_amqp::to_vec(&error.condition).ok()?;
            let description = match &error.description {
                Some(text) => encode_string(text),
                None => encode_string(
                    &serde_amqp::from_slice::<serde_amqp::primitives::Symbol>(&condition)
                        .map_or_else(|_| "error".to_owned(), |symbol| symbol.0),
                ),
            };
            let info = match &error.info {
                Some(info) => serde_amqp::to_vec(info).ok()?,
                None => vec![0x40],
            };
            let error = described(0x1d, &list(&[condition, description, info]));
            Some(frame(channel, &described(CLOSE, &list(&[error]))))
        }
        DISPOSITION => {
            let disposition: Disposition = serde_amqp::from_slice(body).ok()?;
            if disposition.role != Role::Sender {
                return None;
            }
            let mut wire = wire.lock();
            let last = disposition.last.unwrap_or(disposition.first);
            let keys = wire.in_range(channel, disposition.first, last);
            let span = u64::from(last.wrapping_sub(disposition.first)) + 1;
            let all_ours = !keys.is_empty()
                && keys.len() as u64 == span
                && keys
                    .iter()
                    .all(|k| wire.deliveries.get(k).is_some_and(|t| t.awaiting));
            if !all_ours {
                return None;
            }
            // fe2o3's echo of the client's own outcome: the emulator settles by itself.
            for key in keys {
                let done = match wire.deliveries.get_mut(&key) {
                    Some(tracked) => {
                        tracked.echo_seen = true;
                        tracked.settled
                    }
                    None => false,
                };
                if done {
                    wire.forget(key);
                }
            }
            Some(Vec::new())
        }
        END => {
            let mut wire = wire.lock();
            let keys: Vec<_> = wire
                .deliveries
                .keys()
                .filter(|(c, _)| *c == channel)
                .copied()
                .collect();
            for key in keys {
                wire.forget(key);
            }
            wire.second.retain(|(c, _), _| *c != channel);
            wire.channels.retain(|_, c| *c != channel);
            None
        }
        _ => None,
    }
}

pub(super) fn rewrite_transfer(wire: &Wire, channel: u16, body: &[u8]) -> Option<Vec<u8>> {
    let performative_len = skip(body)?;
    let mut transfer: Transfer = serde_amqp::from_slice(&body[..performative_len]).ok()?;
    let delivery_id = transfer.delivery_id?;
    transfer.delivery_tag.as_ref()?;
    let payload = &body[performative_len..];
    let (lock_token, header) = inspect_payload(payload)?;
    let mut rewritten_payload = Vec::with_capacity(payload.len() + 16);
    match header {
        Some((len, fields)) => {
            rewritten_payload.extend_from_slice(&encode_header(&fields));
            rewritten_payload.extend_from_slice(&payload[len..]);
        }
        None => rewritten_payload.extend_from_slice(payload),
    }
    transfer.delivery_tag = Some(Binary::from(dotnet_guid_bytes(&lock_token).to_vec()));
    let mut new_body = serde_amqp::to_vec(&transfer).ok()?;
    new_body.extend_from_slice(&rewritten_payload);
    {
        let mut wire = wire.lock();
        let second = wire
            .second
            .get(&(channel, transfer.handle.0))
            .copied()
            .unwrap_or(false);
        let key = (channel, delivery_id);
        wire.forget(key);
        if let Some(old) = wire.by_token.insert(lock_token, key) {
            wire.deliveries.remove(&old);
        }
        wire.deliveries.insert(
            key,
            TrackedDelivery {
                lock_token,
                second,
                awaiting: false,
                echo_seen: false,
                settled: false,
            },
        );
    }
    Some(frame(channel, &new_body))
}
