//! Reading the query string and the secret name from the path, refusing what is not understood.

use std::borrow::Cow;

use hyper::{Response, StatusCode};

use super::response::{error, AgentBody};

/// The longest wait a long poll may ask for, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;

/// The most names one `/v1/watch` may watch.
pub const MAX_WATCHED_NAMES: usize = 32;

/// The longest name accepted in a path (Key Vault's are 127 at most; a name mapping may add a
/// little).
const MAX_NAME_LEN: usize = 256;

/// What `GET /v1/secrets/{name}` was asked.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SecretQuery {
    /// `?version=V`: that version.
    pub version: Option<String>,
    /// `?refresh=true`: from the vault, bypassing the cache.
    pub refresh: bool,
    /// `?after_version=V`: answer when the version differs from `V`.
    pub after_version: Option<String>,
    /// `?wait=S`: wait up to `S` seconds for that.
    pub wait_secs: Option<u64>,
}

type Refusal = Box<Response<AgentBody>>;

fn bad_request(code: &str, message: &str) -> Refusal {
    Box::new(error(StatusCode::BAD_REQUEST, code, message))
}

fn once(slot: &mut Option<String>, key: &str, value: Cow<'_, str>) -> Result<(), Refusal> {
    if slot.is_some() {
        return Err(bad_request(
            "invalid_query",
            &format!("query parameter `{key}` is given more than once"),
        ));
    }
    if value.is_empty() {
        return Err(bad_request(
            "invalid_query",
            &format!("query parameter `{key}` is empty"),
        ));
    }
    *slot = Some(value.into_owned());
    Ok(())
}

impl SecretQuery {
    /// Parses `query` (without the `?`), refusing unknown, repeated and conflicting parameters.
    pub fn parse(query: Option<&str>) -> Result<Self, Refusal> {
        let mut parsed = SecretQuery::default();
        let (mut refresh, mut wait) = (None, None);
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "version" => once(&mut parsed.version, "version", value)?,
                "after_version" => once(&mut parsed.after_version, "after_version", value)?,
                "refresh" => once(&mut refresh, "refresh", value)?,
                "wait" => once(&mut wait, "wait", value)?,
                other => {
                    return Err(bad_request(
                        "invalid_query",
                        &format!(
                            "unknown query parameter `{other}` (known: version, refresh, after_version, wait)"
                        ),
                    ))
                }
            }
        }
        parsed.refresh = match refresh.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                return Err(bad_request(
                    "invalid_query",
                    "query parameter `refresh` is true or false",
                ))
            }
        };
        if let Some(wait) = wait {
            let seconds = wait
                .parse::<u64>()
                .ok()
                .filter(|s| *s <= MAX_WAIT_SECS)
                .ok_or_else(|| {
                    bad_request(
                        "invalid_query",
                        &format!(
                            "query parameter `wait` is whole seconds from 0 to {MAX_WAIT_SECS}"
                        ),
                    )
                })?;
            parsed.wait_secs = Some(seconds);
        }
        parsed.check()?;
        Ok(parsed)
    }

    fn check(&self) -> Result<(), Refusal> {
        let conflict = |message: &str| Err(bad_request("invalid_query", message));
        if self.wait_secs.is_some() && self.after_version.is_none() {
            return conflict("`wait` needs `after_version`: the version the client already has");
        }
        if self.after_version.is_some() && (self.version.is_some() || self.refresh) {
            return conflict("`after_version` cannot be combined with `version` or `refresh`");
        }
        if self.version.is_some() && self.refresh {
            return conflict("`version` reads the vault already; drop `refresh`");
        }
        Ok(())
    }
}

/// The names of `GET /v1/watch?name=a&name=b`: 1 to [`MAX_WATCHED_NAMES`], distinct.
pub fn watched_names(query: Option<&str>) -> Result<Vec<String>, Refusal> {
    let mut names: Vec<String> = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if key != "name" {
            return Err(bad_request(
                "invalid_query",
                &format!("unknown query parameter `{key}` (known: name)"),
            ));
        }
        check_name(&value)?;
        if !names.iter().any(|n| n.eq_ignore_ascii_case(&value)) {
            names.push(value.into_owned());
        }
    }
    if names.is_empty() {
        return Err(bad_request(
            "invalid_query",
            "name at least one secret: /v1/watch?name=a&name=b",
        ));
    }
    if names.len() > MAX_WATCHED_NAMES {
        return Err(bad_request(
            "invalid_query",
            &format!("at most {MAX_WATCHED_NAMES} names per watch"),
        ));
    }
    Ok(names)
}

/// The secret name of a path segment, percent-decoded.
pub fn secret_name(segment: &str) -> Result<String, Refusal> {
    let name = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| bad_request("invalid_name", "the secret name is not UTF-8"))?;
    check_name(&name)?;
    Ok(name.into_owned())
}

fn check_name(name: &str) -> Result<(), Refusal> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name.contains('/')
        || name.chars().any(char::is_control)
    {
        return Err(bad_request(
            "invalid_name",
            &format!("a secret name is 1 to {MAX_NAME_LEN} characters, without `/` or control characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_parameter() {
        let query = SecretQuery::parse(Some("after_version=abc&wait=30")).unwrap();
        assert_eq!(query.after_version.as_deref(), Some("abc"));
        assert_eq!(query.wait_secs, Some(30));
        assert!(SecretQuery::parse(Some("refresh=true")).unwrap().refresh);
        assert_eq!(SecretQuery::parse(None).unwrap(), SecretQuery::default());
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for query in [
            "wait=61",
            "wait=-1",
            "wait=5",
            "refresh=yes",
            "version=a&version=b",
            "color=red",
            "after_version=a&refresh=true",
            "version=a&refresh=true",
            "version=",
        ] {
            let refusal = SecretQuery::parse(Some(query)).unwrap_err();
            assert_eq!(refusal.status(), StatusCode::BAD_REQUEST, "{query}");
        }
    }

    #[test]
    fn names_are_decoded_and_checked() {
        assert_eq!(secret_name("Db%3APassword").unwrap(), "Db:Password");
        assert!(secret_name("").is_err());
        assert!(secret_name("a%2Fb").is_err());
        assert!(secret_name("%FF").is_err());
        assert_eq!(
            watched_names(Some("name=a&name=b&name=A")).unwrap(),
            vec!["a", "b"]
        );
        assert!(watched_names(None).is_err());
        assert!(watched_names(Some("names=a")).is_err());
    }
}
