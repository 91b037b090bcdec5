//! Trains an MNIST model from a spec and prints time and samples per second.
//!
//! ```text
//! cargo run -p cohort-learning --example train_mnist -- --backend flex --model mlp
//! cargo run -p cohort-learning --example train_mnist -- --backend wgpu --model cnn --epochs 2
//! ```
//!
//! Options: `--backend auto|wgpu|flex` (default flex), `--model mlp|cnn` (default mlp: 784-200-200-10),
//! `--epochs N` (default 5), `--batch-size N` (64), `--lr X` (0.05), `--optimizer sgd|adam`
//! (sgd with momentum 0.9), `--limit N` (train on the first N images only), `--target X`
//! (the test accuracy to reach, default 0.97; the exit status is 1 below it).
//! MNIST is read from `$COHORT_DATASETS/mnist` (or `../shared/datasets/mnist`).

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use cohort_learning::{BackendChoice, ComputeBackend, Examples, LocalTrainer, ModelSpec};
use cohort_protocol::{OptimizerSpec, TrainingParams};

struct Options {
    backend: BackendChoice,
    model: String,
    epochs: u32,
    batch_size: u32,
    lr: f32,
    optimizer: String,
    limit: Option<usize>,
    target: f32,
}

/// A command line this example cannot read.
#[derive(Debug, thiserror::Error)]
enum ArgError {
    #[error("{0} needs a value")]
    Missing(String),
    #[error("bad value for {flag}: {reason}")]
    Bad { flag: String, reason: String },
    #[error("unknown option {0}; see the example's doc comment")]
    Unknown(String),
}

fn parse() -> Result<Options, ArgError> {
    let mut o = Options {
        backend: BackendChoice::Flex,
        model: "mlp".into(),
        epochs: 5,
        batch_size: 64,
        lr: 0.05,
        optimizer: "sgd".into(),
        limit: None,
        target: 0.97,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| ArgError::Missing(flag.clone()));
        let bad = |e: &dyn std::fmt::Display| ArgError::Bad {
            flag: flag.clone(),
            reason: e.to_string(),
        };
        match flag.as_str() {
            "--backend" => o.backend = value()?.parse().map_err(|e| bad(&e))?,
            "--model" => o.model = value()?,
            "--epochs" => o.epochs = value()?.parse().map_err(|e| bad(&e))?,
            "--batch-size" => o.batch_size = value()?.parse().map_err(|e| bad(&e))?,
            "--lr" => o.lr = value()?.parse().map_err(|e| bad(&e))?,
            "--optimizer" => o.optimizer = value()?,
            "--limit" => o.limit = Some(value()?.parse().map_err(|e| bad(&e))?),
            "--target" => o.target = value()?.parse().map_err(|e| bad(&e))?,
            other => return Err(ArgError::Unknown(other.to_string())),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,wgpu=warn,naga=warn,cubecl=warn".into()),
        )
        .init();
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("train_mnist: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let o = parse()?;
    let Some(dir) = cohort_datasets::datasets_dir() else {
        return Err(format!(
            "MNIST not found: set {} to the shared datasets folder",
            cohort_datasets::DATASETS_ENV
        )
        .into());
    };
    let split = cohort_datasets::load_mnist(&dir.join("mnist"))?;
    // The dataset's images are [1, 28, 28]; the MLP reads the same 784 values as a vector.
    let spec = match o.model.as_str() {
        "mlp" => ModelSpec::mnist_mlp(),
        "cnn" => ModelSpec::mnist_cnn(10),
        other => return Err(format!("unknown model {other}; use mlp or cnn").into()),
    };
    let optimizer = match o.optimizer.as_str() {
        "sgd" => OptimizerSpec::Sgd { momentum: 0.9 },
        "adam" => OptimizerSpec::Adam {
            beta1: 0.9,
            beta2: 0.999,
        },
        other => return Err(format!("unknown optimizer {other}; use sgd or adam").into()),
    };
    let backend = ComputeBackend::select(o.backend)?;
    println!(
        "backend {} ({}), adapter {}",
        backend.kind().name(),
        backend.reason(),
        backend.adapter().unwrap_or("-")
    );
    let mut trainer = LocalTrainer::new(&spec, &backend)?;
    println!(
        "model {} ({} parameters), optimizer {}, lr {}, batch {}",
        o.model,
        trainer.num_params(),
        o.optimizer,
        o.lr,
        o.batch_size
    );
    let train_indices: Vec<usize> =
        (0..o.limit.unwrap_or(usize::MAX).min(split.train.len())).collect();
    let train = Examples::subset(&split.train, &train_indices)?;
    let test = Examples::all(&split.test);
    let params = TrainingParams {
        epochs: 1,
        batch_size: o.batch_size,
        learning_rate: o.lr,
        optimizer,
        proximal_mu: 0.0,
    };
    let mut weights = trainer.initial_weights(1)?;
    let never = AtomicBool::new(false);
    let mut total_train = 0.0f64;
    let mut accuracy = 0.0;
    for epoch in 1..=o.epochs {
        // One epoch per call, so that the test accuracy is visible as it goes. (The optimizer
        // state restarts each epoch, as it would in federated rounds.)
        let start = Instant::now();
        let out = trainer.train(
            &weights,
            train,
            &params,
            u64::from(epoch),
            &mut |_| {},
            &never,
        )?;
        let secs = start.elapsed().as_secs_f64();
        total_train += secs;
        for (w, u) in weights.iter_mut().zip(&out.update) {
            *w += u;
        }
        let start = Instant::now();
        let eval = trainer.evaluate(&weights, test)?;
        let eval_secs = start.elapsed().as_secs_f64();
        accuracy = eval.accuracy;
        println!(
            "epoch {epoch}: train {:.1} s ({:.0} samples/s, {:.1} steps/s), loss {:.4}, acc {:.4}; test {:.1} s ({:.0} samples/s), loss {:.4}, acc {:.4}",
            secs,
            train.len() as f64 / secs,
            out.steps as f64 / secs,
            out.loss,
            out.accuracy,
            eval_secs,
            test.len() as f64 / eval_secs,
            eval.loss,
            eval.accuracy
        );
    }
    let reached = accuracy >= o.target;
    println!(
        "{}: test accuracy {:.4} (target {}), {} epochs in {:.1} s of training on {}",
        if reached { "PASS" } else { "BELOW TARGET" },
        accuracy,
        o.target,
        o.epochs,
        total_train,
        backend.kind().name()
    );
    Ok(reached)
}
