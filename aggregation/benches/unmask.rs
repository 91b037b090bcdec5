//! The server's hot paths: streaming accumulation of masked inputs, and the full unmasking of a
//! round with n = 1,000 clients, d = 10^6 and 10% dropout after R1 (PROTOCOL.md §4, issue
//! target: within 6 s on a 2-core machine).
//!
//! Run: `cargo bench -p cohort-aggregation --bench unmask`. `COHORT_BENCH_D` overrides d
//! (e.g. 100000 on a busy machine). `unmask/n1000_*_semi_malicious` is the same job with the
//! parameters of a round with the consistency check (the finder's semi-malicious class: k = 78
//! instead of 36 at n = 1,000). `unmask/n1000_drop10pct_aes128ctr` is the semi-honest job with
//! the AES-128-CTR mask PRG.

use std::time::Duration;

use cohort_aggregation::secagg::accumulator::Accumulator;
use cohort_aggregation::secagg::keys::KeyPair;
use cohort_aggregation::secagg::params::{
    AdversaryClass, choose_graph_params, choose_graph_params_for,
};
use cohort_aggregation::secagg::prg::MaskSign;
use cohort_aggregation::secagg::shamir;
use cohort_aggregation::secagg::unmask::{DroppedClient, MaskSeed, UnmaskJob};
use cohort_protocol::{CipherSuite, ClientIndex, RoundId};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use zeroize::Zeroizing;

fn d() -> usize {
    std::env::var("COHORT_BENCH_D")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn accumulate(c: &mut Criterion) {
    let mut group = c.benchmark_group("accumulate");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let v: Vec<u32> = (0..d()).map(|_| rng.random()).collect();
    group.throughput(Throughput::Bytes((d() * 4) as u64));
    group.bench_function("add 1M-element masked input", |b| {
        let mut acc = Accumulator::new(d());
        b.iter(|| acc.add(&v).expect("same length"));
    });
    group.finish();
}

/// Builds the job the server runs after R3 for n clients with `drop` of them lost after R1.
fn job(
    n: u32,
    drop_frac: f64,
    class: AdversaryClass,
    suite: CipherSuite,
    rng: &mut ChaCha20Rng,
) -> (UnmaskJob, usize) {
    let params = choose_graph_params_for(n, 0.05, 0.10, class).expect("params");
    let dropped_n = (f64::from(n) * drop_frac) as u32;
    let survivors = n - dropped_n;
    let self_masks: Vec<MaskSeed> = (0..survivors)
        .map(|_| MaskSeed {
            seed: Zeroizing::new(rng.random()),
            sign: MaskSign::Subtract,
        })
        .collect();
    // Each dropped client has k neighbours, of which about 90% survived.
    let live = (f64::from(params.neighbours) * (1.0 - drop_frac)).round() as u32;
    let peer_keys: Vec<[u8; 32]> = (0..live)
        .map(|_| KeyPair::generate(rng).public_bytes())
        .collect();
    let dropped = (0..dropped_n)
        .map(|d| DroppedClient {
            index: ClientIndex(survivors + d + 1),
            mask_secret: Zeroizing::new(rng.random()),
            live_neighbours: peer_keys
                .iter()
                .enumerate()
                .map(|(i, pk)| (ClientIndex(i as u32 + 1), *pk))
                .collect(),
        })
        .collect();
    let sum: Vec<u32> = (0..d()).map(|_| rng.random()).collect();
    let job = UnmaskJob::new(
        RoundId(1),
        rng.random(),
        suite,
        sum,
        self_masks,
        dropped,
        (1..=survivors).map(ClientIndex).collect(),
    );
    let streams = job.num_streams();
    (job, streams)
}

fn unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30));
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chacha = CipherSuite::X25519HkdfSha256ChaCha20V1;
    let aes = CipherSuite::X25519HkdfSha256Aes128CtrV1;
    for (class, suite, name) in [
        (AdversaryClass::SemiHonest, chacha, "n1000_drop10pct"),
        (AdversaryClass::SemiHonest, aes, "n1000_drop10pct_aes128ctr"),
        (
            AdversaryClass::SemiMalicious,
            chacha,
            "n1000_drop10pct_semi_malicious",
        ),
    ] {
        let (_, streams) = job(1000, 0.10, class, suite, &mut rng);
        eprintln!(
            "{name}: d = {}, {streams} mask streams, {threads} threads",
            d()
        );
        group.bench_function(BenchmarkId::new(name, threads), |b| {
            b.iter_batched(
                || job(1000, 0.10, class, suite, &mut rng).0,
                |j| j.run(threads).expect("unmasks"),
                criterion::BatchSize::PerIteration,
            );
        });
    }
    // Reconstruction of the secrets from shares, which ServerRound does before the job.
    let params = choose_graph_params(1000, 0.05, 0.10).expect("params");
    let t = params.threshold as usize;
    let xs: Vec<u32> = (1..=params.neighbours + 1).collect();
    let shares = shamir::split(&[7u8; 32], t, &xs, &mut rng).expect("split");
    group.bench_function("reconstruct 1000 secrets (t from n = 1000)", |b| {
        b.iter(|| {
            for _ in 0..1000 {
                shamir::reconstruct(&shares, t).expect("reconstructs");
            }
        });
    });
    group.finish();
}

criterion_group!(benches, accumulate, unmask);
criterion_main!(benches);
