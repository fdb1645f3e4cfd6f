//! Runs the measurements criterion does not (engine, transports, simulation, memory), then
//! writes the report. `bench/run` calls it after the criterion benchmarks.
//!
//! ```text
//! kvi-bench [--quick] [--only SECTION] [--out DIR] [--criterion DIR] [--write FILE]
//!   SECTION: engine, rabbitmq, servicebus, pull, webhook, simulation, memory, or several: a,b
//! kvi-bench report [--out DIR] [--criterion DIR] [--write FILE]   # the report only
//! kvi-bench memory-probe SECRETS                                  # used by the run itself
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use keyvault_invalidator_bench::end_to_end::{self, Sizes};
use keyvault_invalidator_bench::report::{self, CriterionResults, Measurements};
use keyvault_invalidator_bench::{eventgrid_pull, memory, simulation, webhook};

const DEFAULT_RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

struct Args {
    command: String,
    quick: bool,
    out: PathBuf,
    criterion: PathBuf,
    write: Option<PathBuf>,
    only: Option<String>,
    rest: Vec<String>,
}

impl Args {
    fn wants(&self, section: &str) -> bool {
        // `--only servicebus,pull`: several sections, run in one process and one report.
        self.only
            .as_deref()
            .is_none_or(|only| only.split(',').any(|wanted| wanted == section))
    }
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        command: "run".to_owned(),
        quick: false,
        out: PathBuf::from("target/kvi-bench"),
        criterion: PathBuf::from("target/kvi-bench/criterion"),
        write: None,
        only: None,
        rest: Vec::new(),
    };
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        let mut value = || given.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--out" => args.out = value()?.into(),
            "--criterion" => args.criterion = value()?.into(),
            "--write" => args.write = Some(value()?.into()),
            "--only" => args.only = Some(value()?),
            "run" | "report" | "memory-probe" => args.command = arg,
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            other => args.rest.push(other.to_owned()),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match args() {
        Ok(args) => args,
        Err(problem) => {
            eprintln!("kvi-bench: {problem}");
            return ExitCode::from(2);
        }
    };
    let outcome = match args.command.as_str() {
        "memory-probe" => memory_probe(&args).await,
        "report" => write_report(&args),
        _ => measure(&args).await.and_then(|()| write_report(&args)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("kvi-bench: {problem}");
            ExitCode::FAILURE
        }
    }
}

async fn memory_probe(args: &Args) -> Result<(), String> {
    let secrets = args
        .rest
        .first()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let result = memory::probe(secrets)
        .await
        .ok_or("cannot read /proc/self/statm")?;
    println!(
        "{}",
        serde_json::to_string(&result).map_err(|e| e.to_string())?
    );
    Ok(())
}

async fn measure(args: &Args) -> Result<(), String> {
    let mut measurements = Measurements::default();
    // The Service Bus emulator takes a burst at a few hundred events a second (see
    // BENCHMARKS.md), so its burst is smaller to keep the run short.
    let (engine, rabbitmq, servicebus) = if args.quick {
        (
            Sizes {
                rate: 10_000,
                seconds: 1,
                burst: 20_000,
            },
            Sizes {
                rate: 1_000,
                seconds: 1,
                burst: 2_000,
            },
            Sizes {
                rate: 1_000,
                seconds: 1,
                burst: 1_000,
            },
        )
    } else {
        (
            Sizes {
                rate: 10_000,
                seconds: 5,
                burst: 200_000,
            },
            Sizes {
                rate: 1_000,
                seconds: 10,
                burst: 20_000,
            },
            Sizes {
                rate: 1_000,
                seconds: 10,
                burst: 5_000,
            },
        )
    };

    if args.wants("engine") {
        eprintln!("3. engine in process: {engine:?}");
        measurements
            .transports
            .extend(end_to_end::in_process(engine).await);
    }

    let url = std::env::var("RABBITMQ_URL").unwrap_or_else(|_| DEFAULT_RABBITMQ_URL.to_owned());
    if args.wants("rabbitmq") {
        eprintln!("4. RabbitMQ: {rabbitmq:?}");
        match end_to_end::rabbitmq(&url, rabbitmq).await {
            Ok(result) => measurements.transports.push(result),
            Err(why) => measurements.skipped.push(("RabbitMQ".to_owned(), why)),
        }
    }

    if args.wants("servicebus") {
        eprintln!("5. Service Bus emulator: {servicebus:?}");
        match end_to_end::servicebus_emulator(servicebus).await {
            Ok(results) => measurements.transports.extend(results),
            Err(why) => measurements
                .skipped
                .push(("Service Bus emulator".to_owned(), why)),
        }
    }

    if args.wants("pull") {
        // The Service Bus emulator's sizes: the figure to compare with.
        eprintln!("5b. Event Grid namespace pull: {servicebus:?}");
        match eventgrid_pull::eventgrid_pull(servicebus).await {
            Ok(result) => measurements.transports.push(result),
            Err(why) => measurements
                .skipped
                .push((eventgrid_pull::TRANSPORT.to_owned(), why)),
        }
    }

    if args.wants("webhook") {
        // The Service Bus emulator's sizes: the two are compared in the report.
        eprintln!("5c. Event Grid webhook: {servicebus:?}");
        match webhook::webhook_push(servicebus).await {
            Ok(result) => measurements.transports.push(result),
            Err(why) => measurements
                .skipped
                .push((webhook::TRANSPORT.to_owned(), why)),
        }
    }

    if args.wants("simulation") {
        eprintln!("6. staleness simulation");
        let config = simulation::SimConfig::default();
        measurements.simulation = simulation::run(&config, &simulation::default_strategies())
            .map_err(|error| error.to_string())?;
        measurements.simulation_goals = simulation::check_goals(&measurements.simulation);
        measurements.simulation_config = Some(config);
    }

    if args.wants("memory") {
        eprintln!("7. memory (in a process of its own)");
        measurements.memory = memory_in_own_process(if args.quick { 10_000 } else { 100_000 });
    }

    std::fs::create_dir_all(&args.out).map_err(|e| e.to_string())?;
    let json = serde_json::to_vec_pretty(&measurements).map_err(|e| e.to_string())?;
    std::fs::write(args.out.join("measurements.json"), json).map_err(|e| e.to_string())
}

fn memory_in_own_process(secrets: usize) -> Option<memory::MemoryResult> {
    let output = std::process::Command::new(std::env::current_exe().ok()?)
        .args(["memory-probe", &secrets.to_string()])
        .output()
        .ok()?;
    serde_json::from_slice(&output.stdout).ok()
}

fn write_report(args: &Args) -> Result<(), String> {
    let criterion = CriterionResults::new(&args.criterion);
    let measurements = report::load(&args.out);
    let commit = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    let header = format!(
        "Run with `bench/run`{} on {date}, commit `{commit}`.\n\nMachine: {}.\n\nMicro benchmarks are criterion medians; every ratio compares two figures measured in the same run. Latencies run from the moment an event was handed to the transport to the moment the cache changed, recorded in an HDR histogram; the publisher runs on its own thread at a fixed rate and never waits for the job, and its lag behind the schedule is shown beside the percentiles.",
        if args.quick { " --quick" } else { "" },
        report::machine()
    );
    println!("{}", report::summary_table(&criterion, &measurements));
    if let Some(path) = &args.write {
        std::fs::write(path, report::document(&criterion, &measurements, &header))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
