//! [`Attempt`]: the one way a round attempt's SecAgg+ [`RoundId`] is made and read.
//!
//! Each attempt of a round runs SecAgg+ under its own round id, never reused within a task
//! (across restarts too), so that a message of an aborted attempt can never count in a later
//! one: `round × 10^6 + attempt`, with attempts numbered from 1 within their round. People read
//! it as "round 3, attempt 2" (id 3000002).

use std::fmt;

use cohort_protocol::RoundId;

/// Attempts per round that fit in an id: the attempt is the id's last six decimal digits.
pub const ATTEMPTS_PER_ROUND: u64 = 1_000_000;

/// A round attempt: the round (from 1) and the attempt within it (from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attempt {
    /// The round, from 1 (round 0 is the initial model, which has no attempts).
    pub round: u64,
    /// The attempt within the round, from 1.
    pub attempt: u64,
}

impl Attempt {
    /// The first attempt of `round`.
    pub fn first(round: u64) -> Self {
        Self { round, attempt: 1 }
    }

    /// The attempt after this one, of the same round; `None` once the round has used every id
    /// it has (a million attempts).
    pub fn next(self) -> Option<Self> {
        (self.attempt + 1 < ATTEMPTS_PER_ROUND).then_some(Self {
            round: self.round,
            attempt: self.attempt + 1,
        })
    }

    /// The first attempt of `round` that no stored attempt used: after `last`, the largest
    /// round id a task has stored (from any earlier process), if it belongs to `round`.
    pub fn resume(round: u64, last: Option<RoundId>) -> Option<Self> {
        match last.map(Self::from_round_id) {
            Some(prev) if prev.round == round => prev.next(),
            _ => Some(Self::first(round)),
        }
    }

    /// The SecAgg+ round id: `round × 10^6 + attempt`.
    pub fn round_id(self) -> RoundId {
        RoundId(
            self.round
                .saturating_mul(ATTEMPTS_PER_ROUND)
                .saturating_add(self.attempt % ATTEMPTS_PER_ROUND),
        )
    }

    /// The attempt an id names.
    pub fn from_round_id(id: RoundId) -> Self {
        Self {
            round: id.0 / ATTEMPTS_PER_ROUND,
            attempt: id.0 % ATTEMPTS_PER_ROUND,
        }
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "round {}, attempt {}", self.round, self.attempt)
    }
}

impl From<Attempt> for RoundId {
    fn from(a: Attempt) -> Self {
        a.round_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_as_round_and_attempt() {
        let a = Attempt {
            round: 3,
            attempt: 2,
        };
        assert_eq!(a.round_id(), RoundId(3_000_002));
        assert_eq!(a.to_string(), "round 3, attempt 2");
        assert_eq!(Attempt::from_round_id(RoundId(3_000_002)), a);
    }

    #[test]
    fn resumes_after_the_largest_stored_attempt_of_the_round() {
        assert_eq!(Attempt::resume(4, None), Some(Attempt::first(4)));
        // The last stored attempt finished round 3: round 4 starts afresh.
        assert_eq!(
            Attempt::resume(4, Some(RoundId(3_000_007))),
            Some(Attempt::first(4))
        );
        // Round 4's second attempt was abandoned by a crash: the next is its third.
        assert_eq!(
            Attempt::resume(4, Some(RoundId(4_000_002))),
            Some(Attempt {
                round: 4,
                attempt: 3
            })
        );
        assert_eq!(
            Attempt::resume(4, Some(RoundId(4_999_999))),
            None,
            "a round that used every id cannot go on"
        );
    }

    proptest! {
        /// Ids are unique: distinct attempts never share an id, and reading an id back gives
        /// the attempt.
        #[test]
        fn ids_round_trip_and_order(r1 in 1u64..1_000_000, a1 in 1u64..ATTEMPTS_PER_ROUND,
                                    r2 in 1u64..1_000_000, a2 in 1u64..ATTEMPTS_PER_ROUND) {
            let x = Attempt { round: r1, attempt: a1 };
            let y = Attempt { round: r2, attempt: a2 };
            prop_assert_eq!(Attempt::from_round_id(x.round_id()), x);
            prop_assert_eq!(x == y, x.round_id() == y.round_id());
            prop_assert_eq!(x < y, x.round_id() < y.round_id());
        }
    }
}
