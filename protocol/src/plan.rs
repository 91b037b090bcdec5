//! What a client trains and how: the task plan sent at check-in, and the metadata it reports.

use serde::{Deserialize, Serialize};

use crate::ids::{ContentHash, TaskId};
use crate::model::ModelSpec;
use crate::vectors::FloatVector;

/// The local optimizer.
// Unknown fields are refused, as for `LayerSpec`: a misspelt `momentun` must not train with
// the default.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerSpec {
    /// Stochastic gradient descent with optional momentum.
    Sgd {
        /// Momentum; 0 disables it.
        #[serde(default)]
        momentum: f32,
    },
    /// Adam with the usual betas.
    Adam {
        /// First-moment decay.
        #[serde(default = "default_beta1")]
        beta1: f32,
        /// Second-moment decay.
        #[serde(default = "default_beta2")]
        beta2: f32,
    },
}

fn default_beta1() -> f32 {
    0.9
}
fn default_beta2() -> f32 {
    0.999
}

/// Local training hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingParams {
    /// Passes over the local data.
    pub epochs: u32,
    /// Examples per step.
    pub batch_size: u32,
    /// Step size.
    pub learning_rate: f32,
    /// The optimizer.
    pub optimizer: OptimizerSpec,
    /// FedProx proximal term mu; 0 is plain local SGD.
    #[serde(default)]
    pub proximal_mu: f32,
}

/// Everything a selected client needs to train for a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskPlan {
    /// The task.
    pub task: TaskId,
    /// The architecture, built at run time on the device.
    pub model: ModelSpec,
    /// Local training.
    pub training: TrainingParams,
    /// The task's differential privacy (absent: none). A device re-plans it to check the
    /// budget against its owner's limit and to encode its update (`cohort_task::privacy`).
    /// Absent from coordinators that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<Box<PrivacySpec>>,
    /// What the task's examples look like on a device, so it can train on its own files
    /// (`None`: the device brings examples in the model's input shape already).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputSpec>,
}

/// What a device needs to re-derive a task's privacy plan: the task's `[privacy]` section and
/// the shape the coordinator planned it for (the model's size the device knows from the spec).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrivacySpec {
    /// The `[privacy]` section.
    pub config: cohort_privacy::config::PrivacyConfig,
    /// The most inputs a round sums.
    pub clients_per_round: u32,
    /// q_min: the fewest survivors any round of the task releases.
    pub min_survivors: u32,
}

/// The kind of files a device trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// A folder with one sub-folder per label, holding PNG or JPEG images; each image is
    /// converted to the model's channels (1: grey, 3: RGB) and resized to its `[c, h, w]`
    /// input shape.
    Image,
    /// A CSV file with a header row: the feature columns (in the order the model reads them)
    /// and a label column.
    Csv,
    /// Plain text files, read as character windows of the model's input length; the label
    /// is the next character (next-character prediction).
    Text,
}

/// What a task's examples look like on a device: the kind of files, the labels in order, and
/// the normalisation applied to every raw value (`raw × scale + offset`; an image's raw values
/// are its bytes, 0 to 255). The shape is the model's `input_shape`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// The kind of files.
    pub kind: InputKind,
    /// The label names in order: label `i` is `labels[i]` (image sub-folder names, the
    /// values of a CSV's label column). Empty for text.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Raw values are multiplied by this.
    #[serde(default = "one")]
    pub scale: f32,
    /// And then this is added.
    #[serde(default)]
    pub offset: f32,
    /// CSV: the feature columns, in the model's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feature_columns: Vec<String>,
    /// CSV: the label column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_column: Option<String>,
}

fn one() -> f32 {
    1.0
}

impl InputSpec {
    /// The normalised value of a raw one.
    pub fn normalise(&self, raw: f32) -> f32 {
        raw * self.scale + self.offset
    }
}

/// A slice of a weight vector, streamed in order. Large vectors are split so that no frame
/// exceeds the frame limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightsChunk {
    /// Hash of the whole vector's little-endian bytes.
    pub hash: ContentHash,
    /// Index of the first element of this chunk.
    pub offset: u64,
    /// Length of the whole vector.
    pub total_len: u64,
    /// The elements.
    pub values: FloatVector,
}
