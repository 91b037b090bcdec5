//! Server-side evaluation on a held-out dataset, through burn's CPU backend: the
//! [`Evaluator`] the loopback coordinators (demo, tests, the simulator's live mode) use.

use std::sync::Mutex;

use cohort_coordinator::scheduler::{EvaluationError, Evaluator};
use cohort_datasets::Dataset;
use cohort_learning::{ComputeBackend, Examples, LocalTrainer};
use cohort_protocol::ModelSpec;

/// Server-side evaluation on a held-out dataset.
pub struct DatasetEvaluator {
    trainer: Mutex<LocalTrainer>,
    data: Dataset,
}

impl DatasetEvaluator {
    /// Evaluates `spec` models on `data` with the CPU backend.
    pub fn new(spec: &ModelSpec, data: Dataset) -> anyhow::Result<Self> {
        Ok(Self {
            trainer: Mutex::new(LocalTrainer::new(spec, &ComputeBackend::flex())?),
            data,
        })
    }
}

impl Evaluator for DatasetEvaluator {
    fn evaluate(&self, weights: &[f32]) -> Result<(f32, f32), EvaluationError> {
        let mut t = self.trainer.lock().unwrap_or_else(|p| p.into_inner());
        t.evaluate(weights, Examples::all(&self.data))
            .map(|m| (m.loss, m.accuracy))
            .map_err(|e| EvaluationError(Box::new(e)))
    }
}
