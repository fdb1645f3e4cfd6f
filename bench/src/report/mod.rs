//! Gathers every measurement of a run into one markdown table, with the machine and the date,
//! and the details under it: what `BENCHMARKS.md` holds.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::end_to_end::TransportResult;
use crate::memory::MemoryResult;
use crate::simulation::{SimConfig, StrategyResult};

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

/// One line of the summary table.
struct Row {
    measure: String,
    ours: String,
    baseline: String,
    ratio: String,
    goal: String,
    verdict: Verdict,
}

#[derive(Clone, Copy, PartialEq)]
enum Verdict {
    Met,
    Missed,
    Information,
    NotRun,
}

impl Verdict {
    fn of(met: bool) -> Verdict {
        if met {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "**missed**",
            Verdict::Information => "",
            Verdict::NotRun => "not run",
        }
    }
}

fn ns(value: f64) -> String {
    if value >= 1_000.0 {
        format!("{:.2} µs", value / 1_000.0)
    } else {
        format!("{value:.0} ns")
    }
}

fn us(value: f64) -> String {
    if value >= 1_000.0 {
        format!("{:.2} ms", value / 1_000.0)
    } else {
        format!("{value:.0} µs")
    }
}

fn per_second(value: f64) -> String {
    if value >= 1_000.0 {
        format!("{:.0}k/s", value / 1_000.0)
    } else {
        format!("{value:.0}/s")
    }
}

fn not_run(measure: &str, goal: &str, why: &str) -> Row {
    Row {
        measure: measure.to_owned(),
        ours: why.to_owned(),
        baseline: String::new(),
        ratio: String::new(),
        goal: goal.to_owned(),
        verdict: Verdict::NotRun,
    }
}

/// `ours` beside `baseline`, both criterion medians; `limit` is the largest acceptable ratio.
fn ratio_row(
    criterion: &CriterionResults,
    measure: &str,
    ours: (&str, &str),
    baseline: (&str, &str, &str),
    limit: Option<f64>,
) -> Row {
    let goal = limit.map_or(String::new(), |limit| format!("≤ {limit}× {}", baseline.2));
    let (Some(mine), Some(theirs)) = (
        criterion.median_ns(ours.0, ours.1),
        criterion.median_ns(baseline.0, baseline.1),
    ) else {
        return not_run(measure, &goal, "no criterion result");
    };
    let ratio = mine / theirs;
    Row {
        measure: measure.to_owned(),
        ours: ns(mine),
        baseline: format!("{}: {}", baseline.2, ns(theirs)),
        ratio: format!("{ratio:.2}×"),
        goal,
        verdict: limit.map_or(Verdict::Information, |limit| Verdict::of(ratio <= limit)),
    }
}

fn parse_rows(criterion: &CriterionResults, rows: &mut Vec<Row>) {
    for (schema, label) in [
        ("parse_event_grid", "Event Grid"),
        ("parse_cloud_events", "CloudEvents"),
    ] {
        let mut row = ratio_row(
            criterion,
            &format!("1. Parse, {label} sample (per event)"),
            (schema, "kvi_parse_events"),
            (schema, "serde_json_value", "serde_json → Value"),
            Some(2.0),
        );
        if let Some(mine) = criterion.median_ns(schema, "kvi_parse_events") {
            row.ours = format!("{} ({})", ns(mine), per_second(1e9 / mine));
        }
        rows.push(row);
    }
}

fn hit_path_rows(criterion: &CriterionResults, rows: &mut Vec<Row>) {
    use crate::hit_path::{ONE_THREAD, TWO_THREADS};
    for (group, threads) in [(ONE_THREAD, "1 thread"), (TWO_THREADS, "2 threads")] {
        let ours = (group, "kvi_cached_secret_provider");
        rows.push(ratio_row(
            criterion,
            &format!("2. Cache hit, {threads}"),
            ours,
            (group, "raw_moka", "raw moka"),
            Some(2.0),
        ));
        rows.push(ratio_row(
            criterion,
            &format!("2. Cache hit, {threads}"),
            ours,
            (group, "rwlock_hashmap", "RwLock<HashMap>"),
            None,
        ));
        rows.push(ratio_row(
            criterion,
            &format!("2. Cache hit, {threads} (same process as the peer)"),
            (group, "kvi_in_peer_process"),
            (
                group,
                "aws_secretsmanager_caching",
                "aws_secretsmanager_caching",
            ),
            Some(1.0),
        ));
        rows.push(ratio_row(
            criterion,
            &format!("2. Cache hit, {threads}, after an unrelated invalidation"),
            (group, "kvi_after_an_invalidation"),
            (group, "raw_moka", "raw moka"),
            Some(2.0),
        ));
    }
}

/// Goals per transport: latency p99 limit in µs, least events per second.
fn transport_goals(transport: &str) -> (Option<f64>, Option<f64>) {
    match transport {
        "in-process" | "in-process, invalidate mode" => (Some(100.0), Some(200_000.0)),
        "RabbitMQ" => (Some(5_000.0), Some(10_000.0)),
        "Service Bus emulator" => (Some(10_000.0), None),
        _ => (None, None),
    }
}

fn latency_row(name: &str, result: &TransportResult, p99_limit: Option<f64>) -> Row {
    let goal = p99_limit.map_or(String::new(), |limit| format!("p99 < {}", us(limit)));
    let Some(latency) = &result.latency else {
        return Row {
            verdict: Verdict::Missed,
            ..not_run(name, &goal, "events were lost")
        };
    };
    Row {
        measure: format!(
            "{name}: publish → cache changed at {}",
            per_second(result.rate as f64)
        ),
        ours: format!(
            "p50 {} · p99 {} · p99.9 {} · max {}",
            us(latency.p50_us),
            us(latency.p99_us),
            us(latency.p999_us),
            us(latency.max_us)
        ),
        baseline: format!("publisher lag {}", us(latency.publisher_lag_us)),
        ratio: String::new(),
        goal,
        verdict: p99_limit.map_or(Verdict::Information, |limit| {
            Verdict::of(latency.p99_us < limit)
        }),
    }
}

fn transport_rows(measurements: &Measurements, rows: &mut Vec<Row>) {
    let section = |transport: &str| match transport {
        "in-process" => "3. Engine in process",
        "in-process, invalidate mode" => "3. Engine in process, invalidate mode",
        "RabbitMQ" => "4. Through RabbitMQ",
        "Service Bus emulator, prefetch 64" => "5. Through the Service Bus emulator, prefetch 64",
        _ => "5. Through the Service Bus emulator",
    };
    for result in &measurements.transports {
        let (p99_limit, rate_floor) = transport_goals(&result.transport);
        let name = section(&result.transport);
        if result.latency_measured {
            rows.push(latency_row(name, result, p99_limit));
        }
        let goal = rate_floor.map_or(String::new(), |floor| format!("≥ {}", per_second(floor)));
        rows.push(Row {
            measure: format!(
                "{name}: most events/s ({} events at once)",
                result.throughput_events
            ),
            ours: per_second(result.throughput_per_second),
            baseline: String::new(),
            ratio: String::new(),
            goal,
            verdict: rate_floor.map_or(Verdict::Information, |floor| {
                Verdict::of(result.throughput_per_second >= floor)
            }),
        });
    }
    for (transport, why) in &measurements.skipped {
        rows.push(not_run(section(transport), "", why));
    }
}

fn simulation_rows(measurements: &Measurements, rows: &mut Vec<Row>) {
    let baseline = measurements
        .simulation
        .iter()
        .find(|r| r.name.contains("300 s"));
    for result in &measurements.simulation {
        let goals: Vec<&(String, bool)> = measurements
            .simulation_goals
            .iter()
            .filter(|(goal, _)| goal.starts_with(&result.name))
            .collect();
        rows.push(Row {
            measure: format!("6. Staleness, {}", result.name),
            ours: format!(
                "mean {:.1} s · max {:.1} s · stale reads {:.4}% · {:.0} KV calls/day · {} stalls",
                result.staleness_mean_s,
                result.staleness_max_s,
                result.stale_read_fraction * 100.0,
                result.kv_calls_per_day,
                result.stalled_reads
            ),
            baseline: baseline
                .filter(|b| b.name != result.name)
                .map_or(String::new(), |b| format!("TTL 300 s: mean {:.1} s", b.staleness_mean_s)),
            ratio: baseline
                .filter(|b| b.name != result.name && b.staleness_mean_s > 0.0)
                .map_or(String::new(), |b| {
                    format!("{:.3}×", result.staleness_mean_s / b.staleness_mean_s)
                }),
            goal: if goals.is_empty() {
                String::new()
            } else {
                "staleness ≤ delivery delay; ≤ 1 KV call/instance/rotation; no stalls (refresh-ahead)"
                    .to_owned()
            },
            verdict: if goals.is_empty() {
                Verdict::Information
            } else {
                Verdict::of(goals.iter().all(|(_, met)| *met))
            },
        });
    }
}

fn memory_rows(measurements: &Measurements, rows: &mut Vec<Row>) {
    let Some(memory) = &measurements.memory else {
        rows.push(not_run("7. Memory", "", "the probe did not run"));
        return;
    };
    rows.push(Row {
        measure: "7. Memory: idle job (empty cache, in-memory source)".to_owned(),
        ours: format!("{} KiB resident", memory.idle_job_kib),
        baseline: format!("process baseline {} KiB", memory.baseline_kib),
        ratio: String::new(),
        goal: String::new(),
        verdict: Verdict::Information,
    });
    rows.push(Row {
        measure: format!(
            "7. Memory: per cached secret ({} secrets, {}-byte values)",
            memory.secrets, memory.value_bytes
        ),
        ours: format!("{:.0} bytes", memory.per_secret_bytes),
        baseline: String::new(),
        ratio: String::new(),
        goal: String::new(),
        verdict: Verdict::Information,
    });
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
