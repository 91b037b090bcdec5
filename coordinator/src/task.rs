//! Task definitions: what a model owner writes (TOML) to launch federated training.
//!
//! A definition names the model (a [`ModelSpec`], built on the devices at run time), local
//! training, the aggregation strategy, cohort size and over-selection, secure-aggregation
//! parameters, per-phase deadlines and the evaluation cadence. Unknown keys are refused with
//! their full path (`secagg.dropout_fractoin`), including keys inside the protocol crate's types,
//! so that a typo never silently falls back to a default. See `examples/digits-task.toml`.

use std::path::Path;

use cohort_protocol::{ModelSpec, TaskId, TaskPlan, TrainingParams};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a task definition was refused.
#[derive(Debug, Error)]
pub enum TaskError {
    /// The file could not be read.
    #[error("cannot read task file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or a value has the wrong type; the message names the key and line.
    #[error("task definition is not valid: {0}")]
    Parse(String),
    /// A key that no field has.
    #[error(
        "unknown key `{0}` in the task definition; check its spelling against examples/digits-task.toml"
    )]
    UnknownKey(String),
    /// A value is out of range.
    #[error("`{key}` {reason}")]
    Invalid {
        /// The key's path.
        key: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

/// A federated training task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDefinition {
    /// Unique id: lower-case letters, digits, `-` and `_`.
    pub id: String,
    /// The model architecture.
    pub model: ModelSpec,
    /// Local training on each device.
    pub training: TrainingParams,
    /// The server-side strategy: a table with a string `kind` ("fedavg", "fedavgm", "fedadam",
    /// ...) and its parameters. Interpreted by `cohort-aggregation`'s strategy configuration.
    #[serde(default = "default_strategy")]
    pub strategy: toml::Value,
    /// Clients whose inputs each round aggregates (after selection).
    pub cohort_size: u32,
    /// Clients selected per round, as a multiple of `cohort_size`, to absorb dropouts.
    #[serde(default = "default_over_selection")]
    pub over_selection: f64,
    /// Rounds to run.
    pub rounds: u32,
    /// Secure aggregation.
    #[serde(default)]
    pub secagg: SecAggSettings,
    /// Per-phase deadlines.
    #[serde(default)]
    pub deadlines: Deadlines,
    /// Evaluate the global model every this many rounds; 0 never.
    #[serde(default)]
    pub evaluate_every: u32,
}

/// Secure-aggregation settings of a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecAggSettings {
    /// Whether SecAgg+ masks the updates. Must be true: the coordinator refuses tasks that would
    /// have it see updates in the clear (the simulator runs plain rounds for comparison).
    pub enabled: bool,
    /// Assumed fraction of adversarial clients (chooses k and t).
    pub adversarial_fraction: f64,
    /// Assumed fraction of clients that drop out during a round.
    pub dropout_fraction: f64,
    /// Clip range c: each update coordinate is clipped to [-c, c] before quantisation.
    pub clip: f32,
    /// Largest per-client weight (1 = unweighted mean).
    pub max_weight: u32,
    /// Run the R2.5 consistency check (active-adversary model).
    pub consistency_check: bool,
}

impl Default for SecAggSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            adversarial_fraction: 0.05,
            dropout_fraction: 0.10,
            clip: 1.0,
            max_weight: 1,
            consistency_check: false,
        }
    }
}

/// Per-phase deadlines, in seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Deadlines {
    /// R0, key advertisement.
    pub r0_secs: u32,
    /// R1, share keys.
    pub r1_secs: u32,
    /// R2, local training and masked input.
    pub r2_secs: u32,
    /// R3, unmasking.
    pub r3_secs: u32,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            r0_secs: 15,
            r1_secs: 15,
            r2_secs: 120,
            r3_secs: 15,
        }
    }
}

fn default_over_selection() -> f64 {
    1.3
}

fn default_strategy() -> toml::Value {
    let mut t = toml::Table::new();
    t.insert("kind".into(), toml::Value::String("fedavg".into()));
    toml::Value::Table(t)
}

fn invalid(key: &'static str, reason: impl Into<String>) -> TaskError {
    TaskError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl TaskDefinition {
    /// Parses and validates a definition.
    pub fn from_toml(text: &str) -> Result<Self, TaskError> {
        let mut ignored = Vec::new();
        let def: TaskDefinition =
            serde_ignored::deserialize(toml::Deserializer::new(text), |path| {
                ignored.push(path.to_string())
            })
            .map_err(|e: toml::de::Error| TaskError::Parse(e.to_string()))?;
        if let Some(key) = ignored.into_iter().next() {
            return Err(TaskError::UnknownKey(key));
        }
        def.validate()?;
        Ok(def)
    }

    /// Reads, parses and validates a definition file.
    pub fn load(path: &Path) -> Result<Self, TaskError> {
        let text = std::fs::read_to_string(path).map_err(|source| TaskError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// The definition as TOML (what the store keeps).
    pub fn to_toml(&self) -> Result<String, TaskError> {
        toml::to_string(self).map_err(|e| TaskError::Parse(e.to_string()))
    }

    /// Checks every value's range.
    pub fn validate(&self) -> Result<(), TaskError> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(invalid(
                "id",
                format!(
                    "is {:?}; use 1 to 64 lower-case letters, digits, '-' or '_'",
                    self.id
                ),
            ));
        }
        if self.rounds == 0 {
            return Err(invalid("rounds", "must be at least 1"));
        }
        if self.cohort_size < 2 {
            return Err(invalid("cohort_size", "must be at least 2"));
        }
        if !(self.over_selection.is_finite() && (1.0..=10.0).contains(&self.over_selection)) {
            return Err(invalid("over_selection", "must be between 1.0 and 10.0"));
        }
        let t = &self.training;
        if t.epochs == 0 {
            return Err(invalid("training.epochs", "must be at least 1"));
        }
        if t.batch_size == 0 {
            return Err(invalid("training.batch_size", "must be at least 1"));
        }
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
            return Err(invalid(
                "training.learning_rate",
                "must be a positive number",
            ));
        }
        if !(t.proximal_mu.is_finite() && t.proximal_mu >= 0.0) {
            return Err(invalid("training.proximal_mu", "must be 0 or positive"));
        }
        match self.strategy.get("kind") {
            Some(toml::Value::String(k)) if !k.is_empty() => {}
            _ => {
                return Err(invalid(
                    "strategy.kind",
                    "must be set to a strategy name, e.g. \"fedavg\"",
                ));
            }
        }
        let s = &self.secagg;
        for (key, v) in [
            ("secagg.adversarial_fraction", s.adversarial_fraction),
            ("secagg.dropout_fraction", s.dropout_fraction),
        ] {
            if !(v.is_finite() && (0.0..0.5).contains(&v)) {
                return Err(invalid(key, format!("is {v}; must be in [0, 0.5)")));
            }
        }
        if !s.enabled {
            return Err(invalid(
                "secagg.enabled",
                "is false, but this coordinator only aggregates with SecAgg+ and never sees an \
                 update in the clear; set it to true (plain aggregation is for the simulator)",
            ));
        }
        if !(s.clip.is_finite() && s.clip > 0.0) {
            return Err(invalid("secagg.clip", "must be a positive number"));
        }
        if s.max_weight == 0 {
            return Err(invalid("secagg.max_weight", "must be at least 1"));
        }
        let d = &self.deadlines;
        for (key, v) in [
            ("deadlines.r0_secs", d.r0_secs),
            ("deadlines.r1_secs", d.r1_secs),
            ("deadlines.r2_secs", d.r2_secs),
            ("deadlines.r3_secs", d.r3_secs),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1 second"));
            }
        }
        Ok(())
    }

    /// The task's id.
    pub fn task_id(&self) -> TaskId {
        TaskId(self.id.clone())
    }

    /// Clients to select per round: `ceil(cohort_size * over_selection)`.
    pub fn selection_size(&self) -> u32 {
        (self.cohort_size as f64 * self.over_selection).ceil() as u32
    }

    /// The plan sent to selected clients.
    pub fn plan(&self) -> TaskPlan {
        TaskPlan {
            task: self.task_id(),
            model: self.model.clone(),
            training: self.training.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../examples/digits-task.toml");

    #[test]
    fn example_parses_with_defaults() {
        let def = TaskDefinition::from_toml(EXAMPLE).unwrap();
        assert_eq!(def.id, "digits");
        assert_eq!(def.deadlines.r2_secs, 120);
        assert_eq!(
            def.selection_size(),
            (def.cohort_size as f64 * 1.3).ceil() as u32
        );
        assert_eq!(def.plan().task, TaskId("digits".into()));
        // The stored form parses back to the same definition.
        let again = TaskDefinition::from_toml(&def.to_toml().unwrap()).unwrap();
        assert_eq!(again, def);
    }

    #[test]
    fn minimal_definition_gets_documented_defaults() {
        let text = r#"
            id = "t"
            cohort_size = 10
            rounds = 3
            [model]
            input_shape = [4]
            num_classes = 2
            layers = [{ type = "linear", out = 2 }]
            [training]
            epochs = 1
            batch_size = 8
            learning_rate = 0.1
            optimizer = { kind = "sgd" }
        "#;
        let def = TaskDefinition::from_toml(text).unwrap();
        assert_eq!(def.over_selection, 1.3);
        assert_eq!(def.secagg, SecAggSettings::default());
        assert_eq!(def.secagg.adversarial_fraction, 0.05);
        assert_eq!(def.secagg.dropout_fraction, 0.10);
        assert_eq!(
            def.deadlines,
            Deadlines {
                r0_secs: 15,
                r1_secs: 15,
                r2_secs: 120,
                r3_secs: 15
            }
        );
        assert_eq!(
            def.strategy.get("kind").and_then(|k| k.as_str()),
            Some("fedavg")
        );
        assert_eq!(def.evaluate_every, 0);
    }

    #[test]
    fn unknown_keys_are_named() {
        let cases = [
            ("cohort_sise = 3\n", "cohort_sise"),
            ("[secagg]\ndropout_fractoin = 0.2\n", "dropout_fractoin"),
            ("[deadlines]\nr4_secs = 3\n", "r4_secs"),
        ];
        for (extra, key) in cases {
            // A new top-level key goes first; a key of an existing table goes into that table
            // (TOML refuses a table defined twice).
            let text = match extra.split_once('\n') {
                Some((table, line)) if table.starts_with('[') => {
                    EXAMPLE.replace(table, &format!("{table}\n{line}"))
                }
                _ => format!("{extra}{EXAMPLE}"),
            };
            let err = TaskDefinition::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        // Inside a type of the protocol crate (which does not deny unknown fields itself).
        let text = EXAMPLE.replace("[training]", "[training]\nepochz = 3");
        match TaskDefinition::from_toml(&text) {
            Err(TaskError::UnknownKey(k)) => assert_eq!(k, "training.epochz"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let cases = [
            ("rounds = 5", "rounds = 0", "rounds"),
            ("cohort_size = 20", "cohort_size = 1", "cohort_size"),
            (
                "dropout_fraction = 0.10",
                "dropout_fraction = 0.7",
                "secagg.dropout_fraction",
            ),
            ("r2_secs = 120", "r2_secs = 0", "deadlines.r2_secs"),
            ("id = \"digits\"", "id = \"Digits!\"", "id"),
            ("enabled = true", "enabled = false", "secagg.enabled"),
        ];
        for (from, to, key) in cases {
            assert!(EXAMPLE.contains(from), "example lacks {from}");
            let err = TaskDefinition::from_toml(&EXAMPLE.replace(from, to)).unwrap_err();
            assert!(
                matches!(&err, TaskError::Invalid { key: k, .. } if *k == key),
                "{key}: {err}"
            );
        }
        let err = TaskDefinition::from_toml(&EXAMPLE.replace("rounds = 5", "rounds = \"five\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("rounds"), "{err}");
    }
}
