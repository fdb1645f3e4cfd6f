//! An Azure Service Bus emulator for tests that cannot reach Azure: a library
//! ([`ServiceBusEmulator`]) and a program (`keyvault-invalidator-servicebus-emulator`, see
//! below) that Microsoft's official Python client (`azure-servicebus` 7.15, its `_pyamqp`
//! stack) accepts with the connection string the emulator prints.
//!
//! Sources: "wire facts" are from the project's reference notes on Service Bus over AMQP
//! (`shared/reference/servicebus-amqp.md`), MicrosoftDocs "AMQP 1.0 in Azure Service Bus and
//! Event Hubs protocol guide" (`service-bus-amqp-protocol-guide.md`, below *AMQP guide*) and
//! "AMQP 1.0 in Microsoft Azure Service Bus: request-response-based operations"
//! (`service-bus-amqp-request-response.md`, *request-response*), and what the SDKs do:
//! azure-sdk-for-python `_pyamqp` and `_servicebus_receiver.py` (*Python SDK*),
//! azure-sdk-for-net `AmqpReceiver.cs` (*.NET SDK*), Azure/amqpnetlite#342 (Released).
//!
//! It serves two endpoints on 127.0.0.1, on random ports unless
//! [`EmulatorOptions`] fix them:
//!
//! - The **management endpoint** (plain HTTP, the Service Bus management REST API's Atom
//!   entries): `PUT` of a subscription (201 created, 409 exists, 404 no such topic) and `DELETE`
//!   (200, 404), with the `Authorization` header checked for real: a shared access signature
//!   must name a known policy, match its key, not be expired and cover the entity; a bearer
//!   token must be the emulator's test token. Anything else is 401.
//! - The **AMQP 1.0 endpoint** ([`amqp_url`](ServiceBusEmulator::amqp_url), plain AMQP, SASL
//!   ANONYMOUS, as the Service Bus emulator's `UseDevelopmentEmulator=true` connection strings
//!   use (reference notes); see [`connection_string`](ServiceBusEmulator::connection_string)):
//!   - **`$cbs` `put-token`** (AMQP guide, "Claims-based authorization"): request link and reply
//!     link, `status-code` and `status-description`, `correlation-id` = the request's
//!     `message-id`. A token shaped like a shared access signature
//!     (`SharedAccessSignature sr=..&sig=..&se=..&skn=..`) is verified like the management
//!     endpoint's, and its `sr` must cover the audience, whether its type is
//!     `servicebus.windows.net:sastoken` or `jwt` (the Python SDK puts a connection string's
//!     signature under `jwt`: `_common/utils.py` `create_authentication`, `_pyamqp/cbs.py`); any
//!     other `jwt` must be [`bearer_token`](ServiceBusEmulator::bearer_token). 202 on success,
//!     401 otherwise. Authorisations belong to the connection (any session) and cover the
//!     audience's path and below, until the token's expiry (SAS `se`; `expiration` for a
//!     bearer token). Audiences are compared by path: the scheme, host and port are ignored.
//!   - **Token expiry** (AMQP guide: the service detaches a link whose token expired): every
//!     link that needed an authorisation (receivers, senders, `$management`) looks again at
//!     least once a second and is detached with `amqp:unauthorized-access` once none covers it;
//!     a fresh `put-token` in time keeps it.
//!   - **Receiver links** on `{topic}/subscriptions/{subscription}` and its dead-letter
//!     sub-queue `{topic}/subscriptions/{subscription}/$deadletterqueue` (case-insensitive; a
//!     URL with that path works too; the Python SDK's `ServiceBusSubQueue.DEAD_LETTER`), in
//!     peek-lock: without an authorisation the link is closed with
//!     `amqp:unauthorized-access`, for an unknown subscription with `amqp:not-found` (after the
//!     attach, as the service does). Messages go out as the link's credit allows, with one
//!     `data` section (the body), a header with every field written out and
//!     `header.delivery-count` = prior deliveries (0 on the first: the Python SDK's
//!     `delivery_count` reads it), `message-id` if the message has one, the application
//!     properties (strings), and the annotations `x-opt-lock-token` (uuid),
//!     `x-opt-locked-until`, `x-opt-enqueued-time`, `x-opt-sequence-number`. The **delivery
//!     tag is the lock token**: its 16 bytes in .NET GUID order (reference notes; the Python
//!     SDK's `lock_token` is `uuid.UUID(bytes_le=delivery_tag)`). The lock starts when the
//!     transfer goes out and lasts the subscription's `LockDuration`; an expired lock sends the
//!     message back to the front of the queue and counts as a delivery.
//!   - **Settlement** (reference notes, "Settlement as the official SDKs send it"):
//!     - Accepted completes.
//!     - **Released** unlocks the message *without* counting the delivery: its delivery count
//!       is what it was before this delivery (Azure/amqpnetlite#342; the Python SDK releases
//!       the messages it prefetched when no receive call is waiting, and on close).
//!     - **Modified** abandons and counts the delivery, whether `delivery-failed` is true
//!       (the Python SDK's abandon) or false (the Go SDK's); `undeliverable-here` true (a
//!       defer in the SDKs) is treated the same way, as deferral is not emulated.
//!     - A delivery that reaches `MaxDeliveryCount` (by Modified or by an expired lock) is
//!       dead-lettered at once with reason `MaxDeliveryCountExceeded` and description
//!       `Message could not be consumed after {n} delivery attempts.`.
//!     - **Rejected** dead-letters, with `DeadLetterReason` and `DeadLetterErrorDescription`
//!       from the error's info when the receiver sent them (as `com.microsoft:dead-letter`
//!       does, the Python SDK's `dead_letter_message`) and empty otherwise (a bare Rejected,
//!       which the .NET SDK sends without a reason).
//!     - In **receiver-settle-mode second** (the Python SDK's peek-lock: it sends its outcome
//!       unsettled and waits for the service to settle it, `_pyamqp/receiver.py`), the
//!       emulator answers each unsettled disposition with one settled disposition carrying
//!       what it applied: Accepted, Released, Modified, a Rejected *without* error for a
//!       dead-letter (one with an error is a failure to the Python SDK,
//!       `check_disposition_outcome`), or, when the lock was gone, a Rejected with
//!       `com.microsoft:message-lock-lost` (the Python SDK raises `MessageLockLostError`).
//!       fe2o3 echoes the client's own state at once instead; see [`wire`](self#fe2o3).
//!     - A settlement that arrives after the lock expired is lost: it is recorded with
//!       `applied: false` and does nothing. Unsettled deliveries of a link or connection that
//!       goes away stay locked until their locks expire.
//!   - The **dead-letter sub-queue** is itself a peek-lock queue (completable, abandonable,
//!     with its own locks, without a `MaxDeliveryCount`); its messages carry
//!     `DeadLetterReason` and `DeadLetterErrorDescription` as application properties, where
//!     the Python SDK's `dead_letter_reason` and `dead_letter_error_description` read them.
//!   - **Sender links to a topic** (`{topic}`, or a URL with that path, as the Python SDK's
//!     `get_topic_sender` attaches): authorised via `$cbs` for the topic's path (else closed
//!     with `amqp:unauthorized-access`), `amqp:not-found` for an unknown topic. Each message
//!     is published to every subscription (body: the `data` sections concatenated, or an
//!     `amqp-value` string or binary; `message-id` and the string application properties
//!     kept; other bodies are rejected with `amqp:not-implemented`), including each message
//!     of a batch (message format `0x80013700`, the Python SDK's `ServiceBusMessageBatch`),
//!     then accepted, settled at once (the link runs in receiver-settle-mode first: the
//!     Python SDK's sender asks for second but only completes on a settled disposition).
//!   - **`$management`** on `{entity}/$management`, for a subscription or its dead-letter
//!     sub-queue (request-response; request link with that target, reply link with that
//!     source; application property `operation`; answers `statusCode`, `statusDescription`,
//!     `error-condition` on failure, `correlation-id` = the request's `message-id`):
//!     - `com.microsoft:renew-lock`: body `{"lock-tokens": [uuid, ...]}`, answer 200 with
//!       `{"expirations": [timestamp, ...]}` (each lock renewed for another `LockDuration`
//!       from now), or 410 with `error-condition` `com.microsoft:message-lock-lost` when any
//!       token holds no lock (the .NET SDK maps 410 to `MessageLockLost`). Inspect with
//!       [`lock_renewals`](ServiceBusEmulator::lock_renewals).
//!     - `com.microsoft:peek-message`: body `{"from-sequence-number": long,
//!       "message-count": int}`, answer 200 with `{"messages": [{"message": binary}, ...]}`
//!       (each an encoded message, locked ones included, nothing locked by the peek), or 204
//!       when there is none (the Python SDK's `peek_op` takes 204 as empty).
//!     - `com.microsoft:update-disposition` (the Python SDK's fallback when a settlement on
//!       the receiver link is not confirmed): `disposition-status` `completed`, `abandoned`
//!       or `suspended` (dead-letter, with `deadletter-reason` and `deadletter-description`)
//!       for `lock-tokens`; 200, or 410 as above.
//!     - Anything else: 400 with `amqp:not-implemented`; a body that is not a map, or bad
//!       fields: 400 with `amqp:decode-error`.
//!
//! Topics fan messages out to every subscription, assigning sequence numbers from 1 per topic.
//! Faults can be injected ([`drop_connections`](ServiceBusEmulator::drop_connections),
//! [`detach_links_with_error`](ServiceBusEmulator::detach_links_with_error),
//! [`reject_next_put_token`](ServiceBusEmulator::reject_next_put_token),
//! [`leave_put_tokens_unanswered`](ServiceBusEmulator::leave_put_tokens_unanswered),
//! [`expire_locks`](ServiceBusEmulator::expire_locks),
//! [`fail_next_management`](ServiceBusEmulator::fail_next_management)), and what happened
//! inspected ([`settlements`](ServiceBusEmulator::settlements),
//! [`dead_letter_settlements`](ServiceBusEmulator::dead_letter_settlements),
//! [`lock_renewals`](ServiceBusEmulator::lock_renewals),
//! [`cbs_requests`](ServiceBusEmulator::cbs_requests), [`pending`](ServiceBusEmulator::pending),
//! [`locked`](ServiceBusEmulator::locked), [`dead_letters`](ServiceBusEmulator::dead_letters)).
//!
//! # fe2o3
//!
//! The AMQP engine is `fe2o3-amqp` 0.14's acceptor. What it cannot be told to do is made up for
//! in the socket relay between the client and the engine (the crate's private `wire` module),
//! which rewrites a few frames:
//!
//! - `Sender` makes its own 4-byte delivery tags: the relay puts the lock token there.
//! - Its encoder leaves out a header's trailing default fields, so a first delivery had no
//!   `delivery-count` (the Python SDK shows `None`): the relay writes the header out whole
//!   (also inside peeked messages).
//! - In receiver-settle-mode second its session settles the client's disposition at once with
//!   the client's own state (`LinkRelay::on_incoming_disposition` in `link/mod.rs`,
//!   `Session::on_incoming_disposition` in `session/mod.rs`), before the emulator applied it:
//!   the relay drops that echo and sends the emulator's own settled disposition.
//! - It closes a connection with an error that lacks `description` and `info`, which makes the
//!   Python SDK fail with an `IndexError` (`Connection._incoming_close`): the relay writes all
//!   three fields.
//! - The client's `max-frame-size` is lowered by 64 bytes before the engine sees it, so the
//!   longer tag and header still fit.
//!
//! Management responses are sent without waiting for an outcome: the Python SDK's management
//! links never settle them.
//!
//! # Not emulated
//!
//! TLS (`amqps`, port 5671) and AMQP over WebSockets; SASL mechanisms other than ANONYMOUS;
//! queues (only topics and subscriptions), sessions, rules and filters, partitioning,
//! scheduled and deferred messages (Modified with `undeliverable-here` abandons; a deferral
//! by `update-disposition` is answered 400), receive-by-sequence-number, Modified's
//! annotations, duplicate detection, message time-to-live and expiry (`DeadLetteringOnMessageExpiration`), message properties other than `message-id` and string application
//! properties (content type, subject, correlation id... are dropped on the way in),
//! non-string application properties, `$management` on a topic (schedule, cancel), the
//! `x-opt-dead-letter-source` annotation, transactions, idle timeouts and `AutoDeleteOnIdle`;
//! the management API's `GET` and listing, and the `Retry-After` of a throttled management
//! call. A message's delivery count goes on in the dead-letter sub-queue from where it was.
//!
//! # The program
//!
//! `keyvault-invalidator-servicebus-emulator --topic NAME [--subscription NAME]... [--topic
//! ...] [--max-delivery-count N] [--lock-duration SECONDS] [--port PORT] [--management-port
//! PORT] [--policy-key KEY]` serves until SIGINT or SIGTERM, then exits 0; a subscription
//! belongs to the last `--topic` before it, and the settings apply to every subscription. Its
//! first line on standard output is one JSON object: `connection_string`, `amqp_url`,
//! `amqp_port`, `management_endpoint`, `policy_name`, `max_delivery_count`,
//! `lock_duration_seconds` and `topics` (`name`, `subscriptions`). Bad arguments: an error
//! naming the argument on standard error, exit status 2.
//!
//! ```
//! use keyvault_invalidator_servicebus_emulator::ServiceBusEmulator;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
//! let emulator = ServiceBusEmulator::start().await?;
//! emulator.create_topic("keyvault-events");
//! assert!(emulator.management_endpoint().starts_with("http://127.0.0.1:"));
//! assert_eq!(emulator.subscriptions("keyvault-events"), Vec::<String>::new());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod amqp;
mod cbs;
mod emulator;
mod entities;
mod management;
mod namespace;
mod node;
mod sas;
mod wire;

pub use cbs::CbsRequest;
pub use emulator::{EmulatorOptions, ServiceBusEmulator};
pub use entities::{
    DeadLetteredMessage, RecordedLockRenewal, RecordedSettlement, StoredMessage, SubQueue,
    SubscriptionSettings, DEAD_LETTER_ERROR_DESCRIPTION, DEAD_LETTER_REASON,
    MAX_DELIVERY_COUNT_EXCEEDED,
};
pub use management::{ManagementFault, ManagementRequest};
pub use sas::{verify as verify_sas, SasRejection};

use namespace::Namespace;

/// The policy every emulator knows.
pub const POLICY_NAME: &str = "RootManageSharedAccessKey";
