//! Local training behind a small trait, so the client loop does not depend on burn's types and
//! tests can substitute a trainer whose update is known exactly.
//!
//! [`BurnTrainer`] trains with `cohort-learning` on the device's examples: a dataset loaded
//! once (the CLI) or an [`ExampleSource`] streamed a batch at a time while training reads it
//! ([`SourceStream`]: the library and the bindings). It builds the model from the task plan's spec (rebuilt only when the spec
//! changes), returns trained-minus-received weights with the example count, and evaluates
//! received global weights on the same data for federated evaluation. It reports every step
//! through [`TrainControl::progress`] and stops between two steps once
//! [`TrainControl::cancel`] is set.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use cohort_datasets::Dataset;
use cohort_learning::{ComputeBackend, Examples, LearningError, LocalTrainer, Progress};
use cohort_protocol::TaskPlan;
use thiserror::Error;

use crate::host::{ExampleError, ExampleSource, SourceStream};

/// What one local training run produced.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalUpdate {
    /// Trained weights minus the received weights.
    pub update: Vec<f32>,
    /// Examples trained on (the client's weight in the mean).
    pub num_examples: u64,
    /// Training loss of the last epoch.
    pub loss: f32,
    /// Training accuracy of the last epoch.
    pub accuracy: f32,
}

/// Metrics of a model on the device's local data (federated evaluation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocalMetrics {
    /// Examples evaluated.
    pub examples: u64,
    /// Mean loss.
    pub loss: f32,
    /// Fraction classified correctly.
    pub accuracy: f32,
}

/// Why local training or evaluation failed.
#[derive(Debug, Error)]
pub enum TrainError {
    /// The device's examples cannot be used for this task.
    #[error(transparent)]
    Examples(#[from] ExampleError),
    /// The learning crate refused or failed (a bad spec, a diverged loss...).
    #[error("local training failed: {0}")]
    Learning(#[from] LearningError),
    /// Training was cancelled by a stop request.
    #[error("local training was stopped")]
    Cancelled,
    /// This trainer has nothing to evaluate on (e.g. the synthetic benchmark trainer).
    #[error("this trainer cannot evaluate: {0}")]
    Unsupported(&'static str),
    /// The training thread panicked.
    #[error("the training thread failed: {0}")]
    Panicked(String),
}

/// The training callback type.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Progress and cancellation for one training run.
#[derive(Clone, Default)]
pub struct TrainControl {
    /// Set to stop before the next step ([`TrainError::Cancelled`]).
    pub cancel: Arc<AtomicBool>,
    /// Called after every step.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for TrainControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainControl")
            .field("cancel", &self.cancel)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Trains a model update from global weights.
pub trait Trainer: Send + 'static {
    /// Local examples available (for the device's own use: since protocol 3 the check-in
    /// carries no count, and nothing of it leaves the device).
    fn num_examples(&self) -> u64;
    /// Trains from `global` following `plan`; `seed` fixes the example order.
    fn train(
        &mut self,
        plan: &TaskPlan,
        global: &[f32],
        seed: u64,
        control: &TrainControl,
    ) -> Result<LocalUpdate, TrainError>;
    /// Evaluates `weights` (the round's global model, as received) on the local data, for
    /// federated evaluation. The metrics leave the device only clipped and inside the masked
    /// vector (`cohort_task::evaluation`), so the coordinator learns only their sums.
    fn evaluate(&mut self, plan: &TaskPlan, weights: &[f32]) -> Result<LocalMetrics, TrainError>;
}

/// Where a [`BurnTrainer`]'s examples come from.
enum LocalData {
    Dataset(Dataset),
    Source(Arc<dyn ExampleSource>),
    /// Files read as the task's `[input]` says, once per task plan.
    Files {
        path: PathBuf,
        cache: Option<(TaskPlanInput, Dataset)>,
    },
}

/// What decides how files are read: the model and the task's input declaration.
type TaskPlanInput = (
    cohort_protocol::ModelSpec,
    Option<cohort_protocol::InputSpec>,
);

/// Trains with `cohort-learning` on the device's examples.
pub struct BurnTrainer {
    backend: ComputeBackend,
    data: LocalData,
    trainer: Option<LocalTrainer>,
}

impl std::fmt::Debug for BurnTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("BurnTrainer");
        match &self.data {
            LocalData::Dataset(data) => d.field("examples", &data.len()),
            LocalData::Source(_) => d.field("examples", &"from a source"),
            LocalData::Files { path, .. } => d.field("files", path),
        };
        d.finish_non_exhaustive()
    }
}

impl BurnTrainer {
    /// A trainer over `data` on `backend`.
    pub fn new(backend: ComputeBackend, data: Dataset) -> Self {
        Self {
            backend,
            data: LocalData::Dataset(data),
            trainer: None,
        }
    }

    /// A trainer over the device's own files at `path` (an image folder, a CSV, text files),
    /// read as the task's `[input]` declares ([`crate::local_data`]) when its plan arrives.
    pub fn from_files(backend: ComputeBackend, path: PathBuf) -> Self {
        Self {
            backend,
            data: LocalData::Files { path, cache: None },
            trainer: None,
        }
    }

    /// A trainer that streams `source` while it trains (a batch at a time, in a bounded
    /// cache), each batch checked against the task's input shape and label count.
    pub fn from_source(backend: ComputeBackend, source: Arc<dyn ExampleSource>) -> Self {
        Self {
            backend,
            data: LocalData::Source(source),
            trainer: None,
        }
    }
}

/// The examples for a round: a dataset (loaded, or the files read as the plan says) or the
/// host's source, streamed.
enum RoundData<'a> {
    Dataset(&'a Dataset),
    Stream(Box<SourceStream<'a>>),
}

impl RoundData<'_> {
    fn examples(&self) -> Examples<'_> {
        match self {
            RoundData::Dataset(d) => Examples::all(d),
            RoundData::Stream(s) => Examples::stream(s.as_ref()),
        }
    }

    /// The learning crate's error, or the source's own typed error when the stream failed.
    fn error(&self, e: LearningError) -> TrainError {
        match (self, e) {
            (_, LearningError::Cancelled { .. }) => TrainError::Cancelled,
            (RoundData::Stream(s), e) => match s.take_failure() {
                Some(failure) => TrainError::Examples(failure),
                None => TrainError::Learning(e),
            },
            (RoundData::Dataset(_), e) => TrainError::Learning(e),
        }
    }
}

/// The examples for `plan`: the dataset, the source (streamed), or the files (read once per
/// model and input declaration).
fn examples<'a>(data: &'a mut LocalData, plan: &TaskPlan) -> Result<RoundData<'a>, TrainError> {
    match data {
        LocalData::Files { path, cache } => {
            let key = (plan.model.clone(), plan.input.clone());
            if cache.as_ref().is_none_or(|(k, _)| *k != key) {
                *cache = None;
                let d = crate::local_data::load(path, &plan.model, plan.input.as_ref())
                    .map_err(ExampleError::from)?;
                *cache = Some((key, d));
            }
            match cache {
                Some((_, d)) => Ok(RoundData::Dataset(d)),
                None => Err(ExampleError::NoExamples.into()),
            }
        }
        LocalData::Dataset(d) => Ok(RoundData::Dataset(d)),
        LocalData::Source(s) => {
            let source: &'a dyn ExampleSource = &**s;
            let shape: Vec<usize> = plan.model.input_shape.iter().map(|&d| d as usize).collect();
            Ok(RoundData::Stream(Box::new(SourceStream::open(
                source,
                &shape,
                plan.model.num_classes,
            )?)))
        }
    }
}

/// The trainer of the plan's model in `slot`, built when the spec changed.
fn trainer_for<'a>(
    slot: &'a mut Option<LocalTrainer>,
    backend: &ComputeBackend,
    plan: &TaskPlan,
) -> Result<&'a mut LocalTrainer, TrainError> {
    if slot.as_ref().is_none_or(|t| t.spec() != &plan.model) {
        *slot = Some(LocalTrainer::new(&plan.model, backend)?);
    }
    slot.as_mut()
        .ok_or_else(|| TrainError::Panicked("no model was built".into()))
}

impl Trainer for BurnTrainer {
    fn num_examples(&self) -> u64 {
        match &self.data {
            LocalData::Dataset(d) => d.len() as u64,
            // A failing source is reported when training reads it.
            LocalData::Source(s) => s.count().unwrap_or(0),
            // Known once the first plan said how to read the files.
            LocalData::Files { cache, .. } => cache.as_ref().map_or(0, |(_, d)| d.len() as u64),
        }
    }

    fn train(
        &mut self,
        plan: &TaskPlan,
        global: &[f32],
        seed: u64,
        control: &TrainControl,
    ) -> Result<LocalUpdate, TrainError> {
        let data = examples(&mut self.data, plan)?;
        let trainer = trainer_for(&mut self.trainer, &self.backend, plan)?;
        let mut progress = |p: &Progress| {
            if let Some(f) = &control.progress {
                f(p);
            }
        };
        let out = trainer
            .train(
                global,
                data.examples(),
                &plan.training,
                seed,
                &mut progress,
                &control.cancel,
            )
            .map_err(|e| data.error(e))?;
        Ok(LocalUpdate {
            update: out.update,
            num_examples: out.num_examples,
            loss: out.loss,
            accuracy: out.accuracy,
        })
    }

    fn evaluate(&mut self, plan: &TaskPlan, weights: &[f32]) -> Result<LocalMetrics, TrainError> {
        let data = examples(&mut self.data, plan)?;
        if data.examples().is_empty() {
            return Err(ExampleError::NoExamples.into());
        }
        let trainer = trainer_for(&mut self.trainer, &self.backend, plan)?;
        let m = trainer
            .evaluate(weights, data.examples())
            .map_err(|e| data.error(e))?;
        Ok(LocalMetrics {
            examples: m.num_examples,
            loss: m.loss,
            accuracy: m.accuracy,
        })
    }
}
