//! Environment overrides: each variable sets one key of the file before it is read, so the
//! same checks (and unknown-key refusals) apply.

use crate::error::AgentError;

/// The variable holding the API token (a value, or `file://PATH`); read by
/// [`TokenSource`](super::TokenSource), never stored in the settings.
pub const TOKEN_ENV: &str = "KVI_AGENT_TOKEN";

/// How a variable's text becomes a TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// Taken as it is.
    Text,
    /// An unsigned integer.
    Integer,
    /// `true` or `false`.
    Boolean,
}

/// Every override: the variable, the key it sets (`section.key`), and its type.
pub const ENV_OVERRIDES: &[(&str, &str, ValueType)] = &[
    ("KVI_AGENT_LISTEN", "server.listen", ValueType::Text),
    (
        "KVI_AGENT_ALLOW_NON_LOOPBACK",
        "server.allow_non_loopback",
        ValueType::Boolean,
    ),
    ("KVI_AGENT_TOKEN_FILE", "server.token_file", ValueType::Text),
    (
        "KVI_AGENT_MAX_CONNECTIONS",
        "server.max_connections",
        ValueType::Integer,
    ),
    (
        "KVI_AGENT_MAX_WATCHERS",
        "server.max_watchers",
        ValueType::Integer,
    ),
    (
        "KVI_AGENT_REQUEST_TIMEOUT_SECS",
        "server.request_timeout_secs",
        ValueType::Integer,
    ),
    ("KVI_AGENT_VAULT_URL", "vault.url", ValueType::Text),
    ("KVI_AGENT_VAULT_NAME", "vault.name", ValueType::Text),
    (
        "KVI_AGENT_VAULT_CREDENTIAL",
        "vault.credential",
        ValueType::Text,
    ),
    (
        "KVI_AGENT_VAULT_CLIENT_ID",
        "vault.client_id",
        ValueType::Text,
    ),
    (
        "KVI_AGENT_VAULT_TIMEOUT_SECS",
        "vault.timeout_secs",
        ValueType::Integer,
    ),
    ("KVI_AGENT_CACHE_MODE", "cache.mode", ValueType::Text),
    (
        "KVI_AGENT_CACHE_TTL_SECS",
        "cache.ttl_secs",
        ValueType::Integer,
    ),
    (
        "KVI_AGENT_CACHE_MAX_STALENESS_SECS",
        "cache.max_staleness_secs",
        ValueType::Integer,
    ),
    (
        "KVI_AGENT_CACHE_CAPACITY",
        "cache.capacity",
        ValueType::Integer,
    ),
    (
        "KVI_AGENT_CACHE_JITTER_MS",
        "cache.jitter_ms",
        ValueType::Integer,
    ),
    (
        "KVI_AGENT_NAMES_KEY_SEPARATOR",
        "names.key_separator",
        ValueType::Text,
    ),
    (
        "KVI_AGENT_NAMES_VAULT_SEPARATOR",
        "names.vault_separator",
        ValueType::Text,
    ),
    ("KVI_AGENT_TRANSPORT", "transport.kind", ValueType::Text),
    (
        "KVI_AGENT_SERVICEBUS_REGISTRATION",
        "transport.registration",
        ValueType::Text,
    ),
    (
        "KVI_AGENT_SERVICEBUS_NAMESPACE",
        "transport.namespace",
        ValueType::Text,
    ),
    (
        "KVI_AGENT_SERVICEBUS_TOPIC",
        "transport.topic",
        ValueType::Text,
    ),
    (
        "KVI_AGENT_SERVICEBUS_CONNECTION_STRING_SECRET",
        "transport.connection_string_secret",
        ValueType::Text,
    ),
    ("KVI_AGENT_RABBITMQ_URI", "transport.uri", ValueType::Text),
    (
        "KVI_AGENT_EVENTGRID_ENDPOINT",
        "transport.endpoint",
        ValueType::Text,
    ),
    (
        "KVI_AGENT_EVENTGRID_TOPIC",
        "transport.topic",
        ValueType::Text,
    ),
    (
        "KVI_AGENT_EVENTGRID_SUBSCRIPTION",
        "transport.subscription",
        ValueType::Text,
    ),
    (
        "KVI_AGENT_EVENTGRID_ACCESS_KEY",
        "transport.access_key",
        ValueType::Text,
    ),
    (
        "KVI_AGENT_WEBHOOK_LISTEN",
        "transport.listen",
        ValueType::Text,
    ),
    (
        "KVI_AGENT_WEBHOOK_TLS_CERT_FILE",
        "transport.tls_cert_file",
        ValueType::Text,
    ),
    (
        "KVI_AGENT_WEBHOOK_TLS_KEY_FILE",
        "transport.tls_key_file",
        ValueType::Text,
    ),
    (
        "KVI_AGENT_WEBHOOK_PLAIN_HTTP",
        "transport.plain_http",
        ValueType::Boolean,
    ),
    (
        "KVI_AGENT_WEBHOOK_PLAIN_HTTP_ALLOWING_NON_LOOPBACK",
        "transport.plain_http_allowing_non_loopback",
        ValueType::Boolean,
    ),
    (
        "KVI_AGENT_WEBHOOK_SHARED_SECRET",
        "transport.shared_secret",
        ValueType::Text,
    ),
    (
        "KVI_AGENT_WEBHOOK_SECOND_SHARED_SECRET",
        "transport.second_shared_secret",
        ValueType::Text,
    ),
    (
        "KVI_AGENT_WEBHOOK_QUERY_PARAMETER",
        "transport.query_parameter",
        ValueType::Text,
    ),
    (
        "KVI_AGENT_WEBHOOK_ENTRA_TENANT",
        "transport.entra_tenant",
        ValueType::Text,
    ),
    (
        "KVI_AGENT_WEBHOOK_ENTRA_AUDIENCE",
        "transport.entra_audience",
        ValueType::Text,
    ),
    (
        "KVI_AGENT_WEBHOOK_WITHOUT_AUTHENTICATION",
        "transport.without_authentication",
        ValueType::Boolean,
    ),
];

/// Applies every variable `env` returns a value for; returns the names of those applied.
pub(crate) fn apply(
    table: &mut toml::Table,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<&'static str>, AgentError> {
    let mut applied = Vec::new();
    for &(variable, key, value_type) in ENV_OVERRIDES {
        let Some(text) = env(variable) else { continue };
        let value = parse(variable, &text, value_type)?;
        let (section, field) = key.split_once('.').unwrap_or(("", key));
        let section = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(section) = section.as_table_mut() else {
            return Err(AgentError::config(format!(
                "{variable} sets `{key}`, but `{}` in the file is not a table",
                key.split('.').next().unwrap_or(key)
            )));
        };
        section.insert(field.to_owned(), value);
        applied.push(variable);
    }
    Ok(applied)
}

fn parse(variable: &str, text: &str, value_type: ValueType) -> Result<toml::Value, AgentError> {
    match value_type {
        ValueType::Text => Ok(toml::Value::String(text.to_owned())),
        ValueType::Integer => text
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(toml::Value::Integer)
            .ok_or_else(|| {
                AgentError::config(format!(
                    "{variable}: `{text}` is not a non-negative integer"
                ))
            }),
        ValueType::Boolean => match text.trim() {
            "true" | "1" => Ok(toml::Value::Boolean(true)),
            "false" | "0" => Ok(toml::Value::Boolean(false)),
            _ => Err(AgentError::config(format!(
                "{variable}: `{text}` is not true or false"
            ))),
        },
    }
}
