//! Turning an experiment's `[data]` and `[model]` sections into a dataset, a partition and a
//! trainer.

use std::path::PathBuf;
use std::sync::Arc;

use cohort_datasets::{DatasetName, LoadedDataset, datasets_dir, embedded_digits};

use crate::config::Experiment;
use crate::error::SimError;
use crate::mlp::MlpTrainer;
use crate::parallel::worker_threads;
use crate::seeds::{self, Purpose};

/// A loaded experiment: the trainer (which owns the data) and the partition.
pub struct Setup {
    /// The trainer over the dataset's train and test parts.
    pub trainer: MlpTrainer,
    /// Per client, the indices of its training examples.
    pub partitions: Vec<Vec<usize>>,
    /// Where the data came from, for the summary.
    pub source: String,
}

/// Loads the experiment's dataset: from `data.dir` if given, else from the shared datasets
/// directory; digits fall back to the copy compiled into `cohort-datasets`.
pub fn load_dataset(exp: &Experiment) -> Result<(LoadedDataset, String), SimError> {
    let name = exp.data.dataset_name()?;
    let dir: Option<PathBuf> = exp
        .data
        .dir
        .clone()
        .or_else(|| datasets_dir().map(|d| d.join(name.folder())));
    match (name, dir) {
        (_, Some(dir)) if dir.is_dir() => {
            let loaded = cohort_datasets::load(name, &dir).map_err(|source| SimError::Data {
                what: format!("loading {name} from {}", dir.display()),
                source,
            })?;
            Ok((loaded, dir.display().to_string()))
        }
        (DatasetName::Digits, _) => {
            let split = embedded_digits().map_err(|source| SimError::Data {
                what: "loading the embedded digits".into(),
                source,
            })?;
            Ok((
                LoadedDataset {
                    name,
                    split,
                    groups: None,
                },
                "embedded".into(),
            ))
        }
        (_, dir) => Err(SimError::DatasetNotFound {
            dataset: name.to_string(),
            looked_in: dir.map_or_else(
                || "no datasets directory ($COHORT_DATASETS, ../shared/datasets)".to_string(),
                |d| d.display().to_string(),
            ),
        }),
    }
}

/// Loads the data, partitions it and builds the trainer.
pub fn build(exp: &Experiment) -> Result<Setup, SimError> {
    let (loaded, source) = load_dataset(exp)?;
    let train = Arc::new(loaded.split.train);
    let test = Arc::new(loaded.split.test);
    let groups = loaded.groups.as_ref().map(|g| g.train.as_slice());
    let partitions = exp
        .data
        .partition
        .partition(
            &train,
            groups,
            exp.num_clients as usize,
            seeds::derive(exp.seed, Purpose::Partition, 0, 0),
        )
        .map_err(|source| SimError::Data {
            what: format!(
                "partitioning {} between {} clients (data.partition)",
                loaded.name, exp.num_clients
            ),
            source,
        })?;
    let trainer = MlpTrainer::new(
        &exp.model.hidden,
        train,
        test,
        exp.training.clone(),
        worker_threads(exp.threads),
    )?;
    Ok(Setup {
        trainer,
        partitions,
        source,
    })
}
