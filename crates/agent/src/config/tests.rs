use std::collections::HashMap;

use super::*;
use crate::error::AgentErrorKind;

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

const FULL: &str = r#"
[server]
listen = "127.0.0.1:3000"
max_connections = 10

[vault]
url = "https://orders-kv.vault.azure.net/"
credential = "workload-identity"

[cache]
mode = "invalidate"
ttl_secs = 60

[names]
key_separator = ":"
vault_separator = "--"

[transport]
kind = "rabbitmq"
uri = "amqps://app:hunter2-password@rabbit:5671/%2f"
instance_prefix = "orders"
"#;

#[test]
fn a_full_file_reads_into_every_section() {
    let settings = Settings::from_toml_str(FULL, "full.toml", no_env).unwrap();
    assert_eq!(settings.server.listen.to_string(), "127.0.0.1:3000");
    assert_eq!(settings.server.max_connections, 10);
    assert_eq!(settings.vault.credential, Credential::WorkloadIdentity);
    assert_eq!(
        settings.vault.allowed_vault_name().as_deref(),
        Some("orders-kv")
    );
    assert_eq!(settings.cache.mode, CacheMode::Invalidate);
    assert_eq!(settings.cache.ttl_secs, 60);
    assert_eq!(
        settings.names.mapping().to_vault_name("Db:Password"),
        "Db--Password"
    );
    let TransportSettings::RabbitMq(rabbit) = &settings.transport else {
        panic!("{:?}", settings.transport)
    };
    assert_eq!(
        rabbit.uri.as_ref().unwrap().expose(),
        "amqps://app:hunter2-password@rabbit:5671/%2f"
    );
    assert_eq!(rabbit.instance_prefix.as_deref(), Some("orders"));
}

#[test]
fn unknown_keys_are_refused_by_name_and_line() {
    let error = Settings::from_toml_str(
        "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n",
        "a.toml",
        no_env,
    )
    .unwrap_err();
    assert_eq!(error.kind(), AgentErrorKind::Config);
    let message = error.to_string();
    assert!(
        message.starts_with("a.toml line 3: unknown field `lisen`"),
        "{message}"
    );

    let error = Settings::from_toml_str(
        "[transport]\nkind = \"rabbitmq\"\nurl = \"x\"\n",
        "b.toml",
        no_env,
    )
    .unwrap_err();
    assert!(error.to_string().contains("unknown field `url`"), "{error}");

    let error = Settings::from_toml_str("[caches]\n", "c.toml", no_env).unwrap_err();
    assert!(
        error.to_string().contains("unknown field `caches`"),
        "{error}"
    );
}

#[test]
fn environment_overrides_win_over_the_file() {
    let env = env_of(&[
        ("KVI_AGENT_LISTEN", "127.0.0.1:4000"),
        ("KVI_AGENT_CACHE_TTL_SECS", "120"),
        (
            "KVI_AGENT_RABBITMQ_URI",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        ),
    ]);
    let settings = Settings::from_toml_str(FULL, "full.toml", env).unwrap();
    assert_eq!(settings.server.listen.to_string(), "127.0.0.1:4000");
    assert_eq!(settings.cache.ttl_secs, 120);
    let TransportSettings::RabbitMq(rabbit) = &settings.transport else {
        panic!()
    };
    assert_eq!(
        rabbit.uri.as_ref().unwrap().expose(),
        "amqp://guest:guest@127.0.0.1:5672/%2f"
    );

    let error = Settings::from_toml_str(
        FULL,
        "full.toml",
        env_of(&[("KVI_AGENT_CACHE_TTL_SECS", "soon")]),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "KVI_AGENT_CACHE_TTL_SECS: `soon` is not a non-negative integer"
    );

    // An override that does not fit the transport is named.
    let error = Settings::from_toml_str(
        FULL,
        "full.toml",
        env_of(&[("KVI_AGENT_SERVICEBUS_TOPIC", "t")]),
    )
    .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("KVI_AGENT_SERVICEBUS_TOPIC") && message.contains("unknown field `topic`"),
        "{message}"
    );
}

#[test]
fn every_override_names_a_real_key() {
    // Each variable applied alone to an empty file parses (or fails only on its value's
    // meaning, never as an unknown key).
    for (variable, key, _) in ENV_OVERRIDES {
        let value = match *key {
            "server.listen" => "127.0.0.1:1",
            "server.allow_non_loopback" => "true",
            "vault.url" => "https://kv.vault.azure.net/",
            "vault.credential" => "developer-tools",
            "cache.mode" => "invalidate",
            "transport.kind" => "none",
            k if k.ends_with("_secs")
                || k.ends_with("_ms")
                || k.ends_with("connections")
                || k.ends_with("watchers")
                || k.ends_with("capacity") =>
            {
                "5"
            }
            _ => "x",
        };
        let result = Settings::from_toml_str("", "(none)", env_of(&[(variable, value)]));
        if let Err(error) = result {
            assert!(
                !error.to_string().contains("unknown field"),
                "{variable}: {error}"
            );
        }
    }
}

#[test]
fn a_non_loopback_listen_address_needs_to_be_asked_for_by_name() {
    let error = Settings::from_toml_str("[server]\nlisten = \"0.0.0.0:2773\"\n", "x.toml", no_env)
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("server.listen: `0.0.0.0:2773` is not a loopback address"),
        "{error}"
    );
    let settings = Settings::from_toml_str(
        "[server]\nlisten = \"0.0.0.0:2773\"\nallow_non_loopback = true\n",
        "x.toml",
        no_env,
    )
    .unwrap();
    assert_eq!(settings.server.listen.to_string(), "0.0.0.0:2773");
}

#[test]
fn the_event_grid_webhook_needs_a_transport_and_an_authentication() {
    let text = "[transport]\nkind = \"eventgrid-webhook\"\nlisten = \"127.0.0.1:8443\"\nplain_http = true\nshared_secret = \"webhook-secret-1\"\nsecond_shared_secret = \"webhook-secret-2\"\n";
    let settings = Settings::from_toml_str(text, "x.toml", no_env).unwrap();
    assert_eq!(settings.transport.kind(), "eventgrid-webhook");
    let printed = settings.to_masked_toml();
    assert!(!printed.contains("webhook-secret"), "{printed}");
    assert!(printed.contains("shared_secret = \"***\""), "{printed}");
    assert!(!format!("{settings:?}").contains("webhook-secret"));

    let refused = |text: &str| {
        Settings::from_toml_str(text, "x.toml", no_env)
            .unwrap_err()
            .to_string()
    };
    let head = "[transport]\nkind = \"eventgrid-webhook\"\n";
    assert_eq!(
        refused(&format!("{head}plain_http = true\nshared_secret = \"s\"\n")),
        "transport.listen is required for kind = \"eventgrid-webhook\" (or KVI_AGENT_WEBHOOK_LISTEN)"
    );
    assert_eq!(
        refused(&format!("{head}listen = \"127.0.0.1:8443\"\nplain_http = true\n")),
        "transport: the webhook needs an authentication: shared_secret (KVI_AGENT_WEBHOOK_SHARED_SECRET) and/or entra_tenant + entra_audience, or, only behind a proxy that authenticates, without_authentication = true"
    );
    assert!(refused(&format!(
        "{head}listen = \"0.0.0.0:8443\"\nplain_http = true\nshared_secret = \"s\"\n"
    ))
    .starts_with("transport.listen: `0.0.0.0:8443` is not a loopback address"));
    assert_eq!(
        refused(&format!("{head}listen = \"0.0.0.0:8443\"\nshared_secret = \"s\"\n")),
        "transport: choose tls_cert_file + tls_key_file, or plain_http = true behind a TLS-terminating proxy on loopback"
    );
    assert_eq!(
        refused(&format!(
            "{head}listen = \"0.0.0.0:8443\"\nplain_http_allowing_non_loopback = true\nentra_tenant = \"t\"\n"
        )),
        "transport: set both entra_tenant and entra_audience, or neither"
    );
    // Named settings allow what the defaults refuse.
    let settings = Settings::from_toml_str(
        &format!("{head}listen = \"0.0.0.0:8443\"\nplain_http_allowing_non_loopback = true\nwithout_authentication = true\n"),
        "x.toml",
        no_env,
    )
    .unwrap();
    assert_eq!(settings.transport.kind(), "eventgrid-webhook");
}

#[test]
fn the_event_grid_webhook_takes_its_settings_from_the_environment() {
    let env = |name: &str| match name {
        "KVI_AGENT_TRANSPORT" => Some("eventgrid-webhook".to_owned()),
        "KVI_AGENT_WEBHOOK_LISTEN" => Some("0.0.0.0:8443".to_owned()),
        "KVI_AGENT_WEBHOOK_TLS_CERT_FILE" => Some("/etc/webhook/cert.pem".to_owned()),
        "KVI_AGENT_WEBHOOK_TLS_KEY_FILE" => Some("/etc/webhook/key.pem".to_owned()),
        "KVI_AGENT_WEBHOOK_SHARED_SECRET" => Some("file:///run/secrets/webhook".to_owned()),
        "KVI_AGENT_WEBHOOK_ENTRA_TENANT" => Some("my-tenant".to_owned()),
        "KVI_AGENT_WEBHOOK_ENTRA_AUDIENCE" => Some("api://kvi-agent".to_owned()),
        _ => None,
    };
    let settings = Settings::from_env(env).unwrap();
    let TransportSettings::EventGridWebhook(webhook) = &settings.transport else {
        panic!("{:?}", settings.transport);
    };
    assert_eq!(webhook.listen, Some("0.0.0.0:8443".parse().unwrap()));
    assert_eq!(
        webhook.tls_cert_file.as_deref(),
        Some(std::path::Path::new("/etc/webhook/cert.pem"))
    );
    assert_eq!(
        webhook.shared_secret.as_ref().map(Masked::expose),
        Some("file:///run/secrets/webhook")
    );
    assert_eq!(webhook.entra_audience.as_deref(), Some("api://kvi-agent"));
}

#[test]
fn a_masked_setting_reads_a_file_reference() {
    let path = std::env::temp_dir().join(format!("kvi-agent-secret-{}", std::process::id()));
    std::fs::write(&path, "from-a-file\n").unwrap();
    let masked = Masked::new(format!("file://{}", path.display()));
    use secrecy::ExposeSecret as _;
    assert_eq!(
        masked
            .resolve("transport.shared_secret")
            .unwrap()
            .expose_secret(),
        "from-a-file"
    );
    std::fs::remove_file(&path).unwrap();
    let error = masked.resolve("transport.shared_secret").unwrap_err();
    assert_eq!(error.kind(), AgentErrorKind::Config);
    assert!(error
        .to_string()
        .starts_with("transport.shared_secret: cannot read the file "));
    assert_eq!(
        Masked::new("inline").resolve("k").unwrap().expose_secret(),
        "inline"
    );
}

#[test]
fn event_grid_pull_needs_its_subscription() {
    let text = "[transport]\nkind = \"eventgrid-pull\"\nendpoint = \"https://ns.westeurope-1.eventgrid.azure.net\"\ntopic = \"keyvault\"\nsubscription = \"agent\"\naccess_key = \"c2VjcmV0LWtleQ==\"\n";
    let settings = Settings::from_toml_str(text, "x.toml", no_env).unwrap();
    assert_eq!(settings.transport.kind(), "eventgrid-pull");
    assert!(!settings.to_masked_toml().contains("c2VjcmV0LWtleQ"));
    let error = Settings::from_toml_str(
        "[transport]\nkind = \"eventgrid-pull\"\nendpoint = \"https://ns.westeurope-1.eventgrid.azure.net\"\ntopic = \"keyvault\"\n",
        "x.toml",
        no_env,
    )
    .unwrap_err();
    assert_eq!(error.to_string(), "transport.subscription is required");
}

#[test]
fn service_bus_registrations_check_their_keys() {
    let managed =
        "[transport]\nkind = \"servicebus\"\nnamespace = \"my-ns\"\ntopic = \"keyvault-events\"\n";
    assert!(Settings::from_toml_str(managed, "x", no_env).is_ok());
    let error = Settings::from_toml_str(
        "[transport]\nkind = \"servicebus\"\nnamespace = \"my-ns\"\n",
        "x",
        no_env,
    )
    .unwrap_err();
    assert_eq!(error.to_string(), "transport.topic is required");
    let stored = "[transport]\nkind = \"servicebus\"\nregistration = \"connection-string\"\nconnection_string_secret = \"ServiceBus--ConnectionString\"\n";
    assert!(Settings::from_toml_str(stored, "x", no_env).is_ok());
    let error = Settings::from_toml_str(
        "[transport]\nkind = \"servicebus\"\nregistration = \"connection-string\"\n",
        "x",
        no_env,
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "transport.connection_string_secret is required"
    );
}

#[test]
fn other_checks_name_the_key() {
    for (text, message) in [
        (
            "[cache]\nttl_secs = 0\n",
            "cache.ttl_secs must be at least 1",
        ),
        (
            "[server]\nmax_connections = 0\n",
            "server.max_connections must be at least 1",
        ),
        (
            "[names]\nkey_separator = \":\"\n",
            "names: set both key_separator and vault_separator, or neither",
        ),
        (
            "[vault]\nurl = \"http://kv.vault.azure.net/\"\n",
            "vault.url: `http://kv.vault.azure.net/` is not an https:// URL",
        ),
        (
            "[transport]\nkind = \"rabbitmq\"\n",
            "transport.uri is required for kind = \"rabbitmq\" (or KVI_AGENT_RABBITMQ_URI)",
        ),
    ] {
        assert_eq!(
            Settings::from_toml_str(text, "x", no_env)
                .unwrap_err()
                .to_string(),
            message
        );
    }
}

#[test]
fn check_config_output_masks_the_broker_password() {
    let settings = Settings::from_toml_str(FULL, "full.toml", no_env).unwrap();
    let printed = settings.to_masked_toml();
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(printed.contains("uri = \"***\""), "{printed}");
    assert!(printed.contains("listen = \"127.0.0.1:3000\""), "{printed}");
    assert!(printed.contains("kind = \"rabbitmq\""), "{printed}");
    assert!(!format!("{settings:?}").contains("hunter2"));
    // What it prints reads back as the same settings.
    let again = Settings::from_toml_str(
        &printed.replace("\"***\"", "\"amqps://u:p@h/\""),
        "printed",
        no_env,
    )
    .unwrap();
    assert_eq!(again.server.listen, settings.server.listen);
}

#[test]
fn the_token_comes_from_the_environment_or_a_file() {
    let token = ApiToken::resolve(env_of(&[(TOKEN_ENV, "abcdefghijklmnop")]), None).unwrap();
    assert!(token.matches(b"abcdefghijklmnop"));
    assert!(!token.matches(b"abcdefghijklmnoq"));
    assert!(!token.matches(b"abcdefghijklmno"));
    assert_eq!(token.source(), &TokenSource::Environment);
    assert!(!format!("{token:?}").contains("abcdefghijklmnop"));

    let dir = std::env::temp_dir().join(format!("kvi-agent-token-{}", std::process::id()));
    std::fs::write(&dir, "from-a-file-0123456789\n").unwrap();
    let url = format!("file://{}", dir.display());
    let token = ApiToken::resolve(env_of(&[(TOKEN_ENV, &url)]), None).unwrap();
    assert!(token.matches(b"from-a-file-0123456789"));
    let token = ApiToken::resolve(no_env, Some(&dir)).unwrap();
    assert_eq!(token.source(), &TokenSource::File(dir.clone()));
    std::fs::remove_file(&dir).unwrap();

    let error = ApiToken::resolve(env_of(&[(TOKEN_ENV, "short")]), None).unwrap_err();
    assert_eq!(error.kind(), AgentErrorKind::Token);
    assert!(!error.to_string().contains("short"));
    let error = ApiToken::resolve(no_env, None).unwrap_err();
    assert_eq!(
        error.to_string(),
        "no API token: set KVI_AGENT_TOKEN (a value, or file://PATH) or server.token_file"
    );
    assert_eq!(ApiToken::generate().expose().len(), 32);
}

#[test]
fn the_readmes_transport_examples_are_valid() {
    let readme = include_str!("../../README.md");
    let examples: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .filter(|block| block.starts_with("[transport]"))
        .collect();
    let kinds: Vec<&str> = examples
        .iter()
        .map(|example| {
            Settings::from_toml_str(example, "README.md", no_env)
                .unwrap_or_else(|e| panic!("{e}\n{example}"))
                .transport
                .kind()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "servicebus",
            "rabbitmq",
            "eventgrid-pull",
            "eventgrid-webhook"
        ]
    );
}
