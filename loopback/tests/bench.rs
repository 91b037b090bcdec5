//! The live benchmark's machinery on a small run (issue 15 item 5): the clients run in a
//! device farm, a child process of their own, and the report tells the coordinator's CPU time
//! from the clients', the cycle from the round, and the bytes each client moved.

use cohort_loopback::bench::{model_for_dim, parameter_count, run_rounds_selecting};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_runs_its_clients_in_a_farm_and_reports_both_cpu_times() {
    let farm = env!("CARGO_BIN_EXE_cohort-loopback");
    let (clients, dim, rounds) = (5, 2410, 2);
    let report = run_rounds_selecting(farm.as_ref(), clients, clients, dim, rounds, 1.0)
        .await
        .expect("the bench ran");
    assert_eq!(report.rounds.len(), rounds as usize);
    for round in &report.rounds {
        assert_eq!(
            round.contributors, clients as u32,
            "every client contributed"
        );
        assert!(round.phases.iter().any(|(p, _)| p == "MaskedInput"));
    }
    let d = parameter_count(&model_for_dim(dim)).unwrap();
    assert_eq!(report.dim, d);
    // Every client downloaded each round's weights once (4 bytes a parameter plus framing),
    // and uploaded a masked vector of at least 16 bits a coordinate.
    let weights = report.down_per_client("Weights");
    assert!(
        weights >= (4 * d) as f64 && weights < (4 * d + 4096) as f64,
        "{weights} bytes of weights per client and round for d = {d}"
    );
    assert!(report.up_per_client("MaskedInput") >= (2 * d) as f64);
    // Both processes did work, and the clients' is counted apart from the coordinator's.
    let (coordinator, farm_cpu) = report.cpu_per_round();
    assert!(coordinator.is_some_and(|c| c >= 0.0), "{coordinator:?}");
    assert!(farm_cpu.is_some_and(|c| c >= 0.0), "{farm_cpu:?}");
    let last = report.rounds.last().unwrap();
    assert!(
        last.clients_cpu.is_some_and(|c| c > 0.0),
        "the farm's CPU time since the start is positive: {:?}",
        last.clients_cpu
    );
    // Rounds are published in order, and a cycle is at least as long as the round in it.
    assert!(report.rounds[1].published > report.rounds[0].published);
    let cycle = report.cycle().expect("two rounds make a cycle");
    assert!(
        cycle >= report.rounds[1].took.as_secs_f64() * 0.999,
        "{cycle}"
    );
}
