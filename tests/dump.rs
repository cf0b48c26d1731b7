//! Dumps opened by the real tools: gdb reads a kjump dump together with the
//! guest kernel's ELF and shows the registers and a backtrace with the
//! kernel's symbols (from plain values, without KVM; and from a real run).
//! And `kjump resume`: a fresh VM built from a dump of a real run goes on
//! to the end of the scenario, checked all the way.

mod common;
use common::{
    assert_exit, assert_only_answer_and_tsc_expected, gdb_or_skip, kjump, kvm_or_skip, scratch,
};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use kjump::GuestMem;
use kjump::commands::inspect as cmd_inspect;
use kjump_abi::elf::Elf;
use kjump_core::checkpoint::{CheckpointId, Direction, Kernel};
use kjump_core::dump::{DumpInput, read_dump, write_dump};
use kjump_core::report::{MismatchKind, Report, Verdict};
use kjump_core::state::VcpuState;
use kjump_core::symbols::Symbols;
use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress};

/// A 64-bit kernel state stopped at `rip`, with `rsp` pointing at a return
/// address.
fn state_at(rip: u64, rsp: u64) -> VcpuState {
    let mut s = VcpuState::default();
    s.regs.rip = rip;
    s.regs.rsp = rsp;
    s.regs.rbx = 0x1234_5678_9abc_def0;
    s.regs.rflags = 0x2;
    let data = kvm_segment {
        selector: 0x10,
        type_: 3,
        present: 1,
        s: 1,
        g: 1,
        limit: 0xffff_ffff,
        ..Default::default()
    };
    s.sregs.cs = kvm_segment {
        selector: 8,
        type_: 11,
        l: 1,
        ..data
    };
    (s.sregs.ds, s.sregs.es, s.sregs.ss) = (data, data, data);
    s.sregs.cr0 = 0x8000_0011;
    s.sregs.cr3 = 0x9000;
    s.sregs.cr4 = 0x20;
    s.sregs.efer = 0x500;
    s
}

#[test]
fn gdb_shows_registers_and_backtrace_of_a_dump() {
    if !gdb_or_skip("gdb_shows_registers_and_backtrace_of_a_dump") {
        return;
    }
    let dir = scratch("gdb-dump");
    let kernel = dir.join("kjump-guest");
    std::fs::write(&kernel, kjump::DEFAULT_KERNEL).unwrap();
    let syms = Symbols::from_elf(kjump::DEFAULT_KERNEL).unwrap();
    let rip = syms
        .address_of("kjump_checkpoint")
        .expect("the guest kernel has kjump_checkpoint");
    let entry = object_entry();
    let caller = syms.lookup(entry).expect("the entry point has a symbol");
    let caller = caller.split([' ', '+']).next().unwrap().to_string();

    // Guest RAM with the kernel at its load addresses and a stack above it
    // whose top holds a return address into the entry function.
    let elf = Elf::parse(kjump::DEFAULT_KERNEL).unwrap();
    let (_, end) = elf.extent().unwrap();
    let ram = (end + (4 << 20)) & !((2 << 20) - 1);
    let mem = GuestMem::from_ranges(&[(GuestAddress(0), ram as usize)]).unwrap();
    for seg in elf.segments() {
        mem.write_slice(seg.data, GuestAddress(seg.paddr)).unwrap();
    }
    let rsp = ram - 0x1000;
    mem.write_obj(entry + 1, GuestAddress(rsp)).unwrap();

    let state = state_at(rip, rsp);
    let id = CheckpointId {
        index: 0,
        cycle: 1,
        kernel: Kernel::A,
        direction: Direction::Suspend,
    };
    let dump = dir.join("a.core");
    let input = DumpInput {
        state: &state,
        id: &id,
        jump_back_entry: rip,
        resumable: true,
        memory: &mem,
        kernel_name: "built-in",
        mem_size: ram,
        kjump_version: env!("CARGO_PKG_VERSION"),
        resume: None,
    };
    write_dump(&dump, &input).unwrap();
    assert_eq!(read_dump(&dump).unwrap().state(), &state);
    let inspect = cmd_inspect(&dump, false).unwrap();
    assert!(inspect.contains(&format!("rip {rip:#018x}")), "{inspect}");

    let out = Command::new("gdb")
        .args([
            "-batch",
            "-nx",
            "-ex",
            "info registers rip",
            "-ex",
            "info registers rbx",
            "-ex",
            "bt 2",
        ])
        .arg(&kernel)
        .arg(&dump)
        .output()
        .expect("gdb runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let all = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(out.status.success(), "{all}");
    let line = |start: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start}: {all}"))
    };
    let rip_line = line("rip");
    assert!(
        rip_line.contains(&format!("{rip:#x}")) && rip_line.contains("<kjump_checkpoint>"),
        "{all}"
    );
    assert!(line("rbx").contains("0x123456789abcdef0"), "{all}");
    let frame0 = line("#0");
    assert!(frame0.contains("kjump_checkpoint"), "{all}");
    // The return address on the dump's stack, resolved in the kernel.
    let frame1 = line("#1");
    // gdb names the function at the return address: any of the symbols at
    // the entry point (`_start`, `__kernel_start` share it).
    let func = frame1
        .split(" in ")
        .nth(1)
        .and_then(|f| f.split_whitespace().next())
        .unwrap_or_else(|| panic!("no function in frame #1: {all}"));
    assert!(
        frame1.contains(&format!("{:#018x}", entry + 1))
            && (func == caller || syms.address_of(func) == Some(entry)),
        "{all}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The kernel's ELF entry point.
fn object_entry() -> u64 {
    Elf::parse(kjump::DEFAULT_KERNEL).unwrap().entry
}

/// Cycles of the run whose dumps the tests below resume.
const CYCLES: u64 = 3;

/// The directory of the dumps of one real 3-cycle ping-pong run with
/// `--dump every-jump` (run once, by whichever test needs it first).
fn every_jump_dumps() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("every-jump");
        let dumps = dir.join("dumps");
        let cycles = CYCLES.to_string();
        let args = [
            "--scenario",
            "ping-pong",
            "--cycles",
            &cycles,
            "--peer-mem",
            "4M",
            "--dump",
            "every-jump",
            "--dump-dir",
            dumps.to_str().unwrap(),
        ];
        assert_exit(&kjump(&args), 0);
        dumps
    })
}

/// The dump of checkpoint `index` of the every-jump run, by its name.
fn dump_of(index: u64, cycle: u64, kernel: &str, direction: &str) -> PathBuf {
    let p = every_jump_dumps().join(format!("c{cycle:05}-{index:05}-{kernel}-{direction}.core"));
    assert!(p.exists(), "no dump {}", p.display());
    p
}

/// `kjump resume DUMP --report ...`: exit code, stdout, stderr, report.
fn resume(name: &str, dump: &Path, code: i32) -> (String, String, Report) {
    let dir = scratch(name);
    let report = dir.join("report.json");
    let out = kjump(&[
        "resume",
        dump.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    let (stdout, stderr) = assert_exit(&out, code);
    let json = std::fs::read_to_string(&report).expect("the report was written");
    (
        stdout,
        stderr,
        Report::from_json(&json).expect("the report parses"),
    )
}

/// A resumed run passed, checked every checkpoint from `next` on, and
/// counted the cycles of the whole run.
fn assert_resumed(r: &Report, next: u64, out: &str) {
    assert_eq!(r.verdict, Verdict::Pass, "{out}");
    assert_eq!((r.exit_code, r.cycles_requested), (0, CYCLES));
    assert_eq!(r.cycles_completed, CYCLES, "{out}");
    assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
    let last = 3 + 4 * (CYCLES - 1) - 1;
    let indices: Vec<u64> = r.checkpoints.iter().map(|c| c.index).collect();
    assert_eq!(indices, (next..=last).collect::<Vec<_>>(), "{out}");
    // Every checkpoint compared the away kernel's view, and a resume its
    // own too, registers included (nothing skipped after the dump).
    assert!(r.checkpoints.iter().all(|c| c.pages_compared > 0), "{out}");
    assert!(
        out.contains(&format!(
            "kjump: ping-pong: pass ({CYCLES} of {CYCLES} cycles, {} checkpoints, ",
            last + 1 - next
        )),
        "{out}"
    );
}

#[test]
fn resume_of_an_a_suspend_dump_completes_the_scenario() {
    if !kvm_or_skip("resume_of_an_a_suspend_dump_completes_the_scenario") {
        return;
    }
    let (out, _, r) = resume("resume-a-suspend", &dump_of(3, 2, "a", "suspend"), 0);
    assert_resumed(&r, 4, &out);
    // B is resumed (not booted) from the dump's RAM, then A.
    assert!(!out.contains("kjump guest kernel b"), "{out}");
    assert!(
        out.contains("[b] b: resumed #1 (not rebooted), state intact"),
        "{out}"
    );
    assert!(
        out.contains("[a] a: cycle 2: back from b, state intact"),
        "{out}"
    );
    let first = &r.checkpoints[0];
    assert_eq!(
        (first.kernel.as_str(), first.direction.as_str()),
        ("b", "resume")
    );
}

#[test]
fn resume_of_a_b_resume_dump_completes_the_scenario() {
    if !kvm_or_skip("resume_of_a_b_resume_dump_completes_the_scenario") {
        return;
    }
    let (out, _, r) = resume("resume-b-resume", &dump_of(4, 2, "b", "resume"), 0);
    assert_resumed(&r, 5, &out);
    // B goes on from its checkpoint: its resume self-check, then A's
    // first resume is checked against A's record in the dump.
    assert!(
        out.contains("[b] b: resumed #1 (not rebooted), state intact"),
        "{out}"
    );
    let a_back = r.checkpoints.iter().find(|c| c.index == 6).unwrap();
    assert_eq!(
        (a_back.kernel.as_str(), a_back.direction.as_str()),
        ("a", "resume")
    );
}

#[test]
fn resume_of_the_last_a_resume_dump_completes_the_scenario() {
    if !kvm_or_skip("resume_of_the_last_a_resume_dump_completes_the_scenario") {
        return;
    }
    let last = 3 + 4 * (CYCLES - 1) - 1;
    let (out, _, r) = resume("resume-last", &dump_of(last, CYCLES, "a", "resume"), 0);
    // Nothing left to check but A's own verdict.
    assert_resumed(&r, last + 1, &out);
    assert!(
        out.contains(&format!("[a] a: cycle {CYCLES}: back from b, state intact")),
        "{out}"
    );
}

#[test]
fn a_resumed_run_checks_the_away_kernels_registers_from_the_dump() {
    if !kvm_or_skip("a_resumed_run_checks_the_away_kernels_registers_from_the_dump") {
        return;
    }
    // The dump of A's suspend in cycle 2, with B's recorded rbx (from B's
    // suspend #1) changed: B's resume #4 must be caught on rbx.
    let dir = scratch("resume-damaged-record");
    let src = read_dump(&dump_of(3, 2, "a", "suspend")).unwrap();
    let mut record = src.resume().unwrap().clone();
    let peer = record.peer.as_mut().unwrap();
    assert_eq!(peer.kernel, Kernel::B);
    peer.state.regs.rbx ^= 0x10;
    let damaged = dir.join("damaged.core");
    let input = DumpInput {
        state: src.state(),
        id: &src.meta().id,
        jump_back_entry: src.meta().jump_back_entry,
        resumable: true,
        memory: &src,
        kernel_name: &src.meta().kernel_name,
        mem_size: src.meta().mem_size,
        kjump_version: env!("CARGO_PKG_VERSION"),
        resume: Some(&record),
    };
    write_dump(&damaged, &input).unwrap();
    let (out, _, r) = resume("resume-damaged-record-run", &damaged, 1);
    assert_eq!(r.verdict, Verdict::Fail, "{out}");
    let m = &r.mismatches[0];
    assert_eq!(
        (
            m.at.checkpoint,
            m.at.kernel.as_str(),
            m.at.direction.as_str()
        ),
        (4, "b", "resume")
    );
    assert_eq!(
        (m.kind, m.name.as_deref()),
        (MismatchKind::Register, Some("rbx")),
        "{out}"
    );
    assert_eq!(r.mismatches.len(), 1, "{:?}", r.mismatches);
}

#[test]
fn a_truncated_or_unresumable_dump_is_one_line_and_exit_2() {
    if !kvm_or_skip("a_truncated_or_unresumable_dump_is_one_line_and_exit_2") {
        return;
    }
    let dir = scratch("resume-bad");
    let src = dump_of(3, 2, "a", "suspend");
    let bytes = std::fs::read(&src).unwrap();
    let cut = dir.join("cut.core");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (_, err, r) = resume("resume-bad-cut", &cut, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("kjump: error: ") && err.contains("truncated dump"),
        "{err}"
    );
    assert_eq!(r.verdict, Verdict::Error);

    // A sound dump without a resume record.
    let d = read_dump(&src).unwrap();
    let plain = dir.join("plain.core");
    let input = DumpInput {
        state: d.state(),
        id: &d.meta().id,
        jump_back_entry: d.meta().jump_back_entry,
        resumable: true,
        memory: &d,
        kernel_name: "built-in",
        mem_size: d.meta().mem_size,
        kjump_version: env!("CARGO_PKG_VERSION"),
        resume: None,
    };
    write_dump(&plain, &input).unwrap();
    let out = kjump(&["resume", plain.to_str().unwrap()]);
    let (_, err) = assert_exit(&out, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot be resumed: it has no resume record"),
        "{err}"
    );
}

#[test]
fn gdb_shows_the_checkpoint_and_a_backtrace_of_a_real_dump() {
    if !kvm_or_skip("gdb_shows_the_checkpoint_and_a_backtrace_of_a_real_dump")
        || !gdb_or_skip("gdb_shows_the_checkpoint_and_a_backtrace_of_a_real_dump")
    {
        return;
    }
    let dir = scratch("gdb-real-dump");
    let kernel = dir.join("kjump-guest");
    std::fs::write(&kernel, kjump::DEFAULT_KERNEL).unwrap();
    for dump in [dump_of(3, 2, "a", "suspend"), dump_of(4, 2, "b", "resume")] {
        let out = Command::new("gdb")
            .args(["-batch", "-nx", "-ex", "info registers rip", "-ex", "bt"])
            .arg(&kernel)
            .arg(&dump)
            .output()
            .expect("gdb runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let all = format!(
            "{}\n--- stdout\n{stdout}\n--- stderr\n{}",
            dump.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{all}");
        // The state is after the checkpoint's `in eax, dx` (one byte).
        let rip = stdout
            .lines()
            .find(|l| l.starts_with("rip"))
            .unwrap_or_else(|| panic!("{all}"));
        assert!(rip.contains("<kjump_checkpoint+1>"), "{all}");
        let frames = stdout.lines().filter(|l| l.starts_with('#')).count();
        assert!(frames > 1, "{frames} frames: {all}");
        assert!(stdout.contains("#1 ") && stdout.contains("kexec"), "{all}");
    }
}

/// A run with an injected flip leaves "left" and "found" dumps of A's
/// suspend and resume: `kjump diff` finds the flipped byte with its
/// symbol, and the checkpoint's answer and the TSC only as expected.
#[test]
fn diff_of_a_mismatchs_dumps_finds_the_byte_and_expects_answer_and_tsc() {
    if !kvm_or_skip("diff_of_a_mismatchs_dumps_finds_the_byte_and_expects_answer_and_tsc") {
        return;
    }
    let dir = scratch("diff-flip");
    let dumps = dir.join("dumps");
    assert_exit(
        &kjump(&[
            "--scenario",
            "ping-pong",
            "--cycles",
            "3",
            "--peer-mem",
            "4M",
            "--inject",
            "flip-a@2",
            "--dump-dir",
            dumps.to_str().unwrap(),
        ]),
        1,
    );
    let left = dumps.join("c00002-00003-a-suspend-left.core");
    let found = dumps.join("c00002-00006-a-resume-found.core");
    let (out, _) = assert_exit(
        &kjump(&["diff", left.to_str().unwrap(), found.to_str().unwrap()]),
        1,
    );
    assert!(
        out.contains("pair: kernel a's suspend #3 and its resume #6"),
        "{out}"
    );
    assert_only_answer_and_tsc_expected(&out);
    assert!(out.contains("pages: 1 differ"), "{out}");
    let pattern = Symbols::from_elf(kjump::DEFAULT_KERNEL)
        .unwrap()
        .address_of("kjump_kernel::kexec::pattern::STATIC_PATTERN")
        .expect("the guest has STATIC_PATTERN");
    let at = pattern + 0x123;
    assert!(
        out.contains(&format!(
            "[{at:#x}..{:#x}) kjump_kernel::kexec::pattern::STATIC_PATTERN+0x123",
            at + 1
        )),
        "{out}"
    );
    // The other way round: the same verdict.
    let (back, _) = assert_exit(
        &kjump(&["diff", found.to_str().unwrap(), left.to_str().unwrap()]),
        1,
    );
    assert!(back.contains("registers: 0 differ\n"), "{back}");
}

/// A clean run's every-jump dumps of a kernel's suspend and its resume
/// hold the same registers but what the oracle allows, for A and for B;
/// dumps that are not such a pair are shown raw.
#[test]
fn diff_of_a_suspend_and_its_resume_expects_answer_and_tsc() {
    if !kvm_or_skip("diff_of_a_suspend_and_its_resume_expects_answer_and_tsc") {
        return;
    }
    let diff = |a: &Path, b: &Path| {
        let o = kjump(&["diff", a.to_str().unwrap(), b.to_str().unwrap()]);
        common::text(&o).0
    };
    for (s, r, pair) in [
        (
            dump_of(3, 2, "a", "suspend"),
            dump_of(6, 2, "a", "resume"),
            "kernel a's suspend #3 and its resume #6",
        ),
        (
            dump_of(5, 2, "b", "suspend"),
            dump_of(8, 3, "b", "resume"),
            "kernel b's suspend #5 and its resume #8",
        ),
    ] {
        let out = diff(&s, &r);
        assert!(out.contains(&format!("pair: {pair}")), "{out}");
        assert_only_answer_and_tsc_expected(&out);
        // Memory is compared as is: the peer's parked pages and the control
        // pages changed between the two.
        assert!(!out.contains("pages: 0 differ"), "{out}");
    }
    // A's suspend in cycle 2 and its resume in cycle 3 are no pair: rax and
    // the TSC are plain differences.
    let out = diff(
        &dump_of(3, 2, "a", "suspend"),
        &dump_of(10, 3, "a", "resume"),
    );
    assert!(
        !out.contains("pair:") && !out.contains("expected:"),
        "{out}"
    );
    assert!(out.contains("  rax: 0x504d554a -> 0x4b434142"), "{out}");
    assert!(out.contains("  msr[0x00000010] TSC: "), "{out}");
}

/// `kjump resume` with an unusable KVM device: one line naming it, exit
/// code 2, no dump written, an error report.
#[test]
fn resume_with_an_unusable_kvm_device_is_one_line_and_exit_2() {
    if !kvm_or_skip("resume_with_an_unusable_kvm_device_is_one_line_and_exit_2") {
        return;
    }
    let src = dump_of(3, 2, "a", "suspend");
    let dir = scratch("resume-kvm-dev");
    let missing = dir.join("no-such-kvm");
    for (dev, cause) in [
        (missing.as_path(), "No such file or directory"),
        (
            Path::new("/dev/null"),
            "is not a KVM device (a character device 1:3",
        ),
    ] {
        let dumps = dir.join("dumps");
        let report = dir.join("report.json");
        let o = kjump(&[
            "resume",
            src.to_str().unwrap(),
            "--kvm-device",
            dev.to_str().unwrap(),
            "--dump",
            "every-jump",
            "--dump-dir",
            dumps.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ]);
        let (out, err) = assert_exit(&o, 2);
        assert_eq!(out, "");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("kjump: error: ")
                && err.contains(dev.to_str().unwrap())
                && err.contains(cause),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(&dumps)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_name() != ".kjump.lock")
                .count(),
            0,
            "dumps written"
        );
        let r = Report::from_json(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!((r.verdict, r.exit_code), (Verdict::Error, 2));
        assert!(r.error.unwrap().contains(cause));
    }
}

/// A `--dump-dir` belongs to one run at a time: another run using it is
/// refused, naming the holder, before anything boots.
#[test]
fn a_dump_dir_in_use_is_refused() {
    let dir = scratch("locked-dump-dir");
    let dumps = dir.join("dumps");
    std::fs::create_dir_all(&dumps).unwrap();
    let held = kjump_core::files::lock_dir(&dumps).unwrap();
    let (out, err) = assert_exit(
        &kjump(&["--cycles", "1", "--dump-dir", dumps.to_str().unwrap()]),
        2,
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "is in use by another kjump run (pid {})",
            std::process::id()
        )),
        "{err}"
    );
    assert!(!out.contains("[a]"), "the guest booted:\n{out}");
    drop(held);
}

/// Every-jump dumps that would not fit (the file system, or the
/// `--dump-max-bytes` budget) stop the run after the first dump, with the
/// estimate, instead of filling the disk.
#[test]
fn every_jump_dumps_that_would_not_fit_are_refused_early() {
    if !kvm_or_skip("every_jump_dumps_that_would_not_fit_are_refused_early") {
        return;
    }
    let dir = scratch("dump-budget");
    let dumps = dir.join("dumps");
    let (_, err) = assert_exit(
        &kjump(&[
            "--cycles",
            "3",
            "--dump",
            "every-jump",
            "--dump-dir",
            dumps.to_str().unwrap(),
            "--dump-max-bytes",
            "6M",
        ]),
        2,
    );
    assert!(err.contains("--dump every-jump would write about"), "{err}");
    assert!(err.contains("in 10 dumps"), "{err}");
    let written: Vec<_> = std::fs::read_dir(&dumps)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".core"))
        .collect();
    assert_eq!(written.len(), 1, "{err}");
}
