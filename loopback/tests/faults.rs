//! Fault tests on loopback with real QUIC, OPAQUE and SecAgg+: 20% of the clients vanish at each
//! SecAgg+ phase (the R2.5 consistency check included) and the rounds still complete with the exact sum; a client that sends a
//! wrong-length vector is removed and the others finish; a client that disconnects reconnects
//! and contributes again.

use cohort_aggregation::encoding::Quantizer;
use cohort_coordinator::scheduler::TaskEvent;
use cohort_edge::testing::Fault;
use cohort_loopback::demo::{DemoConfig, DemoReport, run_demo};
use cohort_protocol::RoundResult;

fn config(faults: Vec<(usize, Fault)>) -> DemoConfig {
    DemoConfig {
        rounds: 2,
        epochs: 1,
        faults,
        // q_min = ceil(0.75 n), so losing 20% still leaves a quorum.
        dropout_fraction: 0.25,
        ..DemoConfig::default()
    }
}

/// Checks that each completed round applied exactly the weighted mean of its contributors'
/// (clipped) inputs, within the quantisation tolerance.
fn assert_exact_sums(report: &DemoReport, clip: f32, max_weight: u32) {
    assert!(!report.applied.is_empty());
    for (round_id, members, applied) in &report.applied {
        let inputs: Vec<_> = report
            .inputs
            .iter()
            .filter(|i| i.round_id == *round_id && members.contains(&i.index))
            .collect();
        assert_eq!(
            inputs.len(),
            members.len(),
            "an input for every contributor of {round_id}"
        );
        let total: f64 = inputs.iter().map(|i| f64::from(i.weight)).sum();
        let selected = report
            .events
            .iter()
            .find_map(|e| match e {
                TaskEvent::RoundCompleted {
                    round_id: r,
                    selected,
                    ..
                } if r == round_id => Some(*selected),
                _ => None,
            })
            .expect("the round's event");
        // The task's encoding: the default value bits for its cohort (those for the selected
        // count are never more, so this tolerance is never tighter than the round's).
        let secagg = cohort_task::config::SecAggConfig {
            max_weight,
            ..Default::default()
        };
        let tol = Quantizer::for_ring(selected, clip, secagg.value_bits_for(selected), max_weight)
            .expect("quantizer")
            .tolerance();
        for (j, got) in applied.iter().enumerate() {
            let want: f64 = inputs
                .iter()
                .map(|i| f64::from(i.weight) * f64::from(i.update[j].clamp(-clip, clip)))
                .sum::<f64>()
                / total;
            assert!(
                (f64::from(*got) - want).abs() <= f64::from(tol) * 2.0 + 1e-5,
                "{round_id} coordinate {j}: applied {got}, plain mean {want}, tolerance {tol}"
            );
        }
    }
}

/// How many clients the first completed round selected.
fn first_selected(report: &DemoReport) -> u32 {
    report
        .events
        .iter()
        .find_map(|e| match e {
            TaskEvent::RoundCompleted { selected, .. } => Some(*selected),
            _ => None,
        })
        .expect("a completed round")
}

fn completed_rounds(report: &DemoReport) -> Vec<(u32, u32, u32)> {
    report
        .events
        .iter()
        .filter_map(|e| match e {
            TaskEvent::RoundCompleted {
                contributors,
                dropped,
                removed,
                ..
            } => Some((*contributors, *dropped, *removed)),
            _ => None,
        })
        .collect()
}

async fn vanish_20_percent_at(fault: Fault) -> DemoReport {
    let faults = (0..4).map(|i| (i * 5, fault)).collect();
    let report = run_demo(config(faults), |e| eprintln!("{fault:?}: {e:?}"))
        .await
        .expect("the demo runs");
    let rounds = completed_rounds(&report);
    assert_eq!(rounds.len(), 2, "{:?}", report.events);
    assert_exact_sums(&report, 1.0, 128);
    // The fault really fired: each faulty client left its run loop at that phase.
    for i in (0..4).map(|i| i * 5) {
        assert!(
            report
                .client_errors
                .iter()
                .any(|(c, e)| *c == i && e.contains(&format!("{fault:?}"))),
            "client {i} never reached {fault:?}: {:?}",
            report.client_errors
        );
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_percent_vanish_at_each_phase_and_the_sum_stays_exact() {
    for fault in [Fault::VanishAtR0, Fault::VanishAtR1, Fault::VanishAtR2] {
        let report = vanish_20_percent_at(fault).await;
        // The four vanish in the first round; their inputs are not in any sum. (The window may
        // start the round before all twenty have logged in: logins from one address are paced.)
        let first = completed_rounds(&report)[0];
        let selected = first_selected(&report);
        assert_eq!(first.0 + 4, selected, "{fault:?}: {first:?}");
    }
    // Vanishing at R2.5 (the consistency check) or R3, after the masked input: those inputs are
    // in the first sum.
    for fault in [Fault::VanishAtConsistencyCheck, Fault::VanishAtR3] {
        let report = vanish_20_percent_at(fault).await;
        let first = completed_rounds(&report)[0];
        assert_eq!(first.0, first_selected(&report), "{fault:?}: {first:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_length_vector_removes_only_its_sender() {
    let report = run_demo(config(vec![(3, Fault::WrongLength)]), |e| {
        eprintln!("{e:?}")
    })
    .await
    .expect("the demo runs");
    let rounds = completed_rounds(&report);
    assert_eq!(rounds.len(), 2, "{:?}", report.events);
    for (contributors, dropped, removed) in &rounds {
        assert_eq!(*contributors, 19, "{rounds:?}");
        // The sender is out of the sum; the round counts it as removed (or, when its connection
        // closed first, as dropped).
        assert_eq!(dropped + removed, 1, "{rounds:?}");
    }
    assert_exact_sums(&report, 1.0, 128);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnected_client_reconnects_and_contributes_again() {
    let mut cfg = config(vec![(7, Fault::ReconnectAfterFirstRound)]);
    cfg.rounds = 3;
    let report = run_demo(cfg, |e| eprintln!("{e:?}"))
        .await
        .expect("the demo runs");
    let rounds: Vec<_> = report
        .contributions
        .iter()
        .filter(|(c, k)| *c == 7 && matches!(k.result, RoundResult::Completed { .. }))
        .collect();
    assert!(
        rounds.len() >= 2,
        "client 7 completed {} rounds",
        rounds.len()
    );
}
