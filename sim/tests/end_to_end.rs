//! A small end-to-end run on the embedded digits data with the default trainer (burn through
//! `cohort-learning`; the built-in MLP in a build without the `learning` feature): it learns,
//! writes every output, and is reproducible.

use cohort_sim::config::Experiment;
use cohort_sim::run::run_experiment;

fn small() -> Experiment {
    let mut exp = Experiment::default_experiment();
    exp.task.rounds = 4;
    exp.population.num_clients = 30;
    exp.task.selection.clients_per_round = 8;
    exp.task.training.epochs = 2;
    exp.task.training.learning_rate = 0.1;
    #[cfg(not(feature = "learning"))]
    {
        exp.run.trainer = cohort_sim::config::TrainerKind::Builtin;
    }
    exp
}

#[test]
fn digits_with_secagg_learns_and_writes_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let exp = small();
    let out = run_experiment(&exp, Some(dir.path()), false).unwrap();
    let s = &out.summary;
    let final_acc = s.final_accuracy.unwrap();
    assert!(
        final_acc > s.initial_accuracy + 0.2,
        "{} → {final_acc}",
        s.initial_accuracy
    );
    for f in [
        "metrics.csv",
        "summary.json",
        "experiment.toml",
        "accuracy_vs_round.svg",
        "accuracy_vs_round.png",
        "accuracy_vs_time.svg",
        "accuracy_vs_time.png",
        "loss_vs_round.svg",
        "loss_vs_round.png",
    ] {
        let len = std::fs::metadata(dir.path().join(f))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 100, "{f}: {len} bytes");
    }
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4);
    assert!(csv.starts_with("round,attempts,completed,accuracy,loss,"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(json["rounds"], 4);
    assert_eq!(json["secagg"], true);
    // The resolved experiment round-trips.
    let again = Experiment::from_file(&dir.path().join("experiment.toml")).unwrap();
    assert_eq!(again, exp);

    // Same seed, same metrics (all but the wall-clock column).
    let strip = |csv: &str| {
        csv.lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect::<Vec<_>>()
    };
    let dir2 = tempfile::tempdir().unwrap();
    run_experiment(&exp, Some(dir2.path()), false).unwrap();
    let csv2 = std::fs::read_to_string(dir2.path().join("metrics.csv")).unwrap();
    assert_eq!(strip(&csv), strip(&csv2));
}
