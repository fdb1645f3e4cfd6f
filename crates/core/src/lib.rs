//! The core of keyvault-invalidator: the traits adapters implement, the Key Vault event model and
//! its tolerant parser, the default invalidator, and the job engine. No transport code lives
//! here.
//!
//! - [`EventSource`]: a transport handing out deliveries (Service Bus, RabbitMQ, in-memory).
//! - [`SecretCache`]: what the job changes.
//! - [`Invalidator`]: what an event means for the cache; [`KeyVaultInvalidator`] is the default.
//! - [`SecretProvider`]: where secret values come from.
//! - [`event::parse_events`]: message bytes to typed [`Event`]s.
//! - [`Job`]: the background job tying a source to an invalidator.
//! - [`lock`]: keeping a peek-lock while its delivery is in flight, for peek-lock transports.
//!
//! # Delivery semantics
//! - Well-formed events that do not concern the job are completed and counted as ignored.
//! - A payload that cannot be parsed is dead-lettered at once (`MalformedPayload`), with the
//!   parse error as the description.
//! - A failed invalidation that may pass is retried: the job waits (exponential backoff with
//!   jitter, by delivery count) and abandons, so the transport redelivers; after `max_attempts`
//!   deliveries it dead-letters (`MaxAttemptsExceeded`). One that cannot pass is dead-lettered at
//!   once (`InvalidationRejected`).
//! - A delivery is settled only after the invalidator returned: at least once, never lost.
//!
//! # Metrics and tracing cost nothing worth a feature
//! The job reports through the `metrics` facade and `tracing`, always; neither is behind a
//! feature, because with no recorder or subscriber installed their cost is far below a
//! delivery's. Measured (`bench/benches/micro.rs`, group `observability_per_delivery`; a 2-core
//! machine under a load of 12, so the absolute numbers are high), against about 8 µs per event
//! for the whole engine in process (`BENCHMARKS.md`):
//! - **Metric handles** (twelve, with the `job` label allocated) are made once per job, at
//!   `spawn`/`run`, not per event: about 0.5 µs each, once.
//! - **Metric updates** per delivery (counters and two histograms on those handles): no
//!   measurable cost (463 ns with the two clock reads of the processing time against 465 ns
//!   for the clock reads alone): without a recorder a handle is a no-op.
//! - **The delivery span** (`info_span!` with the message id and count, entered, three fields
//!   recorded): about 76 ns, under 1% of a delivery; with no subscriber the span is disabled at
//!   its call site and its fields are not formatted.
//!
//! No OS thread is started by this crate: the job runs as tasks on the application's runtime.
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cache;
mod endpoint;
pub mod event;
mod invalidator;
pub mod job;
mod keyvault;
pub mod lock;
mod names;
mod provider;
mod source;

pub use cache::{CacheError, NewVersion, SecretCache};
pub use endpoint::is_loopback_host;
pub use event::{parse_events, Event, EventKind, KeyVaultEvent, KeyVaultEventType, ParseError};
pub use invalidator::{IgnoreReason, InvalidationError, Invalidator, Outcome};
pub use job::{
    Backoff, EnginePanic, Job, JobBuilder, JobError, JobHandle, JobMonitor, JobOptions, JobRun,
    JobState, SpawnError, StatsSnapshot,
};
pub use keyvault::{KeyVaultInvalidator, KeyVaultInvalidatorBuilder};
pub use names::{MappedNames, NameMapping, SeparatorMapping};
pub use provider::{ProviderError, ProviderErrorKind, Secret, SecretProvider};
pub use source::{
    DeadLetterReason, Delivery, DeliveryToken, EventSource, Settlement, SourceError,
    SourceErrorKind,
};

/// Re-exported so adapters and applications name the same versions.
pub use async_trait::async_trait;
pub use bytes::Bytes;
pub use secrecy;
pub use tokio_util::sync::CancellationToken;
