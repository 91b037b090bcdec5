//! Reading a model that `cohort-coordinator model export` wrote (a safetensors file, names in
//! [`cohort_protocol::model_file`]) back into burn: the model spec from the file's metadata, the
//! flat weights from its tensors in [`ModelSpec::parameter_layout`] order, checked against the
//! model hash the round log names, then [`ModelFile::to_module`] builds the [`SpecModel`].
//!
//! One export format serves Python (safetensors, NumPy, PyTorch) and Rust: a burn user loads
//! the same file here instead of the coordinator writing a second, burn-specific record (the
//! coordinator does not link burn).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use cohort_learning::{ComputeBackend, model_file::ModelFile};
//! let file = ModelFile::read(&std::fs::read("digits.safetensors")?)?;
//! let backend = ComputeBackend::flex();
//! let model = file.to_module(backend.device())?; // a burn Module
//! # Ok(()) }
//! ```

use burn::tensor::Device;
use cohort_protocol::model::SpecError;
use cohort_protocol::model_file::{keys, tensor_name};
use cohort_protocol::{ContentHash, ModelSpec};
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;
use thiserror::Error;

use crate::error::LearningError;
use crate::model::SpecModel;
use crate::params::load_params;

/// Why a model file could not be read.
#[derive(Debug, Error)]
pub enum ModelFileError {
    /// Not a safetensors file, or a damaged one.
    #[error(
        "not a readable safetensors file: {0}; export it again with `cohort-coordinator model export`"
    )]
    Safetensors(#[from] safetensors::SafeTensorError),
    /// A metadata key Cohort writes is missing.
    #[error(
        "the file has no {0:?} metadata: it was not written by `cohort-coordinator model export`"
    )]
    MissingMetadata(&'static str),
    /// The model spec in the metadata does not parse.
    #[error("the model spec in the file's metadata does not parse: {0}")]
    SpecJson(#[from] serde_json::Error),
    /// The model spec is not a valid model.
    #[error("the model spec in the file is invalid: {0}")]
    Spec(#[from] SpecError),
    /// A tensor of the spec's layout is missing.
    #[error("the file has no tensor {0:?}, which the model spec's layout needs")]
    MissingTensor(String),
    /// A tensor has another shape or type than the layout says.
    #[error("tensor {name:?} is {found}, the model spec's layout says F32 {expected:?}")]
    Tensor {
        /// The tensor.
        name: String,
        /// The layout's shape.
        expected: Vec<usize>,
        /// What the file holds (type and shape).
        found: String,
    },
    /// The weights are not the ones the metadata (and the round log) names.
    #[error(
        "the weights hash to {found}, the file says {expected}: the file was altered or damaged"
    )]
    HashMismatch {
        /// The hash in the metadata.
        expected: String,
        /// The hash of the tensors read.
        found: String,
    },
    /// The metadata's round is not a number.
    #[error("the file's round {0:?} is not a number")]
    Round(String),
}

/// A model file read and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFile {
    /// The model spec.
    pub spec: ModelSpec,
    /// The flat weights, in [`ModelSpec::parameter_layout`] order.
    pub weights: Vec<f32>,
    /// The task the model belongs to.
    pub task: Option<String>,
    /// The round that produced it.
    pub round: Option<u64>,
    /// The weights' hash (checked), as the round log names them.
    pub model_hash: ContentHash,
}

impl ModelFile {
    /// Reads and checks `bytes`: every tensor of the spec's layout present with its shape, and
    /// the weights hashing to the file's model hash.
    pub fn read(bytes: &[u8]) -> Result<ModelFile, ModelFileError> {
        let (_, header) = SafeTensors::read_metadata(bytes)?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |k: &'static str| meta.get(k).ok_or(ModelFileError::MissingMetadata(k));
        let spec: ModelSpec = serde_json::from_str(get(keys::MODEL_SPEC)?)?;
        let expected_hash = get(keys::MODEL_HASH)?.clone();
        let round = meta
            .get(keys::ROUND)
            .map(|r| {
                r.parse::<u64>()
                    .map_err(|_| ModelFileError::Round(r.clone()))
            })
            .transpose()?;
        let tensors = SafeTensors::deserialize(bytes)?;
        let layout = spec.parameter_layout()?;
        let mut weights = vec![0f32; spec.num_parameters()?];
        for block in &layout {
            let name = tensor_name(block.layer, block.name);
            let t = tensors
                .tensor(&name)
                .map_err(|_| ModelFileError::MissingTensor(name.clone()))?;
            if t.dtype() != Dtype::F32 || t.shape() != block.shape.as_slice() {
                return Err(ModelFileError::Tensor {
                    name,
                    expected: block.shape.clone(),
                    found: format!("{:?} {:?}", t.dtype(), t.shape()),
                });
            }
            let out = weights
                .get_mut(block.offset..block.offset + block.len())
                .ok_or_else(|| ModelFileError::MissingTensor(name.clone()))?;
            for (w, b) in out.iter_mut().zip(t.data().chunks_exact(4)) {
                *w = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        let bytes: Vec<u8> = weights.iter().flat_map(|w| w.to_le_bytes()).collect();
        let model_hash = ContentHash::of(&bytes);
        if model_hash.to_hex() != expected_hash {
            return Err(ModelFileError::HashMismatch {
                expected: expected_hash,
                found: model_hash.to_hex(),
            });
        }
        Ok(ModelFile {
            spec,
            weights,
            task: meta.get(keys::TASK).cloned(),
            round,
            model_hash,
        })
    }

    /// The model as a burn module on `device`.
    pub fn to_module(&self, device: &Device) -> Result<SpecModel, LearningError> {
        load_params(SpecModel::from_spec(&self.spec, device)?, &self.weights)
    }
}
