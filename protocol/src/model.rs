//! Declarative model specifications, built into burn modules at run time by `cohort-learning`.
//!
//! A model owner ships a new architecture without a new app release: the spec travels in the
//! task plan. Validation (shapes, sizes) lives here, so the coordinator refuses a bad task
//! before any client sees it.

use serde::{Deserialize, Serialize};

/// One layer of a sequential model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LayerSpec {
    /// Fully connected layer.
    Linear {
        /// Output features.
        out: u32,
    },
    /// Rectified linear unit.
    Relu,
}

/// A sequential model: input shape, layers, number of classes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Shape of one example, without the batch dimension.
    pub input_shape: Vec<u32>,
    /// The layers, in order.
    pub layers: Vec<LayerSpec>,
    /// Number of output classes.
    pub num_classes: u32,
}
