//! Rounds in the ring of the bits the sum needs (issue 15 item 4): clients mask mod 2^32 as
//! today and keep the low r bits, the wire carries r bits per coordinate (pack → unpack), and
//! the server's unmasked sum, read in Z_{2^r}, is exactly the sum of the encodings; at the
//! capacity the ring was sized for the extremes still fit, one client more is refused.

mod harness;

use cohort_aggregation::encoding::Quantizer;
use cohort_aggregation::ring::{RingError, pack, packed_len, ring_bits, unpack, widen_checked};
use cohort_protocol::{CipherSuite, ClientMessage, EncodingParams, RingVector};
use harness::{Harness, params_for};

/// A round of `n` clients of weight `weight` whose updates are `updates[u]` (one value for all
/// coordinates), in a ring of `r` bits with the given suite; returns the widened sum.
#[allow(clippy::too_many_arguments)]
fn run_round(
    q: &Quantizer,
    n: u32,
    d: usize,
    weight: u32,
    updates: &[f32],
    r: u8,
    capacity: u64,
    suite: CipherSuite,
) -> (Result<Vec<u32>, RingError>, Vec<u32>) {
    let mut params = params_for(n, (d + 1) as u32);
    params.encoding = q.params();
    params.suite = suite;
    let mut h = Harness::new(params, u64::from(n) + u64::from(r));
    for o in &mut h.options {
        o.suites = cohort_aggregation::secagg::prg::IMPLEMENTED_SUITES.to_vec();
    }
    let mut rng = rand::rng();
    h.inputs = (0..n as usize)
        .map(|u| q.encode(&vec![updates[u]; d], weight, &mut rng).unwrap())
        .collect();
    // What an r-bit wire does to a masked input: only its low r bits arrive.
    h.client_tamper = Some(Box::new(move |_, m| match m {
        ClientMessage::MaskedInput(mut mi) => {
            let bytes = pack(&mi.vector.0, r);
            assert_eq!(bytes.len(), packed_len(d + 1, r));
            mi.vector = RingVector(unpack(&bytes, r, d + 1).unwrap());
            vec![ClientMessage::MaskedInput(mi)]
        }
        other => vec![other],
    }));
    let out = h.run();
    let mut sum = out.result.expect("the round completes").sum;
    let expected = harness::expected_sum(
        &out.inputs,
        &(1..=n)
            .map(cohort_protocol::ClientIndex)
            .collect::<Vec<_>>(),
    );
    (widen_checked(&mut sum, r, capacity).map(|()| sum), expected)
}

/// n at the capacity of r (n·w = 2^c exactly), every client at an extreme of the clip range:
/// the r-bit sum is exactly the 32-bit sum of the encodings and decodes to the exact mean, for
/// both mask PRGs.
#[test]
fn r_bit_sums_are_exact_at_the_capacity_of_r() {
    for suite in [
        CipherSuite::X25519HkdfSha256ChaCha20V1,
        CipherSuite::X25519HkdfSha256Aes128CtrV1,
    ] {
        for (value_bits, n, weight) in [(12u8, 16u32, 1u32), (8, 8, 4), (10, 5, 1)] {
            let capacity = u64::from(n) * u64::from(weight);
            let r = ring_bits(value_bits, capacity).unwrap();
            let q = Quantizer::new(EncodingParams {
                clip: 1.0,
                value_bits,
                max_weight: weight,
            })
            .unwrap();
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
                let (sum, expected) = run_round(&q, n, 5, weight, &updates, r, capacity, suite);
                let sum = sum.unwrap();
                assert_eq!(
                    sum, expected,
                    "{suite:?} b {value_bits} n {n} r {r} {pattern}"
                );
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
/// (they would not in 32), and the total weight check refuses the sum instead of decoding it.
#[test]
fn one_client_beyond_the_capacity_of_r_is_refused() {
    let (value_bits, n_cap) = (12u8, 16u32);
    let capacity = u64::from(n_cap);
    let r = ring_bits(value_bits, capacity).unwrap();
    assert_eq!(r, 16);
    let q = Quantizer::new(EncodingParams {
        clip: 1.0,
        value_bits,
        max_weight: 1,
    })
    .unwrap();
    let n = n_cap + 1;
    let (sum, expected) = run_round(
        &q,
        n,
        3,
        1,
        &vec![1.0; n as usize],
        r,
        capacity,
        CipherSuite::X25519HkdfSha256ChaCha20V1,
    );
    assert_eq!(
        sum,
        Err(RingError::WeightAboveCapacity {
            total_weight: 17,
            weight_capacity: 16,
            bits: 16
        })
    );
    // The true sum, 17 · 2047 = 34799, is beyond the signed 16-bit range (max 32767): read in
    // 16 bits it would have decoded as a negative mean.
    assert_eq!(expected[0], 34_799);
    assert!(i64::from(expected[0]) > i64::from(i16::MAX));
}
