//! Validated Key Vault object and vault names.

use std::fmt;

/// The longest object name Key Vault accepts.
pub const MAX_OBJECT_NAME_LEN: usize = 127;

/// A Key Vault object name: 1-127 ASCII letters, digits and `-`.
///
/// Key Vault treats names without regard to case; so do [`ObjectName::eq_ignore_case`] and the
/// moka cache. `Display` and `as_str` keep the spelling the event used.
///
/// ```
/// use keyvault_invalidator_core::event::ObjectName;
///
/// let name = ObjectName::new("ServiceBus--ConnectionString")?;
/// assert_eq!(name.as_str(), "ServiceBus--ConnectionString");
/// assert!(ObjectName::new("has space").is_err());
/// # Ok::<(), keyvault_invalidator_core::event::InvalidObjectName>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectName(String);

impl ObjectName {
    /// Validates `name` (which must already be trimmed).
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidObjectName> {
        let name = name.into();
        validate(&name)?;
        Ok(ObjectName(name))
    }

    /// The name as the event spelled it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares two names the way Key Vault does: ASCII case-insensitively.
    pub fn eq_ignore_case(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }
}

fn validate(name: &str) -> Result<(), InvalidObjectName> {
    if name.is_empty() {
        return Err(InvalidObjectName::Empty);
    }
    // Count chars, not bytes, so the error reports what a person would count.
    let length = name.chars().count();
    if length > MAX_OBJECT_NAME_LEN {
        return Err(InvalidObjectName::TooLong { length });
    }
    if let Some(position) = name
        .chars()
        .position(|c| !(c.is_ascii_alphanumeric() || c == '-'))
    {
        return Err(InvalidObjectName::InvalidCharacter { position, length });
    }
    Ok(())
}

impl fmt::Debug for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ObjectName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for ObjectName {
    type Err = InvalidObjectName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ObjectName::new(s)
    }
}

/// Why a string is not a valid Key Vault object name.
///
/// The offending text itself is never part of the message: a malformed "name" may be anything,
/// including a value that should not reach a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidObjectName {
    /// The name is empty (or only whitespace).
    #[error("the name is empty")]
    Empty,
    /// Longer than 127 characters.
    #[error("the name is {length} characters long; Key Vault allows at most 127")]
    TooLong {
        /// Its length in characters.
        length: usize,
    },
    /// A character other than an ASCII letter, digit or `-`.
    #[error("character {position} of {length} is not an ASCII letter, digit or '-'")]
    InvalidCharacter {
        /// Zero-based position of the first bad character.
        position: usize,
        /// The name's length in characters.
        length: usize,
    },
}

/// Whether [`ObjectName::new`] would accept `name`, without building one.
pub(crate) fn is_valid_object_name(name: &str) -> bool {
    validate(name).is_ok()
}

/// Checks a vault name: 3-24 ASCII letters, digits and `-`.
pub(crate) fn is_valid_vault_name(name: &str) -> bool {
    (3..=24).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_whole_alphabet_and_the_limits() {
        assert!(ObjectName::new("a").is_ok());
        assert!(ObjectName::new("A-z-0-9").is_ok());
        assert!(ObjectName::new("x".repeat(127)).is_ok());
    }

    #[test]
    fn rejects_with_a_reason_that_does_not_echo_the_value() {
        assert_eq!(ObjectName::new(""), Err(InvalidObjectName::Empty));
        assert_eq!(
            ObjectName::new("x".repeat(128)),
            Err(InvalidObjectName::TooLong { length: 128 })
        );
        let err = ObjectName::new("db_password").unwrap_err();
        assert_eq!(
            err,
            InvalidObjectName::InvalidCharacter {
                position: 2,
                length: 11
            }
        );
        assert!(!err.to_string().contains("db_password"));
        assert!(matches!(
            ObjectName::new("naïve"),
            Err(InvalidObjectName::InvalidCharacter { position: 2, .. })
        ));
    }

    #[test]
    fn vault_names_are_three_to_twenty_four() {
        assert!(is_valid_vault_name("kv1"));
        assert!(!is_valid_vault_name("kv"));
        assert!(!is_valid_vault_name(&"k".repeat(25)));
        assert!(!is_valid_vault_name("my.vault"));
    }
}
