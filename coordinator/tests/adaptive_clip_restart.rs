//! Adaptive clipping across a coordinator restart, through the real `cohort-coordinator`
//! binary: a central-DP task with an adaptive clip runs two rounds with synthetic edge clients
//! over QUIC, the coordinator is SIGKILLed and started again on the same state directory, and
//! the task finishes. Every round-log entry records the round's clip and the next round's
//! (`clip`, `next_clip`: hash-chained and signed), and the test checks that each round's clip
//! is the one the entry before set, across the restart too: the restarted coordinator resumed
//! the clip from the log instead of starting again at the initial clip. The devices check the
//! same on every round they take part in (`cohort_task::device_privacy`), so a coordinator
//! that sent another clip would also lose its cohort.

use std::path::Path;
use std::time::Duration;

use cohort_coordinator::publish::{NEXT_CLIP_KEY, ROUND_CLIP_KEY, logged_clip};
use cohort_coordinator::store::{DB_FILE, Store};
use cohort_edge::eligibility::EligibilityPolicy;
use cohort_edge::run::{Backoff, RunConfig, run};
use cohort_loopback::SyntheticTrainer;
use cohort_loopback::process::{self, Serve, free_udp_port, parse_fingerprint};
use cohort_protocol::TaskId;

const BIN: &str = env!("CARGO_BIN_EXE_cohort-coordinator");
const TASK_ID: &str = "aclip";
const CLIENTS: usize = 5;
const INITIAL_CLIP: f64 = 0.05;

/// The four-device task with central DP and an adaptive clip (weight 1, as DP requires). The
/// synthetic updates have norms near 0.28, so the initial clip of 0.05 clips them all and the
/// clip moves every round.
fn task_toml() -> String {
    let task =
        process::four_device_task_toml(TASK_ID, 4).replace("max_weight = 256", "max_weight = 1");
    assert!(
        task.contains("max_weight = 1\n"),
        "the template sets max_weight"
    );
    format!(
        "{task}\n[privacy]\nmode = \"central\"\nnoise_multiplier = 1.0\nrounds = 20\n\
         delta = 1e-3\n[privacy.clip]\nnorm = {INITIAL_CLIP}\nmode = \"adaptive\"\n\
         count_stddev = 2.0\n"
    )
}

fn cli(state: &Path, args: &[&str]) -> String {
    process::cli(Path::new(BIN), state, args)
}

/// (round, its clip, the next round's clip) of every published round, from the verified log.
fn logged_clips(state: &Path) -> Vec<(u64, f64, f64)> {
    let store = Store::open(&state.join(DB_FILE)).unwrap();
    let entries = store.round_log().verify(&TaskId(TASK_ID.into())).unwrap();
    entries
        .iter()
        .filter(|e| e.entry.round.0 > 0)
        .map(|e| {
            let clip = logged_clip(&e.entry.params, ROUND_CLIP_KEY);
            let next = logged_clip(&e.entry.params, NEXT_CLIP_KEY);
            (
                e.entry.round.0,
                clip.unwrap_or_else(|| panic!("round {} logs its clip", e.entry.round.0)),
                next.unwrap_or_else(|| panic!("round {} logs the next clip", e.entry.round.0)),
            )
        })
        .collect()
}

/// Each round's clip is the one the round before set; the first is the initial clip.
fn assert_chained(clips: &[(u64, f64, f64)]) {
    assert_eq!(clips[0].1, INITIAL_CLIP, "{clips:?}");
    for w in clips.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "{clips:?}");
        assert_eq!(
            w[1].1.to_bits(),
            w[0].2.to_bits(),
            "round {} did not use the clip round {} set: {clips:?}",
            w[1].0,
            w[0].0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_clip_survives_a_coordinator_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("coordinator");
    let task_file = tmp.path().join("task.toml");
    std::fs::write(&task_file, task_toml()).unwrap();
    cli(&state, &["task", "create", task_file.to_str().unwrap()]);
    cli(&state, &["task", "start", TASK_ID]);
    let port = free_udp_port();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut server = Serve::on_loopback(Path::new(BIN), &state, port);
    let pin = parse_fingerprint(&server.fingerprint);
    let mut handles = Vec::new();
    for i in 0..CLIENTS {
        let dir = tmp.path().join(format!("client-{i}"));
        let password = format!("password-{i}");
        let name = format!("client{i}");
        let transport =
            process::enroll_invited(Path::new(BIN), &state, addr, pin, &dir, &name, &password)
                .await
                .expect("enrolls with an invite");
        let config = RunConfig {
            task: Some(TaskId(TASK_ID.into())),
            eligibility: EligibilityPolicy::always(),
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(500),
            },
            max_rounds: None,
            max_failures: 10_000,
            ..RunConfig::new(addr, dir.clone(), password)
        };
        handles.push(tokio::spawn(async move {
            run(
                &transport,
                &config,
                Box::new(SyntheticTrainer::new(i as u64, 10)),
                None,
            )
            .await
        }));
    }

    // Two rounds, then the coordinator dies (wherever it is: between rounds or in round 3).
    for _ in 0..2 {
        server
            .wait_for(Duration::from_secs(120), |l| l.contains("round finished"))
            .await;
    }
    server.child.kill().expect("SIGKILL");
    server.child.wait().unwrap();
    let before = logged_clips(&state);
    assert!(before.len() >= 2, "{before:?}");
    assert_chained(&before);
    let resumed_at = before.last().unwrap().2;
    assert_ne!(resumed_at, INITIAL_CLIP, "the clip moved: {before:?}");

    // Restarted on the same state: the clip is resumed from the log's head, and the task runs
    // to its last round (4) with the devices checking each round's clip against the log.
    let mut server = Serve::on_loopback(Path::new(BIN), &state, port);
    server
        .wait_for(Duration::from_secs(60), |l| {
            l.contains("adaptive clip resumed from the round log")
        })
        .await;
    let remaining = 4 - before.len();
    for _ in 0..remaining {
        server
            .wait_for(Duration::from_secs(120), |l| l.contains("round finished"))
            .await;
    }
    drop(server);
    for h in handles {
        h.abort();
    }
    let after = logged_clips(&state);
    eprintln!("(round, clip, next clip) logged: {after:?}");
    assert_eq!(after.len(), 4, "{after:?}");
    assert_eq!(
        after[..before.len()],
        before[..],
        "published rounds unchanged"
    );
    assert_chained(&after);
    // The first round after the restart used the resumed clip, not the initial one.
    assert_eq!(after[before.len()].1.to_bits(), resumed_at.to_bits());
}
