//! Crash capture: kernel A reserves a region for the capture kernel B,
//! loads B there, panics on purpose; its panic path saves its registers
//! (the crash notes), checkpoints (the VMM's snapshot of A as it died),
//! backs up low memory and enters B, which writes A's memory as a vmcore
//! to the virtio-blk disk. The VMM checks the vmcore against its snapshot:
//! every page of A but the reserved region, and the NT_PRSTATUS registers.
//! Each fault of the catalog's crash faults is caught where it is.

mod common;

use std::process::Command;

use common::{assert_exit, gdb_or_skip, kjump, kvm_or_skip, scratch};
use kjump_abi::hibimage::{Header, ImageError};

const MIB: u64 = 1 << 20;

/// A crash run at 64M with 8M of low memory backed up: B runs in
/// [1M, 8M), the reserved region is [8M, 24M), A's other memory
/// [0, 1M) and [24M, 64M).
fn crash(extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--scenario", "crash", "--mem", "64M", "--backup-size", "8M"];
    args.extend_from_slice(extra);
    kjump(&args)
}

/// The report's mismatches.
fn mismatches(report: &std::path::Path) -> Vec<serde_json::Value> {
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    r["mismatches"].as_array().cloned().unwrap_or_default()
}

#[test]
fn b_saves_a_as_a_vmcore_that_matches_a_as_it_died() {
    if !kvm_or_skip("b_saves_a_as_a_vmcore_that_matches_a_as_it_died") {
        return;
    }
    let dir = scratch("crash-pass");
    let disk = dir.join("disk.raw");
    let report = dir.join("report.json");
    let (out, err) = assert_exit(
        &crash(&[
            "--disk",
            disk.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
            "--dump-dir",
            dir.join("dumps").to_str().unwrap(),
        ]),
        0,
    );
    let at = |s: &str| {
        out.find(s)
            .or_else(|| err.find(s))
            .unwrap_or_else(|| panic!("no {s:?} in\n{out}\n{err}"))
    };
    at("[a] a: crash kernel loaded in [0x800000..0x1800000)");
    let panic = at("[a] a: kernel panic (on purpose): jumping to the capture kernel");
    let saved = at(
        "[b] crash: b ran in [0x100000..0x800000) and wrote a's vmcore: 12288 pages in 3 ranges",
    );
    assert!(panic < saved, "{out}");
    at("kjump: crash: pass (1 of 1 cycles, 1 checkpoints, ");

    // The reserved region is excused, with its reason, in the report.
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let allowed = r["allowlist"].as_array().unwrap();
    assert!(
        allowed
            .iter()
            .any(|a| a["field"] == "memory [0x800000..0x1800000)"
                && a["reason"].as_str().unwrap().contains("crashkernel=")),
        "{r}"
    );

    // The disk holds a vmcore, not a resumable image: A's RAM outside the
    // reserved region, with A's registers in NT_PRSTATUS.
    let bytes = std::fs::read(&disk).unwrap();
    assert_eq!(Header::parse(&bytes).err(), Some(ImageError::NotResumable));
    let (h, prstatus) = Header::parse_vmcore(&bytes).expect("a valid vmcore header");
    let ranges: Vec<_> = h.ranges().map(|r| (r.start, r.len)).collect();
    assert_eq!(ranges, [(0, MIB), (MIB, 7 * MIB), (24 * MIB, 40 * MIB)]);
    let regs = kjump_abi::vmcore::prstatus_regs(prstatus).unwrap();
    assert_eq!(regs[16], h.entry, "rip is where a died");

    // --dump-dir keeps A as the VMM saw it die: a dump `kjump inspect`
    // reads, with the very registers of the vmcore's NT_PRSTATUS.
    let dump = dir.join("dumps/c00001-00000-a-suspend-left.core");
    let (info, _) = assert_exit(&kjump(&["inspect", "--json", dump.to_str().unwrap()]), 0);
    let j: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(j["registers"]["rip"].as_u64(), Some(regs[16]), "{j}");
    assert_eq!(j["registers"]["rsp"].as_u64(), Some(regs[19]), "{j}");
}

#[test]
fn gdb_opens_the_vmcore_with_a_backtrace_through_a_s_panic() {
    let test = "gdb_opens_the_vmcore_with_a_backtrace_through_a_s_panic";
    if !kvm_or_skip(test) || !gdb_or_skip(test) {
        return;
    }
    let dir = scratch("crash-gdb");
    let disk = dir.join("disk.raw");
    let elf = dir.join("kjump-guest.elf");
    std::fs::write(&elf, kjump::DEFAULT_KERNEL).unwrap();
    assert_exit(&crash(&["--disk", disk.to_str().unwrap(), "-q"]), 0);
    let g = Command::new("gdb")
        .args(["-q", "-batch", "-ex", "info registers rip", "-ex", "bt"])
        .arg(&elf)
        .arg(&disk)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&g.stdout);
    assert!(out.contains("<kjump_checkpoint+1>"), "{out}");
    let frames = [
        "in kjump_checkpoint ()",
        "kjump_kernel::kexec::jump::JumpImage::jump",
        "kjump_kernel::kexec::crash::panic_on_purpose",
        "kjump_kernel::kexec::crash::run_a",
        "kjump_kernel::kmain",
    ];
    let mut from = 0;
    for f in frames {
        let i = out[from..]
            .find(f)
            .unwrap_or_else(|| panic!("no frame {f:?} after byte {from} in\n{out}"));
        from += i;
    }
}

/// Runs the crash scenario with `fault`: exit code 1, and the report's
/// mismatches.
fn caught(name: &str, fault: &str) -> (String, Vec<serde_json::Value>) {
    let (out, ms, _) = caught_with_files(name, fault);
    (out, ms)
}

/// [`caught`], keeping the vmcore (`disk`) and A's panic dump (`dump`).
fn caught_with_files(name: &str, fault: &str) -> (String, Vec<serde_json::Value>, Saved) {
    let dir = scratch(name);
    let report = dir.join("report.json");
    let saved = Saved::in_dir(&dir);
    let (out, err) = assert_exit(
        &crash(&[
            "--inject",
            fault,
            "--report",
            report.to_str().unwrap(),
            "--disk",
            saved.disk.to_str().unwrap(),
            "--dump-dir",
            dir.join("dumps").to_str().unwrap(),
        ]),
        1,
    );
    assert!(out.contains("kjump: crash: FAIL"), "{fault}: {out}\n{err}");
    (out, mismatches(&report), saved)
}

/// A crash run's vmcore and A's panic dump.
struct Saved {
    disk: std::path::PathBuf,
    dump: std::path::PathBuf,
}

impl Saved {
    fn in_dir(dir: &std::path::Path) -> Self {
        Self {
            disk: dir.join("disk.raw"),
            dump: dir.join("dumps/c00001-00000-a-suspend-left.core"),
        }
    }

    fn disk(&self) -> &str {
        self.disk.to_str().unwrap()
    }

    fn dump(&self) -> &str {
        self.dump.to_str().unwrap()
    }
}

/// `kjump diff` of the vmcore and A's panic dump, both orders: exit code
/// `code`; the output with the vmcore first.
fn diff_both_ways(s: &Saved, code: i32) -> String {
    let (d, _) = assert_exit(&kjump(&["diff", s.disk(), s.dump()]), code);
    let (back, _) = assert_exit(&kjump(&["diff", s.dump(), s.disk()]), code);
    assert_eq!(
        d.lines().count(),
        back.lines().count(),
        "either order, the same differences:\n{d}\n{back}"
    );
    d
}

#[test]
fn inspect_and_diff_read_the_vmcore_and_resume_refuses_it() {
    if !kvm_or_skip("inspect_and_diff_read_the_vmcore_and_resume_refuses_it") {
        return;
    }
    let dir = scratch("crash-tools");
    let s = Saved::in_dir(&dir);
    assert_exit(
        &crash(&[
            "--disk",
            s.disk(),
            "--dump-dir",
            dir.join("dumps").to_str().unwrap(),
            "-q",
        ]),
        0,
    );
    let bytes = std::fs::read(&s.disk).unwrap();
    let (h, prstatus) = Header::parse_vmcore(&bytes).unwrap();
    let regs = kjump_abi::vmcore::prstatus_regs(prstatus).unwrap();

    // inspect: the kind, the ranges (the reserved region [8M, 24M) not
    // among them), A's registers from NT_PRSTATUS, its view in place.
    let (out, _) = assert_exit(&kjump(&["inspect", s.disk()]), 0);
    assert!(out.starts_with("kjump vmcore "), "{out}");
    assert!(
        out.contains(&format!(
            "entry {:#x}, flags 0x2 (vmcore, not resumable)",
            h.entry
        )),
        "{out}"
    );
    assert!(
        out.contains("ranges: 3, 12288 pages, every checksum verified"),
        "{out}"
    );
    assert!(
        out.contains("range 2 [0x1800000..0x4000000) 40 MiB"),
        "{out}"
    );
    assert!(out.contains("registers: the NT_PRSTATUS note"), "{out}");
    assert!(out.contains(&format!("rip {:#018x}", regs[16])), "{out}");
    assert!(out.contains("kernel a's view: its pages in place"), "{out}");
    let (json, _) = assert_exit(&kjump(&["inspect", "--json", s.disk()]), 0);
    let j: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(j["kind"], "vmcore", "{j}");
    assert_eq!(j["vmcore"], true, "{j}");
    assert_eq!(j["resumable"], false, "{j}");
    assert_eq!(
        j["registers"]["values"]["rsp"].as_u64(),
        Some(regs[19]),
        "{j}"
    );
    assert!(j["view"]["control"].is_null(), "{j}");

    // diff against A's panic dump: nothing differs, registers and every
    // page the vmcore holds; the reserved region, in the dump only, is
    // said to be left out and why.
    let d = diff_both_ways(&s, 0);
    assert!(
        d.contains("meta: image registers: the NT_PRSTATUS note"),
        "{d}"
    );
    assert!(
        d.contains("meta: image: a vmcore, kernel a's pages in place"),
        "{d}"
    );
    assert!(
        d.contains(
            "meta: not compared: [0x800000..0x1800000), the region kernel a reserved for the capture kernel (crashkernel=SIZE@ADDR on its command line)"
        ) && d.contains("4096 page(s) of the dump there are not in the vmcore"),
        "{d}"
    );
    assert!(d.contains("identical: registers and memory\n"), "{d}");

    // Not resumable: one line, exit code 2.
    let (out, err) = assert_exit(&kjump(&["resume", s.disk()]), 2);
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("kjump: error: ") && err.contains("cannot be resumed: it is a vmcore"),
        "{err}"
    );
}

#[test]
fn diff_of_a_damaged_vmcore_and_a_s_panic_dump_names_the_pages() {
    if !kvm_or_skip("diff_of_a_damaged_vmcore_and_a_s_panic_dump_names_the_pages") {
        return;
    }
    // A range left out: the first page of what is missing, with its symbol.
    let (_, _, s) = caught_with_files("crash-diff-skip", "b:vmcore-skip");
    let d = diff_both_ways(&s, 1);
    assert!(
        d.contains("problem: 10240 page(s) missing from the vmcore, from 0x1800000")
            && d.contains("the dump's [0x1800000..0x4000000)"),
        "{d}"
    );
    assert!(d.contains("pages: 0 differ"), "{d}");

    // Low memory read in place: the range's checksum, and the very pages
    // the VMM's own check named.
    let (_, ms, s) = caught_with_files("crash-diff-no-backup-read", "b:no-backup-read");
    let d = diff_both_ways(&s, 1);
    assert!(d.contains("range 1 [0x100000..0x800000) checksum"), "{d}");
    // The report's pages (its first mismatch is the range's checksum).
    let pages: Vec<u64> = ms
        .iter()
        .filter(|m| m["name"].is_null())
        .filter_map(|m| m["address"].as_u64())
        .collect();
    assert!(!pages.is_empty(), "{ms:?}");
    assert!(
        d.contains(&format!("pages: {} differ", pages.len())),
        "{d}\n{pages:x?}"
    );
    for p in pages {
        assert!(
            d.contains(&format!("  page {p:#x}: ")),
            "page {p:#x} not named:\n{d}"
        );
    }
}

#[test]
fn no_backup_is_caught_at_a_s_pages_of_low_memory() {
    if !kvm_or_skip("no_backup_is_caught_at_a_s_pages_of_low_memory") {
        return;
    }
    let (out, ms, saved) = caught_with_files("crash-no-backup", "no-backup");
    // A's doing, caught at B's entry (before B runs): A's kernel text is
    // the first page found lost, named by its symbol, with the backup
    // page it was looked for at.
    assert!(
        out.contains("kjump: crash: FAIL (kernel a, ")
            && out.contains("mismatch(es) in kernel a's hand-over to kernel b, found at b's entry"),
        "{out}"
    );
    assert!(
        out.contains("(cycle 1, kernel a, hand-over): memory: page 0x200000 (looked for at 0x")
            && out.contains(") in _start (.text)"),
        "{out}"
    );
    // Every page reported is in the low memory B ran in, looked for in
    // the backup region (in the reserved region [8M, 24M)), page for page.
    let offset = ms[0]["location"].as_u64().unwrap() - ms[0]["address"].as_u64().unwrap();
    for m in &ms {
        let a = m["address"].as_u64().unwrap();
        let l = m["location"].as_u64().unwrap();
        assert!((MIB..8 * MIB).contains(&a), "{m}");
        assert!((8 * MIB..24 * MIB).contains(&l), "{m}");
        assert_eq!(l - a, offset, "{m}");
        assert_eq!(m["kind"], "memory", "{m}");
        assert_eq!(m["kernel"], "a", "{m}");
        assert_eq!(m["direction"], "hand-over", "{m}");
    }
    assert!(ms.len() > 10, "{ms:?}");
    // B was not run on: the disk holds no vmcore.
    assert!(Header::parse_vmcore(&std::fs::read(&saved.disk).unwrap()).is_err());
}

#[test]
fn b_reading_low_memory_in_place_is_caught_at_the_pages_b_changed() {
    if !kvm_or_skip("b_reading_low_memory_in_place_is_caught_at_the_pages_b_changed") {
        return;
    }
    let (out, ms) = caught("crash-no-backup-read", "b:no-backup-read");
    assert!(
        out.contains("kjump: crash: FAIL (kernel b, ")
            && out.contains("memory: checksum of the vmcore's range at 0x100000"),
        "{out}"
    );
    // B's own boot data and kernel variables where A's were: pages of low
    // memory, some named by a symbol of the kernel's data.
    for m in &ms {
        let a = m["address"].as_u64().unwrap();
        assert!((MIB..8 * MIB).contains(&a), "{m}");
    }
    assert!(
        ms.iter().any(|m| m["symbol"]
            .as_str()
            .is_some_and(|s| s.contains("(.bss)") || s.contains("(.data)"))),
        "{ms:?}"
    );
}

#[test]
fn a_range_left_out_of_the_vmcore_is_named() {
    if !kvm_or_skip("a_range_left_out_of_the_vmcore_is_named") {
        return;
    }
    let (out, ms) = caught("crash-vmcore-skip", "b:vmcore-skip");
    assert!(
        out.contains("kjump: crash: FAIL (kernel b, ")
            && out.contains("memory: 10240 page(s) missing from the vmcore, from 0x1800000"),
        "{out}"
    );
    assert_eq!(ms.len(), 1, "{ms:?}");
    assert!(
        ms[0]["note"]
            .as_str()
            .unwrap()
            .contains("pages [0x1800000..0x4000000)"),
        "{ms:?}"
    );
}

#[test]
fn stale_crash_notes_are_caught_at_the_register() {
    if !kvm_or_skip("stale_crash_notes_are_caught_at_the_register") {
        return;
    }
    let (out, ms) = caught("crash-stale-notes", "stale-crash-notes");
    assert_eq!(ms.len(), 1, "{ms:?}");
    assert_eq!(ms[0]["kind"], "register");
    assert_eq!(ms[0]["name"], "rsp");
    assert_eq!(ms[0]["direction"], "hand-over");
    // A's doing, caught in its crash notes at B's entry.
    assert!(
        out.contains("kjump: crash: FAIL (kernel a, ")
            && out.contains("(cycle 1, kernel a, hand-over): register rsp: 0x")
            && out.contains("the crash notes at 0x"),
        "{out}"
    );
}

#[test]
fn b_writing_outside_its_region_is_caught_at_the_page() {
    if !kvm_or_skip("b_writing_outside_its_region_is_caught_at_the_page") {
        return;
    }
    let (out, ms) = caught("crash-write-outside", "b:write-outside-reserved");
    assert_eq!(ms.len(), 1, "{ms:?}");
    assert_eq!(ms[0]["address"], 24 * MIB);
    assert_eq!(ms[0]["ranges"][0]["start"], 24 * MIB);
    assert_eq!(ms[0]["ranges"][0]["end"], 24 * MIB + 8);
    assert!(
        out.contains("kjump: crash: FAIL (kernel b, ")
            && out.contains(
                "(cycle 1, kernel a, b's writes): memory: page written by kernel b 0x1800000"
            ),
        "{out}"
    );
}

#[test]
fn a_bad_backup_size_is_one_error_line_and_exit_code_2() {
    if !kvm_or_skip("a_bad_backup_size_is_one_error_line_and_exit_code_2") {
        return;
    }
    for bad in ["0", "4097", "12345678", "1G", "2M"] {
        let (out, err) = assert_exit(&crash_with_backup(bad), 2);
        assert!(out.is_empty(), "{bad}: {out}");
        assert_eq!(err.lines().count(), 1, "{bad}: {err}");
        assert!(
            err.starts_with("kjump: error: --backup-size "),
            "{bad}: {err}"
        );
    }
}

fn crash_with_backup(size: &str) -> std::process::Output {
    kjump(&["--scenario", "crash", "--mem", "64M", "--backup-size", size])
}

#[test]
fn a_b_that_powers_off_without_writing_finds_no_vmcore_of_an_earlier_run() {
    if !kvm_or_skip("a_b_that_powers_off_without_writing_finds_no_vmcore_of_an_earlier_run") {
        return;
    }
    // A disk that holds a good vmcore of this very A (an earlier run's):
    // a B that writes nothing must not pass on it.
    let dir = scratch("crash-power-off-early");
    let disk = dir.join("disk.raw");
    let d = disk.to_str().unwrap();
    assert_exit(&crash(&["--disk", d, "-q"]), 0);
    assert!(Header::parse_vmcore(&std::fs::read(&disk).unwrap()).is_ok());
    let (out, err) = assert_exit(&crash(&["--disk", d, "--inject", "b:power-off-early"]), 1);
    assert!(
        out.contains("b: INJECTED FAULT: powering off without writing"),
        "{out}\n{err}"
    );
    assert!(
        out.contains("kernel b's vmcore of a: ") && out.contains("not an ELF"),
        "{out}\n{err}"
    );
    assert!(!out.contains("was not caught"), "{out}");
}

#[test]
fn a_capture_kernel_loaded_outside_the_reserved_region_is_caught_at_its_pages() {
    if !kvm_or_skip("a_capture_kernel_loaded_outside_the_reserved_region_is_caught_at_its_pages") {
        return;
    }
    // The oracle excuses a kimage's pages from A's memory; a kexec -p that
    // puts them in A's own memory used to pass (and its vmcore held the
    // staging as A's).
    let (out, ms) = caught("crash-load-outside", "load-outside-reserved");
    assert!(
        out.contains("kjump: crash: FAIL (kernel a, ")
            && out.contains("mismatch(es) in kernel a's hand-over to kernel b, found at b's entry (b is not run: what it would save follows from them): first: checkpoint 0 (cycle 1, kernel a, hand-over): memory: ")
            && out.contains("page(s) of a's kimage outside the reserved region, from 0x"),
        "{out}"
    );
    assert!(!ms.is_empty());
    for m in &ms {
        // Every page named lies in A's memory above the reserved region.
        assert!(m["address"].as_u64().unwrap() >= 24 * MIB, "{m}");
        assert_eq!(m["expected"], "in [0x800000..0x1800000)", "{m}");
    }
}

#[test]
fn crash_information_pointing_outside_the_reserved_region_is_caught_before_b_runs() {
    if !kvm_or_skip(
        "crash_information_pointing_outside_the_reserved_region_is_caught_before_b_runs",
    ) {
        return;
    }
    // A's crash information puts its crash notes at 24M, the first page
    // past the reserved region [8M, 24M): A's own memory. The VMM refuses
    // the address before it reads there (a read would give registers that
    // differ: more mismatches), and B is not run on it.
    let (out, ms, saved) = caught_with_files("crash-bad-info", "bad-crash-info");
    assert!(
        out.contains("a: INJECTED FAULT: my crash information puts the crash notes at 0x1800000"),
        "{out}"
    );
    assert!(
        out.contains("kjump: crash: FAIL (kernel a, ")
            && out.contains(
                "(cycle 1, kernel a, hand-over): memory: kernel a's crash information, at 0x1800000"
            ),
        "{out}"
    );
    assert_eq!(ms.len(), 1, "{ms:?}");
    assert_eq!(ms[0]["kind"], "memory", "{ms:?}");
    assert_eq!(ms[0]["kernel"], "a", "{ms:?}");
    assert_eq!(ms[0]["direction"], "hand-over", "{ms:?}");
    assert_eq!(ms[0]["address"], 24 * MIB, "{ms:?}");
    assert!(
        ms[0]["note"]
            .as_str()
            .unwrap()
            .starts_with("the crash notes [0x1800000..+0x")
            && ms[0]["note"]
                .as_str()
                .unwrap()
                .ends_with(") is not in the reserved region [0x800000..0x1800000)"),
        "{ms:?}"
    );
    assert!(!out.contains("[b] "), "b ran:\n{out}");
    assert!(Header::parse_vmcore(&std::fs::read(&saved.disk).unwrap()).is_err());
}
