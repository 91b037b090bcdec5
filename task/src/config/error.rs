//! [`ConfigError`]: why a task or experiment file was refused. Every variant names the key.

use std::path::PathBuf;

/// Why a configuration (a task file, or the task part of an experiment file) was refused. Every
/// variant but [`ConfigError::Read`] names the key at fault by its dotted path
/// (`secagg.dropout_fraction`), and, where the set of values is closed, the allowed values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}; check the path")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The text is not TOML at all; the message gives the line and column.
    #[error("not valid TOML: {message}")]
    Syntax {
        /// What the TOML parser said.
        message: String,
    },
    /// A value does not fit the schema: unknown key, wrong type, unknown variant, missing key.
    #[error("key `{key}`: {message}")]
    Parse {
        /// The dotted path of the key (`.` for the top level).
        key: String,
        /// What the parser said, with the allowed keys or values for closed sets.
        message: String,
    },
    /// A value is out of range, or does not agree with another one.
    #[error("key `{key}` = {value} is invalid; allowed: {allowed}")]
    Invalid {
        /// The dotted path of the key.
        key: String,
        /// The value given.
        value: String,
        /// The allowed values or range, in words.
        allowed: String,
    },
    /// The `[privacy]` section was refused (`cohort-privacy`'s checks, with its key).
    #[error("key `{key}`: {source}")]
    Privacy {
        /// The dotted path of the key (`privacy.delta`, or `selection.clients_per_round` when
        /// the task's shape is at fault).
        key: String,
        /// Why.
        #[source]
        source: cohort_privacy::config::PrivacyConfigError,
    },
    /// A section or value that this build does not support yet.
    #[error("key `{key}` is not supported yet: {reason}")]
    Unsupported {
        /// The dotted path of the key.
        key: String,
        /// What is missing and what to do instead.
        reason: String,
    },
}

/// A [`ConfigError::Invalid`].
pub fn invalid(
    key: impl Into<String>,
    value: impl std::fmt::Display,
    allowed: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.to_string(),
        allowed: allowed.into(),
    }
}

impl ConfigError {
    /// The dotted path of the key at fault, if the error names one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Parse { key, .. }
            | ConfigError::Invalid { key, .. }
            | ConfigError::Unsupported { key, .. }
            | ConfigError::Privacy { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => None,
        }
    }
}
