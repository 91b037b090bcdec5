//! Experiment files: the shipped ones parse, the task part is the coordinator's vocabulary, and
//! invalid ones are refused with an error that names the key and the allowed values.

use std::path::Path;

use cohort_sim::config::{DEFAULT_EXPERIMENT, Experiment, TaskConfig};

fn with(replace: &str, by: &str) -> String {
    assert!(
        DEFAULT_EXPERIMENT.contains(replace),
        "the default experiment has no {replace:?}"
    );
    DEFAULT_EXPERIMENT.replacen(replace, by, 1)
}

fn error_of(text: &str) -> String {
    match Experiment::from_toml(text) {
        Ok(_) => panic!("accepted an invalid experiment"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn shipped_experiments_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".toml") && !name.contains(".sweep.") {
            Experiment::from_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            seen += 1;
        }
    }
    assert!(
        seen >= 5,
        "expected the five shipped experiments, found {seen}"
    );
    let sweeps = cohort_sim::sweep::expand(&dir.join("iid-vs-dirichlet.sweep.toml")).unwrap();
    assert_eq!(sweeps.len(), 4);
    let sweeps = cohort_sim::sweep::expand(&dir.join("digits-partitions.sweep.toml")).unwrap();
    assert_eq!(sweeps.len(), 6);
    assert!(
        sweeps
            .iter()
            .all(|r| r.experiment.run.trainer == cohort_sim::config::TrainerKind::Builtin)
    );
}

/// The task keys of an experiment, alone, are a task file the coordinator's vocabulary reads
/// to the same configuration: one vocabulary, same defaults.
#[test]
fn the_task_part_of_an_experiment_is_a_task_file() {
    let exp = Experiment::default_experiment();
    let mut table: toml::Table = DEFAULT_EXPERIMENT.parse().unwrap();
    table.retain(|k, _| TaskConfig::KEYS.contains(&k));
    let task = TaskConfig::from_table(table).unwrap();
    assert_eq!(task, exp.task);
    // And the resolved experiment round-trips through its TOML.
    let again = Experiment::from_toml(&exp.to_toml().unwrap()).unwrap();
    assert_eq!(again, exp);
}

#[test]
fn errors_name_the_key_and_the_allowed_values() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "dataset = \"digits\"",
            "dataset = \"cifar\"",
            &[
                "data.dataset",
                "\"cifar\"",
                "digits, mnist, fashion-mnist, femnist, shakespeare",
            ],
        ),
        (
            "partition = { kind = \"iid\" }",
            "partition = { kind = \"iid\" }\nrepeat = 0",
            &["data.repeat", "0", "an integer from 1 to 10000"],
        ),
        (
            "{ kind = \"iid\" }",
            "{ kind = \"random\" }",
            &[
                "data.partition",
                "random",
                "iid",
                "dirichlet",
                "shards",
                "natural",
            ],
        ),
        (
            "{ kind = \"iid\" }",
            "{ kind = \"dirichlet\", alpha = -1.0 }",
            &["data.partition.alpha", "> 0"],
        ),
        (
            "online_probability = 0.9",
            "online_probability = 1.5",
            &["availability.online_probability", "(0, 1]"],
        ),
        (
            "unmask = 0.02 }",
            "unmask = 2.0 }",
            &["availability.dropout.unmask", "[0, 1]"],
        ),
        (
            "phone-4g = 0.3",
            "modem = 0.3",
            &[
                "network.profiles",
                "modem",
                "phone-4g, phone-wifi, laptop, datacenter",
            ],
        ),
        (
            "kind = \"fed_avg\"",
            "kind = \"fed_sgd\"",
            &["strategy", "fed_sgd", "fed_avg", "fed_adam"],
        ),
        (
            "clients_per_round = 20",
            "clients_per_round = 2",
            &["selection.clients_per_round", "≥ 3"],
        ),
        (
            "clients_per_round = 20",
            "clients_per_round = 200",
            &[
                "selection.clients_per_round",
                "population.num_clients = 100",
            ],
        ),
        ("epochs = 5", "epochs = 0", &["training.epochs", "≥ 1"]),
        (
            "masked_input = 120",
            "masked_input = -1",
            &["deadlines.masked_input", "seconds"],
        ),
        (
            "rounds = 15",
            "rounds = 15\nround = 3",
            &["round", "unknown field", "`population`"],
        ),
        (
            "max_attempts = 3",
            "max_attempts = 3\nseeed = 2",
            &["run.seeed", "unknown field"],
        ),
        (
            "learning_rate = 0.05",
            "learning_rate = \"fast\"",
            &["training.learning_rate", "expected f32"],
        ),
        // A key of the earlier experiment vocabulary says where it went.
        (
            "rounds = 15",
            "rounds = 15\nnum_clients = 100",
            &["num_clients", "population.num_clients"],
        ),
    ];
    for (from, to, needles) in cases {
        let err = error_of(&with(from, to));
        for n in *needles {
            assert!(err.contains(n), "error for {to:?} lacks {n:?}: {err}");
        }
    }
}

#[test]
fn the_default_experiment_is_the_documented_one() {
    let exp = Experiment::default_experiment();
    assert_eq!(exp.data.dataset, "digits");
    assert!(exp.task.secagg.enabled);
    assert_eq!(exp.population.num_clients, 100);
    assert_eq!(exp.task.selection.clients_per_round, 20);
    assert_eq!(exp.run.seed, 1);
}

#[test]
fn model_presets_specs_and_trainers_parse_and_are_checked() {
    use cohort_sim::config::{BackendName, DataShape, ModelConfig, ModelPreset, TrainerKind};
    let digits = DataShape {
        features: 64,
        classes: 10,
    };
    let preset = with("hidden = [64]", "preset = \"digits_mlp\"");
    let exp = Experiment::from_toml(&preset).unwrap();
    assert_eq!(exp.task.model.preset, Some(ModelPreset::DigitsMlp));
    assert_eq!(
        exp.run.trainer,
        TrainerKind::Burn,
        "burn is the default trainer"
    );
    assert_eq!(exp.run.backend, BackendName::Flex);
    let layers = with(
        "hidden = [64]",
        "layers = [{ type = \"linear\", out = 16 }, { type = \"relu\" }, { type = \"linear\", out = 10 }]",
    );
    let exp = Experiment::from_toml(&layers).unwrap();
    assert_eq!(
        ModelConfig::mlp_hidden(&exp.model_spec(digits).unwrap()),
        Some(vec![16])
    );
    // Two model forms at once.
    let both = with("hidden = [64]", "hidden = [64]\npreset = \"mnist_mlp\"");
    assert!(error_of(&both).contains("`model`"), "{}", error_of(&both));
    // A CNN needs the burn trainer: the default one, but not the built-in MLP.
    let cnn = with("hidden = [64]", "preset = \"mnist_cnn\"");
    let exp = Experiment::from_toml(&cnn).unwrap();
    assert_eq!(exp.run.trainer, TrainerKind::Burn);
    let cnn_builtin = cnn.replace(
        "max_attempts = 3",
        "max_attempts = 3\ntrainer = \"builtin\"",
    );
    assert!(
        error_of(&cnn_builtin).contains("`run.trainer`"),
        "{}",
        error_of(&cnn_builtin)
    );
    // The built-in trainer runs SGD only.
    let adam = with(
        "learning_rate = 0.05",
        "learning_rate = 0.05\noptimizer = { kind = \"adam\" }",
    )
    .replace(
        "max_attempts = 3",
        "max_attempts = 3\ntrainer = \"builtin\"",
    );
    assert!(
        error_of(&adam).contains("`training.optimizer`"),
        "{}",
        error_of(&adam)
    );
    let lstm = with("hidden = [64]", "preset = \"shakespeare_lstm\"");
    let exp = Experiment::from_toml(&lstm).unwrap();
    assert_eq!(exp.task.model.preset, Some(ModelPreset::ShakespeareLstm));
    let bad_backend = with("max_attempts = 3", "max_attempts = 3\nbackend = \"tpu\"");
    assert!(error_of(&bad_backend).contains("run.backend"));
}

#[test]
fn over_selection_and_max_examples_are_checked() {
    // Without the consistency check: 30% over-selection at dropout fraction 0.3 is a dropout
    // fraction of 1 − 14/26 for the graph, beyond what the check's parameters allow.
    let ok = with("over_selection = 0.0", "over_selection = 0.3")
        .replace("consistency_check = true", "consistency_check = false");
    let exp = Experiment::from_toml(&ok).unwrap();
    assert_eq!(exp.selected_per_round(), 26, "20 · 1.3");
    assert_eq!(
        Experiment::default_experiment().selected_per_round(),
        20,
        "the default experiment does not over-select"
    );
    for bad in ["-0.1", "9.5", "nan", "inf"] {
        let text = with("over_selection = 0.0", &format!("over_selection = {bad}"));
        let err = error_of(&text);
        assert!(
            err.contains("`selection.over_selection`") && err.contains("[0, 9]"),
            "{bad}: {err}"
        );
    }
    // 90 · 1.2 = 108 clients of 100: too many.
    let text = with(
        "clients_per_round = 20\nover_selection = 0.0",
        "clients_per_round = 90\nover_selection = 0.2",
    );
    let err = error_of(&text);
    assert!(
        err.contains("`selection.over_selection`")
            && err.contains("108 clients would be selected of 100"),
        "{err}"
    );
    let text = with("epochs = 5", "epochs = 5\nmax_examples = 0");
    let err = error_of(&text);
    assert!(err.contains("`training.max_examples`"), "{err}");
    let exp = Experiment::from_toml(&with("epochs = 5", "epochs = 5\nmax_examples = 64")).unwrap();
    assert_eq!(exp.task.training.max_examples, Some(64));
}

/// `data.repeat` tiles the training set: the population gets that many copies of each example
/// (the benchmark's equal-work workload), partitioned like any other training set.
#[test]
fn repeat_tiles_the_training_set() {
    let once = Experiment::from_toml(DEFAULT_EXPERIMENT).unwrap();
    let thrice = Experiment::from_toml(&with(
        "partition = { kind = \"iid\" }",
        "partition = { kind = \"iid\" }\nrepeat = 3",
    ))
    .unwrap();
    let a = cohort_sim::setup::load_data(&once).unwrap();
    let b = cohort_sim::setup::load_data(&thrice).unwrap();
    assert_eq!(b.train.len(), 3 * a.train.len());
    assert_eq!(b.test.len(), a.test.len(), "the test set is not repeated");
    let n = a.train.len();
    assert_eq!(&b.train.labels()[2 * n..], a.train.labels());
    let examples: usize = b.partitions.iter().map(Vec::len).sum();
    assert_eq!(examples, 3 * n, "every copy goes to some client");
    assert_eq!(cohort_sim::bench::digits_repeat(1_000), 180);
    assert_eq!(cohort_sim::bench::digits_repeat(1), 1);
}
