//! Configuration mistakes, named by the argument that holds them.

/// A registration argument that cannot work, caught before anything connects.
///
/// The message names the argument and never repeats a key or a connection string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Service Bus setting `{argument}`: {problem}")]
#[non_exhaustive]
pub struct ConfigError {
    /// The argument, as the registration names it (`topic`, `namespace`...).
    pub argument: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(argument: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            argument,
            problem: problem.into(),
        }
    }
}

/// Trims `value` and refuses it when blank.
pub(crate) fn non_blank<'a>(
    argument: &'static str,
    value: &'a str,
) -> Result<&'a str, ConfigError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ConfigError::new(argument, "must not be blank"));
    }
    Ok(value)
}
