//! Time as an input: the one notion of time the state machines read.
//!
//! The core has no clock. A shell passes the current [`Time`] with every event it feeds a state
//! machine and asks it when it next needs to be woken (`poll_timeout`), as `quinn-proto` does
//! with its `Instant`s. A [`Time`] is a duration since an epoch that the shell chooses: the
//! coordinator uses its monotonic clock (`cohort-coordinator`'s `Clock::monotonic`), the
//! simulator its virtual clock (microseconds since the start of an attempt). The state machines
//! only compare times and add the task's deadlines to them, so the epoch never matters, only
//! that one round sees one clock that never goes backwards.

use std::time::Duration;

/// A point in time: the time since an epoch the shell chooses (see the [module docs](self)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(Duration);

impl Time {
    /// The epoch itself.
    pub const ZERO: Time = Time(Duration::ZERO);

    /// The point `since_epoch` after the epoch.
    pub const fn new(since_epoch: Duration) -> Self {
        Self(since_epoch)
    }

    /// How long after the epoch this point is.
    pub const fn since_epoch(self) -> Duration {
        self.0
    }

    /// How long after `earlier` this point is (zero if it is not after it).
    pub fn saturating_duration_since(self, earlier: Time) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

/// `time + duration`, saturating at the largest representable time (a shell's clock is not
/// trusted input, but a deadline must never panic).
impl std::ops::Add<Duration> for Time {
    type Output = Time;

    fn add(self, rhs: Duration) -> Time {
        Time(self.0.saturating_add(rhs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_and_compares_and_saturates() {
        let t = Time::new(Duration::from_secs(10));
        assert_eq!(
            (t + Duration::from_secs(5)).since_epoch(),
            Duration::from_secs(15)
        );
        assert!(t < t + Duration::from_nanos(1));
        assert_eq!(
            (t + Duration::from_secs(5)).saturating_duration_since(t),
            Duration::from_secs(5)
        );
        assert_eq!(Time::ZERO.saturating_duration_since(t), Duration::ZERO);
        assert_eq!(
            Time::new(Duration::MAX) + Duration::from_secs(1),
            Time::new(Duration::MAX)
        );
    }
}
