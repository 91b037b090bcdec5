//! A device farm: many edge clients in a process of their own (`cohort-loopback bench-clients`),
//! so that a benchmark can tell the coordinator's CPU time from the devices' (issue 15 item 5).
//!
//! The child enrolls its clients (open enrollment, the certificate pinned), prints
//! [`ENROLLED`] on stdout and waits for a line on stdin; then it runs every client's production
//! `run` loop (a [`SyntheticTrainer`], `max_rounds` rounds) and exits when all have stopped, or
//! when its stdin closes (the parent went away). The parent ([`FarmProcess`]) reads the child's
//! CPU time from `/proc/PID/stat` whenever it wants.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use cohort_edge::eligibility::EligibilityPolicy;
use cohort_edge::run::{Backoff, RunConfig, run};
use cohort_net::{CertFingerprint, ClientTransport, ServerTrust, TransportOptions};

use crate::clients::enroll_at;
use crate::synthetic::SyntheticTrainer;

/// The line the farm prints once every client is enrolled.
pub const ENROLLED: &str = "enrolled";

/// What the farm runs.
#[derive(Clone, Debug)]
pub struct FarmConfig {
    /// The coordinator's QUIC address.
    pub server: SocketAddr,
    /// Its certificate fingerprint (pinned).
    pub fingerprint: CertFingerprint,
    /// Where the clients keep their state (one directory each).
    pub root: PathBuf,
    /// Clients.
    pub clients: usize,
    /// Rounds each client takes part in before it stops.
    pub rounds: u32,
}

impl FarmConfig {
    /// The `bench-clients` arguments that describe this farm.
    fn args(&self) -> Vec<String> {
        vec![
            "bench-clients".into(),
            "--server".into(),
            self.server.to_string(),
            "--fingerprint".into(),
            self.fingerprint.to_hex(),
            "--root".into(),
            self.root.display().to_string(),
            "--clients".into(),
            self.clients.to_string(),
            "--rounds".into(),
            self.rounds.to_string(),
        ]
    }
}

/// Runs the farm in this process (the `bench-clients` subcommand): enrolls, announces
/// [`ENROLLED`], waits for the go line on stdin, runs the clients. Returns how many clients
/// ended with an error.
pub async fn run_farm(config: &FarmConfig) -> anyhow::Result<usize> {
    let mut prepared = Vec::with_capacity(config.clients);
    for i in 0..config.clients {
        let transport = ClientTransport::bind(
            "127.0.0.1:0".parse()?,
            ServerTrust::Pinned(config.fingerprint),
            TransportOptions::default(),
        )?;
        let dir = config.root.join(format!("client-{i:04}"));
        std::fs::create_dir_all(&dir)?;
        let password = format!("bench-password-{i}");
        enroll_at(
            &transport,
            config.server,
            config.fingerprint,
            &dir,
            &format!("bench{i:04}"),
            &password,
            None,
        )
        .await
        .with_context(|| format!("client {i} could not enroll"))?;
        prepared.push((transport, dir, password));
    }
    println!("{ENROLLED} {}", config.clients);
    std::io::stdout().flush()?;
    // The parent says go (or goes away: then there is nothing to measure).
    let go = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|n| n > 0)
    })
    .await??;
    anyhow::ensure!(
        go,
        "the benchmark closed this farm's stdin before the start"
    );
    // Stdin closing later means the parent is gone: stop then.
    let orphaned = tokio::task::spawn_blocking(|| {
        let mut rest = String::new();
        let _ = std::io::stdin().read_line(&mut rest);
    });
    let mut handles = Vec::with_capacity(config.clients);
    for (i, (transport, dir, password)) in prepared.into_iter().enumerate() {
        let run_config = RunConfig {
            eligibility: EligibilityPolicy::always(),
            backoff: Backoff {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(5),
            },
            max_rounds: Some(config.rounds),
            max_failures: 10,
            ..RunConfig::new(config.server, dir, password)
        };
        let trainer = Box::new(SyntheticTrainer::new(i as u64, 100));
        handles.push(tokio::spawn(async move {
            run(&transport, &run_config, trainer, None).await
        }));
    }
    let all = async {
        let mut failed = 0;
        for h in handles {
            match h.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    eprintln!("  a client ended with: {e}");
                    failed += 1;
                }
                Err(e) => {
                    eprintln!("  a client task failed: {e}");
                    failed += 1;
                }
            }
        }
        failed
    };
    tokio::select! {
        failed = all => Ok(failed),
        _ = orphaned => anyhow::bail!("the benchmark closed this farm's stdin; stopping"),
    }
}

/// A farm running as a child process.
pub struct FarmProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
}

impl FarmProcess {
    /// Starts `bin bench-clients …` (`bin` is a `cohort-loopback` binary) and waits until its
    /// clients are enrolled. Blocking: call it from `spawn_blocking`.
    pub fn start(bin: &Path, config: &FarmConfig) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .args(config.args())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start the device farm {}", bin.display()))?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("the farm's stdout")?);
        let mut line = String::new();
        let mut farm = Self {
            child,
            stdin,
            stdout: None,
        };
        loop {
            line.clear();
            if stdout.read_line(&mut line)? == 0 {
                let status = farm.child.wait()?;
                anyhow::bail!("the device farm exited ({status}) before its clients enrolled");
            }
            if line.starts_with(ENROLLED) {
                farm.stdout = Some(stdout);
                return Ok(farm);
            }
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the enrolled clients start.
    pub fn go(&mut self) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the farm was already started")?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(())
    }

    /// CPU seconds the farm has used so far; `None` once it is gone or off Linux.
    pub fn cpu_seconds(&self) -> Option<f64> {
        crate::bench::cpu_seconds_of(&format!("/proc/{}/stat", self.child.id()))
    }

    /// Waits up to `timeout` for the farm to exit on its own (every client done), then kills
    /// it. Blocking. Returns whether it exited successfully on its own.
    pub fn finish(mut self, timeout: Duration) -> bool {
        // The farm's stdout reaches its end when the farm exits: wait for that, not a clock.
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(mut stdout) = self.stdout.take() {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut stdout, &mut std::io::sink());
                let _ = tx.send(());
            });
        }
        let exited = rx.recv_timeout(timeout).is_ok();
        if !exited {
            let _ = self.child.kill();
        }
        let status = self.child.wait();
        exited && status.is_ok_and(|s| s.success())
    }
}

impl Drop for FarmProcess {
    fn drop(&mut self) {
        // Closing stdin tells the farm to stop; kill it in case it does not.
        self.stdin.take();
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
