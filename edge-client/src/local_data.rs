//! The device's own files as training examples, read the way the task's `[input]` declares
//! ([`InputSpec`]): an image folder (one sub-folder per label, PNG or JPEG, converted to the
//! model's channels and resized to its `[c, h, w]`), a CSV with named feature and label
//! columns, or plain text files (character windows of the model's input length, the next
//! character as the label). Every raw value is normalised (`raw × scale + offset`).
//!
//! Data that does not fit the task is refused with a [`LocalDataError`] that names the file
//! and the mismatch, before anything is trained or sent.

use std::path::{Path, PathBuf};

use cohort_datasets::Dataset;
use cohort_protocol::{InputKind, InputSpec, ModelSpec};
use thiserror::Error;

/// The most examples read from local files (a size limit before allocating).
pub const MAX_LOCAL_EXAMPLES: usize = 1_000_000;
/// The largest image file decoded, in bytes.
pub const MAX_IMAGE_BYTES: u64 = 64 << 20;
/// The largest CSV or text file read, in bytes.
pub const MAX_TEXT_BYTES: u64 = 512 << 20;

/// Why local files cannot be trained on. Each names the file (or folder) and the mismatch.
#[derive(Debug, Error)]
pub enum LocalDataError {
    /// The task declares no `[input]`, so the device cannot read files for it.
    #[error(
        "the task declares no [input] section, so {path} cannot be read for it; ask the model \
         owner to declare the task's input, or run without --data"
    )]
    NoInputSpec {
        /// The data path.
        path: PathBuf,
    },
    /// A file or folder does not fit the task.
    #[error("{}: {problem}", path.display())]
    Mismatch {
        /// The file or folder.
        path: PathBuf,
        /// What does not fit, and what was expected.
        problem: String,
    },
    /// A file could not be read.
    #[error("{}: {source}; check that it exists and is readable", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Nothing to train on.
    #[error("{}: no examples found ({what})", path.display())]
    NoExamples {
        /// The data path.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
    },
}

fn mismatch(path: &Path, problem: impl Into<String>) -> LocalDataError {
    LocalDataError::Mismatch {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LocalDataError + '_ {
    move |source| LocalDataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads `path` as the examples of a task with `model` and `input`.
pub fn load(
    path: &Path,
    model: &ModelSpec,
    input: Option<&InputSpec>,
) -> Result<Dataset, LocalDataError> {
    let input = input.ok_or_else(|| LocalDataError::NoInputSpec {
        path: path.to_path_buf(),
    })?;
    let shape: Vec<usize> = model.input_shape.iter().map(|&d| d as usize).collect();
    let data = match input.kind {
        InputKind::Image => load_images(path, &shape, model.num_classes, input)?,
        InputKind::Csv => load_csv(path, &shape, model.num_classes, input)?,
        InputKind::Text => load_text(path, &shape, model.num_classes, input)?,
    };
    Ok(data)
}

/// The entries of `dir`, sorted, without hidden ones.
fn entries(dir: &Path) -> Result<Vec<PathBuf>, LocalDataError> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.path()).map_err(io(dir)))
        .collect::<Result<_, _>>()?;
    out.retain(|p| {
        !p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
    });
    out.sort();
    Ok(out)
}

fn load_images(
    dir: &Path,
    shape: &[usize],
    classes: u32,
    input: &InputSpec,
) -> Result<Dataset, LocalDataError> {
    let &[c, h, w] = shape else {
        return Err(mismatch(
            dir,
            format!("the task's model reads {shape:?}, not images [channels, height, width]"),
        ));
    };
    if !dir.is_dir() {
        return Err(mismatch(
            dir,
            "not a folder; an image task reads a folder with one sub-folder per label",
        ));
    }
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for sub in entries(dir)? {
        if !sub.is_dir() {
            return Err(mismatch(
                &sub,
                "a file where a label's sub-folder was expected (one sub-folder per label)",
            ));
        }
        let name = sub.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let Some(label) = input.labels.iter().position(|l| l == name) else {
            return Err(mismatch(
                &sub,
                format!(
                    "\"{name}\" is not one of the task's labels {:?}",
                    input.labels
                ),
            ));
        };
        for file in entries(&sub)? {
            if labels.len() >= MAX_LOCAL_EXAMPLES {
                return Err(mismatch(
                    dir,
                    format!("more than {MAX_LOCAL_EXAMPLES} images; train on a sample"),
                ));
            }
            let ext = file
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            if !matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg")) {
                return Err(mismatch(
                    &file,
                    "not a PNG or JPEG file (.png, .jpg, .jpeg)",
                ));
            }
            let size = std::fs::metadata(&file).map_err(io(&file))?.len();
            if size > MAX_IMAGE_BYTES {
                return Err(mismatch(
                    &file,
                    format!("{size} bytes; images above {MAX_IMAGE_BYTES} bytes are refused"),
                ));
            }
            let img = image::ImageReader::open(&file)
                .map_err(io(&file))?
                .with_guessed_format()
                .map_err(io(&file))?
                .decode()
                .map_err(|e| mismatch(&file, format!("cannot decode the image: {e}")))?;
            let resize = |img: image::DynamicImage| {
                if img.width() as usize == w && img.height() as usize == h {
                    img
                } else {
                    img.resize_exact(w as u32, h as u32, image::imageops::FilterType::Triangle)
                }
            };
            let img = resize(img);
            match c {
                1 => features.extend(
                    img.to_luma8()
                        .into_raw()
                        .into_iter()
                        .map(|v| input.normalise(f32::from(v))),
                ),
                3 => {
                    let rgb = img.to_rgb8().into_raw();
                    // Channels first: the model reads [3, h, w].
                    for ch in 0..3 {
                        features.extend(
                            rgb.iter()
                                .skip(ch)
                                .step_by(3)
                                .map(|&v| input.normalise(f32::from(v))),
                        );
                    }
                }
                _ => {
                    return Err(mismatch(
                        dir,
                        format!("the task's model reads {c} channels; images have 1 or 3"),
                    ));
                }
            }
            labels.push(label as u32);
        }
    }
    if labels.is_empty() {
        return Err(LocalDataError::NoExamples {
            path: dir.to_path_buf(),
            what: "PNG or JPEG files in one sub-folder per label",
        });
    }
    finish(dir, features, labels, shape, classes)
}

fn finish(
    path: &Path,
    features: Vec<f32>,
    labels: Vec<u32>,
    shape: &[usize],
    classes: u32,
) -> Result<Dataset, LocalDataError> {
    if let Some(v) = features.iter().find(|v| !v.is_finite()) {
        return Err(mismatch(
            path,
            format!("a value normalises to {v}; check the task's scale and offset"),
        ));
    }
    Dataset::from_dense(features, labels, shape.to_vec(), classes)
        .map_err(|e| mismatch(path, e.to_string()))
}

fn read_limited(path: &Path) -> Result<String, LocalDataError> {
    let size = std::fs::metadata(path).map_err(io(path))?.len();
    if size > MAX_TEXT_BYTES {
        return Err(mismatch(
            path,
            format!("{size} bytes; files above {MAX_TEXT_BYTES} bytes are refused"),
        ));
    }
    std::fs::read_to_string(path).map_err(io(path))
}

fn load_csv(
    file: &Path,
    shape: &[usize],
    classes: u32,
    input: &InputSpec,
) -> Result<Dataset, LocalDataError> {
    let text = read_limited(file)?;
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| mismatch(file, format!("cannot read the header row: {e}")))?
        .clone();
    let column = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            mismatch(
                file,
                format!(
                    "no column \"{name}\" (the header row has {:?})",
                    headers.iter().collect::<Vec<_>>()
                ),
            )
        })
    };
    let feature_cols: Vec<usize> = input
        .feature_columns
        .iter()
        .map(|c| column(c))
        .collect::<Result<_, _>>()?;
    let label_name = input.label_column.as_deref().unwrap_or("label");
    let label_col = column(label_name)?;
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = record.map_err(|e| mismatch(file, format!("line {line}: {e}")))?;
        if labels.len() >= MAX_LOCAL_EXAMPLES {
            return Err(mismatch(
                file,
                format!("more than {MAX_LOCAL_EXAMPLES} rows; train on a sample"),
            ));
        }
        for (&col, name) in feature_cols.iter().zip(&input.feature_columns) {
            let raw = record.get(col).unwrap_or_default();
            let v: f32 = raw.parse().map_err(|_| {
                mismatch(
                    file,
                    format!("line {line}, column \"{name}\": \"{raw}\" is not a number"),
                )
            })?;
            features.push(input.normalise(v));
        }
        let raw = record.get(label_col).unwrap_or_default();
        let Some(label) = input.labels.iter().position(|l| l == raw) else {
            return Err(mismatch(
                file,
                format!(
                    "line {line}, column \"{label_name}\": \"{raw}\" is not one of the task's \
                     labels {:?}",
                    input.labels
                ),
            ));
        };
        labels.push(label as u32);
    }
    if labels.is_empty() {
        return Err(LocalDataError::NoExamples {
            path: file.to_path_buf(),
            what: "rows below the header",
        });
    }
    finish(file, features, labels, shape, classes)
}

fn load_text(
    path: &Path,
    shape: &[usize],
    classes: u32,
    _input: &InputSpec,
) -> Result<Dataset, LocalDataError> {
    let &[window] = shape else {
        return Err(mismatch(
            path,
            format!("the task's model reads {shape:?}, not a character window"),
        ));
    };
    let files = if path.is_dir() {
        entries(path)?.into_iter().filter(|p| p.is_file()).collect()
    } else {
        vec![path.to_path_buf()]
    };
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for file in files {
        let text = read_limited(&file)?;
        let ids: Vec<u8> = text
            .chars()
            .map(cohort_datasets::shakespeare::char_to_id)
            .collect();
        if let Some(&id) = ids.iter().find(|&&id| u32::from(id) >= classes) {
            return Err(mismatch(
                &file,
                format!("character id {id} is outside the model's vocabulary of {classes}"),
            ));
        }
        for start in 0..ids.len().saturating_sub(window) {
            if labels.len() >= MAX_LOCAL_EXAMPLES {
                break;
            }
            features.extend(ids[start..start + window].iter().map(|&id| f32::from(id)));
            labels.push(u32::from(ids[start + window]));
        }
    }
    if labels.is_empty() {
        return Err(LocalDataError::NoExamples {
            path: path.to_path_buf(),
            what: "text longer than the model's window",
        });
    }
    finish(path, features, labels, shape, classes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(shape: Vec<u32>, classes: u32) -> ModelSpec {
        ModelSpec {
            input_shape: shape,
            layers: vec![cohort_protocol::LayerSpec::Linear { out: classes }],
            num_classes: classes,
        }
    }

    fn image_input(labels: &[&str]) -> InputSpec {
        InputSpec {
            kind: InputKind::Image,
            labels: labels.iter().map(|s| s.to_string()).collect(),
            scale: 1.0 / 255.0,
            offset: 0.0,
            feature_columns: Vec::new(),
            label_column: None,
        }
    }

    #[test]
    fn an_image_folder_is_read_resized_and_normalised() {
        let dir = tempfile::tempdir().unwrap();
        for (label, value) in [("cat", 255u8), ("dog", 0)] {
            std::fs::create_dir_all(dir.path().join(label)).unwrap();
            let img = image::GrayImage::from_pixel(8, 8, image::Luma([value]));
            img.save(dir.path().join(label).join("a.png")).unwrap();
        }
        let d = load(
            dir.path(),
            &spec(vec![1, 4, 4], 2),
            Some(&image_input(&["cat", "dog"])),
        )
        .unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d.feature_shape(), &[1, 4, 4]);
        let mut f = Vec::new();
        d.gather_features(&[0, 1], &mut f).unwrap();
        assert!(f[..16].iter().all(|&v| (v - 1.0).abs() < 1e-6), "{f:?}");
        assert!(f[16..].iter().all(|&v| v == 0.0));
        // An unknown label and an unreadable file are named.
        std::fs::create_dir_all(dir.path().join("bird")).unwrap();
        let e = load(
            dir.path(),
            &spec(vec![1, 4, 4], 2),
            Some(&image_input(&["cat", "dog"])),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("bird") && e.to_string().contains("not one of"),
            "{e}"
        );
        std::fs::remove_dir(dir.path().join("bird")).unwrap();
        std::fs::write(dir.path().join("cat/b.png"), b"not a png").unwrap();
        let e = load(
            dir.path(),
            &spec(vec![1, 4, 4], 2),
            Some(&image_input(&["cat", "dog"])),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("b.png") && e.to_string().contains("decode"),
            "{e}"
        );
        // Without [input] there is nothing to read the files by.
        assert!(matches!(
            load(dir.path(), &spec(vec![1, 4, 4], 2), None),
            Err(LocalDataError::NoInputSpec { .. })
        ));
    }

    #[test]
    fn a_csv_is_read_by_column_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sensors.csv");
        std::fs::write(&file, "id,b,a,kind\n1,2.0,1.0,walk\n2,4.0,3.0,run\n").unwrap();
        let input = InputSpec {
            kind: InputKind::Csv,
            labels: vec!["run".into(), "walk".into()],
            scale: 0.5,
            offset: 0.0,
            feature_columns: vec!["a".into(), "b".into()],
            label_column: Some("kind".into()),
        };
        let d = load(&file, &spec(vec![2], 2), Some(&input)).unwrap();
        let (mut f, mut l) = (Vec::new(), Vec::new());
        d.gather_features(&[0, 1], &mut f).unwrap();
        d.gather_labels(&[0, 1], &mut l).unwrap();
        assert_eq!(f, vec![0.5, 1.0, 1.5, 2.0]);
        assert_eq!(l, vec![1, 0]);
        std::fs::write(&file, "id,b,a,kind\n1,2.0,x,walk\n").unwrap();
        let e = load(&file, &spec(vec![2], 2), Some(&input)).unwrap_err();
        assert!(
            e.to_string().contains("line 2") && e.to_string().contains("\"a\""),
            "{e}"
        );
        std::fs::write(&file, "id,b,a,kind\n1,2.0,1.0,swim\n").unwrap();
        let e = load(&file, &spec(vec![2], 2), Some(&input)).unwrap_err();
        assert!(
            e.to_string().contains("swim") && e.to_string().contains("sensors.csv"),
            "{e}"
        );
        std::fs::write(&file, "id,b,kind\n1,2.0,walk\n").unwrap();
        let e = load(&file, &spec(vec![2], 2), Some(&input)).unwrap_err();
        assert!(e.to_string().contains("no column \"a\""), "{e}");
    }

    #[test]
    fn text_becomes_next_character_windows() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("notes.txt");
        std::fs::write(&file, "hello world").unwrap();
        let input = InputSpec {
            kind: InputKind::Text,
            labels: Vec::new(),
            scale: 1.0,
            offset: 0.0,
            feature_columns: Vec::new(),
            label_column: None,
        };
        let d = load(dir.path(), &spec(vec![4], 96), Some(&input)).unwrap();
        assert_eq!(d.len(), "hello world".len() - 4);
        let mut l = Vec::new();
        d.gather_labels(&[0], &mut l).unwrap();
        assert_eq!(
            l,
            vec![u32::from(cohort_datasets::shakespeare::char_to_id('o'))]
        );
        std::fs::write(&file, "hi").unwrap();
        assert!(matches!(
            load(&file, &spec(vec![4], 96), Some(&input)),
            Err(LocalDataError::NoExamples { .. })
        ));
    }
}
