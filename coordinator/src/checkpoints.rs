//! Global-model checkpoints: weight vectors stored as files named by their content hash.
//!
//! A file `<sha256 hex>.f32le` holds the little-endian bytes of a flat weight vector, and its
//! name is the SHA-256 of those bytes (the same [`ContentHash`] the protocol uses for weights).
//! Writing goes to a temporary file, is synced and renamed, so a crash never leaves a partial
//! checkpoint under a valid name; reading verifies the hash, so a corrupted file is reported, not
//! served.

use std::fs;
use std::path::{Path, PathBuf};

use cohort_protocol::{ContentHash, FloatVector};
use thiserror::Error;

use crate::atomic_file::write_atomically;

/// Sub-directory of the state directory holding checkpoints.
pub const CHECKPOINT_DIR: &str = "checkpoints";
const EXTENSION: &str = "f32le";

/// Why a checkpoint could not be stored or loaded.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// The file system failed.
    #[error("{action} {}: {source}; check disk space and permissions of the state directory", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// No checkpoint has this hash.
    #[error("no checkpoint with hash {0}")]
    NotFound(ContentHash),
    /// The file's contents do not match its name.
    #[error(
        "checkpoint {expected} is corrupt: its contents hash to {actual}; restore it from a \
         backup or delete it"
    )]
    Corrupt {
        /// The hash the file is named after.
        expected: ContentHash,
        /// The hash of what it holds.
        actual: ContentHash,
    },
    /// The file is larger than the caller allows.
    #[error("checkpoint {hash} holds {len} bytes, over the limit of {max}")]
    TooLarge {
        /// The checkpoint.
        hash: ContentHash,
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
    },
}

/// The checkpoint directory.
#[derive(Clone, Debug)]
pub struct Checkpoints {
    dir: PathBuf,
}

impl Checkpoints {
    /// Opens (creating) `state_dir/checkpoints`.
    pub fn open(state_dir: &Path) -> Result<Self, CheckpointError> {
        let dir = state_dir.join(CHECKPOINT_DIR);
        fs::create_dir_all(&dir).map_err(|source| CheckpointError::Io {
            action: "creating",
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// The file that holds (or would hold) the checkpoint `hash`.
    pub fn path_of(&self, hash: &ContentHash) -> PathBuf {
        self.dir.join(format!("{}.{EXTENSION}", hash.to_hex()))
    }

    /// Whether a checkpoint with this hash is stored (its contents are not checked).
    pub fn contains(&self, hash: &ContentHash) -> bool {
        self.path_of(hash).is_file()
    }

    /// Stores `values` durably and returns their hash. Storing the same vector twice is a no-op.
    pub fn put(&self, values: &[f32]) -> Result<ContentHash, CheckpointError> {
        let bytes = FloatVector(values.to_vec()).to_le_bytes();
        let hash = ContentHash::of(&bytes);
        let path = self.path_of(&hash);
        if path.is_file() {
            return Ok(hash);
        }
        write_atomically(&path, &bytes, false).map_err(|source| CheckpointError::Io {
            action: "writing",
            path,
            source,
        })?;
        Ok(hash)
    }

    /// Loads the checkpoint `hash`, refusing files over `max_bytes` before reading them and
    /// files whose contents do not hash to their name.
    pub fn get(&self, hash: &ContentHash, max_bytes: u64) -> Result<Vec<f32>, CheckpointError> {
        let path = self.path_of(hash);
        let io = |action, source: std::io::Error| CheckpointError::Io {
            action,
            path: path.clone(),
            source,
        };
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CheckpointError::NotFound(*hash));
            }
            Err(e) => return Err(io("inspecting", e)),
        };
        if len > max_bytes {
            return Err(CheckpointError::TooLarge {
                hash: *hash,
                len,
                max: max_bytes,
            });
        }
        let bytes = fs::read(&path).map_err(|e| io("reading", e))?;
        let actual = ContentHash::of(&bytes);
        if actual != *hash {
            return Err(CheckpointError::Corrupt {
                expected: *hash,
                actual,
            });
        }
        // A whole number of f32s is implied by the hash matching what `put` wrote, but a file
        // copied in by hand may still be odd-sized.
        FloatVector::from_le_bytes(&bytes)
            .map(|v| v.0)
            .ok_or(CheckpointError::Corrupt {
                expected: *hash,
                actual,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_round_trip_and_name_is_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let cps = Checkpoints::open(dir.path()).unwrap();
        let values: Vec<f32> = (0..1000).map(|i| i as f32 / 7.0).collect();
        let hash = cps.put(&values).unwrap();
        assert_eq!(
            hash,
            ContentHash::of(&FloatVector(values.clone()).to_le_bytes())
        );
        assert!(cps.contains(&hash));
        assert_eq!(cps.get(&hash, 1 << 20).unwrap(), values);
        assert_eq!(cps.put(&values).unwrap(), hash);
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join(CHECKPOINT_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn corrupt_missing_and_oversized_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cps = Checkpoints::open(dir.path()).unwrap();
        let hash = cps.put(&[1.0, 2.0, 3.0]).unwrap();
        assert!(matches!(
            cps.get(&hash, 11),
            Err(CheckpointError::TooLarge { len: 12, .. })
        ));
        let mut bytes = fs::read(cps.path_of(&hash)).unwrap();
        bytes[0] ^= 1;
        fs::write(cps.path_of(&hash), &bytes).unwrap();
        assert!(matches!(
            cps.get(&hash, 1 << 20),
            Err(CheckpointError::Corrupt { .. })
        ));
        assert!(matches!(
            cps.get(&ContentHash([5; 32]), 1 << 20),
            Err(CheckpointError::NotFound(_))
        ));
    }
}
