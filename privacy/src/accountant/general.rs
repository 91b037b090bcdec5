//! Amplification by Poisson subsampling for *any* mechanism, from its RDP curve: the general
//! upper bound of Zhu and Wang, "Poisson Subsampled Rényi Differential Privacy" (ICML 2019,
//! Theorem 6 in the proceedings; the bound Google's distributed-DP accounting uses for the
//! discrete Gaussian and Skellam). It holds at integer orders α ≥ 2 only:
//!
//! ε'(α) ≤ 1/(α−1) · ln( (1−q)^(α−1)·(1 + (α−1)q) + C(α,2) q² (1−q)^(α−2) e^(ε(2))
//!                       + 3 Σ_{l=3..α} C(α,l) q^l (1−q)^(α−l) e^((l−1) ε(l)) )
//!
//! and the unamplified ε(α) is always a bound too (subsampling never increases RDP: e^((α−1)D_α)
//! is jointly convex), so the smaller of the two is returned, and at fractional orders, where
//! the general bound does not apply, the unamplified value.

use super::logmath::{log_add, log_comb};

/// The subsampled RDP at integer order `alpha` ≥ 2 of a mechanism whose unsampled RDP is
/// `eps`, for Poisson sampling with rate `q` in [0, 1]; the unamplified `eps(alpha)` at
/// fractional orders and below 2.
pub(crate) fn subsampled_rdp(q: f64, alpha: f64, eps: impl Fn(f64) -> f64) -> f64 {
    if q == 0.0 {
        return 0.0;
    }
    let unamplified = eps(alpha);
    if q >= 1.0 || alpha.fract() != 0.0 || alpha < 2.0 {
        return unamplified;
    }
    let log_q = q.ln();
    let log_1mq = (-q).ln_1p();
    // l = 0 and 1 together.
    let mut total = (alpha - 1.0) * log_1mq + ((alpha - 1.0) * q).ln_1p();
    // l = 2.
    total = log_add(
        total,
        log_comb(alpha, 2.0) + 2.0 * log_q + (alpha - 2.0) * log_1mq + eps(2.0),
    );
    let log3 = 3f64.ln();
    let mut l = 3.0;
    while l <= alpha {
        let term =
            log3 + log_comb(alpha, l) + l * log_q + (alpha - l) * log_1mq + (l - 1.0) * eps(l);
        total = log_add(total, term);
        l += 1.0;
    }
    (total / (alpha - 1.0)).min(unamplified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_above_the_unamplified_curve_and_zero_at_rate_zero() {
        let eps = |a: f64| a / 2.0;
        for alpha in [2.0, 3.0, 10.0, 64.0] {
            assert!(subsampled_rdp(0.1, alpha, eps) <= eps(alpha));
            assert_eq!(subsampled_rdp(1.0, alpha, eps), eps(alpha));
            assert_eq!(subsampled_rdp(0.0, alpha, eps), 0.0);
        }
        assert_eq!(subsampled_rdp(0.1, 2.5, eps), eps(2.5));
    }

    #[test]
    fn order_two_in_closed_form() {
        // α = 2: ln((1−q)(1+q) + q² e^{ε(2)}) = ln(1 + q²(e^{ε(2)} − 1)).
        let (q, e2) = (0.05f64, 0.8f64);
        let want = (1.0 + q * q * (e2.exp() - 1.0)).ln();
        let got = subsampled_rdp(q, 2.0, |_| e2);
        assert!((got - want).abs() < 1e-14, "{got} vs {want}");
    }
}
