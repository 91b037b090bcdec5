//! Known answers: the Rust accountant against Google's `dp-accounting` (0.6.0) on every case of
//! `privacy/kat/cases.json`, written by `privacy/kat/generate.py` (see its docstring for what
//! each section computes and how). Agreement within 1% relative is required; the observed
//! worst case is printed.

use cohort_privacy::accountant::{
    DistributedGaussian, Mechanism, RdpCurve, Sampling, default_orders, noise_multiplier_for,
};
use serde_json::Value;

const TOLERANCE: f64 = 0.01;

fn cases() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/kat/cases.json");
    let text = std::fs::read_to_string(path).expect("privacy/kat/cases.json is committed");
    serde_json::from_str(&text).expect("cases.json is JSON")
}

fn f(case: &Value, key: &str) -> f64 {
    case[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} in {case}"))
}

fn sampling(q: f64) -> Sampling {
    if q == 1.0 {
        Sampling::None
    } else {
        Sampling::Poisson { rate: q }
    }
}

/// Relative error, with ε = 0 required to be matched exactly (the KL branch).
fn relative_error(got: f64, want: f64) -> f64 {
    if want == 0.0 {
        if got == 0.0 { 0.0 } else { f64::INFINITY }
    } else {
        ((got - want) / want).abs()
    }
}

fn check_section(section: &str, epsilon_of: impl Fn(&Value) -> f64) {
    let all = cases();
    let list = all[section].as_array().expect("section is a list");
    assert!(!list.is_empty(), "{section} has no cases");
    let mut worst = 0.0f64;
    for case in list {
        let want = f(case, "epsilon");
        let got = epsilon_of(case);
        let err = relative_error(got, want);
        assert!(
            err <= TOLERANCE,
            "{section}: {case}: rust epsilon {got}, dp-accounting {want} (relative error {err})"
        );
        worst = worst.max(err);
    }
    println!(
        "{section}: {} cases, worst relative error {worst:.2e}",
        list.len()
    );
}

#[test]
fn orders_are_the_ones_the_table_used() {
    let all = cases();
    let orders: Vec<f64> = all["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let ours = default_orders();
    assert_eq!(orders.len(), ours.len());
    for (a, b) in orders.iter().zip(&ours) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
}

#[test]
fn sampled_gaussian_matches_dp_accounting() {
    check_section("gaussian", |case| {
        let curve = RdpCurve::per_round(
            Mechanism::Gaussian {
                noise_multiplier: f(case, "noise_multiplier"),
            },
            sampling(f(case, "sampling_rate")),
        )
        .unwrap();
        curve
            .epsilon_after(f(case, "rounds") as u64, f(case, "delta"))
            .unwrap()
            .epsilon
    });
}

#[test]
fn discrete_gaussian_matches_the_reference_computation() {
    check_section("discrete_gaussian", |case| {
        let curve = RdpCurve::per_round(
            Mechanism::DiscreteGaussian {
                noise_multiplier: f(case, "noise_multiplier"),
            },
            sampling(f(case, "sampling_rate")),
        )
        .unwrap();
        curve
            .epsilon_after(f(case, "rounds") as u64, f(case, "delta"))
            .unwrap()
            .epsilon
    });
}

#[test]
fn distributed_discrete_gaussian_matches_the_reference_computation() {
    check_section("distributed", |case| {
        let params = DistributedGaussian::new(
            f(case, "l2"),
            f(case, "l1"),
            f(case, "sigma"),
            f(case, "min_shares") as u32,
            f(case, "max_shares") as u32,
            f(case, "dim") as usize,
        );
        let tau = f(case, "tau");
        assert!(
            relative_error(params.tau, tau) <= 1e-9 || (params.tau - tau).abs() < 1e-30,
            "tau {} vs {tau}",
            params.tau
        );
        let curve = RdpCurve::per_round(
            Mechanism::DistributedGaussian(params),
            sampling(f(case, "sampling_rate")),
        )
        .unwrap();
        curve
            .epsilon_after(f(case, "rounds") as u64, f(case, "delta"))
            .unwrap()
            .epsilon
    });
}

#[test]
fn inverse_matches_dp_accounting_calibration() {
    let all = cases();
    let list = all["inverse"].as_array().unwrap();
    let mut worst = 0.0f64;
    for case in list {
        let (target, q, rounds, delta) = (
            f(case, "epsilon"),
            f(case, "sampling_rate"),
            f(case, "rounds") as u64,
            f(case, "delta"),
        );
        let want = f(case, "noise_multiplier");
        let got = noise_multiplier_for(target, delta, rounds, |z| {
            RdpCurve::per_round(
                Mechanism::Gaussian {
                    noise_multiplier: z,
                },
                sampling(q),
            )
        })
        .unwrap();
        let err = relative_error(got, want);
        assert!(
            err <= TOLERANCE,
            "inverse {case}: rust z {got}, dp-accounting {want}"
        );
        worst = worst.max(err);
    }
    println!(
        "inverse: {} cases, worst relative error {worst:.2e}",
        list.len()
    );
}
