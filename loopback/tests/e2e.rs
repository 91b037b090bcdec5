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
    // Federated evaluation (every round of the demo task is evaluated): every contributor
    // measured the round's starting model on its own data and carried the result inside its
    // masked input (nothing in the clear; the coordinator decodes the sums), and as the model
    // trains, the clients' accuracy rises.
    let federated: Vec<_> = report
        .events
        .iter()
        .filter_map(|e| match e {
            TaskEvent::RoundCompleted {
                round,
                contributors,
                federated_evaluation,
                ..
            } => Some((*round, *contributors, *federated_evaluation)),
            _ => None,
        })
        .collect();
    for (round, contributors, f) in &federated {
        let f = f.unwrap_or_else(|| panic!("round {round} reported no federated evaluation"));
        assert_eq!(
            f.clients, *contributors,
            "round {round}: {} of {contributors} contributors counted",
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
    // Every contributor saw its rounds complete, except perhaps in the last round: the demo
    // stops its clients when the task finishes, which can be before they read that round's
    // result. (A round can have fewer than 20 contributors: one that checked in late.)
    let before_last: u32 = completed[..completed.len() - 1].iter().sum();
    assert!(
        report.contributions.len() >= before_last as usize,
        "{} contributions reported, {before_last} contributors before the last round ({completed:?})",
        report.contributions.len()
    );
}

/// Both DP modes in live rounds: 12 edge clients over QUIC encode as the task says (central:
/// clipped, weight 1; distributed: DDGauss shares before masking), the coordinator adds the
/// noise or decodes, every round-log entry records the ε spent, and the task ends when its
/// budget (two rounds, of three) is spent. Client 0's owner allows less ε than the task's
/// budget, so it refuses the task and never contributes; client 1's owner allows more, so it
/// takes part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_dp_modes_train_in_live_rounds_until_the_budget_is_spent() {
    for mode in ["central", "distributed"] {
        let privacy: cohort_task::config::PrivacyConfig = toml::from_str(&format!(
            "mode = \"{mode}\"\nnoise_multiplier = 0.5\nrounds = 2\ndelta = 1e-3\n\
             [clip]\nnorm = 2.0\n"
        ))
        .unwrap();
        let config = DemoConfig {
            clients: 12,
            rounds: 3,
            privacy,
            max_epsilon: vec![(0, 0.01), (1, 1e6)],
            ..DemoConfig::default()
        };
        let report = run_demo(config, |e| eprintln!("{e:?}"))
            .await
            .expect("the demo runs");
        let completed = report
            .events
            .iter()
            .filter(|e| matches!(e, TaskEvent::RoundCompleted { .. }))
            .count();
        assert_eq!(completed, 2, "{mode}: {:?}", report.events);
        // The demo evaluates every round: the evaluation's limbs travel beside the DP encoding,
        // outside its rotation and noise, and decode for every contributor.
        for e in &report.events {
            if let TaskEvent::RoundCompleted {
                contributors,
                federated_evaluation,
                ..
            } = e
            {
                let f = federated_evaluation
                    .unwrap_or_else(|| panic!("{mode}: no federated evaluation: {e:?}"));
                assert_eq!(f.clients, *contributors, "{mode}: {f:?}");
                assert!(f.accuracy >= 0.0 && f.accuracy <= 1.0, "{mode}: {f:?}");
            }
        }
        let end = report.events.iter().find_map(|e| match e {
            TaskEvent::TaskFinished {
                privacy_budget_exhausted,
                ..
            } => Some(*privacy_budget_exhausted),
            _ => None,
        });
        let spent = end
            .flatten()
            .unwrap_or_else(|| panic!("{mode}: {:?}", report.events));
        assert!(spent > 0.0 && spent.is_finite(), "{mode}: {spent}");
        // Weight 1 per input with DP.
        assert!(!report.inputs.is_empty(), "{mode}: no inputs recorded");
        assert!(report.inputs.iter().all(|i| i.weight == 1), "{mode}");
        // The device above its owner's limit refused the task and stopped; the other took part.
        assert!(
            matches!(&report.client_errors[..], [(0, e)] if e.contains("differential privacy")),
            "{mode}: {:?}",
            report.client_errors
        );
        assert!(
            report.contributions.iter().all(|(c, _)| *c != 0),
            "{mode}: client 0 contributed"
        );
        assert!(
            report.contributions.iter().any(|(c, _)| *c == 1),
            "{mode}: client 1 did not contribute"
        );
    }
}
