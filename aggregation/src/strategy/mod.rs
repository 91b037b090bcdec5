//! Server optimizers: how the coordinator turns the cohort's mean update into new global
//! weights.
//!
//! Every strategy sees the same input, the weighted mean Δ of the client deltas
//! (`local − global`, decoded from the SecAgg+ sum), and treats −Δ as a pseudo-gradient, after
//! Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), Algorithm 2:
//!
//! | strategy | update |
//! |---|---|
//! | [`FedAvg`] | x ← x + lr·Δ |
//! | [`FedAvgM`] | v ← β·v + Δ; x ← x + lr·v (Hsu et al. 2019) |
//! | [`FedOpt`] (FedAdagrad, FedAdam, FedYogi) | m ← β1·m + (1−β1)·Δ; v ← adagrad/adam/yogi(v, Δ²); x ← x + η·m / (√v + τ) |
//!
//! Strategies work on flat `f32` vectors (all layers concatenated, the layout fixed by the
//! model spec) and keep their state (momentum, moments) between rounds. A coordinator persists
//! that state with [`Strategy::export_state`] and restores it with [`Strategy::import_state`].
//! Strategies are chosen and configured through the serde-friendly [`StrategyConfig`].
//!
//! Errors never leave a strategy half-updated: inputs are checked before anything changes.

mod config;
mod fedavg;
mod fedopt;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use config::StrategyConfig;
pub use fedavg::{FedAvg, FedAvgM};
pub use fedopt::{Adaptivity, FedOpt};

/// A server optimizer over flat `f32` vectors.
pub trait Strategy: Send {
    /// The strategy's name, as in [`StrategyConfig`]'s `kind` tag (e.g. `"fed_adam"`).
    fn name(&self) -> &'static str;

    /// Applies one round's weighted mean update `mean_update` (Δ = mean of `local − global`)
    /// to `global`, in place. Fails, changing nothing, when the lengths differ (from each
    /// other, or from the length of the strategy's state) or Δ holds a non-finite value.
    fn apply(&mut self, global: &mut [f32], mean_update: &[f32]) -> Result<(), StrategyError>;

    /// The optimizer state (momentum, moments, step count) for persistence.
    fn export_state(&self) -> StrategyState;

    /// Restores state saved by [`Strategy::export_state`] of the same strategy. Fails, changing
    /// nothing, on state of another strategy, unexpected or missing vectors, vectors of
    /// different lengths, or values the strategy could never have produced.
    fn import_state(&mut self, state: StrategyState) -> Result<(), StrategyError>;
}

/// A strategy's state between rounds: named vectors (e.g. `"m"` and `"v"` for FedAdam), all of
/// the model's length, or none before the first round.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StrategyState {
    /// The strategy that produced the state ([`Strategy::name`]).
    pub strategy: String,
    /// How many rounds the strategy has applied.
    pub steps: u64,
    /// The state vectors by name; empty before the first round.
    pub vectors: BTreeMap<String, Vec<f32>>,
}

/// Why a strategy could not be built, applied, or restored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StrategyError {
    /// A hyper-parameter is out of range.
    #[error("{strategy}: {name} = {value} is invalid; it must be {expected}")]
    InvalidParameter {
        /// The strategy.
        strategy: &'static str,
        /// The hyper-parameter's name, as in the configuration.
        name: &'static str,
        /// The value given.
        value: f32,
        /// The valid range, in words.
        expected: &'static str,
    },
    /// The global weights and the mean update have different lengths.
    #[error(
        "the global model has {global} parameters but the mean update has {update}; both must \
         use the same model layout"
    )]
    LengthMismatch {
        /// Length of the global weights.
        global: usize,
        /// Length of the mean update.
        update: usize,
    },
    /// The model length changed since the strategy's state was created.
    #[error(
        "{strategy} holds state for {state} parameters but got {update}; the model layout \
         changed, so start the strategy afresh"
    )]
    StateLengthMismatch {
        /// The strategy.
        strategy: &'static str,
        /// Length of the state vectors.
        state: usize,
        /// Length of the update.
        update: usize,
    },
    /// The mean update has a NaN or infinite coordinate, or one too large to square.
    #[error(
        "coordinate {index} of the mean update is {value}, which {strategy} cannot apply; \
         discard this round's aggregate"
    )]
    UnusableUpdate {
        /// The strategy.
        strategy: &'static str,
        /// The first offending coordinate.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// The state was produced by another strategy.
    #[error("state of strategy {found} cannot be loaded into {expected}")]
    StateForOtherStrategy {
        /// This strategy.
        expected: &'static str,
        /// The strategy named in the state.
        found: String,
    },
    /// The state's vectors are not the ones this strategy keeps, or are inconsistent.
    #[error("{strategy}: unusable saved state: {reason}")]
    BadState {
        /// The strategy.
        strategy: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Checks that `global` and `update` have the same length, and the state's length if any.
fn check_lengths(
    strategy: &'static str,
    global: &[f32],
    update: &[f32],
    state_len: Option<usize>,
) -> Result<(), StrategyError> {
    if global.len() != update.len() {
        return Err(StrategyError::LengthMismatch {
            global: global.len(),
            update: update.len(),
        });
    }
    match state_len {
        Some(state) if state != update.len() => Err(StrategyError::StateLengthMismatch {
            strategy,
            state,
            update: update.len(),
        }),
        _ => Ok(()),
    }
}

/// Checks that every coordinate of `update` has absolute value at most `limit` (which also
/// refuses NaN and infinities).
fn check_magnitude(
    strategy: &'static str,
    update: &[f32],
    limit: f32,
) -> Result<(), StrategyError> {
    // NaN fails `is_finite`; infinities fail both checks.
    match update
        .iter()
        .position(|x| !x.is_finite() || x.abs() > limit)
    {
        Some(index) => Err(StrategyError::UnusableUpdate {
            strategy,
            index,
            value: update[index],
        }),
        None => Ok(()),
    }
}

/// Checks a saved state against the vector names a strategy keeps and returns the vectors
/// (in the order of `names`), or `None` for a fresh state.
fn take_state_vectors(
    strategy: &'static str,
    names: &[&'static str],
    state: StrategyState,
) -> Result<Option<Vec<Vec<f32>>>, StrategyError> {
    if state.strategy != strategy {
        return Err(StrategyError::StateForOtherStrategy {
            expected: strategy,
            found: state.strategy,
        });
    }
    let mut vectors = state.vectors;
    if vectors.is_empty() {
        return Ok(None);
    }
    let found: Vec<&str> = vectors.keys().map(String::as_str).collect();
    let mut expected = names.to_vec();
    expected.sort_unstable();
    if found != expected {
        return Err(StrategyError::BadState {
            strategy,
            reason: format!("expected vectors {expected:?}, found {found:?}"),
        });
    }
    let taken: Vec<Vec<f32>> = names
        .iter()
        .filter_map(|name| vectors.remove(*name))
        .collect();
    let len = taken.first().map_or(0, Vec::len);
    if taken.iter().any(|v| v.len() != len) {
        return Err(StrategyError::BadState {
            strategy,
            reason: "the state vectors have different lengths".to_owned(),
        });
    }
    if let Some((name, index)) = names
        .iter()
        .zip(&taken)
        .find_map(|(name, v)| v.iter().position(|x| !x.is_finite()).map(|i| (name, i)))
    {
        return Err(StrategyError::BadState {
            strategy,
            reason: format!("vector {name} has a non-finite value at {index}"),
        });
    }
    Ok(Some(taken))
}
