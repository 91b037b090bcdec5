//! The UCI optical handwritten digits (1,797 examples of 8×8 pixels in `0..=16`, 10 classes):
//! [`load_digits`] from a directory and [`embedded_digits`] from the copy compiled into this
//! crate, so the quickstart runs on a fresh checkout without any download.
//!
//! Format of `digits.csv.gz`: no header; each line holds 64 integer pixel values then the label.
//! Features are scaled to `[0, 1]` by dividing by 16.
//!
//! Split: every fifth example (index `i` with `i % 5 == 4`) is test, the rest train, giving
//! 1,438 train and 359 test examples. The rule needs no random generator, so it cannot change
//! with a library upgrade, and because the file cycles through the classes it is close to
//! stratified.

use std::path::Path;

use crate::compression;
use crate::dataset::{Dataset, Split};
use crate::error::DataError;

/// Pixels per digits image (8×8).
pub const DIGITS_FEATURES: usize = 64;
/// The largest pixel value in the digits data.
pub const DIGITS_MAX_VALUE: u32 = 16;
/// Classes in the digits data.
pub const DIGITS_CLASSES: u32 = 10;
/// Number of examples in the digits data.
pub const DIGITS_EXAMPLES: usize = 1797;

/// The digits CSV (gzip), compiled in. Attribution and checksum: `assets/digits/README.md`.
static EMBEDDED_DIGITS: &[u8] = include_bytes!("../../assets/digits/digits.csv.gz");

/// Refuse decompressed CSV text above this size (the real file is about 200 KB).
const MAX_CSV_BYTES: u64 = 64 << 20;

/// Parses digits CSV text (already decompressed); `path` is only used in errors.
pub fn parse_digits_csv(path: &Path, text: &[u8]) -> Result<Split, DataError> {
    let text = std::str::from_utf8(text)
        .map_err(|e| DataError::bad_content(path, format!("not UTF-8 text: {e}")))?;
    let mut train = (Vec::new(), Vec::new());
    let mut test = (Vec::new(), Vec::new());
    let mut row = 0usize;
    for (line_no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (features, labels) = if row % 5 == 4 { &mut test } else { &mut train };
        let mut columns = 0usize;
        for field in line.split(',') {
            let value: u32 = field.trim().parse().map_err(|_| {
                DataError::bad_content(
                    path,
                    format!(
                        "line {}: column {} is {field:?}, expected an integer",
                        line_no + 1,
                        columns + 1
                    ),
                )
            })?;
            if columns < DIGITS_FEATURES {
                if value > DIGITS_MAX_VALUE {
                    return Err(DataError::bad_content(
                        path,
                        format!(
                            "line {}: pixel {} is {value}, expected 0..={DIGITS_MAX_VALUE}",
                            line_no + 1,
                            columns + 1
                        ),
                    ));
                }
                features.push(value as f32 / DIGITS_MAX_VALUE as f32);
            } else if columns == DIGITS_FEATURES {
                if value >= DIGITS_CLASSES {
                    return Err(DataError::LabelOutOfRange {
                        path: path.to_path_buf(),
                        index: row as u64,
                        label: u64::from(value),
                        num_classes: DIGITS_CLASSES,
                    });
                }
                labels.push(value);
            }
            columns += 1;
        }
        if columns != DIGITS_FEATURES + 1 {
            return Err(DataError::bad_content(
                path,
                format!(
                    "line {}: {columns} columns, expected {} (64 pixels and a label)",
                    line_no + 1,
                    DIGITS_FEATURES + 1
                ),
            ));
        }
        row += 1;
    }
    if row == 0 {
        return Err(DataError::bad_content(path, "no examples"));
    }
    let shape = vec![1, 8, 8];
    Ok(Split {
        train: Dataset::from_dense(train.0, train.1, shape.clone(), DIGITS_CLASSES)?,
        test: Dataset::from_dense(test.0, test.1, shape, DIGITS_CLASSES)?,
    })
}

/// Loads `dir/digits.csv.gz` (or `dir/digits.csv`), gzip detected from the content.
pub fn load_digits(dir: &Path) -> Result<Split, DataError> {
    let gz = dir.join("digits.csv.gz");
    let path = if gz.is_file() {
        gz
    } else {
        dir.join("digits.csv")
    };
    let text = compression::read_all(&path, MAX_CSV_BYTES)?;
    parse_digits_csv(&path, &text)
}

/// Loads the digits data compiled into this crate (no file system access).
pub fn embedded_digits() -> Result<Split, DataError> {
    let name = Path::new("<embedded assets/digits/digits.csv.gz>");
    let text = compression::decode_bytes(name, EMBEDDED_DIGITS, MAX_CSV_BYTES)?;
    parse_digits_csv(name, &text)
}
