//! Differential privacy in a task's rounds: the `[privacy]` section planned against the task's
//! shape ([`TaskConfig::privacy_plan`]), and per round how updates are encoded on devices and
//! released on the server ([`PrivacyCodec`]), shared by the coordinator and the simulator.
//!
//! The masked vector of a DP round (every update has weight 1):
//! - **central**: the update clipped to the L2 norm `c` ([`central::clip_to_norm`]) and encoded
//!   by the round's [`Quantizer`] (its coordinate range is `c`, weight 1): `d` values, then
//!   with adaptive clipping the clip bit (±1), then the weight element. The server adds
//!   exact discrete Gaussian noise to the unmasked integer sum ([`CentralNoise`]) and to the
//!   clip-bit count, and divides by the number of contributors;
//! - **distributed**: the DDGauss encoding ([`DistributedEncoder`]: clip, randomised Hadamard
//!   rotation with the public per-round seed [`rotation_seed`], scaling, conditional
//!   rounding, the device's discrete Gaussian share, wrap into Z_{2^b}): `padded_dim` values,
//!   then the weight element. The server never adds noise: it decodes the sum of the shares
//!   of at least q_min survivors (fewer are refused) and divides by their number.

use std::sync::Arc;

use cohort_aggregation::encoding::{EncodingError, Quantizer};
use cohort_privacy::central::{self, AdaptiveClip, CentralError, CentralNoise};
use cohort_privacy::config::{ClipMode, PrivacyConfig, PrivacyConfigError, PrivacyMode};
use cohort_privacy::distributed::{DistributedEncoder, DistributedError};
use cohort_privacy::plan::{PrivacyPlan, TaskShape};
use cohort_privacy::rotation::padded_len;
use cohort_protocol::PrivacySpec;
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, TaskConfig, invalid};
use crate::plan::{PlanError, RoundPlan};

/// The length of a DP round's masked vector for a model of `model_len` parameters, or `None`
/// without DP (then `cohort_aggregation::encoding::vector_len`).
pub fn vector_len(privacy: &PrivacyConfig, model_len: usize) -> Option<usize> {
    match privacy.mode {
        PrivacyMode::None => None,
        PrivacyMode::Central => {
            let adaptive = privacy
                .clip
                .as_ref()
                .is_some_and(|c| c.mode == ClipMode::Adaptive);
            Some(model_len + 1 + usize::from(adaptive))
        }
        // An unpaddable dimension is refused by the plan; the length is then never used.
        PrivacyMode::Distributed => Some(padded_len(model_len).unwrap_or(model_len) + 1),
    }
}

/// The public seed of a round's random rotation: SHA-256 of a label, the task id and the
/// round id. Every device and the server derive the same seed; it needs no secrecy.
pub fn rotation_seed(task: &str, round_id: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cohort dp rotation v1");
    h.update((task.len() as u64).to_le_bytes());
    h.update(task.as_bytes());
    h.update(round_id.to_le_bytes());
    h.finalize().into()
}

fn privacy_error(e: PrivacyConfigError) -> ConfigError {
    let key = match e.key() {
        // The task's shape (from outside the section) is at fault.
        "task" => "selection.clients_per_round",
        key => key,
    };
    ConfigError::Privacy {
        key: key.to_string(),
        source: e,
    }
}

impl TaskConfig {
    /// The `[privacy]` checks of [`TaskConfig::validate`]: the section alone, what DP needs of
    /// the rest of the task (SecAgg+, weight 1), and, when the model is complete, the plan
    /// (δ against the cohort, the budget against the noise, bits against the cohort).
    pub(crate) fn validate_privacy(&self) -> Result<(), ConfigError> {
        self.privacy.validate().map_err(privacy_error)?;
        if !self.privacy.enabled() {
            return Ok(());
        }
        if !self.secagg.enabled {
            return Err(invalid(
                "secagg.enabled",
                false,
                "true with differential privacy ([privacy] mode central or distributed): \
                 clipped updates and noise shares travel masked",
            ));
        }
        if self.secagg.max_weight != 1 {
            return Err(invalid(
                "secagg.max_weight",
                self.secagg.max_weight,
                "1 with differential privacy: every update has weight 1, so that one client's \
                 influence is bounded by the clip (remove the key)",
            ));
        }
        if self.model.is_complete() {
            let dim = self.model_spec(None)?.num_parameters().unwrap_or(1).max(1);
            self.privacy_plan(dim, None)?;
        }
        Ok(())
    }

    /// What the privacy plan needs to know of this task for a model of `model_dim` parameters
    /// drawn from `population` clients (when known): at most `clients_per_round` updates are
    /// summed (the over-selection cut-off), and q_min is the smallest quorum any cohort the
    /// task may start a round with can release.
    pub fn privacy_shape(
        &self,
        model_dim: usize,
        population: Option<u64>,
    ) -> Result<TaskShape, ConfigError> {
        let mut q_min = u32::MAX;
        let smallest = self.min_cohort();
        let largest = self.selection.selection_size();
        for selected in [smallest, self.selection.clients_per_round, largest] {
            if selected < smallest || selected > largest {
                continue;
            }
            let plan =
                RoundPlan::new(self, selected, model_dim).map_err(|e| e.into_config_error())?;
            q_min = q_min.min(plan.quorum);
        }
        Ok(TaskShape {
            model_dim,
            clients_per_round: self.selection.clients_per_round,
            min_survivors: q_min.min(self.selection.clients_per_round),
            population,
        })
    }

    /// What a device needs to re-plan the task's DP ([`crate::device_privacy`]) for a model of
    /// `model_dim` parameters; `None` without DP.
    pub fn privacy_spec(&self, model_dim: usize) -> Result<Option<Box<PrivacySpec>>, ConfigError> {
        if !self.privacy.enabled() {
            return Ok(None);
        }
        let shape = self.privacy_shape(model_dim, None)?;
        Ok(Some(Box::new(PrivacySpec {
            config: self.privacy.clone(),
            clients_per_round: shape.clients_per_round,
            min_survivors: shape.min_survivors,
        })))
    }

    /// The task's privacy plan for a model of `model_dim` parameters and `population` clients
    /// (δ must be below 1/population, or below 1/clients_per_round when unknown); `None`
    /// without DP. Refuses bad input naming the key ([`ConfigError::Privacy`]).
    pub fn privacy_plan(
        &self,
        model_dim: usize,
        population: Option<u64>,
    ) -> Result<Option<PrivacyPlan>, ConfigError> {
        if !self.privacy.enabled() {
            return Ok(None);
        }
        let shape = self.privacy_shape(model_dim, population)?;
        self.privacy.plan(&shape).map_err(privacy_error)
    }
}

/// Why a DP encoding or release failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrivacyRoundError {
    /// Central mode: clipping or noise failed.
    #[error("central DP: {0}")]
    Central(#[from] CentralError),
    /// Distributed mode: the encoding or decoding failed.
    #[error("distributed DP: {0}")]
    Distributed(#[from] DistributedError),
    /// The quantizer refused the update.
    #[error("encoding: {0}")]
    Encoding(#[from] EncodingError),
    /// The released sum has the wrong length.
    #[error("the released sum has {got} elements, the round's DP encoding {expected}")]
    WrongLength {
        /// Expected.
        expected: usize,
        /// Got.
        got: usize,
    },
    /// The weight element does not count the contributors: some input was not an honest DP
    /// encoding (weight 1), or the sum wrapped.
    #[error(
        "the sum's weight element is {weight}, not the {contributors} contributors (each \
         update has weight 1 with DP); discard the sum"
    )]
    WeightMismatch {
        /// The weight element.
        weight: u32,
        /// The contributors.
        contributors: u32,
    },
    /// No contributors.
    #[error("a sum of 0 contributors has no mean")]
    NoContributors,
}

/// A task's DP state across rounds: the plan, distributed mode's encoder (derived once), and
/// adaptive clipping's clip.
#[derive(Debug, Clone)]
pub struct TaskPrivacy {
    plan: PrivacyPlan,
    dim: usize,
    encoder: Option<Arc<DistributedEncoder>>,
    adaptive: Option<AdaptiveClip>,
}

impl TaskPrivacy {
    /// From a plan ([`TaskConfig::privacy_plan`]) for a model of `model_dim` parameters.
    pub fn new(plan: PrivacyPlan, model_dim: usize) -> Result<Self, PrivacyRoundError> {
        let encoder = plan
            .distributed
            .clone()
            .map(|p| Arc::new(DistributedEncoder::new(p)));
        let adaptive = match &plan.adaptive_clip {
            Some(a) => Some(AdaptiveClip::new(
                plan.clip,
                a.target_quantile,
                a.learning_rate,
            )?),
            None => None,
        };
        Ok(Self {
            plan,
            dim: model_dim,
            encoder,
            adaptive,
        })
    }

    /// The plan.
    pub fn plan(&self) -> &PrivacyPlan {
        &self.plan
    }

    /// The L2 clip of the next round (as the quantizer's `f32` range, [`quantizer_clip`]).
    pub fn round_clip(&self) -> f32 {
        quantizer_clip(self.adaptive.as_ref().map_or(self.plan.clip, |a| a.clip()))
    }

    /// Adaptive clipping's state: the L2 clip of the next round, exactly; `None` without
    /// adaptive clipping. The coordinator logs it after each round (`NEXT_CLIP_KEY` of
    /// [`crate::device_privacy`]) so that a restart resumes from it.
    pub fn adaptive_clip(&self) -> Option<f64> {
        self.adaptive.as_ref().map(|a| a.clip())
    }

    /// Resumes adaptive clipping at `clip`, the state a previous run of the task reached (read
    /// back from its round log after a restart); returns whether the task clips adaptively
    /// (without adaptive clipping nothing changes). A clip that is not finite and positive is
    /// refused and changes nothing.
    pub fn resume_adaptive_clip(&mut self, clip: f64) -> Result<bool, PrivacyRoundError> {
        match self.adaptive.as_mut() {
            Some(a) => {
                a.resume_at(clip)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The codec of one round: `round` must have been planned with [`Self::round_clip`]
    /// ([`RoundPlan::with_clip`]); `round_seed` is [`rotation_seed`] of the round.
    pub fn codec(&self, round: &RoundPlan, round_seed: [u8; 32]) -> PrivacyCodec {
        self.codec_with(round.quantizer.clone(), round_seed)
    }

    /// [`Self::codec`] with the round's quantizer given ([`Self::round_quantizer`]).
    pub fn codec_with(&self, quantizer: Quantizer, round_seed: [u8; 32]) -> PrivacyCodec {
        match &self.encoder {
            Some(encoder) => PrivacyCodec::Distributed {
                encoder: encoder.clone(),
                round_seed,
            },
            None => PrivacyCodec::Central {
                quantizer,
                adaptive: self.plan.adaptive_clip.is_some(),
            },
        }
    }

    /// The next round's quantizer: the task's, with [`Self::round_clip`] as its range (what
    /// [`RoundPlan::with_clip`] gives every round of any cohort).
    pub fn round_quantizer(&self, task: &TaskConfig) -> Result<Quantizer, PlanError> {
        let clients = task.selection.clients_per_round;
        crate::plan::quantizer(task)?
            .with_clip(self.round_clip())
            .map_err(|source| PlanError::Encoding {
                clients,
                max_weight: 1,
                source,
            })
    }

    /// Distributed mode: the bits of its ring Z_{2^b} (`DistributedParams::bits`), which a
    /// round's plan takes as its ring ([`RoundPlan::with_distributed_bits`]); `None` in
    /// central mode.
    pub fn distributed_bits(&self) -> Option<u8> {
        self.encoder.as_ref().map(|e| e.params().bits)
    }

    /// A round's plan with this task's DP applied: the quantizer's range is the round's L2
    /// clip ([`RoundPlan::with_clip`]) and, in distributed mode, the ring is the DP
    /// encoding's ([`RoundPlan::with_distributed_bits`]).
    pub fn plan_round(&self, plan: RoundPlan) -> Result<RoundPlan, PlanError> {
        let plan = plan.with_clip(self.round_clip())?;
        match self.distributed_bits() {
            Some(bits) => plan.with_distributed_bits(bits),
            None => Ok(plan),
        }
    }

    /// The server's release of a round's unmasked `sum` of `contributors` inputs: the noisy
    /// mean update (central: noise added here; distributed: decoded), and, with adaptive
    /// clipping, the next round's clip updated from the noisy clip-bit count. `rng` must be a
    /// cryptographic RNG seeded from the operating system (it draws the central noise).
    pub fn release<R: CryptoRng + ?Sized>(
        &mut self,
        codec: &PrivacyCodec,
        sum: &[u32],
        contributors: u32,
        rng: &mut R,
    ) -> Result<Release, PrivacyRoundError> {
        if contributors == 0 {
            return Err(PrivacyRoundError::NoContributors);
        }
        let expected = codec.vector_len_for(self.model_dim());
        if sum.len() != expected {
            return Err(PrivacyRoundError::WrongLength {
                expected,
                got: sum.len(),
            });
        }
        let weight = sum[sum.len() - 1];
        if weight != contributors {
            return Err(PrivacyRoundError::WeightMismatch {
                weight,
                contributors,
            });
        }
        let count = contributors as f32;
        match codec {
            PrivacyCodec::Central {
                quantizer,
                adaptive,
            } => {
                let d = self.model_dim();
                let clip = f64::from(quantizer.params().clip);
                let noise = CentralNoise::new(
                    self.plan.value_noise_multiplier(),
                    quantizer.scale(),
                    clip,
                    d,
                    self.plan.adaptive_clip.map(|a| a.count_stddev),
                )?;
                let mut mean = noise.noisy_sum(&sum[..d], rng)?;
                mean.iter_mut().for_each(|v| *v /= count);
                let unclipped_fraction = if *adaptive {
                    let f = noise.noisy_unclipped_fraction(sum[d], contributors, rng)?;
                    if let Some(a) = self.adaptive.as_mut() {
                        a.update(f);
                    }
                    Some(f)
                } else {
                    None
                };
                Ok(Release {
                    mean,
                    noise_stddev: noise.stddev() / f64::from(contributors),
                    unclipped_fraction,
                })
            }
            PrivacyCodec::Distributed {
                encoder,
                round_seed,
            } => {
                let padded = encoder.params().padded_dim;
                let mut mean = encoder.decode_sum(&sum[..padded], contributors, round_seed)?;
                mean.iter_mut().for_each(|v| *v /= count);
                Ok(Release {
                    mean,
                    noise_stddev: encoder.params().noise_stddev(contributors)
                        / f64::from(contributors),
                    unclipped_fraction: None,
                })
            }
        }
    }

    fn model_dim(&self) -> usize {
        self.dim
    }
}

/// The `f32` coordinate range of a round's quantizer for an L2 clip of `clip`: what
/// [`TaskPrivacy::round_clip`] gives the coordinator's round and what a device expects from a
/// logged clip ([`crate::device_privacy`]).
pub fn quantizer_clip(clip: f64) -> f32 {
    (clip as f32).max(f32::MIN_POSITIVE)
}

/// What the server releases from a DP round.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    /// The noisy mean update.
    pub mean: Vec<f32>,
    /// The standard deviation of the mean's noise per coordinate, in update units.
    pub noise_stddev: f64,
    /// Adaptive clipping: the noisy fraction of updates within the clip.
    pub unclipped_fraction: Option<f64>,
}

/// How one DP round's updates are encoded on devices and released on the server.
#[derive(Debug, Clone)]
pub enum PrivacyCodec {
    /// Central mode: L2 clip, the round's quantizer (weight 1), the clip bit when adaptive.
    Central {
        /// The round's quantizer (coordinate range = the round's L2 clip).
        quantizer: Quantizer,
        /// Whether the clip bit travels.
        adaptive: bool,
    },
    /// Distributed mode: DDGauss.
    Distributed {
        /// The task's encoder.
        encoder: Arc<DistributedEncoder>,
        /// The round's public rotation seed.
        round_seed: [u8; 32],
    },
}

impl PrivacyCodec {
    /// The masked vector's length for a model of `model_len` parameters.
    pub fn vector_len_for(&self, model_len: usize) -> usize {
        match self {
            PrivacyCodec::Central { adaptive, .. } => model_len + 1 + usize::from(*adaptive),
            PrivacyCodec::Distributed { encoder, .. } => encoder.params().padded_dim + 1,
        }
    }

    /// A device's encoding of its update (see the module docs). `rng` must be a cryptographic
    /// RNG seeded from the operating system: whoever predicts it can remove distributed
    /// mode's noise share.
    pub fn encode<R: CryptoRng + ?Sized>(
        &self,
        update: &[f32],
        rng: &mut R,
    ) -> Result<Vec<u32>, PrivacyRoundError> {
        match self {
            PrivacyCodec::Central {
                quantizer,
                adaptive,
            } => {
                let mut clipped = update.to_vec();
                let clip = f64::from(quantizer.params().clip);
                let outcome = central::clip_to_norm(&mut clipped, clip)?;
                let mut encoded = quantizer.encode(&clipped, 1, rng)?;
                if *adaptive {
                    let weight = encoded.pop().unwrap_or(1);
                    encoded.push(central::clip_bit_element(outcome.below_clip));
                    encoded.push(weight);
                }
                Ok(encoded)
            }
            PrivacyCodec::Distributed {
                encoder,
                round_seed,
            } => {
                let mut ring = encoder.encode(update, round_seed, rng)?.ring;
                ring.push(1);
                Ok(ring)
            }
        }
    }
}
