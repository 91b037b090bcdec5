//! Fixed-point encoding throughput: `Quantizer::encode` (clip, scale, stochastic rounding,
//! weight) and `Quantizer::decode_sum` on a 1M-parameter update, the client's and the server's
//! per-round cost outside the masking.
//!
//! `packing`: a masked input of 10^6 + 1 elements packed at r bits (the client, after masking),
//! unpacked, and added to the server's accumulator straight from the packed bytes
//! (`Accumulator::add_packed`), at r = 20, 24, 26 (the default 16 value bits at n = 10, 200,
//! 1,000) and 32 (today's full ring, byte-aligned), beside `Accumulator::add` of an unpacked
//! vector.
//!
//! Run with `cargo bench -p cohort-aggregation --bench encoding`.

use std::hint::black_box;
use std::time::Duration;

use cohort_aggregation::encoding::Quantizer;
use cohort_aggregation::ring::PackedVector;
use cohort_aggregation::secagg::accumulator::Accumulator;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const MODEL_LEN: usize = 1 << 20;

fn encoding(c: &mut Criterion) {
    // A cohort of 1000 clients with weights up to 100: 15 value bits.
    let q = Quantizer::for_cohort(1000, 0.5, 100).expect("valid encoding parameters");
    let update: Vec<f32> = (0..MODEL_LEN).map(|i| (i as f32 * 0.001).sin()).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(7);

    let mut group = c.benchmark_group("encoding");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(MODEL_LEN as u64));
    group.bench_function("encode_1M_f32", |b| {
        b.iter(|| {
            q.encode(black_box(&update), 37, &mut rng)
                .expect("finite update")
        })
    });
    let sum = q.encode(&update, 37, &mut rng).expect("finite update");
    group.bench_function("decode_sum_1M", |b| {
        b.iter(|| q.decode_sum(black_box(&sum)).expect("valid sum"))
    });
    group.finish();
}

fn packing(c: &mut Criterion) {
    let len = 1_000_001;
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let words: Vec<u32> = (0..len).map(|_| rng.random()).collect();
    let mut group = c.benchmark_group("packing");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(len as u64));
    for r in [20u8, 24, 26, 32] {
        group.bench_with_input(BenchmarkId::new("pack", r), &r, |b, &r| {
            b.iter(|| PackedVector::pack(black_box(&words), r).expect("r in 1..=32"))
        });
        let packed = PackedVector::pack(&words, r).expect("r in 1..=32");
        group.bench_with_input(BenchmarkId::new("unpack", r), &r, |b, _| {
            b.iter(|| black_box(&packed).unpack())
        });
        group.bench_with_input(BenchmarkId::new("add_packed", r), &r, |b, &r| {
            let mut acc = Accumulator::for_ring(len, r);
            b.iter(|| acc.add_packed(black_box(&packed)).expect("same shape"))
        });
    }
    group.bench_function("add_unpacked_u32", |b| {
        let mut acc = Accumulator::new(len);
        b.iter(|| acc.add(black_box(&words)).expect("same length"))
    });
    group.finish();
}

criterion_group!(benches, encoding, packing);
criterion_main!(benches);
