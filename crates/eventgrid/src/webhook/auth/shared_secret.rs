//! The shared secret in the endpoint URL's query string, compared in constant time.

use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::Refusal;

/// The accepted secrets, kept as SHA-256 digests: comparing digests of equal length in
/// constant time leaks neither the secret's content nor its length through timing, and the
/// process keeps no copy of the secret itself.
pub(crate) struct SharedSecrets {
    digests: Vec<[u8; 32]>,
    parameter: String,
}

fn digest(text: &[u8]) -> [u8; 32] {
    Sha256::digest(text).into()
}

impl SharedSecrets {
    pub(crate) fn new(secrets: &[SecretString], parameter: String) -> Self {
        SharedSecrets {
            digests: secrets
                .iter()
                .map(|secret| digest(secret.expose_secret().as_bytes()))
                .collect(),
            parameter,
        }
    }

    /// Passes when the query string's parameter (its first occurrence, percent-decoded)
    /// matches an accepted secret. Every accepted secret is compared, so the time taken does
    /// not say which matched.
    pub(crate) fn check(&self, query: Option<&str>) -> Result<(), Refusal> {
        let offered = query.and_then(|query| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(name, _)| *name == self.parameter)
                .map(|(_, value)| value)
        });
        let offered = offered.ok_or(Refusal::SecretMissing)?;
        let offered = digest(offered.as_bytes());
        let matched = self
            .digests
            .iter()
            .fold(subtle::Choice::from(0), |any, accepted| {
                any | accepted.ct_eq(&offered)
            });
        if bool::from(matched) {
            Ok(())
        } else {
            Err(Refusal::SecretWrong)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> SharedSecrets {
        SharedSecrets::new(
            &[SecretString::from("new one"), SecretString::from("old")],
            "code".to_owned(),
        )
    }

    #[test]
    fn either_accepted_secret_passes_percent_decoded() {
        assert_eq!(secrets().check(Some("code=new%20one")), Ok(()));
        assert_eq!(secrets().check(Some("x=1&code=old")), Ok(()));
    }

    #[test]
    fn missing_and_wrong_secrets_are_told_apart() {
        assert_eq!(secrets().check(None), Err(Refusal::SecretMissing));
        assert_eq!(
            secrets().check(Some("key=old")),
            Err(Refusal::SecretMissing)
        );
        assert_eq!(secrets().check(Some("code=ol")), Err(Refusal::SecretWrong));
        assert_eq!(secrets().check(Some("code=")), Err(Refusal::SecretWrong));
    }
}
