//! The committed Swift bindings and C header (`mobile/bindings/swift`) against the library: the
//! header compiles with the C compiler (clang's nullability qualifiers defined away for gcc),
//! and it declares exactly the `cohort_mobile` functions that the built shared library exports,
//! so an API change without regenerated bindings (`mobile/bindings/generate.sh`) fails here.
//! (The Python and Kotlin host tests load their committed bindings, whose checksums UniFFI
//! checks against the library at load time.)

mod host_common;

use std::collections::BTreeSet;
use std::process::Command;

fn header() -> std::path::PathBuf {
    host_common::mobile_dir().join("bindings/swift/cohort_mobileFFI.h")
}

#[test]
fn the_c_header_compiles() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("main.c");
    std::fs::write(
        &main,
        format!(
            "#include \"{}\"\nint main(void) {{ return 0; }}\n",
            header().display()
        ),
    )
    .unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-fsyntax-only"])
        // The header carries clang's nullability qualifiers (Swift's importer reads them); gcc
        // does not know them, so they are defined away for the check.
        .args(["-D_Nonnull=", "-D_Nullable=", "-D_Null_unspecified="])
        .arg(&main)
        .output()
        .unwrap_or_else(|e| panic!("{cc} runs: {e}"));
    assert!(
        out.status.success(),
        "{cc} refused the header:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn declared(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("uniffi_cohort_mobile_") || w.starts_with("ffi_cohort_mobile_"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_header_declares_what_the_library_exports() {
    let lib = host_common::cdylib();
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
        .expect("nm (binutils) runs");
    assert!(out.status.success());
    let exported: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|s| s.starts_with("uniffi_cohort_mobile_") || s.starts_with("ffi_cohort_mobile_"))
        .map(str::to_string)
        .collect();
    let header = std::fs::read_to_string(header()).unwrap();
    let declared = declared(&header);
    // The header also names its include guards and macros with the same prefix; compare
    // functions only (what the library exports).
    let missing: Vec<_> = exported.difference(&declared).collect();
    let stale: Vec<_> = declared
        .iter()
        .filter(|d| {
            d.starts_with("uniffi_cohort_mobile_fn_")
                || d.starts_with("uniffi_cohort_mobile_checksum_")
        })
        .filter(|d| !exported.contains(*d))
        .collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "the committed bindings do not match the library; run mobile/bindings/generate.sh\n\
         exported but not in the header: {missing:?}\nin the header but not exported: {stale:?}"
    );
    assert!(exported.len() > 20, "{exported:?}");
}
