//! End to end on loopback: a coordinator and 20 edge clients (separate QUIC endpoints in one
//! process) enroll with OPAQUE and train the digits MLP with SecAgg+.

use cohort_coordinator::demo::{DemoConfig, run_demo};
use cohort_coordinator::scheduler::TaskEvent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_train_digits_above_80_percent_in_5_rounds() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let report = run_demo(DemoConfig::default(), |e| eprintln!("{e:?}"))
        .await
        .expect("the demo runs");
    let completed: Vec<_> = report
        .events
        .iter()
        .filter_map(|e| match e {
            TaskEvent::RoundCompleted { contributors, .. } => Some(*contributors),
            _ => None,
        })
        .collect();
    assert_eq!(completed.len(), 5, "{:?}", report.events);
    assert!(completed.iter().all(|&c| c >= 12), "{completed:?}");
    assert!(
        report.final_accuracy > 0.8,
        "final accuracy {}",
        report.final_accuracy
    );
    // Every client saw its rounds complete.
    assert!(
        report.contributions.len() >= 20 * 4,
        "{}",
        report.contributions.len()
    );
}
