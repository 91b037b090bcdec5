//! A DP round end to end without the network: devices encode with the task's codec, the
//! SecAgg+ sum (here added directly, then read in the round's ring of r bits as the unmasked
//! sum is) is released by the server, and the released mean is the clipped updates' mean plus
//! noise of the planned size.

mod support;

use support::task;

use cohort_task::RoundPlan;
use cohort_task::config::TaskConfig;
use cohort_task::privacy::{PrivacyRoundError, TaskPrivacy, rotation_seed};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// Runs one round of `n` contributors whose updates are all `update`; returns the release's
/// mean, its planned noise and the mean error.
fn round(t: &TaskConfig, n: u32, update: &[f32]) -> (Vec<f32>, f64, TaskPrivacy) {
    let dim = update.len();
    let plan = t.privacy_plan(dim, Some(10_000)).unwrap().unwrap();
    let mut privacy = TaskPrivacy::new(plan, dim).unwrap();
    let round = privacy
        .plan_round(RoundPlan::new(t, 50, dim).unwrap())
        .unwrap();
    let r = round.ring_bits();
    assert_eq!(round.secagg.as_ref().unwrap().encoding.ring_bits, r);
    match privacy.distributed_bits() {
        // Distributed mode's ring is its own Z_{2^b} (the 50 contributors fit in b bits).
        Some(b) => assert_eq!(r, b),
        // Central mode: 16 value bits + ⌈log2 50⌉.
        None => assert_eq!(r, 22),
    }
    let codec = privacy.codec(&round, rotation_seed("dp", 1_000_000));
    let len = round.secagg.as_ref().unwrap().vector_len as usize;
    let mut sum = vec![0u32; len];
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    for _ in 0..n {
        let e = codec.encode(update, &mut rng).unwrap();
        assert_eq!(e.len(), len);
        for (s, x) in sum.iter_mut().zip(e) {
            *s = s.wrapping_add(x);
        }
    }
    // The unmasked sum as the server reads it: mod 2^r, widened.
    cohort_aggregation::ring::widen(&mut sum, r);
    // A wrong count of contributors is refused (the weight element counts them).
    assert!(matches!(
        privacy.release(&codec, &sum, n - 1, &mut rng),
        Err(PrivacyRoundError::WeightMismatch { .. })
    ));
    let release = privacy.release(&codec, &sum, n, &mut rng).unwrap();
    (release.mean, release.noise_stddev, privacy)
}

fn check_mean(mean: &[f32], expected: &[f32], stddev: f64) {
    assert_eq!(mean.len(), expected.len());
    for (m, e) in mean.iter().zip(expected) {
        // 6σ per coordinate, plus the encoding's rounding.
        assert!(
            (f64::from(m - e)).abs() <= 6.0 * stddev + 1e-3,
            "{m} vs {e} (σ {stddev})"
        );
    }
}

#[test]
fn central_rounds_release_the_clipped_mean_with_noise() {
    let t = task(
        "[privacy]\nmode = \"central\"\nnoise_multiplier = 1.0\nrounds = 10\ndelta = 1e-6\n\
         [privacy.clip]\nnorm = 1.0\n",
    );
    let dim = t.model_spec(None).unwrap().num_parameters().unwrap();
    // Norm 2 clipped to 1: every coordinate halves.
    let update: Vec<f32> = (0..dim)
        .map(|i| if i % 2 == 0 { 0.1 } else { -0.1 })
        .collect();
    let norm = (update.iter().map(|x| x * x).sum::<f32>()).sqrt();
    let clipped: Vec<f32> = update.iter().map(|x| x / norm).collect();
    let (mean, sd, _) = round(&t, 45, &update);
    // z·c / n: the noise of the mean.
    assert!((sd - 1.0 / 45.0).abs() < 0.01 / 45.0 + 1e-3, "{sd}");
    check_mean(&mean, &clipped, sd);
}

#[test]
fn adaptive_clipping_moves_the_clip_towards_the_quantile() {
    let t = task(
        "[privacy]\nmode = \"central\"\nnoise_multiplier = 1.0\nrounds = 10\ndelta = 1e-6\n\
         [privacy.clip]\nnorm = 1.0\nmode = \"adaptive\"\ncount_stddev = 1.0\n",
    );
    let dim = t.model_spec(None).unwrap().num_parameters().unwrap();
    // Every update is far within the clip: the noisy fraction is near 1, so the clip shrinks.
    let update = vec![0.001f32; dim];
    let (mean, sd, privacy) = round(&t, 45, &update);
    check_mean(&mean, &update, sd);
    assert!(privacy.round_clip() < 0.95, "{}", privacy.round_clip());
}

#[test]
fn distributed_rounds_decode_the_sum_of_noisy_shares() {
    let t = task(
        "[privacy]\nmode = \"distributed\"\nnoise_multiplier = 1.0\nrounds = 10\n\
         delta = 1e-6\n[privacy.clip]\nnorm = 1.0\n[privacy.distributed]\nbits = 20\n",
    );
    let dim = t.model_spec(None).unwrap().num_parameters().unwrap();
    let update: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.37).sin() * 0.05).collect();
    let (mean, sd, _) = round(&t, 45, &update);
    check_mean(&mean, &update, sd);
    // Fewer survivors than q_min would release too little noise: refused.
    let plan = t.privacy_plan(dim, None).unwrap().unwrap();
    assert_eq!(plan.distributed.unwrap().min_survivors, 41);
}
