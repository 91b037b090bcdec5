//! The coordinator killed mid-round and restarted (issue 4's fault test), through the real
//! `cohort-coordinator` binary: `task create`, `task start`, `invite`, `serve`, `log verify` and
//! `task history`, with ten in-process edge clients over QUIC, OPAQUE and SecAgg+.
//!
//! The coordinator is SIGKILLed while round 3 is in R2 (seen in its log), then started again on
//! the same state directory and port. The test checks that the round log verifies, that the two
//! finished rounds are still there unchanged, that round 3's attempt is recorded as abandoned
//! and nothing of it was applied, that training continues from round 2 to the task's last round,
//! that the FedAvgM momentum was carried across the restart, that every client's verified log
//! head is in the final chain, and that test accuracy keeps rising.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cohort_aggregation::strategy::StrategyState;
use cohort_coordinator::checkpoints::Checkpoints;
use cohort_coordinator::scheduler::Evaluator;
use cohort_coordinator::store::{DB_FILE, Store};
use cohort_coordinator::task::TaskDefinition;
use cohort_datasets::{PartitionSpec, embedded_digits};
use cohort_edge::eligibility::EligibilityPolicy;
use cohort_edge::log_check;
use cohort_edge::run::{Backoff, RunConfig, run};
use cohort_edge::trainer::BurnTrainer;
use cohort_learning::ComputeBackend;
use cohort_loopback::DatasetEvaluator;
use cohort_loopback::process::{self, Serve, free_udp_port, parse_fingerprint};
use cohort_protocol::{RoundResult, TaskId};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_cohort-coordinator");
const CLIENTS: usize = 10;
const ROUNDS: u64 = 6;

const TASK: &str = r#"
id = "restart"
rounds = 6
evaluate_every = 0

[model]
input_shape = [64]
num_classes = 10
layers = [
    { type = "linear", out = 32 },
    { type = "relu" },
    { type = "linear", out = 10 },
]

[training]
epochs = 2
batch_size = 16
learning_rate = 0.1
optimizer = { kind = "sgd", momentum = 0.0 }

[strategy]
kind = "fed_avg_m"
server_lr = 1.0
momentum = 0.5

# Ten clients are selected; the first eight masked inputs are summed and the other two are told
# to stop (the over-selection cut-off, over QUIC).
[selection]
clients_per_round = 8
over_selection = 0.25
window_secs = 3

[secagg]
max_weight = 256
# With the over-selection, a round plans for 28% dropouts among ten: within what the
# consistency check's parameters allow at this size.
dropout_fraction = 0.10

[deadlines]
advertise_keys = 20
share_keys = 20
masked_input = 60
unmask = 20
"#;

fn cli(state: &Path, args: &[&str]) -> String {
    process::cli(Path::new(BIN), state, args)
}

/// `serve` on 127.0.0.1:`port`, its log followed.
fn serve(state: &Path, port: u16) -> Serve {
    Serve::on_loopback(Path::new(BIN), state, port)
}

fn verified_log(state: &Path) -> Vec<(u64, String, String)> {
    process::verified_log(Path::new(BIN), state, "restart")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_during_r2_restarts_and_training_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("coordinator");
    let task_file = tmp.path().join("task.toml");
    std::fs::write(&task_file, TASK).unwrap();
    let def = TaskDefinition::from_toml(TASK).expect("the test's task parses");

    let out = cli(&state, &["task", "create", task_file.to_str().unwrap()]);
    assert!(out.contains("task restart created"), "{out}");
    let out = cli(&state, &["task", "start", "restart"]);
    assert!(out.contains("task restart is running"), "{out}");

    let port = free_udp_port();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut server = serve(&state, port);
    let pin = parse_fingerprint(&server.fingerprint);

    // Enrollment is invite-only: one code per client, from the CLI.
    let digits = embedded_digits().expect("embedded digits");
    let parts = PartitionSpec::Iid
        .partition(&digits.train, None, CLIENTS, 3)
        .unwrap();
    let (contrib_tx, mut contrib_rx) = mpsc::unbounded_channel();
    let mut handles = Vec::new();
    let mut client_dirs: Vec<PathBuf> = Vec::new();
    for (i, indices) in parts.iter().enumerate() {
        let dir = tmp.path().join(format!("client-{i}"));
        let password = format!("password-{i}");
        let name = format!("client{i}");
        let transport =
            process::enroll_invited(Path::new(BIN), &state, addr, pin, &dir, &name, &password)
                .await
                .expect("enrolls with an invite");
        let config = RunConfig {
            task: Some(TaskId("restart".into())),
            eligibility: EligibilityPolicy::always(),
            backoff: Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(2),
            },
            max_failures: 100,
            ..RunConfig::new(addr, dir.clone(), password)
        };
        let trainer = Box::new(BurnTrainer::new(
            ComputeBackend::flex(),
            digits.train.subset(indices).unwrap(),
        ));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let fwd = contrib_tx.clone();
        tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                let _ = fwd.send((i, c));
            }
        });
        handles.push(tokio::spawn(async move {
            run(&transport, &config, trainer, Some(tx)).await
        }));
        client_dirs.push(dir);
    }

    // Two rounds finish; the coordinator dies in R2 of the third.
    for _ in 0..2 {
        server
            .wait_for(Duration::from_secs(300), |l| l.contains("round finished"))
            .await;
    }
    let r2 = server
        .wait_for(Duration::from_secs(120), |l| {
            l.contains("round phase") && l.contains("to=MaskedInput")
        })
        .await;
    server.child.kill().expect("SIGKILL");
    server.child.wait().unwrap();
    eprintln!("killed the coordinator at: {r2}");
    let before = verified_log(&state);
    let rounds_before: Vec<u64> = before.iter().map(|e| e.0).collect();
    assert_eq!(rounds_before, vec![0, 1, 2], "{before:?}");

    // Restart on the same state dir and port; the clients reconnect by themselves.
    let mut server = serve(&state, port);
    assert_eq!(
        parse_fingerprint(&server.fingerprint),
        pin,
        "same certificate after restart"
    );
    let resumed = server
        .wait_for(Duration::from_secs(60), |l| l.contains("task loop started"))
        .await;
    assert!(resumed.contains("resumed_after=2"), "{resumed}");
    assert!(
        resumed.contains("steps=2"),
        "strategy state restored: {resumed}"
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let list = cli(&state, &["task", "list"]);
        if list.contains("restart\tfinished") {
            break;
        }
        if handles.iter().all(|h| h.is_finished()) {
            let mut errors = Vec::new();
            for h in handles.drain(..) {
                errors.push(format!("{:?}", h.await.unwrap().map_err(|e| e.to_string())));
            }
            panic!("every client stopped before the task finished: {errors:?}");
        }
        assert!(
            Instant::now() < deadline,
            "the task did not finish after the restart: {list}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    drop(server);
    // No client stopped with an error (a failed log check, a lost trainer ...).
    for (i, h) in handles.into_iter().enumerate() {
        if h.is_finished() {
            match h.await.unwrap() {
                Ok(_) => {}
                Err(e) => panic!("client {i} stopped: {e}"),
            }
        } else {
            h.abort();
        }
    }

    // The log: intact, the finished rounds kept unchanged, every round up to the last.
    let after = verified_log(&state);
    let rounds_after: Vec<u64> = after.iter().map(|e| e.0).collect();
    assert_eq!(rounds_after, (0..=ROUNDS).collect::<Vec<_>>());
    assert_eq!(&after[..3], &before[..], "finished rounds unchanged");

    // The in-flight attempt is on record as abandoned, and round 3 was run again.
    let history = cli(&state, &["task", "history", "restart"]);
    let round3: Vec<&str> = history
        .lines()
        .filter(|l| l.starts_with("round 3\t"))
        .collect();
    assert!(
        round3.len() >= 2
            && round3[0].contains("\tabandoned\t")
            && round3[0].contains("nothing of it was applied")
            && round3.last().unwrap().contains("\tfinished\t"),
        "{history}"
    );
    assert!(!history.contains("\trunning\t"), "{history}");

    // Nothing of the abandoned attempt was applied: each round starts from the model the
    // previous one produced. And the momentum crossed the restart: the strategy's step count
    // equals the round number, and each saved velocity is the step the model took.
    let store = Store::open(&state.join(DB_FILE)).unwrap();
    let entries = store.round_log().verify(&TaskId("restart".into())).unwrap();
    let checkpoints = Checkpoints::open(&state).unwrap();
    for w in entries.windows(2) {
        assert_eq!(w[1].entry.input_weights, w[0].entry.output_weights);
    }
    for e in &entries[1..] {
        let params: serde_json::Value = serde_json::from_slice(&e.entry.params).unwrap();
        let hash =
            cohort_protocol::ContentHash::from_hex(params["strategy_state"].as_str().unwrap())
                .unwrap();
        let s: StrategyState = checkpoints.get_strategy_state(&hash, 1 << 30).unwrap();
        assert_eq!(
            s.steps, e.entry.round.0,
            "steps of round {}",
            e.entry.round.0
        );
        let before = checkpoints.get(&e.entry.input_weights, 1 << 30).unwrap();
        let after = checkpoints.get(&e.entry.output_weights, 1 << 30).unwrap();
        let v = &s.vectors["velocity"];
        for j in 0..v.len() {
            assert!(
                ((after[j] - before[j]) - v[j]).abs() <= 1e-5,
                "round {} coordinate {j}",
                e.entry.round.0
            );
        }
    }

    // Every client's verified head is an entry of the final chain, and at least a cohort's
    // worth of clients verified a round after the restart. (Not all of them: rounds start
    // once a quorum has checked in, so under load a client that reconnects late can sit out
    // every remaining round.)
    let hashes: Vec<String> = entries.iter().map(|e| e.hash.to_hex()).collect();
    // The restart kept the round-log key: every entry, before and after it, is signed by the
    // key each client pinned at enrollment (before the restart), and the clients that verified
    // rounds after the restart checked those signatures against it.
    let key_seed = std::fs::read_to_string(state.join(cohort_coordinator::log_key::LOG_KEY_FILE))
        .expect("the state directory keeps the round-log key");
    let mut seed = [0u8; 32];
    hex::decode_to_slice(key_seed.trim(), &mut seed).unwrap();
    let owner = cohort_protocol::chain::SigningKey::from_bytes(&seed).verifying_key();
    for e in &entries {
        cohort_protocol::chain::verify_signature(&owner, &e.to_wire())
            .unwrap_or_else(|err| panic!("round {}: {err}", e.entry.round.0));
    }
    for dir in &client_dirs {
        let creds = cohort_edge::credentials::Credentials::load(dir)
            .unwrap()
            .unwrap();
        assert_eq!(
            creds.log_key.as_deref(),
            Some(hex::encode(owner.to_bytes()).as_str()),
            "pinned at enrollment: the key that signed the log"
        );
    }
    let mut advanced = 0;
    for dir in &client_dirs {
        let heads = log_check::load_heads(dir).unwrap();
        let head = &heads["restart"];
        assert!(hashes.contains(&head.entry), "{head:?}");
        if head.round >= 3 {
            advanced += 1;
        }
    }
    assert!(
        advanced >= 8,
        "only {advanced} clients verified a round after the restart"
    );
    let mut completed = vec![0u32; CLIENTS];
    while let Ok((i, c)) = contrib_rx.try_recv() {
        if matches!(c.result, RoundResult::Completed { .. }) {
            completed[i] += 1;
        }
    }
    assert!(
        completed.iter().sum::<u32>() >= 8 * ROUNDS as u32,
        "{completed:?}"
    );

    // Accuracy rises across the restart.
    let evaluator = DatasetEvaluator::new(def.model(), digits.test.clone()).unwrap();
    let acc = |round: usize| {
        let w = checkpoints
            .get(&entries[round].entry.output_weights, 1 << 30)
            .unwrap();
        evaluator.evaluate(&w).unwrap().1
    };
    let (a0, a2, a6) = (acc(0), acc(2), acc(ROUNDS as usize));
    eprintln!("test accuracy: initial {a0:.3}, round 2 {a2:.3}, round {ROUNDS} {a6:.3}");
    assert!(a2 > a0, "{a0} -> {a2}");
    assert!(a6 > a2 && a6 > 0.5, "{a2} -> {a6}");
}
