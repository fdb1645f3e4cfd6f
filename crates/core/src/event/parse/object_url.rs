//! The object URL in `data.Id` and the resource path in `topic`/`source`.

use std::borrow::Cow;

use super::envelope::trim;
use crate::event::model::ObjectType;
use crate::event::names::is_valid_vault_name;

/// What the `Id` URL says: `https://{vault}.vault.azure.net/{collection}/{name}/{version}`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ObjectUrl<'a> {
    pub(super) vault: Option<Cow<'a, str>>,
    pub(super) object_type: Option<ObjectType>,
    pub(super) name: Option<Cow<'a, str>>,
    pub(super) version: Option<Cow<'a, str>>,
}

impl ObjectUrl<'_> {
    fn into_owned(self) -> ObjectUrl<'static> {
        let owned = |text: Option<Cow<'_, str>>| text.map(|t| Cow::Owned(t.into_owned()));
        ObjectUrl {
            vault: owned(self.vault),
            object_type: self.object_type,
            name: owned(self.name),
            version: owned(self.version),
        }
    }
}

/// Reads an object URL: the plain shape every Key Vault event uses directly, anything else
/// through the `url` crate.
///
/// Why the plain reader exists: `url::Url::parse` was 15% of parsing an Event Grid sample. Why
/// it changes nothing: it accepts only text that `url` would leave exactly as it is (a
/// lower-case `https` scheme, a host of lower-case letter-digit-hyphen labels that is not
/// punycode and cannot be read as an IPv4 address, path segments of letters, digits and `-`, no
/// userinfo, port, query, fragment, percent sign, backslash or dot segment), so host and
/// segments are the ones `url` would give. All other text goes to `url`, as before; a unit
/// test compares both readers on generated URLs.
pub(super) fn read_object_url(text: &str) -> Option<ObjectUrl<'_>> {
    plain_object_url(text).or_else(|| parsed_object_url(text))
}

/// The longest text the plain reader takes, far below the 4 GB `url` refuses.
const MAX_PLAIN_URL_LEN: usize = 4096;

/// `https://{host}[/{segment}...]` in the plain shape, or `None` to let `url` decide.
fn plain_object_url(text: &str) -> Option<ObjectUrl<'_>> {
    if text.len() > MAX_PLAIN_URL_LEN {
        return None;
    }
    let rest = text.strip_prefix("https://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let plain_path = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'/');
    if !plain_path || !is_plain_host(host) {
        return None;
    }
    // `url` gives `https://host` the path `/`, whose one segment is empty, as `"".split('/')`.
    Some(object_url_parts(host, pieces(path, b'/')))
}

/// Dot-separated labels of lower-case letters, digits and inner single hyphens (so never `xn--`
/// punycode), the last starting with a letter (so never an IPv4 address such as `1.2.3.4`,
/// `0x7f.1` or `10`). `url` keeps such a host exactly as written.
fn is_plain_host(host: &str) -> bool {
    let mut last_label = "";
    for label in pieces(host, b'.') {
        if !is_plain_label(label) {
            return false;
        }
        last_label = label;
    }
    last_label.starts_with(|c: char| c.is_ascii_lowercase())
}

/// A label of lower-case letters, digits and single hyphens inside it.
fn is_plain_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !label.is_empty()
        && !label.starts_with('-')
        && !label.ends_with('-')
        && !bytes.windows(2).any(|pair| pair == b"--")
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Any URL, through the `url` crate.
fn parsed_object_url(text: &str) -> Option<ObjectUrl<'static>> {
    let url = url::Url::parse(text).ok()?;
    let host = url.host_str()?;
    Some(object_url_parts(host, url.path_segments()?).into_owned())
}

fn object_url_parts<'a>(host: &'a str, segments: impl Iterator<Item = &'a str>) -> ObjectUrl<'a> {
    let mut parts = ObjectUrl {
        vault: host
            .split_once('.')
            .map(|(label, _)| label)
            .filter(|label| is_valid_vault_name(label))
            .map(Cow::Borrowed),
        ..ObjectUrl::default()
    };
    // Name and version are positional after the collection: an empty segment (`secrets//v1`)
    // means "no name", not "the next segment is the name".
    let mut segments = segments.skip_while(|s| s.is_empty());
    if let Some(collection) = segments.next() {
        parts.object_type = ObjectType::from_collection(collection);
        if parts.object_type.is_some() {
            let mut next = || segments.next().filter(|s| !s.is_empty()).map(Cow::Borrowed);
            parts.name = next();
            parts.version = next();
        }
    }
    parts
}

/// `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{vault}`.
pub(super) fn vault_from_resource_path(path: &str) -> Option<&str> {
    // Anchored on `Microsoft.KeyVault/vaults`: a resource group may itself be named `vaults`.
    let (mut second_last, mut last) = ("", "");
    for segment in pieces(path, b'/').map(trim) {
        if second_last.eq_ignore_ascii_case("Microsoft.KeyVault")
            && last.eq_ignore_ascii_case("vaults")
        {
            return Some(segment);
        }
        (second_last, last) = (last, segment);
    }
    None
}

/// `text.split(separator)` for an ASCII separator. `str::split` finds each piece's end with
/// `memchr`, whose set-up costs more than scanning the few bytes of a path segment or host label
/// (splitting was 7% of a parse).
fn pieces(text: &str, separator: u8) -> impl Iterator<Item = &str> {
    debug_assert!(separator.is_ascii());
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.bytes().position(|b| b == separator) {
            // An ASCII byte is a whole character: both slices end on character boundaries.
            Some(end) => {
                rest = Some(&current[end + 1..]);
                Some(&current[..end])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::test_runner::Config;

    use super::*;

    #[test]
    fn plain_object_urls_are_read_without_the_url_crate() {
        let plain = [
            "https://sample-kv.vault.azure.net/secrets/newsecret/ee059b2bb5bc48398a53b168c6cdcb10",
            "https://sample-kv.vault.azure.net/keys/k1",
            "https://sample-kv.vault.azure.net/Certificates/C-1/v1/extra",
            "https://sample-kv.vault.azure.net",
            "https://sample-kv.vault.azure.net/",
            "https://sample-kv.vault.azure.net//secrets/x",
            "https://sample-kv.vault.azure.net/secrets//v1",
            "https://sample-kv.vault.azure.net/secrets/x/",
            "https://kv.example/other/x",
            "https://a1.b-c.d",
        ];
        for text in plain {
            let fast = plain_object_url(text);
            assert!(fast.is_some(), "{text}");
            assert_eq!(fast, parsed_object_url(text), "{text}");
        }
    }

    #[test]
    fn unusual_object_urls_are_left_to_the_url_crate() {
        let unusual = [
            "HTTPS://sample-kv.vault.azure.net/secrets/x",
            "http://sample-kv.vault.azure.net/secrets/x",
            "https://Sample-KV.vault.azure.net/secrets/x",
            "https://sample-kv.vault.azure.net:443/secrets/x",
            "https://user@sample-kv.vault.azure.net/secrets/x",
            "https://sample-kv.vault.azure.net/secrets/x?api-version=7.4",
            "https://sample-kv.vault.azure.net/secrets/x#v",
            "https://sample-kv.vault.azure.net/secrets/%78",
            "https://sample-kv.vault.azure.net/secrets/./x",
            "https://sample-kv.vault.azure.net/secrets/../keys/x",
            "https://sample-kv.vault.azure.net\\secrets\\x",
            "https://sample-kv.vault.azure.net/secrets/db_password",
            "https://sample-kv.vault.azure.net/secrets/na\tme",
            "https://xn--nxasmq6b.example/secrets/x",
            "https://a--b.example/secrets/x",
            "https://-kv.example/secrets/x",
            "https://kv-.example/secrets/x",
            "https://sample-kv.vault.azure.net./secrets/x",
            "https://sample-kv..net/secrets/x",
            "https://1.2.3.4/secrets/x",
            "https://kv.0x7f/secrets/x",
            "https://kv.123/secrets/x",
            "https://[::1]/secrets/x",
            "https://ſample-kv.vault.azure.net/secrets/x",
            " https://sample-kv.vault.azure.net/secrets/x",
            "https://",
            "https:///secrets/x",
        ];
        for text in unusual {
            assert_eq!(plain_object_url(text), None, "{text}");
            assert_eq!(read_object_url(text), parsed_object_url(text), "{text}");
        }
    }

    fn config(cases: u32) -> Config {
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        }
    }

    /// Host labels, plain and not: case, punycode, hyphens, numbers (IPv4 in decimal, octal and
    /// hex), IPv6, percent signs, non-ASCII that IDNA maps, empty labels.
    const LABELS: &[&str] = &[
        "sample-kv",
        "kv1",
        "vault",
        "azure",
        "net",
        "a",
        "z9",
        "my-kv-2",
        "KV",
        "Kv",
        "xn--nxasmq6b",
        "xn--a",
        "xn--",
        "-kv",
        "kv-",
        "a--b",
        "ab-c",
        "1",
        "09",
        "0x7f",
        "0X1",
        "123",
        "1a",
        "0",
        "",
        "k_v",
        "k%41",
        "%",
        "[::1]",
        "[",
        "ſ",
        "ß",
        "é",
        "\u{ad}",
        "ｋｖ",
        "k v",
        "k\tv",
        "k:1",
        "k@v",
        "localhost",
    ];

    /// Path segments, plain and not: dot segments (also percent-encoded), characters `url`
    /// encodes, removes or treats as delimiters.
    const SEGMENTS: &[&str] = &[
        "secrets",
        "keys",
        "certificates",
        "Secrets",
        "KEYS",
        "other",
        "",
        "name",
        "db-password",
        "Db-Password-2",
        "ee059b2bb5bc48398a53b168c6cdcb10",
        ".",
        "..",
        "%2e",
        "%2E%2e",
        ".x",
        "a b",
        "a%20b",
        "x?y",
        "x#y",
        "é",
        "\\",
        "a\\b",
        "db_password",
        "\t",
        "a\nb",
        ";",
        "@",
        "a:b",
        "~",
        "{x}",
        "\"",
    ];

    fn object_url_text() -> impl Strategy<Value = String> {
        let scheme = prop::sample::select(vec![
            "https://",
            "https://",
            "https://",
            "HTTPS://",
            "Https://",
            "http://",
            "https:/",
            "https:///",
            "https:\\\\",
            "https://user@",
            "https://u:p@",
            "ftp://",
            "",
        ]);
        let host = prop::collection::vec(prop::sample::select(LABELS), 1..5);
        let port = prop::sample::select(vec!["", "", "", ":443", ":8080", ":"]);
        let path = prop::collection::vec(
            (
                prop::sample::select(vec!["/", "/", "/", "\\", "//"]),
                prop::sample::select(SEGMENTS),
            ),
            0..5,
        );
        let suffix = prop::sample::select(vec!["", "", "", "/", "?q=1", "#f", "?", "#", " "]);
        (scheme, host, port, path, suffix).prop_map(|(scheme, host, port, path, suffix)| {
            let path: String = path
                .into_iter()
                .map(|(sep, seg)| format!("{sep}{seg}"))
                .collect();
            format!("{scheme}{}{port}{path}{suffix}", host.join("."))
        })
    }

    fn plain_object_url_text() -> impl Strategy<Value = String> {
        let label = "[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?";
        let host = (prop::collection::vec(label, 0..3), "[a-z][a-z0-9]{0,4}")
            .prop_map(|(labels, last)| {
                labels
                    .into_iter()
                    .chain([last])
                    .collect::<Vec<_>>()
                    .join(".")
            })
            .prop_filter("no double hyphen", |host| !host.contains("--"));
        let path = prop::collection::vec("[a-zA-Z0-9-]{0,8}", 0..5);
        (host, path).prop_map(|(host, path)| {
            let path: String = path.iter().map(|segment| format!("/{segment}")).collect();
            format!("https://{host}{path}")
        })
    }

    proptest! {
        #![proptest_config(config(4096))]

        /// Whatever the text, reading it gives what `url` gives.
        #[test]
        fn object_urls_read_as_the_url_crate_reads_them(text in object_url_text()) {
            prop_assert_eq!(read_object_url(&text), parsed_object_url(&text), "{}", text);
        }

        #[test]
        fn any_text_reads_as_the_url_crate_reads_it(
            text in prop_oneof![
                "https://[a-zA-Z0-9:/.%@#?\\\\_ \\t\\[\\]-]{0,40}",
                ".{0,60}",
            ]
        ) {
            prop_assert_eq!(read_object_url(&text), parsed_object_url(&text), "{}", text);
        }

        /// The plain shape takes the fast path, and gives what `url` gives.
        #[test]
        fn plain_object_urls_take_the_fast_path(text in plain_object_url_text()) {
            let fast = plain_object_url(&text);
            prop_assert!(fast.is_some(), "{}", text);
            prop_assert_eq!(fast, parsed_object_url(&text), "{}", text);
        }
    }
}
