//! The loopback demo: one coordinator and many edge clients in one process, over real QUIC on
//! 127.0.0.1, with OPAQUE enrollment and SecAgg+, training the digits MLP on the embedded UCI
//! digits split across the clients. `cohort-loopback demo` runs it; the end-to-end tests run
//! it with faults injected.
//!
//! Argon2 runs with the fast test parameters here (each of the clients enrolls and logs in on
//! two cores); a deployment keeps the default parameters.

use std::path::PathBuf;
use std::sync::Arc;

use cohort_aggregation::strategy::StrategyConfig;
use cohort_coordinator::scheduler::{Evaluator, TaskEvent};
use cohort_coordinator::server::Coordinator;
use cohort_coordinator::task::TaskDefinition;
use cohort_datasets::{PartitionSpec, embedded_digits};
use cohort_edge::run::Contribution;
use cohort_edge::testing::{Fault, ProvidedInput};
use cohort_protocol::{ModelSpec, OptimizerSpec};
use cohort_task::config::{
    DeadlineConfig, ModelConfig, SecAggConfig, SelectionConfig, TaskConfig, TrainingConfig,
};
use tokio::sync::mpsc;

use crate::clients::{server_config, spawn_clients};
use crate::evaluator::DatasetEvaluator;

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
    pub deadlines: DeadlineConfig,
    /// Faults injected into clients, by client number (0-based).
    pub faults: Vec<(usize, Fault)>,
    /// The dropout fraction SecAgg+ is configured for (q_min = ceil((1 - f)·n)).
    pub dropout_fraction: f64,
    /// The task's differential privacy (none by default); with DP every update has weight 1.
    pub privacy: cohort_task::config::PrivacyConfig,
    /// Client numbers whose owner set a differential-privacy limit (`--max-epsilon`), and
    /// the limit.
    pub max_epsilon: Vec<(usize, f64)>,
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
            deadlines: DeadlineConfig {
                advertise_keys: 20.0,
                share_keys: 20.0,
                masked_input: 120.0,
                unmask: 20.0,
            },
            faults: Vec::new(),
            dropout_fraction: 0.10,
            privacy: Default::default(),
            max_epsilon: Vec::new(),
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
    /// The clients whose run loop ended with an error before the task finished (a device that
    /// refused the task, for instance), with the error's message.
    pub client_errors: Vec<(usize, String)>,
}

/// The demo's task: the digits MLP, every client selected each round and every input summed
/// (no over-selection), with the loopback settings' 2 s selection window.
pub fn demo_task(config: &DemoConfig) -> TaskConfig {
    TaskConfig {
        id: "digits-demo".into(),
        rounds: config.rounds,
        evaluate_every: 1,
        model: ModelConfig::from_spec(&ModelSpec::digits_mlp()),
        training: TrainingConfig {
            epochs: config.epochs,
            batch_size: 16,
            learning_rate: config.learning_rate,
            optimizer: OptimizerSpec::Sgd { momentum: 0.0 },
            proximal_mu: 0.0,
            max_examples: None,
        },
        strategy: StrategyConfig::default(),
        selection: SelectionConfig {
            clients_per_round: config.clients as u32,
            over_selection: 0.0,
            window_secs: LOOPBACK_WINDOW_SECS,
        },
        secagg: SecAggConfig {
            // DP bounds each client's influence by the clip: weight 1.
            max_weight: if config.privacy.enabled() { 1 } else { 128 },
            dropout_fraction: config.dropout_fraction,
            ..SecAggConfig::default()
        },
        deadlines: config.deadlines,
        privacy: config.privacy.clone(),
        input: None,
    }
}

/// The selection window of loopback tasks, in seconds: every client is in this process, so a
/// cohort fills in milliseconds.
pub const LOOPBACK_WINDOW_SECS: f64 = 2.0;

/// Runs the demo to the end; `progress` sees every task event as it happens.
pub async fn run_demo(
    config: DemoConfig,
    mut progress: impl FnMut(&TaskEvent),
) -> anyhow::Result<DemoReport> {
    let tmp = tempfile::Builder::new().prefix("cohort-demo-").tempdir()?;
    let root = config
        .state_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let digits = embedded_digits()?;
    let task = TaskDefinition::new(demo_task(&config))?;
    let evaluator: Arc<dyn Evaluator> =
        Arc::new(DatasetEvaluator::new(task.model(), digits.test.clone())?);
    let coordinator =
        Coordinator::start(server_config(root.join("coordinator"), Some(evaluator))).await?;
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
    for (i, c) in clients.into_iter().enumerate() {
        if c.handle.is_finished() {
            if let Ok(Err(e)) = c.handle.await {
                report.client_errors.push((i, e.to_string()));
            }
        } else {
            c.handle.abort();
        }
    }
    coordinator.shutdown();
    while let Ok(c) = contributions_rx.try_recv() {
        report.contributions.push(c);
    }
    while let Ok(i) = inputs_rx.try_recv() {
        report.inputs.push(i);
    }
    Ok(report)
}
