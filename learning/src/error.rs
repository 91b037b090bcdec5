//! The one error type of this crate: what went wrong while building, loading, training or
//! evaluating a model, with what to do about it.

use cohort_protocol::model::SpecError;
use thiserror::Error;

/// Everything that can go wrong in `cohort-learning`. None of these is a panic: a bad spec, a
/// weight vector of the wrong length or data that does not fit the model come from the network
/// or from files, and are reported.
#[derive(Debug, Error)]
pub enum LearningError {
    /// The model spec is invalid.
    #[error("invalid model spec: {0}")]
    Spec(#[from] SpecError),
    /// A flat weight vector does not have the model's parameter count.
    #[error(
        "weight vector has {actual} values but the model has {expected} parameters; send the vector built for this exact model spec"
    )]
    ParamLength {
        /// The model's parameter count.
        expected: usize,
        /// The vector's length.
        actual: usize,
    },
    /// A weight vector holds NaN or an infinity.
    #[error(
        "weight vector holds a non-finite value at index {index}; refuse the weights and fetch them again"
    )]
    NonFiniteWeight {
        /// Index of the first bad value.
        index: usize,
    },
    /// The data does not fit the model's input or output.
    #[error("data does not fit the model: {0}")]
    Data(String),
    /// There are no examples to train on or to evaluate.
    #[error("no examples to {0}; give at least one example")]
    NoExamples(&'static str),
    /// Training parameters are out of range.
    #[error("invalid training parameters: {0}")]
    Params(String),
    /// The COHORT_BACKEND variable or a backend name is not one of `auto`, `wgpu`, `flex`.
    #[error("unknown backend {0:?}; use auto, wgpu or flex")]
    UnknownBackend(String),
    /// The wgpu backend was asked for explicitly and could not start.
    #[error(
        "the wgpu backend is unavailable: {0}; install a Vulkan or OpenGL driver (Debian: mesa-vulkan-drivers) or use the flex CPU backend"
    )]
    WgpuUnavailable(WgpuStartError),
    /// The wgpu backend was asked for explicitly, but this build of the crate has no wgpu
    /// backend: it was compiled without cohort-learning's `wgpu` feature (phone builds of
    /// cohort-mobile leave it out).
    #[error(
        "this build has no wgpu backend (it was compiled without cohort-learning's `wgpu` feature); build with that feature (cohort-mobile's and cohort-edge's `wgpu` feature, on by default) or use the flex CPU backend (COHORT_BACKEND=flex or auto)"
    )]
    WgpuNotBuilt,
    /// Training was cancelled through its cancel flag.
    #[error("training was cancelled after {steps} steps")]
    Cancelled {
        /// Optimizer steps completed before the cancellation was seen.
        steps: u64,
    },
    /// Training diverged: the loss became NaN or infinite.
    #[error("training diverged (loss is {loss}) in epoch {epoch}; lower the learning rate")]
    Diverged {
        /// The non-finite loss.
        loss: f32,
        /// The epoch (from 1) where it happened.
        epoch: u32,
    },
    /// The backend failed while running or reading back a computation.
    #[error(
        "the {backend} backend failed: {message}; retry, or switch backend with COHORT_BACKEND=flex"
    )]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What it reported.
        message: String,
    },
    /// A model with this layer cannot be trained by [`crate::GroupedTrainer`] (clients stacked
    /// along a leading axis); train its clients one at a time with [`crate::LocalTrainer`].
    #[error(
        "layer {layer} ({kind}) cannot be trained with clients stacked in a group; train the clients one at a time with LocalTrainer"
    )]
    NotGroupable {
        /// The layer's index in the spec.
        layer: usize,
        /// What the layer is, and why it cannot be grouped.
        kind: &'static str,
    },
    /// The burn module does not match the spec's parameter layout. This is a bug in
    /// `cohort-learning`, never a user error.
    #[error("internal error: {0}; please report this as a bug")]
    Internal(String),
}

/// Why the wgpu runtime could not be started (the process tries once and keeps the answer).
#[derive(Clone, Debug, Error)]
pub enum WgpuStartError {
    /// No adapter could be opened (no driver, or no Vulkan/OpenGL device).
    #[error("no wgpu adapter could be opened ({message})")]
    NoAdapter {
        /// What wgpu reported.
        message: String,
    },
    /// Starting the runtime panicked inside cubecl, which reports some set-up failures so.
    #[error("the wgpu runtime panicked while starting")]
    Panicked,
    /// The adapter started but could not run or read back a 2x2 matrix product.
    #[error("adapter {adapter} could not run a probe computation ({message})")]
    ProbeFailed {
        /// The adapter's name and fingerprint.
        adapter: String,
        /// What the backend reported.
        message: String,
    },
    /// The adapter computed a wrong 2x2 matrix product.
    #[error(
        "adapter {adapter} computed a 2x2 product wrongly (got {got:?}, expected [19, 22, 43, 50])"
    )]
    WrongResult {
        /// The adapter's name and fingerprint.
        adapter: String,
        /// The four values it returned.
        got: Vec<f32>,
    },
}
