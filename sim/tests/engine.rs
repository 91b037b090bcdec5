//! Engine behaviour with a tiny deterministic trainer: reproducibility, SecAgg+ against the
//! plaintext aggregate, dropouts at every phase, quorum aborts and retries, and the timing of
//! crashes against disconnections.

use cohort_sim::config::Experiment;
use cohort_sim::run::{RunOutput, run_with_trainer};
use cohort_sim::{Eval, LocalTrainer, TrainError, TrainOutput};

const DIM: usize = 6;

/// Least squares towards a per-client target: one gradient step of ½‖w − t_c‖² with step
/// `rate`, so the update is `rate · (t_c − w)` (linear and non-expansive in `w`). Client c's
/// target is derived from its example indices; the optimum of the federation is their mean.
struct LeastSquares {
    rate: f32,
}

fn target(indices: &[usize]) -> Vec<f32> {
    let m = indices.iter().sum::<usize>() as f32 / indices.len().max(1) as f32;
    (0..DIM)
        .map(|k| ((m * 0.01 + k as f32) * 0.37).sin() * 0.5)
        .collect()
}

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
        seed: u64,
    ) -> Result<TrainOutput, TrainError> {
        if global.len() != DIM {
            return Err(TrainError::WrongLength {
                expected: DIM,
                got: global.len(),
            });
        }
        let t = target(indices);
        // A seed-dependent loss so that the seed plumbing shows up in the metrics.
        let loss = (seed % 1000) as f32 / 1000.0;
        Ok(TrainOutput {
            delta: t
                .iter()
                .zip(global)
                .map(|(t, w)| self.rate * (t - w))
                .collect(),
            examples: indices.len(),
            loss,
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

/// A small experiment: 40 clients, 12 per round without over-selection; `extra` adds sections
/// (`[secagg]`, `[availability]`, `[deadlines]`, ...); `[run]` and `[selection]` keys are set
/// on the result.
fn experiment(extra: &str) -> Experiment {
    let text = format!(
        r#"
id = "fake"
rounds = 4
evaluate_every = 1
[run]
seed = 7
[population]
num_clients = 40
[selection]
clients_per_round = 12
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

fn partitions(n: usize) -> Vec<Vec<usize>> {
    (0..n)
        .map(|c| (0..(5 + c % 7)).map(|i| c * 20 + i).collect())
        .collect()
}

fn run(exp: &Experiment) -> RunOutput {
    run_with_trainer(
        exp,
        &LeastSquares { rate: 0.5 },
        partitions(exp.population.num_clients as usize),
        "test",
        false,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The CSV without the wall-clock column (the only one that may differ between runs).
fn deterministic_csv(out: &RunOutput) -> String {
    cohort_sim::metrics::to_csv(&out.rows)
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').map_or(l, |x| x.0).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn same_seed_gives_identical_metrics_and_model() {
    let exp = experiment(
        "[availability]\nonline_probability = 0.8\ndropout = { advertise_keys = 0.05, share_keys = 0.05, masked_input = 0.05, unmask = 0.05 }",
    );
    let a = run(&exp);
    let b = run(&exp);
    assert_eq!(deterministic_csv(&a), deterministic_csv(&b));
    assert_eq!(a.global, b.global);
    let mut other = exp.clone();
    other.run.seed = 8;
    assert_ne!(
        deterministic_csv(&a),
        deterministic_csv(&run(&other)),
        "the seed must matter"
    );
}

#[test]
fn secagg_on_and_off_agree_within_the_quantization_tolerance() {
    for rounds in [1u32, 4] {
        let mut on = experiment("[secagg]\nenabled = true\nclip = 2.0");
        on.task.rounds = rounds;
        let mut off = on.clone();
        off.task.secagg.enabled = false;
        let (a, b) = (run(&on), run(&off));
        let tol = a
            .summary
            .quantization_tolerance
            .expect("reported with SecAgg+ on");
        assert!(tol > 0.0 && tol < 1e-3, "tolerance {tol}");
        let diff = a
            .global
            .iter()
            .zip(&b.global)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff <= rounds as f32 * tol,
            "{rounds} rounds: diff {diff} > {rounds} × {tol}"
        );
        // Same cohorts, same participants.
        let p = |o: &RunOutput| o.rows.iter().map(|r| r.participants).collect::<Vec<_>>();
        assert_eq!(p(&a), p(&b));
        // And the model did move: the comparison is not between two untouched models.
        let init = LeastSquares { rate: 0.5 }.init(0);
        assert!(
            a.global
                .iter()
                .zip(&init)
                .any(|(x, y)| (x - y).abs() > 0.01)
        );
    }
}

/// Dropouts at R2.5 need the consistency check (on by default), whose parameters need a
/// lower dropout fraction (rounds may start with ⌈0.75 · 12⌉ = 9 members, and t must exceed
/// half of them plus two colluders) and a lower probability there; the other phases run
/// without the check, at dropout fraction 0.5.
#[test]
fn dropouts_at_each_phase_show_up_in_the_metrics() {
    let keys = [
        ("advertise_keys", "dropouts_r0"),
        ("share_keys", "dropouts_r1"),
        ("masked_input", "dropouts_r2"),
        ("consistency_check", "dropouts_r2_5"),
        ("unmask", "dropouts_r3"),
    ];
    for (phase, (key, column)) in keys.iter().enumerate() {
        let secagg = if *key == "consistency_check" {
            "[secagg]\ndropout_fraction = 0.25\n[availability]\ndropout = { KEY = 0.1 }"
        } else {
            "[secagg]\ndropout_fraction = 0.5\nconsistency_check = false\n\
             [availability]\ndropout = { KEY = 0.25 }"
        };
        let exp = experiment(&secagg.replace("KEY", key));
        let out = run(&exp);
        let by_phase: Vec<usize> = (0..5)
            .map(|p| out.rows.iter().map(|r| r.dropouts_by_phase[p]).sum())
            .collect();
        assert!(by_phase[phase] > 0, "{key}: {by_phase:?}");
        assert_eq!(
            by_phase.iter().sum::<usize>(),
            by_phase[phase],
            "{key}: only that phase: {by_phase:?}"
        );
        for r in &out.rows {
            assert!(
                r.completed,
                "{key}: round {} aborted: {:?}",
                r.round, r.abort_reasons
            );
            let d = r.dropouts_by_phase;
            // Clients that die after sending their masked input are still in the sum.
            assert_eq!(
                r.participants,
                12 - d[0] - d[1] - d[2],
                "{key}: round {}",
                r.round
            );
        }
        let csv = cohort_sim::metrics::to_csv(&out.rows).unwrap();
        assert!(csv.lines().next().unwrap().contains(column));
    }
}

#[test]
fn rounds_below_quorum_abort_and_are_retried_with_a_fresh_cohort() {
    // q_min = ⌈0.9·12⌉ = 11, and each client dies before R0 with probability 0.1: many attempts
    // fall below the quorum, some do not.
    let mut exp = experiment(
        "[secagg]\ndropout_fraction = 0.1\n[availability]\ndropout = { advertise_keys = 0.1 }",
    );
    exp.run.max_attempts = 6;
    let out = run(&exp);
    assert!(out.summary.aborted_attempts > 0, "{:?}", out.rows);
    let retried: Vec<_> = out.rows.iter().filter(|r| r.attempts > 1).collect();
    assert!(!retried.is_empty());
    for r in &retried {
        assert_eq!(
            r.abort_reasons.len() as u32,
            r.attempts - u32::from(r.completed)
        );
        assert!(
            r.abort_reasons[0].contains("survived"),
            "{:?}",
            r.abort_reasons
        );
    }
    assert!(out.rows.iter().any(|r| r.completed));

    // Everyone dies before the upload: every attempt aborts, the model is untouched.
    let mut exp = experiment("[availability]\ndropout = { masked_input = 1.0 }");
    exp.run.max_attempts = 2;
    let out = run(&exp);
    assert!(
        out.rows
            .iter()
            .all(|r| !r.completed && r.attempts == 2 && r.participants == 0)
    );
    assert_eq!(out.summary.failed_rounds, 4);
    assert_eq!(
        out.global,
        LeastSquares { rate: 0.5 }.init(cohort_sim::seeds::derive(
            7,
            cohort_sim::seeds::Purpose::ModelInit,
            0,
            0
        ))
    );

    // The plaintext mode uses the same quorum.
    let mut plain = experiment("[availability]\ndropout = { masked_input = 1.0 }");
    plain.run.max_attempts = 2;
    plain.task.secagg.enabled = false;
    let out = run(&plain);
    assert!(out.rows.iter().all(|r| !r.completed && r.attempts == 2));
    assert!(out.rows[0].abort_reasons[0].contains("quorum"));
}

#[test]
fn a_silent_crash_costs_the_deadline_and_a_disconnect_does_not() {
    let mut crash = experiment(
        "[secagg]\ndropout_fraction = 0.5\nconsistency_check = false\n[availability]\ndisconnect_fraction = 0.0\ndropout = { share_keys = 0.3 }\n[deadlines]\nadvertise_keys = 10\nshare_keys = 40\nmasked_input = 100\nunmask = 10",
    );
    crash.task.rounds = 2;
    // A short selection window, so that a round's length is mostly its attempt's.
    crash.task.selection.window_secs = 0.5;
    let mut disconnect = crash.clone();
    disconnect.availability.disconnect_fraction = 1.0;
    let (c, d) = (run(&crash), run(&disconnect));
    for (rc, rd) in c.rows.iter().zip(&d.rows).take(1) {
        assert_eq!(rc.dropouts_by_phase, rd.dropouts_by_phase);
        assert!(rc.dropouts_by_phase[1] > 0);
    }
    for (rc, rd) in c.rows.iter().zip(&d.rows) {
        // The server waits out the 40 s R1 deadline for a crashed client...
        if rc.dropouts_by_phase[1] > 0 {
            assert!(rc.sim_round_s >= 40.0, "crash: {}", rc.sim_round_s);
        }
        // ...but learns of a disconnection within a latency.
        assert!(rd.sim_round_s < 10.0, "disconnect: {}", rd.sim_round_s);
    }
    // With equal outcomes the models agree exactly: only the timing differs. (After the first
    // round only: who is selected next depends on when a round ended, as in a deployment.)
    let (mut c1, mut d1) = (crash.clone(), disconnect.clone());
    c1.task.rounds = 1;
    d1.task.rounds = 1;
    assert_eq!(run(&c1).global, run(&d1).global);
}

#[test]
fn bytes_are_counted_in_both_directions() {
    let out = run(&experiment(""));
    for r in &out.rows {
        // At least the masked inputs (packed at the ring's bits, at least the 16 value bits:
        // 2 bytes per element) and the model downloads.
        assert!(r.bytes_up >= 12 * 2 * (DIM as u64 + 1), "{}", r.bytes_up);
        assert!(r.bytes_down >= 12 * 4 * DIM as u64, "{}", r.bytes_down);
        assert!(r.sim_round_s > 0.0);
    }
}

#[test]
fn metrics_do_not_depend_on_the_thread_count() {
    // Dropouts at every phase, both modes: client events run on worker threads, and must be
    // applied in the same order whatever their number.
    for secagg in [true, false] {
        let mut one = experiment(
            "[availability]\nonline_probability = 0.9\ndropout = { advertise_keys = 0.05, share_keys = 0.05, masked_input = 0.05, consistency_check = 0.05, unmask = 0.05 }",
        );
        one.run.threads = 1;
        one.population.num_clients = 40;
        one.task.selection.clients_per_round = 30;
        one.task.secagg.enabled = secagg;
        let a = run(&one);
        for threads in [2, 5] {
            let mut many = one.clone();
            many.run.threads = threads;
            let b = run(&many);
            assert_eq!(
                deterministic_csv(&a),
                deterministic_csv(&b),
                "SecAgg+ {secagg}, {threads} threads"
            );
            assert_eq!(a.global, b.global);
        }
        assert!(a.rows.iter().any(|r| r.dropouts > 0), "{:?}", a.rows);
    }
}

#[test]
fn over_selection_aggregates_the_first_updates_and_stops_the_rest() {
    // 12 per round, over-selected by 30%: 16 selected, the first 12 updates aggregated, the 4
    // slowest told to stop. A mixed fleet, so that who finishes first depends on the device.
    for secagg in [true, false] {
        let mut exp = experiment("");
        exp.task.selection.over_selection = 0.3;
        exp.task.secagg.enabled = secagg;
        exp.network.profiles = [
            ("phone-4g".to_string(), 1.0),
            ("datacenter".to_string(), 1.0),
        ]
        .into_iter()
        .collect();
        assert_eq!(exp.selected_per_round(), 16);
        let out = run(&exp);
        for r in &out.rows {
            assert!(r.completed, "SecAgg+ {secagg}: {:?}", r.abort_reasons);
            assert_eq!(r.participants, 12, "SecAgg+ {secagg}: round {}", r.round);
            assert_eq!(r.stopped, 4, "SecAgg+ {secagg}: round {}", r.round);
            assert_eq!(r.dropouts, 0);
        }
        assert_eq!(out.summary.stopped, 4 * 4);
        let csv = cohort_sim::metrics::to_csv(&out.rows).unwrap();
        assert!(csv.lines().next().unwrap().contains(",stopped,"));
        // Without over-selection nobody is stopped.
        let mut exact = exp.clone();
        exact.task.selection.over_selection = 0.0;
        let plain = run(&exact);
        assert!(
            plain
                .rows
                .iter()
                .all(|r| r.stopped == 0 && r.participants == 12)
        );
        assert_eq!(deterministic_csv(&out), deterministic_csv(&run(&exp)));
    }
    // A dropout still counts as one, not as a stopped client, and never more than 12 updates
    // are aggregated. (Without the consistency check: 50% over-selection at dropout fraction
    // 0.4 is a dropout fraction of 1 − 8/18 for the graph, beyond what its parameters allow.)
    let mut drops = experiment(
        "[secagg]\ndropout_fraction = 0.4\nconsistency_check = false\n[availability]\ndropout = { advertise_keys = 0.1 }",
    );
    drops.task.selection.over_selection = 0.5;
    drops.task.rounds = 3;
    let out = run(&drops);
    for r in &out.rows {
        if r.completed {
            assert!(r.participants <= 12);
            assert!(
                r.participants + r.stopped + r.dropouts <= 18,
                "{} + {} + {} > 18",
                r.participants,
                r.stopped,
                r.dropouts
            );
        }
    }
    assert!(out.rows.iter().any(|r| r.dropouts > 0), "{:?}", out.rows);
}

/// Differential privacy in both modes runs through the same SecAgg+ rounds: ε grows with every
/// completed round and is in each row; the run stops when the next round does not fit the
/// budget.
#[test]
fn dp_runs_report_epsilon_and_stop_at_the_budget() {
    for (mode, extra) in [
        ("central", ""),
        ("central", "mode = \"adaptive\"\ncount_stddev = 2.0"),
        ("distributed", ""),
    ] {
        let mut exp = experiment(&format!(
            "[privacy]\nmode = \"{mode}\"\nnoise_multiplier = 0.8\nrounds = 3\ndelta = 1e-3\n\
             [privacy.clip]\nnorm = 0.5\n{extra}\n"
        ));
        exp.task.rounds = 5;
        exp.task.evaluate_every = 0;
        let out = run(&exp);
        // Three rounds fit the budget; the fourth does not start.
        assert_eq!(out.rows.len(), 3, "{mode} {extra}");
        assert!(out.rows.iter().all(|r| r.completed), "{:?}", out.rows);
        // The final model is evaluated although its round was not the experiment's last.
        assert!(out.rows[0].accuracy.is_none());
        assert!(out.rows[2].accuracy.is_some());
        let eps: Vec<f64> = out.rows.iter().map(|r| r.epsilon.unwrap()).collect();
        assert!(eps.windows(2).all(|w| w[1] > w[0]), "{eps:?}");
        let p = out.summary.privacy.as_ref().unwrap();
        assert!(p.budget_exhausted);
        assert_eq!(p.mode, mode);
        assert_eq!(p.max_rounds, 3);
        assert_eq!(p.epsilon_by_round, eps);
        assert!((p.epsilon_spent - p.epsilon_budget).abs() < 1e-9, "{p:?}");
        assert_eq!(p.bits.is_some(), mode == "distributed");
        let csv = cohort_sim::metrics::to_csv(&out.rows).unwrap();
        assert!(csv.lines().next().unwrap().contains(",epsilon,"), "{csv}");
    }
    // Without DP: no epsilon column values and no privacy summary.
    let out = run(&experiment(""));
    assert!(out.rows.iter().all(|r| r.epsilon.is_none()));
    assert!(out.summary.privacy.is_none());
}

/// Distributed DP with dropouts: every released sum has between q_min and clients_per_round
/// survivors (fewer would be refused by the decoder), so rounds with dropped members still
/// release, and the model moves as the survivors' noisy mean says.
#[test]
fn distributed_dp_releases_sums_of_any_survivor_count_from_q_min() {
    let mut exp = experiment(
        "[secagg]\ndropout_fraction = 0.3\n[availability]\ndisconnect_fraction = 1.0\n\
         dropout = { masked_input = 0.15, unmask = 0.05 }\n\
         [privacy]\nmode = \"distributed\"\nnoise_multiplier = 1.0\nrounds = 6\ndelta = 1e-3\n\
         [privacy.clip]\nnorm = 0.5\n",
    );
    exp.task.rounds = 6;
    let out = run(&exp);
    assert_eq!(out.rows.len(), 6);
    let completed: Vec<_> = out.rows.iter().filter(|r| r.completed).collect();
    assert!(completed.len() >= 5, "{:?}", out.rows);
    // Some released round lost members, and none summed fewer than q_min.
    assert!(
        completed.iter().any(|r| r.participants < 12),
        "{:?}",
        out.rows
    );
    let plan = exp.privacy_plan(6).unwrap().unwrap();
    let q_min = plan.distributed.unwrap().min_survivors as usize;
    assert!(completed.iter().all(|r| r.participants >= q_min));
    assert!(out.rows.iter().all(|r| r.epsilon.is_some()));
}
