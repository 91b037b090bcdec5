//! Exact sampling from the discrete Gaussian N_Z(0, σ²), by the algorithm of Canonne, Kamath and
//! Steinke, "The Discrete Gaussian for Differential Privacy" (NeurIPS 2020, Algorithms 1–3).
//!
//! N_Z(0, σ²) gives each integer x probability ∝ exp(−x²/(2σ²)). The sampler uses integer
//! arithmetic only: σ² is an exact fraction ([`Variance`]), uniform integers come from the RNG by
//! rejection (no modulo bias), and every comparison is exact, so the output follows the
//! distribution exactly, not up to floating-point rounding (the weakness of samplers built on
//! `f64`, Mironov 2012). One caveat: a discrete Laplace candidate beyond about 2^13 standard
//! deviations, where the acceptance test's numerator would overflow 128 bits, is rejected
//! instead of tested; its acceptance probability is below e^-(2^25), so the output's
//! distribution differs from the exact one by less than that.
//!
//! The steps:
//! 1. Bernoulli(exp(−γ)) for rational γ ∈ [0, 1]: draw Bernoulli(γ/k) for k = 1, 2, … until one
//!    fails; return whether the number of draws was odd. For γ > 1, ⌊γ⌋ Bernoulli(exp(−1))
//!    draws and one for the fraction, all of which must succeed.
//! 2. The discrete Laplace with scale t (P(x) ∝ exp(−|x|/t)): U uniform in [0, t) accepted with
//!    probability exp(−U/t), plus t·V with V geometric (Bernoulli(exp(−1)) until failure), a
//!    random sign, −0 rejected.
//! 3. The discrete Gaussian: with t = ⌊σ⌋ + 1, a Laplace candidate Y is accepted with
//!    probability exp(−(|Y| − σ²/t)² / (2σ²)).
//!
//! The randomness is not public: whoever knows the RNG's stream knows the noise. Callers seed a
//! cryptographic RNG (ChaCha12 in this crate) from the operating system.

use rand_core::RngCore;

/// The smallest variance accepted, 2^-20: below it the distribution is a point mass at 0 in all
/// but about e^(-500000) of draws, and the bound on the exact arithmetic's sizes is simplest.
pub const MIN_VARIANCE: f64 = 1.0 / 1_048_576.0;

/// The largest variance accepted, 2^50 (σ = 2^25): the acceptance test's integers then fit in
/// 128 bits for every candidate within about 2^13 standard deviations.
pub const MAX_VARIANCE: f64 = 1_125_899_906_842_624.0;

/// A variance σ² as an exact fraction `num / den`, with `den` a power of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variance {
    num: u64,
    den: u64,
}

/// Why a variance cannot be sampled from.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum VarianceError {
    /// The variance is NaN, infinite, or outside [`MIN_VARIANCE`, `MAX_VARIANCE`].
    #[error(
        "the noise variance {0} is outside [{MIN_VARIANCE}, {MAX_VARIANCE}] (in grid units); \
         change the noise multiplier or the number of bits per coordinate"
    )]
    OutOfRange(f64),
}

impl Variance {
    /// The smallest fraction num / 2^k ≥ `sigma2` with the smallest k ≥ 0 that keeps num ≥ 2^28:
    /// never less noise than asked for, and at most 2^-28 relatively more. Small numbers keep
    /// the sampler's Bernoulli trials within 64-bit ranges for 1 ≤ σ ≤ 55,000, where they are
    /// fastest.
    pub fn at_least(sigma2: f64) -> Result<Self, VarianceError> {
        if !(MIN_VARIANCE..=MAX_VARIANCE).contains(&sigma2) {
            return Err(VarianceError::OutOfRange(sigma2));
        }
        // sigma2 = m · 2^e with m in [1, 2); scale so the numerator has 29 bits.
        let exponent = sigma2.log2().floor() as i32;
        let shift = (28 - exponent).clamp(0, 62);
        let den = 1u64 << shift;
        // Exact: multiplying by a power of two only changes the exponent; ceil is exact.
        let num = (sigma2 * den as f64).ceil() as u64;
        Ok(Self { num, den })
    }

    /// An integer variance, exactly.
    pub fn integer(sigma2: u64) -> Result<Self, VarianceError> {
        Self::at_least(sigma2 as f64).and_then(|v| {
            if v.as_f64() == sigma2 as f64 {
                Ok(v)
            } else {
                Err(VarianceError::OutOfRange(sigma2 as f64))
            }
        })
    }

    /// The variance as an `f64` (exact for the fractions `at_least` makes).
    pub fn as_f64(&self) -> f64 {
        self.num as f64 / self.den as f64
    }

    /// The standard deviation.
    pub fn sigma(&self) -> f64 {
        self.as_f64().sqrt()
    }
}

/// An exact sampler for N_Z(0, σ²). See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscreteGaussian {
    variance: Variance,
    /// t = ⌊σ⌋ + 1, the Laplace envelope's scale.
    t: u64,
    /// σ²·den·t² ·2 = 2·num·t² (the acceptance test's denominator, over `den`).
    accept_den: u128,
}

impl DiscreteGaussian {
    /// A sampler with variance parameter `variance`.
    pub fn new(variance: Variance) -> Self {
        // ⌊√(num/den)⌋ = ⌊√⌊num/den⌋⌋.
        let t = (variance.num / variance.den).isqrt() + 1;
        let t128 = u128::from(t);
        Self {
            variance,
            t,
            // Below 2^103: 2 · 2^50 · (2^25 + 1)^2 at most with den = 1, and num < 2^29,
            // num·den < 2^77 otherwise. Below 2^64 for 1 ≤ σ ≤ 55,000.
            accept_den: 2 * u128::from(variance.num) * u128::from(variance.den) * t128 * t128,
        }
    }

    /// The variance parameter σ² (the distribution's variance is σ² minus less than
    /// 10^-8 relatively for σ ≥ 1).
    pub fn variance(&self) -> Variance {
        self.variance
    }

    /// One sample.
    pub fn sample<R: RngCore + ?Sized>(&self, rng: &mut R) -> i64 {
        self.sample_from(&mut Bits::new(rng))
    }

    /// Fills `out` with independent samples.
    pub fn fill<R: RngCore + ?Sized>(&self, out: &mut [i64], rng: &mut R) {
        let mut bits = Bits::new(rng);
        for x in out {
            *x = self.sample_from(&mut bits);
        }
    }

    fn sample_from<R: RngCore + ?Sized>(&self, bits: &mut Bits<'_, R>) -> i64 {
        let num = u128::from(self.variance.num);
        let den_t = u128::from(self.variance.den) * u128::from(self.t);
        loop {
            let y = discrete_laplace(bits, self.t);
            // γ = (|y| − σ²/t)² / (2σ²) = (|y|·den·t − num)² / (2·num·den·t²).
            let Some(scaled) = u128::from(y.unsigned_abs()).checked_mul(den_t) else {
                continue;
            };
            let diff = scaled.abs_diff(num);
            let Some(gamma_num) = diff.checked_mul(diff) else {
                continue;
            };
            if bernoulli_exp(bits, gamma_num, self.accept_den) {
                return y;
            }
        }
    }
}

/// Random bits drawn 64 at a time: the Bernoulli trials below need about two bits each, so a
/// whole word per trial would make the RNG the bottleneck.
struct Bits<'a, R: ?Sized> {
    rng: &'a mut R,
    word: u64,
    left: u32,
}

impl<'a, R: RngCore + ?Sized> Bits<'a, R> {
    fn new(rng: &'a mut R) -> Self {
        Self {
            rng,
            word: 0,
            left: 0,
        }
    }

    #[inline(always)]
    fn bit(&mut self) -> bool {
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
    fn below(&mut self, n: u64) -> u64 {
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
fn bernoulli_ratio<R: RngCore + ?Sized>(bits: &mut Bits<'_, R>, num: u128, den: u128) -> bool {
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

/// The discrete Laplace with scale t ≥ 1: P(x) ∝ exp(−|x|/t) (CKS Algorithm 2, s = 1).
fn discrete_laplace<R: RngCore + ?Sized>(bits: &mut Bits<'_, R>, t: u64) -> i64 {
    loop {
        let u = bits.below(t);
        if !bernoulli_exp_fraction(bits, u128::from(u), u128::from(t)) {
            continue;
        }
        let mut v = 0u64;
        while bernoulli_exp_fraction(bits, 1, 1) {
            v += 1;
        }
        // |x| beyond i64 would take about 2^63/t successive successes of probability e^-1.
        let Some(x) = v.checked_mul(t).and_then(|tv| tv.checked_add(u)) else {
            continue;
        };
        let Ok(x) = i64::try_from(x) else {
            continue;
        };
        let negative = bits.bit();
        if negative && x == 0 {
            continue;
        }
        return if negative { -x } else { x };
    }
}

/// Bernoulli(exp(−num/den)) for any num/den ≥ 0 (CKS Algorithm 1 and its extension to γ > 1:
/// one Bernoulli(exp(−1)) per whole unit of γ, stopping at the first failure, then one for the
/// fraction).
fn bernoulli_exp<R: RngCore + ?Sized>(bits: &mut Bits<'_, R>, mut num: u128, den: u128) -> bool {
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
fn bernoulli_exp_fraction<R: RngCore + ?Sized>(
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
fn bernoulli_exp_fraction_from<R: RngCore + ?Sized>(
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
    fn variance_is_never_rounded_down() {
        for s in [
            MIN_VARIANCE,
            0.3,
            1.0,
            2.5,
            1e3 + 1.0 / 3.0,
            12_345_678.9,
            MAX_VARIANCE,
        ] {
            let v = Variance::at_least(s).unwrap();
            assert!(v.as_f64() >= s, "{s}");
            assert!(v.as_f64() - s <= s * 2f64.powi(-28), "{s}: {}", v.as_f64());
        }
        assert!(Variance::at_least(0.0).is_err());
        assert!(Variance::at_least(f64::NAN).is_err());
        assert!(Variance::at_least(MAX_VARIANCE * 2.0).is_err());
        assert_eq!(Variance::integer(7).unwrap().as_f64(), 7.0);
    }

    /// The probabilities of N_Z(0, σ²) on [−m, m], normalised over a range wide enough that the
    /// rest is below 10⁻³⁰⁰.
    fn pmf(sigma2: f64, m: i64) -> Vec<f64> {
        let range = (40.0 * sigma2.sqrt()).ceil() as i64 + 5;
        let w = |x: i64| (-((x * x) as f64) / (2.0 * sigma2)).exp();
        let total: f64 = (-range..=range).map(w).sum();
        (-m..=m).map(|x| w(x) / total).collect()
    }

    #[test]
    fn small_sigma_matches_the_exact_pmf() {
        // A chi-squared goodness-of-fit test against the exact probabilities: 200,000 draws for
        // σ² = 0.5 and σ² = 3 (cells |x| ≤ m, tails pooled). The bound is the 1 − 10⁻⁶
        // quantile of χ² with the cells' degrees of freedom (≤ 30 there: about 72).
        let mut rng = ChaCha12Rng::seed_from_u64(3);
        for sigma2 in [0.5, 3.0] {
            let dg = DiscreteGaussian::new(Variance::at_least(sigma2).unwrap());
            let n = 200_000usize;
            let m: i64 = if sigma2 < 1.0 { 3 } else { 7 };
            let mut counts = vec![0u64; (2 * m + 3) as usize];
            for _ in 0..n {
                let x = dg.sample(&mut rng);
                let cell = if x < -m {
                    0
                } else if x > m {
                    counts.len() - 1
                } else {
                    (x + m + 1) as usize
                };
                counts[cell] += 1;
            }
            let inner = pmf(sigma2, m);
            let tail = (1.0 - inner.iter().sum::<f64>()) / 2.0;
            let mut probs = vec![tail];
            probs.extend(inner);
            probs.push(tail);
            let mut chi2 = 0.0;
            for (c, p) in counts.iter().zip(&probs) {
                let expected = p * n as f64;
                if expected >= 5.0 {
                    chi2 += (*c as f64 - expected).powi(2) / expected;
                } else {
                    // Cells expected (almost) empty must be (almost) empty.
                    assert!(*c <= 30, "σ² = {sigma2}: {c} draws in a cell of mass {p}");
                }
            }
            assert!(chi2 < 72.0, "σ² = {sigma2}: χ² = {chi2}");
        }
    }

    #[test]
    fn large_sigma_mean_and_variance() {
        // 100,000 draws with σ = 1000.5: the sample mean's standard error is σ/√n ≈ 3.2 and the
        // sample variance's relative standard error is √(2/n) ≈ 0.45% (the discrete Gaussian at
        // this σ has the continuous one's moments to 10⁻¹⁰⁰). Bounds: 6 standard errors.
        let mut rng = ChaCha12Rng::seed_from_u64(4);
        let sigma2 = 1000.5f64 * 1000.5;
        let dg = DiscreteGaussian::new(Variance::at_least(sigma2).unwrap());
        let n = 100_000;
        let mut xs = vec![0i64; n];
        dg.fill(&mut xs, &mut rng);
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let se_mean = (sigma2 / n as f64).sqrt();
        assert!(mean.abs() <= 6.0 * se_mean, "mean {mean}");
        let rel = (var / sigma2 - 1.0).abs();
        assert!(
            rel <= 6.0 * (2.0 / n as f64).sqrt(),
            "variance {var} vs {sigma2}"
        );
        // Symmetric: as many negatives as positives, up to 6 standard errors.
        let negatives = xs.iter().filter(|&&x| x < 0).count() as u64;
        let positives = xs.iter().filter(|&&x| x > 0).count() as u64;
        let se = ((negatives + positives) as f64).sqrt() / 2.0;
        assert!((negatives as f64 - positives as f64).abs() / 2.0 <= 6.0 * se);
    }
}
