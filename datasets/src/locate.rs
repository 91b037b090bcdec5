//! Finding the shared datasets directory for tests, examples and benchmarks.
//!
//! The datasets are not part of the repository (only `assets/digits` is), so code that needs
//! them asks [`datasets_dir`] and, when it answers `None`, says so and skips. Tests ask
//! [`datasets_dir_for_test`] instead, which fails the test when `COHORT_REQUIRE_DATASETS=1`
//! (CI sets it), so that a missing folder cannot turn real-data tests into silent passes.

use std::path::PathBuf;

/// The environment variable that overrides where the datasets are.
pub const DATASETS_ENV: &str = "COHORT_DATASETS";

/// The datasets directory: `$COHORT_DATASETS` if set (and a directory), else
/// `<workspace root>/../shared/datasets` (from this crate's manifest directory at compile
/// time), else `../shared/datasets` relative to the current directory. `None` when none exists.
pub fn datasets_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(DATASETS_ENV) {
        let dir = PathBuf::from(dir);
        if dir.is_dir() {
            return Some(dir);
        }
        tracing::warn!(path = %dir.display(), "{DATASETS_ENV} is set but is not a directory; ignoring it");
    }
    let candidates = [
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets"),
        PathBuf::from("../shared/datasets"),
    ];
    candidates.into_iter().find(|d| d.is_dir())
}

/// The environment variable that makes a missing datasets folder a test failure.
pub const REQUIRE_DATASETS_ENV: &str = "COHORT_REQUIRE_DATASETS";

/// For tests: the datasets directory, or `None` after printing why `test` skips. With
/// `COHORT_REQUIRE_DATASETS=1` a missing folder panics instead (the test fails, naming where it
/// looked).
pub fn datasets_dir_for_test(test: &str) -> Option<PathBuf> {
    if let Some(dir) = datasets_dir() {
        return Some(dir);
    }
    let message = format!(
        "{test}: datasets not found at {}; set {DATASETS_ENV}",
        datasets_search_description()
    );
    if std::env::var(REQUIRE_DATASETS_ENV).is_ok_and(|v| v == "1") {
        panic!("{message} ({REQUIRE_DATASETS_ENV}=1 makes this a failure)");
    }
    println!("skipping {message}");
    None
}

/// Where [`datasets_dir`] looked, for "skipping" messages.
pub fn datasets_search_description() -> String {
    format!(
        "${DATASETS_ENV}, {}/../../shared/datasets and ./../shared/datasets",
        env!("CARGO_MANIFEST_DIR")
    )
}
