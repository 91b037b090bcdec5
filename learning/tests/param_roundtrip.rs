//! The flat parameter vector: exact round trips for every layer type, the documented layout,
//! and refusal (not a panic) of vectors of the wrong length.

use burn::module::Module;
use cohort_learning::model::Layer;
use cohort_learning::{
    ComputeBackend, LayerSpec, LearningError, ModelSpec, SpecModel, flatten_params, load_params,
};

fn flex() -> ComputeBackend {
    ComputeBackend::flex()
}

/// One spec per layer type (parameterless layers ride along in specs that need them).
fn specs() -> Vec<(&'static str, ModelSpec)> {
    vec![
        ("linear", ModelSpec::digits_mlp()),
        (
            "conv2d+max_pool2d+relu+flatten+dropout",
            ModelSpec {
                input_shape: vec![2, 9, 9],
                layers: vec![
                    LayerSpec::Conv2d {
                        out_channels: 3,
                        kernel: 3,
                        stride: 2,
                        padding: 1,
                    },
                    LayerSpec::Relu,
                    LayerSpec::MaxPool2d {
                        kernel: 2,
                        stride: 1,
                    },
                    LayerSpec::Flatten,
                    LayerSpec::Dropout { prob: 0.5 },
                    LayerSpec::Linear { out: 4 },
                ],
                num_classes: 4,
            },
        ),
        (
            "embedding+lstm",
            ModelSpec {
                input_shape: vec![5],
                layers: vec![
                    LayerSpec::Embedding { vocab: 7, dim: 3 },
                    LayerSpec::Lstm {
                        hidden: 4,
                        return_sequence: true,
                    },
                    LayerSpec::Lstm {
                        hidden: 6,
                        return_sequence: false,
                    },
                    LayerSpec::Linear { out: 7 },
                ],
                num_classes: 7,
            },
        ),
        (
            "sequence linear",
            ModelSpec {
                input_shape: vec![3, 4],
                layers: vec![
                    LayerSpec::Linear { out: 5 },
                    LayerSpec::Relu,
                    LayerSpec::Flatten,
                    LayerSpec::Linear { out: 2 },
                ],
                num_classes: 2,
            },
        ),
        ("mnist cnn", ModelSpec::mnist_cnn(10)),
        ("shakespeare lstm", ModelSpec::shakespeare_lstm(80, 80)),
    ]
}

#[test]
fn round_trip_is_bit_exact_for_every_layer_type() {
    let device = flex().device().clone();
    for (name, spec) in specs() {
        let model = SpecModel::from_spec(&spec, &device).unwrap();
        let expected = spec.num_parameters().unwrap();
        assert_eq!(model.num_params(), expected, "{name}");
        // Distinct, awkward values: subnormals, negative zero, large magnitudes.
        let mut weights = spec.initial_weights(3).unwrap();
        weights[0] = -0.0;
        weights[1] = f32::MIN_POSITIVE / 4.0;
        let last = weights.len() - 1;
        weights[last] = 3.0e38;
        let model = load_params(model, &weights).unwrap();
        let back = flatten_params(&model).unwrap();
        assert_eq!(back.len(), weights.len(), "{name}");
        assert!(
            back.iter()
                .zip(&weights)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: round trip changed a value"
        );
    }
}

#[test]
fn round_trip_also_holds_on_an_autodiff_device() {
    let device = flex().device().clone().autodiff();
    let spec = ModelSpec::shakespeare_lstm(6, 11);
    let weights = spec.initial_weights(9).unwrap();
    let model = load_params(SpecModel::from_spec(&spec, &device).unwrap(), &weights).unwrap();
    assert_eq!(flatten_params(&model).unwrap(), weights);
}

#[test]
fn layout_matches_the_documented_blocks() {
    // Counting values make every element's place visible.
    let device = flex().device().clone();
    let spec = ModelSpec {
        input_shape: vec![2, 4, 4],
        layers: vec![
            LayerSpec::Conv2d {
                out_channels: 3,
                kernel: 2,
                stride: 2,
                padding: 0,
            },
            LayerSpec::Flatten,
            LayerSpec::Linear { out: 2 },
        ],
        num_classes: 2,
    };
    let n = spec.num_parameters().unwrap();
    let weights: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let model = load_params(SpecModel::from_spec(&spec, &device).unwrap(), &weights).unwrap();
    let layout = spec.parameter_layout().unwrap();
    let (Layer::Conv2d(conv), Layer::Linear(linear)) = (&model.layers[0], &model.layers[2]) else {
        panic!("unexpected layer types");
    };
    // conv weight [out=3, in=2, 2, 2] row-major from offset 0.
    assert_eq!(layout[0].shape, vec![3, 2, 2, 2]);
    let conv_w = conv.weight.val().into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(conv_w, (0..24).map(|i| i as f32).collect::<Vec<_>>());
    let conv_b = conv.bias.as_ref().unwrap().val().into_data();
    assert_eq!(conv_b.try_to_vec::<f32>().unwrap(), vec![24.0, 25.0, 26.0]);
    // linear weight [in=12, out=2]: element [i, o] at offset 27 + i * 2 + o.
    assert_eq!(layout[2].shape, vec![12, 2]);
    assert_eq!(layout[2].offset, 27);
    let lin = linear.weight.val().into_data();
    assert_eq!(lin.shape().as_slice(), &[12, 2]);
    let lin = lin.try_to_vec::<f32>().unwrap();
    assert_eq!(lin[3], 27.0 + 3.0);
    assert_eq!(lin.len(), 24);
    let bias = linear.bias.as_ref().unwrap().val().into_data();
    assert_eq!(bias.try_to_vec::<f32>().unwrap(), vec![51.0, 52.0]);
}

#[test]
fn wrong_lengths_and_non_finite_values_are_errors() {
    let device = flex().device().clone();
    let spec = ModelSpec::digits_mlp();
    let n = spec.num_parameters().unwrap();
    for len in [0, n - 1, n + 1] {
        let model = SpecModel::from_spec(&spec, &device).unwrap();
        match load_params(model, &vec![0.5; len]) {
            Err(LearningError::ParamLength { expected, actual }) => {
                assert_eq!((expected, actual), (n, len));
            }
            other => panic!("expected a length error, got {other:?}"),
        }
    }
    let mut weights = vec![0.5; n];
    weights[17] = f32::INFINITY;
    let model = SpecModel::from_spec(&spec, &device).unwrap();
    assert!(matches!(
        load_params(model, &weights),
        Err(LearningError::NonFiniteWeight { index: 17 })
    ));
}

#[test]
fn invalid_specs_are_refused_with_the_layer_named() {
    let device = flex().device().clone();
    let mut spec = ModelSpec::mnist_cnn(10);
    spec.layers.insert(
        7,
        LayerSpec::MaxPool2d {
            kernel: 2,
            stride: 2,
        },
    );
    let err = SpecModel::from_spec(&spec, &device).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("layer 7 (max_pool2d)"), "{message}");
}
