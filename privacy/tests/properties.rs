//! Property tests of the accountant: ε grows with the rounds and shrinks with the noise, the
//! inverses agree with the forward computation, and the bounds are ordered as the theory says.

use cohort_privacy::accountant::{
    DistributedGaussian, Mechanism, RdpCurve, Sampling, noise_multiplier_for,
};
use proptest::prelude::*;

fn sampling(q: f64) -> Sampling {
    if q >= 1.0 {
        Sampling::None
    } else {
        Sampling::Poisson { rate: q }
    }
}

fn gaussian(z: f64, q: f64) -> RdpCurve {
    RdpCurve::per_round(
        Mechanism::Gaussian {
            noise_multiplier: z,
        },
        sampling(q),
    )
    .unwrap()
}

fn eps(curve: &RdpCurve, rounds: u64, delta: f64) -> f64 {
    curve.epsilon_after(rounds, delta).unwrap().epsilon
}

/// Sampling rates from 10⁻⁴ to 1, with 1 (no sampling) a fifth of the time.
fn rate() -> impl Strategy<Value = f64> {
    prop_oneof![1 => Just(1.0), 4 => (-4.0f64..0.0).prop_map(|e| 10f64.powf(e))]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn epsilon_grows_with_rounds(
        z in 0.4f64..20.0,
        q in rate(),
        t1 in 1u64..5_000,
        extra in 0u64..5_000,
        log_delta in -12.0f64..-3.0,
    ) {
        let delta = 10f64.powf(log_delta);
        let curve = gaussian(z, q);
        let a = eps(&curve, t1, delta);
        let b = eps(&curve, t1 + extra, delta);
        prop_assert!(b >= a, "ε({}) = {} > ε({}) = {}", t1, a, t1 + extra, b);
    }

    #[test]
    fn epsilon_shrinks_with_noise(
        z in 0.4f64..20.0,
        more in 1.0f64..3.0,
        q in rate(),
        rounds in 1u64..3_000,
        log_delta in -12.0f64..-3.0,
    ) {
        let delta = 10f64.powf(log_delta);
        let a = eps(&gaussian(z, q), rounds, delta);
        let b = eps(&gaussian(z * more, q), rounds, delta);
        // Float noise in the series: a relative 1e-9 slack.
        prop_assert!(b <= a * (1.0 + 1e-9), "z {} → {}, z {} → {}", z, a, z * more, b);
    }

    #[test]
    fn inverse_noise_is_the_smallest_that_meets_the_target(
        target in 0.2f64..20.0,
        q in rate(),
        rounds in 1u64..3_000,
        log_delta in -10.0f64..-4.0,
    ) {
        let delta = 10f64.powf(log_delta);
        let z = noise_multiplier_for(target, delta, rounds, |z| Ok(gaussian(z, q))).unwrap();
        prop_assert!(eps(&gaussian(z, q), rounds, delta) <= target);
        prop_assert!(eps(&gaussian(z * (1.0 - 2e-6), q), rounds, delta) > target);
    }

    #[test]
    fn max_rounds_is_the_last_that_fits(
        z in 0.8f64..30.0,
        q in rate(),
        budget in 0.5f64..20.0,
        log_delta in -10.0f64..-4.0,
    ) {
        let delta = 10f64.powf(log_delta);
        let curve = gaussian(z, q);
        let t = curve.max_rounds(budget, delta).unwrap();
        if t > 0 {
            prop_assert!(eps(&curve, t, delta) <= budget);
        }
        if t < cohort_privacy::accountant::MAX_ROUNDS {
            prop_assert!(eps(&curve, t + 1, delta) > budget);
        }
    }

    #[test]
    fn bounds_are_ordered(
        z in 0.5f64..10.0,
        q in (-3.0f64..-0.5).prop_map(|e| 10f64.powf(e)),
        rounds in 1u64..2_000,
    ) {
        let delta = 1e-6;
        // The exact sampled Gaussian ≤ the general bound on the same RDP curve ≤ no sampling.
        let exact = eps(&gaussian(z, q), rounds, delta);
        let general = eps(
            &RdpCurve::per_round(Mechanism::DiscreteGaussian { noise_multiplier: z }, sampling(q)).unwrap(),
            rounds,
            delta,
        );
        let unsampled = eps(&gaussian(z, 1.0), rounds, delta);
        prop_assert!(exact <= general * (1.0 + 1e-9), "{} > {}", exact, general);
        prop_assert!(general <= unsampled * (1.0 + 1e-9), "{} > {}", general, unsampled);
        // The distributed sum with τ > 0 costs at least the Gaussian with the same z.
        let ddg = DistributedGaussian { l2_scale: 1.0 / z, l1_scale: 30.0 / z, tau: 1e-9, dim: 1e4 };
        let dist = eps(&RdpCurve::per_round(Mechanism::DistributedGaussian(ddg), sampling(q)).unwrap(), rounds, delta);
        prop_assert!(dist >= general * (1.0 - 1e-9), "{} < {}", dist, general);
    }
}
