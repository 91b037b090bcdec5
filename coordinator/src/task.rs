//! Task definitions: what a model owner writes (TOML) to launch federated training.
//!
//! The vocabulary is `cohort-task`'s ([`TaskConfig`]; every key is documented in
//! `docs/configuration.md`, and `examples/digits-task.toml` uses each section): the same keys,
//! defaults and errors as the task part of a simulator experiment. What the coordinator adds is
//! what only a deployment needs:
//!
//! - SecAgg+ is mandatory: `secagg.enabled = false` is refused, so the coordinator never sees an
//!   update in the clear (the simulator runs plaintext rounds for comparison);
//! - the model must be fully stated (`input_shape` and `num_classes` too): the coordinator has
//!   no dataset to take them from;
//! - `training.max_examples` (a simulator knob) is refused: devices train on all their examples.
//!
//! Definitions stored by an earlier coordinator, in the earlier vocabulary (`cohort_size`,
//! `over_selection` as a multiple, `deadlines.r0_secs`, ...), are upgraded when they are
//! loaded from the database ([`TaskDefinition::from_stored`]); a file in that vocabulary is
//! refused with the new place of each key.

use std::path::Path;

use cohort_protocol::{ModelSpec, TaskPlan};
use cohort_task::config::{ConfigError, TaskConfig, invalid, parse_table};

/// Why a task definition was refused: a [`ConfigError`] naming the key.
pub type TaskError = ConfigError;

/// A task definition the coordinator can run: a validated [`TaskConfig`] and its model.
/// `Deref`s to the configuration (`def.id`, `def.secagg`, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct TaskDefinition {
    config: TaskConfig,
    model: ModelSpec,
}

impl TaskDefinition {
    /// Checks `config` for what a deployment needs (see the module docs).
    pub fn new(config: TaskConfig) -> Result<Self, TaskError> {
        config.validate()?;
        if !config.secagg.enabled {
            return Err(invalid(
                "secagg.enabled",
                false,
                "true: this coordinator only aggregates with SecAgg+ and never sees an update \
                 in the clear (plain aggregation is for the simulator)",
            ));
        }
        if config.training.max_examples.is_some() {
            return Err(ConfigError::Unsupported {
                key: "training.max_examples".into(),
                reason: "devices train on all their examples; the key exists for the simulator \
                         only, remove it"
                    .into(),
            });
        }
        let model = config.model_spec(None)?;
        Ok(Self { config, model })
    }

    /// Parses and validates a definition.
    pub fn from_toml(text: &str) -> Result<Self, TaskError> {
        Self::new(TaskConfig::from_toml(text)?)
    }

    /// Reads, parses and validates a definition file.
    pub fn load(path: &Path) -> Result<Self, TaskError> {
        Self::new(TaskConfig::load(path)?)
    }

    /// A definition as the database stores it: [`TaskDefinition::to_toml`]'s text, or a
    /// definition stored in the earlier vocabulary, which is upgraded first.
    pub fn from_stored(text: &str) -> Result<Self, TaskError> {
        let mut table = parse_table(text)?;
        if legacy::upgrade(&mut table) {
            tracing::info!("upgraded a task definition stored in the earlier vocabulary");
        }
        Self::new(TaskConfig::from_table(table)?)
    }

    /// The definition as TOML (what the store keeps).
    pub fn to_toml(&self) -> Result<String, TaskError> {
        self.config.to_toml()
    }

    /// The configuration.
    pub fn config(&self) -> &TaskConfig {
        &self.config
    }

    /// The model.
    pub fn model(&self) -> &ModelSpec {
        &self.model
    }

    /// The plan sent to selected clients.
    pub fn plan(&self) -> TaskPlan {
        let dim = self.model.num_parameters().unwrap_or(1).max(1);
        TaskPlan {
            task: self.config.task_id(),
            model: self.model.clone(),
            training: self.config.training.params(),
            // Checked when the definition was made, so this does not fail here.
            privacy: self.config.privacy_spec(dim).ok().flatten(),
            input: self.config.input.clone(),
        }
    }
}

impl std::ops::Deref for TaskDefinition {
    type Target = TaskConfig;

    fn deref(&self) -> &TaskConfig {
        &self.config
    }
}

/// The earlier task vocabulary, for definitions already in a database.
mod legacy {
    use toml::{Table, Value};

    /// Rewrites a definition of the earlier vocabulary in place; returns whether it was one.
    /// `cohort_size` (the inputs a round aggregates) becomes `selection.clients_per_round`,
    /// `over_selection` (a multiple of it) the extra fraction, `deadlines.rN_secs` the phase
    /// names; `secagg.consistency_check` keeps its value (`false`, the only one the earlier
    /// coordinator accepted, keeps semi-honest rounds; without the key, the default `true`).
    pub fn upgrade(table: &mut Table) -> bool {
        let Some(cohort) = table.remove("cohort_size") else {
            return false;
        };
        let mut selection = Table::new();
        selection.insert("clients_per_round".into(), cohort);
        match table.remove("over_selection") {
            Some(Value::Float(m)) => {
                selection.insert("over_selection".into(), Value::Float((m - 1.0).max(0.0)));
            }
            Some(Value::Integer(m)) => {
                selection.insert(
                    "over_selection".into(),
                    Value::Float((m as f64 - 1.0).max(0.0)),
                );
            }
            Some(other) => {
                // Left for validation to name.
                selection.insert("over_selection".into(), other);
            }
            None => {}
        }
        table.insert("selection".into(), Value::Table(selection));
        if let Some(Value::Table(d)) = table.get_mut("deadlines") {
            for (old, new) in [
                ("r0_secs", "advertise_keys"),
                ("r1_secs", "share_keys"),
                ("r2_secs", "masked_input"),
                ("r3_secs", "unmask"),
            ] {
                if let Some(v) = d.remove(old) {
                    d.insert(new.into(), v);
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../examples/digits-task.toml");

    #[test]
    fn the_example_parses_and_round_trips() {
        let def = TaskDefinition::from_toml(EXAMPLE).unwrap();
        assert_eq!(def.id, "digits");
        assert_eq!(def.model(), &ModelSpec::digits_mlp());
        assert_eq!(def.selection.selection_size(), 5);
        assert!(def.secagg.consistency_check);
        assert_eq!(def.plan().task.0, "digits");
        let again = TaskDefinition::from_stored(&def.to_toml().unwrap()).unwrap();
        assert_eq!(again, def);
    }

    #[test]
    fn what_only_a_deployment_needs_is_checked() {
        let cases = [
            ("enabled = true", "enabled = false", "secagg.enabled"),
            (
                "proximal_mu = 0.0",
                "proximal_mu = 0.0\nmax_examples = 10",
                "training.max_examples",
            ),
            ("input_shape = [64]\n", "", "model.input_shape"),
        ];
        for (from, to, key) in cases {
            assert!(EXAMPLE.contains(from), "example lacks {from}");
            let err = TaskDefinition::from_toml(&EXAMPLE.replacen(from, to, 1)).unwrap_err();
            assert_eq!(err.key(), Some(key), "{err}");
        }
    }

    /// A definition stored by the earlier coordinator (its own example file) loads, with each
    /// key in its new place and the same meaning.
    #[test]
    fn definitions_stored_in_the_earlier_vocabulary_are_upgraded() {
        let old = r#"
            id = "digits"
            rounds = 5
            cohort_size = 20
            over_selection = 1.3
            evaluate_every = 1
            [model]
            input_shape = [64]
            num_classes = 10
            layers = [{ type = "linear", out = 32 }, { type = "relu" }, { type = "linear", out = 10 }]
            [training]
            epochs = 1
            batch_size = 32
            learning_rate = 0.05
            optimizer = { kind = "sgd", momentum = 0.0 }
            proximal_mu = 0.0
            [strategy]
            kind = "fedavg"
            [secagg]
            enabled = true
            adversarial_fraction = 0.05
            dropout_fraction = 0.10
            clip = 1.0
            max_weight = 1
            consistency_check = false
            [deadlines]
            r0_secs = 15
            r1_secs = 16
            r2_secs = 120
            r3_secs = 17
        "#;
        let def = TaskDefinition::from_stored(old).unwrap();
        assert_eq!(def.selection.clients_per_round, 20);
        assert!((def.selection.over_selection - 0.3).abs() < 1e-12);
        assert_eq!(def.selection.selection_size(), 26);
        assert_eq!(
            (def.deadlines.share_keys, def.deadlines.unmask),
            (16.0, 17.0)
        );
        assert_eq!(def.model(), &ModelSpec::digits_mlp());
        // It asked for no consistency check, and keeps that.
        assert!(!def.secagg.consistency_check);
        // The same text as a new file is refused, naming where the key went.
        let err = TaskDefinition::from_toml(old).unwrap_err().to_string();
        assert!(err.contains("selection.clients_per_round"), "{err}");
    }
}
