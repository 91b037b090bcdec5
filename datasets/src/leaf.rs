//! LEAF JSON (FEMNIST): [`load_femnist`], keeping each example's writer for the natural
//! partition.
//!
//! A LEAF file is `{"users": [...], "num_samples": [...], "user_data": {user: {"x": [[...]],
//! "y": [...]}}}`, usually gzip-compressed; a split is a directory of such files (`train/`,
//! `test/`). Files are read in file-name order and users in the order of each file's `"users"`
//! list, so the example order is deterministic. Rows are parsed straight into one flat buffer
//! per user (no `Vec` per image), and every count the file states is checked against what it
//! holds. Parsing is `serde_json`'s, streamed into the flat buffers (`leaf_json`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::compression;
use crate::dataset::{Dataset, Split};
use crate::error::DataError;
use crate::leaf_json::parse_leaf;

/// Pixels per FEMNIST image (28×28).
pub const FEMNIST_FEATURES: usize = 784;
/// FEMNIST classes: 10 digits, 26 upper-case and 26 lower-case letters.
pub const FEMNIST_CLASSES: u32 = 62;

/// Refuse a single decompressed JSON file above this size (real files are under 10 MB).
const MAX_JSON_BYTES: u64 = 1 << 30;

/// FEMNIST loaded from a directory: the split, and the writer of every example.
#[derive(Debug, Clone, PartialEq)]
pub struct Femnist {
    /// Train and test examples, shape `[1, 28, 28]`, values in `[0, 1]`, 62 classes.
    pub split: Split,
    /// For each train example, its writer's index in [`Self::writers`].
    pub train_writers: Vec<u32>,
    /// For each test example, its writer's index in [`Self::writers`].
    pub test_writers: Vec<u32>,
    /// Writer ids as LEAF names them (e.g. `f3313_11`), train writers first.
    pub writers: Vec<String>,
}

/// The `*.json` / `*.json.gz` files of `dir`, sorted by name.
fn json_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if (name.ends_with(".json") || name.ends_with(".json.gz")) && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(DataError::NoFiles {
            dir: dir.to_path_buf(),
            what: "LEAF `*.json` or `*.json.gz` files".to_string(),
        });
    }
    files.sort();
    Ok(files)
}

/// Examples of one LEAF directory, with writer indices into a shared name table.
struct LeafPart {
    features: Vec<f32>,
    labels: Vec<u32>,
    writers: Vec<u32>,
}

fn read_leaf_file(
    path: &Path,
    part: &mut LeafPart,
    writer_ids: &mut HashMap<String, u32>,
    writer_names: &mut Vec<String>,
) -> Result<(), DataError> {
    let bytes = compression::read_all(path, MAX_JSON_BYTES)?;
    let file = parse_leaf(&bytes).map_err(|e| DataError::Json {
        path: path.to_path_buf(),
        line: e.line,
        column: e.column,
        detail: e.detail,
    })?;
    let missing = |member: &str| {
        DataError::bad_content(
            path,
            format!("the top-level object has no {member:?} member"),
        )
    };
    let users = file.users.ok_or_else(|| missing("users"))?;
    let num_samples = file.num_samples.ok_or_else(|| missing("num_samples"))?;
    let user_data = file.user_data.ok_or_else(|| missing("user_data"))?;
    if users.len() != num_samples.len() {
        return Err(DataError::bad_content(
            path,
            format!(
                "{} users but {} num_samples entries",
                users.len(),
                num_samples.len()
            ),
        ));
    }
    if user_data.len() != users.len() {
        return Err(DataError::bad_content(
            path,
            format!(
                "{} users listed but user_data holds {}",
                users.len(),
                user_data.len()
            ),
        ));
    }
    let mut user_data = user_data;
    for (user, &expected) in users.iter().zip(&num_samples) {
        let data = user_data.remove(user).ok_or_else(|| {
            DataError::bad_content(
                path,
                format!("user {user:?} is listed (or listed twice) but has no user_data entry"),
            )
        })?;
        if data.rows as u64 != expected || data.labels.len() as u64 != expected {
            return Err(DataError::bad_content(
                path,
                format!(
                    "user {user:?}: num_samples says {expected} but x has {} rows and y {} labels",
                    data.rows,
                    data.labels.len()
                ),
            ));
        }
        if let Some(&label) = data
            .labels
            .iter()
            .find(|&&l| l >= u64::from(FEMNIST_CLASSES))
        {
            return Err(DataError::bad_content(
                path,
                format!("user {user:?}: label {label} is not below {FEMNIST_CLASSES}"),
            ));
        }
        let next_id = writer_names.len() as u32;
        let id = *writer_ids.entry(user.clone()).or_insert_with(|| {
            writer_names.push(user.clone());
            next_id
        });
        part.features.extend_from_slice(&data.features);
        // Labels were checked to be below 62 just above.
        part.labels.extend(data.labels.iter().map(|&l| l as u32));
        part.writers.extend(std::iter::repeat_n(id, data.rows));
    }
    Ok(())
}

fn read_leaf_dir(
    dir: &Path,
    writer_ids: &mut HashMap<String, u32>,
    writer_names: &mut Vec<String>,
) -> Result<LeafPart, DataError> {
    let mut part = LeafPart {
        features: Vec::new(),
        labels: Vec::new(),
        writers: Vec::new(),
    };
    for path in json_files(dir)? {
        read_leaf_file(&path, &mut part, writer_ids, writer_names)?;
    }
    Ok(part)
}

/// Loads FEMNIST from `dir/train` and `dir/test` (directories of LEAF JSON files, gzip or not).
pub fn load_femnist(dir: &Path) -> Result<Femnist, DataError> {
    let mut writer_ids = HashMap::new();
    let mut writers = Vec::new();
    let train = read_leaf_dir(&dir.join("train"), &mut writer_ids, &mut writers)?;
    let test = read_leaf_dir(&dir.join("test"), &mut writer_ids, &mut writers)?;
    let shape = vec![1, 28, 28];
    Ok(Femnist {
        split: Split {
            train: Dataset::from_dense(
                train.features,
                train.labels,
                shape.clone(),
                FEMNIST_CLASSES,
            )?,
            test: Dataset::from_dense(test.features, test.labels, shape, FEMNIST_CLASSES)?,
        },
        train_writers: train.writers,
        test_writers: test.writers,
        writers,
    })
}
