//! Streaming accumulation of masked inputs: one vector of `u32`, updated in place as each
//! masked input arrives, so the server never keeps an individual input (masked or not).
//!
//! Masked inputs arrive packed at the round's `r` ring bits ([`PackedVector`]); they are added
//! mod 2^32 straight from the packed bytes ([`Accumulator::add_packed`]), and the sum is read
//! mod 2^r at the end (reduction mod 2^r commutes with addition mod 2^32).

use cohort_protocol::PackedVector;
use zeroize::Zeroize;

/// The running sum of masked inputs, modulo 2^32 (read mod 2^r for a ring of `r` bits).
#[derive(Debug)]
pub struct Accumulator {
    sum: Vec<u32>,
    count: usize,
    ring_bits: u8,
}

/// A packed masked input that does not fit the accumulator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackedMismatch {
    /// Its length is not the accumulator's.
    #[error(transparent)]
    Length(#[from] LengthMismatch),
    /// It is packed at other bits than the round's ring.
    #[error("a masked input packed at {got} bits in a round whose ring has {expected} bits")]
    Bits {
        /// The round's ring bits.
        expected: u8,
        /// The vector's bits.
        got: u8,
    },
}

/// A vector of the wrong length was offered to the accumulator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("vector of length {got} cannot be added to an accumulator of length {expected}")]
pub struct LengthMismatch {
    /// The accumulator's length.
    pub expected: usize,
    /// The offered vector's length.
    pub got: usize,
}

impl Accumulator {
    /// A zero accumulator of `len` elements in the full 32-bit ring.
    pub fn new(len: usize) -> Self {
        Self::for_ring(len, 32)
    }

    /// A zero accumulator of `len` elements whose inputs are packed at `ring_bits` bits.
    pub fn for_ring(len: usize, ring_bits: u8) -> Self {
        Self {
            sum: vec![0; len],
            count: 0,
            ring_bits,
        }
    }

    /// Adds a packed masked input element-wise, modulo 2^32, reading the packed bytes in place
    /// (no unpacked copy). Refuses a vector of another length or packed at other bits than the
    /// ring's.
    pub fn add_packed(&mut self, vector: &PackedVector) -> Result<(), PackedMismatch> {
        if vector.bits() != self.ring_bits {
            return Err(PackedMismatch::Bits {
                expected: self.ring_bits,
                got: vector.bits(),
            });
        }
        if vector.len() != self.sum.len() {
            return Err(LengthMismatch {
                expected: self.sum.len(),
                got: vector.len(),
            }
            .into());
        }
        vector.add_to(&mut self.sum);
        self.count += 1;
        Ok(())
    }

    /// The ring's bits.
    pub fn ring_bits(&self) -> u8 {
        self.ring_bits
    }

    /// Adds `vector` element-wise, modulo 2^32.
    pub fn add(&mut self, vector: &[u32]) -> Result<(), LengthMismatch> {
        if vector.len() != self.sum.len() {
            return Err(LengthMismatch {
                expected: self.sum.len(),
                got: vector.len(),
            });
        }
        add_wrapping(&mut self.sum, vector);
        self.count += 1;
        Ok(())
    }

    /// How many vectors were added.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The vector length.
    pub fn len(&self) -> usize {
        self.sum.len()
    }

    /// Whether the accumulator has no elements.
    pub fn is_empty(&self) -> bool {
        self.sum.is_empty()
    }

    /// Gives up the running sum (still masked).
    pub fn into_inner(mut self) -> Vec<u32> {
        std::mem::take(&mut self.sum)
    }
}

impl Drop for Accumulator {
    fn drop(&mut self) {
        // A dropped accumulator belongs to an aborted round: its partial sum must not linger.
        self.sum.zeroize();
    }
}

/// `acc[i] += v[i]` modulo 2^32, over the common prefix. Written as a plain zip so the compiler
/// vectorises it.
pub fn add_wrapping(acc: &mut [u32], v: &[u32]) {
    for (a, b) in acc.iter_mut().zip(v) {
        *a = a.wrapping_add(*b);
    }
}
