//! The packaging files in `deploy/agent/` exist, run this binary, and use the default port.

use std::path::PathBuf;

use keyvault_invalidator_agent::config::{Settings, DEFAULT_LISTEN};

fn read(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/agent")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_dockerfile_builds_the_binary_and_runs_it_unprivileged() {
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("-p keyvault-invalidator-agent --bin kvi-agent"));
    assert_eq!(
        dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM ")),
        2,
        "multi-stage"
    );
    assert!(dockerfile.contains("FROM gcr.io/distroless/cc-debian12:nonroot"));
    assert!(dockerfile.contains("USER nonroot"));
    assert!(dockerfile.contains("EXPOSE 2773"));
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/kvi-agent"]"#));
}

#[test]
fn the_systemd_unit_is_hardened() {
    let unit = read("kvi-agent.service");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/kvi-agent --config /etc/kvi-agent/kvi-agent.toml")
    );
    for setting in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "Environment=KVI_AGENT_TOKEN=file://%d/token",
    ] {
        assert!(unit.contains(setting), "no {setting:?}");
    }
}

#[test]
fn the_kubernetes_sidecar_shares_the_token_in_a_memory_volume() {
    let manifest = read("kubernetes.yaml");
    assert!(manifest.contains("image: example.invalid/kvi-agent:0.1"));
    assert!(manifest.contains("emptyDir: { medium: Memory"));
    assert!(manifest.contains(r#"value: "file:///var/run/kvi/token""#));
    assert!(manifest.contains(r#"listen = "127.0.0.1:2773""#));
    assert!(manifest.contains(r#"["/usr/local/bin/kvi-agent", "probe", "/readyz"]"#));
    assert!(read("README.md").contains("kubernetes.yaml"));
}

#[test]
fn the_example_configuration_is_valid_and_uses_the_default_port() {
    let text = read("kvi-agent.toml");
    let settings = Settings::from_toml_str(&text, "kvi-agent.toml", |_| None).unwrap();
    assert_eq!(settings.server.listen, DEFAULT_LISTEN);
    assert_eq!(settings.transport.kind(), "servicebus");
    assert_eq!(DEFAULT_LISTEN.to_string(), "127.0.0.1:2773");
}
