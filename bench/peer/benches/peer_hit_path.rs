//! The cache hit path of the closest Rust peer, `aws_secretsmanager_caching`, beside this
//! project's `CachedSecretProvider`, in one process and through the same harness
//! (`keyvault_invalidator_bench::hit_path::bench_reads`), so the ratio of the two is measured in
//! one run on one machine.
//!
//! The peer's `SecretsManagerCachingClient` wraps a real `aws_sdk_secretsmanager::Client`, here
//! pointed at a local stand-in of the Secrets Manager endpoint (`standin.rs`), so its cache is
//! filled the way an application fills it. The benchmark checks, by counting the stand-in's
//! requests, that the measured reads never left the cache.
//!
//! Run through `bench/run`, or alone with `cargo bench --manifest-path bench/peer/Cargo.toml`.

mod standin;

use std::num::NonZeroUsize;
use std::time::Duration;

use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use aws_secretsmanager_caching::SecretsManagerCachingClient;
use criterion::Criterion;
use futures::executor::block_on;
use keyvault_invalidator_bench::hit_path::{bench_reads, secret_names, secret_value, SECRETS};
use keyvault_invalidator_moka::CachedSecretProvider;
use keyvault_invalidator_testkit::InMemoryVault;

use standin::SecretsManagerStandIn;

/// The peer's default size (its documentation's and `MemoryStore::default`'s).
const PEER_MAX_SIZE: NonZeroUsize = NonZeroUsize::new(1000).unwrap();

/// The peer's time to live. Its documented default is 300 s, and the default run takes about a
/// minute; but criterion's `--measurement-time` can make a run much longer, and an entry that
/// expires mid-run turns hits into `DescribeSecret` round trips. One hour keeps every measured
/// read a hit. The TTL does not change the cost of a hit: the peer compares the entry's age with
/// it on every read, whatever its value.
const PEER_TTL: Duration = Duration::from_secs(3600);

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let names = secret_names();
    assert_eq!(names.len(), SECRETS);

    // The runtime serves the stand-in and runs the peer's warm-up (the SDK's HTTP client and its
    // timeouts need Tokio). The measured reads do not run on it: see `peer`.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let standin = runtime.block_on(SecretsManagerStandIn::start(
        names.iter().map(|name| (name.clone(), secret_value(name))),
    ));

    peer(&mut criterion, &runtime, &standin, &names);
    kvi_in_peer_process(&mut criterion, &names);

    criterion.final_summary();
}

/// `aws_secretsmanager_caching`, warm, read as an application reads it.
fn peer(
    criterion: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    standin: &SecretsManagerStandIn,
    names: &[String],
) {
    // Static test credentials and a region: nothing is looked up in the environment, and the
    // stand-in ignores the signature.
    let sdk_config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "AKIDBENCHSTANDIN",
            "bench-stand-in-secret-key",
            None,
            None,
            "bench-peer",
        ))
        .endpoint_url(standin.endpoint_url());
    // `from_builder` is how an application with its own SDK configuration builds the peer (it
    // only adds the peer's User-Agent interceptor to the client and calls `new`).
    let caching = runtime
        .block_on(SecretsManagerCachingClient::from_builder(
            sdk_config,
            PEER_MAX_SIZE,
            PEER_TTL,
            false,
        ))
        .expect("the peer's caching client");

    runtime.block_on(async {
        for name in names {
            let secret = caching
                .get_secret_value(name, None, None, false)
                .await
                .expect("the peer's warm-up read");
            assert_eq!(secret.secret_string.as_deref(), Some(&*secret_value(name)));
        }
    });
    // On a miss with an empty cache the peer makes exactly one GetSecretValue call and stores the
    // answer; it calls DescribeSecret only to refresh an entry older than its TTL.
    assert_eq!(
        standin.get_secret_value_requests(),
        SECRETS,
        "warm-up: one GetSecretValue a name"
    );
    assert_eq!(
        standin.describe_secret_requests(),
        0,
        "warm-up: no DescribeSecret"
    );
    assert_eq!(standin.other_requests(), 0, "warm-up: no other request");

    // Driven by `futures::executor::block_on`, outside the runtime, exactly like this project's
    // cache: a hit never awaits anything that needs Tokio (it takes a `tokio::sync::RwLock` read
    // guard, which works on any executor, and reads the store under it), so no runtime context is
    // entered and the peer pays nothing this project's measurement does not.
    bench_reads(criterion, "aws_secretsmanager_caching", |name| {
        block_on(caching.get_secret_value(name, None, None, false)).expect("a warm read")
    });

    // Every measured read was a hit: the stand-in saw nothing since the warm-up (an expired entry
    // would have shown as a DescribeSecret, a miss as a GetSecretValue).
    assert_eq!(
        standin.get_secret_value_requests(),
        SECRETS,
        "the measured reads were all hits"
    );
    assert_eq!(
        standin.describe_secret_requests(),
        0,
        "no entry expired during the run"
    );
    assert_eq!(standin.other_requests(), 0, "no other request");
}

/// This project's `CachedSecretProvider`, warm with the same names and values: the same-process
/// reference for the peer (the main benchmark measures it as `kvi_cached_secret_provider`).
fn kvi_in_peer_process(criterion: &mut Criterion, names: &[String]) {
    let vault = InMemoryVault::new();
    for name in names {
        vault.set(name, &secret_value(name));
    }
    let cache = CachedSecretProvider::new(vault.clone());
    for name in names {
        block_on(cache.get(name)).expect("warm-up read");
    }
    assert_eq!(
        vault.total_calls(),
        SECRETS,
        "warm-up: one vault read a name"
    );
    bench_reads(criterion, "kvi_in_peer_process", |name| {
        block_on(cache.get(name)).expect("a warm read")
    });
    assert_eq!(
        vault.total_calls(),
        SECRETS,
        "the measured reads were all hits"
    );
}
