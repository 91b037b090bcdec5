//! Model export: a task's model of a logged round as a safetensors file, the format Python
//! (`safetensors`, NumPy, PyTorch) and Rust tools read; `cohort_learning::model_file` reads it
//! back into burn (names and keys: `cohort_protocol::model_file`).
//!
//! Each parameter block of [`ModelSpec::parameter_layout`] is one F32 tensor named
//! `layers.{layer}.{name}` (for example `layers.0.weight`, `layers.2.bias`) with the block's
//! shape. A `Linear` weight is `[in, out]`, so a dense layer is `y = x @ W + b`. The metadata
//! names where the weights come from: the task, the round, the model's content hash, the
//! round-log entry that names it and the log's head at export time, and the model spec as
//! JSON, so that a reader can rebuild the network and check the file against the log.
//!
//! The checkpoint is read back through its content hash ([`Checkpoints::get`] checks it), and
//! the round's entry comes from a verified chain: a file is only written for a model the
//! intact log names.

use std::collections::HashMap;

use cohort_protocol::model::SpecError;
use cohort_protocol::model_file::LAYOUT_NOTE;
pub use cohort_protocol::model_file::{keys, tensor_name};
use cohort_protocol::{ModelSpec, TaskId};
use safetensors::tensor::{Dtype, TensorView};
use thiserror::Error;

use crate::checkpoints::{CheckpointError, Checkpoints};
use crate::round_log::{LogEntry, RoundLogError};
use crate::store::{Store, StoreError};
use crate::task::TaskDefinition;

/// Why a model could not be exported.
#[derive(Debug, Error)]
pub enum ExportError {
    /// No such task.
    #[error("no task {0:?}; `task list` shows the tasks")]
    UnknownTask(String),
    /// The round is not in the log.
    #[error("task {task:?} has no logged round {round}; its log ends at round {last}")]
    NoRound {
        /// The task.
        task: String,
        /// The round asked for.
        round: u64,
        /// The last logged round.
        last: u64,
    },
    /// The task has not logged its first model yet.
    #[error("task {0:?} has no model yet: start it, its first log entry names the initial model")]
    NoModel(String),
    /// The stored definition does not load.
    #[error("the stored definition of task {task:?} does not load: {reason}")]
    Definition {
        /// The task.
        task: String,
        /// Why.
        reason: String,
    },
    /// The checkpoint does not fit the model spec.
    #[error(
        "the checkpoint of round {round} holds {found} values but the model has {expected}; \
         the state directory is inconsistent, restore it from a backup"
    )]
    Mismatch {
        /// The round.
        round: u64,
        /// Values in the checkpoint.
        found: usize,
        /// Parameters of the spec.
        expected: usize,
    },
    /// The round log is broken or unreadable.
    #[error(transparent)]
    Log(#[from] RoundLogError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The checkpoint is missing or corrupt.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The task's model spec has no parameter layout (a task stored by an older version).
    #[error("cannot export: the task's model spec is invalid ({0})")]
    Spec(#[from] SpecError),
    /// A parameter block of the layout lies outside the checkpoint's values.
    #[error(
        "cannot export: block {name} of layer {layer} lies outside the weights; the checkpoint \
         does not match the model spec"
    )]
    BlockOutsideWeights {
        /// The layer's index.
        layer: usize,
        /// The block's name.
        name: &'static str,
    },
    /// The model spec could not be written as JSON metadata.
    #[error("cannot encode the model spec as JSON: {0}")]
    SpecJson(#[from] serde_json::Error),
    /// The safetensors library refused a tensor or the file.
    #[error("cannot encode the safetensors file: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
}

/// A model taken out of the log: the weights, their spec and where they come from.
#[derive(Clone, Debug)]
pub struct ExportedModel {
    /// The task.
    pub task: String,
    /// The model spec.
    pub spec: ModelSpec,
    /// The flat weights, in [`ModelSpec::parameter_layout`] order.
    pub weights: Vec<f32>,
    /// The round-log entry that names them.
    pub entry: LogEntry,
    /// The log's head at export time.
    pub head: LogEntry,
}

/// The model of `round` (the log's head when `None`) of `task`, from a verified log.
pub fn model_of_round(
    store: &Store,
    checkpoints: &Checkpoints,
    task: &str,
    round: Option<u64>,
    max_bytes: u64,
) -> Result<ExportedModel, ExportError> {
    let row = store
        .task(task)?
        .ok_or_else(|| ExportError::UnknownTask(task.to_string()))?;
    let def =
        TaskDefinition::from_stored(&row.definition).map_err(|e| ExportError::Definition {
            task: task.to_string(),
            reason: e.to_string(),
        })?;
    let entries = store.round_log().verify(&TaskId(task.to_string()))?;
    let head = entries
        .last()
        .cloned()
        .ok_or_else(|| ExportError::NoModel(task.to_string()))?;
    let entry = match round {
        None => head.clone(),
        Some(r) => entries
            .iter()
            .find(|e| e.entry.round.0 == r)
            .cloned()
            .ok_or(ExportError::NoRound {
                task: task.to_string(),
                round: r,
                last: head.entry.round.0,
            })?,
    };
    let weights = checkpoints.get(&entry.entry.output_weights, max_bytes)?;
    let spec = def.model().clone();
    let expected = spec.num_parameters().map_err(|e| ExportError::Definition {
        task: task.to_string(),
        reason: e.to_string(),
    })?;
    if weights.len() != expected {
        return Err(ExportError::Mismatch {
            round: entry.entry.round.0,
            found: weights.len(),
            expected,
        });
    }
    Ok(ExportedModel {
        task: task.to_string(),
        spec,
        weights,
        entry,
        head,
    })
}

/// The model as a safetensors file.
pub fn to_safetensors(model: &ExportedModel) -> Result<Vec<u8>, ExportError> {
    let layout = model.spec.parameter_layout()?;
    let bytes: Vec<u8> = model.weights.iter().flat_map(|w| w.to_le_bytes()).collect();
    let mut tensors = Vec::with_capacity(layout.len());
    for block in &layout {
        let start = block.offset * 4;
        let end = start + block.len() * 4;
        let data = bytes
            .get(start..end)
            .ok_or(ExportError::BlockOutsideWeights {
                layer: block.layer,
                name: block.name,
            })?;
        let view = TensorView::new(Dtype::F32, block.shape.clone(), data)?;
        tensors.push((tensor_name(block.layer, block.name), view));
    }
    let spec = serde_json::to_string(&model.spec)?;
    let metadata: HashMap<String, String> = [
        (keys::TASK, model.task.clone()),
        (keys::ROUND, model.entry.entry.round.0.to_string()),
        (keys::MODEL_HASH, model.entry.entry.output_weights.to_hex()),
        (keys::LOG_ENTRY, model.entry.hash.to_hex()),
        (keys::LOG_HEAD, model.head.hash.to_hex()),
        (keys::MODEL_SPEC, spec),
        (keys::LAYOUT, LAYOUT_NOTE.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Ok(safetensors::tensor::serialize(tensors, Some(metadata))?)
}
