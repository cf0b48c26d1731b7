//! Writes the seed corpora of the fuzz targets to `fuzz/seeds/<target>/`:
//! small valid inputs of each format (built with kjump's own writers where
//! it has them) and a few damaged ones.
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example make_seeds
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use kjump_abi::abi::{HarnessMsg, KimageArgs, MsgKind};
use kjump_abi::control::{MODE_BACKUP, MODE_SWAP};
use kjump_abi::cpio::{HEADER_LEN, MODE_DIR, MODE_REG, TRAILER, write_header};
use kjump_abi::kimage::{Builder, IND_INDIRECTION, ListMemory};
use kjump_abi::layout::PAGE_SIZE;
use kjump_core::checkpoint::{CheckpointId, Direction, Kernel};
use kjump_core::dump::{
    DumpError, DumpInput, RamSource, ResumeRecord, SuspendRecord, UartState, write_dump,
};
use kjump_core::state::VcpuState;
use kjump_fuzz::{fix_image_checksums, fix_kjump_checksum};

/// Seeds must stay small: the repository keeps them.
const MAX_SEED: usize = 64 << 10;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let mut total = 0;
    for (target, seeds) in [
        ("cpio", cpio_seeds()),
        ("elf", elf_seeds()),
        ("kimage_walk", kimage_seeds()),
        ("harness_msg", harness_seeds()),
        ("dump_reader", dump_seeds()),
        ("image_reader", image_seeds()),
    ] {
        let dir = root.join(target);
        // Only this generator writes here: start from nothing.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the seed directory");
        for (name, bytes) in seeds {
            assert!(
                bytes.len() < MAX_SEED,
                "{target}/{name}: {} bytes",
                bytes.len()
            );
            fs::write(dir.join(name), &bytes).expect("write a seed");
            total += 1;
        }
    }
    println!("wrote {total} seeds under {}", root.display());
}

// ------------------------------------------------------------------- cpio

fn cpio(files: &[(&str, u32, &[u8])], after: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    let trailer = [(TRAILER, 0, &[][..])];
    for (ino, (name, mode, data)) in files.iter().chain(&trailer).enumerate() {
        let mut h = [0u8; HEADER_LEN];
        let ino = if *name == TRAILER { 0 } else { ino as u32 + 1 };
        write_header(&mut h, ino, *mode, data.len() as u32, name.len() as u32 + 1);
        v.extend_from_slice(&h);
        v.extend_from_slice(name.as_bytes());
        v.push(0);
        v.resize(v.len().next_multiple_of(4), 0);
        v.extend_from_slice(data);
        v.resize(v.len().next_multiple_of(4), 0);
    }
    v.extend_from_slice(after);
    v
}

fn cpio_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let kernel = elf(0x20_0000, &[(0x20_0000, &[0xf4; 13], 0x1000)], false);
    let initramfs = cpio(
        &[
            ("kjump", MODE_DIR | 0o755, b""),
            ("kjump/kernel-b", MODE_REG | 0o644, &kernel),
            ("kjump/config", MODE_REG | 0o644, b"cycles=3\nmode=swap\n"),
        ],
        b"",
    );
    let mut cut = initramfs.clone();
    cut.truncate(initramfs.len() - 130);
    vec![
        ("initramfs", initramfs),
        ("empty", cpio(&[], b"")),
        (
            "after-trailer",
            cpio(&[("x", MODE_REG, b"abc")], b"\x00\x00\x00\x00070701garbage"),
        ),
        (
            "odd-sizes",
            cpio(
                &[
                    ("a", MODE_REG, b"1"),
                    ("bb", MODE_REG, b"22"),
                    ("ccc", 0, b"333"),
                ],
                b"",
            ),
        ),
        ("cut", cut),
    ]
}

// -------------------------------------------------------------------- ELF

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

/// An ELF64 x86_64 executable with `(paddr, file bytes, memsz)` segments,
/// a PT_NOTE, and (with `symbols`) section headers with a symbol table.
fn elf(entry: u64, segs: &[(u64, &[u8], u64)], symbols: bool) -> Vec<u8> {
    let phnum = segs.len() + 1;
    let mut v = vec![0u8; 64 + 56 * phnum];
    v[..4].copy_from_slice(b"\x7fELF");
    (v[4], v[5], v[6]) = (2, 1, 1);
    v[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    v[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    v[20..24].copy_from_slice(&1u32.to_le_bytes());
    v[24..32].copy_from_slice(&entry.to_le_bytes());
    v[32..40].copy_from_slice(&64u64.to_le_bytes());
    v[52..54].copy_from_slice(&64u16.to_le_bytes());
    v[54..56].copy_from_slice(&56u16.to_le_bytes());
    v[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
    let ph =
        |v: &mut Vec<u8>, i: usize, kind: u32, off: u64, paddr: u64, filesz: u64, memsz: u64| {
            let p = 64 + 56 * i;
            v[p..p + 4].copy_from_slice(&kind.to_le_bytes());
            v[p + 4..p + 8].copy_from_slice(&7u32.to_le_bytes());
            for (o, x) in [
                (8, off),
                (16, paddr),
                (24, paddr),
                (32, filesz),
                (40, memsz),
                (48, 0x1000),
            ] {
                v[p + o..p + o + 8].copy_from_slice(&x.to_le_bytes());
            }
        };
    let mut placed = Vec::new();
    for (i, (paddr, data, memsz)) in segs.iter().enumerate() {
        let off = v.len() as u64;
        v.extend_from_slice(data);
        ph(&mut v, i, PT_LOAD, off, *paddr, data.len() as u64, *memsz);
        placed.push((off, *paddr, data.len() as u64, *memsz));
    }
    let note_off = v.len() as u64;
    v.extend_from_slice(&[
        4, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, b'K', b'J', 0, 0, 1, 2, 3, 4,
    ]);
    ph(&mut v, segs.len(), PT_NOTE, note_off, 0, 20, 20);
    if symbols {
        add_sections(&mut v, &placed);
    }
    v
}

/// A section header: name, type, flags, addr, offset, size, link, info,
/// align, entsize.
type Shdr = (u32, u32, u64, u64, u64, u64, u32, u32, u64, u64);

/// Appends `.text`, `.bss`, `.symtab`, `.strtab` and `.shstrtab` and
/// their section headers: `.text` is the first segment's bytes, `.bss`
/// the last segment's zero tail.
fn add_sections(v: &mut Vec<u8>, segs: &[(u64, u64, u64, u64)]) {
    let (text_off, text_addr, text_size, _) = segs[0];
    let &(_, last_addr, last_file, last_mem) = segs.last().expect("a segment");
    let (bss_addr, bss_size) = (last_addr + last_file, last_mem - last_file);
    let mut strtab = vec![0u8];
    let mut name = |s: &str| {
        let at = strtab.len() as u32;
        strtab.extend_from_slice(s.as_bytes());
        strtab.push(0);
        at
    };
    // (name, info: bind << 4 | type, section, value, size)
    let syms = [
        (name("_start"), 0x10, 1u16, text_addr, 0u64),
        (
            name("_ZN12kjump_kernel4main17h0123456789abcdefE"),
            0x12,
            1,
            text_addr + 4,
            8,
        ),
        (
            name("_ZN12kjump_kernel5kexec14STATIC_PATTERN17hfedcba9876543210E"),
            0x11,
            2,
            bss_addr,
            bss_size,
        ),
        (name("inner"), 0x11, 2, bss_addr + 0x10, 0x10),
    ];
    let mut symtab = vec![0u8; 24];
    for (n, info, shndx, value, size) in syms {
        symtab.extend_from_slice(&n.to_le_bytes());
        symtab.push(info);
        symtab.push(0);
        symtab.extend_from_slice(&shndx.to_le_bytes());
        symtab.extend_from_slice(&value.to_le_bytes());
        symtab.extend_from_slice(&size.to_le_bytes());
    }
    let shstrtab = b"\0.text\0.bss\0.symtab\0.strtab\0.shstrtab\0".to_vec();
    let put = |v: &mut Vec<u8>, b: &[u8]| {
        v.resize(v.len().next_multiple_of(8), 0);
        let at = v.len() as u64;
        v.extend_from_slice(b);
        at
    };
    let symtab_off = put(v, &symtab);
    let strtab_off = put(v, &strtab);
    let shstrtab_off = put(v, &shstrtab);
    v.resize(v.len().next_multiple_of(8), 0);
    let shoff = v.len() as u64;
    let headers: [Shdr; 6] = [
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        (1, 1, 6, text_addr, text_off, text_size, 0, 0, 16, 0), // PROGBITS, AX
        (7, 8, 3, bss_addr, 0, bss_size, 0, 0, 16, 0),          // NOBITS, WA
        (12, 2, 0, 0, symtab_off, symtab.len() as u64, 4, 1, 8, 24), // SYMTAB
        (20, 3, 0, 0, strtab_off, strtab.len() as u64, 0, 0, 1, 0), // STRTAB
        (28, 3, 0, 0, shstrtab_off, shstrtab.len() as u64, 0, 0, 1, 0),
    ];
    for (name, kind, flags, addr, off, size, link, info, align, entsize) in headers {
        v.extend_from_slice(&name.to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        for x in [flags, addr, off, size] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.extend_from_slice(&link.to_le_bytes());
        v.extend_from_slice(&info.to_le_bytes());
        v.extend_from_slice(&align.to_le_bytes());
        v.extend_from_slice(&entsize.to_le_bytes());
    }
    v[40..48].copy_from_slice(&shoff.to_le_bytes());
    v[58..60].copy_from_slice(&64u16.to_le_bytes());
    v[60..62].copy_from_slice(&6u16.to_le_bytes());
    v[62..64].copy_from_slice(&5u16.to_le_bytes());
}

fn elf_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let code: Vec<u8> = (0..64u8).collect();
    let two = [
        (0x20_0000, &code[..], 0x1000),
        (0x20_1000, &b"data"[..], 0x3000),
    ];
    vec![
        ("tiny", elf(0x20_0000, &[(0x20_0000, &[0xf4], 1)], false)),
        ("two-segments", elf(0x20_0010, &two, false)),
        ("symbols", elf(0x20_0000, &two, true)),
        (
            "low-and-empty",
            elf(
                0x8_0000,
                &[(0x8_0000, b"lo", 2), (0x30_0000, b"", 0)],
                false,
            ),
        ),
    ]
}

// ----------------------------------------------------------------- kimage

/// A little guest memory for the list builder: bytes from `base` up, pages
/// handed out from `next`.
struct Flat {
    base: u64,
    bytes: Vec<u8>,
    next: u64,
}

impl ListMemory for Flat {
    fn alloc_page(&mut self) -> Option<u64> {
        let page = self.next;
        self.next += PAGE_SIZE;
        Some(page)
    }
    fn write_u64(&mut self, addr: u64, value: u64) {
        let at = (addr - self.base) as usize;
        if self.bytes.len() < at + 8 {
            self.bytes.resize(at + 8, 0);
        }
        self.bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }
}

/// Builds a list of `pairs` with its pages from `first_page` up in a
/// memory from `base`; returns the head and the memory.
fn list(base: u64, first_page: u64, pairs: &[(u64, u64)]) -> (u64, Vec<u8>) {
    let mut m = Flat {
        base,
        bytes: Vec::new(),
        next: first_page,
    };
    let mut b = Builder::new();
    for &(dest, src) in pairs {
        b.add_page(&mut m, dest, src).expect("pages enough");
    }
    let (head, _) = b.finish(&mut m).expect("pages enough");
    (head, m.bytes)
}

fn run(dest: u64, src: u64, n: u64) -> Vec<(u64, u64)> {
    (0..n)
        .map(|i| (dest + i * PAGE_SIZE, src + i * PAGE_SIZE))
        .collect()
}

fn kimage_seeds() -> Vec<(&'static str, Vec<u8>)> {
    const BASE: u64 = 0x10_0000; // the hostile walk's memory
    let mut seeds = Vec::new();
    let hostile = |head: u64, max: u16, mem: &[u8]| {
        let mut v = vec![0u8];
        v.extend_from_slice(&head.to_le_bytes());
        v.extend_from_slice(&max.to_le_bytes());
        v.extend_from_slice(mem);
        v
    };
    let mut pairs = run(0x10_0000, 0x400_0000, 3);
    pairs.extend(run(0x20_0000, 0x500_0000, 2));
    let (head, mem) = list(BASE, BASE, &pairs);
    seeds.push(("walk-short", hostile(head, 100, &mem)));
    let (head, mem) = list(BASE, BASE, &run(0x10_0000, 0x400_0000, 600));
    seeds.push(("walk-two-pages", hostile(head, 2000, &mem)));
    // A page that links to itself.
    let mut looped = (0x40_0000u64 | 1).to_le_bytes().to_vec();
    looped.extend_from_slice(&(BASE | IND_INDIRECTION).to_le_bytes());
    seeds.push(("walk-loop", hostile(BASE | IND_INDIRECTION, 300, &looped)));

    // The builder round trip: a budget, then runs.
    seeds.push((
        "build-small",
        vec![1, 1, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0x40, 0, 0, 5],
    ));
    seeds.push((
        "build-long",
        vec![
            4, 2, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0x40, 0, 2, 0x58, 0, 0, 0, 0, 0, 0x20, 0, 0,
            0, 0, 0, 0x80, 0, 0, 9,
        ],
    ));

    // The VMM's read: 64 bytes of arguments, no parked page, RAM with the
    // list at 0x1000 and 0x2000: pages 0x4000.. go to 0xfc000...
    let vmm = |mode: u64, head: u64, head2: u64, parked: &[u8], mem: &[u8]| {
        let mut args = [0u64; 8];
        args[KimageArgs::HEAD] = head;
        args[KimageArgs::CONTROL] = 0x8000;
        args[KimageArgs::CONTROL_PAGES] = 6;
        args[KimageArgs::MODE] = mode;
        args[KimageArgs::ROLE] = 0;
        args[KimageArgs::PEER_START] = 0x4000;
        args[KimageArgs::PEER_END] = 0x8000;
        args[KimageArgs::HEAD2] = head2;
        let mut v = vec![2u8];
        for a in args {
            v.extend_from_slice(&a.to_le_bytes());
        }
        v.extend_from_slice(parked);
        v.extend_from_slice(mem);
        v
    };
    let (head, mut mem) = list(0, 0x1000, &run(0x4000, 0xfc000, 4));
    seeds.push(("vmm-swap", vmm(MODE_SWAP, head, 0, &[0], &mem)));
    // Backup mode: a second list in the next page.
    let (head2, mem2) = list(0, 0x2000, &run(0x4000, 0xfe000, 2));
    mem.resize(0x2000, 0);
    mem.extend_from_slice(&mem2[0x2000..]);
    seeds.push(("vmm-backup", vmm(MODE_BACKUP, head, head2, &[0], &mem)));
    // The list parked: its home page 0x1000 is at RAM page 0x3000 (page
    // index 3 of the RAM's pages).
    let (head, mem) = list(0, 0x1000, &run(0x4000, 0xfc000, 4));
    let mut moved = vec![0u8; 0x3000];
    moved.extend_from_slice(&mem[0x1000..]);
    let mut parked = vec![1u8];
    parked.extend_from_slice(&0x1000u64.to_le_bytes());
    parked.push(3);
    seeds.push(("vmm-parked", vmm(MODE_SWAP, head, 0, &parked, &moved)));
    seeds
}

// ---------------------------------------------------------------- harness

fn harness_seeds() -> Vec<(&'static str, Vec<u8>)> {
    // RAM: messages at 0x100, 0x200, 0x300, 0x400; texts at 0x800.
    let mut ram = vec![0u8; 0x900];
    let text = b"kernel a: up \xff\xfe";
    ram[0x800..0x800 + text.len()].copy_from_slice(text);
    let msg = |kind: MsgKind, arg0: u64, text: bool| {
        let mut m = HarnessMsg::new(kind);
        m.args[0] = arg0;
        if text {
            m.text_ptr = 0x800;
            m.text_len = 13;
        }
        m.to_bytes()
    };
    for (at, m) in [
        (0x100, msg(MsgKind::Hello, 0, true)),
        (0x200, msg(MsgKind::Log, 0, true)),
        (0x300, msg(MsgKind::Verdict, 1, true)),
        (0x400, msg(MsgKind::Kimage, 0x1002, false)),
    ] {
        ram[at..at + HarnessMsg::SIZE].copy_from_slice(&m);
    }
    let input = |ops: &[u8]| {
        let mut v = (ram.len() as u16).to_le_bytes().to_vec();
        v.extend_from_slice(&ram);
        v.extend_from_slice(ops);
        v
    };
    vec![
        // Decode each message (op 1, a u16 address), twice the log.
        (
            "decode-all",
            input(&[1, 0, 1, 1, 0, 2, 1, 0, 2, 1, 0, 3, 1, 0, 4]),
        ),
        // Write a byte into the log's text, decode again; decode near the
        // high region's edges (op 2) and anywhere (op 3).
        (
            "write-and-edges",
            input(&[
                1, 0, 2, 0, 0x01, 0x08, 1, b'X', 1, 0, 2, 2, 0x00, 0x00, 2, 0x40, 0x28, 3, 1, 2, 3,
                4, 5, 6, 7, 8,
            ]),
        ),
        // Op 4: a message built from the input.
        (
            "built",
            input(&[
                4, 0, 5, 1, 1, 0, 0, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0x10,
            ]),
        ),
    ]
}

// ------------------------------------------------------------------- dump

/// A small guest RAM for the dump writer.
struct Pages(BTreeMap<u64, Vec<u8>>);

impl RamSource for Pages {
    fn ram_ranges(&self) -> Vec<(u64, u64)> {
        self.0.iter().map(|(&a, b)| (a, b.len() as u64)).collect()
    }
    fn read_ram(&self, addr: u64, buf: &mut [u8]) -> Result<(), DumpError> {
        let (&start, bytes) = self
            .0
            .range(..=addr)
            .next_back()
            .ok_or(DumpError::Memory(addr))?;
        let at = (addr - start) as usize;
        let src = bytes
            .get(at..at + buf.len())
            .ok_or(DumpError::Memory(addr))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

fn state(rip: u64) -> VcpuState {
    let mut s = VcpuState::default();
    s.regs.rip = rip;
    s.regs.rsp = 0x30_0000;
    s.regs.rax = u64::from(u32::from_le_bytes(*b"BACK"));
    s.regs.rflags = 2;
    s.sregs.cr0 = 0x8000_0011;
    s.sregs.cr3 = 0x9000;
    s.sregs.cr4 = 0x20;
    s.sregs.efer = 0x500;
    s.sregs.cs.selector = 8;
    s.sregs.cs.l = 1;
    s.sregs.cs.present = 1;
    s.msrs.insert(0xc000_0102, 0x1234);
    s.xsave[24] = 0x80; // mxcsr 0x1f80
    s.xsave[25] = 0x1f;
    s
}

fn dump(dir: &Path, name: &str, resume: Option<&ResumeRecord>) -> Vec<u8> {
    let mut low = vec![0u8; 2 * PAGE_SIZE as usize];
    low[0x10..0x20].copy_from_slice(b"kjump dump seed!");
    let ram = Pages(BTreeMap::from([
        (0, low),
        (0x10_0000, vec![0xa5; PAGE_SIZE as usize]),
    ]));
    let s = state(0x20_1234);
    let id = CheckpointId {
        index: 3,
        cycle: 2,
        kernel: Kernel::A,
        direction: Direction::Resume,
    };
    let path: PathBuf = dir.join(name);
    let input = DumpInput {
        state: &s,
        id: &id,
        jump_back_entry: 0x20_1234,
        resumable: true,
        memory: &ram,
        kernel_name: "built-in",
        mem_size: 3 * PAGE_SIZE,
        kjump_version: "seed",
        resume,
    };
    write_dump(&path, &input).expect("write the seed dump");
    fs::read(&path).expect("read the seed dump")
}

fn dump_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let dir = std::env::temp_dir().join(format!("kjump-seeds-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("a scratch directory");
    let uart = UartState {
        baud_divisor_low: 1,
        baud_divisor_high: 0,
        interrupt_enable: 0,
        interrupt_identification: 1,
        line_control: 3,
        line_status: 0x60,
        modem_control: 8,
        modem_status: 0xb0,
        scratch: 0xa0,
        in_buffer: vec![],
    };
    let record = ResumeRecord {
        scenario: "ping-pong".into(),
        cycles: 3,
        kimage_a: Some([0x1002, 0x8000, 6, 0, 0, 0x10_0000, 0x90_0000, 0]),
        kimage_b: None,
        uart: uart.clone(),
        devices: Vec::new(),
        peer: Some(SuspendRecord {
            kernel: Kernel::B,
            suspended_at: CheckpointId {
                index: 2,
                cycle: 1,
                kernel: Kernel::B,
                direction: Direction::Suspend,
            },
            state: state(0x10_4321),
            uart,
            devices: Vec::new(),
        }),
    };
    let plain = dump(&dir, "plain.core", None);
    let resumable = dump(&dir, "resume.core", Some(&record));
    fs::remove_dir_all(&dir).expect("remove the scratch directory");
    // Version 1: no resume record; the same bytes with version 1.
    let mut v1 = plain.clone();
    let at = v1
        .windows(8)
        .position(|w| w == b"KJUMPDMP")
        .expect("a KJUMP note");
    v1[at + 8] = 1;
    fix_kjump_checksum(&mut v1);
    // Checksum fixed by the target: a leading 0 byte.
    let mut fixed = vec![0u8];
    fixed.extend_from_slice(&plain);
    vec![
        ("plain", plain),
        ("resume-record", resumable),
        ("version-1", v1),
        ("checksum-fixed", fixed),
    ]
}

// ------------------------------------------------------------ image_reader

/// A hibernation image of `ranges` whose kimage parks a page at 0xb000
/// (see `kjump_core::hibimage::testing`).
fn image(ranges: &[(u64, u64)], mode: u64) -> Vec<u8> {
    kjump_core::hibimage::testing::image_with_view(ranges, mode, 0xb000)
}

fn image_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let both = [(0, 0x4000), (0x8000, 0x8000)];
    let valid = image(&both, MODE_SWAP);
    let mut fixed = vec![0u8];
    let mut flipped = valid.clone();
    let last = flipped.len() - 100;
    flipped[last] ^= 1;
    fixed.extend_from_slice(&flipped);
    let mut refixed = fixed[1..].to_vec();
    fix_image_checksums(&mut refixed);
    assert_eq!(refixed.len(), flipped.len());
    let mut no_view = image(&[(0, 0x4000)], MODE_SWAP);
    no_view.extend_from_slice(&[0; 4096]);
    let mut tail = valid.clone();
    tail.extend_from_slice(&[0; 8192]);
    vec![
        ("valid", valid.clone()),
        ("backup-mode", image(&both, MODE_BACKUP)),
        ("flipped-fixed", fixed),
        ("flipped", flipped),
        ("no-view", no_view),
        ("disk-tail", tail),
        ("truncated", valid[..valid.len() - 4096].to_vec()),
    ]
}
