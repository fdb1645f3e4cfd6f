//! The webhook under the real job, end to end: a push answered 200 only once the moka cache
//! holds the new version; a poison event dead-lettered alone while its batch neighbour is
//! applied; HTTPS with a generated certificate; and no shared secret in any log line or
//! Debug output.

mod support;

use std::io::Write as _;
use std::time::Duration;

use keyvault_invalidator_core::{EventSource as _, Job, KeyVaultInvalidator};
use keyvault_invalidator_eventgrid::webhook::{WebhookConfig, WebhookSource};
use keyvault_invalidator_moka::CachedSecretProvider;
use keyvault_invalidator_testkit::eventgrid_push::{EventGridPusher, PushOutcome, RetrySchedule};
use keyvault_invalidator_testkit::CapturedLogs;
use keyvault_invalidator_testkit::InMemoryVault;
use secrecy::SecretString;
use serde_json::Value;
use support::*;

fn fast(pusher: EventGridPusher) -> EventGridPusher {
    pusher.retry_schedule(RetrySchedule::fast(Duration::from_millis(50), 5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_event_is_answered_200_once_the_cache_holds_the_new_version() {
    let vault = InMemoryVault::new();
    vault.set("db-password", "first");
    let cache = CachedSecretProvider::new(vault.clone());
    assert_eq!(
        cache.get("db-password").await.unwrap().version(),
        vault.current_version("db-password").as_deref()
    );
    let source = bind(loopback_config()).await;
    let pusher = fast(EventGridPusher::new(&url(&source, SECRET)).unwrap());
    let invalidator = KeyVaultInvalidator::builder(cache.clone())
        .allow_vault("test-kv")
        .build();
    let job = Job::builder(source.clone(), invalidator).spawn().unwrap();

    let v2 = vault.rotate("db-password", "second");
    let event = event_grid_event("e2e-1", "db-password", &v2).to_string();
    let outcome = pusher.push_events("e2e-1", &[event.as_bytes()]).await;
    assert!(
        matches!(
            outcome,
            PushOutcome::Delivered {
                status: 200,
                attempts: 1,
                ..
            }
        ),
        "{outcome:?}"
    );
    // Answered 200 only after the cache was refreshed: no waiting needed here.
    let cached = cache.get("db-password").await.unwrap();
    assert_eq!(cached.version(), Some(v2.as_str()));
    use secrecy::ExposeSecret as _;
    assert_eq!(cached.value().expose_secret(), "second");

    let stats = job.shutdown().await.unwrap();
    assert_eq!(
        (stats.received, stats.invalidated, stats.completed),
        (1, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_alone_and_its_batch_answered_400() {
    let vault = InMemoryVault::new();
    vault.set("api-key", "first");
    let cache = CachedSecretProvider::new(vault.clone());
    cache.get("api-key").await.unwrap();
    let source = bind(loopback_config()).await;
    let pusher = fast(EventGridPusher::new(&url(&source, SECRET)).unwrap());
    let job = Job::builder(source.clone(), KeyVaultInvalidator::new(cache.clone()))
        .spawn()
        .unwrap();

    let v2 = vault.rotate("api-key", "second");
    let good = event_grid_event("good-1", "api-key", &v2).to_string();
    // Valid JSON, but no event: the job dead-letters it.
    let poison = br#"[{"id":"poison-1"}]"#;
    let PushOutcome::DeadLettered(letter) = pusher
        .push_events("batch-1", &[good.as_bytes(), poison])
        .await
    else {
        panic!("a batch with a poison event is refused");
    };
    assert_eq!((letter.status, letter.attempts), (Some(400), 1));
    let answer: Value = serde_json::from_str(&letter.answer).unwrap();
    assert_eq!(answer["deadLettered"].as_array().unwrap().len(), 1);
    assert_eq!(answer["deadLettered"][0]["index"], 1);
    assert_eq!(answer["deadLettered"][0]["id"], Value::Null);
    assert_eq!(answer["deadLettered"][0]["reason"], "MalformedPayload");
    // Its neighbour was applied all the same.
    assert_eq!(
        cache.get("api-key").await.unwrap().version(),
        Some(v2.as_str())
    );
    let stats = job.shutdown().await.unwrap();
    assert_eq!(
        (stats.received, stats.completed, stats.dead_lettered),
        (2, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_generated_certificate_works_end_to_end() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let directory = std::env::temp_dir().join(format!("kvi-webhook-tls-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let (cert_path, key_path) = (directory.join("cert.pem"), directory.join("key.pem"));
    let cert_pem = certified.cert.pem();
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();

    let config = WebhookConfig::new("127.0.0.1:0".parse().unwrap())
        .tls(&cert_path, &key_path)
        .shared_secret(SecretString::from(SECRET));
    let source = bind(config).await;
    assert!(source.is_tls());
    let url = format!(
        "https://localhost:{}/api/events?code={SECRET}",
        source.local_addr().port()
    );
    let pusher = fast(
        EventGridPusher::new(&url)
            .unwrap()
            .trusting_certificate_pem(cert_pem.as_bytes())
            .unwrap(),
    );
    let answer = pusher.validate_subscription("tls-code").await.unwrap();
    assert_eq!(answer.status, 200);
    assert!(answer.validated);

    let vault = InMemoryVault::new();
    vault.set("tls-secret", "first");
    let cache = CachedSecretProvider::new(vault.clone());
    cache.get("tls-secret").await.unwrap();
    let job = Job::builder(source.clone(), KeyVaultInvalidator::new(cache.clone()))
        .spawn()
        .unwrap();
    let v2 = vault.rotate("tls-secret", "second");
    let event = event_grid_event("tls-1", "tls-secret", &v2).to_string();
    let outcome = pusher.push_events("tls-1", &[event.as_bytes()]).await;
    assert!(
        matches!(outcome, PushOutcome::Delivered { status: 200, .. }),
        "{outcome:?}"
    );
    assert_eq!(
        cache.get("tls-secret").await.unwrap().version(),
        Some(v2.as_str())
    );
    job.shutdown().await.unwrap();
    // A client that does not trust the certificate gets no answer at all.
    let untrusted = EventGridPusher::new(&url).unwrap();
    assert!(untrusted.validate_subscription("x").await.is_err());
    let _ = std::fs::remove_dir_all(&directory);
}

#[test]
fn the_shared_secret_never_appears_in_logs_or_debug_output_and_requests_are_counted() {
    let captured = CapturedLogs::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _metrics = metrics::set_default_local_recorder(&recorder);
    // One thread: every task logs through the subscriber set here.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (config_debug, source_debug) = runtime.block_on(async {
        let config = WebhookConfig::new("127.0.0.1:0".parse().unwrap())
            .plain_http()
            .shared_secret(SecretString::from(SECRET))
            .also_accept_shared_secret(SecretString::from("second-secret-value"));
        let config_debug = format!("{config:?}");
        let source = WebhookSource::bind(config).await.unwrap();
        let address = source.local_addr();
        // Refused (a near miss of the secret), accepted, and a malformed body.
        let near_miss = format!("{SECRET}x");
        for (code, body) in [
            (near_miss.as_str(), "[]"),
            (SECRET, "{bad"),
            ("second-secret-value", "[]"),
        ] {
            let (status, _) = post(&format!("http://{address}/hook?code={code}"), &[], body).await;
            assert!(status == 401 || status == 400, "{status}");
        }
        let source_debug = format!("{source:?}");
        source.close().await.unwrap();
        (config_debug, source_debug)
    });
    drop(runtime);
    let mut counted: Vec<(String, String, String)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let labels: Vec<String> = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            (
                key.key().name().to_owned(),
                labels.join(","),
                format!("{value:?}"),
            )
        })
        .collect();
    counted.sort();
    assert_eq!(
        counted,
        vec![
            (
                "keyvault_invalidator_webhook_requests_total".to_owned(),
                "status=400".to_owned(),
                "Counter(2)".to_owned()
            ),
            (
                "keyvault_invalidator_webhook_requests_total".to_owned(),
                "status=401".to_owned(),
                "Counter(1)".to_owned()
            ),
        ],
        "requests counted by status"
    );
    let logs = captured.text();
    assert!(
        logs.contains("webhook request refused: not authenticated"),
        "the refusal is logged:\n{logs}"
    );
    assert!(
        logs.contains("webhook request refused: malformed payload"),
        "{logs}"
    );
    for text in [&logs, &config_debug, &source_debug] {
        assert!(!text.contains(SECRET), "the secret leaked:\n{text}");
        assert!(
            !text.contains("second-secret-value"),
            "the second secret leaked:\n{text}"
        );
    }
    let mut out = std::io::sink();
    let _ = writeln!(out, "{config_debug}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_vault_makes_the_request_503_and_event_grids_retry_applies_it() {
    use keyvault_invalidator_core::ProviderErrorKind;
    use keyvault_invalidator_testkit::eventgrid_push::{Attempt, AttemptOutcome};

    let vault = InMemoryVault::new();
    vault.set("db-password", "first");
    let cache = CachedSecretProvider::new(vault.clone());
    cache.get("db-password").await.unwrap();
    let source = bind(loopback_config()).await;
    let pusher = fast(EventGridPusher::new(&url(&source, SECRET)).unwrap());
    let job = Job::builder(source.clone(), KeyVaultInvalidator::new(cache.clone()))
        .spawn()
        .unwrap();

    let v2 = vault.rotate("db-password", "second");
    vault.fail_next(1, ProviderErrorKind::Transient);
    let event = event_grid_event("retry-1", "db-password", &v2).to_string();
    let outcome = pusher.push_events("retry-1", &[event.as_bytes()]).await;
    assert!(
        matches!(
            outcome,
            PushOutcome::Delivered {
                status: 200,
                attempts: 2,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(
        pusher.attempts(),
        vec![
            Attempt {
                event_id: "retry-1".into(),
                delivery_count: 1,
                outcome: AttemptOutcome::Status(503)
            },
            Attempt {
                event_id: "retry-1".into(),
                delivery_count: 2,
                outcome: AttemptOutcome::Status(200)
            },
        ]
    );
    assert_eq!(
        cache.get("db-password").await.unwrap().version(),
        Some(v2.as_str())
    );
    let stats = job.shutdown().await.unwrap();
    assert_eq!(
        (stats.received, stats.abandoned, stats.completed),
        (2, 1, 1)
    );
}
