//! Turning an experiment's `[data]` and `[model]` sections into a dataset, a partition and a
//! trainer.

use std::path::PathBuf;
use std::sync::Arc;

use cohort_datasets::{DatasetName, LoadedDataset, datasets_dir, embedded_digits};

use cohort_datasets::Dataset;

use crate::config::{ConfigError, DataShape, Experiment, ModelConfig, TrainerKind};
use crate::error::SimError;
use crate::mlp::MlpTrainer;
use crate::parallel::worker_threads;
use crate::seeds::{self, Purpose};
use crate::trainer::LocalTrainer;

/// A loaded experiment: the trainer (which owns the data) and the partition.
pub struct Setup {
    /// The trainer over the dataset's train and test parts: burn through `cohort-learning`
    /// (the default, with the `learning` feature), or the built-in MLP with
    /// `run.trainer = "builtin"`.
    pub trainer: Box<dyn LocalTrainer>,
    /// Per client, the indices of its training examples.
    pub partitions: Vec<Vec<usize>>,
    /// Where the data came from, for the summary.
    pub source: String,
    /// The accuracy of always predicting the test set's most common class.
    pub majority_baseline: f32,
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

/// An experiment's data, split as every mode uses it: the training set, the test set (capped at
/// `data.test_examples`), and each client's example indices.
pub struct ExperimentData {
    /// The training examples of every client.
    pub train: Dataset,
    /// The test examples the global model is evaluated on.
    pub test: Dataset,
    /// Per client, the indices of its training examples.
    pub partitions: Vec<Vec<usize>>,
    /// Where the data came from, for the summary.
    pub source: String,
}

/// Loads the experiment's dataset, caps its test set and partitions it between the clients,
/// with the experiment's seed streams (so `run` and `live` give clients the same examples).
pub fn load_data(exp: &Experiment) -> Result<ExperimentData, SimError> {
    let (loaded, source) = load_dataset(exp)?;
    let mut train = loaded.split.train;
    let repeat = exp.data.repeat.unwrap_or(1) as usize;
    if repeat > 1 {
        let tiled: Vec<usize> = (0..repeat).flat_map(|_| 0..train.len()).collect();
        train = train.subset(&tiled).map_err(|source| SimError::Data {
            what: format!("repeating the training set {repeat} times (data.repeat)"),
            source,
        })?;
    }
    let mut test = loaded.split.test;
    if let Some(cap) = exp.data.test_examples.map(|c| c as usize)
        && test.len() > cap
    {
        let mut rng = seeds::rng(exp.run.seed, Purpose::TestSubset, 0, 0);
        let mut picked = rand::seq::index::sample(&mut rng, test.len(), cap).into_vec();
        picked.sort_unstable();
        test = test.subset(&picked).map_err(|source| SimError::Data {
            what: format!("taking {cap} test examples (data.test_examples)"),
            source,
        })?;
    }
    let groups: Option<Vec<u32>> = loaded
        .groups
        .as_ref()
        .map(|g| (0..repeat).flat_map(|_| g.train.iter().copied()).collect());
    let groups = groups.as_deref();
    let partitions = exp
        .data
        .partition
        .partition(
            &train,
            groups,
            exp.population.num_clients as usize,
            seeds::derive(exp.run.seed, Purpose::Partition, 0, 0),
        )
        .map_err(|source| SimError::Data {
            what: format!(
                "partitioning {} between {} clients (data.partition)",
                loaded.name, exp.population.num_clients
            ),
            source,
        })?;
    Ok(ExperimentData {
        train,
        test,
        partitions,
        source,
    })
}

/// Loads the data, partitions it and builds the trainer.
pub fn build(exp: &Experiment) -> Result<Setup, SimError> {
    let ExperimentData {
        train,
        test,
        partitions,
        source,
    } = load_data(exp)?;
    let majority_baseline = majority_share(test.labels());
    let trainer = build_trainer(exp, Arc::new(train), Arc::new(test))?;
    Ok(Setup {
        trainer,
        partitions,
        source,
        majority_baseline,
    })
}

/// The share of the most common label (0 for no labels).
fn majority_share(labels: &[u32]) -> f32 {
    let mut counts = std::collections::HashMap::<u32, usize>::new();
    for &l in labels {
        *counts.entry(l).or_default() += 1;
    }
    let top = counts.values().copied().max().unwrap_or(0);
    top as f32 / labels.len().max(1) as f32
}

/// Builds the trainer the experiment asks for (`run.trainer`, `[model]`, `run.backend`) over
/// `train` and `test`; the model is resolved against the dataset, which checks its input and
/// classes.
pub fn build_trainer(
    exp: &Experiment,
    train: Arc<Dataset>,
    test: Arc<Dataset>,
) -> Result<Box<dyn LocalTrainer>, SimError> {
    let spec = exp.model_spec(DataShape {
        features: u32::try_from(train.feature_len()).unwrap_or(u32::MAX),
        classes: train.num_classes(),
    })?;
    let threads = worker_threads(exp.run.threads);
    match exp.run.trainer {
        TrainerKind::Synthetic => {
            let n = exp.run.synthetic_parameters.unwrap_or(0);
            let n = usize::try_from(n).map_err(|_| ConfigError::Invalid {
                key: "run.synthetic_parameters".into(),
                value: n.to_string(),
                allowed: "a size this machine can address".into(),
            })?;
            Ok(Box::new(crate::synthetic::SyntheticTrainer::new(n)))
        }
        TrainerKind::Builtin => {
            let hidden = ModelConfig::mlp_hidden(&spec).ok_or_else(|| ConfigError::Invalid {
                key: "run.trainer".into(),
                value: "builtin".into(),
                allowed: "\"burn\" (the default trainer) for models other than ReLU MLPs over flat inputs".into(),
            })?;
            Ok(Box::new(MlpTrainer::new(
                &hidden,
                train,
                test,
                exp.task.training.clone(),
                threads,
            )?))
        }
        #[cfg(feature = "learning")]
        TrainerKind::Burn => Ok(Box::new(crate::burn_trainer::BurnTrainer::new(
            &spec,
            exp.run.backend.into(),
            train,
            test,
            exp.task.training.params(),
            threads,
            exp.run.group_size as usize,
        )?)),
        #[cfg(not(feature = "learning"))]
        TrainerKind::Burn => Err(ConfigError::Invalid {
            key: "run.trainer".into(),
            value: "burn (the default)".into(),
            allowed: "\"builtin\" in this build, which has no burn (`--no-default-features`): set `trainer = \"builtin\"` in [run] or pass `--trainer builtin`, or rebuild with default features to train with burn".into(),
        }
        .into()),
    }
}
