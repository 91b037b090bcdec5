//! The loopback demo: one coordinator and many edge clients in one process, over real QUIC on
//! 127.0.0.1, with OPAQUE enrollment and SecAgg+, training the digits MLP on the embedded UCI
//! digits split across the clients. `cohort-coordinator demo` runs it; the end-to-end tests run
//! it with faults injected.
//!
//! Argon2 runs with the fast test parameters here (each of the clients enrolls and logs in on
//! two cores); a deployment keeps the default parameters.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cohort_datasets::{Dataset, PartitionSpec, embedded_digits};
use cohort_edge::eligibility::EligibilityPolicy;
use cohort_edge::enroll;
use cohort_edge::run::{Backoff, Contribution, Fault, ProvidedInput, RunConfig, run};
use cohort_edge::trainer::{BurnTrainer, Trainer};
use cohort_learning::{ComputeBackend, Examples, LocalTrainer};
use cohort_net::opaque_suite::KsfParams;
use cohort_net::{ClientTransport, FramedStream, ServerTrust, TransportOptions};
use cohort_protocol::{DEFAULT_MAX_FRAME_LEN, ModelSpec, OptimizerSpec, TrainingParams};
use tokio::sync::mpsc;

use crate::auth::{AuthConfig, Enrollment, RateLimitPolicy};
use crate::scheduler::{Evaluator, SchedulerOptions, TaskEvent};
use crate::server::{Coordinator, ServerConfig};
use crate::session::SessionOptions;
use crate::task::{Deadlines, SecAggSettings, TaskDefinition};

/// Demo settings.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Edge clients.
    pub clients: usize,
    /// Rounds.
    pub rounds: u32,
    /// How the training set is split.
    pub partition: PartitionSpec,
    /// Local epochs per round.
    pub epochs: u32,
    /// Local learning rate.
    pub learning_rate: f32,
    /// Seed of the split.
    pub seed: u64,
    /// The coordinator's state dir; a temporary one when `None`.
    pub state_dir: Option<PathBuf>,
    /// Per-phase deadlines.
    pub deadlines: Deadlines,
    /// Faults injected into clients, by client number (0-based).
    pub faults: Vec<(usize, Fault)>,
    /// The dropout fraction SecAgg+ is configured for (q_min = ceil((1 - f)·n)).
    pub dropout_fraction: f64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            clients: 20,
            rounds: 5,
            partition: PartitionSpec::Iid,
            epochs: 5,
            learning_rate: 0.1,
            seed: 7,
            state_dir: None,
            deadlines: Deadlines {
                r0_secs: 20,
                r1_secs: 20,
                r2_secs: 120,
                r3_secs: 20,
            },
            faults: Vec::new(),
            dropout_fraction: 0.10,
        }
    }
}

/// What the demo produced.
#[derive(Clone, Debug, Default)]
pub struct DemoReport {
    /// Every task event, in order.
    pub events: Vec<TaskEvent>,
    /// Test accuracy after the last round.
    pub final_accuracy: f32,
    /// What the clients reported.
    pub contributions: Vec<(usize, Contribution)>,
    /// Every input the clients gave their rounds (test hook).
    pub inputs: Vec<ProvidedInput>,
    /// For each completed round: its id, the contributors, and the update the coordinator
    /// applied (new model minus previous model).
    pub applied: Vec<(
        cohort_protocol::RoundId,
        Vec<cohort_protocol::ClientIndex>,
        Vec<f32>,
    )>,
}

/// Server-side evaluation on a held-out dataset.
pub struct DatasetEvaluator {
    trainer: Mutex<LocalTrainer>,
    data: Dataset,
}

impl DatasetEvaluator {
    /// Evaluates `spec` models on `data` with the CPU backend.
    pub fn new(spec: &ModelSpec, data: Dataset) -> anyhow::Result<Self> {
        Ok(Self {
            trainer: Mutex::new(LocalTrainer::new(spec, &ComputeBackend::flex())?),
            data,
        })
    }
}

impl Evaluator for DatasetEvaluator {
    fn evaluate(&self, weights: &[f32]) -> Result<(f32, f32), String> {
        let mut t = self.trainer.lock().unwrap_or_else(|p| p.into_inner());
        t.evaluate(weights, Examples::all(&self.data))
            .map(|m| (m.loss, m.accuracy))
            .map_err(|e| e.to_string())
    }
}

/// The demo's task: the digits MLP, every client selected each round.
pub fn demo_task(config: &DemoConfig) -> TaskDefinition {
    let n = config.clients as u32;
    let target = (n * 3 / 5).max(3);
    TaskDefinition {
        id: "digits-demo".into(),
        model: ModelSpec::digits_mlp(),
        training: TrainingParams {
            epochs: config.epochs,
            batch_size: 16,
            learning_rate: config.learning_rate,
            optimizer: OptimizerSpec::Sgd { momentum: 0.0 },
            proximal_mu: 0.0,
        },
        strategy: toml::Value::Table(
            [("kind".to_string(), toml::Value::String("fedavg".into()))]
                .into_iter()
                .collect(),
        ),
        cohort_size: target,
        over_selection: f64::from(n) / f64::from(target),
        rounds: config.rounds,
        secagg: SecAggSettings {
            max_weight: 128,
            dropout_fraction: config.dropout_fraction,
            ..SecAggSettings::default()
        },
        deadlines: config.deadlines.clone(),
        evaluate_every: 1,
    }
}

/// Server settings for loopback demos and tests.
pub fn demo_server_config(
    state_dir: PathBuf,
    evaluator: Option<Arc<dyn Evaluator>>,
) -> ServerConfig {
    ServerConfig {
        state_dir,
        listen: "127.0.0.1:0".parse().expect("a valid socket address"),
        metrics_listen: None,
        auth: AuthConfig {
            enrollment: Enrollment::Open,
            rate_limit: RateLimitPolicy::default(),
        },
        session: SessionOptions::default(),
        scheduler: SchedulerOptions {
            unmask_threads: 2,
            selection_window: Duration::from_secs(2),
            initial_round_estimate: Duration::from_secs(2),
            max_checkpoint_bytes: 1 << 30,
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
    let conn = transport.connect(c.addr, "localhost").await?;
    let mut stream = FramedStream::open(&conn, DEFAULT_MAX_FRAME_LEN).await?;
    enroll::hello(&mut stream).await?;
    enroll::enroll(
        &mut stream,
        state_dir,
        name,
        password,
        None,
        KsfParams::insecure_fast_for_tests(),
        Some(c.fingerprint.to_hex()),
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
        server: c.addr,
        server_name: "localhost".into(),
        state_dir: dir,
        password,
        task: None,
        eligibility: EligibilityPolicy::always(),
        backoff: Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(2),
        },
        max_rounds: None,
        max_failures: 30,
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
    let handle = tokio::spawn(async move { run(&transport, &cfg, trainer, tx).await });
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
        };
        clients.push(spawn_client(c, root, i, trainer, hooks).await?);
    }
    Ok(clients)
}

/// Runs the demo to the end; `progress` sees every task event as it happens.
pub async fn run_demo(
    config: DemoConfig,
    mut progress: impl FnMut(&TaskEvent),
) -> anyhow::Result<DemoReport> {
    let tmp = tempfile_dir()?;
    let root = config.state_dir.clone().unwrap_or_else(|| tmp.clone());
    let digits = embedded_digits()?;
    let task = demo_task(&config);
    let evaluator: Arc<dyn Evaluator> =
        Arc::new(DatasetEvaluator::new(&task.model, digits.test.clone())?);
    let coordinator = Coordinator::start(demo_server_config(
        root.join("coordinator"),
        Some(evaluator),
    ))
    .await?;
    let mut task_events = coordinator.scheduler.subscribe();
    let (tx, mut contributions_rx) = mpsc::unbounded_channel();
    let (inputs_tx, mut inputs_rx) = mpsc::unbounded_channel();
    // Clients that check in before the task starts are told to come back after the selection
    // window, so they all arrive within one window of the start.
    let clients = spawn_clients(
        &coordinator,
        &config,
        &root,
        &digits.train,
        tx,
        Some(inputs_tx),
    )
    .await?;
    coordinator.create_and_start(task)?;
    let mut report = DemoReport::default();
    loop {
        let event = match task_events.recv().await {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(e) => anyhow::bail!("the scheduler stopped: {e}"),
        };
        progress(&event);
        if let TaskEvent::RoundCompleted {
            evaluation,
            round_id,
            members,
            previous_model,
            model,
            ..
        } = &event
        {
            if let Some((_, acc)) = evaluation {
                report.final_accuracy = *acc;
            }
            let cp = coordinator.scheduler.checkpoints();
            let before = cp.get(previous_model, 1 << 30)?;
            let after = cp.get(model, 1 << 30)?;
            let diff = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            report.applied.push((*round_id, members.clone(), diff));
        }
        let done = matches!(event, TaskEvent::TaskFinished { .. });
        report.events.push(event);
        if done {
            break;
        }
    }
    for c in &clients {
        c.handle.abort();
    }
    coordinator.shutdown();
    while let Ok(c) = contributions_rx.try_recv() {
        report.contributions.push(c);
    }
    while let Ok(i) = inputs_rx.try_recv() {
        report.inputs.push(i);
    }
    if config.state_dir.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(report)
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "cohort-demo-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
