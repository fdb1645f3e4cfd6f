//! RabbitMQ transport for keyvault-invalidator, on `lapin`.
//!
//! Events are published (structured JSON, Event Grid or CloudEvents schema) to a durable topic
//! exchange with the event type as routing key. Each application instance consumes a queue of
//! its own bound to it, so every instance sees every event, like a Service Bus subscription per
//! instance; or instances share an existing queue. See [`RabbitMqSource`] for settlement and
//! fault handling and [`RabbitMqConfig`] for the settings.
//!
//! ```no_run
//! use keyvault_invalidator_core::{Job, KeyVaultInvalidator};
//! use keyvault_invalidator_rabbitmq::{RabbitMqConfig, RabbitMqSource};
//! # use keyvault_invalidator_core::{SecretCache, CacheError};
//! # struct NoCache;
//! # #[async_trait::async_trait]
//! # impl SecretCache for NoCache { async fn invalidate(&self, _: &str) -> Result<(), CacheError> { Ok(()) } }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let cache = NoCache;
//! let config = RabbitMqConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")?.instance_prefix("orders-api")?;
//! let job = Job::builder(RabbitMqSource::new(config), KeyVaultInvalidator::new(cache)).spawn()?;
//! // ...
//! job.shutdown().await?; // also deletes this instance's queue
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod config;
mod errors;
mod link;
mod source;
mod topology;

pub use config::{
    ConfigError, QueueMode, RabbitMqConfig, DEFAULT_CONFIRM_TIMEOUT, DEFAULT_DEAD_LETTER,
    DEFAULT_EXCHANGE, DEFAULT_IDLE_EXPIRY,
};
pub use source::{
    RabbitMqSource, DEAD_LETTER_DESCRIPTION_HEADER, DEAD_LETTER_QUEUE_HEADER,
    DEAD_LETTER_REASON_HEADER, DELIVERY_COUNT_HEADER,
};

/// The metadata reading, for the fuzz targets in `fuzz/` only: not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::source::{read_metadata, Metadata};
}

/// The `lapin` this crate is built on, for publishing in the same version.
pub use lapin;
