//! Turning an experiment's `[data]` and `[model]` sections into a dataset, a partition and a
//! trainer.

use std::path::PathBuf;
use std::sync::Arc;

use cohort_datasets::{DatasetName, LoadedDataset, datasets_dir, embedded_digits};

use cohort_datasets::Dataset;

use crate::config::{ConfigError, Experiment, ModelConfig, TrainerKind};
use crate::error::SimError;
use crate::mlp::MlpTrainer;
use crate::parallel::worker_threads;
use crate::seeds::{self, Purpose};
use crate::trainer::LocalTrainer;

/// A loaded experiment: the trainer (which owns the data) and the partition.
pub struct Setup {
    /// The trainer over the dataset's train and test parts: the built-in MLP, or burn when
    /// the experiment says `trainer = "burn"` (and the `learning` feature is on).
    pub trainer: Box<dyn LocalTrainer>,
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
    let trainer = build_trainer(exp, train, test)?;
    Ok(Setup {
        trainer,
        partitions,
        source,
    })
}

/// Builds the trainer the experiment asks for (`trainer`, `[model]`, `backend`) over `train`
/// and `test`, after checking the model's input and classes against the dataset.
pub fn build_trainer(
    exp: &Experiment,
    train: Arc<Dataset>,
    test: Arc<Dataset>,
) -> Result<Box<dyn LocalTrainer>, SimError> {
    let spec = exp.model.spec(train.feature_len(), train.num_classes());
    let model_key = if exp.model.spec.is_some() {
        "model.spec"
    } else {
        "model.preset"
    };
    let input_len: u64 = spec.input_shape.iter().map(|&d| u64::from(d)).product();
    if input_len != train.feature_len() as u64 {
        return Err(ConfigError::Invalid {
            key: model_key,
            value: format!("input_shape {:?}", spec.input_shape),
            allowed: format!(
                "a model whose input has {} values, like the dataset's examples",
                train.feature_len()
            ),
        }
        .into());
    }
    if spec.num_classes < train.num_classes() {
        return Err(ConfigError::Invalid {
            key: model_key,
            value: format!("num_classes {}", spec.num_classes),
            allowed: format!("at least the dataset's {} classes", train.num_classes()),
        }
        .into());
    }
    let threads = worker_threads(exp.threads);
    match exp.trainer {
        TrainerKind::Builtin => {
            let hidden = ModelConfig::mlp_hidden(&spec).ok_or_else(|| ConfigError::Invalid {
                key: "trainer",
                value: "builtin".into(),
                allowed: "\"burn\" for models other than ReLU MLPs over flat inputs (build cohort-sim with `--features learning`)".into(),
            })?;
            Ok(Box::new(MlpTrainer::new(
                &hidden,
                train,
                test,
                exp.training.clone(),
                threads,
            )?))
        }
        #[cfg(feature = "learning")]
        TrainerKind::Burn => Ok(Box::new(crate::burn_trainer::BurnTrainer::new(
            &spec,
            exp.backend.into(),
            train,
            test,
            exp.training.params(),
            threads,
        )?)),
        #[cfg(not(feature = "learning"))]
        TrainerKind::Burn => Err(ConfigError::Invalid {
            key: "trainer",
            value: "burn".into(),
            allowed: "\"builtin\" in this build; rebuild with `cargo run -p cohort-sim --features learning` to train with burn".into(),
        }
        .into()),
    }
}
