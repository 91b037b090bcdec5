//! Model export against a real training run: the digits MLP trained by loopback devices with
//! SecAgg+, exported by `cohort-coordinator model export` (and by the API's download route),
//! loaded by Python's `safetensors` and NumPy, whose forward pass on the digits test set gets
//! the coordinator's own test accuracy to within 0.1 points; and read back into burn by
//! `cohort_learning::model_file`, with the same accuracy.
//!
//! Needs `python3` with `numpy` and `safetensors` (`.ci/run` installs them); fails without.

mod support;

use std::collections::HashMap;
use std::process::Command;

use cohort_coordinator::scheduler::TaskEvent;
use cohort_datasets::embedded_digits;
use cohort_learning::model_file::{ModelFile, ModelFileError};
use cohort_learning::{ComputeBackend, Examples, LocalTrainer, flatten_params};
use cohort_loopback::demo::{DemoConfig, run_demo};
use safetensors::tensor::{Dtype, TensorView};

fn write_test_set(path: &std::path::Path) {
    let digits = embedded_digits().unwrap();
    let x: Vec<u8> = digits
        .test
        .dense_features()
        .unwrap()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let y: Vec<u8> = digits
        .test
        .labels()
        .iter()
        .flat_map(|&l| i64::from(l).to_le_bytes())
        .collect();
    let n = digits.test.len();
    let tensors = vec![
        (
            "x".to_string(),
            TensorView::new(Dtype::F32, vec![n, digits.test.feature_len()], &x).unwrap(),
        ),
        (
            "y".to_string(),
            TensorView::new(Dtype::I64, vec![n], &y).unwrap(),
        ),
    ];
    std::fs::write(
        path,
        safetensors::tensor::serialize(tensors, None::<HashMap<String, String>>).unwrap(),
    )
    .unwrap();
}

fn python_accuracy(model: &std::path::Path, test: &std::path::Path) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/export_forward.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(model)
        .arg(test)
        .output()
        .expect("python3 runs (install it, with `pip install safetensors numpy`)");
    assert!(
        out.status.success(),
        "the Python reader failed (pip install safetensors numpy): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_reads_the_exported_model_and_matches_the_coordinators_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let report = run_demo(
        DemoConfig {
            clients: 8,
            rounds: 3,
            epochs: 3,
            state_dir: Some(dir.path().to_path_buf()),
            ..DemoConfig::default()
        },
        |_| {},
    )
    .await
    .unwrap();
    let (last_round, accuracy, model) = report
        .events
        .iter()
        .rev()
        .find_map(|e| match e {
            TaskEvent::RoundCompleted {
                round,
                evaluation: Some((_, acc)),
                model,
                ..
            } => Some((*round, *acc, *model)),
            _ => None,
        })
        .unwrap();
    assert_eq!(last_round, 3);
    assert!(accuracy > 0.5, "the model learned something: {accuracy}");

    let state = dir.path().join("coordinator");
    let test = dir.path().join("digits-test.safetensors");
    write_test_set(&test);
    let file = dir.path().join("model.safetensors");
    let out = Command::new(env!("CARGO_BIN_EXE_cohort-coordinator"))
        .arg("--state")
        .arg(&state)
        .args(["model", "export", "digits-demo", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = python_accuracy(&file, &test);
    assert_eq!(seen["task"], "digits-demo");
    assert_eq!(seen["round"], 3);
    assert_eq!(seen["model_hash"], model.to_hex());
    assert_eq!(
        seen["tensors"],
        serde_json::json!([
            "layers.0.bias",
            "layers.0.weight",
            "layers.2.bias",
            "layers.2.weight"
        ])
    );
    let python = seen["accuracy"].as_f64().unwrap();
    assert!(
        (python * 100.0 - f64::from(accuracy) * 100.0).abs() <= 0.1,
        "NumPy's forward pass gets {:.2}% where the coordinator measured {:.2}%",
        python * 100.0,
        accuracy * 100.0
    );

    // Rust users read the same file back into burn (cohort-learning's `model_file`): the
    // weights are the logged ones and give the coordinator's accuracy.
    let bytes = std::fs::read(&file).unwrap();
    let read = ModelFile::read(&bytes).unwrap();
    assert_eq!(read.model_hash, model);
    assert_eq!(
        (read.task.as_deref(), read.round),
        (Some("digits-demo"), Some(3))
    );
    let backend = ComputeBackend::flex();
    let module = read.to_module(backend.device()).unwrap();
    assert_eq!(flatten_params(&module).unwrap(), read.weights);
    let digits = embedded_digits().unwrap();
    let eval = LocalTrainer::new(&read.spec, &backend)
        .unwrap()
        .evaluate(&read.weights, Examples::all(&digits.test))
        .unwrap();
    assert!(
        (eval.accuracy - accuracy).abs() * 100.0 <= 0.1,
        "burn reads {:.2}% where the coordinator measured {:.2}%",
        eval.accuracy * 100.0,
        accuracy * 100.0
    );
    // A flipped weight byte is caught by the model hash; a cut file does not parse.
    let mut altered = bytes.clone();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    assert!(matches!(
        ModelFile::read(&altered),
        Err(ModelFileError::HashMismatch { .. })
    ));
    assert!(matches!(
        ModelFile::read(&bytes[..bytes.len() / 2]),
        Err(ModelFileError::Safetensors(_))
    ));

    // An earlier round, through the CLI: the initial model does far worse.
    let initial = dir.path().join("round0.safetensors");
    let out = Command::new(env!("CARGO_BIN_EXE_cohort-coordinator"))
        .arg("--state")
        .arg(&state)
        .args(["model", "export", "digits-demo", "--round", "0", "--out"])
        .arg(&initial)
        .output()
        .unwrap();
    assert!(out.status.success());
    let seen0 = python_accuracy(&initial, &test);
    assert_eq!(seen0["round"], 0);
    assert!(seen0["accuracy"].as_f64().unwrap() < python);

    // A round the log does not have is refused, naming the last one.
    let out = Command::new(env!("CARGO_BIN_EXE_cohort-coordinator"))
        .arg("--state")
        .arg(&state)
        .args(["model", "export", "digits-demo", "--round", "9", "--out"])
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ends at round 3"));

    // The API's download is the same file.
    let live = support::Live::start_in(dir.path().to_path_buf()).await;
    let r = live.get("/api/v1/tasks/digits-demo/model").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-disposition")
            .unwrap()
            .contains("digits-demo-round3.safetensors")
    );
    // The same tensors and metadata (the metadata's key order may differ).
    let cli_bytes = std::fs::read(&file).unwrap();
    let (from_api, from_cli) = (
        safetensors::SafeTensors::deserialize(&r.body).unwrap(),
        safetensors::SafeTensors::deserialize(&cli_bytes).unwrap(),
    );
    let (_, api_meta) = safetensors::SafeTensors::read_metadata(&r.body).unwrap();
    let (_, cli_meta) = safetensors::SafeTensors::read_metadata(&cli_bytes).unwrap();
    assert_eq!(api_meta.metadata(), cli_meta.metadata());
    let mut names = from_cli.names();
    names.sort();
    assert_eq!(names.len(), 4);
    for name in names {
        let (a, c) = (
            from_api.tensor(name).unwrap(),
            from_cli.tensor(name).unwrap(),
        );
        assert_eq!((a.shape(), a.data()), (c.shape(), c.data()), "{name}");
    }
    let r = live.get("/api/v1/tasks/digits-demo/model?round=7").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "no_checkpoint");
}
