//! The Rust baseline of the host tests: the same coordinator, task and examples as
//! `python_host` and `kotlin_host`, driven through `cohort_mobile::CohortClient`'s Rust API (the
//! functions the bindings call, without the C ABI), so the bindings' extra wall time per round
//! can be compared (`cargo test --workspace --all-features --test rust_host -- --nocapture`
//! prints the same "training per round" and "participate_once with a round" lines as the
//! Kotlin test; `mobile/bench/host_overhead.sh` compares them).

mod host_common;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cohort_mobile::{
    ClientConfig, CohortClient, DeviceReading, DeviceState, ExampleBatch, ExampleSource,
    HostFailure, MobileError, Participation, Progress, ProgressListener, SecretStore,
};

const FEATURES: usize = 64;

struct Source {
    n: u64,
    features: Vec<u8>,
    labels: Vec<u8>,
}

impl Source {
    /// Reads the file `Harness::write_examples` wrote.
    fn load(path: &std::path::Path) -> Source {
        let data = std::fs::read(path).unwrap();
        let n = u32::from_le_bytes(data[..4].try_into().unwrap()) as usize;
        let end = 4 + n * FEATURES * 4;
        Source {
            n: n as u64,
            features: data[4..end].to_vec(),
            labels: data[end..end + n * 4].to_vec(),
        }
    }
}

impl ExampleSource for Source {
    fn count(&self) -> Result<u64, HostFailure> {
        Ok(self.n)
    }

    fn batch(&self, start: u64, len: u32) -> Result<ExampleBatch, HostFailure> {
        let (s, l) = (start as usize, len as usize);
        Ok(ExampleBatch {
            features: self.features[s * FEATURES * 4..(s + l) * FEATURES * 4].to_vec(),
            labels: self.labels[s * 4..(s + l) * 4].to_vec(),
        })
    }
}

struct Plugged;

impl DeviceState for Plugged {
    fn read(&self) -> Result<DeviceReading, HostFailure> {
        Ok(DeviceReading {
            charging: true,
            unmetered: true,
            idle: true,
            battery_percent: Some(80),
            low_power: false,
            thermal_throttled: false,
        })
    }
}

#[derive(Default)]
struct Secrets(Mutex<HashMap<String, Vec<u8>>>);

impl SecretStore for Secrets {
    fn load(&self, key: String) -> Result<Option<Vec<u8>>, HostFailure> {
        Ok(self.0.lock().unwrap().get(&key).cloned())
    }
    fn store(&self, key: String, value: Vec<u8>) -> Result<(), HostFailure> {
        self.0.lock().unwrap().insert(key, value);
        Ok(())
    }
    fn delete(&self, key: String) -> Result<(), HostFailure> {
        self.0.lock().unwrap().remove(&key);
        Ok(())
    }
}

struct Quiet;

impl ProgressListener for Quiet {
    fn on_progress(&self, _: Progress) {}
    fn on_participation(&self, _: Participation) {}
}

#[test]
fn rust_host_takes_part_through_the_rust_api() {
    let h = host_common::Harness::start();
    let mut events = h.coordinator.scheduler.subscribe();
    let source = Source::load(&h.write_examples());
    let config = ClientConfig {
        server: h.coordinator.addr.to_string(),
        server_name: "localhost".into(),
        cache_dir: h.tmp.path().join("rust-host").display().to_string(),
        password: "rust host password".into(),
        task: None,
        require_charging: true,
        require_unmetered: false,
        require_idle: false,
        min_battery_percent: 0,
        max_rounds: None,
        recheck_ms: 50,
    };
    let client = CohortClient::new(
        config,
        Box::new(source),
        Box::new(Plugged),
        Box::new(Secrets::default()),
        Box::new(Quiet),
    )
    .unwrap();
    assert!(matches!(client.stop(), Err(MobileError::NotRunning { .. })));
    client
        .enroll("rust-host".into(), None, h.coordinator.fingerprint.to_hex())
        .unwrap();
    assert!(client.is_enrolled().unwrap());
    let started = Instant::now();
    let rounds = host_common::rounds();
    let mut round_ms = Vec::new();
    let mut training_ms = Vec::new();
    let mut checkins = 0;
    while round_ms.len() < rounds {
        checkins += 1;
        assert!(checkins < 200 * rounds, "never selected {rounds} times");
        let t0 = Instant::now();
        match client.participate_once().unwrap() {
            Participation::Contributed {
                completed: true,
                training_ms: training,
                ..
            } => {
                round_ms.push(t0.elapsed().as_secs_f64() * 1e3);
                training_ms.push(training);
            }
            Participation::NotSelected { retry_after_ms, .. } => {
                std::thread::sleep(Duration::from_millis(retry_after_ms.min(300)));
            }
            _ => {}
        }
    }
    // Each round trains 2 epochs of 300 examples: never 0 ms when it is measured.
    assert!(training_ms.iter().all(|&ms| ms > 0), "{training_ms:?}");
    // The lines mobile/bench/host_overhead.sh reads, as the Python and Kotlin hosts print them.
    let list = |v: Vec<String>| v.join(", ");
    println!(
        "rust host: training per round: {} ms",
        list(training_ms.iter().map(u64::to_string).collect())
    );
    println!(
        "rust host: participate_once with a round: {} ms",
        list(round_ms.iter().map(|m| format!("{m:.0}")).collect())
    );
    println!(
        "rounds: {rounds} in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert!(client.status().rounds_completed >= rounds as u32);
    let full = h.full_rounds(&mut events, 3);
    assert!(
        full >= 3,
        "the coordinator completed {full} rounds with the Rust client in them"
    );
}
