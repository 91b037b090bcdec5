//! Shamir secret sharing of 32-byte secrets over the prime field GF(p), p = 2^61 − 1, in the style
//! of Google's fcp SecAgg.
//!
//! A 32-byte secret is cut into five chunks of at most 7 bytes (56 bits): bytes 0..7, 7..14,
//! 14..21, 21..28 and 28..32, each read little-endian. Every chunk is below 2^56 < p, so it is a
//! field element, and is shared with its own random polynomial of degree `threshold − 1`; a share
//! is the five evaluations at the holder's x-coordinate (its 1-based [`ClientIndex`] value, never
//! 0, since f(0) is the secret).
//!
//! [`reconstruct`] interpolates at 0 with Lagrange coefficients and checks that every chunk fits
//! its width (56 bits, 32 for the last). Shares that do not lie on one polynomial of degree
//! < threshold give an essentially uniform field element in each affected chunk, which fits with
//! probability 2^-5 (2^-29 for the last chunk): a share set mixed from different secrets (all
//! chunks wrong) passes with probability 2^-49, but a share with a single altered chunk passes
//! with probability 1/32. So this is a sanity check against mix-ups and corruption, not
//! authentication: in the semi-honest model a client that sends a wrong share in R3 can spoil the
//! reconstruction (PROTOCOL.md §5).
//!
//! Field arithmetic uses the Mersenne reduction (x mod 2^61 − 1 = (x & p) + (x >> 61)) on `u128`
//! products; inversion is Fermat's little theorem. Polynomial coefficients are zeroized after
//! use. Everything is branch-free on secret data except the final conditional subtraction.
//!
//! [`ClientIndex`]: cohort_protocol::ClientIndex

use rand::{CryptoRng, RngCore};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The field modulus, the Mersenne prime 2^61 − 1.
pub const MODULUS: u64 = (1 << 61) - 1;

/// Number of field elements per share (chunks per 32-byte secret).
pub const CHUNKS: usize = 5;

/// Bytes per chunk (the last chunk has 32 − 4·7 = 4).
pub const CHUNK_BYTES: usize = 7;

/// Length of a serialised share value ([`Share::to_bytes`]): five little-endian `u64`.
pub const SHARE_LEN: usize = CHUNKS * 8;

/// Why sharing or reconstruction failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShamirError {
    /// A threshold of 0 was asked for.
    #[error("the Shamir threshold must be at least 1; check the round's SecAgg parameters")]
    ZeroThreshold,
    /// More shares are needed than there are holders.
    #[error(
        "threshold {threshold} exceeds the {holders} share holders; the secret could never be \
         reconstructed, so lower the threshold or add holders"
    )]
    ThresholdTooLarge {
        /// The threshold asked for.
        threshold: usize,
        /// The number of x-coordinates given.
        holders: usize,
    },
    /// An x-coordinate was 0 (the share would be the secret itself).
    #[error("share x-coordinate 0 is forbidden (f(0) is the secret); client indices are 1-based")]
    ZeroX,
    /// Two shares have the same x-coordinate.
    #[error(
        "two shares have x-coordinate {x}; each holder must appear once (check for a duplicate \
         or replayed share)"
    )]
    DuplicateX {
        /// The repeated coordinate.
        x: u32,
    },
    /// Fewer shares than the threshold were given.
    #[error("{got} shares given but the threshold is {threshold}; wait for more share holders")]
    TooFewShares {
        /// Shares given.
        got: usize,
        /// Shares needed.
        threshold: usize,
    },
    /// A serialised share did not have 40 bytes.
    #[error("a Shamir share must be {SHARE_LEN} bytes, got {len}; the sender is faulty")]
    BadShareLength {
        /// The length received.
        len: usize,
    },
    /// A share value was not a field element (≥ 2^61 − 1).
    #[error(
        "share chunk {chunk} is not below 2^61 − 1; the share is corrupt and its sender faulty"
    )]
    NotInField {
        /// Which of the five chunks.
        chunk: usize,
    },
    /// The interpolated secret does not fit the chunk widths: the shares do not come from one
    /// sharing (corrupt, mixed up, or from different secrets).
    #[error(
        "the shares are inconsistent (the interpolated secret does not fit its 56-bit chunks); \
         at least one share is corrupt or belongs to another secret"
    )]
    Inconsistent,
}

/// One holder's share of a 32-byte secret: the five chunk polynomials evaluated at `x`.
/// Zeroized on drop: share values are secret until revealed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Share {
    /// The holder's x-coordinate: its 1-based `ClientIndex` value, never 0.
    pub x: u32,
    /// f_j(x) for the five chunk polynomials, each below 2^61 − 1.
    pub y: [u64; CHUNKS],
}

impl std::fmt::Debug for Share {
    /// Shows the x-coordinate only: share values are secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share")
            .field("x", &self.x)
            .finish_non_exhaustive()
    }
}

impl Share {
    /// The share value as five little-endian `u64` (40 bytes); `x` is not included (it is the
    /// holder's index, known from context).
    pub fn to_bytes(&self) -> [u8; SHARE_LEN] {
        let mut out = [0u8; SHARE_LEN];
        for (dst, y) in out.chunks_exact_mut(8).zip(self.y) {
            dst.copy_from_slice(&y.to_le_bytes());
        }
        out
    }

    /// Parses a share value held by `x` from 40 bytes.
    ///
    /// # Errors
    ///
    /// [`ShamirError::ZeroX`] if `x` is 0, [`ShamirError::BadShareLength`] if `bytes` is not 40
    /// bytes, [`ShamirError::NotInField`] if a chunk is ≥ 2^61 − 1.
    pub fn from_bytes(x: u32, bytes: &[u8]) -> Result<Share, ShamirError> {
        if x == 0 {
            return Err(ShamirError::ZeroX);
        }
        if bytes.len() != SHARE_LEN {
            return Err(ShamirError::BadShareLength { len: bytes.len() });
        }
        let mut y = [0u64; CHUNKS];
        for (chunk, (dst, src)) in y.iter_mut().zip(bytes.chunks_exact(8)).enumerate() {
            let mut word = [0u8; 8];
            word.copy_from_slice(src);
            *dst = u64::from_le_bytes(word);
            if *dst >= MODULUS {
                return Err(ShamirError::NotInField { chunk });
            }
        }
        Ok(Share { x, y })
    }
}

/// Splits `secret` into one share per x-coordinate in `xs` (in that order), any `threshold` of
/// which reconstruct it and fewer of which reveal nothing.
///
/// # Errors
///
/// [`ShamirError::ZeroThreshold`], [`ShamirError::ThresholdTooLarge`] (threshold > `xs.len()`),
/// [`ShamirError::ZeroX`], [`ShamirError::DuplicateX`].
pub fn split<R: RngCore + CryptoRng>(
    secret: &[u8; 32],
    threshold: usize,
    xs: &[u32],
    rng: &mut R,
) -> Result<Vec<Share>, ShamirError> {
    if threshold == 0 {
        return Err(ShamirError::ZeroThreshold);
    }
    if threshold > xs.len() {
        return Err(ShamirError::ThresholdTooLarge {
            threshold,
            holders: xs.len(),
        });
    }
    check_xs(xs)?;

    // coeffs[j * threshold + i] is coefficient i of chunk j's polynomial; coefficient 0 is the
    // chunk itself.
    let chunks = secret_to_chunks(secret);
    let mut coeffs = Zeroizing::new(vec![0u64; CHUNKS * threshold]);
    for (poly, chunk) in coeffs.chunks_exact_mut(threshold).zip(chunks.iter()) {
        poly[0] = *chunk;
        for c in &mut poly[1..] {
            *c = random_element(rng);
        }
    }

    let shares = xs
        .iter()
        .map(|&x| {
            let mut y = [0u64; CHUNKS];
            for (yj, poly) in y.iter_mut().zip(coeffs.chunks_exact(threshold)) {
                *yj = eval(poly, u64::from(x));
            }
            Share { x, y }
        })
        .collect();
    Ok(shares)
}

/// Rebuilds the secret from the first `threshold` of `shares`.
///
/// # Errors
///
/// [`ShamirError::ZeroThreshold`], [`ShamirError::TooFewShares`], [`ShamirError::ZeroX`] or
/// [`ShamirError::DuplicateX`] among the shares used, [`ShamirError::NotInField`] for a share
/// value ≥ 2^61 − 1, and [`ShamirError::Inconsistent`] when the shares do not come from one
/// sharing.
pub fn reconstruct(shares: &[Share], threshold: usize) -> Result<Zeroizing<[u8; 32]>, ShamirError> {
    if threshold == 0 {
        return Err(ShamirError::ZeroThreshold);
    }
    if shares.len() < threshold {
        return Err(ShamirError::TooFewShares {
            got: shares.len(),
            threshold,
        });
    }
    let used = &shares[..threshold];
    let xs: Vec<u32> = used.iter().map(|s| s.x).collect();
    check_xs(&xs)?;
    for share in used {
        if let Some(chunk) = share.y.iter().position(|&y| y >= MODULUS) {
            return Err(ShamirError::NotInField { chunk });
        }
    }

    let lambdas = lagrange_at_zero(&xs);
    let mut chunks = Zeroizing::new([0u64; CHUNKS]);
    for (share, lambda) in used.iter().zip(&lambdas) {
        for (acc, y) in chunks.iter_mut().zip(share.y) {
            *acc = add(*acc, mul(y, *lambda));
        }
    }
    chunks_to_secret(&chunks)
}

/// The Lagrange coefficients λ_i = Π_{j≠i} x_j / (x_j − x_i) for interpolating at 0 from
/// distinct, non-zero `xs`. A server that reconstructs many secrets from the same holders can
/// compute them once.
fn lagrange_at_zero(xs: &[u32]) -> Vec<u64> {
    xs.iter()
        .enumerate()
        .map(|(i, &xi)| {
            let mut num = 1u64;
            let mut den = 1u64;
            for (j, &xj) in xs.iter().enumerate() {
                if i != j {
                    num = mul(num, u64::from(xj));
                    den = mul(den, sub(u64::from(xj), u64::from(xi)));
                }
            }
            mul(num, inv(den))
        })
        .collect()
}

/// Refuses x = 0 and duplicate x-coordinates.
fn check_xs(xs: &[u32]) -> Result<(), ShamirError> {
    if xs.contains(&0) {
        return Err(ShamirError::ZeroX);
    }
    let mut sorted = xs.to_vec();
    sorted.sort_unstable();
    if let Some(pair) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(ShamirError::DuplicateX { x: pair[0] });
    }
    Ok(())
}

/// Width in bytes of chunk `j` (7, except 4 for the last).
fn chunk_width(j: usize) -> usize {
    CHUNK_BYTES.min(32 - j * CHUNK_BYTES)
}

/// Cuts the secret into five little-endian chunks of 7, 7, 7, 7 and 4 bytes.
fn secret_to_chunks(secret: &[u8; 32]) -> Zeroizing<[u64; CHUNKS]> {
    let mut chunks = Zeroizing::new([0u64; CHUNKS]);
    for (j, chunk) in chunks.iter_mut().enumerate() {
        let start = j * CHUNK_BYTES;
        let mut word = Zeroizing::new([0u8; 8]);
        word[..chunk_width(j)].copy_from_slice(&secret[start..start + chunk_width(j)]);
        *chunk = u64::from_le_bytes(*word);
    }
    chunks
}

/// Inverse of [`secret_to_chunks`]; refuses chunks wider than their slot.
fn chunks_to_secret(chunks: &[u64; CHUNKS]) -> Result<Zeroizing<[u8; 32]>, ShamirError> {
    let mut secret = Zeroizing::new([0u8; 32]);
    for (j, &chunk) in chunks.iter().enumerate() {
        let width = chunk_width(j);
        if chunk >> (8 * width) != 0 {
            return Err(ShamirError::Inconsistent);
        }
        let start = j * CHUNK_BYTES;
        secret[start..start + width].copy_from_slice(&chunk.to_le_bytes()[..width]);
    }
    Ok(secret)
}

/// A uniform field element: 61 random bits, rejecting the single value p (probability 2^-61).
fn random_element<R: RngCore + CryptoRng>(rng: &mut R) -> u64 {
    loop {
        let candidate = rng.next_u64() >> 3;
        if candidate < MODULUS {
            return candidate;
        }
    }
}

/// Evaluates the polynomial with coefficients `poly` (constant term first) at `x` (Horner).
fn eval(poly: &[u64], x: u64) -> u64 {
    poly.iter().rev().fold(0, |acc, &c| add(mul(acc, x), c))
}

/// Reduces a value below 2^62 + 2^61 to [0, p).
#[inline]
fn reduce(x: u64) -> u64 {
    let folded = (x & MODULUS) + (x >> 61);
    if folded >= MODULUS {
        folded - MODULUS
    } else {
        folded
    }
}

/// a + b mod p, for a, b < p.
#[inline]
fn add(a: u64, b: u64) -> u64 {
    reduce(a + b)
}

/// a − b mod p, for a, b < p.
#[inline]
fn sub(a: u64, b: u64) -> u64 {
    reduce(a + MODULUS - b)
}

/// a · b mod p, for a, b < p (or any values below 2^61 after reduction).
#[inline]
fn mul(a: u64, b: u64) -> u64 {
    let prod = u128::from(a) * u128::from(b);
    // prod < 2^122: its low 61 bits plus its high bits is congruent mod 2^61 − 1 and < 2^62.
    let lo = (prod as u64) & MODULUS;
    let hi = (prod >> 61) as u64;
    reduce(lo + hi)
}

/// a^-1 mod p by Fermat (a^(p−2)); a must be non-zero mod p.
fn inv(a: u64) -> u64 {
    let mut result = 1u64;
    let mut base = a;
    let mut exp = MODULUS - 2;
    while exp > 0 {
        if exp & 1 == 1 {
            result = mul(result, base);
        }
        base = mul(base, base);
        exp >>= 1;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_arithmetic_edge_cases() {
        let p = MODULUS;
        assert_eq!(add(p - 1, 1), 0);
        assert_eq!(add(p - 1, p - 1), p - 2);
        assert_eq!(sub(0, 1), p - 1);
        assert_eq!(mul(p - 1, p - 1), 1); // (−1)² = 1
        assert_eq!(mul(1 << 60, 2), 1); // 2^61 ≡ 1
        assert_eq!(mul(1 << 60, 4), 2);
        for a in [1u64, 2, 3, 12345, p - 1, p - 2, 1 << 40] {
            assert_eq!(mul(a, inv(a)), 1, "inverse of {a}");
        }
        // Reference check against plain u128 arithmetic.
        let (a, b) = (0x1234_5678_9abc_def0 % p, 0x0fed_cba9_8765_4321 % p);
        assert_eq!(
            u128::from(mul(a, b)),
            u128::from(a) * u128::from(b) % u128::from(p)
        );
    }

    #[test]
    fn eval_and_lagrange_by_hand() {
        // f(x) = 5 + 3x + 2x²: f(1) = 10, f(2) = 19, f(3) = 32.
        let poly = [5u64, 3, 2];
        assert_eq!(eval(&poly, 1), 10);
        assert_eq!(eval(&poly, 2), 19);
        assert_eq!(eval(&poly, 3), 32);
        // λ for xs = 1, 2, 3 at 0 is (3, −3, 1).
        assert_eq!(lagrange_at_zero(&[1, 2, 3]), vec![3, MODULUS - 3, 1]);
    }

    #[test]
    fn chunks_round_trip_and_widths() {
        let secret: [u8; 32] = std::array::from_fn(|i| 0xff - i as u8);
        let chunks = secret_to_chunks(&secret);
        assert_eq!(
            chunks[0],
            u64::from_le_bytes([0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0xfa, 0xf9, 0])
        );
        assert_eq!(
            chunks[4],
            u64::from(u32::from_le_bytes([0xe3, 0xe2, 0xe1, 0xe0]))
        );
        assert_eq!(*chunks_to_secret(&chunks).unwrap(), secret);
        let mut wide = *chunks;
        wide[4] = 1 << 32;
        assert_eq!(chunks_to_secret(&wide), Err(ShamirError::Inconsistent));
        let mut wide = *chunks;
        wide[0] = 1 << 56;
        assert_eq!(chunks_to_secret(&wide), Err(ShamirError::Inconsistent));
    }
}
