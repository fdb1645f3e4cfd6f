//! The Key Vault event: vault, object name and version read from `data` and the header, each
//! from the first source that has it, with a warning when a later source disagrees.

use std::borrow::Cow;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

use super::envelope::{lower_case_key, trim, trimmed_text, Header, LONGEST_FIELD_NAME};
use super::object_url::{read_object_url, vault_from_resource_path};
use crate::event::error::ParseErrorKind;
use crate::event::model::{KeyVaultEvent, KeyVaultEventType, ObjectType};
use crate::event::names::{is_valid_object_name, is_valid_vault_name, ObjectName};

/// The fields of Key Vault's `data` the parser reads.
#[derive(Debug, Clone, Copy)]
pub(super) enum DataField {
    Id,
    VaultName,
    ObjectName,
    Version,
    Nbf,
    Exp,
}

impl DataField {
    /// One past the last variant's index: keep `Exp` last.
    pub(super) const COUNT: usize = DataField::Exp as usize + 1;

    /// The field a trimmed, lower-cased key names, and the field's exact spelling.
    pub(super) fn named(key: &[u8]) -> Option<(DataField, &'static str)> {
        Some(match key {
            b"id" => (DataField::Id, "Id"),
            b"vaultname" => (DataField::VaultName, "VaultName"),
            b"objectname" => (DataField::ObjectName, "ObjectName"),
            b"version" => (DataField::Version, "Version"),
            b"nbf" => (DataField::Nbf, "NBF"),
            b"exp" => (DataField::Exp, "EXP"),
            _ => return None,
        })
    }
}

/// Key Vault's `data` fields, found in one pass with [`lookup`](super::lookup)'s rule: the exact
/// spelling first, else the first key in map order that matches trimmed and without regard to
/// case.
struct DataFields<'a> {
    exact: [Option<&'a Value>; DataField::COUNT],
    loose: [Option<&'a Value>; DataField::COUNT],
}

impl<'a> DataFields<'a> {
    fn read(data: &'a Value) -> Self {
        let mut fields = DataFields {
            exact: [None; DataField::COUNT],
            loose: [None; DataField::COUNT],
        };
        let mut buffer = [0; LONGEST_FIELD_NAME];
        for (key, value) in data.as_object().into_iter().flatten() {
            let named = lower_case_key(key, &mut buffer).and_then(DataField::named);
            if let Some((field, exact_spelling)) = named {
                let slots = if key == exact_spelling {
                    &mut fields.exact
                } else {
                    &mut fields.loose
                };
                slots[field as usize].get_or_insert(value);
            }
        }
        fields
    }

    fn get(&self, field: DataField) -> Option<&'a Value> {
        self.exact[field as usize].or(self.loose[field as usize])
    }

    fn text(&self, field: DataField) -> Option<Cow<'a, str>> {
        self.get(field).and_then(trimmed_text)
    }
}

pub(super) fn read_key_vault(
    header: &Header,
    event_type: KeyVaultEventType,
    data: &Value,
) -> Result<KeyVaultEvent, ParseErrorKind> {
    let fields = DataFields::read(data);
    let object_id = fields.text(DataField::Id);
    let url = object_id
        .as_deref()
        .and_then(read_object_url)
        .unwrap_or_default();
    let vault_name = fields.text(DataField::VaultName);
    let object_name = fields.text(DataField::ObjectName);
    let object_type = event_type.object_type();
    let warn = |what: &str, chosen: &str, other: &str, other_source: &str| {
        tracing::warn!(
            event_id = %header.id,
            "Key Vault event disagrees with itself on the {what}: using `{chosen}`, {other_source} says `{other}`"
        );
    };

    let vault_candidates = [
        ("data.Id", url.vault.as_deref()),
        ("data.VaultName", vault_name.as_deref()),
        (
            "topic/source",
            header.source.as_deref().and_then(vault_from_resource_path),
        ),
    ];
    let vault = first_agreeing(
        &vault_candidates,
        is_valid_vault_name,
        |chosen, other, source| warn("vault", chosen, other, source),
    );

    let name = if object_type == ObjectType::Vault {
        let candidates = [
            ("data.ObjectName", object_name.as_deref()),
            ("data.VaultName", vault_name.as_deref()),
            ("data.Id", vault),
            ("subject", header.subject.as_deref()),
        ];
        pick_name(event_type, &candidates)?
    } else {
        if let Some(url_type) = url.object_type.filter(|t| *t != object_type) {
            tracing::warn!(event_id = %header.id, "event type {event_type} names a {object_type}, but data.Id is a {url_type} URL");
        }
        let candidates = [
            ("data.Id", url.name.as_deref()),
            ("data.ObjectName", object_name.as_deref()),
            ("subject", header.subject.as_deref()),
        ];
        let name = pick_name(event_type, &candidates)?;
        for (source, other) in candidates {
            if let Some(other) = other {
                if !name.eq_ignore_case(other) && is_valid_object_name(other) {
                    warn("object name", name.as_str(), other, source);
                }
            }
        }
        name
    };

    let data_version = fields.text(DataField::Version);
    let version_candidates = [
        ("data.Id", url.version.as_deref()),
        ("data.Version", data_version.as_deref()),
    ];
    let version = first_agreeing(
        &version_candidates,
        is_plausible_version,
        |chosen, other, source| warn("version", chosen, other, source),
    );

    Ok(KeyVaultEvent {
        event_type,
        vault: vault.map(str::to_owned),
        object_type,
        name,
        version: version.map(str::to_owned),
        not_before: unix_time(header, fields.get(DataField::Nbf), "NBF"),
        expires: unix_time(header, fields.get(DataField::Exp), "EXP"),
        object_id: object_id.map(Cow::into_owned),
    })
}

/// The first candidate name present is the one used; if it is invalid the event is refused
/// rather than silently taking a weaker source.
fn pick_name(
    event_type: KeyVaultEventType,
    candidates: &[(&'static str, Option<&str>)],
) -> Result<ObjectName, ParseErrorKind> {
    let (field, text) = candidates
        .iter()
        .find_map(|(field, text)| text.map(|t| (*field, t)))
        .ok_or(ParseErrorKind::MissingObjectName {
            event_type: event_type.as_str(),
        })?;
    ObjectName::new(text).map_err(|reason| ParseErrorKind::InvalidObjectName { field, reason })
}

/// The first valid candidate wins; later valid ones that differ (ignoring case) are reported.
fn first_agreeing<'a>(
    candidates: &[(&'static str, Option<&'a str>)],
    valid: impl Fn(&str) -> bool,
    mut report: impl FnMut(&str, &str, &str),
) -> Option<&'a str> {
    let mut valid_ones = candidates
        .iter()
        .filter_map(|(source, text)| text.filter(|t| valid(t)).map(|t| (*source, t)));
    let (_, chosen) = valid_ones.next()?;
    for (source, other) in valid_ones {
        if !other.eq_ignore_ascii_case(chosen) {
            report(chosen, other, source);
        }
    }
    Some(chosen)
}

/// Key Vault versions are 32 hex digits; accept any short alphanumeric token.
fn is_plausible_version(version: &str) -> bool {
    (1..=64).contains(&version.len()) && version.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `NBF`/`EXP`: Unix seconds as a number or a string of digits, or null. Anything else is
/// ignored with a warning: a bad expiry must not cost the invalidation.
fn unix_time(header: &Header, value: Option<&Value>, field: &str) -> Option<DateTime<Utc>> {
    let seconds = match value? {
        Value::Null => return None,
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
        Value::String(s) if trim(s).is_empty() => return None,
        Value::String(s) => {
            let s = trim(s);
            s.parse::<i64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(|f| f as i64)
            })
        }
        _ => None,
    };
    let time = seconds.and_then(|s| Utc.timestamp_opt(s, 0).single());
    if time.is_none() {
        tracing::warn!(event_id = %header.id, "ignoring data.{field}: not a Unix time in seconds");
    }
    time
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::event::parse::event_grid;

    /// Data keys: the exact spelling wins; without it, the first spelling in map order.
    #[test]
    fn duplicate_data_keys_prefer_the_exact_spelling_then_map_order() {
        let event = event_grid(json!({
            "id": "1",
            "eventType": "Microsoft.KeyVault.SecretNewVersionCreated",
            "data": {
                "OBJECTNAME": "upper-name",
                "ObjectName": "exact-name",
                "VAULTNAME ": "upper-kv",
                " vaultname": "padded-kv",
                "Version": "v1",
                "version": "v2",
            },
        }));
        let kv = event.as_key_vault().unwrap();
        assert_eq!(kv.name.as_str(), "exact-name");
        assert_eq!(kv.vault.as_deref(), Some("padded-kv"));
        assert_eq!(kv.version.as_deref(), Some("v1"));
    }
}
