use std::hint::black_box;
use std::time::Duration;

use cohort_privacy::rotation::RandomizedHadamard;
use cohort_privacy::sampler::{DiscreteGaussian, Variance};
use criterion::{Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_chacha::ChaCha12Rng;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("quick");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    let mut rng = ChaCha12Rng::seed_from_u64(1);
    for sigma in [2.0f64, 190.0, 3000.0] {
        let dg = DiscreteGaussian::new(Variance::at_least(sigma * sigma).unwrap());
        let mut out = vec![0i64; 100_000];
        group.bench_function(format!("dg_100k_sigma{sigma}"), |b| {
            b.iter(|| dg.fill(black_box(&mut out), &mut rng))
        });
    }
    let rot = RandomizedHadamard::new(&[3; 32], 1 << 20).unwrap();
    let x: Vec<f32> = (0..1_000_000).map(|i| (i % 97) as f32).collect();
    let mut out = Vec::new();
    group.bench_function("rotate_1M", |b| b.iter(|| rot.rotate_scaled(black_box(&x), 2.0, &mut out)));
    group.finish();
}
criterion_group!(benches, bench);
criterion_main!(benches);
