//! The simulator's view of machine learning: [`LocalTrainer`], a small trait over "train this
//! client's examples from these global weights" and "evaluate these weights".
//!
//! The engine only moves flat `f32` vectors around, so the trait keeps it independent of the
//! ML framework: `burn_trainer::BurnTrainer` (the default; feature `learning`) runs any model
//! spec through `cohort-learning`, [`crate::mlp::MlpTrainer`] implements ReLU MLPs in plain
//! Rust (`run.trainer = "builtin"`, for builds without burn), and tests use tiny deterministic
//! trainers. Implementations must be
//! deterministic for a given seed and must not depend on which thread calls them: the engine
//! trains a cohort on several threads at once.

use crate::attempt::PreparedUpdate;

/// What local training produced.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOutput {
    /// The update: local weights minus global weights.
    pub delta: Vec<f32>,
    /// Examples trained on (the client's weight in the mean).
    pub examples: usize,
    /// Mean training loss over the last epoch.
    pub loss: f32,
}

/// An evaluation of the global model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Eval {
    /// Test accuracy in [0, 1].
    pub accuracy: f32,
    /// Mean test loss.
    pub loss: f32,
}

/// Why training or evaluation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TrainError {
    /// The weight vector has the wrong length.
    #[error("weights have {got} values, the model has {expected}; use the model's own layout")]
    WrongLength {
        /// The model's parameter count.
        expected: usize,
        /// What was given.
        got: usize,
    },
    /// An index points past the dataset.
    #[error("example index {index} is past the end of the dataset ({len}); re-partition")]
    BadIndex {
        /// The index.
        index: usize,
        /// The dataset's length.
        len: usize,
    },
    /// The test set has no examples, so nothing can be evaluated.
    #[error("the test set is empty; check data.test_examples and the dataset's test split")]
    EmptyTestSet,
    /// The train and test sets do not have the same shape.
    #[error(
        "the train set has {train_features} features and {train_classes} classes, the test set          {test_features} and {test_classes}; load both from one dataset"
    )]
    ShapeMismatch {
        /// Features per training example.
        train_features: usize,
        /// Training classes.
        train_classes: u32,
        /// Features per test example.
        test_features: usize,
        /// Test classes.
        test_classes: u32,
    },
    /// The training framework failed (its error says why and what to do).
    #[error("local training failed: {0}")]
    Failed(#[source] std::sync::Arc<dyn std::error::Error + Send + Sync>),
}

/// One client's local training, as the engine hands it to [`LocalTrainer::train_many`].
#[derive(Clone, Copy, Debug)]
pub struct TrainJob<'a> {
    /// The client's index in the population.
    pub client: usize,
    /// Its training examples.
    pub indices: &'a [usize],
    /// Its training seed.
    pub seed: u64,
}

/// Local training and evaluation over flat parameter vectors.
pub trait LocalTrainer: Sync {
    /// Number of model parameters.
    fn num_params(&self) -> usize;

    /// Initial global weights, drawn from `seed`.
    fn init(&self, seed: u64) -> Vec<f32>;

    /// Trains client `client` on the training examples at `indices`, starting from `global`,
    /// with shuffling drawn from `seed`.
    fn train(
        &self,
        client: usize,
        indices: &[usize],
        global: &[f32],
        seed: u64,
    ) -> Result<TrainOutput, TrainError>;

    /// Evaluates `global` on the test set.
    fn evaluate(&self, global: &[f32]) -> Result<Eval, TrainError>;

    /// Trains every job from `global` on up to `threads` threads, hands each result to
    /// `finish` on the thread that trained it (so an update is encoded and dropped while the
    /// others train), and returns what `finish` made of them in job order. Each result must be
    /// what [`train`](Self::train) gives for the job (within float tolerance) and must not
    /// depend on `threads`. The default trains the jobs one at a time;
    /// `burn_trainer::BurnTrainer` trains dense models many clients per burn step.
    fn train_many(
        &self,
        jobs: &[TrainJob<'_>],
        global: &[f32],
        threads: usize,
        finish: &Finish<'_>,
    ) -> Vec<Option<PreparedUpdate>> {
        crate::parallel::map_ordered(jobs, threads, |job| {
            finish(job, self.train(job.client, job.indices, global, job.seed))
        })
    }
}

/// What the engine does with one client's training result (clip or encode it), on the thread
/// that trained it: `None` when the client drops out.
pub type Finish<'f> =
    dyn Fn(&TrainJob<'_>, Result<TrainOutput, TrainError>) -> Option<PreparedUpdate> + Sync + 'f;
