//! Fixed-point encoding throughput: `Quantizer::encode` (clip, scale, stochastic rounding,
//! weight) and `Quantizer::decode_sum` on a 1M-parameter update, the client's and the server's
//! per-round cost outside the masking.
//!
//! Run with `cargo bench -p cohort-aggregation --bench encoding`.

use std::hint::black_box;
use std::time::Duration;

use cohort_aggregation::encoding::Quantizer;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
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

criterion_group!(benches, encoding);
criterion_main!(benches);
