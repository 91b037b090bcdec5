//! The `[privacy]` section of a task file: parsed into `cohort-privacy`'s configuration, planned
//! against the task, and bad input refused when the task is read, naming the key.

use cohort_task::config::{ConfigError, TaskConfig};

/// A complete digits task (2,410 parameters) of 100 clients a round, with `privacy` appended.
fn task(privacy: &str) -> String {
    format!(
        r#"
        id = "dp"
        rounds = 10
        [model]
        preset = "digits_mlp"
        [training]
        epochs = 1
        batch_size = 8
        learning_rate = 0.1
        [selection]
        clients_per_round = 100
        over_selection = 0.0
        [secagg]
        dropout_fraction = 0.1
        {privacy}
        "#
    )
}

fn refused(privacy: &str) -> ConfigError {
    match TaskConfig::from_toml(&task(privacy)) {
        Ok(_) => panic!("accepted: {privacy}"),
        Err(e) => e,
    }
}

fn assert_refused(privacy: &str, key: &str, words: &str) {
    let e = refused(privacy);
    assert_eq!(e.key(), Some(key), "{e}");
    let text = e.to_string();
    assert!(text.contains(words), "{text:?} lacks {words:?}");
}

#[test]
fn a_task_without_the_section_has_no_dp_and_writes_none() {
    let t = TaskConfig::from_toml(&task("")).unwrap();
    assert!(!t.privacy.enabled());
    assert!(t.privacy_plan(2410, None).unwrap().is_none());
    assert!(!t.to_toml().unwrap().contains("privacy"));
}

#[test]
fn central_and_distributed_sections_plan_and_round_trip() {
    let central = r#"
        [privacy]
        mode = "central"
        epsilon = 4.0
        delta = 1e-6
        rounds = 50
        [privacy.clip]
        norm = 0.5
        mode = "adaptive"
        "#;
    let t = TaskConfig::from_toml(&task(central)).unwrap();
    let plan = t.privacy_plan(2410, Some(1000)).unwrap().unwrap();
    assert_eq!(plan.max_rounds, 50);
    assert!(plan.epsilon_after(50) <= 4.0 + 1e-9, "{plan}");
    assert!(plan.epsilon_after(50) > 3.5, "{plan}");
    assert!(plan.adaptive_clip.is_some());
    let again = TaskConfig::from_toml(&t.to_toml().unwrap()).unwrap();
    assert_eq!(again, t);

    let distributed = r#"
        [privacy]
        mode = "distributed"
        noise_multiplier = 1.0
        rounds = 20
        delta = 1e-6
        [privacy.clip]
        norm = 1.0
        [privacy.distributed]
        bits = 16
        "#;
    let t = TaskConfig::from_toml(&task(distributed)).unwrap();
    let plan = t.privacy_plan(2410, None).unwrap().unwrap();
    let d = plan.distributed.clone().unwrap();
    assert_eq!((d.bits, d.padded_dim, d.max_clients), (16, 4096, 100));
    // q_min is the smallest quorum a round can release: a round may start with the quorum of
    // a full cohort (90 of 100) and release 90% of those, 81.
    assert_eq!(t.min_cohort(), 90);
    assert_eq!(d.min_survivors, 81);
    assert!(plan.epsilon_budget > 0.0 && plan.epsilon_budget.is_finite());
    // The masked vector: padded values and the weight element.
    let round = cohort_task::RoundPlan::new(&t, 100, 2410).unwrap();
    assert_eq!(round.secagg.unwrap().vector_len, 4097);
}

#[test]
fn bad_budgets_are_refused_naming_the_key() {
    let with = |budget: &str, clip: &str| {
        format!("[privacy]\nmode = \"central\"\n{budget}\n[privacy.clip]\nnorm = {clip}\n")
    };
    assert_refused(
        &with("epsilon = -1.0\ndelta = 1e-6\nrounds = 5", "1.0"),
        "privacy.epsilon",
        "positive",
    );
    assert_refused(
        &with("epsilon = 0.0\ndelta = 1e-6\nrounds = 5", "1.0"),
        "privacy.epsilon",
        "positive",
    );
    // δ ≥ 1/n for the 100 clients of a round (the population is unknown to a task file).
    assert_refused(
        &with("epsilon = 2.0\ndelta = 0.01\nrounds = 5", "1.0"),
        "privacy.delta",
        "1/n",
    );
    assert_refused(
        &with("epsilon = 2.0\ndelta = 1e-6\nrounds = 5", "0.0"),
        "privacy.clip.norm",
        "privacy.clip.norm",
    );
    assert_refused(
        &with("epsilon = 2.0\ndelta = 1e-6\nrounds = 5", "nan"),
        "privacy.clip.norm",
        "NaN",
    );
    // One round of noise multiplier 0.3 costs far more than ε = 0.1.
    assert_refused(
        &with("epsilon = 0.1\ndelta = 1e-6\nnoise_multiplier = 0.3", "1.0"),
        "privacy.noise_multiplier",
        "even one round",
    );
    // Missing δ.
    assert_refused(
        &with("epsilon = 2.0\nrounds = 5", "1.0"),
        "privacy.delta",
        "required",
    );
}

#[test]
fn too_few_bits_for_the_cohort_are_refused() {
    let e = refused(
        r#"
        [privacy]
        mode = "distributed"
        epsilon = 2.0
        delta = 1e-6
        rounds = 10
        [privacy.clip]
        norm = 1.0
        [privacy.distributed]
        bits = 8
        "#,
    );
    assert_eq!(e.key(), Some("privacy.distributed.bits"), "{e}");
}

#[test]
fn dp_needs_secagg_and_weight_one() {
    let section = "[privacy]\nmode = \"central\"\nepsilon = 2.0\ndelta = 1e-6\nrounds = 5\n\
                   [privacy.clip]\nnorm = 1.0\n";
    let text = task(section).replace(
        "dropout_fraction = 0.1",
        "dropout_fraction = 0.1\nmax_weight = 10",
    );
    let e = TaskConfig::from_toml(&text).unwrap_err();
    assert_eq!(e.key(), Some("secagg.max_weight"), "{e}");
    // Keys of another mode, and unknown keys, are refused too.
    assert_refused(
        "[privacy]\nmode = \"none\"\nepsilon = 2.0\n",
        "privacy.epsilon",
        "no effect",
    );
    let e = refused("[privacy]\nmode = \"central\"\nepsilonn = 2.0\n");
    assert!(e.to_string().contains("epsilonn"), "{e}");
}
