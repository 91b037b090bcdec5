//! Damaged state at start-up (issue 14): the real `cohort-coordinator serve` is started on a
//! state directory whose task has run (its round log holds round 0 and its initial model is
//! checkpointed), after one of its files was damaged: a truncated checkpoint, a corrupted SQLite
//! page, an emptied or replaced database beside the checkpoints. Each start-up must fail with an
//! error that names the damaged file and says what to do, and must never start afresh: the
//! coordinator never prints its "listening on" line, and the files are left as they were.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cohort_coordinator::checkpoints::CHECKPOINT_DIR;
use cohort_coordinator::store::DB_FILE;
use cohort_loopback::process::{self, Serve, free_udp_port};

const BIN: &str = env!("CARGO_BIN_EXE_cohort-coordinator");
const TASK_ID: &str = "damaged";

/// A state directory whose task has started once: `task create`, `task start`, then `serve`
/// until the task loop has logged its initial model (round 0) and checkpointed it; the process
/// is then killed and the database closed cleanly by `log verify` (which also checks the log).
/// Returns the state directory and the initial model's checkpoint file.
async fn started_state(root: &Path) -> (PathBuf, PathBuf) {
    let state = root.join("coordinator");
    let task_file = root.join("task.toml");
    std::fs::write(&task_file, process::four_device_task_toml(TASK_ID, 5)).unwrap();
    process::cli(
        Path::new(BIN),
        &state,
        &["task", "create", task_file.to_str().unwrap()],
    );
    process::cli(Path::new(BIN), &state, &["task", "start", TASK_ID]);
    {
        let mut server = Serve::on_loopback(Path::new(BIN), &state, free_udp_port());
        server
            .wait_for(Duration::from_secs(120), |l| {
                l.contains("task loop started")
            })
            .await;
    }
    let log = process::verified_log(Path::new(BIN), &state, TASK_ID);
    assert_eq!(log.len(), 1, "round 0 is logged: {log:?}");
    let out = process::cli(Path::new(BIN), &state, &["log", "verify", TASK_ID]);
    assert!(
        out.contains("signatures: 1 of 1 entries signed by the round-log key"),
        "{out}"
    );
    let (round, model, _) = &log[0];
    assert_eq!(*round, 0);
    let checkpoint = state.join(CHECKPOINT_DIR).join(format!("{model}.f32le"));
    assert!(checkpoint.exists(), "{} exists", checkpoint.display());
    (state, checkpoint)
}

/// What a `serve` start-up on `state` ended with.
struct Failed {
    stderr: String,
}

/// Starts `serve` on `state` and waits for it to exit; panics if it starts listening (prints
/// its first line) or is still running after two minutes.
fn serve_must_fail(state: &Path) -> Failed {
    let mut child = Command::new(BIN)
        .arg("--state")
        .arg(state)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", free_udp_port()),
            "--no-http",
        ])
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts cohort-coordinator serve");
    // A deadline, not a delay: the loop ends as soon as the process exits.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "serve did not exit on a damaged state directory; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = process::strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(
        !status.success(),
        "serve must fail on a damaged state directory; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains("listening on"),
        "serve started listening on a damaged state directory:\n{stdout}\n{stderr}"
    );
    Failed { stderr }
}

fn assert_names(failed: &Failed, file: &Path, advice: &str) {
    // What an operator sees (shown with --nocapture).
    eprintln!(
        "start-up refused:\n{}",
        failed.stderr.lines().next().unwrap_or_default()
    );
    let file = file.display().to_string();
    assert!(
        failed.stderr.contains(&file),
        "the error names {file}:\n{}",
        failed.stderr
    );
    assert!(
        failed.stderr.contains(advice),
        "the error says what to do ({advice:?}):\n{}",
        failed.stderr
    );
}

/// The model the log's head names is truncated: start-up fails naming the checkpoint file, and
/// the log and the file are left as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_checkpoint_stops_start_up_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, checkpoint) = started_state(tmp.path()).await;
    let len = std::fs::metadata(&checkpoint).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&checkpoint)
        .unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);

    let failed = serve_must_fail(&state);
    assert_names(&failed, &checkpoint, "restore it from a backup");
    assert!(failed.stderr.contains("cannot resume"), "{}", failed.stderr);
    // Nothing was started afresh: the log still holds only round 0, the file is untouched.
    assert_eq!(
        process::verified_log(Path::new(BIN), &state, TASK_ID).len(),
        1
    );
    assert_eq!(std::fs::metadata(&checkpoint).unwrap().len(), len / 2);

    // A missing checkpoint is refused the same way.
    std::fs::remove_file(&checkpoint).unwrap();
    let failed = serve_must_fail(&state);
    assert_names(&failed, &checkpoint, "restore it from a backup");
}

/// Pages in the middle of the database are overwritten: start-up fails naming the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_database_page_stops_start_up_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, _) = started_state(tmp.path()).await;
    let db = state.join(DB_FILE);
    assert!(
        !state.join(format!("{DB_FILE}-wal")).exists()
            || std::fs::metadata(state.join(format!("{DB_FILE}-wal")))
                .unwrap()
                .len()
                == 0,
        "the WAL was checkpointed into the database when it was closed"
    );
    let mut bytes = std::fs::read(&db).unwrap();
    let page = 4096;
    let pages = bytes.len() / page;
    assert!(pages >= 4, "a database of {pages} pages");
    // Every page of the middle half (never page 1, the header), overwritten with a pattern.
    for p in pages / 4..pages * 3 / 4 {
        for (i, b) in bytes[p * page..(p + 1) * page].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37) ^ 0xA5;
        }
    }
    std::fs::write(&db, &bytes).unwrap();

    let failed = serve_must_fail(&state);
    assert_names(&failed, &db, "restore it from a backup");
    assert!(failed.stderr.contains("unusable"), "{}", failed.stderr);
    assert_eq!(
        std::fs::read(&db).unwrap(),
        bytes,
        "the damaged database is left as it was"
    );
}

/// The database is emptied (truncated to nothing), then replaced by a fresh one, then deleted,
/// while the checkpoints directory still holds the task's models: each start-up fails naming
/// the database and the checkpoints directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_or_replaced_database_beside_checkpoints_stops_start_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, checkpoint) = started_state(tmp.path()).await;
    let db = state.join(DB_FILE);
    let checkpoints = state.join(CHECKPOINT_DIR);

    // Emptied.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(0)
        .unwrap();
    let failed = serve_must_fail(&state);
    assert_names(&failed, &db, "Restore it from a backup");
    assert_names(&failed, &checkpoints, "move");

    // Replaced by another coordinator's (empty) database.
    let other = tmp.path().join("other");
    process::cli(Path::new(BIN), &other, &["task", "list"]);
    std::fs::copy(other.join(DB_FILE), &db).unwrap();
    let failed = serve_must_fail(&state);
    assert_names(&failed, &db, "Restore it from a backup");

    // Deleted.
    std::fs::remove_file(&db).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(state.join(format!("{DB_FILE}{suffix}")));
    }
    let failed = serve_must_fail(&state);
    assert_names(&failed, &db, "Restore it from a backup");
    assert!(checkpoint.exists(), "the checkpoints are left alone");
}

/// The round-log signing key is lost while the log holds entries it signed: devices pinned it,
/// so start-up fails naming the file instead of making a new key they would all refuse; a
/// corrupt key file likewise. Restored, the coordinator starts with the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_round_log_key_stops_start_up_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, _) = started_state(tmp.path()).await;
    let key_file = state.join(cohort_coordinator::log_key::LOG_KEY_FILE);
    let saved = std::fs::read(&key_file).expect("the key was generated at the first start");
    std::fs::remove_file(&key_file).unwrap();
    let failed = serve_must_fail(&state);
    assert_names(&failed, &key_file, "Restore the file from a backup");
    assert!(!key_file.exists(), "no new key was made");

    std::fs::write(&key_file, "not a key").unwrap();
    let failed = serve_must_fail(&state);
    assert_names(&failed, &key_file, "restore it from a backup");

    std::fs::write(&key_file, &saved).unwrap();
    let mut server = Serve::on_loopback(Path::new(BIN), &state, free_udp_port());
    server
        .wait_for(Duration::from_secs(120), |l| {
            l.contains("task loop started")
        })
        .await;
    drop(server);
    assert_eq!(std::fs::read(&key_file).unwrap(), saved, "the same key");
}

/// Issue 14, item 4: start-up checks every task's record against its round log, finished tasks
/// too. A finished task whose attempt is recorded as finished while its log has no such round
/// (the log lost a published round: the database was rolled back or edited), then a finished
/// task whose log was edited: each start-up fails naming the database and the task, and
/// changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_task_whose_attempts_and_log_disagree_stops_start_up() {
    use cohort_coordinator::states::{AttemptState, TaskState};
    use cohort_coordinator::store::{AttemptRow, Store};

    let tmp = tempfile::tempdir().unwrap();
    let (state, _) = started_state(tmp.path()).await;
    let db = state.join(DB_FILE);
    {
        let store = Store::open(&db).unwrap();
        assert!(
            store
                .set_task_state(TASK_ID, TaskState::Finished, 1)
                .unwrap()
        );
        store
            .start_attempt(&AttemptRow {
                task: TASK_ID.into(),
                round: 1,
                round_id: 1_000_001,
                state: AttemptState::Finished,
                selected: 4,
                started_at: 1,
                finished_at: Some(2),
                reason: None,
            })
            .unwrap();
    }
    let failed = serve_must_fail(&state);
    assert_names(&failed, &db, "restore the database from a backup");
    for what in [
        format!("task {TASK_ID}"),
        "round 1, attempt 1".to_string(),
        "the round log has no round 1".to_string(),
    ] {
        assert!(failed.stderr.contains(&what), "{what}: {}", failed.stderr);
    }
    let store = Store::open(&db).unwrap();
    assert_eq!(
        store
            .attempts(TASK_ID)
            .unwrap()
            .iter()
            .map(|a| a.state)
            .collect::<Vec<_>>(),
        vec![AttemptState::Finished],
        "the attempt is left as it was"
    );

    // The finished task's log edited (round 0's participants), the attempt gone.
    store
        .with_conn(|c| {
            c.execute("DELETE FROM round_attempts", [])?;
            c.execute(
                "UPDATE round_log SET participants = 7 WHERE task = ?1",
                [TASK_ID],
            )?;
            Ok(())
        })
        .unwrap();
    drop(store);
    let failed = serve_must_fail(&state);
    assert_names(&failed, &db, "restore the database from a backup");
    assert!(
        failed.stderr.contains(&format!(
            "the round log of task {TASK_ID} (finished) does not verify"
        )),
        "{}",
        failed.stderr
    );
}
