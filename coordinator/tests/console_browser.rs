//! The web console in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven by Python's selenium (`console_browser.py`) against a live
//! coordinator with loopback devices. It creates a task, starts it, watches rounds complete,
//! verifies the round log, pauses, resumes and stops it; the screenshots are kept under
//! `$COHORT_ARTIFACTS` (default `target/console-screenshots`).
//!
//! Ignored by default (needs the browser); `.ci/run` runs it as its own step:
//! `cargo test --workspace --all-features --test console_browser -- --ignored`.

mod support;

use std::path::PathBuf;
use std::process::Command;

use cohort_coordinator::states::TaskState;
use support::{Live, task_toml};

fn artifacts() -> PathBuf {
    match std::env::var_os("COHORT_ARTIFACTS") {
        Some(d) => PathBuf::from(d).join("console"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium, chromium-driver and python3-selenium; .ci/run runs it"]
async fn the_console_drives_a_task_in_a_real_browser() {
    let mut live = Live::start().await;
    live.devices(4).await;
    let toml = live.root.join("task.toml");
    // With central differential privacy, so that the console's privacy panel has a budget to show.
    let task = task_toml("digits-live", 1000).replace("max_weight = 16", "max_weight = 1")
        + "\n[privacy]\nmode = \"central\"\nnoise_multiplier = 1.0\nrounds = 1000\n\
           delta = 1e-3\n[privacy.clip]\nnorm = 1.0\n";
    std::fs::write(&toml, task).unwrap();
    let shots = artifacts();
    let base = format!("http://{}", live.http);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console_browser.py");
    let (token, toml2, shots2) = (live.token.clone(), toml.clone(), shots.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(&base)
            .arg(&token)
            .arg(&toml2)
            .arg(&shots2)
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser run failed (screenshots in {}):\n{stdout}\n{}",
        shots.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    eprintln!("console browser run: {summary}");
    assert_eq!(summary["task"], "digits-live");
    assert!(summary["rows_seen"].as_u64().unwrap() >= 3);
    assert!(
        summary["verify"]
            .as_str()
            .unwrap()
            .starts_with("Chain intact")
    );
    let spent = summary["privacy_spent"].as_str().unwrap();
    assert!(
        spent.starts_with("ε ") && spent.contains(" / "),
        "{summary}"
    );
    assert!(
        summary["privacy_points"].as_u64().unwrap() >= 2,
        "{summary}"
    );
    assert!(summary["resumed_to"].as_u64() > summary["paused_at"].as_u64());
    assert_eq!(summary["final_state"], "stopped");
    let first_load = summary["first_load_bytes"].as_u64().unwrap();
    assert!(
        first_load <= 200_000,
        "first load transferred {first_load} bytes"
    );
    assert!(
        summary["phone_overflow_px"].as_i64().unwrap() <= 0,
        "the page scrolls sideways at phone width: {summary}"
    );
    for shot in [
        "01-running.png",
        "02-round-log.png",
        "02-privacy.png",
        "03-paused.png",
        "04-stopped.png",
        "05-phone.png",
    ] {
        assert!(shots.join(shot).exists(), "{shot}");
    }
    // What the browser did is what the coordinator recorded.
    assert_eq!(
        live.coordinator
            .store
            .task("digits-live")
            .unwrap()
            .unwrap()
            .state,
        TaskState::Stopped
    );
    let audit = live.get("/api/v1/audit").await.json();
    let mut actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "ok")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    actions.reverse();
    assert_eq!(
        actions,
        [
            "task.create",
            "task.start",
            "task.pause",
            "task.resume",
            "task.stop"
        ]
    );
}
