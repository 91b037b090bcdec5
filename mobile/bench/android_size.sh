#!/usr/bin/env bash
# The size of the library an Android app ships (jniLibs/arm64-v8a/libcohort_mobile.so), measured
# without the NDK: cohort-mobile is built for aarch64-linux-android with the `phone` profile, as
# mobile/README.md tells apps to, with Debian's clang as ring's C compiler and rust-lld as the
# linker against empty stub libraries in place of Android's libc, libm, libdl, liblog and
# libunwind. The result has every symbol an app's copy has but is not loadable (its libc imports
# name no library, and the NDK's static libunwind, about 0.1 MB, is missing): a size, not a build
# to run.
#
#   mobile/bench/android_size.sh        # CARGO_TARGET_DIR as usual; about 12 to 35 minutes cold
#
# Needs: `rustup target add aarch64-linux-android`, clang and llvm-ar (Debian: clang, llvm).
set -euo pipefail
cd "$(dirname "$0")/../.."
rustup target list --installed | grep -qx aarch64-linux-android \
  || { echo "the aarch64-linux-android target is missing: rustup target add aarch64-linux-android" >&2; exit 1; }
command -v clang >/dev/null && command -v llvm-ar >/dev/null \
  || { echo "clang and llvm-ar are missing (Debian: apt-get install clang llvm)" >&2; exit 1; }
lld="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/rust-lld"
[ -x "$lld" ] || { echo "rust-lld is missing beside rustc ($lld)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/stubs"
ln -s "$lld" "$work/bin/ld.lld"   # lld takes its flavour from its name
: >"$work/empty.c"
for lib in c m dl log unwind gcc; do
  PATH="$work/bin:$PATH" clang --target=aarch64-linux-android21 -fuse-ld=lld -shared -nostdlib \
    -Wl,-soname,"lib$lib.so" -o "$work/stubs/lib$lib.so" "$work/empty.c"
done
# The name tells rustc that this is a C compiler driver (it passes linker options as -Wl,...).
cat >"$work/aarch64-linux-android-clang" <<EOF
#!/bin/sh
exec env PATH="$work/bin:\$PATH" clang --target=aarch64-linux-android21 -fuse-ld=lld -nostdlib -L"$work/stubs" "\$@"
EOF
chmod +x "$work/aarch64-linux-android-clang"

target="${CARGO_TARGET_DIR:-target}"
CC_aarch64_linux_android=clang AR_aarch64_linux_android=llvm-ar \
CFLAGS_aarch64_linux_android="--target=aarch64-linux-android21 -nostdlibinc -DRING_CORE_NOSTDLIBINC=1" \
CARGO_TARGET_AARCH64_LINUX_ANDROID_LINKER="$work/aarch64-linux-android-clang" \
  cargo rustc --profile phone -p cohort-mobile --no-default-features --lib --crate-type cdylib \
  --target aarch64-linux-android
so="$target/aarch64-linux-android/phone/libcohort_mobile.so"
exports=$(llvm-nm -D --defined-only "$so" | grep -c ' uniffi_cohort_mobile_' || true)
echo "$so: $(stat -c %s "$so") bytes (stripped; $exports uniffi_cohort_mobile_ exports)"
