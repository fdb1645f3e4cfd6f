//! Pull from an Event Grid namespace topic (HTTP peek-lock): [`PullSource`].
//!
//! Key Vault's system topic forwards `Microsoft.KeyVault.SecretNewVersionCreated` (CloudEvents
//! schema) to a namespace topic; an event subscription of that topic in queue mode holds the
//! events until a receiver takes them with `:receive`, locks them for the subscription's
//! `receiveLockDurationInSeconds`, and removes them at `:acknowledge`. This module is such a
//! receiver, speaking the data-plane REST API (api-version 2024-06-01) over the azure_core HTTP
//! pipeline, with any azure_identity credential (scope [`EVENT_GRID_SCOPE`], role **EventGrid
//! Data Receiver**) or an access key.
//!
//! **Infrastructure creates the topic and the event subscription** (see
//! `deploy/eventgrid-namespace/main.bicep`); the source never creates or deletes them. One
//! subscription per application instance gives each instance every event (each refreshes its
//! own cache); instances sharing one subscription share its events.
//!
//! Reconnecting, backoff, outage logs and the connection metrics are the transport crate's
//! `Lifecycle`, as for the RabbitMQ and Service Bus sources; metric names start with
//! `keyvault_invalidator_eventgrid_pull` (plus `_received_total` and
//! `_settlement_failures_total{operation}`).

mod client;
mod config;
mod error;
mod source;

pub use config::{
    PullAuth, PullConfig, PullConfigBuilder, PullConfigError, PullConfigErrorKind, ReleaseDelay,
    API_VERSION, DEFAULT_LOCK_DURATION, EVENT_GRID_SCOPE, MAX_EVENTS_LIMIT, MAX_WAIT_TIME_RANGE,
};
pub use error::{PullError, PullErrorKind, MAX_RETRY_AFTER};
pub use source::PullSource;
