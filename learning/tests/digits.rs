//! Central training of the digits MLP (64-32-10) to at least 90% test accuracy, on flex and on
//! wgpu (lavapipe in CI).

mod common;

use std::sync::atomic::AtomicBool;

use cohort_learning::{ComputeBackend, Examples, LocalTrainer, ModelSpec};
use cohort_protocol::{OptimizerSpec, TrainingParams};

fn train_digits(backend: &ComputeBackend) -> f32 {
    let digits = cohort_datasets::embedded_digits().expect("embedded digits load");
    let mut trainer = LocalTrainer::new(&ModelSpec::digits_mlp(), backend).unwrap();
    let global = trainer.initial_weights(42).unwrap();
    let params = TrainingParams {
        epochs: 10,
        batch_size: 32,
        learning_rate: 0.05,
        optimizer: OptimizerSpec::Sgd { momentum: 0.9 },
        proximal_mu: 0.0,
    };
    let start = std::time::Instant::now();
    let outcome = trainer
        .train(
            &global,
            Examples::all(&digits.train),
            &params,
            7,
            &mut |_| {},
            &AtomicBool::new(false),
        )
        .unwrap();
    let trained: Vec<f32> = global
        .iter()
        .zip(&outcome.update)
        .map(|(g, u)| g + u)
        .collect();
    let test = trainer
        .evaluate(&trained, Examples::all(&digits.test))
        .unwrap();
    eprintln!(
        "digits MLP on {}: {} train examples, train loss {:.4} acc {:.4}; test loss {:.4} acc {:.4} ({} test examples); {:.2?}",
        backend.kind().name(),
        outcome.num_examples,
        outcome.loss,
        outcome.accuracy,
        test.loss,
        test.accuracy,
        test.num_examples,
        start.elapsed()
    );
    test.accuracy
}

#[test]
fn digits_mlp_reaches_90_percent_on_flex() {
    common::init_tracing();
    let accuracy = train_digits(&ComputeBackend::flex());
    assert!(accuracy >= 0.90, "test accuracy {accuracy}");
}

#[test]
fn digits_mlp_reaches_90_percent_on_wgpu() {
    common::init_tracing();
    let Some(backend) = common::wgpu_or_skip("digits_mlp_reaches_90_percent_on_wgpu") else {
        return;
    };
    let accuracy = train_digits(&backend);
    assert!(accuracy >= 0.90, "test accuracy {accuracy}");
}
