//! Declarative model specifications, built into burn modules at run time by `cohort-learning`.
//!
//! A model owner ships a new architecture without a new app release: the spec travels in the
//! task plan. Validation (shapes, sizes) and the flat parameter layout live here, with no tensor
//! library, so the coordinator refuses a bad task before any client sees it, and every side
//! agrees on what element `i` of a weight vector means.
//!
//! ## Shapes
//!
//! Shapes never include the batch dimension. A spec's `input_shape` has rank 1 (a feature
//! vector `[F]`, or a token sequence `[T]` when the first layer is an
//! [`Embedding`](LayerSpec::Embedding)), rank 2 (a sequence of feature vectors `[T, F]`) or
//! rank 3 (an image `[C, H, W]`). Each layer maps one shape to the next:
//!
//! | layer | input | output |
//! |---|---|---|
//! | `Linear { out }` | `[.., F]` | `[.., out]` |
//! | `Conv2d { out_channels, kernel, stride, padding }` | `[C, H, W]` | `[out_channels, (H + 2p - k) / s + 1, (W + 2p - k) / s + 1]` |
//! | `MaxPool2d { kernel, stride }` | `[C, H, W]` | `[C, (H - k) / s + 1, (W - k) / s + 1]` |
//! | `Relu`, `Dropout { prob }` | any | same |
//! | `Flatten` | any | `[product]` |
//! | `Embedding { vocab, dim }` (first layer only) | `[T]` token ids | `[T, dim]` |
//! | `Lstm { hidden, return_sequence }` | `[T, F]` | `[T, hidden]`, or `[hidden]` (the last step) |
//!
//! The last layer must produce `[num_classes]`: the logits.
//!
//! ## Parameter layout
//!
//! A model's parameters travel as one `f32` vector. [`ModelSpec::parameter_layout`] lists its
//! blocks in order: layer by layer, in spec order, and inside a layer in the order below. Each
//! block is its tensor's elements in row-major order.
//!
//! | layer | blocks |
//! |---|---|
//! | `Linear` | `weight [in, out]`, `bias [out]` |
//! | `Conv2d` | `weight [out_channels, in_channels, kernel, kernel]`, `bias [out_channels]` |
//! | `Embedding` | `weight [vocab, dim]` |
//! | `Lstm` | for each gate in the order input, forget, output, cell: `input.weight [in, hidden]`, `input.bias [hidden]`, `hidden.weight [hidden, hidden]`, `hidden.bias [hidden]` |
//!
//! Note that a `Linear` weight is stored `[in, out]` (burn's row layout), the transpose of
//! PyTorch's `[out, in]`.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The largest number of parameters a spec may have (200 MB of `f32`).
pub const MAX_PARAMETERS: u64 = 50_000_000;
/// The largest size of any one dimension: a layer width, a channel count, a vocabulary.
pub const MAX_DIM: u64 = 65_536;
/// The largest number of layers in a spec.
pub const MAX_LAYERS: usize = 256;
/// The largest convolution or pooling kernel side.
pub const MAX_KERNEL: u64 = 64;
/// The largest number of values in one example's activation at any layer (64 MiB of `f32`),
/// which bounds the memory a client needs per example.
pub const MAX_ACTIVATION_ELEMENTS: u64 = 16_777_216;

/// One layer of a sequential model. See the [module docs](self) for each layer's shapes.
// Unknown fields are refused: a layer option the receiver does not know would otherwise be
// ignored and a different model built (and a misspelt key in a task file would go unnoticed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSpec {
    /// Fully connected layer over the last dimension, with a bias.
    Linear {
        /// Output features.
        out: u32,
    },
    /// 2-D convolution over `[C, H, W]`, square kernel, with a bias.
    Conv2d {
        /// Output channels.
        out_channels: u32,
        /// Kernel side.
        kernel: u32,
        /// Stride in both directions (at least 1).
        stride: u32,
        /// Zero padding on every side.
        padding: u32,
    },
    /// 2-D max pooling over `[C, H, W]`, square window, no padding.
    MaxPool2d {
        /// Window side.
        kernel: u32,
        /// Stride in both directions (at least 1).
        stride: u32,
    },
    /// Rectified linear unit.
    Relu,
    /// Flattens the whole example into one vector.
    Flatten,
    /// Zeroes each value with probability `prob` while training (scaling the rest by
    /// `1 / (1 - prob)`); does nothing at evaluation.
    Dropout {
        /// Drop probability, in `[0, 1)`.
        prob: f32,
    },
    /// Embedding lookup: token ids to vectors. Only valid as the first layer, on an input of
    /// shape `[T]` whose values are ids below `vocab`.
    Embedding {
        /// Number of distinct token ids.
        vocab: u32,
        /// Vector size.
        dim: u32,
    },
    /// One unidirectional LSTM layer (sigmoid gates, tanh cell), zero initial state.
    Lstm {
        /// Hidden state size.
        hidden: u32,
        /// Output every step's hidden state (`[T, hidden]`, to stack another LSTM) instead of
        /// only the last one (`[hidden]`).
        #[serde(default)]
        return_sequence: bool,
    },
}

impl LayerSpec {
    /// The layer's type name, as used in error messages and in the serialized spec.
    pub fn kind(&self) -> &'static str {
        match self {
            LayerSpec::Linear { .. } => "linear",
            LayerSpec::Conv2d { .. } => "conv2d",
            LayerSpec::MaxPool2d { .. } => "max_pool2d",
            LayerSpec::Relu => "relu",
            LayerSpec::Flatten => "flatten",
            LayerSpec::Dropout { .. } => "dropout",
            LayerSpec::Embedding { .. } => "embedding",
            LayerSpec::Lstm { .. } => "lstm",
        }
    }
}

/// A sequential model: input shape, layers, number of classes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Shape of one example, without the batch dimension.
    pub input_shape: Vec<u32>,
    /// The layers, in order.
    pub layers: Vec<LayerSpec>,
    /// Number of output classes.
    pub num_classes: u32,
}

/// Why a spec is invalid. Layer errors name the layer's index (from 0) and type.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SpecError {
    /// The input shape is empty, has a zero or oversized dimension, or an unsupported rank.
    #[error(
        "input shape {shape:?} is invalid: {reason}; use [features], [tokens], [steps, features] or [channels, height, width] with dimensions from 1 to {MAX_DIM}"
    )]
    InputShape {
        /// The offending shape.
        shape: Vec<u32>,
        /// What is wrong with it.
        reason: String,
    },
    /// The spec has no layers, or more than [`MAX_LAYERS`].
    #[error("the spec has {count} layers; a spec needs from 1 to {MAX_LAYERS} layers")]
    LayerCount {
        /// How many layers it has.
        count: usize,
    },
    /// `num_classes` is below 2 or above [`MAX_DIM`].
    #[error("num_classes is {num_classes}; it must be from 2 to {MAX_DIM}")]
    NumClasses {
        /// The declared number of classes.
        num_classes: u32,
    },
    /// A layer's parameters are out of bounds or do not fit its input shape.
    #[error("layer {index} ({kind}) with input shape {input:?}: {reason}")]
    Layer {
        /// The layer's index in `layers`, from 0.
        index: usize,
        /// The layer's type name.
        kind: &'static str,
        /// The shape the layer receives, without the batch dimension.
        input: Vec<u64>,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The last layer does not produce one logit per class.
    #[error(
        "the model's output shape is {output:?} but num_classes is {num_classes}; end the spec with a layer that outputs [{num_classes}] (for example linear with out = {num_classes}, after a flatten)"
    )]
    Output {
        /// The shape the last layer produces.
        output: Vec<u64>,
        /// The declared number of classes.
        num_classes: u32,
    },
    /// The model has more than [`MAX_PARAMETERS`] parameters.
    #[error(
        "the model has {count} parameters, more than the limit of {MAX_PARAMETERS}; use narrower or fewer layers"
    )]
    TooManyParameters {
        /// How many parameters the spec describes.
        count: u64,
    },
}

/// What validation learned about a spec: each layer's output shape and the parameter count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapeSummary {
    /// The output shape of each layer, without the batch dimension, in layer order.
    pub layer_outputs: Vec<Vec<u64>>,
    /// The total number of parameters (the length of the flat weight vector).
    pub num_parameters: u64,
}

/// One parameter tensor's place in the flat weight vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamBlock {
    /// Index of the layer that owns it.
    pub layer: usize,
    /// Its name inside the layer, e.g. `weight` or `forget_gate.hidden.bias`.
    pub name: &'static str,
    /// Its shape; its elements are stored row-major.
    pub shape: Vec<usize>,
    /// Offset of its first element in the flat vector.
    pub offset: usize,
    /// The number of inputs that feed each output it computes (for initialisation).
    pub fan_in: usize,
}

impl ParamBlock {
    /// The number of elements in the block.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the block holds no elements (never true for a valid spec).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Names of an LSTM layer's parameter blocks, in layout order.
const LSTM_BLOCKS: [&str; 16] = [
    "input_gate.input.weight",
    "input_gate.input.bias",
    "input_gate.hidden.weight",
    "input_gate.hidden.bias",
    "forget_gate.input.weight",
    "forget_gate.input.bias",
    "forget_gate.hidden.weight",
    "forget_gate.hidden.bias",
    "output_gate.input.weight",
    "output_gate.input.bias",
    "output_gate.hidden.weight",
    "output_gate.hidden.bias",
    "cell_gate.input.weight",
    "cell_gate.input.bias",
    "cell_gate.hidden.weight",
    "cell_gate.hidden.bias",
];

impl ModelSpec {
    /// Checks every shape and bound, and returns each layer's output shape and the parameter
    /// count. The first problem found is returned; layer errors name the layer.
    pub fn validate(&self) -> Result<ShapeSummary, SpecError> {
        self.walk(|_, _, _, _| {})
    }

    /// The number of parameters: the length of the flat weight vector.
    pub fn num_parameters(&self) -> Result<usize, SpecError> {
        // `validate` bounds the count by MAX_PARAMETERS, which fits any usize we build for.
        Ok(self.validate()?.num_parameters as usize)
    }

    /// The flat weight vector's blocks, in order (see the [module docs](self)).
    pub fn parameter_layout(&self) -> Result<Vec<ParamBlock>, SpecError> {
        let mut blocks: Vec<ParamBlock> = Vec::new();
        let mut offset = 0usize;
        self.walk(|layer, name, shape, fan_in| {
            let block = ParamBlock {
                layer,
                name,
                shape,
                offset,
                fan_in,
            };
            offset += block.len();
            blocks.push(block);
        })?;
        Ok(blocks)
    }

    /// A fresh weight vector for this spec, drawn from `seed` (ChaCha8), the same on every
    /// platform, backend and thread: the coordinator draws a task's first model with it, and the
    /// simulator and the learning crate's tests start from it too.
    ///
    /// Initialisation follows PyTorch's defaults: linear and convolution weights and biases are
    /// uniform in `±1/sqrt(fan_in)`, LSTM weights and biases uniform in `±1/sqrt(hidden)`, and
    /// embeddings standard normal.
    pub fn initial_weights(&self, seed: u64) -> Result<Vec<f32>, SpecError> {
        use rand::{Rng as _, SeedableRng as _};
        let layout = self.parameter_layout()?;
        let total = layout.last().map_or(0, |b| b.offset + b.len());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut weights = Vec::with_capacity(total);
        for block in &layout {
            let is_embedding = matches!(
                self.layers.get(block.layer),
                Some(LayerSpec::Embedding { .. })
            );
            if is_embedding {
                for _ in 0..block.len() {
                    // Box-Muller; 1 - u keeps the logarithm's argument in (0, 1].
                    let u1: f64 = 1.0 - rng.random::<f64>();
                    let u2: f64 = rng.random();
                    weights.push(
                        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32,
                    );
                }
            } else {
                let bound = 1.0 / (block.fan_in.max(1) as f32).sqrt();
                for _ in 0..block.len() {
                    weights.push(rng.random_range(-bound..bound));
                }
            }
        }
        Ok(weights)
    }

    /// Shape inference with a callback for every parameter block, in layout order. Blocks are
    /// reported only for layers that pass their checks; the caller discards them on error.
    fn walk(
        &self,
        mut on_block: impl FnMut(usize, &'static str, Vec<usize>, usize),
    ) -> Result<ShapeSummary, SpecError> {
        let input_error = |reason: &str| SpecError::InputShape {
            shape: self.input_shape.clone(),
            reason: reason.to_string(),
        };
        if self.input_shape.is_empty() || self.input_shape.len() > 3 {
            return Err(input_error("its rank must be 1, 2 or 3"));
        }
        if self
            .input_shape
            .iter()
            .any(|&d| d == 0 || u64::from(d) > MAX_DIM)
        {
            return Err(input_error("a dimension is out of range"));
        }
        if self.layers.is_empty() || self.layers.len() > MAX_LAYERS {
            return Err(SpecError::LayerCount {
                count: self.layers.len(),
            });
        }
        if self.num_classes < 2 || u64::from(self.num_classes) > MAX_DIM {
            return Err(SpecError::NumClasses {
                num_classes: self.num_classes,
            });
        }

        let mut shape: Vec<u64> = self.input_shape.iter().map(|&d| u64::from(d)).collect();
        let mut layer_outputs = Vec::with_capacity(self.layers.len());
        let mut num_parameters = 0u64;
        for (index, layer) in self.layers.iter().enumerate() {
            let fail = |input: &[u64], reason: String| SpecError::Layer {
                index,
                kind: layer.kind(),
                input: input.to_vec(),
                reason,
            };
            let dim = |name: &str, value: u32, min: u64, max: u64| -> Result<u64, SpecError> {
                let value = u64::from(value);
                if value < min || value > max {
                    Err(fail(
                        &shape,
                        format!("{name} is {value}; it must be from {min} to {max}"),
                    ))
                } else {
                    Ok(value)
                }
            };
            let (next, params): (Vec<u64>, Vec<Block>) = match layer {
                LayerSpec::Linear { out } => {
                    let out = dim("out", *out, 1, MAX_DIM)?;
                    let input = *shape.last().unwrap_or(&0);
                    let mut next = shape.clone();
                    if let Some(last) = next.last_mut() {
                        *last = out;
                    }
                    (
                        next,
                        vec![
                            ("weight", vec![input, out], input),
                            ("bias", vec![out], input),
                        ],
                    )
                }
                LayerSpec::Conv2d {
                    out_channels,
                    kernel,
                    stride,
                    padding,
                } => {
                    let out_channels = dim("out_channels", *out_channels, 1, MAX_DIM)?;
                    let kernel = dim("kernel", *kernel, 1, MAX_KERNEL)?;
                    let stride = dim("stride", *stride, 1, MAX_KERNEL)?;
                    let padding = dim("padding", *padding, 0, MAX_KERNEL)?;
                    let [c, h, w] = image_shape(&shape).ok_or_else(|| {
                        fail(
                            &shape,
                            "conv2d needs a [channels, height, width] input; put it before any flatten, linear or lstm".into(),
                        )
                    })?;
                    if h + 2 * padding < kernel || w + 2 * padding < kernel {
                        return Err(fail(
                            &shape,
                            format!(
                                "the {kernel}x{kernel} kernel is larger than the padded {}x{} input; use a smaller kernel or more padding",
                                h + 2 * padding,
                                w + 2 * padding
                            ),
                        ));
                    }
                    let oh = (h + 2 * padding - kernel) / stride + 1;
                    let ow = (w + 2 * padding - kernel) / stride + 1;
                    let fan_in = c * kernel * kernel;
                    (
                        vec![out_channels, oh, ow],
                        vec![
                            ("weight", vec![out_channels, c, kernel, kernel], fan_in),
                            ("bias", vec![out_channels], fan_in),
                        ],
                    )
                }
                LayerSpec::MaxPool2d { kernel, stride } => {
                    let kernel = dim("kernel", *kernel, 1, MAX_KERNEL)?;
                    let stride = dim("stride", *stride, 1, MAX_KERNEL)?;
                    let [c, h, w] = image_shape(&shape).ok_or_else(|| {
                        fail(
                            &shape,
                            "max_pool2d needs a [channels, height, width] input; put it before any flatten, linear or lstm".into(),
                        )
                    })?;
                    if h < kernel || w < kernel {
                        return Err(fail(
                            &shape,
                            format!(
                                "the {kernel}x{kernel} window is larger than the {h}x{w} input; use a smaller window"
                            ),
                        ));
                    }
                    (
                        vec![c, (h - kernel) / stride + 1, (w - kernel) / stride + 1],
                        vec![],
                    )
                }
                LayerSpec::Relu => (shape.clone(), vec![]),
                LayerSpec::Flatten => (vec![shape.iter().product()], vec![]),
                LayerSpec::Dropout { prob } => {
                    if !(prob.is_finite() && (0.0..1.0).contains(prob)) {
                        return Err(fail(
                            &shape,
                            format!("prob is {prob}; it must be at least 0 and below 1"),
                        ));
                    }
                    (shape.clone(), vec![])
                }
                LayerSpec::Embedding { vocab, dim: width } => {
                    let vocab = dim("vocab", *vocab, 1, MAX_DIM)?;
                    let width = dim("dim", *width, 1, MAX_DIM)?;
                    if index != 0 || shape.len() != 1 {
                        return Err(fail(
                            &shape,
                            "embedding must be the first layer, on an input of shape [tokens]"
                                .into(),
                        ));
                    }
                    (
                        vec![shape[0], width],
                        vec![("weight", vec![vocab, width], 1)],
                    )
                }
                LayerSpec::Lstm {
                    hidden,
                    return_sequence,
                } => {
                    let hidden = dim("hidden", *hidden, 1, MAX_DIM)?;
                    let &[steps, features] = shape.as_slice() else {
                        return Err(fail(
                            &shape,
                            "lstm needs a [steps, features] input, such as an embedding's output"
                                .into(),
                        ));
                    };
                    let next = if *return_sequence {
                        vec![steps, hidden]
                    } else {
                        vec![hidden]
                    };
                    let params = LSTM_BLOCKS
                        .iter()
                        .map(|&name| {
                            let shape = if name.ends_with("bias") {
                                vec![hidden]
                            } else if name.contains(".input.") {
                                vec![features, hidden]
                            } else {
                                vec![hidden, hidden]
                            };
                            (name, shape, hidden)
                        })
                        .collect();
                    (next, params)
                }
            };
            let elements: u64 = next.iter().product();
            if next.contains(&0) || elements > MAX_ACTIVATION_ELEMENTS {
                return Err(fail(
                    &shape,
                    format!(
                        "its output shape {next:?} has {elements} values per example; it must be non-empty and at most {MAX_ACTIVATION_ELEMENTS}"
                    ),
                ));
            }
            for (name, block, fan_in) in params {
                let count: u64 = block.iter().product();
                num_parameters = num_parameters.saturating_add(count);
                if num_parameters > MAX_PARAMETERS {
                    return Err(SpecError::TooManyParameters {
                        count: num_parameters,
                    });
                }
                on_block(
                    index,
                    name,
                    block.iter().map(|&d| d as usize).collect(),
                    fan_in as usize,
                );
            }
            layer_outputs.push(next.clone());
            shape = next;
        }
        if shape != [u64::from(self.num_classes)] {
            return Err(SpecError::Output {
                output: shape,
                num_classes: self.num_classes,
            });
        }
        Ok(ShapeSummary {
            layer_outputs,
            num_parameters,
        })
    }

    /// The digits MLP: `[64]` inputs (8x8 images, flattened), 32 hidden ReLU units, 10 classes.
    pub fn digits_mlp() -> ModelSpec {
        ModelSpec {
            input_shape: vec![64],
            layers: vec![
                LayerSpec::Linear { out: 32 },
                LayerSpec::Relu,
                LayerSpec::Linear { out: 10 },
            ],
            num_classes: 10,
        }
    }

    /// McMahan et al.'s "2NN" for MNIST: `[784]` inputs, two hidden layers of 200 ReLU units,
    /// 10 classes (199,210 parameters).
    pub fn mnist_mlp() -> ModelSpec {
        ModelSpec {
            input_shape: vec![784],
            layers: vec![
                LayerSpec::Linear { out: 200 },
                LayerSpec::Relu,
                LayerSpec::Linear { out: 200 },
                LayerSpec::Relu,
                LayerSpec::Linear { out: 10 },
            ],
            num_classes: 10,
        }
    }

    /// A small CNN for `[1, 28, 28]` images (MNIST, FEMNIST with `num_classes` 62): two 5x5
    /// convolutions (16 and 32 channels, same padding) each followed by ReLU and 2x2 max
    /// pooling, then a 128-unit ReLU layer with dropout.
    pub fn mnist_cnn(num_classes: u32) -> ModelSpec {
        ModelSpec {
            input_shape: vec![1, 28, 28],
            layers: vec![
                LayerSpec::Conv2d {
                    out_channels: 16,
                    kernel: 5,
                    stride: 1,
                    padding: 2,
                },
                LayerSpec::Relu,
                LayerSpec::MaxPool2d {
                    kernel: 2,
                    stride: 2,
                },
                LayerSpec::Conv2d {
                    out_channels: 32,
                    kernel: 5,
                    stride: 1,
                    padding: 2,
                },
                LayerSpec::Relu,
                LayerSpec::MaxPool2d {
                    kernel: 2,
                    stride: 2,
                },
                LayerSpec::Flatten,
                LayerSpec::Linear { out: 128 },
                LayerSpec::Relu,
                LayerSpec::Dropout { prob: 0.25 },
                LayerSpec::Linear { out: num_classes },
            ],
            num_classes,
        }
    }

    /// LEAF's next-character model for Shakespeare: `[seq_len]` character ids from a
    /// vocabulary of `vocab`, an 8-wide embedding, two stacked LSTMs of 256 units, and one
    /// logit per character.
    pub fn shakespeare_lstm(seq_len: u32, vocab: u32) -> ModelSpec {
        ModelSpec {
            input_shape: vec![seq_len],
            layers: vec![
                LayerSpec::Embedding { vocab, dim: 8 },
                LayerSpec::Lstm {
                    hidden: 256,
                    return_sequence: true,
                },
                LayerSpec::Lstm {
                    hidden: 256,
                    return_sequence: false,
                },
                LayerSpec::Linear { out: vocab },
            ],
            num_classes: vocab,
        }
    }
}

/// A parameter block found during shape inference: name, shape, fan-in.
type Block = (&'static str, Vec<u64>, u64);

/// `[C, H, W]` if `shape` has rank 3.
fn image_shape(shape: &[u64]) -> Option<[u64; 3]> {
    match *shape {
        [c, h, w] => Some([c, h, w]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_with_known_parameter_counts() {
        assert_eq!(
            ModelSpec::digits_mlp().num_parameters(),
            Ok(64 * 32 + 32 + 32 * 10 + 10)
        );
        assert_eq!(ModelSpec::mnist_mlp().num_parameters(), Ok(199_210));
        // conv1 16*1*25+16, conv2 32*16*25+32, fc 1568*128+128, out 128*10+10.
        assert_eq!(
            ModelSpec::mnist_cnn(10).num_parameters(),
            Ok(416 + 12_832 + 200_832 + 1_290)
        );
        let lstm = ModelSpec::shakespeare_lstm(80, 80);
        let l1 = 4 * (8 * 256 + 256 + 256 * 256 + 256);
        let l2 = 4 * (256 * 256 + 256 + 256 * 256 + 256);
        assert_eq!(lstm.num_parameters(), Ok(80 * 8 + l1 + l2 + 256 * 80 + 80));
    }

    #[test]
    fn cnn_shapes_are_inferred_layer_by_layer() {
        let summary = ModelSpec::mnist_cnn(10).validate().unwrap();
        assert_eq!(summary.layer_outputs[0], vec![16, 28, 28]);
        assert_eq!(summary.layer_outputs[2], vec![16, 14, 14]);
        assert_eq!(summary.layer_outputs[5], vec![32, 7, 7]);
        assert_eq!(summary.layer_outputs[6], vec![1568]);
        assert_eq!(summary.layer_outputs.last().unwrap(), &vec![10]);
    }

    #[test]
    fn layout_blocks_are_contiguous_and_cover_every_parameter() {
        for spec in [
            ModelSpec::digits_mlp(),
            ModelSpec::mnist_cnn(62),
            ModelSpec::shakespeare_lstm(80, 96),
        ] {
            let layout = spec.parameter_layout().unwrap();
            let mut offset = 0;
            for block in &layout {
                assert_eq!(block.offset, offset);
                assert!(!block.is_empty());
                offset += block.len();
            }
            assert_eq!(offset, spec.num_parameters().unwrap());
        }
        let layout = ModelSpec::digits_mlp().parameter_layout().unwrap();
        let names: Vec<_> = layout
            .iter()
            .map(|b| (b.layer, b.name, b.shape.clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                (0, "weight", vec![64, 32]),
                (0, "bias", vec![32]),
                (2, "weight", vec![32, 10]),
                (2, "bias", vec![10]),
            ]
        );
    }

    fn layer_error(spec: &ModelSpec) -> (usize, &'static str, String) {
        match spec.validate() {
            Err(SpecError::Layer {
                index,
                kind,
                reason,
                ..
            }) => (index, kind, reason),
            other => panic!("expected a layer error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_offending_layer() {
        let mut spec = ModelSpec::mnist_cnn(10);
        spec.layers[3] = LayerSpec::Conv2d {
            out_channels: 8,
            kernel: 30,
            stride: 1,
            padding: 0,
        };
        let (index, kind, reason) = layer_error(&spec);
        assert_eq!((index, kind), (3, "conv2d"));
        assert!(reason.contains("kernel"), "{reason}");
        let message = spec.validate().unwrap_err().to_string();
        assert!(message.starts_with("layer 3 (conv2d)"), "{message}");

        let mut spec = ModelSpec::digits_mlp();
        spec.layers.insert(
            1,
            LayerSpec::MaxPool2d {
                kernel: 2,
                stride: 2,
            },
        );
        assert_eq!(layer_error(&spec).0, 1);

        let mut spec = ModelSpec::digits_mlp();
        spec.layers[0] = LayerSpec::Linear { out: 70_000 };
        assert_eq!(layer_error(&spec).1, "linear");

        let mut spec = ModelSpec::digits_mlp();
        spec.layers.insert(1, LayerSpec::Dropout { prob: 1.0 });
        assert_eq!(layer_error(&spec).1, "dropout");
        spec.layers[1] = LayerSpec::Dropout { prob: f32::NAN };
        assert_eq!(layer_error(&spec).1, "dropout");

        let mut spec = ModelSpec::shakespeare_lstm(80, 80);
        spec.layers.swap(0, 1);
        assert_eq!(layer_error(&spec).1, "lstm");

        let mut spec = ModelSpec::digits_mlp();
        spec.layers
            .insert(1, LayerSpec::Embedding { vocab: 4, dim: 4 });
        assert_eq!(layer_error(&spec), (1, "embedding", layer_error(&spec).2));
    }

    #[test]
    fn whole_spec_errors() {
        let mut spec = ModelSpec::digits_mlp();
        spec.num_classes = 9;
        assert!(matches!(spec.validate(), Err(SpecError::Output { .. })));

        let mut spec = ModelSpec::digits_mlp();
        spec.input_shape = vec![];
        assert!(matches!(spec.validate(), Err(SpecError::InputShape { .. })));
        spec.input_shape = vec![1, 1, 1, 64];
        assert!(matches!(spec.validate(), Err(SpecError::InputShape { .. })));
        spec.input_shape = vec![0];
        assert!(matches!(spec.validate(), Err(SpecError::InputShape { .. })));

        let mut spec = ModelSpec::digits_mlp();
        spec.layers.clear();
        assert_eq!(spec.validate(), Err(SpecError::LayerCount { count: 0 }));

        // 65536 x 65536 is within the per-dimension bound but far over the parameter bound.
        let spec = ModelSpec {
            input_shape: vec![65_536],
            layers: vec![LayerSpec::Linear { out: 65_536 }],
            num_classes: 65_536,
        };
        assert!(matches!(
            spec.validate(),
            Err(SpecError::TooManyParameters { .. })
        ));

        // A huge activation is refused even without parameters.
        let spec = ModelSpec {
            input_shape: vec![65_536, 65_536],
            layers: vec![LayerSpec::Relu, LayerSpec::Flatten],
            num_classes: 10,
        };
        assert_eq!(layer_error(&spec).0, 0);
    }

    #[test]
    fn specs_round_trip_through_cbor() {
        // The frame codec is tested elsewhere; this checks that every variant serializes.
        let spec = ModelSpec::mnist_cnn(10);
        let bytes = serde_cbor::to_vec(&spec).unwrap();
        let back: ModelSpec = serde_cbor::from_slice(&bytes).unwrap();
        assert_eq!(back, spec);
        let lstm = ModelSpec::shakespeare_lstm(80, 80);
        let back: ModelSpec = serde_cbor::from_slice(&serde_cbor::to_vec(&lstm).unwrap()).unwrap();
        assert_eq!(back, lstm);
    }

    #[test]
    fn initial_weights_are_seeded_and_bounded() {
        let spec = ModelSpec::digits_mlp();
        let a = spec.initial_weights(7).unwrap();
        assert_eq!(a.len(), spec.num_parameters().unwrap());
        assert_eq!(a, spec.initial_weights(7).unwrap());
        assert_ne!(a, spec.initial_weights(8).unwrap());
        // First block: Linear 64 -> 32, bound 1/8.
        assert!(a[..64 * 32].iter().all(|w| w.abs() <= 0.125));
        assert!(a[..64 * 32].iter().any(|w| w.abs() > 0.1));
    }

    #[test]
    fn embedding_weights_look_standard_normal() {
        let spec = ModelSpec::shakespeare_lstm(10, 80);
        let w = spec.initial_weights(1).unwrap();
        let emb = &w[..80 * 8];
        let mean = emb.iter().sum::<f32>() / emb.len() as f32;
        let var = emb.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / emb.len() as f32;
        assert!(mean.abs() < 0.15, "{mean}");
        assert!((var - 1.0).abs() < 0.2, "{var}");
    }
}
