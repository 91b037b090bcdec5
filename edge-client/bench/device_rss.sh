#!/usr/bin/env bash
# Peak memory of one device's round of the MNIST CNN on the CPU backend (issue 9's measure):
# four `cohort-edge run` processes, each under `/usr/bin/time -v`, train from their own image
# folder of MNIST (96 PNG images each) against a `cohort-coordinator serve` on loopback, one round of
# SecAgg+ with the consistency check, and the script prints each device's peak resident set.
#
#   cargo build --workspace --all-features        # or --release, with BIN=$target/release
#   edge-client/bench/device_rss.sh
#
# BIN: the directory holding cohort-coordinator and cohort-edge (default
# $CARGO_TARGET_DIR/debug, or target/debug); COHORT_DATASETS: the shared datasets (MNIST's IDX
# files under mnist/). Needs python3 (writes the folders) and GNU time (/usr/bin/time).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${BIN:-${CARGO_TARGET_DIR:-target}/debug}"
datasets="${COHORT_DATASETS:-../shared/datasets}"
for exe in cohort-coordinator cohort-edge; do
  [ -x "$bin/$exe" ] || { echo "$bin/$exe is missing: build the workspace first (or set BIN)" >&2; exit 1; }
done
[ -f "$datasets/mnist/train-images-idx3-ubyte.gz" ] \
  || { echo "no MNIST under $datasets/mnist (set COHORT_DATASETS)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "GNU time is missing (Debian: apt-get install time)" >&2; exit 1; }

work="$(mktemp -d)"
serve_pid=""
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT
devices=4

# Four image folders of 96 training images each (PNG, one sub-folder per digit), as the task's
# [input] declares.
python3 - "$datasets/mnist" "$work" "$devices" <<'PY'
import gzip, pathlib, struct, sys, zlib
src, out, devices = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
with gzip.open(src / "train-images-idx3-ubyte.gz") as f:
    _, n, rows, cols = struct.unpack(">IIII", f.read(16))
    pixels = f.read(rows * cols * devices * 96)
with gzip.open(src / "train-labels-idx1-ubyte.gz") as f:
    f.read(8)
    labels = f.read(devices * 96)

def png(width, height, gray):
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    raw = b"".join(b"\0" + gray[y * width:(y + 1) * width] for y in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

for d in range(devices):
    for k in range(d * 96, (d + 1) * 96):
        folder = out / f"photos-{d}" / str(labels[k])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{k:05}.png").write_bytes(png(cols, rows, pixels[k * rows * cols:(k + 1) * rows * cols]))
(out / "task.toml").write_text(f'''id = "device-rss"
rounds = 1
evaluate_every = 0

[model]
preset = "mnist_cnn"

[training]
epochs = 1
batch_size = 16
learning_rate = 0.05
optimizer = {{ kind = "sgd" }}

[selection]
clients_per_round = {devices}
over_selection = 0.0
window_secs = 2

[secagg]
max_weight = 1024

[input]
kind = "image"
labels = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
scale = 0.00392156862745098
''')
PY

state="$work/coordinator"
"$bin/cohort-coordinator" --state "$state" task create "$work/task.toml" >/dev/null
"$bin/cohort-coordinator" --state "$state" task start device-rss >/dev/null
"$bin/cohort-coordinator" --state "$state" serve --listen 127.0.0.1:0 --open-enrollment --no-http \
  > "$work/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 1 600); do
  grep -q "^listening on" "$work/serve.log" 2>/dev/null && break
  kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
  sleep 0.1
done
line="$(grep -m1 "^listening on" "$work/serve.log")" \
  || { echo "the coordinator did not start listening:" >&2; cat "$work/serve.log" >&2; exit 1; }
addr="$(echo "$line" | awk '{print $3}')"
fingerprint="$(echo "$line" | sed -E 's/.*fingerprint ([0-9a-f]+)\).*/\1/')"

export COHORT_PASSWORD="device-rss-password"
pids=()
for d in $(seq 0 $((devices - 1))); do
  "$bin/cohort-edge" --state "$work/device-$d" enroll --server "$addr" \
    --fingerprint "$fingerprint" --username "device$d" >/dev/null
  /usr/bin/time -v -o "$work/time-$d.txt" "$bin/cohort-edge" --state "$work/device-$d" run \
    --server "$addr" --data "$work/photos-$d" --rounds 1 --allow-battery \
    > "$work/device-$d.log" 2>&1 &
  pids+=($!)
done
failed=0
for d in "${!pids[@]}"; do
  if ! wait "${pids[$d]}"; then
    echo "device $d failed:" >&2
    tail -20 "$work/device-$d.log" >&2
    failed=1
  fi
done
((failed == 0)) || exit 1
echo "one round of the MNIST CNN (flex CPU backend), 96 examples a device, binaries in $bin:"
for d in $(seq 0 $((devices - 1))); do
  kib="$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time-$d.txt")"
  wall="$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/time-$d.txt")"
  printf "  device %d: peak RSS %d KiB (%s MiB), %s wall\n" "$d" "$kib" "$(awk -v k="$kib" "BEGIN { printf \"%.1f\", k / 1024 }")" "$wall"
done
