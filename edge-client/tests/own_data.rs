//! Training on the device's own files: an image folder written out of the MNIST IDX files (one
//! sub-folder per digit, PNG), read by three edge clients as the task's `[input]` declares, and
//! the MNIST CNN trained from it through a real coordinator on loopback with SecAgg+.

use std::path::Path;
use std::time::Duration;

use cohort_coordinator::scheduler::TaskEvent;
use cohort_coordinator::server::Coordinator;
use cohort_coordinator::task::TaskDefinition;
use cohort_datasets::{Dataset, datasets_dir_for_test, load_mnist};
use cohort_edge::trainer::BurnTrainer;
use cohort_learning::ComputeBackend;
use cohort_loopback::{ClientHooks, server_config, spawn_client};

const TASK: &str = r#"
id = "mnist-images"
rounds = 2
evaluate_every = 0

[model]
preset = "mnist_cnn"

[training]
epochs = 1
batch_size = 16
learning_rate = 0.05
optimizer = { kind = "sgd" }

[selection]
clients_per_round = 4
over_selection = 0.0
window_secs = 2

[secagg]
max_weight = 1024

[input]
kind = "image"
labels = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
scale = 0.00392156862745098
"#;

/// Writes `indices` of `data` (pixels in [0, 1]) as PNG files under `dir/<label>/`.
fn write_image_folder(data: &Dataset, indices: &[usize], dir: &Path) {
    let mut features = Vec::new();
    let mut labels = Vec::new();
    data.gather_features(indices, &mut features).unwrap();
    data.gather_labels(indices, &mut labels).unwrap();
    for (k, (pixels, label)) in features.chunks(28 * 28).zip(&labels).enumerate() {
        let sub = dir.join(label.to_string());
        std::fs::create_dir_all(&sub).unwrap();
        let bytes: Vec<u8> = pixels.iter().map(|v| (v * 255.0).round() as u8).collect();
        image::GrayImage::from_raw(28, 28, bytes)
            .unwrap()
            .save(sub.join(format!("{k:05}.png")))
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mnist_cnn_trains_from_image_folders_through_a_coordinator() {
    let Some(root) = datasets_dir_for_test("mnist_cnn_trains_from_image_folders") else {
        return;
    };
    let mnist = load_mnist(&root.join("mnist")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let c = Coordinator::start(server_config(tmp.path().join("coordinator"), None))
        .await
        .unwrap();
    c.create_and_start(TaskDefinition::from_toml(TASK).unwrap())
        .unwrap();
    let mut events = c.scheduler.subscribe();
    let mut clients = Vec::new();
    for i in 0..4 {
        let dir = tmp.path().join(format!("photos-{i}"));
        let indices: Vec<usize> = (i * 96..(i + 1) * 96).collect();
        write_image_folder(&mnist.train, &indices, &dir);
        let trainer = BurnTrainer::from_files(ComputeBackend::flex(), dir);
        clients.push(
            spawn_client(&c, tmp.path(), i, Box::new(trainer), ClientHooks::default())
                .await
                .unwrap(),
        );
    }
    let mut rounds = 0;
    let done = tokio::time::timeout(Duration::from_secs(600), async {
        while rounds < 2 {
            match events.recv().await {
                Ok(TaskEvent::RoundCompleted { contributors, .. }) => {
                    assert_eq!(contributors, 4, "every device trained on its image folder");
                    rounds += 1;
                }
                Ok(_) => {}
                Err(e) => panic!("the scheduler stopped: {e}"),
            }
        }
    })
    .await;
    assert!(done.is_ok(), "two rounds completed ({rounds} did)");
    for client in &clients {
        assert!(
            !client.handle.is_finished(),
            "no client stopped with an error"
        );
    }
    c.shutdown();
}
