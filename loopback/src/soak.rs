//! The soak behind `cohort-loopback bench --churn N` (issue 14): many rounds of one task while
//! devices join and leave, with the coordinator's memory sampled after every round.
//!
//! The coordinator is the real `cohort-coordinator serve` binary as a child process, so its
//! resident set (`VmRSS`, and its anonymous part `RssAnon`, from `/proc/PID/status`) is its own,
//! not mixed with the devices'. The devices are edge clients in this process (the production
//! `run` loop with a [`SyntheticTrainer`]). After every published round (serve's "round
//! finished" log line) the soak samples the child's memory, then churns the population:
//! `churn` running devices leave (their run loop and QUIC endpoint are dropped: a disconnect),
//! as many devices that left earlier come back (a new endpoint, a fresh OPAQUE login with their
//! saved credentials: a reconnect), and every `enroll_every` rounds one of those is a device
//! that has never been seen (a new enrollment, so accounts and the identity log grow).
//!
//! The result is a least-squares slope of memory per round over the post-warm-up window (the
//! last half of the rounds): a plateau reads as a slope near zero; a leak of x bytes per round
//! reads as x/1024 KiB per round, whatever the warm-up did.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cohort_edge::eligibility::EligibilityPolicy;
use cohort_edge::run::{Backoff, RunConfig, RunError, run};
use cohort_net::{CertFingerprint, ClientTransport, ServerTrust, TransportOptions};
use cohort_protocol::TaskId;
use cohort_task::config::{DeadlineConfig, ModelConfig};
use tokio::task::JoinHandle;

use crate::bench::model_for_dim;
use crate::clients::enroll_at;
use crate::demo::{DemoConfig, demo_task};
use crate::process::{Serve, ServeLog};
use crate::synthetic::SyntheticTrainer;

/// The soak's task id.
pub const SOAK_TASK: &str = "soak";

/// What the soak runs.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    /// Devices online at any time.
    pub online: usize,
    /// Devices selected per round (the task's `clients_per_round`).
    pub select: usize,
    /// Parameters of the model (see [`model_for_dim`]).
    pub dim: usize,
    /// Rounds.
    pub rounds: u32,
    /// The task's selection window in seconds (it also paces the rounds).
    pub window_secs: f64,
    /// Devices that leave after each round, and as many that come back or join.
    pub churn: usize,
    /// One of the devices that come back is a new enrollment every this many rounds (0: none).
    pub enroll_every: u32,
    /// Seed of who leaves and who comes back.
    pub seed: u64,
}

/// Memory and population after one published round.
#[derive(Clone, Copy, Debug)]
pub struct SoakSample {
    /// Rounds published so far.
    pub round: u32,
    /// The coordinator's `VmRSS`, KiB.
    pub vm_rss_kib: u64,
    /// Its `RssAnon` (heap, stacks: what allocations hold), KiB.
    pub rss_anon_kib: u64,
    /// Its `RssFile` (mapped binary and libraries), KiB.
    pub rss_file_kib: u64,
    /// The database file with its write-ahead log, KiB (what SQLite's page cache draws from).
    pub database_kib: u64,
    /// Devices running when the sample was taken.
    pub online: usize,
    /// Accounts enrolled so far.
    pub accounts: usize,
    /// Logged-in sessions the coordinator counted when it published the round.
    pub sessions: Option<u64>,
    /// QUIC connections its endpoint held then (open, or closing and not yet drained).
    pub quic_connections: Option<u64>,
}

/// What [`run_soak`] measured.
#[derive(Clone, Debug)]
pub struct SoakReport {
    /// One sample per published round.
    pub samples: Vec<SoakSample>,
    /// The coordinator's `VmHWM` (peak resident set) at the end, KiB.
    pub peak_kib: u64,
    /// Disconnects, reconnects and new enrollments done.
    pub left: usize,
    /// Devices that came back with their saved credentials.
    pub rejoined: usize,
    /// New enrollments after the start.
    pub enrolled: usize,
    /// Devices whose run loop ended by itself (each is printed with its reason when seen).
    pub stopped: usize,
    /// Wall time of the rounds.
    pub took: Duration,
}

/// A least-squares fit of `y` against the round number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Slope {
    /// KiB per round.
    pub per_round: f64,
    /// Its standard error (KiB per round).
    pub std_error: f64,
    /// Points fitted.
    pub points: usize,
}

/// Fits `ys` (one value per round) against their index; `None` with fewer than three points.
pub fn fit_slope(ys: &[f64]) -> Option<Slope> {
    if ys.len() < 3 {
        return None;
    }
    let n = ys.len() as f64;
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = ys.iter().sum::<f64>() / n;
    let (mut cov, mut var) = (0.0, 0.0);
    for (i, y) in ys.iter().enumerate() {
        let dx = i as f64 - mean_x;
        cov += dx * (y - mean_y);
        var += dx * dx;
    }
    let slope = cov / var;
    let intercept = mean_y - slope * mean_x;
    let residuals: f64 = ys
        .iter()
        .enumerate()
        .map(|(i, y)| (y - intercept - slope * i as f64).powi(2))
        .sum();
    Some(Slope {
        per_round: slope,
        std_error: (residuals / (n - 2.0) / var).sqrt(),
        points: ys.len(),
    })
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `RssAnon`, `VmHWM`, ...).
pub fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status (Linux only)"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} line in /proc/{pid}/status"))
}

/// One device: its state directory and password, and its run loop while it is online.
struct Device {
    index: usize,
    dir: PathBuf,
    password: String,
    running: Option<JoinHandle<Result<u32, RunError>>>,
}

/// The coordinator as the devices see it.
#[derive(Clone, Copy)]
struct Target {
    addr: std::net::SocketAddr,
    fingerprint: CertFingerprint,
}

impl Device {
    /// Enrolls device `index` (open enrollment, the certificate pinned).
    async fn enroll(root: &Path, index: usize, target: Target) -> anyhow::Result<Self> {
        let dir = root.join(format!("device-{index:04}"));
        std::fs::create_dir_all(&dir)?;
        let password = format!("soak-password-{index}");
        let transport = ClientTransport::bind(
            "127.0.0.1:0".parse()?,
            ServerTrust::Pinned(target.fingerprint),
            TransportOptions::default(),
        )?;
        enroll_at(
            &transport,
            target.addr,
            target.fingerprint,
            &dir,
            &format!("soak{index:04}"),
            &password,
            None,
        )
        .await
        .with_context(|| format!("device {index} could not enroll"))?;
        Ok(Self {
            index,
            dir,
            password,
            running: None,
        })
    }

    /// Starts its run loop on a new QUIC endpoint: it logs in with its saved credentials.
    fn start(&mut self, target: Target) -> anyhow::Result<()> {
        let transport = ClientTransport::bind(
            "127.0.0.1:0".parse()?,
            ServerTrust::Pinned(target.fingerprint),
            TransportOptions::default(),
        )?;
        let config = RunConfig {
            task: Some(TaskId(SOAK_TASK.into())),
            eligibility: EligibilityPolicy::always(),
            backoff: Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(2),
            },
            max_rounds: None,
            max_failures: u32::MAX,
            ..RunConfig::new(target.addr, self.dir.clone(), self.password.clone())
        };
        let trainer = Box::new(SyntheticTrainer::new(self.index as u64, 100));
        self.running = Some(tokio::spawn(async move {
            run(&transport, &config, trainer, None).await
        }));
        Ok(())
    }

    /// Drops its run loop and endpoint: the coordinator sees the connection close.
    fn stop(&mut self) {
        if let Some(h) = self.running.take() {
            h.abort();
        }
    }

    fn online(&self) -> bool {
        self.running.as_ref().is_some_and(|h| !h.is_finished())
    }
}

/// Who leaves and who comes back: SplitMix64, enough for a reproducible shuffle (this crate
/// does not link `rand`).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fisher–Yates.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// Runs `cohort-coordinator --state STATE ARGS…` to completion.
fn coordinator_cli(bin: &Path, state: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("--state")
        .arg(state)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "cohort-coordinator {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The soak's task: the bench task (synthetic updates, SecAgg+ with the consistency check) of
/// `select` devices a round, without evaluation, with short deadlines so that an attempt a
/// departing device sinks is retried soon.
fn soak_task_toml(config: &SoakConfig) -> anyhow::Result<String> {
    let mut task = demo_task(&DemoConfig {
        clients: config.select,
        rounds: config.rounds,
        ..DemoConfig::default()
    });
    task.id = SOAK_TASK.into();
    task.model = ModelConfig::from_spec(&model_for_dim(config.dim));
    task.evaluate_every = 0;
    task.selection.window_secs = config.window_secs;
    task.deadlines = DeadlineConfig {
        advertise_keys: 20.0,
        share_keys: 20.0,
        masked_input: 60.0,
        unmask: 20.0,
    };
    Ok(cohort_coordinator::task::TaskDefinition::new(task)?.to_toml()?)
}

/// Runs the soak with the coordinator binary `bin`, printing one line per round as it goes.
pub async fn run_soak(bin: &Path, config: &SoakConfig) -> anyhow::Result<SoakReport> {
    anyhow::ensure!(
        config.online >= config.select && config.select >= cohort_task::MIN_COHORT as usize,
        "the soak needs at least {} devices selected a round and at least as many online",
        cohort_task::MIN_COHORT
    );
    let root = tempfile::Builder::new().prefix("cohort-soak-").tempdir()?;
    let state = root.path().join("coordinator");
    let task_file = root.path().join("soak.toml");
    std::fs::write(&task_file, soak_task_toml(config)?)?;
    let task_path = task_file.to_string_lossy().into_owned();
    coordinator_cli(bin, &state, &["task", "create", &task_path])?;
    coordinator_cli(bin, &state, &["task", "start", SOAK_TASK])?;
    let mut command = Command::new(bin);
    command
        .arg("--state")
        .arg(&state)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--open-enrollment",
            "--no-http",
            "--round-estimate-secs",
            "2",
        ])
        .env("RUST_LOG", "warn,cohort_coordinator::scheduler=info")
        .env("NO_COLOR", "1");
    let serve = tokio::task::spawn_blocking(move || Serve::spawn(command, ServeLog::Followed))
        .await
        .context("starting cohort-coordinator serve")?;
    run_with(serve, root.path(), config).await
}

async fn run_with(
    mut serve: Serve,
    root: &Path,
    config: &SoakConfig,
) -> anyhow::Result<SoakReport> {
    let pid = serve.child.id();
    let fingerprint = crate::process::parse_fingerprint(&serve.fingerprint);
    let addr = listening_addr(&serve)?;
    let target = Target { addr, fingerprint };
    let mut rng = SplitMix64(config.seed);
    // `churn` more accounts than devices online, so that those who leave are replaced by
    // devices that left earlier.
    let mut devices = Vec::with_capacity(config.online * 2);
    for i in 0..config.online + config.churn {
        let mut d = Device::enroll(root, i, target).await?;
        if i < config.online {
            d.start(target)?;
        }
        devices.push(d);
    }
    let mut report = SoakReport {
        samples: Vec::with_capacity(config.rounds as usize),
        peak_kib: 0,
        left: 0,
        rejoined: 0,
        stopped: 0,
        enrolled: 0,
        took: Duration::ZERO,
    };
    let started = Instant::now();
    for round in 1..=config.rounds {
        let line = serve
            .wait_for(Duration::from_secs(900), |l| l.contains("round finished"))
            .await;
        let line = crate::process::strip_ansi(&line);
        let sample = SoakSample {
            round,
            vm_rss_kib: proc_status_kib(pid, "VmRSS")?,
            rss_anon_kib: proc_status_kib(pid, "RssAnon")?,
            rss_file_kib: proc_status_kib(pid, "RssFile")?,
            database_kib: database_kib(&root.join("coordinator")),
            online: devices.iter().filter(|d| d.online()).count(),
            accounts: devices.len(),
            sessions: log_field(&line, "sessions"),
            quic_connections: log_field(&line, "quic_connections"),
        };
        let count = |n: Option<u64>| n.map_or_else(|| "?".to_string(), |n| n.to_string());
        println!(
            "  round {round:>5}: VmRSS {:>7} KiB  RssAnon {:>7} KiB  RssFile {:>6} KiB  database {:>6} KiB  online {:>4}  accounts {:>5}  sessions {:>4}  QUIC connections {:>4}",
            sample.vm_rss_kib,
            sample.rss_anon_kib,
            sample.rss_file_kib,
            sample.database_kib,
            sample.online,
            sample.accounts,
            count(sample.sessions),
            count(sample.quic_connections)
        );
        report.samples.push(sample);
        if round == config.rounds {
            break;
        }
        // A device whose run loop ended by itself is offline now; say why.
        for d in devices.iter_mut() {
            if let Some(h) = d.running.take_if(|h| h.is_finished()) {
                let why = match h.await {
                    Ok(Ok(rounds)) => format!("returned after {rounds} rounds"),
                    Ok(Err(e)) => format!("failed: {e}"),
                    Err(e) => format!("its task ended: {e}"),
                };
                println!(
                    "  device {} stopped by itself after round {round}: {why}",
                    d.index
                );
                report.stopped += 1;
            }
        }
        // Churn: some devices leave now, as many come back (or join for the first time).
        let mut online: Vec<usize> = (0..devices.len())
            .filter(|&i| devices[i].online())
            .collect();
        rng.shuffle(&mut online);
        let leaving: Vec<usize> = online.into_iter().take(config.churn).collect();
        let mut offline: Vec<usize> = (0..devices.len())
            .filter(|&i| !devices[i].online() && !leaving.contains(&i))
            .collect();
        rng.shuffle(&mut offline);
        for &i in &leaving {
            devices[i].stop();
            report.left += 1;
        }
        let mut coming = leaving.len();
        if config.enroll_every > 0 && round % config.enroll_every == 0 && coming > 0 {
            let index = devices.len();
            let mut d = Device::enroll(root, index, target).await?;
            d.start(target)?;
            devices.push(d);
            report.enrolled += 1;
            coming -= 1;
        }
        for i in offline.into_iter().take(coming) {
            devices[i].start(target)?;
            report.rejoined += 1;
            coming -= 1;
        }
        // Fewer devices were offline than left: those that just left come straight back.
        for &i in leaving.iter().take(coming) {
            devices[i].start(target)?;
            report.rejoined += 1;
        }
    }
    report.took = started.elapsed();
    report.peak_kib = proc_status_kib(pid, "VmHWM")?;
    for d in &mut devices {
        d.stop();
    }
    drop(serve);
    Ok(report)
}

/// The number after `name=` in a log line (`quic_connections=42`), if there is one.
fn log_field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// The size of the database and its write-ahead log in the state directory `state`, KiB.
fn database_kib(state: &Path) -> u64 {
    let db = cohort_coordinator::store::DB_FILE;
    [db.to_string(), format!("{db}-wal")]
        .iter()
        .filter_map(|name| std::fs::metadata(state.join(name)).ok())
        .map(|m| m.len())
        .sum::<u64>()
        / 1024
}

/// The QUIC address in serve's first line, `listening on ADDR (certificate fingerprint HEX)`.
fn listening_addr(serve: &Serve) -> anyhow::Result<std::net::SocketAddr> {
    serve
        .listening
        .trim()
        .strip_prefix("listening on ")
        .and_then(|rest| rest.split_once(' '))
        .and_then(|(addr, _)| addr.parse().ok())
        .with_context(|| {
            format!(
                "unexpected first line from the coordinator: {:?}",
                serve.listening
            )
        })
}

/// Prints the soak's summary: memory at the end of the warm-up and at the end, and the slope
/// over the last half of the rounds (and over all rounds after the first tenth).
pub fn print_summary(config: &SoakConfig, report: &SoakReport) {
    let rss: Vec<f64> = report.samples.iter().map(|s| s.vm_rss_kib as f64).collect();
    let anon: Vec<f64> = report
        .samples
        .iter()
        .map(|s| s.rss_anon_kib as f64)
        .collect();
    let n = rss.len();
    println!(
        "soak: {n} rounds in {:.0} s; {} disconnects, {} reconnects, {} new enrollments, {} \
         devices stopped by themselves; {} accounts at the end; coordinator peak VmHWM {} KiB",
        report.took.as_secs_f64(),
        report.left,
        report.rejoined,
        report.enrolled,
        report.stopped,
        report.samples.last().map_or(0, |s| s.accounts),
        report.peak_kib
    );
    if let Some(last) = report.samples.last()
        && let (Some(quic), Some(sessions)) = (last.quic_connections, last.sessions)
    {
        let most = report
            .samples
            .iter()
            .filter_map(|s| s.quic_connections)
            .max()
            .unwrap_or(quic);
        println!(
            "soak: the coordinator held {quic} QUIC connections after the last round ({sessions} \
             logged-in sessions, {} devices online), at most {most} after any round",
            last.online
        );
    }
    if n < 6 {
        println!("soak: too few rounds for a slope");
        return;
    }
    let half = n / 2;
    let tenth = (n / 10).max(1);
    let show = |name: &str, ys: &[f64]| {
        let last_half = fit_slope(&ys[half..]);
        let after_tenth = fit_slope(&ys[tenth..]);
        if let (Some(h), Some(t)) = (last_half, after_tenth) {
            println!(
                "soak: {name}: {:.0} KiB after round {tenth}, {:.0} KiB after round {half}, \
                 {:.0} KiB at the end; slope over rounds {}..{n}: {:+.3} ± {:.3} KiB per round; \
                 over rounds {}..{n}: {:+.3} ± {:.3}",
                ys[tenth - 1],
                ys[half - 1],
                ys[n - 1],
                half + 1,
                h.per_round,
                h.std_error,
                tenth + 1,
                t.per_round,
                t.std_error
            );
        }
    };
    show("VmRSS", &rss);
    show("RssAnon", &anon);
    if let Some(h) = fit_slope(&rss[half..]) {
        println!(
            "soak: meaning: after warm-up the coordinator's resident set changes by {:+.1} KiB per \
             round, {:+.2} MiB per 1,000 rounds at this pace ({} devices online, {} per round, \
             {} leaving and coming back each round); a slope within two standard errors of 0 is \
             no measurable growth",
            h.per_round,
            h.per_round * 1000.0 / 1024.0,
            config.online,
            config.select,
            config.churn
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_of_a_line_is_exact_and_a_plateau_reads_zero() {
        let line: Vec<f64> = (0..10).map(|i| 100.0 + 2.5 * i as f64).collect();
        let s = fit_slope(&line).unwrap();
        assert!((s.per_round - 2.5).abs() < 1e-12, "{s:?}");
        assert!(s.std_error < 1e-9, "{s:?}");
        let plateau = [7.0, 9.0, 7.0, 9.0, 7.0, 9.0, 7.0, 9.0];
        let p = fit_slope(&plateau).unwrap();
        assert!(p.per_round.abs() < 2.0 * p.std_error, "{p:?}");
        assert_eq!(fit_slope(&[1.0, 2.0]), None);
    }

    #[test]
    fn reads_counts_from_a_log_line() {
        let line = "INFO cohort_coordinator::scheduler: round finished task=soak round=3 \
                    sessions=40 quic_connections=43";
        assert_eq!(log_field(line, "sessions"), Some(40));
        assert_eq!(log_field(line, "quic_connections"), Some(43));
        assert_eq!(log_field(line, "round"), Some(3));
        assert_eq!(log_field(line, "task"), None);
        assert_eq!(log_field(line, "missing"), None);
    }

    #[test]
    fn reads_fields_of_this_process_status() {
        let me = std::process::id();
        let rss = proc_status_kib(me, "VmRSS").unwrap();
        assert!(rss > 0);
        assert!(proc_status_kib(me, "RssAnon").unwrap() <= rss);
        assert!(proc_status_kib(me, "NoSuchField").is_err());
    }

    #[test]
    fn the_soak_task_is_a_valid_task_file() {
        let toml = soak_task_toml(&SoakConfig {
            online: 12,
            select: 6,
            dim: 2410,
            rounds: 1000,
            window_secs: 1.0,
            churn: 2,
            enroll_every: 10,
            seed: 1,
        })
        .unwrap();
        let def = cohort_coordinator::task::TaskDefinition::from_toml(&toml).unwrap();
        assert_eq!(def.id, SOAK_TASK);
        assert_eq!(def.selection.clients_per_round, 6);
        assert_eq!(def.rounds, 1000);
    }
}
