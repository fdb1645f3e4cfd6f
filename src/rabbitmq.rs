//! The RabbitMQ transport (feature `rabbitmq`): everything from
//! [`keyvault_invalidator_rabbitmq`], plus [`spawn_job`], the one-call start.

pub use keyvault_invalidator_rabbitmq::*;

use keyvault_invalidator_core::{Invalidator, Job, JobHandle, SpawnError};

/// Starts the invalidation job on the queue `config` describes (by default a queue of this
/// instance's own, `{prefix}-{instance id}`, bound to the `keyvault-events` exchange, declared
/// if missing and removed at graceful shutdown), on the current Tokio runtime. For other job
/// settings use [`Job::builder`] with a [`RabbitMqSource`] yourself.
///
/// ```no_run
/// use keyvault_invalidator::prelude::*;
/// use keyvault_invalidator::rabbitmq::{self, RabbitMqConfig};
/// # struct Vault;
/// # #[keyvault_invalidator::async_trait]
/// # impl SecretProvider for Vault {
/// #     async fn get_secret(&self, _: &str) -> Result<keyvault_invalidator::Secret, keyvault_invalidator::ProviderError> { unimplemented!() }
/// # }
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = CachedSecretProvider::new(Vault);
/// let config = RabbitMqConfig::new("amqps://app:password@rabbitmq:5671/%2f")?
///     .instance_prefix("orders-api")?;
/// let job = rabbitmq::spawn_job(
///     config,
///     KeyVaultInvalidator::builder(cache.clone()).allow_vault("orders-kv").build(),
/// )?;
/// // ... the application runs, reading secrets through `cache` ...
/// job.shutdown().await?;
/// # Ok(()) }
/// ```
pub fn spawn_job<I: Invalidator + 'static>(
    config: RabbitMqConfig,
    invalidator: I,
) -> Result<JobHandle, SpawnError> {
    Job::builder(RabbitMqSource::new(config), invalidator).spawn()
}
