//! Central mode: each client clips its update to an L2 norm before encoding and masking; the
//! coordinator, which is trusted with the unmasked sum, adds noise to it.
//!
//! - Clients: [`clip_to_norm`]. With adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy,
//!   "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021), each client also
//!   sends whether its update was within the clip, as one more coordinate of the masked vector
//!   ([`clip_bit_element`]: +1 within, −1 beyond).
//! - Coordinator: [`CentralNoise`] adds exact discrete Gaussian noise ([`crate::sampler`]) to
//!   the integer sum before it is decoded (no floating-point noise), and to the bit count;
//!   [`AdaptiveClip`] moves the clip towards the target quantile of the update norms.
//!
//! **Sensitivity.** The encoding (`cohort_aggregation::encoding::Quantizer`, weight 1) scales a
//! clipped update by s and rounds each coordinate up or down, so the integer vector's L2 norm
//! is at most s·c + √d: one client's whole contribution, replaced by zero, moves the sum by at
//! most Δ = s·c + √d. The noise is σ = z·Δ, so the release is the discrete Gaussian mechanism
//! with noise multiplier z ([`crate::accountant::Mechanism::DiscreteGaussian`]). With the clip
//! bit, the pair (values, Σ bits) has noise z_v·Δ and 2σ_b against sensitivities Δ and 1, whose
//! RDP is that of one Gaussian with z^(−2) = z_v^(−2) + (2σ_b)^(−2) (Andrew et al., Theorem 1;
//! [`value_noise_multiplier`]).
//!
//! When z·Δ exceeds the exact sampler's range (σ above 2^25 grid units: small cohorts have fine
//! grids), the sum is first floored to a grid 2^k times coarser. Flooring moves each coordinate
//! by less than one coarse step, so the coarse sum's sensitivity is Δ/2^k + √d; the noise is
//! sized for that. The extra √d·2^k/Δ is below 10⁻⁴ relatively for d ≤ 10⁷.
//!
//! Against whom: anyone who sees the released (noisy) sum or the models after it; not against
//! the coordinator itself, which sees the sum before noise. That is distributed mode's job
//! ([`crate::distributed`]).

use rand_core::CryptoRng;

use crate::keystream::NoiseRng;
use crate::sampler::{DiscreteGaussian, MAX_VARIANCE, Variance};

/// Why clipping, noise or the clip update could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CentralError {
    /// A parameter is out of range.
    #[error("{name} = {value} is out of range: {reason}")]
    BadParameter {
        /// The parameter.
        name: &'static str,
        /// Its value.
        value: f64,
        /// What it must be.
        reason: &'static str,
    },
    /// A coordinate of the update is NaN or infinite.
    #[error(
        "coordinate {index} of the update is not finite; the local training diverged, drop this update"
    )]
    NotFinite {
        /// The first such coordinate.
        index: usize,
    },
    /// The clip-bit count's noise is too small for the noise multiplier.
    #[error(
        "count_stddev {count_stddev} is too small for noise multiplier {noise_multiplier}: \
         2·count_stddev must exceed it (Andrew et al. suggest clients_per_round / 20)"
    )]
    CountNoiseTooSmall {
        /// z.
        noise_multiplier: f64,
        /// σ_b.
        count_stddev: f64,
    },
    /// The sum has the wrong length.
    #[error("expected a sum of {expected} coordinates, got {got}")]
    WrongLength {
        /// The expected length.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// The noise for the clip bit was asked for without adaptive clipping.
    #[error("the clip-bit count has no noise configured: adaptive clipping is off")]
    NoCountNoise,
    /// No clients contributed.
    #[error("a sum of 0 contributors has no unclipped fraction")]
    NoContributors,
}

/// What [`clip_to_norm`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipOutcome {
    /// The update's L2 norm before clipping.
    pub norm: f64,
    /// Whether the norm was at most the clip (the adaptive-clipping bit).
    pub below_clip: bool,
}

/// Scales `update` in place to L2 norm at most `clip` (unchanged if already within).
pub fn clip_to_norm(update: &mut [f32], clip: f64) -> Result<ClipOutcome, CentralError> {
    positive("clip", clip)?;
    if let Some(index) = update.iter().position(|v| !v.is_finite()) {
        return Err(CentralError::NotFinite { index });
    }
    let norm = update
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt();
    let below_clip = norm <= clip;
    if !below_clip {
        // Rounded down so that float rounding cannot leave the norm above the clip.
        let factor = (clip / norm) as f32 * (1.0 - f32::EPSILON);
        update.iter_mut().for_each(|v| *v *= factor);
    }
    Ok(ClipOutcome { norm, below_clip })
}

/// The clip bit as a ring element: +1 for an update within the clip, −1 (two's complement)
/// beyond. Centred so that removing a client moves the count by at most 1 either way.
pub fn clip_bit_element(below_clip: bool) -> u32 {
    if below_clip { 1 } else { u32::MAX }
}

/// z_v, the noise multiplier of the update values, given the total noise multiplier z and the
/// count noise σ_b: (z^(−2) − (2σ_b)^(−2))^(−1/2) (Andrew et al. 2021, Theorem 1).
pub fn value_noise_multiplier(
    noise_multiplier: f64,
    count_stddev: f64,
) -> Result<f64, CentralError> {
    positive("noise_multiplier", noise_multiplier)?;
    positive("count_stddev", count_stddev)?;
    let rest = noise_multiplier.powi(-2) - (2.0 * count_stddev).powi(-2);
    if rest <= 0.0 {
        return Err(CentralError::CountNoiseTooSmall {
            noise_multiplier,
            count_stddev,
        });
    }
    Ok(rest.powf(-0.5))
}

/// The adaptive clip (Andrew et al. 2021, geometric update): after each round,
/// c ← c · exp(−η (b̄ − γ)), with b̄ the noisy fraction of clients within the clip and γ the
/// target quantile. Deterministic given b̄, which is already private: post-processing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveClip {
    clip: f64,
    target_quantile: f64,
    learning_rate: f64,
}

impl AdaptiveClip {
    /// Starts at `initial_clip`.
    pub fn new(
        initial_clip: f64,
        target_quantile: f64,
        learning_rate: f64,
    ) -> Result<Self, CentralError> {
        positive("clip", initial_clip)?;
        if !(target_quantile > 0.0 && target_quantile < 1.0) {
            return Err(CentralError::BadParameter {
                name: "target_quantile",
                value: target_quantile,
                reason: "in (0, 1)",
            });
        }
        positive("learning_rate", learning_rate)?;
        Ok(Self {
            clip: initial_clip,
            target_quantile,
            learning_rate,
        })
    }

    /// The clip for the next round.
    pub fn clip(&self) -> f64 {
        self.clip
    }

    /// Continues from `clip` (a clip this task's state reached before, e.g. read back from the
    /// round log after a restart) with the same quantile and learning rate. Refused unless
    /// finite and positive; the state is then unchanged.
    pub fn resume_at(&mut self, clip: f64) -> Result<(), CentralError> {
        positive("clip", clip)?;
        self.clip = clip;
        Ok(())
    }

    /// Updates the clip from the round's noisy unclipped fraction (which may lie outside
    /// [0, 1], being noisy; it is used as is, as in the paper).
    pub fn update(&mut self, unclipped_fraction: f64) {
        if unclipped_fraction.is_finite() {
            let next = self.clip
                * (-self.learning_rate * (unclipped_fraction - self.target_quantile)).exp();
            if next.is_finite() && next > 0.0 {
                self.clip = next;
            }
        }
    }
}

/// The coordinator's noise for one round of central mode. See the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct CentralNoise {
    dim: usize,
    /// k: the sum is floored to multiples of 2^k before the noise.
    coarsening: u32,
    values: DiscreteGaussian,
    count: Option<DiscreteGaussian>,
    /// s: grid points per update unit.
    scale: f64,
    /// Δ in the (possibly coarsened) grid the noise is added in.
    sensitivity: f64,
}

impl CentralNoise {
    /// The noise for sums of `dim` coordinates encoded with `quantizer_scale` (the Quantizer's
    /// s, weight 1) from updates clipped to `clip`, with value noise multiplier
    /// `value_noise_multiplier` (z, or [`value_noise_multiplier`] with adaptive clipping) and,
    /// with adaptive clipping, `count_stddev` σ_b for the clip-bit count.
    pub fn new(
        value_noise_multiplier: f64,
        quantizer_scale: f64,
        clip: f64,
        dim: usize,
        count_stddev: Option<f64>,
    ) -> Result<Self, CentralError> {
        positive("noise_multiplier", value_noise_multiplier)?;
        positive("quantizer_scale", quantizer_scale)?;
        positive("clip", clip)?;
        if dim == 0 {
            return Err(CentralError::BadParameter {
                name: "dim",
                value: 0.0,
                reason: "at least one coordinate",
            });
        }
        let root_d = (dim as f64).sqrt();
        let fine = quantizer_scale * clip + root_d;
        let mut coarsening = 0u32;
        let mut sensitivity = fine;
        while (value_noise_multiplier * sensitivity).powi(2) > MAX_VARIANCE {
            coarsening += 1;
            if coarsening > 40 {
                // Unreachable for z below about 10^14; refused rather than looped on.
                return Err(CentralError::BadParameter {
                    name: "noise_multiplier",
                    value: value_noise_multiplier,
                    reason: "too large for the exact sampler even on a 2^40 times coarser grid",
                });
            }
            sensitivity = fine / 2f64.powi(coarsening as i32) + root_d;
        }
        let variance =
            Variance::at_least((value_noise_multiplier * sensitivity).powi(2)).map_err(|_| {
                CentralError::BadParameter {
                    name: "noise_multiplier",
                    value: value_noise_multiplier,
                    reason: "gives a noise variance outside the exact sampler's range",
                }
            })?;
        let count = match count_stddev {
            None => None,
            Some(sb) => {
                positive("count_stddev", sb)?;
                Some(DiscreteGaussian::new(
                    Variance::at_least(4.0 * sb * sb).map_err(|_| CentralError::BadParameter {
                        name: "count_stddev",
                        value: sb,
                        reason: "outside the exact sampler's range",
                    })?,
                ))
            }
        };
        Ok(Self {
            dim,
            coarsening,
            values: DiscreteGaussian::new(variance),
            count,
            scale: quantizer_scale,
            sensitivity,
        })
    }

    /// Δ in the grid the noise is added in (s·c + √d, or Δ/2^k + √d when coarsened).
    pub fn sensitivity(&self) -> f64 {
        self.sensitivity
    }

    /// k: how many halvings of the grid the noise needed (0 usually).
    pub fn coarsening(&self) -> u32 {
        self.coarsening
    }

    /// The noise's standard deviation per coordinate, in update units.
    pub fn stddev(&self) -> f64 {
        self.values.variance().sigma() * 2f64.powi(self.coarsening as i32) / self.scale
    }

    /// The noisy sum in update units: `sum` holds the `dim` value coordinates of the unmasked
    /// sum (two's complement, as `Quantizer::decode_sum` reads them); each is floored to the
    /// noise grid, an exact discrete Gaussian is added, and the result divided by the scale.
    /// The noise is drawn from a ChaCha12 stream seeded from `rng`, which must be a
    /// cryptographic RNG seeded from the operating system.
    pub fn noisy_sum<R: CryptoRng + ?Sized>(
        &self,
        sum: &[u32],
        rng: &mut R,
    ) -> Result<Vec<f32>, CentralError> {
        if sum.len() != self.dim {
            return Err(CentralError::WrongLength {
                expected: self.dim,
                got: sum.len(),
            });
        }
        let mut noise_rng = NoiseRng::from_rng(rng);
        let step = 2f64.powi(self.coarsening as i32) / self.scale;
        let mut noise = vec![0i64; 1024];
        let mut out = Vec::with_capacity(sum.len());
        for chunk in sum.chunks(1024) {
            let noise = &mut noise[..chunk.len()];
            self.values.fill(noise, &mut noise_rng);
            for (&v, &e) in chunk.iter().zip(noise.iter()) {
                // Arithmetic shift: the floor, also for negative sums.
                let coarse = i64::from(v as i32) >> self.coarsening;
                out.push(((coarse + e) as f64 * step) as f32);
            }
        }
        Ok(out)
    }

    /// The noisy fraction of `contributors` clients whose update was within the clip, from the
    /// unmasked sum of their [`clip_bit_element`]s.
    pub fn noisy_unclipped_fraction<R: CryptoRng + ?Sized>(
        &self,
        bit_sum: u32,
        contributors: u32,
        rng: &mut R,
    ) -> Result<f64, CentralError> {
        let count = self.count.as_ref().ok_or(CentralError::NoCountNoise)?;
        if contributors == 0 {
            return Err(CentralError::NoContributors);
        }
        let noisy = i64::from(bit_sum as i32) + count.sample(rng);
        // Σ(2b − 1) = 2·#within − contributors.
        Ok((noisy as f64 / f64::from(contributors) + 1.0) / 2.0)
    }
}

fn positive(name: &'static str, value: f64) -> Result<(), CentralError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(CentralError::BadParameter {
            name,
            value,
            reason: "a finite positive number",
        })
    }
}
