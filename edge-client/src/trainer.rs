//! Local training behind a small trait, so the client loop does not depend on burn's types and
//! tests can substitute a trainer whose update is known exactly.
//!
//! [`BurnTrainer`] trains with `cohort-learning` on a local dataset: it builds the model from the
//! task plan's spec (rebuilt only when the spec changes) and returns trained-minus-received
//! weights with the example count, and evaluates received global weights on the same local
//! data for federated evaluation.

use std::sync::atomic::AtomicBool;

use cohort_datasets::Dataset;
use cohort_learning::{ComputeBackend, Examples, LocalTrainer};
use cohort_protocol::TaskPlan;

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

/// Trains a model update from global weights.
pub trait Trainer: Send + 'static {
    /// Local examples available (reported at check-in).
    fn num_examples(&self) -> u64;
    /// Trains from `global` following `plan`; `seed` fixes the example order.
    fn train(&mut self, plan: &TaskPlan, global: &[f32], seed: u64) -> Result<LocalUpdate, String>;
    /// Evaluates `weights` (the round's global model, as received) on the local data, for
    /// federated evaluation. The metrics are sent to the coordinator in the clear.
    fn evaluate(&mut self, plan: &TaskPlan, weights: &[f32]) -> Result<LocalMetrics, String>;
}

/// Trains with `cohort-learning` on a local dataset.
pub struct BurnTrainer {
    backend: ComputeBackend,
    data: Dataset,
    trainer: Option<LocalTrainer>,
}

impl std::fmt::Debug for BurnTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BurnTrainer")
            .field("examples", &self.data.len())
            .finish_non_exhaustive()
    }
}

impl BurnTrainer {
    /// A trainer over `data` on `backend`.
    pub fn new(backend: ComputeBackend, data: Dataset) -> Self {
        Self {
            backend,
            data,
            trainer: None,
        }
    }
}

/// The trainer of the plan's model in `slot`, built when the spec changed.
fn trainer_for<'a>(
    slot: &'a mut Option<LocalTrainer>,
    backend: &ComputeBackend,
    plan: &TaskPlan,
) -> Result<&'a mut LocalTrainer, String> {
    if slot.as_ref().is_none_or(|t| t.spec() != &plan.model) {
        *slot = Some(
            LocalTrainer::new(&plan.model, backend)
                .map_err(|e| format!("cannot build the task's model: {e}"))?,
        );
    }
    slot.as_mut()
        .ok_or_else(|| "no model was built".to_string())
}

impl Trainer for BurnTrainer {
    fn num_examples(&self) -> u64 {
        self.data.len() as u64
    }

    fn train(&mut self, plan: &TaskPlan, global: &[f32], seed: u64) -> Result<LocalUpdate, String> {
        let trainer = trainer_for(&mut self.trainer, &self.backend, plan)?;
        let cancel = AtomicBool::new(false);
        let out = trainer
            .train(
                global,
                Examples::all(&self.data),
                &plan.training,
                seed,
                &mut |_| {},
                &cancel,
            )
            .map_err(|e| format!("local training failed: {e}"))?;
        Ok(LocalUpdate {
            update: out.update,
            num_examples: out.num_examples,
            loss: out.loss,
            accuracy: out.accuracy,
        })
    }

    fn evaluate(&mut self, plan: &TaskPlan, weights: &[f32]) -> Result<LocalMetrics, String> {
        if self.data.is_empty() {
            return Err("no local examples to evaluate on".into());
        }
        let trainer = trainer_for(&mut self.trainer, &self.backend, plan)?;
        let m = trainer
            .evaluate(weights, Examples::all(&self.data))
            .map_err(|e| format!("local evaluation failed: {e}"))?;
        Ok(LocalMetrics {
            examples: m.num_examples,
            loss: m.loss,
            accuracy: m.accuracy,
        })
    }
}
