//! **INSECURE**: plaintext aggregation, in which the server sees every client's update.
//!
//! [`InsecurePlainAggregator`] sums weighted `f32` updates in the clear. It exists to compare
//! SecAgg+ results against (same inputs, no quantisation, no masks) and to debug training
//! without the cryptography. It provides **no privacy at all**: whoever runs it learns each
//! client's update and weight, which can reveal the client's training data. Never use it in a
//! deployment with real users; a coordinator must only select it through a setting whose name
//! says it is insecure.

use crate::encoding::DecodedSum;

/// Why an update was refused or no mean could be produced.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlainError {
    /// The update's length differs from the aggregator's.
    #[error(
        "the update has {got} values but the aggregator expects {expected}; use the same model layout"
    )]
    LengthMismatch {
        /// The aggregator's length.
        expected: usize,
        /// The update's length.
        got: usize,
    },
    /// The weight is zero.
    #[error(
        "a client weight of 0 would contribute nothing; use the number of training examples (≥ 1)"
    )]
    ZeroWeight,
    /// The update holds a NaN or an infinity.
    #[error("coordinate {index} of the update is {value}; drop this client's update")]
    NonFinite {
        /// The first offending coordinate.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// `finish` was called before any update was added.
    #[error("no update was added, so there is no mean; wait for at least one client")]
    NoUpdates,
}

/// Sums weighted `f32` updates in plaintext (in `f64`) and returns their weighted mean.
/// **The server sees every update**: see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct InsecurePlainAggregator {
    sum: Vec<f64>,
    total_weight: u64,
    count: usize,
}

impl InsecurePlainAggregator {
    /// An empty aggregator for updates of `len` values.
    pub fn new(len: usize) -> Self {
        Self {
            sum: vec![0.0; len],
            total_weight: 0,
            count: 0,
        }
    }

    /// Adds `weight · update` to the sum. Refuses, adding nothing, an update of the wrong
    /// length, a zero weight, or a NaN or infinite value. The weight is not capped (unlike the
    /// SecAgg+ encoding, which caps it at `max_weight`).
    pub fn add(&mut self, update: &[f32], weight: u32) -> Result<(), PlainError> {
        if update.len() != self.sum.len() {
            return Err(PlainError::LengthMismatch {
                expected: self.sum.len(),
                got: update.len(),
            });
        }
        if weight == 0 {
            return Err(PlainError::ZeroWeight);
        }
        if let Some(index) = update.iter().position(|x| !x.is_finite()) {
            return Err(PlainError::NonFinite {
                index,
                value: update[index],
            });
        }
        let w = f64::from(weight);
        for (s, &x) in self.sum.iter_mut().zip(update) {
            *s += w * f64::from(x);
        }
        self.total_weight += u64::from(weight);
        self.count += 1;
        Ok(())
    }

    /// How many updates were added.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The weighted mean Σ wᵢ·xᵢ / Σ wᵢ (rounded to `f32`) and Σ wᵢ. Fails when nothing was
    /// added.
    pub fn finish(self) -> Result<DecodedSum, PlainError> {
        if self.count == 0 {
            return Err(PlainError::NoUpdates);
        }
        let total = self.total_weight as f64;
        Ok(DecodedSum {
            mean: self.sum.iter().map(|&s| (s / total) as f32).collect(),
            total_weight: self.total_weight,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_mean_of_two_updates() {
        let mut agg = InsecurePlainAggregator::new(2);
        agg.add(&[1.0, -2.0], 1).unwrap();
        agg.add(&[3.0, 2.0], 3).unwrap();
        assert_eq!(agg.count(), 2);
        // ((1·1 + 3·3)/4, (1·(−2) + 3·2)/4) = (2.5, 1)
        let mean = agg.finish().unwrap();
        assert_eq!(mean.mean, vec![2.5, 1.0]);
        assert_eq!(mean.total_weight, 4);
    }

    #[test]
    fn sums_in_f64() {
        // 2^24 + 1 is not an f32; summed in f32, the 1s would vanish against 2^24.
        let mut agg = InsecurePlainAggregator::new(1);
        agg.add(&[16_777_216.0], 1).unwrap();
        for _ in 0..4 {
            agg.add(&[1.0], 1).unwrap();
        }
        // (2^24 + 4)/5 = 3355444
        assert_eq!(agg.finish().unwrap().mean, vec![3_355_444.0]);
    }

    #[test]
    fn bad_updates_are_refused_and_not_added() {
        let mut agg = InsecurePlainAggregator::new(3);
        assert_eq!(
            agg.add(&[1.0, 2.0], 1),
            Err(PlainError::LengthMismatch {
                expected: 3,
                got: 2
            })
        );
        assert_eq!(agg.add(&[1.0, 2.0, 3.0], 0), Err(PlainError::ZeroWeight));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(matches!(
                agg.add(&[1.0, 2.0, bad], 1),
                Err(PlainError::NonFinite { index: 2, .. })
            ));
        }
        assert_eq!(agg.count(), 0);
        agg.add(&[1.0, 2.0, 3.0], 2).unwrap();
        let mean = agg.finish().unwrap();
        assert_eq!(mean.mean, vec![1.0, 2.0, 3.0]);
        assert_eq!(mean.total_weight, 2);
    }

    #[test]
    fn finishing_empty_is_an_error() {
        assert_eq!(
            InsecurePlainAggregator::new(4).finish(),
            Err(PlainError::NoUpdates)
        );
    }
}
