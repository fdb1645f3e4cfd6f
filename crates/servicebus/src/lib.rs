//! Azure Service Bus transport for keyvault-invalidator: the configuration layer.
//!
//! Both registrations of the original .NET library, with its argument checks:
//! [`ServiceBusConfig::managed_identity`] (the namespace and a system- or user-assigned
//! [`ManagedIdentity`]; any credential with [`ServiceBusConfig::with_credential`]) and the
//! connection-string registration ([`ServiceBusConfig::connection_string`], or
//! [`ServiceBusConfig::connection_string_from_store`] reading it from the secret store), each
//! followed by [`topic`](ServiceBusConfig::topic) and
//! [`subscription_prefix`](ServiceBusConfig::subscription_prefix) (or
//! [`existing_subscription`](ServiceBusConfig::existing_subscription)).
//! [`ConnectionString`] parses public-cloud and emulator strings; [`sas_token`] signs tokens
//! as the service checks them; [`SubscriptionProperties`] writes the management API's Atom
//! entry for a per-instance subscription.
//!
//! [`ServiceBusSource`] receives over AMQP 1.0 on `fe2o3-amqp`, settling as the official SDKs do
//! and renewing the locks of deliveries in flight.
#![warn(missing_docs)]

mod config;
mod connection_string;
mod error;
mod management;
mod management_client;
mod names;
mod sas;
mod source;

pub use config::{
    Authorization, ManagedIdentity, ServiceBusConfig, SubscriptionMode, DEFAULT_OPERATION_TIMEOUT,
    DEFAULT_SAS_TOKEN_LIFETIME, DEFAULT_SUBSCRIPTION_PREFIX, DEFAULT_UNAUTHORIZED_GRACE,
};
pub use connection_string::{ConnectionString, SharedAccess, AMQPS_PORT, EMULATOR_AMQP_PORT};
pub use error::ConfigError;
/// The credentials [`ServiceBusConfig::with_credential`] takes, ready-made: managed identity,
/// workload identity, a developer's own login (re-exported from the secrets crate).
pub use keyvault_invalidator_secrets::credential;
pub use management::{
    iso8601_duration, SubscriptionProperties, API_VERSION, MIN_AUTO_DELETE_ON_IDLE,
};
pub use management_client::{
    Creation, Deletion, ManagementAuth, ManagementClient, ManagementError, ManagementFailure,
    MAX_RETRY_AFTER, SERVICE_BUS_SCOPE,
};
pub use names::{
    check_subscription_name, check_subscription_prefix, check_topic, fully_qualified_namespace,
    generate_subscription_name, MAX_SUBSCRIPTION_NAME, NAMESPACE_SUFFIX,
};
pub use sas::sas_token;
pub use source::ServiceBusSource;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use source::fuzzing;
