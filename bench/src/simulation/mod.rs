//! A deterministic discrete-event simulation of cached Key Vault secrets across a fleet: how
//! stale they get after rotations, and how many Key Vault calls that freshness costs, for TTL
//! polling and for keyvault-invalidator's two modes.
//!
//! Everything runs on a virtual clock in whole microseconds (no sleeping, no async, no wall
//! time), and every random draw comes from seeded [`StdRng`](rand::rngs::StdRng)s, so a
//! configuration gives the same numbers bit for bit on every run (with the same `rand` release:
//! `StdRng`'s algorithm is not promised across releases).
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

//!
//! # Where things are
//!
//! - `config`: what a run is given ([`SimConfig`], [`StrategySpec`]) and what it rejects
//!   ([`ConfigError`]);
//! - `scenario`: everything drawn at random, once, for all strategies;
//! - `pair_sim`: one (instance, secret) pair stepped under one strategy, where the model's rules
//!   live;
//! - `result`: the numbers a run gives back ([`StrategyResult`]) and [`check_goals`].

use std::time::Duration;

mod config;
mod pair_sim;
mod result;
mod scenario;
#[cfg(test)]
mod tests;

pub use config::{
    default_strategies, ConfigError, LogNormalDelay, SimConfig, Strategy, StrategySpec,
    UniformDelay,
};
pub use result::{check_goals, StrategyResult};
use scenario::Scenario;

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

/// Simulates `strategies` over one scenario drawn from `config`, one result per strategy in
/// the same order.
pub fn run(
    config: &SimConfig,
    strategies: &[StrategySpec],
) -> Result<Vec<StrategyResult>, ConfigError> {
    let scenario = Scenario::generate(config)?;
    Ok(strategies.iter().map(|spec| scenario.run(spec)).collect())
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
