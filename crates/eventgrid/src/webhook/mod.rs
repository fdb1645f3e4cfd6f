//! A webhook Event Grid pushes to: [`WebhookSource`], configured with [`WebhookConfig`].
//!
//! # What it does
//! - **Handshakes.** The Event Grid schema's `SubscriptionValidationEvent` is answered 200
//!   with `{"validationResponse": code}`; the CloudEvents `OPTIONS` abuse-protection request
//!   with `WebHook-Allowed-Origin` (the requesting origin) and `WebHook-Allowed-Rate: *`. A
//!   `SubscriptionDeletion` notice is logged (warn) and answered 200.
//! - **Authentication, before the body is read**: a shared secret in the query string
//!   (parameter `code` by default; two secrets accepted while rotating; compared as SHA-256
//!   digests in constant time), and/or a Microsoft Entra ID bearer token (RS256, checked
//!   against the tenant's signing keys with `jsonwebtoken`; issuer, audience, expiry and the
//!   `AzureEventGridSecureWebhookSubscriber` role). A refusal is 401. When the signing keys
//!   cannot be fetched the answer is 503, since Event Grid never retries a 401.
//! - **Events → deliveries.** Each event of a request is its own delivery: the job parses and
//!   accounts for each alone, so a poison event is dead-lettered alone in the job's statistics
//!   and the rest are applied. `aeg-*` headers become delivery properties and
//!   `aeg-delivery-count` the delivery count.
//! - **The answer follows Event Grid's delivery contract** once every delivery of the request
//!   is settled: 200 only when all were completed (applied to the cache); 503 when one was
//!   abandoned (Event Grid retries the whole request); else 400 when one was dead-lettered
//!   (Event Grid dead-letters or drops it, never retries). Batches are all or none, as Event
//!   Grid requires: events already applied come again with a retried batch, which the cache
//!   absorbs. Past the answer deadline (25 s by default, under Event Grid's 30 s) the answer
//!   is 503 and later settlements fail as lost. A body over the size limit is 413, a malformed
//!   one 400.
//! - **Where a dead-letter reason goes.** Event Grid writes its own `deadLetterReason` into
//!   the dead-letter blob; ours is in the 400 answer's body (`deadLettered[].reason` and
//!   `description`) and in the log (warn).
//! - **Transport.** HTTPS with rustls (ring) from PEM certificate and key files, or plain HTTP
//!   behind a TLS-terminating proxy: on loopback with [`WebhookConfig::plain_http`], elsewhere
//!   only with [`WebhookConfig::plain_http_allowing_non_loopback`]. Limits on the body size,
//!   the number of headers, connections, and the time to read headers and body.
//! - **Metrics** (through the `metrics` facade): `keyvault_invalidator_webhook_requests_total`
//!   labelled `status`, and `keyvault_invalidator_webhook_events_received_total`; the job counts
//!   what became of each delivery.
//! - **Close** stops listening and answers every waiting request 503; Event Grid delivers them
//!   again, to whichever endpoint listens then.
//!
//! # When to use it
//! One webhook subscription reaches one endpoint: Event Grid gives no fan-out. Use it for one
//! application instance, or one endpoint per host with its own subscription (a subscription
//! per instance, each with its own URL). When many instances each need every event, use the
//! Service Bus transport (a subscription per instance) or RabbitMQ; when the application
//! cannot take inbound HTTPS, pull from an Event Grid namespace topic ([`crate::pull`]).

mod auth;
mod config;
mod error;
mod handler;
mod payload;
mod pending;
mod server;
mod source;

pub use config::{
    EntraIdConfig, WebhookConfig, DEFAULT_ANSWER_DEADLINE, DEFAULT_BODY_READ_TIMEOUT,
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_KEYS_MIN_REFRESH_INTERVAL, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADERS, DEFAULT_QUERY_PARAMETER, EVENT_GRID_ROLE,
};
pub use error::{WebhookError, WebhookErrorKind};
pub use source::WebhookSource;
