//! A client's sender to a topic: each transfer is read as one message or as a batch, published
//! to every subscription, then accepted.
//!
//! Separate from the receiving side ([`super::subscription_link`]): the two share nothing but
//! the connection they came in on.

use std::collections::BTreeMap;
use std::time::SystemTime;

use fe2o3_amqp::types::definitions::{self, AmqpError};
use fe2o3_amqp::types::messaging::{Body, Data, Message, MessageId};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use fe2o3_amqp::Receiver;

use crate::entities::StoredMessage;

use super::{not_found, token_expired, unauthorized, Conn, BATCH_MESSAGE_FORMAT, IDLE_RECHECK};

/// A client's sender to a topic: every message is published, then accepted.
pub(super) async fn topic_link(mut receiver: Receiver, target: String, topic: String, conn: Conn) {
    if !conn.authorised(&topic) {
        let _ = receiver.close_with_error(unauthorized("Send")).await;
        return;
    }
    if !conn.shared.lock().entities.topics.contains_key(&topic) {
        let _ = receiver.close_with_error(not_found(&target)).await;
        return;
    }
    let mut recheck = tokio::time::interval(IDLE_RECHECK);
    loop {
        let delivery = tokio::select! {
            delivery = receiver.recv::<Body<Value>>() => delivery,
            _ = recheck.tick() => {
                if !conn.authorised(&topic) {
                    let _ = receiver.close_with_error(token_expired()).await;
                    return;
                }
                continue;
            }
        };
        let delivery = match delivery {
            Ok(delivery) => delivery,
            // Detached or closed by the client, or a malformed transfer: the link ends.
            Err(_) => return,
        };
        if !conn.authorised(&topic) {
            let _ = receiver.close_with_error(token_expired()).await;
            return;
        }
        let format = *delivery.message_format();
        let (info, message) = delivery.into_parts();
        let published = match messages_of(format, message) {
            Some(messages) => {
                let mut state = conn.shared.lock();
                messages
                    .into_iter()
                    .all(|message| state.entities.publish(&topic, message))
            }
            None => false,
        };
        let result = if published {
            receiver.accept(info.clone()).await
        } else {
            receiver
                .reject(
                    info,
                    Some(definitions::Error::new(
                        AmqpError::NotImplemented,
                        Some(
                            "The emulator takes bodies of data sections, or an amqp-value string or binary."
                                .to_owned(),
                        ),
                        None,
                    )),
                )
                .await
        };
        if result.is_err() {
            return;
        }
    }
}

/// The messages a transfer carries: one, or each of a batch's.
fn messages_of(format: Option<u32>, message: Message<Body<Value>>) -> Option<Vec<StoredMessage>> {
    if format == Some(BATCH_MESSAGE_FORMAT) {
        let Body::Data(sections) = message.body else {
            return None;
        };
        sections
            .into_iter()
            .map(|Data(bytes)| {
                let inner: fe2o3_amqp::types::messaging::message::__private::Deserializable<
                    Message<Body<Value>>,
                > = serde_amqp::from_slice(&bytes).ok()?;
                stored(inner.0)
            })
            .collect()
    } else {
        Some(vec![stored(message)?])
    }
}

/// A received message as the emulator stores it: the body (`data` sections concatenated, or an
/// `amqp-value` string or binary), `message-id` and string application properties.
fn stored(message: Message<Body<Value>>) -> Option<StoredMessage> {
    let body = match message.body {
        Body::Data(sections) => sections
            .into_iter()
            .flat_map(|Data(bytes)| bytes.into_vec())
            .collect(),
        Body::Value(value) => match value.0 {
            Value::String(text) => text.into_bytes(),
            Value::Binary(bytes) => bytes.into_vec(),
            _ => return None,
        },
        Body::Empty => Vec::new(),
        Body::Sequence(_) => return None,
    };
    let message_id = message
        .properties
        .and_then(|p| p.message_id)
        .map(|id| match id {
            MessageId::String(s) => s,
            MessageId::Ulong(n) => n.to_string(),
            MessageId::Uuid(u) => uuid::Uuid::from_bytes(u.into_inner()).to_string(),
            MessageId::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
        });
    let properties: BTreeMap<String, String> = message
        .application_properties
        .map(|p| {
            p.0.into_iter()
                .filter_map(|(k, v)| match v {
                    SimpleValue::String(s) => Some((k, s)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(StoredMessage {
        body,
        properties,
        delivery_count: 0,
        message_id,
        sequence_number: 0,
        enqueued_time: SystemTime::now(),
    })
}
