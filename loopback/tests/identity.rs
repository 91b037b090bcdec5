//! Device identity keys and the consistency check on the live path: clients enroll with an
//! identity key, rounds run with signed keys and the R2.5 consistency check (the default), and a
//! coordinator that substitutes a device's key is refused by that device.

use std::time::Duration;

use cohort_coordinator::identity_log::{self, DeviceKey};
use cohort_coordinator::scheduler::TaskEvent;
use cohort_coordinator::server::Coordinator;
use cohort_coordinator::task::TaskDefinition;
use cohort_edge::identity_check::IdentityCheckError;
use cohort_edge::run::RunError;
use cohort_loopback::clients::{ClientHooks, server_config, spawn_client};
use cohort_loopback::synthetic::SyntheticTrainer;
use cohort_protocol::{IdentityLogError, verify_identity_log};

const TASK: &str = r#"
id = "identity"
rounds = 3

[model]
input_shape = [4]
num_classes = 2
layers = [{ type = "linear", out = 2 }]

[training]
epochs = 1
batch_size = 4
learning_rate = 0.1

[selection]
clients_per_round = 6
over_selection = 0.0
window_secs = 1

[secagg]
dropout_fraction = 0.15
"#;

async fn next_completed(events: &mut tokio::sync::broadcast::Receiver<TaskEvent>) -> (u64, u32) {
    loop {
        match tokio::time::timeout(Duration::from_secs(120), events.recv())
            .await
            .expect("a round ends within two minutes")
            .expect("the task's events")
        {
            TaskEvent::RoundCompleted {
                round,
                contributors,
                ..
            } => return (round, contributors),
            TaskEvent::RoundAborted { reason, .. } => eprintln!("attempt aborted: {reason}"),
            _ => {}
        }
    }
}

/// Seven devices enroll (each registers an identity key, which the identity log publishes);
/// rounds run with the consistency check on; then the coordinator registers another key for
/// device 0's account, as a coordinator substituting keys would. Device 0 sees that its own key
/// was replaced in the log and stops taking part, with an error that says so; the others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_check_identity_keys_and_a_substituted_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Coordinator::start(server_config(tmp.path().join("coordinator"), None))
        .await
        .unwrap();
    let task = TaskDefinition::from_toml(TASK).unwrap();
    assert!(task.secagg.consistency_check, "the check is on by default");
    let mut events = c.scheduler.subscribe();
    c.create_and_start(task).unwrap();
    let mut clients = Vec::new();
    for i in 0..7 {
        let trainer = Box::new(SyntheticTrainer::new(i as u64, 10));
        clients.push(
            spawn_client(&c, tmp.path(), i, trainer, ClientHooks::default())
                .await
                .unwrap(),
        );
    }
    // Every device's key is in the log, which verifies as a device checks it.
    let log = identity_log::entries(&c.store).unwrap();
    let view = verify_identity_log(&log, None, None).unwrap();
    assert_eq!(view.current.len(), 7);

    let (round, contributors) = next_completed(&mut events).await;
    assert_eq!(round, 1);
    assert!(contributors >= 4, "{contributors} contributors");
    // The round ran with the check: its members verified the identity log and saved its head
    // (done only for rounds with the consistency check).
    let verified = clients
        .iter()
        .filter(|c| cohort_edge::identity_check::saved_head(&c.config.state_dir).is_some())
        .count();
    assert!(
        verified as u32 >= contributors,
        "{verified} of {contributors}"
    );

    // The coordinator swaps device 0's key.
    identity_log::replace_device_key(
        &c.store,
        "client000",
        &DeviceKey {
            key: cohort_aggregation::secagg::SigningKey::from_bytes(&[7; 32])
                .verifying_key()
                .to_bytes(),
            binding: [0; 32],
        },
        2_000_000_000,
    )
    .unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(180), clients.remove(0).handle)
        .await
        .expect("device 0 stops within three minutes")
        .expect("its task");
    match refused {
        Err(RunError::Identity(IdentityCheckError::Log(IdentityLogError::OwnKey {
            account,
            what,
        }))) => assert_eq!((account.as_str(), what), ("client000", "replaced")),
        other => panic!("device 0 should refuse the substituted key, got {other:?}"),
    }
    // The others keep training.
    let (round, _) = next_completed(&mut events).await;
    assert!(round >= 2);
    c.shutdown();
}
