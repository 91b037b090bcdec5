//! Measures the per-call cost of local training for tiny simulated clients: the digits MLP
//! (64-32-10) trained for one epoch on 1, 2, 5 and 10 examples, as a simulator does about a
//! thousand times per round.
//!
//! ```text
//! cargo run -p cohort-learning --example client_overhead -- [--backend flex|wgpu] [--calls N]
//! ```

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use cohort_learning::{BackendChoice, ComputeBackend, Examples, LocalTrainer, ModelSpec};
use cohort_protocol::{OptimizerSpec, TrainingParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut backend = BackendChoice::Flex;
    let mut calls = 1000usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--backend", Some(v)) => backend = v.parse()?,
            ("--calls", Some(v)) => calls = v.parse()?,
            _ => {
                return Err(format!(
                    "usage: client_overhead [--backend flex|wgpu] [--calls N] (got {flag})"
                )
                .into());
            }
        }
    }
    let backend = ComputeBackend::select(backend)?;
    let digits = cohort_datasets::embedded_digits()?;
    let mut trainer = LocalTrainer::new(&ModelSpec::digits_mlp(), &backend)?;
    let global = trainer.initial_weights(1)?;
    let params = TrainingParams {
        epochs: 1,
        batch_size: 10,
        learning_rate: 0.05,
        optimizer: OptimizerSpec::Sgd { momentum: 0.9 },
        proximal_mu: 0.0,
    };
    let never = AtomicBool::new(false);
    println!(
        "digits MLP ({} parameters), 1 epoch, batch 10, SGD momentum 0.9, backend {} (adapter {}; {})",
        trainer.num_params(),
        backend.kind().name(),
        backend.adapter().unwrap_or("-"),
        backend.reason()
    );
    for examples in [1usize, 2, 5, 10] {
        let n = trainer.num_params();
        // Warm up (first calls allocate, compile shaders on wgpu).
        let mut indices: Vec<usize> = (0..examples).collect();
        for _ in 0..5 {
            let view = Examples::subset(&digits.train, &indices)?;
            trainer.train(&global, view, &params, 0, &mut |_| {}, &never)?;
        }
        let start = Instant::now();
        let mut checksum = 0.0f32;
        for call in 0..calls {
            // A different client each call: different examples, different seed.
            for (k, i) in indices.iter_mut().enumerate() {
                *i = (call * 10 + k) % digits.train.len();
            }
            let view = Examples::subset(&digits.train, &indices)?;
            let out = trainer.train(&global, view, &params, call as u64, &mut |_| {}, &never)?;
            checksum += out.update[call % n];
        }
        let per_call = start.elapsed().as_secs_f64() / calls as f64;
        println!(
            "{examples:>2} examples/client: {:>8.1} µs per client ({:.0} clients/s) [checksum {checksum:.3}]",
            per_call * 1e6,
            1.0 / per_call
        );
    }
    let start = Instant::now();
    for _ in 0..calls {
        trainer.evaluate(&global, Examples::subset(&digits.test, &[0, 1, 2, 3, 4])?)?;
    }
    println!(
        "evaluate 5 examples: {:.1} µs per call",
        start.elapsed().as_secs_f64() / calls as f64 * 1e6
    );
    Ok(())
}
