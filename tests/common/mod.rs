//! Shared by the integration tests: run the real `kjump` binary on real KVM.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Whether guests can boot here. Without /dev/kvm a test skips, loudly;
/// with `KJUMP_REQUIRE_KVM=1` (set by `.ci/run`) a skip is a failure, so CI
/// can never pass by skipping.
pub fn kvm_or_skip(test: &str) -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        let msg = format!(
            "SKIPPED {test}: /dev/kvm is missing or not accessible; this test boots a guest on KVM"
        );
        if std::env::var("KJUMP_REQUIRE_KVM").as_deref() == Ok("1") {
            panic!("{msg} (KJUMP_REQUIRE_KVM=1 turns the skip into a failure)");
        }
        eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
    }
    ok
}

/// Skips the calling test with a loud line saying why; with
/// `KJUMP_REQUIRE_KVM=1` (CI) a skip is a failure instead.
pub fn skip(test: &str, why: &str) {
    let msg = format!("SKIPPED {test}: {why}");
    if std::env::var("KJUMP_REQUIRE_KVM").as_deref() == Ok("1") {
        panic!("{msg} (KJUMP_REQUIRE_KVM=1 turns the skip into a failure)");
    }
    eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
}

/// The `kjump` binary with `args`, to adjust (environment, ...) and run.
/// `KJUMP_KVM_DEVICE` is cleared: a test names the device it wants.
pub fn kjump_command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kjump"));
    c.args(args)
        .env("RUST_LOG", "warn")
        .env_remove("KJUMP_KVM_DEVICE");
    c
}

/// Runs `kjump` with `args`; returns its output.
pub fn kjump(args: &[&str]) -> Output {
    kjump_command(args).output().expect("kjump runs")
}

/// stdout and stderr as text, for assertions and for failure messages.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Asserts the exit code, printing everything the run said when it differs.
pub fn assert_exit(o: &Output, code: i32) -> (String, String) {
    let (out, err) = text(o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit status {:?}\n--- stdout\n{out}\n--- stderr\n{err}",
        o.status
    );
    (out, err)
}

/// A fresh scratch directory under the target dir.
pub fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// The expected lines `kjump diff` prints for a kernel's suspend and its
/// resume: the checkpoint's answer in rax and the TSC, nothing else.
pub fn assert_only_answer_and_tsc_expected(out: &str) {
    // xstate_bv may be expected too on hosts whose KVM reports cleared
    // components differently between checkpoints (the allowlist's reason).
    let expected: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("expected: ") && !l.starts_with("expected: xsave.xstate_bv"))
        .collect();
    assert_eq!(expected.len(), 2, "{out}");
    assert!(
        expected[0].starts_with(
            "expected: rax: 0x504d554a -> 0x4b434142 (checkpoint answer: JUMP at the suspend, BACK at the resume)"
        ),
        "{out}"
    );
    assert!(
        expected[1].starts_with("expected: msr[0x00000010] TSC: ")
            && expected[1].ends_with(
                "(the TSC counts time: it may advance while the peer kernel runs, never go back)"
            ),
        "{out}"
    );
    assert!(out.contains("registers: 0 differ\n"), "{out}");
}

/// Whether gdb runs here; without it a test skips, loudly (a failure in
/// CI, where `.ci/run` installs it).
pub fn gdb_or_skip(test: &str) -> bool {
    let ok = Command::new("gdb")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip(test, "gdb is not installed");
    }
    ok
}
