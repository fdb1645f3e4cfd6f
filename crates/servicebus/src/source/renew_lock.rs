//! `com.microsoft:renew-lock` on an entity's `$management` node, as the wire format of
//! Microsoft's "AMQP 1.0 in Azure Service Bus: request-response operations" describes it:
//! application properties `operation` (and optionally `com.microsoft:server-timeout`,
//! `associated-link-name`), body a map `{"lock-tokens": uuid[]}`; the answer carries
//! `statusCode` 200 and a map `{"expirations": timestamp[]}`. The service answers 410 Gone
//! (`com.microsoft:message-lock-lost`) for a lock that has already ended.
//!
//! The request-response plumbing (links, correlation, status codes) is `fe2o3-amqp-management`'s;
//! only the operation's shape is written here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Message};
use fe2o3_amqp::types::primitives::{Array, OrderedMap, SimpleValue, Uuid, Value};
use fe2o3_amqp_management::error::Error as ManagementError;
use fe2o3_amqp_management::request::Request;
use fe2o3_amqp_management::response::Response;

/// The request for one lock.
pub(crate) struct RenewLock {
    pub(crate) lock_token: Uuid,
    pub(crate) associated_link: String,
    pub(crate) server_timeout: Duration,
}

impl Request for RenewLock {
    const OPERATION: &'static str = "com.microsoft:renew-lock";
    type Response = Renewed;
    type Body = Value;

    fn encode_application_properties(&mut self) -> Option<ApplicationProperties> {
        let timeout = u32::try_from(self.server_timeout.as_millis()).unwrap_or(u32::MAX);
        Some(
            ApplicationProperties::builder()
                .insert("com.microsoft:server-timeout", SimpleValue::Uint(timeout))
                .insert("associated-link-name", self.associated_link.clone())
                .build(),
        )
    }

    fn encode_body(self) -> Value {
        let mut body = OrderedMap::new();
        body.insert(
            Value::String("lock-tokens".to_owned()),
            Value::Array(Array::from(vec![Value::Uuid(self.lock_token)])),
        );
        Value::Map(body)
    }
}

/// The answer: when the lock now ends (`None` when the answer held no expiration).
#[derive(Debug)]
pub(crate) struct Renewed {
    pub(crate) locked_until: Option<SystemTime>,
}

impl Response for Renewed {
    const STATUS_CODE: u16 = 200;
    type Body = Body<Value>;
    type Error = ManagementError;

    fn decode_message(message: Message<Body<Value>>) -> Result<Self, ManagementError> {
        let Body::Value(value) = message.body else {
            return Ok(Renewed { locked_until: None });
        };
        let Value::Map(map) = value.0 else {
            return Ok(Renewed { locked_until: None });
        };
        let expirations = map.into_iter().find_map(|(key, value)| match key {
            Value::String(key) if key == "expirations" => Some(value),
            Value::Symbol(key) if key.0 == "expirations" => Some(value),
            _ => None,
        });
        let first = match expirations {
            Some(Value::Array(array)) => array.into_inner().into_iter().next(),
            Some(Value::List(list)) => list.into_iter().next(),
            _ => None,
        };
        let locked_until = match first {
            Some(Value::Timestamp(at)) => u64::try_from(at.milliseconds())
                .ok()
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
            _ => None,
        };
        Ok(Renewed { locked_until })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::primitives::Timestamp;

    #[test]
    fn the_request_names_the_operation_the_link_and_the_lock_token() {
        let token = Uuid::from([7u8; 16]);
        let message = RenewLock {
            lock_token: token.clone(),
            associated_link: "receiver-1".to_owned(),
            server_timeout: Duration::from_secs(60),
        }
        .into_message();
        let properties = message.application_properties.expect("properties");
        assert_eq!(
            properties.get("operation"),
            Some(&SimpleValue::String("com.microsoft:renew-lock".to_owned()))
        );
        assert_eq!(
            properties.get("associated-link-name"),
            Some(&SimpleValue::String("receiver-1".to_owned()))
        );
        assert_eq!(
            properties.get("com.microsoft:server-timeout"),
            Some(&SimpleValue::Uint(60_000))
        );
        let Value::Map(body) = message.body else {
            panic!("the body is a map")
        };
        assert_eq!(
            body.get(&Value::String("lock-tokens".to_owned())),
            Some(&Value::Array(Array::from(vec![Value::Uuid(token)])))
        );
    }

    #[test]
    fn the_answer_gives_the_new_expiry() {
        let mut map = OrderedMap::new();
        map.insert(
            Value::String("expirations".to_owned()),
            Value::Array(Array::from(vec![Value::Timestamp(
                Timestamp::from_milliseconds(1_700_000_000_000),
            )])),
        );
        let message = Message::builder()
            .body(Body::Value(fe2o3_amqp::types::messaging::AmqpValue(
                Value::Map(map),
            )))
            .build();
        let renewed = Renewed::decode_message(message).expect("decoded");
        assert_eq!(
            renewed.locked_until,
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_000))
        );
    }
}
