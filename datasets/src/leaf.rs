//! LEAF JSON (FEMNIST): [`load_femnist`], keeping each example's writer for the natural
//! partition.
//!
//! A LEAF file is `{"users": [...], "num_samples": [...], "user_data": {user: {"x": [[...]],
//! "y": [...]}}}`, usually gzip-compressed; a split is a directory of such files (`train/`,
//! `test/`). Files are read in file-name order and users in the order of each file's `"users"`
//! list, so the example order is deterministic. Rows are parsed straight into one flat buffer
//! per user (no `Vec` per image), and every count the file states is checked against what it
//! holds.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};

use crate::compression;
use crate::dataset::{Dataset, Split};
use crate::error::DataError;

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

/// One user's rows, flattened while parsing.
struct FlatRows {
    values: Vec<f32>,
    rows: usize,
}

impl<'de> Deserialize<'de> for FlatRows {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RowsVisitor;
        impl<'de> Visitor<'de> for RowsVisitor {
            type Value = FlatRows;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a list of rows of {FEMNIST_FEATURES} numbers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FlatRows, A::Error> {
                let mut out = FlatRows {
                    values: Vec::with_capacity(seq.size_hint().unwrap_or(0) * FEMNIST_FEATURES),
                    rows: 0,
                };
                while seq.next_element_seed(RowSeed(&mut out.values))?.is_some() {
                    out.rows += 1;
                }
                Ok(out)
            }
        }
        deserializer.deserialize_seq(RowsVisitor)
    }
}

/// Appends one row to a shared buffer, checking its width.
struct RowSeed<'a>(&'a mut Vec<f32>);

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a row of {FEMNIST_FEATURES} numbers in [0, 1]")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut n = 0usize;
        while let Some(v) = seq.next_element::<f32>()? {
            if n == FEMNIST_FEATURES {
                return Err(de::Error::invalid_length(n + 1, &self));
            }
            if !(0.0..=1.0).contains(&v) {
                return Err(de::Error::invalid_value(
                    de::Unexpected::Float(f64::from(v)),
                    &self,
                ));
            }
            self.0.push(v);
            n += 1;
        }
        if n != FEMNIST_FEATURES {
            return Err(de::Error::invalid_length(n, &self));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct UserData {
    x: FlatRows,
    y: Vec<u32>,
}

#[derive(Deserialize)]
struct LeafFile {
    users: Vec<String>,
    num_samples: Vec<u64>,
    user_data: HashMap<String, UserData>,
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
    let file: LeafFile = serde_json::from_slice(&bytes).map_err(|source| DataError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    if file.users.len() != file.num_samples.len() {
        return Err(DataError::bad_content(
            path,
            format!(
                "{} users but {} num_samples entries",
                file.users.len(),
                file.num_samples.len()
            ),
        ));
    }
    if file.user_data.len() != file.users.len() {
        return Err(DataError::bad_content(
            path,
            format!(
                "{} users listed but user_data holds {}",
                file.users.len(),
                file.user_data.len()
            ),
        ));
    }
    let mut user_data = file.user_data;
    for (user, &expected) in file.users.iter().zip(&file.num_samples) {
        let data = user_data.remove(user).ok_or_else(|| {
            DataError::bad_content(
                path,
                format!("user {user:?} is listed (or listed twice) but has no user_data entry"),
            )
        })?;
        if data.x.rows as u64 != expected || data.y.len() as u64 != expected {
            return Err(DataError::bad_content(
                path,
                format!(
                    "user {user:?}: num_samples says {expected} but x has {} rows and y {} labels",
                    data.x.rows,
                    data.y.len()
                ),
            ));
        }
        if let Some(&label) = data.y.iter().find(|&&l| l >= FEMNIST_CLASSES) {
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
        part.features.extend_from_slice(&data.x.values);
        part.labels.extend_from_slice(&data.y);
        part.writers
            .extend(std::iter::repeat_n(id, data.y.len()));
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
