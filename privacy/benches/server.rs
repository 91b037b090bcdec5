//! The coordinator's cost at d = 10⁶:
//!
//! - `server/unrotate_1M`: the inverse randomised Hadamard transform of 2^20 coordinates (the
//!   issue's goal: at most 100 ms);
//! - `server/decode_sum_1M`: all of distributed mode's `decode_sum` (recentring, unscaling, the
//!   inverse rotation);
//! - `server/central_noise_1M`: central mode's exact discrete Gaussian noise on a sum of 10⁶
//!   coordinates (σ ≈ 2^21 grid units for 1,000 clients at z = 1).
//!
//! Run with `cargo bench -p cohort-privacy --bench server`.

use std::hint::black_box;
use std::time::Duration;

use cohort_privacy::central::CentralNoise;
use cohort_privacy::distributed::{
    DistributedEncoder, DistributedParams, DistributedSettings, DistributedShape,
};
use cohort_privacy::rotation::RandomizedHadamard;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const DIM: usize = 1_000_000;

fn bench_server(c: &mut Criterion) {
    let p = DistributedParams::derive(
        1.0,
        1.0,
        DistributedShape {
            dim: DIM,
            max_clients: 1000,
            min_survivors: 900,
        },
        DistributedSettings::default(),
    )
    .unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let seed = [7u8; 32];
    let rotation = RandomizedHadamard::new(&seed, p.padded_dim).unwrap();
    let sum: Vec<u32> = (0..p.padded_dim).map(|_| rng.random()).collect();
    let as_floats: Vec<f32> = sum.iter().map(|&v| (v >> 8) as f32).collect();
    let encoder = DistributedEncoder::new(p.clone());
    // Central mode: 1,000 clients' Quantizer grid (2^21 − 1 levels per clip), z = 1.
    let central = CentralNoise::new(1.0, 2_097_151.0, 1.0, DIM, None).unwrap();
    println!(
        "central noise: sensitivity {:.0} grid units, sigma {:.4} in update units, coarsening {}",
        central.sensitivity(),
        central.stddev(),
        central.coarsening()
    );

    let mut group = c.benchmark_group("server");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(p.padded_dim as u64));
    group.bench_function("unrotate_1M", |b| {
        let mut y = as_floats.clone();
        b.iter(|| rotation.unrotate(black_box(&mut y)));
    });
    group.bench_function("decode_sum_1M", |b| {
        b.iter(|| encoder.decode_sum(black_box(&sum), 950, &seed).unwrap());
    });
    group.bench_function("central_noise_1M", |b| {
        b.iter(|| central.noisy_sum(black_box(&sum[..DIM]), &mut rng).unwrap());
    });
    group.finish();
}

criterion_group!(benches, bench_server);
criterion_main!(benches);
