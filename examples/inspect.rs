//! Parses a payload exactly as the job would and prints one JSON object per event.
//!
//! ```text
//! cargo run -q --example inspect -- dead-lettered-body.json
//! cat body.json | cargo run -q --example inspect -- -
//! ```
//!
//! Each line holds `event_type` (the full type string), `id`, `vault`, `object_type`, `name` and
//! `version`, with `null` where the event has none. A payload the job would dead-letter prints
//! one line starting `error:` to standard error and exits with status 1.

use std::io::Read;
use std::process::ExitCode;

use keyvault_invalidator::event::{Event, EventKind, EventParser};
use serde_json::json;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        eprintln!("error: usage: inspect FILE (or - for standard input)");
        return ExitCode::from(2);
    };
    let body = if path == "-" {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body).map(|_| body)
    } else {
        std::fs::read(&path)
    };
    let body = match body {
        Ok(body) => body,
        Err(error) => {
            eprintln!("error: cannot read {}: {error}", path.to_string_lossy());
            return ExitCode::FAILURE;
        }
    };
    match EventParser::default().parse(&body) {
        Ok(events) => {
            for event in &events {
                println!("{}", describe(event));
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            // The message never spans lines, but make sure of it: operators grep for `error:`.
            eprintln!("error: {}", error.to_string().replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn describe(event: &Event) -> serde_json::Value {
    match &event.kind {
        EventKind::KeyVault(kv) => json!({
            "event_type": kv.event_type.as_str(),
            "id": event.id,
            "vault": kv.vault,
            "object_type": kv.object_type.as_str(),
            "name": kv.name.as_str(),
            "version": kv.version,
        }),
        _ => json!({
            "event_type": event.event_type,
            "id": event.id,
            "vault": null,
            "object_type": null,
            "name": null,
            "version": null,
        }),
    }
}
