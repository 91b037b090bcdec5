//! The coordinator keeps no QUIC connection of a device that has left (issue 14): devices that
//! take part in a round and then go away (their run loop and QUIC endpoint dropped, as the soak
//! does) leave the endpoint's connection set within a few seconds, well inside the 60 s idle
//! timeout that would otherwise be what ends them; the ones still running keep theirs.

use std::time::Duration;

use cohort_coordinator::scheduler::TaskEvent;
use cohort_coordinator::server::Coordinator;
use cohort_coordinator::task::TaskDefinition;
use cohort_loopback::demo::{DemoConfig, demo_task};
use cohort_loopback::{ClientHooks, SyntheticTrainer, server_config, spawn_client};

const DEVICES: usize = 6;
const LEAVING: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_that_leave_leave_no_connection_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Coordinator::start(server_config(tmp.path().join("coordinator"), None))
        .await
        .unwrap();
    let mut task = demo_task(&DemoConfig {
        clients: 4,
        rounds: 1000,
        ..DemoConfig::default()
    });
    task.evaluate_every = 0;
    c.create_and_start(TaskDefinition::new(task).unwrap())
        .unwrap();
    let mut events = c.scheduler.subscribe();
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        let trainer = Box::new(SyntheticTrainer::new(i as u64, 50));
        devices.push(
            spawn_client(&c, tmp.path(), i, trainer, ClientHooks::default())
                .await
                .unwrap(),
        );
    }
    // A round with the devices logged in.
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            match events.recv().await {
                Ok(TaskEvent::RoundCompleted { .. }) => break,
                Ok(_) => {}
                Err(e) => panic!("the scheduler stopped: {e}"),
            }
        }
    })
    .await
    .expect("a round completes");
    assert!(
        c.quic_connections() >= DEVICES,
        "every device holds a connection ({} held)",
        c.quic_connections()
    );

    for d in devices.drain(..LEAVING) {
        d.handle.abort();
        let _ = d.handle.await;
    }
    // Polled, not slept: the connections of the devices that left must go long before the
    // 60 s idle timeout, and the others' must stay.
    let stayed = DEVICES - LEAVING;
    let mut held = c.quic_connections();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while held != stayed && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        held = c.quic_connections();
    }
    assert_eq!(
        held, stayed,
        "the coordinator holds {held} QUIC connections 20 s after {LEAVING} of {DEVICES} devices \
         left; expected the {stayed} that stayed"
    );
    for d in &devices {
        assert!(
            !d.handle.is_finished(),
            "a device that stayed is still running"
        );
    }
    c.shutdown();
}
