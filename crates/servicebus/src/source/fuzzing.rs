//! The message reading, for the fuzz targets in `fuzz/` only: not part of the API.

use std::collections::BTreeMap;
use std::time::SystemTime;

pub use fe2o3_amqp::types::messaging::{Body, Message};
pub use fe2o3_amqp::types::primitives::Value;

/// What the source reads from a message on arrival.
#[derive(Debug, PartialEq)]
pub struct Metadata {
    /// The body bytes handed to the parser.
    pub body: Vec<u8>,
    /// `header.delivery-count`.
    pub prior_deliveries: u32,
    /// The count the delivery carries: prior deliveries plus this one.
    pub delivery_count: u32,
    /// `x-opt-lock-token`, hyphenated.
    pub lock_token: Option<String>,
    /// `x-opt-locked-until`.
    pub locked_until: Option<SystemTime>,
    /// The message id as text.
    pub message_id: Option<String>,
    /// Application properties as text, and the lock token.
    pub properties: BTreeMap<String, String>,
}

/// Reads a message as the source does.
pub fn read_message(message: &Message<Body<Value>>) -> Metadata {
    let received = super::message::read(message);
    Metadata {
        delivery_count: received.delivery_count(),
        lock_token: received
            .lock_token
            .as_ref()
            .map(super::message::format_uuid),
        body: received.body,
        prior_deliveries: received.prior_deliveries,
        locked_until: received.locked_until,
        message_id: received.message_id,
        properties: received.properties,
    }
}
