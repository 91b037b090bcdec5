//! Local training behaviour on the CPU backend: determinism, the update, FedProx, Adam,
//! cancellation, progress, and refusal of bad inputs.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use cohort_datasets::Dataset;
use cohort_learning::{ComputeBackend, Examples, LearningError, LocalTrainer, ModelSpec};
use cohort_protocol::{LayerSpec, OptimizerSpec, TrainingParams};

fn sgd(epochs: u32, batch_size: u32, momentum: f32) -> TrainingParams {
    TrainingParams {
        epochs,
        batch_size,
        learning_rate: 0.05,
        optimizer: OptimizerSpec::Sgd { momentum },
        proximal_mu: 0.0,
    }
}

fn digits() -> cohort_datasets::Split {
    cohort_datasets::embedded_digits().unwrap()
}

fn trainer(spec: &ModelSpec) -> LocalTrainer {
    LocalTrainer::new(spec, &ComputeBackend::flex()).unwrap()
}

fn never() -> AtomicBool {
    AtomicBool::new(false)
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[test]
fn training_is_deterministic_for_a_seed_and_depends_on_it() {
    let data = digits();
    let indices: Vec<usize> = (0..200).collect();
    let view = Examples::subset(&data.train, &indices).unwrap();
    let mut t = trainer(&ModelSpec::digits_mlp());
    let global = t.initial_weights(1).unwrap();
    let params = sgd(2, 16, 0.9);
    let a = t
        .train(&global, view, &params, 9, &mut |_| {}, &never())
        .unwrap();
    let b = t
        .train(&global, view, &params, 9, &mut |_| {}, &never())
        .unwrap();
    let c = t
        .train(&global, view, &params, 10, &mut |_| {}, &never())
        .unwrap();
    assert_eq!(a, b, "same seed, same outcome (bit for bit)");
    assert_ne!(a.update, c.update, "another seed shuffles differently");
    assert_eq!(a.num_examples, 200);
    assert_eq!(a.steps, 2 * 13);
    assert!(norm(&a.update) > 0.0);
}

#[test]
fn dropout_masks_follow_the_seed() {
    let data = digits();
    let mut spec = ModelSpec::digits_mlp();
    spec.layers.insert(2, LayerSpec::Dropout { prob: 0.5 });
    let mut t = trainer(&spec);
    let global = t.initial_weights(1).unwrap();
    let view = Examples::all(&data.test);
    let params = sgd(1, 64, 0.0);
    let a = t
        .train(&global, view, &params, 3, &mut |_| {}, &never())
        .unwrap();
    let b = t
        .train(&global, view, &params, 3, &mut |_| {}, &never())
        .unwrap();
    assert_eq!(a.update, b.update);
    // Evaluation ignores dropout: two evaluations agree exactly.
    let e1 = t.evaluate(&global, view).unwrap();
    let e2 = t.evaluate(&global, view).unwrap();
    assert_eq!(e1, e2);
}

#[test]
fn update_is_trained_minus_global_and_improves_the_loss() {
    let data = digits();
    let mut t = trainer(&ModelSpec::digits_mlp());
    let global = t.initial_weights(2).unwrap();
    let view = Examples::all(&data.train);
    let before = t.evaluate(&global, view).unwrap();
    let out = t
        .train(&global, view, &sgd(3, 32, 0.9), 1, &mut |_| {}, &never())
        .unwrap();
    let trained: Vec<f32> = global.iter().zip(&out.update).map(|(g, u)| g + u).collect();
    let after = t.evaluate(&trained, view).unwrap();
    assert!(after.loss < before.loss * 0.5, "{before:?} -> {after:?}");
    // The reported training metrics are those of the last epoch, in the same range.
    assert!(out.accuracy > 0.8 && out.loss.is_finite(), "{out:?}");
}

#[test]
fn proximal_term_keeps_the_update_closer_to_global() {
    let data = digits();
    let indices: Vec<usize> = (0..64).collect();
    let view = Examples::subset(&data.train, &indices).unwrap();
    let mut t = trainer(&ModelSpec::digits_mlp());
    let global = t.initial_weights(4).unwrap();
    let mut params = sgd(5, 8, 0.0);
    let plain = t
        .train(&global, view, &params, 1, &mut |_| {}, &never())
        .unwrap();
    params.proximal_mu = 1.0;
    let prox = t
        .train(&global, view, &params, 1, &mut |_| {}, &never())
        .unwrap();
    assert!(
        norm(&prox.update) < 0.9 * norm(&plain.update),
        "prox {} vs plain {}",
        norm(&prox.update),
        norm(&plain.update)
    );
}

#[test]
fn adam_trains() {
    let data = digits();
    let mut t = trainer(&ModelSpec::digits_mlp());
    let global = t.initial_weights(5).unwrap();
    let params = TrainingParams {
        epochs: 3,
        batch_size: 32,
        learning_rate: 0.005,
        optimizer: OptimizerSpec::Adam {
            beta1: 0.9,
            beta2: 0.999,
        },
        proximal_mu: 0.0,
    };
    let out = t
        .train(
            &global,
            Examples::all(&data.train),
            &params,
            1,
            &mut |_| {},
            &never(),
        )
        .unwrap();
    let trained: Vec<f32> = global.iter().zip(&out.update).map(|(g, u)| g + u).collect();
    let test = t.evaluate(&trained, Examples::all(&data.test)).unwrap();
    assert!(test.accuracy > 0.85, "{test:?}");
}

#[test]
fn progress_counts_steps_and_reports_each_epoch() {
    let data = digits();
    let indices: Vec<usize> = (0..50).collect();
    let view = Examples::subset(&data.train, &indices).unwrap();
    let mut t = trainer(&ModelSpec::digits_mlp());
    let global = t.initial_weights(1).unwrap();
    let mut seen = Vec::new();
    t.train(
        &global,
        view,
        &sgd(3, 20, 0.0),
        1,
        &mut |p| seen.push(*p),
        &never(),
    )
    .unwrap();
    assert_eq!(seen.len(), 9);
    assert!(seen.iter().all(|p| p.total_steps == 9 && p.epochs == 3));
    assert_eq!(
        seen.iter().map(|p| p.step).collect::<Vec<_>>(),
        (1..=9).collect::<Vec<_>>()
    );
    let epochs: Vec<_> = seen
        .iter()
        .filter_map(|p| p.epoch_metrics.map(|_| p.epoch))
        .collect();
    assert_eq!(epochs, vec![1, 2, 3]);
}

#[test]
fn cancelling_stops_training() {
    let data = digits();
    let mut t = trainer(&ModelSpec::digits_mlp());
    let global = t.initial_weights(1).unwrap();
    let cancel = AtomicBool::new(false);
    let result = t.train(
        &global,
        Examples::all(&data.train),
        &sgd(5, 10, 0.0),
        1,
        &mut |p| {
            if p.step == 3 {
                cancel.store(true, Ordering::Relaxed);
            }
        },
        &cancel,
    );
    assert!(
        matches!(result, Err(LearningError::Cancelled { steps: 3 })),
        "{result:?}"
    );
    // The trainer is still usable afterwards.
    cancel.store(false, Ordering::Relaxed);
    t.train(
        &global,
        Examples::all(&data.test),
        &sgd(1, 64, 0.0),
        1,
        &mut |_| {},
        &cancel,
    )
    .unwrap();
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let data = digits();
    let mut t = trainer(&ModelSpec::digits_mlp());
    let global = t.initial_weights(1).unwrap();
    let view = Examples::all(&data.test);
    let ok = sgd(1, 8, 0.0);

    let short = &global[1..];
    assert!(matches!(
        t.train(short, view, &ok, 1, &mut |_| {}, &never()),
        Err(LearningError::ParamLength { .. })
    ));
    assert!(matches!(
        t.evaluate(short, view),
        Err(LearningError::ParamLength { .. })
    ));
    for bad in [
        TrainingParams {
            epochs: 0,
            ..ok.clone()
        },
        TrainingParams {
            batch_size: 0,
            ..ok.clone()
        },
        TrainingParams {
            learning_rate: f32::NAN,
            ..ok.clone()
        },
        TrainingParams {
            proximal_mu: -1.0,
            ..ok.clone()
        },
        TrainingParams {
            optimizer: OptimizerSpec::Sgd { momentum: 1.5 },
            ..ok.clone()
        },
    ] {
        assert!(
            matches!(
                t.train(&global, view, &bad, 1, &mut |_| {}, &never()),
                Err(LearningError::Params(_))
            ),
            "{bad:?}"
        );
    }
    let empty: Vec<usize> = Vec::new();
    assert!(matches!(
        t.train(
            &global,
            Examples::subset(&data.test, &empty).unwrap(),
            &ok,
            1,
            &mut |_| {},
            &never()
        ),
        Err(LearningError::NoExamples(_))
    ));
    assert!(Examples::subset(&data.test, &[usize::MAX]).is_err());

    // Data of the wrong shape for the model.
    let other = Dataset::from_dense(vec![0.0; 10], vec![0, 1], vec![5], 2).unwrap();
    assert!(matches!(
        t.train(
            &global,
            Examples::all(&other),
            &ok,
            1,
            &mut |_| {},
            &never()
        ),
        Err(LearningError::Data(_))
    ));

    // Token ids beyond the embedding's vocabulary.
    let spec = ModelSpec::shakespeare_lstm(4, 10);
    let mut lstm = trainer(&spec);
    let w = lstm.initial_weights(1).unwrap();
    let tokens = Dataset::from_dense(vec![1.0, 2.0, 3.0, 12.0], vec![1], vec![4], 10).unwrap();
    let err = lstm.evaluate(&w, Examples::all(&tokens)).unwrap_err();
    assert!(matches!(err, LearningError::Data(_)), "{err}");
}

#[test]
fn the_lstm_learns_a_repeating_sequence() {
    // Next token of a cyclic sequence 0,1,..,7,0,1,..: learnable from the last token alone.
    let vocab = 8u32;
    let seq = 6usize;
    let n = 64usize;
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        for j in 0..seq {
            features.push(((i + j) % vocab as usize) as f32);
        }
        labels.push(((i + seq) % vocab as usize) as u32);
    }
    let data = Dataset::from_dense(features, labels, vec![seq], vocab).unwrap();
    let spec = ModelSpec {
        input_shape: vec![seq as u32],
        layers: vec![
            LayerSpec::Embedding { vocab, dim: 8 },
            LayerSpec::Lstm {
                hidden: 16,
                return_sequence: false,
            },
            LayerSpec::Linear { out: vocab },
        ],
        num_classes: vocab,
    };
    let mut t = trainer(&spec);
    let global = t.initial_weights(3).unwrap();
    let params = TrainingParams {
        epochs: 30,
        batch_size: 16,
        learning_rate: 0.02,
        optimizer: OptimizerSpec::Adam {
            beta1: 0.9,
            beta2: 0.999,
        },
        proximal_mu: 0.0,
    };
    let out = t
        .train(
            &global,
            Examples::all(&data),
            &params,
            1,
            &mut |_| {},
            &never(),
        )
        .unwrap();
    let trained: Vec<f32> = global.iter().zip(&out.update).map(|(g, u)| g + u).collect();
    let eval = t.evaluate(&trained, Examples::all(&data)).unwrap();
    assert!(eval.accuracy > 0.95, "{eval:?}");
}
