//! Protocol benchmarks on equal terms: `trainer = "synthetic"` (updates of a given size, no
//! learning) and `[comparison_only] dangerous_force_graph` (k and t forced, simulator only).

use cohort_sim::config::{DEFAULT_EXPERIMENT, Experiment, ForcedGraph, TrainerKind};
use cohort_sim::run::run_experiment;

/// The default experiment with the synthetic trainer, 20 clients per round, no dropouts.
fn synthetic(extra_run: &str, tail: &str) -> String {
    let text = DEFAULT_EXPERIMENT
        .replacen(
            "max_attempts = 3",
            &format!("max_attempts = 1\ntrainer = \"synthetic\"\n{extra_run}"),
            1,
        )
        .replacen("rounds = 15", "rounds = 2", 1)
        .replacen("online_probability = 0.9", "online_probability = 1.0", 1)
        .replacen(
            "dropout = { advertise_keys = 0.02, share_keys = 0.02, masked_input = 0.02, unmask = 0.02 }",
            "",
            1,
        );
    format!("{text}\n{tail}")
}

fn error_of(text: &str) -> String {
    match Experiment::from_toml(text) {
        Ok(_) => panic!("accepted an invalid experiment:\n{text}"),
        Err(e) => e.to_string(),
    }
}

const FORCE_2_2: &str = "[comparison_only]\ndangerous_force_graph = { k = 2, t = 2 }\n";

#[test]
fn synthetic_parameters_and_the_forced_graph_are_checked() {
    let ok = Experiment::from_toml(&synthetic("synthetic_parameters = 1000", FORCE_2_2)).unwrap();
    assert_eq!(ok.run.trainer, TrainerKind::Synthetic);
    assert_eq!(ok.forced_graph(), Some(ForcedGraph { k: 2, t: 2 }));
    // The resolved experiment keeps the section, so a result says how it was obtained.
    let again = Experiment::from_toml(&ok.to_toml().unwrap()).unwrap();
    assert_eq!(again, ok);

    let cases: &[(String, &[&str])] = &[
        (
            synthetic("", ""),
            &["run.synthetic_parameters", "(missing)", "model size"],
        ),
        (
            synthetic("synthetic_parameters = 0", ""),
            &["run.synthetic_parameters", "from 1"],
        ),
        (
            DEFAULT_EXPERIMENT.replacen(
                "max_attempts = 3",
                "max_attempts = 3\nsynthetic_parameters = 10",
                1,
            ),
            &["run.synthetic_parameters", "trainer = \"burn\""],
        ),
        (
            synthetic(
                "synthetic_parameters = 10",
                "[comparison_only]\ndangerous_force_graph = { k = 3, t = 2 }\n",
            ),
            &["comparison_only.dangerous_force_graph.k", "even", "19"],
        ),
        (
            synthetic(
                "synthetic_parameters = 10",
                "[comparison_only]\ndangerous_force_graph = { k = 20, t = 2 }\n",
            ),
            &["comparison_only.dangerous_force_graph.k", "complete graph"],
        ),
        (
            synthetic(
                "synthetic_parameters = 10",
                "[comparison_only]\ndangerous_force_graph = { k = 4, t = 6 }\n",
            ),
            &["comparison_only.dangerous_force_graph.t", "k + 1 = 5"],
        ),
        (
            synthetic("synthetic_parameters = 10", FORCE_2_2).replacen(
                "enabled = true",
                "enabled = false",
                1,
            ),
            &["comparison_only.dangerous_force_graph", "secagg.enabled"],
        ),
        (
            synthetic(
                "synthetic_parameters = 10",
                "[comparison_only]\nforce_graph = { k = 2, t = 2 }\n",
            ),
            &["force_graph", "dangerous_force_graph"],
        ),
    ];
    for (text, needles) in cases {
        let e = error_of(text);
        for needle in *needles {
            assert!(e.contains(needle), "{needle:?} not in: {e}");
        }
    }
}

#[test]
fn a_forced_graph_changes_the_cost_of_secagg_but_not_the_sum() {
    // One round: later cohorts depend on when the previous round ended, which the graph changes.
    let one_round = |tail: &str| {
        let mut exp =
            Experiment::from_toml(&synthetic("synthetic_parameters = 1000", tail)).unwrap();
        exp.task.rounds = 1;
        exp.task.evaluate_every = 1;
        // Semi-honest rounds, the setting of the graphs compared here (with the consistency
        // check the finder's own k for 20 clients is already 16).
        exp.task.secagg.consistency_check = false;
        exp
    };
    // The finder gives k = 10, t = 3 for these 20 clients; force a denser graph that the
    // clients' own floors accept.
    let denser = "[comparison_only]\ndangerous_force_graph = { k = 16, t = 10 }\n";
    let (default, forced) = (one_round(""), one_round(denser));
    let a = run_experiment(&default, None, false).unwrap();
    let b = run_experiment(&forced, None, false).unwrap();
    for out in [&a, &b] {
        assert_eq!(out.rows.len(), 1);
        assert!(out.rows.iter().all(|r| r.completed && r.participants == 20));
        // The updates were applied: the synthetic "loss" is the global weights' mean square.
        assert!(out.summary.final_loss.unwrap() > 0.0);
    }
    // Same cohorts and the same synthetic updates: SecAgg+ sums exactly whatever the graph.
    assert!(
        a.global == b.global,
        "the sums differ (first coordinates {:?} and {:?})",
        &a.global[..4],
        &b.global[..4]
    );
    // More neighbours: more key shares and unmasking shares travel.
    let up = |o: &cohort_sim::run::RunOutput| o.rows.iter().map(|r| r.bytes_up).sum::<u64>();
    assert!(
        up(&b) > up(&a),
        "forced k = 16 sent {} bytes up, the default graph (k = 10) {}",
        up(&b),
        up(&a)
    );
    // Flower's 3 shares and threshold 2 is below the clients' own floor (t >= 3, and a k that
    // the finder can secure): they refuse it, and the attempt aborts instead of running weakly.
    let flower = run_experiment(&one_round(FORCE_2_2), None, false).unwrap();
    assert!(!flower.rows[0].completed);
    assert!(
        flower.rows[0]
            .abort_reasons
            .iter()
            .any(|r| r.contains("survived R1")),
        "{:?}",
        flower.rows[0].abort_reasons
    );
}

#[cfg(feature = "live")]
#[test]
fn live_mode_refuses_comparison_only_settings() {
    let exp = Experiment::from_toml(&synthetic("synthetic_parameters = 10", FORCE_2_2)).unwrap();
    let digits = cohort_datasets::embedded_digits().unwrap();
    let Err(e) = cohort_sim::live::task_for(&exp, &digits.train) else {
        panic!("a comparison-only experiment must not become a coordinator task");
    };
    let e = e.to_string();
    assert!(e.contains("[comparison_only]"), "{e}");
    assert!(e.contains("remove the [comparison_only] section"), "{e}");
}
