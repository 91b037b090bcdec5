//! Dense vectors carried as little-endian byte strings.
//!
//! serde_cbor writes a `Vec<f32>` as an array of tagged floats: 25% larger and about 15 times
//! slower to encode than a byte string (STACK-NOTES.md). These newtypes serialise as one CBOR
//! byte string and refuse a length that is not a whole number of elements, or anything that is
//! not a byte string (an array of integers is not accepted as a vector).

use std::fmt;

use serde::de::Visitor;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! le_vector {
    ($(#[$meta:meta])* $name:ident, $elem:ty) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct $name(pub Vec<$elem>);

        impl $name {
            /// Number of elements.
            pub fn len(&self) -> usize {
                self.0.len()
            }

            /// Whether the vector has no elements.
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }

            /// Encodes the elements as little-endian bytes.
            pub fn to_le_bytes(&self) -> Vec<u8> {
                let mut out = Vec::with_capacity(self.0.len() * size_of::<$elem>());
                for v in &self.0 {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out
            }

            /// Decodes little-endian bytes; `None` when the length is not a multiple of the
            /// element size.
            pub fn from_le_bytes(bytes: &[u8]) -> Option<Self> {
                const W: usize = size_of::<$elem>();
                if bytes.len() % W != 0 {
                    return None;
                }
                Some(Self(
                    bytes
                        .chunks_exact(W)
                        .map(|c| <$elem>::from_le_bytes(c.try_into().expect("chunk of W bytes")))
                        .collect(),
                ))
            }
        }

        impl From<Vec<$elem>> for $name {
            fn from(v: Vec<$elem>) -> Self {
                Self(v)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.to_le_bytes())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct BytesVisitor;

                impl<'de> Visitor<'de> for BytesVisitor {
                    type Value = $name;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(
                            f,
                            "a byte string of little-endian {}-byte elements",
                            size_of::<$elem>()
                        )
                    }

                    // Decodes straight from the input: no intermediate copy of the bytes, so
                    // a vector costs its own size once, whatever the frame announced.
                    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<$name, E> {
                        $name::from_le_bytes(bytes).ok_or_else(|| {
                            E::custom(format!(
                                "a {} of {} bytes is not a whole number of {}-byte elements; \
                                 the sender must encode whole elements",
                                stringify!($name),
                                bytes.len(),
                                size_of::<$elem>()
                            ))
                        })
                    }
                }

                d.deserialize_bytes(BytesVisitor)
            }
        }
    };
}

le_vector!(
    /// A vector over the ring Z_{2^32}: masked inputs and masked sums.
    RingVector,
    u32
);
le_vector!(
    /// A vector of `f32`: model weights and updates in the fixed parameter layout.
    FloatVector,
    f32
);

/// Why a [`PackedVector`] could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackedError {
    /// Bits per element outside `1..=32`.
    #[error("a packed vector of {0} bits per element is outside 1..=32")]
    BadBits(u8),
    /// The packed bytes do not hold exactly `len` elements of `bits` bits.
    #[error(
        "a packed vector of {len} elements at {bits} bits needs {expected} bytes, got {got}; \
         the sender must pack exactly the vector's length"
    )]
    Length {
        /// Elements announced.
        len: u64,
        /// Bits per element.
        bits: u8,
        /// ⌈len·bits / 8⌉.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// The unused high bits of the last byte are not zero (one vector, one encoding).
    #[error("the padding bits of a packed vector are not zero; the sender packed it wrongly")]
    NonZeroPadding,
    /// The byte string is shorter than the 5-byte header (bits, length).
    #[error("a packed vector of {0} bytes has no header (1 byte of bits, 4 of length)")]
    MissingHeader(usize),
    /// More elements than a `u32` counts.
    #[error("a packed vector of {0} elements is longer than 2^32 - 1")]
    TooLong(usize),
}

/// Bytes of `len` elements packed at `bits` bits: ⌈len·bits / 8⌉.
pub fn packed_len(len: usize, bits: u8) -> usize {
    ((len as u64 * u64::from(bits)).div_ceil(8)) as usize
}

/// The mask of the low `bits` bits (`bits` in 1..=32).
fn low_mask(bits: u8) -> u32 {
    if bits >= 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    }
}

/// A vector over Z_{2^bits} packed at `bits` bits per element: a round's masked input
/// ([`crate::MaskedInput`]) travels at the ring bits its sum needs, not 32.
///
/// **Bit order** (little-endian): element `i` occupies bits `bits·i .. bits·i + bits` of the
/// byte string, bit `j` of the string being bit `j mod 8` of byte `⌊j/8⌋`; the unused high bits
/// of the last byte are zero, so every vector has exactly one encoding. At 8, 16 and 32 bits this
/// is the elements' little-endian bytes.
///
/// **On the wire**: one CBOR byte string, `bits` (1 byte) ‖ `len` (u32 little-endian) ‖ the
/// packed bytes. A receiver checks `bits` in 1..=32 and the byte count against
/// ⌈len·bits/8⌉ on the borrowed input, before it allocates anything.
#[derive(Clone, PartialEq, Eq)]
pub struct PackedVector {
    bits: u8,
    len: u32,
    bytes: Vec<u8>,
}

impl fmt::Debug for PackedVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackedVector")
            .field("bits", &self.bits)
            .field("len", &self.len)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// Bytes of the wire header: bits (1) and length (4).
const PACKED_HEADER: usize = 5;

impl PackedVector {
    /// Packs the low `bits` bits of each of `values` (higher bits are dropped: the element mod
    /// 2^bits).
    pub fn pack(values: &[u32], bits: u8) -> Result<Self, PackedError> {
        if !(1..=32).contains(&bits) {
            return Err(PackedError::BadBits(bits));
        }
        let len = u32::try_from(values.len()).map_err(|_| PackedError::TooLong(values.len()))?;
        let mut bytes = Vec::with_capacity(packed_len(values.len(), bits));
        match bits {
            8 => bytes.extend(values.iter().map(|&v| v as u8)),
            16 => {
                for &v in values {
                    bytes.extend_from_slice(&(v as u16).to_le_bytes());
                }
            }
            32 => {
                for &v in values {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
            }
            24 => {
                for &v in values {
                    bytes.extend_from_slice(&v.to_le_bytes()[..3]);
                }
            }
            _ => {
                // Into a buffer sized up front (4 bytes of slack, cut at the end), whole 32-bit
                // words at a time.
                let total = packed_len(values.len(), bits);
                bytes.resize(total + 4, 0);
                let m = u64::from(low_mask(bits));
                let r = u32::from(bits);
                let mut acc: u64 = 0;
                let mut held: u32 = 0;
                let mut at = 0usize;
                for &v in values {
                    acc |= (u64::from(v) & m) << held;
                    held += r;
                    // At most 31 + 31 bits are held before a word is written.
                    if held >= 32 {
                        bytes[at..at + 4].copy_from_slice(&(acc as u32).to_le_bytes());
                        at += 4;
                        acc >>= 32;
                        held -= 32;
                    }
                }
                bytes[at..at + 4].copy_from_slice(&(acc as u32).to_le_bytes());
                bytes.truncate(total);
            }
        }
        debug_assert_eq!(bytes.len(), packed_len(values.len(), bits));
        Ok(Self { bits, len, bytes })
    }

    /// A vector from its parts, checked as a receiver checks one: `bits` in 1..=32, exactly
    /// ⌈len·bits/8⌉ bytes, zero padding.
    pub fn from_parts(bits: u8, len: u32, bytes: Vec<u8>) -> Result<Self, PackedError> {
        check_parts(bits, len, &bytes)?;
        Ok(Self { bits, len, bytes })
    }

    /// Bits per element.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the vector has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The packed bytes (without the wire header).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The elements, each in `0..2^bits`.
    pub fn unpack(&self) -> Vec<u32> {
        let mut out = vec![0u32; self.len()];
        self.unpack_into(&mut out, |slot, v| *slot = v);
        out
    }

    /// Adds every element to `acc` modulo 2^32 (`acc[i] += v[i]`), reading the packed bytes in
    /// place: no unpacked copy of the vector is made. `acc` must have [`Self::len`] elements
    /// (a shorter one is filled as far as it goes).
    pub fn add_to(&self, acc: &mut [u32]) {
        self.unpack_into(acc, |slot, v| *slot = slot.wrapping_add(v));
    }

    /// Calls `f(&mut out[i], element i)` for every element, in order.
    fn unpack_into(&self, out: &mut [u32], mut f: impl FnMut(&mut u32, u32)) {
        let bytes = &self.bytes;
        let n = self.len().min(out.len());
        let out = &mut out[..n];
        match self.bits {
            8 => {
                for (o, &b) in out.iter_mut().zip(bytes) {
                    f(o, u32::from(b));
                }
            }
            16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    f(o, u32::from(u16::from_le_bytes([c[0], c[1]])));
                }
            }
            32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    f(o, u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                }
            }
            24 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(3)) {
                    f(o, u32::from_le_bytes([c[0], c[1], c[2], 0]));
                }
            }
            bits => {
                let m = u64::from(low_mask(bits));
                let r = bits as usize;
                // Element i starts at bit r·i: read the 8 bytes from its first byte as a
                // little-endian u64 and shift (at most 7 + 31 bits are needed). While 8 bytes
                // remain this is one unaligned load per element; the last few elements read
                // what is left.
                let fast = if bytes.len() >= 8 {
                    // Elements whose 8-byte window fits: r·i/8 + 8 ≤ len.
                    (((bytes.len() - 8) * 8) / r + 1).min(n)
                } else {
                    0
                };
                let (head, tail) = out.split_at_mut(fast);
                for (i, o) in head.iter_mut().enumerate() {
                    let bit = i * r;
                    let at = bit / 8;
                    let mut w = [0u8; 8];
                    w.copy_from_slice(&bytes[at..at + 8]);
                    f(o, ((u64::from_le_bytes(w) >> (bit % 8)) & m) as u32);
                }
                for (j, o) in tail.iter_mut().enumerate() {
                    let bit = (fast + j) * r;
                    let at = bit / 8;
                    let mut w = [0u8; 8];
                    let end = bytes.len().min(at + 8);
                    w[..end - at].copy_from_slice(&bytes[at..end]);
                    f(o, ((u64::from_le_bytes(w) >> (bit % 8)) & m) as u32);
                }
            }
        }
    }

    /// The wire form: bits ‖ len (u32 LE) ‖ packed bytes.
    fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PACKED_HEADER + self.bytes.len());
        out.push(self.bits);
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.bytes);
        out
    }

    /// Reads the wire form, checking it before allocating.
    pub fn from_wire(wire: &[u8]) -> Result<Self, PackedError> {
        if wire.len() < PACKED_HEADER {
            return Err(PackedError::MissingHeader(wire.len()));
        }
        let bits = wire[0];
        let len = u32::from_le_bytes([wire[1], wire[2], wire[3], wire[4]]);
        let body = &wire[PACKED_HEADER..];
        check_parts(bits, len, body)?;
        Ok(Self {
            bits,
            len,
            bytes: body.to_vec(),
        })
    }
}

/// The checks of [`PackedVector::from_parts`] on borrowed bytes.
fn check_parts(bits: u8, len: u32, bytes: &[u8]) -> Result<(), PackedError> {
    if !(1..=32).contains(&bits) {
        return Err(PackedError::BadBits(bits));
    }
    let expected = (u64::from(len) * u64::from(bits)).div_ceil(8);
    if bytes.len() as u64 != expected {
        return Err(PackedError::Length {
            len: u64::from(len),
            bits,
            expected,
            got: bytes.len() as u64,
        });
    }
    let used = (u64::from(len) * u64::from(bits)) % 8;
    if used != 0 {
        let last = bytes.last().copied().unwrap_or(0);
        if last >> used != 0 {
            return Err(PackedError::NonZeroPadding);
        }
    }
    Ok(())
}

impl Serialize for PackedVector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.to_wire())
    }
}

impl<'de> Deserialize<'de> for PackedVector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PackedVisitor;

        impl<'de> Visitor<'de> for PackedVisitor {
            type Value = PackedVector;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string: bits (1 byte), length (u32 LE), packed elements")
            }

            // Checked on the borrowed input; the packed bytes are copied once, after the
            // checks.
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<PackedVector, E> {
                PackedVector::from_wire(bytes).map_err(E::custom)
            }
        }

        d.deserialize_bytes(PackedVisitor)
    }
}

#[cfg(test)]
mod packed_tests {
    use super::*;
    use proptest::prelude::*;

    /// Known answer for the bit order: 3 elements at 5 bits, 0b10101, 0b00011, 0b11110 →
    /// bits 0..15 little-endian: byte 0 = 0b011_10101 (element 0, then the low 3 bits of
    /// element 1), byte 1 = 0b0_11110_00 (the high 2 bits of element 1, element 2, one zero
    /// padding bit).
    #[test]
    fn bit_order_known_answer() {
        let p = PackedVector::pack(&[0b10101, 0b00011, 0b11110], 5).unwrap();
        assert_eq!(p.as_bytes(), &[0b0111_0101, 0b0111_1000]);
        // 12 bits: 0xabc, 0x123 → bytes bc, 3a, 12.
        let p = PackedVector::pack(&[0xabc, 0x123], 12).unwrap();
        assert_eq!(p.as_bytes(), &[0xbc, 0x3a, 0x12]);
        // 24 bits: each element's three little-endian bytes; higher bits dropped.
        let p = PackedVector::pack(&[0xff_123456, 0x00_abcdef], 24).unwrap();
        assert_eq!(p.as_bytes(), &[0x56, 0x34, 0x12, 0xef, 0xcd, 0xab]);
        // 8, 16 and 32 bits are the elements' little-endian bytes.
        let v = [0x1234_5678u32, 0x9abc_def0];
        assert_eq!(
            PackedVector::pack(&v, 32).unwrap().as_bytes(),
            &[0x78, 0x56, 0x34, 0x12, 0xf0, 0xde, 0xbc, 0x9a]
        );
        assert_eq!(
            PackedVector::pack(&v, 16).unwrap().as_bytes(),
            &[0x78, 0x56, 0xf0, 0xde]
        );
        assert_eq!(PackedVector::pack(&v, 8).unwrap().as_bytes(), &[0x78, 0xf0]);
        // The wire form: bits, length LE, bytes.
        let wire =
            crate::codec::to_cbor(&PackedVector::pack(&[0xabc, 0x123], 12).unwrap()).unwrap();
        // CBOR byte string of 8 bytes: 0x48.
        assert_eq!(wire, [0x48, 12, 2, 0, 0, 0, 0xbc, 0x3a, 0x12]);
    }

    #[test]
    fn malformed_vectors_are_refused_with_typed_errors() {
        assert_eq!(PackedVector::pack(&[1], 0), Err(PackedError::BadBits(0)));
        assert_eq!(PackedVector::pack(&[1], 33), Err(PackedError::BadBits(33)));
        assert_eq!(
            PackedVector::from_parts(0, 1, vec![0]),
            Err(PackedError::BadBits(0))
        );
        assert_eq!(
            PackedVector::from_parts(33, 1, vec![0; 5]),
            Err(PackedError::BadBits(33))
        );
        assert!(matches!(
            PackedVector::from_parts(5, 3, vec![0]),
            Err(PackedError::Length {
                expected: 2,
                got: 1,
                ..
            })
        ));
        assert!(matches!(
            PackedVector::from_parts(5, 3, vec![0; 3]),
            Err(PackedError::Length { expected: 2, .. })
        ));
        assert_eq!(
            PackedVector::from_parts(5, 3, vec![0, 0x80]),
            Err(PackedError::NonZeroPadding)
        );
        // A huge announced length is refused from the header, before any allocation.
        let mut wire = vec![32u8];
        wire.extend_from_slice(&u32::MAX.to_le_bytes());
        wire.extend_from_slice(&[0; 8]);
        assert!(matches!(
            PackedVector::from_wire(&wire),
            Err(PackedError::Length { .. })
        ));
        assert_eq!(
            PackedVector::from_wire(&[16, 0]),
            Err(PackedError::MissingHeader(2))
        );
        // Through CBOR: a decode error, never a panic.
        for bad in [
            vec![0x45, 0, 0, 0, 0, 0],     // bits 0
            vec![0x45, 33, 0, 0, 0, 0],    // bits 33
            vec![0x46, 16, 2, 0, 0, 0, 0], // 2 elements of 16 bits in 1 byte
            vec![0x42, 16, 0],             // no header
            vec![0x82, 0x01, 0x02],        // an array, not a byte string
        ] {
            assert!(
                crate::codec::from_cbor::<PackedVector>(&bad).is_err(),
                "{bad:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn pack_unpack_round_trips_at_every_width(
            bits in 1u8..=32,
            values in proptest::collection::vec(any::<u32>(), 0..300),
        ) {
            let p = PackedVector::pack(&values, bits).unwrap();
            prop_assert_eq!(p.as_bytes().len(), packed_len(values.len(), bits));
            let m = low_mask(bits);
            let reduced: Vec<u32> = values.iter().map(|v| v & m).collect();
            prop_assert_eq!(p.unpack(), reduced.clone());
            // The wire form round-trips and is checked.
            let wire = crate::codec::to_cbor(&p).unwrap();
            let back: PackedVector = crate::codec::from_cbor(&wire).unwrap();
            prop_assert_eq!(&back, &p);
            // add_to adds mod 2^32 without unpacking.
            let mut acc: Vec<u32> = values.iter().map(|v| v.rotate_left(7)).collect();
            let expect: Vec<u32> = acc.iter().zip(&reduced).map(|(a, b)| a.wrapping_add(*b)).collect();
            p.add_to(&mut acc);
            prop_assert_eq!(acc, expect);
        }
    }
}
