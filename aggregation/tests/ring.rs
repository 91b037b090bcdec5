//! Rounds in the ring of the bits the sum needs (issue 15 item 4): the round's
//! `EncodingParams::ring_bits` is r, clients pack their masked input at r bits, the server adds
//! the packed inputs mod 2^r and reads the unmasked sum in Z_{2^r}; it is exactly the sum of the
//! encodings, at the capacity the ring was sized for and with dropouts at every phase, and one
//! client more than the capacity is detected by the decoder instead of decoded.

mod harness;

use cohort_aggregation::encoding::{EncodingError, Quantizer};
use cohort_aggregation::ring::{self, RingError, packed_len};
use cohort_aggregation::secagg::prg::IMPLEMENTED_SUITES;
use cohort_protocol::{CipherSuite, ClientIndex, ClientMessage};
use harness::{DropPoint, Harness, Outcome, expected_sum, params_for};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

/// A round of `n` clients of weight `weight` whose updates are `updates[u]` (one value for all
/// `d` coordinates), with `q`'s encoding (and ring) and the given suite.
#[allow(clippy::too_many_arguments)]
fn run_round(
    q: &Quantizer,
    n: u32,
    d: usize,
    weight: u32,
    updates: &[f32],
    suite: CipherSuite,
    drops: &[(u32, DropPoint)],
    seed: u64,
) -> Outcome {
    let mut params = params_for(n, (d + 1) as u32);
    params.encoding = q.params();
    params.suite = suite;
    let mut h = Harness::new(params, seed);
    for o in &mut h.options {
        o.suites = IMPLEMENTED_SUITES.to_vec();
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    h.inputs = (0..n as usize)
        .map(|u| q.encode(&vec![updates[u]; d], weight, &mut rng).unwrap())
        .collect();
    for (u, p) in drops {
        h.drops.insert(ClientIndex(*u), *p);
    }
    h.run()
}

/// Every masked input on the wire is packed at r bits: ⌈r·m/8⌉ bytes, not 4·m.
fn assert_packed_at(out: &Outcome, r: u8, m: usize) {
    let mut seen = 0;
    for (_, msg) in &out.to_server {
        if let ClientMessage::MaskedInput(mi) = msg {
            assert_eq!(mi.vector.bits(), r);
            assert_eq!(mi.vector.len(), m);
            assert_eq!(mi.vector.as_bytes().len(), packed_len(m, r));
            seen += 1;
        }
    }
    assert!(seen > 0, "no masked input was sent");
}

/// The 32-bit sum of the contributors' encodings, as the decoder reads it.
fn expected(out: &Outcome, contributors: &[ClientIndex]) -> Vec<u32> {
    expected_sum(&out.inputs, contributors)
}

/// n at the capacity of r (n·w = 2^c exactly), every client at an extreme of the clip range:
/// the r-bit sum is exactly the 32-bit sum of the encodings and decodes to the exact mean, for
/// both mask PRGs.
#[test]
fn r_bit_sums_are_exact_at_the_capacity_of_r() {
    for suite in IMPLEMENTED_SUITES.iter().copied() {
        for (value_bits, n, weight) in [(12u8, 16u32, 1u32), (8, 8, 4), (10, 5, 1), (16, 32, 2)] {
            let q = Quantizer::for_ring(n, 1.0, value_bits, weight).unwrap();
            let r = q.ring_bits();
            assert_eq!(
                u32::from(r),
                u32::from(value_bits) + (u64::from(n * weight) - 1).ilog2() + 1
            );
            assert!(r < 32);
            assert!(q.max_clients() >= n);
            for pattern in ["all max", "all min", "mixed"] {
                let updates: Vec<f32> = (0..n)
                    .map(|u| match pattern {
                        "all max" => 1.0,
                        "all min" => -1.0,
                        _ => {
                            if u % 3 == 0 {
                                -1.0
                            } else {
                                1.0
                            }
                        }
                    })
                    .collect();
                let out = run_round(&q, n, 5, weight, &updates, suite, &[], u64::from(n));
                assert_packed_at(&out, r, 6);
                let all: Vec<ClientIndex> = (1..=n).map(ClientIndex).collect();
                let want = expected(&out, &all);
                let sum = out.result.expect("the round completes").sum;
                assert_eq!(sum, want, "{suite:?} b {value_bits} n {n} r {r} {pattern}");
                let decoded = q.decode_sum_of(&sum, n as usize).unwrap();
                let mean = updates.iter().sum::<f32>() / n as f32;
                for m in decoded.mean {
                    assert!((m - mean).abs() < 1e-6, "{m} vs {mean}");
                }
            }
        }
    }
}

/// One client more than the ring was sized for, all at the maximum: the values wrap in r bits
/// (they would not in 32), and the decoder refuses the sum (its total weight is beyond the
/// ring's capacity) instead of decoding a wrong mean.
#[test]
fn one_client_beyond_the_capacity_of_r_is_detected() {
    let (value_bits, n_cap) = (12u8, 16u32);
    let q = Quantizer::for_ring(n_cap, 1.0, value_bits, 1).unwrap();
    assert_eq!(q.ring_bits(), 16);
    assert_eq!(q.max_clients(), 16);
    let n = n_cap + 1;
    let out = run_round(
        &q,
        n,
        3,
        1,
        &vec![1.0; n as usize],
        CipherSuite::X25519HkdfSha256ChaCha20V1,
        &[],
        3,
    );
    let all: Vec<ClientIndex> = (1..=n).map(ClientIndex).collect();
    let true_sum = expected(&out, &all);
    // The true sum, 17 · 2047 = 34799, is beyond the signed 16-bit range (max 32767): read in
    // 16 bits it would decode as a negative mean.
    assert_eq!(true_sum[0], 34_799);
    let sum = out.result.expect("the round completes").sum;
    assert_eq!(sum[0] as i32, 34_799 - 65_536);
    assert_eq!(
        q.decode_sum_of(&sum, n as usize),
        Err(EncodingError::TotalWeightTooLarge {
            total_weight: 17,
            capacity: 16
        })
    );
    // The ring's own check says the same.
    let mut s = sum.clone();
    assert_eq!(
        ring::widen_checked(&mut s, 16, 16),
        Err(RingError::WeightAboveCapacity {
            total_weight: 17,
            weight_capacity: 16,
            bits: 16
        })
    );
    // One client fewer than 17 is within the capacity and exact.
    let out = run_round(
        &q,
        n_cap,
        3,
        1,
        &vec![1.0; n_cap as usize],
        CipherSuite::X25519HkdfSha256ChaCha20V1,
        &[],
        4,
    );
    let sum = out.result.expect("the round completes").sum;
    assert_eq!(sum[0], 16 * 2047);
    assert!(q.decode_sum_of(&sum, n_cap as usize).is_ok());
}

/// A ring the cohort cannot fit is refused when the encoding is sized.
#[test]
fn a_ring_above_32_bits_is_refused() {
    assert!(matches!(
        Quantizer::for_ring(1025, 1.0, 22, 1),
        Err(EncodingError::Ring(RingError::TooWide { needed: 33, .. }))
    ));
    assert_eq!(
        Quantizer::for_ring(1024, 1.0, 22, 1).unwrap().ring_bits(),
        32
    );
    assert_eq!(
        Quantizer::for_ring(1000, 1.0, 16, 1).unwrap().ring_bits(),
        26
    );
    assert_eq!(
        Quantizer::for_ring(200, 1.0, 16, 1).unwrap().ring_bits(),
        24
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    /// Randomized SecAgg+ rounds at r < 32 with dropouts at every phase: the sum is exactly
    /// the sum of the survivors' encodings, and it decodes.
    #[test]
    fn randomized_rounds_with_dropouts_sum_exactly_below_32_bits(
        n in 6u32..24,
        value_bits in 8u8..=20,
        weight in 1u32..=4,
        d in 1usize..40,
        aes in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let q = Quantizer::for_ring(n, 0.5, value_bits, weight).unwrap();
        let r = q.ring_bits();
        prop_assume!(r < 32);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let updates: Vec<f32> = (0..n).map(|_| rng.random_range(-0.7f32..0.7)).collect();
        let phases = [
            DropPoint::BeforeAdvertise,
            DropPoint::BeforeShareKeys,
            DropPoint::BeforeMaskedInput,
            DropPoint::BeforeUnmask,
        ];
        // At most one dropout: the finder's parameters tolerate 10% dropouts.
        let drops: Vec<(u32, DropPoint)> = if n >= 10 {
            vec![(rng.random_range(1..=n), phases[rng.random_range(0..phases.len())])]
        } else {
            vec![]
        };
        let suite = if aes {
            CipherSuite::X25519HkdfSha256Aes128CtrV1
        } else {
            CipherSuite::X25519HkdfSha256ChaCha20V1
        };
        let out = run_round(&q, n, d, weight, &updates, suite, &drops, seed);
        assert_packed_at(&out, r, d + 1);
        let result = out.result.clone().expect("the round completes");
        let want = expected(&out, &result.contributors);
        prop_assert_eq!(&result.sum, &want);
        let decoded = q.decode_sum_of(&result.sum, result.contributors.len()).unwrap();
        prop_assert_eq!(decoded.total_weight, u64::from(weight) * result.contributors.len() as u64);
    }
}
