//! [`MlpTrainer`]: a plain-Rust [`LocalTrainer`] for ReLU multilayer perceptrons with a
//! softmax cross-entropy loss, trained by minibatch SGD (with optional momentum and a FedProx
//! term).
//!
//! It covers the benchmark tasks of McMahan et al. 2017 (the 784-200-200-10 "2NN") and the
//! digits MLP without a tensor framework, which keeps the simulator's build small and its
//! training cheap for thousands of tiny clients (no per-client framework set-up). It runs on the
//! CPU, one client per thread. It is not the default trainer (burn is, through
//! `cohort-learning`); select it with `run.trainer = "builtin"`, and it is the only trainer in a
//! `--no-default-features` build, which needs no burn. The parameter layout is, per linear layer, the weights as an
//! `in × out` row-major matrix followed by the `out` biases.
//!
//! Inputs are the dataset's features as `f32` (images are already scaled to [0, 1]; token ids
//! are divided by the vocabulary size, which makes an MLP on Shakespeare a weak baseline).

use std::sync::Arc;

use cohort_datasets::{Dataset, Features};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::TrainingConfig;
use crate::trainer::{Eval, LocalTrainer, TrainError, TrainOutput};

/// Test examples per evaluation chunk; chunks run in parallel and are combined in order, so the
/// result does not depend on the number of threads.
const EVAL_CHUNK: usize = 1024;

/// A ReLU MLP over a train and a test set.
pub struct MlpTrainer {
    /// (inputs, outputs) per linear layer.
    layers: Vec<(usize, usize)>,
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    training: TrainingConfig,
    input_scale: f32,
    threads: usize,
}

impl MlpTrainer {
    /// An MLP with the given hidden widths between the dataset's inputs and classes.
    pub fn new(
        hidden: &[u32],
        train: Arc<Dataset>,
        test: Arc<Dataset>,
        training: TrainingConfig,
        threads: usize,
    ) -> Result<Self, TrainError> {
        if train.feature_len() != test.feature_len() || train.num_classes() != test.num_classes() {
            return Err(TrainError::ShapeMismatch {
                train_features: train.feature_len(),
                train_classes: train.num_classes(),
                test_features: test.feature_len(),
                test_classes: test.num_classes(),
            });
        }
        let mut layers = Vec::new();
        let mut width = train.feature_len();
        for &h in hidden.iter().chain(std::iter::once(&train.num_classes())) {
            layers.push((width, h as usize));
            width = h as usize;
        }
        let input_scale = match train.features() {
            Features::Dense(_) => 1.0,
            Features::Windows(_) => 1.0 / train.num_classes() as f32,
        };
        Ok(Self {
            layers,
            train,
            test,
            training,
            input_scale,
            threads: threads.max(1),
        })
    }

    /// Offsets of each layer's weights and biases in the flat vector.
    fn offsets(&self) -> Vec<(usize, usize)> {
        let mut at = 0;
        self.layers
            .iter()
            .map(|&(i, o)| {
                let w = at;
                at += i * o;
                let b = at;
                at += o;
                (w, b)
            })
            .collect()
    }

    fn check_len(&self, w: &[f32]) -> Result<(), TrainError> {
        let expected = self.num_params();
        if w.len() != expected {
            return Err(TrainError::WrongLength {
                expected,
                got: w.len(),
            });
        }
        Ok(())
    }

    fn gather(
        &self,
        data: &Dataset,
        idx: &[usize],
        x: &mut Vec<f32>,
        y: &mut Vec<u32>,
    ) -> Result<(), TrainError> {
        x.clear();
        y.clear();
        let bad = |_| {
            let index = idx.iter().copied().find(|&i| i >= data.len()).unwrap_or(0);
            TrainError::BadIndex {
                index,
                len: data.len(),
            }
        };
        data.gather_features(idx, x).map_err(bad)?;
        data.gather_labels(idx, y).map_err(bad)?;
        if self.input_scale != 1.0 {
            for v in x.iter_mut() {
                *v *= self.input_scale;
            }
        }
        Ok(())
    }

    /// Forward pass of a batch of `n` rows; `acts[l]` receives layer l's input (acts[0] = x),
    /// and the logits are returned in `acts[L]`.
    fn forward(&self, w: &[f32], n: usize, acts: &mut [Vec<f32>]) {
        let offsets = self.offsets();
        let last = self.layers.len() - 1;
        for (l, (&(din, dout), &(wo, bo))) in self.layers.iter().zip(&offsets).enumerate() {
            let (inputs, outputs) = acts.split_at_mut(l + 1);
            let a = &inputs[l];
            let z = &mut outputs[0];
            z.clear();
            z.resize(n * dout, 0.0);
            let weights = &w[wo..wo + din * dout];
            let bias = &w[bo..bo + dout];
            for r in 0..n {
                let zr = &mut z[r * dout..(r + 1) * dout];
                zr.copy_from_slice(bias);
                for (i, &ai) in a[r * din..(r + 1) * din].iter().enumerate() {
                    if ai != 0.0 {
                        axpy(zr, ai, &weights[i * dout..(i + 1) * dout]);
                    }
                }
                if l != last {
                    for v in zr.iter_mut() {
                        *v = v.max(0.0);
                    }
                }
            }
        }
    }

    /// Softmax cross-entropy on logits (in place: logits become dL/dz for the mean loss when
    /// `grad` is set). Returns (summed loss, correct predictions).
    fn loss(logits: &mut [f32], labels: &[u32], classes: usize, grad: bool) -> (f64, usize) {
        let n = labels.len();
        let mut loss = 0.0f64;
        let mut correct = 0;
        for (r, &label) in labels.iter().enumerate() {
            let z = &mut logits[r * classes..(r + 1) * classes];
            let (argmax, max) =
                z.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                        if v > bv { (i, v) } else { (bi, bv) }
                    });
            if argmax == label as usize {
                correct += 1;
            }
            let mut sum = 0.0f32;
            for v in z.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            let p_label = z[label as usize] / sum;
            loss += -f64::from(p_label.max(1e-30).ln());
            if grad {
                let scale = 1.0 / (sum * n as f32);
                for v in z.iter_mut() {
                    *v *= scale;
                }
                z[label as usize] -= 1.0 / n as f32;
            }
        }
        (loss, correct)
    }
}

/// y += a·x.
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// Σ x·y with eight independent accumulators (so that the compiler can vectorise).
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let xc = x.chunks_exact(8);
    let yc = y.chunks_exact(8);
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xc.zip(yc) {
        for k in 0..8 {
            acc[k] += a[k] * b[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl LocalTrainer for MlpTrainer {
    fn num_params(&self) -> usize {
        self.layers.iter().map(|&(i, o)| i * o + o).sum()
    }

    fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut w = Vec::with_capacity(self.num_params());
        for &(din, dout) in &self.layers {
            // PyTorch's default for nn.Linear: U(-1/√in, 1/√in) for weights and biases.
            let bound = 1.0 / (din as f32).sqrt();
            for _ in 0..din * dout + dout {
                w.push(rng.random_range(-bound..bound));
            }
        }
        w
    }

    fn train(
        &self,
        _client: usize,
        indices: &[usize],
        global: &[f32],
        seed: u64,
    ) -> Result<TrainOutput, TrainError> {
        self.check_len(global)?;
        let t = &self.training;
        // The experiment refuses other optimizers with this trainer (`run.trainer`).
        let momentum = t.sgd_momentum().unwrap_or(0.0);
        let mut w = global.to_vec();
        let mut velocity = if momentum > 0.0 {
            vec![0.0f32; w.len()]
        } else {
            Vec::new()
        };
        let mut grad = vec![0.0f32; w.len()];
        let mut order = indices.to_vec();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let classes = self.train.num_classes() as usize;
        let offsets = self.offsets();
        let mut acts: Vec<Vec<f32>> = vec![Vec::new(); self.layers.len() + 1];
        let mut labels = Vec::new();
        let mut delta_in = Vec::new();
        let mut last_loss = 0.0f64;
        for _ in 0..t.epochs {
            order.shuffle(&mut rng);
            let mut epoch_loss = 0.0f64;
            for batch in order.chunks(t.batch_size as usize) {
                let n = batch.len();
                let (x, rest) = acts.split_first_mut().expect("at least one layer");
                self.gather(&self.train, batch, x, &mut labels)?;
                let _ = rest;
                self.forward(&w, n, &mut acts);
                let logits = acts.last_mut().expect("output layer");
                let (loss, _) = Self::loss(logits, &labels, classes, true);
                epoch_loss += loss;
                grad.iter_mut().for_each(|g| *g = 0.0);
                // Backward: acts[L] holds dL/dz of the last layer.
                for l in (0..self.layers.len()).rev() {
                    let (din, dout) = self.layers[l];
                    let (wo, bo) = offsets[l];
                    let (lower, upper) = acts.split_at_mut(l + 1);
                    let a = &lower[l];
                    let dz = &upper[0];
                    {
                        let (gw, gb) = grad[wo..bo + dout].split_at_mut(din * dout);
                        for r in 0..n {
                            let dzr = &dz[r * dout..(r + 1) * dout];
                            axpy(gb, 1.0, dzr);
                            for (i, &ai) in a[r * din..(r + 1) * din].iter().enumerate() {
                                if ai != 0.0 {
                                    axpy(&mut gw[i * dout..(i + 1) * dout], ai, dzr);
                                }
                            }
                        }
                    }
                    if l > 0 {
                        // dL/da of layer l's input, masked by the ReLU that produced it.
                        delta_in.clear();
                        delta_in.resize(n * din, 0.0);
                        let weights = &w[wo..wo + din * dout];
                        for r in 0..n {
                            let dzr = &dz[r * dout..(r + 1) * dout];
                            for i in 0..din {
                                if a[r * din + i] > 0.0 {
                                    delta_in[r * din + i] =
                                        dot(&weights[i * dout..(i + 1) * dout], dzr);
                                }
                            }
                        }
                        std::mem::swap(&mut lower[l], &mut delta_in);
                    }
                }
                if t.proximal_mu > 0.0 {
                    for ((g, wi), gi) in grad.iter_mut().zip(&w).zip(global) {
                        *g += t.proximal_mu * (wi - gi);
                    }
                }
                let lr = t.learning_rate;
                if velocity.is_empty() {
                    axpy(&mut w, -lr, &grad);
                } else {
                    for ((v, g), wi) in velocity.iter_mut().zip(&grad).zip(w.iter_mut()) {
                        *v = momentum * *v + g;
                        *wi -= lr * *v;
                    }
                }
            }
            last_loss = epoch_loss / indices.len().max(1) as f64;
        }
        for (wi, gi) in w.iter_mut().zip(global) {
            *wi -= gi;
        }
        Ok(TrainOutput {
            delta: w,
            examples: indices.len(),
            loss: last_loss as f32,
        })
    }

    fn evaluate(&self, global: &[f32]) -> Result<Eval, TrainError> {
        self.check_len(global)?;
        let len = self.test.len();
        if len == 0 {
            return Err(TrainError::EmptyTestSet);
        }
        let chunks: Vec<std::ops::Range<usize>> = (0..len)
            .step_by(EVAL_CHUNK)
            .map(|s| s..(s + EVAL_CHUNK).min(len))
            .collect();
        let classes = self.test.num_classes() as usize;
        let eval_chunk = |range: &std::ops::Range<usize>| -> Result<(f64, usize), TrainError> {
            let idx: Vec<usize> = range.clone().collect();
            let mut acts: Vec<Vec<f32>> = vec![Vec::new(); self.layers.len() + 1];
            let mut labels = Vec::new();
            self.gather(&self.test, &idx, &mut acts[0], &mut labels)?;
            self.forward(global, idx.len(), &mut acts);
            let logits = acts.last_mut().expect("output layer");
            Ok(Self::loss(logits, &labels, classes, false))
        };
        let results = crate::parallel::map_ordered(&chunks, self.threads, eval_chunk);
        let mut loss = 0.0;
        let mut correct = 0;
        for r in results {
            let (l, c) = r?;
            loss += l;
            correct += c;
        }
        Ok(Eval {
            accuracy: correct as f32 / len as f32,
            loss: (loss / len as f64) as f32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> (Arc<Dataset>, Arc<Dataset>) {
        // Two linearly separable classes in 2-D.
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..64 {
            let c = i % 2;
            let s = (i / 2) as f32 / 32.0;
            x.extend_from_slice(&[c as f32 + 0.1 * s, 1.0 - c as f32 - 0.1 * s]);
            y.push(c as u32);
        }
        let d = Arc::new(Dataset::from_dense(x, y, vec![2], 2).unwrap());
        (d.clone(), d)
    }

    fn config(lr: f32) -> TrainingConfig {
        TrainingConfig {
            epochs: 20,
            batch_size: 8,
            learning_rate: lr,
            optimizer: cohort_protocol::OptimizerSpec::Sgd { momentum: 0.0 },
            proximal_mu: 0.0,
            max_examples: None,
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (train, test) = toy();
        let t = MlpTrainer::new(
            &[3],
            train,
            test,
            TrainingConfig {
                epochs: 1,
                batch_size: 64,
                ..config(1.0)
            },
            1,
        )
        .unwrap();
        let w = t.init(7);
        let all: Vec<usize> = (0..64).collect();
        // One full-batch SGD step with lr 1: delta = -gradient (the shuffle does not matter).
        let g: Vec<f32> = t
            .train(0, &all, &w, 1)
            .unwrap()
            .delta
            .iter()
            .map(|d| -d)
            .collect();
        let loss_at = |w: &[f32]| {
            let mut acts = vec![Vec::new(); 3];
            let mut labels = Vec::new();
            t.gather(&t.train, &all, &mut acts[0], &mut labels).unwrap();
            t.forward(w, 64, &mut acts);
            MlpTrainer::loss(acts.last_mut().unwrap(), &labels, 2, false).0 / 64.0
        };
        for k in 0..w.len() {
            let h = 1e-2;
            let mut wp = w.clone();
            wp[k] += h;
            let mut wm = w.clone();
            wm[k] -= h;
            let numeric = (loss_at(&wp) - loss_at(&wm)) / (2.0 * f64::from(h));
            assert!(
                (numeric - f64::from(g[k])).abs() < 2e-3,
                "param {k}: {numeric} vs {}",
                g[k]
            );
        }
    }

    #[test]
    fn learns_a_separable_problem_deterministically() {
        let (train, test) = toy();
        let t = MlpTrainer::new(&[4], train, test, config(0.5), 2).unwrap();
        let w = t.init(1);
        let all: Vec<usize> = (0..64).collect();
        let out = t.train(0, &all, &w, 9).unwrap();
        assert_eq!(out, t.train(0, &all, &w, 9).unwrap());
        let trained: Vec<f32> = w.iter().zip(&out.delta).map(|(a, b)| a + b).collect();
        assert_eq!(t.evaluate(&trained).unwrap().accuracy, 1.0);
        assert!(matches!(
            t.evaluate(&w[1..]),
            Err(TrainError::WrongLength { .. })
        ));
    }
}
