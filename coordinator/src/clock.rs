//! The coordinator's one clock: wall time for what is stored (Unix seconds), monotonic time for
//! what is measured and waited for (selection windows, round lengths and phase deadlines, login
//! rate limits' age). The sans-IO core's [`Time`] is this monotonic time ([`Clock::time`]), so
//! a round's deadlines are read and slept on with the same clock as everything else.
//!
//! Everything that reads or waits on time is given a [`Clock`]; production passes
//! [`SystemClock`], tests a [`ManualClock`] that moves only when told to, so a test can pass a
//! selection window without sleeping.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cohort_aggregation::time::Time;
use tokio::sync::watch;

/// A future that completes at a point of a clock's monotonic time.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A source of time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, in Unix seconds (stored in the database and the round log).
    fn now(&self) -> i64;

    /// Monotonic time since the clock's origin.
    fn monotonic(&self) -> Duration;

    /// Completes once [`Clock::monotonic`] has reached `deadline`.
    fn sleep_until(&self, deadline: Duration) -> Sleep;

    /// Now, as the state machines take time ([`Time`]): the monotonic time since the clock's
    /// origin. The one mapping between this clock and the core's; a deadline `at` the core
    /// returns is slept on with `sleep_until(at.since_epoch())`.
    fn time(&self) -> Time {
        Time::new(self.monotonic())
    }
}

/// The system clock: Unix time from [`std::time::SystemTime`], monotonic time from
/// [`std::time::Instant`] since the first time any `SystemClock` was read in this process.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

fn process_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }

    fn monotonic(&self) -> Duration {
        process_origin().elapsed()
    }

    fn sleep_until(&self, deadline: Duration) -> Sleep {
        // A relative sleep on tokio's timer, so that tokio's paused test time applies too.
        Box::pin(tokio::time::sleep(
            deadline.saturating_sub(self.monotonic()),
        ))
    }
}

/// A clock that moves only when told to; sleepers wake when it is advanced past their deadline.
#[derive(Debug)]
pub struct ManualClock {
    unix_origin: i64,
    monotonic: watch::Sender<Duration>,
    /// Keeps the channel open while no one sleeps.
    _receiver: Mutex<watch::Receiver<Duration>>,
}

impl ManualClock {
    /// A clock at Unix time `now` (seconds), monotonic time 0.
    pub fn new(now: i64) -> Self {
        let (monotonic, receiver) = watch::channel(Duration::ZERO);
        Self {
            unix_origin: now,
            monotonic,
            _receiver: Mutex::new(receiver),
        }
    }

    /// Moves the clock forward by `secs` seconds.
    pub fn advance(&self, secs: i64) {
        self.advance_by(Duration::from_secs(secs.max(0) as u64));
    }

    /// Moves the clock forward by `by`, waking the sleepers whose deadline it reaches.
    pub fn advance_by(&self, by: Duration) {
        self.monotonic.send_modify(|t| *t += by);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new(0)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.unix_origin + self.monotonic().as_secs() as i64
    }

    fn monotonic(&self) -> Duration {
        *self.monotonic.borrow()
    }

    fn sleep_until(&self, deadline: Duration) -> Sleep {
        let mut rx = self.monotonic.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; if it is gone, nothing will ever wake us.
            if rx.wait_for(|t| *t >= deadline).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::task::Poll;

    async fn is_ready(sleep: &mut Sleep) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx).is_ready())).await
    }

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_only_when_advanced_past_them() {
        let clock = ManualClock::new(1_000);
        let mut sleep = clock.sleep_until(Duration::from_secs(30));
        assert!(!is_ready(&mut sleep).await);
        clock.advance(29);
        assert!(!is_ready(&mut sleep).await);
        assert_eq!(clock.now(), 1_029);
        clock.advance_by(Duration::from_secs(1));
        assert!(is_ready(&mut sleep).await);
        assert_eq!(clock.monotonic(), Duration::from_secs(30));
        // A deadline already passed completes at once.
        assert!(is_ready(&mut clock.sleep_until(Duration::from_secs(1))).await);
    }
}
