//! End to end on loopback: a coordinator and 20 edge clients (separate QUIC endpoints in one
//! process) enroll with OPAQUE and train the digits MLP with SecAgg+.

use cohort_coordinator::scheduler::TaskEvent;
use cohort_loopback::demo::{DemoConfig, run_demo};

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
    // Federated evaluation (every round of the demo task is evaluated): at least half of each
    // round's members measured the round's starting model on their own data, and as the model
    // trains, the clients' accuracy rises.
    let federated: Vec<_> = report
        .events
        .iter()
        .filter_map(|e| match e {
            TaskEvent::RoundCompleted {
                round,
                selected,
                federated_evaluation,
                ..
            } => Some((*round, *selected, *federated_evaluation)),
            _ => None,
        })
        .collect();
    for (round, selected, f) in &federated {
        let f = f.unwrap_or_else(|| panic!("round {round} reported no federated evaluation"));
        assert!(
            f.clients >= 3 && 2 * f.clients >= *selected,
            "round {round}: {} of {selected} members reported",
            f.clients
        );
        assert!(f.examples >= u64::from(f.clients), "round {round}: {f:?}");
        assert!(
            f.accuracy > 0.0 && f.accuracy <= 1.0 && f.loss.is_finite(),
            "round {round}: {f:?}"
        );
    }
    let accuracy = |i: usize| federated[i].2.map_or(0.0, |f| f.accuracy);
    assert!(
        accuracy(federated.len() - 1) > accuracy(0) + 0.2,
        "federated accuracy went from {} in round 1 to {} in the last round",
        accuracy(0),
        accuracy(federated.len() - 1)
    );
    // Every client saw its rounds complete.
    assert!(
        report.contributions.len() >= 20 * 4,
        "{}",
        report.contributions.len()
    );
}
