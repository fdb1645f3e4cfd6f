//! What a simulation run gives back: [`StrategyResult`] per strategy, the running tally it is
//! summed from, and the check of the library's goals against it.
//!
//! Separate from the engine ([`super::pair_sim`]) because it is the part a reader of the
//! benchmark report needs: what each number means and how it is computed from the samples.

use serde::{Deserialize, Serialize};

use super::config::{Strategy, StrategySpec};
use super::scenario::Scenario;
use super::{to_seconds, Micros, MICROS_PER_SECOND, SECONDS_PER_DAY};

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

/// What a strategy did, summed over pairs.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) staleness: Vec<Micros>,
    pub(super) superseded: u64,
    pub(super) censored: u64,
    pub(super) reads: u64,
    pub(super) stale_reads: u64,
    pub(super) stalled_reads: u64,
    pub(super) stalled: u128,
    pub(super) kv_calls: u64,
    pub(super) event_kv_calls: u64,
    pub(super) ignored_deliveries: u64,
    pub(super) max_load_latency: Micros,
}

impl Tally {
    pub(super) fn into_result(
        mut self,
        spec: &StrategySpec,
        scenario: &Scenario,
    ) -> StrategyResult {
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
