//! The Azure Service Bus transport (feature `servicebus`): everything from
//! [`keyvault_invalidator_servicebus`], plus [`spawn_job`], the one-call start.

pub use keyvault_invalidator_servicebus::*;

use keyvault_invalidator_core::{Invalidator, Job, JobHandle, SpawnError};

/// Starts the invalidation job on the Service Bus subscription `config` describes, on the
/// current Tokio runtime. For other job settings use [`Job::builder`] with a
/// [`ServiceBusSource`] yourself.
///
/// With the managed-identity registration the subscription `{prefix}-{unique}` is created at
/// start and deleted at graceful shutdown; that needs the Azure Service Bus Data Owner role on
/// the topic (Data Receiver is enough for an
/// [`existing_subscription`](ServiceBusConfig::existing_subscription)).
///
/// ```no_run
/// use keyvault_invalidator::prelude::*;
/// use keyvault_invalidator::servicebus::{self, ManagedIdentity, ServiceBusConfig};
/// # struct Vault;
/// # #[keyvault_invalidator::async_trait]
/// # impl SecretProvider for Vault {
/// #     async fn get_secret(&self, _: &str) -> Result<keyvault_invalidator::Secret, keyvault_invalidator::ProviderError> { unimplemented!() }
/// # }
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = CachedSecretProvider::new(Vault);
/// let config = ServiceBusConfig::managed_identity("my-namespace", ManagedIdentity::SystemAssigned)?
///     .topic("keyvault-events")?
///     .subscription_prefix("orders-api")?;
/// let job = servicebus::spawn_job(
///     config,
///     KeyVaultInvalidator::builder(cache.clone()).allow_vault("orders-kv").build(),
/// )?;
/// job.shutdown().await?;
/// # Ok(()) }
/// ```
pub fn spawn_job<I: Invalidator + 'static>(
    config: ServiceBusConfig,
    invalidator: I,
) -> Result<JobHandle, SpawnError> {
    Job::builder(ServiceBusSource::new(config), invalidator).spawn()
}
