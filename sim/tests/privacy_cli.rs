//! `cohort-sim privacy`: the accountant's planning query from the command line (it needs no burn,
//! so it runs in the `--no-default-features` build too). Its numbers are checked against
//! Google's dp-accounting through the known-answer table of `cohort-privacy`.

use std::process::{Command, Output};

fn cohort_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cohort-sim"))
        .arg("privacy")
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("cohort-sim runs")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "cohort-sim failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// The number after `key = ` on the first line that has it.
fn value_after(text: &str, key: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("no `{key}` in:\n{text}"));
    let rest = &line[line.find(key).unwrap() + key.len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// A case of the known-answer table (`privacy/kat/cases.json`, computed by dp-accounting).
fn kat(section: &str, matches: impl Fn(&serde_json::Value) -> bool, field: &str) -> f64 {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../privacy/kat/cases.json");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    cases[section]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| matches(c))
        .unwrap_or_else(|| panic!("the case is in the table's {section} section"))[field]
        .as_f64()
        .unwrap()
}

#[test]
fn prints_epsilon_for_a_noise_multiplier() {
    let out = stdout(&cohort_sim(&[
        "--noise-multiplier",
        "0.5",
        "--sampling-rate",
        "0.2",
        "--rounds",
        "100",
        "--delta",
        "1e-5",
    ]));
    let want = kat(
        "gaussian",
        |c| {
            c["noise_multiplier"] == 0.5
                && c["sampling_rate"] == 0.2
                && c["rounds"] == 100
                && c["delta"] == 1e-5
        },
        "epsilon",
    );
    let got = value_after(&out, "epsilon = ");
    assert!(
        (got - want).abs() <= 0.01 * want,
        "{got} vs dp-accounting's {want}"
    );
    assert!(out.starts_with("Gaussian mechanism, noise multiplier 0.5, Poisson sampling rate 0.2"));
    // With sampling, Cohort's own (discrete) accounting is printed too, and is not smaller.
    assert!(value_after(&out, "general bound: epsilon = ") >= got);
}

#[test]
fn prints_the_noise_for_a_target_epsilon() {
    let out = stdout(&cohort_sim(&[
        "--epsilon",
        "1",
        "--sampling-rate",
        "0.01",
        "--rounds",
        "1000",
        "--delta",
        "1e-6",
    ]));
    let want = kat(
        "inverse",
        |c| {
            c["epsilon"] == 1.0
                && c["sampling_rate"] == 0.01
                && c["rounds"] == 1000
                && c["delta"] == 1e-6
        },
        "noise_multiplier",
    );
    let z = value_after(&out, "noise multiplier = ");
    assert!(
        (z - want).abs() <= 0.01 * want,
        "{z} vs dp-accounting's {want}"
    );
    // Fed back, the printed noise meets the target (to the printed precision).
    let back = stdout(&cohort_sim(&[
        "--noise-multiplier",
        &z.to_string(),
        "--sampling-rate",
        "0.01",
        "--rounds",
        "1000",
        "--delta",
        "1e-6",
    ]));
    assert!(value_after(&back, "epsilon = ") <= 1.0 + 1e-3);
}

#[test]
fn no_sampling_is_the_default() {
    let out = stdout(&cohort_sim(&[
        "--noise-multiplier",
        "1",
        "--rounds",
        "10",
        "--delta",
        "1e-6",
    ]));
    assert!(out.contains("no sampling"), "{out}");
    assert!(!out.contains("general bound"), "{out}");
}

#[test]
fn refuses_bad_input_with_the_reason() {
    // δ outside (0, 1): the accountant's message, exit status 1.
    let out = cohort_sim(&["--noise-multiplier", "1", "--rounds", "10", "--delta", "2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("delta = 2 is not in (0, 1)"), "{err}");
    // A sampling rate above 1.
    let out = cohort_sim(&[
        "--noise-multiplier",
        "1",
        "--sampling-rate",
        "1.5",
        "--rounds",
        "10",
        "--delta",
        "1e-6",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sampling rate 1.5"));
    // Both or neither of --noise-multiplier and --epsilon: a usage error (clap's status 2).
    let both = cohort_sim(&[
        "--noise-multiplier",
        "1",
        "--epsilon",
        "1",
        "--rounds",
        "10",
        "--delta",
        "1e-6",
    ]);
    assert_eq!(both.status.code(), Some(2));
    let neither = cohort_sim(&["--rounds", "10", "--delta", "1e-6"]);
    assert_eq!(neither.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&neither.stderr).contains("--noise-multiplier"));
}
