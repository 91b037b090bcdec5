//! The Python host test: the generated Python bindings (`mobile/bindings/python`) load the
//! real `cohort_mobile` shared library through its C ABI and take part in a real coordinator's
//! SecAgg+ rounds on loopback, with the examples coming from a Python `ExampleSource`
//! (`tests/python/host_test.py` says what it checks: enrollment, three rounds, the device
//! unplugged and plugged in again, bad input, stop()).

mod host_common;

use std::process::Command;

#[test]
fn python_host_takes_part_through_the_c_abi() {
    let h = host_common::Harness::start();
    let mut events = h.coordinator.scheduler.subscribe();
    let dir = h.tmp.path().join("python");
    std::fs::create_dir_all(&dir).unwrap();
    let lib = host_common::cdylib();
    std::fs::copy(&lib, dir.join(lib.file_name().unwrap())).unwrap();
    let bindings = host_common::mobile_dir().join("bindings/python/cohort_mobile.py");
    std::fs::copy(&bindings, dir.join("cohort_mobile.py")).unwrap();
    let mut cmd = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
    cmd.arg(host_common::mobile_dir().join("tests/python/host_test.py"))
        .env("COHORT_BINDINGS_DIR", &dir);
    let out = h.run_host(cmd);
    print!("{out}");
    assert!(out.contains("python host: ok"), "{out}");
    let full = h.full_rounds(&mut events, 3);
    assert!(
        full >= 3,
        "the coordinator completed {full} rounds with the Python client in them"
    );
}
