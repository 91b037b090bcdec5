//! RDP of the Poisson-subsampled (continuous) Gaussian mechanism: Mironov, Talwar and Zhang,
//! "Rényi Differential Privacy of the Sampled Gaussian Mechanism" (2019), computed as Google's
//! `dp-accounting` (0.6, `rdp_privacy_accountant.py`) computes it: a finite binomial sum at
//! integer orders (§3.2) and the two convergent series split at z₀ at fractional orders (§3.3).
//!
//! With sampling rate q = 1 this is the Gaussian mechanism itself, α / (2z²).

use super::logmath::{log_add, log_comb, log_erfc};

/// The most terms of the fractional-order series before the order is given up (as
/// dp-accounting's `_MAX_STEPS_LOG_A_FRAC`): the order is then excluded (its RDP is +∞).
const MAX_FRACTIONAL_TERMS: usize = 1000;

/// RDP at order `alpha` > 1 of the Gaussian mechanism with noise multiplier `z` (the noise's
/// standard deviation over the L2 sensitivity), applied to a Poisson sample with rate `q`, under
/// add-or-remove-one adjacency. +∞ where it cannot be bounded (z = 0, or no convergence).
pub(crate) fn rdp(q: f64, z: f64, alpha: f64) -> f64 {
    if q == 0.0 {
        return 0.0;
    }
    if alpha.is_infinite() || z == 0.0 {
        return f64::INFINITY;
    }
    if q == 1.0 {
        return alpha / (2.0 * z * z);
    }
    let log_a = if alpha.fract() == 0.0 {
        log_a_integer(q, z, alpha)
    } else {
        log_a_fractional(q, z, alpha)
    };
    log_a / (alpha - 1.0)
}

/// ln A_α for integer α: ln Σᵢ C(α, i) qⁱ (1−q)^(α−i) exp((i² − i) / 2z²).
fn log_a_integer(q: f64, z: f64, alpha: f64) -> f64 {
    let log_q = q.ln();
    let log_1mq = (-q).ln_1p();
    let two_var = 2.0 * z * z;
    let mut log_a = f64::NEG_INFINITY;
    // alpha is a positive integer below 2^53 here, so the loop counter is exact.
    let mut i = 0.0;
    while i <= alpha {
        let log_coef = log_comb(alpha, i) + i * log_q + (alpha - i) * log_1mq;
        log_a = log_add(log_a, log_coef + (i * i - i) / two_var);
        i += 1.0;
    }
    log_a
}

/// ln A_α for fractional α: the integrals over (−∞, z₀] and [z₀, ∞) as two series, summed until
/// both terms decrease and fall 30 nats below the total.
fn log_a_fractional(q: f64, z: f64, alpha: f64) -> f64 {
    let mut log_a0 = f64::NEG_INFINITY;
    let mut log_a1 = f64::NEG_INFINITY;
    let z0 = z * z * (1.0 / q - 1.0).ln() + 0.5;
    let log_q = q.ln();
    let log_1mq = (-q).ln_1p();
    let two_var = 2.0 * z * z;
    let sqrt2_z = std::f64::consts::SQRT_2 * z;
    let log_half = 0.5f64.ln();
    let mut last_s0 = f64::NEG_INFINITY;
    let mut last_s1 = f64::NEG_INFINITY;
    for step in 0..MAX_FRACTIONAL_TERMS {
        let i = step as f64;
        let log_coef = log_comb(alpha, i);
        let j = alpha - i;
        let log_t0 = log_coef + i * log_q + j * log_1mq;
        let log_t1 = log_coef + j * log_q + i * log_1mq;
        let log_e0 = log_half + log_erfc((i - z0) / sqrt2_z);
        let log_e1 = log_half + log_erfc((z0 - j) / sqrt2_z);
        let log_s0 = log_t0 + (i * i - i) / two_var + log_e0;
        let log_s1 = log_t1 + (j * j - j) / two_var + log_e1;
        log_a0 = log_add(log_a0, log_s0);
        log_a1 = log_add(log_a1, log_s1);
        let total = log_add(log_a0, log_a1);
        if log_s0 < last_s0 && log_s1 < last_s1 && log_s0.max(log_s1) < total - 30.0 {
            return total;
        }
        last_s0 = log_s0;
        last_s1 = log_s1;
    }
    f64::INFINITY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsampled_is_alpha_over_two_z_squared() {
        assert_eq!(rdp(1.0, 2.0, 3.0), 3.0 / 8.0);
        assert_eq!(rdp(0.0, 2.0, 3.0), 0.0);
        assert_eq!(rdp(0.5, 0.0, 3.0), f64::INFINITY);
    }

    #[test]
    fn integer_order_two_in_closed_form() {
        // A_2 = (1−q)² + 2q(1−q) + q² e^{1/z²} = 1 + q²(e^{1/z²} − 1).
        let (q, z) = (0.1f64, 1.5f64);
        let want = (1.0 + q * q * ((1.0 / (z * z)).exp() - 1.0)).ln();
        assert!((rdp(q, z, 2.0) - want).abs() < 1e-14);
    }

    #[test]
    fn fractional_orders_interpolate_between_integer_neighbours() {
        // RDP is non-decreasing in the order; the fractional series must sit between the exact
        // integer values around it.
        let (q, z) = (0.01, 1.1);
        let lo = rdp(q, z, 3.0);
        let mid = rdp(q, z, 3.5);
        let hi = rdp(q, z, 4.0);
        assert!(lo <= mid && mid <= hi, "{lo} {mid} {hi}");
    }
}
