//! [`Masked`]: a setting that is a secret (a broker URI with its password, a webhook's shared
//! secret).

use std::fmt;

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::AgentError;

/// A secret setting: read from the file or the environment, printed as `***` by `Debug` and
/// `check-config`.
#[derive(Clone)]
pub struct Masked(SecretString);

impl Masked {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Masked(SecretString::from(value.into()))
    }

    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The secret itself: the value, or for `file://PATH` the file's content (surrounding white
    /// space dropped, as a trailing newline). `key` names the setting in errors.
    pub fn resolve(&self, key: &str) -> Result<SecretString, AgentError> {
        let value = match self.expose().strip_prefix("file://") {
            Some(path) => std::fs::read_to_string(Path::new(path)).map_err(|e| {
                AgentError::config(format!("{key}: cannot read the file {path}")).with_source(e)
            })?,
            None => self.expose().to_owned(),
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(AgentError::config(format!("{key} is empty")));
        }
        Ok(SecretString::from(value.to_owned()))
    }
}

impl fmt::Debug for Masked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl<'de> Deserialize<'de> for Masked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Masked::new)
    }
}

impl Serialize for Masked {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}
