//! `kvi-agent`: see the crate README.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use keyvault_invalidator_agent::config::{ApiToken, Settings, TOKEN_ENV};
use keyvault_invalidator_agent::demo::Demo;
use keyvault_invalidator_agent::{logging, probe, Agent, AgentError, AgentErrorKind};

/// A localhost HTTP sidecar serving Azure Key Vault secrets from an event-driven cache.
#[derive(Debug, Parser)]
#[command(name = "kvi-agent", version, about)]
struct Cli {
    /// The TOML configuration file.
    #[arg(long, value_name = "FILE", conflicts_with = "demo")]
    config: Option<PathBuf>,
    /// The listen address, over the file and KVI_AGENT_LISTEN.
    #[arg(long, value_name = "ADDRESS", global = true)]
    listen: Option<SocketAddr>,
    /// Runs on embedded defaults: an in-memory vault whose `demo-secret` rotates.
    #[arg(long)]
    demo: bool,
    /// With --demo: seconds between rotations.
    #[arg(long, value_name = "SECONDS", default_value_t = 5, requires = "demo")]
    rotate_every: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints the effective settings (file + environment), secrets masked, and checks them.
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
    },
    /// Asks a running agent's PATH (default /readyz); exits 0 when it answers 200. For
    /// container probes: the agent listens on loopback, where the kubelet's HTTP probes are not.
    Probe {
        /// The route to ask.
        #[arg(default_value = "/readyz")]
        path: String,
    },
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kvi-agent: {}", chain(&error));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), AgentError> {
    if let Some(Command::CheckConfig { file }) = &cli.command {
        return check_config(file);
    }
    if let Some(Command::Probe { path }) = &cli.command {
        let listen = match cli.listen {
            Some(listen) => listen,
            None => Settings::from_env(env)?.server.listen,
        };
        let status = probe::status(listen, path).await?;
        if status != 200 {
            return Err(AgentError::new(
                AgentErrorKind::Setup,
                format!("http://{listen}{path} answered {status}"),
            ));
        }
        return Ok(());
    }
    if cli.demo {
        return demo(&cli).await;
    }
    let mut settings = match &cli.config {
        Some(file) => Settings::load(file, env)?,
        None => Settings::from_env(env)?,
    };
    if let Some(listen) = cli.listen {
        settings.server.listen = listen;
        settings.check()?;
    }
    let token = ApiToken::resolve(env, settings.server.token_file.as_deref())?;
    let agent = Agent::start(settings, token).await?;
    wait_for_signal(&agent).await;
    agent
        .shutdown()
        .await
        .map_err(|e| AgentError::new(AgentErrorKind::Setup, "the job failed").with_source(e))?;
    Ok(())
}

fn check_config(file: &std::path::Path) -> Result<(), AgentError> {
    let settings = Settings::load(file, env)?;
    print!("{}", settings.to_masked_toml());
    match ApiToken::resolve(env, settings.server.token_file.as_deref()) {
        Ok(token) => println!("# API token: from {}", token.source()),
        Err(error) => println!("# API token: {error}"),
    }
    Ok(())
}

async fn demo(cli: &Cli) -> Result<(), AgentError> {
    let token = match env(TOKEN_ENV) {
        Some(_) => ApiToken::resolve(env, None)?,
        None => ApiToken::generate(),
    };
    let listen = cli
        .listen
        .unwrap_or(keyvault_invalidator_agent::config::DEFAULT_LISTEN);
    let every = Duration::from_secs(cli.rotate_every.max(1));
    let demo = Demo::start(listen, every, token.clone()).await?;
    println!("{}", demo.instructions(&token));
    wait_for_signal(demo.agent()).await;
    demo.shutdown().await
}

async fn wait_for_signal(agent: &Agent) {
    let stopped = agent.shutdown_token();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate()).ok();
        let term = async {
            match terminate.as_mut() {
                Some(terminate) => {
                    terminate.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
            _ = stopped.cancelled() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = stopped.cancelled() => {}
    }
    tracing::info!("shutting down");
}

/// The error and its causes, one after the other.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
