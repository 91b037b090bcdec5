//! Criterion benchmarks of local training on the flex CPU backend: one tiny client (the digits
//! MLP on 1, 5 and 10 examples; the simulator's hot path) and the parameter round trip.
//! `cargo bench -p cohort-learning` (a release build of burn: slow to compile).

use std::sync::atomic::AtomicBool;

use cohort_learning::{
    ComputeBackend, Examples, LocalTrainer, ModelSpec, SpecModel, flatten_params, load_params,
};
use cohort_protocol::{OptimizerSpec, TrainingParams};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn tiny_clients(c: &mut Criterion) {
    let backend = ComputeBackend::flex();
    let digits = cohort_datasets::embedded_digits().expect("embedded digits");
    let mut trainer = LocalTrainer::new(&ModelSpec::digits_mlp(), &backend).expect("trainer");
    let global = trainer.initial_weights(1).expect("weights");
    let params = TrainingParams {
        epochs: 1,
        batch_size: 10,
        learning_rate: 0.05,
        optimizer: OptimizerSpec::Sgd { momentum: 0.9 },
        proximal_mu: 0.0,
    };
    let never = AtomicBool::new(false);
    let mut group = c.benchmark_group("digits_mlp_client");
    for examples in [1usize, 5, 10] {
        let indices: Vec<usize> = (0..examples).collect();
        group.bench_with_input(BenchmarkId::from_parameter(examples), &indices, |b, ix| {
            b.iter(|| {
                let view = Examples::subset(&digits.train, ix).expect("indices");
                trainer
                    .train(&global, view, &params, 1, &mut |_| {}, &never)
                    .expect("train")
            })
        });
    }
    group.finish();
}

fn param_round_trip(c: &mut Criterion) {
    let device = ComputeBackend::flex().device().clone();
    let spec = ModelSpec::mnist_mlp();
    let weights = spec.initial_weights(1).expect("weights");
    let mut model = Some(SpecModel::from_spec(&spec, &device).expect("model"));
    c.bench_function("mnist_mlp_load_and_flatten", |b| {
        b.iter(|| {
            let loaded = load_params(model.take().expect("model"), &weights).expect("load");
            let flat = flatten_params(&loaded).expect("flatten");
            model = Some(loaded);
            flat
        })
    });
}

criterion_group!(benches, tiny_clients, param_round_trip);
criterion_main!(benches);
