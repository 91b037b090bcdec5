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

/// The transform runs in two passes over the vector, each on pieces that fit in cache: first
/// blocks of this many consecutive coordinates (32 KiB of `f32`), all their levels while they
/// are in cache (fused with the signs and the scaling in
/// [`RandomizedHadamard::rotate_scaled`]); then the remaining levels, which combine the blocks,
/// on tiles: the same few columns of every block copied into a buffer of [`TILE`] values,
/// transformed there and copied back. Copying the tile avoids the power-of-two stride between
/// blocks, which would map a tile's rows onto the same few cache sets. Within a piece, levels
/// run three at a time (radix 8).
const IN_CACHE: usize = 1 << 13;

/// The values in one tile of the second pass (32 KiB).
const TILE: usize = 1 << 13;

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
    /// Sign bits, one per coordinate (bit i % 8 of byte i / 8; 1 means −1).
    sign_bytes: Vec<u8>,
}

impl RandomizedHadamard {
    /// The rotation for vectors of `padded` coordinates (a power of two) with signs from the
    /// round's public `seed` (ChaCha20, so that every platform derives the same signs).
    pub fn new(seed: &[u8; 32], padded: usize) -> Result<Self, RotationError> {
        if !padded.is_power_of_two() || padded > MAX_PADDED_LEN {
            return Err(RotationError::BadDimension(padded));
        }
        let mut rng = ChaCha20Rng::from_seed(*seed);
        // The stream's bytes in order: the same signs as 64-bit words read little-endian.
        let mut sign_bytes = vec![0u8; padded.div_ceil(64) * 8];
        rng.fill_bytes(&mut sign_bytes);
        Ok(Self { padded, sign_bytes })
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
        // Copied, not zero-filled then overwritten: one write of the vector fewer.
        out.clear();
        out.extend_from_slice(x);
        out.resize(self.padded, 0.0);
        let scale = (factor / (self.padded as f64).sqrt()) as f32;
        rotate_kernel(out, x.len(), &self.sign_bytes, scale);
    }

    /// Rᵀ·y in place: the transform, then ±1/√n per coordinate. The caller truncates the
    /// padding. `y` must have exactly n coordinates.
    pub fn unrotate(&self, y: &mut [f32]) {
        assert_eq!(
            y.len(),
            self.padded,
            "vector length differs from the rotation's"
        );
        let scale = (1.0 / (self.padded as f64).sqrt()) as f32;
        unrotate_kernel(y, &self.sign_bytes, scale);
    }
}

// The kernels below are compiled once per SIMD level (SSE2, AVX2, AVX-512, NEON, ...) by
// `multiversion`, which picks the best the CPU has at run time: the transform is arithmetic on
// f32 lanes, and wider lanes are most of its speed. Everything they call is inlined into them,
// so it is compiled for the same level.

/// x ← H·(±scale·x), where only the first `len` coordinates can be non-zero: the signs and
/// the scaling fused into the in-cache blocks.
#[multiversion::multiversion(targets = "simd")]
fn rotate_kernel(x: &mut [f32], len: usize, sign_bytes: &[u8], scale: f32) {
    let block_len = IN_CACHE.min(x.len());
    for (b, (block, signs)) in x
        .chunks_exact_mut(block_len)
        .zip(sign_bytes.chunks(block_len.div_ceil(8)))
        .enumerate()
    {
        let live = len.saturating_sub(b * block_len).min(block_len);
        scale_and_flip(&mut block[..live], signs, scale);
        fwht_levels(block, 1);
    }
    combine_blocks(x, block_len);
}

/// y ← ±scale·(H·y).
#[multiversion::multiversion(targets = "simd")]
fn unrotate_kernel(y: &mut [f32], sign_bytes: &[u8], scale: f32) {
    fwht_inline(y);
    scale_and_flip(y, sign_bytes, scale);
}

/// SIGN_MASKS[b][i] is the sign bit of an `f32` where bit i of byte b is set: the signs of
/// eight coordinates from one byte, as lanes to XOR (a variable shift per lane is not in
/// baseline SIMD; a table load is).
static SIGN_MASKS: [[u32; 8]; 256] = sign_masks();

const fn sign_masks() -> [[u32; 8]; 256] {
    let mut table = [[0u32; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut i = 0;
        while i < 8 {
            if (b >> i) & 1 == 1 {
                table[b][i] = 1 << 31;
            }
            i += 1;
        }
        b += 1;
    }
    table
}

/// x ← ±scale·x, the sign of coordinate i from bit i % 8 of byte i / 8.
#[inline(always)]
fn scale_and_flip(x: &mut [f32], sign_bytes: &[u8], scale: f32) {
    let whole = x.len() - x.len() % 8;
    let (head, tail) = x.split_at_mut(whole);
    for (c, &byte) in head.chunks_exact_mut(8).zip(sign_bytes) {
        let masks = &SIGN_MASKS[usize::from(byte)];
        for (v, &m) in c.iter_mut().zip(masks) {
            *v = f32::from_bits((*v * scale).to_bits() ^ m);
        }
    }
    if let Some(&byte) = sign_bytes.get(whole / 8) {
        let masks = &SIGN_MASKS[usize::from(byte)];
        for (v, &m) in tail.iter_mut().zip(masks) {
            *v = f32::from_bits((*v * scale).to_bits() ^ m);
        }
    }
}

/// The unnormalised fast Walsh–Hadamard transform, in place: x ← H·x. `x.len()` must be a
/// power of two. H·H = n·I.
pub fn fwht(x: &mut [f32]) {
    assert!(
        x.len().is_power_of_two(),
        "the Hadamard transform needs a power-of-two length"
    );
    fwht_kernel(x);
}

#[multiversion::multiversion(targets = "simd")]
fn fwht_kernel(x: &mut [f32]) {
    fwht_inline(x);
}

/// [`fwht`], inlined into the kernels.
#[inline(always)]
fn fwht_inline(x: &mut [f32]) {
    let block_len = IN_CACHE.min(x.len());
    for block in x.chunks_exact_mut(block_len) {
        fwht_levels(block, 1);
    }
    combine_blocks(x, block_len);
}

/// The levels from stride `block_len` up (the second pass; see [`IN_CACHE`]): the values at
/// offset j of each of the r = n/block_len blocks form a transform of length r, for each j.
/// A tile holds `width` consecutive offsets of every block, row by row, so its levels from
/// stride `width` up are exactly those transforms.
#[inline(always)]
fn combine_blocks(x: &mut [f32], block_len: usize) {
    let rows = x.len() / block_len;
    if rows == 1 {
        return;
    }
    if rows > TILE / 8 {
        // Over 2^23 coordinates: tiles would be too narrow; level groups over the whole vector.
        fwht_levels(x, block_len);
        return;
    }
    let width = TILE / rows;
    let mut tile = vec![0f32; rows * width];
    for column in (0..block_len).step_by(width) {
        for (row, t) in tile.chunks_exact_mut(width).enumerate() {
            let at = row * block_len + column;
            t.copy_from_slice(&x[at..at + width]);
        }
        fwht_levels(&mut tile, width);
        for (row, t) in tile.chunks_exact(width).enumerate() {
            let at = row * block_len + column;
            x[at..at + width].copy_from_slice(t);
        }
    }
}

/// The transform's levels from stride `from` up to `x.len()` (both powers of two): H's
/// levels are independent (H_n = H_2 ⊗ … ⊗ H_2), so they can run in any grouping and order.
/// Three at a time where three remain (one pass over the data), then two or one.
#[inline(always)]
fn fwht_levels(x: &mut [f32], from: usize) {
    let n = x.len();
    let mut h = from;
    if h == 1 && n >= 8 {
        radix8_unit(x);
        h = 8;
    }
    while h < n {
        if n / h >= 8 {
            radix8(x, h);
            h *= 8;
        } else if n / h >= 4 {
            radix4(x, h);
            h *= 4;
        } else {
            for block in x.chunks_exact_mut(2 * h) {
                let (lo, hi) = block.split_at_mut(h);
                for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
                    (*a, *b) = (*a + *b, *a - *b);
                }
            }
            h *= 2;
        }
    }
}

/// The 8-point transform of eight values (three levels).
#[inline(always)]
fn wht8(a: [f32; 8]) -> [f32; 8] {
    let [a0, a1, a2, a3, a4, a5, a6, a7] = a;
    let (b0, b1, b2, b3) = (a0 + a1, a0 - a1, a2 + a3, a2 - a3);
    let (b4, b5, b6, b7) = (a4 + a5, a4 - a5, a6 + a7, a6 - a7);
    let (c0, c1, c2, c3) = (b0 + b2, b1 + b3, b0 - b2, b1 - b3);
    let (c4, c5, c6, c7) = (b4 + b6, b5 + b7, b4 - b6, b5 - b7);
    [
        c0 + c4,
        c1 + c5,
        c2 + c6,
        c3 + c7,
        c0 - c4,
        c1 - c5,
        c2 - c6,
        c3 - c7,
    ]
}

/// Levels 1, 2, 4 on blocks of eight consecutive values.
#[inline(always)]
fn radix8_unit(x: &mut [f32]) {
    for c in x.chunks_exact_mut(8) {
        let y = wht8([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        c.copy_from_slice(&y);
    }
}

/// Levels h, 2h, 4h: in each group of 8h values, the eight values h apart form an 8-point
/// transform, for each of the h offsets; the loop runs over offsets, so it vectorises.
#[inline(always)]
fn radix8(x: &mut [f32], h: usize) {
    for group in x.chunks_exact_mut(8 * h) {
        let (p0, rest) = group.split_at_mut(h);
        let (p1, rest) = rest.split_at_mut(h);
        let (p2, rest) = rest.split_at_mut(h);
        let (p3, rest) = rest.split_at_mut(h);
        let (p4, rest) = rest.split_at_mut(h);
        let (p5, rest) = rest.split_at_mut(h);
        let (p6, p7) = rest.split_at_mut(h);
        // Equal lengths, stated, so that the loop has no bounds checks.
        let (p0, p1, p2, p3) = (&mut p0[..h], &mut p1[..h], &mut p2[..h], &mut p3[..h]);
        let (p4, p5, p6, p7) = (&mut p4[..h], &mut p5[..h], &mut p6[..h], &mut p7[..h]);
        for j in 0..h {
            let y = wht8([p0[j], p1[j], p2[j], p3[j], p4[j], p5[j], p6[j], p7[j]]);
            (p0[j], p1[j], p2[j], p3[j]) = (y[0], y[1], y[2], y[3]);
            (p4[j], p5[j], p6[j], p7[j]) = (y[4], y[5], y[6], y[7]);
        }
    }
}

/// Levels h, 2h in groups of 4h.
#[inline(always)]
fn radix4(x: &mut [f32], h: usize) {
    for group in x.chunks_exact_mut(4 * h) {
        let (p0, rest) = group.split_at_mut(h);
        let (p1, rest) = rest.split_at_mut(h);
        let (p2, p3) = rest.split_at_mut(h);
        let (p0, p1, p2, p3) = (&mut p0[..h], &mut p1[..h], &mut p2[..h], &mut p3[..h]);
        for j in 0..h {
            let (a0, a1, a2, a3) = (p0[j], p1[j], p2[j], p3[j]);
            let (b0, b1, b2, b3) = (a0 + a1, a0 - a1, a2 + a3, a2 - a3);
            (p0[j], p1[j], p2[j], p3[j]) = (b0 + b2, b1 + b3, b0 - b2, b1 - b3);
        }
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
        // Every grouping of the levels above the in-cache blocks: radix 2, 4, 8, and 8 then 2.
        for n in [IN_CACHE * 2, IN_CACHE * 4, IN_CACHE * 8, IN_CACHE * 16] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 3) as f32 - 1.0).collect();
            let mut y = x.clone();
            fwht(&mut y);
            fwht(&mut y);
            for (a, b) in x.iter().zip(&y) {
                // Integers below 2^24 stay exact through the sums here.
                assert_eq!(*a * n as f32, *b, "n = {n}");
            }
        }
    }

    #[test]
    fn rotate_scaled_is_the_signs_the_scale_and_the_transform() {
        // The fused path against the definition, step by step, on a vector shorter than the
        // padding and longer than one in-cache block.
        let n = IN_CACHE * 4;
        let rotation = RandomizedHadamard::new(&[9; 32], n).unwrap();
        let x: Vec<f32> = (0..n - 1000)
            .map(|i| ((i * 31) % 101) as f32 - 50.0)
            .collect();
        let factor = 3.0;
        let mut fused = Vec::new();
        rotation.rotate_scaled(&x, factor, &mut fused);
        let scale = (factor / (n as f64).sqrt()) as f32;
        let mut want: Vec<f32> = (0..n)
            .map(|i| {
                let v = x.get(i).copied().unwrap_or(0.0) * scale;
                let negative = (rotation.sign_bytes[i / 8] >> (i % 8)) & 1 == 1;
                if negative { -v } else { v }
            })
            .collect();
        fwht(&mut want);
        assert_eq!(fused, want);
        // And R⁻¹ undoes it, to float error.
        rotation.unrotate(&mut fused);
        for (a, b) in x.iter().zip(&fused) {
            assert!(
                (f64::from(*a) * factor - f64::from(*b)).abs() < 1e-3,
                "{a} vs {b}"
            );
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
