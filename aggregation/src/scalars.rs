//! Bounded unsigned scalars summed inside the masked vector, so that the server learns only
//! their sum over a round's contributors (never one client's value).
//!
//! A round's ring Z_{2^r} is sized for the update (`r = value_bits + ⌈log2(clients ·
//! max_weight)⌉`, [`crate::ring::ring_bits`]), not for a count of examples or a sum of losses,
//! and widening it would cost r bits on every coordinate of every upload. A [`ScalarLayout`]
//! instead splits each scalar of up to `width` bits into **limbs** of `k` bits (least
//! significant first), one ring element each, where `k` is the largest width such that
//! `summands · (2^k − 1) ≤ 2^r − 1`: the sum of any `summands` honest limbs cannot wrap, and
//! Σ_u x_u = Σ_j 2^(jk) · Σ_u limb_j(x_u) is rebuilt exactly from the limb sums. A scalar
//! costs ⌈width / k⌉ coordinates (k = 15 or more with the default 16 value bits).
//!
//! Both sides derive the same layout from the round's parameters (ring bits and the number of
//! clients, which are in the session id), so nothing about it travels on its own.
//!
//! What the server can check: each limb sum, read mod 2^r, is at most `contributors · (2^k −
//! 1)`, and each rebuilt sum at most `contributors · (2^width − 1)`; a sum outside is refused
//! ([`ScalarError`]). A malicious client can still shift a sum within those bounds (SecAgg+
//! does not validate inputs), exactly as it can shift the update within its clip range.

/// The most bits one scalar may have: the rebuilt sum of up to 2^32 clients then fits a `u64`.
pub const MAX_SCALAR_BITS: u8 = 32;

/// Why a layout could not be set up, or scalars could not be encoded or their sum decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScalarError {
    /// A scalar's width is 0 or above [`MAX_SCALAR_BITS`].
    #[error("a scalar width of {0} bits is outside 1..={MAX_SCALAR_BITS}")]
    BadWidth(u8),
    /// The ring's bits are outside 1..=32.
    #[error("ring_bits = {0} is outside 1..=32")]
    BadRingBits(u8),
    /// The ring cannot hold even one-bit limbs of `summands` clients.
    #[error(
        "a {ring_bits}-bit ring cannot sum one bit from each of {summands} clients without \
         wrapping"
    )]
    RingTooSmall {
        /// r.
        ring_bits: u8,
        /// The clients summed at most.
        summands: u32,
    },
    /// A value does not fit its scalar's width (the caller clips before encoding).
    #[error("scalar {index} is {value}, above its {width}-bit range")]
    ValueTooLarge {
        /// The scalar's position in the layout.
        index: usize,
        /// The value.
        value: u64,
        /// Its width.
        width: u8,
    },
    /// The number of values is not the layout's.
    #[error("{got} scalars given, the layout has {expected}")]
    WrongCount {
        /// The layout's scalars.
        expected: usize,
        /// Given.
        got: usize,
    },
    /// The number of limbs to decode is not the layout's.
    #[error("{got} limb sums given, the layout has {expected}")]
    WrongLength {
        /// The layout's limbs.
        expected: usize,
        /// Given.
        got: usize,
    },
    /// A limb sum or a rebuilt sum is larger than `contributors` honest clients can produce:
    /// some client sent a value outside its range (or the sum wrapped).
    #[error(
        "the sum of scalar {index} over {contributors} contributors is out of range; some \
         client sent a value it could not have encoded, so these sums are discarded"
    )]
    SumOutOfRange {
        /// The scalar's position in the layout.
        index: usize,
        /// |U3|.
        contributors: u64,
    },
}

/// How a list of bounded unsigned scalars is laid out as limbs in a round's ring. See the
/// [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalarLayout {
    ring_bits: u8,
    limb_bits: u8,
    widths: Vec<u8>,
}

impl ScalarLayout {
    /// The layout of scalars of `widths` bits each in the ring of `ring_bits` bits, for sums of
    /// at most `summands` clients.
    pub fn new(widths: &[u8], ring_bits: u8, summands: u32) -> Result<Self, ScalarError> {
        if let Some(&w) = widths.iter().find(|&&w| w == 0 || w > MAX_SCALAR_BITS) {
            return Err(ScalarError::BadWidth(w));
        }
        if !(1..=32).contains(&ring_bits) {
            return Err(ScalarError::BadRingBits(ring_bits));
        }
        let capacity = (1u128 << ring_bits) - 1;
        let summands_wide = u128::from(summands.max(1));
        let limb_bits = (1..=MAX_SCALAR_BITS)
            .rev()
            .find(|&k| summands_wide * ((1u128 << k) - 1) <= capacity)
            .ok_or(ScalarError::RingTooSmall {
                ring_bits,
                summands,
            })?;
        Ok(Self {
            ring_bits,
            limb_bits,
            widths: widths.to_vec(),
        })
    }

    /// The bits of one limb, k.
    pub fn limb_bits(&self) -> u8 {
        self.limb_bits
    }

    /// The ring elements the scalars take: Σ ⌈width / k⌉.
    pub fn len(&self) -> usize {
        self.widths.iter().map(|&w| self.limbs_of(w)).sum()
    }

    /// Whether the layout has no scalar.
    pub fn is_empty(&self) -> bool {
        self.widths.is_empty()
    }

    fn limbs_of(&self, width: u8) -> usize {
        usize::from(width.div_ceil(self.limb_bits))
    }

    /// One client's `values` (one per scalar, each below 2^width) as limbs, in layout order.
    pub fn encode(&self, values: &[u64]) -> Result<Vec<u32>, ScalarError> {
        if values.len() != self.widths.len() {
            return Err(ScalarError::WrongCount {
                expected: self.widths.len(),
                got: values.len(),
            });
        }
        let mask = (1u64 << self.limb_bits) - 1;
        let mut out = Vec::with_capacity(self.len());
        for (index, (&value, &width)) in values.iter().zip(&self.widths).enumerate() {
            if value >> width != 0 {
                return Err(ScalarError::ValueTooLarge {
                    index,
                    value,
                    width,
                });
            }
            let mut rest = value;
            for _ in 0..self.limbs_of(width) {
                // < 2^k ≤ 2^32.
                out.push((rest & mask) as u32);
                rest >>= self.limb_bits;
            }
        }
        Ok(out)
    }

    /// The sums of the scalars over `contributors` clients from the sums of their limbs (each
    /// read mod 2^r). Refuses a limb sum above `contributors · (2^k − 1)` or a rebuilt sum above
    /// `contributors · (2^width − 1)`.
    pub fn decode_sum(&self, limbs: &[u32], contributors: usize) -> Result<Vec<u64>, ScalarError> {
        if limbs.len() != self.len() {
            return Err(ScalarError::WrongLength {
                expected: self.len(),
                got: limbs.len(),
            });
        }
        let contributors = contributors as u64;
        let limb_max = u128::from(contributors) * ((1u128 << self.limb_bits) - 1);
        let mut out = Vec::with_capacity(self.widths.len());
        let mut at = 0;
        for (index, &width) in self.widths.iter().enumerate() {
            let n = self.limbs_of(width);
            let mut total: u128 = 0;
            for (j, &limb) in limbs[at..at + n].iter().enumerate() {
                let limb = u128::from(crate::ring::reduce_one(limb, self.ring_bits));
                if limb > limb_max {
                    return Err(ScalarError::SumOutOfRange {
                        index,
                        contributors,
                    });
                }
                // j·k < width + k ≤ 64 and limb < 2^32: no overflow in a u128.
                total += limb << (j * usize::from(self.limb_bits));
            }
            at += n;
            let max = u128::from(contributors) * ((1u128 << width) - 1);
            if total > max {
                return Err(ScalarError::SumOutOfRange {
                    index,
                    contributors,
                });
            }
            // ≤ 2^32 · (2^32 − 1) < 2^64.
            out.push(
                u64::try_from(total).map_err(|_| ScalarError::SumOutOfRange {
                    index,
                    contributors,
                })?,
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(sum: &mut [u32], v: &[u32], r: u8) {
        for (s, x) in sum.iter_mut().zip(v) {
            *s = crate::ring::reduce_one(s.wrapping_add(*x), r);
        }
    }

    /// 21-bit ring, 20 clients: k = 16 (20 · 65,535 < 2^21), so a 32-bit scalar takes 2 limbs
    /// and a 1-bit one 1; the sums of 20 clients' largest values come back exactly.
    #[test]
    fn sums_of_the_largest_values_come_back_exactly() {
        let layout = ScalarLayout::new(&[1, 16, 32], 21, 20).unwrap();
        assert_eq!((layout.limb_bits(), layout.len()), (16, 4));
        let mut sum = vec![0u32; layout.len()];
        for _ in 0..20 {
            add(
                &mut sum,
                &layout.encode(&[1, 65_535, u64::from(u32::MAX)]).unwrap(),
                21,
            );
        }
        assert_eq!(
            layout.decode_sum(&sum, 20).unwrap(),
            vec![20, 20 * 65_535, 20 * u64::from(u32::MAX)]
        );
    }

    /// The limb width shrinks with the ring and grows with it, and a ring that cannot sum one
    /// bit per client is refused.
    #[test]
    fn the_limb_width_follows_the_ring_and_the_cohort() {
        assert_eq!(ScalarLayout::new(&[8], 32, 1).unwrap().limb_bits(), 32);
        assert_eq!(ScalarLayout::new(&[8], 24, 1_000).unwrap().limb_bits(), 14);
        assert_eq!(ScalarLayout::new(&[8], 5, 20).unwrap().limb_bits(), 1);
        assert_eq!(ScalarLayout::new(&[8], 5, 20).unwrap().len(), 8);
        assert_eq!(
            ScalarLayout::new(&[8], 4, 20),
            Err(ScalarError::RingTooSmall {
                ring_bits: 4,
                summands: 20
            })
        );
        assert_eq!(
            ScalarLayout::new(&[0], 21, 20),
            Err(ScalarError::BadWidth(0))
        );
        assert_eq!(
            ScalarLayout::new(&[33], 21, 20),
            Err(ScalarError::BadWidth(33))
        );
    }

    /// A value above its width is refused at encoding; a limb sum or a rebuilt sum that honest
    /// clients could not produce is refused at decoding.
    #[test]
    fn out_of_range_values_and_sums_are_refused() {
        let layout = ScalarLayout::new(&[1, 16], 21, 20).unwrap();
        assert!(matches!(
            layout.encode(&[2, 0]),
            Err(ScalarError::ValueTooLarge { index: 0, .. })
        ));
        assert!(matches!(
            layout.encode(&[0]),
            Err(ScalarError::WrongCount { .. })
        ));
        // Three contributors whose flags sum to 4, or a wrapped ("negative") limb.
        assert_eq!(
            layout.decode_sum(&[4, 0], 3),
            Err(ScalarError::SumOutOfRange {
                index: 0,
                contributors: 3
            })
        );
        assert_eq!(
            layout.decode_sum(&[0, (1 << 21) - 1], 3),
            Err(ScalarError::SumOutOfRange {
                index: 1,
                contributors: 3
            })
        );
        assert_eq!(
            layout.decode_sum(&[3, 3 * 65_535], 3).unwrap(),
            vec![3, 196_605]
        );
    }
}
