//! Does the owners' HTTP API slow the rounds down? A coordinator with its HTTP server runs a
//! task with N in-process devices (real SecAgg+ clients fed through the scheduler, no QUIC; see
//! `tests/support::fake_devices`), and rounds are timed in alternating blocks: without readers,
//! with R concurrent readers polling the API as fast as they can (the task's rounds, metrics and
//! log, the task list and `/metrics`, one request per fresh TCP connection), without, with, ...,
//! ending without. The growth compares the mean round of the blocks with readers to that of
//! the blocks without, so that drift of a shared machine's load over the run falls on both.
//!
//! `cargo bench --workspace --all-features --bench api_readers` (environment:
//! `COHORT_BENCH_DEVICES` (100), `COHORT_BENCH_READERS` (100), `COHORT_BENCH_ROUNDS` per block
//! (5), `COHORT_BENCH_BLOCKS` (3, odd: without, with, without, ...),
//! `COHORT_BENCH_READER_PAUSE_MS` (0: each reader's pause between two requests; 1000 is a
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
    let blocks = (env("COHORT_BENCH_BLOCKS", 3) as u64 | 1).max(3);
    let pause = Duration::from_millis(env("COHORT_BENCH_READER_PAUSE_MS", 0) as u64);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(devices, readers, rounds, blocks, pause));
}

async fn run(devices: usize, readers: usize, rounds: u64, blocks: u64, pause: Duration) {
    let live = support::Live::start().await;
    let toml = support::task_toml("bench", (1 + blocks * rounds) as u32)
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
    // While a block with readers runs: when it started and the requests done before it.
    let mut running: Option<(Instant, u64)> = None;
    let (mut requests, mut with_s, mut cleared) = (0, 0.0, false);
    while let Ok(e) = events.recv().await {
        match e {
            TaskEvent::RoundCompleted { round, took: t, .. } => {
                if round > 1 {
                    took.push(t.as_secs_f64());
                }
                // Block b runs rounds 2 + b·rounds ..= 1 + (b + 1)·rounds; odd blocks have
                // readers. At the end of a block, switch the readers for the next one.
                if round >= 1 && (round - 1).is_multiple_of(rounds) && round < 1 + blocks * rounds {
                    if ((round - 1) / rounds) % 2 == 1 {
                        if !cleared {
                            latencies.lock().await.clear();
                            cleared = true;
                        }
                        running = Some((Instant::now(), done.load(Ordering::Relaxed)));
                        paused.store(false, Ordering::Relaxed);
                    } else if let Some((since, before)) = running.take() {
                        paused.store(true, Ordering::Relaxed);
                        requests += done.load(Ordering::Relaxed) - before;
                        with_s += since.elapsed().as_secs_f64();
                    }
                }
            }
            TaskEvent::RoundAborted { round, reason, .. } => {
                eprintln!("round {round} aborted: {reason}")
            }
            TaskEvent::TaskFinished { .. } => break,
        }
    }
    let n = rounds as usize;
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
    let block_means: Vec<f64> = took.chunks(n).map(mean).collect();
    let pick = |odd: bool| -> Vec<f64> {
        block_means
            .iter()
            .enumerate()
            .filter(|(b, _)| (b % 2 == 1) == odd)
            .map(|(_, m)| *m)
            .collect()
    };
    let (with, without) = (mean(&pick(true)), mean(&pick(false)));
    let mut lat = latencies.lock().await.clone();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let shown: Vec<String> = block_means
        .iter()
        .enumerate()
        .map(|(b, m)| format!("{m:.3}{}", if b % 2 == 1 { "*" } else { "" }))
        .collect();
    println!(
        "{devices} devices, {readers} readers (pause {} ms), {blocks} blocks of {rounds} rounds \
         (mean round per block, * with readers: {}): {without:.3} s without readers, {with:.3} s \
         with; growth {:+.1}%",
        pause.as_millis(),
        shown.join(" "),
        (with / without - 1.0) * 100.0
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
