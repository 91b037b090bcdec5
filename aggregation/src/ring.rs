//! Uploads at the bits the sum needs (issue 15 item 4): the ring Z_{2^r} with `r = value_bits +
//! ⌈log2 W⌉`, where `W` is the largest total weight the round can sum (the task's
//! `clients_per_round` × `max_weight`), and masked vectors bit-packed at `r` bits per coordinate
//! ([`PackedVector`], in `cohort-protocol` because it is a wire type).
//!
//! **Why r bits suffice.** A client's weighted coordinate is at most `M·w` in absolute value
//! (`M = 2^(b−1) − 1`, `b` = value bits), so a sum of clients whose weights total at most
//! `W ≤ 2^c` (`c = ⌈log2 W⌉`) is at most `M·2^c = 2^(b−1+c) − 2^c < 2^(r−1)` in absolute value:
//! it fits the signed range of `r = b + c` bits. The weight element sums to at most
//! `W ≤ 2^c < 2^r` and is read unsigned.
//!
//! **Why masking mod 2^r is exact.** Reducing mod 2^r commutes with addition mod 2^32
//! (r ≤ 32), so a client adds its masks mod 2^32 ([`crate::secagg::prg`]) and packs the low `r`
//! bits ([`PackedVector::pack`]): each mask word's low `r` bits are a uniform element of
//! Z_{2^r}, so the masks are drawn and added mod 2^r. The server accumulates the `r`-bit words
//! mod 2^32 straight from the packed bytes ([`crate::secagg::accumulator::Accumulator::add_packed`]), removes
//! the masks mod 2^32 and reduces: the result is `Σ x_u mod 2^r`, which [`widen`] turns
//! back into the 32-bit two's complement form that
//! [`crate::encoding::Quantizer::decode_sum_of`] reads.
//!
//! **On the wire**: see [`PackedVector`] (little-endian bit order, `⌈r·m / 8⌉` bytes for `m`
//! elements, zero padding).

use crate::encoding::{MAX_VALUE_BITS, MIN_VALUE_BITS};
pub use cohort_protocol::{PackedError, PackedVector, packed_len};

/// Why a ring could not be sized, or a packed vector could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// `value_bits + ⌈log2 W⌉` exceeds 32: the sum would not fit even the 32-bit ring.
    #[error(
        "{value_bits} value bits and a total weight of up to {weight_capacity} need a ring of \
         {needed} bits, more than 32; lower value_bits, max_weight or clients_per_round"
    )]
    TooWide {
        /// The quantizer's value bits.
        value_bits: u8,
        /// The largest total weight of the round.
        weight_capacity: u64,
        /// The bits the sum would need.
        needed: u32,
    },
    /// The value bits are outside what a quantizer allows.
    #[error("value_bits = {0} is outside {MIN_VALUE_BITS}..={MAX_VALUE_BITS}")]
    BadValueBits(u8),
    /// The total weight capacity is zero.
    #[error("the total weight capacity is 0; a round sums at least one client of weight 1")]
    ZeroCapacity,
    /// The sum's total weight is above what the ring was sized for: its values may have
    /// wrapped, so it must not be decoded.
    #[error(
        "the sum's total weight {total_weight} exceeds the {weight_capacity} its {bits}-bit ring \
         was sized for, so its values may have wrapped; discard it (a client lied about its \
         weight, or the round summed more inputs than planned)"
    )]
    WeightAboveCapacity {
        /// The decoded total weight.
        total_weight: u64,
        /// The capacity the ring was sized for.
        weight_capacity: u64,
        /// r.
        bits: u8,
    },
}

/// The bits of the ring a round's weighted sum needs: `value_bits + ⌈log2 weight_capacity⌉`,
/// where `weight_capacity` is the largest total weight the round can sum (the number of inputs
/// it sums at most × `max_weight`).
pub fn ring_bits(value_bits: u8, weight_capacity: u64) -> Result<u8, RingError> {
    if !(MIN_VALUE_BITS..=MAX_VALUE_BITS).contains(&value_bits) {
        return Err(RingError::BadValueBits(value_bits));
    }
    if weight_capacity == 0 {
        return Err(RingError::ZeroCapacity);
    }
    // ⌈log2 W⌉ for W ≥ 1.
    let c = u64::BITS - (weight_capacity - 1).leading_zeros();
    let needed = u32::from(value_bits) + c;
    if needed > 32 {
        return Err(RingError::TooWide {
            value_bits,
            weight_capacity,
            needed,
        });
    }
    Ok(needed as u8)
}

/// The mask `2^r − 1` of the low `r` bits.
pub fn low_mask(r: u8) -> u32 {
    if r >= 32 { u32::MAX } else { (1u32 << r) - 1 }
}

/// `v` mod 2^r.
pub fn reduce_one(v: u32, r: u8) -> u32 {
    v & low_mask(r)
}

/// `v` mod 2^r read as a signed `r`-bit value (two's complement), `r` in 1..=32.
pub fn signed(v: u32, r: u8) -> i32 {
    let r = r.clamp(1, 32);
    let shift = 32 - u32::from(r);
    ((v << shift) as i32) >> shift
}

/// The bits needed to hold `n` unsigned: ⌈log2(n + 1)⌉ (0 for 0).
pub fn bits_for(n: u64) -> u8 {
    (u64::BITS - n.leading_zeros()) as u8
}

/// Reduces every element mod 2^r in place (keeps its low `r` bits).
pub fn reduce(v: &mut [u32], r: u8) {
    let m = low_mask(r);
    for x in v {
        *x &= m;
    }
}

/// Turns a sum mod 2^r into the 32-bit form a quantizer decodes: every element but the last is
/// sign-extended from `r` bits (two's complement), the last (the total weight) is kept as an
/// unsigned value. Elements are first reduced mod 2^r.
pub fn widen(sum: &mut [u32], r: u8) {
    reduce(sum, r);
    if r >= 32 {
        return;
    }
    let shift = 32 - u32::from(r);
    if let Some((_, values)) = sum.split_last_mut() {
        for x in values {
            *x = (((*x << shift) as i32) >> shift) as u32;
        }
    }
}

/// [`widen`], refusing a sum whose total weight (its last element, mod 2^r) is above
/// `weight_capacity`, the total weight the ring was sized for ([`ring_bits`]): beyond it the
/// values may have wrapped.
pub fn widen_checked(sum: &mut [u32], r: u8, weight_capacity: u64) -> Result<(), RingError> {
    widen(sum, r);
    let total_weight = u64::from(sum.last().copied().unwrap_or(0));
    if total_weight > weight_capacity {
        return Err(RingError::WeightAboveCapacity {
            total_weight,
            weight_capacity,
            bits: r,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_bits_add_the_weight_bits() {
        assert_eq!(ring_bits(22, 1024), Ok(32));
        assert_eq!(ring_bits(16, 1024), Ok(26));
        assert_eq!(ring_bits(16, 1025), Ok(27));
        assert_eq!(ring_bits(16, 1), Ok(16));
        assert_eq!(ring_bits(8, 2), Ok(9));
        assert!(matches!(
            ring_bits(22, 1025),
            Err(RingError::TooWide { needed: 33, .. })
        ));
        assert_eq!(ring_bits(7, 4), Err(RingError::BadValueBits(7)));
        assert_eq!(ring_bits(16, 0), Err(RingError::ZeroCapacity));
    }

    #[test]
    fn widen_sign_extends_values_but_not_the_weight() {
        let mut v = vec![0x3ff, 0x200, 0x1ff, 0, 0x3ff];
        widen(&mut v, 10);
        assert_eq!(v, vec![u32::MAX, (-512i32) as u32, 511, 0, 0x3ff]);
    }
}
