//! FedAvg (McMahan et al. 2017) with a server learning rate, and FedAvgM, FedAvg with server
//! momentum (Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution").

use std::collections::BTreeMap;

use super::{
    Strategy, StrategyError, StrategyState, check_lengths, check_magnitude, take_state_vectors,
};

/// FedAvg: x ← x + lr·Δ. With `server_lr = 1` the new global model is the weighted mean of the
/// clients' models. Stateless apart from the step count.
#[derive(Debug, Clone, PartialEq)]
pub struct FedAvg {
    server_lr: f32,
    steps: u64,
}

impl FedAvg {
    /// The name in configurations and saved state.
    pub const NAME: &'static str = "fed_avg";

    /// A FedAvg with server learning rate `server_lr` (finite, > 0).
    pub fn new(server_lr: f32) -> Result<Self, StrategyError> {
        check_positive(Self::NAME, "server_lr", server_lr)?;
        Ok(Self {
            server_lr,
            steps: 0,
        })
    }
}

impl Strategy for FedAvg {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn apply(&mut self, global: &mut [f32], mean_update: &[f32]) -> Result<(), StrategyError> {
        check_lengths(Self::NAME, global, mean_update, None)?;
        check_magnitude(Self::NAME, mean_update, f32::MAX)?;
        for (x, d) in global.iter_mut().zip(mean_update) {
            *x += self.server_lr * d;
        }
        self.steps += 1;
        Ok(())
    }

    fn export_state(&self) -> StrategyState {
        StrategyState {
            strategy: Self::NAME.to_owned(),
            steps: self.steps,
            vectors: BTreeMap::new(),
        }
    }

    fn import_state(&mut self, state: StrategyState) -> Result<(), StrategyError> {
        let steps = state.steps;
        // With no expected names, any saved vector is refused as unexpected.
        take_state_vectors(Self::NAME, &[], state)?;
        self.steps = steps;
        Ok(())
    }
}

/// FedAvgM: v ← β·v + Δ; x ← x + lr·v, with v = 0 before the first round (so the first step
/// is plain FedAvg). This is PyTorch's SGD momentum convention, as in Flower's `FedAvgM`.
///
/// The default momentum is 0.9, the value Hsu et al. (2019) found to work across their
/// non-IID experiments. (Flower defaults to 0.0, which makes FedAvgM plain FedAvg.)
#[derive(Debug, Clone, PartialEq)]
pub struct FedAvgM {
    server_lr: f32,
    momentum: f32,
    velocity: Option<Vec<f32>>,
    steps: u64,
}

impl FedAvgM {
    /// The name in configurations and saved state.
    pub const NAME: &'static str = "fed_avg_m";

    /// A FedAvgM with server learning rate `server_lr` (finite, > 0) and momentum β in
    /// `[0, 1)`.
    pub fn new(server_lr: f32, momentum: f32) -> Result<Self, StrategyError> {
        check_positive(Self::NAME, "server_lr", server_lr)?;
        check_unit_interval(Self::NAME, "momentum", momentum)?;
        Ok(Self {
            server_lr,
            momentum,
            velocity: None,
            steps: 0,
        })
    }
}

impl Strategy for FedAvgM {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn apply(&mut self, global: &mut [f32], mean_update: &[f32]) -> Result<(), StrategyError> {
        check_lengths(
            Self::NAME,
            global,
            mean_update,
            self.velocity.as_ref().map(Vec::len),
        )?;
        check_magnitude(Self::NAME, mean_update, f32::MAX)?;
        let velocity = self
            .velocity
            .get_or_insert_with(|| vec![0.0; mean_update.len()]);
        for ((x, v), d) in global.iter_mut().zip(velocity.iter_mut()).zip(mean_update) {
            *v = self.momentum * *v + d;
            *x += self.server_lr * *v;
        }
        self.steps += 1;
        Ok(())
    }

    fn export_state(&self) -> StrategyState {
        let mut vectors = BTreeMap::new();
        if let Some(v) = &self.velocity {
            vectors.insert("velocity".to_owned(), v.clone());
        }
        StrategyState {
            strategy: Self::NAME.to_owned(),
            steps: self.steps,
            vectors,
        }
    }

    fn import_state(&mut self, state: StrategyState) -> Result<(), StrategyError> {
        let steps = state.steps;
        let vectors = take_state_vectors(Self::NAME, &["velocity"], state)?;
        self.velocity = vectors.and_then(|v| v.into_iter().next());
        self.steps = steps;
        Ok(())
    }
}

/// Checks that `value` is finite and strictly positive.
pub(super) fn check_positive(
    strategy: &'static str,
    name: &'static str,
    value: f32,
) -> Result<(), StrategyError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(StrategyError::InvalidParameter {
            strategy,
            name,
            value,
            expected: "finite and greater than 0",
        })
    }
}

/// Checks that `value` lies in `[0, 1)`.
pub(super) fn check_unit_interval(
    strategy: &'static str,
    name: &'static str,
    value: f32,
) -> Result<(), StrategyError> {
    if (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(StrategyError::InvalidParameter {
            strategy,
            name,
            value,
            expected: "in [0, 1)",
        })
    }
}
