//! The benchmark report of keyvault-invalidator.
//!
//! `bench/run` runs everything and writes `BENCHMARKS.md`:
//! - the criterion micro benchmarks in `benches/micro.rs` (parse, cache hit path) and, in the
//!   separate package `bench/peer`, the same hit path on the closest peer;
//! - the `kvi-bench` binary: the engine in process, RabbitMQ and the Service Bus emulator end to
//!   end, the Event Grid namespace pull source against its stand-in, the staleness simulation, memory, and finally the report that gathers it all.
//!
//! Nothing here runs in CI, and no test asserts a time; CI only compiles it.

pub mod agent;
pub mod end_to_end;
pub mod eventgrid_pull;
pub mod hit_path;
pub mod memory;
pub mod pipeline;
pub mod report;
pub mod simulation;
pub mod webhook;
