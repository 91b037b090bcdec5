//! From a `[privacy]` section and the task's shape to a [`PrivacyPlan`]: the noise multiplier,
//! the budget, the round limit, and (distributed mode) the encoding's parameters. The plan is
//! what a shell needs to run and enforce DP: [`PrivacyPlan::round_fits`] before each round,
//! [`PrivacyPlan::epsilon_after`] for the round log.

use std::fmt;

use crate::accountant::{Mechanism, RdpCurve, Sampling, noise_multiplier_for};
use crate::central::value_noise_multiplier;
use crate::config::{
    ClipMode, DEFAULT_CLIP_LEARNING_RATE, DEFAULT_TARGET_QUANTILE, PrivacyConfig,
    PrivacyConfigError, PrivacyMode,
};
use crate::distributed::{DistributedError, DistributedParams, DistributedShape};

/// What the plan needs to know about the task, from outside the `[privacy]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskShape {
    /// d: the number of model parameters (the update's length).
    pub model_dim: usize,
    /// The most clients whose updates are summed in a round (the cohort, including
    /// over-selection).
    pub clients_per_round: u32,
    /// q_min: the fewest survivors for which SecAgg+ releases the sum.
    pub min_survivors: u32,
    /// The number of clients the task draws from, when known (enrolled devices, simulated
    /// clients). δ must be below 1/population; when unknown, below 1/clients_per_round.
    pub population: Option<u64>,
}

/// Adaptive clipping's derived settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveClipPlan {
    /// γ.
    pub target_quantile: f64,
    /// η.
    pub learning_rate: f64,
    /// σ_b of the clip-bit count.
    pub count_stddev: f64,
    /// z_v: the update values' noise multiplier (Andrew et al. 2021, Theorem 1).
    pub value_noise_multiplier: f64,
}

/// Everything a task needs to run with differential privacy. See the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct PrivacyPlan {
    /// Central or distributed.
    pub mode: PrivacyMode,
    /// δ.
    pub delta: f64,
    /// z: a round's total noise over its sensitivity.
    pub noise_multiplier: f64,
    /// The ε the task may spend.
    pub epsilon_budget: f64,
    /// The round limit: no round after this many.
    pub max_rounds: u64,
    /// The sampling assumption of the accounting.
    pub sampling: Sampling,
    /// The L2 clip (the initial clip when adaptive).
    pub clip: f64,
    /// Adaptive clipping, when configured.
    pub adaptive_clip: Option<AdaptiveClipPlan>,
    /// Distributed mode's encoding parameters.
    pub distributed: Option<DistributedParams>,
    per_round: RdpCurve,
}

impl PrivacyConfig {
    /// Validates the section against the task's shape and derives the plan; `None` when the
    /// mode is "none". Refuses, naming the key: everything [`PrivacyConfig::validate`] refuses,
    /// δ ≥ 1/n, a noise multiplier that cannot fit the budget in even one round, rounds beyond
    /// the budget, a target ε no noise reaches, bits too few (or too many) for the cohort, and
    /// a clip-bit noise too small for the noise multiplier.
    pub fn plan(&self, shape: &TaskShape) -> Result<Option<PrivacyPlan>, PrivacyConfigError> {
        self.validate()?;
        if self.mode == PrivacyMode::None {
            return Ok(None);
        }
        check_shape(shape)?;
        // validate() has refused a missing delta or clip; these only satisfy the types.
        let (Some(delta), Some(clip_config)) = (self.delta, self.clip.clone()) else {
            return Err(PrivacyConfigError::Missing {
                key: "privacy.delta",
                when: "with differential privacy",
            });
        };
        let clip = clip_config.norm;

        let clients = shape
            .population
            .unwrap_or(u64::from(shape.clients_per_round));
        if delta >= 1.0 / clients as f64 {
            return Err(PrivacyConfigError::DeltaTooLarge {
                delta,
                clients,
                bound: 1.0 / clients as f64,
            });
        }

        let sampling = match self.dangerous_assume_poisson_rate {
            None => Sampling::None,
            Some(rate) => Sampling::Poisson { rate },
        };
        let settings = self.distributed.clone().unwrap_or_default().settings();
        let distributed_shape = DistributedShape {
            dim: shape.model_dim,
            max_clients: shape.clients_per_round,
            min_survivors: shape.min_survivors,
        };
        let mode = self.mode;
        let derive = |z: f64| DistributedParams::derive(clip, z, distributed_shape, settings);
        // The accounting of one round for noise multiplier z; distributed-mode derivation
        // errors are kept aside to be reported with their key.
        let derivation_error = std::cell::RefCell::new(None::<DistributedError>);
        let curve_for = |z: f64| {
            let mechanism = match mode {
                PrivacyMode::Distributed => match derive(z) {
                    Ok(params) => Mechanism::DistributedGaussian(params.mechanism()),
                    Err(e) => {
                        *derivation_error.borrow_mut() = Some(e);
                        // An unusable z: no noise, infinite ε, so the search moves on.
                        return RdpCurve::per_round(
                            Mechanism::Gaussian {
                                noise_multiplier: f64::MIN_POSITIVE,
                            },
                            sampling,
                        );
                    }
                },
                _ => Mechanism::DiscreteGaussian {
                    noise_multiplier: z,
                },
            };
            RdpCurve::per_round(mechanism, sampling)
        };

        let (noise_multiplier, epsilon_budget, max_rounds) =
            match (self.epsilon, self.noise_multiplier, self.rounds) {
                (Some(epsilon), Some(z), rounds) => {
                    let curve = curve_for(z).map_err(PrivacyConfigError::Accountant)?;
                    let fit = curve
                        .max_rounds(epsilon, delta)
                        .map_err(PrivacyConfigError::Accountant)?;
                    if fit == 0 {
                        let one_round = curve
                            .epsilon_after(1, delta)
                            .map_err(PrivacyConfigError::Accountant)?
                            .epsilon;
                        return Err(match derivation_error.take() {
                            Some(source) => distributed_error(source),
                            None => PrivacyConfigError::BudgetTooSmall {
                                noise_multiplier: z,
                                epsilon,
                                one_round,
                            },
                        });
                    }
                    match rounds {
                        Some(r) if r > fit => {
                            return Err(PrivacyConfigError::RoundsExceedBudget {
                                rounds: r,
                                max_rounds: fit,
                                epsilon,
                                noise_multiplier: z,
                            });
                        }
                        Some(r) => (z, epsilon, r),
                        None => (z, epsilon, fit),
                    }
                }
                (Some(epsilon), None, Some(rounds)) => {
                    // The discrete Gaussian's curve first: distributed mode's is the same up to
                    // τ, and the encoding can be derived (and its errors reported) for a
                    // sensible z rather than for every z the search tries.
                    let central = |z: f64| {
                        RdpCurve::per_round(
                            Mechanism::DiscreteGaussian {
                                noise_multiplier: z,
                            },
                            sampling,
                        )
                    };
                    let z = noise_multiplier_for(epsilon, delta, rounds, central)
                        .map_err(PrivacyConfigError::Accountant)?;
                    let z = match mode {
                        PrivacyMode::Distributed => {
                            derive(z).map_err(distributed_error)?;
                            let within = curve_for(z)
                                .and_then(|c| c.epsilon_after(rounds, delta))
                                .map_err(PrivacyConfigError::Accountant)?
                                .epsilon
                                <= epsilon;
                            if within {
                                z
                            } else {
                                // τ is not negligible (a very coarse grid): search again on the
                                // distributed curve itself.
                                noise_multiplier_for(epsilon, delta, rounds, curve_for).map_err(
                                    |e| match derivation_error.take() {
                                        Some(source) => distributed_error(source),
                                        None => PrivacyConfigError::Accountant(e),
                                    },
                                )?
                            }
                        }
                        _ => z,
                    };
                    (z, epsilon, rounds)
                }
                (None, Some(z), Some(rounds)) => {
                    let eps = curve_for(z)
                        .and_then(|c| c.epsilon_after(rounds, delta))
                        .map_err(PrivacyConfigError::Accountant)?
                        .epsilon;
                    (z, eps, rounds)
                }
                // validate() refuses every other combination.
                _ => {
                    return Err(PrivacyConfigError::Missing {
                        key: "privacy.epsilon",
                        when: "with differential privacy",
                    });
                }
            };

        let distributed = match mode {
            PrivacyMode::Distributed => Some(derive(noise_multiplier).map_err(distributed_error)?),
            _ => None,
        };
        let adaptive_clip = match clip_config.mode {
            ClipMode::Fixed => None,
            ClipMode::Adaptive => {
                let count_stddev = clip_config
                    .count_stddev
                    .unwrap_or(f64::from(shape.clients_per_round) / 20.0);
                let value =
                    value_noise_multiplier(noise_multiplier, count_stddev).map_err(|source| {
                        PrivacyConfigError::Central {
                            key: "privacy.clip.count_stddev",
                            source,
                        }
                    })?;
                Some(AdaptiveClipPlan {
                    target_quantile: clip_config
                        .target_quantile
                        .unwrap_or(DEFAULT_TARGET_QUANTILE),
                    learning_rate: clip_config
                        .learning_rate
                        .unwrap_or(DEFAULT_CLIP_LEARNING_RATE),
                    count_stddev,
                    value_noise_multiplier: value,
                })
            }
        };
        let per_round = curve_for(noise_multiplier).map_err(PrivacyConfigError::Accountant)?;
        Ok(Some(PrivacyPlan {
            mode,
            delta,
            noise_multiplier,
            epsilon_budget,
            max_rounds,
            sampling,
            clip,
            adaptive_clip,
            distributed,
            per_round,
        }))
    }
}

impl PrivacyPlan {
    /// The accounting of one round.
    pub fn per_round(&self) -> &RdpCurve {
        &self.per_round
    }

    /// ε spent after `rounds` finished rounds (0 for none).
    pub fn epsilon_after(&self, rounds: u64) -> f64 {
        // δ was checked when the plan was made, so the accountant cannot refuse it.
        self.per_round
            .epsilon_after(rounds, self.delta)
            .map_or(f64::INFINITY, |e| e.epsilon)
    }

    /// Whether one more round may start after `completed` finished rounds: within the round
    /// limit, and so within the budget.
    pub fn round_fits(&self, completed: u64) -> bool {
        completed < self.max_rounds
    }

    /// The noise multiplier of the update values: z, or z_v with adaptive clipping.
    pub fn value_noise_multiplier(&self) -> f64 {
        self.adaptive_clip
            .map_or(self.noise_multiplier, |a| a.value_noise_multiplier)
    }
}

impl fmt::Display for PrivacyPlan {
    /// A few lines for `task show` and the simulator's summary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mechanism = match self.mode {
            PrivacyMode::Distributed => "distributed discrete Gaussian, noise added on devices",
            _ => "discrete Gaussian, noise added by the coordinator",
        };
        writeln!(
            f,
            "{} DP: epsilon {} at delta {} over at most {} rounds ({mechanism})",
            self.mode.as_str(),
            number(self.epsilon_budget),
            number(self.delta),
            self.max_rounds,
        )?;
        write!(
            f,
            "noise multiplier {}, clip {}",
            number(self.noise_multiplier),
            number(self.clip)
        )?;
        if let Some(a) = &self.adaptive_clip {
            write!(
                f,
                " (adaptive: quantile {}, learning rate {}, count noise {})",
                number(a.target_quantile),
                number(a.learning_rate),
                number(a.count_stddev)
            )?;
        }
        match self.sampling {
            Sampling::None => write!(f, ", no amplification by sampling assumed")?,
            Sampling::Poisson { rate } => write!(
                f,
                ", Poisson sampling at rate {} ASSUMED (dangerous)",
                number(rate)
            )?,
        }
        if let Some(d) = &self.distributed {
            write!(
                f,
                "\n{} bits per coordinate, {} coordinates after padding, noise {:.3}x central DP's",
                d.bits, d.padded_dim, d.noise_inflation
            )?;
        }
        Ok(())
    }
}

/// At most four decimals, in scientific notation below 10⁻³.
pub(crate) fn number(x: f64) -> String {
    if x != 0.0 && x.abs() < 1e-3 {
        format!("{x:e}")
    } else {
        let s = format!("{x:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    }
}

fn distributed_error(source: DistributedError) -> PrivacyConfigError {
    let key = match source {
        DistributedError::BadParameter { name: "beta", .. } => "privacy.distributed.rounding_beta",
        DistributedError::BadParameter {
            name: "k_stddevs", ..
        } => "privacy.distributed.k_stddevs",
        DistributedError::BadParameter {
            name: "max_noise_inflation",
            ..
        } => "privacy.distributed.max_noise_inflation",
        DistributedError::BadParameter { name: "clip", .. } => "privacy.clip.norm",
        _ => "privacy.distributed.bits",
    };
    PrivacyConfigError::Distributed { key, source }
}

fn check_shape(shape: &TaskShape) -> Result<(), PrivacyConfigError> {
    if shape.model_dim == 0 {
        return Err(PrivacyConfigError::BadShape {
            what: "model dimension",
            value: 0,
            reason: "at least one parameter",
        });
    }
    if shape.clients_per_round == 0 {
        return Err(PrivacyConfigError::BadShape {
            what: "clients per round",
            value: 0,
            reason: "at least one client",
        });
    }
    if shape.min_survivors == 0 || shape.min_survivors > shape.clients_per_round {
        return Err(PrivacyConfigError::BadShape {
            what: "minimum survivors",
            value: u64::from(shape.min_survivors),
            reason: "between 1 and the clients per round",
        });
    }
    if shape.population == Some(0) {
        return Err(PrivacyConfigError::BadShape {
            what: "population",
            value: 0,
            reason: "at least one client",
        });
    }
    Ok(())
}
