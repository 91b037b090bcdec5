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
//! 4. [`GroupedTrainer::train_group`] trains many clients of a dense model in one burn step
//!    (parameters stacked along a leading axis, batched matrix products), each with the result
//!    `LocalTrainer::train` would give it within float tolerance; the simulator's default path.
//!    [`GroupedTrainer::supports`] says whether a spec can be grouped.
//! 5. [`ModelSpec::initial_weights`] draws a model's first weights from a seed; [`flatten_params`] and
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
//! This crate enables burn's `std`, `flex`, `autodiff` and `optim` features, plus `wgpu` with
//! its own `wgpu` feature, and no others: not `train` (it pulls in a dashboard), not `cpu`
//! (cubecl-cpu downloads LLVM while it builds), not `vulkan`, and none of burn's defaults:
//! `fusion` and `autotune` stay off, which also keeps cubecl's SQLite-based autotune cache
//! (`turso`) out of the build.
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `wgpu` | on | burn's wgpu backend: [`BackendChoice::Wgpu`], and [`BackendChoice::Auto`] on a hardware adapter |
//!
//! Without `wgpu` the crate trains and evaluates on flex only, with the same API:
//! [`BackendChoice::Auto`] picks flex ("built without the wgpu feature") and
//! [`BackendChoice::Wgpu`] (or `COHORT_BACKEND=wgpu`) is [`LearningError::WgpuNotBuilt`]. The
//! wgpu stack (cubecl and its kernels, naga, wgpu-core) is most of a release library's size, so
//! the phone build of cohort-mobile leaves it out (`mobile/README.md`). The workspace's entry
//! for this crate has `default-features = false`: a member that wants wgpu enables it
//! (`cohort-edge`'s and `cohort-mobile`'s own `wgpu` features, on by default, forward to it).
//!
//! With exactly these features, wgpu runs on Mesa's lavapipe (Debian 12's
//! `mesa-vulkan-drivers` 22.3.6, adapter "llvmpipe (LLVM 15.0.6, 256 bits)", kernels compiled
//! to SPIR-V): training and evaluation give the same metrics as flex, and forward passes agree
//! with flex to about 1e-7. burn 0.22.1 with its fusion and autotune features was seen to
//! crash (SIGSEGV) in the fusion matmul autotuner on the same driver; that code is not built
//! here. A crash in a driver cannot be caught, so keep these features off.
//! Tests that need wgpu print `SKIPPED` with the reason when no adapter exists, and fail
//! instead when `COHORT_REQUIRE_WGPU=1`.

pub mod backend;
pub mod error;
pub mod examples;
pub mod grouped;
pub mod model;
pub mod model_file;
pub mod params;
pub mod trainer;

pub use backend::{BACKEND_ENV, BackendChoice, BackendKind, ComputeBackend};
pub use error::{LearningError, WgpuStartError};
pub use examples::{ExampleStream, Examples};
pub use grouped::{GroupMember, GroupedTrainer};
pub use model::SpecModel;
pub use params::{flatten_params, load_params};
pub use trainer::{EvalMetrics, LocalTrainer, Progress, TrainingOutcome};

pub use cohort_protocol::model::{LayerSpec, ModelSpec, ParamBlock, ShapeSummary, SpecError};
