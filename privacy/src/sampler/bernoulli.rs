//! Exact Bernoulli trials and the distributions built from them, in integer arithmetic only:
//! the building blocks of Canonne, Kamath and Steinke 2020 (Bernoulli(exp(−γ)) for rational
//! γ, Algorithm 1; a geometric by their Algorithm 2's construction), uniform integers without
//! modulo bias, and Bernoulli(c) for a real c known only through bounds of any precision
//! ([`bernoulli_bounded`]). The sampler's fast path decides most trials from one chunk of
//! random bits; these finish the rare ones exactly.

use num_bigint::BigUint;
use rand_core::RngCore;

use super::interval::Bounds;

/// Random bits drawn 64 at a time: the Bernoulli trials below need about two bits each, so a
/// whole word per trial would make the RNG the bottleneck.
pub(crate) struct Bits<'a, R: ?Sized> {
    rng: &'a mut R,
    word: u64,
    left: u32,
}

impl<'a, R: RngCore + ?Sized> Bits<'a, R> {
    pub(crate) fn new(rng: &'a mut R) -> Self {
        Self {
            rng,
            word: 0,
            left: 0,
        }
    }

    /// 64 fresh random bits (the buffered bits stay for the other draws).
    #[inline(always)]
    pub(crate) fn word(&mut self) -> u64 {
        self.rng.next_u64()
    }

    #[inline(always)]
    pub(crate) fn bit(&mut self) -> bool {
        if self.left == 0 {
            self.word = self.rng.next_u64();
            self.left = 64;
        }
        let b = self.word & 1 == 1;
        self.word >>= 1;
        self.left -= 1;
        b
    }

    /// 32 random bits. Bits left in the current word are dropped when fewer than 32 remain; which
    /// are dropped depends only on the count, never on their values, so no bias.
    #[inline(always)]
    fn half_word(&mut self) -> u32 {
        if self.left < 32 {
            self.word = self.rng.next_u64();
            self.left = 64;
        }
        let h = self.word as u32;
        self.word >>= 32;
        self.left -= 32;
        h
    }

    /// A uniform integer in [0, n), n ≥ 1 (Lemire's multiply-and-reject: exact, no modulo
    /// bias), from 32 random bits per try when n ≤ 2^32 and from 64 otherwise.
    #[inline(always)]
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        if n == 1 {
            return 0;
        }
        if let Ok(n32) = u32::try_from(n) {
            let mut m = u64::from(self.half_word()) * n;
            let mut low = m as u32;
            if low < n32 {
                let threshold = n32.wrapping_neg() % n32;
                while low < threshold {
                    m = u64::from(self.half_word()) * n;
                    low = m as u32;
                }
            }
            return m >> 32;
        }
        let mut m = u128::from(self.rng.next_u64()) * u128::from(n);
        let mut low = m as u64;
        if low < n {
            let threshold = n.wrapping_neg() % n;
            while low < threshold {
                m = u128::from(self.rng.next_u64()) * u128::from(n);
                low = m as u64;
            }
        }
        (m >> 64) as u64
    }
}

/// The largest denominator [`bernoulli_ratio`] takes: its remainder must double without
/// overflow.
const MAX_RATIO_DEN: u128 = 1 << 127;

/// Bernoulli(num/den), den ≤ 2^127, exactly: below 2^64, a uniform integer below den compared
/// with num; above, a uniform U in [0, 1) compared with num/den bit by bit, the bits of num/den
/// coming from long division, until they differ (two bits expected).
#[inline(always)]
pub(crate) fn bernoulli_ratio<R: RngCore + ?Sized>(
    bits: &mut Bits<'_, R>,
    num: u128,
    den: u128,
) -> bool {
    debug_assert!(den > 0 && den <= MAX_RATIO_DEN);
    if num >= den {
        return true;
    }
    if let Ok(small) = u64::try_from(den) {
        // One uniform integer below den: a single multiplication, and no data-dependent
        // branches, which the bit-by-bit comparison below is full of.
        return u128::from(bits.below(small)) < num;
    }
    let mut rem = num;
    loop {
        // rem < den ≤ 2^127, so 2·rem does not overflow.
        rem <<= 1;
        let p_bit = rem >= den;
        if p_bit {
            rem -= den;
        }
        if bits.bit() != p_bit {
            // U < p exactly when p has the 1 at the first difference.
            return p_bit;
        }
    }
}

/// Bernoulli(exp(−num/den)) for any num/den ≥ 0 (CKS Algorithm 1 and its extension to γ > 1:
/// one Bernoulli(exp(−1)) per whole unit of γ, stopping at the first failure, then one for the
/// fraction).
pub(crate) fn bernoulli_exp<R: RngCore + ?Sized>(
    bits: &mut Bits<'_, R>,
    mut num: u128,
    den: u128,
) -> bool {
    while num >= den {
        if !bernoulli_exp_fraction(bits, 1, 1) {
            return false;
        }
        num -= den;
    }
    bernoulli_exp_fraction(bits, num, den)
}

/// Bernoulli(exp(−γ)) for γ = num/den ∈ [0, 1]: Bernoulli(γ/k) for k = 1, 2, … until the first
/// failure; true when that is at an odd k.
pub(crate) fn bernoulli_exp_fraction<R: RngCore + ?Sized>(
    bits: &mut Bits<'_, R>,
    num: u128,
    den: u128,
) -> bool {
    debug_assert!(num <= den && den > 0 && den <= MAX_RATIO_DEN);
    // The common case in 64-bit arithmetic: den·k below 2^64.
    if let (Ok(num64), Ok(den64)) = (u64::try_from(num), u64::try_from(den)) {
        let mut k: u64 = 1;
        while let Some(range) = den64.checked_mul(k) {
            // Bernoulli(γ/k) = Bernoulli(num / (den·k)); at k = 1 with num = den, certain.
            if num64 < range && bits.below(range) >= num64 {
                return k % 2 == 1;
            }
            k += 1;
        }
        return bernoulli_exp_fraction_from(bits, num, den, u128::from(k));
    }
    bernoulli_exp_fraction_from(bits, num, den, 1)
}

/// [`bernoulli_exp_fraction`] from the k-th trial on, in 128-bit arithmetic.
pub(crate) fn bernoulli_exp_fraction_from<R: RngCore + ?Sized>(
    bits: &mut Bits<'_, R>,
    num: u128,
    den: u128,
    first_k: u128,
) -> bool {
    let mut k = first_k;
    loop {
        let success = match den.checked_mul(k) {
            Some(range) if range <= MAX_RATIO_DEN => bernoulli_ratio(bits, num, range),
            // Bernoulli(γ/k) as Bernoulli(γ) and Bernoulli(1/k), independent.
            _ => bernoulli_ratio(bits, num, den) && bernoulli_ratio(bits, 1, k),
        };
        if !success {
            return k % 2 == 1;
        }
        k += 1;
    }
}

/// Bernoulli(c) for c ∈ [0, 1] known through `bounds(p)` (bounds on c·2^p at any precision p),
/// with the first `len` bits of the uniform U ∈ [0, 1) already drawn and equal to `prefix`:
/// U's bits are drawn 64 at a time, and each time compared with c's bounds at 64 more bits,
/// until U < c or U ≥ c is certain. Exact: U is a uniform real revealed bit by bit, and every
/// conclusion follows from bounds that hold; each round leaves it undecided with probability
/// about 2^−63.
pub(crate) fn bernoulli_bounded<R: RngCore + ?Sized>(
    bits: &mut Bits<'_, R>,
    prefix: u64,
    len: u32,
    bounds: impl Fn(u32) -> Bounds,
) -> bool {
    let mut u = BigUint::from(prefix);
    let mut len = len;
    loop {
        let p = len + 64;
        let c = bounds(p);
        // U ∈ [u, u + 1)·2^−len, that is [u·2^64, (u + 1)·2^64) at p bits.
        if (&u + 1u32) << 64 <= c.lo {
            return true;
        }
        if &u << 64 >= c.hi {
            return false;
        }
        u = (u << 64) + bits.word();
        len += 64;
    }
}

/// Bernoulli(exp(−g_num/g_den)) for g_num < 2^96, g_den < 2^64, with the first trial of
/// [`bernoulli_exp_fraction`] (Bernoulli(γ)) decided from the first `bits` ≤ 32 bits of U
/// (`chunk`) where it can be: U ≥ γ (the common case for small γ) ends it at once with success.
/// For γ > 1 the chunk is not used (a table shape the sampler itself never has).
#[inline(always)]
pub(crate) fn bernoulli_exp_with_chunk<R: RngCore + ?Sized>(
    rng: &mut R,
    chunk: u64,
    bits: u32,
    g_num: u128,
    g_den: u128,
) -> bool {
    debug_assert!(g_den < 1 << 64 && g_num < 1 << 96 && bits <= 32 && chunk < 1 << bits);
    if g_num > g_den {
        return bernoulli_exp(&mut Bits::new(rng), g_num, g_den);
    }
    // U ∈ [chunk, chunk + 1)·2^−bits; compare with γ = g_num/g_den scaled by 2^bits·g_den.
    let low = u128::from(chunk) * g_den;
    let target = g_num << bits;
    if low >= target {
        // U ≥ γ: the first trial failed, at k = 1 (odd): success.
        return true;
    }
    let mut bits = Bits::new(rng);
    let first = if low + g_den <= target {
        true
    } else {
        // γ's leading bits equal U's: the rest of U against the rest of γ.
        bernoulli_ratio(&mut bits, target - low, g_den)
    };
    !first || bernoulli_exp_fraction_from(&mut bits, g_num, g_den, 2)
}

/// A geometric j ≥ 0 with P(j) ∝ exp(−j·s/t), t ≤ 2^64, s ≥ 1: X ≥ 0 with P(X = x) ∝
/// exp(−x/t) as U + t·V (U uniform below t accepted with probability exp(−U/t), V geometric with
/// ratio e^−1), then j = ⌊X/s⌋ (CKS 2020, Algorithm 2's construction).
pub(crate) fn geometric<R: RngCore + ?Sized>(bits: &mut Bits<'_, R>, s: u128, t: u64) -> u128 {
    debug_assert!(s > 0 && t > 0);
    loop {
        let u = bits.below(t);
        if !bernoulli_exp_fraction(bits, u128::from(u), u128::from(t)) {
            continue;
        }
        let mut v = 0u128;
        while bernoulli_exp_fraction(bits, 1, 1) {
            v += 1;
        }
        // v < 2^64 in any run that ends: t·v + u fits.
        return (u128::from(u) + u128::from(t) * v) / s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha12Rng;

    /// |observed − p| ≤ 6 standard errors of a frequency over `n` trials (a 2·10⁻⁹ two-sided
    /// tail for a fixed seed that was never tuned).
    fn assert_frequency(hits: u64, n: u64, p: f64, what: &str) {
        let observed = hits as f64 / n as f64;
        let se = (p * (1.0 - p) / n as f64).sqrt();
        assert!(
            (observed - p).abs() <= 6.0 * se,
            "{what}: observed {observed}, expected {p} ± {}",
            6.0 * se
        );
    }

    #[test]
    fn uniform_and_ratio_draws_are_unbiased() {
        let mut rng = ChaCha12Rng::seed_from_u64(1);
        let mut bits = Bits::new(&mut rng);
        let n = 200_000u64;
        let mut counts = [0u64; 3];
        for _ in 0..n {
            counts[bits.below(3) as usize] += 1;
        }
        for c in counts {
            assert_frequency(c, n, 1.0 / 3.0, "uniform below 3");
        }
        assert_eq!(bits.below(1), 0);
        let huge = (1u128 << 126) + 12345;
        for (num, den) in [
            (1u128, 3u128),
            (2, 7),
            (12_345_678_901, (1 << 40) + 7),
            (huge / 3, huge),
            (1, 2),
            (5, 5),
            (0, 9),
        ] {
            let p = num as f64 / den as f64;
            let hits = (0..n)
                .filter(|_| bernoulli_ratio(&mut bits, num, den))
                .count() as u64;
            if p == 0.0 || p == 1.0 {
                assert_eq!(hits as f64, p * n as f64);
            } else {
                assert_frequency(hits, n, p, &format!("{num}/{den}"));
            }
        }
    }

    #[test]
    fn bernoulli_exp_has_probability_exp_minus_gamma() {
        let mut rng = ChaCha12Rng::seed_from_u64(2);
        let mut bits = Bits::new(&mut rng);
        let n = 200_000u64;
        for (num, den) in [(0u128, 1u128), (3, 10), (1, 1), (5, 2), (7, 3)] {
            let p = (-(num as f64) / den as f64).exp();
            let hits = (0..n)
                .filter(|_| bernoulli_exp(&mut bits, num, den))
                .count() as u64;
            if num == 0 {
                assert_eq!(hits, n);
            } else {
                assert_frequency(hits, n, p, &format!("exp(-{num}/{den})"));
            }
        }
    }

    #[test]
    fn bounded_comparisons_decide_exactly() {
        // c = 1/3 through bounds at any precision; the first chunk "0101…" of length 2 equals
        // c's leading bits 01, so the trial goes on from there: P = (1/3 − 1/4)·4 = 1/3.
        let third = |p: u32| {
            let one = BigUint::from(1u32) << p;
            Bounds {
                lo: &one / 3u32,
                hi: &one / 3u32 + 1u32,
            }
        };
        let mut rng = ChaCha12Rng::seed_from_u64(8);
        let mut bits = Bits::new(&mut rng);
        let n = 100_000u64;
        let hits = (0..n)
            .filter(|_| bernoulli_bounded(&mut bits, 0, 0, third))
            .count() as u64;
        assert_frequency(hits, n, 1.0 / 3.0, "c = 1/3 from scratch");
        let hits = (0..n)
            .filter(|_| bernoulli_bounded(&mut bits, 1, 2, third))
            .count() as u64;
        assert_frequency(hits, n, 1.0 / 3.0, "c = 1/3 after the prefix 01");
        // A prefix that already decides: 00 < 1/3 ≤ 10.
        assert!(bernoulli_bounded(&mut bits, 0, 2, third));
        assert!(!bernoulli_bounded(&mut bits, 2, 2, third));
    }

    #[test]
    fn the_chunked_exp_trial_has_probability_exp_minus_gamma() {
        let mut rng = ChaCha12Rng::seed_from_u64(9);
        let n = 200_000u64;
        for (num, den) in [
            (1u128, 3u128),
            (1, 1),
            (7, 100),
            ((1 << 40) + 3, (1 << 41) + 5),
        ] {
            let p = (-(num as f64) / den as f64).exp();
            let hits = (0..n)
                .filter(|_| {
                    let chunk = u64::from(rng.next_u32());
                    bernoulli_exp_with_chunk(&mut rng, chunk, 32, num, den)
                })
                .count() as u64;
            assert_frequency(hits, n, p, &format!("exp(-{num}/{den}) chunked"));
            // A short chunk (7 bits) is undecided more often: the rest of U decides.
            let hits = (0..n)
                .filter(|_| {
                    let chunk = u64::from(rng.next_u32() >> 25);
                    bernoulli_exp_with_chunk(&mut rng, chunk, 7, num, den)
                })
                .count() as u64;
            assert_frequency(hits, n, p, &format!("exp(-{num}/{den}), 7-bit chunk"));
            // The chunk equal to γ's leading 32 bits: the rest of U decides the first trial
            // (success with probability frac, γ·2^32's fractional part), then CKS goes on.
            let chunk = (num << 32) / den;
            let gamma = num as f64 / den as f64;
            let frac = ((num << 32) as f64 / den as f64) - chunk as f64;
            // P(accept | the first trial succeeded) = (e^−γ − (1 − γ))/γ.
            let rest = (p - 1.0 + gamma) / gamma;
            let want = (1.0 - frac) + frac * rest;
            if chunk < 1 << 32 && frac > 0.01 {
                let chunk = chunk as u64;
                let hits = (0..n)
                    .filter(|_| bernoulli_exp_with_chunk(&mut rng, chunk, 32, num, den))
                    .count() as u64;
                assert_frequency(hits, n, want, &format!("exp(-{num}/{den}) at its prefix"));
            }
        }
    }

    #[test]
    fn geometric_has_the_ratio_asked_for() {
        // P(j) ∝ exp(−j·s/t): the mean is r/(1 − r), r = exp(−s/t).
        let mut rng = ChaCha12Rng::seed_from_u64(10);
        let mut bits = Bits::new(&mut rng);
        let n = 100_000u64;
        for (s, t) in [(1u128, 1u64), (3, 10), (7, 2)] {
            let r = (-(s as f64) / t as f64).exp();
            let zeros = (0..n).filter(|_| geometric(&mut bits, s, t) == 0).count() as u64;
            assert_frequency(zeros, n, 1.0 - r, &format!("P(j = 0) for s/t = {s}/{t}"));
        }
    }
}
