//! kvi-agent over HTTP on loopback, beside a minimal hyper server answering the same bytes.
//!
//! ```text
//! kvi-agent-bench run [--quick]     # everything; prints a Markdown table
//! kvi-agent-bench serve-agent       # used by run: the agent, until stdin closes
//! kvi-agent-bench serve-floor BODY  # used by run: the floor, until stdin closes
//! kvi-agent-bench load ADDRESS PATH WORKERS RATE|max SECONDS [TOKEN]   # used by run
//! kvi-agent-bench memory SECRETS    # used by run
//! ```
//!
//! Each server, each load and the memory probe run in a process of their own; the load
//! generator runs on one thread, the servers on the default multi-threaded runtime.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use keyvault_invalidator_bench::agent::load::{self, LoadPlan, LoadResult};
use keyvault_invalidator_bench::agent::{memory, servers, SECRET, TOKEN};

/// The concurrency of the throughput runs: a busy service's connection pool.
const WORKERS: usize = 16;
/// The rate of the latency runs, requests per second.
const RATE: f64 = 5_000.0;
/// The secrets of the memory probe (the cache's default capacity).
const MEMORY_SECRETS: usize = 10_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or("run");
    match command {
        "run" => run(args.iter().any(|a| a == "--quick")),
        "serve-agent" => multi_thread(servers::serve_agent()),
        "serve-floor" => {
            let body = args.get(1).cloned().unwrap_or_default();
            multi_thread(servers::serve_floor(body.into()))
        }
        "load" => match parse_load(&args[1..]) {
            Some(plan) => {
                let result = single_thread(load::run(plan));
                println!("{}", serde_json::to_string(&result).expect("json"));
            }
            None => {
                eprintln!(
                    "usage: kvi-agent-bench load ADDRESS PATH WORKERS RATE|max SECONDS [TOKEN]"
                );
                return ExitCode::from(2);
            }
        },
        "memory" => {
            let secrets = args
                .get(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(MEMORY_SECRETS);
            let result = multi_thread(memory::probe(secrets)).expect("/proc/self/statm");
            println!("{}", serde_json::to_string(&result).expect("json"));
        }
        other => {
            eprintln!("unknown command {other}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

fn multi_thread<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(future)
}

fn single_thread<T>(future: impl std::future::Future<Output = T>) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    tokio::task::LocalSet::new().block_on(&runtime, future)
}

fn parse_load(args: &[String]) -> Option<LoadPlan> {
    Some(LoadPlan {
        address: args.first()?.parse().ok()?,
        path: args.get(1)?.clone(),
        workers: args.get(2)?.parse().ok()?,
        rate: match args.get(3)?.as_str() {
            "max" => None,
            rate => Some(rate.parse().ok()?),
        },
        duration: Duration::from_secs_f64(args.get(4)?.parse().ok()?),
        warm_up: Duration::from_secs(1),
        token: args.get(5).cloned(),
    })
}

struct Server {
    child: Child,
    address: SocketAddr,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(std::env::current_exe().expect("this binary"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("a server process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("its first line");
        let address = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Server { child, address }
    }

    fn resident_kib(&self) -> Option<u64> {
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.child.id())).ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * 4)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn load(
    address: SocketAddr,
    path: &str,
    rate: Option<f64>,
    seconds: f64,
    token: bool,
) -> LoadResult {
    let rate = rate.map_or("max".to_owned(), |r| r.to_string());
    let mut args = vec![
        "load".to_owned(),
        address.to_string(),
        path.to_owned(),
        WORKERS.to_string(),
        rate,
        seconds.to_string(),
    ];
    if token {
        args.push(TOKEN.to_owned());
    }
    let output = Command::new(std::env::current_exe().expect("this binary"))
        .args(&args)
        .output()
        .expect("the load generator");
    assert!(
        output.status.success(),
        "the load failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("its JSON")
}

fn median_by(mut results: Vec<LoadResult>, key: impl Fn(&LoadResult) -> f64) -> LoadResult {
    results.sort_by(|a, b| key(a).total_cmp(&key(b)));
    results.swap_remove(results.len() / 2)
}

fn run(quick: bool) {
    let (seconds, rounds) = if quick { (2.0, 1) } else { (10.0, 3) };
    let path = format!("/v1/secrets/{SECRET}");
    let agent = Server::start(&["serve-agent"]);
    let body = single_thread(load::fetch(agent.address, &path, TOKEN));
    let floor = Server::start(&["serve-floor", std::str::from_utf8(&body).expect("JSON")]);
    let idle_agent_rss = agent.resident_kib();

    let mut agent_max = Vec::new();
    let mut floor_max = Vec::new();
    let mut agent_rate = Vec::new();
    let mut floor_rate = Vec::new();
    // Interleaved, so a noisy neighbour's burst falls on both sides.
    for _ in 0..rounds {
        agent_max.push(load(agent.address, &path, None, seconds, true));
        floor_max.push(load(floor.address, &path, None, seconds, false));
        agent_rate.push(load(agent.address, &path, Some(RATE), seconds, true));
        floor_rate.push(load(floor.address, &path, Some(RATE), seconds, false));
    }
    let loaded_agent_rss = agent.resident_kib();
    drop(floor);
    drop(agent);
    let agent_max = median_by(agent_max, |r| r.requests_per_second);
    let floor_max = median_by(floor_max, |r| r.requests_per_second);
    let agent_rate = median_by(agent_rate, |r| r.p99_us);
    let floor_rate = median_by(floor_rate, |r| r.p99_us);

    let memory_output = Command::new(std::env::current_exe().expect("this binary"))
        .args(["memory", &MEMORY_SECRETS.to_string()])
        .output()
        .expect("the memory probe");
    let memory: memory::AgentMemory =
        serde_json::from_slice(&memory_output.stdout).expect("its JSON");

    let ms = |us: f64| format!("{:.3} ms", us / 1000.0);
    let row = |r: &LoadResult| {
        format!(
            "{:.0}/s · p50 {} · p99 {} · p99.9 {} · max {} · errors {}",
            r.requests_per_second,
            ms(r.p50_us),
            ms(r.p99_us),
            ms(r.p999_us),
            ms(r.max_us),
            r.errors
        )
    };
    let verdict = |met: bool| if met { "met" } else { "**missed**" };
    println!("Body: {} bytes from both servers; {WORKERS} keep-alive connections; {seconds} s per run after 1 s of warm-up; median of {rounds} interleaved runs.\n", agent_max.body_bytes);
    println!("| Measure | kvi-agent | Floor (hyper, fixed body) | Ratio | Goal | Verdict |");
    println!("|---|---|---|---|---|---|");
    let throughput_ratio = floor_max.requests_per_second / agent_max.requests_per_second;
    println!(
        "| most requests/s at concurrency {WORKERS} | {} | {} | {:.2}× the floor's time per request | ≤ 1.5× | {} |",
        row(&agent_max),
        row(&floor_max),
        throughput_ratio,
        verdict(throughput_ratio <= 1.5)
    );
    let p50_ratio = agent_max.p50_us / floor_max.p50_us;
    println!(
        "| p50 at concurrency {WORKERS} (closed loop) | {} | {} | {:.2}× | ≤ 1.5× | {} |",
        ms(agent_max.p50_us),
        ms(floor_max.p50_us),
        p50_ratio,
        verdict(p50_ratio <= 1.5)
    );
    println!(
        "| latency at {RATE:.0} requests/s (open loop) | {} | {} | p99 {:.2}× | p99 < 1 ms | {} |",
        row(&agent_rate),
        row(&floor_rate),
        agent_rate.p99_us / floor_rate.p99_us,
        verdict(agent_rate.p99_us < 1000.0 && agent_rate.errors == 0)
    );
    println!(
        "| memory: idle agent (resident set of its process) | {} KiB | | | | |",
        idle_agent_rss.map_or("?".to_owned(), |k| k.to_string())
    );
    println!(
        "| memory: agent after the load runs | {} KiB | | | | |",
        loaded_agent_rss.map_or("?".to_owned(), |k| k.to_string())
    );
    println!(
        "| memory: added by a started agent (in-process probe, over a {} KiB runtime baseline) | {} KiB | | | | |",
        memory.baseline_kib, memory.idle_agent_kib
    );
    println!(
        "| memory: per cached secret ({} secrets, {}-byte values) | {:.0} bytes | | | | |",
        memory.secrets,
        keyvault_invalidator_bench::agent::VALUE_BYTES,
        memory.per_secret_bytes
    );
}
