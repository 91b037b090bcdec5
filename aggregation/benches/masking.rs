//! Client-side SecAgg+ costs at the protocol's default parameters (n = 1,000: k = 36, t = 19):
//!
//! - `keystream/raw_chacha20` and `keystream/raw_aes128ctr`: the baseline, raw keystream
//!   generation for 37 streams of 1,000,000 words each (into a reused L1-sized buffer, so it
//!   measures the cipher alone);
//! - `masking/apply_mask_x37_<prg>`: a client adding 37 masks (36 pairwise + its self mask) to
//!   a 1,000,000-word vector with one `apply_mask` call per seed;
//! - `masking/apply_masks_tiled_x37_<prg>`: the same with the tiled multi-seed `apply_masks`,
//!   as `client.rs` does, for both mask PRGs (ChaCha20 and AES-128-CTR);
//! - `shamir/split_37_t19` and `shamir/reconstruct_t19`: sharing one 32-byte secret among the
//!   k + 1 = 37 holders, and rebuilding it from 19 shares.
//!
//! Run with `cargo bench -p cohort-aggregation --bench masking`. The ratio masking/raw is the
//! overhead of adding the keystream into the vector; the target is at most 1.5.

use std::hint::black_box;
use std::time::Duration;

use chacha20::cipher::{KeyIvInit, StreamCipherCore};
use chacha20::variants::Ietf;
use chacha20::{ChaChaCore, R20};
use cohort_aggregation::secagg::prg::{
    MaskPrg, MaskSign, aes_accelerated, apply_mask, apply_masks, simd_backend,
};
use cohort_aggregation::secagg::shamir;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

const WORDS: usize = 1_000_000;
const STREAMS: usize = 37;
const NEIGHBOURS: usize = 36;
const THRESHOLD: usize = 19;

fn seeds() -> Vec<[u8; 32]> {
    (0..STREAMS).map(|i| [i as u8 + 1; 32]).collect()
}

fn bench_keystream(c: &mut Criterion) {
    println!(
        "chacha20 backend: {}; AES instructions: {}",
        simd_backend(),
        aes_accelerated()
    );
    let seeds = seeds();
    let mut group = c.benchmark_group("keystream");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Bytes((STREAMS * WORDS * 4) as u64));
    group.bench_function("raw_chacha20_37x1M", |b| {
        // 256 blocks = 16 KiB, reused: the cipher's own cost with no memory traffic.
        let mut blocks = vec![Default::default(); 256];
        b.iter(|| {
            for seed in &seeds {
                let mut core = ChaChaCore::<R20, Ietf>::new(&(*seed).into(), &[0u8; 12].into());
                let mut left = WORDS / 16;
                while left > 0 {
                    let n = left.min(blocks.len());
                    core.write_keystream_blocks(&mut blocks[..n]);
                    black_box(&blocks);
                    left -= n;
                }
            }
        });
    });
    group.bench_function("raw_aes128ctr_37x1M", |b| {
        use aes::cipher::{KeyIvInit, StreamCipherCore};
        type Core = ctr::CtrCore<aes::Aes128, ctr::flavors::Ctr128BE>;
        let mut blocks = vec![Default::default(); 1024];
        b.iter(|| {
            for seed in &seeds {
                let key: [u8; 16] = seed[..16].try_into().expect("16 bytes");
                let mut core = Core::new(&key.into(), &[0u8; 16].into());
                let mut left = WORDS / 4;
                while left > 0 {
                    let n = left.min(blocks.len());
                    core.write_keystream_blocks(&mut blocks[..n]);
                    black_box(&blocks);
                    left -= n;
                }
            }
        });
    });
    group.finish();
}

fn bench_masking(c: &mut Criterion) {
    let seeds = seeds();
    let mut acc = vec![0u32; WORDS];
    let mut group = c.benchmark_group("masking");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Bytes((STREAMS * WORDS * 4) as u64));
    let masks: Vec<(&[u8; 32], MaskSign)> = seeds
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                s,
                if i % 2 == 0 {
                    MaskSign::Add
                } else {
                    MaskSign::Subtract
                },
            )
        })
        .collect();
    for prg in [MaskPrg::ChaCha20, MaskPrg::Aes128Ctr] {
        group.bench_function(format!("apply_mask_x37_1M_{}", prg.name()), |b| {
            b.iter(|| {
                for (seed, sign) in &masks {
                    apply_mask(prg, &mut acc, seed, *sign);
                }
                black_box(&acc);
            });
        });
        group.bench_function(format!("apply_masks_tiled_x37_1M_{}", prg.name()), |b| {
            b.iter(|| {
                apply_masks(prg, &mut acc, &masks);
                black_box(&acc);
            });
        });
    }
    group.finish();
}

fn bench_shamir(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let secret = [0x42u8; 32];
    let xs: Vec<u32> = (1..=(NEIGHBOURS as u32 + 1)).collect();
    let mut group = c.benchmark_group("shamir");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.bench_function("split_37_t19", |b| {
        b.iter(|| shamir::split(black_box(&secret), THRESHOLD, &xs, &mut rng).unwrap());
    });
    let shares = shamir::split(&secret, THRESHOLD, &xs, &mut rng).unwrap();
    let chosen: Vec<shamir::Share> = shares.iter().rev().take(THRESHOLD).cloned().collect();
    group.bench_function("reconstruct_t19", |b| {
        b.iter(|| shamir::reconstruct(black_box(&chosen), THRESHOLD).unwrap());
    });
    group.finish();
}

criterion_group!(benches, bench_keystream, bench_masking, bench_shamir);
criterion_main!(benches);
