//! Fixed-point encoding of `f32` model updates into the ring Z_{2^r}, r ≤ 32 (PROTOCOL.md §1
//! and "Recommended defaults" 3).
//!
//! SecAgg+ adds vectors of `u32` with wrapping arithmetic, so a client's update must become a
//! vector of integers before it is masked, and the server must be able to turn the unmasked sum
//! back into a mean. A [`Quantizer`] does both:
//!
//! 1. **clip** each coordinate to `[-c, c]` (±∞ clips; NaN is refused, naming its index);
//! 2. **scale** by `s = (2^(b-1) - 1) / c`, where `b` is `value_bits`;
//! 3. **round stochastically**: up with probability equal to the fractional part, so the
//!    rounding is unbiased (E(q) = s·x, up to 2^-32);
//! 4. **weight**: multiply by the client's weight `w = min(weight, max_weight)`;
//! 5. store each value as two's complement in a `u32`, and append `w` as the last element.
//!
//! The weight travels *inside* the masked vector: the server learns Σ w_u only together with
//! Σ w_u·q_u, after unmasking, and the weighted mean needs no plaintext side channel that would
//! reveal each client's number of examples.
//!
//! The ring is chosen so that nothing can wrap: each client contributes at most
//! `max_weight · (2^(b-1) - 1)` in absolute value per coordinate, and `max_clients` such
//! contributions still fit in the signed range of the ring's `r` bits. Rounds use
//! [`Quantizer::for_ring`]: `b` is the task's `secagg.value_bits` and `r = b + ⌈log2(max_clients
//! · max_weight)⌉` ([`crate::ring`]), so masked inputs travel at `r` bits a coordinate;
//! [`Quantizer::for_cohort`] instead spends every bit of the 32-bit ring on precision. Encoded
//! elements are the values' two's complement in a `u32`; a client keeps their low `r` bits
//! when it packs its masked input. The encoding
//! cannot stop a malicious client from sending out-of-range values (SecAgg+ has no input
//! validation, PROTOCOL.md open risk 2); [`Quantizer::decode_sum`] refuses a sum whose total
//! weight is larger than the cohort could honestly produce, which catches some of it.

use cohort_protocol::EncodingParams;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The fewest value bits (sign included) a round may use. Below this the rounding noise
/// (one part in 2^(b-1) of the clip range per client) swamps typical updates.
pub const MIN_VALUE_BITS: u8 = 8;

/// The most value bits: the whole 32-bit ring, for a single client of weight 1.
pub const MAX_VALUE_BITS: u8 = 32;

/// The largest value the weighted sum may reach in either direction in a ring of `r` bits:
/// 2^(r−1) − 1 (`i32::MAX` in the full 32-bit ring).
fn sum_limit(ring_bits: u8) -> u128 {
    (1u128 << (ring_bits.clamp(1, 32) - 1)) - 1
}

/// How many coordinates are rounded per block of random numbers drawn from the rounding
/// stream. Large enough to amortise the RNG call, small enough to stay in L1.
const ROUNDING_BLOCK: usize = 1024;

/// 2^32 as an `f64`: scales a fractional part to a threshold for a uniform `u32`.
const TWO_POW_32: f64 = 4_294_967_296.0;

/// Why an encoding could not be set up, or an update or sum could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodingError {
    /// The clip range is zero, negative, infinite or NaN.
    #[error("clip range {0} is not a finite positive number; configure a clip such as 1.0")]
    BadClip(f32),
    /// `max_weight` is zero.
    #[error("max_weight is 0; every client needs a weight of at least 1")]
    ZeroMaxWeight,
    /// `max_clients` is zero.
    #[error("max_clients is 0; a cohort needs at least one client")]
    ZeroMaxClients,
    /// `value_bits` is outside `MIN_VALUE_BITS..=MAX_VALUE_BITS`.
    #[error(
        "value_bits = {0} is outside {MIN_VALUE_BITS}..={MAX_VALUE_BITS}; derive the encoding \
         with Quantizer::for_cohort"
    )]
    BadValueBits(u8),
    /// A single client's largest contribution does not fit in the signed range of the ring.
    #[error(
        "one client of weight {max_weight} with {value_bits} value bits can exceed the signed \
         range of the {ring_bits}-bit ring; lower max_weight or value_bits"
    )]
    SingleClientOverflow {
        /// The configured value bits.
        value_bits: u8,
        /// The configured largest weight.
        max_weight: u32,
        /// The ring's bits.
        ring_bits: u8,
    },
    /// The ring's bits are outside 1..=32.
    #[error("ring_bits = {0} is outside 1..=32")]
    BadRingBits(u8),
    /// The ring a cohort's sum needs could not be sized.
    #[error(transparent)]
    Ring(#[from] crate::ring::RingError),
    /// The cohort is so large, or the weights so heavy, that fewer than `MIN_VALUE_BITS` value
    /// bits remain.
    #[error(
        "only {available} value bits remain for {max_clients} clients with weights up to \
         {max_weight}, fewer than the minimum {MIN_VALUE_BITS}; lower max_weight (weights are \
         capped to it) or split the cohort"
    )]
    CohortTooLarge {
        /// The cohort size asked for.
        max_clients: u32,
        /// The largest weight asked for.
        max_weight: u32,
        /// The most value bits that would still fit (0 when not even one bit would).
        available: u8,
    },
    /// A coordinate of the update is NaN.
    #[error(
        "coordinate {index} of the update is NaN; the local training diverged, drop this update"
    )]
    NotANumber {
        /// The first NaN coordinate.
        index: usize,
    },
    /// The client's weight is zero.
    #[error(
        "a client weight of 0 would contribute nothing; use the number of training examples (≥ 1)"
    )]
    ZeroWeight,
    /// The total weight is outside [contributors, contributors × max_weight]: every client
    /// claims a weight between 1 and max_weight, so one client bent it (or the sum wrapped).
    #[error(
        "the total weight {total_weight} of {contributors} contributors is outside \
         [{contributors}, {max}]; some client sent a weight element it could not have encoded, \
         so the sum is discarded"
    )]
    TotalWeightOutOfBounds {
        /// The decoded total weight.
        total_weight: u64,
        /// |U3|.
        contributors: u64,
        /// |U3| × max_weight.
        max: u64,
    },
    /// The vector to decode is empty, so it has no weight element.
    #[error("the sum to decode is empty; it must end with the total-weight element")]
    EmptySum,
    /// The decoded total weight is zero: no client contributed.
    #[error("the total weight of the sum is 0; no client contributed, so there is no mean")]
    ZeroTotalWeight,
    /// The decoded total weight is larger than `max_clients` honest clients could produce, so
    /// the sum may have wrapped around.
    #[error(
        "the total weight {total_weight} exceeds what the cohort can produce ({capacity}); \
         the sum may have wrapped (too many clients, or a client lied about its weight); discard it"
    )]
    TotalWeightTooLarge {
        /// The decoded total weight.
        total_weight: u64,
        /// `max_clients() × max_weight`.
        capacity: u64,
    },
}

/// The weighted mean recovered from an unmasked sum.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedSum {
    /// Σ w_u·clip(x_u) / Σ w_u, per coordinate (within [`Quantizer::tolerance`]).
    pub mean: Vec<f32>,
    /// Σ w_u: the total (capped) weight of the clients in the sum.
    pub total_weight: u64,
}

/// The length of the encoded vector for a model of `model_len` parameters: one more, for the
/// weight element.
pub fn vector_len(model_len: usize) -> usize {
    model_len + 1
}

/// Encodes `f32` updates into the 32-bit ring and decodes sums of them. See the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantizer {
    params: EncodingParams,
    /// M = 2^(b-1) - 1: the largest quantised magnitude of one unweighted coordinate (exact
    /// in an `f64`).
    max_level: f64,
    /// s = M / c.
    scale: f64,
}

impl Quantizer {
    /// Chooses the largest `value_bits` such that the weighted sum of `max_clients` clients can
    /// never leave the signed 32-bit range: `max_clients · max_weight · (2^(b-1) - 1) ≤ 2^31 - 1`.
    /// That is about `32 - ⌈log2 n⌉ - ⌈log2 max_weight⌉`, computed exactly (n = 1024,
    /// max_weight = 1 gives 22, since 1024 · (2^21 - 1) = 2^31 - 1024).
    ///
    /// Refuses a non-finite or non-positive clip, a zero count or weight, and cohorts that would
    /// leave fewer than [`MIN_VALUE_BITS`].
    pub fn for_cohort(max_clients: u32, clip: f32, max_weight: u32) -> Result<Self, EncodingError> {
        check_clip(clip)?;
        if max_clients == 0 {
            return Err(EncodingError::ZeroMaxClients);
        }
        if max_weight == 0 {
            return Err(EncodingError::ZeroMaxWeight);
        }
        let load = u128::from(max_clients) * u128::from(max_weight);
        let available = (2..=MAX_VALUE_BITS)
            .rev()
            .find(|&b| load * max_level_u128(b) <= sum_limit(32))
            .unwrap_or(0);
        if available < MIN_VALUE_BITS {
            return Err(EncodingError::CohortTooLarge {
                max_clients,
                max_weight,
                available,
            });
        }
        Self::new(EncodingParams {
            clip,
            value_bits: available,
            max_weight,
            ring_bits: 32,
        })
    }

    /// The encoding of `value_bits` per coordinate in the ring its sum needs: `r =
    /// value_bits + ⌈log2(max_clients · max_weight)⌉` bits ([`crate::ring::ring_bits`]), so that
    /// the weighted sum of up to `max_clients` clients fits the ring's signed range and masked
    /// inputs travel at `r` bits a coordinate. Refuses a ring above 32 bits
    /// ([`EncodingError::Ring`]) and what [`Quantizer::new`] refuses.
    pub fn for_ring(
        max_clients: u32,
        clip: f32,
        value_bits: u8,
        max_weight: u32,
    ) -> Result<Self, EncodingError> {
        check_clip(clip)?;
        if max_clients == 0 {
            return Err(EncodingError::ZeroMaxClients);
        }
        if max_weight == 0 {
            return Err(EncodingError::ZeroMaxWeight);
        }
        let capacity = u64::from(max_clients) * u64::from(max_weight);
        let ring_bits = crate::ring::ring_bits(value_bits, capacity)?;
        Self::new(EncodingParams {
            clip,
            value_bits,
            max_weight,
            ring_bits,
        })
    }

    /// These parameters with the coordinate range `clip` (value and ring bits unchanged).
    pub fn with_clip(&self, clip: f32) -> Result<Self, EncodingError> {
        Self::new(EncodingParams {
            clip,
            ..self.params
        })
    }

    /// Validates parameters received from elsewhere (a round config): a finite positive clip,
    /// `value_bits` in `MIN_VALUE_BITS..=MAX_VALUE_BITS`, `ring_bits` in 1..=32, `max_weight ≥
    /// 1`, and one client's largest contribution within the signed range of the ring.
    pub fn new(params: EncodingParams) -> Result<Self, EncodingError> {
        check_clip(params.clip)?;
        if !(MIN_VALUE_BITS..=MAX_VALUE_BITS).contains(&params.value_bits) {
            return Err(EncodingError::BadValueBits(params.value_bits));
        }
        if !(1..=32).contains(&params.ring_bits) {
            return Err(EncodingError::BadRingBits(params.ring_bits));
        }
        if params.max_weight == 0 {
            return Err(EncodingError::ZeroMaxWeight);
        }
        let max_level = max_level_u128(params.value_bits);
        if u128::from(params.max_weight) * max_level > sum_limit(params.ring_bits) {
            return Err(EncodingError::SingleClientOverflow {
                value_bits: params.value_bits,
                max_weight: params.max_weight,
                ring_bits: params.ring_bits,
            });
        }
        // Exact: max_level < 2^31.
        let max_level = max_level as f64;
        Ok(Self {
            params,
            max_level,
            scale: max_level / f64::from(params.clip),
        })
    }

    /// The parameters, as sent in the round config.
    pub fn params(&self) -> EncodingParams {
        self.params
    }

    /// The scale `s = (2^(b-1) - 1) / clip`: one quantisation unit is `1/s`.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The largest cohort whose sum is guaranteed not to wrap with these parameters:
    /// `⌊(2^(r-1) - 1) / (max_weight · (2^(b-1) - 1))⌋` in the ring of `r` bits.
    pub fn max_clients(&self) -> u32 {
        let per_client =
            u128::from(self.params.max_weight) * max_level_u128(self.params.value_bits);
        // ≥ 1 by the check in `new`, and ≤ 2^31 - 1, so it fits in a u32.
        u32::try_from(sum_limit(self.params.ring_bits) / per_client).unwrap_or(u32::MAX)
    }

    /// The ring's bits r (`EncodingParams::ring_bits`).
    pub fn ring_bits(&self) -> u8 {
        self.params.ring_bits
    }

    /// The largest absolute error of a decoded mean coordinate against the weighted mean of the
    /// clipped inputs: `1/s` (stochastic rounding moves each client's scaled value by less than
    /// one unit, and a weighted mean of errors below one unit is below one unit), plus
    /// `clip · 2^-23` for the rounding of the result to `f32` (which matters only when
    /// `value_bits` exceeds about 22).
    pub fn tolerance(&self) -> f32 {
        let clip = f64::from(self.params.clip);
        (1.0 / self.scale + clip * f64::from(f32::EPSILON)) as f32
    }

    /// Encodes one client's update: `update.len() + 1` ring elements, the last being the capped
    /// weight `min(weight, max_weight)`. See the module docs for the steps.
    ///
    /// The rounding randomness comes from a ChaCha8 stream seeded with 32 bytes drawn from
    /// `rng`, so the cost does not depend on how slow `rng` is (an OS RNG is fine) and a seeded
    /// `rng` gives a reproducible encoding. The rounding noise is not a secret: the masks hide
    /// the encoded vector.
    pub fn encode<R: Rng + ?Sized>(
        &self,
        update: &[f32],
        weight: u32,
        rng: &mut R,
    ) -> Result<Vec<u32>, EncodingError> {
        if weight == 0 {
            return Err(EncodingError::ZeroWeight);
        }
        let weight = weight.min(self.params.max_weight);
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let mut rounding = ChaCha8Rng::from_seed(seed);

        let clip = f64::from(self.params.clip);
        let scale = self.scale;
        let max_level = self.max_level;
        // Lossless: weight ≤ max_weight ≤ (2^31 - 1)/127 (checked in `new`).
        let weight_i32 = weight as i32;
        let mut out = vec![0u32; vector_len(update.len())];
        let (values, weight_slot) = out.split_at_mut(update.len());
        let mut random = [0u32; ROUNDING_BLOCK];
        let mut saw_nan = false;
        let blocks = update
            .chunks(ROUNDING_BLOCK)
            .zip(values.chunks_mut(ROUNDING_BLOCK));
        for (block, encoded) in blocks {
            let random = &mut random[..block.len()];
            rounding.fill(random);
            // Branch-free on purpose (a NaN is only recorded here) and free of `f64::floor`
            // (a libm call on baseline x86-64), so that the loop vectorises.
            for ((e, &x), &r) in encoded.iter_mut().zip(block).zip(random.iter()) {
                saw_nan |= x.is_nan();
                // The second clamp guards against s·c rounding to just above M.
                let scaled = (f64::from(x).clamp(-clip, clip) * scale).clamp(-max_level, max_level);
                // floor(scaled), from the truncation (exact: |scaled| ≤ M < 2^31).
                let truncated = scaled as i32;
                let floor = truncated - i32::from(scaled < f64::from(truncated));
                // Exact, so P(up) = ⌈frac·2^32⌉ / 2^32: unbiased up to 2^-32. When
                // floor = M, frac = 0 and nothing rounds up past M.
                let frac = scaled - f64::from(floor);
                let up = i32::from(f64::from(r) < frac * TWO_POW_32);
                // |level · weight| ≤ M · max_weight ≤ 2^31 - 1 (checked in `new`): no wrap.
                // A NaN gives level 0 and is reported below.
                *e = (floor + up).wrapping_mul(weight_i32) as u32;
            }
        }
        weight_slot[0] = weight;
        if saw_nan {
            let index = update.iter().position(|x| x.is_nan()).unwrap_or(0);
            return Err(EncodingError::NotANumber { index });
        }
        Ok(out)
    }

    /// [`Quantizer::decode_sum`] for the sum of exactly `contributors` inputs (|U3|), which first
    /// checks |U3| ≤ Σw ≤ |U3|·max_weight: every honest encoding carries a weight in
    /// 1..=max_weight, so a total outside that range means a client sent a weight element of its
    /// own making (e.g. to make Σw = 1 and scale the whole mean). This is what a round uses.
    pub fn decode_sum_of(
        &self,
        sum: &[u32],
        contributors: usize,
    ) -> Result<DecodedSum, EncodingError> {
        let &total_weight = sum.last().ok_or(EncodingError::EmptySum)?;
        let total_weight = u64::from(crate::ring::reduce_one(total_weight, self.params.ring_bits));
        let contributors = contributors as u64;
        let max = contributors * u64::from(self.params.max_weight);
        if total_weight < contributors.max(1) || total_weight > max {
            return Err(EncodingError::TotalWeightOutOfBounds {
                total_weight,
                contributors,
                max,
            });
        }
        self.decode_sum(sum)
    }

    /// Decodes the (wrapping) sum of encoded vectors: each coordinate is read as a signed
    /// `r`-bit value (the sum mod 2^r, sign-extended: the form [`crate::ring::widen`] gives,
    /// or the plain `i32` in the full ring) and divided by `s · Σw`, where Σw is the last
    /// element read mod 2^r. Refuses an empty vector, a total
    /// weight of zero, and a total weight above `max_clients() × max_weight` (the sum may have
    /// wrapped).
    pub fn decode_sum(&self, sum: &[u32]) -> Result<DecodedSum, EncodingError> {
        let (&total_weight, values) = sum.split_last().ok_or(EncodingError::EmptySum)?;
        let r = self.params.ring_bits;
        let total_weight = u64::from(crate::ring::reduce_one(total_weight, r));
        if total_weight == 0 {
            return Err(EncodingError::ZeroTotalWeight);
        }
        let capacity = u64::from(self.max_clients()) * u64::from(self.params.max_weight);
        if total_weight > capacity {
            return Err(EncodingError::TotalWeightTooLarge {
                total_weight,
                capacity,
            });
        }
        let factor = 1.0 / (self.scale * total_weight as f64);
        let mean = values
            .iter()
            .map(|&v| (f64::from(crate::ring::signed(v, r)) * factor) as f32)
            .collect();
        Ok(DecodedSum { mean, total_weight })
    }
}

/// 2^(b-1) - 1 for `b` in 2..=32.
fn max_level_u128(value_bits: u8) -> u128 {
    (1u128 << (value_bits - 1)) - 1
}

fn check_clip(clip: f32) -> Result<(), EncodingError> {
    if clip.is_finite() && clip > 0.0 {
        Ok(())
    } else {
        Err(EncodingError::BadClip(clip))
    }
}
