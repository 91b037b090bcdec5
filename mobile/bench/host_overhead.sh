#!/usr/bin/env bash
# What the bindings add to a device's round (issue 9's measure: "one round driven from Kotlin and
# from Python against the same round driven from Rust, same data: at most 5 % extra wall time").
#
# Runs the three host tests (mobile/tests/{rust,python,kotlin}_host.rs) REPEAT times each, in
# turn, each taking part in ROUNDS rounds of the same task (the 64-16-10 digits MLP, 2 epochs,
# batch 8) with the same EXAMPLES digits examples served by that host's ExampleSource: Rust
# through `CohortClient`'s Rust API, Python and Kotlin through the generated bindings and the C
# ABI. Every completed round reports its local training time (`Participation::Contributed`'s
# `training_ms`: training from the host's examples, the ExampleSource calls included), which is
# the part of a round where the host's code runs per batch; the rest of a round is network and
# the coordinator's timing, the same for every host. Prints the median per host and the ratio
# to Rust's, with and without each run's first rounds, and the extra training time as a share
# of a whole round (`participate_once`, timed by the Rust and Kotlin hosts; Python's test runs
# `run_until_stopped`).
#
#   cargo build --workspace --all-features --tests
#   mobile/bench/host_overhead.sh                     # ROUNDS=10 REPEAT=3 EXAMPLES=1000
#
# The Kotlin host needs what `cargo test --test kotlin_host` needs (a JRE, JNA and
# COHORT_KOTLIN_JARS; `.ci/run` sets them up); the script fails when it is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds="${ROUNDS:-10}"
repeat="${REPEAT:-3}"
examples="${EXAMPLES:-1000}"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
for ((i = 1; i <= repeat; i++)); do
  for host in rust python kotlin; do
    echo "run $i/$repeat: $host host, $rounds rounds, $examples examples" >&2
    COHORT_HOST_ROUNDS="$rounds" COHORT_HOST_EXAMPLES="$examples" COHORT_REQUIRE_HOSTS=1 \
      cargo test --quiet --workspace --all-features --test "${host}_host" -- --nocapture \
      >"$out.run" 2>&1 || { cat "$out.run" >&2; echo "the $host host failed" >&2; exit 1; }
    grep -E '^[a-z]+ host: (training per round|participate_once with a round): ' "$out.run" >>"$out" \
      || { cat "$out.run" >&2; echo "the $host host printed no training times" >&2; exit 1; }
  done
done
rm -f "$out.run"
python3 - "$out" <<'PY'
import statistics, sys

WARM_UP = 3  # rounds at the start of each run left out of the "warm" figures (JIT, caches)
training, warm, rounds = {}, {}, {}
for line in open(sys.argv[1]):
    host, rest = line.split(" host: ", 1)
    kind, values = rest.rstrip("\n").removesuffix(" ms").split(": ")
    values = [float(x) for x in values.split(", ")]
    if kind == "training per round":
        training.setdefault(host, []).extend(values)
        warm.setdefault(host, []).extend(values[WARM_UP:])
    else:
        rounds.setdefault(host, []).extend(values)
med = statistics.median
rust, rust_warm = med(training["rust"]), med(warm["rust"])
print("local training per round (ms), through each host's ExampleSource:")
print(f"{'host':<7} {'rounds':>6} {'median':>7} {'vs Rust':>8} {'warm median':>12} {'vs Rust':>8} {'min':>5}")
for host in ("rust", "python", "kotlin"):
    t, w = training[host], warm[host]
    print(f"{host:<7} {len(t):>6} {med(t):>7.1f} {(med(t) / rust - 1) * 100:>+7.1f}% "
          f"{med(w):>12.1f} {(med(w) / rust_warm - 1) * 100:>+7.1f}% {min(t):>5.0f}")
print(f"(warm: without the first {WARM_UP} rounds of each run)")
for host, r in rounds.items():
    print(f"{host} participate_once with a round: median {med(r):.0f} ms over {len(r)} rounds")
if "rust" in rounds:
    whole = med(rounds["rust"])
    for host in ("python", "kotlin"):
        extra = med(training[host]) - rust
        print(f"{host}: {extra:+.1f} ms of training, {extra / whole * 100:+.1f}% of Rust's median "
              f"round ({whole:.0f} ms)")
PY
