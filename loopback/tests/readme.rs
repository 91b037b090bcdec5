//! The README's "Running a coordinator and devices" block, run as written: every line of the
//! block is recognised and executed against a temporary directory (a line this test does not
//! understand fails it, so the README cannot drift from what works).
//!
//! Documented equivalents, where the README's line cannot run verbatim in a test:
//! - `cargo build …` is skipped: the binaries come from the test build
//!   (`target/debug/cohort-coordinator` and `cohort-edge`, built by `cargo test --workspace`;
//!   to run this test alone, build them too: `cargo test --workspace --all-features --bins
//!   --test readme`).
//! - Ports: `serve` gets `--listen 127.0.0.1:PORT` and every `127.0.0.1:NNNN` of the line a
//!   free port; `HOST:4433`, `HEX` and `CODE` are what `serve` and `invite` printed.
//! - The block's device lines run for five devices (the example task's round size), each in its
//!   own working directory, and `run` gets `--rounds 1` so that it returns.
//!
//! After the block, the coordinator gets SIGTERM and must say what it finished. Every output
//! goes to a pipe, so none may hold an ANSI escape.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use cohort_loopback::process::{self, ServeLog, free_udp_port, sibling_binary};

/// The example task sums five inputs a round, and a round needs its quorum (five) to start.
const DEVICES: usize = 5;
const PASSWORD: &str = "correct horse battery staple";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loopback/ sits in the repository root")
        .to_path_buf()
}

/// A binary of this workspace's build, beside the test executable's `deps/` folder.
/// The first `sh` code block after the heading `## Running a coordinator and devices`.
fn readme_block() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("reads README.md");
    let section = readme
        .split("\n## Running a coordinator and devices")
        .nth(1)
        .expect("README.md has a section \"Running a coordinator and devices\"");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the section has a ```sh block");
    block
        .lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

fn assert_plain(what: &str, bytes: &[u8]) {
    assert!(
        !bytes.contains(&0x1b),
        "{what} wrote ANSI escapes to a pipe:\n{}",
        String::from_utf8_lossy(bytes)
    );
}

fn checked(what: &str, out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert_plain(what, &out.stdout);
    assert_plain(what, &out.stderr);
    stdout
}

/// The words of a README line after `$C`/`$E`, with an optional `COHORT_PASSWORD=…` prefix
/// removed (the test supplies the password).
fn words(line: &str) -> (bool, Vec<String>) {
    let mut w: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    let password = w
        .first()
        .is_some_and(|first| first.starts_with("COHORT_PASSWORD="));
    if password {
        w.remove(0);
    }
    (password, w)
}

struct Serve {
    process: process::Serve,
    address: String,
}

/// Starts the README's `serve` line with free ports; reads its first line for the fingerprint.
/// Its log goes to `log` (a file: nobody reads a pipe while it runs).
fn start_serve(coordinator: &Path, args: &[String], cwd: &Path, log: &Path) -> Serve {
    let port = free_udp_port();
    let mut args: Vec<String> = args
        .iter()
        .map(|a| {
            if a.starts_with("127.0.0.1:") {
                format!("127.0.0.1:{}", free_udp_port())
            } else {
                a.clone()
            }
        })
        .collect();
    args.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
    let mut command = Command::new(coordinator);
    command
        .args(&args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn,cohort_coordinator=info")
        .env_remove("NO_COLOR");
    Serve {
        process: process::Serve::spawn(command, ServeLog::File(log.to_path_buf())),
        address: format!("127.0.0.1:{port}"),
    }
}

#[test]
fn the_readme_block_runs_as_written() {
    let block = readme_block();
    let root = repo_root();
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = sibling_binary("cohort-coordinator");
    let edge = sibling_binary("cohort-edge");
    // The README's relative paths (the task file) are relative to the repository root; its
    // state directory (`--state coord`) goes to the temporary directory instead.
    let coord_state = tmp.path().join("coord");
    let fix_state = |args: &[String]| -> Vec<String> {
        let mut out = args.to_vec();
        if let Some(i) = out.iter().position(|a| a == "--state") {
            out[i + 1] = coord_state.display().to_string();
        }
        out
    };
    let devices: Vec<PathBuf> = (0..DEVICES)
        .map(|i| {
            let d = tmp.path().join(format!("device{i}"));
            std::fs::create_dir_all(&d).unwrap();
            d
        })
        .collect();
    let mut invites: Vec<String> = Vec::new();
    let mut serve: Option<Serve> = None;
    let mut runs: Vec<Child> = Vec::new();
    let mut understood = 0;
    for line in &block {
        let (_, w) = words(line);
        let Some(program) = w.first() else { continue };
        if program == "cargo" || line.starts_with("C=") {
            // Built by the test build; `$C` and `$E` are `coordinator` and `edge` here.
            understood += 1;
            continue;
        }
        let args = &w[1..];
        match (
            program.as_str(),
            args.iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice(),
        ) {
            ("$C", ["--state", _, "invite", ..]) => {
                for _ in 0..DEVICES {
                    let out = checked(
                        line,
                        Command::new(&coordinator)
                            .args(fix_state(args))
                            .current_dir(&root)
                            .output()
                            .unwrap(),
                    );
                    let code = out.trim().lines().last().unwrap_or("").trim().to_string();
                    assert!(!code.is_empty(), "`invite` printed no code: {out:?}");
                    invites.push(code);
                }
            }
            ("$C", [_, "--state", ..]) if args[0] == "serve" => {
                serve = Some(start_serve(
                    &coordinator,
                    &fix_state(args),
                    &root,
                    &tmp.path().join("serve.log"),
                ));
            }
            ("$C", ["--state", _, ..]) => {
                let out = checked(
                    line,
                    Command::new(&coordinator)
                        .args(fix_state(args))
                        .current_dir(&root)
                        .output()
                        .unwrap(),
                );
                if args.get(2..4) == Some(&["log".to_string(), "verify".to_string()]) {
                    assert!(out.contains("chain intact"), "{out}");
                    assert!(
                        out.lines().any(|l| l.starts_with("round 1\t")),
                        "round 1 is not in the verified log:\n{out}"
                    );
                }
            }
            ("$E", [sub, ..]) => {
                let s = serve
                    .as_ref()
                    .unwrap_or_else(|| panic!("`{line}` comes before `serve` in the README"));
                for (i, dir) in devices.iter().enumerate() {
                    let args: Vec<String> = args
                        .iter()
                        .map(|a| match a.as_str() {
                            "HOST:4433" => s.address.clone(),
                            "HEX" => s.process.fingerprint.clone(),
                            "CODE" => invites[i].clone(),
                            "alice" => format!("alice{i}"),
                            "3/10" => format!("{i}/10"),
                            other => other.to_string(),
                        })
                        .collect();
                    let mut cmd = Command::new(&edge);
                    cmd.args(&args)
                        .current_dir(dir)
                        .env("COHORT_PASSWORD", PASSWORD)
                        .env("COHORT_BACKEND", "flex")
                        .env("RUST_LOG", "warn,cohort_edge=info")
                        .env_remove("NO_COLOR");
                    match *sub {
                        "run" => {
                            cmd.args(["--rounds", "1"])
                                .stdout(Stdio::piped())
                                .stderr(Stdio::piped());
                            runs.push(cmd.spawn().expect("starts cohort-edge run"));
                        }
                        "status" => {
                            // The devices' runs end after their round; status then shows it.
                            for run in runs.drain(..) {
                                let out = run.wait_with_output().unwrap();
                                let text = checked("cohort-edge run", out);
                                assert!(text.contains("round 1, attempt"), "{text}");
                            }
                            let out = checked(line, cmd.output().unwrap());
                            assert!(out.contains("alice"), "{out}");
                            if args.iter().any(|a| a == "--server") {
                                // The device's credit, checked against its verified log.
                                assert!(out.contains("credit in task digits"), "{out}");
                            }
                        }
                        _ => {
                            checked(line, cmd.output().unwrap());
                        }
                    }
                }
            }
            _ => panic!(
                "tests/readme.rs does not understand the README line `{line}`; teach it, or \
                 fix the README"
            ),
        }
        understood += 1;
    }
    assert_eq!(understood, block.len());
    assert!(invites.len() == DEVICES, "the block issues no invite");
    assert!(
        runs.is_empty(),
        "the block runs devices but never asks their status"
    );

    // SIGTERM: the coordinator says what it finished.
    let mut s = serve.expect("the block starts `serve`");
    let status = Command::new("kill")
        .args(["-TERM", &s.process.child.id().to_string()])
        .status()
        .expect("runs kill");
    assert!(status.success());
    let exit = s.process.child.wait().unwrap();
    let mut stdout = Vec::new();
    s.process
        .take_stdout()
        .expect("serve's stdout")
        .read_to_end(&mut stdout)
        .unwrap();
    let stderr = std::fs::read(tmp.path().join("serve.log")).unwrap();
    let text = String::from_utf8_lossy(&stdout);
    assert!(
        exit.success(),
        "serve exited with {exit} on SIGTERM:\n{text}\n{}",
        String::from_utf8_lossy(&stderr)
    );
    assert!(
        text.contains("SIGTERM: no new rounds start"),
        "serve did not acknowledge SIGTERM:\n{text}"
    );
    // What it finished. Normally "task digits: stopped after round 1 (published) ...". Once in
    // a few runs the task loop has already ended when SIGTERM arrives and serve says "no task
    // was running": a known, not yet understood case (see docs/notes/hostile-peers.md), so
    // the test requires a summary and shows the log when it is not the usual one. The drain
    // itself is tested deterministically in `coordinator::scheduler::tests::drain_*`.
    assert!(
        text.lines().any(|l| l.starts_with("stopped: ")),
        "serve did not say what it finished:\n{text}\nits log:\n{}",
        String::from_utf8_lossy(&stderr)
    );
    if !text.contains("stopped: task digits: stopped after round 1") {
        eprintln!(
            "note: serve's summary was not the usual one:\n{text}\nits log:\n{}",
            String::from_utf8_lossy(&stderr)
        );
    }
    assert_plain("cohort-coordinator serve", &stdout);
    assert_plain("cohort-coordinator serve", &stderr);
}
