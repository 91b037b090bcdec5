//! Finding the shared datasets directory for tests, examples and benchmarks.
//!
//! The datasets are not part of the repository (only `assets/digits` is), so code that needs
//! them asks [`datasets_dir`] and, when it answers `None`, says so and skips.

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

/// Where [`datasets_dir`] looked, for "skipping" messages.
pub fn datasets_search_description() -> String {
    format!(
        "${DATASETS_ENV}, {}/../../shared/datasets and ./../shared/datasets",
        env!("CARGO_MANIFEST_DIR")
    )
}
