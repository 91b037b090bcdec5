//! Dataset names, the embedded digits, and the `Dataset` accessors.

use std::str::FromStr;

use cohort_datasets::{DataError, Dataset, DatasetName, Row, embedded_digits};
use sha2::{Digest, Sha256};

#[test]
fn dataset_names_parse_and_serialise_in_snake_case() {
    for name in DatasetName::ALL {
        assert_eq!(DatasetName::from_str(name.as_str()).unwrap(), name);
        let json = serde_json::to_string(&name).unwrap();
        assert_eq!(json, format!("\"{name}\""));
        assert_eq!(serde_json::from_str::<DatasetName>(&json).unwrap(), name);
    }
    assert_eq!(
        "Fashion-MNIST".parse::<DatasetName>().unwrap(),
        DatasetName::FashionMnist
    );
    let err = "cifar10".parse::<DatasetName>().unwrap_err();
    assert!(matches!(err, DataError::UnknownDataset { .. }));
    assert!(
        err.to_string()
            .contains("digits, mnist, fashion_mnist, femnist, shakespeare"),
        "{err}"
    );
}

#[test]
fn embedded_digits_match_the_documented_checksum_and_counts() {
    let bytes = include_bytes!("../../assets/digits/digits.csv.gz");
    let digest = hex_digest(&Sha256::digest(bytes));
    let readme = include_str!("../../assets/digits/README.md");
    assert!(
        readme.contains(&digest),
        "assets/digits/README.md must give sha256 {digest}"
    );

    let split = embedded_digits().unwrap();
    assert_eq!(split.train.len(), 1438);
    assert_eq!(split.test.len(), 359);
    assert_eq!(split.train.feature_shape(), &[1, 8, 8]);
    // sklearn's digits start with the labels 0, 1, 2, 3, 4; example 4 goes to test.
    assert_eq!(&split.train.labels()[..4], &[0, 1, 2, 3]);
    assert_eq!(split.test.labels()[0], 4);
    // First pixels of the first image: 0, 0, 5, 13, 9, 1 (divided by 16).
    let Row::Dense(first) = split.train.example(0).unwrap().features else {
        panic!("digits are dense")
    };
    assert_eq!(
        &first[..6],
        &[0.0, 0.0, 5.0 / 16.0, 13.0 / 16.0, 9.0 / 16.0, 1.0 / 16.0]
    );
    let mut counts = split.train.label_counts();
    for (c, t) in counts.iter_mut().zip(split.test.label_counts()) {
        *c += t;
    }
    assert_eq!(
        counts,
        vec![178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    );
}

fn hex_digest(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn dataset_accessors_and_subsets() {
    let data = Dataset::from_dense(
        vec![0.0, 0.1, 1.0, 1.1, 2.0, 2.1],
        vec![0, 1, 2],
        vec![2],
        3,
    )
    .unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data.feature_len(), 2);
    let ex = data.example(1).unwrap();
    assert_eq!(ex.features, Row::Dense(&[1.0, 1.1]));
    assert_eq!(ex.label, 1);
    assert!(data.example(3).is_none());
    let sub = data.subset(&[2, 0, 2]).unwrap();
    assert_eq!(sub.labels(), &[2, 0, 2]);
    assert_eq!(
        sub.dense_features().unwrap(),
        &[2.0, 2.1, 0.0, 0.1, 2.0, 2.1]
    );
    let mut batch = Vec::new();
    data.gather_features(&[1, 2], &mut batch).unwrap();
    assert_eq!(batch, vec![1.0, 1.1, 2.0, 2.1]);
    assert!(matches!(
        data.subset(&[3]),
        Err(DataError::IndexOutOfRange { index: 3, len: 3 })
    ));
    assert!(matches!(
        Dataset::from_dense(vec![0.0; 5], vec![0, 1, 2], vec![2], 3),
        Err(DataError::Inconsistent { .. })
    ));
    assert!(matches!(
        Dataset::from_dense(vec![0.0; 6], vec![0, 1, 3], vec![2], 3),
        Err(DataError::Inconsistent { .. })
    ));
}
