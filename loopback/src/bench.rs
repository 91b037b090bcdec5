//! The scale benchmark behind `cohort-loopback bench`: one coordinator and N real edge
//! clients on loopback (QUIC, OPAQUE login, SecAgg+), with a [`SyntheticTrainer`](crate::synthetic::SyntheticTrainer) that returns a
//! pseudo-random update at once, so that a round's time measures the system and not training.
//!
//! Two measurements, printed as tables:
//! - [`run_rounds`]: the coordinator in this process, N clients as separate QUIC endpoints in
//!   this process. Per round: wall time (from the cohort's formation to the published model) and
//!   the time of each SecAgg+ phase as the round driver recorded it; per client and round: the
//!   frame bytes of each message kind it uploaded and downloaded, from the coordinator's traffic
//!   counters ([`Traffic`]).
//! - [`idle_memory`]: the coordinator as a child process (`cohort-coordinator serve`), N clients
//!   in this process. The coordinator's resident set (`VmRSS` in `/proc/PID/status`) with N
//!   accounts enrolled and no connection, then with the N clients logged in and idle; the
//!   difference divided by N is the memory one connected idle client costs.
//!
//! Argon2 uses the fast test parameters (the password stretching runs on the clients, which
//! share this machine with the coordinator); everything else is what a deployment runs.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cohort_aggregation::secagg::config::adversary_class;
use cohort_aggregation::secagg::params::choose_graph_params_for;
use cohort_coordinator::metrics::Traffic;
use cohort_coordinator::scheduler::{SchedulerOptions, TaskEvent};
use cohort_coordinator::server::{Coordinator, ServerConfig};
use cohort_coordinator::states::RoundState;
use cohort_coordinator::task::TaskDefinition;
use cohort_edge::enroll;
use cohort_net::{CertFingerprint, ClientTransport, FramedStream, ServerTrust, TransportOptions};
use cohort_protocol::{DEFAULT_MAX_FRAME_LEN, LayerSpec, ModelSpec};
use cohort_task::config::{DeadlineConfig, ModelConfig};

use crate::demo::{DemoConfig, demo_task};
use crate::farm::{FarmConfig, FarmProcess};

/// The model benchmarked for about `dim` parameters: the digits MLP (64-32-10, 2,410
/// parameters) for `dim` up to 2,410, otherwise an MLP 784-h-200-10 with h chosen so that the
/// count is closest to `dim` (985·h + 2,210 parameters; h = 1,013 gives 1,000,015).
pub fn model_for_dim(dim: usize) -> ModelSpec {
    if dim <= 2410 {
        return ModelSpec::digits_mlp();
    }
    let hidden = ((dim.saturating_sub(2210) as f64) / 985.0)
        .round()
        .clamp(1.0, 1e9) as u32;
    ModelSpec {
        input_shape: vec![784],
        layers: vec![
            LayerSpec::Linear { out: hidden },
            LayerSpec::Relu,
            LayerSpec::Linear { out: 200 },
            LayerSpec::Relu,
            LayerSpec::Linear { out: 10 },
        ],
        num_classes: 10,
    }
}

/// The number of parameters of `spec`.
pub fn parameter_count(spec: &ModelSpec) -> anyhow::Result<usize> {
    let layout = spec.parameter_layout()?;
    Ok(layout.last().map_or(0, |b| b.offset + b.len()))
}

/// What [`run_rounds`] measured.
#[derive(Clone, Debug)]
pub struct RoundsReport {
    /// Clients per round (the per-client figures divide by it).
    pub clients: usize,
    /// Parameters of the model.
    pub dim: usize,
    /// Per completed round: wall time, contributors, and the time of each phase (phase name,
    /// seconds) as the round driver recorded it.
    pub rounds: Vec<RoundTiming>,
    /// The coordinator's traffic over all rounds, by message kind.
    pub traffic: Traffic,
    /// From the start of the login storm to the first round's start.
    pub login_and_select: Duration,
    /// The SecAgg+ graph of a full cohort: neighbours k and threshold t, as the task's
    /// parameter finder chooses them (`None` if it found none).
    pub graph: Option<(u32, u32)>,
}

/// One round's timing.
#[derive(Clone, Debug)]
pub struct RoundTiming {
    /// From the cohort's formation to the published model.
    pub took: Duration,
    /// Inputs in the sum.
    pub contributors: u32,
    /// Phase name and seconds.
    pub phases: Vec<(String, f64)>,
    /// This process's `VmRSS` (the coordinator's) when the round was published, in KiB.
    pub rss_kib: Option<u64>,
    /// When it was published, from the start of the login storm.
    pub published: Duration,
    /// CPU seconds the coordinator (this process) had used when it was published, since the
    /// start of the login storm.
    pub coordinator_cpu: Option<f64>,
    /// The same for the clients (the device farm's process).
    pub clients_cpu: Option<f64>,
}

impl RoundsReport {
    /// Mean time from one published round to the next (what a task sustains: the round, the
    /// pause before its members are selected again, the next cohort's check-ins and weights
    /// downloads); `None` with fewer than two rounds.
    pub fn cycle(&self) -> Option<f64> {
        let (first, last) = (self.rounds.first()?, self.rounds.last()?);
        let n = self.rounds.len().checked_sub(1).filter(|n| *n > 0)?;
        Some((last.published - first.published).as_secs_f64() / n as f64)
    }

    /// CPU seconds per round of the coordinator and of the clients: between the first and the
    /// last published round when there are two or more (a whole cycle each), otherwise from the
    /// start of the login storm.
    pub fn cpu_per_round(&self) -> (Option<f64>, Option<f64>) {
        let per = |f: fn(&RoundTiming) -> Option<f64>| {
            let last = f(self.rounds.last()?)?;
            match self.rounds.len() {
                0 => None,
                1 => Some(last),
                n => Some((last - f(self.rounds.first()?)?) / (n - 1) as f64),
            }
        };
        (per(|t| t.coordinator_cpu), per(|t| t.clients_cpu))
    }
}

/// Least-squares slope of `values` against their index (per round), after the first `skip`
/// (warm-up); `None` with fewer than two points left.
pub fn slope_after(values: &[f64], skip: usize) -> Option<f64> {
    let ys = values.get(skip..)?;
    let n = ys.len() as f64;
    if ys.len() < 2 {
        return None;
    }
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = ys.iter().sum::<f64>() / n;
    let (mut cov, mut var) = (0.0, 0.0);
    for (i, y) in ys.iter().enumerate() {
        let dx = i as f64 - mean_x;
        cov += dx * (y - mean_y);
        var += dx * dx;
    }
    Some(cov / var)
}

impl RoundsReport {
    /// Mean bytes per client per round of the received `kind` (0 when absent).
    pub fn up_per_client(&self, kind: &str) -> f64 {
        per_client(
            &self.traffic.received,
            kind,
            self.clients,
            self.rounds.len(),
        )
    }

    /// Mean bytes per client per round of the sent `kind` (0 when absent).
    pub fn down_per_client(&self, kind: &str) -> f64 {
        per_client(&self.traffic.sent, kind, self.clients, self.rounds.len())
    }
}

fn per_client(
    by_kind: &cohort_coordinator::metrics::TrafficByKind,
    kind: &str,
    clients: usize,
    rounds: usize,
) -> f64 {
    let bytes = by_kind.get(kind).map_or(0, |t| t.bytes);
    bytes as f64 / (clients.max(1) * rounds.max(1)) as f64
}

/// The demo's loopback settings, with room for 1M-parameter checkpoints.
fn bench_server_config(state_dir: PathBuf) -> ServerConfig {
    let mut config = crate::clients::server_config(state_dir, None);
    config.scheduler = SchedulerOptions {
        unmask_threads: 2,
        initial_round_estimate: Duration::from_secs(10),
        max_checkpoint_bytes: 1 << 32,
        ..SchedulerOptions::default()
    };
    config
}

/// Runs `rounds` rounds of a task over `clients` clients and a model of about `dim`
/// parameters, every client selected in every round. The clients run in a device farm, a child
/// process started from `farm_bin` (a `cohort-loopback` binary; see [`crate::farm`]).
pub async fn run_rounds(
    farm_bin: &Path,
    clients: usize,
    dim: usize,
    rounds: u32,
) -> anyhow::Result<RoundsReport> {
    run_rounds_selecting(farm_bin, clients, clients, dim, rounds, DEFAULT_WINDOW_SECS).await
}

/// The bench task's selection window: hundreds of clients must all check in before a round
/// starts. The last round's members wait half a window before they are selected again, so
/// this also paces the rounds (a soak sets it short).
pub const DEFAULT_WINDOW_SECS: f64 = 30.0;

/// [`run_rounds`] with `selected` clients per round among the `clients` connected (all of
/// them check in; the others are told to come back later, as a large population is).
pub async fn run_rounds_selecting(
    farm_bin: &Path,
    clients: usize,
    selected: usize,
    dim: usize,
    rounds: u32,
    window_secs: f64,
) -> anyhow::Result<RoundsReport> {
    let root = tempfile::Builder::new()
        .prefix("cohort-bench-rounds-")
        .tempdir()?;
    run_rounds_in(
        root.path(),
        farm_bin,
        clients,
        selected.min(clients),
        dim,
        rounds,
        window_secs,
    )
    .await
}

async fn run_rounds_in(
    root: &Path,
    farm_bin: &Path,
    clients: usize,
    selected: usize,
    dim: usize,
    rounds: u32,
    window_secs: f64,
) -> anyhow::Result<RoundsReport> {
    let model = model_for_dim(dim);
    let dim = parameter_count(&model)?;
    let coordinator = Coordinator::start(bench_server_config(root.join("coordinator"))).await?;
    let mut task = demo_task(&DemoConfig {
        clients: selected,
        rounds,
        ..DemoConfig::default()
    });
    task.id = "bench".into();
    task.model = ModelConfig::from_spec(&model);
    task.evaluate_every = 0;
    task.selection.window_secs = window_secs;
    task.deadlines = DeadlineConfig {
        advertise_keys: 120.0,
        share_keys: 120.0,
        masked_input: 600.0,
        unmask: 120.0,
    };
    let graph = choose_graph_params_for(
        selected as u32,
        task.secagg.adversarial_fraction,
        task.secagg.dropout_fraction,
        adversary_class(task.secagg.consistency_check),
    )
    .ok()
    .map(|g| (g.neighbours, g.threshold));
    let mut events = coordinator.scheduler.subscribe();
    coordinator.create_and_start(TaskDefinition::new(task)?)?;
    let farm_config = FarmConfig {
        server: coordinator.addr,
        fingerprint: coordinator.fingerprint,
        root: root.join("clients"),
        clients,
        rounds,
    };
    let bin = farm_bin.to_path_buf();
    let mut farm = tokio::task::spawn_blocking(move || FarmProcess::start(&bin, &farm_config))
        .await
        .context("starting the device farm")??;
    let before = coordinator.scheduler.metrics().traffic();
    let cpu_at_start = (process_cpu_seconds(), farm.cpu_seconds());
    let storm = Instant::now();
    farm.go()?;
    let mut report = RoundsReport {
        clients: selected,
        dim,
        rounds: Vec::new(),
        traffic: Traffic::default(),
        login_and_select: Duration::ZERO,
        graph,
    };
    let since = |now: Option<f64>, start: Option<f64>| Some(now? - start?);
    loop {
        let event = match tokio::time::timeout(Duration::from_secs(1800), events.recv()).await {
            Ok(Ok(e)) => e,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(e)) => anyhow::bail!("the scheduler stopped: {e}"),
            Err(_) => anyhow::bail!("no round finished in 30 minutes"),
        };
        match event {
            TaskEvent::RoundCompleted {
                took, contributors, ..
            } => {
                let published = storm.elapsed();
                if report.rounds.is_empty() {
                    report.login_and_select = published.saturating_sub(took);
                }
                report.rounds.push(RoundTiming {
                    took,
                    contributors,
                    phases: Vec::new(),
                    rss_kib: vm_rss_kib(std::process::id()).ok(),
                    published,
                    coordinator_cpu: since(process_cpu_seconds(), cpu_at_start.0),
                    clients_cpu: since(farm.cpu_seconds(), cpu_at_start.1),
                });
            }
            TaskEvent::RoundAborted { reason, round, .. } => {
                eprintln!("  round {round} aborted: {reason}");
            }
            TaskEvent::TaskFinished { .. } => break,
        }
    }
    report.traffic = coordinator.scheduler.metrics().traffic().since(&before);
    let rows = coordinator.store.rounds("bench")?;
    let finished = rows.iter().filter(|r| r.state == RoundState::Finished);
    for (timing, row) in report.rounds.iter_mut().zip(finished) {
        timing.phases = row
            .metrics
            .as_deref()
            .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
            .and_then(|v| v.get("phases_ms").cloned())
            .and_then(|p| serde_json::from_value::<Vec<(String, u64)>>(p).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|(name, ms)| (name, ms as f64 / 1000.0))
            .collect();
    }
    // With every client selected, each stops after its last round: give them a minute to say
    // goodbye. Otherwise most were never selected and would keep checking in: the task is
    // over, stop them.
    let wait = if selected < clients {
        Duration::ZERO
    } else {
        Duration::from_secs(60)
    };
    let clean = tokio::task::spawn_blocking(move || farm.finish(wait)).await?;
    if !clean && selected == clients {
        eprintln!("  the device farm did not end cleanly (see its messages above)");
    }
    coordinator.shutdown();
    Ok(report)
}

/// What [`idle_memory`] measured.
#[derive(Clone, Debug)]
pub struct MemoryReport {
    /// Clients.
    pub clients: usize,
    /// The coordinator's `VmRSS` with the accounts enrolled and no connection, in KiB.
    pub baseline_kib: u64,
    /// Its `VmRSS` with every client logged in and idle, in KiB.
    pub connected_kib: u64,
    /// How long the login storm took.
    pub logins: Duration,
}

impl MemoryReport {
    /// KiB per connected idle client.
    pub fn per_client_kib(&self) -> f64 {
        self.connected_kib.saturating_sub(self.baseline_kib) as f64 / self.clients.max(1) as f64
    }
}

/// Reads `VmRSS` (KiB) of process `pid`.
pub fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status (Linux only)"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line in /proc/PID/status")
}

/// Rounds listed one by one in the benchmark's output (a soak has many).
const SHOWN_ROUNDS: usize = 20;

/// Logins the idle-memory measurement runs at once (below the coordinator's per-address cap on
/// connections that have not logged in).
const LOGINS_IN_FLIGHT: usize = 256;

/// Kills the child coordinator when dropped.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `coordinator_bin serve` on a fresh state directory, enrolls `clients` accounts, then
/// logs them all in at once and keeps them connected and idle, reading the child's `VmRSS`
/// before and after.
pub async fn idle_memory(coordinator_bin: &Path, clients: usize) -> anyhow::Result<MemoryReport> {
    let root = tempfile::Builder::new()
        .prefix("cohort-bench-memory-")
        .tempdir()?;
    idle_memory_in(coordinator_bin, root.path(), clients).await
}

async fn idle_memory_in(
    coordinator_bin: &Path,
    root: &Path,
    clients: usize,
) -> anyhow::Result<MemoryReport> {
    let mut child = std::process::Command::new(coordinator_bin)
        .arg("--state")
        .arg(root.join("coordinator"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--open-enrollment",
            "--no-http",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", coordinator_bin.display()))?;
    let stdout = child
        .stdout
        .take()
        .context("no stdout from the coordinator")?;
    let child = ChildGuard(child);
    let pid = child.0.id();
    // "listening on ADDR (certificate fingerprint HEX)"
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    })
    .await??;
    let (addr, fingerprint) = parse_listening(&line)
        .with_context(|| format!("unexpected first line from the coordinator: {line:?}"))?;
    let connect = |i: usize| -> anyhow::Result<(ClientTransport, PathBuf, String)> {
        let transport = ClientTransport::bind(
            "127.0.0.1:0".parse()?,
            ServerTrust::Pinned(fingerprint),
            TransportOptions::default(),
        )?;
        let dir = root.join(format!("client-{i:03}"));
        std::fs::create_dir_all(&dir)?;
        Ok((transport, dir, format!("idle-password-{i}")))
    };
    let mut prepared = Vec::with_capacity(clients);
    for i in 0..clients {
        let (transport, dir, password) = connect(i)?;
        crate::clients::enroll_at(
            &transport,
            addr,
            fingerprint,
            &dir,
            &format!("idle{i:03}"),
            &password,
            None,
        )
        .await
        .with_context(|| format!("client {i} could not enroll"))?;
        prepared.push((transport, dir, password));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline_kib = vm_rss_kib(pid)?;
    let started = Instant::now();
    let mut logins = Vec::with_capacity(clients);
    // Every client here shares one address, which the coordinator lets hold at most
    // `max_unauthenticated_per_address` connections before login (512 by default); real
    // devices come from many addresses. So at most LOGINS_IN_FLIGHT log in at a time, and a
    // logged-in client stays connected.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(LOGINS_IN_FLIGHT));
    for (transport, dir, password) in prepared {
        let in_flight = in_flight.clone();
        logins.push(tokio::spawn(async move {
            let _slot = in_flight.acquire_owned().await?;
            let conn = transport.connect(addr, "localhost").await?;
            let mut stream = FramedStream::open(&conn, DEFAULT_MAX_FRAME_LEN).await?;
            enroll::hello(&mut stream).await?;
            enroll::login_saved(&conn, &mut stream, &dir, &password).await?;
            anyhow::Ok((transport, conn, stream))
        }));
    }
    let mut held = Vec::with_capacity(clients);
    for (i, h) in logins.into_iter().enumerate() {
        held.push(
            h.await?
                .with_context(|| format!("client {i} could not log in"))?,
        );
    }
    let logins = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let connected_kib = vm_rss_kib(pid)?;
    drop(held);
    drop(child);
    Ok(MemoryReport {
        clients,
        baseline_kib,
        connected_kib,
        logins,
    })
}

fn parse_listening(line: &str) -> Option<(SocketAddr, CertFingerprint)> {
    let rest = line.trim().strip_prefix("listening on ")?;
    let (addr, rest) = rest.split_once(' ')?;
    let hex = rest
        .strip_prefix("(certificate fingerprint ")?
        .strip_suffix(')')?;
    Some((addr.parse().ok()?, hex.parse().ok()?))
}

/// The machine the numbers were taken on: CPU model, cores, and the load average now.
pub fn machine_state() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!("{cpu}, {cores} cores, load average {}", load.trim())
}

/// Bytes sent by [`raw_quic_throughput`]: enough for a steady rate, little enough to take a
/// second or two.
pub const RAW_QUIC_BYTES: usize = 64 << 20;

/// Raw QUIC throughput on loopback, in bytes per second: one connection between a server
/// endpoint and a client endpoint built exactly as the coordinator's and the edge client's
/// (`cohort_net`: rustls with ring, TLS 1.3, the same transport options and the windows the
/// coordinator opens after login), one bidirectional
/// stream, `bytes` written by the client in 1 MiB writes and read to the end by the server,
/// timed from the first write to the server's end of stream. No framing, CBOR, SecAgg+ or
/// storage: what the transport alone moves on this machine in this run, the yardstick of a
/// round's transport rate.
pub async fn raw_quic_throughput(bytes: usize) -> anyhow::Result<f64> {
    let identity = cohort_net::ServerIdentity::ephemeral(&["localhost".to_string()])?;
    let options = TransportOptions::default();
    let server = cohort_net::endpoint::bind_server("127.0.0.1:0".parse()?, &identity, &options)?;
    let addr = server.local_addr()?;
    let receiver = tokio::spawn(async move {
        let conn = server
            .accept()
            .await
            .context("the raw QUIC server saw no connection")?
            .await?;
        // The windows of a logged-in client, as the coordinator opens them after login.
        cohort_net::endpoint::open_after_login(&conn);
        let (_send, mut recv) = conn.accept_bi().await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0usize;
        while let Some(n) = recv.read(&mut buf).await? {
            got += n;
        }
        let done = Instant::now();
        anyhow::Ok((got, done, conn, server))
    });
    let client = ClientTransport::bind(
        "127.0.0.1:0".parse()?,
        ServerTrust::Pinned(identity.fingerprint()),
        options,
    )?;
    let conn = client.connect(addr, "localhost").await?;
    let (mut send, _recv) = conn.open_bi().await?;
    let chunk = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        send.write_all(&chunk[..n]).await?;
        left -= n;
    }
    send.finish()?;
    let (got, done, _conn, _server) = receiver.await??;
    anyhow::ensure!(
        got == bytes,
        "the raw QUIC server read {got} of {bytes} bytes"
    );
    let secs = done.duration_since(started).as_secs_f64().max(1e-9);
    conn.close(0u32.into(), b"done");
    Ok(bytes as f64 / secs)
}

/// CPU seconds (user + system) this process has used so far, from `/proc/self/stat`; `None`
/// off Linux.
pub fn process_cpu_seconds() -> Option<f64> {
    cpu_seconds_of("/proc/self/stat")
}

/// CPU seconds (user + system) of the process whose `/proc/PID/stat` is `path`; `None` when it
/// cannot be read (the process is gone, or not Linux).
pub fn cpu_seconds_of(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // In USER_HZ, which is 100 on every Linux architecture.
    Some(ticks / 100.0)
}

/// Runs every configuration and prints the tables (the `bench` subcommand).
///
/// Columns: `round_s` mean wall time of a round; `R0_s`..`R3_s` the SecAgg+ phases
/// (advertise keys, share keys, masked input, unmask), `rest_s` the remainder (the unmasking job,
/// decoding, the strategy, checkpoint and round log); then bytes per client and round uploaded
/// as masked input, encrypted shares (R1), public keys (R0), revealed shares (R3) and everything
/// else (hello, login, check-in, weight requests); `up/4d` all uploaded bytes
/// over the 4·d bytes of the vector; `down` bytes per client and round downloaded (weights
/// included).
pub async fn run_bench(
    farm_bin: &Path,
    clients: &[usize],
    select: Option<usize>,
    window_secs: f64,
    dims: &[usize],
    rounds: u32,
    memory: bool,
) -> anyhow::Result<()> {
    println!("machine: {}", machine_state());
    let raw = match raw_quic_throughput(RAW_QUIC_BYTES).await {
        Ok(rate) => {
            println!(
                "raw QUIC on loopback (one connection, one stream, {} MiB, no framing): {:.1} MB/s",
                RAW_QUIC_BYTES >> 20,
                rate / 1e6
            );
            Some(rate)
        }
        Err(e) => {
            println!("raw QUIC on loopback: failed: {e:#}");
            None
        }
    };
    println!(
        "rounds: the coordinator in this process, the clients in a child process (a device \
         farm), synthetic trainer, {rounds} rounds each"
    );
    println!(
        "{:>7} {:>9} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>11} {:>9} {:>8} {:>9} {:>8} {:>7} {:>11}  load",
        "clients",
        "d",
        "round_s",
        "R0_s",
        "R1_s",
        "R2_s",
        "R3_s",
        "rest_s",
        "up_masked",
        "up_shares",
        "up_keys",
        "up_unmask",
        "up_other",
        "up/4d",
        "down"
    );
    for &dim in dims {
        for &n in clients {
            let r = match run_rounds_selecting(
                farm_bin,
                n,
                select.unwrap_or(n),
                dim,
                rounds,
                window_secs,
            )
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    println!("{n:>7} {dim:>9} failed: {e:#}");
                    continue;
                }
            };
            let k = r.rounds.len().max(1) as f64;
            let mean = |f: &dyn Fn(&RoundTiming) -> f64| r.rounds.iter().map(f).sum::<f64>() / k;
            let phase = |name: &str| {
                mean(&|t: &RoundTiming| {
                    t.phases
                        .iter()
                        .filter(|(p, _)| p == name)
                        .map(|(_, s)| s)
                        .sum()
                })
            };
            let took = mean(&|t| t.took.as_secs_f64());
            let phases: f64 = ["AdvertiseKeys", "ShareKeys", "MaskedInput", "Unmask"]
                .iter()
                .map(|p| phase(p))
                .sum();
            let masked = r.up_per_client("MaskedInput");
            let shares = r.up_per_client("ShareKeys");
            let keys = r.up_per_client("AdvertiseKeys");
            let unmask = r.up_per_client("Unmask");
            let up_total: f64 = r.traffic.received.keys().map(|k| r.up_per_client(k)).sum();
            let down: f64 = r.traffic.sent.keys().map(|k| r.down_per_client(k)).sum();
            println!(
                "{n:>7} {:>9} {took:>8.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {masked:>11.0} {shares:>9.0} {keys:>8.0} {unmask:>9.0} {:>8.0} {:>7.3} {down:>11.0}  {}",
                r.dim,
                phase("AdvertiseKeys"),
                phase("ShareKeys"),
                phase("MaskedInput"),
                phase("Unmask"),
                took - phases,
                up_total - masked - shares - keys - unmask,
                up_total / (4.0 * r.dim as f64),
                loadavg()
            );
            // A long run is a soak: memory per round after a warm-up of a tenth of the rounds.
            let rss: Vec<f64> = r
                .rounds
                .iter()
                .filter_map(|t| t.rss_kib)
                .map(|k| k as f64)
                .collect();
            if rss.len() >= 20 {
                let skip = rss.len() / 10;
                println!(
                    "          memory: VmRSS {:.0} KiB after round {skip}, {:.0} KiB at the end; slope after round {skip}: {:+.2} KiB per round",
                    rss[skip - 1],
                    rss[rss.len() - 1],
                    slope_after(&rss, skip).unwrap_or(f64::NAN)
                );
            }
            for (i, t) in r.rounds.iter().enumerate().take(SHOWN_ROUNDS) {
                println!(
                    "          round {}: {:.2} s, {} inputs, phases {:?}",
                    i + 1,
                    t.took.as_secs_f64(),
                    t.contributors,
                    t.phases
                );
            }
            println!(
                "          login storm and selection before round 1: {:.2} s; weights down per client and round: {:.0} B; graph {}",
                r.login_and_select.as_secs_f64(),
                r.down_per_client("Weights"),
                r.graph.map_or_else(
                    || "unknown".to_string(),
                    |(k, t)| format!(
                        "k = {k}, t = {t} ({} mask streams of d words per client)",
                        k + 1
                    )
                )
            );
            // Frame bytes through the coordinator (weights downloads included) per second of
            // a cycle (round to round), against raw QUIC.
            let cycle = r.cycle();
            let rate = (up_total + down) * n as f64 / cycle.unwrap_or(took).max(1e-9);
            let fraction = raw.map_or_else(
                || "raw QUIC not measured".to_string(),
                |raw| format!("{:.1}% of raw QUIC", 100.0 * rate / raw),
            );
            println!(
                "          cycle (published round to published round): {}; transport: {:.1} MB/s of frames over the {}, {fraction}",
                cycle.map_or_else(|| "one round only".to_string(), |c| format!("{c:.2} s")),
                rate / 1e6,
                if cycle.is_some() { "cycle" } else { "round" },
            );
            let (coordinator_cpu, clients_cpu) = r.cpu_per_round();
            let show =
                |c: Option<f64>| c.map_or_else(|| "not measured".into(), |c| format!("{c:.2} s"));
            println!(
                "          CPU per round: coordinator {}, clients (all {n}, one process) {}{}",
                show(coordinator_cpu),
                show(clients_cpu),
                if r.rounds.len() < 2 {
                    " (one round: enrollment excluded, logins included)"
                } else {
                    " (per cycle, between the first and the last published round)"
                }
            );
        }
    }
    if memory {
        let bin = coordinator_binary()?;
        println!(
            "memory: `cohort-coordinator serve` as a child process; VmRSS with N accounts and no \
             connection, then with N clients logged in and idle"
        );
        println!(
            "{:>7} {:>12} {:>13} {:>14} {:>9}  load",
            "clients", "base_KiB", "connected_KiB", "KiB_per_client", "logins_s"
        );
        for &n in clients {
            match idle_memory(&bin, n).await {
                Ok(m) => println!(
                    "{n:>7} {:>12} {:>13} {:>14.1} {:>9.2}  {}",
                    m.baseline_kib,
                    m.connected_kib,
                    m.per_client_kib(),
                    m.logins.as_secs_f64(),
                    loadavg()
                ),
                Err(e) => println!("{n:>7} failed: {e:#}"),
            }
        }
    }
    Ok(())
}

/// The `cohort-coordinator` binary beside this one (cargo puts every binary of a profile in the
/// same directory), or `$COHORT_COORDINATOR_BIN`.
pub fn coordinator_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("COHORT_COORDINATOR_BIN") {
        return Ok(bin.into());
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let bin = exe.with_file_name(format!(
        "cohort-coordinator{}",
        std::env::consts::EXE_SUFFIX
    ));
    anyhow::ensure!(
        bin.exists(),
        "the memory benchmark runs `cohort-coordinator serve` as a child process and found no \
         {}; build it with the same profile (`cargo build --release -p cohort-coordinator`), \
         set COHORT_COORDINATOR_BIN, or pass --no-memory",
        bin.display()
    );
    Ok(bin)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::SyntheticTrainer;
    use cohort_edge::trainer::Trainer;

    #[test]
    fn models_have_the_announced_sizes() {
        assert_eq!(parameter_count(&model_for_dim(2410)).unwrap(), 2410);
        assert_eq!(
            parameter_count(&model_for_dim(1_000_000)).unwrap(),
            1_000_015
        );
    }

    #[test]
    fn synthetic_updates_are_deterministic_small_and_client_specific() {
        let plan_global = vec![0.0f32; 1000];
        let plan = demo_task(&DemoConfig::default()).plan().unwrap();
        let a = SyntheticTrainer::new(1, 10)
            .train(&plan, &plan_global, 7, &Default::default())
            .unwrap();
        let again = SyntheticTrainer::new(1, 10)
            .train(&plan, &plan_global, 7, &Default::default())
            .unwrap();
        let b = SyntheticTrainer::new(2, 10)
            .train(&plan, &plan_global, 7, &Default::default())
            .unwrap();
        assert_eq!(a, again);
        assert_ne!(a.update, b.update);
        assert_eq!(a.update.len(), 1000);
        assert!(a.update.iter().all(|v| v.abs() <= 0.01));
        assert!(a.update.iter().any(|v| v.abs() > 0.005));
    }

    #[test]
    fn parses_the_serve_banner() {
        let fp = "ab".repeat(32);
        let (addr, parsed) = parse_listening(&format!(
            "listening on 127.0.0.1:4433 (certificate fingerprint {fp})\n"
        ))
        .unwrap();
        assert_eq!(addr, "127.0.0.1:4433".parse().unwrap());
        assert_eq!(parsed.to_hex(), fp);
        assert!(parse_listening("something else").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raw_quic_moves_every_byte_and_reports_a_rate() {
        // The function itself checks that the server read exactly what the client wrote.
        let rate = raw_quic_throughput(3 << 20).await.unwrap();
        assert!(rate.is_finite() && rate > 0.0, "{rate}");
    }

    #[test]
    fn reads_this_process_cpu_time() {
        let before = process_cpu_seconds().unwrap();
        // Burn a little CPU: the counter never goes backwards.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process_cpu_seconds().unwrap() >= before);
    }

    #[test]
    fn reads_this_process_rss() {
        assert!(vm_rss_kib(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn the_slope_skips_the_warm_up() {
        let ys = [100.0, 50.0, 10.0, 12.0, 14.0, 16.0];
        assert_eq!(slope_after(&ys, 2), Some(2.0));
        assert_eq!(slope_after(&[5.0, 5.0, 5.0], 0), Some(0.0));
        assert_eq!(slope_after(&ys, 5), None);
        assert_eq!(slope_after(&ys, 9), None);
    }
}
