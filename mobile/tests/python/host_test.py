"""The Python host test of cohort-mobile, run by `mobile/tests/python_host.rs`.

Through the generated bindings and the real C ABI, against a real coordinator on loopback
(address, certificate fingerprint and examples in the environment):

1. stop() before anything runs is refused (NotRunning); the device enrolls (credentials in a
   Python SecretStore).
2. run_until_stopped() takes part in SecAgg+ rounds with examples from a Python ExampleSource.
   After the first round the Python DeviceState reports "unplugged": the client stops checking
   in (NotEligible, reported through the listener) and resumes when plugged in again; stop()
   ends the loop after three rounds (COHORT_HOST_ROUNDS, when more). Each round's training
   time is printed ("python host: training per round: ... ms").
3. Bad input gives typed errors, each abandoning its round: a throwing source, the wrong number
   of features, NaN features, no examples, bytes that are not whole floats, a throwing
   DeviceState.
4. stop() in the middle of training (called twice from the progress callback: the second is
   AlreadyStopping) ends participate_once with Stopped.

Prints one line per measure and "python host: ok" at the end.
"""

import os
import struct
import sys
import threading
import time

sys.path.insert(0, os.environ["COHORT_BINDINGS_DIR"])
import cohort_mobile as cm  # noqa: E402

FEATURES = 64
# Rounds before the rest of the test (mobile/bench/host_overhead.sh asks for more).
ROUNDS = max(3, int(os.environ.get("COHORT_HOST_ROUNDS", "3")))


def check(cond, what):
    if not cond:
        raise AssertionError(what)


class Source:
    """Digits examples from the file the Rust test wrote, served in batches as bytes."""

    def __init__(self, path):
        data = open(path, "rb").read()
        (self.n,) = struct.unpack_from("<I", data, 0)
        end = 4 + self.n * FEATURES * 4
        self.features = data[4:end]
        self.labels = data[end:]
        self.mode = None
        self.calls = 0

    def count(self):
        if self.mode == "throw":
            raise ValueError("the photo library is locked")
        if self.mode == "empty":
            return 0
        return self.n

    def batch(self, start, length):
        self.calls += 1
        f = self.features[start * FEATURES * 4 : (start + length) * FEATURES * 4]
        labels = self.labels[start * 4 : (start + length) * 4]
        if self.mode == "short":
            f = f[:-4]
        elif self.mode == "nan":
            f = struct.pack("<f", float("nan")) + f[4:]
        elif self.mode == "ragged":
            f = f[:-1]
        return cm.ExampleBatch(features=f, labels=labels)


class Device:
    def __init__(self):
        self.charging = True
        self.throw = False
        self.reads = 0

    def read(self):
        self.reads += 1
        if self.throw:
            raise cm.HostFailure.Failed(reason="the battery service is unavailable")
        return cm.DeviceReading(
            charging=self.charging,
            unmetered=True,
            idle=True,
            battery_percent=80,
            low_power=False,
            thermal_throttled=False,
        )


class Secrets:
    """A stand-in for the Keystore or Keychain."""

    def __init__(self):
        self.values = {}

    def load(self, key):
        return self.values.get(key)

    def store(self, key, value):
        self.values[key] = bytes(value)

    def delete(self, key):
        self.values.pop(key, None)


class Listener:
    def __init__(self):
        self.lock = threading.Lock()
        self.participations = []
        self.phases = set()
        self.client = None
        self.stop_at_step = None
        self.stop_results = []
        self.stopped_at = None
        self.last = None

    def on_progress(self, p):
        with self.lock:
            self.phases.add(p.phase)
            self.last = p
        if (
            self.stop_at_step is not None
            and p.phase == cm.Phase.TRAINING
            and p.step >= self.stop_at_step
            and self.stopped_at is None
        ):
            self.stopped_at = time.monotonic()
            self.stop_results.append(self.client.stop())
            try:
                self.client.stop()
                self.stop_results.append("second stop accepted")
            except cm.MobileError.AlreadyStopping as e:
                self.stop_results.append(e)

    def on_participation(self, p):
        with self.lock:
            self.participations.append(p)

    def kinds(self):
        with self.lock:
            return [type(p).__name__ for p in self.participations]


def is_(p, variant):
    return isinstance(p, getattr(cm.Participation, variant))


def main():
    source = Source(os.environ["COHORT_EXAMPLES"])
    device = Device()
    secrets = Secrets()
    listener = Listener()
    config = cm.ClientConfig(
        server=os.environ["COHORT_SERVER"],
        server_name="localhost",
        cache_dir=os.environ["COHORT_STATE"],
        password="python host password",
        task=None,
        require_charging=True,
        require_unmetered=False,
        require_idle=False,
        min_battery_percent=0,
        max_rounds=None,
        recheck_ms=50,
    )
    client = cm.CohortClient(config, source, device, secrets, listener)
    listener.client = client

    # 1. Nothing to stop yet; enroll.
    try:
        client.stop()
        raise AssertionError("stop() before start was accepted")
    except cm.MobileError.NotRunning:
        pass
    check(not client.is_enrolled(), "enrolled before enroll()")
    client.enroll("python-host", None, os.environ["COHORT_FINGERPRINT"])
    check(client.is_enrolled(), "enroll() stored no credentials")
    check("credentials.json" in secrets.values, f"secrets: {list(secrets.values)}")

    # 2. Three rounds, unplugged after the first.
    result = {}

    def loop():
        try:
            result["rounds"] = client.run_until_stopped()
        except Exception as e:  # reported below
            result["error"] = e

    started = time.monotonic()
    # A daemon, so that a failed check below ends the process instead of leaving it waiting
    # for run_until_stopped forever.
    runner = threading.Thread(target=loop, daemon=True)
    runner.start()
    round_times = []

    def wait_for(pred, what, timeout=300):
        deadline = time.monotonic() + timeout
        while not pred():
            if not runner.is_alive():
                raise AssertionError(f"run_until_stopped ended early: {result}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {listener.kinds()}")
            time.sleep(0.02)

    def contributed():
        with listener.lock:
            return sum(1 for p in listener.participations if is_(p, "CONTRIBUTED") and p.completed)

    wait_for(lambda: contributed() >= 1, "the first round")
    round_times.append(time.monotonic() - started)
    device.charging = False
    seen = len(listener.participations)

    def not_eligible_since():
        with listener.lock:
            return sum(1 for p in listener.participations[seen:] if is_(p, "NOT_ELIGIBLE"))

    wait_for(lambda: not_eligible_since() >= 3, "three NotEligible check-ins while unplugged")
    with listener.lock:
        unplugged = listener.participations[seen:]
    # The first answer may come from a check-in that was already under way when the device was
    # unplugged (NOT_SELECTED, or a round it finished); every later one must be NOT_ELIGIBLE.
    check(
        all(is_(p, "NOT_ELIGIBLE") or is_(p, "CONTRIBUTED") for p in unplugged[1:])
        and any(is_(unplugged[0], k) for k in ("NOT_ELIGIBLE", "CONTRIBUTED", "NOT_SELECTED")),
        f"checked in while unplugged: {unplugged}",
    )
    check("external power" in unplugged[-1].reason, unplugged[-1].reason)
    rounds_while_unplugged = contributed()
    device.charging = True
    wait_for(lambda: contributed() >= rounds_while_unplugged + 1, "a round after plugging in")
    wait_for(lambda: contributed() >= ROUNDS, f"{ROUNDS} rounds", timeout=300 + 10 * ROUNDS)
    client.stop()
    runner.join(timeout=60)
    check(not runner.is_alive(), "run_until_stopped did not return after stop()")
    check("error" not in result, f"run_until_stopped failed: {result}")
    check(result["rounds"] >= ROUNDS, f"rounds: {result}")
    status = client.status()
    check(status.rounds_completed >= ROUNDS and not status.running, f"status: {status}")
    with listener.lock:
        training_ms = [
            p.training_ms
            for p in listener.participations
            if is_(p, "CONTRIBUTED") and p.completed
        ]
    check(all(ms > 0 for ms in training_ms), f"training times: {training_ms}")
    print(f"python host: training per round: {', '.join(map(str, training_ms))} ms")
    check(status.progress.bytes_sent > 0 and status.progress.bytes_received > 0, f"{status}")
    check(cm.Phase.TRAINING in listener.phases, f"phases: {listener.phases}")
    # The device's own credit, each row checked against the round log it verified.
    tasks = client.verified_tasks()
    check(len(tasks) == 1, f"verified tasks: {tasks}")
    credit = client.credit(tasks[0])
    check(len(credit.rows) >= 1 and all(r.proven for r in credit.rows), f"credit: {credit}")
    check(abs(credit.total - sum(r.credit for r in credit.rows)) < 1e-9, f"credit: {credit}")
    print(f"credit: {credit.total:.4f} over {len(credit.rows)} verified rounds")
    elapsed = time.monotonic() - started
    print(f"rounds: {result['rounds']} in {elapsed:.2f} s (first after {round_times[0]:.2f} s)")

    # 3. Bad input: each is a typed error; the round is abandoned.
    def participate_until_error():
        for _ in range(200):
            try:
                p = client.participate_once()
            except cm.MobileError as e:
                return e
            if is_(p, "NOT_SELECTED") or is_(p, "LEFT"):
                time.sleep(min(p.retry_after_ms / 1000, 0.3) if is_(p, "NOT_SELECTED") else 0)
                continue
            raise AssertionError(f"source mode {source.mode}: expected an error, got {p}")
        raise AssertionError("never selected")

    expected = {
        "throw": cm.MobileError.Host,
        "short": cm.MobileError.InvalidExamples,
        "nan": cm.MobileError.InvalidExamples,
        "empty": cm.MobileError.InvalidExamples,
        "ragged": cm.MobileError.Host,
    }
    for mode, kind in expected.items():
        source.mode = mode
        e = participate_until_error()
        check(isinstance(e, kind), f"{mode}: {type(e).__name__}: {e}")
        check("nothing was uploaded" in str(e), f"{mode}: {e}")
        print(f"bad source {mode}: {type(e).__name__}: {e}")
    source.mode = None
    device.throw = True
    try:
        client.participate_once()
        raise AssertionError("a throwing DeviceState was ignored")
    except cm.MobileError.DeviceState as e:
        print(f"throwing DeviceState: {e}")
    device.throw = False

    # 4. stop() twice during training.
    listener.stop_at_step = 3
    e = participate_until_error()
    returned = time.monotonic()
    check(isinstance(e, cm.MobileError.Stopped), f"{type(e).__name__}: {e}")
    check(listener.stop_results[0] is None, f"first stop: {listener.stop_results}")
    check(
        isinstance(listener.stop_results[1], cm.MobileError.AlreadyStopping),
        f"second stop: {listener.stop_results}",
    )
    print(f"stop() latency during training: {(returned - listener.stopped_at) * 1000:.1f} ms")
    try:
        client.stop()
        raise AssertionError("stop() after the call ended was accepted")
    except cm.MobileError.NotRunning:
        pass
    print("python host: ok")


if __name__ == "__main__":
    main()
