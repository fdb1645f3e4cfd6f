//! Credentials for [`KeyVaultProvider`](super::KeyVaultProvider): thin helpers over
//! `azure_identity`, so an application picks one in one line. Any other
//! [`TokenCredential`] works too.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_identity::{
    DeveloperToolsCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential,
};

use crate::error::ConfigError;

/// The system-assigned managed identity of the host (App Service, Functions, a VM, AKS node).
///
/// ```
/// // Creating the credential contacts nothing; tokens are fetched on the first read.
/// let credential = keyvault_invalidator_secrets::credential::managed_identity()?;
/// # Ok::<(), keyvault_invalidator_secrets::ConfigError>(())
/// ```
pub fn managed_identity() -> Result<Arc<dyn TokenCredential>, ConfigError> {
    managed(None)
}

/// The user-assigned managed identity with this client id. A blank id is rejected.
///
/// ```
/// use keyvault_invalidator_secrets::credential;
///
/// assert!(credential::user_assigned_managed_identity(" ").is_err());
/// let credential = credential::user_assigned_managed_identity("00000000-0000-0000-0000-000000000001")?;
/// # Ok::<(), keyvault_invalidator_secrets::ConfigError>(())
/// ```
pub fn user_assigned_managed_identity(
    client_id: &str,
) -> Result<Arc<dyn TokenCredential>, ConfigError> {
    let client_id = client_id.trim();
    if client_id.is_empty() {
        return Err(ConfigError::new(
            "the client id of a user-assigned managed identity cannot be blank",
        ));
    }
    managed(Some(UserAssignedId::ClientId(client_id.to_owned())))
}

fn managed(id: Option<UserAssignedId>) -> Result<Arc<dyn TokenCredential>, ConfigError> {
    let options = ManagedIdentityCredentialOptions {
        user_assigned_id: id,
        ..Default::default()
    };
    let credential = ManagedIdentityCredential::new(Some(options)).map_err(|e| {
        ConfigError::new("could not set up the managed identity credential").with_source(e)
    })?;
    Ok(credential)
}

/// Kubernetes workload identity, configured by the environment the AKS webhook injects
/// (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE`). Fails when they are
/// missing.
pub fn workload_identity() -> Result<Arc<dyn TokenCredential>, ConfigError> {
    let credential = WorkloadIdentityCredential::new(None).map_err(|e| {
        ConfigError::new(
            "could not set up the workload identity credential (AZURE_TENANT_ID, AZURE_CLIENT_ID \
             and AZURE_FEDERATED_TOKEN_FILE must be set)",
        )
        .with_source(e)
    })?;
    Ok(credential)
}

/// A developer's own login: the Azure CLI (`az login`), then the Azure Developer CLI
/// (`azd auth login`). For local runs, not for production.
pub fn developer_tools() -> Result<Arc<dyn TokenCredential>, ConfigError> {
    let credential = DeveloperToolsCredential::new(None).map_err(|e| {
        ConfigError::new("could not set up the developer tools credential").with_source(e)
    })?;
    Ok(credential)
}
