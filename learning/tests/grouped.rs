//! Grouped training (many clients per burn step) against per-client training: each client's
//! result must be what `LocalTrainer::train` gives it, within float tolerance, for every dense
//! layer type, both optimizers, FedProx and clients of unequal sizes; models that cannot be
//! grouped are refused so that callers fall back to per-client training.

use std::sync::atomic::AtomicBool;

use cohort_learning::{
    ComputeBackend, Examples, GroupMember, GroupedTrainer, LearningError, LocalTrainer, ModelSpec,
    TrainingOutcome,
};
use cohort_protocol::{LayerSpec, OptimizerSpec, TrainingParams};

fn params(epochs: u32, batch_size: u32, optimizer: OptimizerSpec, mu: f32) -> TrainingParams {
    TrainingParams {
        epochs,
        batch_size,
        learning_rate: 0.05,
        optimizer,
        proximal_mu: mu,
    }
}

/// Client sizes chosen to give unequal step counts with batch 16: 1 step of a batch smaller
/// than 16, 1 full step, 3 steps with a short last batch, 7 steps.
const SIZES: [usize; 5] = [5, 16, 37, 100, 64];

/// The per-client outcome and the grouped one for every client, after checking both succeeded.
fn both(spec: &ModelSpec, p: &TrainingParams) -> Vec<(TrainingOutcome, TrainingOutcome, usize)> {
    let data = cohort_datasets::embedded_digits().unwrap();
    let backend = ComputeBackend::flex();
    let mut single = LocalTrainer::new(spec, &backend).unwrap();
    let mut grouped = GroupedTrainer::new(spec, &backend).unwrap();
    let global = spec.initial_weights(3).unwrap();
    let mut start = 0;
    let parts: Vec<Vec<usize>> = SIZES
        .iter()
        .map(|&n| {
            // Overlapping, scattered indices, as a Dirichlet partition gives.
            let part = (0..n).map(|i| (start + 7 * i) % data.train.len()).collect();
            start += 13;
            part
        })
        .collect();
    let members: Vec<GroupMember<'_>> = parts
        .iter()
        .enumerate()
        .map(|(i, part)| GroupMember {
            data: Examples::subset(&data.train, part).unwrap(),
            seed: 100 + i as u64,
        })
        .collect();
    let together = grouped.train_group(&global, &members, p).unwrap();
    assert_eq!(together.len(), members.len());
    members
        .iter()
        .zip(together)
        .map(|(m, g)| {
            let alone = single
                .train(
                    &global,
                    m.data,
                    p,
                    m.seed,
                    &mut |_| {},
                    &AtomicBool::new(false),
                )
                .unwrap();
            (alone, g.unwrap(), m.data.len())
        })
        .collect()
}

fn assert_close(spec: &ModelSpec, p: &TrainingParams, tolerance: f32) {
    for (alone, together, n) in both(spec, p) {
        assert_eq!(together.num_examples, n as u64);
        assert_eq!(together.steps, alone.steps, "client of {n} examples");
        assert_eq!(together.update.len(), alone.update.len());
        let scale = alone
            .update
            .iter()
            .fold(0.0f32, |m, x| m.max(x.abs()))
            .max(1e-3);
        let worst = alone
            .update
            .iter()
            .zip(&together.update)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= tolerance * scale,
            "client of {n} examples: updates differ by {worst} (largest coordinate {scale}) with {p:?}"
        );
        assert!(
            (alone.loss - together.loss).abs() <= 1e-4 * alone.loss.abs().max(1.0),
            "client of {n}: loss {} alone, {} grouped",
            alone.loss,
            together.loss
        );
        assert!(
            (alone.accuracy - together.accuracy).abs() <= 1.0 / n as f32 + 1e-6,
            "client of {n}: accuracy {} alone, {} grouped",
            alone.accuracy,
            together.accuracy
        );
        // Training did something (the comparison is not between two zero vectors).
        assert!(together.update.iter().any(|x| x.abs() > 1e-4));
    }
}

#[test]
fn grouped_sgd_equals_per_client_training_for_clients_of_unequal_sizes() {
    let spec = ModelSpec::digits_mlp();
    assert_close(
        &spec,
        &params(1, 16, OptimizerSpec::Sgd { momentum: 0.0 }, 0.0),
        1e-4,
    );
    // Two epochs with momentum: the clients' second epochs start at different group steps,
    // and the finished clients must not be moved by their velocity.
    assert_close(
        &spec,
        &params(2, 16, OptimizerSpec::Sgd { momentum: 0.9 }, 0.0),
        1e-4,
    );
}

#[test]
fn grouped_adam_and_fedprox_equal_per_client_training() {
    let spec = ModelSpec::digits_mlp();
    let adam = OptimizerSpec::Adam {
        beta1: 0.9,
        beta2: 0.999,
    };
    assert_close(&spec, &params(2, 16, adam, 0.0), 1e-3);
    assert_close(
        &spec,
        &params(2, 16, OptimizerSpec::Sgd { momentum: 0.5 }, 0.5),
        1e-4,
    );
}

#[test]
fn every_dense_layer_type_groups_including_dropout_and_flatten() {
    // Flatten, then linear, ReLU, dropout (host masks from each client's seed), linear, ReLU,
    // linear.
    let spec = ModelSpec {
        input_shape: vec![64],
        layers: vec![
            LayerSpec::Flatten,
            LayerSpec::Linear { out: 24 },
            LayerSpec::Relu,
            LayerSpec::Dropout { prob: 0.3 },
            LayerSpec::Linear { out: 16 },
            LayerSpec::Relu,
            LayerSpec::Linear { out: 10 },
        ],
        num_classes: 10,
    };
    assert_close(
        &spec,
        &params(2, 16, OptimizerSpec::Sgd { momentum: 0.9 }, 0.0),
        1e-4,
    );
}

#[test]
fn models_that_cannot_be_grouped_are_refused_by_layer() {
    GroupedTrainer::supports(&ModelSpec::digits_mlp()).unwrap();
    GroupedTrainer::supports(&ModelSpec::mnist_mlp()).unwrap();
    let refused = |spec: &ModelSpec| match GroupedTrainer::supports(spec) {
        Err(LearningError::NotGroupable { layer, kind }) => (layer, kind),
        other => panic!("expected NotGroupable, got {other:?}"),
    };
    assert_eq!(refused(&ModelSpec::mnist_cnn(10)), (0, "conv2d"));
    assert_eq!(
        refused(&ModelSpec::shakespeare_lstm(80, 80)),
        (0, "embedding")
    );
    let sequence = ModelSpec {
        input_shape: vec![4, 16],
        layers: vec![
            LayerSpec::Lstm {
                hidden: 8,
                return_sequence: false,
            },
            LayerSpec::Linear { out: 3 },
        ],
        num_classes: 3,
    };
    assert_eq!(refused(&sequence), (0, "lstm"));
    let per_step_linear = ModelSpec {
        input_shape: vec![4, 16],
        layers: vec![LayerSpec::Linear { out: 3 }, LayerSpec::Flatten],
        num_classes: 12,
    };
    per_step_linear.validate().unwrap();
    assert_eq!(refused(&per_step_linear).0, 0);
    let backend = ComputeBackend::flex();
    let e = GroupedTrainer::new(&ModelSpec::mnist_cnn(10), &backend).unwrap_err();
    assert!(e.to_string().contains("one at a time"), "{e}");
}

#[test]
fn a_member_with_bad_data_fails_alone() {
    let data = cohort_datasets::embedded_digits().unwrap();
    let spec = ModelSpec::digits_mlp();
    let mut grouped = GroupedTrainer::new(&spec, &ComputeBackend::flex()).unwrap();
    let global = spec.initial_weights(1).unwrap();
    let some: Vec<usize> = (0..40).collect();
    let none: Vec<usize> = Vec::new();
    let members = [
        GroupMember {
            data: Examples::subset(&data.train, &some).unwrap(),
            seed: 1,
        },
        GroupMember {
            data: Examples::subset(&data.train, &none).unwrap(),
            seed: 2,
        },
    ];
    let p = params(1, 16, OptimizerSpec::Sgd { momentum: 0.0 }, 0.0);
    let out = grouped.train_group(&global, &members, &p).unwrap();
    assert!(out[0].as_ref().is_ok_and(|o| o.num_examples == 40));
    assert!(matches!(out[1], Err(LearningError::NoExamples(_))));
    // A bad global vector fails the call.
    assert!(matches!(
        grouped.train_group(&global[1..], &members, &p),
        Err(LearningError::ParamLength { .. })
    ));
}
