//! The Service Bus emulator as a program: serves topics and subscriptions named on the command
//! line until SIGINT or SIGTERM.
//!
//! ```text
//! keyvault-invalidator-servicebus-emulator --topic keyvault-events --subscription check \
//!     --max-delivery-count 3 --lock-duration 30
//! ```
//!
//! Its first line on standard output is one JSON object: `connection_string`, `amqp_url`,
//! `amqp_port`, `management_endpoint`, `policy_name` and `topics` (each `name` and
//! `subscriptions`). Bad arguments: a message naming the argument on standard error, exit
//! status 2.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use keyvault_invalidator_servicebus_emulator::{
    EmulatorOptions, ServiceBusEmulator, SubscriptionSettings, POLICY_NAME,
};

const USAGE: &str = "\
Usage: keyvault-invalidator-servicebus-emulator [OPTIONS]

Serves an Azure Service Bus emulator on 127.0.0.1 (plain AMQP 1.0 and the management REST API)
until SIGINT or SIGTERM. Prints one JSON line first: connection_string, amqp_url, amqp_port,
management_endpoint, policy_name, topics.

Options:
  --topic NAME               a topic (repeatable)
  --subscription NAME        a subscription of the last --topic before it (repeatable)
  --max-delivery-count N     MaxDeliveryCount of every subscription (default 10)
  --lock-duration SECONDS    LockDuration of every subscription, seconds, decimals allowed
                             (default 60)
  --port PORT                the AMQP port (default: a free one)
  --management-port PORT     the management endpoint's port (default: a free one)
  --policy-key KEY           the RootManageSharedAccessKey policy's key (default: random)
  -h, --help                 this text
";

#[derive(Debug, Default)]
struct Args {
    topics: Vec<(String, Vec<String>)>,
    settings: SubscriptionSettings,
    options: EmulatorOptions,
}

/// A bad command line: the message names the argument.
#[derive(Debug, PartialEq, Eq)]
enum ArgsError {
    Help,
    Bad(String),
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, ArgsError> {
    let mut parsed = Args::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => {
                (name.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        if name == "-h" || name == "--help" {
            return Err(ArgsError::Help);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| ArgsError::Bad(format!("{name} needs a value")))
        };
        match name.as_str() {
            "--topic" => {
                let topic = value()?;
                check_name(&name, &topic)?;
                parsed.topics.push((topic, Vec::new()));
            }
            "--subscription" => {
                let subscription = value()?;
                check_name(&name, &subscription)?;
                let Some((_, subscriptions)) = parsed.topics.last_mut() else {
                    return Err(ArgsError::Bad(format!(
                        "--subscription {subscription}: no --topic before it"
                    )));
                };
                subscriptions.push(subscription);
            }
            "--max-delivery-count" => {
                let text = value()?;
                parsed.settings.max_delivery_count =
                    text.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        ArgsError::Bad(format!(
                            "--max-delivery-count {text}: not a whole number of at least 1"
                        ))
                    })?;
            }
            "--lock-duration" => {
                let text = value()?;
                parsed.settings.lock_duration = text
                    .parse::<f64>()
                    .ok()
                    .filter(|s| *s >= 0.001)
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .ok_or_else(|| {
                        ArgsError::Bad(format!(
                            "--lock-duration {text}: not a number of seconds of at least 0.001"
                        ))
                    })?;
            }
            "--port" => parsed.options.amqp_port = Some(port(&name, &value()?)?),
            "--management-port" => parsed.options.management_port = Some(port(&name, &value()?)?),
            "--policy-key" => parsed.options.policy_key = Some(value()?),
            other => {
                return Err(ArgsError::Bad(format!("unknown argument {other}")));
            }
        }
    }
    Ok(parsed)
}

fn check_name(argument: &str, name: &str) -> Result<(), ArgsError> {
    let valid = name.len() <= 260
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if valid {
        Ok(())
    } else {
        Err(ArgsError::Bad(format!(
            "{argument} {name}: only letters, digits, '.', '-' and '_' are allowed"
        )))
    }
}

fn port(argument: &str, text: &str) -> Result<u16, ArgsError> {
    text.parse()
        .map_err(|_| ArgsError::Bad(format!("{argument} {text}: not a port number")))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(ArgsError::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(ArgsError::Bad(message)) => {
            eprintln!("error: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> ExitCode {
    // Listening before the announcement: a client that reads the first line and signals at
    // once must find the handlers in place (the default action would kill the process).
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(error) => {
            eprintln!("error: cannot wait for signals: {error}");
            return ExitCode::FAILURE;
        }
    };
    let emulator = match ServiceBusEmulator::start_with(args.options).await {
        Ok(emulator) => emulator,
        Err(error) => {
            eprintln!("error: cannot start the emulator: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut topics = Vec::new();
    for (topic, subscriptions) in &args.topics {
        emulator.create_topic(topic);
        for subscription in subscriptions {
            emulator.create_subscription(topic, subscription, args.settings.clone());
        }
        topics.push(serde_json::json!({
            "name": topic.to_ascii_lowercase(),
            "subscriptions": emulator.subscriptions(topic),
        }));
    }
    let announcement = serde_json::json!({
        "connection_string": emulator.connection_string(None),
        "amqp_url": emulator.amqp_url(),
        "amqp_port": emulator.amqp_port(),
        "management_endpoint": emulator.management_endpoint(),
        "policy_name": POLICY_NAME,
        "max_delivery_count": args.settings.max_delivery_count,
        "lock_duration_seconds": args.settings.lock_duration.as_secs_f64(),
        "topics": topics,
    });
    {
        let mut stdout = std::io::stdout().lock();
        if writeln!(stdout, "{announcement}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return ExitCode::FAILURE;
        }
    }
    shutdown.await;
    drop(emulator);
    ExitCode::SUCCESS
}

/// Registers for SIGTERM and SIGINT now; the future ends at the first of them.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, ArgsError> {
        parse_args(args.iter().map(|a| (*a).to_owned()))
    }

    #[test]
    fn subscriptions_belong_to_the_last_topic_before_them() {
        let args = parse(&[
            "--topic",
            "a",
            "--subscription",
            "s1",
            "--subscription=s2",
            "--topic",
            "b",
            "--subscription",
            "s3",
            "--max-delivery-count",
            "3",
            "--lock-duration",
            "0.5",
            "--port",
            "5672",
        ])
        .unwrap();
        assert_eq!(
            args.topics,
            vec![
                ("a".to_owned(), vec!["s1".to_owned(), "s2".to_owned()]),
                ("b".to_owned(), vec!["s3".to_owned()])
            ]
        );
        assert_eq!(args.settings.max_delivery_count, 3);
        assert_eq!(args.settings.lock_duration, Duration::from_millis(500));
        assert_eq!(args.options.amqp_port, Some(5672));
    }

    #[test]
    fn bad_arguments_are_named() {
        let bad = |args: &[&str]| match parse(args) {
            Err(ArgsError::Bad(message)) => message,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            bad(&["--subscription", "s"]),
            "--subscription s: no --topic before it"
        );
        assert_eq!(bad(&["--topic"]), "--topic needs a value");
        assert_eq!(
            bad(&["--max-delivery-count", "0"]),
            "--max-delivery-count 0: not a whole number of at least 1"
        );
        assert_eq!(
            bad(&["--lock-duration", "soon"]),
            "--lock-duration soon: not a number of seconds of at least 0.001"
        );
        assert_eq!(bad(&["--port", "70000"]), "--port 70000: not a port number");
        assert_eq!(bad(&["--verbose"]), "unknown argument --verbose");
        assert_eq!(
            bad(&["--topic", "a/b"]),
            "--topic a/b: only letters, digits, '.', '-' and '_' are allowed"
        );
        assert_eq!(parse(&["--help"]).err(), Some(ArgsError::Help));
    }
}
