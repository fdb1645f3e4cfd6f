//! The agent's log setup: `RUST_LOG` (default `info`), never an AMQP client's `trace`.
//!
//! At `trace`, lapin logs every AMQP frame it sends, the login frame too (the RabbitMQ user name
//! and password), and fe2o3-amqp its frames (Service Bus tokens): the filter drops those
//! events whatever `RUST_LOG` says. The agent's own logs never hold a secret value or the token.

use tracing_subscriber::filter::{filter_fn, FilterFn, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Drops `trace` events of the AMQP clients (`lapin`, `amq_protocol*`, `fe2o3_amqp*`).
pub fn without_amqp_trace() -> FilterFn {
    filter_fn(|metadata| {
        let krate = metadata.target().split("::").next().unwrap_or_default();
        let amqp = krate == "lapin"
            || krate.starts_with("amq_protocol")
            || krate.starts_with("fe2o3_amqp");
        !(amqp && *metadata.level() == LevelFilter::TRACE)
    })
}

/// Installs the global subscriber: compact lines on standard error.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .with(without_amqp_trace())
        .try_init();
}
