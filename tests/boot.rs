//! The boot spine on real KVM: the `boot` scenario passes, and every kind of
//! guest failure or bad input ends with the right exit code and one clear
//! line.

mod common;
use common::{assert_exit, kjump, kjump_command, kvm_or_skip, scratch, skip};

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use kjump_core::report::{Report, Verdict};

#[test]
fn boot_scenario_passes() {
    if !kvm_or_skip("boot_scenario_passes") {
        return;
    }
    let (out, err) = assert_exit(&kjump(&["--scenario", "boot"]), 0);
    // The guest printed its memory map and the initramfs listing, prefixed
    // with its name, and found kernel B's image.
    assert!(out.contains("[a] "), "no guest console lines:\n{out}");
    assert!(
        out.contains("kjump/kernel-b"),
        "no initramfs listing:\n{out}"
    );
    assert!(out.to_lowercase().contains("e820"), "no memory map:\n{out}");
    assert!(
        err.contains("boot: pass") || out.contains("boot: pass"),
        "no summary:\n{out}\n{err}"
    );
}

#[test]
fn boot_with_large_memory_leaves_the_32bit_hole() {
    if !kvm_or_skip("boot_with_large_memory_leaves_the_32bit_hole") {
        return;
    }
    let (out, _) = assert_exit(&kjump(&["--scenario", "boot", "--mem", "4G"]), 0);
    // RAM stops at 3 GiB and goes on at 4 GiB: 1 GiB above the hole.
    assert!(
        out.contains("-0x0000c0000000) usable"),
        "RAM below the hole does not end at 3 GiB:\n{out}"
    );
    assert!(
        out.contains("[0x000100000000-0x000140000000) usable"),
        "no RAM above 4 GiB in the guest's map:\n{out}"
    );
}

#[test]
fn guest_panic_is_reported_with_exit_2() {
    if !kvm_or_skip("guest_panic_is_reported_with_exit_2") {
        return;
    }
    let (_, err) = assert_exit(
        &kjump(&["--scenario", "boot", "--append", "kjump.fault=panic"]),
        2,
    );
    assert!(
        err.contains("panicked") && err.contains("injected panic"),
        "{err}"
    );
}

#[test]
fn guest_exception_names_vector_and_rip() {
    if !kvm_or_skip("guest_exception_names_vector_and_rip") {
        return;
    }
    let (_, err) = assert_exit(
        &kjump(&["--scenario", "boot", "--append", "kjump.fault=ud2"]),
        2,
    );
    assert!(err.contains("#UD"), "{err}");
    assert!(err.contains("rip=0x"), "{err}");
}

#[test]
fn guest_page_fault_names_cr2() {
    if !kvm_or_skip("guest_page_fault_names_cr2") {
        return;
    }
    let (_, err) = assert_exit(
        &kjump(&["--scenario", "boot", "--append", "kjump.fault=pf"]),
        2,
    );
    assert!(err.contains("#PF") && err.contains("cr2="), "{err}");
}

#[test]
fn guest_triple_fault_is_an_error() {
    if !kvm_or_skip("guest_triple_fault_is_an_error") {
        return;
    }
    let (_, err) = assert_exit(
        &kjump(&["--scenario", "boot", "--append", "kjump.fault=triple"]),
        2,
    );
    assert!(err.contains("triple fault"), "{err}");
}

#[test]
fn hung_guest_is_stopped_by_the_watchdog() {
    if !kvm_or_skip("hung_guest_is_stopped_by_the_watchdog") {
        return;
    }
    let t = std::time::Instant::now();
    let (_, err) = assert_exit(
        &kjump(&[
            "--scenario",
            "boot",
            "--timeout",
            "2",
            "--append",
            "kjump.fault=hang",
        ]),
        2,
    );
    assert!(err.contains("watchdog") && err.contains("rip=0x"), "{err}");
    assert!(
        t.elapsed().as_secs() < 60,
        "the watchdog took {:?}",
        t.elapsed()
    );
}

#[test]
fn wild_guest_pointer_is_a_protocol_error() {
    if !kvm_or_skip("wild_guest_pointer_is_a_protocol_error") {
        return;
    }
    let (_, err) = assert_exit(
        &kjump(&["--scenario", "boot", "--append", "kjump.fault=wild-pointer"]),
        2,
    );
    assert!(err.contains("outside guest RAM"), "{err}");
}

#[test]
fn kernel_that_is_not_an_elf_is_refused() {
    let d = scratch("not-elf");
    let k = d.join("kernel");
    std::fs::write(&k, b"this is not a kernel").unwrap();
    let (_, err) = assert_exit(
        &kjump(&["--scenario", "boot", "--kernel", k.to_str().unwrap()]),
        2,
    );
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );
    assert!(err.to_lowercase().contains("elf"), "{err}");
}

#[test]
fn truncated_initramfs_is_refused_by_the_guest() {
    if !kvm_or_skip("truncated_initramfs_is_refused_by_the_guest") {
        return;
    }
    let d = scratch("truncated-initramfs");
    let full = kjump_initramfs::scenario_initramfs(kjump::DEFAULT_KERNEL, "x=1").unwrap();
    let p = d.join("initramfs.cpio");
    std::fs::write(&p, &full[..full.len() / 2]).unwrap();
    let o = kjump(&["--scenario", "boot", "--initramfs", p.to_str().unwrap()]);
    let (out, err) = common::text(&o);
    assert_ne!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        err.contains("truncated") || out.contains("truncated"),
        "{out}\n{err}"
    );
}

#[test]
fn too_little_memory_is_refused() {
    let (_, err) = assert_exit(&kjump(&["--scenario", "boot", "--mem", "1M"]), 2);
    assert!(err.contains("mem"), "{err}");
}

#[test]
fn unknown_scenario_is_refused() {
    let (_, err) = assert_exit(&kjump(&["--scenario", "no-such-thing"]), 2);
    assert!(err.contains("no-such-thing"), "{err}");
}

#[test]
fn inject_list_prints_the_catalog() {
    let (out, _) = assert_exit(&kjump(&["--inject", "list"]), 0);
    for k in ["flip-a", "flip-b", "saved-REG", "uart-lcr"] {
        assert!(out.contains(k), "{k} missing:\n{out}");
    }
    // Every guest-side fault of the shared catalog, with its kernels.
    for e in kjump_abi::fault::CATALOG {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(e.name) && l.contains(e.what)),
            "{} missing:\n{out}",
            e.name
        );
    }
    assert!(out.contains("b:KIND"), "{out}");
}

/// Bad kernels: each is one clear line and exit code 2, before any guest
/// runs.
#[test]
fn bad_kernels_are_refused_with_one_line() {
    let d = scratch("bad-kernels");
    let good = kjump::DEFAULT_KERNEL;
    let mut arm = good.to_vec();
    arm[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    let cases: [(&str, &[u8]); 4] = [
        ("empty", b""),
        ("truncated", &good[..200]),
        ("aarch64", &arm),
        ("garbage", &[0x7f, b'E', b'L', b'F', 9, 9, 9, 9]),
    ];
    for (name, bytes) in cases {
        let k = d.join(name);
        std::fs::write(&k, bytes).unwrap();
        let (_, err) = assert_exit(
            &kjump(&["--scenario", "boot", "--kernel", k.to_str().unwrap()]),
            2,
        );
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(err.starts_with("kjump: error: "), "{name}: {err}");
    }
    let (_, err) = assert_exit(
        &kjump(&["--scenario", "boot", "--kernel", "/no/such/kernel"]),
        2,
    );
    assert!(err.contains("/no/such/kernel"), "{err}");
}

#[test]
fn absurd_memory_sizes_are_refused() {
    for mem in ["100000G", "0", "12Q"] {
        let (_, err) = assert_exit(&kjump(&["--scenario", "boot", "--mem", mem]), 2);
        assert_eq!(err.lines().count(), 1, "{mem}: {err}");
    }
}

#[test]
fn initramfs_without_the_kernel_image_is_refused() {
    let d = scratch("no-kernel-b");
    let mut a = kjump_initramfs::Archive::new();
    a.file("kjump/config", b"x=1").unwrap();
    let p = d.join("initramfs.cpio");
    std::fs::write(&p, a.finish()).unwrap();
    let (_, err) = assert_exit(
        &kjump(&[
            "--scenario",
            "ping-pong",
            "--initramfs",
            p.to_str().unwrap(),
        ]),
        2,
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no kjump/kernel-b in the archive"), "{err}");
    // Garbage too.
    std::fs::write(&p, [b'x'; 200]).unwrap();
    let (_, err) = assert_exit(
        &kjump(&[
            "--scenario",
            "ping-pong",
            "--initramfs",
            p.to_str().unwrap(),
        ]),
        2,
    );
    assert!(err.contains("not a newc cpio header"), "{err}");
}

#[test]
fn unwritable_dump_dir_is_refused_before_the_run() {
    let d = scratch("ro-dumps");
    let file = d.join("a-file");
    std::fs::write(&file, b"").unwrap();
    // A path under a regular file can never be a directory.
    let bad = file.join("dumps");
    let (_, err) = assert_exit(
        &kjump(&[
            "--scenario",
            "ping-pong",
            "--dump-dir",
            bad.to_str().unwrap(),
        ]),
        2,
    );
    assert!(err.contains("dump directory"), "{err}");
}

// ------------------------------------------------------- the KVM device

/// Runs a ping-pong run that would dump every checkpoint and write a
/// report, with the KVM device `dev` (by `--kvm-device`, or by
/// `KJUMP_KVM_DEVICE` when `by_env`), the child set up by `setup`. Asserts
/// that it is refused before the guest runs: exit code 2, nothing on
/// stdout, one line `kjump: error: ...` naming `dev` and holding each of
/// `causes`, no dump (nor any temporary file) written, and the report a
/// whole error report with that line. Returns the line.
fn refused_kvm_device(
    name: &str,
    dev: &Path,
    causes: &[&str],
    by_env: bool,
    setup: impl FnOnce(&mut Command),
) -> String {
    let d = scratch(name);
    let dumps = d.join("dumps");
    let report = d.join("report.json");
    let mut args = vec![
        "--scenario",
        "ping-pong",
        "--cycles",
        "1",
        "--timeout",
        "20",
        "--dump",
        "every-jump",
        "--dump-dir",
        dumps.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ];
    if !by_env {
        args.extend(["--kvm-device", dev.to_str().unwrap()]);
    }
    let mut cmd = kjump_command(&args);
    if by_env {
        cmd.env("KJUMP_KVM_DEVICE", dev);
    }
    setup(&mut cmd);
    let (out, err) = assert_exit(&cmd.output().expect("kjump runs"), 2);
    assert_eq!(out, "", "{name}: stdout");
    assert_eq!(err.lines().count(), 1, "{name}: {err}");
    let line = err.trim_end().to_owned();
    assert!(line.starts_with("kjump: error: "), "{name}: {line}");
    assert!(line.contains(dev.to_str().unwrap()), "{name}: {line}");
    for cause in causes {
        assert!(line.contains(cause), "{name}: no {cause:?} in: {line}");
    }

    // No dump: the dump directory (made, probed and locked before the VM)
    // holds nothing but its lock file.
    let left: Vec<_> = std::fs::read_dir(&dumps)
        .map(|r| {
            r.map(|e| e.unwrap().file_name())
                .filter(|n| n != ".kjump.lock")
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "{name}: files in the dump directory: {left:?}"
    );
    let mut files: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert!(
        files.iter().all(|f| f == "report.json" || f == "dumps"),
        "{name}: stray files {files:?}"
    );
    // The report is whole: an error report with the same line.
    let json = std::fs::read_to_string(&report).expect("the error report was written");
    let r = Report::from_json(&json).expect("the report parses");
    assert_eq!((r.verdict, r.exit_code), (Verdict::Error, 2), "{name}");
    assert!(r.checkpoints.is_empty(), "{name}: {:?}", r.checkpoints);
    assert_eq!(
        r.error.as_deref(),
        line.strip_prefix("kjump: error: "),
        "{name}"
    );
    line
}

#[test]
fn a_missing_kvm_device_is_one_line_and_exit_2() {
    let d = scratch("kvm-dev-missing");
    let dev = d.join("no-such-kvm");
    let line = refused_kvm_device(
        "kvm-dev-missing-run",
        &dev,
        &[
            "cannot open the KVM device",
            "No such file or directory",
            "is KVM enabled",
        ],
        false,
        |_| {},
    );
    // The same through the environment.
    let by_env = refused_kvm_device("kvm-dev-missing-env", &dev, &[], true, |_| {});
    assert_eq!(by_env, line);
    // And the option after a subcommand (it is global).
    let (_, err) = assert_exit(&kjump(&["run", "--kvm-device", dev.to_str().unwrap()]), 2);
    assert_eq!(err.trim_end(), line);
}

#[test]
fn a_regular_file_is_not_a_kvm_device() {
    let d = scratch("kvm-dev-file");
    let dev = d.join("kvm");
    std::fs::write(&dev, b"not a device").unwrap();
    refused_kvm_device(
        "kvm-dev-file-run",
        &dev,
        &["is not a KVM device (a regular file)"],
        false,
        |_| {},
    );
}

#[test]
fn a_directory_is_not_a_kvm_device() {
    let d = scratch("kvm-dev-dir");
    let dev = d.join("kvm.d");
    std::fs::create_dir(&dev).unwrap();
    refused_kvm_device(
        "kvm-dev-dir-run",
        &dev,
        &["is not a KVM device (a directory)"],
        false,
        |_| {},
    );
}

#[test]
fn dev_null_is_not_a_kvm_device() {
    refused_kvm_device(
        "kvm-dev-null",
        Path::new("/dev/null"),
        &[
            "/dev/null is not a KVM device (a character device 1:3",
            "KVM_GET_API_VERSION: Inappropriate ioctl for device",
        ],
        false,
        |_| {},
    );
}

/// `CAP_DAC_OVERRIDE` and `CAP_DAC_READ_SEARCH` (Linux
/// `include/uapi/linux/capability.h`): with them root opens any file
/// whatever its mode.
const CAP_DAC_OVERRIDE: libc::c_int = 1;
const CAP_DAC_READ_SEARCH: libc::c_int = 2;

/// Makes `cmd`'s child lose the capabilities that let root ignore a file's
/// mode: out of the bounding set (so that exec does not give them back to
/// root) and out of the ambient set. A failure (no `CAP_SETPCAP`: then the
/// caller is not root and needs none of this) is left for
/// [`dac_caps_of`] to see.
fn without_dac_override(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec; it only
    // makes prctl system calls, which are async-signal-safe, allocate
    // nothing and touch no memory of the parent's.
    unsafe {
        cmd.pre_exec(|| {
            for cap in [CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH] {
                libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            Ok(())
        });
    }
}

/// The effective `CAP_DAC_*` capabilities of a child set up by `setup`
/// (from its `/proc/self/status`); `None` when that cannot be read.
fn dac_caps_of(setup: impl FnOnce(&mut Command)) -> Option<u64> {
    let mut cmd = Command::new("cat");
    cmd.arg("/proc/self/status");
    setup(&mut cmd);
    let out = cmd.output().ok()?;
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    let eff = u64::from_str_radix(eff.trim(), 16).ok()?;
    Some(eff & (1 << CAP_DAC_OVERRIDE | 1 << CAP_DAC_READ_SEARCH))
}

#[test]
fn a_kvm_device_without_permission_is_one_line_and_exit_2() {
    let test = "a_kvm_device_without_permission_is_one_line_and_exit_2";
    let d = scratch("kvm-dev-denied");
    // A real KVM device node (10:232) where one can be made (root), else a
    // plain file; mode 000 either way.
    let dev = d.join("kvm");
    let node = Command::new("mknod")
        .args(["-m", "000"])
        .arg(&dev)
        .args(["c", "10", "232"])
        .status()
        .is_ok_and(|s| s.success());
    if !node {
        std::fs::write(&dev, b"").unwrap();
        std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    match dac_caps_of(without_dac_override) {
        Some(0) => {}
        Some(caps) => {
            let why = format!(
                "a child keeps CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (effective {caps:#x}) \
                 after leaving the bounding and ambient sets (inheritable capabilities?), \
                 so a mode-000 file cannot be denied to it"
            );
            skip(test, &why);
            return;
        }
        None => {
            skip(test, "cannot read a child's /proc/self/status");
            return;
        }
    }
    refused_kvm_device(
        "kvm-dev-denied-run",
        &dev,
        &[
            "no permission to open the KVM device",
            "Permission denied",
            "`kvm`",
        ],
        false,
        without_dac_override,
    );
    // Leave no KVM device node behind.
    std::fs::remove_dir_all(&d).unwrap();
}

/// Settings the guest would only refuse later (a guest self-check FAIL,
/// exit 1) are refused up front: one line, exit 2, before anything boots.
#[test]
fn settings_the_guest_would_refuse_are_refused_up_front() {
    let d = scratch("bad-settings");
    let mut a = kjump_initramfs::Archive::new();
    a.file("kjump/kernel-b", kjump::DEFAULT_KERNEL).unwrap();
    a.file("kjump/config", b"\xff\xfe not utf-8").unwrap();
    let bad_config = d.join("bad-config.cpio");
    std::fs::write(&bad_config, a.finish()).unwrap();
    for (args, says) in [
        (
            &["--cycles", "0"][..],
            "--cycles 0: a ping-pong of no cycles checks nothing",
        ),
        (
            &["--peer-mem", "3M"][..],
            "--peer-mem 3M: the guest takes whole 4 KiB pages, at least 4M",
        ),
        (&["--peer-mem", "4097K"][..], "whole 4 KiB pages"),
        (
            &["--peer-mem", "127M"][..],
            "--peer-mem 127M does not fit in --mem 256M",
        ),
        (
            &["--mem", "64M", "--peer-mem", "40M"][..],
            "does not fit in --mem 64M",
        ),
        (
            &["--initramfs", bad_config.to_str().unwrap()][..],
            "kjump/config is not UTF-8 text",
        ),
        // A fault on the guest command line is validated as --inject.
        (
            &["--append", "kjump.fault=no-such"][..],
            "unknown fault \"no-such\"",
        ),
        (
            &["--append", "kjump.fault=write-outside"][..],
            "kernel b's only",
        ),
        (
            &["--append", "kjump.fault=ud2", "--inject", "ud2"][..],
            "both name a fault",
        ),
        (&["--append", "kjump.fault_cycle=2"][..], "no fault"),
    ] {
        let mut all = vec!["--scenario", "ping-pong"];
        all.extend_from_slice(args);
        let started = std::time::Instant::now();
        let (out, err) = assert_exit(&kjump(&all), 2);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!out.contains("[a]"), "{args:?}: the guest booted:\n{out}");
        assert!(started.elapsed().as_secs() < 10, "{args:?}");
    }
}

/// A fault on the guest command line is judged as an injected one: caught,
/// the run fails with the located mismatch.
#[test]
fn a_fault_given_with_append_is_judged_as_injected() {
    if !kvm_or_skip("a_fault_given_with_append_is_judged_as_injected") {
        return;
    }
    let (out, err) = assert_exit(
        &kjump(&[
            "--scenario",
            "ping-pong",
            "--cycles",
            "2",
            "--append",
            "kjump.fault=forget-rbx",
        ]),
        1,
    );
    // rbx's value before the jump is whatever the compiler left there.
    assert!(
        out.lines().any(|l| l.contains(": register rbx: 0x")
            && l.contains(" -> 0x6b6a756d70000001 (the relocation code's handover poison for rbx")),
        "{out}\n{err}"
    );
}
