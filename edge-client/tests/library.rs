//! The edge client as a library ([`EdgeClient`]) against a real coordinator on loopback, with
//! synthetic `cohort-edge` clients filling the cohort: stop() in the middle of
//! local training, and examples or device states that the client must refuse (typed errors,
//! the round abandoned, the coordinator counting a dropout).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cohort_coordinator::scheduler::TaskEvent;
use cohort_datasets::{Dataset, embedded_digits};
use cohort_edge::eligibility::Ineligible;
use cohort_edge::host::DatasetSource;
use cohort_edge::run::{Backoff, RunConfig, RunError};
use cohort_edge::trainer::{BurnTrainer, TrainError};
use cohort_edge::{
    ClientProgress, DeviceReading, DeviceState, EdgeClient, EdgeError, ExampleBatch, ExampleError,
    ExampleSource, FileSecretStore, Host, HostError, Participation, Phase, ProgressListener,
};
use cohort_learning::ComputeBackend;
use cohort_loopback::BlockingCoordinator;
use cohort_net::opaque_suite::KsfParams;

/// Clients a round: the library's client and six synthetic ones. The smallest cohort that
/// survives one dropout with the consistency check at `dropout_fraction = 0.25` (the quorum of
/// seven is six, and the check's parameters exist from six clients on at that fraction).
const COHORT: u32 = 7;

fn task(id: &str, clients: u32, epochs: u32) -> String {
    format!(
        r#"
id = "{id}"
rounds = 1000
evaluate_every = 0

[model]
input_shape = [64]
num_classes = 10
layers = [{{ type = "linear", out = 16 }}, {{ type = "relu" }}, {{ type = "linear", out = 10 }}]

[training]
epochs = {epochs}
batch_size = 8
learning_rate = 0.01
optimizer = {{ kind = "sgd" }}

[selection]
clients_per_round = {clients}
over_selection = 0.0
window_secs = 2

[secagg]
max_weight = 1024
dropout_fraction = 0.25
"#
    )
}

/// A coordinator running one task, with `synthetic` well-behaved clients.
struct Harness(BlockingCoordinator);

impl std::ops::Deref for Harness {
    type Target = BlockingCoordinator;
    fn deref(&self) -> &BlockingCoordinator {
        &self.0
    }
}

impl Harness {
    fn start(task_toml: &str, synthetic: usize) -> Harness {
        Harness(BlockingCoordinator::start(task_toml, synthetic).unwrap())
    }

    /// An enrolled library client.
    fn client(
        &self,
        name: &str,
        source: Arc<dyn ExampleSource>,
        device: Arc<dyn DeviceState>,
        listener: Option<Arc<dyn ProgressListener>>,
    ) -> EdgeClient {
        let dir = self.tmp.path().join(name);
        let config = RunConfig {
            backoff: Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(2),
            },
            eligibility_recheck: Duration::from_millis(100),
            ..RunConfig::new(self.coordinator.addr, dir.clone(), format!("pw-{name}"))
        };
        let host = Host {
            device,
            secrets: Arc::new(FileSecretStore::new(&dir)),
            secrets_place: dir.display().to_string(),
            listener,
        };
        let trainer = BurnTrainer::from_source(ComputeBackend::flex(), source);
        let client = EdgeClient::new(config, host, Box::new(trainer)).unwrap();
        assert!(!client.is_enrolled().unwrap());
        client
            .enroll(
                name,
                None,
                self.coordinator.fingerprint,
                KsfParams::dangerous_insecure_fast_for_tests(),
            )
            .unwrap();
        assert!(client.is_enrolled().unwrap());
        client
    }
}

/// A device state the test sets.
struct TestDevice(Mutex<Result<DeviceReading, HostError>>);

fn plugged() -> DeviceReading {
    DeviceReading {
        charging: true,
        unmetered: true,
        idle: true,
        battery_percent: Some(90),
        low_power: false,
        thermal_throttled: false,
    }
}

impl TestDevice {
    fn new() -> Arc<TestDevice> {
        Arc::new(TestDevice(Mutex::new(Ok(plugged()))))
    }
    fn set(&self, r: Result<DeviceReading, HostError>) {
        *self.0.lock().unwrap() = r;
    }
}

impl DeviceState for TestDevice {
    fn read(&self) -> Result<DeviceReading, HostError> {
        self.0.lock().unwrap().clone()
    }
}

fn digits_shard() -> Dataset {
    let train = embedded_digits().unwrap().train;
    let idx: Vec<usize> = (0..400).collect();
    train.subset(&idx).unwrap()
}

/// What [`StopDuringTraining`] reports: when it stopped, the progress it saw, and what the
/// second `stop()` said.
type StopReport = (Instant, ClientProgress, Result<(), EdgeError>);

/// Stops the client from inside the progress callback, on the training thread, once training
/// has taken `after` steps; sends the instant of the stop and what the second stop() said.
struct StopDuringTraining {
    client: Mutex<Option<Arc<EdgeClient>>>,
    after: u64,
    fired: AtomicU32,
    tx: Mutex<std_mpsc::Sender<StopReport>>,
}

impl ProgressListener for StopDuringTraining {
    fn on_progress(&self, p: &ClientProgress) {
        if p.phase != Phase::Training || p.step < self.after {
            return;
        }
        if self.fired.fetch_add(1, Ordering::SeqCst) != 0 {
            return;
        }
        let client = self
            .client
            .lock()
            .unwrap()
            .clone()
            .expect("set before the call");
        let at = Instant::now();
        client.stop().expect("the first stop is accepted");
        // The call cannot end while this callback runs (the training thread is joined), so
        // the second stop finds the first still pending.
        let second = client.stop();
        let _ = self.tx.lock().unwrap().send((at, *p, second));
    }
}

#[test]
fn stop_mid_training_returns_promptly_and_abandons_the_round() {
    // Four per round, a quorum of three: the round goes on without the stopped client.
    let h = Harness::start(&task("stop", COHORT, 1000), COHORT as usize - 1);
    let (tx, rx) = std_mpsc::channel();
    let listener = Arc::new(StopDuringTraining {
        client: Mutex::new(None),
        after: 5,
        fired: AtomicU32::new(0),
        tx: Mutex::new(tx),
    });
    let client = Arc::new(h.client(
        "stopper",
        Arc::new(DatasetSource(digits_shard())),
        TestDevice::new(),
        Some(listener.clone()),
    ));
    *listener.client.lock().unwrap() = Some(client.clone());
    // Nothing runs yet.
    assert!(matches!(client.stop(), Err(EdgeError::NotRunning)));

    let mut events = h.coordinator.scheduler.subscribe();
    let result = loop {
        match client.participate_once() {
            Ok(Participation::NotSelected { retry_after, .. })
            | Ok(Participation::NoTask { retry_after, .. }) => {
                std::thread::sleep(retry_after.min(Duration::from_millis(300)))
            }
            Ok(Participation::Left) => {}
            other => break other,
        }
    };
    let returned = Instant::now();
    let (stopped_at, progress, second) = rx.try_recv().expect("the listener stopped the client");
    let latency = returned - stopped_at;
    eprintln!(
        "stop() latency during training: {latency:?} (stopped at step {} of {})",
        progress.step, progress.total_steps
    );
    let err = result.expect_err("a stopped call fails");
    assert!(err.is_stopped(), "{err}");
    assert!(
        matches!(second, Err(EdgeError::AlreadyStopping)),
        "{second:?}"
    );
    assert!(progress.step < progress.total_steps, "stopped mid-training");
    let status = client.status();
    assert!(!status.running && !status.stopping, "{status:?}");
    assert!(matches!(client.stop(), Err(EdgeError::NotRunning)));

    // The round went on without it: the coordinator counted a dropout.
    let completed = h.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                if let Ok(TaskEvent::RoundCompleted {
                    selected,
                    contributors,
                    ..
                }) = events.recv().await
                    && selected == COHORT
                {
                    return contributors;
                }
            }
        })
        .await
    });
    assert_eq!(
        completed.ok(),
        Some(COHORT - 1),
        "the stopped client's input is not in the sum"
    );
}

/// What the bad source does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bad {
    Throws,
    WrongLength,
    NaN,
    Empty,
}

struct BadSource {
    mode: Mutex<Bad>,
    inner: DatasetSource,
}

impl ExampleSource for BadSource {
    fn count(&self) -> Result<u64, HostError> {
        match *self.mode.lock().unwrap() {
            Bad::Throws => Err(HostError::new("the photo library is locked")),
            Bad::Empty => Ok(0),
            _ => self.inner.count(),
        }
    }
    fn batch(&self, start: u64, len: u32) -> Result<ExampleBatch, HostError> {
        let mut b = self.inner.batch(start, len)?;
        match *self.mode.lock().unwrap() {
            Bad::WrongLength => {
                b.features.pop();
            }
            Bad::NaN => b.features[3] = f32::NAN,
            _ => {}
        }
        Ok(b)
    }
}

#[test]
fn bad_examples_and_device_states_give_typed_errors_and_a_dropout() {
    let h = Harness::start(&task("bad", COHORT, 1), COHORT as usize - 1);
    let source = Arc::new(BadSource {
        mode: Mutex::new(Bad::Throws),
        inner: DatasetSource(digits_shard()),
    });
    let device = TestDevice::new();
    let client = h.client("bad", source.clone(), device.clone(), None);

    // The device state: throwing, then unplugged (no check-in), then plugged in again.
    device.set(Err(HostError::new("battery service unavailable")));
    let err = client.participate_once().unwrap_err();
    assert!(
        matches!(err, EdgeError::Run(RunError::DeviceState(_))),
        "{err}"
    );
    device.set(Ok(DeviceReading {
        charging: false,
        ..plugged()
    }));
    match client.participate_once().unwrap() {
        Participation::NotEligible { reason, .. } => assert_eq!(reason, Ineligible::OnBattery),
        other => panic!("expected NotEligible, got {other:?}"),
    }
    device.set(Ok(plugged()));

    let mut events = h.coordinator.scheduler.subscribe();
    for mode in [Bad::Throws, Bad::WrongLength, Bad::NaN, Bad::Empty] {
        *source.mode.lock().unwrap() = mode;
        let err = loop {
            match client.participate_once() {
                Ok(Participation::NotSelected { retry_after, .. }) => {
                    std::thread::sleep(retry_after.min(Duration::from_millis(300)))
                }
                Ok(Participation::Left) => {}
                Ok(other) => panic!("{mode:?}: the round cannot succeed, got {other:?}"),
                Err(e) => break e,
            }
        };
        let EdgeError::Run(RunError::Training(TrainError::Examples(e))) = &err else {
            panic!("{mode:?}: expected an example error, got {err}");
        };
        match (mode, e) {
            (Bad::Throws, ExampleError::Source(h)) => {
                assert!(h.message.contains("locked"), "{e}")
            }
            // The source is streamed in training's shuffled order: the error names the
            // first batch read (examples 0..256 or 256..400), whichever the order met first.
            (Bad::WrongLength, ExampleError::WrongLength { start: 0 | 256, .. })
            | (Bad::NaN, ExampleError::NotFinite { index: 0 | 256, .. })
            | (Bad::Empty, ExampleError::NoExamples) => {}
            _ => panic!("{mode:?}: wrong error {e:?}"),
        }
        assert!(err.to_string().contains("nothing was uploaded"), "{err}");
        // The round this client was selected for went on without its input.
        let contributors = h.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(120), async {
                loop {
                    if let Ok(TaskEvent::RoundCompleted {
                        selected,
                        contributors,
                        ..
                    }) = events.recv().await
                        && selected == COHORT
                    {
                        return contributors;
                    }
                }
            })
            .await
        });
        assert_eq!(
            contributors.ok(),
            Some(COHORT - 1),
            "{mode:?}: the client dropped out"
        );
    }
}

/// The host's source is streamed into training a batch at a time (`host::SourceStream`), not
/// copied whole: training asks for the same examples in the same order as from a dataset, so
/// the update is the same bit for bit, and so are the federated-evaluation metrics.
#[test]
fn a_streamed_source_trains_exactly_like_the_same_dataset() {
    use cohort_edge::host::SourceStream;
    use cohort_learning::{Examples, LocalTrainer, ModelSpec};
    use cohort_protocol::{OptimizerSpec, TrainingParams};
    use std::sync::atomic::AtomicBool;

    let shard = digits_shard();
    let source = DatasetSource(shard.clone());
    let spec = ModelSpec::digits_mlp();
    let shape: Vec<usize> = spec.input_shape.iter().map(|&d| d as usize).collect();
    let stream = SourceStream::open(&source, &shape, spec.num_classes).unwrap();
    let mut trainer = LocalTrainer::new(&spec, &ComputeBackend::flex()).unwrap();
    let global = trainer.initial_weights(3).unwrap();
    let params = TrainingParams {
        epochs: 2,
        batch_size: 16,
        learning_rate: 0.05,
        optimizer: OptimizerSpec::Sgd { momentum: 0.9 },
        proximal_mu: 0.0,
    };
    let never = AtomicBool::new(false);
    let from_dataset = trainer
        .train(
            &global,
            Examples::all(&shard),
            &params,
            7,
            &mut |_| {},
            &never,
        )
        .unwrap();
    let streamed = trainer
        .train(
            &global,
            Examples::stream(&stream),
            &params,
            7,
            &mut |_| {},
            &never,
        )
        .unwrap();
    assert_eq!(streamed, from_dataset);
    assert_eq!(
        stream.batches_read(),
        2,
        "400 examples: two batches, each read once"
    );
    assert_eq!(
        trainer
            .evaluate(&global, Examples::stream(&stream))
            .unwrap(),
        trainer.evaluate(&global, Examples::all(&shard)).unwrap()
    );
}
