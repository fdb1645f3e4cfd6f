//! Keeping a peek-lock while its delivery is in flight: [`HeldLock`] renews it through a
//! transport's [`LockRenewer`] until the delivery is settled.
//!
//! Peek-lock transports (Service Bus, Event Grid namespace topics) lock a message for a fixed
//! time (60 s by default on Service Bus). An invalidation can take longer: Key Vault throttling
//! with `Retry-After`, the job's retry backoff. A lock that runs out loses the settlement and
//! the message comes back. The transports renew the lock in their own way (`$management`
//! `com.microsoft:renew-lock` on Service Bus, `:renewLock` on Event Grid); when to renew, for
//! how long, and what a lost lock means are the same everywhere, so they live here once.
//!
//! Timing follows the Service Bus .NET processor: a lock is renewed when its remaining time
//! falls to `min(remaining / 2, 10 s)`, and renewal stops after
//! [`LockRenewal::max_duration`] (default 5 minutes, the .NET `MaxAutoLockRenewalDuration`)
//! or when the delivery is settled (the [`HeldLock`] is dropped).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::{Duration, SystemTime};
//! use keyvault_invalidator_core::lock::{HeldLock, LockRenewal, LockRenewer};
//! use keyvault_invalidator_core::SourceError;
//!
//! struct Broker;
//!
//! #[async_trait::async_trait]
//! impl LockRenewer for Broker {
//!     async fn renew_lock(&self, _lock_token: &str) -> Result<SystemTime, SourceError> {
//!         Ok(SystemTime::now() + Duration::from_secs(60))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let lock = HeldLock::hold(
//!     Arc::new(Broker),
//!     "lock-token".to_owned(),
//!     SystemTime::now() + Duration::from_secs(60),
//!     LockRenewal::default(),
//! );
//! assert!(lock.is_held());
//! drop(lock); // settled: renewal stops
//! # }
//! ```

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::source::{SourceError, SourceErrorKind};

/// Renews one delivery's lock on the transport.
#[async_trait]
pub trait LockRenewer: Send + Sync + 'static {
    /// Renews the lock named by `lock_token` and returns when it now ends, as the service
    /// answered.
    ///
    /// Errors: [`SourceErrorKind::SettlementLost`] when the service says the lock is gone
    /// (renewal stops and the delivery counts as lost); [`SourceErrorKind::Transient`] when
    /// asking again may work (retried while the lock lasts); any other kind stops renewing,
    /// and the lock lasts what it lasted.
    async fn renew_lock(&self, lock_token: &str) -> Result<SystemTime, SourceError>;
}

/// How long locks are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockRenewal {
    max_duration: Duration,
}

impl LockRenewal {
    /// The .NET processor's default `MaxAutoLockRenewalDuration`.
    pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(5 * 60);

    /// Renew for at most `max_duration` after the delivery arrived (zero: never renew).
    pub const fn new(max_duration: Duration) -> Self {
        LockRenewal { max_duration }
    }

    /// Never renew: the lock lasts what the service gave.
    pub const fn disabled() -> Self {
        Self::new(Duration::ZERO)
    }

    /// How long after its arrival a delivery's lock is renewed at most.
    pub const fn max_duration(&self) -> Duration {
        self.max_duration
    }
}

impl Default for LockRenewal {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_DURATION)
    }
}

/// Below this, renewing cannot make it in time anyway: renew at once.
const RENEW_AT_ONCE_BELOW: Duration = Duration::from_millis(400);
/// The most time left on a lock when it is renewed.
const RENEW_BUFFER: Duration = Duration::from_secs(10);
/// How long to wait before asking again after a transient failure.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(500);

/// A delivery's lock, renewed in the background until this is dropped.
///
/// Needs a Tokio runtime (it spawns the renewing task).
#[derive(Debug)]
pub struct HeldLock {
    state: Arc<LockState>,
    _stop: DropGuard,
}

#[derive(Debug)]
struct LockState {
    locked_until: Mutex<Instant>,
    lost: AtomicBool,
    renewals: AtomicU32,
}

impl LockState {
    fn locked_until(&self) -> Instant {
        *self.locked_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_locked_until(&self, until: Instant) {
        *self.locked_until.lock().unwrap_or_else(|p| p.into_inner()) = until;
    }
}

impl HeldLock {
    /// Starts keeping the lock `lock_token`, which the service said ends at `locked_until`.
    pub fn hold(
        renewer: Arc<dyn LockRenewer>,
        lock_token: String,
        locked_until: SystemTime,
        renewal: LockRenewal,
    ) -> Self {
        let state = Arc::new(LockState {
            locked_until: Mutex::new(to_instant(locked_until)),
            lost: AtomicBool::new(false),
            renewals: AtomicU32::new(0),
        });
        let stop = CancellationToken::new();
        if !renewal.max_duration.is_zero() {
            let deadline = Instant::now() + renewal.max_duration;
            let task = keep(renewer, lock_token, state.clone(), deadline);
            let stopped = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = stopped.cancelled() => {}
                    () = task => {}
                }
            });
        }
        HeldLock {
            state,
            _stop: stop.drop_guard(),
        }
    }

    /// Whether the lock still holds: not reported lost, and not past its end.
    pub fn is_held(&self) -> bool {
        !self.state.lost.load(Ordering::SeqCst) && Instant::now() < self.state.locked_until()
    }

    /// Whether the service said the lock is gone.
    pub fn is_lost(&self) -> bool {
        self.state.lost.load(Ordering::SeqCst)
    }

    /// When the lock ends, as last known.
    pub fn locked_until(&self) -> SystemTime {
        let remaining = self
            .state
            .locked_until()
            .saturating_duration_since(Instant::now());
        SystemTime::now() + remaining
    }

    /// How many renewals the service granted.
    pub fn renewals(&self) -> u32 {
        self.state.renewals.load(Ordering::SeqCst)
    }
}

/// `at` on Tokio's clock (so that renewal follows a paused clock in tests).
fn to_instant(at: SystemTime) -> Instant {
    let now = Instant::now();
    match at.duration_since(SystemTime::now()) {
        Ok(ahead) => now + ahead,
        Err(_) => now,
    }
}

/// How long to wait before renewing a lock that has `remaining` left (.NET's
/// `CalculateRenewDelay`).
pub fn renew_delay(remaining: Duration) -> Duration {
    if remaining < RENEW_AT_ONCE_BELOW {
        return Duration::ZERO;
    }
    remaining - (remaining / 2).min(RENEW_BUFFER)
}

async fn keep(
    renewer: Arc<dyn LockRenewer>,
    lock_token: String,
    state: Arc<LockState>,
    deadline: Instant,
) {
    loop {
        let until = state.locked_until();
        let now = Instant::now();
        let renew_at = now + renew_delay(until.saturating_duration_since(now));
        if renew_at >= deadline || until <= now {
            return;
        }
        tokio::time::sleep_until(renew_at).await;
        match renewer.renew_lock(&lock_token).await {
            Ok(next) => {
                state.set_locked_until(to_instant(next));
                state.renewals.fetch_add(1, Ordering::SeqCst);
            }
            Err(error) if error.kind == SourceErrorKind::SettlementLost => {
                tracing::warn!(%error, "the lock of a delivery in flight was lost; it will be redelivered");
                state.lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(error) if error.kind == SourceErrorKind::Transient => {
                tracing::debug!(%error, "renewing a lock failed; trying again");
                tokio::time::sleep(RETRY_AFTER_FAILURE).await;
            }
            Err(error) => {
                tracing::debug!(%error, "renewing a lock failed; giving up");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::VecDeque;

    #[test]
    fn renews_halfway_through_short_locks_and_ten_seconds_ahead_of_long_ones() {
        assert_eq!(
            renew_delay(Duration::from_secs(60)),
            Duration::from_secs(50)
        );
        assert_eq!(renew_delay(Duration::from_secs(4)), Duration::from_secs(2));
        assert_eq!(renew_delay(Duration::from_millis(300)), Duration::ZERO);
    }

    /// Answers each renewal from a script; extends by `lock` on `Ok`.
    struct Scripted {
        lock: Duration,
        answers: Mutex<VecDeque<SourceErrorKind>>,
        calls: AtomicU32,
    }

    #[async_trait]
    impl LockRenewer for Scripted {
        async fn renew_lock(&self, lock_token: &str) -> Result<SystemTime, SourceError> {
            assert_eq!(lock_token, "token-1");
            self.calls.fetch_add(1, Ordering::SeqCst);
            match self.answers.lock().unwrap().pop_front() {
                None => Ok(SystemTime::now() + self.lock),
                Some(kind) => Err(SourceError::new(kind, "scripted")),
            }
        }
    }

    fn scripted(lock: Duration, answers: Vec<SourceErrorKind>) -> Arc<Scripted> {
        Arc::new(Scripted {
            lock,
            answers: Mutex::new(answers.into()),
            calls: AtomicU32::new(0),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_lock_is_renewed_until_the_maximum_and_then_runs_out() {
        let renewer = scripted(Duration::from_secs(60), vec![]);
        let lock = HeldLock::hold(
            renewer.clone(),
            "token-1".to_owned(),
            SystemTime::now() + Duration::from_secs(60),
            LockRenewal::new(Duration::from_secs(120)),
        );
        // Renewals at 50 s and 100 s; the next (150 s) is past the 120 s maximum.
        tokio::time::sleep(Duration::from_secs(149)).await;
        assert!(lock.is_held());
        assert_eq!(lock.renewals(), 2);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(!lock.is_held(), "the lock runs out after the last renewal");
        assert_eq!(renewer.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lock_the_service_calls_lost_is_not_held_and_not_renewed_again() {
        let renewer = scripted(
            Duration::from_secs(60),
            vec![SourceErrorKind::SettlementLost],
        );
        let lock = HeldLock::hold(
            renewer.clone(),
            "token-1".to_owned(),
            SystemTime::now() + Duration::from_secs(60),
            LockRenewal::default(),
        );
        tokio::time::sleep(Duration::from_secs(51)).await;
        assert!(lock.is_lost());
        assert!(!lock.is_held());
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(renewer.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_retried_while_the_lock_lasts() {
        let renewer = scripted(Duration::from_secs(60), vec![SourceErrorKind::Transient]);
        let lock = HeldLock::hold(
            renewer.clone(),
            "token-1".to_owned(),
            SystemTime::now() + Duration::from_secs(60),
            LockRenewal::default(),
        );
        // Failed at 50 s; asked again halfway through the 9.5 s left, at 55.25 s.
        tokio::time::sleep(Duration::from_secs(56)).await;
        assert_eq!(renewer.calls.load(Ordering::SeqCst), 2);
        assert_eq!(lock.renewals(), 1);
        assert!(lock.is_held());
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_lock_stops_renewal_and_disabled_renewal_never_starts() {
        let renewer = scripted(Duration::from_secs(60), vec![]);
        let lock = HeldLock::hold(
            renewer.clone(),
            "token-1".to_owned(),
            SystemTime::now() + Duration::from_secs(60),
            LockRenewal::default(),
        );
        drop(lock);
        let disabled = HeldLock::hold(
            renewer.clone(),
            "token-1".to_owned(),
            SystemTime::now() + Duration::from_secs(60),
            LockRenewal::disabled(),
        );
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert_eq!(renewer.calls.load(Ordering::SeqCst), 0);
        assert!(!disabled.is_held());
    }
}
