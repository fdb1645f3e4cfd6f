//! [`FakeTokenCredential`], the token credential the stand-in accepts.
//!
//! Separate from the server because it is useful on its own: any test that needs an Azure SDK
//! client without a login can use it.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};

/// A [`TokenCredential`] that returns a fixed token (valid for an hour) without any login, and
/// counts the calls. `Debug` never shows the token.
///
/// ```
/// use azure_core::credentials::TokenCredential;
/// use keyvault_invalidator_testkit::keyvault_standin::FakeTokenCredential;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let credential = FakeTokenCredential::new("t0ken");
/// let token = credential.get_token(&["https://vault.azure.net/.default"], None).await.unwrap();
/// assert_eq!(token.token.secret(), "t0ken");
/// assert_eq!(credential.calls(), 1);
/// assert!(!format!("{credential:?}").contains("t0ken"));
/// # }
/// ```
pub struct FakeTokenCredential {
    token: Option<String>,
    calls: AtomicUsize,
    scopes: Mutex<Vec<String>>,
}

impl FakeTokenCredential {
    /// A credential that always returns `token`.
    pub fn new(token: impl Into<String>) -> Self {
        FakeTokenCredential {
            token: Some(token.into()),
            calls: AtomicUsize::new(0),
            scopes: Mutex::new(Vec::new()),
        }
    }

    /// A credential that always fails, as when no identity is available.
    pub fn failing() -> Self {
        FakeTokenCredential {
            token: None,
            calls: AtomicUsize::new(0),
            scopes: Mutex::new(Vec::new()),
        }
    }

    /// How many tokens were asked for.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The scopes of the last request for a token.
    pub fn last_scopes(&self) -> Vec<String> {
        self.scopes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl fmt::Debug for FakeTokenCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeTokenCredential")
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("calls", &self.calls())
            .finish()
    }
}

#[async_trait]
impl TokenCredential for FakeTokenCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.scopes.lock().unwrap_or_else(|p| p.into_inner()) =
            scopes.iter().map(|s| (*s).to_owned()).collect();
        match &self.token {
            Some(token) => Ok(AccessToken::new(
                token.clone(),
                azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
            )),
            None => Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                "FakeTokenCredential: no identity is available (scripted failure)",
            )),
        }
    }
}
