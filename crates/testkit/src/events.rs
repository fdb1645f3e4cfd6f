//! Builders for Key Vault event payloads, in both schemas, with a switch for every quirk real
//! deliveries show.

use keyvault_invalidator_core::KeyVaultEventType;
use serde_json::{json, Map, Value};

/// How `NBF`/`EXP` are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeStyle {
    /// `1559081980`
    Number,
    /// `"1559081980"` (the documentation's samples)
    String,
    /// `null`
    Null,
    /// The keys are left out.
    Absent,
}

/// Builds one Key Vault event.
///
/// ```
/// use keyvault_invalidator_core::parse_events;
/// use keyvault_invalidator_testkit::KeyVaultEventBuilder;
///
/// let body = KeyVaultEventBuilder::secret_new_version("db-password")
///     .vault("my-kv")
///     .version("0123456789abcdef0123456789abcdef")
///     .camel_case_data()
///     .trailing_space_in_keys()
///     .cloud_event_bytes();
/// let events = parse_events(&body).unwrap();
/// assert_eq!(events[0].as_key_vault().unwrap().name.as_str(), "db-password");
/// ```
#[derive(Debug, Clone)]
pub struct KeyVaultEventBuilder {
    event_type: String,
    object_type: &'static str,
    collection: Option<&'static str>,
    name: String,
    vault: String,
    version: String,
    id: String,
    time: String,
    nbf: i64,
    exp: i64,
    time_style: TimeStyle,
    camel_case: bool,
    trailing_space_in_keys: bool,
    padded_values: bool,
    include_id_url: bool,
    include_object_name: bool,
    include_subject: bool,
    upper_case_envelope: bool,
}

impl KeyVaultEventBuilder {
    /// An event of `event_type` about the object `name`, in vault `sample-kv`.
    pub fn new(event_type: KeyVaultEventType, name: impl Into<String>) -> Self {
        let object_type = event_type.object_type();
        KeyVaultEventBuilder {
            event_type: event_type.as_str().to_owned(),
            object_type: object_type.as_str(),
            collection: match object_type.as_str() {
                "Secret" => Some("secrets"),
                "Key" => Some("keys"),
                "Certificate" => Some("certificates"),
                _ => None,
            },
            name: name.into(),
            vault: "sample-kv".to_owned(),
            version: "ee059b2bb5bc48398a53b168c6cdcb10".to_owned(),
            id: "00eccf70-95a7-4e7c-8299-2eb17ee9ad64".to_owned(),
            time: "2019-07-25T01:08:33.1036736Z".to_owned(),
            nbf: 1_559_081_980,
            exp: 1_559_082_102,
            time_style: TimeStyle::Number,
            camel_case: false,
            trailing_space_in_keys: false,
            padded_values: false,
            include_id_url: true,
            include_object_name: true,
            include_subject: true,
            upper_case_envelope: false,
        }
    }

    /// A `SecretNewVersionCreated` event about `name`.
    pub fn secret_new_version(name: impl Into<String>) -> Self {
        Self::new(KeyVaultEventType::SecretNewVersionCreated, name)
    }

    /// Any event type string, Key Vault's or not (the data stays Key Vault-shaped).
    pub fn raw_event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = event_type.into();
        self
    }

    /// The vault name (default `sample-kv`).
    pub fn vault(mut self, vault: impl Into<String>) -> Self {
        self.vault = vault.into();
        self
    }

    /// The object version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// The event id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// The event time (RFC 3339 text, written as given).
    pub fn time(mut self, time: impl Into<String>) -> Self {
        self.time = time.into();
        self
    }

    /// Stamps the event with the current time. The default time is the documentation sample's
    /// (2019), which a version-aware cache rightly reads as older than any version created
    /// since: use this for rotations that happen now.
    pub fn now(self) -> Self {
        self.time(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    }

    /// How `NBF`/`EXP` are written (default numbers).
    pub fn times(mut self, style: TimeStyle) -> Self {
        self.time_style = style;
        self
    }

    /// Data keys in camelCase (`vaultName`, `objectName`, `nbf`) instead of PascalCase.
    pub fn camel_case_data(mut self) -> Self {
        self.camel_case = true;
        self
    }

    /// A trailing space inside every data key (`"ObjectName "`), as the documentation's sample.
    pub fn trailing_space_in_keys(mut self) -> Self {
        self.trailing_space_in_keys = true;
        self
    }

    /// Spaces around every data value (`" ee05..."`), as the documentation's sample.
    pub fn padded_values(mut self) -> Self {
        self.padded_values = true;
        self
    }

    /// Leaves out `data.Id`, so name, vault and version come from the other fields.
    pub fn without_id_url(mut self) -> Self {
        self.include_id_url = false;
        self
    }

    /// Leaves out `data.ObjectName`.
    pub fn without_object_name(mut self) -> Self {
        self.include_object_name = false;
        self
    }

    /// Leaves out `subject`.
    pub fn without_subject(mut self) -> Self {
        self.include_subject = false;
        self
    }

    /// Upper-cases the envelope keys (`ID`, `EVENTTYPE`...).
    pub fn upper_case_envelope(mut self) -> Self {
        self.upper_case_envelope = true;
        self
    }

    /// The `data` object.
    pub fn data(&self) -> Value {
        let key = |pascal: &str| {
            let mut key = if self.camel_case {
                let mut chars = pascal.chars();
                match pascal {
                    "NBF" | "EXP" => pascal.to_ascii_lowercase(),
                    _ => chars
                        .next()
                        .map(|c| c.to_ascii_lowercase().to_string() + chars.as_str())
                        .unwrap_or_default(),
                }
            } else {
                pascal.to_owned()
            };
            if self.trailing_space_in_keys {
                key.push(' ');
            }
            key
        };
        let text = |value: &str| {
            if self.padded_values {
                Value::String(format!(" {value} "))
            } else {
                Value::String(value.to_owned())
            }
        };
        let time = |seconds: i64| match self.time_style {
            TimeStyle::Number => Some(json!(seconds)),
            TimeStyle::String => Some(json!(seconds.to_string())),
            TimeStyle::Null => Some(Value::Null),
            TimeStyle::Absent => None,
        };
        let mut data = Map::new();
        if self.include_id_url {
            let url = match self.collection {
                Some(collection) => format!(
                    "https://{}.vault.azure.net/{collection}/{}/{}",
                    self.vault, self.name, self.version
                ),
                None => format!("https://{}.vault.azure.net/", self.vault),
            };
            data.insert(key("Id"), text(&url));
        }
        data.insert(key("VaultName"), text(&self.vault));
        data.insert(key("ObjectType"), text(self.object_type));
        if self.include_object_name {
            data.insert(key("ObjectName"), text(&self.name));
        }
        if self.collection.is_some() {
            data.insert(key("Version"), text(&self.version));
        }
        if let Some(nbf) = time(self.nbf) {
            data.insert(key("NBF"), nbf);
        }
        if let Some(exp) = time(self.exp) {
            data.insert(key("EXP"), exp);
        }
        Value::Object(data)
    }

    fn topic(&self) -> String {
        format!(
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/sample-rg/providers/Microsoft.KeyVault/vaults/{}",
            self.vault
        )
    }

    fn envelope(&self, pairs: Vec<(&str, Value)>) -> Value {
        let map = pairs
            .into_iter()
            .filter(|(key, _)| self.include_subject || *key != "subject")
            .map(|(key, value)| {
                let key = if self.upper_case_envelope {
                    key.to_ascii_uppercase()
                } else {
                    key.to_owned()
                };
                (key, value)
            })
            .collect();
        Value::Object(map)
    }

    /// The event in Event Grid's schema.
    pub fn event_grid(&self) -> Value {
        self.envelope(vec![
            ("id", json!(self.id)),
            ("topic", json!(self.topic())),
            ("subject", json!(self.name)),
            ("eventType", json!(self.event_type)),
            ("eventTime", json!(self.time)),
            ("data", self.data()),
            ("dataVersion", json!("1")),
            ("metadataVersion", json!("1")),
        ])
    }

    /// The event in CloudEvents 1.0 structured JSON.
    pub fn cloud_event(&self) -> Value {
        self.envelope(vec![
            ("id", json!(self.id)),
            ("source", json!(self.topic())),
            ("subject", json!(self.name)),
            ("type", json!(self.event_type)),
            ("time", json!(self.time)),
            ("data", self.data()),
            ("specversion", json!("1.0")),
        ])
    }

    /// [`event_grid`](Self::event_grid) as bytes: what a Service Bus message body holds.
    pub fn event_grid_bytes(&self) -> Vec<u8> {
        to_bytes(&self.event_grid())
    }

    /// [`cloud_event`](Self::cloud_event) as bytes.
    pub fn cloud_event_bytes(&self) -> Vec<u8> {
        to_bytes(&self.cloud_event())
    }
}

/// Serialises a payload.
pub fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a serde_json::Value always serialises")
}

/// A JSON array of events: what a webhook batch holds.
pub fn batch(events: impl IntoIterator<Item = Value>) -> Vec<u8> {
    to_bytes(&Value::Array(events.into_iter().collect()))
}

/// Prefixes a UTF-8 byte-order mark.
pub fn with_bom(body: &[u8]) -> Vec<u8> {
    let mut out = b"\xEF\xBB\xBF".to_vec();
    out.extend_from_slice(body);
    out
}

/// An Event Grid subscription validation event, as a webhook's first POST carries it.
pub fn subscription_validation(code: &str) -> Value {
    json!({
        "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
        "topic": "/subscriptions/00000000-0000-0000-0000-000000000000",
        "subject": "",
        "data": {
            "validationCode": code,
            "validationUrl": "https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/sample/validate?id=0000&t=2026-01-01T00:00:00.0000000Z&apiVersion=2018-05-01-preview&token=1A1A1A1A"
        },
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "eventTime": "2026-01-01T00:00:00.0000000Z",
        "metadataVersion": "1",
        "dataVersion": "1"
    })
}

/// A well-formed event that is not from Key Vault (a blob creation).
pub fn storage_blob_created() -> Value {
    json!({
        "id": "831e1650-001e-001b-66ab-eeb76e069631",
        "topic": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/acct",
        "subject": "/blobServices/default/containers/c/blobs/b.txt",
        "eventType": "Microsoft.Storage.BlobCreated",
        "eventTime": "2026-01-01T00:00:00Z",
        "data": {"api": "PutBlockList", "contentLength": 524288},
        "dataVersion": "",
        "metadataVersion": "1"
    })
}
