//! The `[privacy]` section: parsing (unknown keys refused), the issue's bad inputs refused with
//! their key, and the plans derived from good ones.

use cohort_privacy::accountant::{Mechanism, RdpCurve, Sampling};
use cohort_privacy::config::{PrivacyConfig, PrivacyConfigError, PrivacyMode};
use cohort_privacy::distributed::DistributedError;
use cohort_privacy::plan::TaskShape;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    privacy: PrivacyConfig,
}

fn parse(text: &str) -> PrivacyConfig {
    toml::from_str::<File>(text)
        .unwrap_or_else(|e| panic!("{e}"))
        .privacy
}

const SHAPE: TaskShape = TaskShape {
    model_dim: 100_000,
    clients_per_round: 100,
    min_survivors: 80,
    population: Some(10_000),
};

fn refused(text: &str, shape: &TaskShape) -> PrivacyConfigError {
    parse(text).plan(shape).expect_err("must be refused")
}

#[test]
fn a_missing_section_is_no_dp() {
    let c = parse("");
    assert_eq!(c.mode, PrivacyMode::None);
    assert!(!c.enabled());
    assert_eq!(c.plan(&SHAPE), Ok(None));
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    for (text, key) in [
        ("[privacy]\nmode = \"central\"\nepsilom = 3.0\n", "epsilom"),
        ("[privacy.clip]\nnorm = 1.0\nquantile = 0.5\n", "quantile"),
        ("[privacy.distributed]\nbit = 16\n", "bit"),
    ] {
        let err = toml::from_str::<File>(text).unwrap_err().to_string();
        assert!(err.contains(key), "{err}");
    }
    assert!(toml::from_str::<File>("[privacy]\nmode = \"local\"\n").is_err());
}

#[test]
fn the_issues_bad_inputs_are_refused_with_key_and_reason() {
    let base =
        "[privacy]\nmode = \"central\"\ndelta = 1e-6\nrounds = 100\n[privacy.clip]\nnorm = 1.0\n";
    // Negative or zero ε.
    for eps in ["-1.0", "0.0"] {
        let err = refused(
            &base.replace("rounds = 100", &format!("rounds = 100\nepsilon = {eps}")),
            &SHAPE,
        );
        assert_eq!(err.key(), "privacy.epsilon", "{err}");
        assert!(err.to_string().contains("positive"), "{err}");
    }
    // δ ≥ 1/n: 1e-3 with 10,000 clients; and with the population unknown, against the cohort.
    let err = refused(
        &base.replace("delta = 1e-6", "delta = 1e-3\nepsilon = 3.0"),
        &SHAPE,
    );
    assert!(
        matches!(
            err,
            PrivacyConfigError::DeltaTooLarge {
                clients: 10_000,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.key(), "privacy.delta");
    let unknown = TaskShape {
        population: None,
        ..SHAPE
    };
    let err = refused(
        &base.replace("delta = 1e-6", "delta = 0.02\nepsilon = 3.0"),
        &unknown,
    );
    assert!(
        matches!(err, PrivacyConfigError::DeltaTooLarge { clients: 100, .. }),
        "{err}"
    );
    // A clip of 0 or NaN.
    for norm in ["0.0", "nan", "-0.5", "inf"] {
        let err = refused(
            &base
                .replace("norm = 1.0", &format!("norm = {norm}"))
                .replace("rounds = 100", "rounds = 100\nepsilon = 3.0"),
            &SHAPE,
        );
        assert_eq!(err.key(), "privacy.clip.norm", "{norm}: {err}");
    }
    // A noise multiplier that cannot fit the budget in even one round.
    let err = refused(
        "[privacy]\nmode = \"central\"\ndelta = 1e-6\nepsilon = 0.5\nnoise_multiplier = 0.3\n[privacy.clip]\nnorm = 1.0\n",
        &SHAPE,
    );
    match &err {
        PrivacyConfigError::BudgetTooSmall {
            one_round, epsilon, ..
        } => assert!(one_round > epsilon),
        other => panic!("{other}"),
    }
    assert_eq!(err.key(), "privacy.noise_multiplier");
    // Bits too few for the cohort (8 bits for 100 clients at 5% inflation).
    let err = refused(
        "[privacy]\nmode = \"distributed\"\ndelta = 1e-6\nepsilon = 3.0\nrounds = 100\n[privacy.clip]\nnorm = 1.0\n[privacy.distributed]\nbits = 8\n",
        &SHAPE,
    );
    assert_eq!(err.key(), "privacy.distributed.bits");
    assert!(
        matches!(
            err,
            PrivacyConfigError::Distributed {
                source: DistributedError::TooFewBits {
                    bits: 8,
                    minimum: Some(_),
                    ..
                },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("use at least"), "{err}");
}

#[test]
fn missing_and_unused_keys_are_named() {
    let cases = [
        (
            "[privacy]\nmode = \"central\"\nepsilon = 1.0\nrounds = 5\n[privacy.clip]\nnorm = 1.0\n",
            "privacy.delta",
        ),
        (
            "[privacy]\nmode = \"central\"\ndelta = 1e-6\nrounds = 5\n[privacy.clip]\nnorm = 1.0\n",
            "privacy.epsilon",
        ),
        (
            "[privacy]\nmode = \"central\"\ndelta = 1e-6\nnoise_multiplier = 1.0\n[privacy.clip]\nnorm = 1.0\n",
            "privacy.rounds",
        ),
        (
            "[privacy]\nmode = \"central\"\ndelta = 1e-6\nepsilon = 1.0\nrounds = 5\n",
            "privacy.clip.norm",
        ),
        (
            "[privacy]\ndangerous_assume_poisson_rate = 0.1\n",
            "privacy.dangerous_assume_poisson_rate",
        ),
        ("[privacy]\nepsilon = 1.0\n", "privacy.epsilon"),
        ("[privacy.clip]\nnorm = 1.0\n", "privacy.clip"),
        (
            "[privacy]\nmode = \"central\"\ndelta = 1e-6\nepsilon = 1.0\nrounds = 5\n[privacy.clip]\nnorm = 1.0\ntarget_quantile = 0.5\n",
            "privacy.clip.target_quantile",
        ),
        (
            "[privacy]\nmode = \"distributed\"\ndelta = 1e-6\nepsilon = 1.0\nrounds = 5\n[privacy.clip]\nnorm = 1.0\nmode = \"adaptive\"\n",
            "privacy.clip.mode",
        ),
        (
            "[privacy]\nmode = \"central\"\ndelta = 1e-6\nepsilon = 1.0\nrounds = 5\n[privacy.clip]\nnorm = 1.0\n[privacy.distributed]\nbits = 16\n",
            "privacy.distributed",
        ),
        (
            "[privacy]\nmode = \"central\"\ndelta = 1e-6\nepsilon = 1.0\nrounds = 0\n[privacy.clip]\nnorm = 1.0\n",
            "privacy.rounds",
        ),
        (
            "[privacy]\nmode = \"central\"\ndelta = 1e-6\nepsilon = 1.0\nrounds = 5\ndangerous_assume_poisson_rate = 0.0\n[privacy.clip]\nnorm = 1.0\n",
            "privacy.dangerous_assume_poisson_rate",
        ),
        (
            "[privacy]\nmode = \"distributed\"\ndelta = 1e-6\nepsilon = 1.0\nrounds = 5\n[privacy.clip]\nnorm = 1.0\n[privacy.distributed]\nrounding_beta = 1.0\n",
            "privacy.distributed.rounding_beta",
        ),
        (
            "[privacy]\nmode = \"distributed\"\ndelta = 1e-6\nepsilon = 1.0\nrounds = 5\n[privacy.clip]\nnorm = 1.0\n[privacy.distributed]\nbits = 33\n",
            "privacy.distributed.bits",
        ),
    ];
    for (text, key) in cases {
        let err = parse(text).validate().expect_err(text);
        assert_eq!(err.key(), key, "{text}: {err}");
    }
}

fn discrete_curve(z: f64) -> RdpCurve {
    RdpCurve::per_round(
        Mechanism::DiscreteGaussian {
            noise_multiplier: z,
        },
        Sampling::None,
    )
    .unwrap()
}

#[test]
fn epsilon_and_noise_give_the_round_limit() {
    let c = parse(
        "[privacy]\nmode = \"central\"\ndelta = 1e-6\nepsilon = 8.0\nnoise_multiplier = 4.0\n[privacy.clip]\nnorm = 0.5\n",
    );
    let plan = c.plan(&SHAPE).unwrap().unwrap();
    assert_eq!(plan.noise_multiplier, 4.0);
    assert_eq!(plan.epsilon_budget, 8.0);
    assert!(plan.max_rounds > 1);
    assert!(plan.epsilon_after(plan.max_rounds) <= 8.0);
    assert!(plan.epsilon_after(plan.max_rounds + 1) > 8.0);
    assert!(plan.round_fits(plan.max_rounds - 1));
    assert!(!plan.round_fits(plan.max_rounds));
    assert_eq!(plan.epsilon_after(0), 0.0);
    // The accounting is the discrete Gaussian's.
    let want = discrete_curve(4.0).epsilon_after(7, 1e-6).unwrap().epsilon;
    assert_eq!(plan.epsilon_after(7), want);
    // Declared rounds beyond the budget are refused, within it kept.
    let over = parse(&format!(
        "[privacy]\nmode = \"central\"\ndelta = 1e-6\nepsilon = 8.0\nnoise_multiplier = 4.0\nrounds = {}\n[privacy.clip]\nnorm = 0.5\n",
        plan.max_rounds + 1
    ));
    assert!(matches!(
        over.plan(&SHAPE),
        Err(PrivacyConfigError::RoundsExceedBudget { .. })
    ));
    let within = parse(
        "[privacy]\nmode = \"central\"\ndelta = 1e-6\nepsilon = 8.0\nnoise_multiplier = 4.0\nrounds = 10\n[privacy.clip]\nnorm = 0.5\n",
    );
    assert_eq!(within.plan(&SHAPE).unwrap().unwrap().max_rounds, 10);
}

#[test]
fn epsilon_and_rounds_give_the_noise() {
    let c = parse(
        "[privacy]\nmode = \"central\"\ndelta = 1e-6\nepsilon = 3.0\nrounds = 200\n[privacy.clip]\nnorm = 1.0\n",
    );
    let plan = c.plan(&SHAPE).unwrap().unwrap();
    assert!(plan.epsilon_after(200) <= 3.0);
    assert!(plan.epsilon_after(200) > 2.99);
    let less = discrete_curve(plan.noise_multiplier * 0.999)
        .epsilon_after(200, 1e-6)
        .unwrap()
        .epsilon;
    assert!(less > 3.0);
}

#[test]
fn noise_and_rounds_give_the_budget() {
    let c = parse(
        "[privacy]\nmode = \"central\"\ndelta = 1e-6\nnoise_multiplier = 1.0\nrounds = 50\ndangerous_assume_poisson_rate = 0.01\n[privacy.clip]\nnorm = 1.0\n",
    );
    let plan = c.plan(&SHAPE).unwrap().unwrap();
    assert_eq!(plan.max_rounds, 50);
    assert_eq!(plan.sampling, Sampling::Poisson { rate: 0.01 });
    assert_eq!(plan.epsilon_budget, plan.epsilon_after(50));
    // Amplification lowers ε against no sampling.
    let unsampled = discrete_curve(1.0).epsilon_after(50, 1e-6).unwrap().epsilon;
    assert!(plan.epsilon_budget < unsampled);
}

#[test]
fn adaptive_clipping_splits_the_noise() {
    let c = parse(
        "[privacy]\nmode = \"central\"\ndelta = 1e-6\nnoise_multiplier = 1.0\nrounds = 50\n[privacy.clip]\nnorm = 0.1\nmode = \"adaptive\"\n",
    );
    let plan = c.plan(&SHAPE).unwrap().unwrap();
    let a = plan.adaptive_clip.unwrap();
    // Defaults: γ = 0.5, η = 0.2, σ_b = 100/20 = 5.
    assert_eq!(
        (a.target_quantile, a.learning_rate, a.count_stddev),
        (0.5, 0.2, 5.0)
    );
    assert!((a.value_noise_multiplier - 0.99f64.powf(-0.5)).abs() < 1e-12);
    assert_eq!(plan.value_noise_multiplier(), a.value_noise_multiplier);
    let err = parse(
        "[privacy]\nmode = \"central\"\ndelta = 1e-6\nnoise_multiplier = 3.0\nrounds = 50\n[privacy.clip]\nnorm = 0.1\nmode = \"adaptive\"\ncount_stddev = 1.0\n",
    )
    .plan(&SHAPE)
    .unwrap_err();
    assert_eq!(err.key(), "privacy.clip.count_stddev", "{err}");
}

#[test]
fn distributed_plans_carry_the_encoding() {
    let c = parse(
        "[privacy]\nmode = \"distributed\"\ndelta = 1e-6\nepsilon = 4.0\nrounds = 300\n[privacy.clip]\nnorm = 0.5\n",
    );
    let plan = c.plan(&SHAPE).unwrap().unwrap();
    let d = plan.distributed.as_ref().unwrap();
    assert_eq!(d.padded_dim, 131_072);
    // ε = 4 over 300 rounds needs z ≈ 22: the noise fills most of the ring, 17 bits.
    assert!(d.noise_inflation <= 1.05, "{d:?}");
    assert_eq!(d.noise_multiplier, plan.noise_multiplier);
    assert!(plan.epsilon_after(300) <= 4.0 && plan.epsilon_after(300) > 3.99);
    // Same ε as central DP at the same noise multiplier (τ is negligible).
    let central = discrete_curve(plan.noise_multiplier)
        .epsilon_after(300, 1e-6)
        .unwrap()
        .epsilon;
    assert!((central - plan.epsilon_after(300)).abs() < 1e-6);
    let text = plan.to_string();
    println!("{text}");
    assert!(text.starts_with("distributed DP: epsilon 4 at delta 1e-6 over at most 300 rounds"));
    assert!(text.contains("bits per coordinate"));
}

#[test]
fn the_documented_example_parses_and_plans() {
    // The TOML block of the config module's docs, read from the source so the docs stay true.
    let source = include_str!("../src/config.rs");
    let block: String = source
        .lines()
        .skip_while(|l| !l.starts_with("//! ```toml"))
        .skip(1)
        .take_while(|l| !l.starts_with("//! ```"))
        .map(|l| l.trim_start_matches("//!").trim_start())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(block.contains("[privacy]"));
    let config = parse(&block);
    let plan = config.plan(&SHAPE).unwrap().unwrap();
    assert_eq!(plan.mode, PrivacyMode::Central);
    assert_eq!(plan.max_rounds, 500);
    assert!(plan.epsilon_after(500) <= 4.0);
}
