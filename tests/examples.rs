//! The examples work as the README says: the quickstart exits 0 showing the new version, and
//! `inspect` prints one JSON line per event or one `error:` line.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// `cargo test` builds the examples next to the test binaries' directory.
fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let dir = deps.parent().unwrap().parent().unwrap().join("examples");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} was not built; run `cargo test --workspace`",
        path.display()
    );
    path
}

fn inspect(body: &[u8]) -> Output {
    let mut child = Command::new(example("inspect"))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn quickstart_shows_the_new_version_after_the_event_and_exits_zero() {
    let output = Command::new(example("quickstart"))
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "quickstart failed: {stdout}");
    let reads: Vec<&str> = stdout.lines().filter(|l| l.starts_with("read ")).collect();
    assert_eq!(reads.len(), 4, "{stdout}");
    assert!(
        reads[2].contains("version 000001 (stale until the event arrives)"),
        "{stdout}"
    );
    assert!(reads[3].contains("version 000002"), "{stdout}");
    assert!(
        stdout.contains("job    received 1, invalidated 1, ignored 0, dead-lettered 0"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("SharedAccessKey"),
        "the secret value must never be printed"
    );
}

#[test]
fn refresh_ahead_shows_a_reader_that_never_stalls_and_the_notification() {
    let output = Command::new(example("refresh_ahead")).output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "refresh_ahead failed: {stdout}");
    assert!(
        stdout.contains("notified: db-password is now version …000002"),
        "{stdout}"
    );
    assert!(stdout.contains("reader: version …000002 after"), "{stdout}");
    assert!(
        stdout.contains("vault calls for db-password: 2 (cold read + one refresh)"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("first password") && !stdout.contains("second password"),
        "values are never printed"
    );
}

#[test]
fn inspect_prints_one_json_object_per_event() {
    let body = keyvault_invalidator_testkit::events::batch([
        keyvault_invalidator_testkit::KeyVaultEventBuilder::secret_new_version("db-password")
            .vault("prod-kv")
            .version("0123456789abcdef0123456789abcdef")
            .id("e1")
            .cloud_event(),
        keyvault_invalidator_testkit::events::storage_blob_created(),
    ]);
    let output = inspect(&body);
    assert!(output.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![
            serde_json::json!({
                "event_type": "Microsoft.KeyVault.SecretNewVersionCreated",
                "id": "e1",
                "vault": "prod-kv",
                "object_type": "Secret",
                "name": "db-password",
                "version": "0123456789abcdef0123456789abcdef",
            }),
            serde_json::json!({
                "event_type": "Microsoft.Storage.BlobCreated",
                "id": "831e1650-001e-001b-66ab-eeb76e069631",
                "vault": null,
                "object_type": null,
                "name": null,
                "version": null,
            }),
        ]
    );
}

#[test]
fn inspect_reports_an_unacceptable_payload_on_one_error_line_and_exits_one() {
    let output = inspect(
        b"{\"id\":\"x\",\"eventType\":\"Microsoft.KeyVault.SecretNewVersionCreated\",\"data\":{}}",
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr,
        "error: event 0 (id \"x\"): Key Vault event `Microsoft.KeyVault.SecretNewVersionCreated` names no object (looked in data.Id, data.ObjectName and subject)\n"
    );
}

#[cfg(feature = "rabbitmq")]
#[test]
fn the_rabbitmq_demo_refreshes_the_secret_through_the_broker() {
    let url = std::env::var("RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let reachable = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5672".parse().unwrap(),
        std::time::Duration::from_secs(5),
    )
    .is_ok();
    if !reachable && std::env::var("RABBITMQ_URL").is_err() {
        assert_ne!(
            std::env::var("KVI_REQUIRE_RABBITMQ").as_deref(),
            Ok("1"),
            "KVI_REQUIRE_RABBITMQ=1 but no broker answers on 127.0.0.1:5672"
        );
        eprintln!("\n*** SKIPPED: no RabbitMQ broker for the rabbitmq example ***\n");
        return;
    }
    let output = Command::new(example("rabbitmq"))
        .arg("--demo")
        .env("RABBITMQ_URL", url)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "rabbitmq --demo failed: {stdout}");
    assert!(stdout.contains("cache refreshed to …000002"), "{stdout}");
    assert!(
        stdout.contains("job    received 1, invalidated 1, dead-lettered 0"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("guest:guest"),
        "the password never prints: {stdout}"
    );
}

#[cfg(feature = "servicebus")]
#[test]
fn the_servicebus_example_runs_the_whole_flow_on_the_emulator() {
    let output = Command::new(example("servicebus"))
        .arg("--emulator")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "servicebus --emulator failed: {stdout}"
    );
    assert!(stdout.contains("subscription example-"), "{stdout}");
    assert!(
        stdout.contains("cache refreshed to the new version"),
        "{stdout}"
    );
    assert!(
        stdout.contains("job received 1, invalidated 1; subscriptions left on the topic: 0"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("SharedAccessKey="),
        "no connection string is printed: {stdout}"
    );
}

/// The webhook example answers as its docs say: 401 without the secret, 400 for a malformed
/// body, both handshakes, and 200 for the Key Vault CloudEvent it prints (applied to the cache
/// before the answer).
#[cfg(feature = "eventgrid")]
#[test]
fn the_webhook_example_answers_the_requests_it_prints() {
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpStream;

    fn request(address: &str, method: &str, path: &str, headers: &str, body: &str) -> String {
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    let secret = "example-secret";
    let mut child = Command::new(example("webhook"))
        .args(["--listen", "127.0.0.1:0", "--shared-secret", secret])
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let address = first
        .strip_prefix("webhook listening on http://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .to_owned();
    let curls: Vec<String> = (0..3).map(|_| lines.next().unwrap().unwrap()).collect();
    assert!(
        curls.iter().all(|line| line.starts_with("curl -i ")),
        "{curls:?}"
    );
    let event = curls[2]
        .split_once("-d '")
        .map(|(_, rest)| rest.trim_end_matches('\''))
        .unwrap()
        .to_owned();
    let validation = r#"[{"id":"1","eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","data":{"validationCode":"512d38b6"}}]"#;
    let with_code = format!("/api/events?code={secret}");

    let unauthenticated = request(&address, "POST", "/api/events", "", validation);
    assert!(
        unauthenticated.starts_with("HTTP/1.1 401"),
        "{unauthenticated}"
    );
    let malformed = request(&address, "POST", &with_code, "", "{not json");
    assert!(malformed.starts_with("HTTP/1.1 400"), "{malformed}");
    let validated = request(
        &address,
        "POST",
        &with_code,
        "aeg-event-type: SubscriptionValidation\r\n",
        validation,
    );
    assert!(validated.starts_with("HTTP/1.1 200"), "{validated}");
    assert!(
        validated.ends_with(r#"{"validationResponse":"512d38b6"}"#),
        "{validated}"
    );
    let options = request(
        &address,
        "OPTIONS",
        &with_code,
        "WebHook-Request-Origin: eventgrid.azure.net\r\n",
        "",
    );
    assert!(options.starts_with("HTTP/1.1 200"), "{options}");
    assert!(
        options
            .to_ascii_lowercase()
            .contains("webhook-allowed-origin: eventgrid.azure.net"),
        "{options}"
    );
    let applied = request(
        &address,
        "POST",
        &with_code,
        "aeg-event-type: Notification\r\ncontent-type: application/cloudevents+json\r\n",
        &event,
    );
    assert!(applied.starts_with("HTTP/1.1 200"), "{applied}");
    child.kill().unwrap();
    child.wait().unwrap();
}
