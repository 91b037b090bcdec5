//! Loopback coordinators and edge clients: the coordinator's settings for loopback runs,
//! enrollment with the certificate pinned, and edge clients started as tasks of this process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cohort_coordinator::auth::{AuthConfig, Enrollment, RateLimitPolicy};
use cohort_coordinator::scheduler::{Evaluator, SchedulerOptions};
use cohort_coordinator::server::{Coordinator, ServerConfig};
use cohort_coordinator::session::SessionOptions;
use cohort_coordinator::task::TaskDefinition;
use cohort_datasets::Dataset;
use cohort_edge::eligibility::EligibilityPolicy;
use cohort_edge::enroll;
use cohort_edge::run::{Backoff, Contribution, RunConfig};
use cohort_edge::testing::{Fault, Hooks, ProvidedInput, run_with_hooks};
use cohort_edge::trainer::{BurnTrainer, Trainer};
use cohort_learning::ComputeBackend;
use cohort_net::opaque_suite::KsfParams;
use cohort_net::{ClientTransport, FramedStream, ServerTrust, TransportOptions};
use cohort_protocol::DEFAULT_MAX_FRAME_LEN;
use tokio::sync::mpsc;

use crate::demo::DemoConfig;
use crate::synthetic::SyntheticTrainer;

/// Coordinator settings for loopback runs (demo, tests, the simulator's live mode): a fresh
/// port on 127.0.0.1, open enrollment, a 2 s first estimate of a round's length. (The selection
/// window is the task's: `demo_task` sets 2 s.)
pub fn server_config(state_dir: PathBuf, evaluator: Option<Arc<dyn Evaluator>>) -> ServerConfig {
    ServerConfig {
        state_dir,
        listen: "127.0.0.1:0".parse().expect("a valid socket address"),
        http_listen: None,
        auth: AuthConfig {
            enrollment: Enrollment::Open,
            rate_limit: RateLimitPolicy::default(),
        },
        session: SessionOptions::default(),
        scheduler: SchedulerOptions {
            unmask_threads: 2,
            initial_round_estimate: Duration::from_secs(2),
            max_checkpoint_bytes: 1 << 30,
            ..SchedulerOptions::default()
        },
        evaluator,
    }
}

/// Enrolls client `name` with coordinator `c` and saves its credentials in `state_dir`.
pub async fn enroll_client(
    transport: &ClientTransport,
    c: &Coordinator,
    state_dir: &std::path::Path,
    name: &str,
    password: &str,
) -> anyhow::Result<()> {
    enroll_at(
        transport,
        c.addr,
        c.fingerprint,
        state_dir,
        name,
        password,
        None,
    )
    .await
}

/// Enrolls client `name` with the coordinator at `addr` (its certificate `fingerprint`
/// pinned; with `invite`, the code `cohort-coordinator invite` printed, for invite-only
/// enrollment) and saves its credentials in `state_dir`; the connection is closed afterwards.
pub async fn enroll_at(
    transport: &ClientTransport,
    addr: std::net::SocketAddr,
    fingerprint: cohort_net::CertFingerprint,
    state_dir: &std::path::Path,
    name: &str,
    password: &str,
    invite: Option<&str>,
) -> anyhow::Result<()> {
    let conn = transport.connect(addr, "localhost").await?;
    let mut stream = FramedStream::open(&conn, DEFAULT_MAX_FRAME_LEN).await?;
    enroll::hello(&mut stream).await?;
    enroll::enroll(
        &mut stream,
        state_dir,
        name,
        password,
        invite,
        KsfParams::dangerous_insecure_fast_for_tests(),
        Some(fingerprint.to_hex()),
    )
    .await?;
    let _ = stream.send.finish();
    conn.close(0u32.into(), b"enrolled");
    Ok(())
}

/// A running demo client.
pub struct DemoClient {
    /// Its task.
    pub handle: tokio::task::JoinHandle<Result<u32, cohort_edge::run::RunError>>,
    /// Its run settings.
    pub config: RunConfig,
}

/// How one loopback client misbehaves and what it reports (test hooks; all `None` for a
/// well-behaved client).
#[derive(Clone, Debug, Default)]
pub struct ClientHooks {
    /// A fault to inject.
    pub fault: Option<Fault>,
    /// Where to record every input the client gives its rounds.
    pub inputs: Option<mpsc::UnboundedSender<ProvidedInput>>,
    /// Where to send what the client contributed, tagged with its number.
    pub contributions: Option<mpsc::UnboundedSender<(usize, Contribution)>>,
    /// The owner's differential-privacy limit (`cohort-edge run --max-epsilon`).
    pub max_epsilon: Option<f64>,
    /// Take part in rounds without the consistency check
    /// (`RunConfig::dangerous_allow_rounds_without_consistency_check`): for experiments that
    /// turn the check off.
    pub dangerous_allow_rounds_without_consistency_check: bool,
}

/// Enrolls client number `i` with coordinator `c` (state in `root/client-NNN`, open enrollment,
/// the certificate pinned) and starts its run loop with `trainer`.
pub async fn spawn_client(
    c: &Coordinator,
    root: &std::path::Path,
    i: usize,
    trainer: Box<dyn Trainer>,
    hooks: ClientHooks,
) -> anyhow::Result<DemoClient> {
    let transport = ClientTransport::bind(
        "127.0.0.1:0".parse()?,
        ServerTrust::Pinned(c.fingerprint),
        TransportOptions::default(),
    )?;
    let dir = root.join(format!("client-{i:03}"));
    std::fs::create_dir_all(&dir)?;
    let password = format!("demo-password-{i}");
    enroll_client(&transport, c, &dir, &format!("client{i:03}"), &password).await?;
    let config = RunConfig {
        eligibility: EligibilityPolicy::always(),
        backoff: Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(2),
        },
        max_failures: 30,
        max_epsilon: hooks.max_epsilon,
        dangerous_allow_rounds_without_consistency_check: hooks
            .dangerous_allow_rounds_without_consistency_check,
        ..RunConfig::new(c.addr, dir, password)
    };
    let test_hooks = Hooks {
        fault: hooks.fault,
        input_hook: hooks.inputs,
    };
    let tx = hooks.contributions.map(|fwd| {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                let _ = fwd.send((i, c));
            }
        });
        tx
    });
    let cfg = config.clone();
    let handle =
        tokio::spawn(
            async move { run_with_hooks(&transport, &cfg, trainer, tx, test_hooks).await },
        );
    Ok(DemoClient { handle, config })
}

/// Enrolls and starts `count` clients over the digits training split.
pub async fn spawn_clients(
    c: &Coordinator,
    config: &DemoConfig,
    root: &std::path::Path,
    train: &Dataset,
    events: mpsc::UnboundedSender<(usize, Contribution)>,
    inputs: Option<mpsc::UnboundedSender<ProvidedInput>>,
) -> anyhow::Result<Vec<DemoClient>> {
    let parts = config
        .partition
        .partition(train, None, config.clients, config.seed)?;
    let mut clients = Vec::new();
    for (i, indices) in parts.iter().enumerate() {
        let trainer: Box<dyn Trainer> = Box::new(BurnTrainer::new(
            ComputeBackend::flex(),
            train.subset(indices)?,
        ));
        let hooks = ClientHooks {
            fault: config.faults.iter().find(|(c, _)| *c == i).map(|(_, f)| *f),
            inputs: inputs.clone(),
            contributions: Some(events.clone()),
            max_epsilon: config
                .max_epsilon
                .iter()
                .find(|(c, _)| *c == i)
                .map(|(_, e)| *e),
            dangerous_allow_rounds_without_consistency_check: false,
        };
        clients.push(spawn_client(c, root, i, trainer, hooks).await?);
    }
    Ok(clients)
}

/// A coordinator on a runtime of its own, running one task with `synthetic` well-behaved
/// clients (synthetic updates): for tests of blocking APIs (the edge library, the mobile
/// bindings' hosts), which must not be called from inside a tokio runtime. Shut down when
/// dropped.
pub struct BlockingCoordinator {
    /// The runtime the coordinator and the synthetic clients run on.
    pub rt: tokio::runtime::Runtime,
    /// The coordinator (its state directory is `tmp/coordinator`).
    pub coordinator: Coordinator,
    /// A temporary directory for the coordinator's and the clients' state.
    pub tmp: tempfile::TempDir,
    _clients: Vec<DemoClient>,
}

impl BlockingCoordinator {
    /// Starts the coordinator, creates and starts the task `task_toml`, and enrolls and starts
    /// `synthetic` clients (each returning a pseudo-random update of the task's size).
    pub fn start(task_toml: &str, synthetic: usize) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Runtime::new()?;
        let tmp = tempfile::tempdir()?;
        let coordinator = rt.block_on(Coordinator::start(server_config(
            tmp.path().join("coordinator"),
            None,
        )))?;
        // Starting a task spawns its loop on the runtime.
        let task = TaskDefinition::from_toml(task_toml)?;
        rt.block_on(async { coordinator.create_and_start(task) })?;
        let clients = rt.block_on(async {
            let mut v = Vec::with_capacity(synthetic);
            for i in 0..synthetic {
                let trainer = Box::new(SyntheticTrainer::new(i as u64, 100));
                v.push(
                    spawn_client(&coordinator, tmp.path(), i, trainer, ClientHooks::default())
                        .await?,
                );
            }
            anyhow::Ok(v)
        })?;
        Ok(Self {
            rt,
            coordinator,
            tmp,
            _clients: clients,
        })
    }
}

impl Drop for BlockingCoordinator {
    fn drop(&mut self) {
        self.coordinator.shutdown();
    }
}
