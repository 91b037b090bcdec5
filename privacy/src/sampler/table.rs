//! The sampler's proposal and acceptance tables for one variance (see the parent module's docs
//! for the algorithm and why it is exact).
//!
//! Floating point only chooses the table's shape and the proposal's integer weights; any
//! choice is valid. Everything the output distribution depends on is exact: the weights are
//! integers, the alias table reproduces them exactly (checked by a test), and the acceptance
//! constants are known through rigorous bounds ([`super::interval`]) at any precision.

use num_bigint::BigUint;

use super::interval::{Bounds, div_ceil, exp_neg, mul};

/// The most bulk buckets (the tail is one more): a table of at most 1,024 slots (8 KiB) and
/// 1,024 buckets (16 KiB), within L1 and L2 caches.
pub(crate) const MAX_BULK: u64 = 1023;

/// Where the tail starts, in standard deviations: the tail is proposed about once in 5·10^8
/// draws, so its slower exact path costs nothing on average.
pub(crate) const TAIL_Z: f64 = 6.0;

/// Where the tail may start instead, in standard deviations, to keep buckets of one magnitude
/// (the batched fast path, [`super::DiscreteGaussian`]'s `narrow_batch`): for 170 < σ ≤ 227,
/// 6σ needs more than [`MAX_BULK`] unit buckets, and the tail then starts at B = 1,023 ≥ 4.5σ
/// rather than the buckets widening to h = 2. The tail is then proposed at most about once in
/// 150,000 draws.
pub(crate) const UNIT_TAIL_Z: f64 = 4.5;

/// The table's shape. Any shape gives the exact distribution; [`Shape::FAST`] is the one the
/// sampler uses, the others serve tests of the rare paths.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Shape {
    /// Where the tail starts, in standard deviations.
    pub tail_z: f64,
    /// Where the tail may start instead when that keeps buckets of one magnitude (at the
    /// `max_bulk`-th magnitude, if that is at least this many standard deviations); set it to
    /// `tail_z` or more for no effect.
    pub unit_tail_z: f64,
    /// The most bulk buckets.
    pub max_bulk: u64,
    /// Whether the proposal gives every bucket the same weight (instead of weights close to
    /// the target's, which make every acceptance constant close to 1).
    pub uniform: bool,
}

impl Shape {
    /// The sampler's shape.
    pub const FAST: Self = Self {
        tail_z: TAIL_Z,
        unit_tail_z: UNIT_TAIL_Z,
        max_bulk: MAX_BULK,
        uniform: false,
    };
}

/// The precision of M, the rejection constant (a dyadic rational chosen once).
const M_BITS: u32 = 128;

/// Guard bits for the exponentials under a division.
const GUARD: u32 = 64;

/// log₂ of the alias slots: always 1,024, so that the shifts and masks of the fast path are
/// constants and a masked index needs no bounds check.
pub(crate) const SLOT_BITS: u32 = 10;
/// The alias slots.
pub(crate) const SLOTS: usize = 1 << SLOT_BITS;
/// The bits of each slot's coin: a slot keeps its own bucket when the coin is below its
/// threshold (in 0..=2^12), else gives its alias. 12 bits give the proposal a resolution of
/// 2^-22, fine enough that the acceptance constants of all but the rarest buckets are within
/// 2^-10 of 1, and leave room for two candidates in one 64-bit word.
pub(crate) const COIN_BITS: u32 = 12;
/// The bits of a candidate's slot, coin and sign (the sign is bit 22).
pub(crate) const PROPOSAL_BITS: u32 = SLOT_BITS + COIN_BITS + 1;

/// The tables for σ² = num/den.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    /// log₂ h: each bulk bucket holds h = 2^width_bits consecutive magnitudes.
    pub width_bits: u32,
    /// The bits of U compared with a bucket's constant on the fast path.
    pub chunk_bits: u32,
    /// The bits of U the γ trial starts with (buckets of h > 1 only).
    pub gamma_bits: u32,
    /// The tail bucket's index (= the number of bulk buckets).
    pub tail: u32,
    /// B: the first magnitude of the tail; the bulk holds 0..B.
    pub tail_start: u64,
    /// Per slot: the coin below which it keeps its own bucket, and its alias.
    pub thresholds: Box<[u32; SLOTS]>,
    pub aliases: Box<[u32; SLOTS]>,
    /// Per bucket (zero past the tail): a chunk below this proves acceptance (0 for the tail,
    /// which always takes the rare path).
    pub accept_below: Box<[u64; SLOTS]>,
    /// Per bucket: a chunk at or above this proves rejection.
    pub reject_from: Box<[u64; SLOTS]>,
    /// Per bucket: ⌊c_lo·2^64⌋ and ⌈c_hi·2^64⌉ for bounds c_lo ≤ c ≤ c_hi, the rare path's
    /// second comparison (32 more bits of U) before arbitrary precision.
    pub c_lo: Box<[u128; SLOTS]>,
    pub c_hi: Box<[u128; SLOTS]>,
    num: u64,
    den: u64,
    /// W_i: the proposal gives bucket i probability W_i / 2^31, exactly.
    weights: Vec<u64>,
    /// M·2^M_BITS.
    m: BigUint,
}

impl Table {
    /// The tables for σ² = num/den (num, den ≥ 1, σ² within the sampler's range).
    pub fn build(num: u64, den: u64, shape: Shape) -> Self {
        let sigma2 = num as f64 / den as f64;
        let mut target = ((shape.tail_z * sigma2.sqrt()).ceil() as u64).max(1);
        if target > shape.max_bulk
            && ((shape.unit_tail_z * sigma2.sqrt()).ceil() as u64) <= shape.max_bulk
        {
            // Unit buckets with the tail a little closer (see UNIT_TAIL_Z).
            target = shape.max_bulk;
        }
        let mut width_bits = 0;
        while target.div_ceil(1 << width_bits) > shape.max_bulk {
            width_bits += 1;
        }
        let h = 1u64 << width_bits;
        let bulk = target.div_ceil(h);
        let tail_start = bulk * h;
        // With h = 1, one 32-bit candidate: slot, coin and sign, then 9 bits for c. With h > 1,
        // one 64-bit word: slot, coin and sign, then the magnitude's offset in its bucket, then
        // the chunks for c and for γ.
        let (chunk_bits, gamma_bits) = if width_bits == 0 {
            (32 - PROPOSAL_BITS, 0)
        } else {
            let rest = 64 - PROPOSAL_BITS - width_bits;
            (rest / 2, rest - rest / 2)
        };

        // The proposal's weights, ideally proportional to each bucket's largest weight times
        // its width (bulk: exp(−y_i²/2σ²)·h; tail: exp(−B²/2σ²)/(1 − r), r = exp(−B/σ²)), in
        // units of 2^-32 of a slot, rounded up so that no bucket is short, then balanced on
        // bucket 0, the largest.
        let mut estimates: Vec<f64> = (0..bulk)
            .map(|i| (-((i * h) as f64).powi(2) / (2.0 * sigma2)).exp())
            .collect();
        let rho = tail_start as f64 / sigma2;
        estimates.push(
            (-(tail_start as f64).powi(2) / (2.0 * sigma2)).exp() / (h as f64 * -(-rho).exp_m1()),
        );
        if shape.uniform {
            estimates.iter_mut().for_each(|e| *e = 1.0);
        }
        let total: f64 = estimates.iter().sum();
        let units = (SLOTS as u64) << COIN_BITS;
        // Rounded up against a total a little short of all the units, so that no bucket gets
        // less than its share at that scale and the ceilings cannot overflow; the few units
        // left go to bucket 0. Only giving a bucket more than its share lowers its own
        // acceptance constant; M, the largest ratio, stays at the common scale.
        let buckets = estimates.len() as u64;
        let scale = (units - 2 * buckets) as f64 / total;
        let mut weights: Vec<u64> = estimates
            .iter()
            .map(|e| ((e * scale).ceil() as u64).clamp(1, units))
            .collect();
        let sum: u64 = weights.iter().sum();
        // Float error in the ceilings is far below the margin of 2 units a bucket.
        weights[0] += units.checked_sub(sum).expect("the ceilings fit the margin");

        let (thresholds, aliases) = alias_slots(&weights);
        let mut table = Self {
            width_bits,
            chunk_bits,
            gamma_bits,
            tail: bulk as u32,
            tail_start,
            thresholds,
            aliases,
            accept_below: Box::new([0; SLOTS]),
            reject_from: Box::new([0; SLOTS]),
            c_lo: Box::new([0; SLOTS]),
            c_hi: Box::new([0; SLOTS]),
            num,
            den,
            weights,
            m: BigUint::ZERO,
        };
        // exp(−y_i²/(2σ²)) for every bulk bucket at once, then M and the fast path's limits.
        let q = M_BITS + GUARD;
        let bulk_exps = table.bulk_exponentials(q);
        table.m = table.rejection_constant(&bulk_exps, q);
        let unit = 1u128 << (64 - chunk_bits);
        for (bucket, e) in bulk_exps.iter().enumerate() {
            let c = table.bulk_constant(bucket as u32, e, q, 64);
            let (lo, hi) = (to_u128(&c.lo), to_u128(&c.hi));
            table.c_lo[bucket] = lo;
            table.c_hi[bucket] = hi;
            table.accept_below[bucket] = (lo / unit) as u64;
            table.reject_from[bucket] = hi.div_ceil(unit) as u64;
        }
        // The tail (and the unused entries past it) always take the sampler's rare path.
        table
    }

    /// y²/(2σ²) as a fraction.
    fn half_square(&self, y: u64) -> (u128, u128) {
        (
            u128::from(y) * u128::from(y) * u128::from(self.den),
            2 * u128::from(self.num),
        )
    }

    /// Bounds at q bits on exp(−y_i²/(2σ²)) for every bulk bucket i, by the recurrence
    /// e_(i+1) = e_i·t_i, t_i = a^(2i+1), t_(i+1) = t_i·a², a = exp(−h²/(2σ²)): two
    /// multiplications a bucket instead of a series each. Each product rounds outwards, so the
    /// bounds hold; they widen by a few units per bucket, far within q's guard bits.
    fn bulk_exponentials(&self, q: u32) -> Vec<Bounds> {
        let h = 1u64 << self.width_bits;
        let (a_num, two_num) = self.half_square(h);
        let t_step = exp_neg(2 * a_num, two_num, q);
        let mut t = exp_neg(a_num, two_num, q);
        let one = BigUint::from(1u32) << q;
        let mut e = Bounds {
            lo: one.clone(),
            hi: one,
        };
        let mut out = Vec::with_capacity(self.tail as usize);
        for _ in 0..self.tail {
            let next = mul(&e, &t, q);
            out.push(std::mem::replace(&mut e, next));
            t = mul(&t, &t_step, q);
        }
        out
    }

    /// M·2^M_BITS: the largest upper bound of exp(−y_i²/2σ²)/W_i over the bulk buckets (from
    /// `bulk_exps`, at q bits) and of exp(−B²/2σ²)/(h·W_tail·(1 − r)) for the tail, so that every
    /// acceptance constant c = (that ratio)/M is at most 1.
    fn rejection_constant(&self, bulk_exps: &[Bounds], q: u32) -> BigUint {
        let h = 1u64 << self.width_bits;
        let mut m = BigUint::ZERO;
        for (e, &w) in bulk_exps.iter().zip(&self.weights) {
            // (e/2^q)/W at M_BITS bits.
            let den = BigUint::from(w) << (q - M_BITS);
            m = m.max(div_ceil(&e.hi, &den));
        }
        let mut p = q;
        loop {
            let (e, one_minus_r) = self.tail_parts(p);
            if one_minus_r.lo > BigUint::ZERO {
                // (e/2^p)/(h·W·(1 − r)) ≤ e.hi/(h·W·omr.lo), at M_BITS bits.
                let den = BigUint::from(h) * self.weights[self.tail as usize] * &one_minus_r.lo;
                m = m.max(div_ceil(&(e.hi << M_BITS), &den));
                return m;
            }
            // 1 − r below 2^-p: more precision (unreachable for the sampler's variances).
            p *= 2;
        }
    }

    /// Bounds at p bits on exp(−B²/2σ²) and on 1 − exp(−B/σ²).
    fn tail_parts(&self, p: u32) -> (Bounds, Bounds) {
        let (a, b) = self.half_square(self.tail_start);
        let e = exp_neg(a, b, p);
        let r = exp_neg(
            u128::from(self.tail_start) * u128::from(self.den),
            u128::from(self.num),
            p,
        );
        let one = BigUint::from(1u32) << p;
        let lo = if r.hi >= one {
            BigUint::ZERO
        } else {
            &one - &r.hi
        };
        let hi = &one - r.lo.min(one.clone());
        (e, Bounds { lo, hi })
    }

    /// Bounds at p bits on bucket `bucket`'s acceptance constant c ∈ (0, 1].
    pub fn acceptance_bounds(&self, bucket: u32, p: u32) -> Bounds {
        let h = 1u64 << self.width_bits;
        let weight = BigUint::from(self.weights[bucket as usize]);
        let one = BigUint::from(1u32) << p;
        let (lo, hi) = if bucket == self.tail {
            // c = e·2^M_BITS / (h·W·m·(1 − r)); with e and 1 − r at q bits, c·2^p =
            // e_q·2^(M_BITS + p) / (h·W·m·omr_q).
            let q = p + GUARD;
            let (e, omr) = self.tail_parts(q);
            let scale = BigUint::from(h) * &weight * &self.m;
            let lo = (&e.lo << (M_BITS + p)) / (&scale * &omr.hi);
            let hi = if omr.lo == BigUint::ZERO {
                one.clone()
            } else {
                div_ceil(&(&e.hi << (M_BITS + p)), &(&scale * &omr.lo))
            };
            (lo, hi)
        } else {
            let (a, b) = self.half_square(u64::from(bucket) * h);
            let q = p + GUARD;
            let c = self.bulk_constant(bucket, &exp_neg(a, b, q), q, p);
            (c.lo, c.hi)
        };
        // c ≤ 1 by the choice of M.
        Bounds {
            lo: lo.min(one.clone()),
            hi: hi.min(one),
        }
    }

    /// Bounds at p bits on bulk bucket `bucket`'s constant c = e·2^M_BITS/(W·m), from bounds
    /// `e` on exp(−y_i²/(2σ²)) at q ≥ p bits: c·2^p = e_q·2^M_BITS / (W·m·2^(q − p)).
    fn bulk_constant(&self, bucket: u32, e: &Bounds, q: u32, p: u32) -> Bounds {
        let den = (BigUint::from(self.weights[bucket as usize]) * &self.m) << (q - p);
        let one = BigUint::from(1u32) << p;
        // c ≤ 1 by the choice of M.
        Bounds {
            lo: ((&e.lo << M_BITS) / &den).min(one.clone()),
            hi: div_ceil(&(&e.hi << M_BITS), &den).min(one),
        }
    }

    /// The proposal's probability of each bucket as (numerator, denominator), from the alias
    /// slots (for the exactness test).
    #[cfg(test)]
    pub fn proposal_weights(&self) -> (Vec<u64>, u64) {
        let mut got = vec![0u64; self.weights.len()];
        for (i, (&threshold, &alias)) in self.thresholds.iter().zip(self.aliases.iter()).enumerate()
        {
            let keep = u64::from(threshold);
            if keep > 0 {
                got[i] += keep;
            }
            got[alias as usize] += (1u64 << COIN_BITS) - keep;
        }
        (got, (SLOTS as u64) << COIN_BITS)
    }

    /// The weights the table was built for.
    #[cfg(test)]
    pub fn weights(&self) -> &[u64] {
        &self.weights
    }

    /// A copy whose fast-path limits decide nothing, so that every acceptance goes through
    /// the exact slow path (for tests of that path).
    #[cfg(test)]
    pub fn with_slow_acceptance(mut self) -> Self {
        self.accept_below.fill(0);
        self.reject_from.fill(1 << self.chunk_bits);
        self.c_lo.fill(0);
        self.c_hi.fill(1 << 64);
        self
    }
}

/// Vose's alias method in integers: [`SLOTS`] slots of 2^COIN_BITS units each share out the
/// weights (which sum to SLOTS·2^COIN_BITS) exactly, so that slot i keeps its own bucket for
/// `threshold` units and gives the rest to `alias`. A slot that ends full keeps itself (alias
/// to itself). Returns the thresholds and the aliases.
fn alias_slots(weights: &[u64]) -> (Box<[u32; SLOTS]>, Box<[u32; SLOTS]>) {
    const FULL: u64 = 1 << COIN_BITS;
    let mut rest = weights.to_vec();
    rest.resize(SLOTS, 0);
    let mut thresholds = Box::new([0u32; SLOTS]);
    let mut aliases = Box::new([0u32; SLOTS]);
    for (i, a) in aliases.iter_mut().enumerate() {
        *a = i as u32;
    }
    let (mut small, mut large): (Vec<usize>, Vec<usize>) =
        (0..SLOTS).partition(|&i| rest[i] < FULL);
    while let (Some(&s), Some(&g)) = (small.last(), large.last()) {
        small.pop();
        thresholds[s] = rest[s] as u32;
        aliases[s] = g as u32;
        rest[g] -= FULL - rest[s];
        if rest[g] < FULL {
            large.pop();
            small.push(g);
        }
    }
    // What is left holds exactly FULL each (the weights' sum is exact), and keeps itself.
    debug_assert!(small.is_empty() && large.iter().all(|&g| rest[g] == FULL));
    (thresholds, aliases)
}

/// A value below 2^128 (c·2^64 ≤ 2^64 here).
fn to_u128(x: &BigUint) -> u128 {
    let digits = x.to_u64_digits();
    u128::from(digits.first().copied().unwrap_or(0))
        | u128::from(digits.get(1).copied().unwrap_or(0)) << 64
}

#[cfg(test)]
fn to_u64(x: &BigUint) -> u64 {
    x.to_u64_digits().first().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x·2^−p as an f64.
    fn to_f64(x: &BigUint, p: u32) -> f64 {
        let shift = x.bits().saturating_sub(60);
        to_u64(&(x >> shift)) as f64 * 2f64.powi(shift as i32 - p as i32)
    }

    #[test]
    fn acceptance_bounds_hold_and_nest() {
        for (num, den) in [(3u64, 1u64), (9_467 << 20, 1 << 20), (1_001_000, 1)] {
            let table = Table::build(num, den, Shape::FAST);
            let m = to_f64(&table.m, M_BITS);
            let sigma2 = num as f64 / den as f64;
            let h = 1u64 << table.width_bits;
            let mut acceptance = 0.0f64;
            for bucket in 0..=table.tail {
                let coarse = table.acceptance_bounds(bucket, 80);
                let fine = table.acceptance_bounds(bucket, 200);
                // Finer bounds lie within coarser ones.
                assert!(fine.lo >= &coarse.lo << 120u32 && fine.hi <= &coarse.hi << 120u32);
                assert!(fine.lo <= fine.hi);
                let y = f64::from(bucket) * h as f64;
                let w = table.weights[bucket as usize] as f64;
                let want = if bucket == table.tail {
                    let r = -(-(table.tail_start as f64) / sigma2).exp_m1();
                    (-y * y / (2.0 * sigma2)).exp() / (h as f64 * w * m * r)
                } else {
                    (-y * y / (2.0 * sigma2)).exp() / (w * m)
                };
                let (lo, hi) = (to_f64(&fine.lo, 200), to_f64(&fine.hi, 200));
                assert!(
                    lo <= want * (1.0 + 1e-12) && hi >= want * (1.0 - 1e-12),
                    "bucket {bucket}: [{lo}, {hi}] vs {want}"
                );
                assert!(hi <= 1.0);
                // The fast path's limits (from the recurrence) are consistent with the direct
                // bounds: u < accept_below only where U < c, u ≥ reject_from only where U ≥ c.
                if bucket < table.tail {
                    let (accept, reject) = (
                        table.accept_below[bucket as usize],
                        table.reject_from[bucket as usize],
                    );
                    let shift = 200 - table.chunk_bits;
                    assert!(BigUint::from(accept) << shift <= fine.hi);
                    assert!(BigUint::from(reject) << shift >= fine.lo);
                    let (lo, hi) = (table.c_lo[bucket as usize], table.c_hi[bucket as usize]);
                    assert!(BigUint::from(lo) << 136u32 <= fine.hi);
                    assert!(BigUint::from(hi) << 136u32 >= fine.lo);
                    assert!(hi - lo <= 4, "bucket {bucket}: 64-bit bounds too wide");
                }
                acceptance += want * w / 2f64.powi((SLOT_BITS + COIN_BITS) as i32);
            }
            // The proposal is close to the target: a proposed bucket is accepted with
            // probability within 10^-3 of 1 (before the γ trial and the −0 rejection).
            assert!(
                acceptance > 1.0 - 1e-3,
                "{num}/{den}: acceptance {acceptance}"
            );
        }
    }
}
