//! The R2.5 consistency check in the simulator: every member has an identity key and the
//! directory of the attempt's members, the round runs with the check on (the default) and off,
//! members drop out at every phase including R2.5, and the released sum is exactly the sum of
//! the inputs of the members that sent one.

use cohort_aggregation::secagg::SigningKey;
use cohort_protocol::{ClientIndex, ContentHash, RoundId};
use cohort_sim::attempt::{AttemptOutcome, Member, PreparedUpdate};
use cohort_sim::cohort::{DropPhase, Fate};
use cohort_sim::config::Experiment;
use cohort_sim::engine::identity_key;
use cohort_sim::network::DeviceProfile;
use cohort_sim::run::{RunOutput, run_with_trainer};
use cohort_sim::secure_round::SecureAttempt;
use cohort_sim::{Eval, LocalTrainer, TrainError, TrainOutput};
use cohort_task::{RoundPlan, TaskConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn task(clients: u32, dropout: f64, check: bool) -> TaskConfig {
    TaskConfig::from_toml(&format!(
        r#"
        id = "t"
        rounds = 1
        [model]
        input_shape = [4]
        num_classes = 2
        layers = [{{ type = "linear", out = 2 }}]
        [training]
        epochs = 1
        batch_size = 8
        learning_rate = 0.1
        [selection]
        clients_per_round = {clients}
        over_selection = 0.0
        [secagg]
        dropout_fraction = {dropout}
        consistency_check = {check}
        "#
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The fates of a cohort of `n`: `drops[p]` members die at phase `p` (in [`DropPhase::ALL`]
/// order), the first of every phase closing its connection and the others crashing silently.
fn fates(n: usize, drops: [usize; 5]) -> Vec<Fate> {
    let mut out = Vec::with_capacity(n);
    for (phase, &count) in DropPhase::ALL.iter().zip(&drops) {
        for i in 0..count {
            out.push(Fate {
                drop_at: Some(*phase),
                disconnect: i == 0,
            });
        }
    }
    out.resize(
        n,
        Fate {
            drop_at: None,
            disconnect: false,
        },
    );
    out
}

struct Attempted {
    outcome: AttemptOutcome,
    /// The members' encoded inputs, by cohort position.
    inputs: Vec<Vec<u32>>,
    fates: Vec<Fate>,
}

/// Runs one SecAgg+ attempt of `plan` with the given fates and random inputs.
fn attempt(plan: &RoundPlan, fates: Vec<Fate>, seed: u64) -> Attempted {
    let params = plan.secagg.as_ref().expect("a SecAgg+ plan");
    let n = params.num_clients as usize;
    assert_eq!(fates.len(), n);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let laptop = DeviceProfile::named("laptop").expect("a built-in profile");
    let inputs: Vec<Vec<u32>> = (0..n)
        .map(|_| (0..params.vector_len).map(|_| rng.random()).collect())
        .collect();
    let members: Vec<Member> = fates
        .iter()
        .zip(&inputs)
        .map(|(fate, input)| Member {
            profile: laptop,
            fate: *fate,
            update: fate.uploads().then(|| PreparedUpdate {
                encoded: input.clone(),
                plain: Vec::new(),
                weight: 1,
                examples: 10,
                loss: 0.5,
            }),
            training_s: 1.0 + rng.random::<f64>(),
        })
        .collect();
    let outcome = SecureAttempt {
        round_id: RoundId(seed),
        plan,
        model: ContentHash::of(b"model"),
        num_params: params.vector_len as usize - 1,
        server_seed: [seed as u8; 32],
        client_seeds: (0..n).map(|p| [p as u8 ^ 0xa5; 32]).collect(),
        identities: (0..n).map(|p| identity_key(seed, p)).collect(),
        adversarial: 0.05,
        dropout: 0.3,
        threads: 2,
    }
    .run(&members);
    Attempted {
        outcome,
        inputs,
        fates,
    }
}

/// The members that sent their masked input (no drop before or at R2), as indices.
fn uploaders(fates: &[Fate]) -> Vec<ClientIndex> {
    fates
        .iter()
        .enumerate()
        .filter(|(_, f)| f.uploads())
        .map(|(p, _)| ClientIndex(p as u32 + 1))
        .collect()
}

/// Σ inputs of `who`, read in the round's ring of `r` bits (mod 2^r, widened as the unmasked
/// sum is).
fn wrapping_sum(inputs: &[Vec<u32>], who: &[ClientIndex], r: u8) -> Vec<u32> {
    let mut sum = vec![0u32; inputs[0].len()];
    for c in who {
        for (s, x) in sum.iter_mut().zip(&inputs[c.0 as usize - 1]) {
            *s = s.wrapping_add(*x);
        }
    }
    cohort_aggregation::ring::widen(&mut sum, r);
    sum
}

/// With the check on, members dropping at R0, R1, R2, R2.5 and R3 (each by disconnecting and
/// by crashing silently): the sum is exactly the inputs of the members that sent one, R2.5
/// and R3 dropouts included, and every dropout is counted at its phase.
#[test]
fn dropouts_at_every_phase_with_the_check_give_the_exact_sum() {
    let t = task(30, 0.3, true);
    let plan = RoundPlan::new(&t, 30, 7).unwrap();
    let params = plan.secagg.as_ref().unwrap();
    assert!(params.consistency_check);
    let drops = [2, 2, 2, 2, 1];
    // The round can complete: q_min inputs arrive and t members answer R3.
    let u3 = 30 - drops[0] - drops[1] - drops[2];
    assert!(u3 as u32 >= params.min_survivors);
    assert!((u3 - drops[3] - drops[4]) as u32 >= params.threshold);
    for seed in [1u64, 2, 3] {
        let a = attempt(&plan, fates(30, drops), seed);
        let o = &a.outcome;
        let sum = o
            .sum
            .as_ref()
            .unwrap_or_else(|| panic!("seed {seed}: aborted: {:?}", o.abort_reason));
        let expected = uploaders(&a.fates);
        assert_eq!(expected.len(), u3);
        assert_eq!(sum.contributors, expected, "seed {seed}");
        assert_eq!(
            sum.sum,
            wrapping_sum(&a.inputs, &sum.contributors, plan.ring_bits()),
            "seed {seed}"
        );
        assert_eq!(o.dropouts, drops, "seed {seed}: dropouts by phase");
        assert_eq!(o.participants, u3);
        assert_eq!(
            o.removed, 0,
            "seed {seed}: no member's signature was refused"
        );
    }
}

/// With the check off there is no R2.5: members fated to drop there finish the round, and the
/// other dropouts behave as with the check; the sum is still exact.
#[test]
fn without_the_check_the_round_has_no_r2_5_and_the_sum_is_exact() {
    let t = task(30, 0.3, false);
    let plan = RoundPlan::new(&t, 30, 7).unwrap();
    assert!(!plan.secagg.as_ref().unwrap().consistency_check);
    let a = attempt(&plan, fates(30, [2, 2, 2, 2, 1]), 4);
    let o = &a.outcome;
    let sum = o.sum.as_ref().expect("the round completes");
    assert_eq!(sum.contributors, uploaders(&a.fates));
    assert_eq!(
        sum.sum,
        wrapping_sum(&a.inputs, &sum.contributors, plan.ring_bits())
    );
    assert_eq!(o.dropouts, [2, 2, 2, 0, 1]);
}

/// With the check, a round whose R2.5 dropouts leave fewer than t signers releases nothing
/// (a client reveals nothing in R3 without t signatures on the survivor set).
#[test]
fn too_many_r2_5_dropouts_abort_the_round() {
    let t = task(12, 0.3, true);
    let plan = RoundPlan::new(&t, 12, 7).unwrap();
    let params = plan.secagg.as_ref().unwrap();
    let signers = params.threshold as usize - 1;
    assert!(12 - signers >= 1);
    let a = attempt(&plan, fates(12, [0, 0, 0, 12 - signers, 0]), 5);
    assert!(
        a.outcome.sum.is_none(),
        "released a sum with {signers} signers"
    );
    assert!(a.outcome.abort_reason.is_some());
}

/// Identity keys come from each client's own stream: reproducible, one per client, the same
/// in every round.
#[test]
fn identity_keys_are_per_client_and_reproducible() {
    let a: Vec<SigningKey> = (0..50).map(|c| identity_key(7, c)).collect();
    let b: Vec<SigningKey> = (0..50).map(|c| identity_key(7, c)).collect();
    assert_eq!(
        a.iter().map(|k| k.to_bytes()).collect::<Vec<_>>(),
        b.iter().map(|k| k.to_bytes()).collect::<Vec<_>>()
    );
    let distinct: std::collections::BTreeSet<[u8; 32]> =
        a.iter().map(|k| k.verifying_key().to_bytes()).collect();
    assert_eq!(distinct.len(), 50);
    assert_ne!(identity_key(8, 0).to_bytes(), a[0].to_bytes());
}

// ---- Whole runs through the engine ----

const DIM: usize = 6;

/// One gradient step of ½‖w − t_c‖² towards a per-client target (as in `tests/engine.rs`).
struct LeastSquares;

impl LocalTrainer for LeastSquares {
    fn num_params(&self) -> usize {
        DIM
    }
    fn init(&self, seed: u64) -> Vec<f32> {
        (0..DIM)
            .map(|k| ((seed as f32 + k as f32) * 0.7).cos() * 0.1)
            .collect()
    }
    fn train(
        &self,
        _client: usize,
        indices: &[usize],
        global: &[f32],
        _seed: u64,
    ) -> Result<TrainOutput, TrainError> {
        let m = indices.iter().sum::<usize>() as f32 / indices.len().max(1) as f32;
        Ok(TrainOutput {
            delta: (0..DIM)
                .map(|k| 0.5 * (((m * 0.01 + k as f32) * 0.37).sin() * 0.5 - global[k]))
                .collect(),
            examples: indices.len(),
            loss: 0.1,
        })
    }
    fn evaluate(&self, global: &[f32]) -> Result<Eval, TrainError> {
        let d: f32 = global.iter().map(|w| w * w).sum();
        Ok(Eval {
            accuracy: 1.0 / (1.0 + d),
            loss: d,
        })
    }
}

fn experiment(extra: &str) -> Experiment {
    let text = format!(
        r#"
id = "fake"
rounds = 3
evaluate_every = 1
[run]
seed = 11
[population]
num_clients = 60
[selection]
clients_per_round = 20
over_selection = 0.0
{extra}
[data]
dataset = "digits"
partition = {{ kind = "iid" }}
[model]
hidden = []
[training]
epochs = 1
batch_size = 10
learning_rate = 0.1
[network.profiles]
datacenter = 1.0
laptop = 1.0
"#
    );
    Experiment::from_toml(&text).unwrap_or_else(|e| panic!("{e}"))
}

fn run(exp: &Experiment) -> RunOutput {
    let parts = (0..exp.population.num_clients as usize)
        .map(|c| (0..(5 + c % 7)).map(|i| c * 20 + i).collect())
        .collect();
    run_with_trainer(exp, &LeastSquares, parts, "test", false).unwrap_or_else(|e| panic!("{e}"))
}

const EVERY_PHASE: &str = "[secagg]\ndropout_fraction = 0.35\nclip = 2.0\n[availability]\n\
    dropout = { advertise_keys = 0.04, share_keys = 0.04, masked_input = 0.04, \
    consistency_check = 0.04, unmask = 0.04 }";

/// One round with dropouts at every phase, more of them at R2.5.
const ONE_ROUND: &str = "[secagg]\ndropout_fraction = 0.4\nclip = 2.0\n[availability]\n\
    dropout = { advertise_keys = 0.03, share_keys = 0.03, masked_input = 0.03, \
    consistency_check = 0.1, unmask = 0.03 }";

fn one_round() -> Experiment {
    let mut exp = experiment(ONE_ROUND);
    exp.task.rounds = 1;
    exp
}

fn participants(o: &RunOutput) -> Vec<usize> {
    o.rows.iter().map(|r| r.participants).collect()
}

/// Dropouts at every phase with the check on (the default), over several rounds: every round
/// completes at its first attempt, R2.5 dropouts are counted in their own column, and members
/// dropping after their masked input (R2.5, R3) are in the sum.
#[test]
fn a_run_with_the_check_completes_with_dropouts_at_every_phase() {
    let mut on = experiment(EVERY_PHASE);
    on.task.rounds = 4;
    assert!(on.task.secagg.consistency_check, "on by default");
    let a = run(&on);
    let by_phase: Vec<usize> = (0..5)
        .map(|p| a.rows.iter().map(|r| r.dropouts_by_phase[p]).sum())
        .collect();
    assert!(by_phase.iter().all(|&d| d > 0), "{by_phase:?}");
    for r in &a.rows {
        assert!(r.completed, "round {}: {:?}", r.round, r.abort_reasons);
        assert_eq!(r.attempts, 1);
        let d = r.dropouts_by_phase;
        assert_eq!(r.participants, 20 - d[0] - d[1] - d[2], "round {}", r.round);
    }
    let csv = cohort_sim::metrics::to_csv(&a.rows).unwrap();
    assert!(csv.lines().next().unwrap().contains("dropouts_r2_5"));
}

/// A round with the check and dropouts at every phase, R2.5 included, gives the plaintext
/// run's global model (same fates, same participants) within the quantization tolerance.
/// One round: later cohorts depend on when the previous round ended, which differs.
#[test]
fn a_round_with_the_check_and_dropouts_at_every_phase_matches_the_plaintext_sum() {
    let on = one_round();
    let mut plain = on.clone();
    plain.task.secagg.enabled = false;
    let (a, b) = (run(&on), run(&plain));
    let r = &a.rows[0];
    assert!(r.completed, "{:?}", r.abort_reasons);
    assert!(r.dropouts_by_phase[3] > 0, "{:?}", r.dropouts_by_phase);
    assert!(
        r.dropouts > r.dropouts_by_phase[3],
        "{:?}",
        r.dropouts_by_phase
    );
    assert_eq!(participants(&a), participants(&b));
    let tol = a.summary.quantization_tolerance.expect("SecAgg+ on");
    let diff = a
        .global
        .iter()
        .zip(&b.global)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff <= tol, "diff {diff} > {tol}");
}

/// The same round with the check off: no R2.5, the same global model as with the check (the
/// check changes who can be unmasked, never the sum), and fewer bytes (no signatures, a
/// smaller graph).
#[test]
fn a_round_without_the_check_gives_the_same_model() {
    let on = one_round();
    let mut off = on.clone();
    off.task.secagg.consistency_check = false;
    off.validate().unwrap();
    let (a, b) = (run(&on), run(&off));
    let r = &b.rows[0];
    assert!(r.completed, "{:?}", r.abort_reasons);
    assert_eq!(r.dropouts_by_phase[3], 0, "no R2.5 without the check");
    assert!(a.rows[0].dropouts_by_phase[3] > 0);
    assert_eq!(participants(&a), participants(&b));
    assert_eq!(a.global, b.global, "the same inputs give the same sum");
    let up = |o: &RunOutput| o.rows.iter().map(|r| r.bytes_up).sum::<u64>();
    assert!(
        up(&a) > up(&b),
        "with the check {} ≤ without {}",
        up(&a),
        up(&b)
    );
}
