//! Reading TOML into the configuration types, the one way every configuration file is read: the
//! text becomes a [`toml::Table`] (syntax errors carry the line and column), then each part
//! becomes its serde type through `serde_path_to_error`, so that any schema error (an unknown
//! key, a wrong type, an unknown variant) names the key's dotted path. Every configuration type
//! denies unknown fields, so a misspelt key is an error, never a silent default.

use std::path::Path;

use serde::de::DeserializeOwned;

use super::error::ConfigError;

/// Keys of the earlier task and experiment vocabularies, and where each one lives now. An unknown
/// key found here gets the new place in its error.
const MOVED: &[(&str, &str)] = &[
    ("name", "`id`"),
    ("cohort_size", "`selection.clients_per_round`"),
    ("clients_per_round", "`selection.clients_per_round`"),
    (
        "over_selection",
        "`selection.over_selection` (now the extra fraction: 1.3 became 0.3)",
    ),
    ("eval_every", "`evaluate_every`"),
    ("seed", "`run.seed`"),
    ("max_attempts", "`run.max_attempts`"),
    ("threads", "`run.threads`"),
    ("trainer", "`run.trainer`"),
    ("backend", "`run.backend`"),
    ("target_accuracy", "`run.target_accuracy`"),
    ("stop_at_target", "`run.stop_at_target`"),
    ("num_clients", "`population.num_clients`"),
    ("deadlines.r0_secs", "`deadlines.advertise_keys`"),
    ("deadlines.r1_secs", "`deadlines.share_keys`"),
    ("deadlines.r2_secs", "`deadlines.masked_input`"),
    ("deadlines.r3_secs", "`deadlines.unmask`"),
    (
        "training.momentum",
        "`training.optimizer = { kind = \"sgd\", momentum = ... }`",
    ),
    (
        "model.spec",
        "`model` itself (`input_shape`, `layers`, `num_classes`)",
    ),
];

/// Parses TOML text into a table; a syntax error names the line and column.
pub fn parse_table(text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            message: e.to_string().trim().to_string(),
        })
}

/// Reads a file's text.
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Deserializes `table` as `T`; a schema error names the key's dotted path, and an unknown key
/// that an earlier vocabulary used says where it lives now.
pub fn deserialize<T: DeserializeOwned>(table: toml::Table) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().message().trim().to_string();
        schema_error(path, message)
    })
}

fn schema_error(path: String, message: String) -> ConfigError {
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field.to_string());
    let Some(field) = unknown else {
        return ConfigError::Parse { key: path, message };
    };
    // serde_path_to_error's path ends with the unknown field itself; a path built by hand
    // (`unknown_key`) names only its parent.
    let key = if path == field || path.ends_with(&format!(".{field}")) {
        path
    } else if path == "." || path.is_empty() {
        field
    } else {
        format!("{path}.{field}")
    };
    let message = match MOVED.iter().find(|(old, _)| *old == key) {
        Some((_, new)) => format!("{message}; this key is now {new}"),
        None => message,
    };
    ConfigError::Parse { key, message }
}

/// An unknown top-level key of a file made of several parts (an experiment: the task's keys
/// and the simulator's), with every allowed key listed.
pub fn unknown_key(key: &str, allowed: &[&str]) -> ConfigError {
    let list = allowed
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    schema_error(
        ".".into(),
        format!("unknown field `{key}`, expected one of {list}"),
    )
}

/// Serializes a configuration back to TOML text (the form the coordinator stores and the
/// simulator writes beside its results).
pub fn to_text<T: serde::Serialize>(value: &T) -> Result<String, ConfigError> {
    toml::to_string_pretty(value).map_err(|e| ConfigError::Parse {
        key: ".".into(),
        message: format!("cannot be written as TOML: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        rate: f32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
        list: Vec<Inner>,
    }

    fn error(text: &str) -> ConfigError {
        deserialize::<Outer>(parse_table(text).unwrap()).unwrap_err()
    }

    #[test]
    fn schema_errors_name_the_dotted_path() {
        let e = error("list = []\n[inner]\nrate = \"fast\"\n");
        assert_eq!(e.key(), Some("inner.rate"), "{e}");
        assert!(e.to_string().contains("expected f32"), "{e}");
        let e = error("list = [{ rate = 1.0 }, { rait = 2.0 }]\n[inner]\nrate = 1.0\n");
        assert!(e.key().unwrap().starts_with("list"), "{e}");
        assert!(e.to_string().contains("rait"), "{e}");
        let e = error("lisst = []\n[inner]\nrate = 1.0\n");
        assert_eq!(e.key(), Some("lisst"), "{e}");
        assert!(e.to_string().contains("`inner` or `list`"), "{e}");
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let e = parse_table("a = 1\nb = = 2\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn keys_of_the_earlier_vocabularies_say_where_they_went() {
        let e = unknown_key("cohort_size", &["id", "selection"]).to_string();
        assert!(e.contains("selection.clients_per_round"), "{e}");
        assert!(e.contains("`id`, `selection`"), "{e}");
        let e = schema_error(
            "deadlines".into(),
            "unknown field `r2_secs`, expected one of `masked_input`".into(),
        );
        assert_eq!(e.key(), Some("deadlines.r2_secs"));
        assert!(e.to_string().contains("deadlines.masked_input"), "{e}");
    }
}
