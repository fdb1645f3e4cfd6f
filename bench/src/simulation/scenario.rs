//! The random half of the simulation: everything drawn once from the seed and shared by all
//! strategies (rotation times, deliveries per instance, read phases, the load latency
//! distribution), and the driver that runs one strategy over it.
//!
//! Separate from [`super::pair_sim`] so that "what happens" (drawn here, identical for every
//! strategy) and "what a strategy does about it" (stepped there) can be read one at a time.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, LogNormal};

use super::config::{ConfigError, LogNormalDelay, SimConfig, StrategySpec, UniformDelay};
use super::pair_sim::PairSim;
use super::result::{StrategyResult, Tally};
use super::{micros, seconds_to_micros, Micros, MAX_DRAW, NEVER, Z99};

/// A way to draw a delay, built once from the configuration.
#[derive(Debug, Clone)]
pub(super) enum Sampler {
    Constant(Micros),
    LogNormal(LogNormal<f64>),
    Uniform { min: Micros, span: Micros },
}

impl Sampler {
    fn log_normal(field: &'static str, delay: LogNormalDelay) -> Result<Self, ConfigError> {
        let median = micros(delay.median).min(MAX_DRAW);
        if median == 0 || delay.p99 <= delay.median {
            return Ok(Sampler::Constant(median));
        }
        let mu = delay.median.as_secs_f64().ln();
        let sigma = (delay.p99.as_secs_f64() / delay.median.as_secs_f64()).ln() / Z99;
        LogNormal::new(mu, sigma)
            .map(Sampler::LogNormal)
            .map_err(|e| ConfigError::new(field, e.to_string()))
    }

    pub(super) fn uniform(delay: UniformDelay) -> Self {
        let min = micros(delay.min).min(MAX_DRAW);
        let max = micros(delay.max).min(MAX_DRAW);
        Sampler::Uniform {
            min,
            span: max.saturating_sub(min),
        }
    }

    /// Draws one delay. Always makes exactly one draw from `rng` for a random sampler, so the
    /// streams of the other draws do not depend on the values drawn.
    pub(super) fn sample(&self, rng: &mut StdRng) -> Micros {
        match self {
            Sampler::Constant(value) => *value,
            Sampler::LogNormal(distribution) => seconds_to_micros(distribution.sample(rng)),
            Sampler::Uniform { min, span } => {
                // floor(span * u) with u in [0, 1) stays below span.
                min + (*span as f64 * rng.random::<f64>()) as Micros
            }
        }
    }
}

/// The reads of one (instance, secret) pair: at `phase + k * period`, k >= 0.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadClock {
    /// The first read, below `period`.
    pub(super) phase: Micros,
    /// At least 1.
    pub(super) period: Micros,
}

impl ReadClock {
    /// How many reads happen strictly before `t`.
    fn reads_before(self, t: Micros) -> u64 {
        if t <= self.phase {
            0
        } else {
            (t - self.phase - 1) / self.period + 1
        }
    }

    /// How many reads happen in `[from, until)`.
    pub(super) fn count(self, from: Micros, until: Micros) -> u64 {
        if until <= from {
            0
        } else {
            self.reads_before(until) - self.reads_before(from)
        }
    }

    /// The first read at or after `t` ([`NEVER`] for `NEVER` or past the clock's range).
    pub(super) fn next_at_or_after(self, t: Micros) -> Micros {
        if t == NEVER {
            return NEVER;
        }
        if t <= self.phase {
            return self.phase;
        }
        let k = (t - self.phase).div_ceil(self.period);
        k.checked_mul(self.period)
            .and_then(|offset| offset.checked_add(self.phase))
            .unwrap_or(NEVER)
    }

    /// The total wait of the reads in `[from, until)` for a load completing at `ends_at`
    /// (`until <= ends_at`): the sum of `ends_at - t` over an arithmetic sequence of reads.
    pub(super) fn total_wait(self, from: Micros, until: Micros, ends_at: Micros) -> u128 {
        let n = u128::from(self.count(from, until));
        if n == 0 {
            return 0;
        }
        let first = u128::from(self.next_at_or_after(from));
        let read_times = n * first + u128::from(self.period) * (n * (n - 1) / 2);
        (n * u128::from(ends_at)).saturating_sub(read_times)
    }
}

/// One event delivered to one instance.
#[derive(Debug, Clone, Copy)]
pub(super) struct Delivery {
    pub(super) at: Micros,
    /// The version the event announces: the rotation's number, counting from 1.
    pub(super) version: usize,
}

/// One (instance, secret) pair's share of the scenario.
#[derive(Debug, Clone)]
pub(super) struct Pair {
    pub(super) secret: usize,
    pub(super) phase: Micros,
    /// Sorted by time.
    pub(super) deliveries: Vec<Delivery>,
}

/// Everything drawn at random, shared by all strategies.
#[derive(Debug, Clone)]
pub(super) struct Scenario {
    pub(super) seed: u64,
    pub(super) instances: usize,
    pub(super) end: Micros,
    pub(super) read_interval: Micros,
    /// Per secret, sorted, all before `end`.
    pub(super) rotations: Vec<Vec<Micros>>,
    /// Index `instance * secrets + secret`.
    pub(super) pairs: Vec<Pair>,
    pub(super) load_latency: Sampler,
    pub(super) deliveries: u64,
    pub(super) duplicates: u64,
    pub(super) max_delivery_delay: Micros,
}

/// The delay samplers of a configuration.
struct DeliverySamplers {
    base: Sampler,
    retry: Sampler,
    pub(super) duplicate: Sampler,
    pub(super) retry_probability: f64,
    pub(super) duplicate_probability: f64,
}

impl DeliverySamplers {
    /// Draws the delay from a rotation to its first delivery at one instance, and the extra
    /// delay of its duplicate if there is one. Always makes the same draws, used or not.
    pub(super) fn draw(&self, rng: &mut StdRng) -> (Micros, Option<Micros>) {
        let base = self.base.sample(rng);
        let retried = rng.random::<f64>() < self.retry_probability;
        let retry = self.retry.sample(rng);
        let duplicated = rng.random::<f64>() < self.duplicate_probability;
        let duplicate = self.duplicate.sample(rng);
        let delay = base + if retried { retry } else { 0 };
        (delay, duplicated.then_some(duplicate))
    }
}

impl Scenario {
    /// Draws the scenario: rotations per secret, then deliveries per (secret, rotation,
    /// instance), then read phases per pair, all from one stream seeded with `config.seed`.
    pub(super) fn generate(config: &SimConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let end = micros(config.duration);
        let read_interval = micros(config.read_interval);
        let mut rng = StdRng::seed_from_u64(config.seed);
        let rotations = draw_rotations(config, end, &mut rng)?;
        let mut scenario = Scenario {
            seed: config.seed,
            instances: config.instances,
            end,
            read_interval,
            rotations,
            pairs: Vec::with_capacity(config.instances * config.secrets),
            load_latency: Sampler::log_normal("load_latency", config.load_latency)?,
            deliveries: 0,
            duplicates: 0,
            max_delivery_delay: 0,
        };
        for _ in 0..config.instances {
            for secret in 0..config.secrets {
                scenario.pairs.push(Pair {
                    secret,
                    phase: 0,
                    deliveries: Vec::new(),
                });
            }
        }
        scenario.draw_deliveries(config, &mut rng)?;
        scenario.draw_phases(config, &mut rng);
        Ok(scenario)
    }

    fn draw_deliveries(&mut self, config: &SimConfig, rng: &mut StdRng) -> Result<(), ConfigError> {
        let samplers = DeliverySamplers {
            base: Sampler::log_normal("delivery_delay", config.delivery_delay)?,
            retry: Sampler::uniform(config.retry_delay),
            duplicate: Sampler::uniform(config.duplicate_delay),
            retry_probability: config.retry_probability,
            duplicate_probability: config.duplicate_probability,
        };
        let secrets = self.rotations.len();
        for (secret, times) in self.rotations.iter().enumerate() {
            for (index, &rotated_at) in times.iter().enumerate() {
                for instance in 0..self.instances {
                    let (delay, duplicate) = samplers.draw(rng);
                    self.max_delivery_delay = self.max_delivery_delay.max(delay);
                    let first = rotated_at + delay;
                    let mut arrivals = vec![first];
                    arrivals.extend(duplicate.map(|extra| first + extra));
                    for (n, at) in arrivals.into_iter().enumerate() {
                        if at < self.end {
                            self.deliveries += 1;
                            self.duplicates += u64::from(n > 0);
                        }
                        let delivery = Delivery {
                            at,
                            version: index + 1,
                        };
                        self.pairs[instance * secrets + secret]
                            .deliveries
                            .push(delivery);
                    }
                }
            }
        }
        for pair in &mut self.pairs {
            pair.deliveries.sort_by_key(|d| (d.at, d.version));
        }
        Ok(())
    }

    fn draw_phases(&mut self, config: &SimConfig, rng: &mut StdRng) {
        let period = self.read_interval;
        for pair in &mut self.pairs {
            pair.phase = match config.read_phase {
                Some(phase) => micros(phase) % period,
                None => rng.random_range(0..period),
            };
        }
    }

    /// Runs one strategy over every pair.
    pub(super) fn run(&self, spec: &StrategySpec) -> StrategyResult {
        let mut tally = Tally::default();
        for (index, pair) in self.pairs.iter().enumerate() {
            let rotations = self
                .rotations
                .get(pair.secret)
                .map_or(&[][..], Vec::as_slice);
            PairSim::new(self, pair, rotations, spec.strategy, index).run(&mut tally);
        }
        tally.into_result(spec, self)
    }
}

/// One secret's rotation times: the fixed ones if configured, otherwise a Poisson process.
fn draw_rotations(
    config: &SimConfig,
    end: Micros,
    rng: &mut StdRng,
) -> Result<Vec<Vec<Micros>>, ConfigError> {
    if let Some(fixed) = &config.rotation_times {
        let mut times: Vec<Micros> = fixed
            .iter()
            .map(|&t| micros(t))
            .filter(|&t| t < end)
            .collect();
        times.sort_unstable();
        return Ok(vec![times; config.secrets]);
    }
    let rate = 1.0 / config.rotation_mean_interval.as_secs_f64();
    let gap =
        Exp::new(rate).map_err(|e| ConfigError::new("rotation_mean_interval", e.to_string()))?;
    let mut all = Vec::with_capacity(config.secrets);
    for _ in 0..config.secrets {
        let mut times = Vec::new();
        let mut t: Micros = 0;
        loop {
            t = t.saturating_add(seconds_to_micros(gap.sample(rng)));
            if t >= end {
                break;
            }
            times.push(t);
        }
        all.push(times);
    }
    Ok(all)
}

/// The seed of one pair's stream of load latencies: the same under every strategy, so the k-th
/// load of a pair takes as long whatever the strategy.
pub(super) fn latency_seed(seed: u64, pair: usize) -> u64 {
    splitmix64(seed ^ splitmix64(pair as u64 ^ 0x6c6f_6164_6c61_7465))
}

/// SplitMix64's finaliser: spreads nearby inputs over unrelated seeds.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
