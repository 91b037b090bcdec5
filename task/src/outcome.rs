//! What a finished round makes of its unmasked sum: the decoded weighted mean update and the
//! strategy step that turns it into the next global model. Nothing is changed when any step
//! fails, so a failed attempt can be retried from the same model and strategy state.

use cohort_aggregation::encoding::{EncodingError, Quantizer};
use cohort_aggregation::secagg::UnmaskedSum;
use cohort_aggregation::strategy::{Strategy, StrategyError};

/// Why a released sum did not become a new model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OutcomeError {
    /// The sum does not decode (wrong length, or a total weight outside
    /// [|U3|, |U3|·max_weight]).
    #[error("the unmasked sum does not decode: {0}")]
    Decode(#[from] EncodingError),
    /// The strategy refused the mean update (length, or a non-finite coordinate).
    #[error("the strategy refused the mean update: {0}")]
    Strategy(#[from] StrategyError),
}

/// A round's result, ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundOutcome {
    /// The next global model.
    pub weights: Vec<f32>,
    /// Σ w over the inputs in the sum (their capped weights).
    pub total_weight: u64,
}

/// Decodes `sum` with `quantizer` into the weighted mean update Δ and applies `strategy` to
/// `global` with it. On error neither `global` nor the strategy's state has changed.
pub fn apply_sum(
    quantizer: &Quantizer,
    strategy: &mut dyn Strategy,
    global: &[f32],
    sum: &UnmaskedSum,
) -> Result<RoundOutcome, OutcomeError> {
    let decoded = quantizer.decode_sum_of(&sum.sum, sum.contributors.len())?;
    let weights = step(strategy, global, &decoded.mean)?;
    Ok(RoundOutcome {
        weights,
        total_weight: decoded.total_weight,
    })
}

/// The strategy step alone, for a mean that did not come through SecAgg+ (the simulator's
/// plaintext comparison): the next model from `global` and the mean update.
pub fn step(
    strategy: &mut dyn Strategy,
    global: &[f32],
    mean: &[f32],
) -> Result<Vec<f32>, OutcomeError> {
    let mut next = global.to_vec();
    strategy.apply(&mut next, mean)?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_aggregation::strategy::StrategyConfig;
    use cohort_protocol::{ClientIndex, RoundId};
    use rand::SeedableRng;

    fn sum_of(q: &Quantizer, updates: &[(&[f32], u32)]) -> UnmaskedSum {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let len = updates[0].0.len() + 1;
        let mut sum = vec![0u32; len];
        for (u, w) in updates {
            let e = q.encode(u, *w, &mut rng).unwrap();
            for (s, x) in sum.iter_mut().zip(e) {
                *s = s.wrapping_add(x);
            }
        }
        UnmaskedSum {
            round_id: RoundId(1),
            sum,
            contributors: (1..=updates.len() as u32).map(ClientIndex).collect(),
            dropped: Vec::new(),
        }
    }

    /// FedAvg with server_lr 1 moves the model by the weighted mean: (1·0.3 + 3·(−0.1)) / 4 = 0
    /// and (1·0.5 + 3·0.1) / 4 = 0.2, within the encoding's tolerance.
    #[test]
    fn decodes_the_weighted_mean_and_steps() {
        let q = Quantizer::for_cohort(4, 1.0, 4).unwrap();
        let sum = sum_of(&q, &[(&[0.3, 0.5], 1), (&[-0.1, 0.1], 3)]);
        let mut fedavg = StrategyConfig::default().build().unwrap();
        let out = apply_sum(&q, fedavg.as_mut(), &[1.0, 2.0], &sum).unwrap();
        assert_eq!(out.total_weight, 4);
        let tol = 2.0 * q.tolerance();
        assert!((out.weights[0] - 1.0).abs() <= tol, "{:?}", out.weights);
        assert!((out.weights[1] - 2.2).abs() <= tol, "{:?}", out.weights);
    }

    /// A sum of the wrong length and a zero-weight sum are refused, and a stateful strategy
    /// (FedAdam) is left as it was, so that the attempt can be retried.
    #[test]
    fn failures_change_nothing() {
        let q = Quantizer::for_cohort(4, 1.0, 1).unwrap();
        let mut adam = StrategyConfig::FedAdam {
            eta: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        }
        .build()
        .unwrap();
        let before = adam.export_state();
        let mut zero = sum_of(&q, &[(&[0.1, 0.1], 1)]);
        zero.sum = vec![0, 0, 0];
        assert!(matches!(
            apply_sum(&q, adam.as_mut(), &[0.0, 0.0], &zero),
            Err(OutcomeError::Decode(_))
        ));
        let good = sum_of(&q, &[(&[0.1, 0.1], 1)]);
        assert!(matches!(
            apply_sum(&q, adam.as_mut(), &[0.0, 0.0, 0.0], &good),
            Err(OutcomeError::Strategy(_))
        ));
        assert_eq!(adam.export_state(), before);
        let out = apply_sum(&q, adam.as_mut(), &[0.0, 0.0], &good).unwrap();
        assert_eq!(out.weights.len(), 2);
        assert_eq!(adam.export_state().steps, before.steps + 1);
    }
}
