//! Global-model checkpoints: weight vectors stored as files named by their content hash, and the
//! server optimizer's state (momentum, moments) beside them.
//!
//! A file `<sha256 hex>.f32le` holds the little-endian bytes of a flat weight vector, and its
//! name is the SHA-256 of those bytes (the same [`ContentHash`] the protocol uses for weights).
//! Writing goes to a temporary file, is synced and renamed, so a crash never leaves a partial
//! checkpoint under a valid name; reading verifies the hash, so a corrupted file is reported, not
//! served. Temporary files a crash left behind are removed when the directory is opened.
//!
//! A strategy state is stored the same way, as `<sha256 hex>.state` in the format of
//! [`encode_strategy_state`]; the round log entry of a round names it in its parameters, so the
//! state is covered by the hash chain and is durable before the entry commits.

use std::fs;
use std::path::{Path, PathBuf};

use cohort_aggregation::strategy::StrategyState;
use cohort_protocol::{ContentHash, FloatVector};
use thiserror::Error;

use crate::atomic_file::{TEMP_MARKER, write_atomically};

/// Sub-directory of the state directory holding checkpoints.
pub const CHECKPOINT_DIR: &str = "checkpoints";
const EXTENSION: &str = "f32le";
const STATE_EXTENSION: &str = "state";
const STATE_MAGIC: &[u8] = b"cohort-strategy-state-v1\n";

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
    /// A strategy-state file does not parse.
    #[error(
        "strategy state {hash} is unreadable: {reason}; restore it from a backup of the state \
         directory"
    )]
    BadState {
        /// The file's hash.
        hash: ContentHash,
        /// What is wrong.
        reason: StateFormatError,
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
        // Half-written files of a process that died mid-write never carry a valid name; they
        // only take space.
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().contains(TEMP_MARKER) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
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
        self.store_once(self.path_of(&hash), &bytes)?;
        Ok(hash)
    }

    /// Writes `bytes` to `path` durably unless a file of that content-hash name already exists.
    fn store_once(&self, path: PathBuf, bytes: &[u8]) -> Result<(), CheckpointError> {
        if path.is_file() {
            return Ok(());
        }
        write_atomically(&path, bytes, false).map_err(|source| CheckpointError::Io {
            action: "writing",
            path,
            source,
        })
    }

    /// The file that holds (or would hold) the strategy state `hash`.
    pub fn state_path_of(&self, hash: &ContentHash) -> PathBuf {
        self.dir
            .join(format!("{}.{STATE_EXTENSION}", hash.to_hex()))
    }

    /// Stores a strategy state durably (temporary file, fsync, rename, directory fsync) and
    /// returns the hash of its encoding.
    pub fn put_strategy_state(
        &self,
        state: &StrategyState,
    ) -> Result<ContentHash, CheckpointError> {
        let bytes = encode_strategy_state(state);
        let hash = ContentHash::of(&bytes);
        self.store_once(self.state_path_of(&hash), &bytes)?;
        Ok(hash)
    }

    /// Loads the strategy state `hash`, verifying the file against its name.
    pub fn get_strategy_state(
        &self,
        hash: &ContentHash,
        max_bytes: u64,
    ) -> Result<StrategyState, CheckpointError> {
        let bytes = self.read_verified(&self.state_path_of(hash), hash, max_bytes)?;
        decode_strategy_state(&bytes).map_err(|reason| CheckpointError::BadState {
            hash: *hash,
            reason,
        })
    }

    /// Loads the checkpoint `hash`, refusing files over `max_bytes` before reading them and
    /// files whose contents do not hash to their name.
    pub fn get(&self, hash: &ContentHash, max_bytes: u64) -> Result<Vec<f32>, CheckpointError> {
        let bytes = self.read_verified(&self.path_of(hash), hash, max_bytes)?;
        // A whole number of f32s is implied by the hash matching what `put` wrote, but a file
        // copied in by hand may still be odd-sized.
        FloatVector::from_le_bytes(&bytes)
            .map(|v| v.0)
            .ok_or(CheckpointError::Corrupt {
                expected: *hash,
                actual: *hash,
            })
    }

    fn read_verified(
        &self,
        path: &Path,
        hash: &ContentHash,
        max_bytes: u64,
    ) -> Result<Vec<u8>, CheckpointError> {
        let path = path.to_path_buf();
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
        Ok(bytes)
    }
}

/// Why bytes are not a strategy state in [`encode_strategy_state`]'s format.
#[derive(Debug, Error)]
pub enum StateFormatError {
    /// The bytes do not begin with `cohort-strategy-state-v1\n`.
    #[error("it does not start with the strategy-state magic line")]
    NoMagic,
    /// The bytes end inside the header's length or the header.
    #[error("it ends inside the header ({needed} bytes needed, {remaining} remain)")]
    TruncatedHeader {
        /// Bytes the header (or its length) needs.
        needed: usize,
        /// Bytes left.
        remaining: usize,
    },
    /// The header is not the expected JSON.
    #[error("the header is not valid: {0}")]
    Header(#[source] serde_json::Error),
    /// A vector's values run past the end of the file.
    #[error("vector {name:?} of {len} values runs past the end")]
    TruncatedVector {
        /// The vector's name.
        name: String,
        /// Its length in values.
        len: usize,
    },
    /// Two vectors share a name.
    #[error("vector {0:?} appears twice")]
    DuplicateVector(String),
    /// Bytes follow the last vector.
    #[error("{0} bytes follow the last vector")]
    TrailingBytes(usize),
}

/// The file format of a strategy state: the magic line `cohort-strategy-state-v1\n`, a `u32`
/// big-endian length and that many bytes of JSON header
/// `{"strategy": name, "steps": n, "vectors": [[name, len], ...]}`, then the vectors' values as
/// little-endian `f32`s, in header order. Vectors are written in the state's (sorted) order, so
/// equal states encode to equal bytes.
pub fn encode_strategy_state(state: &StrategyState) -> Vec<u8> {
    let shapes: Vec<(&str, usize)> = state
        .vectors
        .iter()
        .map(|(k, v)| (k.as_str(), v.len()))
        .collect();
    let header = serde_json::json!({
        "strategy": state.strategy,
        "steps": state.steps,
        "vectors": shapes,
    })
    .to_string()
    .into_bytes();
    let values: usize = shapes.iter().map(|(_, n)| n).sum();
    let mut out = Vec::with_capacity(STATE_MAGIC.len() + 4 + header.len() + 4 * values);
    out.extend_from_slice(STATE_MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    for v in state.vectors.values() {
        for x in v {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

/// Parses [`encode_strategy_state`]'s format; says what is wrong otherwise.
pub fn decode_strategy_state(bytes: &[u8]) -> Result<StrategyState, StateFormatError> {
    #[derive(serde::Deserialize)]
    struct Header {
        strategy: String,
        steps: u64,
        vectors: Vec<(String, usize)>,
    }
    let rest = bytes
        .strip_prefix(STATE_MAGIC)
        .ok_or(StateFormatError::NoMagic)?;
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or(StateFormatError::TruncatedHeader {
            needed: 4,
            remaining: rest.len(),
        })?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(StateFormatError::TruncatedHeader {
            needed: len,
            remaining: rest.len(),
        });
    }
    let (header, mut body) = rest.split_at(len);
    let header: Header = serde_json::from_slice(header).map_err(StateFormatError::Header)?;
    let mut state = StrategyState {
        strategy: header.strategy,
        steps: header.steps,
        vectors: Default::default(),
    };
    for (name, n) in header.vectors {
        let bytes_needed = n
            .checked_mul(4)
            .filter(|b| *b <= body.len())
            .ok_or_else(|| StateFormatError::TruncatedVector {
                name: name.clone(),
                len: n,
            })?;
        let (values, tail) = body.split_at(bytes_needed);
        body = tail;
        let v = values
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if state.vectors.contains_key(&name) {
            return Err(StateFormatError::DuplicateVector(name));
        }
        state.vectors.insert(name, v);
    }
    if !body.is_empty() {
        return Err(StateFormatError::TrailingBytes(body.len()));
    }
    Ok(state)
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

    #[test]
    fn strategy_state_round_trips_bit_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let cps = Checkpoints::open(dir.path()).unwrap();
        let mut state = StrategyState {
            strategy: "fed_adam".into(),
            steps: 7,
            vectors: Default::default(),
        };
        state
            .vectors
            .insert("m".into(), vec![0.5, -0.0, f32::MIN_POSITIVE, 3.25]);
        state.vectors.insert("v".into(), vec![1e-9, 2.0, 0.0, 7.5]);
        let hash = cps.put_strategy_state(&state).unwrap();
        let back = cps.get_strategy_state(&hash, 1 << 20).unwrap();
        assert_eq!(back, state);
        assert_eq!(
            back.vectors["m"][1].to_bits(),
            (-0.0f32).to_bits(),
            "bit-exact"
        );
        assert_eq!(encode_strategy_state(&back), encode_strategy_state(&state));
        // An empty state (FedAvg, or before the first round) too.
        let empty = StrategyState {
            strategy: "fed_avg".into(),
            steps: 0,
            vectors: Default::default(),
        };
        let h = cps.put_strategy_state(&empty).unwrap();
        assert_eq!(cps.get_strategy_state(&h, 1 << 20).unwrap(), empty);
    }

    #[test]
    fn damaged_strategy_state_is_refused_with_a_reason() {
        let good = encode_strategy_state(&StrategyState {
            strategy: "fed_avg_m".into(),
            steps: 2,
            vectors: [("v".to_string(), vec![1.0f32, 2.0])].into_iter().collect(),
        });
        assert!(decode_strategy_state(&good).is_ok());
        assert!(matches!(
            decode_strategy_state(&good[..good.len() - 1]),
            Err(StateFormatError::TruncatedVector { ref name, len: 2 }) if name == "v"
        ));
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(
            decode_strategy_state(&longer),
            Err(StateFormatError::TrailingBytes(1))
        ));
        assert!(matches!(
            decode_strategy_state(b"garbage"),
            Err(StateFormatError::NoMagic)
        ));
        assert!(matches!(
            decode_strategy_state(&good[..STATE_MAGIC.len() + 2]),
            Err(StateFormatError::TruncatedHeader {
                needed: 4,
                remaining: 2
            })
        ));
        // Stored under a name its contents do not hash to: Corrupt.
        let dir = tempfile::tempdir().unwrap();
        let cps = Checkpoints::open(dir.path()).unwrap();
        let hash = ContentHash([1; 32]);
        fs::write(cps.state_path_of(&hash), &good).unwrap();
        assert!(matches!(
            cps.get_strategy_state(&hash, 1 << 20),
            Err(CheckpointError::Corrupt { .. })
        ));
    }

    #[test]
    fn leftover_temporary_files_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let cps = Checkpoints::open(dir.path()).unwrap();
        let hash = cps.put(&[1.0]).unwrap();
        let tmp = dir.path().join(CHECKPOINT_DIR).join("abc.f32le.tmp-99");
        fs::write(&tmp, b"half").unwrap();
        let cps = Checkpoints::open(dir.path()).unwrap();
        assert!(!tmp.exists());
        assert!(cps.contains(&hash));
    }
}
