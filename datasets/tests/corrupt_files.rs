//! Loaders refuse corrupt files with the specific error, naming the file. The files are
//! written to a temporary directory, so these tests need no shared data.

use std::io::Write;
use std::path::{Path, PathBuf};

use cohort_datasets::idx::{read_idx_images, read_idx_labels};
use cohort_datasets::{DataError, load_digits, load_femnist, load_mnist, load_shakespeare};
use flate2::Compression;
use flate2::write::GzEncoder;

fn idx_images(count: u32, rows: u32, cols: u32, pixels: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for w in [2051u32, count, rows, cols] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v.extend((0..pixels).map(|i| (i % 256) as u8));
    v
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for w in [2049u32, labels.len() as u32] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v.extend_from_slice(labels);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn idx_round_trip_raw_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let raw = write(dir.path(), "a", &idx_images(3, 2, 2, 12));
    let gz = write(dir.path(), "b", &gzip(&idx_images(3, 2, 2, 12)));
    let a = read_idx_images(&raw).unwrap();
    let b = read_idx_images(&gz).unwrap();
    assert_eq!(a, b);
    assert_eq!((a.count, a.rows, a.cols), (3, 2, 2));
    assert_eq!(a.pixels, (0..12u8).collect::<Vec<_>>());
    let labels = write(dir.path(), "l", &gzip(&idx_labels(&[1, 2, 3])));
    assert_eq!(read_idx_labels(&labels).unwrap(), vec![1, 2, 3]);
}

#[test]
fn idx_wrong_magic_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A label file where an image file is expected.
    let path = write(dir.path(), "images", &idx_labels(&[1, 2, 3]));
    match read_idx_images(&path) {
        Err(DataError::BadMagic {
            path: p,
            expected: 2051,
            found: 2049,
            ..
        }) => assert_eq!(p, path),
        other => panic!("expected BadMagic, got {other:?}"),
    }
    let err = read_idx_labels(&write(dir.path(), "text", b"hello world, not idx")).unwrap_err();
    assert!(
        matches!(err, DataError::BadMagic { expected: 2049, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("text"),
        "message names the file: {err}"
    );
}

#[test]
fn idx_truncated_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = idx_images(10, 4, 4, 160);
    bytes.truncate(16 + 100);
    let path = write(dir.path(), "short.gz", &gzip(&bytes));
    match read_idx_images(&path) {
        Err(DataError::Truncated {
            expected: 176,
            actual: 116,
            ..
        }) => {}
        other => panic!("expected Truncated, got {other:?}"),
    }
    // A header cut short is truncated too.
    let path = write(dir.path(), "header", &idx_images(1, 1, 1, 1)[..10]);
    assert!(matches!(
        read_idx_images(&path),
        Err(DataError::Truncated { .. })
    ));
    // A gzip stream cut in the middle is an I/O error naming the file, not a panic.
    let gz = gzip(&idx_images(100, 28, 28, 78_400));
    let path = write(dir.path(), "cut.gz", &gz[..gz.len() / 2]);
    let err = read_idx_images(&path).unwrap_err();
    assert!(
        matches!(err, DataError::Io { .. } | DataError::Truncated { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("cut.gz"), "{err}");
}

#[test]
fn idx_absurd_dimensions_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    // Claims 4 billion 64k×64k images in a 116-byte file.
    let path = write(
        dir.path(),
        "huge",
        &idx_images(u32::MAX, 65_535, 65_535, 100),
    );
    match read_idx_images(&path) {
        Err(DataError::BadDimensions { detail, .. }) => {
            assert!(detail.contains("at most"), "{detail}")
        }
        other => panic!("expected BadDimensions, got {other:?}"),
    }
    // The same claim through gzip: the cap is the most deflate could expand the file to.
    let path = write(
        dir.path(),
        "huge.gz",
        &gzip(&idx_images(u32::MAX, 65_535, 65_535, 100)),
    );
    assert!(matches!(
        read_idx_images(&path),
        Err(DataError::BadDimensions { .. })
    ));
    let path = write(dir.path(), "zero", &idx_images(1, 0, 28, 0));
    assert!(matches!(
        read_idx_images(&path),
        Err(DataError::BadDimensions { .. })
    ));
    let path = write(
        dir.path(),
        "long",
        &[idx_images(1, 2, 2, 4), vec![7; 5]].concat(),
    );
    assert!(matches!(
        read_idx_images(&path),
        Err(DataError::TrailingBytes {
            expected: 20,
            extra: 5,
            ..
        })
    ));
}

fn write_mnist(dir: &Path, train_images: u32, train_labels: &[u8], side: u32) {
    let n = train_images as usize * (side * side) as usize;
    write(
        dir,
        "train-images-idx3-ubyte.gz",
        &gzip(&idx_images(train_images, side, side, n)),
    );
    write(
        dir,
        "train-labels-idx1-ubyte.gz",
        &gzip(&idx_labels(train_labels)),
    );
    write(
        dir,
        "t10k-images-idx3-ubyte",
        &idx_images(1, side, side, (side * side) as usize),
    );
    write(dir, "t10k-labels-idx1-ubyte", &idx_labels(&[3]));
}

#[test]
fn mnist_layout_checks_counts_shapes_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    write_mnist(dir.path(), 2, &[4, 9], 28);
    let split = load_mnist(dir.path()).expect("a tiny valid MNIST loads (gzip and raw mixed)");
    assert_eq!(split.train.labels(), &[4, 9]);
    assert_eq!(split.test.labels(), &[3]);
    let first = split.train.dense_features().unwrap();
    assert_eq!(first[1], 1.0 / 255.0);
    assert_eq!(first[255], 1.0);

    write_mnist(dir.path(), 3, &[4, 9], 28);
    assert!(matches!(
        load_mnist(dir.path()),
        Err(DataError::CountMismatch {
            image_count: 3,
            label_count: 2,
            ..
        })
    ));
    write_mnist(dir.path(), 2, &[4, 10], 28);
    assert!(matches!(
        load_mnist(dir.path()),
        Err(DataError::LabelOutOfRange {
            index: 1,
            label: 10,
            num_classes: 10,
            ..
        })
    ));
    write_mnist(dir.path(), 2, &[4, 9], 27);
    assert!(matches!(
        load_mnist(dir.path()),
        Err(DataError::BadDimensions { .. })
    ));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        load_mnist(empty.path()),
        Err(DataError::NoFiles { .. })
    ));
}

fn leaf_dirs(train_json: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for part in ["train", "test"] {
        std::fs::create_dir(dir.path().join(part)).unwrap();
    }
    write(
        &dir.path().join("train"),
        "a.json.gz",
        &gzip(train_json.as_bytes()),
    );
    let row = vec!["0.5"; 784].join(",");
    let test = format!(
        r#"{{"users": ["w9"], "num_samples": [1], "user_data": {{"w9": {{"x": [[{row}]], "y": [61]}}}}}}"#
    );
    write(&dir.path().join("test"), "b.json", test.as_bytes());
    dir
}

fn leaf_user(rows: usize, width: usize, y: &[u32]) -> String {
    let row = format!("[{}]", vec!["1.0"; width].join(", "));
    let x = vec![row; rows].join(", ");
    let y: Vec<String> = y.iter().map(u32::to_string).collect();
    format!(r#"{{"x": [{x}], "y": [{}]}}"#, y.join(", "))
}

#[test]
fn leaf_valid_file_loads_with_writers() {
    let json = format!(
        r#"{{"users": ["w1", "w2"], "num_samples": [2, 1], "hierarchies": [], "user_data": {{"w2": {}, "w1": {}}}}}"#,
        leaf_user(1, 784, &[7]),
        leaf_user(2, 784, &[0, 3])
    );
    let dir = leaf_dirs(&json);
    let f = load_femnist(dir.path()).expect("valid LEAF loads");
    // Order follows "users", not the order of user_data.
    assert_eq!(f.split.train.labels(), &[0, 3, 7]);
    assert_eq!(f.train_writers, vec![0, 0, 1]);
    assert_eq!(f.test_writers, vec![2]);
    assert_eq!(f.writers, vec!["w1", "w2", "w9"]);
    assert_eq!(f.split.test.dense_features().unwrap()[0], 0.5);
}

#[test]
fn leaf_bad_json_is_refused_with_position() {
    let dir = leaf_dirs(
        r#"{"users": ["w1"], "num_samples": [1], "user_data": {"w1": {"x": [[1.0, 1.0}}}"#,
    );
    match load_femnist(dir.path()) {
        Err(DataError::Json {
            path,
            line: 1,
            column,
            ..
        }) => {
            assert!(path.ends_with("train/a.json.gz"), "{path:?}");
            assert!(column > 60, "column {column}");
        }
        other => panic!("expected Json, got {other:?}"),
    }
}

#[test]
fn leaf_inconsistent_content_is_refused() {
    let cases = [
        // num_samples disagrees with the rows.
        format!(
            r#"{{"users": ["w1"], "num_samples": [2], "user_data": {{"w1": {}}}}}"#,
            leaf_user(1, 784, &[1])
        ),
        // A row of the wrong width.
        format!(
            r#"{{"users": ["w1"], "num_samples": [1], "user_data": {{"w1": {}}}}}"#,
            leaf_user(1, 783, &[1])
        ),
        // A label out of range.
        format!(
            r#"{{"users": ["w1"], "num_samples": [1], "user_data": {{"w1": {}}}}}"#,
            leaf_user(1, 784, &[62])
        ),
        // A listed user without data.
        format!(
            r#"{{"users": ["w2"], "num_samples": [1], "user_data": {{"w1": {}}}}}"#,
            leaf_user(1, 784, &[1])
        ),
        // Missing member.
        r#"{"users": [], "user_data": {}}"#.to_string(),
    ];
    for (i, json) in cases.iter().enumerate() {
        let dir = leaf_dirs(json);
        match load_femnist(dir.path()) {
            Err(DataError::BadContent { path, detail })
            | Err(DataError::Json { path, detail, .. }) => {
                assert!(path.ends_with("train/a.json.gz"), "case {i}: {path:?}");
                assert!(!detail.is_empty());
            }
            other => panic!("case {i}: expected a content error, got {other:?}"),
        }
    }
    // Pixel values outside [0, 1] are refused while parsing.
    let json = format!(
        r#"{{"users": ["w1"], "num_samples": [1], "user_data": {{"w1": {}}}}}"#,
        leaf_user(1, 784, &[1]).replacen("1.0", "255", 1)
    );
    let err = load_femnist(leaf_dirs(&json).path()).unwrap_err();
    assert!(err.to_string().contains("outside [0, 1]"), "{err}");
}

#[test]
fn digits_csv_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = format!("{},3\n", vec!["16"; 64].join(","));
    write(
        dir.path(),
        "digits.csv.gz",
        &gzip(good.repeat(5).as_bytes()),
    );
    let split = load_digits(dir.path()).expect("valid digits CSV loads");
    assert_eq!((split.train.len(), split.test.len()), (4, 1));
    assert!(
        split
            .train
            .dense_features()
            .unwrap()
            .iter()
            .all(|&v| v == 1.0)
    );

    let short = format!("{good}{},3\n", vec!["0"; 63].join(","));
    write(dir.path(), "digits.csv.gz", &gzip(short.as_bytes()));
    let err = load_digits(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::BadContent { .. }), "{err}");
    assert!(err.to_string().contains("line 2: 64 columns"), "{err}");

    let big = format!("{},3\n", vec!["17"; 64].join(","));
    write(dir.path(), "digits.csv.gz", &gzip(big.as_bytes()));
    assert!(
        load_digits(dir.path())
            .unwrap_err()
            .to_string()
            .contains("expected 0..=16")
    );

    let label = format!("{},10\n", vec!["0"; 64].join(","));
    write(dir.path(), "digits.csv.gz", &gzip(label.as_bytes()));
    assert!(matches!(
        load_digits(dir.path()),
        Err(DataError::LabelOutOfRange { label: 10, .. })
    ));
}

#[test]
fn shakespeare_archive_without_plays_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    let text = b"HAMLET.\nTo be.\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(text.len() as u64);
    header.set_cksum();
    builder
        .append_data(&mut header, "texts/hamlet_gut_f.txt", &text[..])
        .unwrap();
    let gz = builder.into_inner().unwrap().finish().unwrap();
    write(dir.path(), "texts.tar.gz", &gz);
    assert!(matches!(
        load_shakespeare(dir.path()),
        Err(DataError::NoFiles { .. })
    ));
    write(
        dir.path(),
        "texts.tar.gz",
        b"not a tar archive at all, just some text padding it",
    );
    let err = load_shakespeare(dir.path()).unwrap_err();
    assert!(err.to_string().contains("texts.tar.gz"), "{err}");
}
