//! Datasets for Cohort: loaders for the datasets federated-learning research uses, and
//! partitioners that divide them between simulated clients.
//!
//! This crate has no tensor library in it (no burn), so the simulator, the coordinator and the
//! tests can use real data without compiling one; `cohort-learning` turns a [`Dataset`] into
//! tensors. It does file I/O and nothing else: no network, no global state.
//!
//! Entry points:
//! * [`load`] with a [`DatasetName`] and the dataset's folder gives a [`LoadedDataset`]: the
//!   train/test [`Split`] and, for FEMNIST and Shakespeare, the natural [`Groups`].
//! * [`embedded_digits`] loads the small digits set compiled into the crate, so a quickstart
//!   runs without any download.
//! * [`PartitionSpec::partition`] divides a dataset into per-client index lists.
//! * [`datasets_dir`] finds the shared datasets folder for tests and benchmarks.
//!
//! Loaders refuse corrupt files with a [`DataError`] that names the file and the problem, and
//! check every size a header claims before allocating for it.
//!
//! | dataset | shape | classes | groups |
//! |---|---|---|---|
//! | digits | `[1, 8, 8]` in `[0, 1]` | 10 | none |
//! | MNIST, Fashion-MNIST | `[1, 28, 28]` in `[0, 1]` | 10 | none |
//! | FEMNIST | `[1, 28, 28]` in `[0, 1]` | 62 | writer |
//! | Shakespeare | `[80]` character ids | 96 (vocabulary) | (play, role) |

mod compression;
pub mod dataset;
pub mod digits;
pub mod error;
pub mod idx;
pub mod leaf;
mod leaf_json;
pub mod locate;
pub mod partition;
pub mod registry;
pub mod shakespeare;

pub use dataset::{Dataset, Example, Features, Row, Split, TokenWindows};
pub use digits::{embedded_digits, load_digits};
pub use error::DataError;
pub use idx::{load_fashion_mnist, load_mnist};
pub use leaf::{Femnist, load_femnist};
pub use locate::{DATASETS_ENV, REQUIRE_DATASETS_ENV, datasets_dir, datasets_dir_for_test};
pub use partition::PartitionSpec;
pub use registry::{DatasetName, Groups, LoadedDataset, load};
pub use shakespeare::{Shakespeare, load_shakespeare};
