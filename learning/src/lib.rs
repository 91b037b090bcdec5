//! # cohort-learning
//!
//! On-device learning for Cohort: it turns a declarative [`ModelSpec`] into a burn module at
//! run time (so a model owner launches a new architecture without a new app release), moves
//! parameters to and from one flat `Vec<f32>` in a fixed layout, and runs local training and
//! evaluation. The edge client, the simulator and the coordinator (for server-side evaluation)
//! all use it.
//!
//! It is not a dataset library (that is `cohort-datasets`, which this crate reads through
//! [`Examples`]), and it knows nothing of rounds, aggregation or the network.
//!
//! ## Entry points
//!
//! 1. [`ComputeBackend::select`] picks the backend once, at the edge of the program: burn's
//!    wgpu backend on a hardware adapter, otherwise burn's `flex` CPU backend, and logs which
//!    and why (see [`backend`]). `COHORT_BACKEND=auto|wgpu|flex` overrides it.
//! 2. [`LocalTrainer::new`] validates a spec and builds its module on that backend.
//! 3. [`LocalTrainer::train`] trains from received weights and returns a
//!    [`TrainingOutcome`]: the update (trained minus received), the example count, and the
//!    last epoch's loss and accuracy. It reports [`Progress`] after each step and stops when
//!    its cancel flag is set. [`LocalTrainer::evaluate`] measures loss and accuracy.
//! 4. [`initial_weights`] draws a model's first weights from a seed; [`flatten_params`] and
//!    [`load_params`] convert between a [`SpecModel`] and the flat layout.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use cohort_learning::{BackendChoice, ComputeBackend, Examples, LocalTrainer};
//! use cohort_protocol::{ModelSpec, OptimizerSpec, TrainingParams};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let digits = cohort_datasets::embedded_digits()?;
//! let backend = ComputeBackend::select(BackendChoice::Auto)?;
//! let mut trainer = LocalTrainer::new(&ModelSpec::digits_mlp(), &backend)?;
//! let global = trainer.initial_weights(42)?;
//! let params = TrainingParams {
//!     epochs: 5,
//!     batch_size: 32,
//!     learning_rate: 0.1,
//!     optimizer: OptimizerSpec::Sgd { momentum: 0.9 },
//!     proximal_mu: 0.0,
//! };
//! let cancel = AtomicBool::new(false);
//! let outcome = trainer.train(&global, Examples::all(&digits.train), &params, 1, &mut |_| {}, &cancel)?;
//! let trained: Vec<f32> = global.iter().zip(&outcome.update).map(|(g, u)| g + u).collect();
//! let test = trainer.evaluate(&trained, Examples::all(&digits.test))?;
//! println!("test accuracy {:.3}", test.accuracy);
//! # Ok(())
//! # }
//! ```
//!
//! ## Backends and build features
//!
//! burn 0.22 chooses the backend through the [`Device`](burn::tensor::Device) at run time.
//! This crate enables burn's `std`, `flex`, `wgpu`, `autodiff` and `optim` features only:
//! not `train` (it pulls in a dashboard), not `cpu` (cubecl-cpu downloads LLVM while it
//! builds), not `vulkan` (SPIR-V kernels crash lavapipe), and none of burn's defaults (`fusion`
//! and `autotune` stay off, which also keeps cubecl's SQLite-based cache out of the build).

pub mod backend;
pub mod error;
pub mod examples;
pub mod model;
pub mod params;
pub mod trainer;

pub use backend::{BACKEND_ENV, BackendChoice, BackendKind, ComputeBackend};
pub use error::LearningError;
pub use examples::Examples;
pub use model::SpecModel;
pub use params::{flatten_params, initial_weights, load_params};
pub use trainer::{EvalMetrics, LocalTrainer, Progress, TrainingOutcome};

pub use cohort_protocol::model::{LayerSpec, ModelSpec, ParamBlock, ShapeSummary, SpecError};
