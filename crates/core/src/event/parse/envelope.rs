//! The envelope: the event object's fields, found in one pass over its keys, the header both
//! schemas share, and the Event Grid header.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::event::error::{json_kind, ParseErrorKind};
use crate::event::model::EventSchema;

/// How much of an event id an error message repeats.
const MAX_ID_IN_ERRORS: usize = 64;

/// The envelope fields both schemas share.
pub(super) struct Header {
    pub(super) id: String,
    pub(super) event_type: String,
    pub(super) subject: Option<String>,
    pub(super) source: Option<String>,
    pub(super) time: Option<DateTime<Utc>>,
    pub(super) schema: EventSchema,
}

/// The envelope attributes the parser reads, in both schemas. Their names are distinct without
/// regard to case, so a key names at most one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Id,
    Subject,
    Data,
    // Event Grid
    EventType,
    Topic,
    EventTime,
    // CloudEvents (1.0, and 0.3's `schemaurl` and `datacontentencoding`)
    SpecVersion,
    Type,
    Source,
    Time,
    DataContentType,
    DataSchema,
    DataBase64,
    SchemaUrl,
    DataContentEncoding,
}

impl Field {
    /// One past the last variant's index: keep `DataContentEncoding` last.
    const COUNT: usize = Field::DataContentEncoding as usize + 1;

    /// The field a trimmed, lower-cased key names.
    fn named(key: &[u8]) -> Option<Field> {
        Some(match key {
            b"id" => Field::Id,
            b"subject" => Field::Subject,
            b"data" => Field::Data,
            b"eventtype" => Field::EventType,
            b"topic" => Field::Topic,
            b"eventtime" => Field::EventTime,
            b"specversion" => Field::SpecVersion,
            b"type" => Field::Type,
            b"source" => Field::Source,
            b"time" => Field::Time,
            b"datacontenttype" => Field::DataContentType,
            b"dataschema" => Field::DataSchema,
            b"data_base64" => Field::DataBase64,
            b"schemaurl" => Field::SchemaUrl,
            b"datacontentencoding" => Field::DataContentEncoding,
            _ => return None,
        })
    }
}

/// The longest field name either table matches, `datacontentencoding`.
pub(super) const LONGEST_FIELD_NAME: usize = 19;

/// `key` trimmed and lower-cased (ASCII only) into `buffer`, or `None` when it is longer than
/// any field name. Matching the result against lower-case names is one comparison per key,
/// where comparing each key with each name without regard to case was a tenth of a parse.
pub(super) fn lower_case_key<'b>(
    key: &str,
    buffer: &'b mut [u8; LONGEST_FIELD_NAME],
) -> Option<&'b [u8]> {
    let key = trim(key).as_bytes();
    let lower = buffer.get_mut(..key.len())?;
    for (to, from) in lower.iter_mut().zip(key) {
        *to = from.to_ascii_lowercase();
    }
    Some(lower)
}

/// `str::trim`, without its Unicode decoding when the text starts and ends with a visible ASCII
/// character, as nearly every key and value does (then there is nothing to trim).
pub(super) fn trim(text: &str) -> &str {
    match (text.as_bytes().first(), text.as_bytes().last()) {
        (Some(first), Some(last)) if first.is_ascii_graphic() && last.is_ascii_graphic() => text,
        _ => text.trim(),
    }
}

/// The envelope's fields, borrowed from the parsed object, found in one pass over its keys
/// (rather than by rebuilding the object with lower-cased keys, which cost a tenth of a parse).
///
/// Keys are compared trimmed and without regard to ASCII case. Of several spellings of one field
/// (`id` and `ID`), the first in the object's iteration order wins: `serde_json`'s map is sorted
/// by key, so a padded spelling comes before an upper-case one, which comes before a lower-case
/// one. A field present with `null` counts as present (and so still shadows later spellings).
pub(super) struct Envelope<'a> {
    values: [Option<&'a Value>; Field::COUNT],
}

impl<'a> Envelope<'a> {
    pub(super) fn read(object: &'a Map<String, Value>) -> Self {
        let mut values = [None; Field::COUNT];
        let mut buffer = [0; LONGEST_FIELD_NAME];
        for (key, value) in object {
            let field = lower_case_key(key, &mut buffer).and_then(Field::named);
            if let Some(field) = field {
                values[field as usize].get_or_insert(value);
            }
        }
        Envelope { values }
    }

    pub(super) fn get(&self, field: Field) -> Option<&'a Value> {
        self.values[field as usize]
    }

    pub(super) fn has(&self, field: Field) -> bool {
        self.get(field).is_some()
    }

    /// The event id as error messages show it: at most 64 characters.
    pub(super) fn id_for_errors(&self) -> Option<String> {
        let id = self.get(Field::Id).and_then(trimmed_text)?;
        let mut shown: String = id.chars().take(MAX_ID_IN_ERRORS).collect();
        if shown.len() < id.len() {
            shown.push('…');
        }
        Some(shown)
    }

    pub(super) fn text(&self, field: Field) -> Option<Cow<'a, str>> {
        self.get(field).and_then(trimmed_text)
    }

    pub(super) fn required_text(
        &self,
        field: Field,
        name: &'static str,
    ) -> Result<Cow<'a, str>, ParseErrorKind> {
        match self.get(field) {
            None | Some(Value::Null) => Err(ParseErrorKind::MissingField { field: name }),
            Some(value @ (Value::String(_) | Value::Number(_))) => {
                trimmed_text(value).ok_or(ParseErrorKind::MissingField { field: name })
            }
            Some(other) => Err(ParseErrorKind::InvalidField {
                field: name,
                expected: "a string",
                found: json_kind(other),
            }),
        }
    }

    /// `data`, or `null` when absent.
    fn data(&self) -> Cow<'a, Value> {
        self.get(Field::Data)
            .map_or(Cow::Owned(Value::Null), Cow::Borrowed)
    }
}

pub(super) fn read_event_grid_event<'a>(
    envelope: &Envelope<'a>,
) -> Result<(Header, Cow<'a, Value>), ParseErrorKind> {
    let id = envelope.required_text(Field::Id, "id")?;
    let event_type = envelope.required_text(Field::EventType, "eventType")?;
    let header = Header {
        id: id.into_owned(),
        event_type: event_type.into_owned(),
        subject: envelope.text(Field::Subject).map(Cow::into_owned),
        source: envelope.text(Field::Topic).map(Cow::into_owned),
        time: envelope.text(Field::EventTime).and_then(|t| parse_time(&t)),
        schema: EventSchema::EventGrid,
    };
    Ok((header, envelope.data()))
}

/// A trimmed, non-empty string; numbers are read as their decimal text (names may be digits).
pub(super) fn trimmed_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(s) => Some(trim(s)).filter(|t| !t.is_empty()).map(Cow::Borrowed),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

pub(super) fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(trim(text))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::parse::event_grid;
    use crate::event::parse::key_vault_event::DataField;

    const TOPIC: &str =
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/topic-kv";

    /// Envelope keys are compared trimmed and without regard to case; of several spellings of one
    /// key, the first in the map's order (sorted: space < upper case < lower case) wins.
    #[test]
    fn duplicate_envelope_keys_take_the_first_spelling_in_map_order() {
        let event = event_grid(json!({
            "id": "lower",
            "ID": "upper",
            " id": "padded",
            "eventType": "Microsoft.KeyVault.SecretNewVersionCreated",
            "EVENTTYPE": "Microsoft.KeyVault.KeyExpired",
            "subject": "lower-subject",
            "Subject ": "padded-subject",
            "topic": TOPIC,
            "Topic": null,
            "data": {"ObjectName": "from-lower-data"},
            "DATA": {"ObjectName": "from-upper-data"},
        }));
        assert_eq!(event.id, "padded");
        assert_eq!(event.event_type, "Microsoft.KeyVault.KeyExpired");
        assert_eq!(event.subject.as_deref(), Some("padded-subject"));
        assert_eq!(event.source, None);
        let kv = event.as_key_vault().unwrap();
        assert_eq!(kv.name.as_str(), "from-upper-data");
        assert_eq!(kv.vault, None);
    }

    /// Every field name fits the key buffer and is found whatever its case and padding.
    #[test]
    fn every_field_name_is_found_trimmed_and_without_regard_to_case() {
        let envelope = [
            ("id", Field::Id),
            ("subject", Field::Subject),
            ("data", Field::Data),
            ("eventType", Field::EventType),
            ("topic", Field::Topic),
            ("eventTime", Field::EventTime),
            ("specversion", Field::SpecVersion),
            ("type", Field::Type),
            ("source", Field::Source),
            ("time", Field::Time),
            ("datacontenttype", Field::DataContentType),
            ("dataschema", Field::DataSchema),
            ("data_base64", Field::DataBase64),
            ("schemaurl", Field::SchemaUrl),
            ("datacontentencoding", Field::DataContentEncoding),
        ];
        assert_eq!(envelope.len(), Field::COUNT);
        let mut buffer = [0; LONGEST_FIELD_NAME];
        for (name, field) in envelope {
            for key in [name.to_owned(), format!(" {} ", name.to_ascii_uppercase())] {
                let found = lower_case_key(&key, &mut buffer).and_then(Field::named);
                assert_eq!(found, Some(field), "{key:?}");
            }
        }
        let data = ["Id", "VaultName", "ObjectName", "Version", "NBF", "EXP"];
        assert_eq!(data.len(), DataField::COUNT);
        for name in data {
            let key = format!("{} ", name.to_ascii_lowercase());
            let found = lower_case_key(&key, &mut buffer).and_then(DataField::named);
            assert_eq!(found.map(|(_, exact)| exact), Some(name), "{key:?}");
        }
        assert_eq!(lower_case_key("datacontentencodingX", &mut buffer), None);
    }
}
