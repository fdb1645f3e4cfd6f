//! The secret store: order, fall-through on misses only, failures returned as they are,
//! fallback providers, critical errors, aggregation, name mapping, connection strings. Call counts come from the testkit's `InMemoryVault` and a counting wrapper.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keyvault_invalidator_core::secrecy::ExposeSecret;
use keyvault_invalidator_core::{
    NameMapping, ProviderError, ProviderErrorKind, Secret, SecretProvider,
};
use keyvault_invalidator_secrets::{
    read_connection_string, EnvProvider, SecretStore, StaticProvider, StoreFailures,
};
use keyvault_invalidator_testkit::InMemoryVault;

const VALUE: &str = "s3cret-value-never-shown";

/// Counts the names a provider is asked for. Clones share the counts.
struct Counting<P> {
    inner: P,
    calls: Arc<AtomicUsize>,
    last: Arc<std::sync::Mutex<Option<String>>>,
}

impl<P: Clone> Clone for Counting<P> {
    fn clone(&self) -> Self {
        Counting {
            inner: self.inner.clone(),
            calls: self.calls.clone(),
            last: self.last.clone(),
        }
    }
}

impl<P> Counting<P> {
    fn new(inner: P) -> Self {
        Counting {
            inner,
            calls: Arc::default(),
            last: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn last_name(&self) -> Option<String> {
        self.last.lock().unwrap().clone()
    }
}

#[async_trait]
impl<P: SecretProvider> SecretProvider for Counting<P> {
    async fn get_secret(&self, name: &str) -> Result<Secret, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.last.lock().unwrap() = Some(name.to_owned());
        self.inner.get_secret(name).await
    }
}

fn failures(error: &ProviderError) -> &StoreFailures {
    error
        .source
        .as_ref()
        .and_then(|s| s.downcast_ref::<StoreFailures>())
        .expect("a store error carries StoreFailures")
}

#[tokio::test]
async fn the_first_provider_that_has_the_secret_wins() {
    let first = InMemoryVault::new();
    let second = InMemoryVault::new();
    first.set("db-password", "from-first");
    second.set("db-password", "from-second");
    let store = SecretStore::builder()
        .add("first", first.clone())
        .add("second", second.clone())
        .build();

    let secret = store.get_secret("db-password").await.unwrap();

    assert_eq!(secret.value().expose_secret(), "from-first");
    assert_eq!(first.calls("db-password"), 1);
    assert_eq!(second.total_calls(), 0);
    assert_eq!(store.providers().collect::<Vec<_>>(), ["first", "second"]);
}

#[tokio::test]
async fn not_found_moves_on_to_the_next_provider() {
    let first = InMemoryVault::new();
    let second = InMemoryVault::new();
    let v = second.set("db-password", "from-second");
    let store = SecretStore::builder()
        .add("first", first.clone())
        .add("second", second.clone())
        .build();

    let secret = store.get_secret("db-password").await.unwrap();

    assert_eq!(secret.value().expose_secret(), "from-second");
    assert_eq!(secret.version(), Some(v.as_str()));
    assert_eq!(first.calls("db-password"), 1);
    assert_eq!(second.calls("db-password"), 1);
}

#[tokio::test]
async fn not_found_everywhere_is_not_found_and_lists_each_provider() {
    let first = InMemoryVault::new();
    let defaults = Counting::new(StaticProvider::new([("other", "x")]));
    let store = SecretStore::builder()
        .add("vault", first.clone())
        .add("defaults", defaults.clone())
        .build();

    let error = store.get_secret("db-password").await.unwrap_err();

    assert_eq!(error.kind, ProviderErrorKind::NotFound);
    assert_eq!(error.name, "db-password");
    assert!(
        error.message.contains("[vault] not found"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("[defaults] not found"),
        "{}",
        error.message
    );
    let listed: Vec<&str> = failures(&error)
        .failures()
        .iter()
        .map(|f| f.provider.as_str())
        .collect();
    assert_eq!(listed, ["vault", "defaults"]);
    assert_eq!(first.calls("db-password"), 1);
    assert_eq!(defaults.calls(), 1);
}

#[tokio::test]
async fn a_critical_error_stops_the_search_and_surfaces() {
    let vault = InMemoryVault::new();
    let fallback = InMemoryVault::new();
    vault.set("db-password", VALUE);
    fallback.set("db-password", "stale-fallback");
    vault.fail_next(1, ProviderErrorKind::AccessDenied);
    let store = SecretStore::builder()
        .add("key-vault", vault.clone())
        .add("fallback", fallback.clone())
        .build();

    let error = store.get_secret("db-password").await.unwrap_err();

    assert_eq!(error.kind, ProviderErrorKind::AccessDenied);
    assert!(error.is_critical());
    assert!(
        error.message.contains("[key-vault] access denied"),
        "{}",
        error.message
    );
    assert_eq!(vault.calls("db-password"), 1);
    assert_eq!(fallback.total_calls(), 0);
    assert_eq!(failures(&error).failures().len(), 1);
}

#[tokio::test]
async fn a_throttled_vault_is_returned_with_its_retry_after_and_the_static_provider_is_not_asked() {
    let vault = InMemoryVault::new();
    vault.set("db-password", VALUE);
    let retry_after = Some(Duration::from_millis(7_250));
    vault.fail_next(1, ProviderErrorKind::Throttled { retry_after });
    let defaults = Counting::new(StaticProvider::new([("db-password", "default")]));
    let store = SecretStore::builder()
        .add("key-vault", vault.clone())
        .add("defaults", defaults.clone())
        .build();

    let error = store.get_secret("db-password").await.unwrap_err();

    assert_eq!(error.kind, ProviderErrorKind::Throttled { retry_after });
    assert!(error.is_retryable());
    assert_eq!(
        error.message,
        "no provider could read it: [key-vault] throttled (retry after 7250 ms): injected failure"
    );
    assert_eq!(vault.calls("db-password"), 1);
    assert_eq!(defaults.calls(), 0);
    // The chain goes store error -> StoreFailures -> the vault's own error.
    let decisive = failures(&error).decisive().expect("a decisive failure");
    assert_eq!(decisive.provider, "key-vault");
    let chained = std::error::Error::source(failures(&error))
        .and_then(|e| e.downcast_ref::<ProviderError>())
        .expect("StoreFailures' source is the vault's error");
    assert_eq!(chained.kind, ProviderErrorKind::Throttled { retry_after });
}

#[tokio::test]
async fn transient_and_other_failures_are_returned_as_they_are() {
    for kind in [ProviderErrorKind::Transient, ProviderErrorKind::Other] {
        let vault = InMemoryVault::new();
        vault.set("db-password", VALUE);
        vault.fail_next(1, kind);
        let defaults = Counting::new(StaticProvider::new([("db-password", "default")]));
        let store = SecretStore::builder()
            .add("key-vault", vault.clone())
            .add("defaults", defaults.clone())
            .build();

        let error = store.get_secret("db-password").await.unwrap_err();

        assert_eq!(error.kind, kind);
        assert_eq!(error.is_retryable(), kind == ProviderErrorKind::Transient);
        assert_eq!(defaults.calls(), 0, "{kind}");
        assert_eq!(failures(&error).failures().len(), 1);
        // The next call reaches the vault again: nothing was held back.
        let secret = store.get_secret("db-password").await.unwrap();
        assert_eq!(secret.value().expose_secret(), VALUE);
        assert_eq!(defaults.calls(), 0, "{kind}");
    }
}

#[tokio::test]
async fn not_found_in_the_vault_asks_the_static_provider_exactly_once() {
    let vault = InMemoryVault::new();
    let defaults = Counting::new(StaticProvider::new([("db-password", "default")]));
    let store = SecretStore::builder()
        .add("key-vault", vault.clone())
        .add("defaults", defaults.clone())
        .build();

    let secret = store.get_secret("db-password").await.unwrap();

    assert_eq!(secret.value().expose_secret(), "default");
    assert_eq!(vault.calls("db-password"), 1);
    assert_eq!(defaults.calls(), 1);
}

#[tokio::test]
async fn a_fallback_provider_answers_after_a_transient_failure() {
    let vault = InMemoryVault::new();
    vault.set("db-password", VALUE);
    vault.fail_next(1, ProviderErrorKind::Transient);
    let defaults = Counting::new(StaticProvider::new([("db-password", "default")]));
    let store = SecretStore::builder()
        .add("key-vault", vault.clone())
        .fallback("defaults", defaults.clone())
        .build();

    let secret = store.get_secret("db-password").await.unwrap();

    assert_eq!(secret.value().expose_secret(), "default");
    assert_eq!(vault.calls("db-password"), 1);
    assert_eq!(defaults.calls(), 1);
    assert_eq!(
        store.providers().collect::<Vec<_>>(),
        ["key-vault", "defaults"]
    );
}

#[tokio::test]
async fn a_fallback_provider_is_never_asked_after_a_critical_error() {
    let vault = InMemoryVault::new();
    vault.fail_next(1, ProviderErrorKind::AccessDenied);
    let defaults = Counting::new(StaticProvider::new([("db-password", "default")]));
    let store = SecretStore::builder()
        .add("key-vault", vault.clone())
        .fallback("defaults", defaults.clone())
        .build();

    let error = store.get_secret("db-password").await.unwrap_err();

    assert_eq!(error.kind, ProviderErrorKind::AccessDenied);
    assert_eq!(defaults.calls(), 0);
}

#[tokio::test]
async fn after_a_failure_only_fallback_providers_are_asked() {
    let vault = InMemoryVault::new();
    vault.fail_next(
        1,
        ProviderErrorKind::Throttled {
            retry_after: Some(Duration::from_secs(3)),
        },
    );
    let ordinary = Counting::new(StaticProvider::new([("db-password", "ordinary")]));
    let missing = Counting::new(StaticProvider::default());
    let fallback = Counting::new(StaticProvider::new([("db-password", "fallback")]));
    let store = SecretStore::builder()
        .add("key-vault", vault.clone())
        .add("ordinary", ordinary.clone())
        .fallback("missing", missing.clone())
        .fallback("fallback", fallback.clone())
        .build();

    let secret = store.get_secret("db-password").await.unwrap();

    assert_eq!(secret.value().expose_secret(), "fallback");
    assert_eq!(
        (ordinary.calls(), missing.calls(), fallback.calls()),
        (0, 1, 1)
    );
}

#[tokio::test]
async fn fallbacks_that_miss_or_fail_keep_the_first_failures_kind() {
    let vault = InMemoryVault::new();
    let retry_after = Some(Duration::from_secs(3));
    vault.fail_next(1, ProviderErrorKind::Throttled { retry_after });
    let failing = InMemoryVault::new();
    failing.fail_next(1, ProviderErrorKind::Transient);
    let missing = Counting::new(StaticProvider::default());
    let store = SecretStore::builder()
        .add("key-vault", vault.clone())
        .fallback("failing", failing.clone())
        .fallback("missing", missing.clone())
        .build();

    let error = store.get_secret("db-password").await.unwrap_err();

    assert_eq!(error.kind, ProviderErrorKind::Throttled { retry_after });
    assert!(
        error.message.starts_with("no provider could read it: "),
        "{}",
        error.message
    );
    assert!(
        error
            .message
            .contains("[key-vault] throttled (retry after 3000 ms): injected failure"),
        "{}",
        error.message
    );
    assert!(
        error
            .message
            .contains("[failing] transient failure: injected failure"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("[missing] not found"),
        "{}",
        error.message
    );
    let kinds: Vec<ProviderErrorKind> = failures(&error)
        .failures()
        .iter()
        .map(|f| f.error.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            ProviderErrorKind::Throttled { retry_after },
            ProviderErrorKind::Transient,
            ProviderErrorKind::NotFound
        ]
    );
    assert_eq!(failures(&error).decisive().unwrap().provider, "key-vault");
    assert_eq!((failing.total_calls(), missing.calls()), (1, 1));
}

#[tokio::test]
async fn a_provider_errors_source_chain_is_kept() {
    let store = SecretStore::builder()
        .add("key-vault", WithSource)
        .add(
            "defaults",
            StaticProvider::new([("db-password", "default")]),
        )
        .build();

    let error = store.get_secret("db-password").await.unwrap_err();

    assert_eq!(error.kind, ProviderErrorKind::Transient);
    let mut chain = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = next {
        chain.push(e.to_string());
        next = e.source();
    }
    assert_eq!(chain.len(), 4, "{chain:?}");
    assert_eq!(chain[1], "1 provider answer(s)");
    assert_eq!(
        chain[2],
        "secret `db-password`: transient failure: the vault answered 503"
    );
    assert_eq!(chain[3], "service unavailable");
}

/// Fails like the Key Vault provider does on a 503: transient, with the SDK's error as source.
struct WithSource;

#[async_trait]
impl SecretProvider for WithSource {
    async fn get_secret(&self, name: &str) -> Result<Secret, ProviderError> {
        Err(
            ProviderError::new(name, ProviderErrorKind::Transient, "the vault answered 503")
                .with_source(std::io::Error::other("service unavailable")),
        )
    }
}

#[tokio::test]
async fn a_critical_error_from_a_fallback_after_a_failure_lists_them_all() {
    let a = InMemoryVault::new();
    let b = InMemoryVault::new();
    let c = InMemoryVault::new();
    a.fail_next(1, ProviderErrorKind::Transient);
    b.fail_next(1, ProviderErrorKind::AccessDenied);
    c.set("db-password", "never-reached");
    let store = SecretStore::builder()
        .add("a", a.clone())
        .fallback("b", b.clone())
        .fallback("c", c.clone())
        .build();

    let error = store.get_secret("db-password").await.unwrap_err();

    assert_eq!(error.kind, ProviderErrorKind::AccessDenied);
    assert!(
        error.message.starts_with("a provider refused access: "),
        "{}",
        error.message
    );
    assert!(error.message.contains("[a] transient failure"));
    assert!(error.message.contains("[b] access denied"));
    assert_eq!(failures(&error).failures().len(), 2);
    assert_eq!(failures(&error).decisive().unwrap().provider, "b");
    assert_eq!(c.total_calls(), 0);
}

#[tokio::test]
async fn the_error_kind_follows_the_documented_rules() {
    /// The first provider is ordinary, the others fallbacks, so each is asked.
    async fn kind_for(kinds: &[ProviderErrorKind]) -> ProviderErrorKind {
        let mut builder = SecretStore::builder();
        for (i, kind) in kinds.iter().enumerate() {
            let vault = InMemoryVault::new();
            vault.fail_next(1, *kind);
            builder = if i == 0 {
                builder.add(format!("p{i}"), vault)
            } else {
                builder.fallback(format!("p{i}"), vault)
            };
        }
        builder.build().get_secret("x").await.unwrap_err().kind
    }
    use ProviderErrorKind::*;
    assert_eq!(kind_for(&[Transient, Transient]).await, Transient);
    assert_eq!(kind_for(&[Transient, Other]).await, Transient);
    assert_eq!(kind_for(&[Other, Transient]).await, Other);
    assert_eq!(kind_for(&[NotFound, Other]).await, Other);
    assert_eq!(kind_for(&[Other, NotFound]).await, Other);
    assert_eq!(kind_for(&[Transient, AccessDenied]).await, AccessDenied);
    assert_eq!(kind_for(&[InvalidName, InvalidName]).await, InvalidName);
    assert_eq!(kind_for(&[InvalidName, NotFound]).await, NotFound);
    assert_eq!(
        kind_for(&[
            NotFound,
            Throttled {
                retry_after: Some(Duration::from_secs(3))
            },
            Transient
        ])
        .await,
        Throttled {
            retry_after: Some(Duration::from_secs(3))
        }
    );
    assert_eq!(
        kind_for(&[Throttled { retry_after: None }, Transient]).await,
        Throttled { retry_after: None }
    );
}

#[tokio::test]
async fn invalid_name_in_one_provider_moves_on() {
    let strict = Counting::new(StaticProvider::default());
    let env = EnvProvider::builder()
        .vars([("SERVICEBUS_CONNECTIONSTRING", "from-env")])
        .build();
    // A provider that rejects the name outright, as Key Vault does with ':'.
    let rejecting = Counting::new(RejectsColons);
    let store = SecretStore::builder()
        .add("key-vault", rejecting.clone())
        .add("defaults", strict.clone())
        .add("environment", env)
        .build();

    let secret = store
        .get_secret("ServiceBus:ConnectionString")
        .await
        .unwrap();

    assert_eq!(secret.value().expose_secret(), "from-env");
    assert_eq!((rejecting.calls(), strict.calls()), (1, 1));
}

#[derive(Clone)]
struct RejectsColons;

#[async_trait]
impl SecretProvider for RejectsColons {
    async fn get_secret(&self, name: &str) -> Result<Secret, ProviderError> {
        if name.contains(':') {
            Err(ProviderError::new(
                name,
                ProviderErrorKind::InvalidName,
                "no ':'",
            ))
        } else {
            Err(ProviderError::not_found(name))
        }
    }
}

#[tokio::test]
async fn each_provider_gets_its_own_name_mapping() {
    let vault = InMemoryVault::new();
    vault.set("ServiceBus--ConnectionString", VALUE);
    let env = Counting::new(EnvProvider::builder().vars([("UNRELATED", "x")]).build());
    let store = SecretStore::builder()
        .add("environment", env.clone())
        .add_with_names(
            "key-vault",
            vault.clone(),
            NameMapping::key_separator(":").vault_separator("--"),
        )
        .build();

    let secret = store
        .get_secret("ServiceBus:ConnectionString")
        .await
        .unwrap();

    assert_eq!(secret.value().expose_secret(), VALUE);
    assert_eq!(
        env.last_name().as_deref(),
        Some("ServiceBus:ConnectionString")
    );
    assert_eq!(env.calls(), 1);
    assert_eq!(vault.calls("ServiceBus--ConnectionString"), 1);
    assert_eq!(vault.total_calls(), 1);

    // A miss names what each provider was asked for.
    let error = store.get_secret("Db:Password").await.unwrap_err();
    assert!(
        error
            .message
            .contains("[key-vault as `Db--Password`] not found"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("[environment] not found"),
        "{}",
        error.message
    );
    assert_eq!(failures(&error).failures()[1].error.name, "Db--Password");
}

#[tokio::test]
async fn reads_a_connection_string_in_one_line() {
    let vault = InMemoryVault::new();
    vault.set(
        "ServiceBus--ConnectionString",
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=s3cret;EntityPath=topic\n",
    );
    let store = SecretStore::builder()
        .add_with_names(
            "key-vault",
            vault.clone(),
            NameMapping::key_separator(":").vault_separator("--"),
        )
        .build();

    let connection = store
        .connection_string("ServiceBus:ConnectionString")
        .await
        .unwrap();

    assert_eq!(
        connection.expose_secret(),
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=s3cret;EntityPath=topic"
    );
    assert!(!format!("{connection:?}").contains("s3cret"));
    assert_eq!(vault.calls("ServiceBus--ConnectionString"), 1);
}

#[tokio::test]
async fn connection_string_failures() {
    let vault = InMemoryVault::new();
    vault.set("empty", "  \n");
    let store = SecretStore::builder()
        .add("key-vault", vault.clone())
        .build();

    for blank in ["", "   "] {
        let error = store.connection_string(blank).await.unwrap_err();
        assert_eq!(error.kind, ProviderErrorKind::InvalidName);
    }
    assert_eq!(vault.total_calls(), 0);

    let error = store.connection_string("empty").await.unwrap_err();
    assert_eq!(error.kind, ProviderErrorKind::Other);
    assert_eq!(error.message, "the connection string is empty");

    let error = store.connection_string("missing").await.unwrap_err();
    assert_eq!(error.kind, ProviderErrorKind::NotFound);
    assert_eq!(vault.total_calls(), 2);

    // Also works on any provider, not only a store.
    let error = read_connection_string(&vault, "missing").await.unwrap_err();
    assert_eq!(error.kind, ProviderErrorKind::NotFound);
}

#[tokio::test]
async fn blank_names_and_empty_stores() {
    let vault = InMemoryVault::new();
    let store = SecretStore::builder()
        .add("key-vault", vault.clone())
        .build();
    let error = store.get_secret(" ").await.unwrap_err();
    assert_eq!(error.kind, ProviderErrorKind::InvalidName);
    assert_eq!(vault.total_calls(), 0);

    let empty = SecretStore::builder().build();
    let error = empty.get_secret("db-password").await.unwrap_err();
    assert_eq!(error.kind, ProviderErrorKind::NotFound);
    assert_eq!(error.message, "the store has no providers");
}

#[tokio::test]
async fn a_store_is_a_provider_and_clones_share_providers() {
    let vault = InMemoryVault::new();
    vault.set("db-password", VALUE);
    let store = SecretStore::builder()
        .add("key-vault", vault.clone())
        .build();
    let shared: Arc<dyn SecretProvider> = Arc::new(store.clone());
    // A store can sit under another store, or a cache.
    let outer = SecretStore::builder().add("inner", shared).build();

    assert_eq!(
        outer
            .get_secret("db-password")
            .await
            .unwrap()
            .value()
            .expose_secret(),
        VALUE
    );
    store.get_secret("db-password").await.unwrap();
    assert_eq!(vault.calls("db-password"), 2);
}

#[tokio::test]
async fn values_never_show_in_debug_or_errors() {
    let vault = InMemoryVault::new();
    vault.set("db-password", VALUE);
    let defaults = StaticProvider::new([("db-password", VALUE)]);
    vault.fail_next(1, ProviderErrorKind::Transient);
    let store = SecretStore::builder()
        .add("key-vault", vault.clone())
        .fallback("defaults", defaults.clone())
        .build();

    let secret = store.get_secret("db-password").await.unwrap();
    let error = store.get_secret("other").await.unwrap_err();

    for shown in [
        format!("{store:?}"),
        format!("{defaults:?}"),
        format!("{secret:?}"),
        format!("{error} {error:?}"),
        format!("{:?}", SecretStore::builder().add("d", defaults.clone())),
    ] {
        assert!(!shown.contains(VALUE), "the value leaked: {shown}");
    }
    assert_eq!(
        format!("{store:?}"),
        r#"SecretStore { providers: ["key-vault", "defaults"] }"#
    );
}

#[tokio::test]
async fn a_version_is_read_from_the_first_provider_that_has_the_secret_by_the_same_rules() {
    let empty = InMemoryVault::new();
    let vault = InMemoryVault::new();
    let v1 = vault.set("db-password", "first");
    vault.rotate("db-password", "second");
    let store = SecretStore::builder()
        .add("empty", empty.clone())
        .add_with_names(
            "vault",
            vault.clone(),
            NameMapping::key_separator(":").vault_separator("--"),
        )
        .build();

    let old = store.get_secret_version("db-password", &v1).await.unwrap();
    assert_eq!(
        (old.value().expose_secret(), old.version()),
        ("first", Some(v1.as_str()))
    );
    assert_eq!(
        (empty.calls("db-password"), vault.calls("db-password")),
        (1, 1)
    );

    vault.fail_next(1, ProviderErrorKind::Transient);
    let later = InMemoryVault::new();
    later.set("db-password", "default");
    let store = SecretStore::builder()
        .add("vault", vault.clone())
        .add("later", later.clone())
        .build();
    let error = store
        .get_secret_version("db-password", &v1)
        .await
        .unwrap_err();
    assert_eq!(error.kind, ProviderErrorKind::Transient);
    assert_eq!(
        later.calls("db-password"),
        0,
        "a transient failure is not papered over by a later provider"
    );
}
