//! What every end-to-end measurement shares, whatever carries the events: a fleet of warm
//! secrets rotated in a vault, the events announcing the rotations, a cache that notes when
//! each secret changed, and a driver that offers the events at a fixed rate or all at once.
//!
//! Latency is measured from the moment an event was handed to the transport to the moment the
//! cache changed. The publisher runs on a thread of its own and never waits for the job, so the
//! job cannot slow the offered load down and hide its own delays (coordinated omission); how far
//! the publisher fell behind its schedule is reported beside the percentiles.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hdrhistogram::Histogram;
use keyvault_invalidator_core::{CacheError, NewVersion, SecretCache};
use keyvault_invalidator_moka::{CacheOptions, CachedSecretProvider, RefreshMode};
use keyvault_invalidator_testkit::{InMemoryVault, KeyVaultEventBuilder};
use serde::{Deserialize, Serialize};

/// The vault the benchmark events come from (the invalidators allow only it).
pub const VAULT: &str = "bench-kv";

/// The name of the `index`-th benchmark secret.
pub fn secret_name(index: usize) -> String {
    format!("bench-{index}")
}

fn secret_index(name: &str) -> Option<usize> {
    name.strip_prefix("bench-")?.parse().ok()
}

/// `count` secrets, each cached, then rotated in the vault: the events in [`Fleet::events`]
/// each make the cache load exactly one new version.
pub struct Fleet {
    /// The cache the job changes, wrapped to note when it did.
    pub cache: TimedCache<CachedSecretProvider<InMemoryVault>>,
    /// One Event Grid-schema `SecretNewVersionCreated` body per secret, in index order.
    pub events: Vec<Vec<u8>>,
}

impl Fleet {
    /// Builds, warms and rotates `count` secrets, cached in the default (refresh-ahead) mode.
    pub async fn new(count: usize) -> Fleet {
        Self::with_mode(count, RefreshMode::RefreshAhead).await
    }

    /// Builds, warms and rotates `count` secrets, cached in `mode`, in a cache large enough
    /// to hold them all.
    pub async fn with_mode(count: usize, mode: RefreshMode) -> Fleet {
        let vault = InMemoryVault::new();
        let mut options = CacheOptions::default();
        options.mode = mode;
        options.max_capacity = count as u64;
        let cache = CachedSecretProvider::with_options(vault.clone(), options);
        let mut events = Vec::with_capacity(count);
        for index in 0..count {
            let name = secret_name(index);
            vault.set(&name, "first value");
            cache.get(&name).await.expect("the in-memory vault answers");
            let version = vault.rotate(&name, "second value");
            events.push(
                KeyVaultEventBuilder::secret_new_version(&name)
                    .vault(VAULT)
                    .version(&version)
                    .now()
                    .event_grid_bytes(),
            );
        }
        Fleet {
            cache: TimedCache::new(cache, count),
            events,
        }
    }
}

/// A [`SecretCache`] that notes when each benchmark secret was changed.
#[derive(Clone)]
pub struct TimedCache<C> {
    inner: C,
    marks: Arc<Marks>,
}

struct Marks {
    origin: Instant,
    /// Nanoseconds after `origin` at which secret `i` changed; 0 while it has not.
    changed_at: Vec<AtomicU64>,
    changed: AtomicUsize,
}

impl<C> TimedCache<C> {
    /// Wraps `inner` for secrets `bench-0` .. `bench-{count - 1}`.
    pub fn new(inner: C, count: usize) -> Self {
        TimedCache {
            inner,
            marks: Arc::new(Marks {
                origin: Instant::now(),
                changed_at: (0..count).map(|_| AtomicU64::new(0)).collect(),
                changed: AtomicUsize::new(0),
            }),
        }
    }

    /// How many distinct secrets changed so far.
    pub fn changed(&self) -> usize {
        self.marks.changed.load(Ordering::SeqCst)
    }

    /// When secret `index` changed, if it has.
    pub fn changed_at(&self, index: usize) -> Option<Instant> {
        let nanos = self.marks.changed_at.get(index)?.load(Ordering::SeqCst);
        (nanos != 0).then(|| self.marks.origin + Duration::from_nanos(nanos))
    }

    /// Waits (polling every millisecond) until `count` secrets changed, or `timeout` passed;
    /// returns whether they did.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.changed() < count {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }

    fn mark(&self, key: &str) {
        let Some(slot) = secret_index(key).and_then(|i| self.marks.changed_at.get(i)) else {
            return;
        };
        let nanos = (self.marks.origin.elapsed().as_nanos() as u64).max(1);
        if slot
            .compare_exchange(0, nanos, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.marks.changed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl<C: SecretCache> SecretCache for TimedCache<C> {
    async fn invalidate(&self, key: &str) -> Result<(), CacheError> {
        self.inner.invalidate(key).await?;
        self.mark(key);
        Ok(())
    }

    async fn new_version(&self, key: &str, change: &NewVersion) -> Result<(), CacheError> {
        self.inner.new_version(key, change).await?;
        self.mark(key);
        Ok(())
    }
}

/// When each event was due: `rate` per second from `start`.
pub fn schedule(start: Instant, rate: u64, index: usize) -> Instant {
    start + Duration::from_nanos(index as u64 * 1_000_000_000 / rate.max(1))
}

/// Calls `publish(i)` for `i` in `0..count`, each at its [`schedule`]d time, on a thread of its
/// own (a tokio timer's millisecond granularity would bunch events up). Returns when each was
/// handed over.
pub fn publish_at_rate(
    start: Instant,
    rate: u64,
    count: usize,
    mut publish: impl FnMut(usize) + Send,
) -> std::thread::Result<Vec<Instant>> {
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let mut published = Vec::with_capacity(count);
                for index in 0..count {
                    let due = schedule(start, rate, index);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    published.push(Instant::now());
                    publish(index);
                }
                published
            })
            .join()
    })
}

/// Latency percentiles in microseconds, from an HDR histogram.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Latency {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// How far behind its schedule the publisher handed over its last event, in microseconds:
    /// near zero when the offered rate held.
    pub publisher_lag_us: f64,
}

/// The latency of each secret from its publish time to its change in `cache`. `None` when a
/// secret never changed: a lost event, which no percentile may hide.
pub fn latencies<C>(
    cache: &TimedCache<C>,
    published: &[Instant],
    start: Instant,
    rate: u64,
) -> Option<Latency> {
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
    for (index, published_at) in published.iter().enumerate() {
        let changed = cache.changed_at(index)?;
        let nanos = changed.saturating_duration_since(*published_at).as_nanos() as u64;
        histogram.saturating_record(nanos.max(1));
    }
    let lag = published.last().map_or(Duration::ZERO, |last| {
        last.saturating_duration_since(schedule(start, rate, published.len() - 1))
    });
    let us = |nanos: u64| nanos as f64 / 1_000.0;
    Some(Latency {
        count: histogram.len(),
        p50_us: us(histogram.value_at_quantile(0.50)),
        p99_us: us(histogram.value_at_quantile(0.99)),
        p999_us: us(histogram.value_at_quantile(0.999)),
        max_us: us(histogram.max()),
        publisher_lag_us: lag.as_secs_f64() * 1e6,
    })
}

/// Events per second of `count` events over `elapsed`.
pub fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_secret_that_never_changed_makes_the_latencies_none() {
        let cache = TimedCache::new((), 3);
        let start = Instant::now();
        let published: Vec<Instant> = (0..3).map(|i| schedule(start, 1_000, i)).collect();
        cache.mark("bench-0");
        cache.mark("bench-2");
        assert_eq!(cache.changed(), 2);
        assert!(latencies(&cache, &published, start, 1_000).is_none());
        cache.mark("bench-1");
        let latency = latencies(&cache, &published, start, 1_000).expect("all changed");
        assert_eq!(latency.count, 3);
    }

    #[test]
    fn only_the_first_change_of_a_secret_counts_and_other_keys_are_ignored() {
        let cache = TimedCache::new((), 2);
        cache.mark("bench-1");
        let first = cache.changed_at(1).expect("marked");
        cache.mark("bench-1");
        cache.mark("bench-7");
        cache.mark("db-password");
        assert_eq!(cache.changed(), 1);
        assert_eq!(cache.changed_at(1), Some(first));
        assert_eq!(cache.changed_at(0), None);
    }

    #[test]
    fn the_schedule_spaces_events_evenly() {
        let start = Instant::now();
        assert_eq!(schedule(start, 10_000, 0), start);
        assert_eq!(
            schedule(start, 10_000, 3) - start,
            Duration::from_micros(300)
        );
        assert_eq!(schedule(start, 0, 2) - start, Duration::from_secs(2));
    }
}
