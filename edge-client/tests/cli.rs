//! The `cohort-edge` binary end to end: `status`, `enroll` (invite-only, as the coordinator
//! runs by default), `run` for a set number of rounds, `status` again, and the errors a
//! contributor sees (no enrollment, no invite, wrong password, a coordinator whose round log no
//! longer contains the head this device verified). The coordinator runs in this process on
//! loopback; its own CLI is driven by `coordinator/tests/restart.rs`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use cohort_coordinator::auth::{Enrollment, InviteIssuer};
use cohort_coordinator::server::Coordinator;
use cohort_coordinator::task::TaskDefinition;
use cohort_loopback::server_config;
use cohort_protocol::{Role, TaskId};

const BIN: &str = env!("CARGO_BIN_EXE_cohort-edge");

const TASK: &str = r#"
id = "cli"
rounds = 2
evaluate_every = 0

[model]
input_shape = [64]
num_classes = 10
layers = [{ type = "linear", out = 16 }, { type = "relu" }, { type = "linear", out = 10 }]

[training]
epochs = 1
batch_size = 16
learning_rate = 0.1
optimizer = { kind = "sgd" }

[selection]
clients_per_round = 4
over_selection = 0.0
window_secs = 2

[secagg]
max_weight = 1024
"#;

/// Runs `cohort-edge --state STATE ARGS` with `password` in COHORT_PASSWORD.
async fn edge(state: &Path, password: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--state")
        .arg(state)
        .args(args)
        .env("RUST_LOG", "warn")
        .env("COHORT_BACKEND", "flex")
        .env_remove("COHORT_PASSWORD");
    if let Some(p) = password {
        cmd.env("COHORT_PASSWORD", p);
    }
    tokio::task::spawn_blocking(move || cmd.output().expect("runs cohort-edge"))
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", text(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "{}", text(out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_run_and_status_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = server_config(tmp.path().join("coordinator"), None);
    config.auth.enrollment = Enrollment::InviteOnly;
    let c = Coordinator::start(config).await.unwrap();
    let server = c.addr.to_string();
    let fp = c.fingerprint.to_hex();
    let dirs: Vec<_> = (0..4)
        .map(|i| tmp.path().join(format!("edge-{i}")))
        .collect();
    let password = |i: usize| format!("correct horse {i}");

    // Before enrolling.
    let out = ok(&edge(&dirs[0], None, &["status"]).await);
    assert!(out.contains("not enrolled"), "{out}");
    assert!(out.contains("nothing verified yet"), "{out}");
    let err = failed(&edge(&dirs[0], Some("x"), &["run", "--server", &server]).await);
    assert!(err.contains("run `cohort-edge enroll` first"), "{err}");
    let err = failed(&edge(&dirs[0], None, &["status", "--bogus"]).await);
    assert!(err.contains("--bogus"), "{err}");

    // Enrollment needs an invite; the error says so.
    let enroll_args = |invite: Option<&str>, i: usize| {
        let mut a = vec![
            "enroll".to_string(),
            "--server".into(),
            server.clone(),
            "--fingerprint".into(),
            fp.clone(),
            "--username".into(),
            format!("contributor{i}"),
        ];
        if let Some(code) = invite {
            a.push("--invite".into());
            a.push(code.into());
        }
        a
    };
    let args = enroll_args(None, 0);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = failed(&edge(&dirs[0], Some(&password(0)), &args).await);
    assert!(
        err.contains("pass it with --invite") && err.contains("needs an invite code"),
        "{err}"
    );
    let err = failed(&edge(&dirs[0], None, &args).await);
    assert!(err.contains("set COHORT_PASSWORD"), "{err}");
    for (i, dir) in dirs.iter().enumerate() {
        let code = c
            .auth
            .issue_invite(&InviteIssuer::Admin, Role::Contributor, None)
            .unwrap();
        let args = enroll_args(Some(&code), i);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ok(&edge(dir, Some(&password(i)), &args).await);
        assert!(
            out.contains(&format!("enrolled as contributor{i} (Contributor)")),
            "{out}"
        );
    }
    let out = ok(&edge(&dirs[0], None, &["status"]).await);
    assert!(
        out.contains(&format!(
            "enrolled as contributor0 (coordinator fingerprint {fp})"
        )),
        "{out}"
    );

    // A wrong password: told to check it, nothing else.
    let err = failed(&edge(&dirs[0], Some("wrong"), &["run", "--server", &server]).await);
    assert!(err.contains("check the username and password"), "{err}");

    // Train two rounds.
    c.create_and_start(TaskDefinition::from_toml(TASK).unwrap())
        .unwrap();
    let runs = dirs.iter().enumerate().map(|(i, dir)| {
        let shard = format!("{i}/4");
        let server = server.clone();
        let password = password(i);
        let dir = dir.clone();
        async move {
            edge(
                &dir,
                Some(&password),
                &[
                    "run",
                    "--server",
                    &server,
                    "--shard",
                    &shard,
                    "--rounds",
                    "2",
                    "--allow-battery",
                ],
            )
            .await
        }
    });
    let outs = tokio::time::timeout(Duration::from_secs(600), futures_join_all(runs.collect()))
        .await
        .expect("the clients finish two rounds");
    let log = c
        .store
        .round_log()
        .verify(&TaskId("cli".into()))
        .expect("the chain verifies");
    assert_eq!(log.len(), 3, "round 0 (initial model) and two rounds");
    for out in &outs {
        let out = ok(out);
        assert!(out.contains("training on "), "{out}");
        assert_eq!(
            out.matches(" s) to a sum of ").count(),
            2,
            "the training time: {out}"
        );
        assert_eq!(
            out.matches(": contributed an update from ").count(),
            2,
            "{out}"
        );
        assert!(out.contains("contributed to 2 rounds"), "{out}");
    }
    // Status shows the verified head: the model of round 2 was trained from round 1's output.
    let out = ok(&edge(&dirs[0], None, &["status"]).await);
    assert!(
        out.contains(&format!(
            "round log of task cli: verified up to round 1 (entry {}, model {})",
            log[1].hash, log[1].entry.output_weights
        )),
        "{out}"
    );
    assert!(out.contains("cached weight vectors"), "{out}");

    // A device whose saved head the coordinator's log does not contain refuses to train, and
    // says what to do.
    let heads = dirs[1].join(cohort_edge::log_check::LOG_HEADS_FILE);
    let saved = std::fs::read_to_string(&heads).unwrap();
    let forged = saved.replace(&log[1].hash.to_hex(), &"ab".repeat(32));
    assert_ne!(forged, saved);
    std::fs::write(&heads, forged).unwrap();
    let more = TaskDefinition::from_toml(&TASK.replace("rounds = 2", "rounds = 3")).unwrap();
    c.create_and_start(more).unwrap();
    let err = failed(
        &tokio::time::timeout(
            Duration::from_secs(300),
            edge(
                &dirs[1],
                Some(&password(1)),
                &[
                    "run", "--server", &server, "--shard", "1/4", "--rounds", "1",
                ],
            ),
        )
        .await
        .expect("the client stops"),
    );
    assert!(
        err.contains("no longer contains round 1") && err.contains("delete round-log-heads.json"),
        "{err}"
    );
    c.shutdown();
}

/// Awaits every future (a tiny `join_all`, to avoid a dependency).
async fn futures_join_all<F: std::future::Future + Send + 'static>(futs: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("joined"));
    }
    out
}
