//! A deterministic discrete-event simulation of cached Key Vault secrets across a fleet: how
//! stale they get after rotations, and how many Key Vault calls that freshness costs, for TTL
//! polling and for keyvault-invalidator's two modes.
//!
//! Everything runs on a virtual clock in whole microseconds (no sleeping, no async, no wall
//! time), and every random draw comes from seeded [`StdRng`]s, so a configuration gives the same
//! numbers bit for bit on every run (with the same `rand` release: `StdRng`'s algorithm is not
//! promised across releases).
//!
//! # The model
//!
//! - **One scenario for all strategies.** Rotation times, delivery delays and read phases are
//!   drawn once, and the k-th Key Vault load of an (instance, secret) pair takes the same latency
//!   under every strategy (one seeded stream per pair), so strategies differ only in what they do.
//! - **Reads.** Instance `i` reads secret `s` at `phase(i, s) + k * read_interval`, k >= 0, within
//!   `[0, duration)`. Between two events the cache's state is constant, so the reads in between
//!   are counted exactly with integer arithmetic instead of being simulated one by one.
//! - **The version a load returns** is the vault's current version at the moment the load
//!   *completes* (a rotation at that very instant counts). So a load in flight when an event
//!   arrives always brings the event's version or a newer one (single-flight never needs a second
//!   load), and a reader that waited for a load never gets a rotated-out version. Every strategy
//!   uses this rule.
//! - **Events at one instant** apply in this order: rotations, load completions, deliveries,
//!   then reads.
//! - **Time-to-live** counts from the moment a load completes (when the value is stored). The
//!   caches start warm: every entry holds version 0, stored at t = 0.
//! - **Read-through** (TTL polling, invalidate mode): a read that finds no usable entry (dropped
//!   or expired) starts a load and waits for it; reads arriving while it is in flight wait for the
//!   same load (one call, as moka's `get_with` coalesces them). Each of those reads is a stall.
//! - **Refresh-ahead**: the entry is never dropped. A new-version delivery, or the first read
//!   after expiry, starts a background load unless one is in flight; readers keep the cached
//!   value until the load completes. Reads never wait.
//! - **Version awareness**: a delivery whose version the instance already caches (a duplicate,
//!   or an event overtaken by a newer version) changes nothing.
//! - **Staleness** of a rotation at an instance: from the rotation to the first instant from
//!   which no read at that instance can return an older version, i.e. the cache holds the new
//!   version (or a newer one), or holds no usable entry so a read issued then waits for a load
//!   that brings it. So TTL polling catches up when the old entry expires, invalidate mode when
//!   the event drops it, refresh-ahead when its load completes. A sample still open at the next
//!   rotation of the same secret ends there, counted at that length (`staleness_superseded`); one
//!   still open at the end of the simulated duration ends there (`staleness_censored`).
//! - **A stale read** is a read answered from the cache with a version older than the vault's at
//!   that instant.
//! - **Key Vault calls** are counted when they start, for loads started within the duration.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, LogNormal};
use serde::{Deserialize, Serialize};

/// The library's default time-to-live (`keyvault_invalidator_moka::DEFAULT_TIME_TO_LIVE`): a
/// safety net for lost events.
pub const LIBRARY_DEFAULT_TTL: Duration = Duration::from_secs(30 * 60);

/// A point or a span on the virtual clock, in microseconds.
type Micros = u64;
/// A time that never comes: no such event, or a time-to-live that never expires.
const NEVER: Micros = u64::MAX;
/// Random draws are capped here (about 285 years): far past any simulated end, and far enough
/// from `u64::MAX` that adding a few of them cannot overflow.
const MAX_DRAW: Micros = 1 << 53;
const MICROS_PER_SECOND: f64 = 1e6;
const SECONDS_PER_DAY: f64 = 86_400.0;
/// The 99th percentile of the standard normal distribution: a log-normal's p99 is
/// `median * exp(Z99 * sigma)`.
const Z99: f64 = 2.326_347_874_040_841;
/// Longest simulated duration accepted (ten years): the clock and the counters stay far from
/// overflow below it.
const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 86_400);
/// Most (instance, secret) pairs accepted: the scenario keeps a few words per pair in memory.
const MAX_PAIRS: u128 = 1_000_000;
/// Most deliveries a configuration may expect to draw: the scenario keeps them all in memory.
const MAX_EXPECTED_DELIVERIES: f64 = 50_000_000.0;

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
    fn new(field: &'static str, problem: impl Into<String>) -> Self {
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
    fn reads_wait_for_loads(self) -> bool {
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

/// What one strategy did over the whole simulated fleet and duration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyResult {
    /// The strategy's name, from its [`StrategySpec`].
    pub name: String,
    /// The strategy that ran.
    pub strategy: Strategy,
    /// Staleness samples taken: one per (rotation, instance), so `rotations * instances`.
    pub staleness_samples: u64,
    /// Mean time from a rotation until an instance could no longer serve an older version (see
    /// the module's model), in seconds, over all samples (zeros included).
    pub staleness_mean_s: f64,
    /// 99th percentile of the staleness samples (nearest rank), in seconds.
    pub staleness_p99_s: f64,
    /// Largest staleness sample, in seconds.
    pub staleness_max_s: f64,
    /// Samples ended by a later rotation of the same secret before the instance caught up; each
    /// is counted at its length up to that rotation.
    pub staleness_superseded: u64,
    /// Samples still open at the end of the simulated duration; each is counted at its length
    /// up to the end.
    pub staleness_censored: u64,
    /// Reads by all instances of all secrets within the duration.
    pub total_reads: u64,
    /// Reads answered with a version older than the vault's at that instant.
    pub stale_reads: u64,
    /// `stale_reads / total_reads` (0 when there were no reads).
    pub stale_read_fraction: f64,
    /// Key Vault calls (loads) started within the duration, by the whole fleet.
    pub kv_calls: u64,
    /// `kv_calls` scaled to one day (0 for a zero duration).
    pub kv_calls_per_day: f64,
    /// Key Vault calls caused by events: background loads a delivery started (refresh-ahead), or
    /// loads by the first read after a delivery dropped the entry (invalidate). Zero for TTL
    /// polling.
    pub event_kv_calls: u64,
    /// `event_kv_calls / (rotations * instances)`: at most 1 by version awareness and
    /// single-flight (0 when there were no rotations).
    pub event_calls_per_rotation_per_instance: f64,
    /// Reads that waited for a Key Vault call.
    pub stalled_reads: u64,
    /// Total time those reads waited, in seconds.
    pub stalled_time_s: f64,
    /// Rotations of all secrets within the duration (not multiplied by instances).
    pub rotations: u64,
    /// Event deliveries to all instances within the duration, duplicates included.
    pub deliveries: u64,
    /// Of those, the second deliveries of an event.
    pub duplicates: u64,
    /// Deliveries that changed nothing: the version (or a newer one) was already cached, nothing
    /// was cached, a load was already in flight, or the strategy ignores events.
    pub ignored_deliveries: u64,
    /// Longest delay drawn from a rotation to its first delivery at an instance (Event Grid
    /// retries included, duplicates not), in seconds.
    pub max_delivery_delay_s: f64,
    /// Longest Key Vault load latency this strategy drew, in seconds.
    pub max_load_latency_s: f64,
}

/// Simulates `strategies` over one scenario drawn from `config`, one result per strategy in
/// the same order.
pub fn run(
    config: &SimConfig,
    strategies: &[StrategySpec],
) -> Result<Vec<StrategyResult>, ConfigError> {
    let scenario = Scenario::generate(config)?;
    Ok(strategies.iter().map(|spec| scenario.run(spec)).collect())
}

/// For each keyvault-invalidator strategy, whether it meets the library's goals: max staleness
/// within the longest delivery delay plus the longest load latency drawn, at most one Key Vault
/// call per rotation per instance caused by events, and (refresh-ahead) no reader stalls. Each
/// item is a readable description with the numbers, and whether the goal is met.
pub fn check_goals(results: &[StrategyResult]) -> Vec<(String, bool)> {
    // The results are whole microseconds; half a microsecond absorbs the rounding of the sum.
    const TOLERANCE_S: f64 = 0.5e-6;
    let mut goals = Vec::new();
    for r in results.iter().filter(|r| r.strategy.uses_events()) {
        let bound = r.max_delivery_delay_s + r.max_load_latency_s;
        goals.push((
            format!(
                "{}: max staleness {:.3} s <= max delivery delay + max load latency {:.3} s",
                r.name, r.staleness_max_s, bound
            ),
            r.staleness_max_s <= bound + TOLERANCE_S,
        ));
        goals.push((
            format!(
                "{}: Key Vault calls per rotation per instance from events {:.4} <= 1",
                r.name, r.event_calls_per_rotation_per_instance
            ),
            r.event_calls_per_rotation_per_instance <= 1.0,
        ));
        if matches!(r.strategy, Strategy::RefreshAhead { .. }) {
            goals.push((
                format!("{}: reader stalls {} == 0", r.name, r.stalled_reads),
                r.stalled_reads == 0,
            ));
        }
    }
    goals
}

/// A duration on the virtual clock; durations too long for it never come.
fn micros(duration: Duration) -> Micros {
    u64::try_from(duration.as_micros()).unwrap_or(NEVER)
}

/// A drawn number of seconds on the virtual clock, rounded to the microsecond and capped at
/// [`MAX_DRAW`]; negative or NaN draws (which the distributions used do not make) become 0.
fn seconds_to_micros(seconds: f64) -> Micros {
    let us = (seconds * MICROS_PER_SECOND).round();
    if us.is_nan() || us <= 0.0 {
        0
    } else if us >= MAX_DRAW as f64 {
        MAX_DRAW
    } else {
        us as Micros
    }
}

fn to_seconds(us: u128) -> f64 {
    us as f64 / MICROS_PER_SECOND
}

/// A way to draw a delay, built once from the configuration.
#[derive(Debug, Clone)]
enum Sampler {
    Constant(Micros),
    LogNormal(LogNormal<f64>),
    Uniform { min: Micros, span: Micros },
}

impl Sampler {
    fn log_normal(field: &'static str, delay: LogNormalDelay) -> Result<Self, ConfigError> {
        let median = micros(delay.median).min(MAX_DRAW);
        if median == 0 || delay.p99 <= delay.median {
            return Ok(Sampler::Constant(median));
        }
        let mu = delay.median.as_secs_f64().ln();
        let sigma = (delay.p99.as_secs_f64() / delay.median.as_secs_f64()).ln() / Z99;
        LogNormal::new(mu, sigma)
            .map(Sampler::LogNormal)
            .map_err(|e| ConfigError::new(field, e.to_string()))
    }

    fn uniform(delay: UniformDelay) -> Self {
        let min = micros(delay.min).min(MAX_DRAW);
        let max = micros(delay.max).min(MAX_DRAW);
        Sampler::Uniform {
            min,
            span: max.saturating_sub(min),
        }
    }

    /// Draws one delay. Always makes exactly one draw from `rng` for a random sampler, so the
    /// streams of the other draws do not depend on the values drawn.
    fn sample(&self, rng: &mut StdRng) -> Micros {
        match self {
            Sampler::Constant(value) => *value,
            Sampler::LogNormal(distribution) => seconds_to_micros(distribution.sample(rng)),
            Sampler::Uniform { min, span } => {
                // floor(span * u) with u in [0, 1) stays below span.
                min + (*span as f64 * rng.random::<f64>()) as Micros
            }
        }
    }
}

/// The reads of one (instance, secret) pair: at `phase + k * period`, k >= 0.
#[derive(Debug, Clone, Copy)]
struct ReadClock {
    /// The first read, below `period`.
    phase: Micros,
    /// At least 1.
    period: Micros,
}

impl ReadClock {
    /// How many reads happen strictly before `t`.
    fn reads_before(self, t: Micros) -> u64 {
        if t <= self.phase {
            0
        } else {
            (t - self.phase - 1) / self.period + 1
        }
    }

    /// How many reads happen in `[from, until)`.
    fn count(self, from: Micros, until: Micros) -> u64 {
        if until <= from {
            0
        } else {
            self.reads_before(until) - self.reads_before(from)
        }
    }

    /// The first read at or after `t` ([`NEVER`] for `NEVER` or past the clock's range).
    fn next_at_or_after(self, t: Micros) -> Micros {
        if t == NEVER {
            return NEVER;
        }
        if t <= self.phase {
            return self.phase;
        }
        let k = (t - self.phase).div_ceil(self.period);
        k.checked_mul(self.period)
            .and_then(|offset| offset.checked_add(self.phase))
            .unwrap_or(NEVER)
    }

    /// The total wait of the reads in `[from, until)` for a load completing at `ends_at`
    /// (`until <= ends_at`): the sum of `ends_at - t` over an arithmetic sequence of reads.
    fn total_wait(self, from: Micros, until: Micros, ends_at: Micros) -> u128 {
        let n = u128::from(self.count(from, until));
        if n == 0 {
            return 0;
        }
        let first = u128::from(self.next_at_or_after(from));
        let read_times = n * first + u128::from(self.period) * (n * (n - 1) / 2);
        (n * u128::from(ends_at)).saturating_sub(read_times)
    }
}

/// One event delivered to one instance.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    at: Micros,
    /// The version the event announces: the rotation's number, counting from 1.
    version: usize,
}

/// One (instance, secret) pair's share of the scenario.
#[derive(Debug, Clone)]
struct Pair {
    secret: usize,
    phase: Micros,
    /// Sorted by time.
    deliveries: Vec<Delivery>,
}

/// Everything drawn at random, shared by all strategies.
#[derive(Debug, Clone)]
struct Scenario {
    seed: u64,
    instances: usize,
    end: Micros,
    read_interval: Micros,
    /// Per secret, sorted, all before `end`.
    rotations: Vec<Vec<Micros>>,
    /// Index `instance * secrets + secret`.
    pairs: Vec<Pair>,
    load_latency: Sampler,
    deliveries: u64,
    duplicates: u64,
    max_delivery_delay: Micros,
}

/// The delay samplers of a configuration.
struct DeliverySamplers {
    base: Sampler,
    retry: Sampler,
    duplicate: Sampler,
    retry_probability: f64,
    duplicate_probability: f64,
}

impl DeliverySamplers {
    /// Draws the delay from a rotation to its first delivery at one instance, and the extra
    /// delay of its duplicate if there is one. Always makes the same draws, used or not.
    fn draw(&self, rng: &mut StdRng) -> (Micros, Option<Micros>) {
        let base = self.base.sample(rng);
        let retried = rng.random::<f64>() < self.retry_probability;
        let retry = self.retry.sample(rng);
        let duplicated = rng.random::<f64>() < self.duplicate_probability;
        let duplicate = self.duplicate.sample(rng);
        let delay = base + if retried { retry } else { 0 };
        (delay, duplicated.then_some(duplicate))
    }
}

impl Scenario {
    /// Draws the scenario: rotations per secret, then deliveries per (secret, rotation,
    /// instance), then read phases per pair, all from one stream seeded with `config.seed`.
    fn generate(config: &SimConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let end = micros(config.duration);
        let read_interval = micros(config.read_interval);
        let mut rng = StdRng::seed_from_u64(config.seed);
        let rotations = draw_rotations(config, end, &mut rng)?;
        let mut scenario = Scenario {
            seed: config.seed,
            instances: config.instances,
            end,
            read_interval,
            rotations,
            pairs: Vec::with_capacity(config.instances * config.secrets),
            load_latency: Sampler::log_normal("load_latency", config.load_latency)?,
            deliveries: 0,
            duplicates: 0,
            max_delivery_delay: 0,
        };
        for _ in 0..config.instances {
            for secret in 0..config.secrets {
                scenario.pairs.push(Pair {
                    secret,
                    phase: 0,
                    deliveries: Vec::new(),
                });
            }
        }
        scenario.draw_deliveries(config, &mut rng)?;
        scenario.draw_phases(config, &mut rng);
        Ok(scenario)
    }

    fn draw_deliveries(&mut self, config: &SimConfig, rng: &mut StdRng) -> Result<(), ConfigError> {
        let samplers = DeliverySamplers {
            base: Sampler::log_normal("delivery_delay", config.delivery_delay)?,
            retry: Sampler::uniform(config.retry_delay),
            duplicate: Sampler::uniform(config.duplicate_delay),
            retry_probability: config.retry_probability,
            duplicate_probability: config.duplicate_probability,
        };
        let secrets = self.rotations.len();
        for (secret, times) in self.rotations.iter().enumerate() {
            for (index, &rotated_at) in times.iter().enumerate() {
                for instance in 0..self.instances {
                    let (delay, duplicate) = samplers.draw(rng);
                    self.max_delivery_delay = self.max_delivery_delay.max(delay);
                    let first = rotated_at + delay;
                    let mut arrivals = vec![first];
                    arrivals.extend(duplicate.map(|extra| first + extra));
                    for (n, at) in arrivals.into_iter().enumerate() {
                        if at < self.end {
                            self.deliveries += 1;
                            self.duplicates += u64::from(n > 0);
                        }
                        let delivery = Delivery {
                            at,
                            version: index + 1,
                        };
                        self.pairs[instance * secrets + secret]
                            .deliveries
                            .push(delivery);
                    }
                }
            }
        }
        for pair in &mut self.pairs {
            pair.deliveries.sort_by_key(|d| (d.at, d.version));
        }
        Ok(())
    }

    fn draw_phases(&mut self, config: &SimConfig, rng: &mut StdRng) {
        let period = self.read_interval;
        for pair in &mut self.pairs {
            pair.phase = match config.read_phase {
                Some(phase) => micros(phase) % period,
                None => rng.random_range(0..period),
            };
        }
    }

    /// Runs one strategy over every pair.
    fn run(&self, spec: &StrategySpec) -> StrategyResult {
        let mut tally = Tally::default();
        for (index, pair) in self.pairs.iter().enumerate() {
            let rotations = self
                .rotations
                .get(pair.secret)
                .map_or(&[][..], Vec::as_slice);
            PairSim::new(self, pair, rotations, spec.strategy, index).run(&mut tally);
        }
        tally.into_result(spec, self)
    }
}

/// One secret's rotation times: the fixed ones if configured, otherwise a Poisson process.
fn draw_rotations(
    config: &SimConfig,
    end: Micros,
    rng: &mut StdRng,
) -> Result<Vec<Vec<Micros>>, ConfigError> {
    if let Some(fixed) = &config.rotation_times {
        let mut times: Vec<Micros> = fixed
            .iter()
            .map(|&t| micros(t))
            .filter(|&t| t < end)
            .collect();
        times.sort_unstable();
        return Ok(vec![times; config.secrets]);
    }
    let rate = 1.0 / config.rotation_mean_interval.as_secs_f64();
    let gap =
        Exp::new(rate).map_err(|e| ConfigError::new("rotation_mean_interval", e.to_string()))?;
    let mut all = Vec::with_capacity(config.secrets);
    for _ in 0..config.secrets {
        let mut times = Vec::new();
        let mut t: Micros = 0;
        loop {
            t = t.saturating_add(seconds_to_micros(gap.sample(rng)));
            if t >= end {
                break;
            }
            times.push(t);
        }
        all.push(times);
    }
    Ok(all)
}

/// The seed of one pair's stream of load latencies: the same under every strategy, so the k-th
/// load of a pair takes as long whatever the strategy.
fn latency_seed(seed: u64, pair: usize) -> u64 {
    splitmix64(seed ^ splitmix64(pair as u64 ^ 0x6c6f_6164_6c61_7465))
}

/// SplitMix64's finaliser: spreads nearby inputs over unrelated seeds.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a strategy did, summed over pairs.
#[derive(Debug, Default)]
struct Tally {
    staleness: Vec<Micros>,
    superseded: u64,
    censored: u64,
    reads: u64,
    stale_reads: u64,
    stalled_reads: u64,
    stalled: u128,
    kv_calls: u64,
    event_kv_calls: u64,
    ignored_deliveries: u64,
    max_load_latency: Micros,
}

impl Tally {
    fn into_result(mut self, spec: &StrategySpec, scenario: &Scenario) -> StrategyResult {
        self.staleness.sort_unstable();
        let samples = self.staleness.len() as u64;
        let total: u128 = self.staleness.iter().map(|&s| u128::from(s)).sum();
        let rotations: u64 = scenario.rotations.iter().map(|r| r.len() as u64).sum();
        let per_day = if scenario.end == 0 {
            0.0
        } else {
            SECONDS_PER_DAY * MICROS_PER_SECOND / scenario.end as f64
        };
        StrategyResult {
            name: spec.name.clone(),
            strategy: spec.strategy,
            staleness_samples: samples,
            staleness_mean_s: ratio(to_seconds(total), samples),
            staleness_p99_s: to_seconds(nearest_rank(&self.staleness, 99).into()),
            staleness_max_s: to_seconds(self.staleness.last().copied().unwrap_or(0).into()),
            staleness_superseded: self.superseded,
            staleness_censored: self.censored,
            total_reads: self.reads,
            stale_reads: self.stale_reads,
            stale_read_fraction: ratio(self.stale_reads as f64, self.reads),
            kv_calls: self.kv_calls,
            kv_calls_per_day: self.kv_calls as f64 * per_day,
            event_kv_calls: self.event_kv_calls,
            event_calls_per_rotation_per_instance: ratio(
                self.event_kv_calls as f64,
                rotations * scenario.instances as u64,
            ),
            stalled_reads: self.stalled_reads,
            stalled_time_s: to_seconds(self.stalled),
            rotations,
            deliveries: scenario.deliveries,
            duplicates: scenario.duplicates,
            ignored_deliveries: self.ignored_deliveries,
            max_delivery_delay_s: to_seconds(scenario.max_delivery_delay.into()),
            max_load_latency_s: to_seconds(self.max_load_latency.into()),
        }
    }
}

/// `numerator / denominator`, or 0 for a zero denominator.
fn ratio(numerator: f64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator / denominator as f64
    }
}

/// The `percent`-th percentile of sorted samples by the nearest-rank method (0 for none).
fn nearest_rank(sorted: &[Micros], percent: u64) -> Micros {
    let rank = (sorted.len() as u64 * percent).div_ceil(100).max(1);
    sorted.get((rank - 1) as usize).copied().unwrap_or(0)
}

/// A cached value.
#[derive(Debug, Clone, Copy)]
struct Entry {
    version: usize,
    expires_at: Micros,
}

/// A Key Vault load in flight.
#[derive(Debug, Clone, Copy)]
struct Load {
    ends_at: Micros,
    /// Whether readers wait for it (read-through) rather than keep the cached value.
    blocking: bool,
}

/// A staleness sample not closed yet: the latest rotation, which the instance has not caught
/// up with.
#[derive(Debug, Clone, Copy)]
struct Pending {
    version: usize,
    since: Micros,
}

/// The next thing to happen to a pair, in the order things at one instant apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Rotation,
    Completion,
    Delivery,
    /// A read that starts a load: the first read after the entry expired or was dropped.
    TriggeringRead,
    End,
}

/// One (instance, secret) pair under one strategy: its cache entry and load, stepped from event
/// to event, with the reads between two events counted in one go.
struct PairSim<'a> {
    strategy: Strategy,
    ttl: Micros,
    end: Micros,
    clock: ReadClock,
    rotations: &'a [Micros],
    deliveries: &'a [Delivery],
    latency: &'a Sampler,
    rng: StdRng,
    now: Micros,
    /// Rotations applied so far, which is also the vault's current version.
    vault_version: usize,
    next_delivery: usize,
    /// `None` once dropped by an event, or while a read-through load replaces it.
    entry: Option<Entry>,
    load: Option<Load>,
    pending: Option<Pending>,
}

impl<'a> PairSim<'a> {
    fn new(
        scenario: &'a Scenario,
        pair: &'a Pair,
        rotations: &'a [Micros],
        strategy: Strategy,
        index: usize,
    ) -> Self {
        // A zero time-to-live is taken as 1 µs, the clock's resolution, so a load's value serves
        // the reads at the instant it is stored and the simulation moves on.
        let ttl = micros(strategy.ttl()).max(1);
        PairSim {
            strategy,
            ttl,
            end: scenario.end,
            clock: ReadClock {
                phase: pair.phase,
                period: scenario.read_interval,
            },
            rotations,
            deliveries: &pair.deliveries,
            latency: &scenario.load_latency,
            rng: StdRng::seed_from_u64(latency_seed(scenario.seed, index)),
            now: 0,
            vault_version: 0,
            next_delivery: 0,
            entry: Some(Entry {
                version: 0,
                expires_at: ttl,
            }),
            load: None,
            pending: None,
        }
    }

    /// Steps through the pair's events until the end of the duration.
    fn run(mut self, tally: &mut Tally) {
        loop {
            let (at, next) = self.next_event();
            self.settle_staleness(at, tally);
            self.count_reads(at, tally);
            self.now = at;
            match next {
                Next::Rotation => self.rotate(tally),
                Next::Completion => self.complete_load(),
                Next::Delivery => self.deliver(tally),
                Next::TriggeringRead => self.start_load_for_read(tally),
                Next::End => break,
            }
        }
        if let Some(pending) = self.pending.take() {
            tally.staleness.push(self.end - pending.since);
            tally.censored += 1;
        }
    }

    /// The earliest next event; ties go to the one listed first, which is the order events at
    /// one instant apply in. Nothing at or after the end happens.
    fn next_event(&self) -> (Micros, Next) {
        let candidates = [
            (
                self.rotations
                    .get(self.vault_version)
                    .copied()
                    .unwrap_or(NEVER),
                Next::Rotation,
            ),
            (self.load.map_or(NEVER, |l| l.ends_at), Next::Completion),
            (
                self.deliveries
                    .get(self.next_delivery)
                    .map_or(NEVER, |d| d.at),
                Next::Delivery,
            ),
            (self.triggering_read_at(), Next::TriggeringRead),
        ];
        let mut best = (self.end, Next::End);
        for candidate in candidates {
            if candidate.0 < best.0 {
                best = candidate;
            }
        }
        best
    }

    /// The next read that starts a load: the first read once the entry has expired (or is gone,
    /// in read-through) while no load is in flight.
    fn triggering_read_at(&self) -> Micros {
        if self.load.is_some() {
            return NEVER;
        }
        match self.entry {
            Some(entry) => self.clock.next_at_or_after(entry.expires_at.max(self.now)),
            None if self.strategy.reads_wait_for_loads() => self.clock.next_at_or_after(self.now),
            None => NEVER,
        }
    }

    /// Closes the pending staleness sample if the instance catches up in `[now, until]`, in
    /// which nothing but expiry changes the cache.
    fn settle_staleness(&mut self, until: Micros, tally: &mut Tally) {
        let Some(pending) = self.pending else {
            return;
        };
        if let Some(at) = self.caught_up_within(pending.version, until) {
            tally.staleness.push(at - pending.since);
            self.pending = None;
        }
    }

    /// When, in `[now, until]`, no read can return a version older than `version` any more.
    fn caught_up_within(&self, version: usize, until: Micros) -> Option<Micros> {
        match self.entry {
            Some(entry) if entry.version >= version => Some(self.now),
            // Read-through: an expired entry is never served; the next read loads.
            Some(entry) if self.strategy.reads_wait_for_loads() => {
                (entry.expires_at <= until).then(|| entry.expires_at.max(self.now))
            }
            // Refresh-ahead serves the old value until a load completes.
            Some(_) => None,
            // Dropped or being reloaded: every read from now on waits for a load that completes
            // after the rotation, so it gets the new version.
            None => Some(self.now),
        }
    }

    /// Counts the reads in `[now, until)`, during which the cache does not change.
    fn count_reads(&self, until: Micros, tally: &mut Tally) {
        let n = self.clock.count(self.now, until);
        if n == 0 {
            return;
        }
        tally.reads += n;
        match (self.load, self.entry) {
            (Some(load), _) if load.blocking => {
                tally.stalled_reads += n;
                tally.stalled += self.clock.total_wait(self.now, until, load.ends_at);
            }
            (_, Some(entry)) => {
                if entry.version < self.vault_version {
                    tally.stale_reads += n;
                }
            }
            // Never with reads: without an entry or a load, the first read starts a load, and
            // the interval ends before it.
            (_, None) => {}
        }
    }

    /// The secret rotates: a sample still pending is superseded, and a new one starts.
    fn rotate(&mut self, tally: &mut Tally) {
        self.vault_version += 1;
        if let Some(pending) = self.pending.take() {
            tally.staleness.push(self.now - pending.since);
            tally.superseded += 1;
        }
        self.pending = Some(Pending {
            version: self.vault_version,
            since: self.now,
        });
    }

    /// A load completes with the vault's current version, stored with a fresh time-to-live.
    fn complete_load(&mut self) {
        self.load = None;
        self.entry = Some(Entry {
            version: self.vault_version,
            expires_at: self.now.saturating_add(self.ttl),
        });
    }

    /// An event arrives at this instance.
    fn deliver(&mut self, tally: &mut Tally) {
        let Some(delivery) = self.deliveries.get(self.next_delivery).copied() else {
            return;
        };
        self.next_delivery += 1;
        let acted = match self.strategy {
            Strategy::TtlPolling { .. } => false,
            Strategy::Invalidate { .. } => self.drop_if_older(delivery.version),
            Strategy::RefreshAhead { .. } => self.refresh_if_older(delivery.version, tally),
        };
        if !acted {
            tally.ignored_deliveries += 1;
        }
    }

    /// Invalidate mode: drops a live entry older than `version`. Without a live entry there is
    /// nothing to drop: the next read loads anyway, and a load in flight brings `version` or a
    /// newer one.
    fn drop_if_older(&mut self, version: usize) -> bool {
        match self.entry {
            Some(entry) if entry.version < version && self.now < entry.expires_at => {
                self.entry = None;
                true
            }
            _ => false,
        }
    }

    /// Refresh-ahead: starts a background load if the entry is older than `version` and no load
    /// is in flight (one in flight completes later, so it brings `version` or a newer one).
    fn refresh_if_older(&mut self, version: usize, tally: &mut Tally) -> bool {
        let older = self.entry.is_some_and(|entry| entry.version < version);
        if !older || self.load.is_some() {
            return false;
        }
        self.start_load(false, true, tally);
        true
    }

    /// A read starts a load: read-through waits for it (and removes the expired entry, if any);
    /// refresh-ahead keeps serving the expired entry.
    fn start_load_for_read(&mut self, tally: &mut Tally) {
        if self.strategy.reads_wait_for_loads() {
            // No entry without a load in flight means an event dropped it.
            let for_event = self.entry.is_none();
            self.entry = None;
            self.start_load(true, for_event, tally);
        } else {
            self.start_load(false, false, tally);
        }
    }

    fn start_load(&mut self, blocking: bool, for_event: bool, tally: &mut Tally) {
        let latency = self.latency.sample(&mut self.rng);
        tally.kv_calls += 1;
        tally.event_kv_calls += u64::from(for_event);
        tally.max_load_latency = tally.max_load_latency.max(latency);
        self.load = Some(Load {
            ends_at: self.now.saturating_add(latency),
            blocking,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn ms(m: u64) -> Duration {
        Duration::from_millis(m)
    }

    /// This library in both modes, with no time-to-live: only events cause loads.
    fn both_modes_without_ttl() -> [StrategySpec; 2] {
        [
            StrategySpec::new(
                "invalidate",
                Strategy::Invalidate {
                    safety_ttl: Duration::MAX,
                },
            ),
            StrategySpec::new(
                "refresh",
                Strategy::RefreshAhead {
                    safety_ttl: Duration::MAX,
                },
            ),
        ]
    }

    fn run_ok(config: &SimConfig, strategies: &[StrategySpec]) -> Vec<StrategyResult> {
        match run(config, strategies) {
            Ok(results) => results,
            Err(e) => panic!("{e}"),
        }
    }

    fn by_name<'r>(results: &'r [StrategyResult], name: &str) -> &'r StrategyResult {
        match results.iter().find(|r| r.name == name) {
            Some(r) => r,
            None => panic!("no result named {name}"),
        }
    }

    /// 1 instance, 1 secret, 1000 s, reads at 0.5 s, 1.5 s, ..., 999.5 s, one rotation at
    /// 100 s, delivery after exactly 2 s, loads of exactly 100 ms.
    fn hand_config() -> SimConfig {
        SimConfig {
            instances: 1,
            secrets: 1,
            duration: secs(1_000),
            read_phase: Some(ms(500)),
            rotation_times: Some(vec![secs(100)]),
            delivery_delay: LogNormalDelay::constant(secs(2)),
            retry_probability: 0.0,
            duplicate_probability: 0.0,
            load_latency: LogNormalDelay::constant(ms(100)),
            ..SimConfig::default()
        }
    }

    /// Checks the numbers every strategy shares in `hand_config`-like scenarios.
    fn assert_common(r: &StrategyResult, deliveries: u64, duplicates: u64) {
        assert_eq!(r.total_reads, 1_000, "{}", r.name);
        assert_eq!(r.rotations, 1, "{}", r.name);
        assert_eq!(r.staleness_samples, 1, "{}", r.name);
        assert_eq!(r.deliveries, deliveries, "{}", r.name);
        assert_eq!(r.duplicates, duplicates, "{}", r.name);
        assert_eq!(r.staleness_mean_s, r.staleness_max_s, "{}", r.name);
        assert_eq!(r.staleness_p99_s, r.staleness_max_s, "{}", r.name);
    }

    #[test]
    fn hand_computed_single_rotation() {
        // A duplicate 1 s after the first delivery, which every strategy must ignore.
        let config = SimConfig {
            duplicate_probability: 1.0,
            duplicate_delay: UniformDelay::new(secs(1), secs(1)),
            ..hand_config()
        };
        let results = run_ok(&config, &default_strategies());
        for r in &results {
            assert_common(r, 2, 1);
        }

        // Expires at 300 s (staleness 200 s; reads 100.5..299.5 stale); reloads by the reads at
        // 300.5, 601.5 and 902.5 s (each stored 0.1 s later, expiring 300 s after that).
        let r = by_name(&results, "TTL polling 300 s");
        assert_eq!(r.staleness_max_s, 200.0);
        assert_eq!((r.stale_reads, r.stale_read_fraction), (200, 0.2));
        assert_eq!((r.kv_calls, r.event_kv_calls), (3, 0));
        assert_eq!(r.kv_calls_per_day, 3.0 * 86.4);
        assert_eq!(r.stalled_reads, 3);
        assert!((r.stalled_time_s - 0.3).abs() < 1e-9);
        assert_eq!(r.ignored_deliveries, 2);

        // Never expires within 1000 s: stale from 100 s to the end, sample censored.
        let r = by_name(&results, "TTL polling 30 min");
        assert_eq!(r.staleness_max_s, 900.0);
        assert_eq!((r.staleness_censored, r.staleness_superseded), (1, 0));
        assert_eq!((r.stale_reads, r.kv_calls, r.stalled_reads), (900, 0, 0));

        // Dropped at 102 s; the reads at 100.5 and 101.5 s are stale; the read at 102.5 s waits
        // 0.1 s; the duplicate at 103 s finds version 1 cached.
        for name in [
            "keyvault-invalidator, invalidate mode",
            "keyvault-invalidator, invalidate mode, TTL 24 h",
        ] {
            let r = by_name(&results, name);
            assert_eq!(r.staleness_max_s, 2.0, "{name}");
            assert_eq!(r.stale_reads, 2, "{name}");
            assert_eq!((r.kv_calls, r.event_kv_calls), (1, 1), "{name}");
            assert_eq!(r.event_calls_per_rotation_per_instance, 1.0, "{name}");
            assert_eq!(r.stalled_reads, 1, "{name}");
            assert!((r.stalled_time_s - 0.1).abs() < 1e-9, "{name}");
            assert_eq!(r.ignored_deliveries, 1, "{name}");
        }

        // Loaded in the background from 102 s to 102.1 s; nobody waits.
        for name in [
            "keyvault-invalidator, refresh-ahead mode",
            "keyvault-invalidator, refresh-ahead mode, TTL 24 h",
        ] {
            let r = by_name(&results, name);
            assert_eq!(r.staleness_max_s, 2.1, "{name}");
            assert_eq!(r.stale_reads, 2, "{name}");
            assert_eq!((r.kv_calls, r.event_kv_calls), (1, 1), "{name}");
            assert_eq!((r.stalled_reads, r.stalled_time_s), (0, 0.0), "{name}");
            assert_eq!(r.ignored_deliveries, 1, "{name}");
        }
        assert!(check_goals(&results).iter().all(|(_, ok)| *ok));
    }

    #[test]
    fn hand_computed_expiry_before_a_late_delivery() {
        // The event arrives at 600 s, long after the 300 s safety TTL expired.
        let config = SimConfig {
            delivery_delay: LogNormalDelay::constant(secs(500)),
            ..hand_config()
        };
        let ttl = secs(300);
        let strategies = [
            StrategySpec::new("invalidate", Strategy::Invalidate { safety_ttl: ttl }),
            StrategySpec::new("refresh", Strategy::RefreshAhead { safety_ttl: ttl }),
        ];
        let results = run_ok(&config, &strategies);
        for r in &results {
            assert_common(r, 1, 0);
            // Loads at 300.5, 601.5 and 902.5 s, all for the TTL; version 1 is cached when the
            // event arrives.
            assert_eq!((r.kv_calls, r.event_kv_calls), (3, 0), "{}", r.name);
            assert_eq!(r.ignored_deliveries, 1, "{}", r.name);
        }
        // Caught up at the expiry; the reads 100.5..299.5 s are stale; three reads wait.
        let r = by_name(&results, "invalidate");
        assert_eq!(
            (r.staleness_max_s, r.stale_reads, r.stalled_reads),
            (200.0, 200, 3)
        );
        // Caught up when the background load completes at 300.6 s; the read at 300.5 s that
        // started it is served stale too.
        let r = by_name(&results, "refresh");
        assert_eq!(
            (r.staleness_max_s, r.stale_reads, r.stalled_reads),
            (200.6, 201, 0)
        );
    }

    #[test]
    fn a_later_rotation_ends_a_sample_and_one_load_covers_both() {
        // Rotations at 100 s and 101 s; their events arrive at 102 s and 103 s.
        let config = SimConfig {
            rotation_times: Some(vec![secs(100), secs(101)]),
            ..hand_config()
        };
        let strategies = both_modes_without_ttl();
        let results = run_ok(&config, &strategies);
        for r in &results {
            assert_eq!((r.rotations, r.staleness_samples), (2, 2), "{}", r.name);
            assert_eq!(r.staleness_superseded, 1, "{}", r.name);
            // The load the first event caused brings version 2, so the second event is ignored.
            assert_eq!((r.kv_calls, r.event_kv_calls), (1, 1), "{}", r.name);
            assert_eq!(r.event_calls_per_rotation_per_instance, 0.5, "{}", r.name);
            assert_eq!(r.ignored_deliveries, 1, "{}", r.name);
            assert_eq!(r.stale_reads, 2, "{}", r.name);
        }
        // Samples: 1 s (superseded) and 1 s (dropped at 102 s).
        let r = by_name(&results, "invalidate");
        assert_eq!((r.staleness_mean_s, r.staleness_max_s), (1.0, 1.0));
        // Samples: 1 s (superseded) and 1.1 s (stored at 102.1 s).
        let r = by_name(&results, "refresh");
        assert_eq!((r.staleness_mean_s, r.staleness_max_s), (1.05, 1.1));
    }

    #[test]
    fn same_seed_same_results_other_seed_other_results() {
        let config = SimConfig::default();
        let a = run_ok(&config, &default_strategies());
        let b = run_ok(&config, &default_strategies());
        assert_eq!(a, b);
        let json = |r: &[StrategyResult]| serde_json::to_string(r).unwrap_or_default();
        assert_eq!(json(&a), json(&b));
        let other = run_ok(&SimConfig { seed: 7, ..config }, &default_strategies());
        assert_ne!(a, other);
    }

    #[test]
    fn default_scenario_counts_and_goals() {
        let config = SimConfig::default();
        let results = run_ok(&config, &default_strategies());
        assert_eq!(results.len(), 6);
        for r in &results {
            // 86,400 reads a day for each of 20 x 50 pairs, whatever the phase.
            assert_eq!(r.total_reads, 20 * 50 * 86_400, "{}", r.name);
            assert_eq!(r.staleness_samples, r.rotations * 20, "{}", r.name);
            assert_eq!(
                (r.rotations, r.deliveries),
                (results[0].rotations, results[0].deliveries)
            );
            assert!(r.stale_reads > 0, "{}", r.name);
        }
        for r in results
            .iter()
            .filter(|r| matches!(r.strategy, Strategy::RefreshAhead { .. }))
        {
            assert_eq!((r.stalled_reads, r.stalled_time_s), (0, 0.0), "{}", r.name);
        }
        let goals = check_goals(&results);
        assert_eq!(goals.len(), 4 * 2 + 2);
        for (goal, ok) in goals {
            assert!(ok, "{goal}");
        }
    }

    #[test]
    fn ttl_polling_staleness_is_bounded_by_the_ttl() {
        let strategies = default_strategies();
        let results = run_ok(&SimConfig::default(), &strategies);
        for r in results.iter().filter(|r| !r.strategy.uses_events()) {
            let ttl = r.strategy.ttl().as_secs_f64();
            assert!(r.staleness_max_s <= ttl, "{}", r.name);
            assert!(
                r.staleness_max_s <= ttl + r.max_load_latency_s,
                "{}",
                r.name
            );
            assert_eq!((r.event_kv_calls, r.ignored_deliveries), (0, r.deliveries));
        }
    }

    #[test]
    fn zero_delay_and_zero_latency_make_events_instant() {
        let config = SimConfig {
            delivery_delay: LogNormalDelay::constant(Duration::ZERO),
            retry_probability: 0.0,
            load_latency: LogNormalDelay::constant(Duration::ZERO),
            ..SimConfig::default()
        };
        let results = run_ok(&config, &default_strategies());
        for r in &results {
            assert_eq!((r.stalled_reads, r.stalled_time_s), (0, 0.0), "{}", r.name);
            if r.strategy.uses_events() {
                assert_eq!(r.staleness_max_s, 0.0, "{}", r.name);
                assert_eq!(r.stale_reads, 0, "{}", r.name);
            } else {
                assert!(r.stale_reads > 0, "{}", r.name);
            }
        }
    }

    #[test]
    fn one_event_call_per_rotation_per_instance_without_duplicates_or_ttl() {
        // Rotations far apart and far from the end, so every event leads to exactly one load.
        let config = SimConfig {
            rotation_times: Some(vec![secs(1_000), secs(20_000), secs(50_000)]),
            duplicate_probability: 0.0,
            ..SimConfig::default()
        };
        let strategies = both_modes_without_ttl();
        for r in run_ok(&config, &strategies) {
            assert_eq!(r.rotations, 150);
            assert_eq!(r.event_calls_per_rotation_per_instance, 1.0, "{}", r.name);
            assert_eq!((r.kv_calls, r.event_kv_calls), (3_000, 3_000), "{}", r.name);
            assert_eq!(r.ignored_deliveries, 0, "{}", r.name);
            assert_eq!(
                r.staleness_superseded + r.staleness_censored,
                0,
                "{}",
                r.name
            );
        }
    }

    #[test]
    fn read_clock_matches_enumeration() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..2_000 {
            let period = rng.random_range(1..20);
            let clock = ReadClock {
                phase: rng.random_range(0..period),
                period,
            };
            let reads: Vec<Micros> = (0..500).map(|k| clock.phase + k * period).collect();
            let from = rng.random_range(0..200);
            let until = from + rng.random_range(0..200);
            let ends_at = until + rng.random_range(0..5);
            let inside: Vec<Micros> = reads
                .iter()
                .copied()
                .filter(|&t| from <= t && t < until)
                .collect();
            assert_eq!(clock.count(from, until), inside.len() as u64);
            let next = reads.iter().copied().find(|&t| t >= from).unwrap_or(NEVER);
            assert_eq!(clock.next_at_or_after(from), next);
            let wait: u128 = inside.iter().map(|&t| u128::from(ends_at - t)).sum();
            assert_eq!(clock.total_wait(from, until, ends_at), wait);
        }
        let clock = ReadClock {
            phase: 3,
            period: 10,
        };
        assert_eq!(clock.next_at_or_after(NEVER), NEVER);
        assert_eq!(clock.next_at_or_after(NEVER - 1), NEVER);
    }

    #[test]
    fn weird_configs_are_rejected_or_simulate_nothing() {
        let bad = [
            SimConfig {
                read_interval: Duration::ZERO,
                ..SimConfig::default()
            },
            SimConfig {
                retry_probability: 1.5,
                ..SimConfig::default()
            },
            SimConfig {
                duplicate_probability: f64::NAN,
                ..SimConfig::default()
            },
            SimConfig {
                retry_delay: UniformDelay::new(secs(2), secs(1)),
                ..SimConfig::default()
            },
            SimConfig {
                load_latency: LogNormalDelay::new(secs(2), secs(1)),
                ..SimConfig::default()
            },
            SimConfig {
                rotation_mean_interval: Duration::ZERO,
                ..SimConfig::default()
            },
            SimConfig {
                instances: usize::MAX,
                ..SimConfig::default()
            },
            SimConfig {
                duration: Duration::MAX,
                ..SimConfig::default()
            },
        ];
        for config in bad {
            assert!(run(&config, &default_strategies()).is_err(), "{config:?}");
        }
        let empty = [
            SimConfig {
                instances: 0,
                ..SimConfig::default()
            },
            SimConfig {
                secrets: 0,
                ..SimConfig::default()
            },
            SimConfig {
                duration: Duration::ZERO,
                ..SimConfig::default()
            },
        ];
        for config in empty {
            for r in run_ok(&config, &default_strategies()) {
                assert_eq!((r.total_reads, r.kv_calls, r.staleness_samples), (0, 0, 0));
                assert_eq!((r.stale_read_fraction, r.kv_calls_per_day), (0.0, 0.0));
                assert_eq!(r.event_calls_per_rotation_per_instance, 0.0);
            }
        }
        // A zero TTL reloads at every read, and still terminates.
        let tiny = SimConfig {
            instances: 1,
            secrets: 1,
            duration: secs(100),
            ..SimConfig::default()
        };
        let zero_ttl = [StrategySpec::new(
            "zero",
            Strategy::TtlPolling {
                ttl: Duration::ZERO,
            },
        )];
        let r = &run_ok(&tiny, &zero_ttl)[0];
        assert_eq!((r.kv_calls, r.stalled_reads, r.stale_reads), (100, 100, 0));
    }
}
