//! [`SyntheticTrainer`] (`run.trainer = "synthetic"`): no model and no learning, only updates
//! of a given size, for benchmarks of the protocol rather than of training.
//!
//! Flower's SecAgg+ benchmark aggregates fixed random arrays; comparing it with a simulation
//! that also trains would compare training code. With this trainer a round costs what SecAgg+
//! (or the plaintext path) costs: each client's update is `run.synthetic_parameters`
//! pseudo-random values in [−[`UPDATE_SCALE`], [`UPDATE_SCALE`]], drawn from its training seed
//! (so a run is reproducible and independent of the thread count), and its weight is its
//! partition's example count, as with a real trainer.
//!
//! Evaluation has no test set to measure: it reports accuracy 0 and, as the loss, the mean
//! square of the global weights, which shows that updates were applied (it grows from 0).

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::trainer::{Eval, LocalTrainer, TrainError, TrainOutput};

/// The largest magnitude of an update coordinate (well inside the default clip of 1).
pub const UPDATE_SCALE: f32 = 0.01;

/// Pseudo-random updates of a fixed size. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct SyntheticTrainer {
    num_params: usize,
}

impl SyntheticTrainer {
    /// A trainer whose model has `num_params` parameters.
    pub fn new(num_params: usize) -> Self {
        Self { num_params }
    }
}

/// `n` values uniform in [−scale, scale) from `seed` (ChaCha8: about 1 ms per million values).
pub fn random_update(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // 24 random bits into [0, 1), then to [−scale, scale).
    let unit = 1.0 / (1u32 << 24) as f32;
    (0..n)
        .map(|_| ((rng.next_u32() >> 8) as f32 * unit * 2.0 - 1.0) * scale)
        .collect()
}

impl LocalTrainer for SyntheticTrainer {
    fn num_params(&self) -> usize {
        self.num_params
    }

    fn init(&self, _seed: u64) -> Vec<f32> {
        vec![0.0; self.num_params]
    }

    fn train(
        &self,
        _client: usize,
        indices: &[usize],
        global: &[f32],
        seed: u64,
    ) -> Result<TrainOutput, TrainError> {
        if global.len() != self.num_params {
            return Err(TrainError::WrongLength {
                expected: self.num_params,
                got: global.len(),
            });
        }
        Ok(TrainOutput {
            delta: random_update(self.num_params, seed, UPDATE_SCALE),
            examples: indices.len(),
            loss: 0.0,
        })
    }

    fn evaluate(&self, global: &[f32]) -> Result<Eval, TrainError> {
        if global.len() != self.num_params {
            return Err(TrainError::WrongLength {
                expected: self.num_params,
                got: global.len(),
            });
        }
        let sum: f64 = global.iter().map(|&w| f64::from(w) * f64::from(w)).sum();
        Ok(Eval {
            accuracy: 0.0,
            loss: (sum / self.num_params.max(1) as f64) as f32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_are_reproducible_bounded_and_differ_by_seed() {
        let t = SyntheticTrainer::new(10_000);
        let g = t.init(0);
        let a = t.train(0, &[1, 2, 3], &g, 7).unwrap();
        let b = t.train(5, &[1, 2, 3], &g, 7).unwrap();
        let c = t.train(0, &[1, 2, 3], &g, 8).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.delta, c.delta);
        assert_eq!(a.examples, 3);
        assert_eq!(a.delta.len(), 10_000);
        assert!(a.delta.iter().all(|x| x.abs() <= UPDATE_SCALE));
        // Roughly uniform: mean near 0, both signs, spread near scale / sqrt(3).
        let mean: f32 = a.delta.iter().sum::<f32>() / 10_000.0;
        let rms = (a.delta.iter().map(|x| x * x).sum::<f32>() / 10_000.0).sqrt();
        assert!(mean.abs() < 0.05 * UPDATE_SCALE, "mean {mean}");
        assert!((rms - UPDATE_SCALE / 3f32.sqrt()).abs() < 0.05 * UPDATE_SCALE);
        assert!(matches!(
            t.train(0, &[1], &[0.0; 3], 1),
            Err(TrainError::WrongLength { .. })
        ));
        let e = t.evaluate(&a.delta).unwrap();
        assert!(e.loss > 0.0 && e.accuracy == 0.0);
        assert_eq!(t.evaluate(&g).unwrap().loss, 0.0);
    }
}
