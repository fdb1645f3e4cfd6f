//! The bytes the relay reads and writes by hand: frame boundaries (protocol headers, SASL and
//! AMQP frames) and the few AMQP encodings it rewrites (a message header written out whole,
//! the lock token read from the message annotations, a GUID in .NET order).
//!
//! Separate from the relay's bookkeeping ([`super`]) and its rewriting rules
//! ([`super::rewrite`]) because this part is pure functions over bytes, tested on its own.

use fe2o3_amqp::types::primitives::Value;

use super::MAX_PARSED_FRAME;

/// Splits a byte stream into protocol headers and frames; once it meets something it cannot
/// parse it passes everything through unchanged.
#[derive(Default)]
pub(super) struct Framer {
    pending: Vec<u8>,
    pub(super) passthrough: bool,
}

impl Framer {
    /// Appends `bytes`; returns what to write on: each complete unit as `rewrite` returns it.
    pub(super) fn push(
        &mut self,
        bytes: &[u8],
        mut rewrite: impl FnMut(&[u8]) -> Option<Vec<u8>>,
    ) -> Vec<u8> {
        if self.passthrough {
            return bytes.to_vec();
        }
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::with_capacity(self.pending.len());
        let mut start = 0;
        loop {
            let rest = &self.pending[start..];
            let unit = if rest.len() >= 4 && &rest[..4] == b"AMQP" {
                if rest.len() < 8 {
                    break;
                }
                out.extend_from_slice(&rest[..8]);
                start += 8;
                continue;
            } else if rest.len() >= 4 {
                let size = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if !(8..=MAX_PARSED_FRAME).contains(&size) || (rest.len() >= 5 && rest[4] < 2) {
                    self.passthrough = true;
                    out.extend_from_slice(rest);
                    self.pending.clear();
                    return out;
                }
                if rest.len() < size {
                    break;
                }
                &rest[..size]
            } else {
                break;
            };
            match rewrite(unit) {
                Some(replacement) => out.extend_from_slice(&replacement),
                None => out.extend_from_slice(unit),
            }
            start += unit.len();
        }
        self.pending.drain(..start);
        out
    }
}

/// An AMQP frame (type 0): its channel, and its body (performative and payload), if it has one
/// whose performative is described by a small ulong code.
pub(super) fn parse(frame: &[u8]) -> Option<(u16, u8, &[u8])> {
    if frame.len() < 8 || frame[5] != 0 {
        return None;
    }
    let offset = usize::from(frame[4]) * 4;
    let body = frame.get(offset..)?;
    let channel = u16::from_be_bytes([frame[6], frame[7]]);
    match body {
        [0x00, 0x53, code, ..] => Some((channel, *code, body)),
        _ => None,
    }
}

/// An AMQP frame (type 0, no extended header) with `body`.
pub(super) fn frame(channel: u16, body: &[u8]) -> Vec<u8> {
    let size = u32::try_from(8 + body.len()).unwrap_or(u32::MAX);
    let mut frame = Vec::with_capacity(8 + body.len());
    frame.extend_from_slice(&size.to_be_bytes());
    frame.extend_from_slice(&[2, 0]);
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

/// The fields of a message header, as decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HeaderFields {
    pub(super) durable: bool,
    pub(super) priority: u8,
    pub(super) ttl: Option<u32>,
    pub(super) first_acquirer: bool,
    pub(super) delivery_count: u32,
}

/// The lock token from the message annotations, and the header section's length and fields,
/// of a message payload (or as much of it as this frame holds).
pub(super) fn inspect_payload(
    payload: &[u8],
) -> Option<(uuid::Uuid, Option<(usize, HeaderFields)>)> {
    let mut at = 0;
    let mut header = None;
    let mut lock_token = None;
    while at < payload.len() && lock_token.is_none() {
        let section = &payload[at..];
        let len = skip(section)?;
        let [0x00, 0x53, code, ..] = section else {
            return None;
        };
        let value = &section[3..len];
        match *code {
            0x70 => {
                let header_value: fe2o3_amqp::types::messaging::Header =
                    serde_amqp::from_slice(&section[..len]).ok()?;
                header = Some((
                    len,
                    HeaderFields {
                        durable: header_value.durable,
                        priority: header_value.priority.0,
                        ttl: header_value.ttl,
                        first_acquirer: header_value.first_acquirer,
                        delivery_count: header_value.delivery_count,
                    },
                ));
            }
            0x72 => {
                let Ok(Value::Map(map)) = serde_amqp::from_slice::<Value>(value) else {
                    return None;
                };
                lock_token = map.iter().find_map(|(k, v)| match (k, v) {
                    (Value::Symbol(k), Value::Uuid(u)) if k.0 == "x-opt-lock-token" => {
                        Some(uuid::Uuid::from_bytes(u.clone().into_inner()))
                    }
                    _ => None,
                });
                lock_token?;
            }
            // Delivery annotations may come between the header and the message annotations.
            0x71 => {}
            _ => return None,
        }
        at += len;
    }
    // Only the header at the very start is rewritten.
    let header = header.filter(|_| payload.starts_with(&[0x00, 0x53, 0x70]));
    Some((lock_token?, header))
}

/// A header with every field written out.
pub(super) fn encode_header(fields: &HeaderFields) -> Vec<u8> {
    let boolean = |b: bool| if b { 0x41 } else { 0x42 };
    let mut list = vec![5u8];
    list.push(boolean(fields.durable));
    list.extend_from_slice(&[0x50, fields.priority]);
    match fields.ttl {
        Some(ttl) => {
            list.push(0x70);
            list.extend_from_slice(&ttl.to_be_bytes());
        }
        None => list.push(0x40),
    }
    list.push(boolean(fields.first_acquirer));
    list.push(0x70);
    list.extend_from_slice(&fields.delivery_count.to_be_bytes());
    let mut section = vec![0x00, 0x53, 0x70, 0xc0, list.len() as u8];
    section.extend_from_slice(&list);
    section
}

/// A described value with a small-ulong descriptor.
pub(super) fn described(code: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00, 0x53, code];
    out.extend_from_slice(value);
    out
}

/// A list of already-encoded values (list32: no size limits to mind).
pub(super) fn list(items: &[Vec<u8>]) -> Vec<u8> {
    let content: Vec<u8> = items.concat();
    let size = u32::try_from(content.len() + 4).unwrap_or(u32::MAX);
    let count = u32::try_from(items.len()).unwrap_or(u32::MAX);
    let mut out = vec![0xd0];
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&content);
    out
}

/// A string (str32).
pub(super) fn encode_string(text: &str) -> Vec<u8> {
    let mut out = vec![0xb1];
    out.extend_from_slice(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out
}

/// A GUID's bytes in .NET order: the first three groups little-endian.
pub(crate) fn dotnet_guid_bytes(guid: &uuid::Uuid) -> [u8; 16] {
    guid.to_bytes_le()
}

/// The encoded length of the AMQP value at the start of `bytes`, if it is all there.
pub(crate) fn skip(bytes: &[u8]) -> Option<usize> {
    let code = *bytes.first()?;
    let sized = |width: usize| -> Option<usize> {
        let size = match width {
            1 => usize::from(*bytes.get(1)?),
            _ => u32::from_be_bytes(bytes.get(1..5)?.try_into().ok()?) as usize,
        };
        Some(1 + width + size)
    };
    let len = match code {
        0x00 => {
            let descriptor = skip(bytes.get(1..)?)?;
            let value = skip(bytes.get(1 + descriptor..)?)?;
            1 + descriptor + value
        }
        0x40..=0x45 => 1,
        0x50..=0x56 => 2,
        0x60 | 0x61 => 3,
        0x70..=0x74 => 5,
        0x80..=0x84 => 9,
        0x94 | 0x98 => 17,
        0xa0 | 0xa1 | 0xa3 | 0xc0 | 0xc1 | 0xe0 => sized(1)?,
        0xb0 | 0xb1 | 0xb3 | 0xd0 | 0xd1 | 0xf0 => sized(4)?,
        _ => return None,
    };
    (bytes.len() >= len).then_some(len)
}

/// An encoded message with its header written out whole (for messages that go out inside a
/// response body, such as peeked ones); unchanged if it does not start with a header.
pub(crate) fn with_full_header(message: &[u8]) -> Vec<u8> {
    if !message.starts_with(&[0x00, 0x53, 0x70]) {
        return message.to_vec();
    }
    let Some(len) = skip(message) else {
        return message.to_vec();
    };
    let Ok(header) =
        serde_amqp::from_slice::<fe2o3_amqp::types::messaging::Header>(&message[..len])
    else {
        return message.to_vec();
    };
    let mut out = encode_header(&HeaderFields {
        durable: header.durable,
        priority: header.priority.0,
        ttl: header.ttl,
        first_acquirer: header.first_acquirer,
        delivery_count: header.delivery_count,
    });
    out.extend_from_slice(&message[len..]);
    out
}
