//! What the active-adversary extras of issue 10 cost, beside the mask work they do not change:
//!
//! - `server/verify_1000_signatures`: the R0 (or the R2.5) signatures of n = 1,000 clients;
//! - `server/roster_and_graph_n1000`: U1 key commitments, the roster digest and the Harary graph
//!   drawn from it (k = 78);
//! - `server/reconstruct_1000_checked` vs `server/reconstruct_1000`: rebuilding 1,000 secrets
//!   with the (t+1)-th-share cross-check (two interpolations) or without (t = 52);
//! - `client/r1_checks_n1000_k78`: a client's R1 work beyond key agreement: the roster digest
//!   over 1,000 commitments, its graph, and 78 signature checks; `client/r3_checks_t52`: 52
//!   signature checks on U3; `client/sign_twice`: its R0 and R2.5 signatures.
//!
//! Run with `cargo bench -p cohort-aggregation --bench protocol`; compare with `unmask` (server)
//! and `masking` (client).

use std::hint::black_box;
use std::time::Duration;

use cohort_aggregation::secagg::graph::NeighbourGraph;
use cohort_aggregation::secagg::identity::{
    IdentityDirectory, SigningKey, advertise_message, consistency_message, sign,
};
use cohort_aggregation::secagg::kdf;
use cohort_aggregation::secagg::shamir;
use cohort_protocol::ClientIndex;
use criterion::{Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const N: u32 = 1000;
const K: u32 = 78;
const T: usize = 52;

type Roster = Vec<(ClientIndex, [u8; 32])>;

fn setup() -> (Vec<SigningKey>, IdentityDirectory, Roster) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let keys: Vec<SigningKey> = (0..N)
        .map(|_| SigningKey::from_bytes(&rng.random()))
        .collect();
    let directory = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (ClientIndex(i as u32 + 1), k.verifying_key()))
        .collect();
    let roster = (1..=N)
        .map(|i| {
            (
                ClientIndex(i),
                kdf::key_commitment(&rng.random(), &rng.random()),
            )
        })
        .collect();
    (keys, directory, roster)
}

fn bench(c: &mut Criterion) {
    let (keys, directory, roster) = setup();
    let context = [3u8; 32];
    let signed: Vec<(Vec<u8>, [u8; 64])> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let m = advertise_message(
                &context,
                &directory.digest(),
                ClientIndex(i as u32 + 1),
                &[1; 32],
                &[2; 32],
            );
            let s = sign(k, &m);
            (m, s)
        })
        .collect();
    let mut group = c.benchmark_group("server");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("verify_1000_signatures", |b| {
        b.iter(|| {
            for (i, (m, s)) in signed.iter().enumerate() {
                directory
                    .verify(ClientIndex(i as u32 + 1), m, s)
                    .expect("valid");
            }
        })
    });
    group.bench_function("roster_and_graph_n1000", |b| {
        b.iter(|| {
            let digest = kdf::roster_digest(&context, black_box(&roster));
            let mut rng = ChaCha20Rng::from_seed(kdf::graph_seed(&digest));
            NeighbourGraph::harary(N, K, &mut rng).expect("graph")
        })
    });
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let xs: Vec<u32> = (1..=K + 1).collect();
    let shares = shamir::split(&[7u8; 32], T, &xs, &mut rng).expect("split");
    group.bench_function("reconstruct_1000", |b| {
        b.iter(|| {
            for _ in 0..1000 {
                shamir::reconstruct(&shares[..T], T).expect("reconstructs");
            }
        })
    });
    group.bench_function("reconstruct_1000_checked", |b| {
        b.iter(|| {
            for _ in 0..1000 {
                let a = shamir::reconstruct(&shares[..T], T).expect("reconstructs");
                let z = shamir::reconstruct(&shares[1..=T], T).expect("reconstructs");
                assert_eq!(*a, *z);
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("client");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("r1_checks_n1000_k78", |b| {
        b.iter(|| {
            let digest = kdf::roster_digest(&context, black_box(&roster));
            let mut rng = ChaCha20Rng::from_seed(kdf::graph_seed(&digest));
            let graph = NeighbourGraph::harary(N, K, &mut rng).expect("graph");
            for v in graph.neighbours(ClientIndex(1)) {
                let (m, s) = &signed[v.0 as usize - 1];
                directory.verify(v, m, s).expect("valid");
            }
        })
    });
    let u3: Vec<ClientIndex> = (1..=900).map(ClientIndex).collect();
    let digest = directory.digest();
    let message = consistency_message(&context, &digest, &u3);
    let sigs: Vec<[u8; 64]> = keys[..T].iter().map(|k| sign(k, &message)).collect();
    group.bench_function("r3_checks_t52", |b| {
        b.iter(|| {
            let message = consistency_message(&context, &digest, black_box(&u3));
            for (i, s) in sigs.iter().enumerate() {
                directory
                    .verify(ClientIndex(i as u32 + 1), &message, s)
                    .expect("valid");
            }
        })
    });
    group.bench_function("sign_twice", |b| {
        b.iter(|| {
            let a = sign(&keys[0], &signed[0].0);
            let z = sign(&keys[0], &message);
            black_box((a, z))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
