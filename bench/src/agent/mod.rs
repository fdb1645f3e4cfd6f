//! kvi-agent over HTTP on loopback, beside a floor: `GET /v1/secrets/{name}` from a load
//! generator in another process, against the agent and against a minimal hyper server that
//! answers a fixed body of the same size. Run by `kvi-agent-bench run` (the binary
//! `bench/src/bin/kvi-agent-bench.rs`), which starts each server and each load in a process of
//! its own.
//!
//! - [`servers`]: the agent on an in-memory vault, and the floor;
//! - [`load`]: the load generator (hyper client, one keep-alive connection per worker, an HDR
//!   histogram): closed loop at a fixed concurrency, or open loop at a fixed rate with latency
//!   counted from each request's scheduled time (no coordinated omission);
//! - [`memory`]: resident memory of an idle agent and per cached secret.

pub mod load;
pub mod memory;
pub mod servers;

/// The secret the load reads.
pub const SECRET: &str = "bench-secret";

/// The API token of the benchmark agent.
pub const TOKEN: &str = "bench-token-0123456789abcdef";

/// The size of the benchmark secret's value, in bytes (a connection string, say).
pub const VALUE_BYTES: usize = 134;
