//! Hibernation through kexec jump: A jumps to B, B saves A's image onto
//! the virtio-blk disk and powers off; the VMM checks the image against
//! its record of A; a fresh VM boots kernel C, which verifies and loads
//! the image and jumps to A's re-entry point; the oracle checks A in the
//! new VM against its record from the first. `--cycles N` times, then A
//! jumps to a fresh B once more, ping-pong fashion.

mod common;

use common::{assert_exit, kjump, kvm_or_skip, scratch};
use kjump_abi::hibimage::Header;
use kjump_core::symbols::Symbols;

fn hibernate(extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--scenario", "hibernate", "--mem", "64M"];
    args.extend_from_slice(extra);
    kjump(&args)
}

/// The line of `out` that starts with `prefix` (the run's summary).
fn line<'a>(out: &'a str, err: &str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in\n{out}\n{err}"))
}

/// The word after `marker` in `s` (an address the output names).
fn word_after<'a>(s: &'a str, marker: &str) -> &'a str {
    s.split(marker)
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("nothing after {marker:?} in {s}"))
}

/// The report's checkpoints as "CYCLEkernel direction".
fn sequence(r: &serde_json::Value) -> Vec<String> {
    r["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{}{} {}",
                c["cycle"],
                c["kernel"].as_str().unwrap(),
                c["direction"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn a_is_saved_by_b_restored_by_c_in_a_new_vm_and_found_as_it_left() {
    if !kvm_or_skip("a_is_saved_by_b_restored_by_c_in_a_new_vm_and_found_as_it_left") {
        return;
    }
    let dir = scratch("hibernate-pass");
    let disk = dir.join("disk.raw");
    let report = dir.join("report.json");
    let (out, err) = assert_exit(
        &hibernate(&[
            "--disk",
            disk.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ]),
        0,
    );
    // The sequence: A, B saving, C restoring, A back.
    let at = |s: &str| {
        out.find(s)
            .unwrap_or_else(|| panic!("no {s:?} in\n{out}\n{err}"))
    };
    let saved = at("[b] hibernate: b wrote a's image: 14336 pages in 2 ranges");
    let loading = at("[c] c: kernel c at 0x200000..");
    at("[a] a: kernel a at 0x200000..");
    at("image of 14336 pages in 2 ranges");
    let verified = at("[c] c: every range verified; jumping to a's re-entry point");
    let back = at("[a] a: restored from hibernation 1 of 1, state intact");
    let reloaded = at("[a] a: kimage reloaded: a fresh b (ping-pong)");
    let pong = at("[a] a: back from the ping-pong jump to a fresh b, state intact");
    assert!(
        saved < loading
            && loading < verified
            && verified < back
            && back < reloaded
            && reloaded < pong,
        "{out}"
    );
    assert!(
        out.contains("kjump: hibernate: pass (1 of 1 cycles, 5 checkpoints, "),
        "{out}\n{err}"
    );

    // A's suspend in VM 1, A's resume in VM 2, where every page of A's
    // view was compared; then the ping-pong jump to a fresh B in VM 2.
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(
        sequence(&r),
        [
            "1a suspend",
            "1a resume",
            "2a suspend",
            "2b suspend",
            "2a resume"
        ]
    );
    let cps = r["checkpoints"].as_array().unwrap();
    assert!(cps[1]["pages_compared"].as_u64().unwrap() > 14000, "{r}");
    let allowed: Vec<&str> = r["allowlist"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["field"].as_str().unwrap())
        .collect();
    assert!(allowed.contains(&"kvmclock.clock"), "{allowed:?}");

    // The disk keeps the image: a resumable ELF core entered at A's
    // re-entry point, of A's RAM outside B's region.
    let bytes = std::fs::read(&disk).unwrap();
    let h = Header::parse(&bytes).expect("a valid image header");
    let r: Vec<_> = h.ranges().map(|r| (r.start, r.len)).collect();
    assert_eq!(r, [(0, 1 << 20), (9 << 20, 55 << 20)]);
    assert!(out.contains(&format!("entry {:#x}", h.entry)), "{out}");
}

#[test]
fn a_restore_kernel_linked_at_another_address_restores_a() {
    if !kvm_or_skip("a_restore_kernel_linked_at_another_address_restores_a") {
        return;
    }
    // The build's second kernel: the same source linked at 6 MiB.
    let c = env!("KJUMP_GUEST_KERNEL_ALT");
    if c.is_empty() {
        eprintln!("skipped: a prebuilt kernel (KJUMP_GUEST_KERNEL_PREBUILT) has no second link");
        return;
    }
    let (out, err) = assert_exit(&hibernate(&["--cycles", "2", "--restore-kernel", c]), 0);
    assert!(
        out.contains("kjump: hibernate: pass (2 of 2 cycles"),
        "{out}\n{err}"
    );
    // C is not A: it runs elsewhere, and A is found as it left in both
    // new VMs all the same.
    let base = |who: &str| {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("[{who}] {who}: kernel {who} at 0x")))
            .unwrap_or_else(|| panic!("no image line of {who}:\n{out}"));
        line.split(" at ")
            .nth(1)
            .unwrap()
            .split("..")
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(base("a"), "0x200000", "{out}");
    assert_eq!(base("c"), "0x600000", "{out}");
    assert_eq!(
        out.matches("[c] c: kernel c at 0x600000..").count(),
        2,
        "{out}"
    );
    assert!(
        out.contains("[a] a: restored from hibernation 2 of 2, state intact"),
        "{out}"
    );

    // The embedded kernel written out is a restore kernel too; a missing
    // file is refused.
    let dir = scratch("hibernate-restore-kernel");
    let same = dir.join("kernel-c.elf");
    assert_exit(&kjump(&["kernel", same.to_str().unwrap()]), 0);
    let (out, _) = assert_exit(&hibernate(&["--restore-kernel", same.to_str().unwrap()]), 0);
    assert!(out.contains("[c] c: kernel c at 0x200000.."), "{out}");
    let (_, err) = assert_exit(&hibernate(&["--restore-kernel", "/nonexistent/c"]), 2);
    assert!(
        err.contains("cannot read the kernel: /nonexistent/c"),
        "{err}"
    );
}

/// An image damaged on the disk between the two VMs: C refuses it with one
/// verdict and never jumps into it.
fn refused(fault: &str, expected: &str) {
    let (out, err) = assert_exit(&hibernate(&["--inject", fault]), 1);
    let summary = line(&out, &err, "kjump: hibernate: FAIL (kernel c, ");
    assert!(
        summary.contains(&format!(
            "kernel c reports a failure: \"c: refusing the image: {expected}"
        )),
        "{summary}"
    );
    assert!(!out.contains("[a] a: back"), "a ran:\n{out}");
    assert!(
        !out.contains("jumping to a's re-entry point"),
        "c jumped:\n{out}"
    );
}

#[test]
fn a_flipped_byte_on_the_disk_is_refused_by_c_naming_the_range_and_checksums() {
    if !kvm_or_skip("a_flipped_byte_on_the_disk_is_refused_by_c_naming_the_range_and_checksums") {
        return;
    }
    refused("image-flip", "range 1 [0x900000..0x4000000) checksum 0x");
}

#[test]
fn a_truncated_image_is_refused_by_c() {
    if !kvm_or_skip("a_truncated_image_is_refused_by_c") {
        return;
    }
    refused(
        "image-truncate",
        "image truncated: range 1 ends at byte 58724352, the image has 58720256",
    );
}

#[test]
fn an_image_of_another_magic_is_refused_by_c() {
    if !kvm_or_skip("an_image_of_another_magic_is_refused_by_c") {
        return;
    }
    refused(
        "image-magic",
        // (The verdict line quotes c's text, escaping its quotes.)
        "wrong magic [4b, 4a, 48, 49, 42, 49, 4d, 58] (expected \\\"KJHIBIMG\\\")",
    );
}

#[test]
fn a_page_b_leaves_out_of_the_image_is_named_by_the_vmm_check_of_the_disk() {
    if !kvm_or_skip("a_page_b_leaves_out_of_the_image_is_named_by_the_vmm_check_of_the_disk") {
        return;
    }
    let (out, err) = assert_exit(&hibernate(&["--inject", "b:image-skip-page"]), 1);
    assert!(out.contains("b: INJECTED FAULT: leaving page 0x"), "{out}");
    let summary = line(&out, &err, "kjump: hibernate: FAIL (kernel b, ");
    assert!(
        summary.contains(
            "1 page(s) of kernel a's image on the disk differ from its record: first: checkpoint 0 (cycle 1, kernel a, image): memory: page 0x"
        ),
        "{summary}"
    );
    // The page b named is the page the VMM found.
    let page = word_after(&out, "b: INJECTED FAULT: leaving page ");
    assert!(
        summary.ends_with(&format!("memory: page {page}")),
        "{summary}\n{page}"
    );
    // C never ran: the check comes before any restore.
    assert!(!out.contains("[c]"), "{out}");
    // Armed for the second hibernation: the B that A's reloaded kimage
    // boots in the second VM leaves the page out.
    let (out, err) = assert_exit(
        &hibernate(&["--cycles", "2", "--inject", "b:image-skip-page@2"]),
        1,
    );
    assert!(
        out.contains("[a] a: restored from hibernation 1 of 2"),
        "{out}"
    );
    let summary = line(
        &out,
        &err,
        "kjump: hibernate: FAIL (kernel b, 1 of 2 cycles, ",
    );
    assert!(
        summary.contains("first: checkpoint 3 (cycle 2, kernel a, image): memory: page 0x"),
        "{summary}"
    );
}

#[test]
fn a_that_does_not_take_the_disk_back_is_caught_at_the_device_fields() {
    if !kvm_or_skip("a_that_does_not_take_the_disk_back_is_caught_at_the_device_fields") {
        return;
    }
    let (out, err) = assert_exit(&hibernate(&["--inject", "no-device-resume"]), 1);
    // C left the device driving its own queue; A's re-entry path did not
    // reset it.
    assert!(
        out.contains(
            "checkpoint 2 (cycle 1, kernel a, resume): device virtio_blk.status: 0x0 -> 0xf"
        ),
        "{out}\n{err}"
    );
    assert!(
        out.contains("device virtio_blk.queue0.ready: 0x0 -> 0x1"),
        "{out}"
    );
    assert!(
        out.contains("at kernel a's resume in a new VM (restored from its image): first: checkpoint 2 (cycle 1, kernel a, resume): device virtio_blk.status"),
        "{err}"
    );
    // In the second restore only.
    let (out, _) = assert_exit(
        &hibernate(&["--cycles", "2", "--inject", "no-device-resume@2"]),
        1,
    );
    assert!(
        out.contains("[a] a: restored from hibernation 1 of 2"),
        "{out}"
    );
    assert!(
        out.contains(
            "checkpoint 5 (cycle 2, kernel a, resume): device virtio_blk.status: 0x0 -> 0xf"
        ),
        "{out}"
    );
}

#[test]
fn faults_of_other_scenarios_and_large_memory_are_refused_up_front() {
    let (_, err) = assert_exit(&hibernate(&["--inject", "flip-a"]), 2);
    assert!(err.contains("not a fault of --scenario hibernate"), "{err}");
    let (_, err) = assert_exit(
        &kjump(&["--scenario", "ping-pong", "--inject", "b:image-skip-page"]),
        2,
    );
    assert!(err.contains("needs --scenario hibernate"), "{err}");
    let (_, err) = assert_exit(
        &kjump(&["--scenario", "ping-pong", "--inject", "image-flip"]),
        2,
    );
    assert!(err.contains("needs --scenario hibernate"), "{err}");
    let (_, err) = assert_exit(&kjump(&["--scenario", "hibernate", "--mem", "4G"]), 2);
    assert!(err.contains("at most 3G"), "{err}");
    let (_, err) = assert_exit(&hibernate(&["--gdb"]), 2);
    assert!(err.contains("not offered for hibernate"), "{err}");
    let (_, err) = assert_exit(&hibernate(&["--cycles", "0"]), 2);
    assert!(err.contains("--cycles 0"), "{err}");
}

#[test]
fn a_is_hibernated_and_restored_three_times_then_jumps_to_a_fresh_b() {
    if !kvm_or_skip("a_is_hibernated_and_restored_three_times_then_jumps_to_a_fresh_b") {
        return;
    }
    let dir = scratch("hibernate-cycles");
    let report = dir.join("report.json");
    let (out, err) = assert_exit(
        &hibernate(&["--cycles", "3", "--report", report.to_str().unwrap()]),
        0,
    );
    assert!(
        out.contains("kjump: hibernate: pass (3 of 3 cycles, 9 checkpoints, "),
        "{out}\n{err}"
    );
    // Three fresh Bs save A, three Cs restore it, each in a new VM; the
    // fourth B (ping-pong) jumps back.
    let count = |s: &str| out.matches(s).count();
    assert_eq!(
        count("[b] hibernate: b wrote a's image: 14336 pages"),
        3,
        "{out}"
    );
    assert_eq!(count("[c] c: every range verified"), 3, "{out}");
    assert_eq!(count("[b] kjump guest kernel b: hibernate"), 3, "{out}");
    assert_eq!(count("[b] kjump guest kernel b: ping-pong"), 1, "{out}");
    for k in 1..=3 {
        assert!(
            out.contains(&format!(
                "[a] a: restored from hibernation {k} of 3, state intact"
            )),
            "{out}"
        );
    }
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(
        sequence(&r),
        [
            "1a suspend",
            "1a resume",
            "2a suspend",
            "2a resume",
            "3a suspend",
            "3a resume",
            "4a suspend",
            "4b suspend",
            "4a resume"
        ]
    );
    // Every restore compared A's whole view in its new VM.
    let cps = r["checkpoints"].as_array().unwrap();
    for i in [1, 3, 5] {
        assert!(cps[i]["pages_compared"].as_u64().unwrap() > 14000, "{r}");
    }
    assert_eq!(
        (
            r["cycles_requested"].as_u64(),
            r["cycles_completed"].as_u64()
        ),
        (Some(3), Some(3))
    );
}

#[test]
fn an_image_damaged_before_the_second_restore_is_refused_then() {
    if !kvm_or_skip("an_image_damaged_before_the_second_restore_is_refused_then") {
        return;
    }
    let (out, _) = assert_exit(
        &hibernate(&["--cycles", "2", "--inject", "image-flip@2"]),
        1,
    );
    assert!(
        out.contains("[a] a: restored from hibernation 1 of 2, state intact"),
        "{out}"
    );
    assert!(!out.contains("restored from hibernation 2"), "{out}");
    assert!(
        out.contains("kjump: hibernate: FAIL (kernel c, 1 of 2 cycles, ")
            && out.contains("c: refusing the image: range 1 [0x900000..0x4000000) checksum 0x"),
        "{out}"
    );
    // A fault in a restore the run does not make is refused up front.
    let (_, err) = assert_exit(
        &hibernate(&["--cycles", "2", "--inject", "image-flip@3"]),
        2,
    );
    assert!(
        err.contains("saves and restores kernel a 2 time(s) (use --cycles 3 or more)"),
        "{err}"
    );
}

#[test]
fn a_restore_kernel_that_skips_the_trampoline_leaves_a_damaged_where_c_ran() {
    if !kvm_or_skip("a_restore_kernel_that_skips_the_trampoline_leaves_a_damaged_where_c_ran") {
        return;
    }
    let (out, err) = assert_exit(&hibernate(&["--inject", "c:no-trampoline"]), 1);
    assert!(
        out.contains(
            "[c] c: INJECTED FAULT: skipping the trampoline: entering a's re-entry routine 0x"
        ),
        "{out}"
    );
    // A's re-entry routine ran (from C's copy of the same text) and A
    // reached its checkpoint: the oracle finds A's pages of the region C
    // ran in (from 1 MiB to the end of B's region) other than A left them,
    // named by page and symbol; A never ran on.
    let summary = line(
        &out,
        &err,
        "kjump: hibernate: FAIL (kernel a, 0 of 1 cycles, 2 checkpoints, ",
    );
    assert!(
        summary.contains(
            "mismatch(es) at kernel a's resume in a new VM (restored from its image): first: checkpoint 2 (cycle 1, kernel a, resume): memory: page of kernel a 0x"
        ),
        "{summary}"
    );
    let page = word_after(summary, "memory: page of kernel a ");
    let page = u64::from_str_radix(page.trim_start_matches("0x"), 16).unwrap();
    assert!((0x10_0000..0x90_0000).contains(&page), "{summary}");
    // Named by its symbol, or its section where no symbol covers it (which
    // page comes first moves with the kernel's layout).
    assert!(
        summary.contains(" in kjump_kernel::") || summary.contains(" in .bss+"),
        "{summary}"
    );
    assert!(
        out.contains("kjump_kernel::kexec::pattern::STATIC_PATTERN"),
        "{out}"
    );
    assert!(!out.contains("[a] a: restored"), "{out}");
    // Armed for the second restore only: the first restores A intact.
    let (out, _) = assert_exit(
        &hibernate(&["--cycles", "2", "--inject", "c:no-trampoline@2"]),
        1,
    );
    assert!(
        out.contains("[a] a: restored from hibernation 1 of 2, state intact"),
        "{out}"
    );
    assert_eq!(
        out.matches("c: INJECTED FAULT: skipping the trampoline")
            .count(),
        1,
        "{out}"
    );
    assert!(
        out.contains("kjump: hibernate: FAIL (kernel a, 1 of 2 cycles, 4 checkpoints, ")
            && out.contains(
                "first: checkpoint 5 (cycle 2, kernel a, resume): memory: page of kernel a 0x"
            ),
        "{out}"
    );
    // It is c's fault, and hibernate's only.
    let (_, err) = assert_exit(&hibernate(&["--inject", "no-trampoline"]), 2);
    assert!(err.contains("use --inject c:no-trampoline"), "{err}");
    let (_, err) = assert_exit(&kjump(&["--inject", "c:no-trampoline"]), 2);
    assert!(err.contains("needs --scenario hibernate"), "{err}");
    let (_, err) = assert_exit(&hibernate(&["--inject", "c:no-trampoline@2"]), 2);
    assert!(err.contains("use --cycles 2 or more"), "{err}");
}

/// `c:no-trampoline` with the restore kernel linked at 6 MiB: A's
/// re-entry routine is not where C jumps (C's image is there, and the
/// zeros it left of A's pages), so the vCPU runs on into C's own code and
/// faults there. The run cannot go on: exit 2, the crash's rip named by
/// C's symbols (A's have none there), A never restored.
#[test]
fn a_restore_kernel_elsewhere_that_skips_the_trampoline_crashes_in_its_own_code() {
    if !kvm_or_skip("a_restore_kernel_elsewhere_that_skips_the_trampoline_crashes_in_its_own_code")
    {
        return;
    }
    let c = env!("KJUMP_GUEST_KERNEL_ALT");
    if c.is_empty() {
        eprintln!("skipped: a prebuilt kernel (KJUMP_GUEST_KERNEL_PREBUILT) has no second link");
        return;
    }
    let (out, err) = assert_exit(
        &hibernate(&["--restore-kernel", c, "--inject", "c:no-trampoline"]),
        2,
    );
    assert!(out.contains("[c] c: kernel c at 0x600000.."), "{out}");
    assert!(
        out.contains(
            "[c] c: INJECTED FAULT: skipping the trampoline: entering a's re-entry routine 0x"
        ),
        "{out}"
    );
    line(
        &out,
        &err,
        "kjump: hibernate: ERROR (0 of 1 cycles, 1 checkpoints, ",
    );
    assert!(!out.contains("[a] a: restored"), "{out}");
    // The error is the vCPU's exception (which one moves with C's layout),
    // at a rip in C's text, named by C's symbols.
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("kjump: error: guest a: exception #"),
        "{err}"
    );
    let rip = word_after(first, "at rip=");
    let rip = u64::from_str_radix(rip.trim_start_matches("0x"), 16).unwrap();
    let c_syms = Symbols::from_elf(&std::fs::read(c).unwrap()).unwrap();
    let named = c_syms.lookup(rip).expect("the rip is in c's image");
    assert!(named.ends_with(" (.text)"), "{named}");
    assert!(
        first.contains(&format!("at rip={rip:#x} ({named})")),
        "{first}"
    );
    let a_syms = Symbols::from_elf(kjump::DEFAULT_KERNEL).unwrap();
    assert_eq!(a_syms.lookup(rip), None, "{first}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_fresh_b_from_the_kimage_reloaded_after_a_restore_is_checked_at_its_first_entry() {
    if !kvm_or_skip(
        "a_fresh_b_from_the_kimage_reloaded_after_a_restore_is_checked_at_its_first_entry",
    ) {
        return;
    }
    // Cycle 2: A, restored in the new VM, reloaded its kimage of B and
    // jumps to it; a byte of B's image is flipped where the kimage keeps
    // it, before the relocation code delivers it.
    let (out, err) = assert_exit(&hibernate(&["--inject", "flip-b-image@2"]), 1);
    let summary = line(
        &out,
        &err,
        "kjump: hibernate: FAIL (kernel b, 1 of 1 cycles, 3 checkpoints, ",
    );
    assert!(
        summary.contains(
            "1 page(s) of kernel b's first delivery differ from what a's kimage placed: first: checkpoint 3 (cycle 2, kernel b, first entry): memory: page of kernel b 0x"
        ) && summary.contains("kjump_kernel::kexec::pattern::STATIC_PATTERN+0x123"),
        "{summary}"
    );
    // B never ran: the check is at its entry.
    assert!(
        !out.contains("[b] kjump guest kernel b: ping-pong"),
        "{out}"
    );
    let (_, err) = assert_exit(&hibernate(&["--inject", "flip-b-image@3"]), 2);
    assert!(
        err.contains("b boots in cycles 1 to 2 of this run (use --cycles 2 or more)"),
        "{err}"
    );
}

#[test]
fn a_b_that_powers_off_without_writing_finds_no_image_of_an_earlier_hibernation() {
    if !kvm_or_skip("a_b_that_powers_off_without_writing_finds_no_image_of_an_earlier_hibernation")
    {
        return;
    }
    // The disk holds a good image of this very A from an earlier run; in
    // the run's second hibernation it holds the first one's (C restored
    // from it). A B that writes nothing passes on neither.
    let dir = scratch("hibernate-power-off-early");
    let disk = dir.join("disk.raw");
    let d = disk.to_str().unwrap();
    assert_exit(&hibernate(&["--disk", d, "-q"]), 0);
    for (cycles, fault) in [("1", "b:power-off-early"), ("2", "b:power-off-early@2")] {
        let (out, err) = assert_exit(
            &hibernate(&["--disk", d, "--cycles", cycles, "--inject", fault]),
            1,
        );
        assert!(
            out.contains("b: INJECTED FAULT: powering off without writing"),
            "{fault}: {out}\n{err}"
        );
        assert!(
            out.contains("kernel b's image of a: ") && out.contains("not an ELF"),
            "{fault}: {out}\n{err}"
        );
        assert!(!out.contains("was not caught"), "{fault}: {out}");
    }
}

#[test]
fn a_restore_kernel_that_leaves_an_msr_or_the_pit_changed_is_caught_at_a_s_resume() {
    if !kvm_or_skip(
        "a_restore_kernel_that_leaves_an_msr_or_the_pit_changed_is_caught_at_a_s_resume",
    ) {
        return;
    }
    // C restores every page right but leaves state A never set (so never
    // restores) its own way: the new VM's resume checkpoint names it.
    let dir = scratch("hibernate-c-leaves");
    for (fault, first, also) in [
        (
            "c:leave-msr",
            "register msr[0x00000175] SYSENTER_ESP: 0x0 -> 0x6b6a7000",
            None,
        ),
        (
            "c:leave-pit",
            "device pic.master.irr: 0x0 -> 0x1",
            Some(("pit.channel0.count", "0x10000", "0x1234")),
        ),
    ] {
        let report = dir.join(format!("{fault}.json"));
        let (out, err) = assert_exit(
            &hibernate(&["--inject", fault, "--report", report.to_str().unwrap()]),
            1,
        );
        assert!(
            out.contains(&format!(
                "at kernel a's resume in a new VM (restored from its image): first: checkpoint 2 (cycle 1, kernel a, resume): {first}"
            )),
            "{fault}: {out}\n{err}"
        );
        if let Some((name, expected, actual)) = also {
            let r: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
            assert!(
                r["mismatches"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["name"] == name
                        && m["expected"] == expected
                        && m["actual"] == actual),
                "{fault}: {r}"
            );
        }
    }
}
