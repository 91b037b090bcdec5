//! [`SyntheticTrainer`]: a trainer that returns a pseudo-random update at once, so that a
//! round's time measures the system and not training.

use cohort_edge::trainer::{LocalMetrics, LocalUpdate, TrainControl, TrainError, Trainer};
use cohort_protocol::TaskPlan;

/// A trainer that does no training: its update is a deterministic pseudo-random vector of the
/// model's length with entries in [-0.01, 0.01), drawn from its seed and the round's seed.
#[derive(Clone, Debug)]
pub struct SyntheticTrainer {
    seed: u64,
    examples: u64,
}

impl SyntheticTrainer {
    /// A trainer reporting `examples` examples; `seed` tells clients apart.
    pub fn new(seed: u64, examples: u64) -> Self {
        Self { seed, examples }
    }
}

/// SplitMix64, enough for benchmark noise.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Trainer for SyntheticTrainer {
    fn num_examples(&self) -> u64 {
        self.examples
    }

    fn train(
        &mut self,
        _plan: &TaskPlan,
        global: &[f32],
        seed: u64,
        _control: &TrainControl,
    ) -> Result<LocalUpdate, TrainError> {
        let base = splitmix(self.seed ^ splitmix(seed));
        let update = (0..global.len() as u64)
            .map(|i| {
                let r = splitmix(base.wrapping_add(i)) >> 40; // 24 random bits
                (r as f32 / (1u64 << 24) as f32 - 0.5) * 0.02
            })
            .collect();
        Ok(LocalUpdate {
            update,
            num_examples: self.examples,
            loss: 0.0,
            accuracy: 0.0,
        })
    }

    /// Refuses: the synthetic trainer holds no model and no data, so it has nothing to measure
    /// (the benchmark's tasks do not evaluate; a client that is asked skips its report).
    fn evaluate(&mut self, _plan: &TaskPlan, _weights: &[f32]) -> Result<LocalMetrics, TrainError> {
        Err(TrainError::Unsupported(
            "the synthetic benchmark trainer has no local data to evaluate on",
        ))
    }
}
