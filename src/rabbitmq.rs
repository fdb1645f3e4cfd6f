//! The RabbitMQ transport (feature `rabbitmq`): everything from
//! [`keyvault_invalidator_rabbitmq`], plus [`spawn_job`], the one-call setup.

pub use keyvault_invalidator_rabbitmq::*;

use keyvault_invalidator_core::{Invalidator, Job, JobHandle};

/// Starts the invalidation job for this application instance: a queue of its own named
/// `{app}-{instance id}` on the `keyvault-events` exchange (declared if missing), removed at
/// graceful shutdown. For other settings build a [`RabbitMqConfig`] and a
/// [`Job`] yourself.
///
/// ```no_run
/// use keyvault_invalidator::prelude::*;
/// # struct Vault;
/// # #[keyvault_invalidator::async_trait]
/// # impl SecretProvider for Vault {
/// #     async fn get_secret(&self, _: &str) -> Result<keyvault_invalidator::Secret, keyvault_invalidator::ProviderError> { unimplemented!() }
/// # }
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = CachedSecretProvider::new(Vault);
/// let job = keyvault_invalidator::rabbitmq::spawn_job(
///     "amqps://app:password@rabbitmq:5671/%2f",
///     "orders-api",
///     KeyVaultInvalidator::builder(cache.clone()).allow_vault("orders-kv").build(),
/// )?;
/// // ... the application runs, reading secrets through `cache` ...
/// job.shutdown().await?;
/// # Ok(()) }
/// ```
pub fn spawn_job<I: Invalidator + 'static>(
    uri: &str,
    app: &str,
    invalidator: I,
) -> Result<JobHandle, ConfigError> {
    let config = RabbitMqConfig::instance(uri, app)?;
    Ok(Job::builder(RabbitMqSource::new(config), invalidator).spawn())
}
