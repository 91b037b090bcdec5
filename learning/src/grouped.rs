//! [`GroupedTrainer`]: many clients trained in one burn step.
//!
//! A simulator trains about a thousand small clients per round, and on a tiny model burn's cost
//! per operation (dispatch, autodiff bookkeeping, allocation: about 290 µs per training step of
//! the digits MLP, against about 55 µs for plain Rust) dwarfs the arithmetic. As pfl-research
//! and FedJAX do with vectorised clients, this trainer stacks the parameters of G clients along
//! a leading axis (`[G, in, out]` weights, `[G, 1, out]` biases) and runs one batched matrix
//! product per layer (`matmul` on rank-3 tensors, one gemm per client inside the backend), so
//! each operation's overhead is paid once per group instead of once per client.
//!
//! **Equivalence.** Each client's result equals its separate training by
//! [`LocalTrainer::train`](crate::LocalTrainer::train) within float tolerance:
//! - the objective is the sum over clients of each client's mean batch loss (plus each
//!   client's FedProx term), so the gradient with respect to one client's parameters is that
//!   client's own gradient;
//! - each client keeps its own example order and dropout masks, drawn from its own seed in the
//!   same sequence as `LocalTrainer` draws them (shuffle at the start of each of its epochs,
//!   then one mask per dropout layer per step);
//! - clients of unequal sizes: the batch axis is padded to the group's largest batch, padded
//!   rows have zero input and zero loss weight, and each real row is weighted 1/b for a batch
//!   of b; a client whose steps are done is masked out of the optimizer update (its parameters
//!   and optimizer state are kept, not stepped with a zero gradient, which momentum would
//!   move). Callers group clients of similar step counts to waste little padding.
//! - the optimizers are burn's SGD (with momentum, dampening 0) and Adam (epsilon 1e-8),
//!   written out over the stacked tensors with the same formulas.
//!
//! **Which models.** Dense models only: linear, ReLU, dropout and flatten layers over float
//! inputs. A model with a convolution, pooling, embedding or LSTM layer, or a linear layer over
//! a sequence (`[T, F]` per example), is refused with [`LearningError::NotGroupable`] by
//! [`GroupedTrainer::supports`] and [`GroupedTrainer::new`]; train its clients one at a time
//! with [`LocalTrainer`](crate::LocalTrainer) instead (the simulator does this by itself).
//!
//! Progress callbacks and cancellation are not offered: the simulator, the only user, needs
//! neither. Divergence is reported per client (its last epoch's loss is not finite).

use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use cohort_protocol::model::{LayerSpec, ModelSpec};
use cohort_protocol::{OptimizerSpec, TrainingParams};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::backend::ComputeBackend;
use crate::error::LearningError;
use crate::examples::Examples;
use crate::params::{check_weights, read_vec};
use crate::trainer::{TrainingOutcome, check_examples, check_params};

/// One operation of a groupable model.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// A linear layer; its weight `[input, output]` starts at `offset` in the flat layout, its
    /// bias `[output]` right after.
    Linear {
        input: usize,
        output: usize,
        offset: usize,
    },
    Relu,
    /// Dropout over activations of `width` values per example.
    Dropout {
        prob: f64,
        width: usize,
    },
}

/// One client of a group: its examples and its training seed.
#[derive(Clone, Copy, Debug)]
pub struct GroupMember<'a> {
    /// The client's examples.
    pub data: Examples<'a>,
    /// The seed of its example order and dropout masks (as for `LocalTrainer::train`).
    pub seed: u64,
}

/// Trains groups of clients of one dense model spec together. See the [module docs](self).
#[derive(Debug)]
pub struct GroupedTrainer {
    spec: ModelSpec,
    device: Device,
    train_device: Device,
    ops: Vec<Op>,
    input_shape: Vec<usize>,
    input_len: usize,
    num_classes: usize,
    num_params: usize,
    features: Vec<f32>,
    labels: Vec<u32>,
    scratch: Vec<usize>,
}

/// A client's place in the group while it trains.
struct Lane {
    /// Index into the caller's members.
    member: usize,
    n: usize,
    batch: usize,
    steps_per_epoch: usize,
    total_steps: usize,
    rng: ChaCha8Rng,
    order: Vec<usize>,
}

/// The stacked parameters of one linear layer and their optimizer state.
struct Stacked {
    weight: Tensor<3>,
    bias: Tensor<3>,
    /// SGD velocity, or Adam's first moment.
    first: Option<(Tensor<3>, Tensor<3>)>,
    /// Adam's second moment.
    second: Option<(Tensor<3>, Tensor<3>)>,
}

impl GroupedTrainer {
    /// Whether `spec` can be trained in groups: `Ok` for dense models, otherwise
    /// [`LearningError::NotGroupable`] naming the first layer that cannot be (or the spec's
    /// own validation error).
    pub fn supports(spec: &ModelSpec) -> Result<(), LearningError> {
        plan(spec).map(|_| ())
    }

    /// Validates `spec`, checks that it can be grouped, and prepares to train it on `backend`.
    pub fn new(spec: &ModelSpec, backend: &ComputeBackend) -> Result<Self, LearningError> {
        let ops = plan(spec)?;
        let num_params = spec.num_parameters()?;
        let device = backend.device().clone();
        let input_shape: Vec<usize> = spec.input_shape.iter().map(|&d| d as usize).collect();
        Ok(Self {
            spec: spec.clone(),
            train_device: device.clone().autodiff(),
            device,
            ops,
            input_len: input_shape.iter().product(),
            input_shape,
            num_classes: spec.num_classes as usize,
            num_params,
            features: Vec::new(),
            labels: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// The spec this trainer was built for.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The model's parameter count.
    pub fn num_params(&self) -> usize {
        self.num_params
    }

    /// Trains every member from `global` with `params`, all in one group, and returns each
    /// member's outcome in order: what [`LocalTrainer::train`](crate::LocalTrainer::train)
    /// would return for it within float tolerance. A member whose data does not fit gets its
    /// own error and the others train; a bad `global` or `params` fails the whole call.
    pub fn train_group(
        &mut self,
        global: &[f32],
        members: &[GroupMember<'_>],
        params: &TrainingParams,
    ) -> Result<Vec<Result<TrainingOutcome, LearningError>>, LearningError> {
        check_weights(global, self.num_params)?;
        check_params(params)?;
        let mut results: Vec<Option<Result<TrainingOutcome, LearningError>>> =
            members.iter().map(|_| None).collect();
        let mut lanes = Vec::with_capacity(members.len());
        for (i, m) in members.iter().enumerate() {
            if let Err(e) = check_examples(&self.spec, &self.input_shape, &m.data, "train on") {
                results[i] = Some(Err(e));
                continue;
            }
            let n = m.data.len();
            let batch = (params.batch_size as usize).min(n);
            let steps_per_epoch = n.div_ceil(batch);
            lanes.push(Lane {
                member: i,
                n,
                batch,
                steps_per_epoch,
                total_steps: steps_per_epoch * params.epochs as usize,
                rng: ChaCha8Rng::seed_from_u64(m.seed),
                order: (0..n).collect(),
            });
        }
        if !lanes.is_empty() {
            let outcomes = self.train_lanes(global, members, &mut lanes, params)?;
            for (lane, outcome) in lanes.iter().zip(outcomes) {
                results[lane.member] = Some(outcome);
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every member has a result"))
            .collect())
    }

    fn train_lanes(
        &mut self,
        global: &[f32],
        members: &[GroupMember<'_>],
        lanes: &mut [Lane],
        params: &TrainingParams,
    ) -> Result<Vec<Result<TrainingOutcome, LearningError>>, LearningError> {
        let g = lanes.len();
        let rows = lanes.iter().map(|l| l.batch).max().unwrap_or(1);
        let steps = lanes.iter().map(|l| l.total_steps).max().unwrap_or(0);
        let (f, c) = (self.input_len, self.num_classes);
        let lr = f64::from(params.learning_rate);
        let mu = params.proximal_mu;

        let mut layers: Vec<Stacked> = self
            .linears()
            .map(|(input, output, offset)| {
                let w = &global[offset..offset + input * output];
                let b = &global[offset + input * output..offset + input * output + output];
                Stacked {
                    weight: self.stack(w, g, [input, output]),
                    bias: self.stack(b, g, [1, output]),
                    first: None,
                    second: None,
                }
            })
            .collect();
        // FedProx anchors: the global parameters, broadcast over the group.
        let anchors: Vec<(Tensor<3>, Tensor<3>)> = if mu > 0.0 {
            self.linears()
                .map(|(input, output, offset)| {
                    let w = &global[offset..offset + input * output];
                    let b = &global[offset + input * output..offset + input * output + output];
                    (
                        tensor3(w.to_vec(), [1, input, output], &self.train_device),
                        tensor3(b.to_vec(), [1, 1, output], &self.train_device),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };

        let mut loss_sum: Option<Tensor<1>> = None;
        let mut correct_sum: Option<Tensor<1>> = None;
        let mut x = vec![0.0f32; g * rows * f];
        let mut onehot = vec![0.0f32; g * rows * c];
        let mut row_weight = vec![0.0f32; g * rows];
        let mut labels = vec![c as i64; g * rows];
        let mut last_epoch = vec![0.0f32; g];
        let mut active = vec![false; g];
        let mut batch_len = vec![0usize; g];
        for step in 0..steps {
            x.fill(0.0);
            onehot.fill(0.0);
            row_weight.fill(0.0);
            labels.fill(c as i64);
            for (lane_index, lane) in lanes.iter_mut().enumerate() {
                active[lane_index] = step < lane.total_steps;
                last_epoch[lane_index] = 0.0;
                batch_len[lane_index] = 0;
                if !active[lane_index] {
                    continue;
                }
                let (epoch, k) = (step / lane.steps_per_epoch, step % lane.steps_per_epoch);
                if k == 0 {
                    lane.order.shuffle(&mut lane.rng);
                }
                if epoch + 1 == params.epochs as usize {
                    last_epoch[lane_index] = 1.0;
                }
                let end = ((k + 1) * lane.batch).min(lane.n);
                let positions = &lane.order[k * lane.batch..end];
                let b = positions.len();
                batch_len[lane_index] = b;
                self.features.clear();
                self.labels.clear();
                members[lane.member].data.gather(
                    positions,
                    &mut self.scratch,
                    &mut self.features,
                    &mut self.labels,
                )?;
                let base = lane_index * rows;
                x[base * f..(base + b) * f].copy_from_slice(&self.features);
                let weight = 1.0 / b as f32;
                for (r, &label) in self.labels.iter().enumerate() {
                    let label = label as usize;
                    onehot[(base + r) * c + label] = 1.0;
                    row_weight[base + r] = weight;
                    labels[base + r] = label as i64;
                }
            }
            // Dropout masks, per client in its own sequence: each dropout layer in order.
            let mut masks = Vec::new();
            for op in &self.ops {
                if let Op::Dropout { prob, width } = *op {
                    let keep = 1.0 - prob;
                    let scale = (1.0 / keep) as f32;
                    let mut mask = vec![0.0f32; g * rows * width];
                    for (lane_index, lane) in lanes.iter_mut().enumerate() {
                        let start = lane_index * rows * width;
                        for m in &mut mask[start..start + batch_len[lane_index] * width] {
                            *m = if lane.rng.random_bool(keep) {
                                scale
                            } else {
                                0.0
                            };
                        }
                    }
                    masks.push(tensor3(mask, [g, rows, width], &self.train_device));
                }
            }

            // Forward and backward on leaves that require gradients.
            let leaves: Vec<(Tensor<3>, Tensor<3>)> = layers
                .iter()
                .map(|l| {
                    (
                        l.weight.clone().autodiff().require_grad(),
                        l.bias.clone().autodiff().require_grad(),
                    )
                })
                .collect();
            let mut act = tensor3(x.clone(), [g, rows, f], &self.train_device);
            let (mut linear, mut dropout) = (0, 0);
            for op in &self.ops {
                act = match op {
                    Op::Linear { .. } => {
                        let (w, b) = &leaves[linear];
                        linear += 1;
                        act.matmul(w.clone()) + b.clone()
                    }
                    Op::Relu => relu(act),
                    Op::Dropout { .. } => {
                        dropout += 1;
                        act * masks[dropout - 1].clone()
                    }
                };
            }
            let logits = act;
            let onehot_t = tensor3(onehot.clone(), [g, rows, c], &self.train_device);
            let weight_t = tensor3(row_weight.clone(), [g, rows, 1], &self.train_device);
            let nll = (log_softmax(logits.clone(), 2) * onehot_t).sum_dim(2).neg();
            let mut objective = (nll.clone() * weight_t).sum();
            for ((w, b), (aw, ab)) in leaves.iter().zip(&anchors) {
                let distance = (w.clone() - aw.clone()).powi_scalar(2).sum()
                    + (b.clone() - ab.clone()).powi_scalar(2).sum();
                objective = objective + distance * (mu / 2.0);
            }

            // Metrics of each client's last epoch, accumulated on the device.
            let in_last =
                Tensor::<1>::from_data(TensorData::new(last_epoch.clone(), [g]), &self.device);
            let step_loss = nll.detach().inner().sum_dim(1).reshape([g]) * in_last.clone();
            let labels_t = Tensor::<3, Int>::from_data(
                TensorData::new(labels.clone(), [g, rows, 1]),
                &self.device,
            );
            let step_correct = logits
                .detach()
                .inner()
                .argmax(2)
                .equal(labels_t)
                .float()
                .sum_dim(1)
                .reshape([g])
                * in_last;
            loss_sum = Some(match loss_sum {
                None => step_loss,
                Some(s) => s + step_loss,
            });
            correct_sum = Some(match correct_sum {
                None => step_correct,
                Some(s) => s + step_correct,
            });

            let grads = objective.backward();
            let keep_old = (!active.iter().all(|&a| a)).then(|| {
                let idle: Vec<bool> = active.iter().map(|&a| !a).collect();
                Tensor::<3, Bool>::from_data(TensorData::new(idle, [g, 1, 1]), &self.device)
            });
            for (layer, (w, b)) in layers.iter_mut().zip(&leaves) {
                let gw = w.grad(&grads).ok_or_else(|| missing_grad("weight"))?;
                let gb = b.grad(&grads).ok_or_else(|| missing_grad("bias"))?;
                optimizer_step(layer, gw, gb, params.optimizer, lr, step + 1, &keep_old);
            }
        }

        // Read everything back once.
        let mut host: Vec<(Vec<f32>, Vec<f32>)> = Vec::with_capacity(layers.len());
        for layer in layers {
            let w = layer.weight.shape().num_elements();
            let b = layer.bias.shape().num_elements();
            host.push((
                read_vec(layer.weight.reshape([w]))?,
                read_vec(layer.bias.reshape([b]))?,
            ));
        }
        let metrics = match (loss_sum, correct_sum) {
            (Some(l), Some(k)) => read_vec(Tensor::cat(vec![l, k], 0))?,
            _ => vec![0.0; 2 * g],
        };
        let linears: Vec<(usize, usize, usize)> = self.linears().collect();
        Ok(lanes
            .iter()
            .enumerate()
            .map(|(lane_index, lane)| {
                let mut update = vec![0.0f32; self.num_params];
                for ((input, output, offset), (w, b)) in linears.iter().zip(&host) {
                    let (wn, bn) = (input * output, *output);
                    let trained_w = &w[lane_index * wn..(lane_index + 1) * wn];
                    let trained_b = &b[lane_index * bn..(lane_index + 1) * bn];
                    for (i, t) in trained_w.iter().chain(trained_b).enumerate() {
                        update[offset + i] = t - global[offset + i];
                    }
                }
                let loss = metrics[lane_index] / lane.n as f32;
                let accuracy = metrics[g + lane_index] / lane.n as f32;
                if !loss.is_finite() {
                    return Err(LearningError::Diverged {
                        loss,
                        epoch: params.epochs,
                    });
                }
                Ok(TrainingOutcome {
                    update,
                    num_examples: lane.n as u64,
                    loss,
                    accuracy,
                    steps: lane.total_steps as u64,
                })
            })
            .collect())
    }

    /// The linear layers: (input, output, offset in the flat layout).
    fn linears(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        self.ops.iter().filter_map(|op| match *op {
            Op::Linear {
                input,
                output,
                offset,
            } => Some((input, output, offset)),
            _ => None,
        })
    }

    /// `values` (one client's tensor of `shape`) repeated for `g` clients, as `[g, ..shape]`.
    fn stack(&self, values: &[f32], g: usize, shape: [usize; 2]) -> Tensor<3> {
        let mut all = Vec::with_capacity(values.len() * g);
        for _ in 0..g {
            all.extend_from_slice(values);
        }
        tensor3(all, [g, shape[0], shape[1]], &self.device)
    }
}

fn tensor3(values: Vec<f32>, shape: [usize; 3], device: &Device) -> Tensor<3> {
    Tensor::<3>::from_data(TensorData::new(values, shape), device)
}

fn missing_grad(what: &str) -> LearningError {
    LearningError::Internal(format!("no gradient reached a stacked {what}"))
}

/// One optimizer step on a layer's stacked parameters, with burn's formulas (SGD with momentum
/// and dampening 0; Adam with epsilon 1e-8). Clients marked in `keep_old` keep their
/// parameters and state.
fn optimizer_step(
    layer: &mut Stacked,
    gw: Tensor<3>,
    gb: Tensor<3>,
    optimizer: OptimizerSpec,
    lr: f64,
    time: usize,
    keep_old: &Option<Tensor<3, Bool>>,
) {
    let keep = |new: Tensor<3>, old: &Tensor<3>| match keep_old {
        None => new,
        Some(mask) => {
            let mask = mask.clone().expand(old.shape());
            new.mask_where(mask, old.clone())
        }
    };
    let (dw, db) = match optimizer {
        OptimizerSpec::Sgd { momentum } if momentum > 0.0 => {
            let m = f64::from(momentum);
            let (vw, vb) = match layer.first.take() {
                None => (gw, gb),
                Some((vw, vb)) => {
                    let nw = keep(gw + vw.clone().mul_scalar(m), &vw);
                    let nb = keep(gb + vb.clone().mul_scalar(m), &vb);
                    (nw, nb)
                }
            };
            layer.first = Some((vw.clone(), vb.clone()));
            (vw, vb)
        }
        OptimizerSpec::Sgd { .. } => (gw, gb),
        OptimizerSpec::Adam { beta1, beta2 } => {
            let moment = |g: Tensor<3>, old: Option<Tensor<3>>, beta: f32, square: bool| {
                let g = if square { g.square() } else { g };
                let fresh = g.mul_scalar(1.0 - beta);
                match old {
                    None => fresh,
                    Some(old) => keep(old.clone().mul_scalar(beta).add(fresh), &old),
                }
            };
            let (m1w, m1b) = match layer.first.take() {
                None => (None, None),
                Some((w, b)) => (Some(w), Some(b)),
            };
            let (m2w, m2b) = match layer.second.take() {
                None => (None, None),
                Some((w, b)) => (Some(w), Some(b)),
            };
            let m1w = moment(gw.clone(), m1w, beta1, false);
            let m1b = moment(gb.clone(), m1b, beta1, false);
            let m2w = moment(gw, m2w, beta2, true);
            let m2b = moment(gb, m2b, beta2, true);
            let t = i32::try_from(time).unwrap_or(i32::MAX);
            let correction2 = (1.0 - beta2.powi(t)).sqrt();
            let factor = correction2 / (1.0 - beta1.powi(t));
            let epsilon = 1e-8f32 * correction2;
            let dw = m1w
                .clone()
                .mul_scalar(factor)
                .div(m2w.clone().sqrt().add_scalar(epsilon));
            let db = m1b
                .clone()
                .mul_scalar(factor)
                .div(m2b.clone().sqrt().add_scalar(epsilon));
            layer.first = Some((m1w, m1b));
            layer.second = Some((m2w, m2b));
            (dw, db)
        }
    };
    let new_w = layer.weight.clone() - dw.mul_scalar(lr);
    let new_b = layer.bias.clone() - db.mul_scalar(lr);
    layer.weight = keep(new_w, &layer.weight);
    layer.bias = keep(new_b, &layer.bias);
}

/// The operations of a groupable spec, or why it is not groupable.
fn plan(spec: &ModelSpec) -> Result<Vec<Op>, LearningError> {
    spec.validate()?;
    // Per example, the activation is flat (`[F]`) once the input is rank 1 or after a flatten.
    let mut flat = spec.input_shape.len() == 1;
    let mut width: usize = spec.input_shape.iter().map(|&d| d as usize).product();
    let mut offset = 0usize;
    let mut ops = Vec::with_capacity(spec.layers.len());
    for (layer, l) in spec.layers.iter().enumerate() {
        let refuse = |kind| Err(LearningError::NotGroupable { layer, kind });
        match *l {
            LayerSpec::Linear { out } if flat => {
                let output = out as usize;
                ops.push(Op::Linear {
                    input: width,
                    output,
                    offset,
                });
                offset += width * output + output;
                width = output;
            }
            LayerSpec::Linear { .. } => {
                return refuse("linear over a sequence or an image without a flatten before it");
            }
            LayerSpec::Relu => ops.push(Op::Relu),
            LayerSpec::Flatten => flat = true,
            LayerSpec::Dropout { prob } => {
                if prob > 0.0 {
                    ops.push(Op::Dropout {
                        prob: f64::from(prob),
                        width,
                    });
                }
            }
            LayerSpec::Conv2d { .. } => return refuse("conv2d"),
            LayerSpec::MaxPool2d { .. } => return refuse("max_pool2d"),
            LayerSpec::Embedding { .. } => return refuse("embedding"),
            LayerSpec::Lstm { .. } => return refuse("lstm"),
        }
    }
    Ok(ops)
}
