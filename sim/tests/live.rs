//! Live mode end to end: the built-in digits experiment, shrunk, on a real coordinator and real
//! edge clients over QUIC on loopback, with SecAgg+.

use cohort_sim::config::Experiment;
use cohort_sim::live::{LIVE_CSV_HEADER, LiveOptions, run_live};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_digits_with_secagg_learns_and_writes_outputs() {
    let mut exp = Experiment::default_experiment();
    exp.population.num_clients = 12;
    exp.task.selection.clients_per_round = 10;
    // The consistency check (on by default) has no parameters for rounds of 7 at the default
    // experiment's 30% dropout; 25% keeps the quorum at 8.
    exp.task.secagg.dropout_fraction = 0.25;
    exp.task.rounds = 3;
    exp.task.training.epochs = 5;
    exp.task.training.learning_rate = 0.1;
    // Twelve clients on loopback: a short selection window (the last round's members wait
    // half of it) keeps the rounds close together.
    exp.task.selection.window_secs = 2.0;
    let out_dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let options = LiveOptions {
        state_dir: Some(state.path().to_path_buf()),
    };
    let mut completed = 0;
    let out = run_live(&exp, &options, Some(out_dir.path()), |e| {
        if matches!(
            e,
            cohort_coordinator::scheduler::TaskEvent::RoundCompleted { .. }
        ) {
            completed += 1;
        }
    })
    .await
    .unwrap();
    assert_eq!(completed, 3);
    assert_eq!(out.rows.len(), 3);
    for (i, r) in out.rows.iter().enumerate() {
        assert_eq!(r.round, i as u64 + 1);
        // The quorum is ceil((1 - 0.25) * 10) = 8 clients.
        assert!(r.participants >= 8, "round {}: {r:?}", r.round);
        assert!(r.accuracy.is_some(), "round {} was not evaluated", r.round);
        let federated = r
            .federated_accuracy
            .expect("the devices evaluated every round");
        assert!(federated > 0.0 && federated <= 1.0, "{r:?}");
    }
    let accuracy = out.summary.final_accuracy.unwrap();
    assert!(accuracy > 0.6, "final accuracy {accuracy}");
    assert!(out.summary.secagg);
    for r in &out.rows {
        // At least every participant's masked input went up, packed at the ring's 20 bits
        // (16 value bits + ⌈log2 10⌉ for 10 clients of weight 1) per parameter.
        assert!(
            r.bytes_up > u64::from(r.participants) * 2410 * 20 / 8,
            "{r:?}"
        );
        assert!(r.bytes_down > r.bytes_up / 2, "{r:?}");
    }

    let csv = std::fs::read_to_string(out_dir.path().join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().next(), Some(LIVE_CSV_HEADER));
    assert_eq!(csv.lines().count(), 4);
    for f in [
        "summary.json",
        "experiment.toml",
        "accuracy_vs_round.svg",
        "accuracy_vs_round.png",
    ] {
        let len = std::fs::metadata(out_dir.path().join(f))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 100, "{f}: {len} bytes");
    }
    // The coordinator's state directory holds its database and one folder per client.
    assert!(state.path().join("coordinator").is_dir());
    assert!(state.path().join("client-011").is_dir());
}

#[tokio::test]
async fn live_mode_refuses_populations_it_cannot_host() {
    let mut exp = Experiment::default_experiment();
    exp.population.num_clients = cohort_sim::live::MAX_LIVE_CLIENTS + 1;
    let err = run_live(&exp, &LiveOptions::default(), None, |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("num_clients"), "{err}");
    assert!(err.contains("cohort-sim run"), "{err}");
}
