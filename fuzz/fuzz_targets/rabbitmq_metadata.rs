//! The RabbitMQ source's reading of a delivery's metadata (delivery count, message id,
//! properties), on properties built from structured input (header tables of every AMQP type,
//! our two count headers often) or decoded from raw content-header bytes as lapin decodes
//! them off the wire. Checked against an independent model of the documented rules.
#![no_main]

use arbitrary::Arbitrary;
use keyvault_invalidator_rabbitmq::fuzzing::{read_metadata, Metadata};
use keyvault_invalidator_rabbitmq::lapin::protocol::basic::parse_properties;
use keyvault_invalidator_rabbitmq::lapin::protocol::BasicProperties;
use keyvault_invalidator_rabbitmq::lapin::types::{
    AMQPValue, DecimalValue, FieldTable, LongString, ShortString,
};
use keyvault_invalidator_rabbitmq::DELIVERY_COUNT_HEADER;
use libfuzzer_sys::fuzz_target;

const QUORUM_HEADER: &str = "x-delivery-count";
/// Nesting deeper than this is cut off: the reader never looks inside tables anyway.
const MAX_DEPTH: usize = 3;

#[derive(Debug, Arbitrary)]
enum Input {
    Built(Built),
    /// A basic content header's property list, as lapin parses it off the wire.
    Frame {
        redelivered: bool,
        bytes: Vec<u8>,
    },
}

#[derive(Debug, Arbitrary)]
struct Built {
    headers: Option<Vec<(HeaderName, Val)>>,
    content_type: Option<String>,
    message_id: Option<String>,
    routing_key: String,
    redelivered: bool,
}

#[derive(Debug, Arbitrary)]
enum HeaderName {
    Ours,
    Quorum,
    ContentType,
    RoutingKey,
    Other(String),
}

#[derive(Debug, Arbitrary)]
enum Sign {
    None,
    Plus,
    Minus,
}

#[derive(Debug, Arbitrary)]
enum Val {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal(u8, u32),
    Short(String),
    Long(Vec<u8>),
    /// Integer text, as a publisher that writes headers as strings sends it.
    Number {
        padding: u8,
        sign: Sign,
        digits: Vec<u8>,
        long: bool,
    },
    Timestamp(u64),
    Array(Vec<Val>),
    Table(Vec<(HeaderName, Val)>),
    Bytes(Vec<u8>),
    Void,
}

/// At most 255 bytes, cut on a character boundary, as an AMQP short string must be.
fn short(text: &str) -> ShortString {
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&text[..end])
}

fn key(key: &HeaderName) -> ShortString {
    match key {
        HeaderName::Ours => DELIVERY_COUNT_HEADER.into(),
        HeaderName::Quorum => QUORUM_HEADER.into(),
        HeaderName::ContentType => "content-type".into(),
        HeaderName::RoutingKey => "routing-key".into(),
        HeaderName::Other(name) => short(name),
    }
}

fn table(entries: &[(HeaderName, Val)], depth: usize) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, val) in entries {
        table.insert(key(name), value(val, depth));
    }
    table
}

fn value(val: &Val, depth: usize) -> AMQPValue {
    use AMQPValue as V;
    match val {
        Val::Bool(b) => V::Boolean(*b),
        Val::I8(n) => V::ShortShortInt(*n),
        Val::U8(n) => V::ShortShortUInt(*n),
        Val::I16(n) => V::ShortInt(*n),
        Val::U16(n) => V::ShortUInt(*n),
        Val::I32(n) => V::LongInt(*n),
        Val::U32(n) => V::LongUInt(*n),
        Val::I64(n) => V::LongLongInt(*n),
        Val::F32(n) => V::Float(*n),
        Val::F64(n) => V::Double(*n),
        Val::Decimal(scale, value) => V::DecimalValue(DecimalValue {
            scale: *scale,
            value: *value,
        }),
        Val::Short(text) => V::ShortString(short(text)),
        Val::Long(bytes) => V::LongString(LongString::from(bytes.clone())),
        Val::Number {
            padding,
            sign,
            digits,
            long,
        } => {
            let mut text = " ".repeat(usize::from(padding & 3));
            text.push_str(match sign {
                Sign::None => "",
                Sign::Plus => "+",
                Sign::Minus => "-",
            });
            text.extend(digits.iter().map(|d| char::from(b'0' + d % 10)));
            text.push_str(&"\t".repeat(usize::from(padding >> 6)));
            if *long {
                V::LongString(text.into())
            } else {
                V::ShortString(short(&text))
            }
        }
        Val::Timestamp(t) => V::Timestamp(*t),
        Val::Array(items) if depth < MAX_DEPTH => V::FieldArray(
            items
                .iter()
                .map(|item| value(item, depth + 1))
                .collect::<Vec<_>>()
                .into(),
        ),
        Val::Table(entries) if depth < MAX_DEPTH => V::FieldTable(table(entries, depth + 1)),
        Val::Bytes(bytes) => V::ByteArray(bytes.clone().into()),
        Val::Array(_) | Val::Table(_) | Val::Void => V::Void,
    }
}

/// The count a header stands for, per the documented rule: an integer of any width, or text
/// holding an integer of any length (trimmed, with an optional sign), clamped into `u32`.
fn model_count(value: &AMQPValue) -> Option<u32> {
    use AMQPValue as V;
    let clamp = |n: i128| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    match value {
        V::ShortShortInt(n) => Some(clamp((*n).into())),
        V::ShortShortUInt(n) => Some(clamp((*n).into())),
        V::ShortInt(n) => Some(clamp((*n).into())),
        V::ShortUInt(n) => Some(clamp((*n).into())),
        V::LongInt(n) => Some(clamp((*n).into())),
        V::LongUInt(n) => Some(clamp((*n).into())),
        V::LongLongInt(n) => Some(clamp((*n).into())),
        V::ShortString(text) => model_text_count(text.as_str()),
        V::LongString(text) => model_text_count(std::str::from_utf8(text.as_bytes()).ok()?),
        _ => None,
    }
}

fn model_text_count(text: &str) -> Option<u32> {
    let text = text.trim();
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if negative {
        return Some(0);
    }
    let mut count: u32 = 0;
    for digit in digits.bytes() {
        count = count
            .saturating_mul(10)
            .saturating_add(u32::from(digit - b'0'));
    }
    Some(count)
}

/// A header's value as the properties show it, per the documented rule: text, integers and
/// booleans; nothing else.
fn model_text(value: &AMQPValue) -> Option<String> {
    use AMQPValue as V;
    Some(match value {
        V::Boolean(b) => b.to_string(),
        V::ShortShortInt(n) => n.to_string(),
        V::ShortShortUInt(n) => n.to_string(),
        V::ShortInt(n) => n.to_string(),
        V::ShortUInt(n) => n.to_string(),
        V::LongInt(n) => n.to_string(),
        V::LongUInt(n) => n.to_string(),
        V::LongLongInt(n) => n.to_string(),
        V::ShortString(s) => s.as_str().to_owned(),
        V::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        _ => return None,
    })
}

fn check(properties: &BasicProperties, routing_key: &str, redelivered: bool) {
    let metadata = read_metadata(properties, routing_key, redelivered);
    // Deterministic.
    assert_eq!(
        metadata,
        read_metadata(properties, routing_key, redelivered)
    );
    let Metadata {
        message_id,
        delivery_count,
        properties: text,
    } = metadata;

    let headers = properties.headers().as_ref();
    let header = |name: &str| headers.and_then(|h| h.inner().get(&ShortString::from(name)));
    let ours = header(DELIVERY_COUNT_HEADER).and_then(model_count);
    let quorum = header(QUORUM_HEADER).and_then(model_count);
    let by_us = ours
        .unwrap_or(0)
        .saturating_add(1)
        .saturating_add(u32::from(redelivered));
    let expected = quorum.map_or(by_us, |prior| prior.saturating_add(1).max(by_us));
    assert_eq!(
        delivery_count,
        expected,
        "{DELIVERY_COUNT_HEADER} {:?}, {QUORUM_HEADER} {:?}, redelivered {redelivered}",
        header(DELIVERY_COUNT_HEADER),
        header(QUORUM_HEADER)
    );
    assert!(delivery_count >= 1);
    assert!(delivery_count > u32::from(redelivered) || delivery_count == u32::MAX);

    assert_eq!(
        message_id,
        properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
    );

    // Every header that is text, an integer or a boolean, then the two the source sets itself.
    let mut expected = std::collections::BTreeMap::new();
    if let Some(headers) = headers {
        for (name, value) in headers.inner() {
            if let Some(value) = model_text(value) {
                expected.insert(name.as_str().to_owned(), value);
            }
        }
    }
    if let Some(content_type) = properties.content_type() {
        expected.insert("content-type".to_owned(), content_type.as_str().to_owned());
    }
    expected.insert("routing-key".to_owned(), routing_key.to_owned());
    assert_eq!(text, expected);
}

fuzz_target!(|input: Input| {
    match input {
        Input::Built(built) => {
            let mut properties = BasicProperties::default();
            if let Some(entries) = &built.headers {
                properties = properties.with_headers(table(entries, 0));
            }
            if let Some(content_type) = &built.content_type {
                properties = properties.with_content_type(short(content_type));
            }
            if let Some(id) = &built.message_id {
                properties = properties.with_message_id(short(id));
            }
            check(&properties, &built.routing_key, built.redelivered);
        }
        Input::Frame { redelivered, bytes } => {
            if let Ok((_, properties)) = parse_properties(bytes.as_slice()) {
                check(&properties, "fuzz", redelivered);
            }
        }
    }
});
