//! The one configuration vocabulary of a federated task: the serde types of a task file, which
//! the coordinator reads (`cohort-coordinator task create`) and which is also the task part of
//! every simulator experiment file. Same keys, same defaults, same errors everywhere.
//!
//! ```toml
//! id = "digits"              # lower-case letters, digits, '-' and '_'
//! rounds = 5
//! evaluate_every = 1         # 0 (the default): never
//!
//! [model]                    # exactly one of preset, hidden, layers
//! input_shape = [64]
//! num_classes = 10
//! layers = [{ type = "linear", out = 32 }, { type = "relu" }, { type = "linear", out = 10 }]
//!
//! [training]
//! epochs = 1
//! batch_size = 32
//! learning_rate = 0.05
//! optimizer = { kind = "sgd", momentum = 0.0 }   # the default
//!
//! [strategy]                 # the default: fed_avg with server_lr = 1
//! kind = "fed_avg"
//!
//! [selection]
//! clients_per_round = 20     # the inputs each round sums
//! over_selection = 0.3       # select 30% more; the first clients_per_round inputs count
//! window_secs = 30           # how long a cohort may take to fill
//!
//! [secagg]                   # SecAgg+ (every key has a default)
//! [deadlines]                # seconds per phase (every key has a default)
//! ```
//!
//! `docs/configuration.md` at the repository's root documents every key. Every error names the
//! key's dotted path and, for closed sets, the allowed values ([`ConfigError`]); a key of the
//! earlier vocabularies (`cohort_size`, `r2_secs`, ...) is refused with its new place.
//!
//! `[privacy]` is `cohort-privacy`'s [`PrivacyConfig`] (differential privacy: none, central or
//! distributed); [`TaskConfig::validate`] checks it and, when the model is complete, plans it
//! ([`TaskConfig::privacy_plan`]), so that a budget no round fits, δ ≥ 1/n or too few bits for
//! the cohort are refused when the task is read, naming the key.
//!
//! `[input]` (optional) says what the task's examples look like on a device, so a device trains
//! on its own files ([`cohort_protocol::InputSpec`], sent in the task plan): the kind of files
//! (`image`, `csv`, `text`), the label names in order, the normalisation, and for a CSV the
//! feature and label columns; it is checked against the model's input shape and class count.

mod error;
mod model;
mod toml_file;

use std::path::Path;

use cohort_aggregation::strategy::StrategyConfig;
pub use cohort_privacy::config::PrivacyConfig;
use cohort_protocol::{InputKind, InputSpec, OptimizerSpec, TaskId, TaskPlan, TrainingParams};
use serde::{Deserialize, Serialize};

pub use error::{ConfigError, invalid};
pub use model::{DataShape, ModelConfig, ModelPreset};
pub use toml_file::{deserialize, parse_table, read_text, to_text, unknown_key};

use crate::plan::{MIN_COHORT, RoundPlan};

/// A federated training task: everything the coordinator needs to run it, and what a
/// simulation of it shares with a deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// The task's id: 1 to 64 lower-case letters, digits, `-` or `_`.
    pub id: String,
    /// Rounds to run (an aborted attempt is retried and does not count).
    pub rounds: u32,
    /// Evaluate the global model every this many rounds (rounds whose number is a multiple of
    /// it); 0, the default, never. The coordinator evaluates on its own data (if it has an
    /// evaluator) and asks the round's devices for a federated evaluation; the simulator
    /// evaluates on the test split (and always after the last round, for its summary).
    #[serde(default)]
    pub evaluate_every: u32,
    /// The model.
    pub model: ModelConfig,
    /// Local training on each device.
    pub training: TrainingConfig,
    /// The server optimizer (`kind` = fed_avg, fed_avg_m, fed_adam, fed_yogi, fed_adagrad and
    /// their parameters); default fed_avg with server_lr = 1.
    #[serde(default)]
    pub strategy: StrategyConfig,
    /// Who takes part in a round.
    pub selection: SelectionConfig,
    /// Secure aggregation.
    #[serde(default)]
    pub secagg: SecAggConfig,
    /// Per-phase deadlines, in seconds.
    #[serde(default)]
    pub deadlines: DeadlineConfig,
    /// Differential privacy (`[privacy]`, `cohort-privacy`'s vocabulary); default none.
    #[serde(default, skip_serializing_if = "privacy_off")]
    pub privacy: PrivacyConfig,
    /// What the task's examples look like on a device (kind of files, label names,
    /// normalisation, CSV columns); the shape is the model's input shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputSpec>,
}

/// `[training]`: local training on each device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    /// Local epochs E.
    pub epochs: u32,
    /// Batch size B.
    pub batch_size: u32,
    /// Local learning rate.
    pub learning_rate: f32,
    /// The local optimizer: `{ kind = "sgd", momentum = 0.0 }` (the default) or
    /// `{ kind = "adam", beta1 = 0.9, beta2 = 0.999 }`.
    #[serde(default = "default_optimizer")]
    pub optimizer: OptimizerSpec,
    /// FedProx proximal term μ; 0 is plain local training.
    #[serde(default)]
    pub proximal_mu: f32,
    /// Simulator only: train on at most this many of a client's examples per round (drawn from
    /// the client's seed); the coordinator refuses the key, since devices train on all theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_examples: Option<u32>,
}

fn privacy_off(p: &PrivacyConfig) -> bool {
    *p == PrivacyConfig::default()
}

fn default_optimizer() -> OptimizerSpec {
    OptimizerSpec::Sgd { momentum: 0.0 }
}

impl TrainingConfig {
    /// As the protocol's training parameters (what a device is sent).
    pub fn params(&self) -> TrainingParams {
        TrainingParams {
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            optimizer: self.optimizer,
            proximal_mu: self.proximal_mu,
        }
    }

    /// The SGD momentum, or `None` for another optimizer.
    pub fn sgd_momentum(&self) -> Option<f32> {
        match self.optimizer {
            OptimizerSpec::Sgd { momentum } => Some(momentum),
            OptimizerSpec::Adam { .. } => None,
        }
    }
}

/// `[selection]`: who takes part in a round.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionConfig {
    /// The inputs each round sums (the target).
    pub clients_per_round: u32,
    /// Over-selection (Bonawitz et al. 2019): ⌈clients_per_round · (1 + over_selection)⌉
    /// clients are selected, the first `clients_per_round` masked inputs to arrive are summed
    /// and the other members are told to stop. Default 0.3; 0 selects exactly
    /// `clients_per_round`.
    #[serde(default = "default_over_selection")]
    pub over_selection: f64,
    /// How long (seconds) a cohort may take to fill before a round starts with the clients
    /// that are there, if they are at least the round's minimum; the last round's members wait
    /// half of it before they can be selected again. Default 30.
    #[serde(default = "default_window")]
    pub window_secs: f64,
}

fn default_over_selection() -> f64 {
    0.3
}
fn default_window() -> f64 {
    30.0
}

impl SelectionConfig {
    /// Clients selected per round: ⌈clients_per_round · (1 + over_selection)⌉.
    pub fn selection_size(&self) -> u32 {
        let n = f64::from(self.clients_per_round);
        // The epsilon keeps 10 · 1.3 at 13 despite 1.3's binary rounding.
        let wanted = (n * (1.0 + self.over_selection) - 1e-9).ceil();
        (wanted.min(f64::from(u32::MAX)) as u32).max(self.clients_per_round)
    }

    /// The selection window.
    pub fn window(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.window_secs)
    }
}

/// `[secagg]`: secure aggregation and the fixed-point encoding of updates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecAggConfig {
    /// SecAgg+ on. The coordinator refuses `false` (it never sees an update in the clear); the
    /// simulator then runs the **insecure** plaintext aggregator for comparison.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Assumed fraction of adversarial clients (with the dropout fraction, it chooses the
    /// neighbour count k and the threshold t). Default 0.05.
    #[serde(default = "default_adversarial")]
    pub adversarial_fraction: f64,
    /// Assumed dropout fraction δ: a round needs ⌈(1 − δ)·clients_per_round⌉ inputs and aborts
    /// below (the plaintext mode too). Default 0.10.
    #[serde(default = "default_dropout")]
    pub dropout_fraction: f64,
    /// Each update coordinate is clipped to [−clip, clip] before quantisation. Default 1.
    #[serde(default = "one_f32")]
    pub clip: f32,
    /// The largest weight a client may claim (its example count, capped); 1, the default, is
    /// an unweighted mean, so that no client can claim more influence than another.
    #[serde(default = "one_u32")]
    pub max_weight: u32,
    /// Bits of a quantised update coordinate, sign included, 8..=24 (read it with
    /// [`SecAggConfig::value_bits_for`]). The round's ring then has `value_bits + ⌈log2
    /// (clients_per_round × max_weight)⌉` bits (at most 32), and masked inputs travel packed at
    /// that many bits a coordinate. Absent: 16, lowered (not below 8) when the cohort's sum
    /// would not fit 32 bits. One quantisation step is `clip / (2^(value_bits−1) − 1)`, and the
    /// rounding is unbiased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_bits: Option<u8>,
    /// The R2.5 consistency check (Bonawitz et al. 2017): clients sign their R0 keys and the
    /// survivor set with their Ed25519 identity keys, and a client reveals nothing in R3 until
    /// it holds t valid signatures on the same set. With it, k and t come from the finder's
    /// semi-malicious class (a server that lies about dropouts cannot gather both kinds of
    /// share), which costs about twice the mask streams of the semi-honest class at n = 1,000.
    /// Default `true`; `false` protects only against a coordinator that follows the protocol.
    #[serde(default = "yes")]
    pub consistency_check: bool,
}

fn yes() -> bool {
    true
}
fn default_adversarial() -> f64 {
    0.05
}
fn default_dropout() -> f64 {
    0.10
}
fn one_f32() -> f32 {
    1.0
}
fn one_u32() -> u32 {
    1
}

impl Default for SecAggConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            adversarial_fraction: default_adversarial(),
            dropout_fraction: default_dropout(),
            clip: one_f32(),
            max_weight: one_u32(),
            value_bits: None,
            consistency_check: true,
        }
    }
}

/// The value bits of `secagg.value_bits` when absent.
pub const DEFAULT_VALUE_BITS: u8 = 16;

/// The range `secagg.value_bits` allows.
pub const VALUE_BITS_RANGE: std::ops::RangeInclusive<u8> = 8..=24;

impl SecAggConfig {
    /// The value bits of a task whose rounds sum at most `clients` inputs: `value_bits` when
    /// given, else [`DEFAULT_VALUE_BITS`] lowered until the ring fits 32 bits (never below 8;
    /// the plan refuses a cohort that 8 bits do not fit).
    pub fn value_bits_for(&self, clients: u32) -> u8 {
        if let Some(b) = self.value_bits {
            return b;
        }
        let load = u64::from(clients.max(1)) * u64::from(self.max_weight.max(1));
        // ⌈log2 load⌉.
        let weight_bits = u64::BITS - (load - 1).leading_zeros();
        let room = 32u32.saturating_sub(weight_bits);
        (DEFAULT_VALUE_BITS as u32)
            .min(room)
            .max(u32::from(*VALUE_BITS_RANGE.start())) as u8
    }
}

/// `[deadlines]`: how long the server waits in each SecAgg+ phase, in seconds (virtual seconds
/// in the simulator). A plaintext simulation waits their sum for the updates.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadlineConfig {
    /// R0, key advertisement. Default 15.
    pub advertise_keys: f64,
    /// R1, share keys. Default 15.
    pub share_keys: f64,
    /// R2: download, local training and the masked input. Default 120.
    pub masked_input: f64,
    /// R3, unmasking. Default 15.
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
    /// The four deadlines with their keys, in phase order.
    pub fn entries(&self) -> [(&'static str, f64); 4] {
        [
            ("deadlines.advertise_keys", self.advertise_keys),
            ("deadlines.share_keys", self.share_keys),
            ("deadlines.masked_input", self.masked_input),
            ("deadlines.unmask", self.unmask),
        ]
    }

    /// As the server state machine's deadlines (call after [`TaskConfig::validate`]).
    pub fn phase_deadlines(&self) -> cohort_aggregation::secagg::PhaseDeadlines {
        let d = |s: f64| std::time::Duration::try_from_secs_f64(s).unwrap_or_default();
        cohort_aggregation::secagg::PhaseDeadlines {
            advertise_keys: d(self.advertise_keys),
            share_keys: d(self.share_keys),
            masked_input: d(self.masked_input),
            unmask: d(self.unmask),
        }
    }

    /// The sum of the four deadlines, in seconds.
    pub fn total_secs(&self) -> f64 {
        self.entries().iter().map(|(_, v)| v).sum()
    }
}

/// The largest deadline and selection window accepted, in seconds (about 31 years: anything
/// finite and positive below it converts to a `Duration`).
const MAX_SECONDS: f64 = 1e9;

/// The simulator's `[comparison_only]` section, which a task refuses by name.
pub const COMPARISON_ONLY: &str = "comparison_only";

impl TaskConfig {
    /// The top-level keys of a task, in the order a task file lists them.
    pub const KEYS: &'static [&'static str] = &[
        "id",
        "rounds",
        "evaluate_every",
        "model",
        "training",
        "strategy",
        "selection",
        "secagg",
        "deadlines",
        "privacy",
        "input",
    ];

    /// Parses and validates a task from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_table(parse_table(text)?)
    }

    /// Deserializes and validates a task from a TOML table.
    pub fn from_table(table: toml::Table) -> Result<Self, ConfigError> {
        if table.contains_key(COMPARISON_ONLY) {
            return Err(invalid(
                COMPARISON_ONLY,
                "a section",
                "no such section in a task: comparison-only settings (such as \
                 dangerous_force_graph) weaken SecAgg+ and exist only in the simulator's \
                 experiments for benchmarks; remove the section",
            ));
        }
        let task: TaskConfig = deserialize(table)?;
        task.validate()?;
        Ok(task)
    }

    /// Reads, parses and validates a task file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_toml(&read_text(path)?)
    }

    /// The task as TOML text (what the coordinator stores).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        to_text(self)
    }

    /// Checks every range and that the parts agree: an infeasible SecAgg+ configuration (no
    /// k and t for the selection size, an encoding without room) is refused here, naming the
    /// keys to change, rather than at the first round.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(invalid(
                "id",
                format!("{:?}", self.id),
                "1 to 64 lower-case letters, digits, '-' or '_'",
            ));
        }
        if self.rounds == 0 {
            return Err(invalid("rounds", self.rounds, "an integer ≥ 1"));
        }
        self.model.validate()?;
        self.validate_input()?;
        self.validate_training()?;
        self.strategy.build().map_err(|e| ConfigError::Parse {
            key: "strategy".into(),
            message: e.to_string(),
        })?;
        self.validate_selection()?;
        self.validate_secagg()?;
        for (key, v) in self.deadlines.entries() {
            if !(v.is_finite() && v > 0.0 && v < MAX_SECONDS) {
                return Err(invalid(key, v, "a number of seconds in (0, 1e9)"));
            }
        }
        self.validate_privacy()
    }

    fn validate_training(&self) -> Result<(), ConfigError> {
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
        match t.optimizer {
            OptimizerSpec::Sgd { momentum } if !(0.0..1.0).contains(&momentum) => {
                return Err(invalid(
                    "training.optimizer.momentum",
                    momentum,
                    "a number in [0, 1)",
                ));
            }
            OptimizerSpec::Adam { beta1, beta2 } => {
                for (key, b) in [
                    ("training.optimizer.beta1", beta1),
                    ("training.optimizer.beta2", beta2),
                ] {
                    if !(0.0..1.0).contains(&b) {
                        return Err(invalid(key, b, "a number in [0, 1)"));
                    }
                }
            }
            OptimizerSpec::Sgd { .. } => {}
        }
        if !(t.proximal_mu.is_finite() && t.proximal_mu >= 0.0) {
            return Err(invalid(
                "training.proximal_mu",
                t.proximal_mu,
                "a finite number ≥ 0",
            ));
        }
        if t.max_examples == Some(0) {
            return Err(invalid(
                "training.max_examples",
                0,
                "an integer ≥ 1, or no key for all of a client's examples",
            ));
        }
        Ok(())
    }

    fn validate_selection(&self) -> Result<(), ConfigError> {
        let s = &self.selection;
        let min = if self.secagg.enabled { MIN_COHORT } else { 1 };
        if s.clients_per_round < min {
            return Err(invalid(
                "selection.clients_per_round",
                s.clients_per_round,
                format!("an integer ≥ {min} (SecAgg+ needs at least {MIN_COHORT} clients)"),
            ));
        }
        if !(s.over_selection.is_finite() && (0.0..=9.0).contains(&s.over_selection)) {
            return Err(invalid(
                "selection.over_selection",
                s.over_selection,
                "a number in [0, 9] (0.3 selects 30% more clients than clients_per_round)",
            ));
        }
        if !(s.window_secs.is_finite() && s.window_secs > 0.0 && s.window_secs < MAX_SECONDS) {
            return Err(invalid(
                "selection.window_secs",
                s.window_secs,
                "a number of seconds in (0, 1e9)",
            ));
        }
        Ok(())
    }

    /// `[input]` against the model: an image needs a `[c, h, w]` input with 1 or 3 channels, a
    /// CSV one feature column per input value, text a token model; labels are unique, named,
    /// and no more than the model's classes.
    fn validate_input(&self) -> Result<(), ConfigError> {
        let Some(input) = &self.input else {
            return Ok(());
        };
        if !(input.scale.is_finite() && input.scale != 0.0) {
            return Err(invalid(
                "input.scale",
                input.scale,
                "a finite number other than 0",
            ));
        }
        if !input.offset.is_finite() {
            return Err(invalid("input.offset", input.offset, "a finite number"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for l in &input.labels {
            if l.is_empty() || l.contains(['/', '\\']) || !seen.insert(l.as_str()) {
                return Err(invalid(
                    "input.labels",
                    format!("{l:?}"),
                    "unique, non-empty names without '/' or '\\'",
                ));
            }
        }
        // A simulator experiment may leave the model's ends to its dataset; then there is no
        // shape to check against here.
        let Ok(spec) = self.model_spec(None) else {
            return Ok(());
        };
        if input.labels.len() > spec.num_classes as usize {
            return Err(invalid(
                "input.labels",
                format!("{} labels", input.labels.len()),
                format!("at most model.num_classes = {}", spec.num_classes),
            ));
        }
        let shape = &spec.input_shape;
        let tokens = matches!(
            spec.layers.first(),
            Some(cohort_protocol::LayerSpec::Embedding { .. })
        );
        let need_labels = || {
            if input.labels.is_empty() {
                Err(invalid(
                    "input.labels",
                    "[]",
                    "the label names in order (label i is labels[i])",
                ))
            } else {
                Ok(())
            }
        };
        match input.kind {
            InputKind::Image => {
                if shape.len() != 3 || !(shape[0] == 1 || shape[0] == 3) || tokens {
                    return Err(invalid(
                        "input.kind",
                        "\"image\"",
                        format!(
                            "a model whose input_shape is [channels, height, width] with 1 or 3 \
                             channels (this one has {shape:?})"
                        ),
                    ));
                }
                need_labels()?;
            }
            InputKind::Csv => {
                if shape.len() != 1 || tokens || shape[0] as usize != input.feature_columns.len() {
                    return Err(invalid(
                        "input.feature_columns",
                        format!("{} columns", input.feature_columns.len()),
                        format!(
                            "one column per input value of a model with a flat input_shape [n] \
                             (this model's is {shape:?}; an image model reads an image folder, \
                             kind = \"image\")"
                        ),
                    ));
                }
                let mut cols = std::collections::BTreeSet::new();
                if let Some(dup) = input
                    .feature_columns
                    .iter()
                    .find(|c| !cols.insert(c.as_str()))
                {
                    return Err(invalid(
                        "input.feature_columns",
                        format!("{dup:?}"),
                        "unique names",
                    ));
                }
                match &input.label_column {
                    None => {
                        return Err(invalid(
                            "input.label_column",
                            "missing",
                            "the label column's name",
                        ));
                    }
                    Some(l) if cols.contains(l.as_str()) => {
                        return Err(invalid(
                            "input.label_column",
                            format!("{l:?}"),
                            "a column that is not a feature column",
                        ));
                    }
                    Some(_) => {}
                }
                need_labels()?;
            }
            InputKind::Text => {
                if !tokens || shape.len() != 1 {
                    return Err(invalid(
                        "input.kind",
                        "\"text\"",
                        "a model that reads character ids (its first layer an embedding, \
                         input_shape [window])",
                    ));
                }
                if !input.labels.is_empty() {
                    return Err(invalid(
                        "input.labels",
                        format!("{} labels", input.labels.len()),
                        "none for text (the label is the next character)",
                    ));
                }
            }
        }
        if input.kind != InputKind::Csv
            && (!input.feature_columns.is_empty() || input.label_column.is_some())
        {
            return Err(invalid(
                "input.feature_columns",
                "set",
                "only with kind = \"csv\"",
            ));
        }
        Ok(())
    }

    fn validate_secagg(&self) -> Result<(), ConfigError> {
        let s = &self.secagg;
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
        if !(s.clip.is_finite() && s.clip > 0.0) {
            return Err(invalid("secagg.clip", s.clip, "a finite number > 0"));
        }
        if s.max_weight == 0 {
            return Err(invalid("secagg.max_weight", 0, "an integer ≥ 1"));
        }
        if let Some(b) = s.value_bits
            && !VALUE_BITS_RANGE.contains(&b)
        {
            return Err(invalid(
                "secagg.value_bits",
                b,
                "an integer in 8..=24 (bits of a quantised coordinate, sign included; the \
                 ring adds the bits of clients_per_round × max_weight, up to 32)",
            ));
        }
        // Plans for the smallest and the largest cohort a round may start with: both must
        // exist, or the task could never run a round.
        let model_len = match self.model.is_complete() {
            true => self.model_spec(None)?.num_parameters().unwrap_or(1),
            false => 1,
        };
        for selected in [self.min_cohort(), self.selection.selection_size()] {
            RoundPlan::new(self, selected, model_len).map_err(|e| e.into_config_error())?;
        }
        Ok(())
    }

    /// The task's id, as the protocol names it.
    pub fn task_id(&self) -> TaskId {
        TaskId(self.id.clone())
    }

    /// The model spec, with what `[model]` leaves out taken from `data` (the simulator's
    /// dataset); a task file's `[model]` must be complete.
    pub fn model_spec(
        &self,
        data: Option<DataShape>,
    ) -> Result<cohort_protocol::ModelSpec, ConfigError> {
        self.model.resolve(data)
    }

    /// The plan sent to a selected device (call on a task whose `[model]` is complete).
    pub fn plan(&self) -> Result<TaskPlan, ConfigError> {
        let model = self.model_spec(None)?;
        let dim = model.num_parameters().unwrap_or(1).max(1);
        Ok(TaskPlan {
            task: self.task_id(),
            model,
            training: self.training.params(),
            privacy: self.privacy_spec(dim)?,
            input: self.input.clone(),
        })
    }

    /// The fewest clients a round may start with: the quorum of a full cohort
    /// (⌈(1 − δ)·clients_per_round⌉), and at least [`MIN_COHORT`] with SecAgg+. A smaller
    /// cohort could only abort.
    pub fn min_cohort(&self) -> u32 {
        let quorum = crate::plan::quorum(
            self.selection.clients_per_round,
            self.secagg.dropout_fraction,
        );
        if self.secagg.enabled {
            quorum.max(MIN_COHORT)
        } else {
            quorum.max(1)
        }
    }

    /// Whether round `round` (from 1) is evaluated.
    pub fn evaluates(&self, round: u64) -> bool {
        self.evaluate_every > 0 && round.is_multiple_of(u64::from(self.evaluate_every))
    }
}
