//! Conditional randomised rounding (Kairouz, Liu, Steinke 2021, §4.1 and Proposition 22): round
//! each coordinate of a scaled vector to a neighbouring integer, up with probability equal to
//! its fractional part (unbiased), and start again until the rounded vector's L2 norm is within
//! a bound. The privacy analysis needs the rounded vector's norm bounded; unconditioned rounding
//! could only guarantee ‖x‖ + √n.
//!
//! The bound, for a vector of norm at most c in n coordinates and a parameter β ∈ [0, 1):
//!
//! Δ₂ = min( c + √n,  √(c² + n/4 + √(2 ln(1/β))·(c + √n/2)) ),
//!
//! which a single rounding meets with probability at least 1 − β. The check is exact: the
//! rounded coordinates are integers, and their squared norm is compared in 128-bit integers
//! against ⌊Δ₂²⌋, so float error in the scaling or the rotation can never let a vector above the
//! bound through.

use rand::Rng;
use rand_core::RngCore;
use zeroize::Zeroize;

use crate::keystream::RoundingRng;

/// How many roundings are tried before giving up. With β ≤ e^-0.5 each fails with probability
/// below 0.61, so all 64 fail with probability below 10^-13.
pub const MAX_ATTEMPTS: u32 = 64;

/// How many coordinates are rounded per block of random numbers.
const BLOCK: usize = 1024;

/// The largest magnitude rounded: 2^31 − 128 (the largest `f32` below 2^31 − 1), so that the
/// rounded value fits an `i32`.
const LIMIT: f32 = 2_147_483_520.0;

/// 2^16 as an `f32`: a coordinate is rounded up when 16 random bits, read as an integer, are
/// below its fractional part times 2^16.
const TWO_POW_16: f32 = 65_536.0;

/// Why a vector could not be rounded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RoundingError {
    /// Every attempt exceeded the bound: the input's norm is above the norm the bound was made
    /// for, or (with probability below 10^-13) bad luck.
    #[error(
        "no rounding within the norm bound after {MAX_ATTEMPTS} attempts (last squared norm \
         {last_norm_sq}, bound {bound_sq}); the vector was not clipped to the bound's norm"
    )]
    BoundNotMet {
        /// The squared norm of the last attempt.
        last_norm_sq: u128,
        /// ⌊Δ₂²⌋.
        bound_sq: u128,
    },
    /// A coordinate is NaN or too large for the integer grid (|x| ≥ 2^31).
    #[error("coordinate {index} ({value}) cannot be rounded to a 32-bit integer")]
    OutOfRange {
        /// The coordinate's index.
        index: usize,
        /// Its value.
        value: f32,
    },
}

/// Δ₂ for a vector of norm at most `norm` in `dim` coordinates (see the module docs); with
/// β = 0, the deterministic c + √n.
pub fn l2_bound(norm: f64, dim: usize, beta: f64) -> f64 {
    let n = dim as f64;
    let deterministic = norm + n.sqrt();
    if beta <= 0.0 {
        return deterministic;
    }
    let conditional =
        (norm * norm + 0.25 * n + (2.0 * (1.0 / beta).ln()).sqrt() * (norm + 0.5 * n.sqrt()))
            .sqrt();
    deterministic.min(conditional)
}

/// The L1 bound of an integer vector of L2 norm at most `l2` in `dim` coordinates:
/// ‖v‖₁ ≤ √n·‖v‖₂, and ‖v‖₁ ≤ ‖v‖₂² since every non-zero |vᵢ| ≥ 1.
pub fn l1_bound(l2: f64, dim: usize) -> f64 {
    l2 * (dim as f64).sqrt().min(l2)
}

/// Rounds `x` into `out` (same length) until Σ outᵢ² ≤ `bound_sq`; returns the number of
/// attempts. The randomness comes from a ChaCha8 keystream ([`crate::keystream`]) seeded from
/// `rng`; it needs no secrecy (the privacy comes from the noise, whatever the rounding).
///
/// Each coordinate v is rounded up with probability ⌈{v}·2^16⌉/2^16 from 16 random bits
/// ({v} its fractional part): exactly {v} when |v| ≥ 2^7 (an `f32` then has at most 16
/// fractional bits), and more by less than 2^-16 of a grid step otherwise. The bias is far
/// below the noise (a share alone has σ ≥ 2 steps) and changes nothing in the privacy analysis,
/// which needs only the norm bound, checked exactly. Half the random bits of a 32-bit
/// comparison, and the whole step runs in `f32` lanes.
pub fn conditional_round<R: Rng + ?Sized>(
    x: &[f32],
    bound_sq: u128,
    rng: &mut R,
    out: &mut [i32],
) -> Result<u32, RoundingError> {
    assert_eq!(x.len(), out.len(), "input and output lengths differ");
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let mut stream = RoundingRng::from_key(&seed);
    let mut random = [0u8; 2 * BLOCK];
    let mut last = 0u128;
    // With Δ₂ below 2^26, squares are summed per block in a u64 with every |q| capped at 2^26:
    // 1,024 capped squares fit (below 2^62), the loop vectorises, and a capped coordinate alone
    // already exceeds the bound, so the cap cannot let a vector through.
    let capped = bound_sq < 1u128 << 52;
    for attempt in 1..=MAX_ATTEMPTS {
        let mut norm_sq = 0u128;
        for (block, rounded) in x.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
            let random = &mut random[..2 * block.len()];
            stream.fill_bytes(random);
            if round_block(block, random, rounded) {
                let (index, &value) = x
                    .iter()
                    .enumerate()
                    .find(|&(_, v)| v.is_nan() || v.abs() >= LIMIT)
                    .expect("a coordinate was flagged");
                return Err(RoundingError::OutOfRange { index, value });
            }
            norm_sq += block_norm_sq(rounded, capped);
        }
        if norm_sq <= bound_sq {
            return Ok(attempt);
        }
        last = norm_sq;
    }
    Err(RoundingError::BoundNotMet {
        last_norm_sq: last,
        bound_sq,
    })
}

/// [`conditional_round`] added onto `acc` instead of written out: accᵢ ← accᵢ + qᵢ mod 2^32
/// (the ring elements of the rounded vector). The same draws from `rng` and the same q, so the
/// same result as [`conditional_round`] followed by the addition, without a buffer for q: a
/// client adds its rounded update onto its noise share in place. An attempt above the bound is
/// taken off `acc` again by drawing the same rounding a second time (the stream re-keyed and
/// advanced to where the attempt began), which almost never happens (see [`MAX_ATTEMPTS`]).
/// On an error `acc` holds a partial sum: discard it.
pub fn conditional_round_onto<R: Rng + ?Sized>(
    x: &[f32],
    bound_sq: u128,
    rng: &mut R,
    acc: &mut [u32],
) -> Result<u32, RoundingError> {
    assert_eq!(x.len(), acc.len(), "input and accumulator lengths differ");
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let mut stream = RoundingRng::from_key(&seed);
    let mut buffers = Buffers {
        random: [0u8; 2 * BLOCK],
        rounded: [0i32; BLOCK],
    };
    // Words of the stream one attempt reads (whole words per block, as `fill_bytes` reads).
    let words_per_attempt: u64 = x
        .chunks(BLOCK)
        .map(|b| (2 * b.len()).div_ceil(8) as u64)
        .sum();
    let capped = bound_sq < 1u128 << 52;
    let mut last = 0u128;
    let mut outcome = None;
    for attempt in 1..=MAX_ATTEMPTS {
        let norm_sq = match round_pass(x, &mut stream, &mut buffers, capped, acc, Sign::Add) {
            Ok(n) => n,
            Err(e) => {
                outcome = Some(Err(e));
                break;
            }
        };
        if norm_sq <= bound_sq {
            outcome = Some(Ok(attempt));
            break;
        }
        last = norm_sq;
        let mut again = RoundingRng::from_key(&seed);
        let mut skip = u64::from(attempt - 1) * words_per_attempt;
        while skip > 0 {
            let words = skip.min(BLOCK as u64 / 4);
            again.fill_bytes(&mut buffers.random[..8 * words as usize]);
            skip -= words;
        }
        // The same values rounded the same way: it cannot fail where the first pass did not.
        round_pass(x, &mut again, &mut buffers, capped, acc, Sign::Subtract)?;
    }
    buffers.rounded.zeroize();
    outcome.unwrap_or(Err(RoundingError::BoundNotMet {
        last_norm_sq: last,
        bound_sq,
    }))
}

/// The working buffers of [`conditional_round_onto`]: one block's random bytes and its
/// rounded values.
struct Buffers {
    random: [u8; 2 * BLOCK],
    rounded: [i32; BLOCK],
}

/// Whether a pass adds its rounding onto the accumulator or takes it off.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sign {
    Add,
    Subtract,
}

/// One rounding of `x` from `stream`, added onto (or taken off) `acc` block by block; returns
/// its squared norm.
fn round_pass(
    x: &[f32],
    stream: &mut RoundingRng,
    buffers: &mut Buffers,
    capped: bool,
    acc: &mut [u32],
    sign: Sign,
) -> Result<u128, RoundingError> {
    let mut norm_sq = 0u128;
    for (block, acc) in x.chunks(BLOCK).zip(acc.chunks_mut(BLOCK)) {
        let random = &mut buffers.random[..2 * block.len()];
        let rounded = &mut buffers.rounded[..block.len()];
        stream.fill_bytes(random);
        if round_block(block, random, rounded) {
            let (index, &value) = x
                .iter()
                .enumerate()
                .find(|&(_, v)| v.is_nan() || v.abs() >= LIMIT)
                .expect("a coordinate was flagged");
            return Err(RoundingError::OutOfRange { index, value });
        }
        norm_sq += block_norm_sq(rounded, capped);
        match sign {
            Sign::Add => acc
                .iter_mut()
                .zip(rounded.iter())
                .for_each(|(a, &q)| *a = a.wrapping_add(q as u32)),
            Sign::Subtract => acc
                .iter_mut()
                .zip(rounded.iter())
                .for_each(|(a, &q)| *a = a.wrapping_sub(q as u32)),
        }
    }
    Ok(norm_sq)
}

/// Σ qᵢ² of one block: capped at 2^26 per coordinate when `capped` (see [`conditional_round`]).
fn block_norm_sq(rounded: &[i32], capped: bool) -> u128 {
    if capped {
        u128::from(capped_norm_sq(rounded))
    } else {
        rounded
            .iter()
            .map(|&q| u128::from(q.unsigned_abs()) * u128::from(q.unsigned_abs()))
            .sum::<u128>()
    }
}

/// Below this magnitude (2^22) a coordinate is rounded by the fast path.
const FAST_LIMIT: f32 = 4_194_304.0;

/// 1.5·2^23: adding it to an `f32` below 2^22 in magnitude rounds it to an integer k, and the
/// sum's bits are then `MAGIC_BITS + k`.
const MAGIC: f32 = 12_582_912.0;
const MAGIC_BITS: i32 = 0x4B40_0000;

/// Rounds one block with 16 random bits (2 bytes, little-endian) per coordinate; returns
/// whether a coordinate is NaN or out of range (the values written are then meaningless and
/// the caller refuses the vector). Compiled per SIMD level by `multiversion`.
///
/// When every |v| < 2^22 (all realistic grids), the floor comes from the magic-number
/// rounding: no float-to-integer conversion, whose saturating semantics in Rust keep the
/// compiler from vectorising it, and no `f32::floor`, a libm call on baseline x86-64. Larger
/// values take the same steps with conversions.
#[multiversion::multiversion(targets = "simd")]
fn round_block(block: &[f32], random: &[u8], rounded: &mut [i32]) -> bool {
    // Counts, not flags: sum reductions vectorise.
    let slow: u32 = block
        .iter()
        .map(|v| u32::from(v.is_nan() | (v.abs() >= FAST_LIMIT)))
        .sum();
    if slow == 0 {
        for ((r, &v), u) in rounded.iter_mut().zip(block).zip(random.chunks_exact(2)) {
            let t = v + MAGIC;
            let nearest = t - MAGIC;
            let down = nearest > v;
            let floor = nearest - f32::from(u8::from(down));
            // Exact: v and ⌊v⌋ are within 1 of each other (Sterbenz).
            let fraction = v - floor;
            let u = f32::from(u16::from_le_bytes([u[0], u[1]]));
            let up = u < fraction * TWO_POW_16;
            *r = (t.to_bits() as i32 - MAGIC_BITS) - i32::from(down) + i32::from(up);
        }
        return false;
    }
    let mut out_of_range = 0u32;
    for ((r, &v), u) in rounded.iter_mut().zip(block).zip(random.chunks_exact(2)) {
        out_of_range += u32::from(v.is_nan() | (v.abs() >= LIMIT));
        // For |v| < LIMIT the truncation and floor + 1 fit an i32.
        let truncated = v as i32;
        let floor = truncated - i32::from(v < truncated as f32);
        let fraction = v - floor as f32;
        let u = f32::from(u16::from_le_bytes([u[0], u[1]]));
        let up = u < fraction * TWO_POW_16;
        *r = floor.wrapping_add(i32::from(up));
    }
    out_of_range > 0
}

/// Σ min(|q|, 2^26)² over one block (at most 1,024 coordinates: below 2^62).
#[multiversion::multiversion(targets = "simd")]
fn capped_norm_sq(rounded: &[i32]) -> u64 {
    rounded
        .iter()
        .map(|&q| {
            let a = u64::from(q.unsigned_abs().min(1 << 26));
            a * a
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_is_the_smaller_of_the_two() {
        // Large n: the deterministic bound c + √n is looser than the conditional one.
        let (c, n) = (1000.0, 1 << 20);
        let b = l2_bound(c, n, (-0.5f64).exp());
        let want = (c * c + 0.25 * n as f64 + 1.0 * (c + 512.0)).sqrt();
        assert!((b - want).abs() < 1e-9);
        assert_eq!(l2_bound(3.0, 4, 0.0), 5.0);
        assert_eq!(l1_bound(10.0, 16), 40.0);
        assert_eq!(l1_bound(2.0, 16), 4.0);
    }

    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn rounding_is_unbiased_and_within_one() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let x: Vec<f32> = (0..4096).map(|i| (i as f32) * 0.37 - 700.25).collect();
        let mut out = vec![0i32; x.len()];
        let mut sums = vec![0f64; x.len()];
        let trials = 400;
        for _ in 0..trials {
            conditional_round(&x, u128::MAX, &mut rng, &mut out).unwrap();
            for ((s, &q), &v) in sums.iter_mut().zip(&out).zip(&x) {
                assert!((f64::from(q) - f64::from(v)).abs() < 1.0);
                *s += f64::from(q);
            }
        }
        // The mean of 400 roundings is within 6 standard errors (≤ 0.5/√400 each) of x, for
        // the average over all coordinates (tighter still).
        let mean_err: f64 = sums
            .iter()
            .zip(&x)
            .map(|(s, &v)| s / f64::from(trials) - f64::from(v))
            .sum::<f64>()
            / x.len() as f64;
        assert!(mean_err.abs() < 6.0 * 0.5 / (f64::from(trials) * x.len() as f64).sqrt());
    }

    #[test]
    fn the_fast_and_general_paths_round_alike() {
        // Same random bytes, values on both sides of the fast path's 2^22 limit: a block with
        // one large value takes the general path; the values they share round the same.
        let values: Vec<f32> = (0..1024)
            .map(|i| (i as f32 - 512.0) * 1.37 + 0.5 * (i % 3) as f32)
            .chain([-4_194_303.5, 4_194_302.5, -0.75, -1.0, 0.0, -0.0, 2.5, -2.5])
            .collect();
        let random: Vec<u8> = (0..2 * (values.len() + 1))
            .map(|i| (i * 97 % 256) as u8)
            .collect();
        let mut fast = vec![0i32; values.len()];
        assert!(!round_block(&values, &random, &mut fast));
        let mut with_large = values.clone();
        with_large.push(1e7);
        let mut general = vec![0i32; with_large.len()];
        assert!(!round_block(&with_large, &random, &mut general));
        assert_eq!(&general[..values.len()], &fast[..]);
        assert_eq!(general[values.len()], 10_000_000);
        for (&q, &v) in fast.iter().zip(&values) {
            assert!((f64::from(q) - f64::from(v)).abs() < 1.0, "{v} → {q}");
        }
        // Exact integers stay.
        for (&q, &v) in fast.iter().zip(&values).skip(1028) {
            if v.fract() == 0.0 {
                assert_eq!(q as f32, v);
            }
        }
        assert!(round_block(&[f32::NAN], &[0, 0], &mut [0]));
        assert!(round_block(&[f32::INFINITY, 1.0], &[0; 4], &mut [0; 2]));
    }

    #[test]
    fn rounding_onto_an_accumulator_adds_what_conditional_round_writes() {
        // Half-integers whose rounded norm² is binomial (mean 1,250, sd 25 for 2,500 of them,
        // three blocks): a bound at the mean rejects about half the attempts, so several
        // seeds need more than one and exercise taking a rejected attempt off again.
        let x = vec![0.5f32; 2500];
        let start: Vec<u32> = (0..x.len() as u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        let mut retried = 0;
        for seed in 0..12 {
            for bound in [1250u128, 1200] {
                let mut out = vec![0i32; x.len()];
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let written = conditional_round(&x, bound, &mut rng, &mut out);
                let mut acc = start.clone();
                let mut rng_onto = ChaCha8Rng::seed_from_u64(seed);
                let added = conditional_round_onto(&x, bound, &mut rng_onto, &mut acc);
                assert_eq!(written, added, "seed {seed}, bound {bound}");
                if let Ok(attempts) = added {
                    retried += usize::from(attempts > 1);
                    let want: Vec<u32> = start
                        .iter()
                        .zip(&out)
                        .map(|(&a, &q)| a.wrapping_add(q as u32))
                        .collect();
                    assert_eq!(acc, want, "seed {seed}, bound {bound}");
                }
                // The caller's generator is left at the same place.
                assert_eq!(rng.next_u64(), rng_onto.next_u64());
            }
        }
        assert!(retried >= 3, "{retried} roundings needed a second attempt");
        let mut acc = vec![7u32; 2];
        assert!(matches!(
            conditional_round_onto(
                &[1.0, f32::NAN],
                u128::MAX,
                &mut ChaCha8Rng::seed_from_u64(1),
                &mut acc
            ),
            Err(RoundingError::OutOfRange { index: 1, .. })
        ));
    }

    #[test]
    fn the_bound_is_enforced_exactly() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        // Half-integers: every rounding has norm² in [Σ⌊x⌋², Σ⌈x⌉²]; with a bound at the floor
        // norm only the all-down rounding passes, which 64 tries of 8 coordinates will not find
        // except with probability 64/256.
        let x = vec![0.5f32; 8];
        let mut out = vec![0i32; 8];
        let err = conditional_round(&x, 0, &mut rng, &mut out);
        // Either it found the all-zero rounding (norm 0) or it reports the failure; never a
        // vector above the bound.
        match err {
            Ok(_) => assert!(out.iter().all(|&q| q == 0)),
            Err(RoundingError::BoundNotMet { bound_sq, .. }) => assert_eq!(bound_sq, 0),
            Err(e) => panic!("{e}"),
        }
        // A bound no rounding meets.
        let x = vec![3.0f32; 8];
        assert!(matches!(
            conditional_round(&x, 71, &mut rng, &mut out),
            Err(RoundingError::BoundNotMet {
                bound_sq: 71,
                last_norm_sq: 72
            })
        ));
        // A coordinate far above the cap (2^26) is caught by the capped sum.
        let x = vec![0.0f32, 1.0e9, 0.0];
        assert!(matches!(
            conditional_round(&x, (1 << 52) - 1, &mut rng, &mut [0; 3]),
            Err(RoundingError::BoundNotMet { .. })
        ));
        assert!(matches!(
            conditional_round(&[f32::NAN], u128::MAX, &mut rng, &mut [0]),
            Err(RoundingError::OutOfRange { index: 0, .. })
        ));
    }
}
