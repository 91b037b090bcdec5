//! Live mode: an experiment run by a real coordinator and real edge clients over QUIC on
//! loopback, instead of on the virtual clock.
//!
//! `cohort-sim live EXPERIMENT.toml` loads and partitions the experiment's dataset exactly as
//! `run` does (same seed streams), starts a `cohort-coordinator` in this process on
//! `127.0.0.1`, enrolls one `cohort-edge` client per partition with OPAQUE (open enrollment,
//! Argon2 with the fast test parameters, since every client enrolls on this machine's cores),
//! creates the experiment's task (its task section, the same vocabulary a coordinator reads:
//! model, local training, strategy, selection, SecAgg+ parameters, deadlines) and lets the
//! coordinator's scheduler run it. Clients train with
//! `cohort-learning` on the CPU backend (flex), upload masked updates, and the coordinator
//! evaluates the global model on the experiment's test split after every round.
//!
//! What differs from the simulator, on purpose:
//! - time is the wall clock: `wall_s` is the round's duration and `elapsed_s` the time since the
//!   task started;
//! - the availability and network models are not applied (the network is loopback and every
//!   client stays online); the sim is the place to study them;
//! - the devices' check-in times are the real ones: selection (the production selector in both
//!   modes, with over-selection, the cut-off and the wait of the last round's members) sees
//!   loopback clients that answer in milliseconds, where the simulator's devices take their
//!   profile's time;
//! - `training.max_examples` is refused (edge clients train on all their examples), as by any
//!   coordinator; so is `secagg.enabled = false`.
//!
//! The outputs mirror `run`: `metrics.csv` (with live columns), `summary.json`,
//! `experiment.toml` and the accuracy plots.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use cohort_coordinator::metrics::TrafficByKind;
use cohort_coordinator::scheduler::{Evaluator, TaskEvent};
use cohort_coordinator::server::Coordinator;
use cohort_coordinator::task::TaskDefinition;
use cohort_datasets::Dataset;
use cohort_edge::trainer::{BurnTrainer, Trainer};
use cohort_learning::ComputeBackend;
use cohort_loopback::{ClientHooks, DatasetEvaluator, server_config, spawn_client};
use serde::Serialize;

use crate::config::{DataShape, Experiment, ModelConfig};
use crate::error::SimError;
use crate::metrics::csv_text;
use crate::plot::figures::{self, Clock, Curve, RoundPoint};
use crate::setup::{ExperimentData, load_data};

/// The most edge clients one live run starts: each is a QUIC endpoint, an OPAQUE login and a
/// burn model in this process.
pub const MAX_LIVE_CLIENTS: u32 = 1_000;

/// Options of a live run that are not part of the experiment.
#[derive(Clone, Debug, Default)]
pub struct LiveOptions {
    /// Where the coordinator and the clients keep their state directories; a temporary
    /// directory (removed afterwards) when `None`.
    pub state_dir: Option<PathBuf>,
}

/// One finished round of a live run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LiveRound {
    /// The round, from 1.
    pub round: u64,
    /// Attempts the coordinator made (1 unless attempts aborted below quorum and were retried).
    pub attempts: u32,
    /// Test accuracy of the new global model.
    pub accuracy: Option<f32>,
    /// Test loss of the new global model.
    pub loss: Option<f32>,
    /// Federated evaluation: the example-weighted accuracy of the round's *starting* model on
    /// the members' own training data, as the devices reported it.
    pub federated_accuracy: Option<f32>,
    /// Clients selected for the attempt that completed.
    pub selected: u32,
    /// Clients whose masked update is in the aggregate.
    pub participants: u32,
    /// Clients that dropped out after sharing keys.
    pub dropouts: u32,
    /// Clients removed for breaking a protocol rule.
    pub removed: u32,
    /// Frame bytes the coordinator received since the previous round (every message: logins,
    /// check-ins, SecAgg+ messages of all attempts).
    pub bytes_up: u64,
    /// Frame bytes the coordinator sent since the previous round (weights included).
    pub bytes_down: u64,
    /// Wall-clock seconds of the completed attempt.
    pub wall_s: f64,
    /// Wall-clock seconds since the task started, at the end of the round.
    pub elapsed_s: f64,
}

/// The CSV header of a live run's `metrics.csv`.
pub const LIVE_CSV_HEADER: &str = "round,attempts,accuracy,loss,federated_accuracy,selected,\
participants,dropouts,removed,bytes_up,bytes_down,wall_s,elapsed_s";

/// A live run at a glance (`summary.json`).
#[derive(Clone, Debug, Serialize)]
pub struct LiveSummary {
    /// The experiment's name.
    pub name: String,
    /// Always `"live"`.
    pub mode: &'static str,
    /// Edge clients started.
    pub clients: u32,
    /// Rounds completed.
    pub rounds: usize,
    /// Attempts aborted (and retried).
    pub aborted_attempts: u32,
    /// Accuracy after the last round.
    pub final_accuracy: Option<f32>,
    /// Best accuracy over the rounds.
    pub best_accuracy: Option<f32>,
    /// Whether SecAgg+ masked the updates.
    pub secagg: bool,
    /// Seconds from the task's start to its end.
    pub wall_s: f64,
    /// Seconds spent starting the coordinator and enrolling the clients.
    pub setup_s: f64,
}

/// What a live run produced.
#[derive(Clone, Debug)]
pub struct LiveOutput {
    /// One row per completed round.
    pub rows: Vec<LiveRound>,
    /// The summary.
    pub summary: LiveSummary,
}

/// `metrics.csv` of a live run: [`LIVE_CSV_HEADER`] and one [`LiveRound`] per row, through
/// serde.
pub fn to_csv(rows: &[LiveRound]) -> Result<String, csv::Error> {
    csv_text(LIVE_CSV_HEADER, rows)
}

fn live_error(what: impl Into<String>, e: impl std::fmt::Display) -> SimError {
    SimError::Live {
        what: what.into(),
        message: e.to_string(),
    }
}

/// The coordinator task for `exp`: the experiment's task section as it is, with its model
/// stated in full (the coordinator has no dataset to take the input shape and classes from).
/// `training.max_examples` and `secagg.enabled = false` are refused, as by any coordinator.
pub fn task_for(exp: &Experiment, train: &Dataset) -> Result<TaskDefinition, SimError> {
    if exp.comparison_only.is_some() {
        return Err(live_error(
            "[comparison_only]",
            "comparison-only settings weaken SecAgg+ and are for simulated benchmarks only; \
             a coordinator refuses them: remove the [comparison_only] section to run live",
        ));
    }
    let mut task = exp.task.clone();
    task.model = ModelConfig::from_spec(&exp.model_spec(data_shape(train))?);
    Ok(TaskDefinition::new(task)?)
}

/// What the dataset says about the model's ends.
pub fn data_shape(data: &Dataset) -> DataShape {
    DataShape {
        features: u32::try_from(data.feature_len()).unwrap_or(u32::MAX),
        classes: data.num_classes(),
    }
}

/// Runs `exp` live; `progress` sees every task event as it happens. Writes the outputs into
/// `out` when given.
pub async fn run_live(
    exp: &Experiment,
    options: &LiveOptions,
    out: Option<&Path>,
    mut progress: impl FnMut(&TaskEvent),
) -> Result<LiveOutput, SimError> {
    exp.validate()?;
    if exp.population.num_clients > MAX_LIVE_CLIENTS {
        return Err(live_error(
            format!("population.num_clients = {}", exp.population.num_clients),
            format!(
                "live mode starts at most {MAX_LIVE_CLIENTS} edge clients in one process; \
                 lower num_clients, or use `cohort-sim run` for larger populations"
            ),
        ));
    }
    let started = Instant::now();
    let ExperimentData {
        train,
        test,
        partitions,
        source,
    } = load_data(exp)?;
    tracing::info!(dataset = %exp.data.dataset, %source, "live mode: data loaded");
    let task = task_for(exp, &train)?;

    // The temporary directory (when no state directory is given) lives until the run ends.
    let (root, _tmp) = match &options.state_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("cohort-live-")
                .tempdir()
                .map_err(|e| live_error("creating a temporary state directory", e))?;
            (tmp.path().to_path_buf(), Some(tmp))
        }
    };
    let evaluator: Arc<dyn Evaluator> = Arc::new(
        DatasetEvaluator::new(task.model(), test)
            .map_err(|e| live_error("building the evaluator", format!("{e:#}")))?,
    );
    let coordinator = Coordinator::start(server_config(root.join("coordinator"), Some(evaluator)))
        .await
        .map_err(|e| live_error("starting the coordinator", format!("{e:#}")))?;
    let mut events = coordinator.scheduler.subscribe();

    let mut clients = Vec::with_capacity(partitions.len());
    for (i, indices) in partitions.iter().enumerate() {
        let data = train.subset(indices).map_err(|source| SimError::Data {
            what: format!("building client {i}'s data"),
            source,
        })?;
        let trainer: Box<dyn Trainer> = Box::new(BurnTrainer::new(ComputeBackend::flex(), data));
        // An experiment that turns the consistency check off runs its devices with the named
        // dangerous option, as a deployment would have to.
        let hooks = ClientHooks {
            dangerous_allow_rounds_without_consistency_check: !exp.task.secagg.consistency_check,
            ..ClientHooks::default()
        };
        let client = spawn_client(&coordinator, &root, i, trainer, hooks)
            .await
            .map_err(|e| live_error(format!("enrolling client {i}"), format!("{e:#}")))?;
        clients.push(client);
    }
    let setup_s = started.elapsed().as_secs_f64();
    tracing::info!(
        clients = clients.len(),
        setup_s,
        "live mode: clients enrolled, starting the task"
    );
    coordinator
        .create_and_start(task)
        .map_err(|e| live_error("starting the task", format!("{e:#}")))?;

    let task_started = Instant::now();
    let metrics = coordinator.scheduler.metrics().clone();
    let mut traffic = metrics.traffic();
    let mut rows = Vec::new();
    let mut aborted = 0u32;
    let mut attempts = 1u32;
    let result = loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(e) => break Err(live_error("the coordinator's scheduler stopped", e)),
        };
        progress(&event);
        match &event {
            TaskEvent::RoundCompleted {
                round,
                selected,
                contributors,
                dropped,
                removed,
                evaluation,
                federated_evaluation,
                took,
                ..
            } => {
                let now = metrics.traffic();
                let delta = now.since(&traffic);
                traffic = now;
                let total = |by_kind: &TrafficByKind| by_kind.values().map(|t| t.bytes).sum();
                rows.push(LiveRound {
                    round: *round,
                    attempts,
                    accuracy: evaluation.map(|(_, a)| a),
                    loss: evaluation.map(|(l, _)| l),
                    federated_accuracy: federated_evaluation.as_ref().map(|f| f.accuracy),
                    selected: *selected,
                    participants: *contributors,
                    dropouts: *dropped,
                    removed: *removed,
                    bytes_up: total(&delta.received),
                    bytes_down: total(&delta.sent),
                    wall_s: took.as_secs_f64(),
                    elapsed_s: task_started.elapsed().as_secs_f64(),
                });
                attempts = 1;
            }
            TaskEvent::RoundAborted { .. } => {
                aborted += 1;
                attempts += 1;
            }
            TaskEvent::TaskFinished { .. } => break Ok(()),
        }
    };
    let wall_s = task_started.elapsed().as_secs_f64();
    for c in &clients {
        c.handle.abort();
    }
    coordinator.shutdown();
    result?;

    let summary = LiveSummary {
        name: exp.task.id.clone(),
        mode: "live",
        clients: exp.population.num_clients,
        rounds: rows.len(),
        aborted_attempts: aborted,
        final_accuracy: rows.last().and_then(|r| r.accuracy),
        best_accuracy: rows
            .iter()
            .filter_map(|r| r.accuracy)
            .fold(None, |b: Option<f32>, a| Some(b.map_or(a, |b| b.max(a)))),
        secagg: exp.task.secagg.enabled,
        wall_s,
        setup_s,
    };
    let output = LiveOutput { rows, summary };
    if let Some(dir) = out {
        write_outputs(dir, exp, &output)?;
    }
    Ok(output)
}

/// Writes `metrics.csv`, `summary.json`, `experiment.toml` and the accuracy plots (against round
/// and against wall-clock time) into `dir`.
pub fn write_outputs(dir: &Path, exp: &Experiment, out: &LiveOutput) -> Result<(), SimError> {
    let io = |path: PathBuf| move |source| SimError::Io { path, source };
    std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    let csv = dir.join("metrics.csv");
    let text = to_csv(&out.rows).map_err(|source| SimError::Csv {
        path: csv.clone(),
        source,
    })?;
    std::fs::write(&csv, text).map_err(io(csv.clone()))?;
    let summary = dir.join("summary.json");
    let text = serde_json::to_string_pretty(&out.summary)
        .map_err(|e| live_error("serializing summary.json", e))?;
    std::fs::write(&summary, text + "\n").map_err(io(summary.clone()))?;
    if let Ok(resolved) = exp.to_toml() {
        let path = dir.join("experiment.toml");
        std::fs::write(&path, resolved).map_err(io(path.clone()))?;
    }
    // The time axis is wall-clock seconds since the task started.
    let curve = Curve {
        label: format!("{} (live)", exp.task.id),
        points: out
            .rows
            .iter()
            .map(|r| RoundPoint {
                round: u32::try_from(r.round).unwrap_or(u32::MAX),
                time_s: r.elapsed_s,
                accuracy: r.accuracy,
                loss: r.loss,
                train_loss: None,
            })
            .collect(),
    };
    figures::write(dir, &[curve], Clock::WallClock)
}
