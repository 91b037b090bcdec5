//! A client's cost of distributed mode at d = 10⁶ (1,000 clients per round, q_min = 900,
//! z = 1, clip 1: 15 bits per coordinate, 2^20 coordinates after padding, shares of σ ≈ 97):
//!
//! - `client/rotate_1M`: clip factor, signs and the randomised Hadamard transform;
//! - `client/round_1M`: conditional randomised rounding of the rotated vector;
//! - `client/noise_1M`: 2^20 exact discrete Gaussian samples;
//! - `client/encode_1M`: the whole of `DistributedEncoder::encode` (all of the above, the norm,
//!   and the modular wrap);
//! - `client/encode_with_noise_drawn_ahead_1M`: `encode_with_noise` with a share drawn before
//!   (`sample_noise` can run while the client trains): the cost left after training ends.
//!
//! Run with `cargo bench -p cohort-privacy --bench client`, and in the same sitting
//! `cargo bench -p cohort-aggregation --bench masking` for the masking time it is compared with
//! (the goal: rotation, rounding and noise at most 10% of masking).

use std::hint::black_box;
use std::time::Duration;

use cohort_privacy::distributed::{
    DistributedEncoder, DistributedParams, DistributedSettings, DistributedShape,
};
use cohort_privacy::rotation::RandomizedHadamard;
use cohort_privacy::rounding::conditional_round;
use cohort_privacy::sampler::DiscreteGaussian;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::{ChaCha12Rng, ChaCha20Rng};

const DIM: usize = 1_000_000;

fn params() -> DistributedParams {
    DistributedParams::derive(
        1.0,
        1.0,
        DistributedShape {
            dim: DIM,
            max_clients: 1000,
            min_survivors: 900,
        },
        DistributedSettings::default(),
    )
    .expect("the benchmark's parameters derive")
}

fn bench_client(c: &mut Criterion) {
    let p = params();
    println!(
        "d = {DIM}: {} bits, padded to {}, scale {:.1}, share sigma {:.2}",
        p.bits,
        p.padded_dim,
        p.scale,
        p.local_variance.sigma()
    );
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    // Norm about 0.29, within the clip of 1.
    let update: Vec<f32> = (0..DIM)
        .map(|_| (rng.random::<f32>() - 0.5) * 0.001)
        .collect();
    let seed = [7u8; 32];
    let rotation = RandomizedHadamard::new(&seed, p.padded_dim).unwrap();
    let mut rotated = Vec::new();
    rotation.rotate_scaled(&update, p.scale, &mut rotated);
    let bound_sq = (p.l2_bound * p.l2_bound).floor() as u128;
    let noise = DiscreteGaussian::new(p.local_variance);
    let encoder = DistributedEncoder::new(p.clone());

    let mut group = c.benchmark_group("client");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(p.padded_dim as u64));
    group.bench_function("rotate_1M", |b| {
        let mut out = Vec::new();
        b.iter(|| rotation.rotate_scaled(black_box(&update), p.scale, &mut out));
    });
    group.bench_function("round_1M", |b| {
        let mut out = vec![0i32; p.padded_dim];
        b.iter(|| conditional_round(black_box(&rotated), bound_sq, &mut rng, &mut out).unwrap());
    });
    group.bench_function("noise_1M", |b| {
        let mut out = vec![0i64; p.padded_dim];
        let mut noise_rng = ChaCha12Rng::seed_from_u64(2);
        b.iter(|| noise.fill(black_box(&mut out), &mut noise_rng));
    });
    group.bench_function("encode_1M", |b| {
        b.iter(|| encoder.encode(black_box(&update), &seed, &mut rng).unwrap());
    });
    let mut share_rng = ChaCha20Rng::seed_from_u64(4);
    group.bench_function("encode_with_noise_drawn_ahead_1M", |b| {
        b.iter_batched(
            || encoder.sample_noise(&mut share_rng),
            |share| {
                encoder
                    .encode_with_noise(black_box(&update), &seed, share, &mut rng)
                    .unwrap()
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, bench_client);
criterion_main!(benches);
