//! Hostile files: outputs that are devices, FIFOs or directories, inputs
//! that never end. Nothing is replaced, nothing is read without bound, and
//! a bad path is one line and exit code 2 before any guest boots.

mod common;
use common::{assert_exit, kjump, kvm_or_skip, scratch};

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kjump_core::report::{Report, Verdict};

/// A named pipe at `dir/name`.
fn fifo(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path, which outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    p
}

fn is_fifo(p: &Path) -> bool {
    std::fs::metadata(p).unwrap().file_type().is_fifo()
}

/// Asserts a refusal before any guest ran: exit code 2, nothing on stdout,
/// one line on stderr holding `says`, within a few seconds.
fn refused(args: &[&str], says: &str) -> String {
    let t = Instant::now();
    let (out, err) = assert_exit(&kjump(args), 2);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(out, "", "a guest ran: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("kjump: error: ") && err.contains(says),
        "{err}"
    );
    err
}

#[test]
fn a_report_to_dev_null_is_written_through_not_replaced() {
    if !kvm_or_skip("a_report_to_dev_null_is_written_through_not_replaced") {
        return;
    }
    assert_exit(&kjump(&["--cycles", "1", "--report", "/dev/null"]), 0);
    let m = std::fs::metadata("/dev/null").unwrap();
    assert!(m.file_type().is_char_device(), "/dev/null was replaced");
}

#[test]
fn a_report_to_a_fifo_goes_to_its_reader() {
    if !kvm_or_skip("a_report_to_a_fifo_goes_to_its_reader") {
        return;
    }
    let d = scratch("report-fifo");
    let p = fifo(&d, "report.pipe");
    // A reader waiting in open() is a reader: kjump's write goes through.
    let reader = {
        let p = p.clone();
        std::thread::spawn(move || std::fs::read_to_string(p).unwrap())
    };
    assert_exit(
        &kjump(&["--cycles", "1", "--report", p.to_str().unwrap()]),
        0,
    );
    let r = Report::from_json(&reader.join().unwrap()).expect("the report came through");
    assert_eq!((r.verdict, r.cycles_completed), (Verdict::Pass, 1));
    assert!(is_fifo(&p), "the FIFO was replaced");
}

#[test]
fn a_report_to_a_fifo_nobody_reads_is_a_clear_error() {
    if !kvm_or_skip("a_report_to_a_fifo_nobody_reads_is_a_clear_error") {
        return;
    }
    let d = scratch("report-fifo-no-reader");
    let p = fifo(&d, "report.pipe");
    let (_, err) = assert_exit(
        &kjump(&["--cycles", "1", "--report", p.to_str().unwrap()]),
        2,
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("is a FIFO that no process reads"), "{err}");
    assert!(is_fifo(&p), "the FIFO was replaced");
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1, "stray files");
}

#[test]
fn a_report_path_that_cannot_be_written_is_refused_before_the_run() {
    let d = scratch("report-bad");
    refused(
        &["--report", d.to_str().unwrap()],
        "is a directory; kjump writes regular files, character devices and FIFOs only",
    );
    // procfs takes no new file, even from root: found before the guest boots.
    refused(
        &["--report", "/proc/kjump-report.json"],
        "cannot write --report /proc/kjump-report.json: cannot create a file in /proc",
    );
    refused(
        &["--report", d.join("no/such/dir/r.json").to_str().unwrap()],
        "no/such/dir",
    );
}

#[test]
fn kernels_and_initramfs_that_never_end_are_refused_quickly() {
    let d = scratch("input-fifo");
    let p = fifo(&d, "kernel.pipe");
    let pipe = p.to_str().unwrap();
    for opt in ["--kernel", "--initramfs"] {
        refused(
            &[opt, "/dev/zero"],
            "/dev/zero is not a regular file (a character device)",
        );
        // Opening a FIFO for reading would wait for a writer forever.
        refused(&[opt, pipe], "is not a regular file (a FIFO)");
    }
    // Larger than guest RAM: refused from its size, before it is read.
    let big = d.join("big.elf");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(65 << 20).unwrap();
    refused(
        &["--mem", "64M", "--kernel", big.to_str().unwrap()],
        "is 68157440 bytes, more than guest RAM (--mem 64M) can hold",
    );
    // A dump that is a FIFO or a device is not opened either.
    refused(&["inspect", pipe], "is not a regular file (a FIFO)");
    refused(
        &["diff", pipe, "/dev/zero"],
        "is not a regular file (a FIFO)",
    );
    refused(&["resume", "/dev/zero"], "(a character device)");
    assert!(is_fifo(&p));
}

#[test]
fn diff_and_resume_refuse_a_kernel_that_never_ends() {
    if !kvm_or_skip("diff_and_resume_refuse_a_kernel_that_never_ends") {
        return;
    }
    let d = scratch("dump-kernel-fifo");
    let dumps = d.join("dumps");
    assert_exit(
        &kjump(&[
            "--cycles",
            "2",
            "--inject",
            "flip-a@2",
            "--dump-dir",
            dumps.to_str().unwrap(),
        ]),
        1,
    );
    let left = dumps.join("c00002-00003-a-suspend-left.core");
    let found = dumps.join("c00002-00006-a-resume-found.core");
    let (l, f) = (left.to_str().unwrap(), found.to_str().unwrap());
    let p = fifo(&d, "kernel.pipe");
    let pipe = p.to_str().unwrap();
    for k in [pipe, "/dev/zero"] {
        refused(&["diff", l, f, "--kernel", k], "cannot read the kernel: ");
        refused(&["resume", f, "--kernel", k], "cannot read the kernel: ");
    }
    // Larger than the dumps' RAM (256 MiB): refused from its size.
    let big = d.join("big.elf");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(257 << 20)
        .unwrap();
    refused(
        &["diff", l, f, "--kernel", big.to_str().unwrap()],
        "more than the dumps' guest RAM can hold",
    );
    assert!(is_fifo(&p));
}

#[test]
fn kjump_kernel_writes_through_devices_and_refuses_directories() {
    assert_exit(&kjump(&["kernel", "/dev/null"]), 0);
    assert!(
        std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
    let d = scratch("kernel-out");
    let (_, err) = assert_exit(&kjump(&["kernel", d.to_str().unwrap()]), 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("is a directory"), "{err}");
    let k = d.join("k.elf");
    assert_exit(&kjump(&["kernel", k.to_str().unwrap()]), 0);
    assert_eq!(std::fs::read(&k).unwrap(), kjump::DEFAULT_KERNEL);
}

#[test]
fn stale_temporary_files_in_the_dump_dir_are_removed_at_start() {
    if !kvm_or_skip("stale_temporary_files_in_the_dump_dir_are_removed_at_start") {
        return;
    }
    let d = scratch("stale-temps");
    // A dump being written by a run that was killed (no such PID).
    let stale = d.join(".c00001-00000-a-suspend.core.kjump-tmp-2147483632-0");
    std::fs::write(&stale, b"half a dump").unwrap();
    let keep = d.join("notes.txt");
    std::fs::write(&keep, b"mine").unwrap();
    assert_exit(
        &kjump(&["--cycles", "1", "--dump-dir", d.to_str().unwrap()]),
        0,
    );
    assert!(!stale.exists(), "the stale temporary file is still there");
    assert!(keep.exists());
}

// ------------------------------------------------------ hostile guests

/// No raw terminal control from the guest reaches kjump's output.
fn assert_no_terminal_controls(text: &str) {
    for c in ['\x1b', '\x07', '\r', '\u{9b}'] {
        assert!(!text.contains(c), "{c:?} reached the output:\n{text}");
    }
}

#[test]
fn a_guest_that_only_talks_is_stopped_by_the_watchdog_and_printed_escaped() {
    if !kvm_or_skip("a_guest_that_only_talks_is_stopped_by_the_watchdog_and_printed_escaped") {
        return;
    }
    let t = Instant::now();
    // The flood: hello, log and progress messages and console lines that
    // try to clear the screen, set the title and forge a verdict, forever.
    // With the guest's messages logged (the tests' RUST_LOG=warn would
    // hide them).
    let o = common::kjump_command(&[
        "--scenario",
        "boot",
        "--timeout",
        "2",
        "--append",
        "kjump.fault=flood",
    ])
    .env("RUST_LOG", "info")
    .output()
    .unwrap();
    let (out, err) = assert_exit(&o, 2);
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    let first = err
        .lines()
        .find(|l| l.starts_with("kjump: error: "))
        .unwrap();
    assert!(
        first.contains("guest a: hung: no progress for 2 s (watchdog)"),
        "{err}"
    );
    assert_no_terminal_controls(&out);
    assert_no_terminal_controls(&err);
    // The guest's text, escaped, and no forged verdict line.
    let console = out
        .lines()
        .filter(|l| l.starts_with("[a] \\x1b[2J"))
        .count();
    assert!(console > 100, "{console} console lines:\n{out}");
    // (A carriage return never reaches the terminal: the console drops it.)
    assert!(
        out.contains("[a] \\x1b[2J\\x1b]0;kjump-owned\\x07kjump: ping-pong: pass #0"),
        "{out}"
    );
    assert!(!out.lines().any(|l| l.starts_with("kjump: ")), "{out}");
    // The log is rate-limited: each console line came with three messages,
    // few of which were logged.
    let logged = err
        .lines()
        .filter(|l| l.starts_with("kjump: info: [a] "))
        .count();
    assert!(
        logged < 300 && logged < console,
        "{logged} of {} logged",
        3 * console
    );
    assert!(
        err.contains("harness messages not logged (rate limit)"),
        "{err}"
    );
}

#[test]
fn max_time_ends_a_run_that_goes_on() {
    if !kvm_or_skip("max_time_ends_a_run_that_goes_on") {
        return;
    }
    let d = scratch("max-time");
    let report = d.join("r.json");
    let t = Instant::now();
    let (_, err) = assert_exit(
        &kjump(&[
            "--cycles",
            "1000000",
            "--max-time",
            "3",
            "--report",
            report.to_str().unwrap(),
        ]),
        2,
    );
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert!(
        err.contains("stopped at the run's time limit of 3 s (--max-time)"),
        "{err}"
    );
    let r = Report::from_json(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!((r.verdict, r.exit_code), (Verdict::Error, 2));
    assert!(r.cycles_completed > 0 && !r.checkpoints.is_empty(), "{r:?}");
}

#[test]
fn a_flood_in_b_is_blamed_on_b_and_the_report_keeps_the_progress() {
    if !kvm_or_skip("a_flood_in_b_is_blamed_on_b_and_the_report_keeps_the_progress") {
        return;
    }
    let d = scratch("flood-b");
    let report = d.join("r.json");
    let r = report.to_str().unwrap();
    let (out, err) = assert_exit(
        &kjump(&[
            "--cycles",
            "3",
            "--timeout",
            "2",
            "--inject",
            "b:flood@2",
            "--report",
            r,
        ]),
        2,
    );
    assert!(
        err.starts_with("kjump: error: guest b: hung: no progress for 2 s (watchdog)"),
        "{err}"
    );
    let rep = Report::from_json(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!((rep.verdict, rep.exit_code), (Verdict::Error, 2));
    assert_eq!(rep.failed_kernel.as_deref(), Some("b"));
    // Cycle 1 completed; in cycle 2 A suspended and B resumed (#3, #4),
    // then B flooded.
    assert_eq!(rep.cycles_completed, 1);
    let seen: Vec<(u64, &str, &str)> = rep
        .checkpoints
        .iter()
        .map(|c| (c.index, c.kernel.as_str(), c.direction.as_str()))
        .collect();
    assert_eq!(seen.last(), Some(&(4, "b", "resume")), "{seen:?}");
    assert_eq!(seen.len(), 5);
    assert!(rep.error.as_deref().unwrap().starts_with("guest b: hung"));
    // The terminal says how far the run got and where its report is.
    let tail: Vec<&str> = out.lines().rev().take(2).collect();
    assert!(
        tail[1].starts_with("kjump: ping-pong: ERROR (kernel b, 1 of 3 cycles, 5 checkpoints, "),
        "{out}"
    );
    assert_eq!(tail[0], format!("report: {r}"));
    assert_no_terminal_controls(&out);
}

/// Starts a long run with a report, lets it get going, sends `signal`.
fn interrupted(name: &str, signal: libc::c_int) -> (String, Report) {
    let d = scratch(name);
    let report = d.join("r.json");
    let child =
        common::kjump_command(&["--cycles", "1000000", "--report", report.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: kill() sends a signal to our own child, which is alive (it
    // has not been waited for).
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let o = child.wait_with_output().unwrap();
    let (_, err) = assert_exit(&o, 2);
    let r = Report::from_json(&std::fs::read_to_string(&report).unwrap()).unwrap();
    (err, r)
}

#[test]
fn an_interrupted_run_reports_what_it_completed() {
    if !kvm_or_skip("an_interrupted_run_reports_what_it_completed") {
        return;
    }
    for (signal, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        let (err, r) = interrupted(&format!("interrupted-{name}"), signal);
        assert!(
            err.starts_with("kjump: error: guest ")
                && err.contains(&format!("run interrupted by {name}")),
            "{err}"
        );
        assert_eq!((r.verdict, r.exit_code), (Verdict::Error, 2));
        assert!(
            r.cycles_completed >= 1,
            "{name}: {} cycles",
            r.cycles_completed
        );
        // Every completed cycle's checkpoints are there (3, then 4 a cycle).
        let n = r.checkpoints.len() as u64;
        assert!(
            n >= 3 + 4 * (r.cycles_completed - 1),
            "{name}: {n} checkpoints"
        );
        assert!(
            matches!(r.failed_kernel.as_deref(), Some("a" | "b")),
            "{name}: {:?}",
            r.failed_kernel
        );
        assert!(r.error.unwrap().contains(name));
    }
}

/// timeout(1) signals kjump and then its process group: one request read
/// twice must not be taken for a user's second ^C.
#[test]
fn under_timeout_the_real_reason_is_given() {
    if !kvm_or_skip("under_timeout_the_real_reason_is_given") {
        return;
    }
    for i in 0..6 {
        let o = std::process::Command::new("timeout")
            .args(["--preserve-status", "-s", "TERM", "2"])
            .arg(env!("CARGO_BIN_EXE_kjump"))
            .args(["-q", "--cycles", "1000000"])
            .env_remove("KJUMP_KVM_DEVICE")
            .output()
            .unwrap();
        let (_, err) = assert_exit(&o, 2);
        assert!(
            err.contains("run interrupted by SIGTERM") && !err.contains("did not stop within"),
            "try {i}: {err}"
        );
    }
}

/// Hostile settings of the two newest scenarios: each refused with one
/// line, exit code 2, before any guest runs (the restore kernel included:
/// it used to be read only after VM 1 had run, and a restore kernel linked
/// past B's region loaded A's image over itself and hung).
#[test]
fn hostile_hibernate_and_crash_settings_are_refused_before_any_guest_runs() {
    let d = scratch("hostile-hib-crash");
    let not_elf = d.join("not-elf");
    std::fs::write(&not_elf, "#!/bin/sh\n").unwrap();
    let fifo = fifo(&d, "disk.pipe");
    let small = d.join("small.raw");
    std::fs::write(&small, vec![0u8; 4096]).unwrap();
    let p = |p: &Path| p.to_str().unwrap().to_owned();
    let (not_elf, fifo, small, dir) = (p(&not_elf), p(&fifo), p(&small), p(&d));
    let cases: &[(&[&str], &str)] = &[
        (
            &["--scenario", "hibernate", "--restore-kernel", &not_elf],
            "--restore-kernel",
        ),
        (
            &["--scenario", "hibernate", "--restore-kernel", &dir],
            "not a regular file",
        ),
        (
            &["--scenario", "hibernate", "--disk", &fifo],
            "not a regular file",
        ),
        (
            &["--scenario", "crash", "--disk", &dir],
            "not a regular file",
        ),
        (&["--scenario", "crash", "--disk", &small], "needs at least"),
        (&["--scenario", "hibernate", "--mem", "4097"], "--mem"),
        (
            &["--scenario", "hibernate", "--mem", "3221229568"],
            "at most 3G",
        ),
        (
            &["--scenario", "crash", "--mem", "0"],
            "--mem 0 is too small",
        ),
        (
            &["--scenario", "crash", "--mem", "32M"],
            "--mem 32M is too small",
        ),
        (
            &["--scenario", "crash", "--backup-size", "0"],
            "--backup-size",
        ),
        (
            &["--scenario", "crash", "--backup-size", "5242879"],
            "whole 4 KiB pages",
        ),
        (
            &[
                "--scenario",
                "crash",
                "--backup-size",
                "18446744073709551615",
            ],
            "--backup-size",
        ),
        (
            &["--scenario", "crash", "--backup-size", "200M"],
            "does not fit",
        ),
        (&["--scenario", "hibernate", "--cycles", "0"], "--cycles 0"),
        // The most cycles there are: a fault in a cycle past them is
        // refused, not an overflow.
        (
            &[
                "--scenario",
                "ping-pong",
                "--cycles",
                "18446744073709551615",
                "--inject",
                "b:forget-r12@18446744073709551615",
            ],
            "past the most cycles a run has",
        ),
    ];
    for (args, says) in cases {
        refused(args, says);
    }
    // The build's kernel linked at 6 MiB restores A, but not when B's
    // region (where C runs) ends at 5 MiB.
    let c = env!("KJUMP_GUEST_KERNEL_ALT");
    if !c.is_empty() {
        let err = refused(
            &[
                "--scenario",
                "hibernate",
                "--peer-mem",
                "4M",
                "--restore-kernel",
                c,
            ],
            "the kernel is linked at 0x600000..",
        );
        assert!(
            err.contains("past the end of kernel b's region at 0x500000"),
            "{err}"
        );
    }
}
