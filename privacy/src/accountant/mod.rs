//! The privacy accountant: Rényi DP (RDP) per round, composition over rounds, conversion to
//! (ε, δ), and the inverses (the noise for a target ε, the rounds that fit a budget).
//!
//! RDP composes by addition: T rounds of a mechanism with RDP curve ε(α) have curve T·ε(α). The
//! conversion to (ε, δ) is the improved one of Balle et al. 2020 (Proposition 12) / Canonne,
//! Kamath and Steinke 2020, minimised over a fixed set of orders, exactly as Google's
//! `dp-accounting` does ([`default_orders`] are its `DEFAULT_RDP_ORDERS`).
//!
//! Mechanisms ([`Mechanism`]):
//! - [`Mechanism::Gaussian`]: the continuous Gaussian; with Poisson sampling, the exact RDP of
//!   the sampled Gaussian (Mironov et al. 2019). This is what `dp-accounting` computes and what
//!   the known-answer table (`privacy/kat/cases.json`) checks to 1%.
//! - [`Mechanism::DiscreteGaussian`]: central mode's noise (the server adds exact discrete
//!   Gaussians to the integer sum). Unsampled, its RDP is the Gaussian's α/(2z²) (Canonne,
//!   Kamath, Steinke 2020, Proposition 5 / Theorem 14 for integer-valued queries). The sampled
//!   Gaussian's formula rests on the continuous Gaussian's rotation invariance, so with Poisson
//!   sampling this crate uses the general bound of Zhu and Wang 2019 instead, which holds for
//!   any mechanism (at integer orders).
//! - [`Mechanism::DistributedGaussian`]: distributed mode's sum of the survivors' discrete
//!   Gaussian shares (Kairouz et al. 2021), sampled likewise through Zhu and Wang.
//!
//! Adjacency is add-or-remove one client (Poisson sampling), or, without sampling, one
//! client's contribution replaced by zero: the sensitivity is the clip norm either way.

mod ddgauss;
mod gaussian;
mod general;
mod logmath;

pub use ddgauss::{DistributedGaussian, tau};

/// The most rounds [`RdpCurve::max_rounds`] reports: more is "unlimited" for any real task.
pub const MAX_ROUNDS: u64 = 1_000_000_000;

/// The RDP orders at which curves are evaluated: `dp-accounting`'s `DEFAULT_RDP_ORDERS`,
/// 1.1 to 10.9 by tenths, the integers 11 to 63, and 128, 256, 512, 1024.
pub fn default_orders() -> Vec<f64> {
    let mut orders: Vec<f64> = (1..100).map(|x| 1.0 + f64::from(x) / 10.0).collect();
    orders.extend((11..64).map(f64::from));
    orders.extend([128.0, 256.0, 512.0, 1024.0]);
    orders
}

/// Why the accountant could not answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AccountantError {
    /// δ is not in (0, 1).
    #[error("delta = {0} is not in (0, 1); use a small positive delta such as 1e-6")]
    BadDelta(f64),
    /// The sampling rate is not in (0, 1].
    #[error("the sampling rate {0} is not in (0, 1]; use 1 for no sampling")]
    BadSamplingRate(f64),
    /// The noise multiplier is not a finite positive number.
    #[error("the noise multiplier {0} is not a finite positive number")]
    BadNoiseMultiplier(f64),
    /// The target ε is not a finite positive number.
    #[error("the target epsilon {0} is not a finite positive number")]
    BadEpsilon(f64),
    /// A distributed-mode parameter is negative, NaN or infinite.
    #[error("the distributed Gaussian parameter {name} = {value} is not finite and non-negative")]
    BadDistributedParameter {
        /// Which parameter.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// No noise multiplier up to the search's limit reaches the target.
    #[error(
        "no noise multiplier up to {limit} gives epsilon <= {target} over {rounds} rounds at \
         delta = {delta}; raise epsilon or delta, or run fewer rounds"
    )]
    Unreachable {
        /// The target ε.
        target: f64,
        /// The rounds asked for.
        rounds: u64,
        /// δ.
        delta: f64,
        /// The largest noise multiplier tried.
        limit: f64,
    },
}

/// How the clients of a round are chosen, as far as the accounting is concerned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// No amplification assumed: every client may take part in every round. Sound for any
    /// selection, including the coordinator's (check-in order, adversarial availability).
    None,
    /// Each client takes part in each round independently with probability `rate` (Poisson
    /// sampling). Sound only where the selection really is so.
    Poisson {
        /// q in (0, 1].
        rate: f64,
    },
}

impl Sampling {
    fn rate(self) -> Result<f64, AccountantError> {
        match self {
            Sampling::None => Ok(1.0),
            Sampling::Poisson { rate } if rate > 0.0 && rate <= 1.0 => Ok(rate),
            Sampling::Poisson { rate } => Err(AccountantError::BadSamplingRate(rate)),
        }
    }
}

/// The noise mechanism run once per round. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mechanism {
    /// The continuous Gaussian with this noise multiplier (σ / Δ₂).
    Gaussian {
        /// σ / Δ₂.
        noise_multiplier: f64,
    },
    /// The (exact) discrete Gaussian on an integer vector, σ / Δ₂ = `noise_multiplier`.
    DiscreteGaussian {
        /// σ / Δ₂.
        noise_multiplier: f64,
    },
    /// The sum of the survivors' discrete Gaussian shares.
    DistributedGaussian(DistributedGaussian),
}

/// One RDP value per order: a mechanism's privacy for one round, or for many once composed.
#[derive(Debug, Clone, PartialEq)]
pub struct RdpCurve {
    orders: Vec<f64>,
    rdp: Vec<f64>,
}

/// An ε with the RDP order that gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Epsilon {
    /// ε for the δ asked for.
    pub epsilon: f64,
    /// The order at which the conversion was tightest (0 when ε is 0 or +∞ everywhere).
    pub order: f64,
}

impl RdpCurve {
    /// The RDP curve of one round of `mechanism` under `sampling`, at [`default_orders`].
    pub fn per_round(mechanism: Mechanism, sampling: Sampling) -> Result<Self, AccountantError> {
        Self::per_round_at(mechanism, sampling, default_orders())
    }

    /// [`RdpCurve::per_round`] at the given orders (each > 1).
    pub fn per_round_at(
        mechanism: Mechanism,
        sampling: Sampling,
        orders: Vec<f64>,
    ) -> Result<Self, AccountantError> {
        let q = sampling.rate()?;
        let rdp = match mechanism {
            Mechanism::Gaussian {
                noise_multiplier: z,
            } => {
                check_noise_multiplier(z)?;
                orders.iter().map(|&a| gaussian::rdp(q, z, a)).collect()
            }
            Mechanism::DiscreteGaussian {
                noise_multiplier: z,
            } => {
                check_noise_multiplier(z)?;
                let eps = |a: f64| a / (2.0 * z * z);
                orders
                    .iter()
                    .map(|&a| {
                        if q == 1.0 {
                            eps(a)
                        } else {
                            general::subsampled_rdp(q, a, eps)
                        }
                    })
                    .collect()
            }
            Mechanism::DistributedGaussian(p) => {
                for (name, value) in [
                    ("l2_scale", p.l2_scale),
                    ("l1_scale", p.l1_scale),
                    ("tau", p.tau),
                    ("dim", p.dim),
                ] {
                    if !(value.is_finite() && value >= 0.0) {
                        return Err(AccountantError::BadDistributedParameter { name, value });
                    }
                }
                let eps = |a: f64| ddgauss::rdp(&p, a);
                orders
                    .iter()
                    .map(|&a| {
                        if q == 1.0 {
                            eps(a)
                        } else {
                            general::subsampled_rdp(q, a, eps)
                        }
                    })
                    .collect()
            }
        };
        Ok(Self { orders, rdp })
    }

    /// The orders.
    pub fn orders(&self) -> &[f64] {
        &self.orders
    }

    /// The RDP values, one per order.
    pub fn rdp(&self) -> &[f64] {
        &self.rdp
    }

    /// This curve composed `rounds` times.
    pub fn compose(&self, rounds: u64) -> Self {
        let t = rounds as f64;
        Self {
            orders: self.orders.clone(),
            rdp: self
                .rdp
                .iter()
                .map(|&r| if rounds == 0 { 0.0 } else { r * t })
                .collect(),
        }
    }

    /// ε after `rounds` rounds of this per-round curve, for `delta`.
    pub fn epsilon_after(&self, rounds: u64, delta: f64) -> Result<Epsilon, AccountantError> {
        check_delta(delta)?;
        let t = rounds as f64;
        Ok(epsilon_from_rdp(
            &self.orders,
            self.rdp
                .iter()
                .map(|&r| if rounds == 0 { 0.0 } else { r * t }),
            delta,
        ))
    }

    /// ε of this (already composed) curve for `delta`.
    pub fn epsilon(&self, delta: f64) -> Result<Epsilon, AccountantError> {
        self.epsilon_after(1, delta)
    }

    /// The most rounds of this per-round curve whose ε stays within `budget` at `delta`
    /// (0 if not even one round fits; at most [`MAX_ROUNDS`]).
    pub fn max_rounds(&self, budget: f64, delta: f64) -> Result<u64, AccountantError> {
        check_delta(delta)?;
        if budget.is_nan() || budget < 0.0 {
            return Err(AccountantError::BadEpsilon(budget));
        }
        let fits = |t: u64| -> Result<bool, AccountantError> {
            Ok(self.epsilon_after(t, delta)?.epsilon <= budget)
        };
        if !fits(1)? {
            return Ok(0);
        }
        // ε is non-decreasing in the rounds: grow, then bisect.
        let mut lo = 1u64;
        let mut hi = 2u64;
        while hi <= MAX_ROUNDS && fits(hi)? {
            lo = hi;
            hi *= 2;
        }
        if hi > MAX_ROUNDS {
            if fits(MAX_ROUNDS)? {
                return Ok(MAX_ROUNDS);
            }
            hi = MAX_ROUNDS;
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }
}

/// The smallest noise multiplier z (to a relative 1e-6, rounded up, so that ε(z) ≤ `target`
/// holds) for which `rounds` rounds of `curve_for(z)` give ε ≤ `target` at `delta`. ε must be
/// non-increasing in z, as it is for every [`Mechanism`] here.
pub fn noise_multiplier_for(
    target: f64,
    delta: f64,
    rounds: u64,
    curve_for: impl Fn(f64) -> Result<RdpCurve, AccountantError>,
) -> Result<f64, AccountantError> {
    const LIMIT: f64 = 1e6;
    const FLOOR: f64 = 1e-4;
    if !(target.is_finite() && target > 0.0) {
        return Err(AccountantError::BadEpsilon(target));
    }
    check_delta(delta)?;
    let eps = |z: f64| -> Result<f64, AccountantError> {
        Ok(curve_for(z)?.epsilon_after(rounds, delta)?.epsilon)
    };
    let mut hi = 1.0;
    while eps(hi)? > target {
        hi *= 2.0;
        if hi > LIMIT {
            return Err(AccountantError::Unreachable {
                target,
                rounds,
                delta,
                limit: LIMIT,
            });
        }
    }
    let mut lo = hi / 2.0;
    while eps(lo)? <= target {
        if lo < FLOOR {
            return Ok(lo);
        }
        hi = lo;
        lo /= 2.0;
    }
    // Invariant: ε(lo) > target ≥ ε(hi).
    while (hi - lo) > 1e-6 * hi {
        let mid = 0.5 * (lo + hi);
        if eps(mid)? <= target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi)
}

/// The conversion of `dp-accounting`'s `compute_epsilon`: per order, ε = 0 when the KL bound
/// already gives δ, else r + ln(1 − 1/α) − ln(δα)/(α − 1) for α > 1.01, else +∞; the minimum.
fn epsilon_from_rdp(orders: &[f64], rdp: impl Iterator<Item = f64>, delta: f64) -> Epsilon {
    let mut best = Epsilon {
        epsilon: f64::INFINITY,
        order: 0.0,
    };
    for (&a, r) in orders.iter().zip(rdp) {
        let eps = if r.is_nan() {
            f64::INFINITY
        } else if r <= 0.0 || delta * delta + (-r).exp_m1() > 0.0 {
            0.0
        } else if a > 1.01 {
            r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
        } else {
            f64::INFINITY
        };
        if eps < best.epsilon {
            best = Epsilon {
                epsilon: eps,
                order: a,
            };
        }
    }
    best.epsilon = best.epsilon.max(0.0);
    best
}

fn check_delta(delta: f64) -> Result<(), AccountantError> {
    if delta > 0.0 && delta < 1.0 {
        Ok(())
    } else {
        Err(AccountantError::BadDelta(delta))
    }
}

fn check_noise_multiplier(z: f64) -> Result<(), AccountantError> {
    if z.is_finite() && z > 0.0 {
        Ok(())
    } else {
        Err(AccountantError::BadNoiseMultiplier(z))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_orders_match_dp_accounting() {
        let orders = default_orders();
        assert_eq!(orders.len(), 99 + 53 + 4);
        assert!((orders[0] - 1.1).abs() < 1e-15);
        assert!((orders[98] - 10.9).abs() < 1e-12);
        assert_eq!(orders[99], 11.0);
        assert_eq!(orders[151], 63.0);
        assert_eq!(*orders.last().unwrap(), 1024.0);
    }

    #[test]
    fn single_gaussian_release_by_hand() {
        // One release, z = 1, q = 1, δ = 1e-5: min over α of α/2 + ln(1−1/α) − ln(δα)/(α−1).
        let curve = RdpCurve::per_round(
            Mechanism::Gaussian {
                noise_multiplier: 1.0,
            },
            Sampling::None,
        )
        .unwrap();
        let got = curve.epsilon_after(1, 1e-5).unwrap();
        let mut want = f64::INFINITY;
        for a in default_orders() {
            if a > 1.01 {
                want = want.min(a / 2.0 + (1.0 - 1.0 / a).ln() - (1e-5 * a).ln() / (a - 1.0));
            }
        }
        assert!((got.epsilon - want).abs() < 1e-12);
        assert_eq!(curve.epsilon_after(0, 1e-5).unwrap().epsilon, 0.0);
    }

    #[test]
    fn bad_inputs_are_refused() {
        let g = Mechanism::Gaussian {
            noise_multiplier: 1.0,
        };
        assert_eq!(
            RdpCurve::per_round(g, Sampling::Poisson { rate: 0.0 }),
            Err(AccountantError::BadSamplingRate(0.0))
        );
        let curve = RdpCurve::per_round(g, Sampling::None).unwrap();
        assert_eq!(
            curve.epsilon_after(3, 1.0),
            Err(AccountantError::BadDelta(1.0))
        );
        assert!(matches!(
            RdpCurve::per_round(
                Mechanism::Gaussian {
                    noise_multiplier: f64::NAN
                },
                Sampling::None
            ),
            Err(AccountantError::BadNoiseMultiplier(_))
        ));
    }
}
