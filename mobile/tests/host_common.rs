//! What the host tests share: a coordinator on loopback running a small digits task with three
//! synthetic `cohort-edge` clients (so every round needs the host's client: four per round, a
//! quorum of four, the smallest cohort with the consistency check), the digits examples the
//! host serves, and the built library.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use cohort_coordinator::scheduler::TaskEvent;
use cohort_loopback::BlockingCoordinator;

pub const TASK: &str = r#"
id = "host"
rounds = 1000
evaluate_every = 0

[model]
input_shape = [64]
num_classes = 10
layers = [{ type = "linear", out = 16 }, { type = "relu" }, { type = "linear", out = 10 }]

[training]
epochs = 2
batch_size = 8
learning_rate = 0.05
optimizer = { kind = "sgd" }

[selection]
clients_per_round = 4
over_selection = 0.0
window_secs = 2

[secagg]
max_weight = 1024
"#;

pub struct Harness(BlockingCoordinator);

impl std::ops::Deref for Harness {
    type Target = BlockingCoordinator;
    fn deref(&self) -> &BlockingCoordinator {
        &self.0
    }
}

impl Harness {
    pub fn start() -> Harness {
        Harness(BlockingCoordinator::start(TASK, 3).unwrap())
    }

    /// Writes the host's digits examples ([`examples`] of them): `u32` count, then the
    /// features (`f32`, 64 per example), then the labels (`u32`), all little-endian.
    pub fn write_examples(&self) -> PathBuf {
        let train = cohort_datasets::embedded_digits().unwrap().train;
        let n = examples();
        assert!(
            n <= train.len(),
            "COHORT_HOST_EXAMPLES={n}: the embedded digits have {} training examples",
            train.len()
        );
        let idx: Vec<usize> = (0..n).collect();
        let mut features = Vec::new();
        let mut labels = Vec::new();
        train.gather_features(&idx, &mut features).unwrap();
        train.gather_labels(&idx, &mut labels).unwrap();
        let mut out = (idx.len() as u32).to_le_bytes().to_vec();
        out.extend(features.iter().flat_map(|f| f.to_le_bytes()));
        out.extend(labels.iter().flat_map(|l| l.to_le_bytes()));
        let path = self.tmp.path().join("examples.bin");
        std::fs::write(&path, out).unwrap();
        path
    }

    /// Runs the host program, with the coordinator's address and fingerprint and the examples
    /// in its environment, and returns its standard output; fails the test (with its output)
    /// when it fails.
    pub fn run_host(&self, mut cmd: Command) -> String {
        let examples = self.write_examples();
        cmd.env("COHORT_SERVER", self.coordinator.addr.to_string())
            .env("COHORT_FINGERPRINT", self.coordinator.fingerprint.to_hex())
            .env("COHORT_EXAMPLES", &examples)
            .env("COHORT_HOST_ROUNDS", rounds().to_string())
            .env("COHORT_STATE", self.tmp.path().join("host-state"));
        let out = std::thread::spawn(move || cmd.output().expect("the host program starts"))
            .join()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "the host program failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }

    /// Rounds completed with all four members' inputs (the host's among them): the events
    /// already received, then waiting for more until `at_least` were seen (the last round's
    /// event may trail the host's answer). Gives up after a minute without reaching it.
    pub fn full_rounds(
        &self,
        events: &mut tokio::sync::broadcast::Receiver<TaskEvent>,
        at_least: u32,
    ) -> u32 {
        self.rt.block_on(async {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
            let mut n = 0;
            while n < at_least {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Ok(TaskEvent::RoundCompleted { contributors, .. })) => {
                        if contributors == 4 {
                            n += 1;
                        }
                    }
                    Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            n
        })
    }
}

/// Rounds each host takes part in before the rest of its test: `COHORT_HOST_ROUNDS` (at least
/// 3, the default; `mobile/bench/host_overhead.sh` asks for more). The host programs read the
/// same variable.
pub fn rounds() -> usize {
    env_count("COHORT_HOST_ROUNDS", 3).max(3)
}

/// Examples the host serves: `COHORT_HOST_EXAMPLES`, 300 by default.
pub fn examples() -> usize {
    env_count("COHORT_HOST_EXAMPLES", 300).max(1)
}

fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a count")),
        Err(_) => default,
    }
}

/// The built `cohort_mobile` shared library: `cargo test` leaves it in the `deps` folder beside
/// the test binary (`cargo build` also copies it one folder up).
pub fn cdylib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let name = format!(
        "{}cohort_mobile{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let deps = exe.parent().unwrap();
    let candidates = [deps.join(&name), deps.parent().unwrap().join(&name)];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{name} is missing beside {}: the test build builds the cdylib (crate-type in \
                 mobile/Cargo.toml)",
                deps.display()
            )
        })
}

/// `mobile/` in the source tree.
pub fn mobile_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
