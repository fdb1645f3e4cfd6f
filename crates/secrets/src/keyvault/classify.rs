//! Azure SDK errors to [`ProviderError`] kinds.

use std::time::Duration;

use azure_core::error::ErrorKind;
use azure_core::http::headers::{RETRY_AFTER, RETRY_AFTER_MS, X_MS_RETRY_AFTER_MS};
use azure_core::http::policies::get_retry_after;
use azure_core::http::RawResponse;
use azure_core::time::OffsetDateTime;
use keyvault_invalidator_core::{ProviderError, ProviderErrorKind};

/// Service messages are echoed into errors for diagnosis; a bound keeps a misbehaving proxy's
/// HTML page out of the logs.
const MAX_DETAIL: usize = 300;

/// Classifies an SDK error for the secret `name`.
///
/// | SDK error | kind |
/// |---|---|
/// | HTTP 401, 403 | `AccessDenied` (critical) |
/// | HTTP 404 | `NotFound` |
/// | HTTP 429 | `Throttled`, with the `Retry-After` (or `retry-after-ms`) given |
/// | HTTP 408, 5xx | `Transient` |
/// | other HTTP statuses | `Other` |
/// | connection, I/O | `Transient` |
/// | credential (no token) | `AccessDenied` (critical) |
/// | anything else, an unreadable answer | `Other` |
pub(crate) fn classify(name: &str, error: azure_core::Error) -> ProviderError {
    match error.kind() {
        ErrorKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } => {
            let status = u16::from(*status);
            let kind = match status {
                401 | 403 => ProviderErrorKind::AccessDenied,
                404 => ProviderErrorKind::NotFound,
                429 => ProviderErrorKind::Throttled {
                    retry_after: raw_response.as_deref().and_then(retry_after),
                },
                408 | 500..=599 => ProviderErrorKind::Transient,
                _ => ProviderErrorKind::Other,
            };
            let code = error_code.as_deref().unwrap_or("no error code");
            let message = format!(
                "Key Vault answered {status} ({code}): {}",
                bounded(&error.to_string())
            );
            // The SDK error is not attached: its message is already here, and its response is
            // not worth carrying around.
            ProviderError::new(name, kind, message)
        }
        ErrorKind::Connection | ErrorKind::Io => {
            let message = format!("could not reach Key Vault: {}", bounded(&chain(&error)));
            ProviderError::new(name, ProviderErrorKind::Transient, message).with_source(error)
        }
        ErrorKind::Credential => {
            let message = format!("could not get a token: {}", bounded(&chain(&error)));
            ProviderError::new(name, ProviderErrorKind::AccessDenied, message).with_source(error)
        }
        // Deserialization messages can quote the body, which holds the value: say nothing more.
        ErrorKind::DataConversion => ProviderError::new(
            name,
            ProviderErrorKind::Other,
            "could not read Key Vault's answer",
        ),
        _ => {
            let message = format!("Key Vault request failed: {}", bounded(&chain(&error)));
            ProviderError::new(name, ProviderErrorKind::Other, message).with_source(error)
        }
    }
}

fn retry_after(response: &RawResponse) -> Option<Duration> {
    let after = get_retry_after(
        response.headers(),
        OffsetDateTime::now_utc,
        &[X_MS_RETRY_AFTER_MS, RETRY_AFTER_MS, RETRY_AFTER],
    )?;
    let millis = u64::try_from(after.whole_milliseconds()).unwrap_or(0);
    Some(Duration::from_millis(millis))
}

/// The error's message and its causes': the SDK wraps errors with context ("will not be
/// retried") that hides the cause in `Display`.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut cause = error.source();
    while let Some(inner) = cause {
        let text = inner.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cause = inner.source();
    }
    parts.join(": ")
}

fn bounded(text: &str) -> String {
    match text.char_indices().nth(MAX_DETAIL) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}
