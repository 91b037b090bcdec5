//! The task vocabulary: defaults, and errors that name the key's path and the allowed values,
//! including keys inside the protocol's types.

use cohort_aggregation::strategy::StrategyConfig;
use cohort_protocol::{ModelSpec, OptimizerSpec};
use cohort_task::config::{DeadlineConfig, SecAggConfig, TaskConfig};

const TASK: &str = r#"
id = "digits"
rounds = 5
evaluate_every = 1

[model]
input_shape = [64]
num_classes = 10
layers = [
    { type = "linear", out = 32 },
    { type = "relu" },
    { type = "linear", out = 10 },
]

[training]
epochs = 1
batch_size = 32
learning_rate = 0.05
optimizer = { kind = "sgd", momentum = 0.5 }

[strategy]
kind = "fed_avg"

[selection]
clients_per_round = 20
over_selection = 0.3

[secagg]
dropout_fraction = 0.10

[deadlines]
masked_input = 120
"#;

fn with(from: &str, to: &str) -> String {
    assert!(TASK.contains(from), "the fixture has no {from:?}");
    TASK.replacen(from, to, 1)
}

fn error_of(text: &str) -> cohort_task::ConfigError {
    match TaskConfig::from_toml(text) {
        Ok(_) => panic!("accepted an invalid task:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn a_task_parses_and_round_trips() {
    let task = TaskConfig::from_toml(TASK).unwrap();
    assert_eq!(task.id, "digits");
    assert_eq!(task.model_spec(None).unwrap(), ModelSpec::digits_mlp());
    assert_eq!(task.selection.selection_size(), 26);
    assert_eq!(task.training.sgd_momentum(), Some(0.5));
    let plan = task.plan().unwrap();
    assert_eq!(plan.model, ModelSpec::digits_mlp());
    assert_eq!(
        plan.training.optimizer,
        OptimizerSpec::Sgd { momentum: 0.5 }
    );
    assert!(
        task.evaluates(3)
            && !TaskConfig {
                evaluate_every: 0,
                ..task.clone()
            }
            .evaluates(3)
    );
    let again = TaskConfig::from_toml(&task.to_toml().unwrap()).unwrap();
    assert_eq!(again, task);
}

#[test]
fn a_minimal_task_gets_the_documented_defaults() {
    let text = r#"
        id = "t"
        rounds = 3
        [model]
        preset = "digits_mlp"
        [training]
        epochs = 1
        batch_size = 8
        learning_rate = 0.1
        [selection]
        clients_per_round = 10
    "#;
    let t = TaskConfig::from_toml(text).unwrap();
    assert_eq!(t.evaluate_every, 0);
    assert_eq!(t.strategy, StrategyConfig::FedAvg { server_lr: 1.0 });
    assert_eq!(t.training.optimizer, OptimizerSpec::Sgd { momentum: 0.0 });
    assert_eq!(t.training.proximal_mu, 0.0);
    assert_eq!(t.training.max_examples, None);
    assert_eq!(t.selection.over_selection, 0.3);
    assert_eq!(t.selection.window_secs, 30.0);
    assert_eq!(t.selection.selection_size(), 13);
    assert_eq!(
        t.secagg,
        SecAggConfig {
            enabled: true,
            adversarial_fraction: 0.05,
            dropout_fraction: 0.10,
            clip: 1.0,
            max_weight: 1,
            value_bits: None,
            consistency_check: true,
        }
    );
    assert_eq!(t.secagg.value_bits_for(10), 16);
    assert_eq!(
        t.deadlines,
        DeadlineConfig {
            advertise_keys: 15.0,
            share_keys: 15.0,
            masked_input: 120.0,
            unmask: 15.0,
        }
    );
    assert_eq!(t.min_cohort(), 9, "⌈0.9 · 10⌉");
}

/// `secagg.consistency_check`: on by default, both values round-trip through the stored
/// text, a wrong type names the key, and the plan follows it.
#[test]
fn the_consistency_check_is_a_key_of_the_secagg_section() {
    let on = TaskConfig::from_toml(TASK).unwrap();
    assert!(on.secagg.consistency_check, "on by default");
    let explicit = TaskConfig::from_toml(&with(
        "dropout_fraction = 0.10",
        "dropout_fraction = 0.10\nconsistency_check = true",
    ))
    .unwrap();
    assert_eq!(explicit, on);
    let off = TaskConfig::from_toml(&with(
        "dropout_fraction = 0.10",
        "dropout_fraction = 0.10\nconsistency_check = false",
    ))
    .unwrap();
    assert!(!off.secagg.consistency_check);
    for task in [&on, &off] {
        let text = task.to_toml().unwrap();
        assert!(
            text.contains(&format!(
                "consistency_check = {}",
                task.secagg.consistency_check
            )),
            "{text}"
        );
        assert_eq!(&TaskConfig::from_toml(&text).unwrap(), task);
    }
    let e = error_of(&with(
        "dropout_fraction = 0.10",
        "dropout_fraction = 0.10\nconsistency_check = \"yes\"",
    ));
    assert_eq!(e.key(), Some("secagg.consistency_check"), "{e}");
    // The plan: semi-malicious parameters (a larger t) with the check.
    let plan = |t: &TaskConfig| {
        cohort_task::RoundPlan::new(t, 26, 2410)
            .unwrap()
            .secagg
            .unwrap()
    };
    let (p_on, p_off) = (plan(&on), plan(&off));
    assert!(p_on.consistency_check && !p_off.consistency_check);
    assert!(
        p_on.threshold > p_off.threshold,
        "t {} with the check, {} without",
        p_on.threshold,
        p_off.threshold
    );
}

/// A cohort too small for the check's parameters is refused when the task is read, and the
/// error says that the check is what needs more clients; without it the task is accepted.
#[test]
fn a_cohort_too_small_for_the_check_is_refused_naming_it() {
    let small = with("clients_per_round = 20", "clients_per_round = 5");
    let e = error_of(&small);
    assert_eq!(e.key(), Some("secagg.dropout_fraction"), "{e}");
    assert!(e.to_string().contains("secagg.consistency_check"), "{e}");
    let off = small.replace(
        "dropout_fraction = 0.10",
        "dropout_fraction = 0.10\nconsistency_check = false",
    );
    assert!(
        !TaskConfig::from_toml(&off)
            .unwrap()
            .secagg
            .consistency_check
    );
    // Without over-selection, 5 clients with no dropout allowed are enough for the check.
    let exact = small.replace("over_selection = 0.3", "over_selection = 0.0");
    assert!(
        TaskConfig::from_toml(&exact)
            .unwrap()
            .secagg
            .consistency_check
    );
}

#[test]
fn unknown_keys_are_named_with_their_path_even_inside_protocol_types() {
    let cases = [
        ("rounds = 5", "rounds = 5\nrounds_max = 3", "rounds_max"),
        (
            "dropout_fraction = 0.10",
            "dropout_fractoin = 0.10",
            "secagg.dropout_fractoin",
        ),
        ("masked_input = 120", "r4_secs = 3", "deadlines.r4_secs"),
        ("epochs = 1", "epochz = 1", "training.epochz"),
        ("momentum = 0.5 }", "momentun = 0.5 }", "training.optimizer"),
        (
            "{ type = \"linear\", out = 32 }",
            "{ type = \"linear\", out = 32, bias = false }",
            "model.layers",
        ),
        (
            "{ type = \"relu\" }",
            "{ type = \"relu\", slope = 0.1 }",
            "model.layers",
        ),
        (
            "over_selection = 0.3",
            "over_selectoin = 0.3",
            "selection.over_selectoin",
        ),
    ];
    for (from, to, key) in cases {
        let e = error_of(&with(from, to));
        let shown = e.to_string();
        assert!(
            e.key().is_some_and(|k| k.starts_with(key)),
            "{key}: {shown}"
        );
        assert!(shown.contains("unknown field"), "{key}: {shown}");
    }
}

#[test]
fn keys_of_the_earlier_vocabularies_name_their_new_place() {
    let cases = [
        (
            "rounds = 5",
            "rounds = 5\ncohort_size = 20",
            "selection.clients_per_round",
        ),
        (
            "masked_input = 120",
            "r2_secs = 120",
            "deadlines.masked_input",
        ),
        ("rounds = 5", "rounds = 5\neval_every = 2", "evaluate_every"),
    ];
    for (from, to, new) in cases {
        let shown = error_of(&with(from, to)).to_string();
        assert!(shown.contains(new), "{to}: {shown}");
    }
}

#[test]
fn out_of_range_values_name_the_key_and_what_is_allowed() {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("rounds = 5", "rounds = 0", "rounds", "≥ 1"),
        ("id = \"digits\"", "id = \"Digits!\"", "id", "lower-case"),
        (
            "clients_per_round = 20",
            "clients_per_round = 2",
            "selection.clients_per_round",
            "≥ 3",
        ),
        (
            "over_selection = 0.3",
            "over_selection = -0.1",
            "selection.over_selection",
            "[0, 9]",
        ),
        (
            "dropout_fraction = 0.10",
            "dropout_fraction = 1.5",
            "secagg.dropout_fraction",
            "[0, 1)",
        ),
        (
            "masked_input = 120",
            "masked_input = 0",
            "deadlines.masked_input",
            "seconds",
        ),
        (
            "momentum = 0.5 }",
            "momentum = 1.5 }",
            "training.optimizer.momentum",
            "[0, 1)",
        ),
        ("epochs = 1", "epochs = 0", "training.epochs", "≥ 1"),
        (
            "{ type = \"linear\", out = 10 }",
            "{ type = \"linear\", out = 9 }",
            "model",
            "num_classes",
        ),
    ];
    for (from, to, key, allowed) in cases {
        let e = error_of(&with(from, to));
        assert_eq!(e.key(), Some(*key), "{to}: {e}");
        assert!(e.to_string().contains(allowed), "{to}: {e}");
    }
    // A wrong type and an unknown variant name the key and what was expected.
    let e = error_of(&with("rounds = 5", "rounds = \"five\""));
    assert_eq!(e.key(), Some("rounds"), "{e}");
    let e = error_of(&with("kind = \"fed_avg\"", "kind = \"fed_sgd\""));
    let shown = e.to_string();
    assert!(
        shown.contains("strategy") && shown.contains("fed_sgd") && shown.contains("fed_adam"),
        "{shown}"
    );
}

#[test]
fn every_top_level_key_is_listed() {
    let mut task = TaskConfig::from_toml(TASK).unwrap();
    task.privacy.mode = cohort_privacy::config::PrivacyMode::Central;
    task.input = Some(cohort_protocol::InputSpec {
        kind: cohort_protocol::InputKind::Csv,
        labels: vec!["a".into()],
        scale: 1.0,
        offset: 0.0,
        feature_columns: vec!["x".into()],
        label_column: Some("y".into()),
    });
    let table: toml::Table = toml::to_string(&task).unwrap().parse().unwrap();
    let mut keys: Vec<&str> = table.keys().map(String::as_str).collect();
    let mut listed = TaskConfig::KEYS.to_vec();
    keys.sort_unstable();
    listed.sort_unstable();
    assert_eq!(keys, listed);
}

/// `TASK` with its model swapped for `model` and an `[input]` section.
fn with_input(model: &str, input: &str) -> String {
    let start = TASK.find("[model]").unwrap();
    let end = TASK.find("[training]").unwrap();
    format!(
        "{}{model}\n{}\n[input]\n{input}\n",
        &TASK[..start],
        &TASK[end..]
    )
}

const DIGITS_MLP: &str = "[model]\ninput_shape = [64]\nnum_classes = 10\nhidden = [32]";
const CNN: &str = "[model]\npreset = \"mnist_cnn\"";
const LABELS: &str = r#"labels = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]"#;

#[test]
fn input_declares_the_devices_examples_and_reaches_the_plan() {
    let image = TaskConfig::from_toml(&with_input(
        CNN,
        &format!("kind = \"image\"\n{LABELS}\nscale = 0.00392156862745098"),
    ))
    .unwrap();
    let plan = image.plan().unwrap();
    let input = plan.input.expect("the plan carries [input]");
    assert_eq!(input.kind, cohort_protocol::InputKind::Image);
    assert_eq!(input.labels.len(), 10);
    assert!((input.normalise(255.0) - 1.0).abs() < 1e-6);
    let columns: Vec<String> = (0..64).map(|i| format!("\"p{i}\"")).collect();
    let csv = TaskConfig::from_toml(&with_input(
        DIGITS_MLP,
        &format!(
            "kind = \"csv\"\n{LABELS}\nfeature_columns = [{}]\nlabel_column = \"digit\"",
            columns.join(", ")
        ),
    ))
    .unwrap();
    assert_eq!(csv.plan().unwrap().input.unwrap().feature_columns.len(), 64);
    let text = TaskConfig::from_toml(&with_input(
        "[model]\npreset = \"shakespeare_lstm\"\ninput_shape = [80]\nnum_classes = 96",
        "kind = \"text\"",
    ))
    .unwrap();
    assert_eq!(
        text.plan().unwrap().input.unwrap().kind,
        cohort_protocol::InputKind::Text
    );
    // Without [input] the plan has none.
    assert!(
        TaskConfig::from_toml(TASK)
            .unwrap()
            .plan()
            .unwrap()
            .input
            .is_none()
    );
}

#[test]
fn input_that_does_not_fit_the_model_is_refused_by_key() {
    let cases = [
        // An image needs [c, h, w].
        (DIGITS_MLP, format!("kind = \"image\"\n{LABELS}"), "input.kind"),
        // More labels than classes.
        (
            CNN,
            "kind = \"image\"\nlabels = [\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\",\"j\",\"k\"]".to_string(),
            "input.labels",
        ),
        // Duplicate and empty labels; none at all.
        (CNN, "kind = \"image\"\nlabels = [\"a\", \"a\"]".to_string(), "input.labels"),
        (CNN, "kind = \"image\"\nlabels = [\"\"]".to_string(), "input.labels"),
        (CNN, "kind = \"image\"".to_string(), "input.labels"),
        // A CSV with the wrong number of columns, or no label column.
        (
            DIGITS_MLP,
            format!("kind = \"csv\"\n{LABELS}\nfeature_columns = [\"a\"]\nlabel_column = \"y\""),
            "input.feature_columns",
        ),
        // Text needs a token model; a zero scale is refused.
        (DIGITS_MLP, "kind = \"text\"".to_string(), "input.kind"),
        (CNN, format!("kind = \"image\"\n{LABELS}\nscale = 0.0"), "input.scale"),
    ];
    for (model, input, key) in cases {
        let e = error_of(&with_input(model, &input));
        assert_eq!(e.key(), Some(key), "{input}: {e}");
    }
    // A CSV for an image model: the error says what such a model reads instead.
    let e = error_of(&with_input(
        CNN,
        &format!("kind = \"csv\"\n{LABELS}\nfeature_columns = [\"a\"]\nlabel_column = \"y\""),
    ));
    assert_eq!(e.key(), Some("input.feature_columns"), "{e}");
    assert!(e.to_string().contains("image folder"), "{e}");
    // Unknown keys and kinds are refused with their path.
    let e = error_of(&with_input(CNN, &format!("kind = \"video\"\n{LABELS}")));
    assert!(e.to_string().contains("input"), "{e}");
    let e = error_of(&with_input(
        CNN,
        &format!("kind = \"image\"\n{LABELS}\nmean = 0.5"),
    ));
    assert!(e.to_string().contains("mean"), "{e}");
}

#[test]
fn the_simulators_comparison_only_section_is_refused_by_name() {
    let text = format!("{TASK}\n[comparison_only]\ndangerous_force_graph = {{ k = 2, t = 2 }}\n");
    let e = error_of(&text).to_string();
    assert!(e.contains("comparison_only"), "{e}");
    assert!(e.contains("weaken SecAgg+"), "{e}");
    assert!(e.contains("remove the section"), "{e}");
    // Without it the same task is accepted.
    TaskConfig::from_toml(TASK).unwrap();
}
