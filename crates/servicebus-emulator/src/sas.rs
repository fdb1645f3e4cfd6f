//! Checks shared access signatures the way the service does: a known policy, a signature that
//! matches its key, an expiry in the future, and an audience that covers the entity.
//!
//! An implementation of its own, independent of the client's signer, so a bug in one is not
//! mirrored by the other.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a token was refused (the emulator answers 401 either way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SasRejection {
    /// Not `SharedAccessSignature sr=..&sig=..&se=..&skn=..`.
    Malformed,
    /// `skn` names no policy the emulator knows.
    UnknownPolicy,
    /// `sig` does not match.
    BadSignature,
    /// `se` is in the past.
    Expired,
    /// `sr` does not cover the entity.
    WrongAudience,
}

/// Verifies `token` for `entity` (a URL or `host/path`, any scheme) at `now` (Unix seconds).
pub fn verify(
    token: &str,
    entity: &str,
    now: u64,
    key_for: impl Fn(&str) -> Option<String>,
) -> Result<(), SasRejection> {
    let fields = token
        .trim()
        .strip_prefix("SharedAccessSignature ")
        .ok_or(SasRejection::Malformed)?;
    let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
    for pair in fields.split('&') {
        match pair.split_once('=') {
            Some(("sr", v)) => sr = Some(v),
            Some(("sig", v)) => sig = Some(v),
            Some(("se", v)) => se = Some(v),
            Some(("skn", v)) => skn = Some(v),
            _ => {}
        }
    }
    let (Some(sr), Some(sig), Some(se), Some(skn)) = (sr, sig, se, skn) else {
        return Err(SasRejection::Malformed);
    };
    let expiry: u64 = se.parse().map_err(|_| SasRejection::Malformed)?;
    let key = key_for(&decode(skn)).ok_or(SasRejection::UnknownPolicy)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.as_bytes()).map_err(|_| SasRejection::Malformed)?;
    mac.update(format!("{sr}\n{expiry}").as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    if decode(sig) != expected {
        return Err(SasRejection::BadSignature);
    }
    if expiry <= now {
        return Err(SasRejection::Expired);
    }
    if !strip_scheme(&entity.to_ascii_lowercase())
        .starts_with(strip_scheme(&decode(sr).to_ascii_lowercase()).trim_end_matches('/'))
    {
        return Err(SasRejection::WrongAudience);
    }
    Ok(())
}

fn strip_scheme(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest)
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}
