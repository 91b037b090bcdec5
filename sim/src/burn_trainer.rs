//! [`BurnTrainer`]: the simulator's [`LocalTrainer`] over `cohort-learning`, so that simulated
//! clients train with the same burn code as the edge clients, on any
//! [`ModelSpec`] (CNNs included), on the backend the
//! experiment names.
//!
//! A `cohort_learning::LocalTrainer` builds its module once and is reused across calls, but
//! needs `&mut self`; the engine trains a cohort on several threads through `&self`. So this
//! holds a pool of them, one per worker thread, each behind a mutex: a call takes a free one
//! (it only waits when every one is busy, which the engine's thread count avoids). Results do
//! not depend on which pool entry runs a call: every entry holds the same spec on the same
//! backend, and training is deterministic for a seed on the CPU backend.
//!
//! **Many clients per burn step.** On a dense model (linear, ReLU, dropout and flatten layers)
//! [`LocalTrainer::train_many`] trains the cohort in groups of `run.group_size` clients with
//! `cohort_learning::GroupedTrainer` (parameters stacked along a leading axis, batched matrix
//! products), so burn's cost per operation is paid once per group rather than once per client.
//! The clients are sorted by their step count (then by cohort position) before they are cut
//! into groups, so a group's clients finish together and little padding is computed; groups are
//! formed the same way whatever the thread count, and the groups are what is spread over the
//! threads. Other models (convolutions, LSTMs, embeddings) fall back to training one client at a
//! time ([`BurnTrainer::grouped`] says which path is taken). Each client's result equals its
//! separate training within float tolerance (`cohort-learning`'s `tests/grouped.rs`).
//!
//! This is the simulator's default trainer. Built only with the `learning` cargo feature (on by
//! default).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use cohort_datasets::Dataset;
use cohort_learning::{
    BackendChoice, ComputeBackend, Examples, GroupMember, GroupedTrainer, LearningError,
};
use cohort_protocol::TrainingParams;
use cohort_protocol::model::ModelSpec;

use crate::attempt::PreparedUpdate;
use crate::config::BackendName;
use crate::parallel::map_ordered;
use crate::trainer::{Eval, Finish, LocalTrainer, TrainError, TrainJob, TrainOutput};

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
    /// One grouped trainer per thread, when the model can be grouped and `group_size > 1`.
    grouped: Vec<Mutex<GroupedTrainer>>,
    group_size: usize,
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
            .field("group_size", &self.grouped().then_some(self.group_size))
            .finish_non_exhaustive()
    }
}

impl BurnTrainer {
    /// Resolves `backend` (`COHORT_BACKEND` overrides it), builds `threads` trainers for `spec`
    /// on it, and checks that the spec draws initial weights. With `group_size > 1` and a
    /// dense model, clients train `group_size` at a time (see the [module docs](self)).
    pub fn new(
        spec: &ModelSpec,
        backend: BackendChoice,
        train: Arc<Dataset>,
        test: Arc<Dataset>,
        params: TrainingParams,
        threads: usize,
        group_size: usize,
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
        let grouped = match GroupedTrainer::supports(spec) {
            Ok(()) if group_size > 1 => (0..threads)
                .map(|_| GroupedTrainer::new(spec, &backend).map(Mutex::new))
                .collect::<Result<Vec<_>, _>>()?,
            Ok(()) => Vec::new(),
            Err(reason) => {
                tracing::info!(%reason, "clients train one at a time");
                Vec::new()
            }
        };
        // Proves that `init` cannot fail for this spec: weight drawing depends only on it.
        spec.initial_weights(0).map_err(LearningError::from)?;
        let num_params = spec.num_parameters().map_err(LearningError::from)?;
        Ok(Self {
            pool,
            next: AtomicUsize::new(0),
            grouped,
            group_size: group_size.max(1),
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

    /// Whether clients train many per burn step (a dense model and `group_size > 1`) rather
    /// than one at a time.
    pub fn grouped(&self) -> bool {
        !self.grouped.is_empty()
    }

    /// A free trainer from the pool, or (when all are busy) the next one in turn, waited for.
    fn take(&self) -> MutexGuard<'_, cohort_learning::LocalTrainer> {
        take_from(&self.pool, &self.next)
    }

    /// Trains the jobs at `positions` (of `jobs`) as one group and finishes each.
    fn train_group(
        &self,
        jobs: &[TrainJob<'_>],
        positions: &[usize],
        global: &[f32],
        finish: &Finish<'_>,
    ) -> Vec<Option<PreparedUpdate>> {
        // Jobs that cannot join the group: no examples (a zero update, as `train` gives) or an
        // index past the dataset (an error).
        let mut done: Vec<Option<Option<PreparedUpdate>>> =
            positions.iter().map(|_| None).collect();
        let mut members = Vec::with_capacity(positions.len());
        let mut slots = Vec::with_capacity(positions.len());
        for (slot, &p) in positions.iter().enumerate() {
            let job = &jobs[p];
            match self.check_indices(job.indices) {
                Err(e) => done[slot] = Some(finish(job, Err(e))),
                Ok(()) if job.indices.is_empty() => {
                    done[slot] = Some(finish(job, Ok(self.empty_output())));
                }
                Ok(()) => match Examples::subset(&self.train, job.indices) {
                    Ok(data) => {
                        members.push(GroupMember {
                            data,
                            seed: job.seed,
                        });
                        slots.push(slot);
                    }
                    Err(e) => done[slot] = Some(finish(job, Err(e.into()))),
                },
            }
        }
        if !members.is_empty() {
            let outcomes =
                take_from(&self.grouped, &self.next).train_group(global, &members, &self.params);
            match outcomes {
                Ok(outcomes) => {
                    for (&slot, outcome) in slots.iter().zip(outcomes) {
                        let job = &jobs[positions[slot]];
                        let result = outcome.map_err(TrainError::from).map(|o| TrainOutput {
                            examples: usize::try_from(o.num_examples).unwrap_or(job.indices.len()),
                            delta: o.update,
                            loss: o.loss,
                        });
                        done[slot] = Some(finish(job, result));
                    }
                }
                Err(e) => {
                    let e = TrainError::from(e);
                    for &slot in &slots {
                        done[slot] = Some(finish(&jobs[positions[slot]], Err(e.clone())));
                    }
                }
            }
        }
        done.into_iter()
            .map(|d| d.expect("every job of the group is finished"))
            .collect()
    }

    fn check_indices(&self, indices: &[usize]) -> Result<(), TrainError> {
        match indices.iter().find(|&&i| i >= self.train.len()) {
            Some(&index) => Err(TrainError::BadIndex {
                index,
                len: self.train.len(),
            }),
            None => Ok(()),
        }
    }

    fn empty_output(&self) -> TrainOutput {
        TrainOutput {
            delta: vec![0.0; self.num_params],
            examples: 0,
            loss: 0.0,
        }
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
        self.check_indices(indices)?;
        if indices.is_empty() {
            return Ok(self.empty_output());
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

    fn train_many(
        &self,
        jobs: &[TrainJob<'_>],
        global: &[f32],
        threads: usize,
        finish: &Finish<'_>,
    ) -> Vec<Option<PreparedUpdate>> {
        let one_at_a_time = || {
            map_ordered(jobs, threads, |job| {
                finish(job, self.train(job.client, job.indices, global, job.seed))
            })
        };
        if !self.grouped() || jobs.len() < 2 || self.check_len(global).is_err() {
            return one_at_a_time();
        }
        // Clients with the same number of steps train together; ties keep cohort order.
        let batch = self.params.batch_size.max(1) as usize;
        let steps = |n: usize| n.div_ceil(batch.min(n.max(1)));
        let mut order: Vec<usize> = (0..jobs.len()).collect();
        order.sort_by_key(|&i| (steps(jobs[i].indices.len()), i));
        let groups: Vec<&[usize]> = order.chunks(self.group_size).collect();
        let done = map_ordered(&groups, threads, |group| {
            self.train_group(jobs, group, global, finish)
        });
        let mut out: Vec<Option<Option<PreparedUpdate>>> = jobs.iter().map(|_| None).collect();
        for (group, results) in groups.iter().zip(done) {
            for (&i, r) in group.iter().zip(results) {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.expect("every job is in one group"))
            .collect()
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

/// A free entry of `pool`, or (when all are busy) the next one in turn, waited for.
fn take_from<'p, T>(pool: &'p [Mutex<T>], next: &AtomicUsize) -> MutexGuard<'p, T> {
    let start = next.fetch_add(1, Ordering::Relaxed);
    let n = pool.len();
    for k in 0..n {
        match pool[(start + k) % n].try_lock() {
            Ok(guard) => return guard,
            Err(TryLockError::Poisoned(e)) => return e.into_inner(),
            Err(TryLockError::WouldBlock) => {}
        }
    }
    pool[start % n].lock().unwrap_or_else(|e| e.into_inner())
}
