//! Loading LEAF JSON (FEMNIST's format): a synthetic split of 40 writers with 100 images each
//! (about 17 MB of JSON, values written as FEMNIST writes them), parsed into flat buffers by
//! `load_femnist`. Run with `cargo bench -p cohort-datasets --bench leaf_json`.

use std::fmt::Write as _;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const WRITERS: usize = 40;
const ROWS: usize = 100;

/// A LEAF file: pixel values drawn from a fixed sequence of typical FEMNIST values.
fn leaf_file(first_writer: usize) -> String {
    let values = [
        "1.0",
        "0.99607843",
        "0.5058824",
        "0.0",
        "0.827451",
        "1.0",
        "1.0",
    ];
    let users: Vec<String> = (0..WRITERS)
        .map(|w| format!("\"f{:04}_{w}\"", first_writer + w))
        .collect();
    let mut s = format!(
        "{{\"users\": [{}], \"num_samples\": [{}], \"user_data\": {{",
        users.join(", "),
        vec![ROWS.to_string(); WRITERS].join(", ")
    );
    let mut k = 0usize;
    for (w, user) in users.iter().enumerate() {
        if w > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{user}: {{\"x\": [");
        for r in 0..ROWS {
            if r > 0 {
                s.push_str(", ");
            }
            s.push('[');
            for p in 0..784 {
                if p > 0 {
                    s.push_str(", ");
                }
                s.push_str(values[k % values.len()]);
                k += 1;
            }
            s.push(']');
        }
        let labels: Vec<String> = (0..ROWS).map(|r| ((r + w) % 62).to_string()).collect();
        let _ = write!(s, "], \"y\": [{}]}}", labels.join(", "));
    }
    s.push_str("}}");
    s
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let train = leaf_file(0);
    let test = leaf_file(WRITERS);
    for (part, text) in [("train", &train), ("test", &test)] {
        std::fs::create_dir(dir.path().join(part)).expect("creates the split's folder");
        std::fs::write(dir.path().join(part).join("all.json"), text).expect("writes the file");
    }
    let bytes = (train.len() + test.len()) as u64;
    let mut g = c.benchmark_group("leaf_json");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function(format!("load_femnist {} MB", bytes / 1_000_000), |b| {
        b.iter(|| cohort_datasets::load_femnist(dir.path()).expect("the synthetic split loads"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
