//! Loads every dataset found in the shared datasets folder and prints sizes and load times.
//!
//! Run: `cargo run -p cohort-datasets --example load_timings` (add `--release` to see the
//! optimised numbers; set `COHORT_DATASETS` if the folder is elsewhere).

use std::time::Instant;

use cohort_datasets::{DatasetName, datasets_dir, load, locate};

fn main() {
    let Some(root) = datasets_dir() else {
        eprintln!(
            "datasets not found at {}; set COHORT_DATASETS",
            locate::datasets_search_description()
        );
        std::process::exit(2);
    };
    for name in DatasetName::ALL {
        let start = Instant::now();
        match load(name, &root.join(name.folder())) {
            Ok(data) => {
                let elapsed = start.elapsed();
                let groups = data.groups.as_ref().map_or(String::new(), |g| {
                    let mut train = g.train.clone();
                    train.sort_unstable();
                    train.dedup();
                    format!(
                        ", {} groups ({} with train examples)",
                        g.names.len(),
                        train.len()
                    )
                });
                println!(
                    "{name:>13}: {:>9} train, {:>7} test, shape {:?}, {} classes{groups}: {elapsed:.2?}",
                    data.split.train.len(),
                    data.split.test.len(),
                    data.split.train.feature_shape(),
                    data.split.train.num_classes(),
                );
            }
            Err(e) => println!("{name:>13}: {e}"),
        }
    }
}
