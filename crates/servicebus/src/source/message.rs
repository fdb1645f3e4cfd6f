//! Reading what the job needs from a Service Bus message as it arrives over AMQP: the body,
//! the delivery count, the lock and the properties. Every field comes from the network and
//! is read without trusting its type or size.
//!
//! Where each field lives ("AMQP 1.0 in Azure Service Bus", message mapping): the body is
//! one or more `data` sections (Event Grid writes its JSON there), or an `amqp-value` string
//! or binary from other senders; `header.delivery-count` counts prior deliveries;
//! `x-opt-lock-token` (uuid) and `x-opt-locked-until` (timestamp) are message annotations;
//! Event Grid's `aeg-*` values are application properties.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{Body, Message, MessageId};
use fe2o3_amqp::types::primitives::{SimpleValue, Uuid, Value};

/// What a message says, read once on arrival.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Received {
    pub(crate) body: Vec<u8>,
    /// How many times it was delivered before this one (`header.delivery-count`).
    pub(crate) prior_deliveries: u32,
    pub(crate) lock_token: Option<Uuid>,
    pub(crate) locked_until: Option<SystemTime>,
    pub(crate) message_id: Option<String>,
    /// Application properties that are text, numbers, booleans or uuids, as text.
    pub(crate) properties: BTreeMap<String, String>,
}

impl Received {
    /// How many times the message was delivered, this one included: the prior deliveries plus
    /// one, saturating (`header.delivery-count` is a uint from the network, so any `u32` comes).
    pub(crate) fn delivery_count(&self) -> u32 {
        self.prior_deliveries.saturating_add(1)
    }
}

pub(crate) fn read(message: &Message<Body<Value>>) -> Received {
    let annotation = |name: &str| {
        message.message_annotations.as_ref().and_then(|a| {
            a.0.iter().find_map(|(key, value)| match key {
                OwnedKey::Symbol(symbol) if symbol.0 == name => Some(value),
                _ => None,
            })
        })
    };
    let lock_token = match annotation("x-opt-lock-token") {
        Some(Value::Uuid(uuid)) => Some(uuid.clone()),
        _ => None,
    };
    let locked_until = match annotation("x-opt-locked-until") {
        Some(Value::Timestamp(at)) => u64::try_from(at.milliseconds())
            .ok()
            .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms))),
        _ => None,
    };
    let message_id = message
        .properties
        .as_ref()
        .and_then(|p| p.message_id.as_ref())
        .map(|id| match id {
            MessageId::String(s) => s.clone(),
            MessageId::Uuid(u) => format_uuid(u),
            MessageId::Ulong(n) => n.to_string(),
            MessageId::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
        });
    let mut properties = BTreeMap::new();
    if let Some(application) = &message.application_properties {
        for (key, value) in application.0.iter() {
            if let Some(text) = simple_text(value) {
                properties.insert(key.clone(), text);
            }
        }
    }
    if let Some(token) = &lock_token {
        properties.insert("x-opt-lock-token".to_owned(), format_uuid(token));
    }
    Received {
        body: body(&message.body),
        prior_deliveries: message.header.as_ref().map_or(0, |h| h.delivery_count),
        lock_token,
        locked_until,
        message_id,
        properties,
    }
}

fn body(body: &Body<Value>) -> Vec<u8> {
    match body {
        Body::Data(sections) => sections.iter().flat_map(|d| d.0.iter().copied()).collect(),
        Body::Value(value) => match &value.0 {
            Value::String(text) => text.clone().into_bytes(),
            Value::Binary(bytes) => bytes.to_vec(),
            // Anything else is not an Event Grid payload; an empty body is dead-lettered as
            // malformed by the job.
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// A uuid in its usual hyphenated form (AMQP carries uuids in RFC 4122 byte order).
pub(crate) fn format_uuid(uuid: &Uuid) -> String {
    let bytes: [u8; 16] = uuid.clone().into_inner();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn simple_text(value: &SimpleValue) -> Option<String> {
    Some(match value {
        SimpleValue::String(s) => s.clone(),
        SimpleValue::Symbol(s) => s.0.clone(),
        SimpleValue::Bool(b) => b.to_string(),
        SimpleValue::Int(n) => n.to_string(),
        SimpleValue::Long(n) => n.to_string(),
        SimpleValue::Uint(n) => n.to_string(),
        SimpleValue::Ulong(n) => n.to_string(),
        SimpleValue::Short(n) => n.to_string(),
        SimpleValue::Ushort(n) => n.to_string(),
        SimpleValue::Ubyte(n) => n.to_string(),
        SimpleValue::Byte(n) => n.to_string(),
        SimpleValue::Uuid(u) => format_uuid(u),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::messaging::{
        ApplicationProperties, Data, Header, MessageAnnotations, Properties,
    };
    use fe2o3_amqp::types::primitives::{Binary, Symbol, Timestamp};

    #[test]
    fn a_service_bus_message_gives_its_body_count_lock_and_properties() {
        let token = Uuid::from([
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8,
        ]);
        let message: Message<Body<Value>> = Message::builder()
            .header(Header {
                delivery_count: 2,
                ..Default::default()
            })
            .message_annotations(
                MessageAnnotations::builder()
                    .insert(Symbol::from("x-opt-lock-token"), Value::Uuid(token.clone()))
                    .insert(
                        Symbol::from("x-opt-locked-until"),
                        Value::Timestamp(Timestamp::from_milliseconds(1_700_000_000_000)),
                    )
                    .build(),
            )
            .properties(Properties {
                message_id: Some(MessageId::String("m-1".to_owned())),
                ..Default::default()
            })
            .application_properties(
                ApplicationProperties::builder()
                    .insert("aeg-delivery-count", SimpleValue::String("0".to_owned()))
                    .insert("count", SimpleValue::Int(3))
                    .insert("ignored", SimpleValue::Binary(Binary::from(vec![1u8])))
                    .build(),
            )
            .body(Body::Data(
                vec![
                    Data(Binary::from(b"{\"a\":".to_vec())),
                    Data(Binary::from(b"1}".to_vec())),
                ]
                .into(),
            ))
            .build();
        let received = read(&message);
        assert_eq!(received.body, b"{\"a\":1}");
        assert_eq!(received.prior_deliveries, 2);
        assert_eq!(received.lock_token, Some(token));
        assert_eq!(
            received.locked_until,
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_000))
        );
        assert_eq!(received.message_id.as_deref(), Some("m-1"));
        assert_eq!(
            received.properties,
            BTreeMap::from([
                ("aeg-delivery-count".to_owned(), "0".to_owned()),
                ("count".to_owned(), "3".to_owned()),
                (
                    "x-opt-lock-token".to_owned(),
                    "12345678-9abc-def0-0102-030405060708".to_owned()
                ),
            ])
        );
    }

    #[test]
    fn odd_metadata_is_read_without_failing() {
        let message: Message<Body<Value>> = Message::builder()
            .message_annotations(
                MessageAnnotations::builder()
                    .insert(
                        Symbol::from("x-opt-lock-token"),
                        Value::String("no".to_owned()),
                    )
                    .insert(
                        Symbol::from("x-opt-locked-until"),
                        Value::Timestamp(Timestamp::from_milliseconds(-5)),
                    )
                    .build(),
            )
            .body(Body::Value(fe2o3_amqp::types::messaging::AmqpValue(
                Value::Int(7),
            )))
            .build();
        let received = read(&message);
        assert_eq!(received, Received::default());
    }

    #[test]
    fn the_largest_delivery_count_is_read_whole_and_the_next_count_saturates() {
        // `header.delivery-count` is an AMQP uint, so any u32 can arrive. It is read as is (no
        // narrowing, no panic); the source's `delivery()` adds this delivery with
        // `saturating_add(1)`, which must keep u32::MAX rather than overflow.
        let message: Message<Body<Value>> = Message::builder()
            .header(Header {
                delivery_count: u32::MAX,
                ..Default::default()
            })
            .body(Body::Data(vec![Data(Binary::from(b"{}".to_vec()))].into()))
            .build();
        let received = read(&message);
        assert_eq!(received.prior_deliveries, u32::MAX);
        assert_eq!(received.prior_deliveries.saturating_add(1), u32::MAX);
    }
}
