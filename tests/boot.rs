//! The boot spine on real KVM: the `boot` scenario passes, and every kind of
//! guest failure or bad input ends with the right exit code and one clear
//! line.

mod common;
use common::{assert_exit, kjump, kvm_or_skip, scratch};

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
    for k in [
        "flip-a",
        "flip-b",
        "saved-REG",
        "uart-lcr",
        "kjump.fault=ud2",
        "kjump.fault=hang",
    ] {
        assert!(out.contains(k), "{k} missing:\n{out}");
    }
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
