//! The Kotlin host test: the generated Kotlin bindings (`mobile/bindings/kotlin`), compiled
//! with a modern Kotlin compiler, drive the real `cohort_mobile` shared library through JNA on
//! the host JVM against a real coordinator on loopback (`tests/kotlin/HostTest.kt` says what it
//! checks). This is the code an Android app runs; only the library loading differs.
//!
//! Needs `java`, JNA (`/usr/share/java/jna.jar`, Debian's `libjna-java` and `libjna-jni`) and
//! the Kotlin compiler and standard library jars from PyPI's `kotlin-jupyter-kernel` wheel in
//! `COHORT_KOTLIN_JARS` (`.ci/run` installs all three). Without them the test prints SKIPPED,
//! or fails when `COHORT_REQUIRE_HOSTS=1` (as in CI).

mod host_common;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

fn find_jar(dir: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
}

struct Toolchain {
    compiler: PathBuf,
    stdlib: PathBuf,
    jna: PathBuf,
}

fn toolchain() -> Result<Toolchain, String> {
    let jars = std::env::var("COHORT_KOTLIN_JARS").map_err(|_| {
        "COHORT_KOTLIN_JARS is not set (the kotlin-jupyter-kernel jars)".to_string()
    })?;
    let jars = Path::new(&jars);
    let compiler = find_jar(jars, "kotlin-jupyter-kernel-", "-all.jar")
        .ok_or_else(|| format!("no kotlin-jupyter-kernel-*-all.jar in {}", jars.display()))?;
    let stdlib = find_jar(jars, "kotlin-stdlib-", ".jar")
        .ok_or_else(|| format!("no kotlin-stdlib-*.jar in {}", jars.display()))?;
    let jna = PathBuf::from(
        std::env::var("COHORT_JNA_JAR").unwrap_or_else(|_| "/usr/share/java/jna.jar".into()),
    );
    if !jna.exists() {
        return Err(format!(
            "{} is missing (apt-get install libjna-java libjna-jni)",
            jna.display()
        ));
    }
    if Command::new("java").arg("-version").output().is_err() {
        return Err("java is not installed".into());
    }
    Ok(Toolchain {
        compiler,
        stdlib,
        jna,
    })
}

#[test]
fn kotlin_host_takes_part_through_the_c_abi() {
    let tools = match toolchain() {
        Ok(t) => t,
        Err(why) if std::env::var("COHORT_REQUIRE_HOSTS").as_deref() != Ok("1") => {
            eprintln!("SKIPPED: the Kotlin host test needs a Kotlin toolchain: {why}");
            return;
        }
        Err(why) => panic!("the Kotlin host test needs a Kotlin toolchain: {why}"),
    };
    let mobile = host_common::mobile_dir();
    let sources = [
        mobile.join("bindings/kotlin/uniffi/cohort_mobile/cohort_mobile.kt"),
        mobile.join("tests/kotlin/HostTest.kt"),
    ];
    // Compiling takes most of a minute: reuse the classes while the sources are unchanged.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for s in &sources {
        std::fs::read(s).unwrap().hash(&mut hasher);
    }
    let lib = host_common::cdylib();
    let classes = lib
        .parent()
        .unwrap()
        .join(format!("kotlin-host-{:016x}", hasher.finish()));
    if !classes.join("HostTestKt.class").exists() {
        let out = Command::new("java")
            .arg("-cp")
            .arg(&tools.compiler)
            .arg("org.jetbrains.kotlin.cli.jvm.K2JVMCompiler")
            .args(["-no-stdlib", "-no-reflect", "-nowarn", "-classpath"])
            .arg(format!(
                "{}:{}",
                tools.stdlib.display(),
                tools.jna.display()
            ))
            .args(&sources)
            .arg("-d")
            .arg(&classes)
            .output()
            .expect("java runs");
        assert!(
            out.status.success(),
            "kotlinc failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let h = host_common::Harness::start();
    let mut events = h.coordinator.scheduler.subscribe();
    let mut cmd = Command::new("java");
    cmd.arg(format!(
        "-Djna.library.path={}",
        lib.parent().unwrap().display()
    ))
    .arg("-cp")
    .arg(format!(
        "{}:{}:{}",
        classes.display(),
        tools.stdlib.display(),
        tools.jna.display()
    ))
    .arg("HostTestKt");
    let out = h.run_host(cmd);
    print!("{out}");
    assert!(out.contains("kotlin host: ok"), "{out}");
    let full = h.full_rounds(&mut events, 3);
    assert!(
        full >= 3,
        "the coordinator completed {full} rounds with the Kotlin client in them"
    );
}
