//! The typed model of the events the parser returns.

use std::fmt;

use chrono::{DateTime, Utc};

use super::names::ObjectName;

/// The envelope an event arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventSchema {
    /// Event Grid's own schema (`eventType`, `topic`, `eventTime`, `dataVersion`).
    EventGrid,
    /// CloudEvents 1.0 in structured JSON mode (`type`, `source`, `time`, `specversion`).
    CloudEvents,
}

impl EventSchema {
    /// A short lower-case name, for logs and tools.
    pub fn as_str(self) -> &'static str {
        match self {
            EventSchema::EventGrid => "eventgrid",
            EventSchema::CloudEvents => "cloudevents",
        }
    }
}

/// One event taken from a payload, whatever its type.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event's `id` (trimmed).
    pub id: String,
    /// The full event type string as it arrived (trimmed), e.g.
    /// `Microsoft.KeyVault.SecretNewVersionCreated`.
    pub event_type: String,
    /// `subject`, when present.
    pub subject: Option<String>,
    /// `topic` (Event Grid) or `source` (CloudEvents), when present.
    pub source: Option<String>,
    /// `eventTime` / `time`, when present and valid RFC 3339.
    pub time: Option<DateTime<Utc>>,
    /// The envelope the event arrived in.
    pub schema: EventSchema,
    /// What the event is about.
    pub kind: EventKind,
}

impl Event {
    /// The Key Vault part of the event, if it is one.
    pub fn as_key_vault(&self) -> Option<&KeyVaultEvent> {
        match &self.kind {
            EventKind::KeyVault(kv) => Some(kv),
            _ => None,
        }
    }
}

/// What an [`Event`] is about.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// One of the ten Key Vault event types.
    KeyVault(KeyVaultEvent),
    /// Event Grid's `Microsoft.EventGrid.SubscriptionValidationEvent`: a webhook endpoint must
    /// answer it; a queue-based job has nothing to do with it.
    SubscriptionValidation(SubscriptionValidation),
    /// Event Grid's `Microsoft.EventGrid.SubscriptionDeletedEvent`.
    SubscriptionDeleted {
        /// `data.eventSubscriptionId`, when present.
        event_subscription_id: Option<String>,
    },
    /// A well-formed event that is not from Key Vault. The job ignores it.
    NotKeyVault,
}

/// The data of an Event Grid subscription validation event.
#[derive(Clone, PartialEq, Eq)]
pub struct SubscriptionValidation {
    /// `data.validationCode`: echo it back as `{"validationResponse": code}`.
    pub validation_code: Option<String>,
    /// `data.validationUrl`: the manual handshake URL.
    pub validation_url: Option<String>,
}

impl fmt::Debug for SubscriptionValidation {
    // The code and URL are a one-time credential for the Event Grid subscription: keep them out
    // of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionValidation")
            .field(
                "validation_code",
                &self.validation_code.as_ref().map(|_| "[redacted]"),
            )
            .field(
                "validation_url",
                &self.validation_url.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// A Key Vault event: which object in which vault, and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVaultEvent {
    /// What happened.
    pub event_type: KeyVaultEventType,
    /// The vault name (from the `Id` URL, else `VaultName`, else the topic/source path).
    pub vault: Option<String>,
    /// Secret, key, certificate or the vault itself.
    pub object_type: ObjectType,
    /// The object's name (from the `Id` URL, else `ObjectName`, else `subject`).
    pub name: ObjectName,
    /// The object version, when the event names one.
    pub version: Option<String>,
    /// `data.Id`, the object URL, when present.
    pub object_id: Option<String>,
    /// `data.NBF`: not valid before.
    pub not_before: Option<DateTime<Utc>>,
    /// `data.EXP`: expiry.
    pub expires: Option<DateTime<Utc>>,
}

/// The kinds of object a Key Vault event can be about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ObjectType {
    /// A secret (`/secrets/...`).
    Secret,
    /// A key (`/keys/...`).
    Key,
    /// A certificate (`/certificates/...`).
    Certificate,
    /// The vault itself (access policy changes).
    Vault,
}

impl ObjectType {
    /// `Secret`, `Key`, `Certificate` or `Vault`, as Key Vault spells them in `ObjectType`.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectType::Secret => "Secret",
            ObjectType::Key => "Key",
            ObjectType::Certificate => "Certificate",
            ObjectType::Vault => "Vault",
        }
    }

    /// The collection segment of an object URL (`secrets`, `keys`, `certificates`), without
    /// regard to ASCII case. Compared in place: lower-casing into a new string allocated on
    /// every event.
    pub(crate) fn from_collection(segment: &str) -> Option<Self> {
        [
            ("secrets", ObjectType::Secret),
            ("keys", ObjectType::Key),
            ("certificates", ObjectType::Certificate),
        ]
        .into_iter()
        .find(|(collection, _)| segment.eq_ignore_ascii_case(collection))
        .map(|(_, object_type)| object_type)
    }
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! key_vault_event_types {
    ($($variant:ident => $object:ident, $doc:literal;)*) => {
        /// The ten event types Azure Key Vault publishes to Event Grid.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum KeyVaultEventType {
            $(#[doc = $doc] $variant,)*
        }

        impl KeyVaultEventType {
            /// Every Key Vault event type.
            pub const ALL: [KeyVaultEventType; 10] = [$(KeyVaultEventType::$variant,)*];

            /// The full type string, e.g. `Microsoft.KeyVault.SecretNewVersionCreated`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(KeyVaultEventType::$variant => concat!("Microsoft.KeyVault.", stringify!($variant)),)*
                }
            }

            /// The kind of object events of this type are about.
            pub fn object_type(self) -> ObjectType {
                match self {
                    $(KeyVaultEventType::$variant => ObjectType::$object,)*
                }
            }
        }
    };
}

key_vault_event_types! {
    SecretNewVersionCreated => Secret, "A secret got a new version: the event that invalidates caches.";
    SecretNearExpiry => Secret, "A secret's current version expires in 30 days.";
    SecretExpired => Secret, "A secret's current version expired.";
    KeyNewVersionCreated => Key, "A key got a new version.";
    KeyNearExpiry => Key, "A key's current version expires in 30 days.";
    KeyExpired => Key, "A key's current version expired.";
    CertificateNewVersionCreated => Certificate, "A certificate got a new version.";
    CertificateNearExpiry => Certificate, "A certificate's current version expires in 30 days.";
    CertificateExpired => Certificate, "A certificate's current version expired.";
    VaultAccessPolicyChanged => Vault, "The vault's access policy changed.";
}

impl KeyVaultEventType {
    /// Recognises a type string: the `Microsoft.KeyVault.` prefix and the name are matched
    /// without regard to ASCII case, after trimming.
    pub fn parse(type_string: &str) -> Option<Self> {
        let trimmed = type_string.trim();
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(trimmed))
    }
}

impl fmt::Display for KeyVaultEventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KeyVaultEventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or(UnknownEventType)
    }
}

/// The string is not one of the ten Key Vault event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a Key Vault event type (expected `Microsoft.KeyVault.<Name>`)")]
pub struct UnknownEventType;

/// Event Grid's subscription validation event type.
pub const SUBSCRIPTION_VALIDATION_EVENT: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";
/// Event Grid's subscription deletion event type.
pub const SUBSCRIPTION_DELETED_EVENT: &str = "Microsoft.EventGrid.SubscriptionDeletedEvent";
