//! FedOpt: the adaptive server optimizers FedAdagrad, FedAdam and FedYogi of Reddi et al.,
//! "Adaptive Federated Optimization" (ICLR 2021), Algorithm 2.
//!
//! Per coordinate, with Δ the round's mean update:
//!
//! ```text
//! m ← β1·m + (1 − β1)·Δ
//! v ← v + Δ²                                  (Adagrad)
//! v ← β2·v + (1 − β2)·Δ²                      (Adam)
//! v ← v − (1 − β2)·Δ²·sign(v − Δ²)            (Yogi; sign(0) = 0)
//! x ← x + η·m / (√v + τ)
//! ```
//!
//! Initial state, as in the paper: m = 0 and v = τ² (Algorithm 2 asks for v₋₁ ≥ τ²). Flower
//! starts v at 0; the difference is τ², negligible once |Δ| ≫ τ. There is no bias correction,
//! as in the paper and Flower's FedYogi and FedAdagrad (newer Flower versions add Adam's bias
//! correction to FedAdam only).

use std::collections::BTreeMap;

use super::fedavg::{check_positive, check_unit_interval};
use super::{
    Strategy, StrategyError, StrategyState, check_lengths, check_magnitude, take_state_vectors,
};

/// The largest |Δ| an adaptive strategy accepts: its square (10^36) must stay well inside
/// `f32` (3.4·10^38) even after Adagrad has summed many of them.
pub const MAX_ADAPTIVE_UPDATE: f32 = 1e18;

/// How the second moment v follows Δ².
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Adaptivity {
    /// FedAdagrad: v ← v + Δ².
    Adagrad,
    /// FedAdam: v ← β2·v + (1 − β2)·Δ².
    Adam {
        /// β2 in `[0, 1)`.
        beta2: f32,
    },
    /// FedYogi: v ← v − (1 − β2)·Δ²·sign(v − Δ²).
    Yogi {
        /// β2 in `[0, 1)`.
        beta2: f32,
    },
}

impl Adaptivity {
    /// The strategy name for this rule.
    fn name(self) -> &'static str {
        match self {
            Self::Adagrad => FedOpt::ADAGRAD,
            Self::Adam { .. } => FedOpt::ADAM,
            Self::Yogi { .. } => FedOpt::YOGI,
        }
    }
}

/// The first and second moments, one value per model parameter.
#[derive(Debug, Clone, PartialEq)]
struct Moments {
    m: Vec<f32>,
    v: Vec<f32>,
}

/// FedAdagrad, FedAdam or FedYogi (see the module docs), chosen by [`Adaptivity`].
#[derive(Debug, Clone, PartialEq)]
pub struct FedOpt {
    adaptivity: Adaptivity,
    eta: f32,
    beta1: f32,
    tau: f32,
    moments: Option<Moments>,
    steps: u64,
}

impl FedOpt {
    /// Name of FedAdagrad in configurations and saved state.
    pub const ADAGRAD: &'static str = "fed_adagrad";
    /// Name of FedAdam in configurations and saved state.
    pub const ADAM: &'static str = "fed_adam";
    /// Name of FedYogi in configurations and saved state.
    pub const YOGI: &'static str = "fed_yogi";

    /// An adaptive optimizer with server learning rate `eta` (finite, > 0), first-moment decay
    /// `beta1` in `[0, 1)`, adaptivity `tau` (finite, > 0), and the second-moment rule
    /// `adaptivity` (whose β2 must lie in `[0, 1)`).
    pub fn new(
        adaptivity: Adaptivity,
        eta: f32,
        beta1: f32,
        tau: f32,
    ) -> Result<Self, StrategyError> {
        let name = adaptivity.name();
        check_positive(name, "eta", eta)?;
        check_unit_interval(name, "beta1", beta1)?;
        if let Adaptivity::Adam { beta2 } | Adaptivity::Yogi { beta2 } = adaptivity {
            check_unit_interval(name, "beta2", beta2)?;
        }
        check_positive(name, "tau", tau)?;
        Ok(Self {
            adaptivity,
            eta,
            beta1,
            tau,
            moments: None,
            steps: 0,
        })
    }

    /// FedAdagrad. Flower's defaults: η = 0.1, β1 = 0 (no momentum), τ = 1e-9.
    pub fn adagrad(eta: f32, beta1: f32, tau: f32) -> Result<Self, StrategyError> {
        Self::new(Adaptivity::Adagrad, eta, beta1, tau)
    }

    /// FedAdam. Flower's defaults: η = 0.1, β1 = 0.9, β2 = 0.99, τ = 1e-9.
    pub fn adam(eta: f32, beta1: f32, beta2: f32, tau: f32) -> Result<Self, StrategyError> {
        Self::new(Adaptivity::Adam { beta2 }, eta, beta1, tau)
    }

    /// FedYogi. Flower's defaults: η = 0.01, β1 = 0.9, β2 = 0.99, τ = 1e-3.
    pub fn yogi(eta: f32, beta1: f32, beta2: f32, tau: f32) -> Result<Self, StrategyError> {
        Self::new(Adaptivity::Yogi { beta2 }, eta, beta1, tau)
    }

    /// The second-moment rule.
    pub fn adaptivity(&self) -> Adaptivity {
        self.adaptivity
    }
}

impl Strategy for FedOpt {
    fn name(&self) -> &'static str {
        self.adaptivity.name()
    }

    fn apply(&mut self, global: &mut [f32], mean_update: &[f32]) -> Result<(), StrategyError> {
        let name = self.name();
        check_lengths(
            name,
            global,
            mean_update,
            self.moments.as_ref().map(|s| s.m.len()),
        )?;
        check_magnitude(name, mean_update, MAX_ADAPTIVE_UPDATE)?;
        let tau = self.tau;
        let moments = self.moments.get_or_insert_with(|| Moments {
            m: vec![0.0; mean_update.len()],
            v: vec![tau * tau; mean_update.len()],
        });
        let (eta, beta1) = (self.eta, self.beta1);
        // One monomorphic loop per rule, so each vectorises.
        match self.adaptivity {
            Adaptivity::Adagrad => step(global, mean_update, moments, eta, beta1, tau, |v, d2| {
                v + d2
            }),
            Adaptivity::Adam { beta2 } => {
                step(global, mean_update, moments, eta, beta1, tau, |v, d2| {
                    beta2 * v + (1.0 - beta2) * d2
                })
            }
            Adaptivity::Yogi { beta2 } => {
                step(global, mean_update, moments, eta, beta1, tau, |v, d2| {
                    v - (1.0 - beta2) * d2 * sign(v - d2)
                })
            }
        }
        self.steps += 1;
        Ok(())
    }

    fn export_state(&self) -> StrategyState {
        let mut vectors = BTreeMap::new();
        if let Some(moments) = &self.moments {
            vectors.insert("m".to_owned(), moments.m.clone());
            vectors.insert("v".to_owned(), moments.v.clone());
        }
        StrategyState {
            strategy: self.name().to_owned(),
            steps: self.steps,
            vectors,
        }
    }

    fn import_state(&mut self, state: StrategyState) -> Result<(), StrategyError> {
        let name = self.name();
        let steps = state.steps;
        let moments = match take_state_vectors(name, &["m", "v"], state)? {
            None => None,
            Some(vectors) => {
                let mut vectors = vectors.into_iter();
                let (Some(m), Some(v)) = (vectors.next(), vectors.next()) else {
                    return Err(StrategyError::BadState {
                        strategy: name,
                        reason: "expected vectors m and v".to_owned(),
                    });
                };
                // Every rule keeps v ≥ 0 (Yogi included: it moves v towards Δ² ≥ 0 by at
                // most (1 − β2)·|v − Δ²|); a negative v would make √v NaN.
                if let Some(index) = v.iter().position(|&x| x < 0.0) {
                    return Err(StrategyError::BadState {
                        strategy: name,
                        reason: format!("second moment v is negative at {index}"),
                    });
                }
                Some(Moments { m, v })
            }
        };
        self.moments = moments;
        self.steps = steps;
        Ok(())
    }
}

/// One FedOpt step over all coordinates, with `second` the rule v ← second(v, Δ²).
fn step(
    global: &mut [f32],
    update: &[f32],
    moments: &mut Moments,
    eta: f32,
    beta1: f32,
    tau: f32,
    second: impl Fn(f32, f32) -> f32,
) {
    let coordinates = global
        .iter_mut()
        .zip(update)
        .zip(moments.m.iter_mut().zip(moments.v.iter_mut()));
    for ((x, &d), (m, v)) in coordinates {
        *m = beta1 * *m + (1.0 - beta1) * d;
        *v = second(*v, d * d);
        *x += eta * *m / (v.sqrt() + tau);
    }
}

/// The sign of `x` with sign(0) = 0, as NumPy's `np.sign` (`f32::signum(0.0)` is 1).
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}
