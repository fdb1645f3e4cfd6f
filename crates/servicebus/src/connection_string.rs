//! Service Bus connection strings, including the emulator's.

use std::fmt;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};

use crate::error::ConfigError;

/// The AMQP port over TLS.
pub const AMQPS_PORT: u16 = 5671;
/// The plain AMQP port the Service Bus emulator listens on.
pub const EMULATOR_AMQP_PORT: u16 = 5672;

/// A parsed connection string:
/// `Endpoint=sb://{namespace}/;SharedAccessKeyName={name};SharedAccessKey={key}[;EntityPath={topic}]`,
/// or with `SharedAccessSignature=...` instead of the key pair, or the emulator's
/// `...;UseDevelopmentEmulator=true` (plain AMQP; an explicit port in the endpoint is honoured).
///
/// Keys are matched without regard to case. `Debug` never shows the key or signature.
///
/// ```
/// use keyvault_invalidator_servicebus::ConnectionString;
///
/// let cs: ConnectionString = "Endpoint=sb://my-ns.servicebus.windows.net/;SharedAccessKeyName=listen;\
///     SharedAccessKey=c2VjcmV0;EntityPath=keyvault-events".parse()?;
/// assert_eq!(cs.namespace(), "my-ns.servicebus.windows.net");
/// assert_eq!(cs.entity_path(), Some("keyvault-events"));
/// assert_eq!(cs.amqp_url(), "amqps://my-ns.servicebus.windows.net:5671");
/// assert!(!format!("{cs:?}").contains("c2VjcmV0"));
/// # Ok::<(), keyvault_invalidator_servicebus::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct ConnectionString {
    host: String,
    port: Option<u16>,
    credential: SharedAccess,
    entity_path: Option<String>,
    development_emulator: bool,
}

/// How a connection string authorises.
#[derive(Clone)]
#[non_exhaustive]
pub enum SharedAccess {
    /// A shared access policy: tokens are signed with its key.
    Key {
        /// The policy name (`SharedAccessKeyName`).
        name: String,
        /// The key (`SharedAccessKey`).
        key: SecretString,
    },
    /// A ready-made token (`SharedAccessSignature`).
    Signature(SecretString),
}

impl ConnectionString {
    /// The namespace host, e.g. `my-ns.servicebus.windows.net`.
    pub fn namespace(&self) -> &str {
        &self.host
    }

    /// The topic named by `EntityPath`, if any.
    pub fn entity_path(&self) -> Option<&str> {
        self.entity_path.as_deref()
    }

    /// Whether this is an emulator connection string (plain AMQP).
    pub fn is_development_emulator(&self) -> bool {
        self.development_emulator
    }

    /// How it authorises.
    pub fn shared_access(&self) -> &SharedAccess {
        &self.credential
    }

    /// The AMQP address to connect to: `amqps://{host}:5671`, or `amqp://{host}:5672` for the
    /// emulator; an explicit port in the endpoint wins.
    pub fn amqp_url(&self) -> String {
        let (scheme, default_port) = if self.development_emulator {
            ("amqp", EMULATOR_AMQP_PORT)
        } else {
            ("amqps", AMQPS_PORT)
        };
        format!(
            "{scheme}://{}:{}",
            self.host,
            self.port.unwrap_or(default_port)
        )
    }
}

impl FromStr for ConnectionString {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const ARG: &str = "connection string";
        let (mut endpoint, mut key_name, mut key, mut signature, mut entity_path, mut emulator) =
            (None, None, None, None, None, false);
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                return Err(ConfigError::new(ARG, "every part must be `Name=value`"));
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "endpoint" => endpoint = Some(value.to_owned()),
                "sharedaccesskeyname" => key_name = Some(value.to_owned()),
                "sharedaccesskey" => key = Some(SecretString::from(value.to_owned())),
                "sharedaccesssignature" => signature = Some(SecretString::from(value.to_owned())),
                "entitypath" => entity_path = Some(value.to_owned()).filter(|v| !v.is_empty()),
                "usedevelopmentemulator" => emulator = value.eq_ignore_ascii_case("true"),
                // Other keys (TransportType, ...) do not change how we connect.
                _ => {}
            }
        }
        let endpoint = endpoint.ok_or_else(|| ConfigError::new(ARG, "has no `Endpoint`"))?;
        let (host, port) = parse_endpoint(&endpoint)?;
        let credential = match (key_name, key, signature) {
            (Some(name), Some(key), _) if !name.is_empty() && !key.expose_secret().is_empty() => {
                SharedAccess::Key { name, key }
            }
            (_, _, Some(signature)) if !signature.expose_secret().is_empty() => {
                SharedAccess::Signature(signature)
            }
            _ => {
                return Err(ConfigError::new(
                    ARG,
                    "needs `SharedAccessKeyName` and `SharedAccessKey`, or `SharedAccessSignature`",
                ))
            }
        };
        Ok(ConnectionString {
            host,
            port,
            credential,
            entity_path,
            development_emulator: emulator,
        })
    }
}

fn parse_endpoint(endpoint: &str) -> Result<(String, Option<u16>), ConfigError> {
    const ARG: &str = "connection string";
    let rest = ["sb://", "amqps://", "amqp://", "https://"]
        .iter()
        .find_map(|scheme| {
            endpoint
                .get(..scheme.len())
                .filter(|head| head.eq_ignore_ascii_case(scheme))
                .map(|_| &endpoint[scheme.len()..])
        })
        .ok_or_else(|| ConfigError::new(ARG, "`Endpoint` must start with sb://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .map_err(|_| ConfigError::new(ARG, "`Endpoint` has an invalid port"))?;
            (host, Some(port))
        }
        None => (authority, None),
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err(ConfigError::new(ARG, "`Endpoint` has no valid host name"));
    }
    Ok((host.to_ascii_lowercase(), port))
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credential = match &self.credential {
            SharedAccess::Key { name, .. } => format!("key of policy `{name}`"),
            SharedAccess::Signature(_) => "shared access signature".to_owned(),
        };
        f.debug_struct("ConnectionString")
            .field("namespace", &self.host)
            .field("port", &self.port)
            .field("credential", &credential)
            .field("entity_path", &self.entity_path)
            .field("development_emulator", &self.development_emulator)
            .finish()
    }
}

impl fmt::Debug for SharedAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SharedAccess::Key { name, .. } => f
                .debug_struct("Key")
                .field("name", name)
                .field("key", &"[redacted]")
                .finish(),
            SharedAccess::Signature(_) => f.write_str("Signature([redacted])"),
        }
    }
}
