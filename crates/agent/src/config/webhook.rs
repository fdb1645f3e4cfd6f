//! `[transport]` with `kind = "eventgrid-webhook"`: [`EventGridWebhookSettings`].

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::sections::required;
use super::Masked;
use crate::error::AgentError;

/// `[transport]` with `kind = "eventgrid-webhook"`: an HTTPS endpoint (its own listener, not
/// the API's) that an Event Grid subscription pushes to. One transport (TLS files, or plain
/// HTTP behind a TLS-terminating proxy) and at least one authentication are required.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct EventGridWebhookSettings {
    /// Where Event Grid reaches the webhook, for example `0.0.0.0:8443`. Required; not the
    /// API's `server.listen`.
    pub listen: Option<SocketAddr>,
    /// The certificate chain (PEM) served over HTTPS; with `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM); with `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Plain HTTP on a loopback `listen` address: behind a TLS-terminating proxy on the same
    /// host.
    pub plain_http: bool,
    /// Plain HTTP on any address: only behind a TLS-terminating proxy on a network nobody else
    /// reaches, since the shared secret travels in clear from the proxy.
    pub plain_http_allowing_non_loopback: bool,
    /// The secret the subscription's URL carries (`?code=SECRET`): a value, or `file://PATH`.
    /// Masked when printed; better given as `KVI_AGENT_WEBHOOK_SHARED_SECRET`.
    pub shared_secret: Option<Masked>,
    /// A second secret accepted too, while rotating (a value, or `file://PATH`). Masked.
    pub second_shared_secret: Option<Masked>,
    /// The query parameter carrying the secret. Default `code`.
    pub query_parameter: Option<String>,
    /// The Microsoft Entra ID tenant (id) whose tokens are accepted; with `entra_audience`.
    pub entra_tenant: Option<String>,
    /// The webhook app's Application ID URI or client id the tokens are for; with
    /// `entra_tenant`.
    pub entra_audience: Option<String>,
    /// Accept every request, unauthenticated: only behind a proxy that authenticates.
    pub without_authentication: bool,
}

impl EventGridWebhookSettings {
    pub(super) fn check(&self) -> Result<(), AgentError> {
        let Some(listen) = self.listen else {
            return Err(AgentError::config(
                "transport.listen is required for kind = \"eventgrid-webhook\" \
                 (or KVI_AGENT_WEBHOOK_LISTEN)",
            ));
        };
        let tls = both_or_neither(
            ("tls_cert_file", self.tls_cert_file.is_some()),
            ("tls_key_file", self.tls_key_file.is_some()),
        )?;
        let chosen = [tls, self.plain_http, self.plain_http_allowing_non_loopback];
        match chosen.iter().filter(|on| **on).count() {
            1 => {}
            0 => {
                return Err(AgentError::config(
                    "transport: choose tls_cert_file + tls_key_file, or plain_http = true \
                     behind a TLS-terminating proxy on loopback",
                ))
            }
            _ => {
                return Err(AgentError::config(
                    "transport: choose one of tls_cert_file + tls_key_file, plain_http and \
                     plain_http_allowing_non_loopback",
                ))
            }
        }
        if self.plain_http && !listen.ip().is_loopback() {
            return Err(AgentError::config(format!(
                "transport.listen: `{listen}` is not a loopback address; plain_http serves \
                 loopback only: use TLS, or plain_http_allowing_non_loopback = true behind a \
                 TLS-terminating proxy"
            )));
        }
        if self.second_shared_secret.is_some() && self.shared_secret.is_none() {
            return Err(AgentError::config(
                "transport.second_shared_secret needs transport.shared_secret",
            ));
        }
        for (key, secret) in [
            ("transport.shared_secret", &self.shared_secret),
            ("transport.second_shared_secret", &self.second_shared_secret),
        ] {
            if secret
                .as_ref()
                .is_some_and(|s| s.expose().trim().is_empty())
            {
                return Err(AgentError::config(format!("{key} cannot be empty")));
            }
        }
        if self.query_parameter.is_some() {
            required("transport.query_parameter", &self.query_parameter)?;
        }
        let entra_id = both_or_neither(
            ("entra_tenant", self.entra_tenant.is_some()),
            ("entra_audience", self.entra_audience.is_some()),
        )?;
        if entra_id {
            required("transport.entra_tenant", &self.entra_tenant)?;
            required("transport.entra_audience", &self.entra_audience)?;
        }
        if self.shared_secret.is_none() && !entra_id && !self.without_authentication {
            return Err(AgentError::config(
                "transport: the webhook needs an authentication: shared_secret \
                 (KVI_AGENT_WEBHOOK_SHARED_SECRET) and/or entra_tenant + entra_audience, or, \
                 only behind a proxy that authenticates, without_authentication = true",
            ));
        }
        Ok(())
    }
}

/// Whether both of two keys that go together are set; an error naming them when only one is.
fn both_or_neither(
    (first_key, first): (&str, bool),
    (second_key, second): (&str, bool),
) -> Result<bool, AgentError> {
    if first != second {
        return Err(AgentError::config(format!(
            "transport: set both {first_key} and {second_key}, or neither"
        )));
    }
    Ok(first)
}
