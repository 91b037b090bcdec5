//! The experiment file: a task, as the coordinator reads it, plus what only a simulation has.
//!
//! An experiment is `cohort-task`'s [`TaskConfig`] (its keys at the top level and its sections
//! `[model]`, `[training]`, `[strategy]`, `[selection]`, `[secagg]`, `[deadlines]`: the same
//! names, defaults and errors as a coordinator task file) and five sections of its own:
//! `[run]` (seed, retries, threads, trainer), `[population]`, `[data]` (dataset and partition),
//! `[availability]` and `[network]`. `docs/configuration.md` documents every key; see
//! `sim/experiments/*.toml`.
//!
//! Parsing refuses unknown keys, and every error names the offending key (e.g.
//! `data.partition`) and, where the set is closed, the allowed values, so a typo never
//! silently becomes a default. [`Experiment::validate`] then checks what serde cannot: ranges,
//! and that the parts agree with each other (the population against the cohort, the model
//! against the trainer).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cohort_datasets::{DatasetName, PartitionSpec};
use cohort_protocol::OptimizerSpec;
use serde::{Deserialize, Serialize};

pub use cohort_task::config::{
    ConfigError, DataShape, DeadlineConfig, ModelConfig, ModelPreset, SecAggConfig,
    SelectionConfig, TaskConfig, TrainingConfig,
};
use cohort_task::config::{deserialize, invalid, parse_table, read_text, unknown_key};

use crate::network::DeviceProfile;

/// The experiment that `cohort-sim run` uses when no file is given: digits, 100 clients, 20 per
/// round, SecAgg+ on, some dropouts.
pub const DEFAULT_EXPERIMENT: &str = include_str!("../experiments/digits-secagg.toml");

/// The largest `run.synthetic_parameters`: 2^28 values (1 GiB per update vector).
pub const MAX_SYNTHETIC_PARAMETERS: u64 = 1 << 28;

/// One simulation: a task, and the population, data, availability and network it runs on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Experiment {
    /// The task: the same vocabulary as a coordinator task file (`id`, `rounds`,
    /// `evaluate_every`, `[model]`, `[training]`, `[strategy]`, `[selection]`, `[secagg]`,
    /// `[deadlines]`).
    #[serde(flatten)]
    pub task: TaskConfig,
    /// `[run]`: how the simulator runs it.
    pub run: RunConfig,
    /// `[population]`: the simulated clients.
    pub population: PopulationConfig,
    /// `[data]`: the dataset and its partition.
    pub data: DataConfig,
    /// `[availability]`: who is eligible, and who drops out where.
    pub availability: AvailabilityConfig,
    /// `[network]`: device network and compute profiles.
    pub network: NetworkConfig,
    /// `[comparison_only]`: settings that weaken SecAgg+, for benchmarks against other systems
    /// only. Absent in every real experiment; `cohort-sim live` and the coordinator refuse it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison_only: Option<ComparisonOnly>,
}

/// `[comparison_only]`: what a benchmark against another system may force and a real task never
/// may. Each key is named for what it is: it weakens the protocol's guarantees.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComparisonOnly {
    /// Forces the SecAgg+ neighbour count k and Shamir threshold t of every round instead of the
    /// values the finder chooses for the task's adversarial and dropout fractions (for example
    /// `{ k = 2, t = 2 }`, Flower's "3 shares, threshold 2": each secret is split between a
    /// client and its k neighbours). The guarantees of `secagg.adversarial_fraction` and
    /// `secagg.dropout_fraction` no longer hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dangerous_force_graph: Option<ForcedGraph>,
}

/// `comparison_only.dangerous_force_graph`: the k and t every round uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForcedGraph {
    /// Neighbours per client (even, at least 2, below the cohort size; cohort size − 1 is the
    /// complete graph).
    pub k: u32,
    /// Shamir threshold, from 2 to k + 1.
    pub t: u32,
}

/// The simulator's own sections, read after the task's keys are taken out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SimSections {
    #[serde(default)]
    run: RunConfig,
    population: PopulationConfig,
    data: DataConfig,
    #[serde(default)]
    availability: AvailabilityConfig,
    #[serde(default)]
    network: NetworkConfig,
    #[serde(default)]
    comparison_only: Option<ComparisonOnly>,
}

/// The top-level keys an experiment adds to a task's.
const SIM_KEYS: &[&str] = &[
    "run",
    "population",
    "data",
    "availability",
    "network",
    "comparison_only",
];

/// `[run]`: how the simulator runs the experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Master seed: every random choice of the run derives from it. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// How many times a round is attempted (with a fresh cohort) before it is given up.
    /// Default 3.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Worker threads for local training and SecAgg+ client events; 0 (the default) = all
    /// cores.
    #[serde(default)]
    pub threads: usize,
    /// Which local trainer runs: burn through `cohort-learning` (the default; needs the
    /// `learning` cargo feature, on by default) or the built-in MLP.
    #[serde(default)]
    pub trainer: TrainerKind,
    /// The burn backend when `trainer = "burn"` (ignored by the built-in MLP).
    #[serde(default)]
    pub backend: BackendName,
    /// With `trainer = "burn"`, how many clients train together in one burn step (parameters
    /// stacked, batched matrix products) when the model is dense (linear, ReLU, dropout,
    /// flatten); 1 trains them one at a time. Models with other layers always train one at a
    /// time. Results agree with one-at-a-time training within float tolerance and do not
    /// depend on the thread count. Default 64.
    #[serde(default = "default_group_size")]
    pub group_size: u32,
    /// The model size of `trainer = "synthetic"` (required there, refused elsewhere): every
    /// update is a vector of this many pseudo-random values, as in Flower's SecAgg+ benchmark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic_parameters: Option<u64>,
    /// A test accuracy to report the rounds-to-target of (McMahan et al.'s measure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_accuracy: Option<f32>,
    /// Stop once the target accuracy is reached (otherwise run every round).
    #[serde(default)]
    pub stop_at_target: bool,
}

fn default_max_attempts() -> u32 {
    3
}

/// The default `run.group_size`.
pub const DEFAULT_GROUP_SIZE: u32 = 64;

fn default_group_size() -> u32 {
    DEFAULT_GROUP_SIZE
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            max_attempts: default_max_attempts(),
            threads: 0,
            trainer: TrainerKind::default(),
            backend: BackendName::default(),
            group_size: DEFAULT_GROUP_SIZE,
            synthetic_parameters: None,
            target_accuracy: None,
            stop_at_target: false,
        }
    }
}

/// `[population]`: the simulated clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PopulationConfig {
    /// How many clients exist (each holds one partition of the data).
    pub num_clients: u32,
}

/// `[data]`: which dataset and how it is split between clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// digits, mnist, fashion-mnist (or fashion_mnist), femnist, shakespeare.
    pub dataset: String,
    /// The dataset's folder. Default: `<datasets>/<dataset folder>`, where `<datasets>` is
    /// `$COHORT_DATASETS` or `../shared/datasets`; digits falls back to the embedded copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// iid, dirichlet (with alpha), shards (with per_client), natural.
    pub partition: PartitionSpec,
    /// Evaluate on at most this many test examples (a fixed subset drawn from the seed);
    /// default: the whole test set. For large test sets and slow models (Shakespeare).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_examples: Option<u32>,
    /// Use every training example this many times (default 1): a population larger than the
    /// dataset, for benchmarks that need a fixed amount of work per client (e.g. `cohort-sim
    /// bench`: the UCI digits 180 times give 1,000 clients about 259 examples each). The
    /// copies are identical, so this adds work, not information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<u32>,
}

/// The largest `data.repeat`.
pub const MAX_DATA_REPEAT: u32 = 10_000;

impl DataConfig {
    /// The dataset name, checked.
    pub fn dataset_name(&self) -> Result<DatasetName, ConfigError> {
        DatasetName::from_str(&self.dataset).map_err(|_| {
            invalid(
                "data.dataset",
                format!("{:?}", self.dataset),
                "digits, mnist, fashion-mnist, femnist, shakespeare",
            )
        })
    }
}

/// `run.trainer`: which [`LocalTrainer`](crate::trainer::LocalTrainer) trains the clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TrainerKind {
    /// `cohort-learning` (burn), the edge clients' own training code, for any model spec:
    /// the default. Needs the `learning` cargo feature (on by default).
    #[default]
    Burn,
    /// [`crate::mlp::MlpTrainer`]: plain-Rust ReLU MLPs with SGD, checked against finite
    /// differences. The fast-build path: `cargo run -p cohort-sim --no-default-features -- run
    /// --trainer builtin` builds without burn.
    Builtin,
    /// [`crate::synthetic::SyntheticTrainer`]: no model and no learning, a pseudo-random update
    /// of `run.synthetic_parameters` values per client, returned at once. For protocol
    /// benchmarks (SecAgg+ at a given model size), like Flower's SecAgg+ benchmark.
    Synthetic,
}

impl TrainerKind {
    /// The name used in experiment files.
    pub fn name(self) -> &'static str {
        match self {
            TrainerKind::Burn => "burn",
            TrainerKind::Builtin => "builtin",
            TrainerKind::Synthetic => "synthetic",
        }
    }
}

/// `run.backend`: the burn backend for `trainer = "burn"` (`COHORT_BACKEND` overrides it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendName {
    /// wgpu on a hardware adapter if there is one, otherwise flex.
    Auto,
    /// burn's flex CPU backend.
    #[default]
    Flex,
    /// wgpu on any adapter, software rasterizers included.
    Wgpu,
}

/// `[availability]`: who is eligible when it checks in, and who drops out where.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvailabilityConfig {
    /// Probability that a client is eligible (online, charging, idle) when it checks in; an
    /// ineligible client checks in again about a selection window later. Default 1.
    #[serde(default = "one")]
    pub online_probability: f64,
    /// Per-phase dropout probabilities of a selected client.
    #[serde(default)]
    pub dropout: PhaseProbabilities,
    /// Of the dropouts, the fraction that close their connection (the server learns at once);
    /// the rest crash silently and are noticed only when the phase deadline passes. Default 0.5.
    #[serde(default = "half")]
    pub disconnect_fraction: f64,
}

fn one() -> f64 {
    1.0
}
fn half() -> f64 {
    0.5
}

impl Default for AvailabilityConfig {
    fn default() -> Self {
        Self {
            online_probability: 1.0,
            dropout: PhaseProbabilities::default(),
            disconnect_fraction: half(),
        }
    }
}

/// A probability per round phase (R0 advertise keys, R1 share keys, R2 masked input, R2.5
/// consistency check, R3 unmask). R2.5 exists only in rounds with `secagg.consistency_check`;
/// in other rounds a client fated to drop there finishes the round. With SecAgg+ off, R0 and R1
/// dropouts happen before training and R2 during the upload; R2.5 and R3 have no counterpart
/// (the update is already in).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseProbabilities {
    /// Dies before answering R0.
    #[serde(default)]
    pub advertise_keys: f64,
    /// Dies before answering R1.
    #[serde(default)]
    pub share_keys: f64,
    /// Dies before sending its (masked) update.
    #[serde(default)]
    pub masked_input: f64,
    /// Dies before answering R2.5 (signing the survivor set).
    #[serde(default)]
    pub consistency_check: f64,
    /// Dies before answering R3.
    #[serde(default)]
    pub unmask: f64,
}

impl PhaseProbabilities {
    /// The five probabilities, in phase order, with their keys.
    pub fn entries(&self) -> [(&'static str, f64); 5] {
        [
            ("availability.dropout.advertise_keys", self.advertise_keys),
            ("availability.dropout.share_keys", self.share_keys),
            ("availability.dropout.masked_input", self.masked_input),
            (
                "availability.dropout.consistency_check",
                self.consistency_check,
            ),
            ("availability.dropout.unmask", self.unmask),
        ]
    }
}

/// `[network]`: the mix of device profiles; each client draws one, weighted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Profile name → weight. Names: phone-4g, phone-wifi, laptop, datacenter.
    pub profiles: BTreeMap<String, f64>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            profiles: BTreeMap::from([("laptop".to_string(), 1.0)]),
        }
    }
}

impl Experiment {
    /// Parses and validates an experiment from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_table(parse_table(text)?)
    }

    /// Deserializes and validates an experiment from a TOML table: the task's keys become the
    /// [`TaskConfig`], the rest the simulator's sections.
    pub fn from_table(mut table: toml::Table) -> Result<Self, ConfigError> {
        let mut task = toml::Table::new();
        for key in TaskConfig::KEYS {
            if let Some(v) = table.remove(*key) {
                task.insert((*key).to_string(), v);
            }
        }
        if let Some(key) = table.keys().find(|k| !SIM_KEYS.contains(&k.as_str())) {
            let allowed: Vec<&str> = TaskConfig::KEYS.iter().chain(SIM_KEYS).copied().collect();
            return Err(unknown_key(key, &allowed));
        }
        let task: TaskConfig = deserialize(task)?;
        let sim: SimSections = deserialize(table)?;
        let exp = Experiment {
            task,
            run: sim.run,
            population: sim.population,
            data: sim.data,
            availability: sim.availability,
            network: sim.network,
            comparison_only: sim.comparison_only,
        };
        exp.validate()?;
        Ok(exp)
    }

    /// Reads, parses and validates an experiment file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::from_toml(&read_text(path)?)
    }

    /// The built-in default experiment.
    pub fn default_experiment() -> Self {
        Self::from_toml(DEFAULT_EXPERIMENT).expect("the embedded default experiment is valid")
    }

    /// The experiment as TOML text (the resolved `experiment.toml` written beside results).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        cohort_task::config::to_text(self)
    }

    /// Checks ranges and consistency; the error names the key and the allowed values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.task.validate()?;
        self.data.dataset_name()?;
        if self.data.test_examples == Some(0) {
            return Err(invalid(
                "data.test_examples",
                0,
                "an integer ≥ 1, or no key for the whole test set",
            ));
        }
        if let Some(r) = self.data.repeat
            && !(1..=MAX_DATA_REPEAT).contains(&r)
        {
            return Err(invalid(
                "data.repeat",
                r,
                "an integer from 1 to 10000, or no key to use each example once",
            ));
        }
        let n = self.population.num_clients;
        if n == 0 {
            return Err(invalid("population.num_clients", n, "an integer ≥ 1"));
        }
        let s = &self.task.selection;
        if s.clients_per_round > n {
            return Err(invalid(
                "selection.clients_per_round",
                s.clients_per_round,
                format!("at most population.num_clients = {n}"),
            ));
        }
        let selected = s.selection_size();
        if selected > n {
            return Err(invalid(
                "selection.over_selection",
                s.over_selection,
                format!(
                    "at most num_clients / clients_per_round - 1 = {:.3}: {} · (1 + {}) = \
                     {selected} clients would be selected of {n}",
                    f64::from(n) / f64::from(s.clients_per_round) - 1.0,
                    s.clients_per_round,
                    s.over_selection,
                ),
            ));
        }
        if self.run.group_size == 0 {
            return Err(invalid(
                "run.group_size",
                0,
                "an integer ≥ 1 (1 trains the clients one at a time)",
            ));
        }
        if self.run.max_attempts == 0 {
            return Err(invalid("run.max_attempts", 0, "an integer ≥ 1"));
        }
        if let Some(t) = self.run.target_accuracy
            && !(0.0..=1.0).contains(&t)
        {
            return Err(invalid("run.target_accuracy", t, "a number in [0, 1]"));
        }
        match self.data.partition {
            PartitionSpec::Dirichlet { alpha } if !(alpha.is_finite() && alpha > 0.0) => {
                return Err(invalid(
                    "data.partition.alpha",
                    alpha,
                    "a finite number > 0",
                ));
            }
            PartitionSpec::Shards { per_client } if per_client == 0 => {
                return Err(invalid(
                    "data.partition.per_client",
                    per_client,
                    "an integer ≥ 1",
                ));
            }
            _ => {}
        }
        if self.run.trainer == TrainerKind::Builtin {
            let m = &self.task.model;
            let mlp = m.hidden.is_some()
                || (m.is_complete()
                    && m.resolve(None)
                        .ok()
                        .and_then(|spec| ModelConfig::mlp_hidden(&spec))
                        .is_some());
            if !mlp {
                return Err(invalid(
                    "run.trainer",
                    "builtin",
                    "\"burn\" (the default trainer) for models other than ReLU MLPs over flat \
                     inputs, or a ReLU MLP model",
                ));
            }
            if matches!(self.task.training.optimizer, OptimizerSpec::Adam { .. }) {
                return Err(invalid(
                    "training.optimizer",
                    "adam",
                    "{ kind = \"sgd\", momentum = ... } with the built-in trainer, or \
                     run.trainer = \"burn\"",
                ));
            }
        }
        self.validate_synthetic()?;
        self.validate_comparison_only()?;
        let a = &self.availability;
        if !(a.online_probability > 0.0 && a.online_probability <= 1.0) {
            return Err(invalid(
                "availability.online_probability",
                a.online_probability,
                "a number in (0, 1]",
            ));
        }
        for (key, p) in a.dropout.entries() {
            if !(0.0..=1.0).contains(&p) {
                return Err(invalid(key, p, "a probability in [0, 1]"));
            }
        }
        if !(0.0..=1.0).contains(&a.disconnect_fraction) {
            return Err(invalid(
                "availability.disconnect_fraction",
                a.disconnect_fraction,
                "a number in [0, 1]",
            ));
        }
        if self.network.profiles.is_empty() {
            return Err(invalid("network.profiles", "{}", profile_names()));
        }
        for (name, w) in &self.network.profiles {
            if DeviceProfile::named(name).is_none() {
                return Err(invalid(
                    "network.profiles",
                    format!("{name:?}"),
                    profile_names(),
                ));
            }
            if !(w.is_finite() && *w >= 0.0) {
                return Err(invalid(
                    "network.profiles",
                    format!("{name} = {w}"),
                    "weights ≥ 0",
                ));
            }
        }
        if self.network.profiles.values().sum::<f64>() <= 0.0 {
            return Err(invalid(
                "network.profiles",
                "all weights 0",
                "at least one weight > 0",
            ));
        }
        // The privacy plan against the population (δ < 1/num_clients) and the model, when
        // its size is known before the data is loaded (the engine plans again with the data).
        if self.task.privacy.enabled()
            && let Some(dim) = self.known_model_dim()
        {
            self.privacy_plan(dim)?;
        }
        Ok(())
    }

    /// The task's privacy plan for a model of `model_dim` parameters, against this
    /// experiment's population; `None` without DP.
    pub fn privacy_plan(
        &self,
        model_dim: usize,
    ) -> Result<Option<cohort_privacy::plan::PrivacyPlan>, ConfigError> {
        self.task
            .privacy_plan(model_dim, Some(u64::from(self.population.num_clients)))
    }

    /// The model's parameter count when it is known without loading the data: a complete
    /// `[model]`, or one completed by the input and classes of a dataset of fixed shape.
    pub fn known_model_dim(&self) -> Option<usize> {
        let shape = match self.data.dataset_name().ok()? {
            DatasetName::Digits => Some(DataShape {
                features: 64,
                classes: 10,
            }),
            DatasetName::Mnist | DatasetName::FashionMnist => Some(DataShape {
                features: 784,
                classes: 10,
            }),
            DatasetName::Femnist => Some(DataShape {
                features: 784,
                classes: 62,
            }),
            DatasetName::Shakespeare => None,
        };
        let spec = if self.task.model.is_complete() {
            self.task.model_spec(None).ok()?
        } else {
            self.task.model_spec(Some(shape?)).ok()?
        };
        spec.num_parameters().ok()
    }

    /// `run.synthetic_parameters` goes with `trainer = "synthetic"` and only with it.
    fn validate_synthetic(&self) -> Result<(), ConfigError> {
        match (self.run.trainer, self.run.synthetic_parameters) {
            (TrainerKind::Synthetic, None) => Err(invalid(
                "run.synthetic_parameters",
                "(missing)",
                format!(
                    "the model size of trainer = \"synthetic\", an integer from 1 to \
                     {MAX_SYNTHETIC_PARAMETERS}"
                ),
            )),
            (TrainerKind::Synthetic, Some(n)) if n == 0 || n > MAX_SYNTHETIC_PARAMETERS => {
                Err(invalid(
                    "run.synthetic_parameters",
                    n,
                    format!("an integer from 1 to {MAX_SYNTHETIC_PARAMETERS}"),
                ))
            }
            (TrainerKind::Synthetic, Some(_)) | (_, None) => Ok(()),
            (other, Some(n)) => Err(invalid(
                "run.synthetic_parameters",
                n,
                format!(
                    "no key with trainer = \"{}\" (it sets the model size of trainer = \
                     \"synthetic\" only)",
                    other.name()
                ),
            )),
        }
    }

    /// `[comparison_only]` needs SecAgg+ on and a k and t that some cohort of this experiment
    /// can use.
    fn validate_comparison_only(&self) -> Result<(), ConfigError> {
        let Some(graph) = self
            .comparison_only
            .as_ref()
            .and_then(|c| c.dangerous_force_graph)
        else {
            return Ok(());
        };
        let key = "comparison_only.dangerous_force_graph";
        if !self.task.secagg.enabled {
            return Err(invalid(
                key,
                format!("{{ k = {}, t = {} }}", graph.k, graph.t),
                "no key when secagg.enabled = false (there is no graph without SecAgg+)",
            ));
        }
        let n = self.selected_per_round();
        if graph.k < 2 || graph.k % 2 == 1 || graph.k >= n {
            return Err(invalid(
                format!("{key}.k"),
                graph.k,
                format!(
                    "an even number from 2 to {} (below the {n} clients selected per round; \
                     {} is the complete graph)",
                    n.saturating_sub(1),
                    n.saturating_sub(1)
                ),
            ));
        }
        if graph.t < 2 || graph.t > graph.k + 1 {
            return Err(invalid(
                format!("{key}.t"),
                graph.t,
                format!("an integer from 2 to k + 1 = {}", graph.k + 1),
            ));
        }
        Ok(())
    }

    /// The forced SecAgg+ graph of `[comparison_only]`, if any.
    pub fn forced_graph(&self) -> Option<ForcedGraph> {
        self.comparison_only
            .as_ref()
            .and_then(|c| c.dangerous_force_graph)
    }

    /// Clients selected per attempt: ⌈clients_per_round · (1 + over_selection)⌉.
    pub fn selected_per_round(&self) -> u32 {
        self.task.selection.selection_size()
    }

    /// The model spec, with what `[model]` leaves out taken from the dataset.
    pub fn model_spec(&self, data: DataShape) -> Result<cohort_protocol::ModelSpec, ConfigError> {
        self.task.model_spec(Some(data))
    }
}

fn profile_names() -> String {
    DeviceProfile::ALL
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}
