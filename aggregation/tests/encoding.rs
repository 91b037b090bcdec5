//! Fixed-point encoding: bit budget, known answers, unbiased rounding, overflow extremes, and a
//! property test of decode(Σ encode) against the clipped weighted mean.

use cohort_aggregation::encoding::{EncodingError, MIN_VALUE_BITS, Quantizer, vector_len};
use cohort_protocol::EncodingParams;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn quantizer(clip: f32, value_bits: u8, max_weight: u32) -> Quantizer {
    Quantizer::new(EncodingParams {
        clip,
        value_bits,
        max_weight,
        ring_bits: 32,
    })
    .unwrap()
}

/// Adds encoded vectors in the ring, as the unmasked SecAgg+ sum does.
fn wrapping_sum(vectors: &[Vec<u32>]) -> Vec<u32> {
    let mut sum = vec![0u32; vectors[0].len()];
    for v in vectors {
        for (s, x) in sum.iter_mut().zip(v) {
            *s = s.wrapping_add(*x);
        }
    }
    sum
}

#[test]
fn for_cohort_picks_the_largest_safe_value_bits() {
    // (max_clients, max_weight, value_bits), worked out by hand:
    // 1·1·(2^31 − 1) fits exactly;
    // 1024·(2^21 − 1) = 2^31 − 1024 fits, 1024·(2^22 − 1) does not;
    // 2147483647/1000 = 2147483.6, and 2^21 − 1 = 2097151 ≤ that < 2^22 − 1;
    // 2^20·(2^11 − 1) = 2^31 − 2^20 fits;
    // 2^24·(2^7 − 1) fits, the minimum of 8 bits.
    let cases = [
        (1, 1, 32),
        (2, 1, 31),
        (1024, 1, 22),
        (1000, 1, 22),
        (1025, 1, 21),
        (1024, 1024, 12),
        (1 << 16, 1 << 8, 8),
    ];
    for (n, w, bits) in cases {
        let q = Quantizer::for_cohort(n, 1.0, w).unwrap();
        assert_eq!(q.params().value_bits, bits, "n = {n}, max_weight = {w}");
        assert_eq!(q.params().max_weight, w);
        assert!(q.max_clients() >= n, "n = {n}: {}", q.max_clients());
    }
}

#[test]
fn for_cohort_value_bits_are_safe_and_maximal() {
    for n in [1u32, 3, 7, 64, 100, 999, 1000, 4096, 100_000] {
        for w in [1u32, 2, 10, 100, 1000] {
            let Ok(q) = Quantizer::for_cohort(n, 0.5, w) else {
                continue;
            };
            let b = u32::from(q.params().value_bits);
            let load = u128::from(n) * u128::from(w);
            let limit = i32::MAX as u128;
            assert!(
                load * ((1 << (b - 1)) - 1) <= limit,
                "n = {n}, w = {w}, b = {b}"
            );
            if b < 32 {
                assert!(
                    load * ((1 << b) - 1) > limit,
                    "n = {n}, w = {w}: b = {b} is not maximal"
                );
            }
        }
    }
}

#[test]
fn for_cohort_refuses_cohorts_that_leave_too_few_bits() {
    // 2^16·2^9·(2^7 − 1) > 2^31 − 1: only 7 bits would fit.
    assert_eq!(
        Quantizer::for_cohort(1 << 16, 1.0, 1 << 9),
        Err(EncodingError::CohortTooLarge {
            max_clients: 1 << 16,
            max_weight: 1 << 9,
            available: 7
        })
    );
    // n·w alone exceeds 2^31 − 1: not a single bit fits.
    let err = Quantizer::for_cohort(u32::MAX, 1.0, 2).unwrap_err();
    assert!(matches!(
        err,
        EncodingError::CohortTooLarge { available: 0, .. }
    ));
    assert!(err.to_string().contains("max_weight"), "{err}");
}

#[test]
fn invalid_parameters_are_refused() {
    for clip in [0.0, -1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        assert!(matches!(
            Quantizer::for_cohort(10, clip, 1),
            Err(EncodingError::BadClip(_))
        ));
    }
    assert_eq!(
        Quantizer::for_cohort(0, 1.0, 1),
        Err(EncodingError::ZeroMaxClients)
    );
    assert_eq!(
        Quantizer::for_cohort(10, 1.0, 0),
        Err(EncodingError::ZeroMaxWeight)
    );
    let params = |value_bits, max_weight| EncodingParams {
        clip: 1.0,
        value_bits,
        max_weight,
        ring_bits: 32,
    };
    assert_eq!(
        Quantizer::new(params(MIN_VALUE_BITS - 1, 1)),
        Err(EncodingError::BadValueBits(7))
    );
    assert_eq!(
        Quantizer::new(params(33, 1)),
        Err(EncodingError::BadValueBits(33))
    );
    assert_eq!(
        Quantizer::new(params(8, 0)),
        Err(EncodingError::ZeroMaxWeight)
    );
    // 2·(2^31 − 1) does not fit; 2·(2^30 − 1) does.
    assert_eq!(
        Quantizer::new(params(32, 2)),
        Err(EncodingError::SingleClientOverflow {
            value_bits: 32,
            max_weight: 2,
            ring_bits: 32
        })
    );
    assert_eq!(quantizer(1.0, 31, 2).max_clients(), 1);
    assert!(matches!(
        Quantizer::new(EncodingParams {
            clip: f32::NAN,
            value_bits: 16,
            max_weight: 1,
            ring_bits: 32,
        }),
        Err(EncodingError::BadClip(_))
    ));
}

#[test]
fn params_round_trip() {
    let q = Quantizer::for_cohort(100, 0.25, 50).unwrap();
    assert_eq!(Quantizer::new(q.params()).unwrap(), q);
    assert_eq!(q.params().clip, 0.25);
}

#[test]
fn known_answer_clip_one_eight_bits() {
    // clip 1, 8 bits: s = (2^7 − 1)/1 = 127. ±1, ±2 and ±∞ clip to ±127 units; 0 and −0 are 0.
    // Those are integers, so the rounding is deterministic. Weight 3 multiplies each.
    let q = quantizer(1.0, 8, 10);
    assert_eq!(q.scale(), 127.0);
    let update = [
        1.0,
        -1.0,
        0.0,
        -0.0,
        2.0,
        -2.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    let encoded = q.encode(&update, 3, &mut rng(1)).unwrap();
    let neg = (-381i32) as u32; // 4294966915
    assert_eq!(encoded, vec![381, neg, 0, 0, 381, neg, 381, neg, 3]);
    assert_eq!(encoded.len(), vector_len(update.len()));

    // A weight above max_weight is capped: 10·127 = 1270.
    let capped = q.encode(&[1.0, -0.0], 1000, &mut rng(1)).unwrap();
    assert_eq!(capped, vec![1270, 0, 10]);
}

#[test]
fn integer_values_encode_and_decode_exactly() {
    // clip = 2^7 − 1 gives s = 1: integers in range are exact levels.
    let q = quantizer(127.0, 8, 4);
    assert_eq!(q.scale(), 1.0);
    let a = q
        .encode(&[5.0, -3.0, 0.0, 126.0, -127.0], 2, &mut rng(2))
        .unwrap();
    assert_eq!(a, vec![10, (-6i32) as u32, 0, 252, (-254i32) as u32, 2]);
    // Two clients: (5, −3) with weight 1 and (−1, 9) with weight 3:
    // Σ = (5 − 3, −3 + 27) = (2, 24), Σw = 4, mean = (0.5, 6).
    let x1 = q.encode(&[5.0, -3.0], 1, &mut rng(3)).unwrap();
    let x2 = q.encode(&[-1.0, 9.0], 3, &mut rng(4)).unwrap();
    let sum = wrapping_sum(&[x1, x2]);
    assert_eq!(sum, vec![2, 24, 4]);
    let decoded = q.decode_sum(&sum).unwrap();
    assert_eq!(decoded.mean, vec![0.5, 6.0]);
    assert_eq!(decoded.total_weight, 4);
}

#[test]
fn stochastic_rounding_is_unbiased() {
    // s = 1, so 0.25 rounds to 1 with probability 1/4 and to 0 otherwise, and −2.75 to −3 with
    // probability 3/4 and to −2 otherwise. Over N draws the mean has standard deviation
    // √(p(1 − p)/N) = √(0.1875/200000) ≈ 0.00097; allow six of them.
    const N: usize = 200_000;
    let q = quantizer(127.0, 8, 1);
    for (x, low, high) in [(0.25f32, 0i32, 1i32), (-2.75, -3, -2), (100.5, 100, 101)] {
        let encoded = q.encode(&vec![x; N], 1, &mut rng(5)).unwrap();
        let levels: Vec<i32> = encoded[..N].iter().map(|&v| v as i32).collect();
        assert!(
            levels.iter().all(|&l| l == low || l == high),
            "{x} rounded outside {{{low}, {high}}}"
        );
        let mean = levels.iter().map(|&l| f64::from(l)).sum::<f64>() / N as f64;
        assert!(
            (mean - f64::from(x)).abs() < 6.0 * 0.000_97,
            "mean of rounded {x} is {mean}"
        );
    }
}

#[test]
fn encoding_is_reproducible_from_the_seed() {
    let q = Quantizer::for_cohort(100, 1.0, 10).unwrap();
    let update: Vec<f32> = (0..3000).map(|i| (i as f32 * 0.37).sin()).collect();
    let a = q.encode(&update, 7, &mut rng(9)).unwrap();
    let b = q.encode(&update, 7, &mut rng(9)).unwrap();
    let c = q.encode(&update, 7, &mut rng(10)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn nan_and_zero_weight_are_refused() {
    let q = quantizer(1.0, 16, 1);
    // The first NaN is named, also beyond the first rounding block.
    let mut update = vec![0.5f32; 5000];
    update[2500] = f32::NAN;
    update[4000] = f32::NAN;
    assert_eq!(
        q.encode(&update, 1, &mut rng(0)),
        Err(EncodingError::NotANumber { index: 2500 })
    );
    assert_eq!(
        q.encode(&[0.5], 0, &mut rng(0)),
        Err(EncodingError::ZeroWeight)
    );
}

#[test]
fn empty_update_carries_only_the_weight() {
    let q = quantizer(1.0, 16, 5);
    assert_eq!(q.encode(&[], 2, &mut rng(0)).unwrap(), vec![2]);
    let decoded = q.decode_sum(&[7]).unwrap();
    assert!(decoded.mean.is_empty());
    assert_eq!(decoded.total_weight, 7);
}

#[test]
fn cohort_extremes_do_not_wrap() {
    // max_clients clients, all at +clip (or −clip, or beyond) with max_weight: the sum is
    // ±n·w·(2^(b−1) − 1), the largest magnitude the bit budget allows, and decodes to ±clip.
    for (n, w, clip) in [
        (1024u32, 1u32, 1.0f32),
        (3, 1000, 0.5),
        (100, 7, 3.0),
        (1, 1, 2.0),
    ] {
        let q = Quantizer::for_cohort(n, clip, w).unwrap();
        let max_level = (1i64 << (q.params().value_bits - 1)) - 1;
        for sign in [1.0f32, -1.0] {
            let update = [sign * clip, sign * 10.0 * clip, sign * f32::INFINITY];
            let encoded: Vec<Vec<u32>> = (0..n)
                .map(|i| q.encode(&update, w, &mut rng(u64::from(i))).unwrap())
                .collect();
            let sum = wrapping_sum(&encoded);
            let expected_raw = i64::from(sign as i32) * i64::from(n) * i64::from(w) * max_level;
            for &v in &sum[..3] {
                assert_eq!(i64::from(v as i32), expected_raw, "n = {n}, w = {w}");
            }
            let decoded = q.decode_sum(&sum).unwrap();
            assert_eq!(decoded.total_weight, u64::from(n) * u64::from(w));
            for m in decoded.mean {
                assert!(
                    (m - sign * clip).abs() <= q.tolerance(),
                    "n = {n}, w = {w}: decoded {m}, want {}",
                    sign * clip
                );
            }
        }
    }
}

#[test]
fn the_1024_client_extreme_reaches_the_edge_of_the_ring() {
    // b = 22: 1024·(2^21 − 1) = 2^31 − 1024, within 1024 of i32::MAX.
    let q = Quantizer::for_cohort(1024, 1.0, 1).unwrap();
    let x = q.encode(&[1.0, -1.0], 1, &mut rng(0)).unwrap();
    let sum = wrapping_sum(&vec![x; 1024]);
    assert_eq!(sum[0] as i32, i32::MAX - 1023);
    assert_eq!(sum[1] as i32, -(i32::MAX - 1023));
    assert_eq!(q.decode_sum(&sum).unwrap().mean, vec![1.0, -1.0]);
}

#[test]
fn decode_refuses_unusable_sums() {
    let q = Quantizer::for_cohort(10, 1.0, 5).unwrap();
    assert_eq!(q.decode_sum(&[]), Err(EncodingError::EmptySum));
    assert_eq!(
        q.decode_sum(&[1, 2, 0]),
        Err(EncodingError::ZeroTotalWeight)
    );
    // b = 26 (50·(2^25 − 1) ≤ 2^31 − 1 < 50·(2^26 − 1)), so ⌊(2^31 − 1)/(5·(2^25 − 1))⌋ = 12
    // clients fit and the largest honest total weight is 60.
    assert_eq!(q.params().value_bits, 26);
    assert_eq!(q.max_clients(), 12);
    assert!(q.decode_sum(&[0, 60]).is_ok());
    assert_eq!(
        q.decode_sum(&[0, 61]),
        Err(EncodingError::TotalWeightTooLarge {
            total_weight: 61,
            capacity: 60
        })
    );
}

#[test]
fn tolerance_is_one_unit_plus_f32_rounding() {
    let q = quantizer(1.0, 8, 1);
    let want = 1.0 / 127.0 + f64::from(f32::EPSILON);
    assert!((f64::from(q.tolerance()) - want).abs() < 1e-9);
}

/// A coordinate: mostly in `[-3c, 3c]` (so clipping happens), sometimes exactly ±c or ±∞.
fn coordinate() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => -3.0f32..3.0,
        1 => Just(1.0f32),
        1 => Just(-1.0f32),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn decoded_sum_is_within_tolerance_of_the_clipped_weighted_mean(
        clients in prop::collection::vec(
            (1u32..2000, prop::collection::vec(coordinate(), 6)),
            1..24,
        ),
        spare_clients in 0u32..100,
        max_weight in 1u32..1000,
        clip in 0.01f32..100.0,
        seed in any::<u64>(),
    ) {
        let n = clients.len() as u32;
        let q = Quantizer::for_cohort(n + spare_clients, clip, max_weight).unwrap();
        let mut rng = rng(seed);
        let encoded: Vec<Vec<u32>> = clients
            .iter()
            .map(|(w, x)| {
                let scaled: Vec<f32> = x.iter().map(|v| v * clip).collect();
                q.encode(&scaled, *w, &mut rng).unwrap()
            })
            .collect();
        let decoded = q.decode_sum(&wrapping_sum(&encoded)).unwrap();

        let clip64 = f64::from(clip);
        let total: u64 = clients.iter().map(|(w, _)| u64::from((*w).min(max_weight))).sum();
        prop_assert_eq!(decoded.total_weight, total);
        for i in 0..6 {
            let weighted: f64 = clients
                .iter()
                .map(|(w, x)| {
                    let v = f64::from(x[i] * clip).clamp(-clip64, clip64);
                    f64::from((*w).min(max_weight)) * v
                })
                .sum();
            let want = weighted / total as f64;
            let got = f64::from(decoded.mean[i]);
            prop_assert!(
                (got - want).abs() <= f64::from(q.tolerance()),
                "coordinate {}: got {}, want {}, tolerance {}", i, got, want, q.tolerance()
            );
        }
    }
}

/// Issue 10 item 7: one client cannot bend Σw. Honest weights lie in 1..=max_weight, so the
/// total of |U3| inputs lies in [|U3|, |U3|·max_weight]; a client that sets its weight element
/// so that Σw = 1 (scaling the whole mean by |U3|) is caught.
#[test]
fn total_weight_outside_the_contributors_bounds_is_refused() {
    let q = Quantizer::for_cohort(10, 1.0, 5).unwrap();
    let honest: Vec<Vec<u32>> = (0..3)
        .map(|i| {
            q.encode(&[0.5, -0.25], 1 + i, &mut rng(u64::from(i)))
                .unwrap()
        })
        .collect();
    let sum = wrapping_sum(&honest);
    let decoded = q.decode_sum_of(&sum, 3).unwrap();
    assert_eq!(decoded, q.decode_sum(&sum).unwrap());
    assert_eq!(decoded.total_weight, 6);
    // A fourth client sends weight element 1 − 6 = −5 (mod 2^32): Σw = 1 < |U3| = 4.
    let mut bent = honest.clone();
    let mut liar = q.encode(&[1.0, 1.0], 1, &mut rng(9)).unwrap();
    *liar.last_mut().unwrap() = 1u32.wrapping_sub(6);
    bent.push(liar);
    let bent_sum = wrapping_sum(&bent);
    assert!(
        q.decode_sum(&bent_sum).is_ok(),
        "the unchecked decode accepts it"
    );
    assert_eq!(
        q.decode_sum_of(&bent_sum, 4),
        Err(EncodingError::TotalWeightOutOfBounds {
            total_weight: 1,
            contributors: 4,
            max: 20,
        })
    );
    // Above |U3|·max_weight: 3 contributors cannot carry 16.
    let mut heavy = sum.clone();
    *heavy.last_mut().unwrap() = 16;
    assert!(matches!(
        q.decode_sum_of(&heavy, 3),
        Err(EncodingError::TotalWeightOutOfBounds {
            total_weight: 16,
            ..
        })
    ));
    assert!(q.decode_sum_of(&[0, 15], 3).is_ok());
    assert!(q.decode_sum_of(&[0, 3], 3).is_ok());
    assert!(q.decode_sum_of(&[0, 2], 3).is_err());
    assert_eq!(q.decode_sum_of(&[], 3), Err(EncodingError::EmptySum));
}
