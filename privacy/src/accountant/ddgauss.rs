//! RDP of the distributed discrete Gaussian: the sum of n independent discrete Gaussians
//! N_Z(0, σ²) added to an integer vector of L2 sensitivity Δ₂ and L1 sensitivity Δ₁
//! (Kairouz, Liu and Steinke, "The Distributed Discrete Gaussian Mechanism for Federated
//! Learning with Secure Aggregation", ICML 2021, Theorem 1 and Proposition 14).
//!
//! The sum of discrete Gaussians is not a discrete Gaussian; it is close to N_Z(0, nσ²), and
//! the distance enters through
//! τ = 10 Σ_{k=1}^{n−1} exp(−2π²σ² k/(k+1)). With a = Δ₂/(√n σ) and b = Δ₁/(√n σ), at order α:
//!
//! ε(α) = min( α/2·a² + τd,  α/2·(a² + 2bτ + τ²d),  α/2·(a + √d τ)² ).
//!
//! For σ ≥ 2 (in the integer grid's units) τ is below 10⁻¹³ for any cohort Cohort can run, and
//! ε(α) is the Gaussian's α/(2z²) with z = √n σ / Δ₂.

use serde::{Deserialize, Serialize};

/// The parameters of the distributed discrete Gaussian's RDP, all in the integer grid's units:
/// the sum of n shares N_Z(0, σ²) added to a vector of sensitivities Δ₂ and Δ₁ in d
/// coordinates has, with a = Δ₂/(√n σ), b = Δ₁/(√n σ) and
/// τ = 10 Σ_{k=1}^{n−1} exp(−2π²σ² k/(k+1)),
/// ε(α) = min(α/2·a² + τd, α/2·(a² + 2bτ + τ²d), α/2·(a + √d τ)²)
/// (Kairouz, Liu, Steinke 2021, Theorem 1 and Proposition 14).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DistributedGaussian {
    /// a = Δ₂ / (√n σ): the L2 sensitivity over the summed noise's standard deviation, the
    /// inverse of the effective noise multiplier.
    pub l2_scale: f64,
    /// b = Δ₁ / (√n σ).
    pub l1_scale: f64,
    /// τ (see the module docs), for the largest number of summed shares.
    pub tau: f64,
    /// The dimension d of the noised vector.
    pub dim: f64,
}

impl DistributedGaussian {
    /// Builds the parameters from the integer-grid quantities: `l2` = Δ₂, `l1` = Δ₁, the local
    /// standard deviation `sigma` of each share, `min_shares` (the fewest shares summed, which
    /// sets the noise) and `max_shares` (the most, which sets τ, larger with more terms).
    pub fn new(l2: f64, l1: f64, sigma: f64, min_shares: u32, max_shares: u32, dim: usize) -> Self {
        let central = f64::from(min_shares).sqrt() * sigma;
        Self {
            l2_scale: l2 / central,
            l1_scale: l1 / central,
            tau: tau(sigma, max_shares),
            dim: dim as f64,
        }
    }
}

/// τ = 10 Σ_{k=1}^{n−1} exp(−2π²σ² k/(k+1)).
pub fn tau(sigma: f64, shares: u32) -> f64 {
    let c = 2.0 * std::f64::consts::PI * std::f64::consts::PI * sigma * sigma;
    let mut sum = 0.0;
    for k in 1..shares {
        let k = f64::from(k);
        let term = (-c * k / (k + 1.0)).exp();
        sum += term;
        if term == 0.0 {
            // Every later term is smaller still (k/(k+1) grows).
            break;
        }
    }
    10.0 * sum
}

/// ε(α) of the distributed discrete Gaussian, unsampled (see the module docs).
pub(crate) fn rdp(p: &DistributedGaussian, alpha: f64) -> f64 {
    let (a, b, tau, d) = (p.l2_scale, p.l1_scale, p.tau, p.dim);
    let first = alpha / 2.0 * a * a + tau * d;
    let second = alpha / 2.0 * (a * a + 2.0 * b * tau + tau * tau * d);
    let third = alpha / 2.0 * (a + d.sqrt() * tau).powi(2);
    first.min(second).min(third)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tau_vanishes_for_moderate_sigma_and_reduces_to_gaussian() {
        assert!(tau(2.0, 10_000) < 1e-13);
        assert!(tau(0.5, 100) > 0.1);
        let p = DistributedGaussian::new(100.0, 1000.0, 50.0, 4, 10, 1000);
        // a = 100 / (2·50) = 1: the Gaussian with z = 1.
        assert!((rdp(&p, 3.0) - 1.5).abs() < 1e-12);
    }
}
