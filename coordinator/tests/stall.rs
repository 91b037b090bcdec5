//! Stalled devices (issue 14): of eight devices selected for a round, one stops receiving in the
//! middle of its model download and one stops sending in the middle of its masked-input upload,
//! both without closing their connections. Each is dropped at its phase's deadline, and the
//! round completes with the six others: no phase waits for a device past its deadline.
//!
//! The devices are the real edge client (`cohort_edge::run`); each reaches the coordinator
//! through a UDP relay of its own, which stops relaying one direction once that direction has
//! carried a given number of bytes. The model is large (about 2 MB of weights, and as much in
//! each masked input) so that the cut lands inside the download or the upload.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cohort_coordinator::scheduler::TaskEvent;
use cohort_coordinator::server::Coordinator;
use cohort_coordinator::task::TaskDefinition;
use cohort_edge::eligibility::EligibilityPolicy;
use cohort_edge::run::{Backoff, RunConfig, run};
use cohort_loopback::{SyntheticTrainer, enroll_client, server_config};
use cohort_net::{ClientTransport, ServerTrust, TransportOptions};
use tokio::net::UdpSocket;

/// About 518,000 parameters: 2 MB of weights down, 2 MB of masked input up.
const TASK: &str = r#"
id = "stall"
rounds = 1
evaluate_every = 0

[model]
input_shape = [1024]
num_classes = 10
layers = [
    { type = "linear", out = 500 },
    { type = "relu" },
    { type = "linear", out = 10 },
]

[training]
epochs = 1
batch_size = 16
learning_rate = 0.1
optimizer = { kind = "sgd", momentum = 0.0 }

[selection]
clients_per_round = 8
over_selection = 0.0
window_secs = 60

[secagg]
max_weight = 256
# Two dropouts of eight: within what the consistency check's parameters allow at this size.
dropout_fraction = 0.25

[deadlines]
advertise_keys = 10
share_keys = 10
masked_input = 15
unmask = 10
"#;

/// Where a relay stops relaying.
#[derive(Clone, Copy, Debug, Default)]
struct Cut {
    /// Device to coordinator: nothing more once this many bytes went through.
    up_after: Option<u64>,
    /// Coordinator to device: nothing more once this many bytes went through.
    down_after: Option<u64>,
}

/// Cuts in the middle of the 2 MB download or upload: well past everything before it (the
/// handshake, login, check-in and round configuration, and the acknowledgements of the
/// download: tens of KB), well before its end.
const MID_TRANSFER: u64 = 1 << 20;

/// A UDP relay on 127.0.0.1 to `server` for one device; returns the address the device
/// connects to and a flag that turns true once a cut dropped a datagram. Datagrams past a cut
/// are dropped, so the peer on the other side sees a device that went silent (or deaf) without
/// closing anything.
async fn relay(server: SocketAddr, cut: Cut) -> (SocketAddr, Arc<AtomicBool>) {
    let cutting = Arc::new(AtomicBool::new(false));
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(server).await.unwrap();
    let addr = front.local_addr().unwrap();
    let device = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    {
        let (front, back, device, cutting) =
            (front.clone(), back.clone(), device.clone(), cutting.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            let mut carried = 0u64;
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *device.lock().unwrap() = Some(from);
                carried += n as u64;
                if cut.up_after.is_some_and(|limit| carried > limit) {
                    cutting.store(true, Ordering::Relaxed);
                    continue;
                }
                let _ = back.send(&buf[..n]).await;
            }
        });
    }
    let down_cutting = cutting.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        let mut carried = 0u64;
        while let Ok(n) = back.recv(&mut buf).await {
            carried += n as u64;
            if cut.down_after.is_some_and(|limit| carried > limit) {
                down_cutting.store(true, Ordering::Relaxed);
                continue;
            }
            let to = *device.lock().unwrap();
            if let Some(to) = to {
                let _ = front.send_to(&buf[..n], to).await;
            }
        }
    });
    (addr, cutting)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_that_stall_mid_transfer_are_dropped_at_the_deadline_and_the_round_completes() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Arc::new(
        Coordinator::start(server_config(dir.path().join("coordinator"), None))
            .await
            .unwrap(),
    );
    let mut events = coordinator.scheduler.subscribe();
    coordinator
        .create_and_start(TaskDefinition::from_toml(TASK).unwrap())
        .unwrap();

    // Devices 0 to 5 are honest; 6 stops receiving mid-download, 7 stops sending mid-upload.
    let cuts = [
        Cut::default(),
        Cut::default(),
        Cut::default(),
        Cut::default(),
        Cut::default(),
        Cut::default(),
        Cut {
            down_after: Some(MID_TRANSFER),
            ..Cut::default()
        },
        Cut {
            up_after: Some(MID_TRANSFER),
            ..Cut::default()
        },
    ];
    let mut honest = Vec::new();
    let mut stalled = Vec::new();
    for (i, cut) in cuts.into_iter().enumerate() {
        let transport = ClientTransport::bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerTrust::Pinned(coordinator.fingerprint),
            TransportOptions::default(),
        )
        .unwrap();
        let state = dir.path().join(format!("device{i}"));
        std::fs::create_dir_all(&state).unwrap();
        let password = format!("device-password-{i}");
        enroll_client(
            &transport,
            &coordinator,
            &state,
            &format!("device{i}"),
            &password,
        )
        .await
        .expect("enrolls");
        let (via, cutting) = relay(coordinator.addr, cut).await;
        let config = RunConfig {
            eligibility: EligibilityPolicy::always(),
            backoff: Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(2),
            },
            max_rounds: Some(1),
            max_failures: 30,
            ..RunConfig::new(via, state, password)
        };
        let handle = tokio::spawn(async move {
            run(
                &transport,
                &config,
                Box::new(SyntheticTrainer::new(i as u64, 10)),
                None,
            )
            .await
        });
        if i < 6 {
            honest.push(handle);
        } else {
            stalled.push((handle, cutting));
        }
    }

    // Waits on the round's outcome; the bound only turns a hang into a failure (the deadlines
    // above add up to 45 s).
    let completed = tokio::time::timeout(Duration::from_secs(240), async {
        loop {
            match events.recv().await {
                Ok(TaskEvent::RoundCompleted {
                    selected,
                    contributors,
                    members,
                    ..
                }) => break (selected, contributors, members),
                Ok(TaskEvent::RoundAborted { reason, .. }) => panic!(
                    "the round was aborted ({reason}) instead of completing without the stalled \
                     devices"
                ),
                Ok(_) => continue,
                Err(e) => panic!("task events ended: {e}"),
            }
        }
    })
    .await
    .expect("the round completes without the stalled devices");
    let (selected, contributors, members) = completed;
    assert_eq!(selected, 8, "all eight devices were selected");
    assert_eq!(
        contributors, 6,
        "the six honest devices contributed, the stalled ones did not: members {members:?}"
    );
    for h in honest {
        let rounds = h
            .await
            .unwrap()
            .expect("an honest device finishes its round");
        assert_eq!(rounds, 1);
    }
    for (h, cutting) in stalled {
        assert!(
            cutting.load(Ordering::Relaxed),
            "a stalling device's transfer never reached its cut"
        );
        h.abort();
    }
}
