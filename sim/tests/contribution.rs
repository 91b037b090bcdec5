//! The contribution study on the embedded digits data with the built-in MLP: the ledger's
//! credit is compared with each client's leave-one-out contribution, and the study shows what
//! the ledger can and cannot tell about a free-rider and a noisy client.

use cohort_sim::config::{Experiment, TrainerKind};
use cohort_sim::contribution::{Adversaries, Behaviour, study};
use cohort_sim::setup;

fn digits(partition: cohort_datasets::PartitionSpec) -> Experiment {
    let mut exp = Experiment::default_experiment();
    exp.task.rounds = 6;
    // 20 per round, as the default experiment (smaller cohorts have no SecAgg+ parameters for
    // its dropout fraction, and the study keeps the task's clipping).
    exp.population.num_clients = 30;
    exp.task.training.epochs = 2;
    exp.run.trainer = TrainerKind::Builtin;
    exp.data.partition = partition;
    exp
}

#[test]
fn leave_one_out_exposes_a_free_rider_and_a_noisy_client_the_ledger_credits() {
    let exp = digits(cohort_datasets::PartitionSpec::Iid);
    let s = setup::build(&exp).unwrap();
    let adversaries = Adversaries {
        free_riders: 1,
        noisy: 1,
    };
    let report = study(&exp, &*s.trainer, &s.partitions, adversaries).unwrap();
    assert_eq!(report.findings.len(), 2, "{report:#?}");
    for f in &report.findings {
        // Leave-one-out sees what each upload did to the model.
        assert!(f.leave_one_out_tells(), "{f:#?}");
    }
    let free = &report.findings[0];
    assert_eq!(free.behaviour, Behaviour::FreeRider);
    // The ledger splits equally (devices report no example count): a free-rider that claims
    // the largest weight inside its masked input earns each round exactly what every other
    // member of that round earns, so its credit depends only on which rounds it was in, not on
    // its claim (it earned about twice the honest median when the split followed a count
    // reported in the clear). Under SecAgg+ the coordinator still cannot tell it apart.
    let ratio = free.ledger_credit_per_round / free.honest_median_ledger_credit_per_round;
    assert!(ratio < 1.5, "{ratio}: {free:#?}");
    // Its zeros, weighted as the largest claim, drag the mean back: removing it helps.
    assert!(free.leave_one_out_per_round < 0.0, "{free:#?}");
    // Every member of every round is credited; the credits of a round sum to its drop in loss.
    let rounds: u32 = report.standings.iter().map(|s| s.rounds).sum();
    assert_eq!(
        rounds,
        exp.task.rounds * exp.task.selection.clients_per_round
    );
    assert!(report.spearman.is_some());
}

#[test]
fn the_study_is_reproducible_and_refuses_all_adversarial_cohorts() {
    let mut exp = digits(cohort_datasets::PartitionSpec::Dirichlet { alpha: 0.1 });
    exp.task.rounds = 2;
    let s = setup::build(&exp).unwrap();
    let none = Adversaries::default();
    let a = study(&exp, &*s.trainer, &s.partitions, none).unwrap();
    let b = study(&exp, &*s.trainer, &s.partitions, none).unwrap();
    assert_eq!(a, b);
    assert!(a.findings.is_empty());
    assert_eq!(a.spearman, a.spearman_honest);
    let err = study(
        &exp,
        &*s.trainer,
        &s.partitions,
        Adversaries {
            free_riders: 15,
            noisy: 15,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--free-riders"), "{err}");
}
