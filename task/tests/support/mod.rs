//! What the DP tests of this crate share.

use cohort_task::config::TaskConfig;

/// A 10-round task of 50 clients per round on a tiny MLP, with `privacy` (a `[privacy]`
/// section, or nothing) appended.
pub fn task(privacy: &str) -> TaskConfig {
    TaskConfig::from_toml(&format!(
        r#"
        id = "dp"
        rounds = 10
        [model]
        input_shape = [8]
        num_classes = 2
        hidden = [4]
        [training]
        epochs = 1
        batch_size = 8
        learning_rate = 0.1
        [selection]
        clients_per_round = 50
        over_selection = 0.0
        {privacy}
        "#
    ))
    .unwrap()
}
