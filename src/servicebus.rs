//! The Azure Service Bus transport (feature `servicebus`): everything from
//! [`keyvault_invalidator_servicebus`], plus the two registrations of the original library as
//! one call each.

pub use keyvault_invalidator_servicebus::*;

use keyvault_invalidator_core::{Invalidator, Job, JobHandle, SecretProvider};

/// Starts the job on Service Bus with the host's managed identity (or the user-assigned one
/// with `client_id`): a subscription `{subscription_prefix}-{unique}` on `topic` in
/// `namespace` (`.servicebus.windows.net` is added when missing), created at start and deleted
/// at graceful shutdown. Needs the Azure Service Bus Data Owner role to manage the
/// subscription.
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
/// let job = keyvault_invalidator::servicebus::spawn_job_with_managed_identity(
///     "keyvault-events",
///     "orders-api",
///     "my-namespace",
///     None,
///     KeyVaultInvalidator::builder(cache.clone()).allow_vault("orders-kv").build(),
/// )?;
/// job.shutdown().await?;
/// # Ok(()) }
/// ```
pub fn spawn_job_with_managed_identity<I: Invalidator + 'static>(
    topic: &str,
    subscription_prefix: &str,
    namespace: &str,
    client_id: Option<&str>,
    invalidator: I,
) -> Result<JobHandle, ConfigError> {
    let config =
        ServiceBusConfig::managed_identity(topic, subscription_prefix, namespace, client_id)?;
    Ok(Job::builder(ServiceBusSource::new(config), invalidator).spawn())
}

/// Starts the job on Service Bus with a connection string given directly (the topic from its
/// `EntityPath`). Emulator strings (`UseDevelopmentEmulator=true`) work too.
pub fn spawn_job_with_connection_string<I: Invalidator + 'static>(
    connection_string: &str,
    subscription_prefix: &str,
    invalidator: I,
) -> Result<JobHandle, ConfigError> {
    let config = ServiceBusConfig::connection_string(connection_string, subscription_prefix)?;
    Ok(Job::builder(ServiceBusSource::new(config), invalidator).spawn())
}

/// Starts the job on Service Bus with a connection string read from `store` under
/// `secret_key` (the topic from its `EntityPath`), read again at every reconnection so a
/// rotated one is picked up. Needs Manage rights in the policy to manage the subscription.
pub fn spawn_job_with_connection_string_from_store<I: Invalidator + 'static>(
    store: impl SecretProvider + 'static,
    secret_key: &str,
    subscription_prefix: &str,
    invalidator: I,
) -> Result<JobHandle, ConfigError> {
    let config =
        ServiceBusConfig::connection_string_from_store(store, secret_key, subscription_prefix)?;
    Ok(Job::builder(ServiceBusSource::new(config), invalidator).spawn())
}
