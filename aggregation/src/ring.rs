//! Uploads at the bits the sum needs (issue 15 item 4; not yet wired into the wire format): the
//! ring Z_{2^r} with `r = value_bits + ⌈log2 W⌉`, where `W` is the largest total weight the
//! round can sum (its cut-off × `max_weight`), and masked vectors bit-packed at `r` bits per
//! coordinate.
//!
//! **Why r bits suffice.** A client's weighted coordinate is at most `M·w` in absolute value
//! (`M = 2^(b−1) − 1`, `b` = value bits), so a sum of clients whose weights total at most
//! `W ≤ 2^c` (`c = ⌈log2 W⌉`) is at most `M·2^c = 2^(b−1+c) − 2^c < 2^(r−1)` in absolute value:
//! it fits the signed range of `r = b + c` bits. The weight element sums to at most
//! `W ≤ 2^c < 2^r` and is read unsigned.
//!
//! **Why masking mod 2^r is exact.** Reducing mod 2^r commutes with addition mod 2^32
//! (r ≤ 32), so a client adds its masks mod 2^32 as today ([`crate::secagg::prg`]) and keeps
//! the low `r` bits ([`reduce`]): each mask word's low `r` bits are a uniform element of
//! Z_{2^r}. The server accumulates the `r`-bit words mod 2^32, removes the masks mod 2^32 and
//! reduces: the result is `Σ x_u mod 2^r`, which [`widen`] turns back into the 32-bit two's
//! complement form that [`crate::encoding::Quantizer::decode_sum_of`] reads.
//!
//! **On the wire** ([`pack`], [`unpack`]): little-endian bit order, element `i` in bits
//! `r·i .. r·i + r` of the byte string, `⌈r·m / 8⌉` bytes for `m` elements; unused high bits of
//! the last byte must be zero, so every vector has exactly one encoding.

use crate::encoding::{MAX_VALUE_BITS, MIN_VALUE_BITS};

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
    /// `r` outside 1..=32.
    #[error("ring bits {0} is outside 1..=32")]
    BadRingBits(u8),
    /// The packed byte string does not hold exactly `len` elements of `r` bits.
    #[error(
        "a packed vector of {len} elements at {bits} bits needs {expected} bytes, got {got}; \
         the sender must pack exactly the round's vector length"
    )]
    PackedLength {
        /// Elements expected.
        len: usize,
        /// Bits per element.
        bits: u8,
        /// ⌈bits·len / 8⌉.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
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
    /// The unused high bits of the last byte are not zero.
    #[error("the padding bits of a packed vector are not zero; the sender packed it wrongly")]
    NonZeroPadding,
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
fn low_mask(r: u8) -> u32 {
    if r >= 32 { u32::MAX } else { (1u32 << r) - 1 }
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

/// Bytes of a packed vector of `len` elements at `r` bits.
pub fn packed_len(len: usize, r: u8) -> usize {
    (len * usize::from(r)).div_ceil(8)
}

/// Packs the low `r` bits of each element (higher bits are ignored) into `⌈r·len / 8⌉` bytes,
/// little-endian bit order.
///
/// # Panics
///
/// If `r` is 0 or above 32.
pub fn pack(values: &[u32], r: u8) -> Vec<u8> {
    assert!((1..=32).contains(&r), "ring bits {r} outside 1..=32");
    let m = u64::from(low_mask(r));
    let mut out = Vec::with_capacity(packed_len(values.len(), r));
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    for &v in values {
        acc |= (u64::from(v) & m) << bits;
        bits += u32::from(r);
        while bits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            bits -= 8;
        }
    }
    if bits > 0 {
        out.push(acc as u8);
    }
    out
}

/// Unpacks `len` elements of `r` bits from `bytes` (see [`pack`]). Refuses a byte string of the
/// wrong length or with non-zero padding bits, so a vector has exactly one encoding.
pub fn unpack(bytes: &[u8], r: u8, len: usize) -> Result<Vec<u32>, RingError> {
    if !(1..=32).contains(&r) {
        return Err(RingError::BadRingBits(r));
    }
    let expected = packed_len(len, r);
    if bytes.len() != expected {
        return Err(RingError::PackedLength {
            len,
            bits: r,
            expected,
            got: bytes.len(),
        });
    }
    let m = u64::from(low_mask(r));
    let mut out = Vec::with_capacity(len);
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    let mut input = bytes.iter();
    for _ in 0..len {
        while bits < u32::from(r) {
            // The length check guarantees enough bytes.
            let byte = input.next().copied().unwrap_or(0);
            acc |= u64::from(byte) << bits;
            bits += 8;
        }
        out.push((acc & m) as u32);
        acc >>= r;
        bits -= u32::from(r);
    }
    if acc != 0 {
        return Err(RingError::NonZeroPadding);
    }
    Ok(out)
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
    fn pack_unpack_round_trip_at_every_width() {
        for r in 1..=32u8 {
            for len in [0usize, 1, 2, 7, 8, 9, 33] {
                let v: Vec<u32> = (0..len as u32)
                    .map(|i| i.wrapping_mul(2_654_435_761) & low_mask(r))
                    .collect();
                let packed = pack(&v, r);
                assert_eq!(packed.len(), packed_len(len, r), "r {r} len {len}");
                assert_eq!(unpack(&packed, r, len).unwrap(), v, "r {r} len {len}");
            }
        }
    }

    #[test]
    fn unpack_refuses_bad_lengths_and_padding() {
        let packed = pack(&[1, 2, 3], 5); // 15 bits: 2 bytes, 1 padding bit
        assert!(matches!(
            unpack(&packed[..1], 5, 3),
            Err(RingError::PackedLength { expected: 2, .. })
        ));
        let mut bad = packed.clone();
        bad[1] |= 0x80;
        assert_eq!(unpack(&bad, 5, 3), Err(RingError::NonZeroPadding));
        assert_eq!(unpack(&packed, 0, 3), Err(RingError::BadRingBits(0)));
        assert_eq!(unpack(&packed, 33, 3), Err(RingError::BadRingBits(33)));
    }

    #[test]
    fn widen_sign_extends_values_but_not_the_weight() {
        let mut v = vec![0x3ff, 0x200, 0x1ff, 0, 0x3ff];
        widen(&mut v, 10);
        assert_eq!(v, vec![u32::MAX, (-512i32) as u32, 511, 0, 0x3ff]);
    }
}
