//! The `[privacy]` section: one vocabulary for the coordinator's task file and the simulator's
//! experiment file. Unknown keys are refused (serde `deny_unknown_fields`), and
//! [`PrivacyConfig::validate`] refuses bad values naming the key and the reason;
//! [`PrivacyConfig::plan`](crate::plan) adds the checks that need the task's shape and derives
//! everything else.
//!
//! ```toml
//! [privacy]
//! mode = "central"          # "none" (default) | "central" | "distributed"
//! delta = 1e-6              # required with DP; below 1/(number of clients)
//! epsilon = 4.0             # the budget (ε); give two of epsilon, noise_multiplier, rounds
//! rounds = 500              # the round limit
//! # noise_multiplier = 1.1  # σ / clip (a round's total noise); here derived from the other two
//! # dangerous_assume_poisson_rate = 0.01
//! #                         # claim amplification by Poisson sampling at this rate; absent (the
//! #                         # default): none is assumed, sound whatever the selection
//!
//! [privacy.clip]
//! norm = 0.5                # the L2 clip (the initial clip when adaptive); required
//! mode = "fixed"            # "fixed" (default) | "adaptive" (central mode only)
//! # target_quantile = 0.5   # adaptive: the fraction of updates to leave unclipped
//! # learning_rate = 0.2     # adaptive: η of the geometric update
//! # count_stddev = 5.0      # adaptive: σ_b of the clip-bit count (default clients/20)
//!
//! # [privacy.distributed]   # mode = "distributed" only (refused otherwise); keys optional
//! # bits = 16               # bits per coordinate (default: the fewest within the inflation)
//! # max_noise_inflation = 1.05
//! # rounding_beta = 0.6065  # β of conditional rounding, e^-1/2
//! # k_stddevs = 4.0         # standard deviations of the sum kept inside the ring
//! ```
//!
//! Budget: with `epsilon` and `noise_multiplier`, the round limit is the most rounds that fit
//! (or `rounds`, checked to fit); with `epsilon` and `rounds`, the noise multiplier is the
//! smallest that fits; with `noise_multiplier` and `rounds`, ε is computed and becomes the
//! budget.

use serde::{Deserialize, Serialize};

use crate::accountant::AccountantError;
use crate::central::CentralError;
use crate::distributed::{self, DistributedError};

/// Which kind of differential privacy a task runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivacyMode {
    /// No differential privacy (the default). The other keys must be absent.
    #[default]
    None,
    /// Clients clip; the coordinator adds the noise to the unmasked sum.
    Central,
    /// Clients clip and add their shares of the noise before masking.
    Distributed,
}

impl PrivacyMode {
    /// The TOML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PrivacyMode::None => "none",
            PrivacyMode::Central => "central",
            PrivacyMode::Distributed => "distributed",
        }
    }
}

/// Fixed or adaptive clipping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClipMode {
    /// The clip stays at `norm` (the default).
    #[default]
    Fixed,
    /// The clip follows a quantile of the update norms (Andrew et al. 2021); central mode only.
    Adaptive,
}

/// The `[privacy.clip]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipConfig {
    /// The L2 clip norm, or the initial clip when adaptive.
    pub norm: f64,
    /// Fixed (default) or adaptive.
    #[serde(default)]
    pub mode: ClipMode,
    /// Adaptive: the fraction of updates to leave unclipped (default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_quantile: Option<f64>,
    /// Adaptive: η of the geometric update (default 0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// Adaptive: σ_b, the noise on the count of unclipped updates (default clients per round
    /// / 20, as Andrew et al. suggest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_stddev: Option<f64>,
}

/// The default target quantile of adaptive clipping.
pub const DEFAULT_TARGET_QUANTILE: f64 = 0.5;
/// The default learning rate of adaptive clipping.
pub const DEFAULT_CLIP_LEARNING_RATE: f64 = 0.2;

/// The `[privacy.distributed]` table. Every key is optional; see [`crate::distributed`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributedConfig {
    /// Bits per coordinate (8 to 32); default: the fewest within `max_noise_inflation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits: Option<u8>,
    /// The largest accepted ratio of the decoded noise to central DP's (default 1.05).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_noise_inflation: Option<f64>,
    /// β of conditional rounding, in [0, 1) (default e^-1/2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounding_beta: Option<f64>,
    /// Standard deviations of the sum kept inside the ring (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k_stddevs: Option<f64>,
}

impl DistributedConfig {
    /// The settings, with defaults filled in.
    pub fn settings(&self) -> distributed::DistributedSettings {
        let defaults = distributed::DistributedSettings::default();
        distributed::DistributedSettings {
            bits: self.bits,
            beta: self.rounding_beta.unwrap_or(defaults.beta),
            k_stddevs: self.k_stddevs.unwrap_or(defaults.k_stddevs),
            max_noise_inflation: self
                .max_noise_inflation
                .unwrap_or(defaults.max_noise_inflation),
        }
    }
}

/// The `[privacy]` section. See the module docs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// none (default), central or distributed.
    #[serde(default)]
    pub mode: PrivacyMode,
    /// The budget ε.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// δ; required with DP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
    /// z: the noise of a round over the clip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_multiplier: Option<f64>,
    /// The round limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds: Option<u64>,
    /// Accounts each round as if each client took part independently with this probability
    /// (Poisson sampling), which lowers ε. **Dangerous**: Cohort's coordinator selects by
    /// check-in order, not by coin flips, and a device's availability may be adversarial, so
    /// the claim does not hold there; for simulations or deployments that really sample so.
    /// Absent (the default): no amplification is assumed, sound for any selection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dangerous_assume_poisson_rate: Option<f64>,
    /// `[privacy.clip]`; required with DP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<ClipConfig>,
    /// `[privacy.distributed]`; distributed mode only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distributed: Option<DistributedConfig>,
}

/// Why a `[privacy]` section was refused. [`PrivacyConfigError::key`] names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrivacyConfigError {
    /// A required key is missing.
    #[error("{key} is required {when}")]
    Missing {
        /// The key's path, e.g. `privacy.delta`.
        key: &'static str,
        /// When it is required.
        when: &'static str,
    },
    /// A key is set where it has no effect.
    #[error("{key} has no effect {when}; remove it (or change the mode)")]
    Unused {
        /// The key's path.
        key: &'static str,
        /// Why it has no effect.
        when: &'static str,
    },
    /// A value is out of range.
    #[error("{key} = {value}: {reason}")]
    Invalid {
        /// The key's path.
        key: &'static str,
        /// The value given.
        value: f64,
        /// What it must be.
        reason: &'static str,
    },
    /// δ is not below one over the number of clients.
    #[error(
        "privacy.delta = {delta} is not below 1/n = {bound:e} for n = {clients} clients: a \
         mechanism that publishes one client's data outright would meet it; use a delta below \
         1/n (1e-6 or smaller is usual)"
    )]
    DeltaTooLarge {
        /// δ.
        delta: f64,
        /// n.
        clients: u64,
        /// 1/n.
        bound: f64,
    },
    /// Not even one round fits the budget.
    #[error(
        "privacy.noise_multiplier = {noise_multiplier} cannot fit privacy.epsilon = {epsilon} \
         in even one round (one round costs epsilon {one_round}); raise the noise multiplier \
         or the budget"
    )]
    BudgetTooSmall {
        /// z.
        noise_multiplier: f64,
        /// The budget.
        epsilon: f64,
        /// ε of one round.
        one_round: f64,
    },
    /// The declared rounds do not fit the budget.
    #[error(
        "privacy.rounds = {rounds} does not fit privacy.epsilon = {epsilon} with noise \
         multiplier {noise_multiplier}: at most {max_rounds} rounds do; lower rounds or raise \
         the budget or the noise"
    )]
    RoundsExceedBudget {
        /// The rounds declared.
        rounds: u64,
        /// The most that fit.
        max_rounds: u64,
        /// The budget.
        epsilon: f64,
        /// z.
        noise_multiplier: f64,
    },
    /// The accountant refused (for instance, no noise reaches the target ε).
    #[error("privacy.epsilon: {0}")]
    Accountant(AccountantError),
    /// Distributed-mode parameters could not be derived.
    #[error("{key}: {source}")]
    Distributed {
        /// The key most related to the failure.
        key: &'static str,
        /// The derivation's error.
        source: DistributedError,
    },
    /// Central-mode parameters could not be derived.
    #[error("{key}: {source}")]
    Central {
        /// The key most related to the failure.
        key: &'static str,
        /// The error.
        source: CentralError,
    },
    /// The task's shape (from outside the section) is unusable.
    #[error("the task's {what} = {value} cannot be planned for: {reason}")]
    BadShape {
        /// Which part of the shape.
        what: &'static str,
        /// Its value.
        value: u64,
        /// What it must be.
        reason: &'static str,
    },
}

impl PrivacyConfigError {
    /// The configuration key the error is about (`privacy.…`), or `task` for the task's shape.
    pub fn key(&self) -> &'static str {
        match self {
            PrivacyConfigError::Missing { key, .. }
            | PrivacyConfigError::Unused { key, .. }
            | PrivacyConfigError::Invalid { key, .. }
            | PrivacyConfigError::Distributed { key, .. }
            | PrivacyConfigError::Central { key, .. } => key,
            PrivacyConfigError::DeltaTooLarge { .. } => "privacy.delta",
            PrivacyConfigError::BudgetTooSmall { .. } => "privacy.noise_multiplier",
            PrivacyConfigError::RoundsExceedBudget { .. } => "privacy.rounds",
            PrivacyConfigError::Accountant(_) => "privacy.epsilon",
            PrivacyConfigError::BadShape { .. } => "task",
        }
    }
}

impl PrivacyConfig {
    /// Whether differential privacy is on.
    pub fn enabled(&self) -> bool {
        self.mode != PrivacyMode::None
    }

    /// The checks that need nothing but the section itself: required and unused keys, ranges,
    /// and combinations. [`PrivacyConfig::plan`](crate::plan) runs these first, then the
    /// checks that need the task's shape (δ against the number of clients, the budget against
    /// the noise, bits against the cohort).
    pub fn validate(&self) -> Result<(), PrivacyConfigError> {
        if self.mode == PrivacyMode::None {
            const WHEN: &str = "when privacy.mode = \"none\" (differential privacy is off)";
            let set = [
                ("privacy.epsilon", self.epsilon.is_some()),
                ("privacy.delta", self.delta.is_some()),
                ("privacy.noise_multiplier", self.noise_multiplier.is_some()),
                ("privacy.rounds", self.rounds.is_some()),
                (
                    "privacy.dangerous_assume_poisson_rate",
                    self.dangerous_assume_poisson_rate.is_some(),
                ),
                ("privacy.clip", self.clip.is_some()),
                ("privacy.distributed", self.distributed.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, present)| *present) {
                return Err(PrivacyConfigError::Unused { key, when: WHEN });
            }
            return Ok(());
        }

        let delta = self.delta.ok_or(PrivacyConfigError::Missing {
            key: "privacy.delta",
            when: "with differential privacy",
        })?;
        if !(delta > 0.0 && delta < 1.0) {
            return Err(invalid("privacy.delta", delta, "must be in (0, 1)"));
        }
        if let Some(eps) = self.epsilon
            && !(eps.is_finite() && eps > 0.0)
        {
            return Err(invalid(
                "privacy.epsilon",
                eps,
                "must be a finite positive number",
            ));
        }
        if let Some(z) = self.noise_multiplier
            && !(z.is_finite() && z > 0.0)
        {
            return Err(invalid(
                "privacy.noise_multiplier",
                z,
                "must be a finite positive number",
            ));
        }
        if self.rounds == Some(0) {
            return Err(invalid("privacy.rounds", 0.0, "must be at least 1"));
        }
        match (self.epsilon, self.noise_multiplier, self.rounds) {
            (Some(_), Some(_), _) | (Some(_), None, Some(_)) | (None, Some(_), Some(_)) => {}
            (Some(_), None, None) => {
                return Err(PrivacyConfigError::Missing {
                    key: "privacy.rounds",
                    when: "with privacy.epsilon unless privacy.noise_multiplier is given",
                });
            }
            (None, Some(_), None) => {
                return Err(PrivacyConfigError::Missing {
                    key: "privacy.rounds",
                    when: "with privacy.noise_multiplier unless privacy.epsilon is given",
                });
            }
            (None, None, _) => {
                return Err(PrivacyConfigError::Missing {
                    key: "privacy.epsilon",
                    when: "with differential privacy unless privacy.noise_multiplier and \
                           privacy.rounds are given",
                });
            }
        }

        if let Some(q) = self.dangerous_assume_poisson_rate
            && !(q > 0.0 && q <= 1.0)
        {
            return Err(invalid(
                "privacy.dangerous_assume_poisson_rate",
                q,
                "must be in (0, 1]",
            ));
        }

        let clip = self.clip.as_ref().ok_or(PrivacyConfigError::Missing {
            key: "privacy.clip.norm",
            when: "with differential privacy",
        })?;
        if !(clip.norm.is_finite() && clip.norm > 0.0) {
            return Err(invalid(
                "privacy.clip.norm",
                clip.norm,
                "must be a finite positive number",
            ));
        }
        match clip.mode {
            ClipMode::Fixed => {
                const WHEN: &str = "with privacy.clip.mode = \"fixed\"";
                for (key, present) in [
                    (
                        "privacy.clip.target_quantile",
                        clip.target_quantile.is_some(),
                    ),
                    ("privacy.clip.learning_rate", clip.learning_rate.is_some()),
                    ("privacy.clip.count_stddev", clip.count_stddev.is_some()),
                ] {
                    if present {
                        return Err(PrivacyConfigError::Unused { key, when: WHEN });
                    }
                }
            }
            ClipMode::Adaptive => {
                if self.mode == PrivacyMode::Distributed {
                    return Err(PrivacyConfigError::Unused {
                        key: "privacy.clip.mode",
                        when: "as \"adaptive\" with privacy.mode = \"distributed\" (adaptive \
                               clipping is built for central mode only; use a fixed clip)",
                    });
                }
                if let Some(g) = clip.target_quantile
                    && !(g > 0.0 && g < 1.0)
                {
                    return Err(invalid(
                        "privacy.clip.target_quantile",
                        g,
                        "must be in (0, 1)",
                    ));
                }
                if let Some(eta) = clip.learning_rate
                    && !(eta.is_finite() && eta > 0.0)
                {
                    return Err(invalid(
                        "privacy.clip.learning_rate",
                        eta,
                        "must be a finite positive number",
                    ));
                }
                if let Some(sb) = clip.count_stddev
                    && !(sb.is_finite() && sb > 0.0)
                {
                    return Err(invalid(
                        "privacy.clip.count_stddev",
                        sb,
                        "must be a finite positive number",
                    ));
                }
            }
        }

        match (self.mode, &self.distributed) {
            (PrivacyMode::Central, Some(_)) => Err(PrivacyConfigError::Unused {
                key: "privacy.distributed",
                when: "with privacy.mode = \"central\"",
            }),
            (PrivacyMode::Distributed, Some(d)) => validate_distributed(d),
            _ => Ok(()),
        }
    }
}

fn validate_distributed(d: &DistributedConfig) -> Result<(), PrivacyConfigError> {
    if let Some(bits) = d.bits
        && !(distributed::MIN_BITS..=distributed::MAX_BITS).contains(&bits)
    {
        return Err(invalid(
            "privacy.distributed.bits",
            f64::from(bits),
            "must be between 8 and 32",
        ));
    }
    if let Some(x) = d.max_noise_inflation
        && !(x.is_finite() && x >= 1.0)
    {
        return Err(invalid(
            "privacy.distributed.max_noise_inflation",
            x,
            "must be a finite number of at least 1",
        ));
    }
    if let Some(b) = d.rounding_beta
        && !(0.0..1.0).contains(&b)
    {
        return Err(invalid(
            "privacy.distributed.rounding_beta",
            b,
            "must be in [0, 1)",
        ));
    }
    if let Some(k) = d.k_stddevs
        && !(k.is_finite() && k >= 1.0)
    {
        return Err(invalid(
            "privacy.distributed.k_stddevs",
            k,
            "must be a finite number of at least 1",
        ));
    }
    Ok(())
}

fn invalid(key: &'static str, value: f64, reason: &'static str) -> PrivacyConfigError {
    PrivacyConfigError::Invalid { key, value, reason }
}
