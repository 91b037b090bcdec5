//! Arithmetic in log space, as the RDP computations need it: the terms of the sampled Gaussian's
//! moment series span hundreds of orders of magnitude.

/// ln(e^x + e^y), exact when either is −∞.
pub(crate) fn log_add(x: f64, y: f64) -> f64 {
    let (small, large) = if x < y { (x, y) } else { (y, x) };
    if small == f64::NEG_INFINITY {
        return large;
    }
    (small - large).exp().ln_1p() + large
}

/// ln Γ(x) (the log of its absolute value for negative non-integers, as scipy's `gammaln`).
pub(crate) fn ln_gamma(x: f64) -> f64 {
    libm::lgamma(x)
}

/// ln C(n, k) for real n and k, through ln Γ (as dp-accounting's `_log_comb`).
pub(crate) fn log_comb(n: f64, k: f64) -> f64 {
    ln_gamma(n + 1.0) - ln_gamma(k + 1.0) - ln_gamma(n - k + 1.0)
}

/// ln erfc(x), accurate far into the tail.
///
/// libm's `erfc` keeps about one ulp of relative accuracy until it underflows near x = 26.5, so
/// its log is exact to ~1e-16 there; beyond, the asymptotic (Laurent) series of ln erfc at
/// infinity that dp-accounting also uses, whose first omitted term is below 1e-13 for x ≥ 25.
pub(crate) fn log_erfc(x: f64) -> f64 {
    if x < 25.0 {
        return libm::erfc(x).ln();
    }
    let x2 = x * x;
    let inv2 = 1.0 / x2;
    -0.5 * std::f64::consts::PI.ln() - x.ln() - x2 - 0.5 * inv2 + 0.625 * inv2 * inv2
        - 37.0 / 24.0 * inv2.powi(3)
        + 353.0 / 64.0 * inv2.powi(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_add_matches_direct_sum() {
        for (x, y) in [(0.0, 0.0), (-3.0, 2.0), (10.0, -40.0), (700.0, 700.5)] {
            let want = if x > 600.0 {
                // Out of f64 range directly; 700 + ln(1 + e^0.5).
                700.0 + (1.0 + 0.5f64.exp()).ln()
            } else {
                (f64::exp(x) + f64::exp(y)).ln()
            };
            assert!((log_add(x, y) - want).abs() < 1e-12, "{x} {y}");
        }
        assert_eq!(log_add(f64::NEG_INFINITY, 3.0), 3.0);
        assert_eq!(
            log_add(f64::NEG_INFINITY, f64::NEG_INFINITY),
            f64::NEG_INFINITY
        );
    }

    #[test]
    fn log_comb_of_integers() {
        // C(10, 3) = 120, C(50, 25) = 126410606437752.
        assert!((log_comb(10.0, 3.0) - 120f64.ln()).abs() < 1e-12);
        assert!((log_comb(50.0, 25.0) - 126_410_606_437_752f64.ln()).abs() < 1e-10);
    }

    #[test]
    fn log_erfc_is_continuous_across_the_switch_and_right_at_known_points() {
        // erfc(1) = 0.157299207050285130658779364917…
        assert!((log_erfc(1.0) - 0.157_299_207_050_285_13f64.ln()).abs() < 1e-14);
        assert!((log_erfc(0.0)).abs() < 1e-15);
        // Both branches at the switch agree closely.
        let below = libm::erfc(24.999_999).ln();
        let above = log_erfc(25.0);
        assert!((below - above).abs() < 1e-4, "{below} vs {above}");
        // The asymptotic branch against libm where libm is still finite (x = 25..26).
        let asym = |x: f64| {
            let x2 = x * x;
            let inv2 = 1.0 / x2;
            -0.5 * std::f64::consts::PI.ln() - x.ln() - x2 - 0.5 * inv2 + 0.625 * inv2 * inv2
                - 37.0 / 24.0 * inv2.powi(3)
                + 353.0 / 64.0 * inv2.powi(4)
        };
        for x in [10.0, 20.0, 26.0] {
            let exact = libm::erfc(x).ln();
            assert!((asym(x) - exact).abs() < 1e-9 * exact.abs(), "x = {x}");
        }
    }
}
