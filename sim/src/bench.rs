//! The scale benchmarks behind `cohort-sim bench` (numbers to print, not timed tests):
//!
//! - **throughput**: wall seconds per round with 1,000 clients per round on the digits MLP
//!   64-32-10 (the digits' training set repeated so that each client has about 259 examples,
//!   Dirichlet 0.5, one local epoch, batch 32, lr 0.05: the equal-work workload of the
//!   comparison with Flower; before 2026-12-03 the set was not repeated and a client had about
//!   1.4 examples), with and without SecAgg+, with the trainer asked for (burn by
//!   default, or the built-in MLP) and burn's group size (`--group-size 1` trains one client
//!   per burn step, the path before grouping);
//! - **memory**: peak resident memory (`VmHWM`) of a run with 10,000 clients (MNIST IID when
//!   the shared datasets are present, else digits with 1,000 clients, which is said in the
//!   output), measured in a child process so the throughput runs do not inflate it.
//!
//! - **protocol** (`--synthetic-parameters d`): SecAgg+ alone, with the synthetic trainer
//!   (updates of d pseudo-random values), with the default parameters with and without the R2.5
//!   consistency check (`secagg.consistency_check`: signed keys and survivor set, and the
//!   semi-malicious k and t it needs), and with k and t forced
//!   to Flower's "3 shares, threshold 2" (`[comparison_only] dangerous_force_graph`), for a
//!   comparison on equal terms with Flower's SecAgg+ benchmark.
//!
//! `cohort-sim bench` prints the machine's load average before and after: on a shared machine,
//! numbers taken under load are not comparable with numbers taken idle.

use serde::Serialize;

use crate::config::{ComparisonOnly, DEFAULT_EXPERIMENT, Experiment, ForcedGraph, TrainerKind};
use crate::error::SimError;
use crate::metrics::peak_rss_bytes;
use crate::run::run_experiment;

/// One throughput measurement.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputResult {
    /// SecAgg+ on or off.
    pub secagg: bool,
    /// Clients per round.
    pub clients_per_round: u32,
    /// Rounds measured.
    pub rounds: u32,
    /// Mean wall seconds per round.
    pub wall_s_per_round: f64,
    /// Fastest round.
    pub wall_s_min: f64,
    /// Mean simulated seconds per round.
    pub sim_s_per_round: f64,
    /// Test accuracy after the last round (a sanity check that the run trained).
    pub final_accuracy: Option<f32>,
}

/// The experiment of the throughput benchmark.
pub fn throughput_experiment(
    clients_per_round: u32,
    rounds: u32,
    secagg: bool,
    trainer: TrainerKind,
) -> Experiment {
    let mut exp =
        Experiment::from_toml(DEFAULT_EXPERIMENT).expect("the default experiment is valid");
    exp.task.id = format!("bench-{}", if secagg { "secagg" } else { "plain" });
    exp.task.model.hidden = Some(vec![32]);
    exp.task.training.learning_rate = 0.05;
    exp.population.num_clients = clients_per_round;
    exp.task.selection.clients_per_round = clients_per_round;
    exp.task.selection.over_selection = 0.0;
    exp.task.secagg.max_weight = weight_budget(clients_per_round);
    exp.task.rounds = rounds;
    exp.task.evaluate_every = rounds;
    exp.data.partition = cohort_datasets::PartitionSpec::Dirichlet { alpha: 0.5 };
    exp.data.dir = None;
    if trainer != TrainerKind::Synthetic {
        exp.data.repeat = Some(digits_repeat(clients_per_round));
    }
    exp.task.training.epochs = 1;
    exp.task.training.batch_size = 32;
    exp.task.secagg.enabled = secagg;
    exp.availability = Default::default();
    exp.run.trainer = trainer;
    exp
}

/// The examples per client of the equal-work workload (Flower's side of the
/// comparison): the UCI digits' 1,438 training examples 180 times over 1,000 clients.
pub const EXAMPLES_PER_CLIENT: u32 = 259;

/// How many times the digits' training set is repeated so that `clients` get about
/// [`EXAMPLES_PER_CLIENT`] examples each (180 at 1,000 clients; at least 1).
pub fn digits_repeat(clients: u32) -> u32 {
    const DIGITS_TRAIN: u64 = 1_438;
    let wanted = u64::from(EXAMPLES_PER_CLIENT) * u64::from(clients.max(1));
    (((wanted + DIGITS_TRAIN / 2) / DIGITS_TRAIN) as u32).clamp(1, crate::config::MAX_DATA_REPEAT)
}

/// The largest weight that keeps `clients · max_weight` at 2^16 (room for 16 value bits).
fn weight_budget(clients: u32) -> u32 {
    ((1u32 << 16) / clients.max(1)).max(1)
}

/// Runs the throughput benchmark.
pub fn throughput(
    clients_per_round: u32,
    rounds: u32,
    secagg: bool,
    trainer: TrainerKind,
    group_size: u32,
) -> Result<ThroughputResult, SimError> {
    let mut exp = throughput_experiment(clients_per_round, rounds, secagg, trainer);
    exp.run.group_size = group_size;
    let out = run_experiment(&exp, None, false)?;
    let walls: Vec<f64> = out.rows.iter().map(|r| r.wall_s).collect();
    let n = walls.len().max(1) as f64;
    Ok(ThroughputResult {
        secagg,
        clients_per_round,
        rounds: out.rows.len() as u32,
        wall_s_per_round: walls.iter().sum::<f64>() / n,
        wall_s_min: walls.iter().copied().fold(f64::INFINITY, f64::min),
        sim_s_per_round: out.rows.iter().map(|r| r.sim_round_s).sum::<f64>() / n,
        final_accuracy: out.summary.final_accuracy,
    })
}

/// One SecAgg+ protocol measurement with the synthetic trainer.
#[derive(Clone, Debug, Serialize)]
pub struct ProtocolResult {
    /// Clients per round (N).
    pub clients_per_round: u32,
    /// Model size (d).
    pub parameters: u64,
    /// The forced k and t, or `None` for the finder's.
    pub forced: Option<ForcedGraph>,
    /// Whether the rounds ran the R2.5 consistency check.
    pub consistency_check: bool,
    /// The k and t the rounds used.
    pub graph: Option<ForcedGraph>,
    /// Rounds measured.
    pub rounds: u32,
    /// Mean wall seconds per round.
    pub wall_s_per_round: f64,
    /// Fastest round.
    pub wall_s_min: f64,
    /// Mean bytes uploaded per client and round.
    pub bytes_up_per_client: f64,
    /// The value bits and ring bits r of the rounds (masked inputs travel at r bits a
    /// coordinate).
    pub value_bits: u8,
    /// r.
    pub ring_bits: u8,
}

/// The encoding of the protocol benchmark: `secagg.value_bits` (`None`: the task's default)
/// and `secagg.max_weight` (`None`: the throughput benchmark's 2^16 / N).
#[derive(Clone, Copy, Debug, Default)]
pub struct BenchEncoding {
    /// `secagg.value_bits`.
    pub value_bits: Option<u8>,
    /// `secagg.max_weight`.
    pub max_weight: Option<u32>,
}

/// The experiment of the protocol benchmark: N clients, all selected every round, SecAgg+ on
/// with the default task parameters (adversarial fraction 0.05, dropout fraction 0.1), the
/// consistency check on or off, no dropouts, the synthetic trainer with `parameters` values,
/// and optionally a forced graph.
pub fn protocol_experiment(
    clients_per_round: u32,
    parameters: u64,
    rounds: u32,
    forced: Option<ForcedGraph>,
    consistency_check: bool,
) -> Experiment {
    let mut exp = throughput_experiment(clients_per_round, rounds, true, TrainerKind::Synthetic);
    exp.task.id = "bench-protocol".into();
    exp.task.secagg.adversarial_fraction = 0.05;
    exp.task.secagg.dropout_fraction = 0.1;
    exp.task.secagg.consistency_check = consistency_check;
    exp.run.synthetic_parameters = Some(parameters);
    exp.network.profiles = [("datacenter".to_string(), 1.0)].into();
    exp.comparison_only = forced.map(|g| ComparisonOnly {
        dangerous_force_graph: Some(g),
    });
    exp
}

/// Runs the protocol benchmark (see [`protocol_experiment`]).
pub fn protocol(
    clients_per_round: u32,
    parameters: u64,
    rounds: u32,
    forced: Option<ForcedGraph>,
    consistency_check: bool,
) -> Result<ProtocolResult, SimError> {
    protocol_with(
        clients_per_round,
        parameters,
        rounds,
        forced,
        consistency_check,
        BenchEncoding::default(),
    )
}

/// [`protocol`] with the encoding's value bits and largest weight set.
pub fn protocol_with(
    clients_per_round: u32,
    parameters: u64,
    rounds: u32,
    forced: Option<ForcedGraph>,
    consistency_check: bool,
    encoding: BenchEncoding,
) -> Result<ProtocolResult, SimError> {
    let mut exp = protocol_experiment(
        clients_per_round,
        parameters,
        rounds,
        forced,
        consistency_check,
    );
    if let Some(b) = encoding.value_bits {
        exp.task.secagg.value_bits = Some(b);
    }
    if let Some(w) = encoding.max_weight {
        exp.task.secagg.max_weight = w;
    }
    exp.validate()?;
    let out = run_experiment(&exp, None, false)?;
    let walls: Vec<f64> = out.rows.iter().map(|r| r.wall_s).collect();
    let n = walls.len().max(1) as f64;
    let up: u64 = out.rows.iter().map(|r| r.bytes_up).sum();
    let plan = cohort_task::RoundPlan::new(&exp.task, clients_per_round, out.global.len()).ok();
    let (value_bits, ring_bits) = plan
        .as_ref()
        .map_or((0, 0), |p| (p.quantizer.params().value_bits, p.ring_bits()));
    let planned = plan.and_then(|p| p.secagg).map(|p| ForcedGraph {
        k: p.neighbours,
        t: p.threshold,
    });
    Ok(ProtocolResult {
        clients_per_round,
        parameters,
        forced,
        consistency_check,
        graph: forced.or(planned),
        rounds: out.rows.len() as u32,
        wall_s_per_round: walls.iter().sum::<f64>() / n,
        wall_s_min: walls.iter().copied().fold(f64::INFINITY, f64::min),
        bytes_up_per_client: up as f64 / n / f64::from(clients_per_round.max(1)),
        value_bits,
        ring_bits,
    })
}

/// One memory measurement.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryResult {
    /// The dataset used.
    pub dataset: String,
    /// Simulated clients.
    pub num_clients: u32,
    /// Clients per round.
    pub clients_per_round: u32,
    /// Rounds run.
    pub rounds: u32,
    /// Peak resident memory, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// Final accuracy (a sanity check that the run did something).
    pub final_accuracy: Option<f32>,
}

/// Runs the memory benchmark in this process (call it in a fresh process for a clean peak).
pub fn memory(
    num_clients: u32,
    rounds: u32,
    trainer: TrainerKind,
) -> Result<MemoryResult, SimError> {
    let mut exp =
        Experiment::from_toml(DEFAULT_EXPERIMENT).expect("the default experiment is valid");
    let mnist = cohort_datasets::datasets_dir()
        .map(|d| d.join("mnist"))
        .filter(|d| d.is_dir());
    exp.task.id = "bench-memory".into();
    exp.run.trainer = trainer;
    exp.task.rounds = rounds;
    exp.task.evaluate_every = rounds;
    exp.data.partition = cohort_datasets::PartitionSpec::Iid;
    exp.task.training.epochs = 1;
    exp.task.training.batch_size = 32;
    if mnist.is_some() {
        exp.data.dataset = "mnist".into();
        exp.population.num_clients = num_clients;
        exp.task.model.hidden = Some(vec![200, 200]);
    } else {
        tracing::warn!("MNIST not found; the memory benchmark uses digits with 1,000 clients");
        exp.population.num_clients = num_clients.min(1000);
    }
    let per_round = 100.min(exp.population.num_clients);
    exp.task.selection.clients_per_round = per_round;
    exp.task.secagg.max_weight = weight_budget(per_round);
    let out = run_experiment(&exp, None, false)?;
    Ok(MemoryResult {
        dataset: exp.data.dataset.clone(),
        num_clients: exp.population.num_clients,
        clients_per_round: per_round,
        rounds: out.rows.len() as u32,
        peak_rss_bytes: peak_rss_bytes(),
        final_accuracy: out.summary.final_accuracy,
    })
}

/// The machine's load average (`/proc/loadavg`: 1, 5 and 15 minutes), or "unknown".
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}
