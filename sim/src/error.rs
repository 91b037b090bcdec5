//! [`SimError`]: why a simulation could not start or could not go on.

use std::path::PathBuf;

use cohort_aggregation::strategy::StrategyError;
use cohort_datasets::DataError;
use cohort_task::plan::PlanError;

use crate::config::ConfigError;
use crate::trainer::TrainError;

/// Why a simulation failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The experiment is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The dataset could not be loaded or partitioned.
    #[error("{what}: {source}")]
    Data {
        /// What was being done.
        what: String,
        /// The cause.
        source: DataError,
    },
    /// The dataset's directory does not exist.
    #[error("dataset {dataset} not found in {looked_in}; set data.dir or $COHORT_DATASETS")]
    DatasetNotFound {
        /// The dataset.
        dataset: String,
        /// Where it was looked for.
        looked_in: String,
    },
    /// The model could not be built, trained or evaluated.
    #[error("training: {0}")]
    Train(#[from] TrainError),
    /// No round can be planned for the task (its encoding, for instance).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The strategy refused an update.
    #[error("differential privacy: {0}")]
    Privacy(#[from] cohort_task::privacy::PrivacyRoundError),
    /// The strategy could not be built.
    #[error("strategy: {0}")]
    Strategy(#[from] StrategyError),
    /// An output file could not be written.
    #[error("writing {path}: {source}; check that the output directory is writable")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A chart could not be drawn.
    #[error("drawing {path}: {source}")]
    Plot {
        /// The chart's file.
        path: PathBuf,
        /// The cause.
        source: crate::plot::PlotError,
    },
    /// Metrics could not be formatted as CSV.
    #[error("writing {path} as CSV: {source}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: csv::Error,
    },
    /// Live mode (a real coordinator and edge clients on loopback) failed.
    #[error("live mode, {what}: {message}")]
    Live {
        /// What was being done.
        what: String,
        /// The cause, with its chain.
        message: String,
    },
}
