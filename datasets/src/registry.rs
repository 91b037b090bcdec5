//! The dataset registry: [`DatasetName`] and [`load`], one entry point for every dataset so
//! that configuration files and command lines can name a dataset by a string.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::dataset::Split;
use crate::error::DataError;
use crate::{digits, idx, leaf, shakespeare};

/// The datasets this crate can load. Serialised (and parsed) in snake_case: `digits`, `mnist`,
/// `fashion_mnist`, `femnist`, `shakespeare`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetName {
    /// UCI optical handwritten digits, 8×8, 10 classes.
    Digits,
    /// MNIST, 28×28, 10 classes.
    Mnist,
    /// Fashion-MNIST, 28×28, 10 classes.
    FashionMnist,
    /// FEMNIST (LEAF), 28×28, 62 classes, grouped by writer.
    Femnist,
    /// Shakespeare next-character prediction, grouped by (play, role).
    Shakespeare,
}

impl DatasetName {
    /// Every dataset, in the order they are documented.
    pub const ALL: [DatasetName; 5] = [
        DatasetName::Digits,
        DatasetName::Mnist,
        DatasetName::FashionMnist,
        DatasetName::Femnist,
        DatasetName::Shakespeare,
    ];

    /// The snake_case name, as accepted by [`FromStr`] and serde.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::Digits => "digits",
            DatasetName::Mnist => "mnist",
            DatasetName::FashionMnist => "fashion_mnist",
            DatasetName::Femnist => "femnist",
            DatasetName::Shakespeare => "shakespeare",
        }
    }

    /// The folder of this dataset under the shared datasets directory (e.g. `fashion-mnist`).
    pub fn folder(self) -> &'static str {
        match self {
            DatasetName::Digits => "digits",
            DatasetName::Mnist => "mnist",
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Femnist => "femnist",
            DatasetName::Shakespeare => "shakespeare",
        }
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for DatasetName {
    type Err = DataError;

    /// Accepts the snake_case names; `-` is taken as `_` and case is ignored.
    fn from_str(s: &str) -> Result<Self, DataError> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        DatasetName::ALL
            .into_iter()
            .find(|n| n.as_str() == wanted)
            .ok_or_else(|| DataError::UnknownDataset {
                name: s.to_string(),
                allowed: DatasetName::ALL.map(DatasetName::as_str).join(", "),
            })
    }
}

/// Natural group ids (writer or role) of a dataset's examples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups {
    /// For each train example, its group's index in [`Self::names`].
    pub train: Vec<u32>,
    /// For each test example, its group's index in [`Self::names`].
    pub test: Vec<u32>,
    /// Group names: FEMNIST writer ids, or `play/ROLE` for Shakespeare.
    pub names: Vec<String>,
}

/// A dataset as [`load`] returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedDataset {
    /// Which dataset this is.
    pub name: DatasetName,
    /// Train and test examples.
    pub split: Split,
    /// Natural groups, for FEMNIST and Shakespeare; `None` for the others.
    pub groups: Option<Groups>,
}

/// Loads dataset `name` from `dir`, the dataset's own folder (e.g. `shared/datasets/mnist`, see
/// [`DatasetName::folder`]).
pub fn load(name: DatasetName, dir: &Path) -> Result<LoadedDataset, DataError> {
    let (split, groups) = match name {
        DatasetName::Digits => (digits::load_digits(dir)?, None),
        DatasetName::Mnist => (idx::load_mnist(dir)?, None),
        DatasetName::FashionMnist => (idx::load_fashion_mnist(dir)?, None),
        DatasetName::Femnist => {
            let f = leaf::load_femnist(dir)?;
            let groups = Groups {
                train: f.train_writers,
                test: f.test_writers,
                names: f.writers,
            };
            (f.split, Some(groups))
        }
        DatasetName::Shakespeare => {
            let s = shakespeare::load_shakespeare(dir)?;
            let groups = Groups {
                train: s.train_roles,
                test: s.test_roles,
                names: s
                    .roles
                    .iter()
                    .map(|r| format!("{}/{}", r.play, r.name))
                    .collect(),
            };
            (s.split, Some(groups))
        }
    };
    Ok(LoadedDataset {
        name,
        split,
        groups,
    })
}
