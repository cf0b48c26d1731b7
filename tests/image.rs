//! The hibernation image is a dump: `kjump inspect`, `kjump diff`, `kjump
//! image extract`, `kjump image view` and gdb read the disk that kernel B
//! wrote in a real hibernate run; damaged images are refused with one
//! line and exit code 2.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{assert_exit, kjump, kvm_or_skip, scratch, skip};
use kjump_abi::hibimage::Header;
use kjump_core::symbols::Symbols;

/// One hibernate run shared by the tests: its disk (B's image of A) and
/// kernel A's suspend dump.
struct Saved {
    dir: PathBuf,
    disk: PathBuf,
    suspend: PathBuf,
    /// The run's stdout and stderr.
    out: String,
}

fn hibernate(name: &str, extra: &[&str], code: i32) -> Saved {
    let dir = scratch(name);
    let disk = dir.join("disk.raw");
    let dumps = dir.join("dumps");
    let mut args = vec![
        "--scenario",
        "hibernate",
        "--mem",
        "64M",
        "--disk",
        disk.to_str().unwrap(),
        "--dump-dir",
        dumps.to_str().unwrap(),
        "--dump",
        "every-jump",
    ];
    args.extend_from_slice(extra);
    let (out, err) = assert_exit(&kjump(&args), code);
    assert!(!err.contains("is ignored"), "{err}");
    Saved {
        dir,
        disk,
        suspend: dumps.join("c00001-00000-a-suspend.core"),
        out: out + &err,
    }
}

fn saved() -> &'static Saved {
    static S: OnceLock<Saved> = OnceLock::new();
    S.get_or_init(|| hibernate("image-tools", &[], 0))
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A copy of the disk in `name`, changed by `f`.
fn damaged(name: &str, f: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let s = saved();
    let mut bytes = std::fs::read(&s.disk).unwrap();
    f(&mut bytes);
    let p = s.dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn header_of(disk: &Path) -> (u64, Vec<(u64, u64, u64)>, u64) {
    let bytes = std::fs::read(disk).unwrap();
    let h = Header::parse(&bytes).unwrap();
    let ranges = h.ranges().map(|r| (r.start, r.len, r.checksum)).collect();
    (h.entry, ranges, h.image_size())
}

#[test]
fn inspect_shows_the_ranges_checksums_entry_flags_and_a_saved_registers() {
    if !kvm_or_skip("inspect_shows_the_ranges_checksums_entry_flags_and_a_saved_registers") {
        return;
    }
    let s = saved();
    let (entry, ranges, size) = header_of(&s.disk);
    let (out, _) = assert_exit(&kjump(&["inspect", arg(&s.disk)]), 0);
    assert!(out.starts_with("kjump hibernation image "), "{out}");
    assert!(
        out.contains(&format!("image {size} bytes (3 program headers)")),
        "{out}"
    );
    assert!(
        out.contains(&format!("entry {entry:#x}, flags 0x1 (resumable)")),
        "{out}"
    );
    assert!(out.contains("ranges: 2, 14336 pages, every checksum verified"));
    for (i, (start, len, sum)) in ranges.iter().enumerate() {
        let line = format!(
            "  range {i} [{start:#x}..{:#x}) {} MiB, checksum {sum:#018x}",
            start + len,
            len >> 20
        );
        assert!(out.contains(&line), "{line}\n{out}");
    }
    // A's registers: its saved context in the control page of its entry,
    // where rdi holds that control page (the jump's argument).
    let cp = entry & !0xfff;
    assert!(
        out.contains(&format!(
            "registers: kernel a's saved context in its control page {cp:#x}"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("rdi {cp:#018x}")), "{out}");
    assert!(
        out.contains("2048 page(s) parked by its kimage in source pages"),
        "{out}"
    );
    assert!(out.contains("KJUMP  type 0x4b4a0002"), "{out}");

    let (json, _) = assert_exit(&kjump(&["inspect", "--json", arg(&s.disk)]), 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["format"], "kjump-image");
    assert_eq!(v["entry"], entry);
    assert_eq!(v["resumable"], true);
    let got: Vec<(u64, u64, u64)> = v["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["start"].as_u64().unwrap(),
                r["len"].as_u64().unwrap(),
                r["checksum"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, ranges);
    assert_eq!(v["registers"]["values"]["rdi"], cp);
}

#[test]
fn extract_writes_exactly_the_image_and_inspect_reads_it_alone() {
    if !kvm_or_skip("extract_writes_exactly_the_image_and_inspect_reads_it_alone") {
        return;
    }
    let s = saved();
    let (_, _, size) = header_of(&s.disk);
    let out = s.dir.join("extracted.core");
    assert_exit(&kjump(&["image", "extract", arg(&s.disk), arg(&out)]), 0);
    let disk = std::fs::read(&s.disk).unwrap();
    let img = std::fs::read(&out).unwrap();
    assert!(
        disk.len() as u64 > size,
        "the disk is larger than its image"
    );
    assert_eq!(img.len() as u64, size);
    assert!(img == disk[..size as usize], "not the image's bytes");
    let (text, _) = assert_exit(&kjump(&["inspect", arg(&out)]), 0);
    assert!(
        text.contains(&format!("in a file of {size} bytes")),
        "{text}"
    );
    // Two images of one run: identical.
    let (d, _) = assert_exit(&kjump(&["diff", arg(&s.disk), arg(&out)]), 0);
    assert!(d.contains("identical: registers and memory"), "{d}");
}

#[test]
fn diff_of_the_image_and_a_suspend_dump_shows_no_difference_in_a_view() {
    if !kvm_or_skip("diff_of_the_image_and_a_suspend_dump_shows_no_difference_in_a_view") {
        return;
    }
    let s = saved();
    for (a, b) in [(&s.disk, &s.suspend), (&s.suspend, &s.disk)] {
        let (out, _) = assert_exit(&kjump(&["diff", arg(a), arg(b)]), 0);
        assert!(
            out.contains("2048 page(s) read at home from the kimage's source pages"),
            "{out}"
        );
        // The saved context holds rax as the checkpoint left it (the JUMP
        // answer, stored by the relocation code): nothing differs.
        assert!(!out.contains("rax"), "{out}");
        assert!(out.contains("identical: registers and memory\n"), "{out}");
    }
}

#[test]
fn diff_names_the_page_b_left_out_of_the_image() {
    if !kvm_or_skip("diff_names_the_page_b_left_out_of_the_image") {
        return;
    }
    // B leaves a page of A's out (written as zeros, checksummed so): the
    // run fails at the VMM's check, and diff finds the same page.
    let s = hibernate("image-skip-page", &["--inject", "b:image-skip-page"], 1);
    let (out, _) = assert_exit(&kjump(&["diff", arg(&s.suspend), arg(&s.disk)]), 1);
    assert!(out.contains("pages: 1 differ"), "{out}");
    let page = out
        .lines()
        .find_map(|l| l.strip_prefix("  page "))
        .unwrap_or_else(|| panic!("no page line in\n{out}"));
    let addr =
        u64::from_str_radix(page.split(':').next().unwrap().trim_start_matches("0x"), 16).unwrap();
    // The page B skipped: the first with data above B's region (9 MiB),
    // the page the VMM's check of the disk named.
    assert!(addr >= 9 << 20, "{out}");
    assert!(
        out.contains(&format!("\n    {addr:#012x} -")),
        "a hexdump: {out}"
    );
    assert!(
        s.out.contains("differ from its record") && s.out.contains(&format!("{addr:#x}")),
        "{addr:#x}: {}",
        s.out
    );
}

/// The address of the guest's pattern (its symbol looked up by suffix).
fn pattern_addr() -> u64 {
    Symbols::from_elf(kjump::DEFAULT_KERNEL)
        .unwrap()
        .address_of_suffix("STATIC_PATTERN")
        .expect("the guest has STATIC_PATTERN")
}

/// gdb in batch mode on `elf` and `core`, running `cmds`.
fn gdb(elf: &Path, core: &Path, cmds: &[&str]) -> Option<String> {
    let mut c = Command::new("gdb");
    c.args(["-batch", "-nx"]);
    for cmd in cmds {
        c.args(["-ex", cmd]);
    }
    c.arg(elf).arg(core);
    let o = c.output().ok()?;
    Some(format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    ))
}

#[test]
fn gdb_reads_a_symbol_and_a_backtrace_from_a_view_of_the_image() {
    let test = "gdb_reads_a_symbol_and_a_backtrace_from_a_view_of_the_image";
    if !kvm_or_skip(test) {
        return;
    }
    if Command::new("gdb").arg("--version").output().is_err() {
        skip(test, "gdb is not installed");
        return;
    }
    let s = saved();
    let elf = s.dir.join("a.elf");
    std::fs::write(&elf, kjump::DEFAULT_KERNEL).unwrap();
    let view = s.dir.join("view.core");
    assert_exit(&kjump(&["image", "view", arg(&s.disk), arg(&view)]), 0);
    let read = format!("x/2gx {:#x}", pattern_addr());
    let words = |out: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.contains("STATIC_PATTERN"))
            .unwrap_or_else(|| panic!("no pattern line in\n{out}"))
            .split_whitespace()
            .rev()
            .take(2)
            .map(str::to_owned)
            .collect()
    };
    let out = gdb(&elf, &view, &[&read, "bt"]).expect("gdb runs");
    // A's pattern lies in B's region: the view reads it from the source
    // page A's kimage parked it in, as A's suspend dump has it at home.
    let from_view = words(&out);
    let from_dump = words(&gdb(&elf, &s.suspend, &[&read]).unwrap());
    assert_eq!(from_view, from_dump, "{out}");
    assert!(from_view.iter().any(|w| w != "0x0000000000000000"), "{out}");
    // gdb reads the image itself too (as it lies: physical): the same
    // words in the source page A's kimage parked the pattern's page in
    // (`sources at` on A's console: one page for each of B's region's,
    // in order).
    let field = |key: &str| -> u64 {
        let t = s
            .out
            .split(key)
            .nth(1)
            .unwrap_or_else(|| panic!("{key}: {}", s.out));
        let hex = t.trim_start_matches("0x");
        let end = hex.find(|c: char| !c.is_ascii_hexdigit()).unwrap();
        u64::from_str_radix(&hex[..end], 16).unwrap()
    };
    let (peer_start, sources) = (field("pages for b at "), field("sources at "));
    let image = s.dir.join("gdb-image.core");
    assert_exit(&kjump(&["image", "extract", arg(&s.disk), arg(&image)]), 0);
    let parked = format!("x/2gx {:#x}", sources + pattern_addr() - peer_start);
    let out_raw = gdb(&elf, &image, &[&parked]).unwrap();
    let raw: Vec<String> = out_raw
        .lines()
        .find(|l| l.starts_with("0x"))
        .unwrap_or_else(|| panic!("no words in\n{out_raw}"))
        .split_whitespace()
        .rev()
        .take(2)
        .map(str::to_owned)
        .collect();
    assert_eq!(raw, from_view, "{out_raw}");
    // The registers: A at its checkpoint, its backtrace through the jump.
    assert!(
        out.contains("#0  ") && out.contains("in kjump_checkpoint ()"),
        "{out}"
    );
    assert!(out.contains("kexec::hibernate::run_a"), "{out}");
}

/// Runs `args`; asserts exit code 2 and one `kjump: error:` line naming
/// `what`; returns the line.
fn refused(args: &[&str], what: &str) -> String {
    let (out, err) = assert_exit(&kjump(args), 2);
    assert!(out.is_empty(), "{out}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: {err}");
    assert!(lines[0].starts_with("kjump: error: "), "{err}");
    assert!(lines[0].contains(what), "{what}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    lines[0].to_owned()
}

#[test]
fn damaged_images_are_refused_with_one_line_and_no_output() {
    if !kvm_or_skip("damaged_images_are_refused_with_one_line_and_no_output") {
        return;
    }
    let s = saved();
    let (_, ranges, size) = header_of(&s.disk);
    let at = (4096 + ranges[0].1 + 12345) as usize;
    let flipped = damaged("flipped.raw", |b| b[at] ^= 0x20);
    let truncated = damaged("truncated.raw", |b| b.truncate(size as usize - 4096));
    let magic = damaged("magic.raw", |b| {
        let m = b.windows(8).position(|w| w == b"KJHIBIMG").unwrap();
        b[m + 7] = b'X';
    });
    let garbage = damaged("garbage.raw", |b| b.truncate(100));
    let cases: [(&Path, &str); 4] = [
        (&flipped, "range 1 [0x900000..0x4000000) checksum"),
        (&truncated, "image truncated: range 1 ends at byte"),
        (&magic, "wrong magic"),
        (&garbage, "garbage.raw"),
    ];
    for (disk, what) in cases {
        let out = s.dir.join("out.core");
        refused(&["inspect", arg(disk)], what);
        if disk != flipped {
            refused(&["diff", arg(disk), arg(&s.suspend)], what);
        }
        refused(&["image", "extract", arg(disk), arg(&out)], what);
        refused(&["image", "view", arg(disk), arg(&out)], what);
        assert!(
            !out.exists(),
            "{}: {} written",
            disk.display(),
            out.display()
        );
    }
    // The flip names its range and both checksums.
    let line = refused(&["inspect", arg(&flipped)], "the table says 0x");
    assert!(line.contains(&format!("{:#018x}", ranges[1].2)), "{line}");
    // diff shows where an image differs: the failed checksum is one of
    // the differences, and the flipped byte is named in its page.
    let (d, _) = assert_exit(&kjump(&["diff", arg(&flipped), arg(&s.suspend)]), 1);
    assert!(d.contains("range 1 [0x900000..0x4000000) checksum"), "{d}");
    // The header takes one page: the byte flipped is range 1's 12345th.
    let addr = ranges[1].0 + 12345;
    assert!(
        d.contains(&format!(
            "pages: 1 differ\n  page {:#x}: 1 range(s), [{addr:#x}..{:#x})",
            addr & !0xfff,
            addr + 1
        )),
        "{d}"
    );
    // Over the disk itself: refused, the disk untouched.
    let copy = damaged("self.raw", |_| {});
    refused(
        &["image", "extract", arg(&copy), arg(&copy)],
        "it is the disk being read",
    );
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&s.disk).unwrap()
    );
    // Not a regular file: refused before it is read.
    refused(
        &["image", "extract", "/dev/null", arg(&s.dir.join("x"))],
        "/dev/null",
    );
}

/// A copy of the disk whose kernel a's control page holds `fault` in its
/// fault word (`kjump_abi::control::DATA_FAULT`: the re-entry path's
/// injected bugs), the image's checksums made to agree: a consistent
/// image of a kernel whose restore goes wrong.
fn with_fault(name: &str, fault: u64) -> PathBuf {
    use kjump_abi::hibimage::{Range, checksum, data_offset, write_headers};
    let s = saved();
    let mut b = std::fs::read(&s.disk).unwrap();
    let h = Header::parse(&b).unwrap();
    let entry = h.entry;
    let mut ranges: Vec<Range> = h.ranges().collect();
    let word = (entry & !0xfff) + kjump_abi::control::DATA_FAULT;
    let i = ranges
        .iter()
        .position(|r| (r.start..r.start + r.len).contains(&word))
        .unwrap();
    let off = data_offset(&ranges, i);
    let at = (off + word - ranges[i].start) as usize;
    b[at..at + 8].copy_from_slice(&fault.to_le_bytes());
    ranges[i].checksum = checksum(&b[off as usize..(off + ranges[i].len) as usize]);
    let n = kjump_abi::hibimage::header_size(ranges.len()) as usize;
    write_headers(&mut b[..n], entry, &ranges).unwrap();
    let p = s.dir.join(name);
    std::fs::write(&p, b).unwrap();
    p
}

#[test]
fn kjump_resume_brings_a_back_from_its_image_and_checks_it_against_the_image() {
    if !kvm_or_skip("kjump_resume_brings_a_back_from_its_image_and_checks_it_against_the_image") {
        return;
    }
    let s = saved();
    let report = s.dir.join("resume.json");
    let (out, err) = assert_exit(
        &kjump(&["resume", arg(&s.disk), "--report", arg(&report)]),
        0,
    );
    assert!(
        out.contains("[a] a: restored from hibernation 1 of 1, state intact"),
        "{out}"
    );
    // Then, as after a restore by C, a jumps to a fresh B and back.
    assert!(out.contains("[b] kjump guest kernel b: ping-pong"), "{out}");
    assert!(
        out.contains("[a] a: back from the ping-pong jump to a fresh b"),
        "{out}"
    );
    assert!(
        out.contains("kjump: hibernate: pass (1 of 1 cycles, 4 checkpoints, "),
        "{out}\n{err}"
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let cps: Vec<(u64, &str, &str)> = r["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["index"].as_u64().unwrap(),
                c["kernel"].as_str().unwrap(),
                c["direction"].as_str().unwrap(),
            )
        })
        .collect();
    // Numbered as in the hibernate run: #0 a's suspend (saved), #1 c's
    // jump, #2 a's resume from the image, then the ping-pong jump.
    assert_eq!(
        cps,
        [
            (2, "a", "resume"),
            (3, "a", "suspend"),
            (4, "b", "suspend"),
            (5, "a", "resume")
        ],
        "{r}"
    );
    // At #2 every page of a's view of its 64 MiB but the control and
    // source pages; at #5 a's view as recorded at #3, where it was written
    // or parked since (the oracle's dirty mode).
    let compared = |i: usize| r["checkpoints"][i]["pages_compared"].as_u64().unwrap();
    assert!(compared(0) > 14000 && compared(3) > 2048, "{r}");
}

#[test]
fn a_restore_that_forgets_a_register_or_a_page_is_caught_with_its_location() {
    if !kvm_or_skip("a_restore_that_forgets_a_register_or_a_page_is_caught_with_its_location") {
        return;
    }
    // forget-rbx: the re-entry path leaves rbx as the relocation code did.
    let forget = with_fault("forget-rbx.raw", 1 << kjump_abi::control::Slot::Rbx as u64);
    let (out, _) = assert_exit(&kjump(&["resume", arg(&forget)]), 1);
    assert!(
        out.contains("mismatch(es) at kernel a's resume from its image: first: ")
            && out.contains("register rbx: "),
        "{out}"
    );
    // skip-swap-back: a's first page of b's region stays in its source
    // page; the VMM fills what the image does not hold with poison, so
    // the page is seen even where a had zeros.
    let skip = with_fault(
        "skip-swap-back.raw",
        1 << kjump_abi::control::FAULT_SKIP_SWAP_BACK,
    );
    let (out, _) = assert_exit(&kjump(&["resume", arg(&skip)]), 1);
    assert!(out.contains("page 0x100000"), "{out}");
    assert!(!out.contains("register "), "only memory: {out}");
}

#[test]
fn kjump_resume_refuses_an_image_not_marked_resumable_or_damaged_with_one_line() {
    if !kvm_or_skip("kjump_resume_refuses_an_image_not_marked_resumable_or_damaged_with_one_line") {
        return;
    }
    let s = saved();
    let vmcore = damaged("not-resumable.raw", |b| {
        let m = b.windows(8).position(|w| w == b"KJHIBIMG").unwrap();
        b[m + 12..m + 16].fill(0);
    });
    refused(
        &["resume", arg(&vmcore)],
        "cannot be resumed: the image is not marked resumable",
    );
    // inspect still reads it.
    let (out, _) = assert_exit(&kjump(&["inspect", arg(&vmcore)]), 0);
    assert!(out.contains("flags 0x0 (not resumable)"), "{out}");
    assert!(out.contains("registers: none"), "{out}");
    let flipped = damaged("resume-flipped.raw", |b| b[0x2000] ^= 1);
    refused(
        &["resume", arg(&flipped)],
        "range 0 [0x0..0x100000) checksum",
    );
    let _ = s;
}
