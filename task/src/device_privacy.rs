//! A device's own checks of a task's differential privacy (issue 11: "a device checks the
//! task's privacy parameters and the logged ε against a limit that its owner sets").
//!
//! Before it takes part, the device re-plans the task's `[privacy]` section itself (from the
//! plan's [`PrivacySpec`](cohort_protocol::plan::PrivacySpec) and the model's size) rather than trusting a number the coordinator
//! states, and refuses ([`PrivacyRefusal`]):
//! - a task without DP when its owner set a limit;
//! - a task whose ε budget is above the limit;
//! - a task whose hash-chained round log records more ε spent than the limit or the budget,
//!   or as many rounds as the budget allows already.
//!
//! For each round it then checks that the round's parameters give at least the noise the task
//! declares ([`DevicePrivacy::check_round`]): weight 1; in distributed mode the layout of the
//! DDGauss encoding and a release threshold q_min no smaller than the plan's (fewer survivors
//! would sum fewer noise shares); in central mode with a fixed clip, that clip (a larger one
//! raises the sensitivity against the same noise); with adaptive clipping, that the round's
//! clip is the one the round log's last entry sets for it ([`NEXT_CLIP_KEY`]; the initial clip
//! after round 0), when the log it was sent says. It then encodes with its own codec: in
//! distributed mode the noise share it adds is the one it derived, whatever the coordinator says.
//!
//! What a device cannot check: in central mode the coordinator adds the noise (that is the
//! trust central DP places in it), and in either mode that the coordinator sums no more than
//! `clients_per_round` inputs (more would only add noise in distributed mode).

use cohort_privacy::config::PrivacyConfigError;
use cohort_privacy::plan::{PrivacyPlan, TaskShape};
use cohort_protocol::{RoundConfig, RoundLogEntry, TaskPlan};

use crate::evaluation::EvaluationLayout;
use crate::privacy::{PrivacyCodec, TaskPrivacy, quantizer_clip, rotation_seed};
use cohort_aggregation::encoding::Quantizer;

/// Params key of a round-log entry holding the ε spent after the round (written by the
/// coordinator's publish step).
pub const EPSILON_SPENT_KEY: &str = "epsilon_spent";

/// The ε spent that a round-log entry's params record, if any.
pub fn epsilon_spent_of(params: &[u8]) -> Option<f64> {
    let value: serde_json::Value = serde_json::from_slice(params).ok()?;
    value.get(EPSILON_SPENT_KEY)?.as_f64()
}

/// Params key of a round-log entry of a task with adaptive clipping: the L2 clip the round's
/// devices clipped to (see [`clip_param`] for the format).
pub const ROUND_CLIP_KEY: &str = "clip";

/// Params key of a round-log entry of a task with adaptive clipping: the L2 clip of the next
/// round, the adaptive clip's state after this round. A restarted coordinator resumes from it,
/// and a device checks the clip of the round it is sent against it.
pub const NEXT_CLIP_KEY: &str = "next_clip";

/// A clip as logged: the shortest decimal string that reads back to the same `f64` (a JSON
/// number would do for people, but serde_json's default float parsing may miss the last bit,
/// and the restart and the device's check need the exact value).
pub fn clip_param(clip: f64) -> serde_json::Value {
    serde_json::Value::String(clip.to_string())
}

/// The clip a round-log entry's params record under `key` ([`ROUND_CLIP_KEY`] or
/// [`NEXT_CLIP_KEY`]), if any and finite and positive.
pub fn logged_clip(params: &[u8], key: &str) -> Option<f64> {
    let value: serde_json::Value = serde_json::from_slice(params).ok()?;
    let clip: f64 = value.get(key)?.as_str()?.parse().ok()?;
    (clip.is_finite() && clip > 0.0).then_some(clip)
}

/// The clip the next round must use according to the round log a device was sent, for a task
/// with adaptive clipping that starts at `initial`: the last entry's [`NEXT_CLIP_KEY`], or
/// `initial` when the log ends at the initial model (round 0). `None` when the log does not
/// say: no entries (the device already verified the head, so it was sent none) or a last
/// entry without the key (written before clips were logged).
pub fn next_clip_from_log(log: &[RoundLogEntry], initial: f64) -> Option<f64> {
    let last = log.last()?;
    if last.round.0 == 0 {
        return Some(initial);
    }
    logged_clip(&last.params, NEXT_CLIP_KEY)
}

/// Why a device refuses a task or a round.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrivacyRefusal {
    /// The task has no DP, and the owner set a limit.
    #[error(
        "the task has no differential privacy and this device takes part only in tasks with \
         epsilon at most {limit}; remove --max-epsilon to train for tasks without DP"
    )]
    NoPrivacy {
        /// The owner's limit.
        limit: f64,
    },
    /// The task's budget is above the limit.
    #[error(
        "the task's privacy budget epsilon = {budget} is above this device's limit {limit}; \
         raise --max-epsilon to take part"
    )]
    BudgetAboveLimit {
        /// ε budget, as the device planned it.
        budget: f64,
        /// The owner's limit.
        limit: f64,
    },
    /// The round log records more ε than allowed.
    #[error(
        "the task's round log records epsilon = {logged} spent, above {bound} ({what}); not \
         taking part"
    )]
    LoggedAbove {
        /// The ε in the log.
        logged: f64,
        /// The bound it exceeds.
        bound: f64,
        /// Which bound: the device's limit or the task's budget.
        what: &'static str,
    },
    /// The log already holds every round the budget allows.
    #[error(
        "the task's round log already holds {rounds} rounds, all that its privacy budget allows \
         ({max_rounds}); not taking part"
    )]
    BudgetSpent {
        /// Rounds in the log.
        rounds: u64,
        /// The plan's limit.
        max_rounds: u64,
    },
    /// The section does not plan on this device.
    #[error("the task's [privacy] section does not plan on this device: {0}")]
    Plan(#[from] PrivacyConfigError),
    /// The model spec has no parameter count.
    #[error("the task's model cannot be sized ({0}); not taking part")]
    Model(#[from] cohort_protocol::model::SpecError),
    /// The privacy plan cannot run for this model on this device.
    #[error("the task's privacy plan cannot run on this device ({0}); not taking part")]
    Unrunnable(#[from] crate::privacy::PrivacyRoundError),
    /// The round's encoding parameters are invalid.
    #[error("round {round}: the round's encoding is invalid ({source}); refusing it")]
    BadEncoding {
        /// The round id.
        round: u64,
        /// What the quantizer refused.
        source: cohort_aggregation::encoding::EncodingError,
    },
    /// Adaptive clipping: the round's clip is not the one the task's round log sets for it.
    #[error(
        "round {round}: the clip is {got}, but the task's round log sets {logged} for this \
         round; refusing it"
    )]
    ClipNotLogged {
        /// The round id.
        round: u64,
        /// The round's clip.
        got: f64,
        /// The clip the log's last entry sets (as the round's quantizer range).
        logged: f64,
    },
    /// The round's parameters give less noise than the task declares.
    #[error(
        "round {round}: {what} is {got}, the task declares {declared}: the round would have \
         less noise than the task's privacy plan; refusing it"
    )]
    RoundBelowDeclared {
        /// The round id.
        round: u64,
        /// Which parameter.
        what: &'static str,
        /// The round's value.
        got: f64,
        /// The declared value.
        declared: f64,
    },
}

/// A device's view of a task's DP: the plan it derived itself, and its codec.
#[derive(Debug, Clone)]
pub struct DevicePrivacy {
    privacy: TaskPrivacy,
    dim: usize,
    /// Adaptive clipping: the clip the round log sets for the next round, when it says.
    logged_clip: Option<f64>,
}

/// Checks a task before taking part (see the module docs); `None` when the task has no DP
/// and no limit is set.
pub fn check_task(
    plan: &TaskPlan,
    log: &[RoundLogEntry],
    max_epsilon: Option<f64>,
) -> Result<Option<DevicePrivacy>, PrivacyRefusal> {
    let Some(spec) = &plan.privacy else {
        return match max_epsilon {
            Some(limit) => Err(PrivacyRefusal::NoPrivacy { limit }),
            None => Ok(None),
        };
    };
    if !spec.config.enabled() {
        return match max_epsilon {
            Some(limit) => Err(PrivacyRefusal::NoPrivacy { limit }),
            None => Ok(None),
        };
    }
    let dim = plan.model.num_parameters()?;
    let shape = TaskShape {
        model_dim: dim,
        clients_per_round: spec.clients_per_round,
        min_survivors: spec.min_survivors,
        population: None,
    };
    let Some(privacy_plan) = spec.config.plan(&shape)? else {
        return match max_epsilon {
            Some(limit) => Err(PrivacyRefusal::NoPrivacy { limit }),
            None => Ok(None),
        };
    };
    check_budget(&privacy_plan, log, max_epsilon)?;
    let logged_clip = privacy_plan
        .adaptive_clip
        .and_then(|_| next_clip_from_log(log, privacy_plan.clip));
    let privacy = TaskPrivacy::new(privacy_plan, dim)?;
    Ok(Some(DevicePrivacy {
        privacy,
        dim,
        logged_clip,
    }))
}

fn check_budget(
    plan: &PrivacyPlan,
    log: &[RoundLogEntry],
    max_epsilon: Option<f64>,
) -> Result<(), PrivacyRefusal> {
    if let Some(limit) = max_epsilon
        && plan.epsilon_budget > limit
    {
        return Err(PrivacyRefusal::BudgetAboveLimit {
            budget: plan.epsilon_budget,
            limit,
        });
    }
    let rounds = log.iter().filter(|e| e.round.0 > 0).count() as u64;
    if let Some(logged) = log.iter().rev().find_map(|e| epsilon_spent_of(&e.params)) {
        // The log's numbers are the coordinator's; a tiny float difference is not a breach.
        let slack = 1e-9 * plan.epsilon_budget.max(1.0);
        if logged > plan.epsilon_budget + slack {
            return Err(PrivacyRefusal::LoggedAbove {
                logged,
                bound: plan.epsilon_budget,
                what: "the task's budget",
            });
        }
        if let Some(limit) = max_epsilon
            && logged > limit
        {
            return Err(PrivacyRefusal::LoggedAbove {
                logged,
                bound: limit,
                what: "this device's limit",
            });
        }
    }
    if !plan.round_fits(rounds) {
        return Err(PrivacyRefusal::BudgetSpent {
            rounds,
            max_rounds: plan.max_rounds,
        });
    }
    Ok(())
}

impl DevicePrivacy {
    /// The plan the device derived.
    pub fn plan(&self) -> &PrivacyPlan {
        self.privacy.plan()
    }

    /// Checks a round's parameters against the plan (see the module docs) and returns the
    /// codec to encode this device's update with.
    pub fn check_round(
        &self,
        task: &str,
        config: &RoundConfig,
    ) -> Result<PrivacyCodec, PrivacyRefusal> {
        let params = &config.params;
        let round = config.round_id.0;
        let below = |what, got: f64, declared: f64| PrivacyRefusal::RoundBelowDeclared {
            round,
            what,
            got,
            declared,
        };
        if params.encoding.max_weight != 1 {
            return Err(below(
                "the largest weight",
                f64::from(params.encoding.max_weight),
                1.0,
            ));
        }
        let plan = self.privacy.plan();
        if let Some(d) = &plan.distributed
            && params.min_survivors < d.min_survivors
        {
            return Err(below(
                "the release threshold q_min",
                f64::from(params.min_survivors),
                f64::from(d.min_survivors),
            ));
        }
        // Distributed mode wraps each coordinate into Z_{2^b}; a narrower ring would drop bits
        // of the sum (not a privacy loss, but a wrong release).
        if let Some(d) = &plan.distributed
            && params.encoding.ring_bits < d.bits
        {
            return Err(below(
                "the ring's bits",
                f64::from(params.encoding.ring_bits),
                f64::from(d.bits),
            ));
        }
        if plan.distributed.is_none() && plan.adaptive_clip.is_none() {
            let declared = plan.clip as f32;
            if params.encoding.clip > declared {
                return Err(below(
                    "the clip",
                    f64::from(params.encoding.clip),
                    f64::from(declared),
                ));
            }
        }
        // Adaptive clipping: the clip moves each round, by the log (hash-chained, signed).
        if let Some(logged) = self.logged_clip {
            let expected = quantizer_clip(logged);
            if params.encoding.clip != expected {
                return Err(PrivacyRefusal::ClipNotLogged {
                    round,
                    got: f64::from(params.encoding.clip),
                    logged: f64::from(expected),
                });
            }
        }
        let quantizer = Quantizer::new(params.encoding)
            .map_err(|source| PrivacyRefusal::BadEncoding { round, source })?;
        let codec = self
            .privacy
            .codec_with(quantizer, rotation_seed(task, round));
        // An evaluated round carries the evaluation's limbs beside the DP encoding, outside its
        // rotation and noise (`crate::evaluation`, docs/privacy.md).
        let evaluation = if config.evaluate {
            EvaluationLayout::for_round(params).map_or(0, |l| l.len())
        } else {
            0
        };
        let expected = codec.vector_len_for(self.dim) + evaluation;
        if params.vector_len as usize != expected {
            return Err(below(
                "the masked vector's length",
                f64::from(params.vector_len),
                expected as f64,
            ));
        }
        Ok(codec)
    }
}
