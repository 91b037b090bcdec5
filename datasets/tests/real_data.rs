//! Loaders against the real files in the shared datasets folder, checked with facts known about
//! each dataset. Each test prints why it skips when the folder is absent.

use std::path::PathBuf;
use std::time::Instant;

use cohort_datasets::{DatasetName, PartitionSpec, Row, datasets_dir_for_test, load};

/// The folder of one dataset, or `None` after printing why the test skips.
fn dataset_folder(test: &str, name: DatasetName) -> Option<PathBuf> {
    datasets_dir_for_test(test).map(|dir| dir.join(name.folder()))
}

#[test]
fn mnist_matches_known_labels_and_counts() {
    let Some(dir) = dataset_folder("mnist_matches_known_labels_and_counts", DatasetName::Mnist)
    else {
        return;
    };
    let start = Instant::now();
    let data = load(DatasetName::Mnist, &dir).expect("MNIST loads");
    println!("loaded MNIST in {:.2?}", start.elapsed());
    let split = &data.split;
    assert_eq!(split.train.len(), 60_000);
    assert_eq!(split.test.len(), 10_000);
    assert_eq!(split.train.feature_shape(), &[1, 28, 28]);
    assert_eq!(split.train.num_classes(), 10);
    assert_eq!(&split.train.labels()[..10], &[5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    assert_eq!(&split.test.labels()[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    assert!(data.groups.is_none());
    let pixels = split.train.dense_features().unwrap();
    assert!(pixels.iter().all(|p| (0.0..=1.0).contains(p)));
    assert!(pixels.contains(&1.0), "255 must scale to exactly 1.0");
    // The first image (a 5) has ink in its middle rows but a blank first row.
    let Row::Dense(first) = split.train.example(0).unwrap().features else {
        panic!("MNIST is dense")
    };
    assert!(first[..28].iter().all(|&p| p == 0.0));
    assert!(first.iter().filter(|&&p| p > 0.5).count() > 50);
    // Per-class counts of the MNIST training set are well known (e.g. 5,923 zeros, 6,742 ones).
    let counts = split.train.label_counts();
    assert_eq!(counts[0], 5923);
    assert_eq!(counts[1], 6742);
}

#[test]
fn fashion_mnist_matches_known_labels() {
    let Some(dir) = dataset_folder(
        "fashion_mnist_matches_known_labels",
        DatasetName::FashionMnist,
    ) else {
        return;
    };
    let start = Instant::now();
    let data = load(DatasetName::FashionMnist, &dir).expect("Fashion-MNIST loads");
    println!("loaded Fashion-MNIST in {:.2?}", start.elapsed());
    assert_eq!(data.split.train.len(), 60_000);
    assert_eq!(data.split.test.len(), 10_000);
    assert_eq!(
        &data.split.train.labels()[..10],
        &[9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    );
    // Fashion-MNIST is exactly balanced: 6,000 training images per class.
    assert!(data.split.train.label_counts().iter().all(|&c| c == 6000));
}

#[test]
fn digits_folder_matches_embedded_copy() {
    let Some(dir) = dataset_folder("digits_folder_matches_embedded_copy", DatasetName::Digits)
    else {
        return;
    };
    let from_dir = load(DatasetName::Digits, &dir).expect("digits load").split;
    let embedded = cohort_datasets::embedded_digits().expect("embedded digits load");
    assert_eq!(from_dir, embedded);
    assert_eq!(from_dir.train.len() + from_dir.test.len(), 1797);
}

#[test]
fn femnist_has_the_documented_writers_and_samples() {
    let Some(dir) = dataset_folder(
        "femnist_has_the_documented_writers_and_samples",
        DatasetName::Femnist,
    ) else {
        return;
    };
    let start = Instant::now();
    let data = load(DatasetName::Femnist, &dir).expect("FEMNIST loads");
    println!("loaded FEMNIST in {:.2?}", start.elapsed());
    let groups = data.groups.as_ref().expect("FEMNIST has writers");
    assert_eq!(data.split.train.len(), 14_708);
    assert_eq!(data.split.test.len(), 4_088);
    assert_eq!(data.split.train.num_classes(), 62);
    assert_eq!(groups.train.len(), 14_708);
    assert_eq!(groups.test.len(), 4_088);
    let distinct = |ids: &[u32]| {
        let mut v = ids.to_vec();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    assert_eq!(distinct(&groups.train), 105);
    assert_eq!(distinct(&groups.test), 184);
    // The natural partition gives each of the 105 writers their own client.
    let parts = PartitionSpec::Natural
        .partition(&data.split.train, Some(&groups.train), 105, 7)
        .expect("natural partition");
    for part in &parts {
        let writer = groups.train[part[0]];
        assert!(part.iter().all(|&i| groups.train[i] == writer));
    }
    assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 14_708);
}

#[test]
fn shakespeare_finds_the_documented_roles() {
    let Some(dir) = dataset_folder(
        "shakespeare_finds_the_documented_roles",
        DatasetName::Shakespeare,
    ) else {
        return;
    };
    let start = Instant::now();
    let data = cohort_datasets::load_shakespeare(&dir).expect("Shakespeare loads");
    println!("loaded Shakespeare in {:.2?}", start.elapsed());
    let roles = data.roles.len();
    let with_two = data.roles.iter().filter(|r| r.speeches >= 2).count();
    let plays = {
        let mut p: Vec<&str> = data.roles.iter().map(|r| r.play.as_str()).collect();
        p.dedup();
        p.len()
    };
    println!(
        "Shakespeare: {plays} plays, {roles} (play, role) clients, {with_two} with >= 2 speeches, {} train / {} test examples",
        data.split.train.len(),
        data.split.test.len()
    );
    assert_eq!(plays, 37);
    // The shared README reports about 1,370 roles, 1,073 with at least two speeches.
    assert!((1_300..=1_440).contains(&roles), "{roles} roles");
    assert!(
        (1_020..=1_130).contains(&with_two),
        "{with_two} roles with >= 2 speeches"
    );
    assert!(
        data.roles
            .iter()
            .any(|r| r.play == "hamlet" && r.name == "HAM")
    );
    assert_eq!(data.split.train.feature_shape(), &[80]);
    assert_eq!(data.split.train.len(), data.train_roles.len());
    assert!(data.split.train.len() > 3_000_000);
    assert!(data.split.test.len() > 100_000);
}
