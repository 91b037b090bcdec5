//! The random rotation of distributed mode: the randomised Hadamard transform
//! R = H·D_ξ / √n, with H the n × n Walsh–Hadamard matrix (n a power of two) and D_ξ a diagonal
//! of random signs drawn from a per-round seed.
//!
//! Why rotate: modular clipping wraps a coordinate that leaves the ring's range. Clipping bounds
//! the L2 norm, not the largest coordinate; after a random rotation every coordinate is close to
//! Gaussian with variance ‖x‖²/n (Kairouz et al. 2021, §4.2), so the range can be sized by
//! standard deviations instead of by the worst case ‖x‖. The seed is public and the same for
//! every client of a round (the server undoes one rotation on the sum); it need not be secret,
//! since the privacy comes from the noise alone, whatever the rotation.
//!
//! R is orthogonal (Hᵀ = H, H² = n·I), so R⁻¹ = Rᵀ = D_ξ·H / √n: the same transform, signs last.
//! Vectors are zero-padded to the next power of two.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;

/// Transforms of at most this many coordinates run level by level in cache; larger ones split
/// in halves first (depth first), so each level of a large transform works on data in cache
/// except for the last few.
const IN_CACHE: usize = 1 << 12;

/// The largest padded length: 2^30 coordinates (a 4 GiB `f32` vector).
pub const MAX_PADDED_LEN: usize = 1 << 30;

/// Why a rotation cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationError {
    /// The dimension is 0 or pads beyond [`MAX_PADDED_LEN`].
    #[error("cannot rotate vectors of {0} coordinates; the dimension must be in 1..=2^30")]
    BadDimension(usize),
}

/// The padded length for `dim` coordinates: the next power of two.
pub fn padded_len(dim: usize) -> Result<usize, RotationError> {
    match dim.checked_next_power_of_two() {
        Some(n) if dim > 0 && n <= MAX_PADDED_LEN => Ok(n),
        _ => Err(RotationError::BadDimension(dim)),
    }
}

/// The randomised Hadamard transform for one round. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RandomizedHadamard {
    padded: usize,
    /// Sign bits, one per coordinate (bit i of word i/64; 1 means −1).
    signs: Vec<u64>,
}

impl RandomizedHadamard {
    /// The rotation for vectors of `padded` coordinates (a power of two) with signs from the
    /// round's public `seed` (ChaCha20, so that every platform derives the same signs).
    pub fn new(seed: &[u8; 32], padded: usize) -> Result<Self, RotationError> {
        if !padded.is_power_of_two() || padded > MAX_PADDED_LEN {
            return Err(RotationError::BadDimension(padded));
        }
        let mut rng = ChaCha20Rng::from_seed(*seed);
        let signs = (0..padded.div_ceil(64)).map(|_| rng.next_u64()).collect();
        Ok(Self { padded, signs })
    }

    /// The padded length n.
    pub fn len(&self) -> usize {
        self.padded
    }

    /// Always false: a rotation has at least one coordinate.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// R·(factor·x), into `out` (resized to n): `x` is zero-padded, each coordinate multiplied
    /// by ±factor/√n, then transformed. `x` must have at most n coordinates.
    pub fn rotate_scaled(&self, x: &[f32], factor: f64, out: &mut Vec<f32>) {
        assert!(x.len() <= self.padded, "vector longer than the rotation");
        out.clear();
        out.resize(self.padded, 0.0);
        let scale = (factor / (self.padded as f64).sqrt()) as f32;
        for ((chunk, source), &word) in out.chunks_mut(64).zip(x.chunks(64)).zip(&self.signs) {
            for (i, (o, &v)) in chunk.iter_mut().zip(source).enumerate() {
                *o = flip(v * scale, word, i);
            }
        }
        fwht(out);
    }

    /// Rᵀ·y in place: the transform, then ±1/√n per coordinate. The caller truncates the
    /// padding. `y` must have exactly n coordinates.
    pub fn unrotate(&self, y: &mut [f32]) {
        assert_eq!(
            y.len(),
            self.padded,
            "vector length differs from the rotation's"
        );
        fwht(y);
        let scale = (1.0 / (self.padded as f64).sqrt()) as f32;
        for (chunk, &word) in y.chunks_mut(64).zip(&self.signs) {
            for (i, v) in chunk.iter_mut().enumerate() {
                *v = flip(*v * scale, word, i);
            }
        }
    }
}

/// `v` with its sign flipped where bit `i` of `word` is set (branch-free, so loops vectorise).
#[inline(always)]
fn flip(v: f32, word: u64, i: usize) -> f32 {
    f32::from_bits(v.to_bits() ^ ((((word >> i) & 1) as u32) << 31))
}

/// The unnormalised fast Walsh–Hadamard transform, in place: x ← H·x. `x.len()` must be a
/// power of two. H·H = n·I.
pub fn fwht(x: &mut [f32]) {
    let n = x.len();
    assert!(
        n.is_power_of_two(),
        "the Hadamard transform needs a power-of-two length"
    );
    if n <= IN_CACHE {
        fwht_in_cache(x);
        return;
    }
    let (lo, hi) = x.split_at_mut(n / 2);
    fwht(lo);
    fwht(hi);
    butterfly(lo, hi);
}

/// (a, b) ← (a + b, a − b) over two halves; the loop vectorises.
#[inline]
fn butterfly(lo: &mut [f32], hi: &mut [f32]) {
    for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
        let (s, d) = (*a + *b, *a - *b);
        *a = s;
        *b = d;
    }
}

fn fwht_in_cache(x: &mut [f32]) {
    let n = x.len();
    let mut h = 1;
    if n >= 8 {
        // The three smallest strides at once, on blocks of eight.
        for c in x.chunks_exact_mut(8) {
            let [a0, a1, a2, a3, a4, a5, a6, a7] = [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
            let (b0, b1, b2, b3) = (a0 + a1, a0 - a1, a2 + a3, a2 - a3);
            let (b4, b5, b6, b7) = (a4 + a5, a4 - a5, a6 + a7, a6 - a7);
            let (c0, c1, c2, c3) = (b0 + b2, b1 + b3, b0 - b2, b1 - b3);
            let (c4, c5, c6, c7) = (b4 + b6, b5 + b7, b4 - b6, b5 - b7);
            c[0] = c0 + c4;
            c[1] = c1 + c5;
            c[2] = c2 + c6;
            c[3] = c3 + c7;
            c[4] = c0 - c4;
            c[5] = c1 - c5;
            c[6] = c2 - c6;
            c[7] = c3 - c7;
        }
        h = 8;
    }
    while h < n {
        for block in x.chunks_exact_mut(2 * h) {
            let (lo, hi) = block.split_at_mut(h);
            butterfly(lo, hi);
        }
        h *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// H by definition: H[i][j] = (−1)^popcount(i & j).
    fn hadamard_naive(x: &[f32]) -> Vec<f32> {
        let n = x.len();
        (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        let s = if (i & j).count_ones() % 2 == 0 {
                            1.0
                        } else {
                            -1.0
                        };
                        s * f64::from(x[j])
                    })
                    .sum::<f64>() as f32
            })
            .collect()
    }

    #[test]
    fn fwht_matches_the_definition() {
        for n in [1usize, 2, 4, 8, 16, 64, 256] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37 + 11) % 17) as f32 - 8.0).collect();
            let mut y = x.clone();
            fwht(&mut y);
            assert_eq!(y, hadamard_naive(&x), "n = {n}");
        }
    }

    #[test]
    fn fwht_twice_is_n_times_identity_across_the_cache_split() {
        let n = IN_CACHE * 4;
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 - 500.0).collect();
        let mut y = x.clone();
        fwht(&mut y);
        fwht(&mut y);
        for (a, b) in x.iter().zip(&y) {
            // Integers below 2^24 stay exact through the sums here.
            assert_eq!(*a * n as f32, *b);
        }
    }

    #[test]
    fn padded_len_is_the_next_power_of_two() {
        assert_eq!(padded_len(1), Ok(1));
        assert_eq!(padded_len(5), Ok(8));
        assert_eq!(padded_len(1 << 20), Ok(1 << 20));
        assert_eq!(padded_len(1_000_000), Ok(1 << 20));
        assert!(padded_len(0).is_err());
        assert!(padded_len((1 << 30) + 1).is_err());
        assert!(RandomizedHadamard::new(&[0; 32], 6).is_err());
    }
}
