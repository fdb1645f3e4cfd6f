//! What a simulation run is given: the scenario's configuration ([`SimConfig`] and the delay
//! distributions it names), its validation, and the strategies to compare.
//!
//! Kept apart from the engine so a reader looking for "what can I configure, and what is
//! rejected" finds it without the event loop around it.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{micros, LIBRARY_DEFAULT_TTL, MAX_DURATION, MAX_EXPECTED_DELIVERIES, MAX_PAIRS};

/// A log-normal delay given by its median and its 99th percentile, the two numbers one usually
/// knows about a latency.
///
/// A zero median means "always zero"; a p99 equal to the median means "always the median" (both
/// handy for hand-computable scenarios).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogNormalDelay {
    /// Half of the draws are shorter.
    pub median: Duration,
    /// 99 % of the draws are shorter. Must not be below the median.
    pub p99: Duration,
}

impl LogNormalDelay {
    /// A log-normal delay with this median and 99th percentile.
    pub const fn new(median: Duration, p99: Duration) -> Self {
        LogNormalDelay { median, p99 }
    }

    /// A delay that is always `value`.
    pub const fn constant(value: Duration) -> Self {
        LogNormalDelay {
            median: value,
            p99: value,
        }
    }
}

/// A delay drawn uniformly from `[min, max)` (exactly `min` when they are equal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UniformDelay {
    /// The shortest draw.
    pub min: Duration,
    /// The bound the draws stay below. Must not be below `min`.
    pub max: Duration,
}

impl UniformDelay {
    /// A delay uniform in `[min, max)`.
    pub const fn new(min: Duration, max: Duration) -> Self {
        UniformDelay { min, max }
    }
}

/// What the simulation simulates. [`Default`] is the scenario of the benchmark report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    /// Seed of every random draw. Default 42.
    pub seed: u64,
    /// App instances in the fleet, each with its own cache. Default 20.
    pub instances: usize,
    /// Secrets every instance reads. Default 50.
    pub secrets: usize,
    /// Simulated time. Default one day.
    pub duration: Duration,
    /// Every instance reads every secret once per interval. Default 1 s. At least 1 µs.
    pub read_interval: Duration,
    /// The offset of every pair's first read (taken modulo `read_interval`); `None` draws one
    /// per (instance, secret) pair uniformly in `[0, read_interval)`. Default `None`.
    pub read_phase: Option<Duration>,
    /// Mean time between rotations of one secret; rotations are a Poisson process. Default 6 h
    /// (about four rotations per secret per day).
    pub rotation_mean_interval: Duration,
    /// Fixed rotation times used for every secret instead of the Poisson process (times at or
    /// after `duration` are left out), for scenarios one can compute by hand. Default `None`.
    pub rotation_times: Option<Vec<Duration>>,
    /// Delay from a rotation to the event's delivery at one instance, drawn per (rotation,
    /// instance): Event Grid to Service Bus to the receiver. Default median 0.4 s, p99 3 s.
    pub delivery_delay: LogNormalDelay,
    /// Probability that Event Grid's first delivery attempt fails and a retry adds
    /// `retry_delay`. Default 1 %.
    pub retry_probability: f64,
    /// What an Event Grid retry adds to the delivery delay. Default uniform 10 s to 60 s.
    pub retry_delay: UniformDelay,
    /// Probability that an event is delivered twice (delivery is at least once). Default 1 %.
    pub duplicate_probability: f64,
    /// How much later than the first delivery the duplicate arrives. Default uniform 0 s to 5 s.
    pub duplicate_delay: UniformDelay,
    /// How long one Key Vault read (a load) takes. Default median 30 ms, p99 150 ms.
    pub load_latency: LogNormalDelay,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            instances: 20,
            secrets: 50,
            duration: Duration::from_secs(86_400),
            read_interval: Duration::from_secs(1),
            read_phase: None,
            rotation_mean_interval: Duration::from_secs(6 * 3_600),
            rotation_times: None,
            delivery_delay: LogNormalDelay::new(Duration::from_millis(400), Duration::from_secs(3)),
            retry_probability: 0.01,
            retry_delay: UniformDelay::new(Duration::from_secs(10), Duration::from_secs(60)),
            duplicate_probability: 0.01,
            duplicate_delay: UniformDelay::new(Duration::ZERO, Duration::from_secs(5)),
            load_latency: LogNormalDelay::new(
                Duration::from_millis(30),
                Duration::from_millis(150),
            ),
        }
    }
}

/// Why a [`SimConfig`] cannot be simulated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    pub(super) fn new(field: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            field,
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid simulation config: {}: {}",
            self.field, self.problem
        )
    }
}

impl std::error::Error for ConfigError {}

impl SimConfig {
    /// Checks that the configuration can be simulated: a positive read interval, probabilities
    /// in `[0, 1]`, well-ordered delay bounds, a positive rotation interval, and a size that fits
    /// in memory. Zero instances, secrets or duration are fine (they simulate nothing).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.duration > MAX_DURATION {
            return Err(ConfigError::new("duration", "must be at most ten years"));
        }
        if micros(self.read_interval) == 0 {
            return Err(ConfigError::new("read_interval", "must be at least 1 µs"));
        }
        check_probability("retry_probability", self.retry_probability)?;
        check_probability("duplicate_probability", self.duplicate_probability)?;
        check_uniform("retry_delay", self.retry_delay)?;
        check_uniform("duplicate_delay", self.duplicate_delay)?;
        check_log_normal("delivery_delay", self.delivery_delay)?;
        check_log_normal("load_latency", self.load_latency)?;
        if self.rotation_times.is_none() && micros(self.rotation_mean_interval) == 0 {
            return Err(ConfigError::new(
                "rotation_mean_interval",
                "must be at least 1 µs (or give rotation_times)",
            ));
        }
        self.check_size()
    }

    /// Refuses scenarios too large to hold in memory.
    fn check_size(&self) -> Result<(), ConfigError> {
        let pairs = self.instances as u128 * self.secrets as u128;
        if pairs > MAX_PAIRS {
            return Err(ConfigError::new(
                "instances",
                format!("instances x secrets must be at most {MAX_PAIRS}"),
            ));
        }
        let rotations_per_secret = match &self.rotation_times {
            Some(times) => times.len() as f64,
            None => self.duration.as_secs_f64() / self.rotation_mean_interval.as_secs_f64(),
        };
        let deliveries = pairs as f64 * rotations_per_secret * (1.0 + self.duplicate_probability);
        if deliveries > MAX_EXPECTED_DELIVERIES {
            return Err(ConfigError::new(
                "rotation_mean_interval",
                format!(
                    "the scenario would draw about {deliveries:.0} deliveries; \
                     at most {MAX_EXPECTED_DELIVERIES:.0}"
                ),
            ));
        }
        Ok(())
    }
}

fn check_probability(field: &'static str, p: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(ConfigError::new(field, format!("{p} is not in [0, 1]")))
    }
}

fn check_uniform(field: &'static str, delay: UniformDelay) -> Result<(), ConfigError> {
    if delay.min <= delay.max {
        Ok(())
    } else {
        Err(ConfigError::new(field, "min must not exceed max"))
    }
}

fn check_log_normal(field: &'static str, delay: LogNormalDelay) -> Result<(), ConfigError> {
    if delay.median <= delay.p99 {
        Ok(())
    } else {
        Err(ConfigError::new(field, "p99 must not be below the median"))
    }
}

/// What a cache does. Each variant carries its time-to-live; `Duration::MAX` means none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// A read-through cache that ignores events: after `ttl` the next read waits for a load.
    TtlPolling {
        /// How long a loaded value is served.
        ttl: Duration,
    },
    /// keyvault-invalidator in invalidate mode: a new-version event drops the entry and the next
    /// read waits for a load; `safety_ttl` expires entries like TTL polling does.
    Invalidate {
        /// The time-to-live kept as a safety net for lost events.
        safety_ttl: Duration,
    },
    /// keyvault-invalidator in refresh-ahead mode (the library's default): a new-version event,
    /// or the first read after `safety_ttl`, loads in the background; reads never wait.
    RefreshAhead {
        /// The time-to-live kept as a safety net for lost events.
        safety_ttl: Duration,
    },
}

impl Strategy {
    /// The time-to-live, whatever the strategy calls it.
    pub fn ttl(self) -> Duration {
        match self {
            Strategy::TtlPolling { ttl } => ttl,
            Strategy::Invalidate { safety_ttl } | Strategy::RefreshAhead { safety_ttl } => {
                safety_ttl
            }
        }
    }

    /// Whether the strategy acts on new-version events (the keyvault-invalidator strategies).
    pub fn uses_events(self) -> bool {
        !matches!(self, Strategy::TtlPolling { .. })
    }

    /// Whether a read that finds no usable entry waits for the load (read-through), rather than
    /// being served the cached value while a background load runs.
    pub(super) fn reads_wait_for_loads(self) -> bool {
        !matches!(self, Strategy::RefreshAhead { .. })
    }
}

/// A strategy under the name the report shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrategySpec {
    /// The name in the report.
    pub name: String,
    /// What the cache does.
    pub strategy: Strategy,
}

impl StrategySpec {
    /// A strategy named `name`.
    pub fn new(name: impl Into<String>, strategy: Strategy) -> Self {
        StrategySpec {
            name: name.into(),
            strategy,
        }
    }
}

/// The strategies of the benchmark report: TTL polling at the defaults of AWS Secrets Manager
/// caching (300 s) and Spring Cloud Azure Key Vault (30 min), keyvault-invalidator's two modes
/// with the library's default time-to-live, and the same with a 24 h time-to-live that is only
/// a safety net. One line per strategy.
pub fn default_strategies() -> Vec<StrategySpec> {
    let day = Duration::from_secs(86_400);
    vec![
        StrategySpec::new(
            "TTL polling 300 s",
            Strategy::TtlPolling {
                ttl: Duration::from_secs(300),
            },
        ),
        StrategySpec::new(
            "TTL polling 30 min",
            Strategy::TtlPolling {
                ttl: Duration::from_secs(30 * 60),
            },
        ),
        StrategySpec::new(
            "keyvault-invalidator, invalidate mode",
            Strategy::Invalidate {
                safety_ttl: LIBRARY_DEFAULT_TTL,
            },
        ),
        StrategySpec::new(
            "keyvault-invalidator, refresh-ahead mode",
            Strategy::RefreshAhead {
                safety_ttl: LIBRARY_DEFAULT_TTL,
            },
        ),
        StrategySpec::new(
            "keyvault-invalidator, invalidate mode, TTL 24 h",
            Strategy::Invalidate { safety_ttl: day },
        ),
        StrategySpec::new(
            "keyvault-invalidator, refresh-ahead mode, TTL 24 h",
            Strategy::RefreshAhead { safety_ttl: day },
        ),
    ]
}
