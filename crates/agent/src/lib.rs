//! # kvi-agent
//!
//! A small, hardened localhost HTTP server in front of keyvault-invalidator's event-driven,
//! version-aware, refresh-ahead cache, for applications in any language: a Python, Node, Java
//! or Go service reads `GET /v1/secrets/{name}` and gets a rotated secret within the event's
//! delivery delay, with one Key Vault call per rotation per host; it can also *wait* for a
//! rotation (`?after_version=V&wait=S`) or watch several secrets as Server-Sent Events
//! (`/v1/watch?name=a&name=b`).
//!
//! The binary is `kvi-agent` (see the crate README for the configuration, the environment
//! overrides and the API). The library is what the binary runs, usable in tests:
//!
//! - [`config`]: the TOML settings, environment overrides, the API token;
//! - [`Agent`]: provider + cache + job + server, started from settings;
//! - [`demo`]: the `--demo` setup;
//! - [`metrics`]: the Prometheus recorder and the agent's metric names;
//! - [`transport`]: which transport feeds the job;
//! - [`probe`]: `kvi-agent probe`, the container health check.
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod config;
pub mod demo;
mod error;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod probe;
mod runtime;
pub mod transport;

pub use error::{AgentError, AgentErrorKind};
pub use runtime::{Agent, AgentCache};
