//! The cache hit path, measured the same way for every cache: this crate's, the baselines and
//! the peer in `bench/peer` all go through [`bench_reads`], so their numbers differ only by the
//! cache.
//!
//! Every contender reads the same [`secret_names`] in turn from a warm cache and returns an owned
//! value, as an application does; async caches are driven by [`futures::executor::block_on`],
//! which adds the same few nanoseconds to each of them.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::Criterion;

/// The criterion group of reads on one thread.
pub const ONE_THREAD: &str = "hit_path_1_thread";
/// The criterion group of reads on two threads at once.
pub const TWO_THREADS: &str = "hit_path_2_threads";

/// How many secrets a benchmark reads in turn: a handful, as an application holds.
pub const SECRETS: usize = 16;

/// The names every contender caches and reads.
pub fn secret_names() -> Vec<String> {
    (0..SECRETS).map(|i| format!("secret-{i:02}")).collect()
}

/// A value shaped like a real secret: a Service Bus connection string.
pub fn secret_value(name: &str) -> String {
    format!(
        "Endpoint=sb://bench.servicebus.windows.net/;SharedAccessKeyName=listen;\
         SharedAccessKey={name}0123456789abcdefghijklmnopqrstuvwxyzABCD="
    )
}

/// Benchmarks `read` as `id` in both groups: on one thread, and on two threads reading at once
/// (there, one iteration is one read by each thread, so the time is what a read costs while
/// another thread reads too).
pub fn bench_reads<T, R>(c: &mut Criterion, id: &str, read: R)
where
    R: Fn(&str) -> T + Sync,
{
    let names = secret_names();
    c.benchmark_group(ONE_THREAD).bench_function(id, |b| {
        let mut next = 0usize;
        b.iter(|| {
            next = (next + 1) % names.len();
            black_box(read(black_box(&names[next])))
        })
    });
    c.benchmark_group(TWO_THREADS).bench_function(id, |b| {
        b.iter_custom(|iters| reads_on_threads(2, iters, &names, &read))
    });
}

/// The wall time for `threads` threads to do `iters` reads each, started together.
fn reads_on_threads<T, R>(threads: usize, iters: u64, names: &[String], read: &R) -> Duration
where
    R: Fn(&str) -> T + Sync,
{
    let start_line = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|offset| {
                let start_line = &start_line;
                scope.spawn(move || {
                    start_line.wait();
                    let mut next = offset;
                    for _ in 0..iters {
                        next = (next + 1) % names.len();
                        black_box(read(black_box(&names[next])));
                    }
                })
            })
            .collect();
        start_line.wait();
        let started = Instant::now();
        for worker in workers {
            worker.join().expect("a benchmark thread panicked");
        }
        started.elapsed()
    })
}
