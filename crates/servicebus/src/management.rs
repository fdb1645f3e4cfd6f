//! The management REST API's request bodies: Atom entries describing a subscription.

use std::fmt::Write;
use std::time::Duration;

use crate::error::ConfigError;

/// The REST API version the requests name.
pub const API_VERSION: &str = "2021-05";
/// Service Bus's smallest `AutoDeleteOnIdle`.
pub const MIN_AUTO_DELETE_ON_IDLE: Duration = Duration::from_secs(5 * 60);

/// What a subscription the source creates looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionProperties {
    /// How long a received message stays locked (default 60 s; Service Bus allows up to 5 min).
    pub lock_duration: Duration,
    /// Deliveries before Service Bus dead-letters by itself (default 10).
    pub max_delivery_count: u32,
    /// How long without a receiver before Service Bus deletes the subscription: the safety net
    /// for a crashed instance (default 1 hour; at least 5 minutes).
    pub auto_delete_on_idle: Duration,
}

impl Default for SubscriptionProperties {
    fn default() -> Self {
        SubscriptionProperties {
            lock_duration: Duration::from_secs(60),
            max_delivery_count: 10,
            auto_delete_on_idle: Duration::from_secs(3600),
        }
    }
}

impl SubscriptionProperties {
    /// Sets [`lock_duration`](Self::lock_duration).
    ///
    /// ```
    /// use std::time::Duration;
    /// use keyvault_invalidator_servicebus::SubscriptionProperties;
    ///
    /// let properties = SubscriptionProperties::default()
    ///     .with_lock_duration(Duration::from_secs(30))
    ///     .with_max_delivery_count(5)
    ///     .with_auto_delete_on_idle(Duration::from_secs(2 * 3600));
    /// assert!(properties.check().is_ok());
    /// ```
    pub fn with_lock_duration(mut self, lock_duration: Duration) -> Self {
        self.lock_duration = lock_duration;
        self
    }

    /// Sets [`max_delivery_count`](Self::max_delivery_count).
    pub fn with_max_delivery_count(mut self, max_delivery_count: u32) -> Self {
        self.max_delivery_count = max_delivery_count;
        self
    }

    /// Sets [`auto_delete_on_idle`](Self::auto_delete_on_idle).
    pub fn with_auto_delete_on_idle(mut self, auto_delete_on_idle: Duration) -> Self {
        self.auto_delete_on_idle = auto_delete_on_idle;
        self
    }

    /// Refuses values Service Bus would refuse.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.auto_delete_on_idle < MIN_AUTO_DELETE_ON_IDLE {
            return Err(ConfigError::new(
                "auto delete on idle",
                "must be at least 5 minutes",
            ));
        }
        if self.lock_duration < Duration::from_secs(5)
            || self.lock_duration > Duration::from_secs(300)
        {
            return Err(ConfigError::new(
                "lock duration",
                "must be between 5 seconds and 5 minutes",
            ));
        }
        if self.max_delivery_count == 0 {
            return Err(ConfigError::new("max delivery count", "must be at least 1"));
        }
        Ok(())
    }

    /// The Atom entry for `PUT https://{namespace}/{topic}/subscriptions/{name}`. Element order
    /// inside `SubscriptionDescription` matters to the service; these keep its order.
    pub fn to_atom_entry(&self) -> String {
        format!(
            concat!(
                r#"<entry xmlns="http://www.w3.org/2005/Atom"><content type="application/xml">"#,
                r#"<SubscriptionDescription xmlns:i="http://www.w3.org/2001/XMLSchema-instance" "#,
                r#"xmlns="http://schemas.microsoft.com/netservices/2010/10/servicebus/connect">"#,
                "<LockDuration>{lock}</LockDuration>",
                "<RequiresSession>false</RequiresSession>",
                "<DeadLetteringOnMessageExpiration>true</DeadLetteringOnMessageExpiration>",
                "<MaxDeliveryCount>{max}</MaxDeliveryCount>",
                "<AutoDeleteOnIdle>{idle}</AutoDeleteOnIdle>",
                "</SubscriptionDescription></content></entry>"
            ),
            lock = iso8601_duration(self.lock_duration),
            max = self.max_delivery_count,
            idle = iso8601_duration(self.auto_delete_on_idle),
        )
    }
}

/// An ISO 8601 duration as Service Bus writes them: `PT1H`, `PT5M`, `PT1M30S`, `P1DT2H`.
pub fn iso8601_duration(duration: Duration) -> String {
    let total = duration.as_secs();
    let (days, hours, minutes, seconds) = (
        total / 86_400,
        total / 3_600 % 24,
        total / 60 % 60,
        total % 60,
    );
    let mut out = String::from("P");
    if days > 0 {
        let _ = write!(out, "{days}D");
    }
    if hours + minutes + seconds > 0 || days == 0 {
        out.push('T');
        if hours > 0 {
            let _ = write!(out, "{hours}H");
        }
        if minutes > 0 {
            let _ = write!(out, "{minutes}M");
        }
        if seconds > 0 || (hours == 0 && minutes == 0) {
            let _ = write!(out, "{seconds}S");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_as_service_bus_writes_them() {
        let s = Duration::from_secs;
        assert_eq!(iso8601_duration(s(3600)), "PT1H");
        assert_eq!(iso8601_duration(s(300)), "PT5M");
        assert_eq!(iso8601_duration(s(90)), "PT1M30S");
        assert_eq!(iso8601_duration(s(0)), "PT0S");
        assert_eq!(iso8601_duration(s(86_400 + 7_200)), "P1DT2H");
        assert_eq!(iso8601_duration(s(86_400)), "P1D");
    }

    #[test]
    fn the_entry_keeps_the_services_element_order() {
        let xml = SubscriptionProperties::default().to_atom_entry();
        let order = [
            "LockDuration>PT1M<",
            "RequiresSession",
            "DeadLetteringOnMessageExpiration",
            "MaxDeliveryCount>10<",
            "AutoDeleteOnIdle>PT1H<",
        ];
        let positions: Vec<usize> = order
            .iter()
            .map(|e| xml.find(e).unwrap_or_else(|| panic!("{e} missing")))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{xml}");
    }

    #[test]
    fn values_the_service_refuses_are_refused_here() {
        let short = SubscriptionProperties {
            auto_delete_on_idle: Duration::from_secs(60),
            ..SubscriptionProperties::default()
        };
        assert_eq!(short.check().unwrap_err().argument, "auto delete on idle");
    }
}
