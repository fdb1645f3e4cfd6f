//! Gathers every measurement of a run into one markdown table, with the machine and the date,
//! and the details under it: what `BENCHMARKS.md` holds.

mod rows;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::end_to_end::TransportResult;
use crate::memory::MemoryResult;
use crate::simulation::{SimConfig, StrategyResult};

use rows::*;

/// What the `kvi-bench` run measured itself (criterion's figures are read from its files).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Measurements {
    /// In process, RabbitMQ, Service Bus emulator; a transport that could not run is absent and
    /// its reason is in `skipped`.
    pub transports: Vec<TransportResult>,
    /// Transports that could not be measured, and why.
    pub skipped: Vec<(String, String)>,
    /// The staleness simulation's configuration.
    pub simulation_config: Option<SimConfig>,
    /// The staleness simulation, one row per strategy.
    pub simulation: Vec<StrategyResult>,
    /// The simulation's goals and whether each was met.
    pub simulation_goals: Vec<(String, bool)>,
    /// Memory, from the probe process.
    pub memory: Option<MemoryResult>,
}

/// Where criterion wrote its estimates.
pub struct CriterionResults {
    home: PathBuf,
}

impl CriterionResults {
    /// The results under `home` (criterion's `CRITERION_HOME`).
    pub fn new(home: impl Into<PathBuf>) -> Self {
        CriterionResults { home: home.into() }
    }

    /// The median time of `group/id` in nanoseconds, if that benchmark ran.
    pub fn median_ns(&self, group: &str, id: &str) -> Option<f64> {
        let path = self
            .home
            .join(group)
            .join(id)
            .join("new")
            .join("estimates.json");
        let estimates: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        estimates["median"]["point_estimate"].as_f64()
    }
}

/// The summary table.
pub fn summary_table(criterion: &CriterionResults, measurements: &Measurements) -> String {
    let mut rows = Vec::new();
    parse_rows(criterion, &mut rows);
    hit_path_rows(criterion, &mut rows);
    transport_rows(measurements, &mut rows);
    simulation_rows(measurements, &mut rows);
    memory_rows(measurements, &mut rows);
    let mut table = String::from(
        "| Measure | This library | Beside | Ratio | Goal | Verdict |\n|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} | {} |",
            row.measure,
            row.ours,
            row.baseline,
            row.ratio,
            row.goal,
            row.verdict.label()
        );
    }
    table
}

/// The simulation's full results, one row per strategy.
pub fn simulation_table(measurements: &Measurements) -> String {
    let mut table = String::from(
        "| Strategy | Mean staleness | p99 | Max | Stale reads | KV calls/day | Event calls per rotation per instance | Reader stalls | Stalled time |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &measurements.simulation {
        let _ = writeln!(
            table,
            "| {} | {:.2} s | {:.2} s | {:.2} s | {} ({:.4}%) | {:.0} | {:.4} | {} | {:.1} s |",
            r.name,
            r.staleness_mean_s,
            r.staleness_p99_s,
            r.staleness_max_s,
            r.stale_reads,
            r.stale_read_fraction * 100.0,
            r.kv_calls_per_day,
            r.event_calls_per_rotation_per_instance,
            r.stalled_reads,
            r.stalled_time_s
        );
    }
    table
}

/// The machine: kernel, CPU, cores, toolchain.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info
                .lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .to_owned();
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024.0 / 1024.0)
        })
        .unwrap_or(0.0);
    let run = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    format!(
        "{cpu}, {cores} cores available, {memory_gib:.0} GiB; {}; {}",
        run("uname", &["-srm"]),
        run("rustc", &["--version"])
    )
}

/// The whole `BENCHMARKS.md`.
pub fn document(criterion: &CriterionResults, measurements: &Measurements, header: &str) -> String {
    let mut doc = String::new();
    let _ = writeln!(doc, "# Benchmarks\n\n{header}\n");
    let _ = writeln!(doc, "{}", summary_table(criterion, measurements));
    if let Some(config) = &measurements.simulation_config {
        let _ = writeln!(
            doc,
            "## 6. Staleness and Key Vault cost (simulated day)\n\n{} instances × {} secrets, one read per second per secret per instance, rotations every {:.1} h on average (Poisson), delivery delay log-normal (median {:?}, p99 {:?}) plus Event Grid retries ({:.0}%, {:?}–{:?}) and duplicates ({:.0}%), Key Vault latency log-normal (median {:?}, p99 {:?}); seed {}. Every strategy sees the same draws.\n",
            config.instances,
            config.secrets,
            config.rotation_mean_interval.as_secs_f64() / 3600.0,
            config.delivery_delay.median,
            config.delivery_delay.p99,
            config.retry_probability * 100.0,
            config.retry_delay.min,
            config.retry_delay.max,
            config.duplicate_probability * 100.0,
            config.load_latency.median,
            config.load_latency.p99,
            config.seed,
        );
        let _ = writeln!(doc, "{}", simulation_table(measurements));
        for (goal, met) in &measurements.simulation_goals {
            let _ = writeln!(doc, "- {}: {goal}", if *met { "met" } else { "**missed**" });
        }
        doc.push('\n');
    }
    let _ = writeln!(
        doc,
        "Where the time goes where a goal is missed (callgrind instruction counts, which do not depend on the machine's load): [`bench/profile.md`](bench/profile.md)."
    );
    doc
}

/// Reads the measurements `kvi-bench` saved under `dir`.
pub fn load(dir: &Path) -> Measurements {
    std::fs::read(dir.join("measurements.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A criterion results directory holding `medians` as `(group, id, nanoseconds)`.
    fn criterion_with(medians: &[(&str, &str, f64)]) -> (CriterionResults, PathBuf) {
        let home = std::env::temp_dir().join(format!(
            "kvi-bench-report-{}-{}",
            std::process::id(),
            medians.len()
        ));
        for (group, id, median) in medians {
            let dir = home.join(group).join(id).join("new");
            std::fs::create_dir_all(&dir).unwrap();
            let estimates = serde_json::json!({ "median": { "point_estimate": median } });
            std::fs::write(dir.join("estimates.json"), estimates.to_string()).unwrap();
        }
        (CriterionResults::new(&home), home)
    }

    fn line<'a>(table: &'a str, starts: &str) -> &'a str {
        table
            .lines()
            .find(|line| line.starts_with(starts))
            .unwrap_or_else(|| panic!("no line starting with {starts:?} in\n{table}"))
    }

    #[test]
    fn ratios_are_judged_against_their_goal() {
        let (criterion, home) = criterion_with(&[
            ("parse_event_grid", "kvi_parse_events", 3_000.0),
            ("parse_event_grid", "serde_json_value", 2_000.0),
            ("parse_cloud_events", "kvi_parse_events", 5_000.0),
            ("parse_cloud_events", "serde_json_value", 2_000.0),
        ]);
        let table = summary_table(&criterion, &Measurements::default());
        let event_grid = line(&table, "| 1. Parse, Event Grid");
        assert!(event_grid.contains("| 1.50× |"), "{event_grid}");
        assert!(event_grid.ends_with("| met |"), "{event_grid}");
        let cloud_events = line(&table, "| 1. Parse, CloudEvents");
        assert!(cloud_events.contains("| 2.50× |"), "{cloud_events}");
        assert!(cloud_events.ends_with("| **missed** |"), "{cloud_events}");
        let peer = line(
            &table,
            "| 2. Cache hit, 1 thread (same process as the peer)",
        );
        assert!(peer.ends_with("| not run |"), "{peer}");
        std::fs::remove_dir_all(home).unwrap();
    }

    #[test]
    fn a_lost_event_is_a_missed_goal_not_a_percentile() {
        let measurements = Measurements {
            transports: vec![TransportResult {
                transport: "RabbitMQ".to_owned(),
                rate: 1_000,
                latency_measured: true,
                latency: None,
                throughput_events: 10,
                throughput_per_second: 12_000.0,
            }],
            ..Measurements::default()
        };
        let table = summary_table(&CriterionResults::new("/nonexistent"), &measurements);
        let lost = line(&table, "| 4. Through RabbitMQ |");
        assert!(lost.contains("events were lost"), "{lost}");
        assert!(lost.ends_with("| **missed** |"), "{lost}");
        let throughput = line(&table, "| 4. Through RabbitMQ: most events/s");
        assert!(throughput.contains("| 12k/s |"), "{throughput}");
        assert!(throughput.ends_with("| met |"), "{throughput}");
    }
}
