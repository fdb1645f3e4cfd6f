//! Waiting for asynchronous outcomes in tests, without fixed sleeps.

use std::time::Duration;

/// How long [`eventually`] waits before failing the test. Generous: test machines are shared
/// and slow.
pub const EVENTUALLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Polls `condition` every 10 ms until it holds.
///
/// # Panics
/// After [`EVENTUALLY_TIMEOUT`], naming `what` it waited for: this is a test helper.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let started = std::time::Instant::now();
/// keyvault_invalidator_testkit::eventually("20 ms have passed", || {
///     started.elapsed() >= std::time::Duration::from_millis(20)
/// })
/// .await;
/// # }
/// ```
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let wait = async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(EVENTUALLY_TIMEOUT, wait)
        .await
        .is_err()
    {
        panic!("timed out waiting until {what}");
    }
}
