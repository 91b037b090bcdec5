//! [`SpecModel`]: a burn module built at run time from a [`ModelSpec`], and its forward pass.
//!
//! The module is a list of layers in spec order, so burn's parameter traversal (the order of
//! the flat weight vector) is the spec's [parameter layout](cohort_protocol::model). Layers
//! without parameters (ReLU, flatten, dropout, pooling) are in the list too, so that the list
//! is the spec.
//!
//! Parameters are created lazily and never initialised by burn's own initialisers: a model is
//! always loaded from a flat vector, usually [`initial_weights`](crate::ModelSpec::initial_weights), which
//! draws them on the host from a seed so that every backend and thread starts from the same
//! numbers.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    Embedding, EmbeddingConfig, Linear, LinearConfig, Lstm, LstmConfig, PaddingConfig2d, Relu,
};
use burn::tensor::{Device, Int, Tensor, TensorData};
use cohort_protocol::model::{LayerSpec, ModelSpec};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::error::LearningError;

/// Flattens each example into one vector (a layer without parameters).
#[derive(Module, Debug)]
pub struct Flatten;

/// Dropout with host-drawn masks, so that a seed fixes them on every backend and thread.
#[derive(Module, Debug)]
pub struct HostDropout {
    /// Drop probability.
    pub prob: f64,
}

/// An LSTM layer and whether it outputs every step or only the last.
#[derive(Module, Debug)]
pub struct LstmLayer {
    /// The recurrent cell.
    pub lstm: Lstm,
    /// Output `[T, hidden]` instead of `[hidden]`.
    pub return_sequence: bool,
}

/// One layer of a [`SpecModel`], mirroring [`LayerSpec`].
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Layer {
    /// See [`LayerSpec::Linear`].
    Linear(Linear),
    /// See [`LayerSpec::Conv2d`].
    Conv2d(Conv2d),
    /// See [`LayerSpec::MaxPool2d`].
    MaxPool2d(MaxPool2d),
    /// See [`LayerSpec::Relu`].
    Relu(Relu),
    /// See [`LayerSpec::Flatten`].
    Flatten(Flatten),
    /// See [`LayerSpec::Dropout`].
    Dropout(HostDropout),
    /// See [`LayerSpec::Embedding`].
    Embedding(Embedding),
    /// See [`LayerSpec::Lstm`].
    Lstm(LstmLayer),
}

/// A sequential model built from a [`ModelSpec`].
#[derive(Module, Debug)]
pub struct SpecModel {
    /// The layers, in spec order.
    pub layers: Vec<Layer>,
}

/// An activation between layers: its rank is only known at run time. Shapes include the batch
/// dimension first.
pub(crate) enum Activation {
    /// Token ids `[B, T]`.
    Tokens(Tensor<2, Int>),
    /// `[B, F]`.
    D2(Tensor<2>),
    /// `[B, T, F]`.
    D3(Tensor<3>),
    /// `[B, C, H, W]`.
    D4(Tensor<4>),
}

impl Activation {
    fn rank_name(&self) -> &'static str {
        match self {
            Activation::Tokens(_) => "token ids [batch, tokens]",
            Activation::D2(_) => "[batch, features]",
            Activation::D3(_) => "[batch, steps, features]",
            Activation::D4(_) => "[batch, channels, height, width]",
        }
    }
}

impl SpecModel {
    /// Builds the module for `spec` on `device`, after validating the spec. Parameters are not
    /// initialised: load a weight vector before the first forward pass.
    pub fn from_spec(spec: &ModelSpec, device: &Device) -> Result<SpecModel, LearningError> {
        let summary = spec.validate()?;
        let mut shape: Vec<usize> = spec.input_shape.iter().map(|&d| d as usize).collect();
        let mut layers = Vec::with_capacity(spec.layers.len());
        for (index, layer) in spec.layers.iter().enumerate() {
            let last = *shape.last().unwrap_or(&1);
            let built = match *layer {
                LayerSpec::Linear { out } => {
                    Layer::Linear(LinearConfig::new(last, out as usize).init(device))
                }
                LayerSpec::Conv2d {
                    out_channels,
                    kernel,
                    stride,
                    padding,
                } => {
                    let (k, s, p) = (kernel as usize, stride as usize, padding as usize);
                    Layer::Conv2d(
                        Conv2dConfig::new([shape[0], out_channels as usize], [k, k])
                            .with_stride([s, s])
                            .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                            .init(device),
                    )
                }
                LayerSpec::MaxPool2d { kernel, stride } => Layer::MaxPool2d(
                    MaxPool2dConfig::new([kernel as usize, kernel as usize])
                        .with_strides([stride as usize, stride as usize])
                        .init(),
                ),
                LayerSpec::Relu => Layer::Relu(Relu::new()),
                LayerSpec::Flatten => Layer::Flatten(Flatten),
                LayerSpec::Dropout { prob } => Layer::Dropout(HostDropout {
                    prob: f64::from(prob),
                }),
                LayerSpec::Embedding { vocab, dim } => Layer::Embedding(
                    EmbeddingConfig::new(vocab as usize, dim as usize).init(device),
                ),
                LayerSpec::Lstm {
                    hidden,
                    return_sequence,
                } => Layer::Lstm(LstmLayer {
                    lstm: LstmConfig::new(last, hidden as usize, true).init(device),
                    return_sequence,
                }),
            };
            layers.push(built);
            shape = summary.layer_outputs[index]
                .iter()
                .map(|&d| d as usize)
                .collect();
        }
        Ok(SpecModel { layers })
    }

    /// Runs the model on a batch and returns the logits `[B, classes]`. `dropout` supplies the
    /// randomness for dropout masks while training; `None` means evaluation (no dropout).
    pub(crate) fn forward(
        &self,
        input: Activation,
        mut dropout: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor<2>, LearningError> {
        let mut x = input;
        for (index, layer) in self.layers.iter().enumerate() {
            x = match (layer, x) {
                (Layer::Linear(l), Activation::D2(t)) => Activation::D2(l.forward(t)),
                (Layer::Linear(l), Activation::D3(t)) => Activation::D3(l.forward(t)),
                (Layer::Linear(l), Activation::D4(t)) => Activation::D4(l.forward(t)),
                (Layer::Conv2d(c), Activation::D4(t)) => Activation::D4(c.forward(t)),
                (Layer::MaxPool2d(p), Activation::D4(t)) => Activation::D4(p.forward(t)),
                (Layer::Relu(r), Activation::D2(t)) => Activation::D2(r.forward(t)),
                (Layer::Relu(r), Activation::D3(t)) => Activation::D3(r.forward(t)),
                (Layer::Relu(r), Activation::D4(t)) => Activation::D4(r.forward(t)),
                (Layer::Flatten(_), Activation::D2(t)) => Activation::D2(t),
                (Layer::Flatten(_), Activation::D3(t)) => Activation::D2(t.flatten(1, 2)),
                (Layer::Flatten(_), Activation::D4(t)) => Activation::D2(t.flatten(1, 3)),
                (Layer::Dropout(d), x) => match dropout.as_deref_mut() {
                    Some(rng) if d.prob > 0.0 => match x {
                        Activation::D2(t) => Activation::D2(drop(t, d.prob, rng)),
                        Activation::D3(t) => Activation::D3(drop(t, d.prob, rng)),
                        Activation::D4(t) => Activation::D4(drop(t, d.prob, rng)),
                        tokens @ Activation::Tokens(_) => tokens,
                    },
                    _ => x,
                },
                (Layer::Embedding(e), Activation::Tokens(t)) => Activation::D3(e.forward(t)),
                (Layer::Lstm(l), Activation::D3(t)) => {
                    let (sequence, state) = l.lstm.forward(t, None);
                    if l.return_sequence {
                        Activation::D3(sequence)
                    } else {
                        Activation::D2(state.hidden)
                    }
                }
                (_, x) => {
                    return Err(LearningError::Internal(format!(
                        "layer {index} cannot take an input of rank {}",
                        x.rank_name()
                    )));
                }
            };
        }
        match x {
            Activation::D2(logits) => Ok(logits),
            other => Err(LearningError::Internal(format!(
                "the model ended with an activation of rank {} instead of [batch, classes]",
                other.rank_name()
            ))),
        }
    }
}

/// Inverted dropout with a mask drawn on the host.
fn drop<const D: usize>(x: Tensor<D>, prob: f64, rng: &mut ChaCha8Rng) -> Tensor<D> {
    let shape = x.shape();
    let keep = 1.0 - prob;
    let scale = (1.0 / keep) as f32;
    let mask: Vec<f32> = (0..shape.num_elements())
        .map(|_| if rng.random_bool(keep) { scale } else { 0.0 })
        .collect();
    let mask = Tensor::<D>::from_data(TensorData::new(mask, shape), &x.device());
    x * mask
}
