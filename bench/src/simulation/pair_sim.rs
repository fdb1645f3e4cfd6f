//! The deterministic half of the simulation: one (instance, secret) pair's cache entry and Key
//! Vault load under one strategy, stepped from event to event on the virtual clock.
//!
//! This is where the strategies differ (read-through, invalidate, refresh-ahead); kept apart
//! from the scenario drawing and the result arithmetic so each rule of the module's model can be
//! checked against the one place that implements it.

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::config::Strategy;
use super::result::Tally;
use super::scenario::{latency_seed, Delivery, Pair, ReadClock, Sampler, Scenario};
use super::{micros, Micros, NEVER};

/// A cached value.
#[derive(Debug, Clone, Copy)]
struct CachedVersion {
    version: usize,
    expires_at: Micros,
}

/// A Key Vault load in flight.
#[derive(Debug, Clone, Copy)]
struct Load {
    ends_at: Micros,
    /// Whether readers wait for it (read-through) rather than keep the cached value.
    blocking: bool,
}

/// A staleness sample not closed yet: the latest rotation, which the instance has not caught
/// up with.
#[derive(Debug, Clone, Copy)]
struct OpenSample {
    version: usize,
    since: Micros,
}

/// The next thing to happen to a pair, in the order things at one instant apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NextEvent {
    Rotation,
    Completion,
    Delivery,
    /// A read that starts a load: the first read after the entry expired or was dropped.
    TriggeringRead,
    End,
}

/// One (instance, secret) pair under one strategy: its cache entry and load, stepped from event
/// to event, with the reads between two events counted in one go.
pub(super) struct PairSim<'a> {
    strategy: Strategy,
    ttl: Micros,
    end: Micros,
    clock: ReadClock,
    rotations: &'a [Micros],
    deliveries: &'a [Delivery],
    latency: &'a Sampler,
    rng: StdRng,
    now: Micros,
    /// Rotations applied so far, which is also the vault's current version.
    vault_version: usize,
    next_delivery: usize,
    /// `None` once dropped by an event, or while a read-through load replaces it.
    entry: Option<CachedVersion>,
    load: Option<Load>,
    pending: Option<OpenSample>,
}

impl<'a> PairSim<'a> {
    pub(super) fn new(
        scenario: &'a Scenario,
        pair: &'a Pair,
        rotations: &'a [Micros],
        strategy: Strategy,
        index: usize,
    ) -> Self {
        // A zero time-to-live is taken as 1 µs, the clock's resolution, so a load's value serves
        // the reads at the instant it is stored and the simulation moves on.
        let ttl = micros(strategy.ttl()).max(1);
        PairSim {
            strategy,
            ttl,
            end: scenario.end,
            clock: ReadClock {
                phase: pair.phase,
                period: scenario.read_interval,
            },
            rotations,
            deliveries: &pair.deliveries,
            latency: &scenario.load_latency,
            rng: StdRng::seed_from_u64(latency_seed(scenario.seed, index)),
            now: 0,
            vault_version: 0,
            next_delivery: 0,
            entry: Some(CachedVersion {
                version: 0,
                expires_at: ttl,
            }),
            load: None,
            pending: None,
        }
    }

    /// Steps through the pair's events until the end of the duration.
    pub(super) fn run(mut self, tally: &mut Tally) {
        loop {
            let (at, next) = self.next_event();
            self.settle_staleness(at, tally);
            self.count_reads(at, tally);
            self.now = at;
            match next {
                NextEvent::Rotation => self.rotate(tally),
                NextEvent::Completion => self.complete_load(),
                NextEvent::Delivery => self.deliver(tally),
                NextEvent::TriggeringRead => self.start_load_for_read(tally),
                NextEvent::End => break,
            }
        }
        if let Some(pending) = self.pending.take() {
            tally.staleness.push(self.end - pending.since);
            tally.censored += 1;
        }
    }

    /// The earliest next event; ties go to the one listed first, which is the order events at
    /// one instant apply in. Nothing at or after the end happens.
    fn next_event(&self) -> (Micros, NextEvent) {
        let candidates = [
            (
                self.rotations
                    .get(self.vault_version)
                    .copied()
                    .unwrap_or(NEVER),
                NextEvent::Rotation,
            ),
            (
                self.load.map_or(NEVER, |l| l.ends_at),
                NextEvent::Completion,
            ),
            (
                self.deliveries
                    .get(self.next_delivery)
                    .map_or(NEVER, |d| d.at),
                NextEvent::Delivery,
            ),
            (self.triggering_read_at(), NextEvent::TriggeringRead),
        ];
        let mut best = (self.end, NextEvent::End);
        for candidate in candidates {
            if candidate.0 < best.0 {
                best = candidate;
            }
        }
        best
    }

    /// The next read that starts a load: the first read once the entry has expired (or is gone,
    /// in read-through) while no load is in flight.
    fn triggering_read_at(&self) -> Micros {
        if self.load.is_some() {
            return NEVER;
        }
        match self.entry {
            Some(entry) => self.clock.next_at_or_after(entry.expires_at.max(self.now)),
            None if self.strategy.reads_wait_for_loads() => self.clock.next_at_or_after(self.now),
            None => NEVER,
        }
    }

    /// Closes the pending staleness sample if the instance catches up in `[now, until]`, in
    /// which nothing but expiry changes the cache.
    fn settle_staleness(&mut self, until: Micros, tally: &mut Tally) {
        let Some(pending) = self.pending else {
            return;
        };
        if let Some(at) = self.caught_up_within(pending.version, until) {
            tally.staleness.push(at - pending.since);
            self.pending = None;
        }
    }

    /// When, in `[now, until]`, no read can return a version older than `version` any more.
    fn caught_up_within(&self, version: usize, until: Micros) -> Option<Micros> {
        match self.entry {
            Some(entry) if entry.version >= version => Some(self.now),
            // Read-through: an expired entry is never served; the next read loads.
            Some(entry) if self.strategy.reads_wait_for_loads() => {
                (entry.expires_at <= until).then(|| entry.expires_at.max(self.now))
            }
            // Refresh-ahead serves the old value until a load completes.
            Some(_) => None,
            // Dropped or being reloaded: every read from now on waits for a load that completes
            // after the rotation, so it gets the new version.
            None => Some(self.now),
        }
    }

    /// Counts the reads in `[now, until)`, during which the cache does not change.
    fn count_reads(&self, until: Micros, tally: &mut Tally) {
        let n = self.clock.count(self.now, until);
        if n == 0 {
            return;
        }
        tally.reads += n;
        match (self.load, self.entry) {
            (Some(load), _) if load.blocking => {
                tally.stalled_reads += n;
                tally.stalled += self.clock.total_wait(self.now, until, load.ends_at);
            }
            (_, Some(entry)) => {
                if entry.version < self.vault_version {
                    tally.stale_reads += n;
                }
            }
            // Never with reads: without an entry or a load, the first read starts a load, and
            // the interval ends before it.
            (_, None) => {}
        }
    }

    /// The secret rotates: a sample still pending is superseded, and a new one starts.
    fn rotate(&mut self, tally: &mut Tally) {
        self.vault_version += 1;
        if let Some(pending) = self.pending.take() {
            tally.staleness.push(self.now - pending.since);
            tally.superseded += 1;
        }
        self.pending = Some(OpenSample {
            version: self.vault_version,
            since: self.now,
        });
    }

    /// A load completes with the vault's current version, stored with a fresh time-to-live.
    fn complete_load(&mut self) {
        self.load = None;
        self.entry = Some(CachedVersion {
            version: self.vault_version,
            expires_at: self.now.saturating_add(self.ttl),
        });
    }

    /// An event arrives at this instance.
    fn deliver(&mut self, tally: &mut Tally) {
        let Some(delivery) = self.deliveries.get(self.next_delivery).copied() else {
            return;
        };
        self.next_delivery += 1;
        let acted = match self.strategy {
            Strategy::TtlPolling { .. } => false,
            Strategy::Invalidate { .. } => self.drop_if_older(delivery.version),
            Strategy::RefreshAhead { .. } => self.refresh_if_older(delivery.version, tally),
        };
        if !acted {
            tally.ignored_deliveries += 1;
        }
    }

    /// Invalidate mode: drops a live entry older than `version`. Without a live entry there is
    /// nothing to drop: the next read loads anyway, and a load in flight brings `version` or a
    /// newer one.
    fn drop_if_older(&mut self, version: usize) -> bool {
        match self.entry {
            Some(entry) if entry.version < version && self.now < entry.expires_at => {
                self.entry = None;
                true
            }
            _ => false,
        }
    }

    /// Refresh-ahead: starts a background load if the entry is older than `version` and no load
    /// is in flight (one in flight completes later, so it brings `version` or a newer one).
    fn refresh_if_older(&mut self, version: usize, tally: &mut Tally) -> bool {
        let older = self.entry.is_some_and(|entry| entry.version < version);
        if !older || self.load.is_some() {
            return false;
        }
        self.start_load(false, true, tally);
        true
    }

    /// A read starts a load: read-through waits for it (and removes the expired entry, if any);
    /// refresh-ahead keeps serving the expired entry.
    fn start_load_for_read(&mut self, tally: &mut Tally) {
        if self.strategy.reads_wait_for_loads() {
            // No entry without a load in flight means an event dropped it.
            let for_event = self.entry.is_none();
            self.entry = None;
            self.start_load(true, for_event, tally);
        } else {
            self.start_load(false, false, tally);
        }
    }

    fn start_load(&mut self, blocking: bool, for_event: bool, tally: &mut Tally) {
        let latency = self.latency.sample(&mut self.rng);
        tally.kv_calls += 1;
        tally.event_kv_calls += u64::from(for_event);
        tally.max_load_latency = tally.max_load_latency.max(latency);
        self.load = Some(Load {
            ends_at: self.now.saturating_add(latency),
            blocking,
        });
    }
}
