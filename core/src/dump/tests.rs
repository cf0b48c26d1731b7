//! Tests of writing, reading, inspecting and diffing dumps.
use super::*;
use crate::state::tests::sample_state;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use vm_memory::Bytes;
use vm_superio::serial::SerialState;

/// `kjump inspect` of a dump file, as the VMM's command does it.
fn cmd_inspect(path: &Path, json: bool) -> Result<String, DumpError> {
    let d = read_dump(path)?;
    Ok(if json {
        serde_json::to_string_pretty(&inspect_json(&d)).map_err(DumpError::Encode)? + "\n"
    } else {
        inspect(&d)
    })
}

/// `kjump diff` of two dump files, with symbols from `kernel_elf` (empty:
/// none), as the VMM's command does it.
fn cmd_diff(a: &Path, b: &Path, kernel_elf: &[u8]) -> Result<(String, bool), DumpError> {
    let symbols = if kernel_elf.is_empty() {
        None
    } else {
        Some(Symbols::from_elf(kernel_elf).map_err(DumpError::Symbols)?)
    };
    let d = diff(&read_dump(a)?, &read_dump(b)?, symbols.as_ref());
    Ok((d.to_string(), d.differs()))
}

const RAM: (u64, u64) = (0, 4 << 20);
/// A second range, as above the 32-bit hole.
const HIGH: (u64, u64) = (0x1_0000_0000, 1 << 20);

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kjump-dump-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn id() -> CheckpointId {
    CheckpointId {
        index: 5,
        cycle: 3,
        kernel: Kernel::B,
        direction: Direction::Resume,
    }
}

/// Pattern pages at a few addresses, everything else zero.
fn memory() -> GuestMem {
    let mem = GuestMem::from_ranges(&[
        (GuestAddress(RAM.0), RAM.1 as usize),
        (GuestAddress(HIGH.0), HIGH.1 as usize),
    ])
    .unwrap();
    for (i, addr) in [0x1000u64, 0x2000, 0x20_0000, 0x1f_f000, HIGH.0 + 0xf_f000]
        .into_iter()
        .enumerate()
    {
        let page: Vec<u8> = (0..PAGE_SIZE).map(|b| (b * 7 + i * 13 + 1) as u8).collect();
        mem.write_slice(&page, GuestAddress(addr)).unwrap();
    }
    // A page with a single non-zero byte at its end is not a zero page.
    mem.write_slice(&[0x5a], GuestAddress(0x8_0fff)).unwrap();
    mem
}

fn input<'a>(state: &'a VcpuState, id: &'a CheckpointId, mem: &'a GuestMem) -> DumpInput<'a> {
    DumpInput {
        state,
        id,
        jump_back_entry: 0x20_4321,
        resumable: true,
        memory: mem,
        kernel_name: "built-in",
        mem_size: RAM.1 + HIGH.1,
        kjump_version: "kjump 0.1.0 test",
        resume: None,
    }
}

fn write_sample(dir: &Path, name: &str) -> PathBuf {
    write_with(dir, name, &memory())
}

fn write_with(dir: &Path, name: &str, mem: &GuestMem) -> PathBuf {
    let (s, id) = (sample_state(), id());
    let path = dir.join(name);
    write_dump(&path, &input(&s, &id, mem)).unwrap();
    path
}

#[test]
fn round_trip_keeps_state_metadata_and_every_page() {
    let dir = scratch("round-trip");
    let path = write_sample(&dir, "a.core");
    let d = read_dump(&path).unwrap();
    assert_eq!(d.state(), &sample_state());
    let m = d.meta();
    assert_eq!(
        (m.version, m.id, m.jump_back_entry, m.resumable),
        (KJUMP_VERSION, id(), 0x20_4321, true)
    );
    assert_eq!(
        (m.mem_size, m.kernel_name.as_str(), m.kjump_version.as_str()),
        (5 << 20, "built-in", "kjump 0.1.0 test")
    );
    assert_eq!(d.ranges(), vec![RAM, HIGH]);
    let mem = memory();
    let mut expect = [0u8; PAGE_SIZE];
    for (start, len) in [RAM, HIGH] {
        for addr in (start..start + len).step_by(PAGE_SIZE) {
            mem.read_slice(&mut expect, GuestAddress(addr)).unwrap();
            assert!(d.read_page(addr) == Some(expect), "page {addr:#x}");
        }
    }
    assert_eq!(
        d.read_page(0x1234).unwrap()[0x234],
        (0x234 * 7 + 1) as u8,
        "unaligned address: its page"
    );
    assert_eq!(d.read_page(RAM.1), None, "past RAM");
    assert_eq!(d.read_page(HIGH.0 - PAGE), None, "in the hole");
    assert_eq!(d.nonzero_pages().unwrap(), vec![5, 1]);
    let names: Vec<(&str, u32)> = d
        .notes()
        .iter()
        .map(|n| (n.name.as_str(), n.kind))
        .collect();
    assert_eq!(
        names,
        [
            ("CORE", NT_PRSTATUS),
            ("CORE", NT_PRFPREG),
            ("QEMU", NT_QEMU),
            ("KJUMP", NT_KJUMP)
        ]
    );
    // Rewriting a dump from itself gives the same bytes.
    let again = dir.join("b.core");
    let (s, id) = (d.state().clone(), d.meta().id);
    let inp = DumpInput {
        memory: &d,
        ..input(&s, &id, &mem)
    };
    write_dump(&again, &inp).unwrap();
    assert!(std::fs::read(&path).unwrap() == std::fs::read(&again).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_buffer_reads_as_a_file_does() {
    let dir = scratch("backing");
    let path = dir.join("bytes");
    let bytes: Vec<u8> = (0..100u8).collect();
    std::fs::write(&path, &bytes).unwrap();
    let file = Backing::File(File::open(&path).unwrap());
    let buf = Backing::Bytes(bytes);
    // Found by fuzzing: an empty read past the end (a page in a
    // PT_LOAD's zero tail beyond the end of the file) failed.
    for (off, len) in [
        (0, 100),
        (99, 1),
        (100, 0),
        (4096, 0),
        (u64::MAX, 0),
        (98, 3),
        (100, 1),
    ] {
        let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
        let (ra, rb) = (
            file.read_exact_at(&mut a, off),
            buf.read_exact_at(&mut b, off),
        );
        assert_eq!(ra.is_ok(), rb.is_ok(), "{len} bytes at {off}");
        if ra.is_ok() {
            assert_eq!(a, b);
        }
    }
    for off in [0, 5, 4096, 8192] {
        assert_eq!(buf.seek_data(off), (off < 100).then_some(off));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_dump_in_memory_reads_as_its_file_does() {
    let dir = scratch("bytes");
    let path = write_sample(&dir, "a.core");
    let bytes = std::fs::read(&path).unwrap();
    let (f, b) = (
        read_dump(&path).unwrap(),
        read_dump_bytes(bytes.clone(), &path).unwrap(),
    );
    assert_eq!(
        (b.meta(), b.state(), b.ranges()),
        (f.meta(), f.state(), f.ranges())
    );
    assert_eq!(b.nonzero_pages().unwrap(), f.nonzero_pages().unwrap());
    for addr in [0, 0x1000, 0x20_0000, 0x8_0000, HIGH.0 + 0xf_f000, RAM.1] {
        assert!(b.read_page(addr) == f.read_page(addr), "page {addr:#x}");
    }
    assert_eq!(inspect(&b), inspect(&f));
    assert!(!diff(&b, &f, None).differs());
    // A damaged buffer is the same error as the damaged file.
    let cut = dir.join("cut.core");
    for n in [0, 3, 63, 200, 3000, bytes.len() - 1] {
        assert_eq!(
            read_dump_bytes(bytes[..n].to_vec(), &cut)
                .unwrap_err()
                .to_string(),
            read_bytes(&cut, &bytes[..n]).unwrap_err().to_string(),
            "cut at {n}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn zero_pages_are_holes() {
    let dir = scratch("sparse");
    let mem = GuestMem::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    mem.write_slice(&[1; 3 * PAGE_SIZE], GuestAddress(0x30_0000))
        .unwrap();
    let (s, id) = (sample_state(), id());
    let path = dir.join("sparse.core");
    write_dump(&path, &input(&s, &id, &mem)).unwrap();
    let md = std::fs::metadata(&path).unwrap();
    assert!(md.len() > 64 << 20, "{} bytes", md.len());
    // Headers and notes (~20 KiB) and the three pages.
    assert!(
        md.blocks() * 512 < 256 << 10,
        "{} blocks of 512 bytes allocated",
        md.blocks()
    );
    let d = read_dump(&path).unwrap();
    assert_eq!(d.nonzero_pages().unwrap(), vec![3]);
    assert_eq!(d.read_page(0x30_2000), Some([1; PAGE_SIZE]));
    assert_eq!(d.read_page(0x3ff_f000), Some([0; PAGE_SIZE]));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn le64(b: &[u8], o: usize) -> u64 {
    u64_at(b, o)
}

/// The notes of a written dump, decoded with the reader's own parser.
fn notes_of(bytes: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
    let off = le64(bytes, EHDR_SIZE + 8) as usize;
    let size = le64(bytes, EHDR_SIZE + 32) as usize;
    parse_notes(&bytes[off..off + size])
        .unwrap()
        .into_iter()
        .map(|n| (n.name, n.kind, n.desc.to_vec()))
        .collect()
}

#[test]
fn prstatus_and_qemu_notes_have_the_linux_and_qemu_layouts() {
    let dir = scratch("layouts");
    let path = write_sample(&dir, "a.core");
    let bytes = std::fs::read(&path).unwrap();
    let s = sample_state();
    let notes = notes_of(&bytes);
    let pr = &notes[0].2;
    assert_eq!(pr.len(), 336);
    // user_regs_struct: rbx 5th, rax 10th, rip 16th, cs, eflags, rsp.
    assert_eq!(le64(pr, 112 + 5 * 8), s.regs.rbx);
    assert_eq!(le64(pr, 112 + 10 * 8), s.regs.rax);
    assert_eq!(le64(pr, 112 + 15 * 8), u64::MAX, "orig_rax");
    assert_eq!(le64(pr, 112 + 16 * 8), s.regs.rip);
    assert_eq!(le64(pr, 112 + 17 * 8), 8, "cs selector");
    assert_eq!(le64(pr, 112 + 18 * 8), s.regs.rflags);
    assert_eq!(le64(pr, 112 + 19 * 8), s.regs.rsp);
    assert_eq!(u32_at(pr, 328), 1, "pr_fpvalid");
    assert_eq!(notes[1].2, s.xsave[..512]);
    let q = &notes[2].2;
    assert_eq!(
        (u32_at(q, 0), u32_at(q, 4) as usize, q.len()),
        (1, 440, 440)
    );
    assert_eq!(le64(q, 8 + 16 * 8), s.regs.rip);
    assert_eq!(le64(q, 8 + 17 * 8), s.regs.rflags);
    // cs: selector, limit, flags (type 11, S, P, L, G), pad, base.
    assert_eq!((u32_at(q, 152), u32_at(q, 156)), (8, 0xffff_ffff));
    assert_eq!(
        u32_at(q, 160),
        0xb << 8 | 1 << 12 | 1 << 15 | 1 << 21 | 1 << 23
    );
    // gdt is the 9th segment; then cr0, cr1, cr2, cr3, cr4, kernel_gs_base.
    assert_eq!(
        (u32_at(q, 152 + 8 * 24 + 4), le64(q, 152 + 8 * 24 + 16)),
        (0x1f, 0x500)
    );
    assert_eq!(le64(q, 392), s.sregs.cr0);
    assert_eq!(le64(q, 392 + 3 * 8), s.sregs.cr3);
    assert_eq!(le64(q, 392 + 4 * 8), s.sregs.cr4);
    assert_eq!(
        le64(bytes.as_slice(), 24),
        0x20_4321,
        "e_entry is the jump-back entry"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn readelf(args: &[&str], path: &Path) -> String {
    let o = Command::new("readelf")
        .args(args)
        .arg(path)
        .output()
        .expect("readelf is installed");
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success() && err.is_empty(),
        "readelf {args:?}: {err}\n{out}"
    );
    out.into_owned()
}

#[test]
fn readelf_reads_the_headers_notes_and_loads() {
    let dir = scratch("readelf");
    let path = write_sample(&dir, "a.core");
    let h = readelf(&["-h"], &path);
    assert!(
        h.contains("CORE (Core file)") && h.contains("X86-64") && h.contains("0x204321"),
        "{h}"
    );
    let n = readelf(&["-n"], &path);
    for want in [
        "CORE",
        "NT_PRSTATUS",
        "NT_FPREGSET",
        "QEMU",
        "KJUMP",
        "0x4b4a0001",
    ] {
        assert!(n.contains(want), "no {want} in readelf -n:\n{n}");
    }
    let l = readelf(&["-l", "-W"], &path);
    let loads: Vec<&str> = l
        .lines()
        .filter(|x| x.trim_start().starts_with("LOAD"))
        .collect();
    assert_eq!(loads.len(), 2, "{l}");
    // Type Offset VirtAddr PhysAddr FileSiz MemSiz Flg Align.
    let f: Vec<&str> = loads[1].split_whitespace().collect();
    assert_eq!(
        &f[2..6],
        [
            "0x0000000100000000",
            "0x0000000100000000",
            "0x100000",
            "0x100000"
        ],
        "{l}"
    );
    assert!(
        u64::from_str_radix(&f[1][2..], 16)
            .unwrap()
            .is_multiple_of(PAGE),
        "{l}"
    );
    assert!(l.contains("NOTE"), "{l}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Writes `bytes` to a file and reads it as a dump.
fn read_bytes(path: &Path, bytes: &[u8]) -> Result<Dump, DumpError> {
    std::fs::write(path, bytes).unwrap();
    read_dump(path)
}

#[test]
fn every_truncation_is_an_error() {
    let dir = scratch("truncated");
    let path = write_sample(&dir, "a.core");
    let bytes = std::fs::read(&path).unwrap();
    let notes_end = le64(&bytes, EHDR_SIZE + 8) + le64(&bytes, EHDR_SIZE + 32);
    let cut = dir.join("cut.core");
    let notes_end = notes_end as usize;
    // Every cut in the headers and around the end of the notes, a
    // sample inside them (each write and read costs ~0.3 ms here).
    let mut cuts: Vec<usize> = (0..EHDR_SIZE + 3 * PHDR_SIZE + 64).collect();
    cuts.extend((0..notes_end).step_by(31));
    cuts.extend(notes_end - 64..notes_end + 8);
    cuts.extend([0x5000, 0x10_0000, bytes.len() - PAGE_SIZE, bytes.len() - 1]);
    for n in cuts {
        let e = read_bytes(&cut, &bytes[..n]).expect_err(&format!("cut at {n}"));
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        if n >= 64 {
            assert!(
                matches!(e, DumpError::Truncated { .. }),
                "cut at {n}: {msg}"
            );
        }
    }
    assert!(matches!(
        read_bytes(&cut, &bytes[..3]),
        Err(DumpError::NotADump { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupted_headers_and_notes_are_errors_never_panics() {
    let dir = scratch("corrupt");
    // Small, so that the thousands of variants below are written fast.
    let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x4000), (GuestAddress(HIGH.0), 0x1000)])
        .unwrap();
    mem.write_slice(&[0xab; 0x10], GuestAddress(0x1000))
        .unwrap();
    let path = write_with(&dir, "a.core", &mem);
    let bytes = std::fs::read(&path).unwrap();
    let bad = dir.join("bad.core");
    let with = |edits: &[(usize, &[u8])]| {
        let mut b = bytes.clone();
        for (o, v) in edits {
            b[*o..*o + v.len()].copy_from_slice(v);
        }
        read_bytes(&bad, &b)
    };
    let ph = |i: usize, field: usize| EHDR_SIZE + i * PHDR_SIZE + field;
    let is = |r: Result<Dump, DumpError>, what: &str| match r {
        Err(e) => {
            assert!(!e.to_string().contains('\n'));
            e
        }
        Ok(_) => panic!("{what}: accepted"),
    };
    assert!(matches!(
        is(with(&[(0, b"\x7fELG")]), "magic"),
        DumpError::NotADump { .. }
    ));
    assert!(matches!(
        is(with(&[(4, &[1])]), "ELF32"),
        DumpError::NotADump { .. }
    ));
    assert!(matches!(
        is(with(&[(5, &[2])]), "big-endian"),
        DumpError::NotADump { .. }
    ));
    assert!(matches!(
        is(with(&[(16, &2u16.to_le_bytes())]), "ET_EXEC"),
        DumpError::NotADump { .. }
    ));
    assert!(matches!(
        is(with(&[(18, &3u16.to_le_bytes())]), "i386"),
        DumpError::NotADump { .. }
    ));
    assert!(matches!(
        is(with(&[(54, &32u16.to_le_bytes())]), "phentsize"),
        DumpError::Corrupt { .. }
    ));
    assert!(matches!(
        is(with(&[(56, &0u16.to_le_bytes())]), "no phdrs"),
        DumpError::Corrupt { .. }
    ));
    assert!(matches!(
        is(with(&[(56, &0x8u16.to_le_bytes())]), "phnum"),
        DumpError::Corrupt { .. }
    ));
    assert!(matches!(
        is(with(&[(56, &0x800u16.to_le_bytes())]), "phnum"),
        DumpError::Truncated { .. }
    ));
    assert!(matches!(
        is(with(&[(32, &u64::MAX.to_le_bytes())]), "phoff"),
        DumpError::Truncated { .. }
    ));
    assert!(matches!(
        is(with(&[(24, &1u64.to_le_bytes())]), "entry"),
        DumpError::Corrupt { .. }
    ));
    // A load's data past the end of the file, or its offset wrapping.
    assert!(matches!(
        is(with(&[(ph(1, 40), &PAGE.to_le_bytes())]), "filesz"),
        DumpError::Corrupt { .. }
    ));
    assert!(matches!(
        is(with(&[(ph(2, 8), &(u64::MAX - 2).to_le_bytes())]), "offset"),
        DumpError::Truncated { .. }
    ));
    // Overlapping loads: the high range moved onto the low one.
    let over = with(&[
        (ph(2, 16), &0x3000u64.to_le_bytes()),
        (ph(2, 24), &0x3000u64.to_le_bytes()),
    ]);
    let e = is(over, "overlap");
    assert!(e.to_string().contains("overlap"), "{e}");
    // A note whose name or descriptor runs past the notes.
    let notes = le64(&bytes, ph(0, 8)) as usize;
    assert!(matches!(
        is(with(&[(notes, &u32::MAX.to_le_bytes())]), "namesz"),
        DumpError::Corrupt { .. }
    ));
    assert!(matches!(
        is(with(&[(notes + 4, &0x10_0000u32.to_le_bytes())]), "descsz"),
        DumpError::Corrupt { .. }
    ));
    assert!(matches!(
        is(
            with(&[(ph(0, 32), &(u64::MAX / 2).to_le_bytes())]),
            "notes size"
        ),
        DumpError::Truncated { .. }
    ));

    // Every byte of the KJUMP note (its header, name and descriptor):
    // flipped, the dump is refused.
    let note_size = le64(&bytes, ph(0, 32)) as usize;
    let b = &bytes[notes..notes + note_size];
    let at = notes + b.windows(6).position(|w| w == b"KJUMP\0").unwrap() - 12;
    let desc = at + 12 + 8;
    let version = u32::from_le_bytes(bytes[desc + 8..desc + 12].try_into().unwrap());
    assert_eq!(version, KJUMP_VERSION);
    // Every byte but those of the vCPU state's JSON, of which every
    // 7th (each costs a file write).
    let json = desc + KJUMP_HEADER_SIZE..notes + note_size - 64;
    for o in (at..notes + note_size).filter(|o| !json.contains(o) || o % 7 == 0) {
        let mut b = bytes.clone();
        b[o] ^= 0x41;
        is(
            read_bytes(&bad, &b),
            &format!("KJUMP note byte {o:#x} flipped"),
        );
    }
    let e = is(
        with(&[(desc + 8, &(KJUMP_VERSION + 1).to_le_bytes())]),
        "version",
    );
    assert!(
        matches!(e, DumpError::Version { found, .. } if found == KJUMP_VERSION + 1),
        "{e}"
    );
    assert!(e.to_string().contains("reads versions 1 to"), "{e}");
    let e = is(with(&[(desc + 8, &0u32.to_le_bytes())]), "version 0");
    assert!(matches!(e, DumpError::Version { found: 0, .. }), "{e}");
    // Without the KJUMP note, the file is a core file but not a dump.
    let e = is(with(&[(at + 8, &7u32.to_le_bytes())]), "note type");
    assert!(
        matches!(e, DumpError::NotADump { ref why, .. } if why == "no KJUMP note"),
        "{e}"
    );

    // Flipping any other byte of the headers and notes never panics.
    for o in 0..at {
        let mut b = bytes.clone();
        b[o] = b[o].wrapping_add(0x80);
        let _ = read_bytes(&bad, &b);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Memory that fails to read halfway.
struct Failing<'a>(&'a GuestMem);
impl RamSource for Failing<'_> {
    fn ram_ranges(&self) -> Vec<(u64, u64)> {
        self.0.ram_ranges()
    }
    fn read_ram(&self, addr: u64, buf: &mut [u8]) -> Result<(), DumpError> {
        if addr >= 1 << 20 {
            return Err(DumpError::Memory(addr));
        }
        self.0.read_ram(addr, buf)
    }
}

#[test]
fn a_failed_write_leaves_nothing_and_keeps_the_old_dump() {
    let dir = scratch("atomic");
    let path = write_sample(&dir, "a.core");
    let before = std::fs::read(&path).unwrap();
    let (mut s, id, mem) = (sample_state(), id(), memory());
    s.regs.rbx = 0xdead;
    let inp = DumpInput {
        memory: &Failing(&mem),
        ..input(&s, &id, &mem)
    };
    assert!(matches!(
        write_dump(&path, &inp),
        Err(DumpError::Memory(0x10_0000))
    ));
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the old dump was changed"
    );
    let fresh = dir.join("fresh.core");
    assert!(write_dump(&fresh, &inp).is_err());
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from("a.core")],
        "temporary files left behind"
    );
    // A directory that does not exist: a write error naming the path.
    let e = write_dump(&dir.join("no/such/dir.core"), &input(&s, &id, &mem)).unwrap_err();
    assert!(
        matches!(e, DumpError::Write { .. }) && e.to_string().contains("no/such/dir.core"),
        "{e}"
    );
    // Overwriting works.
    write_dump(&path, &input(&s, &id, &mem)).unwrap();
    assert_eq!(read_dump(&path).unwrap().state().regs.rbx, 0xdead);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn diff_names_exactly_the_register_and_byte_that_differ() {
    let dir = scratch("diff");
    let a = write_sample(&dir, "a.core");
    let (mut s, mut id, mem) = (sample_state(), id(), memory());
    s.regs.rbx = 0x2222;
    id.index = 6;
    mem.write_slice(&[0xee], GuestAddress(0x20_0123)).unwrap();
    let b = dir.join("b.core");
    write_dump(&b, &input(&s, &id, &mem)).unwrap();
    let (da, db) = (read_dump(&a).unwrap(), read_dump(&b).unwrap());
    let syms = Symbols::from_parts(
        vec![("PATTERN".into(), 0x20_0100, 0x100)],
        vec![(".data".into(), 0x20_0000, 0x1000)],
    );
    let d = diff(&da, &db, Some(&syms));
    assert!(d.differs());
    let regs: Vec<_> = d
        .registers
        .iter()
        .map(|r| (r.name.as_str(), &r.old, &r.new))
        .collect();
    assert_eq!(
        regs,
        [("rbx", &FieldValue::U64(0x1111), &FieldValue::U64(0x2222))]
    );
    assert_eq!(d.pages.len(), 1);
    let p = &d.pages[0];
    assert_eq!(p.addr, 0x20_0000);
    assert_eq!(
        p.ranges,
        [DiffRange {
            start: 0x20_0123,
            end: 0x20_0124,
            symbol: Some("PATTERN+0x23 (.data)".into())
        }]
    );
    assert_eq!(p.symbol.as_deref(), Some("PATTERN+0x23 (.data)"));
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    assert_eq!(
        d.meta,
        ["checkpoint: #5 cycle 3 kernel b resume -> #6 cycle 3 kernel b resume"]
    );
    let text = d.to_string();
    assert!(text.contains("rbx: 0x1111 -> 0x2222"), "{text}");
    assert!(
        text.contains("page 0x200000: 1 range(s), [0x200123..0x200124) PATTERN+0x23 (.data)"),
        "{text}"
    );
    assert!(
        text.contains("0x0000200120 - ") && text.contains("^^"),
        "{text}"
    );
    // The same dump twice: nothing differs.
    let same = diff(&da, &read_dump(&a).unwrap(), None);
    assert!(!same.differs() && same.meta.is_empty(), "{same}");
    let (out, differs) = cmd_diff(&a, &a, &[]).unwrap();
    assert!(!differs && out.contains("identical"), "{out}");
    assert!(matches!(
        cmd_diff(&a, &b, b"not an elf"),
        Err(DumpError::Symbols(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn ck(index: u64, cycle: u64, kernel: Kernel, direction: Direction) -> CheckpointId {
    CheckpointId {
        index,
        cycle,
        kernel,
        direction,
    }
}

#[test]
fn a_suspend_pairs_with_the_kernels_next_resume_only() {
    use Direction::{Resume, Suspend};
    use Kernel::{A, B};
    assert_eq!(resume_of(ck(0, 1, A, Suspend)), Some(ck(2, 1, A, Resume)));
    assert_eq!(resume_of(ck(1, 1, B, Suspend)), Some(ck(4, 2, B, Resume)));
    assert_eq!(resume_of(ck(3, 2, A, Suspend)), Some(ck(6, 2, A, Resume)));
    assert_eq!(resume_of(ck(5, 2, B, Suspend)), Some(ck(8, 3, B, Resume)));
    // Over a long sequence: each suspend pairs with the same kernel's
    // next checkpoint, a resume, in either order of the dumps.
    let mut t = Tracker::new();
    let seq: Vec<CheckpointId> = (0..41).map(|_| t.next()).collect();
    for (i, s) in seq.iter().enumerate() {
        let next = seq[i + 1..].iter().find(|n| n.kernel == s.kernel);
        match (s.direction, next) {
            (Suspend, Some(r)) => {
                assert_eq!(r.direction, Resume);
                assert_eq!(suspend_resume_pair(s, r), Some([*s, *r]));
                assert_eq!(suspend_resume_pair(r, s), Some([*s, *r]));
            }
            (Resume, _) => assert_eq!(resume_of(*s), None),
            _ => {}
        }
    }
    // Not a pair: two suspends, a later resume, the other kernel, a
    // checkpoint not in the sequence, ids at the end of the range.
    for (a, b) in [
        (ck(3, 2, A, Suspend), ck(3, 2, A, Suspend)),
        (ck(3, 2, A, Suspend), ck(10, 3, A, Resume)),
        (ck(3, 2, A, Suspend), ck(4, 2, B, Resume)),
        (ck(4, 2, A, Suspend), ck(7, 2, A, Resume)),
        (
            ck(u64::MAX - 1, u64::MAX / 4 + 2, A, Suspend),
            ck(u64::MAX, 1, A, Resume),
        ),
    ] {
        assert_eq!(suspend_resume_pair(&a, &b), None, "{a:?} {b:?}");
    }
    let top = (u64::MAX - 3) / 4 + 2;
    assert_eq!(resume_of(ck(u64::MAX - 3, top, A, Suspend)), None);
}

/// Dumps of kernel A at its suspend #3 (`suspend`) and at `resume_id`
/// (`resume`), with the sample memory; `touch` changes the resume's
/// memory.
fn pair_dumps(
    dir: &Path,
    suspend: &VcpuState,
    resume: &VcpuState,
    resume_id: CheckpointId,
    touch: Option<u64>,
) -> (PathBuf, PathBuf) {
    let (sid, mem) = (ck(3, 2, Kernel::A, Direction::Suspend), memory());
    let a = dir.join("c00002-00003-a-suspend.core");
    write_dump(&a, &input(suspend, &sid, &mem)).unwrap();
    if let Some(at) = touch {
        mem.write_slice(&[0xee], GuestAddress(at)).unwrap();
    }
    let b = dir.join("c00002-00006-a-resume.core");
    write_dump(&b, &input(resume, &resume_id, &mem)).unwrap();
    (a, b)
}

fn names(regs: &[RegisterDiff]) -> Vec<&str> {
    regs.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn a_suspend_and_its_resume_expect_the_answer_and_the_tsc() {
    use kjump_abi::abi::{ANSWER_BACK, ANSWER_JUMP};
    let dir = scratch("diff-pair");
    let s = sample_state();
    let mut r = s.clone();
    r.regs.rax = ANSWER_BACK.into();
    *r.msrs.get_mut(&0x10).unwrap() += 1_000_000;
    let rid = ck(6, 2, Kernel::A, Direction::Resume);
    let tsc = "msr[0x00000010] TSC";

    // Only what the oracle allows differs: the dumps do not differ.
    let (a, b) = pair_dumps(&dir, &s, &r, rid, None);
    let (da, db) = (read_dump(&a).unwrap(), read_dump(&b).unwrap());
    let d = diff(&da, &db, None);
    assert_eq!(d.pair, Some([da.meta().id, rid]));
    assert!(
        !d.differs() && d.registers.is_empty() && d.pages.is_empty(),
        "{d}"
    );
    let expected: Vec<_> = d
        .expected
        .iter()
        .map(|e| (e.register.name.as_str(), &e.register.old, &e.register.new))
        .collect();
    assert_eq!(
        expected,
        [
            (
                "rax",
                &FieldValue::U64(ANSWER_JUMP.into()),
                &FieldValue::U64(ANSWER_BACK.into())
            ),
            (tsc, &FieldValue::U64(123_456), &FieldValue::U64(1_123_456)),
        ]
    );
    assert_eq!(d.expected[0].why, ANSWER_WHY);
    assert_eq!(
        d.expected[1].why,
        Allowlist::standard().entries()[0].reason,
        "the oracle's own reason"
    );
    let text = d.to_string();
    for want in [
        "pair: kernel a's suspend #3 and its resume #6: what the oracle allows is expected",
        "expected: rax: 0x504d554a -> 0x4b434142 (checkpoint answer: JUMP at the suspend, BACK at the resume)",
        "expected: msr[0x00000010] TSC: 0x1e240 -> 0x112480 (the TSC counts time",
        "identical: registers and memory, but for the 2 expected difference(s)",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    assert!(!text.contains("registers:"), "{text}");
    let (out, differs) = cmd_diff(&a, &b, &[]).unwrap();
    assert!(!differs, "{out}");
    // Either order: the same differences are expected.
    let back = diff(&db, &da, None);
    assert_eq!(back.pair, d.pair);
    assert_eq!(names(&back.registers), Vec::<&str>::new());
    assert_eq!(back.expected.len(), 2);

    // Anything else still differs, next to the expected: a register,
    // a byte, XSAVE values (then xstate_bv is not excused either).
    let mut r2 = r.clone();
    r2.regs.rbx = 0x2222;
    r2.xsave[512] |= 0x4; // xstate_bv (the XSAVE header)
    r2.xsave[576] = 0x80;
    let (a, b) = pair_dumps(&dir, &s, &r2, rid, Some(0x20_0123));
    let d = diff(&read_dump(&a).unwrap(), &read_dump(&b).unwrap(), None);
    assert!(d.differs());
    assert_eq!(
        names(&d.registers),
        ["rbx", "xsave.xstate_bv", "xsave[0x240..0x280]"]
    );
    assert_eq!(
        d.expected
            .iter()
            .map(|e| e.register.name.as_str())
            .collect::<Vec<_>>(),
        ["rax", tsc]
    );
    assert_eq!(d.pages.len(), 1);
    assert_eq!(d.pages[0].ranges[0].start, 0x20_0123);
    let text = d.to_string();
    assert!(
        text.contains("registers: 3 differ") && text.contains("rbx: 0x1111 -> 0x2222"),
        "{text}"
    );
    assert!(text.contains("expected: rax: "), "{text}");
    // xstate_bv alone (values equal) is expected, as in the oracle.
    let mut r3 = r.clone();
    r3.xsave[512] |= 0x4;
    let (a, b) = pair_dumps(&dir, &s, &r3, rid, None);
    let d = diff(&read_dump(&a).unwrap(), &read_dump(&b).unwrap(), None);
    assert!(!d.differs(), "{d}");
    assert_eq!(d.expected.len(), 3, "{d}");

    // A wrong answer is not expected: rax differs, the TSC is still
    // excused.
    let mut wrong = r.clone();
    wrong.regs.rax = 0x1234;
    let (a, b) = pair_dumps(&dir, &s, &wrong, rid, None);
    let d = diff(&read_dump(&a).unwrap(), &read_dump(&b).unwrap(), None);
    assert!(d.differs());
    assert_eq!(names(&d.registers), ["rax"]);
    assert_eq!(d.expected.len(), 1);
    let (out, differs) = cmd_diff(&a, &b, &[]).unwrap();
    assert!(
        differs && out.contains("rax: 0x504d554a -> 0x1234"),
        "{out}"
    );

    // Not the pair (A's resume a cycle later): nothing is expected,
    // the raw differences are shown.
    let later = ck(10, 3, Kernel::A, Direction::Resume);
    let (a, b) = pair_dumps(&dir, &s, &r, later, None);
    let d = diff(&read_dump(&a).unwrap(), &read_dump(&b).unwrap(), None);
    assert_eq!((d.pair, d.expected.len()), (None, 0));
    assert_eq!(names(&d.registers), ["rax", tsc]);
    let text = d.to_string();
    assert!(
        text.contains("registers: 2 differ") && !text.contains("expected"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn diff_reports_ram_in_one_dump_only() {
    let dir = scratch("diff-layout");
    let a = write_sample(&dir, "a.core");
    let (s, id) = (sample_state(), id());
    let mem = GuestMem::from_ranges(&[(GuestAddress(RAM.0), RAM.1 as usize)]).unwrap();
    let b = dir.join("b.core");
    write_dump(&b, &input(&s, &id, &mem)).unwrap();
    let d = diff(&read_dump(&a).unwrap(), &read_dump(&b).unwrap(), None);
    assert!(d.registers.is_empty());
    assert_eq!(d.problems.len(), 1, "{d}");
    assert!(d.problems[0].contains("RAM ranges differ"), "{d}");
    // The common range is compared: memory() has 5 non-zero pages there.
    assert_eq!(d.pages.len(), 5, "{d}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn record() -> ResumeRecord {
    let mut peer_state = sample_state();
    peer_state.regs.rbx = 0xa11ce;
    ResumeRecord {
        scenario: "ping-pong".into(),
        cycles: 7,
        kimage_a: Some([1, 2, 3, 4, 5, 6, 7, 8]),
        kimage_b: None,
        uart: UartState::from(&SerialState {
            line_control: 0x03,
            in_buffer: vec![b'x'],
            ..Default::default()
        }),
        devices: vec![crate::state::DeviceState::Kvmclock(
            crate::devices::ClockState {
                clock: 12345,
                flags: 0,
                realtime: 0,
                host_tsc: 0,
            },
        )],
        peer: Some(SuspendRecord {
            kernel: Kernel::A,
            suspended_at: CheckpointId {
                index: 3,
                cycle: 3,
                kernel: Kernel::A,
                direction: Direction::Suspend,
            },
            state: peer_state,
            uart: UartState::from(&SerialState::default()),
            devices: Vec::new(),
        }),
    }
}

#[test]
fn the_resume_record_round_trips_and_is_checked() {
    let dir = scratch("resume-record");
    let (s, id, mem, r) = (sample_state(), id(), memory(), record());
    let path = dir.join("r.core");
    let inp = DumpInput {
        resume: Some(&r),
        ..input(&s, &id, &mem)
    };
    write_dump(&path, &inp).unwrap();
    let d = read_dump(&path).unwrap();
    assert_eq!(d.resume(), Some(&r));
    assert_eq!(d.meta().version, KJUMP_VERSION);
    let uart = SerialState::from(&d.resume().unwrap().uart);
    assert_eq!((uart.line_control, uart.in_buffer), (0x03, vec![b'x']));
    let text = inspect(&d);
    assert!(
        text.contains(
            "resume record: ping-pong of 7 cycles, kernel a away since #3 cycle 3 kernel a suspend"
        ),
        "{text}"
    );
    assert_eq!(inspect_json(&d)["resume"]["cycles"], 7);
    // Without a record: nothing to resume, said so.
    let plain = read_dump(&write_sample(&dir, "plain.core")).unwrap();
    assert!(plain.resume().is_none());
    assert!(inspect(&plain).contains("no resume record"));

    // A peer that cannot be the peer of this checkpoint (kernel b
    // resumes at #5: the peer is a, suspended before #5).
    for (what, edit) in [
        (
            "peer is b",
            (|p: &mut SuspendRecord| p.kernel = Kernel::B) as fn(&mut SuspendRecord),
        ),
        ("suspended later", |p| p.suspended_at.index = 9),
        ("at a resume", |p| {
            p.suspended_at.direction = Direction::Resume
        }),
        ("short xsave", |p| p.state.xsave.truncate(100)),
    ] {
        let mut bad = record();
        edit(bad.peer.as_mut().unwrap());
        let inp = DumpInput {
            resume: Some(&bad),
            ..input(&s, &id, &mem)
        };
        write_dump(&path, &inp).unwrap();
        let e = read_dump(&path).expect_err(what);
        assert!(matches!(e, DumpError::Corrupt { .. }), "{what}: {e}");
        assert!(!e.to_string().contains('\n'), "{e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Rewrites the KJUMP note of a version 2 dump without a resume record
/// as version 1, as an older kjump wrote it.
/// Rewrites a dump as version 1 or 2 wrote it: the 72-byte header, no RAM
/// checksums (version 1: no resume record either). The note shrinks in
/// place; the PT_NOTE and the note header say so.
fn as_version(bytes: &mut [u8], version: u32) {
    let at = bytes.windows(6).position(|w| w == b"KJUMP\0").unwrap() - 12;
    let descsz = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
    let old = bytes[at + 20..at + 20 + descsz].to_vec();
    let ram_len = u32_at(&old, 72) as usize;
    let resume_len = u32_at(&old, KJUMP_RESUME_SIZE) as usize;
    let mut desc = old[..KJUMP_HEADER_SIZE].to_vec();
    let body_end = old.len() - ram_len;
    let body_end = if version == 1 {
        body_end - resume_len
    } else {
        body_end
    };
    desc.extend_from_slice(&old[KJUMP_HEADER_SIZE_V3..body_end]);
    desc[8..12].copy_from_slice(&version.to_le_bytes());
    desc[12..16].copy_from_slice(&(KJUMP_HEADER_SIZE as u32).to_le_bytes());
    if version == 1 {
        desc[KJUMP_RESUME_SIZE..KJUMP_RESUME_SIZE + 4].copy_from_slice(&[0; 4]);
    }
    desc[KJUMP_CHECKSUM..KJUMP_CHECKSUM + 8].copy_from_slice(&[0; 8]);
    let sum = checksum(&desc);
    desc[KJUMP_CHECKSUM..KJUMP_CHECKSUM + 8].copy_from_slice(&sum.to_le_bytes());
    let shrink = descsz - desc.len();
    bytes[at + 4..at + 8].copy_from_slice(&(desc.len() as u32).to_le_bytes());
    bytes[at + 20..at + 20 + desc.len()].copy_from_slice(&desc);
    bytes[at + 20 + desc.len()..at + 20 + descsz].fill(0);
    // The PT_NOTE is the first program header; its p_filesz at +32.
    let ph = EHDR_SIZE + 32;
    let filesz = u64::from_le_bytes(bytes[ph..ph + 8].try_into().unwrap());
    bytes[ph..ph + 8].copy_from_slice(&(filesz - shrink as u64).to_le_bytes());
    bytes[ph + 8..ph + 16].copy_from_slice(&(filesz - shrink as u64).to_le_bytes());
}

fn as_version_1(bytes: &mut [u8]) {
    as_version(bytes, 1)
}

#[test]
fn version_1_dumps_are_still_read() {
    let dir = scratch("v1");
    let path = write_sample(&dir, "a.core");
    let mut bytes = std::fs::read(&path).unwrap();
    as_version_1(&mut bytes);
    let d = read_bytes(&dir.join("v1.core"), &bytes).unwrap();
    assert_eq!((d.meta().version, d.meta().id), (1, id()));
    assert_eq!(d.state(), &sample_state());
    assert!(d.resume().is_none());
    // Version 1's reserved field must stay zero.
    let at = bytes.windows(6).position(|w| w == b"KJUMP\0").unwrap() - 12 + 20;
    bytes[at + KJUMP_RESUME_SIZE] = 1;
    let sum = checksum(&bytes[at..at + u32_at(&bytes, at - 16) as usize]);
    bytes[at + KJUMP_CHECKSUM..at + KJUMP_CHECKSUM + 8].copy_from_slice(&sum.to_le_bytes());
    let e = read_bytes(&dir.join("v1.core"), &bytes).unwrap_err();
    assert!(e.to_string().contains("reserved"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_dump_skips_its_holes_for_readers() {
    let dir = scratch("skip");
    let d = read_dump(&write_sample(&dir, "a.core")).unwrap();
    // memory(): data at 0x1000, 0x2000, 0x80000 (one byte), ...
    // (A file system without hole tracking skips nothing.)
    let next = d.skip_zeros(0x3000, RAM.1);
    assert!(
        (0x3000..=0x8_0000).contains(&next) && next.is_multiple_of(PAGE),
        "{next:#x}"
    );
    assert_eq!(d.skip_zeros(0x10_0000, 0x10_0000), 0x10_0000);
    assert_eq!(d.skip_zeros(0x1234, RAM.1), 0x1000);
    let mem = memory();
    assert_eq!(
        mem.skip_zeros(0x3456, RAM.1),
        0x3000,
        "GuestMem skips nothing"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inspect_shows_checkpoint_registers_memory_and_notes() {
    let dir = scratch("inspect");
    let path = write_sample(&dir, "a.core");
    let text = cmd_inspect(&path, false).unwrap();
    for want in [
        "checkpoint #5 cycle 3 kernel b resume",
        "kernel built-in, 5 MiB of RAM",
        "jump-back entry 0x204321",
        "resumable",
        "rbx 0x0000000000001111",
        "rip 0x0000000000201234",
        "cs  selector 0x0008",
        "gdt base 0x0000000000000500 limit 0x001f",
        "cr3 0x0000000000009000",
        "memory: 2 range(s)",
        "[0x0..0x400000) 4 MiB, 5 non-zero page(s) of 1024",
        "[0x100000000..0x100100000) 1 MiB, 1 non-zero page(s)",
        "NT_PRSTATUS",
        "KJUMP  type 0x4b4a0001",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    let j: serde_json::Value = serde_json::from_str(&cmd_inspect(&path, true).unwrap()).unwrap();
    assert_eq!(j["kjump"]["id"]["kernel"], "b");
    assert_eq!(j["kjump"]["jump_back_entry"], 0x20_4321);
    assert_eq!(j["registers"]["rbx"], 0x1111);
    assert_eq!(j["segments"]["cs"]["selector"], 8);
    assert_eq!(j["control"]["cr0"], 0x8000_0011u64);
    assert_eq!(j["fields"]["msr[0x00000010] TSC"], "0x1e240");
    assert_eq!(j["memory"][0]["nonzero_pages"], 5);
    assert_eq!(j["notes"][3]["type"], NT_KJUMP);
    let e = cmd_inspect(&dir.join("missing.core"), false).unwrap_err();
    assert!(matches!(e, DumpError::Read { .. }), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Version 3: a byte changed anywhere in a dump's RAM, hole or data, is a
/// corrupt dump naming the range; so is a list that does not match the
/// PT_LOADs.
#[test]
fn a_changed_ram_byte_is_refused_with_its_range() {
    let dir = scratch("ram-checksum");
    let path = write_sample(&dir, "a.core");
    let d = read_dump(&path).unwrap();
    assert_eq!(d.meta().version, 3);
    let bytes = std::fs::read(&path).unwrap();
    // The data page at 0x1000 and a hole (zero page) at 0x10000, in the
    // first PT_LOAD (at file offset `off`).
    let ph = EHDR_SIZE + PHDR_SIZE;
    let off = u64::from_le_bytes(bytes[ph + 8..ph + 16].try_into().unwrap()) as usize;
    for addr in [0x1000 + 7, 0x10000 + 99] {
        let mut b = bytes.clone();
        b[off + addr] ^= 0x20;
        let e = read_bytes(&dir.join("flipped.core"), &b).unwrap_err();
        let s = e.to_string();
        assert!(matches!(e, DumpError::Corrupt { .. }), "{s}");
        assert!(
            s.contains("RAM range [0x0..0x400000) does not match its checksum"),
            "{s}"
        );
        assert!(!s.contains('\n'), "{s}");
    }
    // Version 2 (no checksums) is still read.
    let mut b = bytes.clone();
    as_version(&mut b, 2);
    let d2 = read_bytes(&dir.join("v2.core"), &b).unwrap();
    assert_eq!((d2.meta().version, d2.state()), (2, &sample_state()));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A KVM struct member of the wrong size is refused, not padded or cut.
#[test]
fn state_members_must_have_exactly_their_size() {
    let state = serde_json::to_value(sample_state()).unwrap();
    assert!(read::parse_state(&serde_json::to_vec(&state).unwrap()).is_ok());
    for (member, len) in [("regs", 10), ("sregs", 400), ("lapic", 1025), ("events", 0)] {
        let mut v = state.clone();
        v[member] = serde_json::Value::Array(vec![0.into(); len]);
        let e = read::parse_state(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(
            e.contains(&format!("member {member} is {len} bytes")),
            "{e}"
        );
    }
    let mut v = state.clone();
    v.as_object_mut().unwrap().remove("xcrs");
    let e = read::parse_state(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(e.contains("no member xcrs"), "{e}");
}

/// Found by the dump_reader fuzzer: a dump without RAM (no PT_LOAD) has an
/// empty list of checksums, and is rewritten and read back as it was.
#[test]
fn a_dump_without_ram_round_trips() {
    struct NoRam;
    impl RamSource for NoRam {
        fn ram_ranges(&self) -> Vec<(u64, u64)> {
            Vec::new()
        }
        fn read_ram(&self, addr: u64, _: &mut [u8]) -> Result<(), DumpError> {
            Err(DumpError::Memory(addr))
        }
    }
    let dir = scratch("no-ram");
    let (s, id) = (sample_state(), id());
    let path = dir.join("empty.core");
    let mem = memory();
    let mut i = input(&s, &id, &mem);
    i.memory = &NoRam;
    write_dump(&path, &i).unwrap();
    let d = read_dump(&path).unwrap();
    assert!(d.ranges().is_empty());
    assert_eq!(d.state(), &sample_state());
    std::fs::remove_dir_all(&dir).unwrap();
}
