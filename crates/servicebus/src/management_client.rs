//! Creating and deleting the per-instance subscription through the management REST API.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use azure_core::credentials::TokenCredential;
use keyvault_invalidator_core::{SourceError, SourceErrorKind};
use secrecy::{ExposeSecret, SecretString};

use crate::connection_string::SharedAccess;
use crate::management::{SubscriptionProperties, API_VERSION};
use crate::sas::sas_token;

/// The Entra ID scope Service Bus tokens are issued for.
pub const SERVICE_BUS_SCOPE: &str = "https://servicebus.azure.net/.default";
/// How long the shared access signatures this client signs are valid: one request's worth.
const SAS_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// A management call that takes longer has hung.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How management requests are authorised.
#[derive(Clone)]
pub enum ManagementAuth {
    /// Signed with a shared access policy's key, or a ready-made signature.
    SharedAccess(SharedAccess),
    /// A bearer token from an Entra ID credential.
    Credential(Arc<dyn TokenCredential>),
}

/// What creating a subscription found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    /// It was created (201): this instance owns it and deletes it at shutdown.
    Created,
    /// It existed already (409): someone else owns it.
    AlreadyExisted,
}

/// What deleting a subscription found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// It was deleted (200).
    Deleted,
    /// It was already gone (404).
    WasAbsent,
}

/// A client of `https://{namespace}/{topic}/subscriptions/{name}`.
///
/// Creating and deleting needs Manage rights: a shared access policy with Manage, or the Azure
/// Service Bus Data Owner role for an Entra ID identity.
#[derive(Clone)]
pub struct ManagementClient {
    http: reqwest::Client,
    endpoint: String,
    auth: ManagementAuth,
}

impl ManagementClient {
    /// A client of the management endpoint at `endpoint` (`https://{namespace}/`, or the
    /// emulator's `http://127.0.0.1:{port}/`).
    pub fn new(endpoint: &str, auth: ManagementAuth) -> Result<Self, SourceError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| SourceError::fatal("cannot build the HTTP client").with_source(e))?;
        let mut endpoint = endpoint.trim().to_owned();
        if !endpoint.ends_with('/') {
            endpoint.push('/');
        }
        Ok(ManagementClient {
            http,
            endpoint,
            auth,
        })
    }

    /// `PUT`s the subscription with `properties`.
    pub async fn create_subscription(
        &self,
        topic: &str,
        name: &str,
        properties: &SubscriptionProperties,
    ) -> Result<Creation, SourceError> {
        let entity = self.entity(topic, name);
        let response = self
            .http
            .put(format!("{entity}?api-version={API_VERSION}"))
            .header(
                "Authorization",
                self.authorization(&entity).await?.expose_secret(),
            )
            .header(
                "Content-Type",
                "application/atom+xml;type=entry;charset=utf-8",
            )
            .body(properties.to_atom_entry())
            .send()
            .await
            .map_err(|e| transport_error("creating", topic, name, e))?;
        match response.status().as_u16() {
            200 | 201 => Ok(Creation::Created),
            409 => Ok(Creation::AlreadyExisted),
            status => Err(status_error("creating", topic, name, status)),
        }
    }

    /// `DELETE`s the subscription.
    pub async fn delete_subscription(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<Deletion, SourceError> {
        let entity = self.entity(topic, name);
        let response = self
            .http
            .delete(format!("{entity}?api-version={API_VERSION}"))
            .header(
                "Authorization",
                self.authorization(&entity).await?.expose_secret(),
            )
            .send()
            .await
            .map_err(|e| transport_error("deleting", topic, name, e))?;
        match response.status().as_u16() {
            200 | 204 => Ok(Deletion::Deleted),
            404 => Ok(Deletion::WasAbsent),
            status => Err(status_error("deleting", topic, name, status)),
        }
    }

    fn entity(&self, topic: &str, name: &str) -> String {
        format!("{}{topic}/subscriptions/{name}", self.endpoint)
    }

    /// Signed over the URL without its query, as the service checks it.
    async fn authorization(&self, entity: &str) -> Result<SecretString, SourceError> {
        match &self.auth {
            ManagementAuth::SharedAccess(SharedAccess::Key { name, key }) => {
                let expiry = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
                    + SAS_LIFETIME.as_secs();
                Ok(sas_token(entity, name, key, expiry))
            }
            ManagementAuth::SharedAccess(SharedAccess::Signature(signature)) => {
                Ok(signature.clone())
            }
            ManagementAuth::Credential(credential) => {
                let token = credential
                    .get_token(&[SERVICE_BUS_SCOPE], None)
                    .await
                    .map_err(|e| {
                        SourceError::fatal("the credential could not get a Service Bus token")
                            .with_source(e)
                    })?;
                Ok(SecretString::from(format!(
                    "Bearer {}",
                    token.token.secret()
                )))
            }
        }
    }
}

fn transport_error(doing: &str, topic: &str, name: &str, error: reqwest::Error) -> SourceError {
    // reqwest's message names the URL, which holds no secret (the token travels in a header).
    SourceError::transient(format!(
        "{doing} subscription `{name}` of topic `{topic}` failed: the request did not complete"
    ))
    .with_source(error)
}

fn status_error(doing: &str, topic: &str, name: &str, status: u16) -> SourceError {
    let (kind, why) = match status {
        401 => (SourceErrorKind::Fatal, "unauthorized: the token or key was refused"),
        403 => (
            SourceErrorKind::Fatal,
            "forbidden: this needs Manage rights (a policy with Manage, or the Azure Service Bus Data Owner role)",
        ),
        404 => (SourceErrorKind::Fatal, "the topic does not exist"),
        400 => (SourceErrorKind::Fatal, "the service refused the request as malformed"),
        _ => (SourceErrorKind::Transient, "the service is unavailable or busy"),
    };
    SourceError::new(
        kind,
        format!("{doing} subscription `{name}` of topic `{topic}`: HTTP {status}, {why}"),
    )
}

impl fmt::Debug for ManagementClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagementClient")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}
