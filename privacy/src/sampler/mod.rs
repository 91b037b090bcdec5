//! Exact sampling from the discrete Gaussian N_Z(0, σ²): each integer y with probability
//! ∝ exp(−y²/(2σ²)), with no floating-point error in the output's distribution.
//!
//! **The algorithm** is rejection sampling from a table-driven proposal, with every acceptance
//! decided exactly and almost all of them from a few random bits:
//!
//! 1. **Proposal.** The magnitudes 0..B (B ≈ 6σ) are cut into at most 1,023 buckets of h = 2^k
//!    consecutive values (h = 1 up to σ ≈ 227: for 170 < σ ≤ 227, B = 1,023 ≥ 4.5σ instead of
//!    6σ, which keeps h = 1), plus one tail bucket for B and beyond. 23
//!    random bits pick a bucket from an alias table of 1,024 slots (Walker/Vose, built in
//!    integers: bucket i has probability W_i/2^22 exactly, W_i integers) and a sign; with
//!    h > 1, more bits pick a magnitude uniform in the bucket.
//! 2. **Acceptance** of y in bulk bucket i (y_i = i·h ≤ y < y_i + h) with probability
//!    exp(−(y² − y_i²)/(2σ²)) · c_i, c_i = exp(−y_i²/(2σ²))/(M·W_i), as two independent trials:
//!    - the first is CKS's Bernoulli(exp(−γ)) for the rational γ = (y² − y_i²)/(2σ²) ≤ 0.1
//!      (Canonne, Kamath, Steinke 2020, Algorithm 1), whose first trial, Bernoulli(γ), is
//!      decided from a chunk of 11 to 20 random bits unless the chunk equals γ's leading bits;
//!      with h = 1, γ = 0 and it is skipped;
//!    - the second compares a chunk of random bits (9 with h = 1, 11 to 20 otherwise) with
//!      bounds on c_i precomputed from rigorous bounds (`sampler/interval.rs`, exact integer
//!      arithmetic); when the chunk does not decide (about 1 candidate in 500), 32 more bits
//!      are compared with 64-bit bounds, and only when those equal c_i's leading bits (about
//!      2^−40) is c_i bounded more tightly, as often as needed (`sampler/bernoulli.rs`).
//!
//!    M is a dyadic rational chosen at construction as the largest upper bound of
//!    exp(−y_i²/(2σ²))/W_i (and of the tail's constant), so every c_i ≤ 1 and c_i ≈ 1: with
//!    y proposed with probability q(y) = W_i/(2^22·2h) (sign included), the acceptance is
//!    exactly exp(−y²/(2σ²))/(M'·q(y)) for the constant M' = 2^23·h·M, which is rejection
//!    sampling of N_Z(0, σ²). The proposal of −0 is rejected, so 0 is proposed once.
//! 3. **Tail** (a bucket of at least 2^−22 of the proposal, for about 10^−9 of the mass):
//!    y = B + j with j geometric of ratio r = exp(−B/σ²) (CKS's Algorithm 2 construction),
//!    accepted with probability exp(−j²/(2σ²))·c_tail (CKS's Bernoulli(exp(−γ)), then the
//!    bounded comparison), since exp(−(B + j)²/(2σ²)) = exp(−B²/(2σ²))·r^j·exp(−j²/(2σ²)).
//!
//! **Exactness.** Floating point only shapes the tables; the distribution depends only on
//! integers (the weights W_i, the rational σ² = num/den, M) and on decisions that are proven
//! by exact bounds, so no approximation enters the privacy analysis. The one departure: a
//! tail candidate more than 2^40 beyond B, whose acceptance would need integers wider than
//! 128 bits, is rejected instead of tested. Its probability is below r^(2^40) =
//! exp(−2^40·B/σ²) ≤ e^(−196,000) for every σ ≤ 2^25 the sampler accepts (B/σ² ≥ 6/σ), so the
//! output is within that total variation distance of N_Z(0, σ²): far below anything the
//! accounting resolves (the CKS sampler this replaces had a caveat of the same kind,
//! e^(−2^25)).
//!
//! **Cost** (σ ≈ 97, the benchmark's share): two candidates per 64-bit word of keystream with
//! h = 1, 1,024 at a time through a branch-free, vectorised proposal
//! (`propose_unit_batch`); one word a candidate with h > 1, one at a time. Nearly every
//! candidate is accepted (the acceptance constants are within 2^−10 of 1 for all but the
//! rarest buckets). A few nanoseconds a draw, against about 200 for CKS's sampler, whose
//! discrete Laplace envelope spends about 7 words and 14 exact Bernoulli trials a draw. The
//! tables cost about a millisecond to build (rigorous bounds of about 1,000 exponentials by a
//! recurrence); build once per variance and share (cloning a sampler shares its tables).
//!
//! The randomness is not public: whoever knows the RNG's stream knows the noise. Callers use a
//! cryptographic RNG seeded from the operating system ([`crate::keystream`] in this crate).

mod bernoulli;
mod interval;
mod table;

use std::sync::Arc;

use rand_core::RngCore;
use zeroize::Zeroize;

use bernoulli::{Bits, bernoulli_bounded, bernoulli_exp, bernoulli_exp_with_chunk, geometric};
use table::{COIN_BITS, PROPOSAL_BITS, SLOT_BITS, SLOTS, Shape, Table};

/// The smallest variance accepted, 2^-20: below it the distribution is a point mass at 0 in all
/// but about e^(-500000) of draws, and the bound on the exact arithmetic's sizes is simplest.
pub const MIN_VARIANCE: f64 = 1.0 / 1_048_576.0;

/// The largest variance accepted, 2^50 (σ = 2^25): the acceptance test's integers then fit in
/// 128 bits for every candidate within about 2^13 standard deviations.
pub const MAX_VARIANCE: f64 = 1_125_899_906_842_624.0;

/// A variance σ² as an exact fraction `num / den`, with `den` a power of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variance {
    num: u64,
    den: u64,
}

/// Why a variance cannot be sampled from.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum VarianceError {
    /// The variance is NaN, infinite, or outside [`MIN_VARIANCE`, `MAX_VARIANCE`].
    #[error(
        "the noise variance {0} is outside [{MIN_VARIANCE}, {MAX_VARIANCE}] (in grid units); \
         change the noise multiplier or the number of bits per coordinate"
    )]
    OutOfRange(f64),
}

impl Variance {
    /// The smallest fraction num / 2^k ≥ `sigma2` with the smallest k ≥ 0 that keeps num ≥ 2^28:
    /// never less noise than asked for, and at most 2^-28 relatively more. Small numbers keep
    /// the sampler's Bernoulli trials within 64-bit ranges for 1 ≤ σ ≤ 55,000, where they are
    /// fastest.
    pub fn at_least(sigma2: f64) -> Result<Self, VarianceError> {
        if !(MIN_VARIANCE..=MAX_VARIANCE).contains(&sigma2) {
            return Err(VarianceError::OutOfRange(sigma2));
        }
        // sigma2 = m · 2^e with m in [1, 2); scale so the numerator has 29 bits.
        let exponent = sigma2.log2().floor() as i32;
        let shift = (28 - exponent).clamp(0, 62);
        let den = 1u64 << shift;
        // Exact: multiplying by a power of two only changes the exponent; ceil is exact.
        let num = (sigma2 * den as f64).ceil() as u64;
        Ok(Self { num, den })
    }

    /// An integer variance, exactly.
    pub fn integer(sigma2: u64) -> Result<Self, VarianceError> {
        Self::at_least(sigma2 as f64).and_then(|v| {
            if v.as_f64() == sigma2 as f64 {
                Ok(v)
            } else {
                Err(VarianceError::OutOfRange(sigma2 as f64))
            }
        })
    }

    /// The variance as an `f64` (exact for the fractions `at_least` makes).
    pub fn as_f64(&self) -> f64 {
        self.num as f64 / self.den as f64
    }

    /// The standard deviation.
    pub fn sigma(&self) -> f64 {
        self.as_f64().sqrt()
    }
}

/// An exact sampler for N_Z(0, σ²). See the module docs. Cloning shares the tables.
#[derive(Clone)]
pub struct DiscreteGaussian {
    variance: Variance,
    table: Arc<Table>,
}

impl PartialEq for DiscreteGaussian {
    fn eq(&self, other: &Self) -> bool {
        // The tables are a function of the variance.
        self.variance == other.variance
    }
}

impl Eq for DiscreteGaussian {}

impl std::fmt::Debug for DiscreteGaussian {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscreteGaussian")
            .field("variance", &self.variance)
            .field("buckets", &(self.table.tail + 1))
            .field("bucket_width", &(1u64 << self.table.width_bits))
            .finish_non_exhaustive()
    }
}

/// Tail candidates beyond B + 2^40 are rejected (see the module docs).
const MAX_TAIL_OFFSET: u128 = 1 << 40;

impl DiscreteGaussian {
    /// A sampler with variance parameter `variance` (builds its tables: a few milliseconds).
    pub fn new(variance: Variance) -> Self {
        Self::with_shape(variance, Shape::FAST)
    }

    fn with_shape(variance: Variance, shape: Shape) -> Self {
        Self {
            variance,
            table: Arc::new(Table::build(variance.num, variance.den, shape)),
        }
    }

    /// The variance parameter σ² (the distribution's variance is σ² minus less than
    /// 10^-8 relatively for σ ≥ 1).
    pub fn variance(&self) -> Variance {
        self.variance
    }

    /// One sample.
    pub fn sample<R: RngCore + ?Sized>(&self, rng: &mut R) -> i64 {
        if self.table.width_bits == 0 {
            self.sample_narrow(rng)
        } else {
            self.sample_wide(rng)
        }
    }

    /// Fills `out` with independent samples.
    pub fn fill<R: RngCore + ?Sized>(&self, out: &mut [i64], rng: &mut R) {
        let mut at = 0;
        self.fill_with(out.len(), rng, |chunk| {
            out[at..at + chunk.len()].copy_from_slice(chunk);
            at += chunk.len();
        });
    }

    /// Draws `count` independent samples and hands them to `sink` in order, in chunks of at
    /// most 512 (so a caller can convert them without a buffer of its own). The sampler's
    /// buffers are zeroed before it returns.
    pub fn fill_with<R: RngCore + ?Sized, F: FnMut(&[i64])>(
        &self,
        count: usize,
        rng: &mut R,
        mut sink: F,
    ) {
        let mut kept = [0i64; BATCH];
        let mut left = count;
        if self.table.width_bits == 0 {
            let mut batch = Batch::default();
            while left > 0 {
                let k = self.narrow_batch(&mut batch, &mut kept, rng);
                let take = k.min(left);
                sink(&kept[..take]);
                left -= take;
            }
            batch.zeroize();
        } else {
            while left > 0 {
                let take = left.min(BATCH);
                for x in &mut kept[..take] {
                    *x = self.sample_wide(rng);
                }
                sink(&kept[..take]);
                left -= take;
            }
        }
        kept.zeroize();
    }

    /// Buckets of one magnitude each (h = 1, up to σ ≈ 227): [`BATCH`] candidates proposed at
    /// once by [`propose_unit_batch`], a loop without branches that vectorises (table lookups
    /// as gathers); then the accepted ones are kept in `kept`, in candidate order (groups of
    /// [`GROUP`] with no rare candidate copied whole, the others one by one), and the loop
    /// sends the rare ones (the tail, an undecided or rejecting chunk, −0) to
    /// [`DiscreteGaussian::finish_rare`]. Returns how many were kept. A caller that needs fewer
    /// takes the first ones: in candidate order, whatever path accepted them, they are
    /// independent draws.
    fn narrow_batch<R: RngCore + ?Sized>(
        &self,
        batch: &mut Batch,
        kept: &mut [i64; BATCH],
        rng: &mut R,
    ) -> usize {
        let t = &*self.table;
        rng.fill_bytes(&mut batch.bytes);
        propose_unit_batch(
            &t.thresholds,
            &t.aliases,
            &t.accept_below,
            &batch.bytes,
            &mut batch.values,
            &mut batch.rare,
        );
        // Groups of GROUP candidates without a rare one (about 7 in 8 with σ ≈ 97) are copied
        // whole; the others go through the scalar loop. Same order, same draws from `rng` as
        // one scalar loop over the batch (`fast_compaction_keeps_the_scalar_loops_output`).
        let mut k = 0;
        for g in (0..BATCH).step_by(GROUP) {
            let rare = &batch.rare[g..g + GROUP];
            if rare.iter().fold(0u8, |a, &r| a | r) == 0 {
                kept[k..k + GROUP].copy_from_slice(&batch.values[g..g + GROUP]);
                k += GROUP;
            } else {
                k = self.compact_scalar(batch, g..g + GROUP, kept, k, rng);
            }
        }
        k
    }

    /// The candidates `range` of a batch kept one by one from `kept[k]` on, the rare ones
    /// decided by [`DiscreteGaussian::finish_rare`]; returns the new count.
    fn compact_scalar<R: RngCore + ?Sized>(
        &self,
        batch: &Batch,
        range: std::ops::Range<usize>,
        kept: &mut [i64; BATCH],
        mut k: usize,
        rng: &mut R,
    ) -> usize {
        let t = &*self.table;
        for i in range {
            let value = batch.values[i];
            if batch.rare[i] != 0 {
                let b = &batch.bytes[4 * i..4 * i + 4];
                let w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                let (bucket, negative) = propose(t, u64::from(w));
                let chunk = u64::from(w >> PROPOSAL_BITS);
                match self.finish_rare(bucket, u64::from(bucket), negative, chunk, rng) {
                    Rare::Sample(y) => kept[k] = y,
                    Rare::Reject => continue,
                    Rare::Accept => kept[k] = value,
                }
            } else {
                kept[k] = value;
            }
            k += 1;
        }
        k
    }

    /// One draw from unit buckets, without the batch (for single samples): the same steps as
    /// [`propose_unit_batch`] and [`DiscreteGaussian::fill_narrow`].
    fn sample_narrow<R: RngCore + ?Sized>(&self, rng: &mut R) -> i64 {
        let t = &*self.table;
        loop {
            let w = rng.next_u32();
            let (bucket, negative) = propose(t, u64::from(w));
            let chunk = u64::from(w >> PROPOSAL_BITS);
            let rare = (chunk >= t.accept_below[bucket as usize & (SLOTS - 1)])
                | ((bucket == 0) & negative);
            if rare {
                match self.finish_rare(bucket, u64::from(bucket), negative, chunk, rng) {
                    Rare::Sample(y) => return y,
                    Rare::Reject => continue,
                    Rare::Accept => {}
                }
            }
            return signed(u64::from(bucket), negative);
        }
    }

    /// Buckets of h > 1 magnitudes: one 64-bit word a candidate, whose bits above the proposal
    /// hold the offset in the bucket, the acceptance chunk and the start of the γ trial.
    #[inline(always)]
    fn sample_wide<R: RngCore + ?Sized>(&self, rng: &mut R) -> i64 {
        let t = &*self.table;
        let offset_mask = (1u64 << t.width_bits) - 1;
        let chunk_mask = (1u64 << t.chunk_bits) - 1;
        let two_num = 2 * u128::from(self.variance.num);
        let den = u128::from(self.variance.den);
        loop {
            let w = rng.next_u64();
            let (bucket, negative) = propose(t, w);
            let high = w >> PROPOSAL_BITS;
            let offset = high & offset_mask;
            let chunk = (high >> t.width_bits) & chunk_mask;
            let start = u64::from(bucket) << t.width_bits;
            let rare = (chunk >= t.accept_below[bucket as usize & (SLOTS - 1)])
                | ((start + offset == 0) & negative);
            if rare {
                match self.finish_rare(bucket, start + offset, negative, chunk, rng) {
                    Rare::Sample(y) => return y,
                    Rare::Reject => continue,
                    Rare::Accept => {}
                }
            }
            if offset > 0 {
                // γ = (y² − y_i²)/(2σ²) = offset·(2·y_i + offset)·den / (2·num).
                let g_num = u128::from(offset) * u128::from(2 * start + offset) * den;
                let g_chunk = high >> (t.width_bits + t.chunk_bits);
                if !bernoulli_exp_with_chunk(rng, g_chunk, t.gamma_bits, g_num, two_num) {
                    continue;
                }
            }
            return signed(start + offset, negative);
        }
    }

    /// The rare cases of a proposal of `magnitude` in `bucket`: the tail (a whole draw), −0
    /// (rejected), and an acceptance chunk the fast comparison did not accept.
    #[cold]
    #[inline(never)]
    fn finish_rare<R: RngCore + ?Sized>(
        &self,
        bucket: u32,
        magnitude: u64,
        negative: bool,
        chunk: u64,
        rng: &mut R,
    ) -> Rare {
        let t = &*self.table;
        if bucket == t.tail {
            return match self.sample_tail(rng, negative) {
                Some(y) => Rare::Sample(y),
                None => Rare::Reject,
            };
        }
        if negative && magnitude == 0 {
            return Rare::Reject;
        }
        let b = bucket as usize;
        let accept = if chunk < t.accept_below[b] {
            true
        } else if chunk >= t.reject_from[b] {
            false
        } else {
            // 32 more bits of U against c's 64-bit bounds, then arbitrary precision.
            let len = t.chunk_bits + 32;
            let prefix = (chunk << 32) | u64::from(rng.next_u32());
            let shift = 64 - len;
            if (u128::from(prefix) + 1) << shift <= t.c_lo[b] {
                true
            } else if u128::from(prefix) << shift >= t.c_hi[b] {
                false
            } else {
                bernoulli_bounded(&mut Bits::new(rng), prefix, len, |p| {
                    t.acceptance_bounds(bucket, p)
                })
            }
        };
        if accept { Rare::Accept } else { Rare::Reject }
    }

    /// A tail candidate B + j, accepted or not (`None`: draw again).
    #[cold]
    fn sample_tail<R: RngCore + ?Sized>(&self, rng: &mut R, negative: bool) -> Option<i64> {
        let t = &*self.table;
        let num = self.variance.num;
        let den = u128::from(self.variance.den);
        let mut bits = Bits::new(rng);
        // P(j) ∝ exp(−j·B/σ²) = exp(−j·(B·den)/num).
        let j = geometric(&mut bits, u128::from(t.tail_start) * den, num);
        if j > MAX_TAIL_OFFSET {
            return None;
        }
        // exp(−j²/(2σ²)), then c_tail. j²·den overflows only for j near 2^40 with σ² < 2^-19,
        // within the same caveat.
        let gamma_num = (j * j).checked_mul(den)?;
        if !bernoulli_exp(&mut bits, gamma_num, 2 * u128::from(num)) {
            return None;
        }
        if !bernoulli_bounded(&mut bits, 0, 0, |p| t.acceptance_bounds(t.tail, p)) {
            return None;
        }
        // j ≤ 2^40 and B < 2^29: no overflow.
        let y = (u128::from(t.tail_start) + j) as i64;
        Some(if negative { -y } else { y })
    }
}

/// Candidates proposed per batch on the unit-bucket path (32 bits each: 4 KiB).
const BATCH: usize = 1024;

/// Candidates per group of the batch's compaction: a group without a rare candidate is copied
/// whole (with σ ≈ 97, about 1 candidate in 500 is rare, so 7 groups in 8 are).
const GROUP: usize = 64;

/// The unit-bucket path's working buffers (zeroed after use: they hold noise).
struct Batch {
    bytes: [u8; 4 * BATCH],
    values: [i64; BATCH],
    rare: [u8; BATCH],
}

impl Default for Batch {
    fn default() -> Self {
        Self {
            bytes: [0; 4 * BATCH],
            values: [0; BATCH],
            rare: [0; BATCH],
        }
    }
}

impl Zeroize for Batch {
    fn zeroize(&mut self) {
        self.bytes.zeroize();
        self.values.zeroize();
    }
}

/// The bucket that word `w` proposes (from its low 31 bits: slot, then coin), and the sign
/// (bit 31).
#[inline(always)]
fn propose(t: &Table, w: u64) -> (u32, bool) {
    propose_parts(&t.thresholds, &t.aliases, w)
}

#[inline(always)]
fn propose_parts(thresholds: &[u32; SLOTS], aliases: &[u32; SLOTS], w: u64) -> (u32, bool) {
    let slot = (w as usize) & (SLOTS - 1);
    let coin = ((w >> SLOT_BITS) as u32) & ((1 << COIN_BITS) - 1);
    let alias = aliases[slot];
    // A select, not a branch: the coin is random, a branch would be mispredicted often.
    let keep = u32::from(coin < thresholds[slot]).wrapping_neg();
    let bucket = alias ^ ((alias ^ slot as u32) & keep);
    (bucket, (w >> (SLOT_BITS + COIN_BITS)) & 1 == 1)
}

/// The unit-bucket proposals of a batch of 32-bit candidates (little-endian in `bytes`):
/// `values[i]` the signed candidate of candidate i, and `rare[i]` = 1 where it needs [`DiscreteGaussian::finish_rare`] (its 32-bit
/// chunk does not prove acceptance, which includes the tail, whose `accept_below` is 0, or it
/// is −0). No branches; the lookups are gathers where the CPU has them (compiled per SIMD
/// level by `multiversion`).
#[multiversion::multiversion(targets = "simd")]
fn propose_unit_batch(
    thresholds: &[u32; SLOTS],
    aliases: &[u32; SLOTS],
    accept_below: &[u64; SLOTS],
    bytes: &[u8; 4 * BATCH],
    values: &mut [i64; BATCH],
    rare: &mut [u8; BATCH],
) {
    for i in 0..BATCH {
        let b = [
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ];
        let w = u64::from(u32::from_le_bytes(b));
        let (bucket, negative) = propose_parts(thresholds, aliases, w);
        let chunk = w >> PROPOSAL_BITS;
        let accepted = chunk < accept_below[bucket as usize & (SLOTS - 1)];
        let minus_zero = (bucket == 0) & negative;
        rare[i] = u8::from(!accepted | minus_zero);
        values[i] = signed(u64::from(bucket), negative);
    }
}

/// What [`DiscreteGaussian::finish_rare`] decided.
enum Rare {
    /// A whole draw (from the tail).
    Sample(i64),
    /// The proposal is rejected: draw again.
    Reject,
    /// The bucket's constant accepted the proposal: go on as on the fast path.
    Accept,
}

/// ±magnitude without a branch on the sign.
#[inline(always)]
fn signed(magnitude: u64, negative: bool) -> i64 {
    let minus = -i64::from(negative);
    (magnitude as i64 ^ minus) - minus
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha12Rng;

    #[test]
    fn variance_is_never_rounded_down() {
        for s in [
            MIN_VARIANCE,
            0.3,
            1.0,
            2.5,
            1e3 + 1.0 / 3.0,
            12_345_678.9,
            MAX_VARIANCE,
        ] {
            let v = Variance::at_least(s).unwrap();
            assert!(v.as_f64() >= s, "{s}");
            assert!(v.as_f64() - s <= s * 2f64.powi(-28), "{s}: {}", v.as_f64());
        }
        assert!(Variance::at_least(0.0).is_err());
        assert!(Variance::at_least(f64::NAN).is_err());
        assert!(Variance::at_least(MAX_VARIANCE * 2.0).is_err());
        assert_eq!(Variance::integer(7).unwrap().as_f64(), 7.0);
    }

    /// log P(Y = y) up to a constant, and the normaliser over a range wide enough that the
    /// rest is below 10⁻³⁰⁰: the exact probabilities of N_Z(0, σ²) on [−r, r].
    fn pmf(sigma2: f64) -> (i64, Vec<f64>) {
        let r = (40.0 * sigma2.sqrt()).ceil() as i64 + 5;
        let w: Vec<f64> = (-r..=r)
            .map(|x| (-((x * x) as f64) / (2.0 * sigma2)).exp())
            .collect();
        let total: f64 = w.iter().sum();
        (r, w.into_iter().map(|v| v / total).collect())
    }

    /// The 1 − 10⁻⁶ quantile of χ² with `df` degrees of freedom (Wilson–Hilferty; within 1% for
    /// df ≥ 10).
    fn chi2_bound(df: usize) -> f64 {
        let k = df as f64;
        let z = 4.753; // the standard normal's 1 − 10⁻⁶ quantile
        k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
    }

    /// A χ² goodness-of-fit test of `n` draws against the exact probabilities, in cells of
    /// consecutive integers of about equal probability (`cells` of them; the outermost cells
    /// reach to ±∞), failing with probability 10⁻⁶ if the sampler is exact. Returns χ².
    fn assert_fits(dg: &DiscreteGaussian, n: usize, cells: usize, seed: u64, what: &str) -> f64 {
        assert_fits_drawn(dg, n, cells, seed, what, false)
    }

    /// [`assert_fits`], the draws from `fill` or, `one_at_a_time`, from `sample`.
    fn assert_fits_drawn(
        dg: &DiscreteGaussian,
        n: usize,
        cells: usize,
        seed: u64,
        what: &str,
        one_at_a_time: bool,
    ) -> f64 {
        let sigma2 = dg.variance().as_f64();
        let (r, probs) = pmf(sigma2);
        // Cell boundaries: cut when the running mass passes k/cells.
        let mut upper = Vec::new(); // the last integer of each cell
        let mut cell_probs = Vec::new();
        let (mut acc, mut cell) = (0.0, 0.0);
        for (i, &p) in probs.iter().enumerate() {
            acc += p;
            cell += p;
            if acc >= (cell_probs.len() + 1) as f64 / cells as f64 && cell_probs.len() + 1 < cells {
                upper.push(i as i64 - r);
                cell_probs.push(cell);
                cell = 0.0;
            }
        }
        cell_probs.push(cell);
        upper.push(i64::MAX);
        let mut counts = vec![0u64; cell_probs.len()];
        let mut rng = ChaCha12Rng::seed_from_u64(seed);
        let mut draws = vec![0i64; n];
        if one_at_a_time {
            draws.iter_mut().for_each(|x| *x = dg.sample(&mut rng));
        } else {
            dg.fill(&mut draws, &mut rng);
        }
        for x in draws {
            counts[upper.partition_point(|&u| u < x)] += 1;
        }
        let mut chi2 = 0.0;
        for (c, p) in counts.iter().zip(&cell_probs) {
            let expected = p * n as f64;
            assert!(
                expected >= 5.0,
                "{what}: a cell with {expected} expected draws"
            );
            chi2 += (*c as f64 - expected).powi(2) / expected;
        }
        let bound = chi2_bound(counts.len() - 1);
        assert!(
            chi2 < bound,
            "{what}: χ² = {chi2} ≥ {bound} over {} cells",
            counts.len()
        );
        chi2
    }

    #[test]
    fn draws_fit_the_exact_distribution() {
        // Each shape of table: σ below 1 (a handful of buckets), σ = 3, σ ≈ 97 (the benchmark's
        // share, 583 buckets of one magnitude), σ ≈ 1000 and σ ≈ 40,000 (buckets of 8 and 256
        // magnitudes, with the γ trial).
        for (sigma2, cells) in [
            (0.5, 4),
            (3.0, 8),
            (97.3f64 * 97.3, 64),
            // Unit buckets with the tail at 4.8σ (UNIT_TAIL_Z), and at 4.5σ, the widest.
            (211.9f64 * 211.9, 64),
            (227.3f64 * 227.3, 64),
            (1000.5f64 * 1000.5, 64),
            (40_000.25f64 * 40_000.25, 64),
        ] {
            let dg = DiscreteGaussian::new(Variance::at_least(sigma2).unwrap());
            assert_fits(&dg, 400_000, cells, 3, &format!("σ² = {sigma2}"));
            // `sample` takes its own path for unit buckets (no batch).
            let what = format!("σ² = {sigma2}, one at a time");
            assert_fits_drawn(&dg, 100_000, cells, 4, &what, true);
        }
    }

    #[test]
    fn the_rare_paths_fit_the_distribution_alone() {
        // Tables of other shapes exercise the paths the sampler's own shape takes rarely: the
        // tail moved in to 0.5σ–2σ (a third to half of the draws come from it), a proposal
        // that gives every bucket the same weight (acceptance constants from 1 down to e^−18,
        // so a wrong constant shows), 16 buckets of about 2^9 magnitudes for σ ≈ 1000 (γ up to
        // about 2, the γ trial decisive), and every acceptance constant decided by the
        // arbitrary-precision comparison instead of the precomputed limits.
        for (sigma2, tail_z, max_bulk, cells) in [
            (3.0, 0.5, table::MAX_BULK, 8),
            (97.3f64 * 97.3, 1.0, table::MAX_BULK, 32),
            (1000.5f64 * 1000.5, 2.0, 16, 32),
            (1000.5f64 * 1000.5, 6.0, 16, 32),
        ] {
            let variance = Variance::at_least(sigma2).unwrap();
            for uniform in [false, true] {
                let shape = Shape {
                    tail_z,
                    unit_tail_z: tail_z,
                    max_bulk,
                    uniform,
                };
                let what = format!("σ² = {sigma2}, {shape:?}");
                let fast = DiscreteGaussian::with_shape(variance, shape);
                assert_fits(&fast, 100_000, cells, 4, &what);
                if !uniform {
                    // Its constants are all near 1: the uniform proposal tests the slow path
                    // better.
                    continue;
                }
                let slow = DiscreteGaussian {
                    variance,
                    table: Arc::new(
                        Table::build(variance.num, variance.den, shape).with_slow_acceptance(),
                    ),
                };
                assert_fits(&slow, 10_000, cells, 5, &format!("{what}, slow"));
            }
        }
    }

    impl DiscreteGaussian {
        /// The unit-bucket path with the batch compacted by one scalar loop: the reference
        /// for the grouped compaction of `narrow_batch`.
        fn fill_scalar_reference<R: RngCore + ?Sized>(
            &self,
            count: usize,
            rng: &mut R,
        ) -> Vec<i64> {
            let t = &*self.table;
            let mut batch = Batch::default();
            let mut kept = [0i64; BATCH];
            let mut out = Vec::with_capacity(count);
            while out.len() < count {
                rng.fill_bytes(&mut batch.bytes);
                propose_unit_batch(
                    &t.thresholds,
                    &t.aliases,
                    &t.accept_below,
                    &batch.bytes,
                    &mut batch.values,
                    &mut batch.rare,
                );
                let k = self.compact_scalar(&batch, 0..BATCH, &mut kept, 0, rng);
                let take = k.min(count - out.len());
                out.extend_from_slice(&kept[..take]);
            }
            out
        }
    }

    #[test]
    fn unit_buckets_reach_sigma_227_with_the_tail_at_4_5_sigma_or_beyond() {
        // (σ, log₂ h, B): the tail at ⌈6σ⌉ while that fits 1,023 unit buckets, then at 1,023
        // while that is at least 4.5σ, then wider buckets with the tail at 6σ again.
        for (sigma, width_bits, tail_start) in [
            (97.3f64, 0, 584),
            (170.4, 0, 1023),
            (211.9, 0, 1023),
            (227.3, 0, 1023),
            (227.4, 1, 1366),
            (1000.5, 3, 6008),
        ] {
            let v = Variance::at_least(sigma * sigma).unwrap();
            let table = Table::build(v.num, v.den, Shape::FAST);
            assert_eq!(
                (table.width_bits, table.tail_start),
                (width_bits, tail_start),
                "σ = {sigma}"
            );
            assert!(table.tail_start as f64 >= 4.5 * sigma, "σ = {sigma}");
        }
    }

    #[test]
    fn fast_compaction_keeps_the_scalar_loops_output() {
        // The grouped compaction changes no draw: the same samples in the same order, and the
        // generator left at the same place, for the sampler's shape and for shapes whose rare
        // paths (tail, rejections, −0) are frequent, so that most groups take the scalar loop.
        let shapes = [
            (97.3f64 * 97.3, Shape::FAST),
            (3.0, Shape::FAST),
            (
                3.0,
                Shape {
                    tail_z: 0.5,
                    unit_tail_z: 0.5,
                    max_bulk: table::MAX_BULK,
                    uniform: true,
                },
            ),
            (
                97.3f64 * 97.3,
                Shape {
                    tail_z: 1.0,
                    unit_tail_z: 1.0,
                    max_bulk: table::MAX_BULK,
                    uniform: true,
                },
            ),
        ];
        for (seed, (sigma2, shape)) in shapes.into_iter().enumerate() {
            let dg = DiscreteGaussian::with_shape(Variance::at_least(sigma2).unwrap(), shape);
            assert_eq!(dg.table.width_bits, 0, "unit buckets");
            let n = 50_000;
            let mut fast_rng = ChaCha12Rng::seed_from_u64(seed as u64);
            let mut fast = vec![0i64; n];
            dg.fill(&mut fast, &mut fast_rng);
            let mut slow_rng = ChaCha12Rng::seed_from_u64(seed as u64);
            let slow = dg.fill_scalar_reference(n, &mut slow_rng);
            assert_eq!(fast, slow, "σ² = {sigma2}, {shape:?}");
            assert_eq!(fast_rng.next_u64(), slow_rng.next_u64(), "σ² = {sigma2}");
        }
    }

    #[test]
    fn the_alias_table_gives_each_bucket_its_weight_exactly() {
        for sigma2 in [
            MIN_VARIANCE,
            0.5,
            4.0,
            9467.29,
            1_001_000.25,
            1.6e9,
            MAX_VARIANCE,
        ] {
            let v = Variance::at_least(sigma2).unwrap();
            let table = Table::build(v.num, v.den, Shape::FAST);
            let (got, total) = table.proposal_weights();
            assert_eq!(got, table.weights(), "σ² = {sigma2}");
            assert_eq!(got.iter().sum::<u64>(), total);
            assert!(table.tail as u64 <= table::MAX_BULK);
            // Every acceptance constant is in (0, 1], and the fast path decides almost always:
            // its undecided chunks are at most a few of 2^chunk_bits.
            for bucket in 0..table.tail as usize {
                let (accept, reject) = (table.accept_below[bucket], table.reject_from[bucket]);
                assert!(accept <= reject, "σ² = {sigma2}, bucket {bucket}");
                assert!(reject - accept <= 2, "σ² = {sigma2}, bucket {bucket}");
                assert!(reject <= 1 << table.chunk_bits);
            }
            assert_eq!(table.accept_below[table.tail as usize], 0);
        }
    }

    /// Counts the 64-bit words drawn.
    struct Counting<R> {
        inner: R,
        words: u64,
    }

    impl<R: RngCore> RngCore for Counting<R> {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.words += 1;
            self.inner.next_u64()
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            self.words += dst.len().div_ceil(8) as u64;
            self.inner.fill_bytes(dst);
        }
    }

    #[test]
    fn a_draw_costs_half_a_word_with_unit_buckets_and_one_otherwise() {
        // A 32-bit candidate with unit buckets, a 64-bit word otherwise, almost all accepted;
        // the last batch's unused candidates are dropped (at most 1,024 of 200,000 draws).
        for (sigma2, most) in [
            (97.3f64 * 97.3, 0.51),
            (211.9f64 * 211.9, 0.51),
            (1000.5f64 * 1000.5, 1.02),
        ] {
            let dg = DiscreteGaussian::new(Variance::at_least(sigma2).unwrap());
            let mut rng = Counting {
                inner: ChaCha12Rng::seed_from_u64(6),
                words: 0,
            };
            let n = 200_000;
            let mut out = vec![0; n];
            dg.fill(&mut out, &mut rng);
            let per_draw = rng.words as f64 / n as f64;
            assert!(per_draw <= most, "σ² = {sigma2}: {per_draw} words a draw");
        }
    }

    #[test]
    fn extreme_variances_sample() {
        let mut rng = ChaCha12Rng::seed_from_u64(7);
        let tiny = DiscreteGaussian::new(Variance::at_least(MIN_VARIANCE).unwrap());
        // P(Y ≠ 0) ≈ 2·e^(−2^19): never.
        assert!((0..10_000).all(|_| tiny.sample(&mut rng) == 0));
        let huge = DiscreteGaussian::new(Variance::at_least(MAX_VARIANCE).unwrap());
        let n = 20_000;
        let mut xs = vec![0i64; n];
        huge.fill(&mut xs, &mut rng);
        let var = xs.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / n as f64;
        assert!(
            (var / MAX_VARIANCE - 1.0).abs() < 6.0 * (2.0 / n as f64).sqrt(),
            "{var}"
        );
    }

    #[test]
    fn large_sigma_mean_and_variance() {
        // 100,000 draws with σ = 1000.5: the sample mean's standard error is σ/√n ≈ 3.2 and the
        // sample variance's relative standard error is √(2/n) ≈ 0.45% (the discrete Gaussian at
        // this σ has the continuous one's moments to 10⁻¹⁰⁰). Bounds: 6 standard errors.
        let mut rng = ChaCha12Rng::seed_from_u64(4);
        let sigma2 = 1000.5f64 * 1000.5;
        let dg = DiscreteGaussian::new(Variance::at_least(sigma2).unwrap());
        let n = 100_000;
        let mut xs = vec![0i64; n];
        dg.fill(&mut xs, &mut rng);
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let se_mean = (sigma2 / n as f64).sqrt();
        assert!(mean.abs() <= 6.0 * se_mean, "mean {mean}");
        let rel = (var / sigma2 - 1.0).abs();
        assert!(
            rel <= 6.0 * (2.0 / n as f64).sqrt(),
            "variance {var} vs {sigma2}"
        );
        // Symmetric: as many negatives as positives, up to 6 standard errors.
        let negatives = xs.iter().filter(|&&x| x < 0).count() as u64;
        let positives = xs.iter().filter(|&&x| x > 0).count() as u64;
        let se = ((negatives + positives) as f64).sqrt() / 2.0;
        assert!((negatives as f64 - positives as f64).abs() / 2.0 <= 6.0 * se);
    }
}
