//! Rigorous bounds on exp(−x) for rational x ≥ 0, to any precision, in exact integer arithmetic
//! (`num-bigint`): the sampler's acceptance constants are exponentials of rationals, which no
//! finite computation gives exactly, but a comparison with a uniform random number only needs
//! enough bits to decide, and these bounds give as many as asked for.
//!
//! A value v is bounded in fixed point with `p` fractional bits: `lo ≤ v·2^p ≤ hi`, `lo` and `hi`
//! integers. Every operation rounds `lo` down and `hi` up, so the bounds hold whatever the
//! precision; more precision only narrows them.

use num_bigint::BigUint;

/// Bounds `lo ≤ v·2^p ≤ hi` on a value v (p is the caller's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub lo: BigUint,
    pub hi: BigUint,
}

/// Guard bits carried inside [`exp_neg`] beyond the precision asked for.
const GUARD: u32 = 64;

/// ⌈a / b⌉ for b > 0.
pub(crate) fn div_ceil(a: &BigUint, b: &BigUint) -> BigUint {
    (a + b - 1u32) / b
}

/// Bounds on exp(−a/b)·2^p, b > 0.
pub(crate) fn exp_neg(a: u128, b: u128, p: u32) -> Bounds {
    assert!(b > 0, "exp_neg needs a positive denominator");
    // exp(−x) < 2^−p once x ≥ 0.7·p (0.7 > ln 2): then [0, 1] bounds it, and the powers of e
    // below never get larger than 2^(1.01·p).
    let beyond = a
        .checked_mul(10)
        .is_none_or(|a10| a10 >= 7 * u128::from(p) * b);
    if beyond {
        return Bounds {
            lo: BigUint::ZERO,
            hi: BigUint::from(1u32),
        };
    }
    let q = p + GUARD;
    let whole = u32::try_from(a / b).expect("below 0.7·p");
    let frac = a % b;
    // D = e^whole · e^(frac/b) ≥ 1, bounded at q bits; exp(−x) = 1/D.
    let mut d = exp_small(frac, b, q);
    if whole > 0 {
        let e = exp_small(1, 1, q);
        let e_pow = pow(&e, whole, q);
        d = mul(&d, &e_pow, q);
    }
    let one_sq = BigUint::from(1u32) << (2 * q);
    // 2^q / D at q bits is 2^(2q) / (D·2^q); then down to p bits.
    let lo = (&one_sq / &d.hi) >> GUARD;
    let hi_q = div_ceil(&one_sq, &d.lo);
    let hi = div_ceil(&hi_q, &(BigUint::from(1u32) << GUARD));
    Bounds { lo, hi }
}

/// Bounds on exp(r/b)·2^q for 0 ≤ r/b ≤ 1 by its Taylor series: x = r/b bounded in fixed point
/// once, every term positive and bounded from the previous one (t_k = t_(k−1)·x/k, floors for
/// the lower bound, ceilings for the upper), and the remainder after the last term t_K at most
/// t_K (the terms fall by at least half from there).
fn exp_small(r: u128, b: u128, q: u32) -> Bounds {
    debug_assert!(r <= b);
    let one = BigUint::from(1u32) << q;
    if r == 0 {
        return Bounds {
            lo: one.clone(),
            hi: one,
        };
    }
    let scaled = BigUint::from(r) << q;
    let b = BigUint::from(b);
    let x_lo = &scaled / &b;
    let x_hi = div_ceil(&scaled, &b);
    let mut term_lo = one.clone();
    let mut term_hi = one.clone();
    let mut sum_lo = one.clone();
    let mut sum_hi = one;
    let mut k = 1u32;
    loop {
        term_lo = ((&term_lo * &x_lo) >> q) / k;
        let product = &term_hi * &x_hi;
        // ⌈⌈t·x/2^q⌉/k⌉ = ⌈t·x/(2^q·k)⌉.
        term_hi = ((product >> q) + 1u32) / k + 1u32;
        sum_lo += &term_lo;
        sum_hi += &term_hi;
        if term_hi <= BigUint::from(2u32) {
            // The remainder: at most t_K·(x/(K+1))/(1 − x/(K+1)) ≤ t_K for x ≤ 1, K ≥ 1.
            sum_hi += &term_hi;
            break;
        }
        k += 1;
    }
    Bounds {
        lo: sum_lo,
        hi: sum_hi,
    }
}

/// Bounds on the product of two values bounded at `q` bits.
pub(crate) fn mul(x: &Bounds, y: &Bounds, q: u32) -> Bounds {
    let lo = (&x.lo * &y.lo) >> q;
    let hi = div_ceil(&(&x.hi * &y.hi), &(BigUint::from(1u32) << q));
    Bounds { lo, hi }
}

/// Bounds on x^n (n ≥ 1) by squaring and multiplying.
fn pow(x: &Bounds, mut n: u32, q: u32) -> Bounds {
    let mut base = x.clone();
    let mut acc: Option<Bounds> = None;
    loop {
        if n & 1 == 1 {
            acc = Some(match acc {
                None => base.clone(),
                Some(a) => mul(&a, &base, q),
            });
        }
        n >>= 1;
        if n == 0 {
            break;
        }
        base = mul(&base, &base, q);
    }
    acc.expect("n ≥ 1")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `v·2^p` as an f64 (for bounds whose values are in [0, 2]).
    fn as_f64(x: &BigUint, p: u32) -> f64 {
        let shift = x.bits().saturating_sub(60);
        let top = (x >> shift).to_u64_digits().first().copied().unwrap_or(0);
        top as f64 * 2f64.powi(shift as i32 - p as i32)
    }

    #[test]
    fn bounds_contain_known_digits() {
        // exp(−1), exp(−1/3), exp(−20.5) and exp(−1234/1000) to 60 significant digits, from
        // `privacy/kat/exp.py` (Python's decimal module, independent of this code).
        let cases: [(u128, u128, &str, i32); 4] = [
            (
                1,
                1,
                "367879441171442321595523770161460867445811131031767834507836",
                0,
            ),
            (
                1,
                3,
                "716531310573789250425604096925379667453112059821479157140870",
                0,
            ),
            (
                41,
                2,
                "125015286638674262893755311923122218227159464207656584933822",
                -8,
            ),
            (
                1234,
                1000,
                "291125742596085209896944604752645436971755134598686552642842",
                0,
            ),
        ];
        for (a, b, digits, exponent) in cases {
            // The value is 0.digits × 10^exponent; compare v·2^p with digits·2^p/10^(60−exponent).
            let p = 256;
            let bounds = exp_neg(a, b, p);
            let d: BigUint = digits.parse().unwrap();
            let ten = BigUint::from(10u32).pow((60 - exponent) as u32);
            let scaled = (&d << p) / &ten;
            // The 60 digits are truncated: the value is within one unit of the 60th digit above.
            let scaled_hi = div_ceil(&((&d + 1u32) << p), &ten);
            assert!(
                bounds.lo <= scaled_hi,
                "exp(−{a}/{b}): lower bound too high"
            );
            assert!(bounds.hi >= scaled, "exp(−{a}/{b}): upper bound too low");
            // And tight: within 2^-180 relative of each other (far below the digits' 10^-60).
            let width = &bounds.hi - &bounds.lo;
            assert!(
                width.bits() + 180 <= bounds.lo.bits(),
                "exp(−{a}/{b}): bounds too wide"
            );
        }
    }

    #[test]
    fn bounds_agree_with_floating_point() {
        for (a, b) in [
            (0u128, 1u128),
            (1, 1_000_000),
            (5, 7),
            (3, 1),
            (123_456_789, 1_000_000),
            (1 << 60, (1 << 60) + 1),
            (17, 1),
        ] {
            let x = a as f64 / b as f64;
            for p in [64u32, 128, 200] {
                let bounds = exp_neg(a, b, p);
                assert!(bounds.lo <= bounds.hi);
                let (lo, hi) = (as_f64(&bounds.lo, p), as_f64(&bounds.hi, p));
                let want = (-x).exp();
                let tolerance = want * 1e-14 + 2f64.powi(-(p as i32) + 1);
                assert!(
                    lo <= want + tolerance && hi >= want - tolerance,
                    "exp(−{a}/{b}) at {p} bits: [{lo}, {hi}] vs {want}"
                );
                assert!(hi - lo <= tolerance, "exp(−{a}/{b}) at {p} bits: too wide");
            }
        }
        // Far beyond the precision: [0, 1].
        let tiny = exp_neg(1000, 1, 64);
        assert_eq!((tiny.lo, tiny.hi), (BigUint::ZERO, BigUint::from(1u32)));
        let tiny = exp_neg(u128::MAX, 1, 64);
        assert_eq!(tiny.lo, BigUint::ZERO);
    }
}
