//! The experiment file: what one simulation runs, as TOML, and its validation.
//!
//! [`Experiment`] mirrors the file section by section (see `sim/experiments/*.toml`). Parsing
//! refuses unknown keys, and every error names the offending key (e.g. `data.partition`) and,
//! where the set is closed, the allowed values, so a typo never silently becomes a default.
//! [`Experiment::validate`] then checks what serde cannot: ranges, and that the parts agree with
//! each other (cohort sizes, model input against the dataset).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use cohort_aggregation::strategy::StrategyConfig;
use cohort_datasets::{DatasetName, PartitionSpec};
use cohort_protocol::{LayerSpec, ModelSpec, OptimizerSpec, TrainingParams};
use serde::{Deserialize, Serialize};

use crate::network::DeviceProfile;

/// The experiment that `cohort-sim run` uses when no file is given: digits, 100 clients, 10 per
/// round, SecAgg+ on, some dropouts.
pub const DEFAULT_EXPERIMENT: &str = include_str!("../experiments/digits-secagg.toml");

/// Why an experiment file could not be used. Every variant names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML or does not match the schema (unknown key, wrong type,
    /// unknown variant).
    #[error("experiment key `{key}`: {message}")]
    Parse {
        /// The dotted path of the key (`.` for the top level).
        key: String,
        /// What the parser said, including the allowed values for closed sets.
        message: String,
    },
    /// A value is out of range or not one of the allowed values.
    #[error("experiment key `{key}` = {value} is invalid; allowed: {allowed}")]
    Invalid {
        /// The dotted path of the key.
        key: &'static str,
        /// The value given.
        value: String,
        /// The allowed values or range, in words.
        allowed: String,
    },
    /// The experiment file could not be read.
    #[error("cannot read experiment file {path}: {source}; check the path")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn invalid(
    key: &'static str,
    value: impl std::fmt::Display,
    allowed: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        allowed: allowed.into(),
    }
}

/// One simulation: data, model, training, strategy, secure aggregation, and the system model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// A short name, used in plots and the summary.
    #[serde(default = "default_name")]
    pub name: String,
    /// Master seed: every random choice of the run derives from it.
    #[serde(default)]
    pub seed: u64,
    /// Federated rounds to run (aborted attempts are retried and do not count).
    pub rounds: u32,
    /// The simulated population.
    pub num_clients: u32,
    /// Clients whose updates are aggregated per round.
    pub clients_per_round: u32,
    /// Over-selection, as in Bonawitz et al. 2019 ("Towards Federated Learning at Scale"):
    /// each attempt selects ⌈clients_per_round · (1 + over_selection)⌉ clients, aggregates
    /// the first `clients_per_round` updates to arrive and tells the rest to stop (counted in
    /// the `stopped` column). 0 (the default) selects exactly `clients_per_round`.
    #[serde(default)]
    pub over_selection: f64,
    /// How many times a round is attempted (with a fresh cohort) before it is given up.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Evaluate the global model every this many rounds (and after the last).
    #[serde(default = "one_u32")]
    pub eval_every: u32,
    /// Worker threads for local training and unmasking; 0 = all cores.
    #[serde(default)]
    pub threads: usize,
    /// A test accuracy to report the rounds-to-target of (McMahan et al.'s measure).
    #[serde(default)]
    pub target_accuracy: Option<f32>,
    /// Stop once the target accuracy is reached (otherwise run every round).
    #[serde(default)]
    pub stop_at_target: bool,
    /// Which local trainer runs: burn through `cohort-learning` (the default; needs the
    /// `learning` cargo feature, on by default) or the built-in MLP.
    #[serde(default)]
    pub trainer: TrainerKind,
    /// The burn backend when `trainer = "burn"` (ignored by the built-in MLP).
    #[serde(default)]
    pub backend: BackendName,
    /// Data and its partition.
    pub data: DataConfig,
    /// The model.
    pub model: ModelConfig,
    /// Local training.
    pub training: TrainingConfig,
    /// The server optimizer (`kind` = fed_avg, fed_avg_m, fed_adam, fed_yogi, fed_adagrad).
    #[serde(default)]
    pub strategy: StrategyConfig,
    /// Secure aggregation.
    #[serde(default)]
    pub secagg: SecAggConfig,
    /// Availability and dropouts.
    #[serde(default)]
    pub availability: AvailabilityConfig,
    /// Device network and compute profiles.
    #[serde(default)]
    pub network: NetworkConfig,
    /// Per-phase deadlines, in simulated seconds.
    #[serde(default)]
    pub deadlines: DeadlineConfig,
}

fn default_name() -> String {
    "experiment".into()
}
fn default_max_attempts() -> u32 {
    3
}
fn one_u32() -> u32 {
    1
}

/// `[data]`: which dataset and how it is split between clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// digits, mnist, fashion-mnist (or fashion_mnist), femnist, shakespeare.
    pub dataset: String,
    /// The dataset's folder. Default: `<datasets>/<dataset folder>`, where `<datasets>` is
    /// `$COHORT_DATASETS` or `../shared/datasets`; digits falls back to the embedded copy.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// iid, dirichlet (with alpha), shards (with per_client), natural.
    pub partition: PartitionSpec,
    /// Evaluate on at most this many test examples (a fixed subset drawn from the seed);
    /// default: the whole test set. For large test sets and slow models (Shakespeare).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_examples: Option<u32>,
}

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

/// `trainer`: which [`LocalTrainer`](crate::trainer::LocalTrainer) trains the clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TrainerKind {
    /// `cohort-learning` (burn), the edge clients' own training code, for any model spec:
    /// the default. Needs the `learning` cargo feature (on by default).
    #[default]
    Burn,
    /// [`crate::mlp::MlpTrainer`]: plain-Rust ReLU MLPs, checked against finite differences.
    /// The fast-build path: `cargo run -p cohort-sim --no-default-features -- run --trainer
    /// builtin` builds without burn.
    Builtin,
}

impl TrainerKind {
    /// The name used in experiment files.
    pub fn name(self) -> &'static str {
        match self {
            TrainerKind::Burn => "burn",
            TrainerKind::Builtin => "builtin",
        }
    }
}

/// `backend`: the burn backend for `trainer = "burn"` (`COHORT_BACKEND` overrides it).
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

/// `model.preset`: one of the protocol's named model specs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelPreset {
    /// [`ModelSpec::digits_mlp`]: 64-32-10 ReLU MLP.
    DigitsMlp,
    /// [`ModelSpec::mnist_mlp`]: McMahan et al.'s 784-200-200-10 "2NN".
    MnistMlp,
    /// [`ModelSpec::mnist_cnn`]: a small CNN over `[1, 28, 28]` images (burn trainer only).
    MnistCnn,
    /// [`ModelSpec::shakespeare_lstm`]: LEAF's next-character model (an 8-wide embedding, two
    /// LSTMs of 256 units), with the dataset's window length and vocabulary (burn trainer only).
    ShakespeareLstm,
}

/// `[model]`: ReLU MLP hidden widths, a preset, or a full model spec (at most one of them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Hidden layer widths of a ReLU MLP (e.g. `[200, 200]` for McMahan et al.'s 2NN). The
    /// input shape and class count come from the dataset.
    #[serde(default)]
    pub hidden: Vec<u32>,
    /// A named model spec (`digits_mlp`, `mnist_mlp`, `mnist_cnn`, `shakespeare_lstm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<ModelPreset>,
    /// A full model spec, as in the protocol (`input_shape`, `layers`, `num_classes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<ModelSpec>,
}

impl ModelConfig {
    /// The full model spec for a dataset with `input_len` features and `num_classes` classes:
    /// the preset or spec when given, otherwise a ReLU MLP with the `hidden` widths.
    pub fn spec(&self, input_len: usize, num_classes: u32) -> ModelSpec {
        if let Some(spec) = &self.spec {
            return spec.clone();
        }
        match self.preset {
            Some(ModelPreset::DigitsMlp) => return ModelSpec::digits_mlp(),
            Some(ModelPreset::MnistMlp) => return ModelSpec::mnist_mlp(),
            Some(ModelPreset::MnistCnn) => return ModelSpec::mnist_cnn(num_classes),
            Some(ModelPreset::ShakespeareLstm) => {
                return ModelSpec::shakespeare_lstm(input_len as u32, num_classes);
            }
            None => {}
        }
        let mut layers = Vec::new();
        for &h in &self.hidden {
            layers.push(LayerSpec::Linear { out: h });
            layers.push(LayerSpec::Relu);
        }
        layers.push(LayerSpec::Linear { out: num_classes });
        ModelSpec {
            input_shape: vec![input_len as u32],
            layers,
            num_classes,
        }
    }

    /// The hidden widths when `spec` is a ReLU MLP over flat inputs (`Linear`, `Relu`, ...,
    /// `Linear` to the classes), the only models the built-in trainer runs; `None` otherwise.
    pub fn mlp_hidden(spec: &ModelSpec) -> Option<Vec<u32>> {
        if spec.input_shape.len() != 1 {
            return None;
        }
        let (last, body) = spec.layers.split_last()?;
        if *last
            != (LayerSpec::Linear {
                out: spec.num_classes,
            })
            || body.len() % 2 != 0
        {
            return None;
        }
        body.chunks(2)
            .map(|pair| match pair {
                [LayerSpec::Linear { out }, LayerSpec::Relu] => Some(*out),
                _ => None,
            })
            .collect()
    }
}

/// `[training]`: local training hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    /// Local epochs E.
    pub epochs: u32,
    /// Batch size B.
    pub batch_size: u32,
    /// Local learning rate.
    pub learning_rate: f32,
    /// Local momentum (SGD).
    #[serde(default)]
    pub momentum: f32,
    /// FedProx proximal term mu; 0 is plain local SGD.
    #[serde(default)]
    pub proximal_mu: f32,
    /// At most this many of a client's examples are trained on per round (a subset drawn from
    /// the client's training seed for that round); default: all of them. For datasets whose
    /// clients hold many examples, like Shakespeare's roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_examples: Option<u32>,
}

impl TrainingConfig {
    /// As the protocol's training parameters.
    pub fn params(&self) -> TrainingParams {
        TrainingParams {
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            optimizer: OptimizerSpec::Sgd {
                momentum: self.momentum,
            },
            proximal_mu: self.proximal_mu,
        }
    }
}

/// `[secagg]`: SecAgg+ on or off, and its parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecAggConfig {
    /// SecAgg+ on (`true`) or the **insecure** plaintext aggregator (`false`).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Updates are clipped to `[-clip, clip]` per coordinate (in both modes, so that they
    /// compute the same function).
    #[serde(default = "one_f32")]
    pub clip: f32,
    /// The largest weight (examples) a client may claim; default: the largest partition.
    #[serde(default)]
    pub max_weight: Option<u32>,
    /// Assumed fraction of adversarial clients (drives the neighbour count k and threshold t).
    #[serde(default = "default_adversarial")]
    pub adversarial_fraction: f64,
    /// Assumed dropout fraction δ: the round needs ⌈(1 − δ)·n⌉ survivors (q_min), and aborts
    /// below. The plaintext mode uses the same quorum.
    #[serde(default = "default_dropout")]
    pub dropout_fraction: f64,
}

fn yes() -> bool {
    true
}
fn one_f32() -> f32 {
    1.0
}
fn default_adversarial() -> f64 {
    0.05
}
fn default_dropout() -> f64 {
    0.3
}

impl Default for SecAggConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            clip: 1.0,
            max_weight: None,
            adversarial_fraction: default_adversarial(),
            dropout_fraction: default_dropout(),
        }
    }
}

/// `[availability]`: who is online, and who drops out where.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvailabilityConfig {
    /// Probability that a client is online (selectable) in a given round; default 1.
    #[serde(default)]
    pub online_probability: Option<f64>,
    /// Per-phase dropout probabilities of a selected client.
    #[serde(default)]
    pub dropout: PhaseProbabilities,
    /// Of the dropouts, the fraction that close their connection (the server learns at once);
    /// the rest crash silently and are noticed only when the phase deadline passes.
    #[serde(default = "half")]
    pub disconnect_fraction: f64,
}

fn half() -> f64 {
    0.5
}

impl AvailabilityConfig {
    /// The online probability, default 1.
    pub fn online(&self) -> f64 {
        self.online_probability.unwrap_or(1.0)
    }
}

/// A probability per round phase (R0 advertise keys, R1 share keys, R2 masked input, R3 unmask).
/// With SecAgg+ off, R0 and R1 dropouts happen before training and R2 during the upload; R3
/// has no counterpart (the update is already in).
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
    /// Dies before answering R3.
    #[serde(default)]
    pub unmask: f64,
}

impl PhaseProbabilities {
    /// The four probabilities, in phase order, with their keys.
    pub fn entries(&self) -> [(&'static str, f64); 4] {
        [
            ("availability.dropout.advertise_keys", self.advertise_keys),
            ("availability.dropout.share_keys", self.share_keys),
            ("availability.dropout.masked_input", self.masked_input),
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

/// `[deadlines]`: how long the server waits in each phase, in simulated seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadlineConfig {
    /// R0.
    pub advertise_keys: f64,
    /// R1.
    pub share_keys: f64,
    /// R2 (download, local training, upload).
    pub masked_input: f64,
    /// R3.
    pub unmask: f64,
}

impl Default for DeadlineConfig {
    fn default() -> Self {
        Self {
            advertise_keys: 15.0,
            share_keys: 15.0,
            masked_input: 120.0,
            unmask: 15.0,
        }
    }
}

impl DeadlineConfig {
    /// As the state machine's deadlines.
    pub fn phase_deadlines(&self) -> cohort_aggregation::secagg::PhaseDeadlines {
        let d = std::time::Duration::from_secs_f64;
        cohort_aggregation::secagg::PhaseDeadlines {
            advertise_keys: d(self.advertise_keys),
            share_keys: d(self.share_keys),
            masked_input: d(self.masked_input),
            unmask: d(self.unmask),
        }
    }
}

impl Experiment {
    /// Parses and validates an experiment from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::new(text);
        let exp: Experiment = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Parse {
                key,
                message: e.into_inner().message().trim().to_string(),
            }
        })?;
        exp.validate()?;
        Ok(exp)
    }

    /// Reads, parses and validates an experiment file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// The built-in default experiment.
    pub fn default_experiment() -> Self {
        Self::from_toml(DEFAULT_EXPERIMENT).expect("the embedded default experiment is valid")
    }

    /// Checks ranges and consistency; the error names the key and the allowed values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.data.dataset_name()?;
        if self.data.test_examples == Some(0) {
            return Err(invalid(
                "data.test_examples",
                0,
                "an integer ≥ 1, or no key for the whole test set",
            ));
        }
        if self.rounds == 0 {
            return Err(invalid("rounds", self.rounds, "an integer ≥ 1"));
        }
        if self.num_clients == 0 {
            return Err(invalid("num_clients", self.num_clients, "an integer ≥ 1"));
        }
        let min_cohort = if self.secagg.enabled { 3 } else { 1 };
        if self.clients_per_round < min_cohort || self.clients_per_round > self.num_clients {
            return Err(invalid(
                "clients_per_round",
                self.clients_per_round,
                format!(
                    "an integer in {min_cohort}..={} (num_clients; SecAgg+ needs at least 3)",
                    self.num_clients
                ),
            ));
        }
        if !(self.over_selection.is_finite() && (0.0..=1.0).contains(&self.over_selection)) {
            return Err(invalid(
                "over_selection",
                self.over_selection,
                "a number in [0, 1] (0.3 selects 30% more clients than clients_per_round)",
            ));
        }
        let selected = self.selected_per_round();
        if selected > u64::from(self.num_clients) {
            return Err(invalid(
                "over_selection",
                self.over_selection,
                format!(
                    "at most num_clients / clients_per_round - 1 = {:.3}: {} · (1 + {}) = {selected} clients would be selected of {}",
                    f64::from(self.num_clients) / f64::from(self.clients_per_round) - 1.0,
                    self.clients_per_round,
                    self.over_selection,
                    self.num_clients
                ),
            ));
        }
        if self.max_attempts == 0 {
            return Err(invalid("max_attempts", self.max_attempts, "an integer ≥ 1"));
        }
        if self.eval_every == 0 {
            return Err(invalid("eval_every", self.eval_every, "an integer ≥ 1"));
        }
        if let Some(t) = self.target_accuracy
            && !(0.0..=1.0).contains(&t)
        {
            return Err(invalid("target_accuracy", t, "a number in [0, 1]"));
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
        let m = &self.model;
        let forms = usize::from(!m.hidden.is_empty())
            + usize::from(m.preset.is_some())
            + usize::from(m.spec.is_some());
        if forms > 1 {
            return Err(invalid(
                "model",
                "more than one of hidden, preset, spec",
                "exactly one of `hidden = [...]`, `preset = \"...\"` or `spec = {...}`",
            ));
        }
        if let Some(spec) = &m.spec
            && let Err(e) = spec.validate()
        {
            return Err(invalid(
                "model.spec",
                e,
                "a valid model spec (see cohort-protocol's model module)",
            ));
        }
        if self.trainer == TrainerKind::Builtin
            && (m.preset.is_some() || m.spec.is_some())
            && ModelConfig::mlp_hidden(&m.spec(1, 2)).is_none()
        {
            return Err(invalid(
                "trainer",
                "builtin",
                "\"burn\" (the default trainer) for models other than ReLU MLPs over flat inputs, or a ReLU MLP model",
            ));
        }
        if self.model.hidden.contains(&0) {
            return Err(invalid(
                "model.hidden",
                format!("{:?}", self.model.hidden),
                "a list of layer widths ≥ 1",
            ));
        }
        let t = &self.training;
        if t.epochs == 0 {
            return Err(invalid("training.epochs", t.epochs, "an integer ≥ 1"));
        }
        if t.batch_size == 0 {
            return Err(invalid(
                "training.batch_size",
                t.batch_size,
                "an integer ≥ 1",
            ));
        }
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
            return Err(invalid(
                "training.learning_rate",
                t.learning_rate,
                "a finite number > 0",
            ));
        }
        if !(0.0..1.0).contains(&t.momentum) {
            return Err(invalid(
                "training.momentum",
                t.momentum,
                "a number in [0, 1)",
            ));
        }
        if t.max_examples == Some(0) {
            return Err(invalid(
                "training.max_examples",
                0,
                "an integer ≥ 1, or no key for all of a client's examples",
            ));
        }
        if !(t.proximal_mu.is_finite() && t.proximal_mu >= 0.0) {
            return Err(invalid(
                "training.proximal_mu",
                t.proximal_mu,
                "a finite number ≥ 0",
            ));
        }
        self.strategy.build().map_err(|e| ConfigError::Parse {
            key: "strategy".into(),
            message: e.to_string(),
        })?;
        let s = &self.secagg;
        if !(s.clip.is_finite() && s.clip > 0.0) {
            return Err(invalid("secagg.clip", s.clip, "a finite number > 0"));
        }
        if s.max_weight == Some(0) {
            return Err(invalid("secagg.max_weight", 0, "an integer ≥ 1"));
        }
        if !(0.0..0.5).contains(&s.adversarial_fraction) {
            return Err(invalid(
                "secagg.adversarial_fraction",
                s.adversarial_fraction,
                "a number in [0, 0.5)",
            ));
        }
        if !(0.0..1.0).contains(&s.dropout_fraction) {
            return Err(invalid(
                "secagg.dropout_fraction",
                s.dropout_fraction,
                "a number in [0, 1)",
            ));
        }
        let a = &self.availability;
        if !(a.online() > 0.0 && a.online() <= 1.0) {
            return Err(invalid(
                "availability.online_probability",
                a.online(),
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
        let d = &self.deadlines;
        for (key, v) in [
            ("deadlines.advertise_keys", d.advertise_keys),
            ("deadlines.share_keys", d.share_keys),
            ("deadlines.masked_input", d.masked_input),
            ("deadlines.unmask", d.unmask),
        ] {
            if !(v.is_finite() && v > 0.0 && v < 1e9) {
                return Err(invalid(key, v, "a number of seconds in (0, 1e9)"));
            }
        }
        Ok(())
    }

    /// The quorum: the fewest contributors a round may release, ⌈(1 − δ)·n⌉ (at least 1),
    /// where n is `clients_per_round` (over-selected clients do not raise it).
    pub fn plain_quorum(&self) -> usize {
        let n = f64::from(self.clients_per_round);
        (((1.0 - self.secagg.dropout_fraction) * n).ceil() as usize).max(1)
    }

    /// Clients selected per attempt: ⌈clients_per_round · (1 + over_selection)⌉.
    pub fn selected_per_round(&self) -> u64 {
        let n = f64::from(self.clients_per_round);
        // The epsilon keeps 10 · 1.3 at 13 despite 1.3's binary rounding.
        ((n * (1.0 + self.over_selection) - 1e-9).ceil() as u64)
            .max(u64::from(self.clients_per_round))
    }
}

fn profile_names() -> String {
    DeviceProfile::ALL
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}
