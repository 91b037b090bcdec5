#!/usr/bin/env bash
# Generates cohort-mobile's Kotlin, Swift and Python bindings from the built library into
# mobile/bindings/{kotlin,swift,python}. The committed files are snapshots: an API change shows
# as a diff, and the host tests load exactly these files.
#
#   mobile/bindings/generate.sh           regenerate (after `cargo test --workspace --all-features`
#                                         or `cargo build -p cohort-mobile --all-features --workspace`)
#   mobile/bindings/generate.sh --check   fail when the committed bindings differ (CI)
#
# The generator (mobile/uniffi-bindgen, uniffi's `cli` feature) is its own workspace, built here
# into $CARGO_TARGET_DIR/uniffi-bindgen, so `cargo test --workspace` never pays for it.
set -euo pipefail
cd "$(dirname "$0")/../.."
check=0
[ "${1:-}" = "--check" ] && check=1
target="${CARGO_TARGET_DIR:-target}"
# `cargo test` leaves the cdylib in deps/ (`cargo build` also copies it to debug/).
lib="$target/debug/deps/libcohort_mobile.so"
[ -f "$lib" ] || lib="$target/debug/libcohort_mobile.so"
[ -f "$lib" ] || { echo "$lib is missing; build the workspace's tests first" >&2; exit 1; }
bindgen="${UNIFFI_BINDGEN:-}"   # an already built generator, to skip the build
if [ -z "$bindgen" ]; then
  cargo build --quiet --manifest-path mobile/uniffi-bindgen/Cargo.toml \
    --target-dir "$target/uniffi-bindgen"
  bindgen="$target/uniffi-bindgen/debug/uniffi-bindgen"
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for lang in kotlin swift python; do
  "$bindgen" generate --library "$lib" --language "$lang" --no-format \
    --out-dir "$out/$lang" >/dev/null
done
if ((check)); then
  if ! diff -ru mobile/bindings/kotlin "$out/kotlin" || ! diff -ru mobile/bindings/swift "$out/swift" \
    || ! diff -ru mobile/bindings/python "$out/python"; then
    echo "the committed bindings differ from the library's API: run mobile/bindings/generate.sh and commit" >&2
    exit 1
  fi
  echo "bindings match the library"
else
  for lang in kotlin swift python; do
    rm -rf "mobile/bindings/$lang"
    cp -r "$out/$lang" "mobile/bindings/$lang"
  done
  echo "bindings written to mobile/bindings/{kotlin,swift,python}"
fi
