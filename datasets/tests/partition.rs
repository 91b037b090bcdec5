//! Partitioner properties: every example used exactly once, determinism for a seed, the skew
//! that Dirichlet's alpha controls, shards per class, natural groups kept whole.

use cohort_datasets::{DataError, Dataset, PartitionSpec, embedded_digits};

/// A synthetic dense dataset with `n` examples and labels cycling through `classes`.
fn cyclic(n: usize, classes: u32) -> Dataset {
    let labels: Vec<u32> = (0..n as u32).map(|i| i % classes).collect();
    Dataset::from_dense(vec![0.0; n], labels, vec![1], classes).unwrap()
}

fn assert_exact_cover(parts: &[Vec<usize>], n: usize) {
    let mut seen = vec![0u32; n];
    for part in parts {
        for &i in part {
            seen[i] += 1;
        }
    }
    assert!(
        seen.iter().all(|&c| c == 1),
        "some example is missing or repeated"
    );
}

/// Mean over clients of the Shannon entropy (bits) of the client's label distribution.
fn mean_label_entropy(parts: &[Vec<usize>], labels: &[u32], classes: usize) -> f64 {
    let mut total = 0.0;
    for part in parts {
        let mut counts = vec![0usize; classes];
        for &i in part {
            counts[labels[i] as usize] += 1;
        }
        let n = part.len() as f64;
        total -= counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| (c as f64 / n) * (c as f64 / n).log2())
            .sum::<f64>();
    }
    total / parts.len() as f64
}

#[test]
fn iid_covers_every_example_once_with_balanced_sizes() {
    let data = cyclic(1003, 10);
    let parts = PartitionSpec::Iid.partition(&data, None, 10, 1).unwrap();
    assert_eq!(parts.len(), 10);
    assert_exact_cover(&parts, 1003);
    assert!(parts.iter().all(|p| p.len() == 100 || p.len() == 101));
    // Shuffled, not contiguous blocks.
    assert_ne!(parts[0], (0..100).collect::<Vec<_>>());
}

#[test]
fn every_partitioner_is_deterministic_for_a_seed() {
    let data = cyclic(2000, 10);
    let groups: Vec<u32> = (0..2000).map(|i| i / 40).collect();
    let specs = [
        PartitionSpec::Iid,
        PartitionSpec::Dirichlet { alpha: 0.5 },
        PartitionSpec::Shards { per_client: 2 },
        PartitionSpec::Natural,
    ];
    for spec in specs {
        let a = spec.partition(&data, Some(&groups), 20, 42).unwrap();
        let b = spec.partition(&data, Some(&groups), 20, 42).unwrap();
        let c = spec.partition(&data, Some(&groups), 20, 43).unwrap();
        assert_eq!(a, b, "{spec:?} differs for the same seed");
        assert_ne!(a, c, "{spec:?} ignores the seed");
        assert_exact_cover(&a, 2000);
    }
}

#[test]
fn dirichlet_small_alpha_is_more_skewed_than_large_alpha() {
    let data = cyclic(10_000, 10);
    let skewed = PartitionSpec::Dirichlet { alpha: 0.1 }
        .partition(&data, None, 50, 7)
        .unwrap();
    let even = PartitionSpec::Dirichlet { alpha: 100.0 }
        .partition(&data, None, 50, 7)
        .unwrap();
    assert_exact_cover(&skewed, 10_000);
    assert_exact_cover(&even, 10_000);
    let h_skewed = mean_label_entropy(&skewed, data.labels(), 10);
    let h_even = mean_label_entropy(&even, data.labels(), 10);
    println!("mean label entropy: alpha 0.1 -> {h_skewed:.3} bits, alpha 100 -> {h_even:.3} bits");
    // log2(10) = 3.32 bits is perfectly even.
    assert!(
        h_even > 3.2,
        "alpha 100 should be close to uniform: {h_even}"
    );
    assert!(h_skewed < 2.0, "alpha 0.1 should be skewed: {h_skewed}");
}

#[test]
fn dirichlet_leaves_no_client_empty_even_when_extremely_skewed() {
    let data = cyclic(1000, 10);
    for seed in 0..5 {
        let parts = PartitionSpec::Dirichlet { alpha: 0.01 }
            .partition(&data, None, 100, seed)
            .unwrap();
        assert_exact_cover(&parts, 1000);
        // min(10, 1000 / 100) = 10 examples each: here exactly 10 each.
        assert!(parts.iter().all(|p| p.len() >= 10), "seed {seed}");
    }
    // More clients than examples per client allows: at least one example each.
    let parts = PartitionSpec::Dirichlet { alpha: 0.05 }
        .partition(&data, None, 1000, 3)
        .unwrap();
    assert!(parts.iter().all(|p| p.len() == 1));
}

#[test]
fn dirichlet_handles_ten_thousand_clients() {
    let data = cyclic(60_000, 10);
    let start = std::time::Instant::now();
    let parts = PartitionSpec::Dirichlet { alpha: 0.1 }
        .partition(&data, None, 10_000, 11)
        .unwrap();
    println!(
        "dirichlet(0.1), 60,000 examples, 10,000 clients: {:.2?}",
        start.elapsed()
    );
    assert_eq!(parts.len(), 10_000);
    assert_exact_cover(&parts, 60_000);
    // min(10, 60,000 / 10,000) = 6 examples each at least.
    assert!(parts.iter().all(|p| p.len() >= 6));
}

#[test]
fn shards_give_each_client_few_classes() {
    let digits = embedded_digits().unwrap().train;
    let parts = PartitionSpec::Shards { per_client: 2 }
        .partition(&digits, None, 50, 9)
        .unwrap();
    assert_exact_cover(&parts, digits.len());
    for part in &parts {
        let mut classes: Vec<u32> = part.iter().map(|&i| digits.labels()[i]).collect();
        classes.sort_unstable();
        classes.dedup();
        // Two label-sorted shards span at most two classes each.
        assert!(classes.len() <= 4, "{classes:?}");
    }
    let iid = PartitionSpec::Iid.partition(&digits, None, 50, 9).unwrap();
    assert!(
        mean_label_entropy(&parts, digits.labels(), 10)
            < mean_label_entropy(&iid, digits.labels(), 10) - 1.0
    );
}

#[test]
fn natural_keeps_groups_whole() {
    let data = cyclic(600, 10);
    let groups: Vec<u32> = (0..600u32).map(|i| (i * 7) % 30).collect();
    let parts = PartitionSpec::Natural
        .partition(&data, Some(&groups), 30, 5)
        .unwrap();
    assert_exact_cover(&parts, 600);
    for part in &parts {
        assert_eq!(part.len(), 20);
        assert!(part.iter().all(|&i| groups[i] == groups[part[0]]));
    }
    // Fewer clients than groups: each client holds whole groups.
    let parts = PartitionSpec::Natural
        .partition(&data, Some(&groups), 7, 5)
        .unwrap();
    assert_exact_cover(&parts, 600);
    for g in 0..30 {
        let owners = parts
            .iter()
            .filter(|p| p.iter().any(|&i| groups[i] == g))
            .count();
        assert_eq!(owners, 1, "group {g} split across clients");
    }
}

#[test]
fn impossible_requests_are_errors() {
    let data = cyclic(10, 2);
    let groups = vec![0u32; 10];
    let cases: Vec<(PartitionSpec, Option<&[u32]>, usize)> = vec![
        (PartitionSpec::Iid, None, 0),
        (PartitionSpec::Iid, None, 11),
        (PartitionSpec::Dirichlet { alpha: 0.0 }, None, 2),
        (PartitionSpec::Dirichlet { alpha: f64::NAN }, None, 2),
        (PartitionSpec::Shards { per_client: 0 }, None, 2),
        (PartitionSpec::Shards { per_client: 2 }, None, 6),
        (PartitionSpec::Natural, None, 1),
        (PartitionSpec::Natural, Some(&groups[..5]), 1),
        (PartitionSpec::Natural, Some(&groups), 2),
    ];
    for (spec, groups, clients) in cases {
        match spec.partition(&data, groups, clients, 0) {
            Err(DataError::Partition { detail }) => assert!(!detail.is_empty()),
            other => panic!("{spec:?} with {clients} clients: expected an error, got {other:?}"),
        }
    }
}

#[test]
fn partition_spec_serde_uses_a_kind_tag() {
    let spec: PartitionSpec =
        serde_json::from_str(r#"{"kind": "dirichlet", "alpha": 0.3}"#).unwrap();
    assert_eq!(spec, PartitionSpec::Dirichlet { alpha: 0.3 });
    assert_eq!(
        serde_json::to_string(&PartitionSpec::Shards { per_client: 2 }).unwrap(),
        r#"{"kind":"shards","per_client":2}"#
    );
    assert_eq!(
        serde_json::to_string(&PartitionSpec::Iid).unwrap(),
        r#"{"kind":"iid"}"#
    );
    assert!(serde_json::from_str::<PartitionSpec>(r#"{"kind": "random"}"#).is_err());
}
