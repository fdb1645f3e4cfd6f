//! Counters a user can read.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;
use std::time::Duration;

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: HitCounter,
    pub(crate) misses: AtomicU64,
    pub(crate) loads: AtomicU64,
    pub(crate) load_errors: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) stale_serves: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) duplicate_events: AtomicU64,
    pub(crate) older_events: AtomicU64,
    pub(crate) overtaken_loads: AtomicU64,
    pub(crate) version_reads: AtomicU64,
    pub(crate) deferred_events: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

const HIT_STRIPES: usize = 8;

/// The hit count, bumped by every read from every thread. With one shared atomic, two threads
/// reading at once spent more time bouncing its cache line between cores than in the lookup
/// (measured in `bench/`); cache-padded stripes, one picked per thread, keep reads apart.
#[derive(Default)]
pub(crate) struct HitCounter {
    stripes: [CachePadded<AtomicU64>; HIT_STRIPES],
}

impl HitCounter {
    pub(crate) fn bump(&self) {
        static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % HIT_STRIPES;
        }
        let stripe = STRIPE.with(|stripe| *stripe);
        self.stripes[stripe].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|stripe| stripe.load(Ordering::Relaxed))
            .sum()
    }
}

/// The cache's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Reads served from the cache.
    pub hits: u64,
    /// Reads that found nothing usable and loaded (or fell back to a stale value).
    pub misses: u64,
    /// Calls to the provider, of any kind.
    pub loads: u64,
    /// Provider calls that failed.
    pub load_errors: u64,
    /// New values swapped in by refresh-ahead.
    pub refreshes: u64,
    /// Reads answered with a value known to be out of date because the provider was failing.
    pub stale_serves: u64,
    /// Invalidations (explicit, or events in invalidate mode).
    pub invalidations: u64,
    /// New-version events for the version already cached: nothing to do.
    pub duplicate_events: u64,
    /// New-version events for a version older than the cached one: nothing to do.
    pub older_events: u64,
    /// Loads whose result an invalidation made stale before it was used.
    pub overtaken_loads: u64,
    /// Reads of an event's exact version, after the provider's current version was older than
    /// the event's or could not be placed (also counted in `loads`).
    pub version_reads: u64,
    /// New-version events answered "retry later" without a provider call, because a backoff
    /// or the provider's `Retry-After` was still running.
    pub deferred_events: u64,
    /// Entries in the cache now (approximate, as moka counts them).
    pub entries: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self, entries: u64) -> CacheStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            hits: self.hits.get(),
            misses: get(&self.misses),
            loads: get(&self.loads),
            load_errors: get(&self.load_errors),
            refreshes: get(&self.refreshes),
            stale_serves: get(&self.stale_serves),
            invalidations: get(&self.invalidations),
            duplicate_events: get(&self.duplicate_events),
            older_events: get(&self.older_events),
            overtaken_loads: get(&self.overtaken_loads),
            version_reads: get(&self.version_reads),
            deferred_events: get(&self.deferred_events),
            entries,
        }
    }
}

/// What the cache holds for one secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SecretInfo {
    /// The cache key (the name, lower-cased).
    pub key: String,
    /// The cached version, when the provider gave one.
    pub version: Option<String>,
    /// How long ago the value was loaded.
    pub age: Duration,
    /// How long the value has been due for replacement without a successful refresh (a refresh
    /// is pending or failing).
    pub overdue: Option<Duration>,
}
