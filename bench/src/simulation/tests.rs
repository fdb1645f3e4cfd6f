//! Unit tests of the simulation: hand-computable scenarios whose exact numbers are known, and
//! the configuration checks.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::scenario::ReadClock;
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
