//! The accountant's cost (the goal: ε for 10,000 rounds in at most 10 ms):
//!
//! - `accountant/gaussian_q0.01_10000_rounds`: the sampled Gaussian's RDP curve at all 156
//!   orders (the fractional ones by their series) and ε after 10,000 rounds;
//! - `accountant/distributed_10000_rounds`: the same for distributed mode's curve;
//! - `accountant/epsilon_only_10000_rounds`: the conversion alone, from a curve already built
//!   (what a coordinator does before each round);
//! - `accountant/inverse_q0.01_10000_rounds`: the noise multiplier for ε = 3 by bisection.
//!
//! Run with `cargo bench -p cohort-privacy --bench accountant`.

use std::hint::black_box;
use std::time::Duration;

use cohort_privacy::accountant::{
    DistributedGaussian, Mechanism, RdpCurve, Sampling, noise_multiplier_for,
};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench_accountant(c: &mut Criterion) {
    let sampled = Sampling::Poisson { rate: 0.01 };
    let gaussian = |z: f64| {
        RdpCurve::per_round(
            Mechanism::Gaussian {
                noise_multiplier: z,
            },
            sampled,
        )
    };
    let mut group = c.benchmark_group("accountant");
    group.sample_size(20);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("gaussian_q0.01_10000_rounds", |b| {
        b.iter(|| {
            gaussian(black_box(1.1))
                .unwrap()
                .epsilon_after(10_000, 1e-6)
                .unwrap()
        })
    });
    let ddg = DistributedGaussian::new(2896.7, 2896.7 * 1024.0, 96.56, 900, 1000, 1 << 20);
    group.bench_function("distributed_10000_rounds", |b| {
        b.iter(|| {
            RdpCurve::per_round(
                Mechanism::DistributedGaussian(black_box(ddg)),
                Sampling::None,
            )
            .unwrap()
            .epsilon_after(10_000, 1e-6)
            .unwrap()
        })
    });
    let curve = gaussian(1.1).unwrap();
    group.bench_function("epsilon_only_10000_rounds", |b| {
        b.iter(|| black_box(&curve).epsilon_after(10_000, 1e-6).unwrap())
    });
    group.bench_function("inverse_q0.01_10000_rounds", |b| {
        b.iter(|| noise_multiplier_for(black_box(3.0), 1e-6, 10_000, gaussian).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_accountant);
criterion_main!(benches);
