//! Namespace, topic and subscription names.

use rand::Rng;

use crate::error::{non_blank, ConfigError};

/// The suffix public-cloud namespaces share.
pub const NAMESPACE_SUFFIX: &str = ".servicebus.windows.net";
/// Service Bus's limit on subscription names.
pub const MAX_SUBSCRIPTION_NAME: usize = 50;
/// How much of a generated subscription name is random: enough that instances never collide.
const UNIQUE_LEN: usize = 12;

/// `my-ns` becomes `my-ns.servicebus.windows.net`; a fully qualified name (or one given as
/// `sb://host/`) is kept.
///
/// ```
/// use keyvault_invalidator_servicebus::fully_qualified_namespace;
/// assert_eq!(fully_qualified_namespace("my-ns")?, "my-ns.servicebus.windows.net");
/// assert_eq!(fully_qualified_namespace("sb://my-ns.servicebus.chinacloudapi.cn/")?, "my-ns.servicebus.chinacloudapi.cn");
/// assert!(fully_qualified_namespace("  ").is_err());
/// # Ok::<(), keyvault_invalidator_servicebus::ConfigError>(())
/// ```
pub fn fully_qualified_namespace(namespace: &str) -> Result<String, ConfigError> {
    let namespace = non_blank("namespace", namespace)?;
    let host = namespace
        .strip_prefix("sb://")
        .or_else(|| namespace.strip_prefix("https://"))
        .unwrap_or(namespace)
        .trim_end_matches('/');
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(ConfigError::new(
            "namespace",
            "must be a namespace name or host (letters, digits, '-' and '.')",
        ));
    }
    let host = host.to_ascii_lowercase();
    Ok(if host.contains('.') {
        host
    } else {
        format!("{host}{NAMESPACE_SUFFIX}")
    })
}

/// Checks a topic name.
pub fn check_topic(topic: &str) -> Result<&str, ConfigError> {
    let topic = non_blank("topic", topic)?;
    if topic.len() > 260 || topic.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::new(
            "topic",
            "must be at most 260 characters without spaces",
        ));
    }
    Ok(topic)
}

fn is_subscription_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// Checks a subscription name prefix: letters, digits, `.`, `-`, `_`, short enough that the
/// generated name keeps its 12 random characters within Service Bus's 50.
pub fn check_subscription_prefix(prefix: &str) -> Result<&str, ConfigError> {
    let prefix = non_blank("subscription name prefix", prefix)?;
    let room = MAX_SUBSCRIPTION_NAME - UNIQUE_LEN - 1;
    if prefix.len() > room || !prefix.chars().all(is_subscription_char) {
        return Err(ConfigError::new(
            "subscription name prefix",
            format!("must be at most {room} letters, digits, '.', '-' or '_'"),
        ));
    }
    Ok(prefix)
}

/// Checks the name of an existing subscription.
pub fn check_subscription_name(name: &str) -> Result<&str, ConfigError> {
    let name = non_blank("subscription name", name)?;
    if name.len() > MAX_SUBSCRIPTION_NAME || !name.chars().all(is_subscription_char) {
        return Err(ConfigError::new(
            "subscription name",
            "must be at most 50 letters, digits, '.', '-' or '_'",
        ));
    }
    Ok(name)
}

/// `{prefix}-{12 random hex digits}`, at most 50 characters. The prefix must have passed
/// [`check_subscription_prefix`].
pub fn generate_subscription_name(prefix: &str) -> String {
    let unique: u64 = rand::rng().random();
    let mut name = format!("{prefix}-{:012x}", unique & 0xffff_ffff_ffff);
    name.truncate(MAX_SUBSCRIPTION_NAME);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_fit_and_differ() {
        let prefix = "p".repeat(37);
        let (a, b) = (
            generate_subscription_name(&prefix),
            generate_subscription_name(&prefix),
        );
        assert_eq!(a.len(), 50);
        assert!(a.starts_with(&format!("{prefix}-")));
        assert_ne!(a, b);
        assert!(check_subscription_name(&a).is_ok());
    }

    #[test]
    fn prefixes_that_would_crowd_out_the_unique_part_are_refused() {
        assert!(check_subscription_prefix(&"p".repeat(37)).is_ok());
        let error = check_subscription_prefix(&"p".repeat(38)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid Service Bus setting `subscription name prefix`: must be at most 37 letters, digits, '.', '-' or '_'"
        );
        assert!(check_subscription_prefix("has space").is_err());
    }
}
