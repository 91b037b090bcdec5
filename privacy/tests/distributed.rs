//! The distributed-noise pipeline end to end: clients encode, a simulated SecAgg+ adds their
//! (masked) vectors in Z_{2^32}, the server decodes. Every random choice comes from a fixed seed;
//! statistical bounds are six standard errors of the estimator (a two-sided tail of 2·10⁻⁹),
//! never tuned to the seed.

use cohort_privacy::accountant::{Mechanism, RdpCurve, Sampling};
use cohort_privacy::distributed::{
    BitsShortfall, DistributedEncoder, DistributedError, DistributedParams, DistributedSettings,
    DistributedShape,
};
use cohort_privacy::rotation::{RandomizedHadamard, padded_len};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn random_update(rng: &mut ChaCha20Rng, dim: usize, scale: f32) -> Vec<f32> {
    (0..dim)
        .map(|_| (rng.random::<f32>() - 0.5) * scale)
        .collect()
}

fn clip(x: &[f32], c: f64) -> Vec<f64> {
    let norm = x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
    let factor = if norm > c { c / norm } else { 1.0 };
    x.iter().map(|&v| f64::from(v) * factor).collect()
}

/// Σ vectors in Z_{2^32}, each first masked by a random vector; the masks sum to zero, as
/// SecAgg+'s pairwise masks do, so only the sum survives.
fn masked_sum(vectors: &[Vec<u32>], rng: &mut ChaCha20Rng) -> Vec<u32> {
    let len = vectors[0].len();
    let mut masks: Vec<Vec<u32>> = (0..vectors.len() - 1)
        .map(|_| (0..len).map(|_| rng.random()).collect())
        .collect();
    let last: Vec<u32> = (0..len)
        .map(|i| 0u32.wrapping_sub(masks.iter().fold(0u32, |a, m| a.wrapping_add(m[i]))))
        .collect();
    masks.push(last);
    let mut sum = vec![0u32; len];
    for (v, m) in vectors.iter().zip(&masks) {
        for ((s, &x), &k) in sum.iter_mut().zip(v).zip(m) {
            *s = s.wrapping_add(x.wrapping_add(k));
        }
    }
    sum
}

fn params(
    dim: usize,
    clients: u32,
    min_survivors: u32,
    z: f64,
    bits: Option<u8>,
) -> DistributedParams {
    DistributedParams::derive(
        1.0,
        z,
        DistributedShape {
            dim,
            max_clients: clients,
            min_survivors,
        },
        DistributedSettings {
            bits,
            ..DistributedSettings::default()
        },
    )
    .unwrap()
}

#[test]
fn rotation_is_orthogonal_and_inverts() {
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    for dim in [1usize, 3, 100, 5000, 70_000] {
        let n = padded_len(dim).unwrap();
        let rot = RandomizedHadamard::new(&[7; 32], n).unwrap();
        let x = random_update(&mut rng, dim, 2.0);
        let mut y = Vec::new();
        rot.rotate_scaled(&x, 1.0, &mut y);
        assert_eq!(y.len(), n);
        let nx = x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
        let ny = y.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
        // f32 through log₂ n butterfly levels: relative error a few ulps per level.
        assert!((nx - ny).abs() <= 1e-5 * nx, "dim {dim}: {nx} vs {ny}");
        rot.unrotate(&mut y);
        for (i, (&a, &b)) in x.iter().zip(&y).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * (nx as f32) + 1e-6,
                "dim {dim} coord {i}"
            );
        }
        for &pad in &y[dim..] {
            assert!(pad.abs() <= 1e-5 * nx as f32);
        }
    }
    // Different seeds, different rotations; the same seed, the same one.
    let x = vec![1.0f32, 0.0, 0.0, 0.0];
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    RandomizedHadamard::new(&[1; 32], 4)
        .unwrap()
        .rotate_scaled(&x, 1.0, &mut a);
    RandomizedHadamard::new(&[1; 32], 4)
        .unwrap()
        .rotate_scaled(&x, 1.0, &mut b);
    RandomizedHadamard::new(&[2; 32], 4)
        .unwrap()
        .rotate_scaled(&x, 1.0, &mut c);
    assert_eq!(a, b);
    // A basis vector rotates to ±1/2 everywhere; only the signs depend on the seed.
    assert!(a.iter().all(|v| (v.abs() - 0.5).abs() < 1e-7));
    let mut signs_differ = false;
    for seed in 2..10u8 {
        RandomizedHadamard::new(&[seed; 32], 4)
            .unwrap()
            .rotate_scaled(&x, 1.0, &mut c);
        signs_differ |= c != a;
    }
    assert!(signs_differ);
}

#[test]
fn round_trip_without_noise_is_exact_within_quantisation_error() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let dim = 3000;
    let clients = 8u32;
    let p = params(dim, clients, 1, 1.0, Some(16));
    let enc = DistributedEncoder::new(p.clone());
    let seed = [42u8; 32];
    let updates: Vec<Vec<f32>> = (0..clients)
        .map(|i| random_update(&mut rng, dim, if i % 2 == 0 { 0.01 } else { 0.2 }))
        .collect();
    let encoded: Vec<Vec<u32>> = updates
        .iter()
        .map(|u| {
            enc.dangerous_encode_without_noise(u, &seed, &mut rng)
                .unwrap()
                .ring
        })
        .collect();
    let sum = masked_sum(&encoded, &mut rng);
    let decoded = enc.decode_sum(&sum, clients, &seed).unwrap();
    let mut want = vec![0f64; dim];
    for u in &updates {
        for (w, v) in want.iter_mut().zip(clip(u, 1.0)) {
            *w += v;
        }
    }
    // Each client's rounding error has L2 norm below √n grid steps, i.e. √n/s; the rotation
    // preserves norms; f32 adds a relative 1e-5 of the sum's norm.
    let err = decoded
        .iter()
        .zip(&want)
        .map(|(&a, b)| (f64::from(a) - b).powi(2))
        .sum::<f64>()
        .sqrt();
    let want_norm = want.iter().map(|v| v * v).sum::<f64>().sqrt();
    let bound = f64::from(clients) * (p.padded_dim as f64).sqrt() / p.scale + 1e-5 * want_norm;
    assert!(err <= bound, "error {err} > bound {bound}");
    // And the decoded sum is not trivially close: the inputs were clipped (half of them).
    assert!(want_norm > 1.0);
}

#[test]
fn noisy_sum_has_the_planned_variance_and_no_wraps() {
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let dim = 60_000;
    let clients = 20u32;
    let min_survivors = 16u32;
    let p = params(dim, clients, min_survivors, 0.8, None);
    let enc = DistributedEncoder::new(p.clone());
    let seed = [9u8; 32];
    // 18 survivors: between q_min and the cohort.
    let survivors = 18u32;
    let updates: Vec<Vec<f32>> = (0..survivors)
        .map(|_| random_update(&mut rng, dim, 0.02))
        .collect();
    let encoded: Vec<Vec<u32>> = updates
        .iter()
        .map(|u| enc.encode(u, &seed, &mut rng).unwrap().ring)
        .collect();
    let sum = masked_sum(&encoded, &mut rng);
    let decoded = enc.decode_sum(&sum, survivors, &seed).unwrap();
    let mut residual = decoded.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
    for u in &updates {
        for (r, v) in residual.iter_mut().zip(clip(u, 1.0)) {
            *r -= v;
        }
    }
    let n = residual.len() as f64;
    let mean = residual.iter().sum::<f64>() / n;
    let var = residual.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0);
    // Noise: 18 shares of σ², in update units; rounding adds at most 1/4 per share and step.
    let noise_var = p.noise_stddev(survivors).powi(2);
    let rounding_var = f64::from(survivors) * 0.25 / (p.scale * p.scale);
    let se_rel = (2.0 / n).sqrt();
    println!(
        "residual variance {var:e}, noise {noise_var:e}, rounding ≤ {rounding_var:e}, {} bits",
        p.bits
    );
    assert!(
        var >= noise_var * (1.0 - 6.0 * se_rel)
            && var <= (noise_var + rounding_var) * (1.0 + 6.0 * se_rel),
        "residual variance {var}, noise {noise_var}, rounding up to {rounding_var}"
    );
    assert!(mean.abs() <= 6.0 * (var / n).sqrt(), "mean {mean}");
    // No coordinate wrapped: a wrap moves it by 2^b/s, hundreds of standard deviations.
    let sd = var.sqrt();
    let worst = residual.iter().fold(0f64, |m, r| m.max(r.abs()));
    assert!(worst < 8.0 * sd, "largest residual {worst} vs sd {sd}");
    // The noise is what the plan says: z·Δ₂/s for q_min shares.
    let planned = p.noise_multiplier * p.l2_bound / p.scale;
    let q_min_sd = p.noise_stddev(min_survivors);
    assert!(q_min_sd >= planned && q_min_sd <= planned * (1.0 + 1e-8));
}

#[test]
fn noise_is_sized_for_q_min_and_accounts_like_the_gaussian() {
    let p = params(1_000_000, 1000, 900, 1.0, None);
    println!(
        "d = 10^6, 1000 clients, q_min 900, z = 1: {} bits, scale {:.1}, Δ₂ {:.1}, local σ {:.2}, inflation {:.4}",
        p.bits,
        p.scale,
        p.l2_bound,
        p.local_variance.sigma(),
        p.noise_inflation
    );
    // q_min shares reach exactly z·Δ₂ (rounded up).
    let total = 900.0 * p.local_variance.as_f64();
    let target = (p.noise_multiplier * p.l2_bound).powi(2);
    assert!(total >= target && total <= target * (1.0 + 1e-8));
    // The goal: no more than 16 bits at 1,000 clients and a million parameters.
    assert!(p.bits <= 16, "{} bits", p.bits);
    assert!(p.noise_inflation <= 1.05);
    // τ is negligible, so the accounting is the Gaussian's with z = 1.
    let mech = p.mechanism();
    assert!(mech.tau < 1e-13 && (mech.l2_scale - 1.0).abs() < 1e-8);
    let ddg = RdpCurve::per_round(Mechanism::DistributedGaussian(mech), Sampling::None)
        .unwrap()
        .epsilon_after(100, 1e-6)
        .unwrap()
        .epsilon;
    let gauss = RdpCurve::per_round(
        Mechanism::Gaussian {
            noise_multiplier: 1.0,
        },
        Sampling::None,
    )
    .unwrap()
    .epsilon_after(100, 1e-6)
    .unwrap()
    .epsilon;
    assert!((ddg - gauss).abs() <= 1e-6 * gauss, "{ddg} vs {gauss}");
}

#[test]
fn derived_bits_are_the_fewest_that_work() {
    let shape = DistributedShape {
        dim: 100_000,
        max_clients: 1000,
        min_survivors: 800,
    };
    let derived =
        DistributedParams::derive(0.5, 1.2, shape, DistributedSettings::default()).unwrap();
    let one_less = DistributedParams::derive(
        0.5,
        1.2,
        shape,
        DistributedSettings {
            bits: Some(derived.bits - 1),
            ..DistributedSettings::default()
        },
    );
    match one_less {
        Err(DistributedError::TooFewBits {
            bits,
            shortfall: BitsShortfall::NoiseInflation { inflation, .. },
            minimum,
        }) => {
            assert_eq!(bits, derived.bits - 1);
            assert_eq!(minimum, Some(derived.bits));
            assert!(inflation > 1.05);
        }
        other => panic!("{other:?}"),
    }
    // More bits: less inflation.
    let more = DistributedParams::derive(
        0.5,
        1.2,
        shape,
        DistributedSettings {
            bits: Some(derived.bits + 4),
            ..DistributedSettings::default()
        },
    )
    .unwrap();
    assert!(more.noise_inflation < derived.noise_inflation);
    assert!(more.scale > derived.scale);
}

#[test]
fn bits_too_few_for_the_cohort_are_refused_with_the_reason() {
    let shape = DistributedShape {
        dim: 1000,
        max_clients: 100_000,
        min_survivors: 90_000,
    };
    // 8 bits: 2^(2b) = 65,536 ≤ m·k² = 1,600,000.
    let err = DistributedParams::derive(
        1.0,
        1.0,
        shape,
        DistributedSettings {
            bits: Some(8),
            ..DistributedSettings::default()
        },
    )
    .unwrap_err();
    // One client and 32 bits: the grid is so fine that a share's variance leaves the exact
    // sampler's range; that is too many bits, not too few.
    let too_fine = DistributedParams::derive(
        1.0,
        1.0,
        DistributedShape {
            dim: 64,
            max_clients: 1,
            min_survivors: 1,
        },
        DistributedSettings {
            bits: Some(32),
            ..DistributedSettings::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            too_fine,
            DistributedError::TooManyBits {
                bits: 32,
                maximum: Some(_),
                ..
            }
        ),
        "{too_fine:?}"
    );
    assert!(
        matches!(
            err,
            DistributedError::TooFewBits {
                bits: 8,
                shortfall: BitsShortfall::RingTooSmall { .. },
                minimum: Some(_)
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("use at least"), "{text}");
    assert!(matches!(
        DistributedParams::derive(
            1.0,
            1.0,
            shape,
            DistributedSettings {
                bits: Some(40),
                ..DistributedSettings::default()
            }
        ),
        Err(DistributedError::BadParameter { name: "bits", .. })
    ));
}

#[test]
fn bad_updates_and_sums_are_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let p = params(10, 5, 3, 1.0, None);
    let enc = DistributedEncoder::new(p.clone());
    let seed = [0u8; 32];
    assert!(matches!(
        enc.encode(&[0.0; 9], &seed, &mut rng),
        Err(DistributedError::WrongLength {
            expected: 10,
            got: 9
        })
    ));
    let mut bad = vec![0.0f32; 10];
    bad[4] = f32::INFINITY;
    assert_eq!(
        enc.encode(&bad, &seed, &mut rng),
        Err(DistributedError::NotFinite { index: 4 })
    );
    bad[4] = f32::NAN;
    assert_eq!(
        enc.encode(&bad, &seed, &mut rng),
        Err(DistributedError::NotFinite { index: 4 })
    );
    let sum = vec![0u32; p.padded_dim];
    assert!(matches!(
        enc.decode_sum(&sum, 2, &seed),
        Err(DistributedError::SurvivorsOutOfRange {
            survivors: 2,
            min: 3,
            max: 5
        })
    ));
    assert!(matches!(
        enc.decode_sum(&sum, 6, &seed),
        Err(DistributedError::SurvivorsOutOfRange { .. })
    ));
    assert!(matches!(
        enc.decode_sum(&sum[1..], 3, &seed),
        Err(DistributedError::WrongLength { .. })
    ));
    // Huge and tiny inputs encode (clipping handles the first) and stay in the ring.
    let huge = vec![f32::MAX / 4.0; 10];
    let e = enc.encode(&huge, &seed, &mut rng).unwrap();
    assert!(e.clipped);
    let mask = if p.bits == 32 {
        u32::MAX
    } else {
        (1 << p.bits) - 1
    };
    assert!(e.ring.iter().all(|&v| v & !mask == 0));
    let e = enc.encode(&[0.0; 10], &seed, &mut rng).unwrap();
    assert!(!e.clipped && e.norm == 0.0);
}

#[test]
fn clients_wrap_but_the_sum_decodes() {
    // The 32-bit ring: individual ring elements use the whole range (negative values wrap to
    // the top), the decode recentres. (A cohort of 1,000 keeps the 32-bit grid coarse enough
    // for the sampler; q_min = 1 lets one client's vector be decoded.)
    let mut rng = ChaCha20Rng::seed_from_u64(14);
    let p = params(64, 1000, 1, 1.0, Some(32));
    assert_eq!(p.bits, 32);
    let enc = DistributedEncoder::new(p.clone());
    let seed = [5u8; 32];
    let x: Vec<f32> = (0..64)
        .map(|i| if i % 2 == 0 { -0.1 } else { 0.1 })
        .collect();
    let e = enc
        .dangerous_encode_without_noise(&x, &seed, &mut rng)
        .unwrap();
    assert!(
        e.ring.iter().any(|&v| v > 1 << 31),
        "some coordinates are negative"
    );
    let decoded = enc.decode_sum(&e.ring, 1, &seed).unwrap();
    for (a, b) in decoded.iter().zip(&x) {
        assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
    }
}

#[test]
fn noise_drawn_ahead_gives_the_same_encoding_and_only_fits_its_encoder() {
    let p = params(500, 10, 8, 1.0, None);
    let enc = DistributedEncoder::new(p.clone());
    let seed = [3u8; 32];
    let update: Vec<f32> = (0..500).map(|i| (i as f32).sin() * 0.01).collect();
    // `encode` is `sample_noise` then `encode_with_noise`, drawing from the RNG in that order.
    let mut a = ChaCha20Rng::seed_from_u64(15);
    let mut b = ChaCha20Rng::seed_from_u64(15);
    let direct = enc.encode(&update, &seed, &mut a).unwrap();
    let share = enc.sample_noise(&mut b);
    assert!(
        !format!("{share:?}").contains('['),
        "the noise is never printed"
    );
    let ahead = enc
        .encode_with_noise(&update, &seed, share, &mut b)
        .unwrap();
    assert_eq!(direct, ahead);
    // The noise is there: the encoding differs from the noiseless one in most coordinates.
    let mut c = ChaCha20Rng::seed_from_u64(16);
    let bare = enc
        .dangerous_encode_without_noise(&update, &seed, &mut c)
        .unwrap();
    let differing = bare
        .ring
        .iter()
        .zip(&direct.ring)
        .filter(|(x, y)| x != y)
        .count();
    assert!(
        differing > p.padded_dim * 9 / 10,
        "{differing} of {}",
        p.padded_dim
    );
    // A share for other parameters is refused.
    let other = DistributedEncoder::new(params(500, 10, 8, 2.0, None));
    let foreign = other.sample_noise(&mut c);
    assert_eq!(
        enc.encode_with_noise(&update, &seed, foreign, &mut c),
        Err(DistributedError::ForeignNoise)
    );
}
