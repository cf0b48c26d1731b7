//! kexec jump on real KVM: A→B→A→B… with the oracle checking every
//! checkpoint, in swap and backup mode; and the oracle seen to fail on
//! injected damage, naming the exact register, address or device field.

mod common;
use common::{assert_exit, assert_only_answer_and_tsc_expected, kjump, kvm_or_skip, scratch};
use kjump_core::report::{MismatchKind, Report, Verdict};

/// Runs ping-pong; returns stdout, stderr and the JSON report.
fn ping_pong(name: &str, extra: &[&str], code: i32) -> (String, String, Report) {
    let dir = scratch(name);
    let report = dir.join("report.json");
    let mut args = vec![
        "--scenario",
        "ping-pong",
        "--report",
        report.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (out, err) = assert_exit(&kjump(&args), code);
    let json = std::fs::read_to_string(&report).expect("the report was written");
    (
        out,
        err,
        Report::from_json(&json).expect("the report parses"),
    )
}

/// Checkpoints of `n` cycles: A.s, B.s, A.r, then A.s, B.r, B.s, A.r per cycle.
fn checkpoints(n: u64) -> usize {
    (3 + 4 * (n - 1)) as usize
}

fn assert_clean(r: &Report, cycles: u64) {
    assert_eq!(r.verdict, Verdict::Pass);
    assert_eq!(r.exit_code, 0);
    assert_eq!(r.cycles_completed, cycles);
    assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
    assert_eq!(r.checkpoints.len(), checkpoints(cycles));
    // Every checkpoint compared pages, and the resumes compared registers
    // (a resume of a kernel compares its whole view).
    assert!(r.checkpoints.iter().skip(1).all(|c| c.pages_compared > 0));
    let kinds: Vec<(&str, &str)> = r
        .checkpoints
        .iter()
        .take(4)
        .map(|c| (c.kernel.as_str(), c.direction.as_str()))
        .collect();
    let expected = [
        ("a", "suspend"),
        ("b", "suspend"),
        ("a", "resume"),
        ("a", "suspend"),
    ];
    assert_eq!(kinds, expected[..kinds.len()]);
    // The allowlist is printed, short, and says why: a few registers, and
    // the device fields that are host time or move with time.
    let (devices, registers): (Vec<_>, Vec<_>) = r
        .allowlist
        .iter()
        .partition(|a| a.field.starts_with("pit.") || a.field.starts_with("kvmclock."));
    assert!(
        !registers.is_empty() && registers.len() <= 4,
        "{registers:?}"
    );
    assert!(devices.len() <= 16, "{devices:?}");
    assert!(r.allowlist.iter().all(|a| !a.reason.is_empty()));
    // The control pages are the only excused pages.
    assert!(r.excused_pages.iter().all(|p| p.why.contains("control")
        || p.why.contains("swap")
        || p.why.contains("page table")));
}

#[test]
fn one_cycle_swap_mode() {
    if !kvm_or_skip("one_cycle_swap_mode") {
        return;
    }
    let (out, _, r) = ping_pong("pp-1", &["--cycles", "1"], 0);
    assert_clean(&r, 1);
    assert!(
        out.contains("[b] kjump guest kernel b"),
        "B did not boot:\n{out}"
    );
}

#[test]
fn two_cycles_b_is_resumed_not_rebooted() {
    if !kvm_or_skip("two_cycles_b_is_resumed_not_rebooted") {
        return;
    }
    let (out, _, r) = ping_pong("pp-2", &["--cycles", "2"], 0);
    assert_clean(&r, 2);
    assert_eq!(
        out.matches("kjump guest kernel b").count(),
        1,
        "B booted more than once:\n{out}"
    );
    assert!(out.contains("[b] b: resumed #1 (not rebooted)"), "{out}");
    assert!(
        out.contains("[a] a: cycle 2: back from b, state intact"),
        "{out}"
    );
}

#[test]
fn backup_mode_runs_the_same_scenario() {
    if !kvm_or_skip("backup_mode_runs_the_same_scenario") {
        return;
    }
    let (out, _, r) = ping_pong("pp-backup", &["--cycles", "2", "--mode", "backup"], 0);
    assert_clean(&r, 2);
    assert!(out.contains("backup mode"), "{out}");
    assert!(out.contains("[b] b: resumed #1 (not rebooted)"), "{out}");
}

#[test]
fn full_compare_cross_checks_the_dirty_log() {
    if !kvm_or_skip("full_compare_cross_checks_the_dirty_log") {
        return;
    }
    let (_, _, r) = ping_pong("pp-full", &["--cycles", "2", "--compare", "full"], 0);
    assert_clean(&r, 2);
    assert_eq!(r.compare_mode, "full");
}

/// The report splits each checkpoint's cost, and gives the guests' time
/// per jump: every checkpoint has its guest time and a time stamp, and
/// `capture_us` is the sum of its parts.
#[test]
fn the_report_splits_each_checkpoints_cost_and_times_the_guests() {
    if !kvm_or_skip("the_report_splits_each_checkpoints_cost_and_times_the_guests") {
        return;
    }
    let (out, _, r) = ping_pong("pp-costs", &["--cycles", "3", "-v"], 0);
    assert_clean(&r, 3);
    for c in &r.checkpoints {
        assert!(c.guest_us > 0 && c.state_us > 0, "{c:?}");
        assert_eq!(
            c.capture_us,
            c.state_us + c.dirty_log_us + c.store_us,
            "{c:?}"
        );
    }
    assert!(r.checkpoints.windows(2).all(|w| w[0].t_us < w[1].t_us));
    let t = &r.timing;
    assert_eq!(
        t.guest_us,
        r.checkpoints.iter().map(|c| c.guest_us).sum::<u64>()
    );
    assert!(
        t.guest_per_jump_us.median > 0 && t.guest_per_jump_us.median <= t.guest_per_jump_us.max
    );
    assert!(r.pages_touched > 0);
    assert!(out.contains("  guests: "), "{out}");
    // After the first checkpoint the pages read are those written (and the
    // ones the swap rewrites), not RAM: 65,536 pages here.
    assert!(
        r.checkpoints.iter().all(|c| c.dirty_pages < 8192),
        "{:?}",
        r.checkpoints
    );
    assert!(
        r.checkpoints
            .iter()
            .skip(1)
            .all(|c| c.pages_compared < 8192)
    );
}

/// `--no-check` runs the same guests with capture and comparison off, to
/// measure the harness: it never passes (verdict "unchecked", exit 3), and
/// refuses an injected fault it could not catch.
#[test]
fn an_unchecked_run_is_never_a_pass() {
    if !kvm_or_skip("an_unchecked_run_is_never_a_pass") {
        return;
    }
    let (out, _, r) = ping_pong("pp-unchecked", &["--cycles", "3", "--no-check"], 3);
    assert_eq!((r.verdict, r.exit_code), (Verdict::Unchecked, 3));
    assert_eq!(r.compare_mode, "unchecked");
    assert_eq!(r.cycles_completed, 3);
    assert_eq!(r.checkpoints.len(), checkpoints(3));
    assert!(
        r.checkpoints
            .iter()
            .all(|c| c.pages_compared == 0 && c.state_us == 0 && c.guest_us > 0)
    );
    assert!(out.contains("ping-pong: UNCHECKED"), "{out}");
    assert!(out.contains("nothing was verified"), "{out}");
    assert!(!out.contains(": pass"), "{out}");

    let (_, err) = assert_exit(
        &kjump(&[
            "--scenario",
            "ping-pong",
            "--no-check",
            "--inject",
            "flip-a",
        ]),
        2,
    );
    assert!(err.contains("an unchecked run catches nothing"), "{err}");
    let (_, err) = assert_exit(
        &kjump(&["--scenario", "ping-pong", "--no-check", "--compare", "full"]),
        2,
    );
    assert!(err.contains("cannot be used with"), "{err}");
    let (_, err) = assert_exit(&kjump(&["--scenario", "boot", "--no-check"]), 2);
    assert!(err.contains("--no-check measures ping-pong only"), "{err}");
}

/// The address the memory faults damage: 0x123 bytes into A's (and B's)
/// static pattern, whose symbol the report must name.
fn pattern_target() -> u64 {
    let s = kjump_core::symbols::Symbols::from_elf(kjump::DEFAULT_KERNEL).unwrap();
    s.address_of_suffix("kexec::pattern::STATIC_PATTERN")
        .unwrap()
        + 0x123
}

fn only_mismatch(r: &Report) -> &kjump_core::report::Mismatch {
    assert_eq!(r.verdict, Verdict::Fail);
    assert_eq!(r.exit_code, 1);
    assert_eq!(r.mismatches.len(), 1, "{:#?}", r.mismatches);
    &r.mismatches[0]
}

#[test]
fn a_byte_flipped_in_a_while_b_runs_is_caught_with_address_and_symbol() {
    if !kvm_or_skip("a_byte_flipped_in_a_while_b_runs_is_caught_with_address_and_symbol") {
        return;
    }
    let (_, _, r) = ping_pong("pp-flip-a", &["--cycles", "3", "--inject", "flip-a@2"], 1);
    let m = only_mismatch(&r);
    let target = pattern_target();
    assert_eq!(m.kind, MismatchKind::Memory);
    assert_eq!(
        (m.at.kernel.as_str(), m.at.direction.as_str(), m.at.cycle),
        ("a", "resume", 2)
    );
    assert_eq!(m.address, Some(target & !0xfff));
    assert_eq!(m.ranges.len(), 1);
    assert_eq!((m.ranges[0].start, m.ranges[0].end), (target, target + 1));
    let sym = m.symbol.as_deref().unwrap_or_default();
    assert!(
        sym.contains("kexec::pattern::STATIC_PATTERN+0x123"),
        "{sym}"
    );
    assert!(m.hexdump.as_deref().unwrap_or_default().contains("^^"));
}

#[test]
fn a_byte_flipped_in_b_while_a_runs_is_caught() {
    if !kvm_or_skip("a_byte_flipped_in_b_while_a_runs_is_caught") {
        return;
    }
    let (_, _, r) = ping_pong("pp-flip-b", &["--cycles", "3", "--inject", "flip-b@1"], 1);
    let m = only_mismatch(&r);
    let target = pattern_target();
    assert_eq!(m.kind, MismatchKind::Memory);
    assert_eq!(m.name.as_deref(), Some("page of kernel b"));
    assert_eq!(m.address, Some(target & !0xfff));
    assert_eq!((m.ranges[0].start, m.ranges[0].end), (target, target + 1));
}

#[test]
fn a_saved_register_changed_in_the_control_page_is_caught() {
    if !kvm_or_skip("a_saved_register_changed_in_the_control_page_is_caught") {
        return;
    }
    let (_, _, r) = ping_pong(
        "pp-saved-rbx",
        &["--cycles", "2", "--inject", "saved-rbx@1"],
        1,
    );
    let m = only_mismatch(&r);
    assert_eq!(m.kind, MismatchKind::Register);
    assert_eq!(m.name.as_deref(), Some("rbx"));
    assert_eq!(
        (m.at.kernel.as_str(), m.at.direction.as_str()),
        ("a", "resume")
    );
    let (e, a) = (
        u64::from_str_radix(m.expected.trim_start_matches("0x"), 16).unwrap(),
        u64::from_str_radix(m.actual.trim_start_matches("0x"), 16).unwrap(),
    );
    assert_eq!(e ^ a, 1, "{} -> {}", m.expected, m.actual);
}

#[test]
fn the_uart_changed_behind_a_is_caught() {
    if !kvm_or_skip("the_uart_changed_behind_a_is_caught") {
        return;
    }
    let (_, _, r) = ping_pong("pp-uart", &["--cycles", "2", "--inject", "uart-lcr@1"], 1);
    let m = only_mismatch(&r);
    assert_eq!(m.kind, MismatchKind::Device);
    assert_eq!(m.name.as_deref(), Some("uart lcr"));
    assert_eq!((m.expected.as_str(), m.actual.as_str()), ("0x3", "0x7"));
}

/// State no kernel saves (debug registers, MSRs, the local APIC) changed
/// behind the kernels' backs: only the VMM's capture can see it, and does,
/// at the next resume (A's in cycle 1; B's from cycle 2 on, as B resumes
/// first after A's suspend).
#[test]
fn vcpu_state_changed_behind_the_kernels_is_caught() {
    if !kvm_or_skip("vcpu_state_changed_behind_the_kernels_is_caught") {
        return;
    }
    for (inject, fields, kernel, cycle) in [
        ("vcpu-dr0", &["dr0"][..], "a", 1),
        (
            "vcpu-sysenter-eip",
            &["msr[0x00000176] SYSENTER_EIP"][..],
            "a",
            1,
        ),
        // The TPR shows in CR8 and the processor priority too.
        (
            "vcpu-lapic-tpr",
            &["cr8", "lapic.tpr", "lapic.ppr"][..],
            "a",
            1,
        ),
        ("vcpu-dr0@2", &["dr0"][..], "b", 2),
        // MSRs KVM does not list: probed and captured all the same.
        ("vcpu-mtrr", &["msr[0x000002ff] MTRR_DEF_TYPE"][..], "a", 1),
        ("vcpu-mc0-ctl", &["msr[0x00000400] MC0_CTL"][..], "a", 1),
    ] {
        let (_, _, r) = ping_pong(
            &format!("inject-{}", inject.replace('@', "-")),
            &["--cycles", "3", "--inject", inject],
            1,
        );
        let names: Vec<&str> = r
            .mismatches
            .iter()
            .filter_map(|m| m.name.as_deref())
            .collect();
        assert_eq!(names, fields, "{inject}");
        for m in &r.mismatches {
            assert_eq!(m.kind, MismatchKind::Register);
            assert_eq!(
                (m.at.kernel.as_str(), m.at.direction.as_str(), m.at.cycle),
                (kernel, "resume", cycle),
                "{inject}"
            );
        }
    }
}

/// The in-kernel interrupt controllers, the PIT and the KVM clock are part
/// of the machine: changed behind A's back as it resumes, each is caught as
/// exactly that device field.
#[test]
fn device_state_changed_behind_the_kernels_is_caught() {
    if !kvm_or_skip("device_state_changed_behind_the_kernels_is_caught") {
        return;
    }
    for (inject, field, note) in [
        ("irqchip-pic-imr", "pic.master.imr", None),
        ("irqchip-ioapic-mask", "ioapic.redir[4].mask", None),
        ("pit-count", "pit.channel0.count", None),
        // Time may advance across a jump, never run back.
        ("kvmclock-backwards", "kvmclock.clock", Some("went back")),
    ] {
        let (_, _, r) = ping_pong(
            &format!("inject-{inject}"),
            &["--cycles", "2", "--inject", inject],
            1,
        );
        assert_eq!(r.mismatches.len(), 1, "{inject}: {:#?}", r.mismatches);
        let m = &r.mismatches[0];
        assert_eq!(m.kind, MismatchKind::Device, "{inject}");
        assert_eq!(m.name.as_deref(), Some(field), "{inject}");
        assert_eq!(
            (m.at.kernel.as_str(), m.at.direction.as_str(), m.at.cycle),
            ("a", "resume", 1),
            "{inject}"
        );
        if let Some(n) = note {
            assert!(
                m.note.as_deref().unwrap_or("").contains(n),
                "{inject}: {m:?}"
            );
        }
    }
}

/// A re-entry path that skips a syscore restore (Linux's i8259A_resume,
/// ioapic_resume, the MTRR restore) leaves the peer's programming: B masks
/// the 8259s, routes IOAPIC pin 4 and sets MTRR_DEF_TYPE differently from
/// A, so each forgotten restore shows as exactly those fields, for A and
/// for B.
#[test]
fn interrupt_controllers_and_mtrrs_not_restored_are_caught() {
    if !kvm_or_skip("interrupt_controllers_and_mtrrs_not_restored_are_caught") {
        return;
    }
    for (inject, kernel, cycle, kind, fields) in [
        (
            "no-pic-restore@1",
            "a",
            1,
            MismatchKind::Device,
            &[
                ("pic.master.imr", "0x0", "0xfb"),
                ("pic.slave.imr", "0x0", "0xff"),
            ][..],
        ),
        (
            "no-ioapic-restore@1",
            "a",
            1,
            MismatchKind::Device,
            &[
                ("ioapic.redir[4].vector", "0x0", "0x34"),
                ("ioapic.redir[4].mask", "0x1", "0x0"),
            ][..],
        ),
        (
            "no-mtrr-restore@1",
            "a",
            1,
            MismatchKind::Register,
            &[("msr[0x000002ff] MTRR_DEF_TYPE", "0x0", "0xc06")][..],
        ),
        (
            "b:no-pic-restore@1",
            "b",
            2,
            MismatchKind::Device,
            &[
                ("pic.master.imr", "0xfb", "0x0"),
                ("pic.slave.imr", "0xff", "0x0"),
            ][..],
        ),
        (
            "b:no-mtrr-restore@1",
            "b",
            2,
            MismatchKind::Register,
            &[("msr[0x000002ff] MTRR_DEF_TYPE", "0xc06", "0x0")][..],
        ),
    ] {
        let (_, _, r) = ping_pong(
            &format!("syscore-{}", inject.replace([':', '@'], "-")),
            &["--cycles", "3", "--inject", inject],
            1,
        );
        let got: Vec<(&str, &str, &str)> = r
            .mismatches
            .iter()
            .map(|m| {
                (
                    m.name.as_deref().unwrap_or(""),
                    m.expected.as_str(),
                    m.actual.as_str(),
                )
            })
            .collect();
        assert_eq!(got, fields, "{inject}");
        for m in &r.mismatches {
            assert_eq!(m.kind, kind, "{inject}");
            assert_eq!(
                (m.at.kernel.as_str(), m.at.direction.as_str(), m.at.cycle),
                (kernel, "resume", cycle),
                "{inject}"
            );
        }
    }
}

/// B's first delivery is checked at B's entry, before its first
/// instruction: a byte of B's image changed in A's source pages is a
/// memory mismatch of kernel b in cycle 1, at the page of B's image, with
/// its symbol.
#[test]
fn a_corrupted_first_delivery_is_caught_at_bs_entry() {
    if !kvm_or_skip("a_corrupted_first_delivery_is_caught_at_bs_entry") {
        return;
    }
    let (_, err, r) = ping_pong(
        "flip-b-image",
        &["--cycles", "2", "--inject", "flip-b-image"],
        1,
    );
    let m = only_mismatch(&r);
    assert_eq!(m.kind, MismatchKind::Memory, "{err}");
    assert_eq!(
        (m.at.kernel.as_str(), m.at.direction.as_str(), m.at.cycle),
        ("b", "first entry", 1)
    );
    let at = pattern_target();
    assert_eq!(m.address, Some(at & !0xfff));
    assert_eq!(m.ranges.len(), 1);
    assert!(
        m.ranges[0]
            .symbol
            .as_deref()
            .unwrap_or("")
            .contains("STATIC_PATTERN"),
        "{m:?}"
    );
    assert!(m.note.as_deref().unwrap_or("").contains("first delivery"));
    // B never ran: no checkpoint of B was answered.
    assert!(
        r.checkpoints.iter().all(|c| c.kernel == "a"),
        "{:?}",
        r.checkpoints
    );
    // Only in cycle 1: B's image is delivered once.
    let o = kjump(&[
        "--scenario",
        "ping-pong",
        "--cycles",
        "3",
        "--inject",
        "flip-b-image@2",
    ]);
    let (_, err) = assert_exit(&o, 2);
    assert!(err.contains("cycle 1 only"), "{err}");
}

#[test]
fn unknown_fault_is_refused() {
    let (_, err) = assert_exit(
        &kjump(&["--scenario", "ping-pong", "--inject", "no-such-fault"]),
        2,
    );
    assert!(err.contains("no-such-fault"), "{err}");
}

#[test]
fn fifty_cycles_in_swap_and_backup_mode() {
    if !kvm_or_skip("fifty_cycles_in_swap_and_backup_mode") {
        return;
    }
    for mode in ["swap", "backup"] {
        let (out, _, r) = ping_pong(
            &format!("pp-50-{mode}"),
            &["--cycles", "50", "--mode", mode],
            0,
        );
        assert_clean(&r, 50);
        // B was resumed, never re-booted, on every cycle after the first.
        assert_eq!(out.matches("kjump guest kernel b").count(), 1, "{mode}");
        for n in 1..50 {
            assert!(
                out.contains(&format!("[b] b: resumed #{n} (not rebooted)")),
                "{mode}: resume #{n} missing"
            );
        }
    }
}

#[test]
fn hundred_cycles_in_both_modes_with_dirty_and_full_compare() {
    if !kvm_or_skip("hundred_cycles_in_both_modes_with_dirty_and_full_compare") {
        return;
    }
    for (mode, compare) in [("swap", "dirty"), ("swap", "full"), ("backup", "dirty")] {
        let (_, _, r) = ping_pong(
            &format!("pp-100-{mode}-{compare}"),
            &["--cycles", "100", "--mode", mode, "--compare", compare],
            0,
        );
        assert_clean(&r, 100);
        assert_eq!(r.compare_mode, compare);
        // After the first checkpoint only dirty pages are read: far fewer
        // than the 65536 pages of RAM.
        assert!(
            r.checkpoints.iter().skip(1).all(|c| c.dirty_pages < 16384),
            "{mode} {compare}"
        );
    }
}

/// No false positives over a long run: 2,000 cycles (7,999 checkpoints),
/// every one checked and in the report.
#[test]
fn two_thousand_cycles_every_checkpoint_checked() {
    if !kvm_or_skip("two_thousand_cycles_every_checkpoint_checked") {
        return;
    }
    let (_, _, r) = ping_pong("pp-2000", &["--cycles", "2000"], 0);
    assert_clean(&r, 2000);
    // Every checkpoint is in the report, in order, with its timing.
    assert!(
        r.checkpoints
            .iter()
            .enumerate()
            .all(|(i, c)| c.index == i as u64 && c.capture_us > 0)
    );
    assert_eq!(
        r.checkpoints
            .last()
            .map(|c| (c.cycle, c.kernel.as_str(), c.direction.as_str())),
        Some((2000, "a", "resume"))
    );
}

/// A failing run leaves two dumps, "left" and "found", that readelf and
/// `kjump inspect` read and that `kjump diff` explains: the injected byte
/// with its symbol, and in the registers only the checkpoint's answer and
/// the TSC.
#[test]
fn a_failing_run_leaves_two_dumps_that_diff_explains() {
    if !kvm_or_skip("a_failing_run_leaves_two_dumps_that_diff_explains") {
        return;
    }
    let dir = scratch("pp-dumps");
    let dumps = dir.join("dumps");
    let d = dumps.to_str().unwrap();
    assert_exit(
        &kjump(&[
            "--scenario",
            "ping-pong",
            "--cycles",
            "3",
            "--inject",
            "flip-a@2",
            "--dump-dir",
            d,
        ]),
        1,
    );
    let mut names: Vec<String> = std::fs::read_dir(&dumps)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".kjump.lock")
        .collect();
    names.sort();
    // Cycle 2: A suspended at checkpoint 3 and was found damaged at 6.
    assert_eq!(
        names,
        [
            "c00002-00003-a-suspend-left.core",
            "c00002-00006-a-resume-found.core"
        ]
    );
    let left = dumps.join(&names[0]);
    let found = dumps.join(&names[1]);

    let o = std::process::Command::new("readelf")
        .arg("-n")
        .arg(&found)
        .output()
        .unwrap();
    let notes = String::from_utf8_lossy(&o.stdout);
    assert!(
        notes.contains("NT_PRSTATUS") && notes.contains("KJUMP") && notes.contains("QEMU"),
        "{notes}"
    );

    let (out, _) = assert_exit(&kjump(&["inspect", found.to_str().unwrap()]), 0);
    assert!(out.contains("cycle 2 kernel a resume"), "{out}");

    let (out, _) = assert_exit(
        &kjump(&["diff", left.to_str().unwrap(), found.to_str().unwrap()]),
        1,
    );
    let target = pattern_target();
    assert!(out.contains("pages: 1 differ"), "{out}");
    assert!(
        out.contains(&format!(
            "[{:#x}..{:#x}) kjump_kernel::kexec::pattern::STATIC_PATTERN+0x123",
            target,
            target + 1
        )),
        "{out}"
    );
    // A's suspend and its resume: the answer and the TSC are expected.
    assert_only_answer_and_tsc_expected(&out);
}

/// `--dump every-jump` writes one dump per checkpoint; a kernel's dumps at
/// its suspend and at its resume hold the same registers but the answer
/// and the TSC. (Their memory differs where the peer's parked pages and
/// the control pages changed, which the oracle accounts for.)
#[test]
fn every_jump_dumps_of_a_clean_run_show_the_same_registers() {
    if !kvm_or_skip("every_jump_dumps_of_a_clean_run_show_the_same_registers") {
        return;
    }
    let dir = scratch("pp-every-jump");
    let d = dir.to_str().unwrap();
    assert_exit(
        &kjump(&[
            "--scenario",
            "ping-pong",
            "--cycles",
            "2",
            "--dump",
            "every-jump",
            "--dump-dir",
            d,
        ]),
        0,
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".core"))
        .collect();
    names.sort();
    assert_eq!(names.len(), checkpoints(2), "{names:?}");
    // A's suspend in cycle 2 and its resume: the same kernel at the same
    // instruction.
    let a = dir.join("c00002-00003-a-suspend.core");
    let b = dir.join("c00002-00006-a-resume.core");
    let (out, _) = assert_exit(
        &kjump(&["diff", a.to_str().unwrap(), b.to_str().unwrap()]),
        1,
    );
    assert_only_answer_and_tsc_expected(&out);
}

/// A deliberately buggy kernel, chosen on its command line: each bug is
/// caught at the first checkpoint that can see it, and named exactly.
fn guest_fault(name: &str, append: &str, code: i32) -> (String, String, Report) {
    ping_pong(
        name,
        &["--cycles", "3", "--timeout", "10", "--append", append],
        code,
    )
}

/// Every GPR the re-entry path can forget, in A and (some) in B: the
/// relocation code hands over with each GPR poisoned as `POISON + slot`, so
/// the forgotten register is found holding exactly its own poison.
#[test]
fn a_reentry_path_that_forgets_a_register_is_caught() {
    if !kvm_or_skip("a_reentry_path_that_forgets_a_register_is_caught") {
        return;
    }
    use kjump_abi::control::{HANDOVER_POISON, slot_by_name};
    let gprs = [
        "rbx", "rcx", "rsi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
    ];
    let cases = gprs.iter().map(|r| (*r, "a", 1)).chain([
        ("r12", "b", 2),
        ("rbp", "b", 2),
        ("r15", "b", 2),
    ]);
    for (reg, kernel, cycle) in cases {
        let inject = if kernel == "a" {
            format!("forget-{reg}")
        } else {
            format!("b:forget-{reg}")
        };
        let (_, _, r) = ping_pong(
            &format!("gf-forget-{reg}-{kernel}"),
            &["--cycles", "3", "--inject", &inject],
            1,
        );
        let m = only_mismatch(&r);
        assert_eq!(m.kind, MismatchKind::Register, "{reg}: {:#?}", r.mismatches);
        assert_eq!(m.name.as_deref(), Some(reg), "{reg}: {:#?}", r.mismatches);
        assert_eq!(
            (m.at.kernel.as_str(), m.at.direction.as_str(), m.at.cycle),
            (kernel, "resume", cycle)
        );
        let poison = HANDOVER_POISON + slot_by_name(reg).unwrap();
        assert_eq!(m.actual, format!("{poison:#x}"), "{reg}");
    }
    // rdx carries the checkpoint port: forgotten, the checkpoint reads port
    // 0x0003 (the poison's low bits); the VMM stops it there.
    let (_, err) = assert_exit(
        &kjump(&[
            "--scenario",
            "ping-pong",
            "--cycles",
            "3",
            "--inject",
            "forget-rdx",
        ]),
        2,
    );
    let line = err.lines().next().unwrap_or_default();
    assert!(
        line.contains("guest a: the checkpoint instruction read port 0x3")
            && line.contains(
                "rdx = 0x6b6a756d70000003 (the relocation code's handover poison for rdx"
            )
            && line.contains("(kjump_checkpoint (.text))"),
        "{err}"
    );
    // rsp: left on the relocation code's stack, and the report says so.
    let (_, _, r) = guest_fault("gf-forget-rsp", "kjump.fault=forget-rsp", 1);
    let m = &r.mismatches[0];
    assert_eq!(m.name.as_deref(), Some("rsp"));
    assert!(
        m.note
            .as_deref()
            .unwrap_or_default()
            .contains("the top of the relocation code's stack"),
        "{m:?}"
    );
}

#[test]
fn a_reentry_path_that_forgets_rflags_is_caught() {
    if !kvm_or_skip("a_reentry_path_that_forgets_rflags_is_caught") {
        return;
    }
    // The relocation code hands over with AC set (which no kernel has at
    // its jump): a forgotten rflags keeps it. The restore's push also
    // rewrites the stack slot kjump_jump's pushfq wrote, with that value.
    for (append, kernel) in [
        ("kjump.fault=forget-rflags", "a"),
        ("kjump.b.fault=forget-rflags", "b"),
    ] {
        let (_, _, r) = guest_fault(&format!("gf-forget-rflags-{kernel}"), append, 1);
        let m = &r.mismatches[0];
        assert_eq!(
            (m.kind, m.name.as_deref(), m.at.kernel.as_str()),
            (MismatchKind::Register, Some("rflags"), kernel),
            "{:#?}",
            r.mismatches
        );
        let hex = |v: &str| u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap();
        let ac = 1 << 18;
        assert!(
            hex(&m.actual) & ac != 0 && hex(&m.expected) & ac == 0,
            "{m:?}"
        );
    }
}

/// B runs with CR0.WP, CR4.PGE and EFER.NXE set, A without: a control
/// register that the re-entry path forgets holds the peer's value.
#[test]
fn a_reentry_path_that_forgets_a_control_register_is_caught() {
    if !kvm_or_skip("a_reentry_path_that_forgets_a_control_register_is_caught") {
        return;
    }
    // B sets EFER.NXE only where the CPU has NX (KVM passes the host's on).
    let nx = std::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 20) != 0;
    if !nx {
        eprintln!("no NX on this CPU: forget-efer is not exercised");
    }
    let cases = [
        ("cr0", 1u64 << 16, "a", 1),
        ("cr4", 1 << 7, "a", 1),
        ("efer", 1 << 11, "a", 1),
        ("cr0", 1 << 16, "b", 2),
        ("efer", 1 << 11, "b", 2),
    ];
    for (reg, bit, kernel, cycle) in cases.into_iter().filter(|c| nx || c.0 != "efer") {
        let append = if kernel == "a" {
            format!("kjump.fault=forget-{reg}")
        } else {
            format!("kjump.b.fault=forget-{reg}")
        };
        let (_, _, r) = guest_fault(&format!("gf-forget-{reg}-{kernel}"), &append, 1);
        let m = only_mismatch(&r);
        assert_eq!(
            (m.kind, m.name.as_deref()),
            (MismatchKind::Register, Some(reg)),
            "{kernel} {reg}: {:#?}",
            r.mismatches
        );
        assert_eq!(
            (m.at.kernel.as_str(), m.at.direction.as_str(), m.at.cycle),
            (kernel, "resume", cycle)
        );
        // Exactly the peer's bit: A gains it, B loses it.
        let hex = |v: &str| u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap();
        let (left, found) = (hex(&m.expected), hex(&m.actual));
        assert_eq!(left ^ found, bit, "{kernel} {reg}: {left:#x} -> {found:#x}");
        assert_eq!(found & bit != 0, kernel == "a");
    }
}

/// The GDT (and separately the IDT) not reloaded on the way back: the
/// kernel resumes on the relocation code's tables in its control page, and
/// the report says so.
#[test]
fn gdt_and_idt_not_restored_are_caught_on_the_relocation_tables() {
    if !kvm_or_skip("gdt_and_idt_not_restored_are_caught_on_the_relocation_tables") {
        return;
    }
    for (append, kernel, table, what) in [
        ("kjump.fault=no-gdt-restore", "a", "gdt", "GDT"),
        ("kjump.b.fault=no-gdt-restore", "b", "gdt", "GDT"),
        ("kjump.fault=no-idt-restore", "a", "idt", "IDT"),
        ("kjump.b.fault=no-idt-restore", "b", "idt", "IDT"),
    ] {
        let (_, _, r) = guest_fault(&format!("gf-no-{table}-{kernel}"), append, 1);
        assert_eq!(r.exit_code, 1);
        let base = format!("{table}.base");
        let m = r
            .mismatches
            .iter()
            .find(|m| m.name.as_deref() == Some(base.as_str()))
            .unwrap_or_else(|| panic!("{append}: no {base}: {:#?}", r.mismatches));
        assert_eq!(m.at.kernel, kernel);
        assert_eq!(m.at.direction, "resume");
        let note = m.note.as_deref().unwrap_or_default();
        assert!(
            note.contains(&format!("{kernel}'s control page"))
                && note.contains(&format!("the relocation code's {what}")),
            "{append}: {note}"
        );
        // Nothing but the table registers (and, with the GDT, the TR
        // that lives in it) differs.
        let prefixes: &[&str] = if table == "gdt" {
            &["gdt.", "tr."]
        } else {
            &["idt."]
        };
        for m in &r.mismatches {
            let n = m.name.as_deref().unwrap_or_default();
            assert!(
                prefixes.iter().any(|p| n.starts_with(p)),
                "{append}: unexpected {n}"
            );
        }
    }
}

/// The peer's re-entry point read from the wrong stack slot, or not
/// recorded at all (the preserve-context flag lost on the way back): the
/// jump that would enter the peer at the wrong place is stopped at its
/// checkpoint, with the slot and both addresses.
#[test]
fn a_wrong_reentry_point_is_caught_before_the_jump() {
    if !kvm_or_skip("a_wrong_reentry_point_is_caught_before_the_jump") {
        return;
    }
    let entry = {
        let elf = kjump::DEFAULT_KERNEL;
        u64::from_le_bytes(elf[24..32].try_into().unwrap())
    };
    for (inject, kernel, peer, found, cycle) in [
        ("wrong-reentry-slot", "a", "b", None, 2),
        ("b:wrong-reentry-slot", "b", "a", None, 2),
        ("lose-preserve", "a", "b", Some(entry), 2),
        // In a later cycle: the next jump would boot B again all the same.
        ("lose-preserve@3", "a", "b", Some(entry), 4),
        ("b:wrong-reentry-slot@2", "b", "a", None, 3),
    ] {
        let append = inject;
        let (out, err, r) = ping_pong(
            &format!("gf-{}", inject.replace([':', '@'], "-")),
            &["--cycles", "4", "--inject", inject],
            1,
        );
        let m = only_mismatch(&r);
        assert_eq!(m.kind, MismatchKind::Entry, "{append}");
        assert_eq!(
            (m.at.kernel.as_str(), m.at.direction.as_str(), m.at.cycle),
            (kernel, "suspend", cycle),
            "{append}"
        );
        assert_eq!(
            m.name.as_deref(),
            Some(format!("{kernel}'s entry into {peer}").as_str())
        );
        // The slot: DATA_PEER_ENTRY of the jumping kernel's control page.
        assert_eq!(m.address.map(|a| a & 0xfff), Some(0x600), "{append}");
        assert!(
            m.symbol
                .as_deref()
                .unwrap_or_default()
                .contains("DATA_PEER_ENTRY"),
            "{m:?}"
        );
        assert!(
            m.expected.contains(&format!("{peer}'s control page"))
                && m.expected.contains("relocate_peer_returned"),
            "{append}: {}",
            m.expected
        );
        if let Some(f) = found {
            assert!(m.actual.starts_with(&format!("{f:#x} ")), "{}", m.actual);
        }
        assert!(
            format!("{out}{err}").contains(&format!("{kernel}'s entry into {peer}")),
            "{out}{err}"
        );
    }
}

#[test]
fn fpu_and_uart_not_restored_are_caught() {
    if !kvm_or_skip("fpu_and_uart_not_restored_are_caught") {
        return;
    }
    let (_, _, r) = guest_fault("gf-no-fpu", "kjump.fault=no-fpu-restore", 1);
    let names: Vec<&str> = r
        .mismatches
        .iter()
        .filter_map(|m| m.name.as_deref())
        .collect();
    assert!(
        names.contains(&"mxcsr") && names.contains(&"xmm0"),
        "{names:?}"
    );
    assert!(
        r.mismatches
            .iter()
            .all(|m| m.kind == MismatchKind::Register)
    );

    let (_, _, r) = guest_fault("gf-no-uart", "kjump.fault=no-uart-restore", 1);
    let m = only_mismatch(&r);
    assert_eq!(m.kind, MismatchKind::Device);
    assert_eq!(m.name.as_deref(), Some("uart scr"));
    // A's scratch register is 0xa0, B's 0xb0: A found B's.
    assert_eq!((m.expected.as_str(), m.actual.as_str()), ("0xa0", "0xb0"));
}

#[test]
fn a_peer_that_writes_outside_its_memory_is_caught_at_the_address() {
    if !kvm_or_skip("a_peer_that_writes_outside_its_memory_is_caught_at_the_address") {
        return;
    }
    let (_, _, r) = guest_fault("gf-write-outside", "kjump.b.fault=write-outside", 1);
    let m = only_mismatch(&r);
    // B's RAM is [1 MiB, 9 MiB): the word lands at 9 MiB + 0x100, in A.
    assert_eq!(m.kind, MismatchKind::Memory);
    assert_eq!(m.name.as_deref(), Some("page of kernel a"));
    assert_eq!(m.address, Some(0x90_0000));
    assert_eq!((m.ranges[0].start, m.ranges[0].end), (0x90_0100, 0x90_0108));
    assert_eq!(
        (m.at.kernel.as_str(), m.at.direction.as_str()),
        ("b", "suspend")
    );
}

#[test]
fn a_peer_that_hangs_or_triple_faults_ends_the_run_with_its_rip() {
    if !kvm_or_skip("a_peer_that_hangs_or_triple_faults_ends_the_run_with_its_rip") {
        return;
    }
    for (fault, says, at) in [
        ("hang", "watchdog", "(kjump_kernel::cpu::spin_forever+"),
        ("triple", "triple fault", "(kjump_kernel::fault::fire+"),
    ] {
        let (_, err) = assert_exit(
            &kjump(&[
                "--scenario",
                "ping-pong",
                "--timeout",
                "3",
                "--append",
                &format!("kjump.b.fault={fault}"),
            ]),
            2,
        );
        assert!(
            err.contains("guest b") && err.contains(says) && err.contains("rip=0x"),
            "{err}"
        );
        // The rip is named by its symbol.
        assert!(err.lines().next().unwrap_or_default().contains(at), "{err}");
    }
}

#[test]
fn a_swap_back_that_skips_a_page_is_caught_on_both_sides() {
    if !kvm_or_skip("a_swap_back_that_skips_a_page_is_caught_on_both_sides") {
        return;
    }
    let (_, _, r) = guest_fault("gf-skip-swap-back", "kjump.fault=skip-swap-back", 1);
    // The first page of B's region stayed B's: A finds B's content at home,
    // and B's parked copy is A's.
    let pages: Vec<(Option<&str>, Option<u64>)> = r
        .mismatches
        .iter()
        .map(|m| (m.name.as_deref(), m.address))
        .collect();
    assert_eq!(
        pages,
        [
            (Some("page of kernel a"), Some(0x10_0000)),
            (Some("page of kernel b"), Some(0x10_0000))
        ]
    );
    assert_eq!(
        (
            r.mismatches[0].at.kernel.as_str(),
            r.mismatches[0].at.direction.as_str()
        ),
        ("a", "resume")
    );
}

/// Guest-side faults through `--inject [b:]KIND@CYCLE`: armed for the
/// kernel's jump in that cycle only, caught when the kernel comes back
/// from it; stop faults fire when the kernel arrives in that cycle.
#[test]
fn guest_faults_through_inject_fire_in_the_chosen_cycle() {
    if !kvm_or_skip("guest_faults_through_inject_fire_in_the_chosen_cycle") {
        return;
    }
    for (inject, kernel, cycle, reg) in [
        ("b:forget-r12@3", "b", 4, "r12"),
        ("forget-rbx@2", "a", 2, "rbx"),
        ("no-idt-restore@3", "a", 3, "idt.base"),
    ] {
        let (_, _, r) = ping_pong(
            &format!("inject-{}", inject.replace([':', '@'], "-")),
            &["--cycles", "5", "--inject", inject],
            1,
        );
        let m = &r.mismatches[0];
        assert_eq!(
            m.name.as_deref(),
            Some(reg),
            "{inject}: {:#?}",
            r.mismatches
        );
        assert_eq!(
            (m.at.kernel.as_str(), m.at.direction.as_str(), m.at.cycle),
            (kernel, "resume", cycle),
            "{inject}"
        );
        // The first mismatch is in that cycle: the ones before were clean.
        assert!(r.cycles_completed >= cycle - 1, "{inject}");
    }
    // A stop fault in cycle 3: kernel b triple-faults when resumed there.
    let (out, err) = assert_exit(
        &kjump(&[
            "--scenario",
            "ping-pong",
            "--cycles",
            "5",
            "--inject",
            "b:triple@3",
        ]),
        2,
    );
    assert!(err.contains("guest b: triple fault"), "{err}");
    // B is resumed for the second time in cycle 3, and A never comes back.
    assert!(
        out.contains("b: resumed #2 ") && !out.contains("a: cycle 3:"),
        "{out}"
    );
}

/// A fault the run could not catch is refused before anything boots: for
/// the wrong kernel, in a cycle whose effect the run would not reach, in a
/// scenario it does not belong to.
#[test]
fn faults_the_run_could_not_catch_are_refused() {
    for (inject, says) in [
        ("write-outside", "use --inject b:write-outside"),
        ("b:skip-swap-back", "kernel a's only"),
        ("b:lose-preserve", "kernel a's only"),
        ("b:forget-rdi", "unknown fault"),
        ("forget-rax", "unknown fault"),
        ("b:no-such-fault", "unknown fault"),
        ("forget-rbx@0", "cycles count from 1"),
        // --cycles 3 below.
        ("forget-rbx@4", "its effect shows in cycle 4, the run has 3"),
        (
            "b:forget-r12@3",
            "its effect shows in cycle 4, the run has 3",
        ),
        (
            "lose-preserve@3",
            "its effect shows in cycle 4, the run has 3",
        ),
        ("flip-b@3", "its effect shows in cycle 4, the run has 3"),
        ("flip-a@9", "its effect shows in cycle 9, the run has 3"),
        (
            "move-b-region",
            "no earlier region of b to move (use @2 or later)",
        ),
        (
            "move-b-region@1",
            "no earlier region of b to move (use @2 or later)",
        ),
        ("b:move-b-region@2", "kernel a's only"),
    ] {
        let (_, err) = assert_exit(
            &kjump(&[
                "--scenario",
                "ping-pong",
                "--cycles",
                "3",
                "--inject",
                inject,
            ]),
            2,
        );
        assert!(err.contains(says), "{inject}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    for inject in ["flip-a", "forget-rbx", "b:hang", "ud2@1"] {
        let (_, err) = assert_exit(&kjump(&["--scenario", "boot", "--inject", inject]), 2);
        assert!(
            err.contains("needs --scenario ping-pong"),
            "{inject}: {err}"
        );
    }
}

/// A's kimage report claims the page just past B's region (A's memory) as
/// a source page parked at itself, and B writes that page in the same
/// cycle: before, the claim hid the write and the run passed. Now, from
/// cycle 2 on, the claim of a page A's view had is a mismatch at the page
/// (which stays in A's view); in any cycle, the pair delivers outside B's
/// region.
#[test]
fn a_kimage_that_claims_a_live_page_of_its_kernel_is_caught_at_the_page() {
    if !kvm_or_skip("a_kimage_that_claims_a_live_page_of_its_kernel_is_caught_at_the_page") {
        return;
    }
    let view = "in kernel a's view at its last suspend";
    let outside = "outside the region it gives b";
    for (inject, mode, cycle, notes) in [
        ("claim-live-page@2", "swap", 2, &[view, outside][..]),
        ("claim-live-page@2", "backup", 2, &[view, outside][..]),
        ("claim-live-page", "swap", 1, &[outside][..]),
    ] {
        let (_, _, r) = ping_pong(
            &format!("gf-{}-{mode}", inject.replace('@', "-")),
            &["--cycles", "3", "--mode", mode, "--inject", inject],
            1,
        );
        assert_eq!(r.failed_kernel.as_deref(), Some("a"), "{inject} {mode}");
        assert_eq!(r.mismatches.len(), notes.len(), "{:#?}", r.mismatches);
        for (m, says) in r.mismatches.iter().zip(notes) {
            assert_eq!(m.kind, MismatchKind::Memory, "{inject} {mode}");
            assert_eq!(m.name.as_deref(), Some("page of kernel a"));
            assert_eq!(m.address, Some(0x90_0000), "{inject} {mode}");
            assert!(
                m.note.as_deref().is_some_and(|n| n.contains(says)),
                "{inject} {mode}: {:?}",
                m.note
            );
            assert_eq!(
                (m.at.kernel.as_str(), m.at.direction.as_str(), m.at.cycle),
                ("a", "suspend", cycle),
                "{inject} {mode}"
            );
        }
    }
}

/// A's kimage report claims a page of A's own text (`run_a`'s) as a source
/// page: caught at A's first suspend, the page named with its symbol.
#[test]
fn a_kimage_that_claims_its_kernels_own_text_is_caught_with_the_symbol() {
    if !kvm_or_skip("a_kimage_that_claims_its_kernels_own_text_is_caught_with_the_symbol") {
        return;
    }
    let (out, _, r) = guest_fault("gf-claim-own-text", "kjump.fault=claim-own-text", 1);
    let m = only_mismatch(&r);
    assert_eq!(m.kind, MismatchKind::Memory);
    assert_eq!(m.name.as_deref(), Some("page of kernel a"));
    let page = m.address.expect("the page");
    assert!(
        out.contains(&format!("a: my kimage claims page {page:#x}")),
        "{out}"
    );
    assert!(
        m.symbol.as_deref().is_some_and(|s| s.ends_with("(.text)")),
        "{:?}",
        m.symbol
    );
    assert!(
        m.note
            .as_deref()
            .is_some_and(|n| n.contains("in kernel a's own loaded image (.text)")),
        "{:?}",
        m.note
    );
    assert_eq!(
        (m.at.kernel.as_str(), m.at.direction.as_str(), m.at.cycle),
        ("a", "suspend", 1)
    );
}

/// A's kimage report lists B's first page a second time, parked in A's
/// control page: the control page is then kept twice, as a control page
/// and as a source page. Caught at A's suspend in the cycle of the report,
/// at that page, first. In swap mode from cycle 2 on, B's page is also
/// looked for where the report parks it (B's view, checked while A runs),
/// and is not there; in backup mode B's pages are parked by the other
/// list, and in cycle 1 B has no view yet.
#[test]
fn a_kimage_that_keeps_its_control_page_twice_is_caught_at_the_page() {
    if !kvm_or_skip("a_kimage_that_keeps_its_control_page_twice_is_caught_at_the_page") {
        return;
    }
    for (inject, mode, cycle, found) in [
        ("claim-control-page@2", "swap", 2, 2),
        ("claim-control-page@2", "backup", 2, 1),
        ("claim-control-page", "swap", 1, 1),
    ] {
        let (out, _, r) = ping_pong(
            &format!("gf-{}-{mode}", inject.replace('@', "-")),
            &["--cycles", "3", "--mode", mode, "--inject", inject],
            1,
        );
        assert_eq!(r.failed_kernel.as_deref(), Some("a"), "{inject} {mode}");
        assert_eq!(r.mismatches.len(), found, "{:#?}", r.mismatches);
        let m = &r.mismatches[0];
        let cp = m.address.expect("the page");
        // The page is A's control page, and the report claimed it.
        assert!(out.contains(&format!("control page {cp:#x},")), "{out}");
        assert!(
            out.contains(&format!("a: my kimage claims page {cp:#x}")),
            "{out}"
        );
        assert_eq!(m.kind, MismatchKind::Memory, "{inject} {mode}");
        assert_eq!(m.name.as_deref(), Some("page of kernel a"));
        assert_eq!(m.location, Some(cp));
        assert_eq!(
            (m.expected.as_str(), m.actual.as_str()),
            (
                "not kept by its kimage",
                "kept by its kimage as a source page"
            )
        );
        assert_eq!(
            m.note.as_deref(),
            Some(
                format!(
                    "kernel a's kimage keeps page {cp:#x} out of its view as a source page, but it is kept twice (a source page that is also a control page or another pair's): damage there would go unseen"
                )
                .as_str()
            ),
            "{inject} {mode}"
        );
        for m in &r.mismatches {
            assert_eq!(
                (m.at.kernel.as_str(), m.at.direction.as_str(), m.at.cycle),
                ("a", "suspend", cycle),
                "{inject} {mode}"
            );
        }
        if let Some(b) = r.mismatches.get(1) {
            assert_eq!(b.kind, MismatchKind::Memory);
            assert_eq!(b.name.as_deref(), Some("page of kernel b"));
            assert_eq!((b.address, b.location), (Some(0x10_0000), Some(cp)));
        }
    }
}

/// A's kimage report of cycle 2 gives B's region one page more at its end
/// than A's report of cycle 1 (B's view would take in a page of A's):
/// caught at A's suspend in cycle 2, both regions named.
#[test]
fn a_kimage_that_moves_bs_region_between_suspends_is_caught() {
    if !kvm_or_skip("a_kimage_that_moves_bs_region_between_suspends_is_caught") {
        return;
    }
    for mode in ["swap", "backup"] {
        let (out, _, r) = ping_pong(
            &format!("gf-move-b-region-{mode}"),
            &[
                "--cycles",
                "3",
                "--mode",
                mode,
                "--inject",
                "move-b-region@2",
            ],
            1,
        );
        assert!(
            out.contains("a: my kimage gives b 0x100000..0x901000"),
            "{out}"
        );
        let m = only_mismatch(&r);
        assert_eq!(m.kind, MismatchKind::Memory, "{mode}");
        assert_eq!(m.name.as_deref(), Some("kernel b's region in a's kimage"));
        assert_eq!(m.address, Some(0x10_0000));
        assert_eq!(
            (m.expected.as_str(), m.actual.as_str()),
            ("[0x100000..0x900000)", "[0x100000..0x901000)"),
            "{mode}"
        );
        assert_eq!(
            m.note.as_deref(),
            Some(
                "kernel a's kimage moved b's region (b's view) since its last suspend without loading b afresh"
            )
        );
        assert_eq!(
            (m.at.kernel.as_str(), m.at.direction.as_str(), m.at.cycle),
            ("a", "suspend", 2),
            "{mode}"
        );
    }
}
