//! The choices a registration makes: how the source signs in ([`Authorization`],
//! [`ManagedIdentity`]) and which subscription it receives from ([`SubscriptionMode`]).

use std::fmt;
use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use keyvault_invalidator_core::SecretProvider;

use crate::connection_string::ConnectionString;
use crate::management::SubscriptionProperties;

/// How the source proves who it is.
#[derive(Clone)]
#[non_exhaustive]
pub enum Authorization {
    /// An Entra ID credential (managed identity, workload identity, developer login...): JWTs
    /// for `https://servicebus.azure.net/.default`.
    Credential(Arc<dyn TokenCredential>),
    /// A connection string given directly.
    ConnectionString(ConnectionString),
    /// A connection string read from a secret provider (the secret store) under a key at start
    /// and again at every reconnection, so a rotated one is picked up.
    ConnectionStringFromStore {
        /// Where it is read from.
        provider: Arc<dyn SecretProvider>,
        /// The key it is stored under.
        key: String,
    },
}

/// Which subscription the source receives from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionMode {
    /// Create `{prefix}-{unique}` at start (needs Manage rights, or the Azure Service Bus Data
    /// Owner role), delete it at graceful shutdown; `AutoDeleteOnIdle` removes it if the
    /// instance crashes.
    Automatic {
        /// The name's prefix.
        prefix: String,
        /// How it is created.
        properties: SubscriptionProperties,
    },
    /// Receive from a subscription infrastructure created (needs Listen rights, or the Azure
    /// Service Bus Data Receiver role).
    Existing {
        /// Its name.
        name: String,
    },
}

/// Which managed identity [`ServiceBusConfig::managed_identity`](super::ServiceBusConfig::managed_identity) signs in with.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManagedIdentity {
    /// The identity Azure assigned to the host (the app service, the VM, the pod's node).
    SystemAssigned,
    /// A user-assigned identity, by its client id.
    UserAssigned {
        /// The identity's client (application) id.
        client_id: String,
    },
}

impl ManagedIdentity {
    /// A user-assigned identity, by its client id.
    pub fn user_assigned(client_id: impl Into<String>) -> Self {
        ManagedIdentity::UserAssigned {
            client_id: client_id.into(),
        }
    }
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Authorization::Credential(_) => f.write_str("Credential(..)"),
            Authorization::ConnectionString(cs) => {
                f.debug_tuple("ConnectionString").field(cs).finish()
            }
            Authorization::ConnectionStringFromStore { key, .. } => f
                .debug_struct("ConnectionStringFromStore")
                .field("key", key)
                .finish_non_exhaustive(),
        }
    }
}
