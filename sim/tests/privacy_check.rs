//! `cohort-sim check` on an experiment's `[privacy]` section: the task's vocabulary, planned
//! against the experiment's population and model, bad input refused naming the key (burn-free:
//! runs in the `--no-default-features` build too).

use std::process::{Command, Output};

const EXPERIMENT: &str = r#"
id = "dp-check"
rounds = 5
[run]
trainer = "builtin"
[population]
num_clients = 1000
[data]
dataset = "digits"
partition = { kind = "iid" }
[model]
hidden = [32]
[training]
epochs = 1
batch_size = 10
learning_rate = 0.1
[selection]
clients_per_round = 100
over_selection = 0.0
"#;

fn check(privacy: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exp.toml");
    std::fs::write(&path, format!("{EXPERIMENT}\n{privacy}")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_cohort-sim"))
        .arg("check")
        .arg(&path)
        .env("RUST_LOG", "off")
        .output()
        .expect("cohort-sim runs")
}

fn refused(privacy: &str, key: &str) -> String {
    let out = check(privacy);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("`{key}`")), "{stderr} lacks {key}");
    stderr
}

#[test]
fn a_valid_section_is_printed_back() {
    let out = check(
        "[privacy]\nmode = \"distributed\"\nepsilon = 3.0\ndelta = 1e-6\nrounds = 20\n\
         [privacy.clip]\nnorm = 0.5\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[privacy]"), "{stdout}");
    assert!(stdout.contains("mode = \"distributed\""), "{stdout}");
}

#[test]
fn bad_sections_are_refused_naming_the_key() {
    let section = |budget: &str, clip: &str| {
        format!("[privacy]\nmode = \"central\"\n{budget}\n[privacy.clip]\nnorm = {clip}\n")
    };
    refused(
        &section("epsilon = -2.0\ndelta = 1e-6\nrounds = 5", "1.0"),
        "privacy.epsilon",
    );
    // δ = 1e-3 is below 1/clients_per_round but not below 1/num_clients = 1e-3.
    let e = refused(
        &section("epsilon = 2.0\ndelta = 1e-3\nrounds = 5", "1.0"),
        "privacy.delta",
    );
    assert!(e.contains("n = 1000"), "{e}");
    refused(
        &section("epsilon = 2.0\ndelta = 1e-6\nrounds = 5", "0.0"),
        "privacy.clip.norm",
    );
    refused(
        &section(
            "epsilon = 0.05\ndelta = 1e-6\nnoise_multiplier = 0.5",
            "1.0",
        ),
        "privacy.noise_multiplier",
    );
    refused(
        "[privacy]\nmode = \"distributed\"\nepsilon = 2.0\ndelta = 1e-6\nrounds = 5\n\
         [privacy.clip]\nnorm = 1.0\n[privacy.distributed]\nbits = 8\n",
        "privacy.distributed.bits",
    );
}
