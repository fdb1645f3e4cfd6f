//! The rows of the summary table: for each measurement, what was measured, the baseline it is
//! compared with, the goal and whether it was met, and how its numbers are written.
//!
//! Separate from the document around the table ([`super::document`]) because this is where
//! each goal is stated: one place to read to know what "met" means for a row.

use crate::end_to_end::TransportResult;

use super::{CriterionResults, Measurements};

/// One line of the summary table.
pub(super) struct Row {
    pub(super) measure: String,
    pub(super) ours: String,
    pub(super) baseline: String,
    pub(super) ratio: String,
    pub(super) goal: String,
    pub(super) verdict: GoalVerdict,
}

/// Whether a row's goal was met, or why the row has no verdict.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum GoalVerdict {
    Met,
    Missed,
    Information,
    NotRun,
}

impl GoalVerdict {
    pub(super) fn of(met: bool) -> GoalVerdict {
        if met {
            GoalVerdict::Met
        } else {
            GoalVerdict::Missed
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            GoalVerdict::Met => "met",
            GoalVerdict::Missed => "**missed**",
            GoalVerdict::Information => "",
            GoalVerdict::NotRun => "not run",
        }
    }
}

pub(super) fn ns(value: f64) -> String {
    if value >= 1_000.0 {
        format!("{:.2} µs", value / 1_000.0)
    } else {
        format!("{value:.0} ns")
    }
}

pub(super) fn us(value: f64) -> String {
    if value >= 1_000.0 {
        format!("{:.2} ms", value / 1_000.0)
    } else {
        format!("{value:.0} µs")
    }
}

pub(super) fn per_second(value: f64) -> String {
    if value >= 1_000.0 {
        format!("{:.0}k/s", value / 1_000.0)
    } else {
        format!("{value:.0}/s")
    }
}

pub(super) fn not_run(measure: &str, goal: &str, why: &str) -> Row {
    Row {
        measure: measure.to_owned(),
        ours: why.to_owned(),
        baseline: String::new(),
        ratio: String::new(),
        goal: goal.to_owned(),
        verdict: GoalVerdict::NotRun,
    }
}

/// `ours` beside `baseline`, both criterion medians; `limit` is the largest acceptable ratio.
pub(super) fn ratio_row(
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
        verdict: limit.map_or(GoalVerdict::Information, |limit| {
            GoalVerdict::of(ratio <= limit)
        }),
    }
}

pub(super) fn parse_rows(criterion: &CriterionResults, rows: &mut Vec<Row>) {
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

pub(super) fn hit_path_rows(criterion: &CriterionResults, rows: &mut Vec<Row>) {
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
pub(super) fn transport_goals(transport: &str) -> (Option<f64>, Option<f64>) {
    match transport {
        "in-process" | "in-process, invalidate mode" => (Some(100.0), Some(200_000.0)),
        "RabbitMQ" => (Some(5_000.0), Some(10_000.0)),
        "Service Bus emulator" => (Some(10_000.0), None),
        _ => (None, None),
    }
}

pub(super) fn latency_row(name: &str, result: &TransportResult, p99_limit: Option<f64>) -> Row {
    let goal = p99_limit.map_or(String::new(), |limit| format!("p99 < {}", us(limit)));
    let Some(latency) = &result.latency else {
        return Row {
            verdict: GoalVerdict::Missed,
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
        verdict: p99_limit.map_or(GoalVerdict::Information, |limit| {
            GoalVerdict::of(latency.p99_us < limit)
        }),
    }
}

pub(super) fn transport_rows(measurements: &Measurements, rows: &mut Vec<Row>) {
    let section = |transport: &str| match transport {
        "in-process" => "3. Engine in process",
        "in-process, invalidate mode" => "3. Engine in process, invalidate mode",
        "RabbitMQ" => "4. Through RabbitMQ",
        "Service Bus emulator, prefetch 64" => "5. Through the Service Bus emulator, prefetch 64",
        "Event Grid namespace pull" => "5b. Through Event Grid namespace pull (stand-in)",
        "Event Grid webhook" => "5c. Through the Event Grid webhook (HTTP push)",
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
            verdict: rate_floor.map_or(GoalVerdict::Information, |floor| {
                GoalVerdict::of(result.throughput_per_second >= floor)
            }),
        });
    }
    for (transport, why) in &measurements.skipped {
        rows.push(not_run(section(transport), "", why));
    }
}

pub(super) fn simulation_rows(measurements: &Measurements, rows: &mut Vec<Row>) {
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
                GoalVerdict::Information
            } else {
                GoalVerdict::of(goals.iter().all(|(_, met)| *met))
            },
        });
    }
}

pub(super) fn memory_rows(measurements: &Measurements, rows: &mut Vec<Row>) {
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
        verdict: GoalVerdict::Information,
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
        verdict: GoalVerdict::Information,
    });
}
