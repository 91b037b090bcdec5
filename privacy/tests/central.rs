//! Central mode end to end: clients clip and encode with the aggregation crate's Quantizer
//! (weight 1), the ring sum is what SecAgg+ releases, the coordinator adds exact discrete
//! Gaussian noise. Fixed seeds; statistical bounds of six standard errors.

use cohort_aggregation::encoding::Quantizer;
use cohort_privacy::central::{
    AdaptiveClip, CentralError, CentralNoise, clip_bit_element, clip_to_norm,
    value_noise_multiplier,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn norm(x: &[f32]) -> f64 {
    x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn clipping_bounds_the_norm_and_keeps_the_direction() {
    let mut x = vec![3.0f32, 4.0, 0.0];
    let out = clip_to_norm(&mut x, 1.0).unwrap();
    assert_eq!(out.norm, 5.0);
    assert!(!out.below_clip);
    assert!(norm(&x) <= 1.0);
    assert!((norm(&x) - 1.0).abs() < 1e-6);
    assert!((x[0] / x[1] - 0.75).abs() < 1e-6);
    let mut y = vec![0.3f32, 0.4];
    let out = clip_to_norm(&mut y, 1.0).unwrap();
    assert!(out.below_clip && y == vec![0.3, 0.4]);
    // Exactly at the clip counts as within.
    let mut z = vec![0.6f32, 0.8];
    let exact = norm(&z);
    assert!(clip_to_norm(&mut z, exact).unwrap().below_clip);
    assert_eq!(
        clip_to_norm(&mut [1.0, f32::NAN], 1.0),
        Err(CentralError::NotFinite { index: 1 })
    );
    assert!(matches!(
        clip_to_norm(&mut [1.0], 0.0),
        Err(CentralError::BadParameter { name: "clip", .. })
    ));
    // Many random vectors: never above the clip after float rounding.
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for _ in 0..200 {
        let mut v: Vec<f32> = (0..257).map(|_| rng.random::<f32>() * 10.0 - 5.0).collect();
        clip_to_norm(&mut v, 0.37).unwrap();
        assert!(norm(&v) <= 0.37, "{}", norm(&v));
    }
}

/// Clients' clipped updates, quantised with weight 1 and summed in the ring; returns the ring
/// sum's value coordinates and the exact sum of the clipped updates.
fn central_round(
    quantizer: &Quantizer,
    clients: usize,
    dim: usize,
    clip: f64,
    rng: &mut ChaCha20Rng,
) -> (Vec<u32>, Vec<f64>) {
    let mut sum = vec![0u32; dim + 1];
    let mut exact = vec![0f64; dim];
    for _ in 0..clients {
        let mut u: Vec<f32> = (0..dim)
            .map(|_| (rng.random::<f32>() - 0.5) * 0.05)
            .collect();
        clip_to_norm(&mut u, clip).unwrap();
        for (e, &v) in exact.iter_mut().zip(&u) {
            *e += f64::from(v);
        }
        let encoded = quantizer.encode(&u, 1, rng).unwrap();
        for (s, x) in sum.iter_mut().zip(&encoded) {
            *s = s.wrapping_add(*x);
        }
    }
    sum.truncate(dim);
    (sum, exact)
}

fn residual_stats(noisy: &[f32], exact: &[f64]) -> (f64, f64) {
    let n = exact.len() as f64;
    let r: Vec<f64> = noisy
        .iter()
        .zip(exact)
        .map(|(&a, b)| f64::from(a) - b)
        .collect();
    let mean = r.iter().sum::<f64>() / n;
    let var = r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

#[test]
fn noisy_sum_has_the_planned_noise() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let (clients, dim, clip, z) = (100usize, 50_000usize, 1.0f64, 1.3f64);
    let quantizer = Quantizer::for_cohort(clients as u32, clip as f32, 1).unwrap();
    let noise = CentralNoise::new(z, quantizer.scale(), clip, dim, None).unwrap();
    assert_eq!(noise.coarsening(), 0);
    // Δ = s·c + √d, σ = z·Δ in grid units.
    let delta = quantizer.scale() * clip + (dim as f64).sqrt();
    assert!((noise.sensitivity() - delta).abs() < 1e-9 * delta);
    let (sum, exact) = central_round(&quantizer, clients, dim, clip, &mut rng);
    let noisy = noise.noisy_sum(&sum, &mut rng).unwrap();
    let (mean, var) = residual_stats(&noisy, &exact);
    let planned = noise.stddev().powi(2);
    assert!((noise.stddev() - z * delta / quantizer.scale()).abs() <= 1e-6 * noise.stddev());
    let se = (2.0 / dim as f64).sqrt();
    // Rounding adds at most clients/4 grid steps² per coordinate.
    let rounding = clients as f64 / 4.0 / quantizer.scale().powi(2);
    assert!(
        var >= planned * (1.0 - 6.0 * se) && var <= (planned + rounding) * (1.0 + 6.0 * se),
        "variance {var} vs {planned}"
    );
    assert!(mean.abs() <= 6.0 * (var / dim as f64).sqrt());
    assert!(matches!(
        noise.noisy_sum(&sum[1..], &mut rng),
        Err(CentralError::WrongLength { .. })
    ));
}

#[test]
fn small_cohorts_coarsen_the_grid_and_keep_the_noise_exact() {
    // Four clients: the Quantizer uses a fine grid (s·c near 2^28), beyond the exact sampler's
    // σ ≤ 2^25; the sum is floored to a coarser grid first.
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (clients, dim, clip, z) = (4usize, 20_000usize, 0.5f64, 2.0f64);
    let quantizer = Quantizer::for_cohort(clients as u32, clip as f32, 1).unwrap();
    let noise = CentralNoise::new(z, quantizer.scale(), clip, dim, None).unwrap();
    assert!(noise.coarsening() > 0);
    let k = 2f64.powi(noise.coarsening() as i32);
    let fine = quantizer.scale() * clip + (dim as f64).sqrt();
    assert!((noise.sensitivity() - (fine / k + (dim as f64).sqrt())).abs() < 1e-6);
    // The coarse grid costs almost nothing: the noise in update units is z·c to within 1%.
    assert!(noise.stddev() <= z * clip * 1.01, "{}", noise.stddev());
    let (sum, exact) = central_round(&quantizer, clients, dim, clip, &mut rng);
    let noisy = noise.noisy_sum(&sum, &mut rng).unwrap();
    let (_, var) = residual_stats(&noisy, &exact);
    let planned = noise.stddev().powi(2);
    let se = (2.0 / dim as f64).sqrt();
    // Flooring adds less than one coarse step (k/s) of error per coordinate.
    let floor_var = (k / quantizer.scale()).powi(2);
    assert!(
        var >= planned * (1.0 - 6.0 * se) && var <= (planned + floor_var) * (1.0 + 6.0 * se),
        "variance {var} vs {planned}"
    );
}

#[test]
fn value_noise_multiplier_follows_andrew_et_al() {
    // z = 1, σ_b = 5: (1 − 1/100)^(−1/2).
    let zv = value_noise_multiplier(1.0, 5.0).unwrap();
    assert!((zv - (0.99f64).powf(-0.5)).abs() < 1e-12);
    assert!(zv > 1.0);
    assert_eq!(
        value_noise_multiplier(2.0, 1.0),
        Err(CentralError::CountNoiseTooSmall {
            noise_multiplier: 2.0,
            count_stddev: 1.0
        })
    );
}

#[test]
fn adaptive_clip_tracks_the_target_quantile() {
    // 1,000 clients per round with update norms uniform in [0, 2] (median 1), start at 0.1,
    // γ = 0.5, η = 0.2, σ_b = 1000/20: the clip reaches the median within 10% in 300 rounds.
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let clients = 1000u32;
    let noise = CentralNoise::new(1.0, 1000.0, 1.0, 1, Some(f64::from(clients) / 20.0)).unwrap();
    let mut clip = AdaptiveClip::new(0.1, 0.5, 0.2).unwrap();
    for _ in 0..300 {
        let mut bit_sum = 0u32;
        for _ in 0..clients {
            let norm = rng.random::<f64>() * 2.0;
            bit_sum = bit_sum.wrapping_add(clip_bit_element(norm <= clip.clip()));
        }
        let fraction = noise
            .noisy_unclipped_fraction(bit_sum, clients, &mut rng)
            .unwrap();
        clip.update(fraction);
    }
    assert!((clip.clip() - 1.0).abs() < 0.1, "clip {}", clip.clip());
    // The bit count's noise: σ of the fraction is 2σ_b/(2·clients) = 0.05.
    let mut fractions = Vec::new();
    for _ in 0..2000 {
        // 700 within, 300 beyond: Σ(2b − 1) = 400.
        fractions.push(
            noise
                .noisy_unclipped_fraction(400, clients, &mut rng)
                .unwrap(),
        );
    }
    let m = fractions.iter().sum::<f64>() / 2000.0;
    let sd = (fractions.iter().map(|f| (f - m).powi(2)).sum::<f64>() / 1999.0).sqrt();
    assert!((m - 0.7).abs() < 6.0 * 0.05 / 2000f64.sqrt(), "mean {m}");
    assert!(
        (sd / 0.05 - 1.0).abs() < 6.0 * (0.5f64 / 2000.0).sqrt(),
        "sd {sd}"
    );
    assert_eq!(
        CentralNoise::new(1.0, 1000.0, 1.0, 1, None)
            .unwrap()
            .noisy_unclipped_fraction(0, 1, &mut rng),
        Err(CentralError::NoCountNoise)
    );
    assert_eq!(
        noise.noisy_unclipped_fraction(0, 0, &mut rng),
        Err(CentralError::NoContributors)
    );
}

#[test]
fn an_adaptive_clip_resumed_at_its_clip_continues_as_if_never_stopped() {
    // What a restarted coordinator does: a new clip from the task's settings, resumed at the
    // clip the last round left, takes the same path as the clip that was never stopped.
    let fractions = [0.1, 0.9, 0.35, 0.5, 1.2, -0.1];
    let mut running = AdaptiveClip::new(0.7, 0.5, 0.2).unwrap();
    for f in &fractions[..3] {
        running.update(*f);
    }
    let mut resumed = AdaptiveClip::new(0.7, 0.5, 0.2).unwrap();
    resumed.resume_at(running.clip()).unwrap();
    assert_eq!(resumed, running);
    for f in &fractions[3..] {
        running.update(*f);
        resumed.update(*f);
        assert_eq!(resumed.clip().to_bits(), running.clip().to_bits());
    }
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            resumed.resume_at(bad),
            Err(CentralError::BadParameter { name: "clip", .. })
        ));
    }
    assert_eq!(resumed, running, "a refused clip changes nothing");
}
