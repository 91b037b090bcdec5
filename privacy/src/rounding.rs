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

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How many roundings are tried before giving up. With β ≤ e^-0.5 each fails with probability
/// below 0.61, so all 64 fail with probability below 10^-13.
pub const MAX_ATTEMPTS: u32 = 64;

/// How many coordinates are rounded per block of random numbers.
const BLOCK: usize = 1024;

/// The largest magnitude rounded: 2^31 − 128 (the largest `f32` below 2^31 − 1), so that the
/// rounded value fits an `i32`.
const LIMIT: f32 = 2_147_483_520.0;

/// 2^32 as an `f64`.
const TWO_POW_32: f64 = 4_294_967_296.0;

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
/// attempts. The randomness comes from a ChaCha8 stream seeded from `rng`; it needs no secrecy
/// (the privacy comes from the noise, whatever the rounding).
pub fn conditional_round<R: Rng + ?Sized>(
    x: &[f32],
    bound_sq: u128,
    rng: &mut R,
    out: &mut [i32],
) -> Result<u32, RoundingError> {
    assert_eq!(x.len(), out.len(), "input and output lengths differ");
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let mut stream = ChaCha8Rng::from_seed(seed);
    let mut random = [0u32; BLOCK];
    let mut last = 0u128;
    // With Δ₂ below 2^26, squares are summed per block in a u64 with every |q| capped at 2^26:
    // 1,024 capped squares fit (below 2^62), the loop vectorises, and a capped coordinate alone
    // already exceeds the bound, so the cap cannot let a vector through.
    let capped = bound_sq < 1u128 << 52;
    for attempt in 1..=MAX_ATTEMPTS {
        let mut norm_sq = 0u128;
        for (block, rounded) in x.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
            let random = &mut random[..block.len()];
            stream.fill(random);
            // Branch-free and free of `f64::floor` (a libm call on baseline x86-64), so that
            // it vectorises; out-of-range input is only flagged here (`as` saturates, NaN
            // gives 0) and refused below.
            let mut out_of_range = false;
            for ((r, &v), &u) in rounded.iter_mut().zip(block).zip(random.iter()) {
                out_of_range |= v.is_nan() | (v.abs() >= LIMIT);
                let v = f64::from(v);
                // For |v| < LIMIT the truncation and floor + 1 fit an i32.
                let truncated = v as i32;
                let floor = truncated - i32::from(v < f64::from(truncated));
                let up = f64::from(u) < (v - f64::from(floor)) * TWO_POW_32;
                *r = floor.wrapping_add(i32::from(up));
            }
            if out_of_range {
                let (index, &value) = x
                    .iter()
                    .enumerate()
                    .find(|&(_, v)| v.is_nan() || v.abs() >= LIMIT)
                    .expect("a coordinate was flagged");
                return Err(RoundingError::OutOfRange { index, value });
            }
            if capped {
                let block_sq: u64 = rounded
                    .iter()
                    .map(|&q| {
                        let a = u64::from(q.unsigned_abs().min(1 << 26));
                        a * a
                    })
                    .sum();
                norm_sq += u128::from(block_sq);
            } else {
                norm_sq += rounded
                    .iter()
                    .map(|&q| u128::from(q.unsigned_abs()) * u128::from(q.unsigned_abs()))
                    .sum::<u128>();
            }
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
