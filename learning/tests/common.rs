//! Helpers shared by the integration tests: the backends to test on, and a skip that says why.

#![allow(dead_code)]

use cohort_learning::{BackendChoice, ComputeBackend};

/// Set to `1` to turn a missing wgpu adapter into a test failure instead of a printed skip
/// (CI sets it where lavapipe is installed).
pub const REQUIRE_WGPU_ENV: &str = "COHORT_REQUIRE_WGPU";

/// The wgpu backend, or `None` after printing why the wgpu half of a test is skipped.
pub fn wgpu_or_skip(test: &str) -> Option<ComputeBackend> {
    // Tests pick their backend themselves; an inherited COHORT_BACKEND must not change that.
    match ComputeBackend::select_without_env(BackendChoice::Wgpu) {
        Ok(backend) => {
            eprintln!(
                "{test}: wgpu adapter {}",
                backend.adapter().unwrap_or("unknown")
            );
            Some(backend)
        }
        Err(e) => {
            if std::env::var(REQUIRE_WGPU_ENV).as_deref() == Ok("1") {
                panic!("{test}: {REQUIRE_WGPU_ENV}=1 but wgpu is unavailable: {e}");
            }
            eprintln!("SKIPPED (wgpu half of {test}): {e}");
            None
        }
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,wgpu=warn,naga=warn,cubecl=warn".into()),
        )
        .try_init();
}
