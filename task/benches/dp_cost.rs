//! A device's cost of distributed DP against its cost of masking, in one sitting, for the
//! rounds a distributed task really runs (issue 11's goal: rotation, rounding and noise at
//! d = 10⁶ at most 10% of the client's masking time).
//!
//! For `clients_per_round` n = 100 and n = 1,000 (a task of d = 10⁶ parameters, distributed
//! mode, z = 1, clip 1, default bits, the default SecAgg+ fractions and the consistency check),
//! the round is planned as the coordinator plans it (`RoundPlan::new` then
//! `TaskPrivacy::plan_round`): its ring of b bits, its vector of 2^20 + 1 coordinates and its
//! k neighbours. Then, interleaved so that every measurement sees the same load:
//!
//! - `rotate`, `round`, `noise`: the three steps the goal names
//!   (`RandomizedHadamard::rotate_scaled`, `rounding::conditional_round`,
//!   `DistributedEncoder::sample_noise`);
//! - `encode`: all of the device's DP encoding (`PrivacyCodec::encode`: the steps above, the
//!   norms, the wrap into Z_{2^b}, the weight element);
//! - `mask_chacha20`, `mask_aes128ctr`: the device's masking of that vector, as
//!   `ClientRound` does it (`apply_masks` with the self mask and the k pairwise masks, then
//!   `PackedVector::pack` at the ring's bits), for both mask PRGs (AES-128-CTR is negotiated
//!   when every member runs it on AES instructions).
//!
//! Each is timed in wall time and in the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, which
//! other processes on a shared machine inflate less); the medians and the ratios are printed.
//!
//! Run with `cargo bench -p cohort-task --bench dp_cost` (in a target dir of its own: see
//! docs/notes/privacy.md); `DP_COST_ITERS` sets the iterations (default 15).

use std::hint::black_box;
use std::time::{Duration, Instant};

use cohort_aggregation::secagg::prg::{
    MaskPrg, MaskSign, aes_accelerated, apply_masks, simd_backend,
};
use cohort_privacy::distributed::DistributedEncoder;
use cohort_privacy::rotation::RandomizedHadamard;
use cohort_privacy::rounding::conditional_round;
use cohort_protocol::PackedVector;
use cohort_task::RoundPlan;
use cohort_task::config::TaskConfig;
use cohort_task::privacy::{TaskPrivacy, rotation_seed};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const DIM: usize = 1_000_000;

fn task(clients: u32) -> TaskConfig {
    TaskConfig::from_toml(&format!(
        r#"
        id = "dp-cost"
        rounds = 100
        [model]
        input_shape = [8]
        num_classes = 2
        hidden = [4]
        [training]
        epochs = 1
        batch_size = 8
        learning_rate = 0.1
        [selection]
        clients_per_round = {clients}
        over_selection = 0.0
        [privacy]
        mode = "distributed"
        noise_multiplier = 1.0
        rounds = 100
        delta = 1e-6
        [privacy.clip]
        norm = 1.0
        "#
    ))
    .expect("the benchmark's task parses")
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Wall and CPU time of each run of one step.
#[derive(Default)]
struct Samples {
    wall: Vec<f64>,
    cpu: Vec<f64>,
}

impl Samples {
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let (w, c) = (Instant::now(), thread_cpu());
        let out = black_box(f());
        self.cpu.push((thread_cpu() - c).as_secs_f64() * 1e3);
        self.wall.push(w.elapsed().as_secs_f64() * 1e3);
        out
    }

    /// The median of the runs after the first (a warm-up).
    fn median(v: &[f64]) -> f64 {
        let mut v = v[1..].to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    fn wall(&self) -> f64 {
        Self::median(&self.wall)
    }

    fn cpu(&self) -> f64 {
        Self::median(&self.cpu)
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a name filter would be the last argument.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let iters: usize = std::env::var("DP_COST_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    println!(
        "chacha20 backend: {}; AES instructions: {}; {iters} iterations, medians",
        simd_backend(),
        aes_accelerated()
    );
    for clients in [100u32, 1000] {
        let name = format!("n={clients}");
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        run(clients, iters);
    }
}

fn run(clients: u32, iters: usize) {
    let t = task(clients);
    let plan = t.privacy_plan(DIM, None).expect("plans").expect("DP is on");
    let dp = plan.distributed.clone().expect("distributed mode");
    let privacy = TaskPrivacy::new(plan, DIM).expect("runs");
    let round = privacy
        .plan_round(RoundPlan::new(&t, clients, DIM).expect("a round plans"))
        .expect("with DP");
    let secagg = round.secagg.clone().expect("SecAgg+ is on");
    let ring_bits = round.ring_bits();
    let masks_count = secagg.neighbours.min(clients - 1) as usize + 1;
    println!(
        "\nn = {clients}: d = {DIM} padded to {}, b = {} bits (ring {ring_bits}), share σ {:.1}, \
         q_min {}, k = {}, t = {}: {masks_count} masks of {} words",
        dp.padded_dim,
        dp.bits,
        dp.local_variance.sigma(),
        dp.min_survivors,
        secagg.neighbours,
        secagg.threshold,
        secagg.vector_len,
    );
    let codec = privacy.codec(&round, rotation_seed("dp-cost", 1_000_000));
    let encoder = DistributedEncoder::new(dp.clone());
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    // Norm about 0.29, within the clip of 1.
    let update: Vec<f32> = (0..DIM)
        .map(|_| (rng.random::<f32>() - 0.5) * 0.001)
        .collect();
    let seed = rotation_seed("dp-cost", 1_000_000);
    let rotation = RandomizedHadamard::new(&seed, dp.padded_dim).expect("rotates");
    let mut rotated = Vec::new();
    rotation.rotate_scaled(&update, dp.scale, &mut rotated);
    let bound_sq = (dp.l2_bound * dp.l2_bound).floor() as u128;
    let mask_seeds: Vec<[u8; 32]> = (0..masks_count).map(|i| [i as u8 + 1; 32]).collect();
    let masks: Vec<(&[u8; 32], MaskSign)> = mask_seeds
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let sign = if i % 2 == 0 {
                MaskSign::Add
            } else {
                MaskSign::Subtract
            };
            (s, sign)
        })
        .collect();

    let mut rotate = Samples::default();
    let mut round_step = Samples::default();
    let mut noise = Samples::default();
    let mut encode = Samples::default();
    let mut chacha = Samples::default();
    let mut aes = Samples::default();
    let mut scratch_rotated = Vec::new();
    let mut scratch_rounded = vec![0i32; dp.padded_dim];
    // The first iteration warms up and is not counted (`Samples::median`).
    for _ in 0..=iters {
        rotate.time(|| rotation.rotate_scaled(&update, dp.scale, &mut scratch_rotated));
        round_step.time(|| {
            conditional_round(&rotated, bound_sq, &mut rng, &mut scratch_rounded).expect("rounds")
        });
        // The share is dropped outside the timing (its zeroing is not part of drawing it).
        let share = noise.time(|| encoder.sample_noise(&mut rng));
        drop(share);
        let encoded = encode.time(|| codec.encode(&update, &mut rng).expect("encodes"));
        assert_eq!(encoded.len(), secagg.vector_len as usize);
        for (prg, samples) in [
            (MaskPrg::ChaCha20, &mut chacha),
            (MaskPrg::Aes128Ctr, &mut aes),
        ] {
            let mut y = encoded.clone();
            samples.time(|| {
                apply_masks(prg, &mut y, &masks);
                PackedVector::pack(&y, ring_bits).expect("packs")
            });
        }
    }
    let three = (
        rotate.wall() + round_step.wall() + noise.wall(),
        rotate.cpu() + round_step.cpu() + noise.cpu(),
    );
    println!("{:<34}{:>10}{:>10}", "step", "wall ms", "CPU ms");
    for (what, s) in [
        ("rotate", &rotate),
        ("round", &round_step),
        ("noise", &noise),
        ("encode (all of PrivacyCodec::encode)", &encode),
        ("mask + pack, ChaCha20", &chacha),
        ("mask + pack, AES-128-CTR", &aes),
    ] {
        println!("{what:<34}{:>10.2}{:>10.2}", s.wall(), s.cpu());
    }
    println!(
        "{:<34}{:>10.2}{:>10.2}",
        "rotate + round + noise", three.0, three.1
    );
    for (what, s) in [("ChaCha20", &chacha), ("AES-128-CTR", &aes)] {
        println!(
            "ratio to masking with {what}: rotate + round + noise {:.1}% wall, {:.1}% CPU; \
             encode {:.1}% wall, {:.1}% CPU",
            100.0 * three.0 / s.wall(),
            100.0 * three.1 / s.cpu(),
            100.0 * encode.wall() / s.wall(),
            100.0 * encode.cpu() / s.cpu(),
        );
    }
}
