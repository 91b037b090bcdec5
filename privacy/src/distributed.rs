//! Distributed mode: each client adds its share of the noise before masking, in the integer
//! ring, so the coordinator never sees a sum without noise (Kairouz, Liu, Steinke 2021, "The
//! Distributed Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation",
//! Algorithm 1).
//!
//! Client ([`DistributedEncoder::encode`]), for an update x of d coordinates:
//! 1. **clip** x to L2 norm c;
//! 2. **rotate**: pad to n = 2^⌈log₂ d⌉ and apply the randomised Hadamard transform of the
//!    round's public seed ([`crate::rotation`]);
//! 3. **scale** by s (the grid's resolution: one integer step is 1/s in update units);
//! 4. **round** conditionally ([`crate::rounding`]): to integers whose L2 norm is at most Δ₂;
//! 5. **noise**: add an exact discrete Gaussian N_Z(0, σ²) to each coordinate
//!    ([`crate::sampler`]), σ² = z²Δ₂²/q_min, so that the q_min survivors' shares together have
//!    variance z²Δ₂²: noise multiplier z against the true integer sensitivity;
//! 6. **wrap** into Z_{2^b}: the low b bits, as a `u32` ready for SecAgg+ masking in Z_{2^32}
//!    (2^b divides 2^32, so the masked sum reduced mod 2^b is the sum mod 2^b).
//!
//! Server ([`DistributedEncoder::decode_sum`]): reduce the unmasked sum mod 2^b, read it centred
//! in [−2^(b−1), 2^(b−1)), divide by s, rotate back, drop the padding. The result is the sum of
//! the survivors' clipped updates plus noise (and rounding error, and, rarely, a wrapped
//! coordinate).
//!
//! **Parameters** ([`DistributedParams::derive`]). The scale follows Kairouz et al.'s heuristic
//! (§4.4, as in their code): s is the largest value for which k standard deviations of every
//! coordinate of the noisy sum of `max_clients` clients stay inside the ring, treating the
//! rotated sum as sub-Gaussian,
//!
//! 2^b = 2k·√(c²m²/n + m(1/4 + σ²_real s²)) / (1/s),  m = max_clients,
//!
//! where σ_real ≈ z·c/√q_min is a client's noise in update units. The bits b are given or the
//! fewest for which the discretisation costs at most `max_noise_inflation` in noise: the decoded
//! sum's noise has standard deviation z·Δ₂/s (plus rounding), against z·c for central DP at the
//! same ε, and Δ₂/(s·c) → 1 as b grows.
//!
//! **Privacy.** Whatever the update, the rounded vector's norm is at most Δ₂, checked in exact
//! integer arithmetic; the noise is exact; wrapping and everything the server does afterwards
//! is post-processing. So the released sum is the distributed discrete Gaussian mechanism on an
//! integer vector of L2 sensitivity Δ₂ and L1 sensitivity Δ₁ = Δ₂·min(√n, Δ₂), with at least
//! q_min shares: [`DistributedParams::mechanism`] gives its accounting
//! ([`crate::accountant::DistributedGaussian`]). More survivors only add noise. Against whom:
//! a coordinator that follows SecAgg+ and sees only the unmasked sum; clients that collude with
//! it can subtract their own shares, so the guarantee then rests on the noise of the honest
//! survivors (q_min minus the colluders), which this module does not size for.

use rand::Rng;
use rand_core::CryptoRng;
use zeroize::Zeroize;

use crate::accountant::DistributedGaussian;
use crate::keystream::NoiseRng;
use crate::rotation::{RandomizedHadamard, RotationError, padded_len};
use crate::rounding::{self, RoundingError};
use crate::sampler::{DiscreteGaussian, Variance};

/// The fewest bits per coordinate [`DistributedParams::derive`] considers.
pub const MIN_BITS: u8 = 8;
/// The most bits per coordinate: the SecAgg+ ring's 32.
pub const MAX_BITS: u8 = 32;
/// The smallest noise share a client may add, in grid units. Below about 2, the sum of shares
/// is measurably not a discrete Gaussian (τ in the accounting grows past 10⁻¹³).
pub const MIN_LOCAL_SIGMA: f64 = 2.0;
/// Kairouz et al.'s β for conditional rounding, e^(−1/2): each rounding meets the bound with
/// probability at least 1 − β, and the bound is tighter than for smaller β.
pub const DEFAULT_BETA: f64 = 0.606_530_659_712_633_4;
/// Standard deviations of the sum kept inside the ring (Kairouz et al. use 4).
pub const DEFAULT_K_STDDEVS: f64 = 4.0;
/// The most the discretisation may add to the noise's standard deviation: 5%.
pub const DEFAULT_MAX_NOISE_INFLATION: f64 = 1.05;

/// The round's shape, as the distributed pipeline needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DistributedShape {
    /// d: the update's length.
    pub dim: usize,
    /// The most clients whose vectors can be summed (the cohort, including over-selection).
    pub max_clients: u32,
    /// q_min: the fewest survivors for which SecAgg+ releases the sum.
    pub min_survivors: u32,
}

/// The tunable settings (the `[privacy.distributed]` section, with defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistributedSettings {
    /// b, or `None` for the fewest that meet `max_noise_inflation`.
    pub bits: Option<u8>,
    /// β of conditional rounding, in [0, 1) (0: the deterministic bound c + √n).
    pub beta: f64,
    /// k: standard deviations of the sum kept inside the ring.
    pub k_stddevs: f64,
    /// The largest accepted ratio of the decoded noise's standard deviation to central DP's.
    pub max_noise_inflation: f64,
}

impl Default for DistributedSettings {
    fn default() -> Self {
        Self {
            bits: None,
            beta: DEFAULT_BETA,
            k_stddevs: DEFAULT_K_STDDEVS,
            max_noise_inflation: DEFAULT_MAX_NOISE_INFLATION,
        }
    }
}

/// Why a number of bits does not work for a cohort.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum BitsShortfall {
    /// 2^(2b) ≤ m·k²: the ring cannot hold k standard deviations of m clients' rounding noise.
    #[error(
        "the ring cannot hold {k_stddevs} standard deviations of {max_clients} clients' rounding"
    )]
    RingTooSmall {
        /// m.
        max_clients: u32,
        /// k.
        k_stddevs: f64,
    },
    /// The discretisation inflates the noise more than allowed.
    #[error("the noise would be {inflation:.4} times central DP's, above the limit {limit}")]
    NoiseInflation {
        /// The ratio with these bits.
        inflation: f64,
        /// `max_noise_inflation`.
        limit: f64,
    },
    /// Each client's noise share would be below [`MIN_LOCAL_SIGMA`].
    #[error("each client's noise share would have sigma {sigma:.3} < {MIN_LOCAL_SIGMA} grid units")]
    LocalNoiseTooSmall {
        /// The share's σ.
        sigma: f64,
    },
    /// The grid is finer than the exact sampler or the 32-bit rounding supports.
    #[error(
        "the grid is too fine: a share's variance {variance:e} or a coordinate bound {l2:e} is out of range"
    )]
    GridTooFine {
        /// σ² of a share.
        variance: f64,
        /// Δ₂.
        l2: f64,
    },
}

/// Why distributed-mode parameters could not be derived, or an update encoded or a sum decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DistributedError {
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
    /// The given bits do not work for this cohort.
    #[error(
        "{bits} bits per coordinate are too few for this cohort: {shortfall}; {}",
        match minimum {
            Some(b) => format!("use at least {b} bits"),
            None => "no number of bits up to 32 works; lower the noise or the cohort".to_string(),
        }
    )]
    TooFewBits {
        /// The bits asked for.
        bits: u8,
        /// Why they do not work.
        shortfall: BitsShortfall,
        /// The fewest bits that would work, if any do.
        minimum: Option<u8>,
    },
    /// The given bits make the grid finer than the sampler or the 32-bit rounding supports.
    #[error(
        "{bits} bits per coordinate are too many for this cohort: {shortfall}; {}",
        match maximum {
            Some(b) => format!("use at most {b} bits"),
            None => "no number of bits works; change the noise or the cohort".to_string(),
        }
    )]
    TooManyBits {
        /// The bits asked for.
        bits: u8,
        /// Why they do not work.
        shortfall: BitsShortfall,
        /// The most bits that would work, if any do.
        maximum: Option<u8>,
    },
    /// No number of bits works.
    #[error(
        "no number of bits in {MIN_BITS}..={MAX_BITS} works for this cohort (the closest: \
         {shortfall}); raise max_noise_inflation, lower k_stddevs, or change the noise or the \
         cohort size"
    )]
    NoBitsFit {
        /// Why the last width tried before the grid became too fine does not work.
        shortfall: BitsShortfall,
    },
    /// The update or sum has the wrong length.
    #[error("expected {expected} coordinates, got {got}")]
    WrongLength {
        /// The expected length.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A coordinate of the update is NaN or infinite.
    #[error(
        "coordinate {index} of the update is not finite; the local training diverged, drop this update"
    )]
    NotFinite {
        /// The first such coordinate.
        index: usize,
    },
    /// The number of survivors is outside [q_min, max_clients].
    #[error(
        "{survivors} survivors is outside {min}..={max}: fewer than q_min carry less noise than \
         the privacy plan needs, more can wrap the ring; discard this sum"
    )]
    SurvivorsOutOfRange {
        /// The survivors reported.
        survivors: u32,
        /// q_min.
        min: u32,
        /// max_clients.
        max: u32,
    },
    /// A noise share drawn for other parameters.
    #[error(
        "the noise share was drawn for other distributed-mode parameters; draw it with this encoder"
    )]
    ForeignNoise,
    /// Conditional rounding failed.
    #[error(transparent)]
    Rounding(#[from] RoundingError),
    /// The dimension cannot be rotated.
    #[error(transparent)]
    Rotation(#[from] RotationError),
}

/// Every derived quantity of distributed mode for one task (or one round, if the clip changes).
#[derive(Debug, Clone, PartialEq)]
pub struct DistributedParams {
    /// d.
    pub dim: usize,
    /// n = 2^⌈log₂ d⌉: the length of the encoded vector.
    pub padded_dim: usize,
    /// b: bits per coordinate; the ring is Z_{2^b}.
    pub bits: u8,
    /// s: grid points per update unit.
    pub scale: f64,
    /// c: the L2 clip norm, in update units.
    pub clip: f64,
    /// z: the noise of q_min shares over Δ₂.
    pub noise_multiplier: f64,
    /// Δ₂: the rounded vector's L2 bound, in grid units.
    pub l2_bound: f64,
    /// Δ₁ = Δ₂·min(√n, Δ₂).
    pub l1_bound: f64,
    /// σ² of each client's share, in grid units (rounded up to an exact fraction).
    pub local_variance: Variance,
    /// The most clients summed.
    pub max_clients: u32,
    /// q_min.
    pub min_survivors: u32,
    /// β of conditional rounding.
    pub beta: f64,
    /// The decoded noise's standard deviation (q_min survivors, with rounding) over z·c.
    pub noise_inflation: f64,
}

impl DistributedParams {
    /// Derives the parameters for clip norm `clip` and noise multiplier `noise_multiplier` (the
    /// total noise of q_min shares over the integer sensitivity Δ₂). See the module docs.
    pub fn derive(
        clip: f64,
        noise_multiplier: f64,
        shape: DistributedShape,
        settings: DistributedSettings,
    ) -> Result<Self, DistributedError> {
        positive("clip", clip)?;
        positive("noise_multiplier", noise_multiplier)?;
        if shape.max_clients == 0 {
            return Err(bad("max_clients", 0.0, "at least one client"));
        }
        if shape.min_survivors == 0 || shape.min_survivors > shape.max_clients {
            return Err(bad(
                "min_survivors",
                f64::from(shape.min_survivors),
                "between 1 and max_clients",
            ));
        }
        if !(settings.beta >= 0.0 && settings.beta < 1.0) {
            return Err(bad("beta", settings.beta, "in [0, 1)"));
        }
        if !(settings.k_stddevs.is_finite() && settings.k_stddevs >= 1.0) {
            return Err(bad("k_stddevs", settings.k_stddevs, "a finite number ≥ 1"));
        }
        if !(settings.max_noise_inflation.is_finite() && settings.max_noise_inflation >= 1.0) {
            return Err(bad(
                "max_noise_inflation",
                settings.max_noise_inflation,
                "a finite number ≥ 1",
            ));
        }
        let padded = padded_len(shape.dim)?;
        let attempt = |bits| Self::for_bits(bits, clip, noise_multiplier, shape, padded, settings);
        match settings.bits {
            Some(bits) if !(MIN_BITS..=MAX_BITS).contains(&bits) => Err(bad(
                "bits",
                f64::from(bits),
                "between 8 and 32 bits per coordinate",
            )),
            Some(bits) => attempt(bits).map_err(|shortfall| match shortfall {
                BitsShortfall::GridTooFine { .. } => DistributedError::TooManyBits {
                    bits,
                    shortfall,
                    maximum: (MIN_BITS..bits).rev().find(|&b| attempt(b).is_ok()),
                },
                _ => DistributedError::TooFewBits {
                    bits,
                    shortfall,
                    minimum: (bits + 1..=MAX_BITS).find(|&b| attempt(b).is_ok()),
                },
            }),
            None => {
                let mut last = None;
                for bits in MIN_BITS..=MAX_BITS {
                    match attempt(bits) {
                        Ok(params) => return Ok(params),
                        // Finer grids only get finer: report the shortfall before this one.
                        Err(BitsShortfall::GridTooFine { .. }) if last.is_some() => break,
                        Err(shortfall) => last = Some(shortfall),
                    }
                }
                Err(DistributedError::NoBitsFit {
                    shortfall: last.expect("at least one width was tried"),
                })
            }
        }
    }

    fn for_bits(
        bits: u8,
        clip: f64,
        z: f64,
        shape: DistributedShape,
        padded: usize,
        settings: DistributedSettings,
    ) -> Result<Self, BitsShortfall> {
        let m = f64::from(shape.max_clients);
        let q = f64::from(shape.min_survivors);
        let n = padded as f64;
        let k = settings.k_stddevs;
        let ring_sq = 4f64.powi(i32::from(bits));
        if ring_sq <= m * k * k {
            return Err(BitsShortfall::RingTooSmall {
                max_clients: shape.max_clients,
                k_stddevs: k,
            });
        }
        let local_real = z * clip / q.sqrt();
        let scale = (ring_sq - m * k * k).sqrt()
            / (2.0 * k * (clip * clip * m * m / n + m * local_real * local_real).sqrt());
        let l2 = rounding::l2_bound(scale * clip, padded, settings.beta);
        let local_variance = z * z * l2 * l2 / q;
        // Rounded coordinates are i32s (|x| ≤ Δ₂ + 1), and the sampler's range is bounded.
        let too_fine = BitsShortfall::GridTooFine {
            variance: local_variance,
            l2,
        };
        if l2.is_nan() || l2 >= 2_147_483_000.0 {
            return Err(too_fine);
        }
        if local_variance.is_nan() || local_variance.sqrt() < MIN_LOCAL_SIGMA {
            return Err(BitsShortfall::LocalNoiseTooSmall {
                sigma: local_variance.sqrt(),
            });
        }
        let variance = Variance::at_least(local_variance).map_err(|_| too_fine)?;
        let inflation = (z * z * l2 * l2 + m / 4.0).sqrt() / (scale * z * clip);
        if inflation > settings.max_noise_inflation {
            return Err(BitsShortfall::NoiseInflation {
                inflation,
                limit: settings.max_noise_inflation,
            });
        }
        Ok(Self {
            dim: shape.dim,
            padded_dim: padded,
            bits,
            scale,
            clip,
            noise_multiplier: z,
            l2_bound: l2,
            l1_bound: rounding::l1_bound(l2, padded),
            local_variance: variance,
            max_clients: shape.max_clients,
            min_survivors: shape.min_survivors,
            beta: settings.beta,
            noise_inflation: inflation,
        })
    }

    /// The accounting of one round ([`crate::accountant::Mechanism::DistributedGaussian`]):
    /// q_min shares of the actual (rounded-up) local variance, τ for `max_clients` shares.
    pub fn mechanism(&self) -> DistributedGaussian {
        DistributedGaussian::new(
            self.l2_bound,
            self.l1_bound,
            self.local_variance.sigma(),
            self.min_survivors,
            self.max_clients,
            self.padded_dim,
        )
    }

    /// The standard deviation, in update units, of each coordinate of a decoded sum's noise
    /// with `survivors` shares (rounding error excluded).
    pub fn noise_stddev(&self, survivors: u32) -> f64 {
        (f64::from(survivors) * self.local_variance.as_f64()).sqrt() / self.scale
    }
}

/// The result of encoding one update.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedUpdate {
    /// The n ring elements (each below 2^b), ready to be masked.
    pub ring: Vec<u32>,
    /// The update's L2 norm before clipping.
    pub norm: f64,
    /// Whether clipping scaled the update down.
    pub clipped: bool,
    /// How many roundings conditional rounding needed.
    pub rounding_attempts: u32,
}

/// One client's noise for one round, from [`DistributedEncoder::sample_noise`]: consumed by
/// [`DistributedEncoder::encode_with_noise`], zeroed when dropped, never cloned.
pub struct NoiseShare {
    /// e mod 2^32 per coordinate.
    values: Vec<u32>,
    padded_dim: usize,
    variance: Variance,
}

impl std::fmt::Debug for NoiseShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the noise: whoever learns it can remove it from the sum.
        f.debug_struct("NoiseShare")
            .field("padded_dim", &self.padded_dim)
            .finish_non_exhaustive()
    }
}

impl Drop for NoiseShare {
    fn drop(&mut self) {
        self.values.zeroize();
    }
}

/// Encodes updates on clients and decodes sums on the server. See the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct DistributedEncoder {
    params: DistributedParams,
    noise: DiscreteGaussian,
    bound_sq: u128,
}

impl DistributedEncoder {
    /// The encoder for these parameters.
    pub fn new(params: DistributedParams) -> Self {
        // ⌊Δ₂²⌋: the exact check Σ qᵢ² ≤ ⌊Δ₂²⌋ implies ‖q‖ ≤ Δ₂ (Δ₂² < 2^62 here).
        let bound_sq = (params.l2_bound * params.l2_bound).floor() as u128;
        Self {
            noise: DiscreteGaussian::new(params.local_variance),
            params,
            bound_sq,
        }
    }

    /// The parameters.
    pub fn params(&self) -> &DistributedParams {
        &self.params
    }

    /// Encodes one client's update (see the module docs): `padded_dim` ring elements. The noise
    /// and the rounding draw from ChaCha12 and ChaCha8 streams seeded from `rng`, which must be
    /// a cryptographic RNG seeded from the operating system: whoever can predict the noise can
    /// remove it. Equivalent to [`DistributedEncoder::sample_noise`] then
    /// [`DistributedEncoder::encode_with_noise`].
    pub fn encode<R: CryptoRng + ?Sized>(
        &self,
        update: &[f32],
        round_seed: &[u8; 32],
        rng: &mut R,
    ) -> Result<EncodedUpdate, DistributedError> {
        let noise = self.sample_noise(rng);
        self.encode_with_noise(update, round_seed, noise, rng)
    }

    /// Draws this client's noise share for one round ahead of its update: the noise does not
    /// depend on the update, and sampling it exactly is most of a client's cost, so a shell can
    /// draw it while training runs. The share is consumed by one encoding and zeroed when
    /// dropped; a share must never serve twice.
    pub fn sample_noise<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> NoiseShare {
        let mut noise_rng = NoiseRng::from_rng(rng);
        // One element more than the share: the encoded vector it becomes gets the weight
        // element pushed on (`cohort-task`'s codec) without moving 4 MiB.
        let mut values = Vec::with_capacity(self.params.padded_dim + 1);
        self.noise
            .fill_with(self.params.padded_dim, &mut noise_rng, |chunk| {
                // e mod 2^32: adding it in the ring adds e.
                values.extend(chunk.iter().map(|&e| e as u32));
            });
        NoiseShare {
            values,
            padded_dim: self.params.padded_dim,
            variance: self.params.local_variance,
        }
    }

    /// [`DistributedEncoder::encode`] with a share drawn earlier by
    /// [`DistributedEncoder::sample_noise`] of an encoder with the same parameters (refused
    /// otherwise). `rng` seeds the rounding only, which needs no secrecy.
    pub fn encode_with_noise<R: Rng + ?Sized>(
        &self,
        update: &[f32],
        round_seed: &[u8; 32],
        noise: NoiseShare,
        rng: &mut R,
    ) -> Result<EncodedUpdate, DistributedError> {
        if noise.padded_dim != self.params.padded_dim
            || noise.variance != self.params.local_variance
        {
            return Err(DistributedError::ForeignNoise);
        }
        self.encode_impl(update, round_seed, rng, Some(noise))
    }

    /// [`DistributedEncoder::encode`] **without the noise**: the output gives no differential
    /// privacy at all. For tests and benchmarks that isolate the other steps; never send it.
    #[doc(hidden)]
    pub fn dangerous_encode_without_noise<R: Rng + ?Sized>(
        &self,
        update: &[f32],
        round_seed: &[u8; 32],
        rng: &mut R,
    ) -> Result<EncodedUpdate, DistributedError> {
        self.encode_impl(update, round_seed, rng, None)
    }

    fn encode_impl<R: Rng + ?Sized>(
        &self,
        update: &[f32],
        round_seed: &[u8; 32],
        rng: &mut R,
        noise: Option<NoiseShare>,
    ) -> Result<EncodedUpdate, DistributedError> {
        let p = &self.params;
        if update.len() != p.dim {
            return Err(DistributedError::WrongLength {
                expected: p.dim,
                got: update.len(),
            });
        }
        let norm_sq = sum_of_squares(update);
        // Every square of an f32 and their sum fit an f64: a NaN or an infinity in the sum
        // comes from a coordinate, found by a second pass only then.
        if !norm_sq.is_finite() {
            let index = update.iter().position(|v| !v.is_finite()).unwrap_or(0);
            return Err(DistributedError::NotFinite { index });
        }
        let norm = norm_sq.sqrt();
        let clipped = norm > p.clip;
        let shrink = if clipped { p.clip / norm } else { 1.0 };

        let rotation = RandomizedHadamard::new(round_seed, p.padded_dim)?;
        let mut scaled = Vec::new();
        rotation.rotate_scaled(update, shrink * p.scale, &mut scaled);
        // Float error in the transform can leave the norm a hair above s·c; bring it back so
        // that rounding's bound (made for s·c) is met as often as the analysis says. Privacy
        // does not depend on this: the rounding check below is exact.
        let target = p.scale * p.clip;
        let rotated_norm = sum_of_squares(&scaled).sqrt();
        if rotated_norm > target {
            let factor = (target / rotated_norm) as f32;
            scaled.iter_mut().for_each(|v| *v *= factor);
        }

        // (q + e) mod 2^b: q added mod 2^32 straight onto the share's own buffer as it is
        // rounded (no buffer for q), then the low b bits. Once q is on it the buffer no longer
        // holds the noise alone, and the share (left empty) has nothing to zero; if rounding
        // fails, the buffer is zeroed here.
        let mut ring = match noise {
            Some(mut share) => std::mem::take(&mut share.values),
            None => vec![0u32; p.padded_dim],
        };
        let rounded = rounding::conditional_round_onto(&scaled, self.bound_sq, rng, &mut ring);
        drop(scaled);
        let rounding_attempts = match rounded {
            Ok(attempts) => attempts,
            Err(e) => {
                ring.zeroize();
                return Err(e.into());
            }
        };
        let mask = ring_mask(p.bits);
        ring.iter_mut().for_each(|v| *v &= mask);
        Ok(EncodedUpdate {
            ring,
            norm,
            clipped,
            rounding_attempts,
        })
    }

    /// Decodes the unmasked sum of `survivors` encoded updates (`padded_dim` elements, the sum
    /// in Z_{2^32} as SecAgg+ releases it): the sum of their clipped updates plus noise, `dim`
    /// coordinates in update units. Refuses a sum of fewer than q_min (too little noise for the
    /// privacy plan) or more than `max_clients` survivors.
    pub fn decode_sum(
        &self,
        sum: &[u32],
        survivors: u32,
        round_seed: &[u8; 32],
    ) -> Result<Vec<f32>, DistributedError> {
        let p = &self.params;
        if sum.len() != p.padded_dim {
            return Err(DistributedError::WrongLength {
                expected: p.padded_dim,
                got: sum.len(),
            });
        }
        if survivors < p.min_survivors || survivors > p.max_clients {
            return Err(DistributedError::SurvivorsOutOfRange {
                survivors,
                min: p.min_survivors,
                max: p.max_clients,
            });
        }
        let rotation = RandomizedHadamard::new(round_seed, p.padded_dim)?;
        let inv_scale = 1.0 / p.scale;
        let mut values: Vec<f32> = sum
            .iter()
            .map(|&v| (centered(v, p.bits) as f64 * inv_scale) as f32)
            .collect();
        rotation.unrotate(&mut values);
        values.truncate(p.dim);
        Ok(values)
    }
}

/// Σ xᵢ² in `f64`, in [`LANES`] partial sums (then added in order): one running sum would be
/// a chain of dependent additions, about 4 cycles a coordinate; partial sums vectorise.
/// Deterministic: the order of the additions depends only on the length. Compiled per SIMD
/// level by `multiversion`.
#[multiversion::multiversion(targets = "simd")]
fn sum_of_squares(x: &[f32]) -> f64 {
    let mut partial = [0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (p, &v) in partial.iter_mut().zip(chunk) {
            *p += f64::from(v) * f64::from(v);
        }
    }
    let tail: f64 = rest.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    partial.iter().sum::<f64>() + tail
}

/// Partial sums of [`sum_of_squares`]: two AVX-512 registers of `f64`.
const LANES: usize = 16;

/// The low-`bits` mask.
fn ring_mask(bits: u8) -> u32 {
    if bits >= 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    }
}

/// `v` mod 2^bits read in [−2^(bits−1), 2^(bits−1)).
pub fn centered(v: u32, bits: u8) -> i64 {
    let bits = bits.clamp(1, 32);
    let v = i64::from(v & ring_mask(bits));
    let half = 1i64 << (bits - 1);
    if v >= half { v - (1i64 << bits) } else { v }
}

fn positive(name: &'static str, value: f64) -> Result<(), DistributedError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(bad(name, value, "a finite positive number"))
    }
}

fn bad(name: &'static str, value: f64, reason: &'static str) -> DistributedError {
    DistributedError::BadParameter {
        name,
        value,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_of_squares_matches_a_running_sum_and_sees_non_finite_values() {
        for len in [0usize, 1, 15, 16, 17, 1000, 4099] {
            let x: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let running: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            let got = sum_of_squares(&x);
            assert!((got - running).abs() <= 1e-12 * running.max(1.0), "{len}");
        }
        assert!(!sum_of_squares(&[1.0, f32::NAN, 2.0]).is_finite());
        assert!(!sum_of_squares(&[f32::INFINITY; 3]).is_finite());
        // The largest f32s do not overflow the f64 sum.
        assert!(sum_of_squares(&vec![f32::MAX; 1 << 10]).is_finite());
    }

    #[test]
    fn centred_reading_of_the_ring() {
        assert_eq!(centered(0, 8), 0);
        assert_eq!(centered(127, 8), 127);
        assert_eq!(centered(128, 8), -128);
        assert_eq!(centered(255, 8), -1);
        // Bits above b are ignored (the SecAgg+ sum is mod 2^32).
        assert_eq!(centered(0xABCD_0001, 8), 1);
        assert_eq!(centered(0x7FFF_FFFF, 32), i64::from(i32::MAX));
        assert_eq!(centered(0x8000_0000, 32), i64::from(i32::MIN));
        assert_eq!(centered(u32::MAX, 32), -1);
        assert_eq!(ring_mask(32), u32::MAX);
        assert_eq!(ring_mask(16), 0xFFFF);
    }
}
