//! [`EnvProvider`]: secrets from environment variables.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use keyvault_invalidator_core::{ProviderError, ProviderErrorKind, Secret, SecretProvider};

type MapFn = Arc<dyn Fn(&str) -> String + Send + Sync>;
type LookupFn = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Reads secrets from environment variables.
///
/// A secret name becomes a variable name this way (the default mapping):
/// ASCII letters are upper-cased, digits are kept, and every other character (`-`, `:`, `.`,
/// `/`, spaces, non-ASCII) becomes `_`; then the prefix, if any, is put in front as given. So
/// `db-password` reads `DB_PASSWORD` and `ServiceBus:ConnectionString` reads
/// `SERVICEBUS_CONNECTIONSTRING` (a single `_` for `:`; for .NET's `__` convention, use
/// [`EnvProviderBuilder::map_names`]). [`EnvProviderBuilder::exact_names`] uses the name as it is.
///
/// A variable that is unset **or empty** is "not found", so a secret store moves on to its next
/// provider: containers often set `NAME=` to mean "not configured". A value that is not valid
/// Unicode is an error (kind `Other`). Values carry no version.
///
/// Tests can avoid the process environment (shared by every test thread) with
/// [`EnvProviderBuilder::vars`] or [`EnvProviderBuilder::lookup`].
///
/// ```
/// use keyvault_invalidator_core::{secrecy::ExposeSecret, SecretProvider};
/// use keyvault_invalidator_secrets::EnvProvider;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let provider = EnvProvider::builder()
///     .prefix("MYAPP_")
///     .vars([("MYAPP_SERVICEBUS_CONNECTIONSTRING", "Endpoint=sb://example/")])
///     .build();
/// assert_eq!(provider.variable_name("ServiceBus:ConnectionString"), "MYAPP_SERVICEBUS_CONNECTIONSTRING");
/// let secret = provider.get_secret("ServiceBus:ConnectionString").await.unwrap();
/// assert_eq!(secret.value().expose_secret(), "Endpoint=sb://example/");
/// # }
/// ```
#[derive(Clone)]
pub struct EnvProvider {
    prefix: String,
    mapping: Mapping,
    lookup: Lookup,
}

#[derive(Clone)]
enum Mapping {
    Default,
    Exact,
    Custom(MapFn),
}

#[derive(Clone)]
enum Lookup {
    Process,
    Custom(LookupFn),
}

impl EnvProvider {
    /// Reads the process environment with the default mapping and no prefix.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder, for a prefix, another mapping or another variable source.
    pub fn builder() -> EnvProviderBuilder {
        EnvProviderBuilder {
            prefix: String::new(),
            mapping: Mapping::Default,
            lookup: Lookup::Process,
        }
    }

    /// The variable read for the secret `name`.
    pub fn variable_name(&self, name: &str) -> String {
        let mapped = match &self.mapping {
            Mapping::Default => default_variable_name(name),
            Mapping::Exact => name.to_owned(),
            Mapping::Custom(map) => map(name),
        };
        format!("{}{mapped}", self.prefix)
    }

    fn read(&self, name: &str, variable: &str) -> Result<Option<String>, ProviderError> {
        match &self.lookup {
            Lookup::Custom(lookup) => Ok(lookup(variable)),
            Lookup::Process => match std::env::var(variable) {
                Ok(value) => Ok(Some(value)),
                Err(std::env::VarError::NotPresent) => Ok(None),
                Err(std::env::VarError::NotUnicode(_)) => Err(ProviderError::new(
                    name,
                    ProviderErrorKind::Other,
                    format!("environment variable `{variable}` is not valid Unicode"),
                )),
            },
        }
    }
}

impl Default for EnvProvider {
    fn default() -> Self {
        Self::new()
    }
}

/// The default mapping of [`EnvProvider`], without a prefix.
///
/// ```
/// use keyvault_invalidator_secrets::env::default_variable_name;
///
/// assert_eq!(default_variable_name("db-password"), "DB_PASSWORD");
/// assert_eq!(default_variable_name("ServiceBus:ConnectionString"), "SERVICEBUS_CONNECTIONSTRING");
/// assert_eq!(default_variable_name("a.b/c d"), "A_B_C_D");
/// ```
pub fn default_variable_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

impl fmt::Debug for EnvProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mapping = match self.mapping {
            Mapping::Default => "default",
            Mapping::Exact => "exact",
            Mapping::Custom(_) => "custom",
        };
        let lookup = match self.lookup {
            Lookup::Process => "process environment",
            Lookup::Custom(_) => "custom",
        };
        f.debug_struct("EnvProvider")
            .field("prefix", &self.prefix)
            .field("mapping", &mapping)
            .field("lookup", &lookup)
            .finish()
    }
}

#[async_trait]
impl SecretProvider for EnvProvider {
    async fn get_secret(&self, name: &str) -> Result<Secret, ProviderError> {
        crate::error::reject_blank(name)?;
        let variable = self.variable_name(name);
        // The platform cannot hold these; std may even panic on them on some platforms.
        if variable.is_empty() || variable.contains(['=', '\0']) {
            return Err(ProviderError::new(
                name,
                ProviderErrorKind::InvalidName,
                "the mapped environment variable name is empty or holds `=` or NUL",
            ));
        }
        match self.read(name, &variable)? {
            Some(value) if !value.is_empty() => Ok(Secret::new(value)),
            _ => Err(ProviderError::new(
                name,
                ProviderErrorKind::NotFound,
                format!("environment variable `{variable}` is not set or empty"),
            )),
        }
    }
}

/// Builds an [`EnvProvider`].
pub struct EnvProviderBuilder {
    prefix: String,
    mapping: Mapping,
    lookup: Lookup,
}

impl EnvProviderBuilder {
    /// Puts `prefix` in front of every variable name, as given (`"MYAPP_"`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Uses the secret name as the variable name (after the prefix), unchanged.
    pub fn exact_names(mut self) -> Self {
        self.mapping = Mapping::Exact;
        self
    }

    /// Maps secret names to variable names with `map` (the prefix is still put in front).
    ///
    /// ```
    /// use keyvault_invalidator_secrets::EnvProvider;
    ///
    /// // .NET's configuration convention: `:` is `__` in environment variables.
    /// let provider = EnvProvider::builder().map_names(|name| name.replace(':', "__")).build();
    /// assert_eq!(provider.variable_name("ServiceBus:ConnectionString"), "ServiceBus__ConnectionString");
    /// ```
    pub fn map_names(mut self, map: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        self.mapping = Mapping::Custom(Arc::new(map));
        self
    }

    /// Reads variables with `lookup` instead of the process environment.
    pub fn lookup(
        mut self,
        lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.lookup = Lookup::Custom(Arc::new(lookup));
        self
    }

    /// Reads variables from these (variable, value) pairs instead of the process environment.
    pub fn vars<K, V>(self, vars: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        let vars: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self.lookup(move |variable| vars.get(variable).cloned())
    }

    /// The provider.
    pub fn build(self) -> EnvProvider {
        EnvProvider {
            prefix: self.prefix,
            mapping: self.mapping,
            lookup: self.lookup,
        }
    }
}

impl fmt::Debug for EnvProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvProviderBuilder")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}
