//! The one error type of this crate, [`DataError`].
//!
//! Loaders refuse a corrupt or unexpected file rather than guess, so every variant that comes
//! from a file names that file and says what was wrong with it; partitioner variants say which
//! argument cannot be satisfied. Each message ends with what to do about it.

use std::path::PathBuf;

/// Everything that can go wrong while loading or partitioning a dataset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file or directory could not be opened or read.
    #[error(
        "cannot read {path}: {source}; check that the dataset directory is complete and readable"
    )]
    Io {
        /// The file or directory that failed.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A directory that should hold dataset files holds none of the expected kind.
    #[error(
        "no {what} found in {dir}; point the loader at the dataset's folder (see shared/datasets/README.md)"
    )]
    NoFiles {
        /// The directory that was searched.
        dir: PathBuf,
        /// What was looked for, e.g. "`*.json.gz` files".
        what: String,
    },

    /// A file does not start with the magic number its format requires.
    #[error(
        "{path}: wrong magic number {found:#010x}, expected {expected:#010x}; the file is not {format} (or is corrupt)"
    )]
    BadMagic {
        /// The offending file.
        path: PathBuf,
        /// The format that was expected, e.g. "an IDX image file".
        format: &'static str,
        /// The magic number the format requires.
        expected: u32,
        /// The magic number the file holds.
        found: u32,
    },

    /// A file ends before the size its header promises.
    #[error(
        "{path}: truncated: the header promises {expected} bytes but the file holds {actual}; download it again"
    )]
    Truncated {
        /// The offending file.
        path: PathBuf,
        /// Bytes promised by the header (header included).
        expected: u64,
        /// Bytes actually present (after decompression).
        actual: u64,
    },

    /// A file holds more bytes than its header promises.
    #[error(
        "{path}: {extra} unexpected bytes after the {expected} bytes the header promises; the file is corrupt or not this format"
    )]
    TrailingBytes {
        /// The offending file.
        path: PathBuf,
        /// Bytes promised by the header (header included).
        expected: u64,
        /// How many further bytes were found (at least one; counting stops early).
        extra: u64,
    },

    /// A header claims dimensions that are impossible or absurd for this dataset.
    #[error("{path}: bad dimensions: {detail}; the file is corrupt or not this dataset")]
    BadDimensions {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with the dimensions.
        detail: String,
    },

    /// A file (after decompression) is larger than this loader will read.
    #[error(
        "{path}: holds more than {limit} bytes (claimed or decompressed); refusing to load it, the file is corrupt or not this dataset"
    )]
    TooLarge {
        /// The offending file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },

    /// An image file and its label file disagree on the number of examples.
    #[error(
        "{images} holds {image_count} images but {labels} holds {label_count} labels; use files from the same release"
    )]
    CountMismatch {
        /// The image file.
        images: PathBuf,
        /// Its number of images.
        image_count: u64,
        /// The label file.
        labels: PathBuf,
        /// Its number of labels.
        label_count: u64,
    },

    /// A label is not below the dataset's number of classes.
    #[error(
        "{path}: example {index} has label {label} but the dataset has {num_classes} classes; the file is corrupt or not this dataset"
    )]
    LabelOutOfRange {
        /// The offending file.
        path: PathBuf,
        /// The example's position within the file.
        index: u64,
        /// The label found.
        label: u64,
        /// The number of classes expected.
        num_classes: u32,
    },

    /// A JSON file is not valid JSON, or does not have the expected shape.
    #[error(
        "{path}: invalid JSON at line {line} column {column}: {detail}; the file is corrupt or not LEAF JSON"
    )]
    Json {
        /// The offending file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column (bytes) of the problem.
        column: usize,
        /// What was expected or found.
        detail: String,
    },

    /// A file parsed but its content breaks the format's rules (counts disagree, a value is out
    /// of range, a row has the wrong width).
    #[error("{path}: {detail}; the file is corrupt or not this dataset")]
    BadContent {
        /// The offending file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },

    /// A dataset's rows or labels disagree in length when building a [`crate::Dataset`].
    #[error("inconsistent dataset: {detail}; this is a bug in the caller that built it")]
    Inconsistent {
        /// What disagrees.
        detail: String,
    },

    /// An example index is not below the dataset's length.
    #[error(
        "example index {index} is out of range for a dataset of {len} examples; the partition does not belong to this dataset"
    )]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// The dataset's length.
        len: usize,
    },

    /// A partition was asked for with arguments it cannot satisfy.
    #[error("cannot partition: {detail}")]
    Partition {
        /// What cannot be satisfied and what to change.
        detail: String,
    },

    /// A dataset name is not one this crate knows.
    #[error("unknown dataset {name:?}; expected one of: {allowed}")]
    UnknownDataset {
        /// The name given.
        name: String,
        /// The names accepted, comma-separated.
        allowed: String,
    },
}

impl DataError {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`DataError::BadContent`] for `path`.
    pub(crate) fn bad_content(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        DataError::BadContent {
            path: path.into(),
            detail: detail.into(),
        }
    }

    /// A [`DataError::Partition`] with `detail`.
    pub(crate) fn partition(detail: impl Into<String>) -> Self {
        DataError::Partition {
            detail: detail.into(),
        }
    }
}
