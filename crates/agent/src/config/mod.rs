//! The agent's settings: a TOML file, environment overrides on top, checks that name what is
//! wrong.
//!
//! ```
//! use keyvault_invalidator_agent::config::Settings;
//!
//! let settings = Settings::from_toml_str(
//!     r#"
//!     [vault]
//!     url = "https://my-kv.vault.azure.net/"
//!     [transport]
//!     kind = "none"
//!     "#,
//!     "example.toml",
//!     |_| None, // no environment overrides
//! )?;
//! assert_eq!(settings.server.listen.to_string(), "127.0.0.1:2773");
//! assert_eq!(settings.vault.allowed_vault_name().as_deref(), Some("my-kv"));
//!
//! let error = Settings::from_toml_str("[server]\nlisen = \"x\"", "bad.toml", |_| None).unwrap_err();
//! assert!(error.to_string().contains("unknown field `lisen`"));
//! # Ok::<(), keyvault_invalidator_agent::AgentError>(())
//! ```

mod env;
mod masked;
mod sections;
mod token;
mod webhook;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::AgentError;

pub use env::{ENV_OVERRIDES, TOKEN_ENV};
pub use masked::Masked;
pub use sections::{
    CacheMode, CacheSettings, Credential, EventGridPullSettings, NameSettings, RabbitMqSettings,
    ServerSettings, ServiceBusRegistration, ServiceBusSettings, TransportSettings, VaultSettings,
    DEFAULT_LISTEN,
};
pub use token::{ApiToken, TokenSource};
pub use webhook::EventGridWebhookSettings;

/// Everything the agent is configured with. Every section and key is optional; unknown keys
/// are refused.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Settings {
    /// The HTTP server: listen address, limits, token file.
    pub server: ServerSettings,
    /// The Key Vault to read and its credential.
    pub vault: VaultSettings,
    /// The cache in front of the vault.
    pub cache: CacheSettings,
    /// How the names applications ask for map to Key Vault names.
    pub names: NameSettings,
    /// Where rotation events come from.
    pub transport: TransportSettings,
}

impl Settings {
    /// Reads `path`, applies the environment overrides ([`ENV_OVERRIDES`]) read with `env`,
    /// and checks the result.
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            AgentError::config(format!(
                "cannot read the configuration file `{}`",
                path.display()
            ))
            .with_source(e)
        })?;
        Self::from_toml_str(&text, &path.display().to_string(), env)
    }

    /// The settings of no file at all: the defaults with the environment overrides.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, AgentError> {
        Self::from_toml_str("", "(no file)", env)
    }

    /// Parses `text` (named `origin` in errors), applies the environment overrides read with
    /// `env`, and checks the result.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, AgentError> {
        // Parsed straight from the text first, so an error carries its line.
        let from_file: Settings = toml::from_str(text)
            .map_err(|e| AgentError::config(located(origin, text, &e)).with_source(e))?;
        let mut table: toml::Table = toml::from_str(text)
            .map_err(|e| AgentError::config(located(origin, text, &e)).with_source(e))?;
        let applied = env::apply(&mut table, env)?;
        let settings = if applied.is_empty() {
            from_file
        } else {
            toml::Value::Table(table)
                .try_into::<Settings>()
                .map_err(|e| {
                    AgentError::config(format!(
                        "{origin} with the environment overrides {}: {}",
                        applied.join(", "),
                        e.message().trim_end()
                    ))
                    .with_source(e)
                })?
        };
        settings.check()?;
        Ok(settings)
    }

    /// Checks what serde cannot: required combinations, limits, loopback.
    pub fn check(&self) -> Result<(), AgentError> {
        self.server.check()?;
        self.vault.check()?;
        self.cache.check()?;
        self.names.check()?;
        self.transport.check()
    }

    /// The effective settings as TOML, secrets masked (`kvi-agent check-config`).
    pub fn to_masked_toml(&self) -> String {
        // Serialising plain structs and strings cannot fail; an error would be a bug here.
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

/// `origin line L: message`, from the parser's byte span.
fn located(origin: &str, text: &str, error: &toml::de::Error) -> String {
    let line = error
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    match line {
        Some(line) => format!("{origin} line {line}: {}", error.message().trim_end()),
        None => format!("{origin}: {}", error.message().trim_end()),
    }
}

#[cfg(test)]
mod tests;
