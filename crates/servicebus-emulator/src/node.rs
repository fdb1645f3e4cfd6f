//! The request/response nodes: `$cbs` (`put-token`) and each entity's `$management`
//! (`com.microsoft:renew-lock`, `com.microsoft:peek-message`,
//! `com.microsoft:update-disposition`), as MicrosoftDocs "AMQP 1.0 in Azure Service Bus and
//! Event Hubs protocol guide" and "AMQP request-response operations in Azure Service Bus"
//! describe them, and as azure-sdk-for-python (`_pyamqp/management_link.py`,
//! `_servicebus_receiver.py`, `_common/mgmt_handlers.py`) reads the answers.
//!
//! A request link and a reply link on the same node address pair up within a session; a
//! response carries `correlation-id` = the request's `message-id`. `$cbs` answers with
//! `status-code` / `status-description`; `$management` with `statusCode` /
//! `statusDescription`, and `error-condition` on a failure.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fe2o3_amqp::types::messaging::{AmqpValue, ApplicationProperties, Body, Message, Properties};
use fe2o3_amqp::types::primitives::{
    Array, Binary, OrderedMap, SimpleValue, Symbol, Timestamp, Value,
};
use fe2o3_amqp::{Receiver, Sender};
use tokio::sync::mpsc;

use super::amqp::{self, Address, Conn, Entity, LOCK_LOST, LOCK_LOST_DESCRIPTION};
use super::cbs;
use super::entities::{system_time, RecordedSettlement};

/// A response on a node's reply link.
pub(crate) type Reply = Message<AmqpValue<Value>>;

/// The operations `$management` answers.
pub(crate) const RENEW_LOCK: &str = "com.microsoft:renew-lock";
pub(crate) const PEEK_MESSAGE: &str = "com.microsoft:peek-message";
pub(crate) const UPDATE_DISPOSITION: &str = "com.microsoft:update-disposition";

fn property(message: &Message<Body<Value>>, key: &str) -> Option<Value> {
    message
        .application_properties
        .as_ref()
        .and_then(|p| p.0.get(key))
        .map(|v| Value::from(v.clone()))
}

fn string_property(message: &Message<Body<Value>>, key: &str) -> String {
    match property(message, key) {
        Some(Value::String(s)) => s,
        Some(Value::Symbol(s)) => s.0,
        _ => String::new(),
    }
}

fn expiration(message: &Message<Body<Value>>) -> Option<SystemTime> {
    let secs = |s: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(s).unwrap_or(0));
    match property(message, "expiration")? {
        Value::Timestamp(t) => {
            Some(UNIX_EPOCH + Duration::from_millis(u64::try_from(t.milliseconds()).unwrap_or(0)))
        }
        Value::Long(s) => Some(secs(s)),
        Value::Int(s) => Some(secs(s.into())),
        Value::Ulong(s) => Some(secs(i64::try_from(s).unwrap_or(i64::MAX))),
        Value::Uint(s) => Some(secs(s.into())),
        _ => None,
    }
}

/// A client's request link on `$cbs` or `{entity}/$management`.
pub(crate) async fn requests(
    mut receiver: Receiver,
    address: Address,
    conn: Conn,
    replies: mpsc::UnboundedSender<Reply>,
) {
    if let Address::Management(entity) = &address {
        if !conn.authorised(&entity.path()) {
            let _ = receiver
                .close_with_error(amqp::unauthorized("Listen"))
                .await;
            return;
        }
    }
    let mut recheck = tokio::time::interval(Duration::from_secs(1));
    loop {
        let delivery = tokio::select! {
            delivery = receiver.recv::<Body<Value>>() => delivery,
            _ = recheck.tick() => {
                // A `$management` link whose authorisation expired is detached, as the
                // service does with every entity link.
                if let Address::Management(entity) = &address {
                    if !conn.authorised(&entity.path()) {
                        let _ = receiver.close_with_error(amqp::token_expired()).await;
                        return;
                    }
                }
                continue;
            }
        };
        let Ok(delivery) = delivery else {
            return;
        };
        if address == Address::Cbs
            && string_property(delivery.message(), "operation") == "put-token"
            && conn.shared.lock().take_put_token_to_leave_unanswered()
        {
            // Neither an outcome nor a response: the request is left waiting.
            continue;
        }
        // A management client reads the response only after its request is accepted.
        if receiver.accept(&delivery).await.is_err() {
            return;
        }
        let message = delivery.into_message();
        let reply = match &address {
            Address::Management(entity) => management(&conn, entity, &message),
            _ => put_token(&conn, &message),
        };
        let request = message.properties.unwrap_or_default();
        let reply = Message {
            properties: Some(Properties {
                correlation_id: request.message_id,
                to: request.reply_to,
                ..Default::default()
            }),
            ..reply
        };
        if replies.send(reply).is_err() {
            return;
        }
    }
}

/// A client's reply link: the responses of its node, in order.
pub(crate) async fn replies(mut sender: Sender, mut replies: mpsc::UnboundedReceiver<Reply>) {
    loop {
        tokio::select! {
            reply = replies.recv() => {
                let Some(reply) = reply else { return };
                // Not waiting for the outcome: the Python client's management links never
                // settle a response (`ManagementLink._on_message_received` returns no state),
                // and waiting would hold back every later response.
                if sender.send_batchable(reply).await.is_err() {
                    return;
                }
            }
            error = sender.on_detach() => {
                amqp::answer_detach(sender, error).await;
                return;
            }
        }
    }
}

fn reply(properties: ApplicationProperties, body: Value) -> Reply {
    Message::builder()
        .application_properties(properties)
        .value(body)
        .build()
}

fn put_token(conn: &Conn, message: &Message<Body<Value>>) -> Reply {
    let token = match &message.body {
        Body::Value(AmqpValue(Value::String(token))) => token.clone(),
        _ => String::new(),
    };
    let (status, description) = if string_property(message, "operation") == "put-token" {
        cbs::put_token(
            &conn.shared,
            &conn.grants,
            &string_property(message, "name"),
            &string_property(message, "type"),
            &token,
            expiration(message),
        )
    } else {
        (400, "Bad Request: only put-token is supported.")
    };
    reply(
        ApplicationProperties::builder()
            .insert("status-code", SimpleValue::Int(i32::from(status)))
            .insert("status-description", description.to_owned())
            .build(),
        Value::Null,
    )
}

/// A `$management` answer: `statusCode`, `statusDescription`, `error-condition` when it
/// failed, and the body.
struct Answer {
    status: i32,
    description: String,
    condition: Option<&'static str>,
    body: Value,
}

impl Answer {
    fn ok(body: Value) -> Answer {
        Answer {
            status: 200,
            description: "OK".to_owned(),
            condition: None,
            body,
        }
    }

    fn failed(status: i32, condition: &'static str, description: impl Into<String>) -> Answer {
        Answer {
            status,
            description: description.into(),
            condition: Some(condition),
            body: Value::Null,
        }
    }

    fn lock_lost() -> Answer {
        Answer::failed(410, LOCK_LOST, LOCK_LOST_DESCRIPTION)
    }
}

fn management(conn: &Conn, entity: &Entity, message: &Message<Body<Value>>) -> Reply {
    let operation = string_property(message, "operation");
    let answer = if !conn.authorised(&entity.path()) {
        Answer::failed(
            401,
            "com.microsoft:unauthorized-access",
            "Unauthorized access: the token expired or does not cover the entity.",
        )
    } else {
        let body = match &message.body {
            Body::Value(AmqpValue(Value::Map(map))) => Some(map),
            _ => None,
        };
        match (operation.as_str(), body) {
            (RENEW_LOCK, Some(body)) => renew_lock(conn, entity, body),
            (PEEK_MESSAGE, Some(body)) => peek(conn, entity, body),
            (UPDATE_DISPOSITION, Some(body)) => update_disposition(conn, entity, body),
            (RENEW_LOCK | PEEK_MESSAGE | UPDATE_DISPOSITION, None) => Answer::failed(
                400,
                "amqp:decode-error",
                "The request body must be an AMQP map.",
            ),
            (other, _) => Answer::failed(
                400,
                "amqp:not-implemented",
                format!("The operation '{other}' is not emulated."),
            ),
        }
    };
    let mut properties = ApplicationProperties::builder()
        .insert("statusCode", SimpleValue::Int(answer.status))
        .insert("statusDescription", answer.description);
    if let Some(condition) = answer.condition {
        properties = properties.insert(
            "error-condition",
            SimpleValue::Symbol(Symbol::from(condition)),
        );
    }
    reply(properties.build(), answer.body)
}

fn field<'a>(body: &'a OrderedMap<Value, Value>, key: &str) -> Option<&'a Value> {
    body.get(&Value::String(key.to_owned()))
        .or_else(|| body.get(&Value::Symbol(Symbol::from(key))))
}

/// `lock-tokens`: an array (or list) of uuids; `None` if malformed.
fn lock_tokens(body: &OrderedMap<Value, Value>) -> Option<Vec<String>> {
    let values = match field(body, "lock-tokens")? {
        Value::Array(array) => array.0.clone(),
        Value::List(list) => list.clone(),
        _ => return None,
    };
    values
        .into_iter()
        .map(|v| match v {
            Value::Uuid(u) => Some(uuid::Uuid::from_bytes(u.into_inner()).to_string()),
            Value::String(s) => uuid::Uuid::parse_str(&s).ok().map(|u| u.to_string()),
            _ => None,
        })
        .collect()
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::String(k.to_owned()), v))
            .collect(),
    )
}

/// The answer for a request on a subscription that is gone.
fn entity_not_found() -> Answer {
    Answer::failed(
        404,
        "amqp:not-found",
        "The messaging entity could not be found.",
    )
}

fn renew_lock(conn: &Conn, entity: &Entity, body: &OrderedMap<Value, Value>) -> Answer {
    let Some(tokens) = lock_tokens(body) else {
        return Answer::failed(
            400,
            "amqp:decode-error",
            "'lock-tokens' must be an array of uuids.",
        );
    };
    let mut state = conn.shared.lock();
    let Some(sub) = state
        .entities
        .subscription_mut(&entity.topic, &entity.subscription)
    else {
        return entity_not_found();
    };
    let now = Instant::now();
    let mut expirations = Vec::with_capacity(tokens.len());
    let mut lost = false;
    for token in &tokens {
        match sub.renew_lock(entity.queue, token, now) {
            Ok(until) => expirations.push(Value::Timestamp(Timestamp::from_milliseconds(
                amqp::millis(system_time(until)),
            ))),
            Err(_) => lost = true,
        }
    }
    if lost {
        return Answer::lock_lost();
    }
    Answer::ok(map(vec![("expirations", Value::Array(Array(expirations)))]))
}

fn integer(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Long(n) => Some(*n),
        Value::Int(n) => Some(i64::from(*n)),
        Value::Short(n) => Some(i64::from(*n)),
        Value::Byte(n) => Some(i64::from(*n)),
        Value::Ulong(n) => i64::try_from(*n).ok(),
        Value::Uint(n) => Some(i64::from(*n)),
        Value::Ushort(n) => Some(i64::from(*n)),
        Value::Ubyte(n) => Some(i64::from(*n)),
        _ => None,
    }
}

fn peek(conn: &Conn, entity: &Entity, body: &OrderedMap<Value, Value>) -> Answer {
    let (Some(from), Some(count)) = (
        integer(field(body, "from-sequence-number")),
        integer(field(body, "message-count")),
    ) else {
        return Answer::failed(
            400,
            "amqp:decode-error",
            "'from-sequence-number' and 'message-count' must be integers.",
        );
    };
    let count = usize::try_from(count.clamp(0, 1000)).unwrap_or(0);
    let peeked = {
        let mut state = conn.shared.lock();
        let Some(sub) = state
            .entities
            .subscription_mut(&entity.topic, &entity.subscription)
        else {
            return entity_not_found();
        };
        sub.expire_locks(Instant::now());
        sub.peek(entity.queue, from, count)
    };
    if peeked.is_empty() {
        // What the service answers when there is nothing to peek.
        return Answer {
            status: 204,
            description: "No Content".to_owned(),
            condition: None,
            body: Value::Null,
        };
    }
    let mut messages = Vec::with_capacity(peeked.len());
    for message in &peeked {
        let peeked = amqp::to_amqp(message, None);
        let serializable = fe2o3_amqp::types::messaging::message::__private::Serializable(&peeked);
        let Ok(encoded) = serde_amqp::to_vec(&serializable) else {
            continue;
        };
        let encoded = super::wire::with_full_header(&encoded);
        messages.push(map(vec![("message", Value::Binary(Binary::from(encoded)))]));
    }
    Answer::ok(map(vec![("messages", Value::List(messages))]))
}

fn update_disposition(conn: &Conn, entity: &Entity, body: &OrderedMap<Value, Value>) -> Answer {
    let status = match field(body, "disposition-status") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Symbol(s)) => s.0.clone(),
        _ => String::new(),
    };
    let Some(tokens) = lock_tokens(body) else {
        return Answer::failed(
            400,
            "amqp:decode-error",
            "'lock-tokens' must be an array of uuids.",
        );
    };
    let text = |key: &str| match field(body, key) {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let (reason, description) = (text("deadletter-reason"), text("deadletter-description"));
    let outcome: &'static str = match status.as_str() {
        "completed" => "completed",
        "abandoned" => "abandoned",
        "suspended" => "suspended",
        "defered" | "deferred" => {
            return Answer::failed(400, "amqp:not-implemented", "Deferral is not emulated.")
        }
        _ => {
            return Answer::failed(
                400,
                "amqp:decode-error",
                "'disposition-status' must be completed, abandoned or suspended.",
            )
        }
    };
    let mut state = conn.shared.lock();
    let Some(sub) = state
        .entities
        .subscription_mut(&entity.topic, &entity.subscription)
    else {
        return entity_not_found();
    };
    let now = Instant::now();
    let mut lost = false;
    for token in tokens {
        let result = match outcome {
            "completed" => sub.complete(entity.queue, &token, now),
            "abandoned" => sub.abandon(entity.queue, &token, now),
            _ => sub.dead_letter(entity.queue, &token, &reason, &description, now),
        };
        lost |= result.is_err();
        sub.queue_mut(entity.queue)
            .settlements
            .push(RecordedSettlement {
                lock_token: token,
                outcome,
                applied: result.is_ok(),
            });
    }
    if lost {
        return Answer::lock_lost();
    }
    Answer::ok(map(Vec::new()))
}
