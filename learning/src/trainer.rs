//! Local training and evaluation: [`LocalTrainer`] holds one model spec built on one backend and
//! trains it from any weight vector, again and again, without rebuilding the module.
//!
//! A simulator trains about a thousand small clients per round, so the per-call path is kept
//! short: the module structure is built once, each call loads the received weights into a
//! clone of it (one host-to-device copy per parameter tensor), and metrics are accumulated on
//! the device and read back once per epoch.
//!
//! Training is deterministic for a seed on the CPU backend: the seed fixes the shuffling and
//! the dropout masks (drawn on the host), and initial weights come from
//! [`ModelSpec::initial_weights`].

use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::Module;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use cohort_protocol::model::{LayerSpec, ModelSpec};
use cohort_protocol::{OptimizerSpec, TrainingParams};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::backend::ComputeBackend;
use crate::error::LearningError;
use crate::examples::Examples;
use crate::model::{Activation, SpecModel};
use crate::params::{check_weights, concat_params, flatten_params, load_unchecked, read_vec};

/// The largest number of epochs one training call accepts.
pub const MAX_EPOCHS: u32 = 10_000;

/// Loss and accuracy over a set of examples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalMetrics {
    /// Mean cross-entropy loss.
    pub loss: f32,
    /// Fraction of examples whose highest logit is the label.
    pub accuracy: f32,
    /// The number of examples measured.
    pub num_examples: u64,
}

/// What local training produced.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingOutcome {
    /// Trained weights minus the received weights, in the flat layout.
    pub update: Vec<f32>,
    /// The number of examples trained on (once per epoch, counted once).
    pub num_examples: u64,
    /// Mean training loss of the last epoch.
    pub loss: f32,
    /// Training accuracy of the last epoch.
    pub accuracy: f32,
    /// Optimizer steps taken.
    pub steps: u64,
}

/// Where training stands, passed to the progress callback after every step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// The current epoch, from 1.
    pub epoch: u32,
    /// Epochs in total.
    pub epochs: u32,
    /// Steps done so far.
    pub step: u64,
    /// Steps in total.
    pub total_steps: u64,
    /// Set on the last step of an epoch: that epoch's training loss and accuracy.
    pub epoch_metrics: Option<EvalMetrics>,
}

/// How a model reads its input.
#[derive(Clone, Copy, Debug)]
enum InputKind {
    /// Token ids below `vocab`, for an embedding.
    Tokens { vocab: u32 },
    /// Float features.
    Dense,
}

/// Trains and evaluates one model spec on one backend, reusing the built module across calls.
#[derive(Debug)]
pub struct LocalTrainer {
    spec: ModelSpec,
    backend: ComputeBackend,
    train_device: Device,
    train_template: SpecModel,
    eval_template: SpecModel,
    loss: CrossEntropyLoss,
    num_params: usize,
    input_shape: Vec<usize>,
    input_kind: InputKind,
    eval_batch_size: usize,
    features: Vec<f32>,
    labels: Vec<u32>,
    scratch: Vec<usize>,
}

impl LocalTrainer {
    /// Validates `spec` and builds its module on `backend`.
    pub fn new(spec: &ModelSpec, backend: &ComputeBackend) -> Result<LocalTrainer, LearningError> {
        let num_params = spec.num_parameters()?;
        let device = backend.device().clone();
        let train_device = device.clone().autodiff();
        let train_template = SpecModel::from_spec(spec, &train_device)?;
        let eval_template = SpecModel::from_spec(spec, &device)?;
        if train_template.num_params() != num_params {
            return Err(LearningError::Internal(format!(
                "the burn module has {} parameters but the spec's layout has {num_params}",
                train_template.num_params()
            )));
        }
        let input_kind = match spec.layers.first() {
            Some(LayerSpec::Embedding { vocab, .. }) => InputKind::Tokens { vocab: *vocab },
            _ => InputKind::Dense,
        };
        Ok(LocalTrainer {
            spec: spec.clone(),
            backend: backend.clone(),
            loss: CrossEntropyLossConfig::new().init(&train_device),
            train_device,
            train_template,
            eval_template,
            num_params,
            input_shape: spec.input_shape.iter().map(|&d| d as usize).collect(),
            input_kind,
            eval_batch_size: 256,
            features: Vec::new(),
            labels: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// The spec this trainer was built for.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The backend it runs on.
    pub fn backend(&self) -> &ComputeBackend {
        &self.backend
    }

    /// The model's parameter count: the length of every weight vector and update.
    pub fn num_params(&self) -> usize {
        self.num_params
    }

    /// Sets the batch size used by [`evaluate`](Self::evaluate) (default 256; at least 1).
    pub fn set_eval_batch_size(&mut self, batch_size: usize) {
        self.eval_batch_size = batch_size.max(1);
    }

    /// A fresh weight vector for this spec ([`ModelSpec::initial_weights`]).
    pub fn initial_weights(&self, seed: u64) -> Result<Vec<f32>, LearningError> {
        Ok(self.spec.initial_weights(seed)?)
    }

    /// Builds the model on the evaluation device (no autodiff) with `weights` loaded.
    pub fn model_with(&self, weights: &[f32]) -> Result<SpecModel, LearningError> {
        check_weights(weights, self.num_params)?;
        Ok(load_unchecked(self.eval_template.clone(), weights))
    }

    /// Trains from `global` on `data` and returns the update (trained minus `global`).
    ///
    /// `seed` fixes the example order and dropout masks. `progress` is called after every step;
    /// setting `cancel` stops training before the next step with
    /// [`LearningError::Cancelled`]. With `proximal_mu > 0` the loss gets FedProx's term
    /// `mu / 2 * ||w - global||^2`.
    pub fn train(
        &mut self,
        global: &[f32],
        data: Examples<'_>,
        params: &TrainingParams,
        seed: u64,
        progress: &mut dyn FnMut(&Progress),
        cancel: &AtomicBool,
    ) -> Result<TrainingOutcome, LearningError> {
        check_weights(global, self.num_params)?;
        check_params(params)?;
        self.check_data(&data, "train on")?;
        let n = data.len();
        let batch_size = (params.batch_size as usize).min(n);
        let steps_per_epoch = n.div_ceil(batch_size) as u64;
        let total_steps = steps_per_epoch * u64::from(params.epochs);

        let mut model = load_unchecked(self.train_template.clone(), global);
        let mut optimizer = build_optimizer(params.optimizer);
        let lr = f64::from(params.learning_rate);
        let anchor = (params.proximal_mu > 0.0).then(|| {
            Tensor::<1>::from_data(
                TensorData::new(global.to_vec(), [global.len()]),
                &self.train_device,
            )
        });
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..n).collect();
        let mut step = 0u64;
        let device = self.train_device.clone();
        let mut last = EvalMetrics {
            loss: f32::NAN,
            accuracy: 0.0,
            num_examples: n as u64,
        };
        for epoch in 1..=params.epochs {
            order.shuffle(&mut rng);
            let mut sums: Option<(Tensor<1>, Tensor<1>)> = None;
            for batch in order.chunks(batch_size) {
                if cancel.load(Ordering::Relaxed) {
                    return Err(LearningError::Cancelled { steps: step });
                }
                let (input, targets) = self.batch(&data, batch, &device)?;
                let logits = model.forward(input, Some(&mut rng))?;
                let loss = self.loss.forward(logits.clone(), targets.clone());
                let (loss_sum, correct) = batch_stats(&logits, &loss, &targets, batch.len());
                sums = Some(match sums {
                    None => (loss_sum, correct),
                    Some((l, c)) => (l + loss_sum, c + correct),
                });
                let proximal = anchor
                    .as_ref()
                    .and_then(|anchor| Some((anchor, concat_params(&model)?)));
                let objective = match proximal {
                    Some((anchor, flat)) => {
                        let distance = (flat - anchor.clone()).powi_scalar(2).sum();
                        loss + distance * (params.proximal_mu / 2.0)
                    }
                    None => loss,
                };
                let grads = GradientsParams::from_grads(objective.backward(), &model);
                model = optimizer.step(lr, model, grads);
                step += 1;
                let epoch_done = step.is_multiple_of(steps_per_epoch);
                if epoch_done {
                    last = self.read_metrics(sums.take(), n)?;
                    if !last.loss.is_finite() {
                        return Err(LearningError::Diverged {
                            loss: last.loss,
                            epoch,
                        });
                    }
                }
                progress(&Progress {
                    epoch,
                    epochs: params.epochs,
                    step,
                    total_steps,
                    epoch_metrics: epoch_done.then_some(last),
                });
            }
        }
        let trained = flatten_params(&model)?;
        let update = trained.iter().zip(global).map(|(t, g)| t - g).collect();
        Ok(TrainingOutcome {
            update,
            num_examples: n as u64,
            loss: last.loss,
            accuracy: last.accuracy,
            steps: step,
        })
    }

    /// Loss and accuracy of `weights` on `data`, without dropout.
    pub fn evaluate(
        &mut self,
        weights: &[f32],
        data: Examples<'_>,
    ) -> Result<EvalMetrics, LearningError> {
        self.check_data(&data, "evaluate")?;
        let model = self.model_with(weights)?;
        let device = self.backend.device().clone();
        let positions: Vec<usize> = (0..data.len()).collect();
        let mut sums: Option<(Tensor<1>, Tensor<1>)> = None;
        for batch in positions.chunks(self.eval_batch_size) {
            let (input, targets) = self.batch(&data, batch, &device)?;
            let logits = model.forward(input, None)?;
            let loss = self.loss.forward(logits.clone(), targets.clone());
            let (loss_sum, correct) = batch_stats(&logits, &loss, &targets, batch.len());
            sums = Some(match sums {
                None => (loss_sum, correct),
                Some((l, c)) => (l + loss_sum, c + correct),
            });
        }
        self.read_metrics(sums, data.len())
    }

    /// The logits of `weights` on `data`, row-major `[examples, classes]`, without dropout.
    pub fn predict(
        &mut self,
        weights: &[f32],
        data: Examples<'_>,
    ) -> Result<Vec<f32>, LearningError> {
        self.check_data(&data, "predict on")?;
        let model = self.model_with(weights)?;
        let device = self.backend.device().clone();
        let positions: Vec<usize> = (0..data.len()).collect();
        let mut out = Vec::with_capacity(data.len() * self.spec.num_classes as usize);
        for batch in positions.chunks(self.eval_batch_size) {
            let (input, _) = self.batch(&data, batch, &device)?;
            let logits = model.forward(input, None)?;
            let n = logits.shape().num_elements();
            out.extend(read_vec(logits.reshape([n]))?);
        }
        Ok(out)
    }

    fn check_data(&self, data: &Examples<'_>, what: &'static str) -> Result<(), LearningError> {
        check_examples(&self.spec, &self.input_shape, data, what)
    }

    /// Gathers the examples at `positions` into an input activation and a target tensor.
    fn batch(
        &mut self,
        data: &Examples<'_>,
        positions: &[usize],
        device: &Device,
    ) -> Result<(Activation, Tensor<1, Int>), LearningError> {
        self.features.clear();
        self.labels.clear();
        data.gather(
            positions,
            &mut self.scratch,
            &mut self.features,
            &mut self.labels,
        )?;
        let b = positions.len();
        let labels: Vec<i64> = self.labels.iter().map(|&l| i64::from(l)).collect();
        let targets = Tensor::<1, Int>::from_data(TensorData::new(labels, [b]), device);
        let features = std::mem::take(&mut self.features);
        let input = match (self.input_kind, self.input_shape.as_slice()) {
            (InputKind::Tokens { vocab }, &[t]) => {
                let mut ids = Vec::with_capacity(features.len());
                for &v in &features {
                    if !(v >= 0.0 && v < vocab as f32 && v.fract() == 0.0) {
                        return Err(LearningError::Data(format!(
                            "token id {v} is not an integer below the embedding's vocabulary of {vocab}; use a spec whose vocab covers the dataset"
                        )));
                    }
                    ids.push(v as i64);
                }
                Activation::Tokens(Tensor::<2, Int>::from_data(
                    TensorData::new(ids, [b, t]),
                    device,
                ))
            }
            (_, &[f]) => {
                Activation::D2(Tensor::from_data(TensorData::new(features, [b, f]), device))
            }
            (_, &[t, f]) => Activation::D3(Tensor::from_data(
                TensorData::new(features, [b, t, f]),
                device,
            )),
            (_, &[c, h, w]) => Activation::D4(Tensor::from_data(
                TensorData::new(features, [b, c, h, w]),
                device,
            )),
            (_, shape) => {
                return Err(LearningError::Internal(format!(
                    "validated input shape {shape:?} has an unsupported rank"
                )));
            }
        };
        Ok((input, targets))
    }

    /// Reads the accumulated loss sum and correct count once, as mean loss and accuracy.
    fn read_metrics(
        &self,
        sums: Option<(Tensor<1>, Tensor<1>)>,
        n: usize,
    ) -> Result<EvalMetrics, LearningError> {
        let Some((loss_sum, correct)) = sums else {
            return Err(LearningError::NoExamples("measure"));
        };
        let values = read_vec(Tensor::cat(vec![loss_sum, correct], 0))?;
        let (loss_sum, correct) = match values.as_slice() {
            &[l, c] => (l, c),
            other => {
                return Err(LearningError::Internal(format!(
                    "metrics read back as {} values instead of 2",
                    other.len()
                )));
            }
        };
        Ok(EvalMetrics {
            loss: loss_sum / n as f32,
            accuracy: correct / n as f32,
            num_examples: n as u64,
        })
    }
}

/// Checks that `data` is not empty and fits a model with this spec and input shape.
pub(crate) fn check_examples(
    spec: &ModelSpec,
    input_shape: &[usize],
    data: &Examples<'_>,
    what: &'static str,
) -> Result<(), LearningError> {
    if data.is_empty() {
        return Err(LearningError::NoExamples(what));
    }
    let expected: usize = input_shape.iter().product();
    let feature_len: usize = data.feature_shape().iter().product();
    if feature_len != expected {
        return Err(LearningError::Data(format!(
            "examples have shape {:?} ({feature_len} values) but the model's input shape is {:?}; use a spec whose input_shape matches the dataset",
            data.feature_shape(),
            input_shape
        )));
    }
    let classes = data.num_classes();
    if classes > spec.num_classes {
        return Err(LearningError::Data(format!(
            "the dataset has {classes} classes but the model outputs {}; set num_classes to at least {classes}",
            spec.num_classes,
        )));
    }
    Ok(())
}

/// The batch's summed loss and its number of correct predictions, detached, as `[1]` tensors.
fn batch_stats(
    logits: &Tensor<2>,
    mean_loss: &Tensor<1>,
    targets: &Tensor<1, Int>,
    batch: usize,
) -> (Tensor<1>, Tensor<1>) {
    let loss_sum = mean_loss.clone().detach() * batch as f32;
    let predicted = logits.clone().detach().argmax(1).reshape([batch]);
    let correct = predicted.equal(targets.clone()).float().sum();
    (loss_sum, correct)
}

fn build_optimizer(spec: OptimizerSpec) -> ModuleOptimizer {
    match spec {
        OptimizerSpec::Sgd { momentum } => {
            let momentum = (momentum > 0.0).then(|| {
                MomentumConfig::new()
                    .with_momentum(f64::from(momentum))
                    .with_dampening(0.0)
            });
            SgdConfig::new().with_momentum(momentum).init()
        }
        OptimizerSpec::Adam { beta1, beta2 } => AdamConfig::new()
            .with_beta_1(beta1)
            .with_beta_2(beta2)
            .with_epsilon(1e-8)
            .init(),
    }
}

pub(crate) fn check_params(params: &TrainingParams) -> Result<(), LearningError> {
    let fail = |what: String| Err(LearningError::Params(what));
    if params.epochs == 0 || params.epochs > MAX_EPOCHS {
        return fail(format!(
            "epochs is {}; it must be from 1 to {MAX_EPOCHS}",
            params.epochs
        ));
    }
    if params.batch_size == 0 {
        return fail("batch_size is 0; it must be at least 1".into());
    }
    if !(params.learning_rate.is_finite() && params.learning_rate > 0.0) {
        return fail(format!(
            "learning_rate is {}; it must be a positive number",
            params.learning_rate
        ));
    }
    if !(params.proximal_mu.is_finite() && params.proximal_mu >= 0.0) {
        return fail(format!(
            "proximal_mu is {}; it must be 0 or a positive number",
            params.proximal_mu
        ));
    }
    let unit = |name: &str, v: f32| -> Result<(), LearningError> {
        if v.is_finite() && (0.0..1.0).contains(&v) {
            Ok(())
        } else {
            Err(LearningError::Params(format!(
                "{name} is {v}; it must be at least 0 and below 1"
            )))
        }
    };
    match params.optimizer {
        OptimizerSpec::Sgd { momentum } => unit("momentum", momentum),
        OptimizerSpec::Adam { beta1, beta2 } => {
            unit("beta1", beta1)?;
            unit("beta2", beta2)
        }
    }
}
