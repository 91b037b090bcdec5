//! [`BurnTrainer`]: the simulator's [`LocalTrainer`] over `cohort-learning`, so that simulated
//! clients train with the same burn code as the edge clients, on any
//! [`ModelSpec`](cohort_protocol::model::ModelSpec) (CNNs included), on the backend the
//! experiment names.
//!
//! A `cohort_learning::LocalTrainer` builds its module once and is reused across calls, but
//! needs `&mut self`; the engine trains a cohort on several threads through `&self`. So this
//! holds a pool of them, one per worker thread, each behind a mutex: a call takes a free one
//! (it only waits when every one is busy, which the engine's thread count avoids). Results do
//! not depend on which pool entry runs a call: every entry holds the same spec on the same
//! backend, and training is deterministic for a seed on the CPU backend.
//!
//! This is the simulator's default trainer. Built only with the `learning` cargo feature (on by
//! default).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use cohort_datasets::Dataset;
use cohort_learning::{BackendChoice, ComputeBackend, Examples, LearningError};
use cohort_protocol::TrainingParams;
use cohort_protocol::model::ModelSpec;

use crate::config::BackendName;
use crate::parallel::map_ordered;
use crate::trainer::{Eval, LocalTrainer, TrainError, TrainOutput};

/// Test examples per evaluation chunk; chunks run in parallel on the pool and are combined in
/// order, so the result does not depend on the number of threads.
const EVAL_CHUNK: usize = 512;

impl From<BackendName> for BackendChoice {
    fn from(name: BackendName) -> Self {
        match name {
            BackendName::Auto => BackendChoice::Auto,
            BackendName::Flex => BackendChoice::Flex,
            BackendName::Wgpu => BackendChoice::Wgpu,
        }
    }
}

impl From<LearningError> for TrainError {
    fn from(e: LearningError) -> Self {
        TrainError::Failed(std::sync::Arc::new(e))
    }
}

/// Local training and evaluation through `cohort-learning` (burn), one trainer per thread.
pub struct BurnTrainer {
    pool: Vec<Mutex<cohort_learning::LocalTrainer>>,
    next: AtomicUsize,
    spec: ModelSpec,
    num_params: usize,
    backend: ComputeBackend,
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    params: TrainingParams,
    threads: usize,
}

impl std::fmt::Debug for BurnTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BurnTrainer")
            .field("spec", &self.spec)
            .field("backend", &self.backend.kind())
            .field("pool", &self.pool.len())
            .finish_non_exhaustive()
    }
}

impl BurnTrainer {
    /// Resolves `backend` (`COHORT_BACKEND` overrides it), builds `threads` trainers for `spec`
    /// on it, and checks that the spec draws initial weights.
    pub fn new(
        spec: &ModelSpec,
        backend: BackendChoice,
        train: Arc<Dataset>,
        test: Arc<Dataset>,
        params: TrainingParams,
        threads: usize,
    ) -> Result<Self, TrainError> {
        let backend = ComputeBackend::select(backend)?;
        tracing::info!(
            backend = backend.kind().name(),
            adapter = backend.adapter().unwrap_or("-"),
            reason = backend.reason(),
            "burn trainer backend"
        );
        let threads = threads.max(1);
        let pool = (0..threads)
            .map(|_| cohort_learning::LocalTrainer::new(spec, &backend).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        // Proves that `init` cannot fail for this spec: weight drawing depends only on it.
        spec.initial_weights(0).map_err(LearningError::from)?;
        let num_params = spec.num_parameters().map_err(LearningError::from)?;
        Ok(Self {
            pool,
            next: AtomicUsize::new(0),
            spec: spec.clone(),
            num_params,
            backend,
            train,
            test,
            params,
            threads,
        })
    }

    /// The backend the trainers run on.
    pub fn backend(&self) -> &ComputeBackend {
        &self.backend
    }

    /// The model spec.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// A free trainer from the pool, or (when all are busy) the next one in turn, waited for.
    fn take(&self) -> MutexGuard<'_, cohort_learning::LocalTrainer> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.pool.len();
        for k in 0..n {
            match self.pool[(start + k) % n].try_lock() {
                Ok(guard) => return guard,
                Err(TryLockError::Poisoned(e)) => return e.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        self.pool[start % n]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn check_len(&self, weights: &[f32]) -> Result<(), TrainError> {
        if weights.len() == self.num_params {
            Ok(())
        } else {
            Err(TrainError::WrongLength {
                expected: self.num_params,
                got: weights.len(),
            })
        }
    }
}

impl LocalTrainer for BurnTrainer {
    fn num_params(&self) -> usize {
        self.num_params
    }

    fn init(&self, seed: u64) -> Vec<f32> {
        self.spec
            .initial_weights(seed)
            .expect("BurnTrainer::new checked that this spec draws initial weights")
    }

    fn train(
        &self,
        _client: usize,
        indices: &[usize],
        global: &[f32],
        seed: u64,
    ) -> Result<TrainOutput, TrainError> {
        self.check_len(global)?;
        if let Some(&index) = indices.iter().find(|&&i| i >= self.train.len()) {
            return Err(TrainError::BadIndex {
                index,
                len: self.train.len(),
            });
        }
        if indices.is_empty() {
            return Ok(TrainOutput {
                delta: vec![0.0; self.num_params],
                examples: 0,
                loss: 0.0,
            });
        }
        let data = Examples::subset(&self.train, indices)?;
        let cancel = AtomicBool::new(false);
        let outcome = self
            .take()
            .train(global, data, &self.params, seed, &mut |_| {}, &cancel)?;
        Ok(TrainOutput {
            delta: outcome.update,
            examples: usize::try_from(outcome.num_examples).unwrap_or(indices.len()),
            loss: outcome.loss,
        })
    }

    fn evaluate(&self, global: &[f32]) -> Result<Eval, TrainError> {
        self.check_len(global)?;
        if self.test.is_empty() {
            return Err(TrainError::EmptyTestSet);
        }
        let positions: Vec<usize> = (0..self.test.len()).collect();
        let chunks: Vec<&[usize]> = positions.chunks(EVAL_CHUNK).collect();
        let parts = map_ordered(&chunks, self.threads, |chunk| {
            let data = Examples::subset(&self.test, chunk)?;
            Ok::<_, TrainError>(self.take().evaluate(global, data)?)
        });
        let (mut loss, mut correct, mut total) = (0.0f64, 0.0f64, 0u64);
        for part in parts {
            let m = part?;
            loss += f64::from(m.loss) * m.num_examples as f64;
            correct += f64::from(m.accuracy) * m.num_examples as f64;
            total += m.num_examples;
        }
        let total = total.max(1) as f64;
        Ok(Eval {
            accuracy: (correct / total) as f32,
            loss: (loss / total) as f32,
        })
    }
}
