//! The `cohort-coordinator` binary as a child process, for tests that drive it the way an
//! operator does (the README test, the restart and crash-anywhere tests): its CLI run to
//! completion, `serve` started with its certificate fingerprint read from its first line, its
//! log followed line by line, and `log verify` parsed.
//!
//! The binary's path is the caller's: `env!("CARGO_BIN_EXE_cohort-coordinator")` inside the
//! coordinator's own tests, [`sibling_binary`] elsewhere.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cohort_net::{CertFingerprint, ClientTransport, ServerTrust, TransportOptions};
use tokio::sync::mpsc;

/// A binary of this workspace next to the running test's own executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/<name>`). Panics with what to do when it
/// is missing: only a workspace build builds every binary.
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run this test through `cargo test --workspace --all-features`, which \
         builds every binary",
        path.display()
    );
    path
}

/// A digits-MLP task (64-32-10, FedAvgM) of `rounds` rounds for four devices a round, for tests
/// that drive the `cohort-coordinator` CLI (`task create FILE`): no server-side evaluation, a
/// 1 s selection window, the consistency check's quorum of four.
pub fn four_device_task_toml(id: &str, rounds: u32) -> String {
    format!(
        r#"
id = "{id}"
rounds = {rounds}
evaluate_every = 0

[model]
input_shape = [64]
num_classes = 10
layers = [
    {{ type = "linear", out = 32 }},
    {{ type = "relu" }},
    {{ type = "linear", out = 10 }},
]

[training]
epochs = 1
batch_size = 16
learning_rate = 0.1
optimizer = {{ kind = "sgd", momentum = 0.0 }}

[strategy]
kind = "fed_avg_m"
server_lr = 1.0
momentum = 0.5

[selection]
clients_per_round = 4
# No over-selection: with the consistency check, four clients tolerate no more dropout than
# the task's 10%.
over_selection = 0.0
window_secs = 1

[secagg]
max_weight = 256
dropout_fraction = 0.10

[deadlines]
advertise_keys = 20
share_keys = 20
masked_input = 30
unmask = 20
"#
    )
}

/// A UDP port free on 127.0.0.1 when asked (QUIC listens on UDP).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

/// Runs `bin --state STATE ARGS…` to completion and returns its stdout; panics with its output
/// when it fails.
pub fn cli(bin: &Path, state: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .arg("--state")
        .arg(state)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("runs cohort-coordinator");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cohort-coordinator {args:?} failed: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Enrolls device `name` with the server of the coordinator binary `bin` (state directory
/// `state`, listening on `addr`, certificate `pin`) through an invite the CLI issues, and saves
/// its credentials in `dir`; returns the device's QUIC endpoint, for its run loop.
pub async fn enroll_invited(
    bin: &Path,
    state: &Path,
    addr: std::net::SocketAddr,
    pin: CertFingerprint,
    dir: &Path,
    name: &str,
    password: &str,
) -> anyhow::Result<ClientTransport> {
    let code = cli(bin, state, &["invite"]).trim().to_string();
    let transport = ClientTransport::bind(
        "127.0.0.1:0".parse()?,
        ServerTrust::Pinned(pin),
        TransportOptions::default(),
    )?;
    std::fs::create_dir_all(dir)?;
    crate::clients::enroll_at(&transport, addr, pin, dir, name, password, Some(&code)).await?;
    Ok(transport)
}

/// `log verify TASK` as (round, model hex, entry hex) per published round, after checking that
/// it reports the chain intact.
pub fn verified_log(bin: &Path, state: &Path, task: &str) -> Vec<(u64, String, String)> {
    let out = cli(bin, state, &["log", "verify", task]);
    assert!(out.contains("chain intact"), "{out}");
    out.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let round = f.next()?.strip_prefix("round ")?.parse().ok()?;
            let _participants = f.next()?;
            let model = f.next()?.strip_prefix("model ")?.to_string();
            let entry = f.next()?.strip_prefix("entry ")?.to_string();
            Some((round, model, entry))
        })
        .collect()
}

/// The fingerprint in serve's first line, `listening on ADDR (certificate fingerprint HEX)`.
pub fn fingerprint_of_listening_line(line: &str) -> Option<String> {
    line.trim()
        .strip_suffix(')')
        .and_then(|l| l.rsplit_once("certificate fingerprint "))
        .map(|(_, fp)| fp.to_string())
        .filter(|fp| fp.len() == 64 && fp.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A fingerprint printed by serve, as the edge client pins it.
pub fn parse_fingerprint(hex_str: &str) -> CertFingerprint {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_str, &mut out).expect("hex fingerprint");
    CertFingerprint(out)
}

/// `text` without ANSI escape sequences (for logs written with colour).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Where a [`Serve`]'s log (its stderr) goes.
#[derive(Debug)]
pub enum ServeLog {
    /// Followed line by line ([`Serve::wait_for`], [`Serve::log`]), ANSI escapes removed.
    Followed,
    /// Written to this file as it is (for tests that check what an operator would see).
    File(PathBuf),
}

/// A `serve` process, killed when dropped.
#[derive(Debug)]
pub struct Serve {
    /// The process; its stdout (after the first line) is still piped.
    pub child: Child,
    /// The certificate fingerprint from its first line.
    pub fingerprint: String,
    /// Its first line, `listening on ADDR (certificate fingerprint HEX)`.
    pub listening: String,
    lines: Option<mpsc::UnboundedReceiver<String>>,
    all: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    /// Spawns `command` (a `cohort-coordinator … serve …` line: the caller sets its arguments,
    /// environment and directory) with its stdout piped and its log going to `log`, and reads
    /// the fingerprint from its first line.
    pub fn spawn(mut command: Command, log: ServeLog) -> Self {
        command.stdout(Stdio::piped());
        match &log {
            ServeLog::Followed => command.stderr(Stdio::piped()),
            ServeLog::File(path) => command.stderr(
                std::fs::File::create(path)
                    .unwrap_or_else(|e| panic!("creates {}: {e}", path.display())),
            ),
        };
        let mut child = command.spawn().expect("starts cohort-coordinator serve");
        let all = Arc::new(Mutex::new(Vec::new()));
        let lines = match log {
            ServeLog::Followed => {
                let stderr = child.stderr.take().expect("piped stderr");
                let (tx, rx) = mpsc::unbounded_channel();
                let all = all.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        let line = strip_ansi(&line);
                        all.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(line.clone());
                        let _ = tx.send(line);
                    }
                });
                Some(rx)
            }
            ServeLog::File(_) => None,
        };
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut first = String::new();
        stdout
            .read_line(&mut first)
            .expect("reads serve's first line");
        let fingerprint = fingerprint_of_listening_line(&first)
            .unwrap_or_else(|| panic!("unexpected first line of serve: {first:?}"));
        child.stdout = Some(stdout.into_inner());
        Self {
            child,
            fingerprint,
            listening: first.trim().to_string(),
            lines,
            all,
        }
    }

    /// `bin serve` with state `state` on 127.0.0.1:`port`, without the owners' HTTP API, a round
    /// estimate of 2 s and the coordinator's info lines, its log followed: the coordinator the
    /// restart and crash tests kill and start again.
    pub fn on_loopback(bin: &Path, state: &Path, port: u16) -> Self {
        let mut command = Command::new(bin);
        command
            .arg("--state")
            .arg(state)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--round-estimate-secs",
                "2",
                "--no-http",
            ])
            .env("RUST_LOG", "warn,cohort_coordinator=info")
            .env("NO_COLOR", "1");
        Self::spawn(command, ServeLog::Followed)
    }

    /// The rest of its stdout (after the first line), once it has exited.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Every log line so far (with [`ServeLog::Followed`]).
    pub fn log(&self) -> String {
        self.all
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Waits for a log line satisfying `pred` and returns it; panics with the log so far when
    /// none comes within `within` or the process closes its log (with [`ServeLog::Followed`]).
    pub async fn wait_for(&mut self, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let lines = self
            .lines
            .as_mut()
            .expect("wait_for needs a Serve spawned with ServeLog::Followed");
        let found = tokio::time::timeout(within, async {
            while let Some(line) = lines.recv().await {
                if pred(&line) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "the coordinator closed its log before logging what was awaited; its log:\n{}",
                self.log()
            ),
            Err(_) => panic!(
                "the coordinator did not log what was awaited within {within:?}; its log:\n{}",
                self.log()
            ),
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_comes_from_serves_first_line_only_when_well_formed() {
        let fp = "ab".repeat(32);
        assert_eq!(
            fingerprint_of_listening_line(&format!(
                "listening on 127.0.0.1:4433 (certificate fingerprint {fp})\n"
            )),
            Some(fp.clone())
        );
        assert_eq!(
            fingerprint_of_listening_line(
                "listening on 127.0.0.1:4433 (certificate fingerprint ab)"
            ),
            None
        );
        assert_eq!(
            fingerprint_of_listening_line("error: the state directory is locked"),
            None
        );
        assert_eq!(parse_fingerprint(&fp).0, [0xab; 32]);
    }

    #[test]
    fn ansi_escapes_are_removed_and_the_text_kept() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m round finished"),
            "2026  INFO round finished"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }
}
