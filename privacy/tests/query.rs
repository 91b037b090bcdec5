//! The planning query behind `cohort-sim privacy`: its numbers (against the known-answer table's
//! own cases) and the text it prints.

use cohort_privacy::accountant::AccountantError;
use cohort_privacy::query::{PrivacyQuery, QueryNoise, answer};

#[test]
fn epsilon_for_a_noise_multiplier_prints_the_dp_accounting_number() {
    // A case of privacy/kat/cases.json: z = 1.1, q = 0.01, T = 1000, δ = 1e-5.
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/kat/cases.json")).unwrap(),
    )
    .unwrap();
    let want = cases["gaussian"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["noise_multiplier"] == 1.1
                && c["sampling_rate"] == 0.01
                && c["rounds"] == 1000
                && c["delta"] == 1e-5
        })
        .expect("the case is in the table")["epsilon"]
        .as_f64()
        .unwrap();
    let q = PrivacyQuery {
        noise: QueryNoise::NoiseMultiplier(1.1),
        sampling_rate: 0.01,
        rounds: 1000,
        delta: 1e-5,
    };
    let a = answer(&q).unwrap();
    assert!((a.epsilon.epsilon - want).abs() <= 0.01 * want);
    // Cohort's discrete Gaussian is accounted more conservatively under sampling.
    let discrete = a.discrete_epsilon.unwrap();
    assert!(discrete >= a.epsilon.epsilon);
    let text = a.to_string();
    println!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "Gaussian mechanism, noise multiplier 1.1, Poisson sampling rate 0.01, 1000 rounds, delta 1e-5:"
    );
    assert!(
        lines[1].starts_with(&format!("epsilon = {:.2}", want)),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains("(best RDP order "));
    assert!(lines[2].starts_with("Cohort's discrete Gaussian"));
}

#[test]
fn noise_for_a_target_epsilon_meets_it() {
    let q = PrivacyQuery {
        noise: QueryNoise::Epsilon(3.0),
        sampling_rate: 1.0,
        rounds: 100,
        delta: 1e-6,
    };
    let a = answer(&q).unwrap();
    assert!(a.epsilon.epsilon <= 3.0 && a.epsilon.epsilon > 2.99);
    assert!(a.discrete_epsilon.is_none());
    let text = a.to_string();
    println!("{text}");
    assert!(text.starts_with(
        "Gaussian mechanism, target epsilon 3, no sampling, 100 rounds, delta 1e-6:\nnoise multiplier = "
    ));
    // A slightly smaller noise multiplier would not meet the target.
    let less = answer(&PrivacyQuery {
        noise: QueryNoise::NoiseMultiplier(a.noise_multiplier * 0.999),
        ..q
    })
    .unwrap();
    assert!(less.epsilon.epsilon > 3.0);
}

#[test]
fn bad_queries_are_refused() {
    let base = PrivacyQuery {
        noise: QueryNoise::NoiseMultiplier(1.0),
        sampling_rate: 0.5,
        rounds: 10,
        delta: 1e-5,
    };
    assert_eq!(
        answer(&PrivacyQuery { delta: 0.0, ..base }),
        Err(AccountantError::BadDelta(0.0))
    );
    assert_eq!(
        answer(&PrivacyQuery {
            sampling_rate: 1.5,
            ..base
        }),
        Err(AccountantError::BadSamplingRate(1.5))
    );
    assert_eq!(
        answer(&PrivacyQuery {
            noise: QueryNoise::NoiseMultiplier(-1.0),
            ..base
        }),
        Err(AccountantError::BadNoiseMultiplier(-1.0))
    );
    assert_eq!(
        answer(&PrivacyQuery {
            noise: QueryNoise::Epsilon(0.0),
            ..base
        }),
        Err(AccountantError::BadEpsilon(0.0))
    );
}
