//! Streaming accumulation of masked inputs: one vector over Z_{2^32}, updated in place as each
//! masked input arrives, so the server never keeps an individual input (masked or not).

use zeroize::Zeroize;

/// The running sum of masked inputs, modulo 2^32.
#[derive(Debug)]
pub struct Accumulator {
    sum: Vec<u32>,
    count: usize,
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
    /// A zero accumulator of `len` elements.
    pub fn new(len: usize) -> Self {
        Self {
            sum: vec![0; len],
            count: 0,
        }
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
