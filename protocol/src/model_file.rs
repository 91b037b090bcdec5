//! The names of Cohort's model file: a model exported by `cohort-coordinator model export` (a
//! safetensors file) is written by the coordinator and read back by `cohort-learning`, and both
//! take the tensor names and metadata keys from here.
//!
//! Each parameter block of [`ModelSpec::parameter_layout`](crate::ModelSpec::parameter_layout)
//! is one F32 tensor named [`tensor_name`] (`layers.{layer}.{name}`) with the block's shape; a
//! `Linear` weight is `[in, out]`, so a dense layer is `y = x @ W + b`. The metadata carries the
//! model spec as JSON and where the weights come from.

/// The metadata keys of a model file.
pub mod keys {
    /// The task id.
    pub const TASK: &str = "cohort.task";
    /// The round whose model this is.
    pub const ROUND: &str = "cohort.round";
    /// SHA-256 of the flat weights (little-endian f32), as the round log names them.
    pub const MODEL_HASH: &str = "cohort.model_hash";
    /// The hash of the round-log entry naming the model.
    pub const LOG_ENTRY: &str = "cohort.round_log_entry";
    /// The round log's head when the file was written.
    pub const LOG_HEAD: &str = "cohort.round_log_head";
    /// The model spec, as JSON.
    pub const MODEL_SPEC: &str = "cohort.model_spec";
    /// How to read the tensors.
    pub const LAYOUT: &str = "cohort.layout";
}

/// The value of [`keys::LAYOUT`]: how a reader maps the tensors onto the model.
pub const LAYOUT_NOTE: &str = "tensors are layers.{layer}.{name} in ModelSpec::parameter_layout \
                               order; a linear weight is [in, out] (y = x @ W + b)";

/// The tensor name of a parameter block.
pub fn tensor_name(layer: usize, name: &str) -> String {
    format!("layers.{layer}.{name}")
}
