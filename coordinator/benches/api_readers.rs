//! Does the owners' HTTP API slow the rounds down? A coordinator with its HTTP server runs a
//! task with N in-process devices (real SecAgg+ clients fed through the scheduler, no QUIC; see
//! `tests/support::fake_devices`), and rounds are timed in three blocks: without readers, with R
//! concurrent readers polling the API as fast as they can (the task's rounds, metrics and log,
//! the task list and `/metrics`, one request per fresh TCP connection), and without readers
//! again.
//!
//! `cargo bench --workspace --all-features --bench api_readers` (environment:
//! `COHORT_BENCH_DEVICES` (100), `COHORT_BENCH_READERS` (100), `COHORT_BENCH_ROUNDS` per block
//! (5), `COHORT_BENCH_READER_PAUSE_MS` (0: each reader's pause between two requests; 1000 is a
//! console refreshing once a second)).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cohort_coordinator::scheduler::TaskEvent;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let devices = env("COHORT_BENCH_DEVICES", 100);
    let readers = env("COHORT_BENCH_READERS", 100);
    let rounds = env("COHORT_BENCH_ROUNDS", 5) as u64;
    let pause = Duration::from_millis(env("COHORT_BENCH_READER_PAUSE_MS", 0) as u64);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(devices, readers, rounds, pause));
}

async fn run(devices: usize, readers: usize, rounds: u64, pause: Duration) {
    let live = support::Live::start().await;
    let toml = support::task_toml("bench", (1 + 3 * rounds) as u32)
        .replace(
            "clients_per_round = 4",
            &format!("clients_per_round = {devices}"),
        )
        .replace("window_secs = 1", "window_secs = 30")
        .replace("evaluate_every = 1", "evaluate_every = 0")
        // The fake devices have no identity keys.
        .replace("[secagg]", "[secagg]\nconsistency_check = false");
    let mut events = live.coordinator.scheduler.subscribe();
    let r = live.post("/api/v1/tasks", &toml).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let _devices = support::fake_devices(live.coordinator.scheduler.clone(), devices as u64);
    assert_eq!(live.post("/api/v1/tasks/bench/start", "").await.status, 200);

    let paused = Arc::new(AtomicBool::new(true));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(tokio::sync::Mutex::new(Vec::<f64>::new()));
    let paths = [
        "/api/v1/tasks/bench/rounds",
        "/api/v1/tasks/bench/metrics",
        "/api/v1/tasks/bench/log",
        "/api/v1/tasks",
        "/metrics",
    ];
    for r in 0..readers {
        let (paused, done, failed, latencies, token, http) = (
            paused.clone(),
            done.clone(),
            failed.clone(),
            latencies.clone(),
            live.token.clone(),
            live.http,
        );
        tokio::spawn(async move {
            let mut i = r;
            loop {
                if paused.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let t = Instant::now();
                let resp =
                    support::request(http, "GET", paths[i % paths.len()], Some(&token), None).await;
                if resp.status == 200 {
                    done.fetch_add(1, Ordering::Relaxed);
                    latencies
                        .lock()
                        .await
                        .push(t.elapsed().as_secs_f64() * 1000.0);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        });
    }
    let mut took = Vec::new();
    let (mut start, mut requests, mut with_s) = (None, 0, 0.0);
    while let Ok(e) = events.recv().await {
        match e {
            TaskEvent::RoundCompleted { round, took: t, .. } => {
                if round > 1 {
                    took.push(t.as_secs_f64());
                }
                if round == 1 + rounds {
                    latencies.lock().await.clear();
                    requests = done.load(Ordering::Relaxed);
                    start = Some(Instant::now());
                    paused.store(false, Ordering::Relaxed);
                }
                if round == 1 + 2 * rounds {
                    paused.store(true, Ordering::Relaxed);
                    requests = done.load(Ordering::Relaxed) - requests;
                    with_s = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
                }
            }
            TaskEvent::RoundAborted { round, reason, .. } => {
                eprintln!("round {round} aborted: {reason}")
            }
            TaskEvent::TaskFinished { .. } => break,
        }
    }
    let n = rounds as usize;
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let blocks = [
        mean(&took[..n]),
        mean(&took[n..2 * n]),
        mean(&took[2 * n..]),
    ];
    let mut lat = latencies.lock().await.clone();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{devices} devices, {readers} readers (pause {} ms), {rounds} rounds per block: mean round \
         {:.3} s without readers, {:.3} s with, {:.3} s without again; growth {:+.1}%",
        pause.as_millis(),
        blocks[0],
        blocks[1],
        blocks[2],
        (blocks[1] / ((blocks[0] + blocks[2]) / 2.0) - 1.0) * 100.0
    );
    println!(
        "readers: {requests} requests in {with_s:.1} s ({:.0}/s), latency p50 {:.1} ms, p99 {:.1} \
         ms, {} failed",
        requests as f64 / with_s.max(1e-9),
        pct(0.5),
        pct(0.99),
        failed.load(Ordering::Relaxed)
    );
}
