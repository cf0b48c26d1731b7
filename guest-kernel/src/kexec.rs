//! kexec jump with preserved context: kernel A loads kernel B, and the two
//! jump to each other for as many cycles as asked (the `ping-pong`
//! scenario).
//!
//! A builds the kimage like `kexec -l --load-preserve-context` does: B's
//! PT_LOADs, B's zero page and command line, and zero pages for the rest of
//! the RAM B is given ([peer_start, peer_end), like kexec-tools'
//! `--mem-min/--mem-max`), each destination page with a source page that
//! holds its content, in a Linux-format indirection list. Every jump swaps
//! each source page with its destination page (`relocate.rs`), so both
//! kernels' memory survives. B boots once; every later jump resumes the peer
//! where it last left (its re-entry point is the return address it pushed
//! when it called us).

use core::fmt::Write;

use kjump_abi::abi::{KimageArgs, Role};
use kjump_abi::bootparams::{self, E820_RAM, E820Entry};
use kjump_abi::cmdline;
use kjump_abi::control::{self, Slot, slot_offset};
use kjump_abi::elf::Elf;
use kjump_abi::fault::{self, Fault, JumpFault};
use kjump_abi::kimage::{Builder, ListMemory};
use kjump_abi::layout::{HIGH_RAM_START, PAGE_SIZE};

use crate::bootinfo::BootInfo;
use crate::relocate::{
    kjump_jump, kjump_reentry, kjump_ring3_call, relocate_end, relocate_peer_returned,
    relocate_ring0_return, relocate_start,
};
use crate::{harness, mem, paging, serial};

/// Path of the kernel A jumps to, in the initramfs.
pub const KERNEL_B_PATH: &str = "kjump/kernel-b";
const GIB: u64 = 1 << 30;
/// Control pages must be reachable from the peer's identity map, which
/// covers at least the first 4 GiB.
const CONTROL_MAX_END: u64 = 4 * GIB;

/// Settings from the command line.
struct Config {
    cycles: u64,
    peer_start: u64,
    peer_end: u64,
    backup: bool,
    pattern_bytes: u64,
}

impl Config {
    fn parse(cmd: &str) -> Result<Self, &'static str> {
        let num = |k, d| cmdline::get(cmd, k).map_or(Some(d), cmdline::parse_u64);
        let size = |k, d| cmdline::get(cmd, k).map_or(Some(d), cmdline::parse_size);
        let cycles = num("kjump.cycles", 10).ok_or("bad kjump.cycles")?;
        let peer_mem = size("kjump.peer_mem", kjump_abi::layout::DEFAULT_PEER_MEM)
            .ok_or("bad kjump.peer_mem")?;
        let backup = match cmdline::get(cmd, "kjump.mode").unwrap_or("swap") {
            "swap" => false,
            "backup" => true,
            _ => return Err("kjump.mode must be swap or backup"),
        };
        let pattern_bytes = size("kjump.pattern", 1 << 20).ok_or("bad kjump.pattern")?;
        if peer_mem % PAGE_SIZE != 0 || peer_mem < (4 << 20) {
            return Err("kjump.peer_mem must be a multiple of 4 KiB and at least 4 MiB");
        }
        Ok(Self {
            cycles,
            peer_start: HIGH_RAM_START,
            peer_end: HIGH_RAM_START + peer_mem,
            backup,
            pattern_bytes,
        })
    }
}

/// A loaded jump image: the control pages and the list(s) they point to.
struct JumpImage {
    role: Role,
    cp: u64,
    control_pages: u64,
    head: u64,
    head2: u64,
    backup: bool,
    peer_start: u64,
    peer_end: u64,
    /// Pages moved per transfer (for the self-check).
    pages_per_transfer: u64,
}

// ---------------------------------------------------------------------------
// Physical memory access. The kernel runs identity-mapped, so a physical
// address is a pointer; the callers only pass pages they allocated.

/// Writes `bytes` at physical address `pa`.
fn phys_write(pa: u64, bytes: &[u8]) {
    // SAFETY: callers pass pages this kernel allocated from its frame
    // allocator (or its own control pages); RAM is identity-mapped.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), pa as *mut u8, bytes.len()) }
}

fn phys_write_u64(pa: u64, v: u64) {
    // SAFETY: as `phys_write`; `pa` is 8-byte aligned in every caller.
    unsafe { core::ptr::write_volatile(pa as *mut u64, v) }
}

fn phys_read_u64(pa: u64) -> u64 {
    // SAFETY: as `phys_write`; reads of this kernel's own pages.
    unsafe { core::ptr::read_volatile(pa as *const u64) }
}

struct Frames {
    avoid: (u64, u64),
}

impl ListMemory for Frames {
    fn alloc_page(&mut self) -> Option<u64> {
        mem::alloc_pages(1, u64::MAX, self.avoid)
    }
    fn write_u64(&mut self, addr: u64, value: u64) {
        phys_write_u64(addr, value);
    }
}

fn fail(args: core::fmt::Arguments<'_>) -> ! {
    let mut buf = harness::TextBuf::new();
    let _ = buf.write_fmt(args);
    crate::println!("{}", buf.as_str());
    harness::verdict(false, buf.as_str());
    crate::halt_forever()
}

// ---------------------------------------------------------------------------
// The control page.

fn code_bytes() -> &'static [u8] {
    let start = &raw const relocate_start as usize;
    let end = &raw const relocate_end as usize;
    // SAFETY: relocate_start..relocate_end is the relocation code in the
    // kernel's text, which is mapped and never written.
    unsafe { core::slice::from_raw_parts(start as *const u8, end - start) }
}

/// Offset of `relocate_peer_returned` in the control page.
fn peer_returned_offset() -> u64 {
    (&raw const relocate_peer_returned as u64) - (&raw const relocate_start as u64)
}

/// Offset of `relocate_ring0_return` in the relocation code.
fn ring0_return_offset() -> u64 {
    (&raw const relocate_ring0_return as u64) - (&raw const relocate_start as u64)
}

/// The fault this kernel was asked to have (`kjump.fault=`, for B
/// `kjump.b.fault=` on A's) and the cycle it is armed in
/// (`kjump.fault_cycle=`; every cycle when absent): see
/// `kjump_abi::fault`. kjump must catch each.
#[derive(Clone, Copy)]
struct Injected {
    fault: Option<Fault>,
    cycle: Option<u64>,
}

impl Injected {
    fn from_cmdline(boot: &BootInfo) -> Self {
        let fault = cmdline::get(boot.cmdline, fault::KEY).and_then(Fault::parse);
        let cycle = cmdline::get(boot.cmdline, fault::CYCLE_KEY).and_then(cmdline::parse_u64);
        if let Some(f) = fault {
            crate::println!(
                "{}: INJECTED FAULT: {f:?}{}",
                boot.role.name(),
                if cycle.is_some() { " in one cycle" } else { "" }
            );
        }
        Self { fault, cycle }
    }

    fn armed(&self, cycle: u64) -> bool {
        self.cycle.is_none_or(|c| c == cycle)
    }

    /// The jump fault armed for the kernel's jump in `cycle`.
    fn jump(&self, cycle: u64) -> Option<JumpFault> {
        match self.fault {
            Some(Fault::Jump(j)) if self.armed(cycle) => Some(j),
            _ => None,
        }
    }

    /// Arms the relocation and re-entry code for the jump in `cycle` (or
    /// disarms it).
    fn arm(&self, cp: u64, cycle: u64) {
        phys_write_u64(
            cp + control::DATA_FAULT,
            self.jump(cycle).map_or(0, JumpFault::mask),
        );
    }

    /// The kernel has arrived in `cycle` (A: back from B; B: booted or
    /// resumed): a stop fault chosen for this cycle fires now. (Without a
    /// cycle, stop faults fired at boot.)
    fn arrived(&self, cycle: u64) {
        if let (Some(Fault::Stop(f)), Some(c)) = (self.fault, self.cycle)
            && c == cycle
        {
            crate::fault::fire(f)
        }
    }
}

fn setup_control_pages(role: Role, map_top: u64) -> (u64, u64) {
    let n = control::control_pages(map_top);
    let Some(cp) = mem::alloc_pages(n, CONTROL_MAX_END, (0, 0)) else {
        fail(format_args!(
            "{}: no room for {n} control pages below 4 GiB",
            role.name()
        ))
    };
    let code = code_bytes();
    assert!(
        code.len() as u64 <= control::CODE_MAX,
        "relocation code too long"
    );
    phys_write(cp + control::CODE, code);
    let pt = cp + control::PAGE_TABLES * PAGE_SIZE;
    // User-accessible: the relocation code copies pages in ring 3.
    paging::build_user_identity_map(pt, pt + PAGE_SIZE, pt + 2 * PAGE_SIZE, map_top);
    phys_write_u64(cp + control::DATA_PAGE_TABLE, pt);
    write_reloc_tables(cp);
    phys_write_u64(
        cp + control::DATA_SWAP_PAGE,
        cp + control::PAGE_SWAP * PAGE_SIZE,
    );
    phys_write_u64(cp + control::DATA_REENTRY, &raw const kjump_reentry as u64);
    phys_write_u64(cp + control::DATA_OWN_ENTRY, cp + peer_returned_offset());
    mem::zero_in_ring3(cp);
    (cp, n)
}

/// The GDT, IDT and TSS of the relocation code's trip to ring 3 (see
/// relocate.rs), in the control page at `cp`.
fn write_reloc_tables(cp: u64) {
    let tss = cp + control::RELOC_TSS;
    for (i, d) in control::reloc_gdt(tss).iter().enumerate() {
        phys_write_u64(cp + control::RELOC_GDT + 8 * i as u64, *d);
    }
    let gdt_bytes = 8 * control::RELOC_GDT_ENTRIES as u64;
    phys_write(
        cp + control::RELOC_GDT_PTR,
        &control::pseudo_descriptor(cp + control::RELOC_GDT, gdt_bytes),
    );
    // One gate: ring 3's way back, to the landing in the copied code.
    let handler = cp + control::CODE + ring0_return_offset();
    for v in 0..control::RELOC_IDT_GATES {
        let gate = if v == usize::from(control::RELOC_RETURN_VECTOR) {
            control::reloc_idt_gate(handler)
        } else {
            [0, 0]
        };
        let at = cp + control::RELOC_IDT + 16 * v as u64;
        phys_write_u64(at, gate[0]);
        phys_write_u64(at + 8, gate[1]);
    }
    let idt_bytes = 16 * control::RELOC_IDT_GATES as u64;
    phys_write(
        cp + control::RELOC_IDT_PTR,
        &control::pseudo_descriptor(cp + control::RELOC_IDT, idt_bytes),
    );
    phys_write(tss, &control::reloc_tss(cp + control::RELOC_RSP0));
}

// ---------------------------------------------------------------------------
// Self-checks: what a kernel can see of itself.

#[derive(Clone, Copy, PartialEq, Eq)]
struct CpuView {
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
    gdtr: (u16, u64),
    idtr: (u16, u64),
    tr: u16,
    fx: [u8; 512],
}

#[repr(C, align(16))]
struct FxArea([u8; 512]);

fn cpu_view() -> CpuView {
    let (cr0, cr3, cr4): (u64, u64, u64);
    let mut gdt = [0u8; 10];
    let mut idt = [0u8; 10];
    let tr: u16;
    let mut fx = FxArea([0; 512]);
    // SAFETY: reads of control registers, descriptor-table registers and
    // FPU state into local buffers of the right size (fxsave64: 512 bytes,
    // 16-byte aligned); ring 0.
    unsafe {
        core::arch::asm!(
            "mov {0}, cr0", "mov {1}, cr3", "mov {2}, cr4",
            "sgdt [{3}]", "sidt [{4}]", "str {5:x}", "fxsave64 [{6}]",
            out(reg) cr0, out(reg) cr3, out(reg) cr4,
            in(reg) gdt.as_mut_ptr(), in(reg) idt.as_mut_ptr(), out(reg) tr,
            in(reg) fx.0.as_mut_ptr(),
        );
    }
    let dt = |b: &[u8; 10]| {
        (
            u16::from_le_bytes([b[0], b[1]]),
            u64::from_le_bytes(b[2..10].try_into().expect("8")),
        )
    };
    CpuView {
        cr0,
        cr3,
        cr4,
        efer: crate::rdmsr(0xc000_0080),
        gdtr: dt(&gdt),
        idtr: dt(&idt),
        tr,
        fx: fx.0,
    }
}

/// Loads a role-specific pattern into MXCSR and XMM0..15, so a peer whose
/// FPU/SSE state leaked into ours would be seen.
fn load_sse_pattern(role: Role) {
    let mut fx = FxArea([0; 512]);
    fx.0[0..2].copy_from_slice(&0x037fu16.to_le_bytes()); // FCW
    let mxcsr: u32 = 0x1f80 | if role == Role::A { 0 } else { 0x6000 }; // rounding mode
    fx.0[24..28].copy_from_slice(&mxcsr.to_le_bytes());
    fx.0[28..32].copy_from_slice(&0xffffu32.to_le_bytes()); // MXCSR_MASK (ignored)
    for (i, b) in fx.0[160..416].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31) ^ if role == Role::A { 0xa5 } else { 0x5b };
    }
    // SAFETY: fxrstor64 from a 512-byte, 16-byte-aligned area with a valid
    // MXCSR (reserved bits clear).
    unsafe { core::arch::asm!("fxrstor64 [{0}]", in(reg) fx.0.as_ptr()) };
}

fn check_cpu(role: Role, before: &CpuView) {
    let after = cpu_view();
    let who = role.name();
    let checks: [(&str, u64, u64); 10] = [
        ("cr0", before.cr0, after.cr0),
        ("cr3", before.cr3, after.cr3),
        ("cr4", before.cr4, after.cr4),
        ("efer", before.efer, after.efer),
        ("gdtr.base", before.gdtr.1, after.gdtr.1),
        ("gdtr.limit", before.gdtr.0.into(), after.gdtr.0.into()),
        ("idtr.base", before.idtr.1, after.idtr.1),
        ("idtr.limit", before.idtr.0.into(), after.idtr.0.into()),
        ("tr", before.tr.into(), after.tr.into()),
        (
            "mxcsr",
            fx_u32(&before.fx, 24).into(),
            fx_u32(&after.fx, 24).into(),
        ),
    ];
    for (name, b, a) in checks {
        if a != b {
            fail(format_args!(
                "{who}: self-check: {name} was {b:#x} before the jump, {a:#x} after"
            ));
        }
    }
    // x87 control/status and the XMM registers.
    for (lo, hi, what) in [(0usize, 4usize, "fcw/fsw"), (160, 416, "xmm0..15")] {
        if let Some(i) = (lo..hi).find(|&i| before.fx[i] != after.fx[i]) {
            fail(format_args!(
                "{who}: self-check: FPU/SSE state {what} differs at fxsave byte {i}"
            ));
        }
    }
}

fn fx_u32(fx: &[u8; 512], off: usize) -> u32 {
    u32::from_le_bytes(fx[off..off + 4].try_into().expect("4 bytes"))
}

// ---------------------------------------------------------------------------
// Data that shows damage: a deterministic pattern over part of the kernel's
// memory, inside its image (swapped when it is in the peer's region) and in
// pages from its allocator. Written and checked in ring 3 through the
// control page's trip (`kjump_ring3_call`): in ring 0 the software KVM
// backend emulates every instruction (~2 µs each), and a 1 MiB check took
// seconds; in ring 3 it takes about a millisecond.

fn pattern_word(addr: u64, seed: u64) -> u64 {
    // splitmix64 of the address: every word differs, and a word moved to
    // another address no longer matches.
    let mut z = addr ^ seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const STATIC_PATTERN_WORDS: usize = 8192;
/// Part of the pattern lives in the kernel's .bss (which lies inside the
/// peer's region, so it is swapped out at every jump).
static mut STATIC_PATTERN: [u64; STATIC_PATTERN_WORDS] = [0; STATIC_PATTERN_WORDS];

struct Pattern {
    seed: u64,
    ranges: [(u64, u64); 2],
    /// The control page whose trip runs fill and check in ring 3.
    cp: u64,
}

impl Pattern {
    fn new(role: Role, heap_bytes: u64, avoid: (u64, u64), cp: u64) -> Self {
        let seed = if role == Role::A {
            0xa11c_e000
        } else {
            0xb0b0_0000
        };
        let s = (&raw mut STATIC_PATTERN) as u64;
        let static_range = (s, s + 8 * STATIC_PATTERN_WORDS as u64);
        let pages = heap_bytes.div_ceil(PAGE_SIZE);
        let heap = if pages == 0 {
            (0, 0)
        } else {
            match mem::alloc_pages(pages, u64::MAX, avoid) {
                Some(p) => (p, p + pages * PAGE_SIZE),
                None => fail(format_args!(
                    "{}: no room for a {heap_bytes}-byte pattern",
                    role.name()
                )),
            }
        };
        let p = Self {
            seed,
            ranges: [static_range, heap],
            cp,
        };
        // The first trip to ring 3 also shows that the trip puts back what
        // it changes.
        let before = cpu_view();
        p.in_ring3(pattern_fill_ring3);
        let after = cpu_view();
        if after != before {
            check_cpu(role, &before);
            fail(format_args!(
                "{}: self-check: the ring-3 trip changed the CPU state",
                role.name()
            ));
        }
        p
    }

    /// Every word of the pattern: (address, value).
    fn words(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges
            .iter()
            .flat_map(|&(lo, hi)| (lo..hi).step_by(8))
            .map(|a| (a, pattern_word(a, self.seed)))
    }

    fn bytes(&self) -> u64 {
        self.ranges.iter().map(|(l, h)| h - l).sum()
    }

    /// Runs `f(&self)` in ring 3.
    fn in_ring3(&self, f: extern "sysv64" fn(u64) -> u64) -> u64 {
        // SAFETY: `cp` is this kernel's control page, set up by
        // `setup_control_pages` (relocation code, user-accessible identity
        // map, ring-3 tables) before any Pattern exists; interrupts are off;
        // `f` is one of the `pattern_*_ring3` functions, which touch only
        // the pattern's words (this kernel's own pages) and `self`, alive
        // for the call.
        unsafe { kjump_ring3_call(self.cp, f, self as *const Self as u64) }
    }

    fn check(&self, role: Role) {
        let bad = self.in_ring3(pattern_check_ring3);
        if bad != 0 {
            let w = pattern_word(bad, self.seed);
            fail(format_args!(
                "{}: self-check: pattern damaged at {bad:#x}: expected {w:#018x}, found {:#018x}",
                role.name(),
                phys_read_u64(bad)
            ));
        }
    }
}

/// Ring 3: writes the pattern of the `Pattern` at `p`.
extern "sysv64" fn pattern_fill_ring3(p: u64) -> u64 {
    // SAFETY: `p` is the `&Pattern` that `Pattern::in_ring3` passed.
    let p = unsafe { &*(p as *const Pattern) };
    p.words().for_each(|(a, w)| phys_write_u64(a, w));
    0
}

/// Ring 3: the address of the first damaged word of the `Pattern` at `p`,
/// or 0 (no pattern word is at address 0).
extern "sysv64" fn pattern_check_ring3(p: u64) -> u64 {
    // SAFETY: `p` is the `&Pattern` that `Pattern::in_ring3` passed.
    let p = unsafe { &*(p as *const Pattern) };
    p.words()
        .find(|&(a, w)| phys_read_u64(a) != w)
        .map_or(0, |(a, _)| a)
}

// ---------------------------------------------------------------------------
// The jump.

impl JumpImage {
    fn report(&self) {
        let mut args = [0u64; 8];
        args[KimageArgs::HEAD] = self.head;
        args[KimageArgs::CONTROL] = self.cp;
        args[KimageArgs::CONTROL_PAGES] = self.control_pages;
        args[KimageArgs::MODE] = if self.backup {
            control::MODE_BACKUP
        } else {
            control::MODE_SWAP
        };
        args[KimageArgs::ROLE] = self.role as u64;
        args[KimageArgs::PEER_START] = self.peer_start;
        args[KimageArgs::PEER_END] = self.peer_end;
        args[KimageArgs::HEAD2] = self.head2;
        harness::kimage(args);
    }

    /// Quiesces, reports the kimage, jumps; returns once resumed.
    fn jump(&self) {
        // Interrupts stay off for the whole run; the UART is the device to
        // quiesce: its registers go into the context, and the re-entry path
        // programs them back before the checkpoint.
        let uart = serial::save();
        let mut slot = [0u8; 8];
        slot[..6].copy_from_slice(&uart);
        phys_write_u64(self.cp + slot_offset(Slot::Uart), u64::from_le_bytes(slot));
        self.report();
        // SAFETY: the control page was set up by `setup_control_pages` and
        // the list by `Builder`; kjump_jump saves and restores every
        // register and returns like a function once this kernel is resumed.
        unsafe { kjump_jump(self.cp) };
    }

    fn pairs_moved(&self) -> u64 {
        phys_read_u64(self.cp + control::DATA_PAIRS)
    }
}

/// Kernel A: load B, then jump A→B→A `cycles` times.
pub fn run_a(boot: &BootInfo) -> ! {
    let cfg = Config::parse(boot.cmdline).unwrap_or_else(|e| fail(format_args!("a: {e}")));
    let (peer_start, peer_end) = (cfg.peer_start, cfg.peer_end);
    let image = match kjump_abi::cpio::Reader::find(boot.initramfs, KERNEL_B_PATH) {
        Ok(Some(e)) => e.data,
        Ok(None) => fail(format_args!("a: no {KERNEL_B_PATH} in the initramfs")),
        Err(e) => fail(format_args!("a: initramfs: {e}")),
    };
    let elf = Elf::parse(image).unwrap_or_else(|e| fail(format_args!("a: {KERNEL_B_PATH}: {e}")));
    let ram_top = mem::ram_top();
    if peer_end > ram_top {
        fail(format_args!(
            "a: the peer region {peer_start:#x}..{peer_end:#x} is beyond RAM ({ram_top:#x})"
        ));
    }
    match elf.extent() {
        Some((lo, hi)) if lo >= peer_start + 2 * PAGE_SIZE && hi <= peer_end => {}
        _ => fail(format_args!(
            "a: kernel b does not fit in {peer_start:#x}..{peer_end:#x}"
        )),
    }
    // Nothing A allocates from now on may land in B's region: sources,
    // lists and control pages must survive B.
    mem::reserve(peer_start, peer_end);
    let avoid = (peer_start, peer_end);
    let npages = (peer_end - peer_start) / PAGE_SIZE;
    let map_top = ram_top.max(4 * GIB);
    let (cp, control_pages) = setup_control_pages(Role::A, map_top);
    let injected = Injected::from_cmdline(boot);

    // Source pages: B's image, page for page (zeroed by the allocator).
    let src_of = |sources: u64, d: u64| sources + (d - peer_start);
    let Some(sources) = mem::alloc_pages(npages, u64::MAX, avoid) else {
        fail(format_args!("a: no room for {npages} source pages"))
    };
    for seg in elf.segments() {
        phys_write(src_of(sources, seg.paddr), seg.data);
    }
    // B's zero page and command line in its first two pages.
    let jump_back_entry = phys_read_u64(cp + control::DATA_OWN_ENTRY);
    let mut cmd = harness::TextBuf::new();
    let _ = write!(
        cmd,
        "kjump.role=b kjump.scenario={} kjump.cycles={} kjump.mode={} kexec_jump_back_entry={jump_back_entry:#x}",
        boot.scenario,
        cfg.cycles,
        if cfg.backup { "backup" } else { "swap" },
    );
    // Faults meant for B travel on A's command line as `kjump.b.fault=`.
    if let Some(f) = cmdline::get(boot.cmdline, fault::B_KEY) {
        let _ = write!(cmd, " {}={f}", fault::KEY);
    }
    if let Some(c) = cmdline::get(boot.cmdline, fault::B_CYCLE_KEY) {
        let _ = write!(cmd, " {}={c}", fault::CYCLE_KEY);
    }
    let mut cmd_bytes = [0u8; 512];
    let n = cmd.as_str().len().min(cmd_bytes.len() - 1);
    cmd_bytes[..n].copy_from_slice(&cmd.as_str().as_bytes()[..n]);
    phys_write(src_of(sources, peer_start + PAGE_SIZE), &cmd_bytes[..=n]);
    let mut zp = [0u8; bootparams::SIZE];
    let e820 = [E820Entry {
        addr: peer_start,
        size: peer_end - peer_start,
        kind: E820_RAM,
    }];
    bootparams::write_zero_page(&mut zp, &e820, peer_start + PAGE_SIZE, n as u32 + 1)
        .expect("one e820 entry fits");
    phys_write(src_of(sources, peer_start), &zp);

    // The indirection list(s).
    let mut frames = Frames { avoid };
    let (head, head2, pages_per_transfer) = if cfg.backup {
        // Backup mode: A's content of each page is saved to a page of its
        // own backup area; B's lives in the source pages between jumps.
        let Some(save) = mem::alloc_pages(npages, u64::MAX, avoid) else {
            fail(format_args!("a: no room for {npages} backup pages"))
        };
        let mut l1 = Builder::new();
        let mut l2 = Builder::new();
        for i in 0..npages {
            let d = peer_start + i * PAGE_SIZE;
            let ok = l1.add_page(&mut frames, d, save + i * PAGE_SIZE).is_ok()
                && l2.add_page(&mut frames, d, src_of(sources, d)).is_ok();
            if !ok {
                fail(format_args!("a: out of memory for the indirection lists"));
            }
        }
        let h1 = l1
            .finish(&mut frames)
            .unwrap_or_else(|_| fail(format_args!("a: out of memory")));
        let h2 = l2
            .finish(&mut frames)
            .unwrap_or_else(|_| fail(format_args!("a: out of memory")));
        (h1.0, h2.0, 2 * npages)
    } else {
        let mut l = Builder::new();
        for i in 0..npages {
            let d = peer_start + i * PAGE_SIZE;
            if l.add_page(&mut frames, d, src_of(sources, d)).is_err() {
                fail(format_args!("a: out of memory for the indirection list"));
            }
        }
        let h = l
            .finish(&mut frames)
            .unwrap_or_else(|_| fail(format_args!("a: out of memory")));
        (h.0, 0, npages)
    };
    phys_write_u64(cp + control::DATA_HEAD, head);
    phys_write_u64(cp + control::DATA_HEAD2, head2);
    phys_write_u64(
        cp + control::DATA_MODE,
        if cfg.backup {
            control::MODE_BACKUP
        } else {
            control::MODE_SWAP
        },
    );
    phys_write_u64(cp + control::DATA_PEER_ENTRY, elf.entry);
    phys_write_u64(cp + control::DATA_PEER_BOOT_ENTRY, elf.entry);
    phys_write_u64(cp + control::DATA_PEER_ARG, peer_start);
    let img = JumpImage {
        role: Role::A,
        cp,
        control_pages,
        head,
        head2,
        backup: cfg.backup,
        peer_start,
        peer_end,
        pages_per_transfer,
    };
    crate::println!(
        "a: kimage: {npages} pages for b at {peer_start:#x}..{peer_end:#x}, sources at {sources:#x}, control page {cp:#x}, {} mode, jump-back entry {jump_back_entry:#x}",
        if cfg.backup { "backup" } else { "swap" },
    );

    let pattern = Pattern::new(Role::A, cfg.pattern_bytes, avoid, cp);
    load_sse_pattern(Role::A);
    crate::println!(
        "a: pattern over {} bytes; {} cycles",
        pattern.bytes(),
        cfg.cycles
    );
    for cycle in 1..=cfg.cycles {
        let before = cpu_view();
        injected.arm(cp, cycle);
        img.jump();
        injected.arm(cp, 0);
        check_cpu(Role::A, &before);
        pattern.check(Role::A);
        let moved = img.pairs_moved();
        if moved != img.pages_per_transfer {
            fail(format_args!(
                "a: self-check: the jump back moved {moved} pages, expected {}",
                img.pages_per_transfer
            ));
        }
        crate::println!("a: cycle {cycle}: back from b, state intact");
        harness::progress(cycle);
        injected.arrived(cycle);
    }
    let mut msg = harness::TextBuf::new();
    let _ = write!(
        msg,
        "ping-pong: {} cycles, kernel a and kernel b self-checks passed",
        cfg.cycles
    );
    harness::verdict(true, msg.as_str());
    crate::halt_forever()
}

const MSR_EFER: u32 = 0xc000_0080;
/// CR0.WP: ring 0 honours read-only pages.
const CR0_WP: u64 = 1 << 16;
/// CR4.PGE: global pages.
const CR4_PGE: u64 = 1 << 7;
/// EFER.NXE: the no-execute bit of page-table entries.
const EFER_NXE: u64 = 1 << 11;

/// B runs with CR0, CR4 and EFER of its own (A keeps the values it booted
/// with), as two different kernels would: a re-entry path that forgets to
/// restore one of them leaves the peer's value, which the oracle sees.
/// All three bits are harmless here: every page is writable, no entry is
/// global or no-execute.
fn set_b_control_bits() {
    let (cr0, cr4): (u64, u64);
    // SAFETY: reads of CR0 and CR4.
    unsafe { core::arch::asm!("mov {}, cr0", "mov {}, cr4", out(reg) cr0, out(reg) cr4) };
    // SAFETY: setting CR0.WP and CR4.PGE changes no mapping of this
    // kernel's (all pages are writable and none is global).
    unsafe {
        core::arch::asm!("mov cr0, {}", "mov cr4, {}", in(reg) cr0 | CR0_WP, in(reg) cr4 | CR4_PGE)
    };
    // NX must be supported for EFER.NXE (CPUID 0x8000_0001 EDX bit 20).
    let nx = core::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 20) != 0;
    if nx {
        // SAFETY: EFER exists on every x86_64 CPU; NXE is valid when CPUID
        // reports NX, and no page-table entry of ours sets bit 63.
        unsafe { crate::wrmsr(MSR_EFER, crate::rdmsr(MSR_EFER) | EFER_NXE) };
    }
    crate::println!(
        "b: cr0.wp and cr4.pge set{}: my control registers differ from a's",
        if nx { ", efer.nxe too" } else { "" }
    );
}

/// Kernel B: booted once by A; jumps back, and is resumed again and again.
pub fn run_b(boot: &BootInfo) -> ! {
    let Some(entry) =
        cmdline::get(boot.cmdline, "kexec_jump_back_entry").and_then(cmdline::parse_u64)
    else {
        fail(format_args!(
            "b: no kexec_jump_back_entry= on the command line"
        ))
    };
    set_b_control_bits();
    let map_top = mem::ram_top().max(4 * GIB);
    let (cp, control_pages) = setup_control_pages(Role::B, map_top);
    let injected = Injected::from_cmdline(boot);
    injected.arrived(1);
    let ram_end = boot
        .e820()
        .iter()
        .filter(|e| e.kind == E820_RAM)
        .map(|e| e.addr + e.size)
        .max()
        .unwrap_or(0);
    // B's jump-back kimage has no pages: A's relocation code swaps A's
    // pages back when B enters it.
    let mut frames = Frames { avoid: (0, 0) };
    let (head, _) = Builder::new()
        .finish(&mut frames)
        .unwrap_or_else(|_| fail(format_args!("b: out of memory")));
    phys_write_u64(cp + control::DATA_HEAD, head);
    phys_write_u64(cp + control::DATA_HEAD2, head);
    phys_write_u64(cp + control::DATA_MODE, control::MODE_SWAP);
    phys_write_u64(cp + control::DATA_PEER_ENTRY, entry);
    let (lo, hi) = mem::free_ranges().fold((u64::MAX, 0), |(l, h), (a, b)| (l.min(a), h.max(b)));
    let img = JumpImage {
        role: Role::B,
        cp,
        control_pages,
        head,
        head2: head,
        backup: false,
        peer_start: lo,
        peer_end: hi,
        pages_per_transfer: 0,
    };
    let pattern = Pattern::new(Role::B, 64 << 10, (0, 0), cp);
    load_sse_pattern(Role::B);
    crate::println!("b: jump-back entry {entry:#x}, control page {cp:#x}; jumping back to a");
    // The resume counter is kept twice: in .bss (swapped out with B) and in
    // a local on B's stack across the jump.
    static mut RESUMES: u64 = 0;
    loop {
        // SAFETY: single CPU, interrupts off: nothing else touches RESUMES.
        let before_count = unsafe { RESUMES };
        // B's jump number n + 1 is in cycle n + 1 (it boots in cycle 1).
        let cycle = before_count + 1;
        if injected.jump(cycle) == Some(JumpFault::WriteOutside) {
            // One word just past the RAM B was given: A's memory, which
            // B's identity map reaches but B must never touch.
            crate::println!(
                "b: writing one word at {:#x}, outside my RAM",
                ram_end + 0x100
            );
            phys_write_u64(ram_end + 0x100, 0xbad0_b0b0_bad0_b0b0);
        }
        let before = cpu_view();
        injected.arm(cp, cycle);
        img.jump();
        injected.arm(cp, 0);
        check_cpu(Role::B, &before);
        pattern.check(Role::B);
        // SAFETY: as above.
        let n = unsafe {
            RESUMES += 1;
            RESUMES
        };
        if n != before_count + 1 {
            fail(format_args!(
                "b: resume counter went from {before_count} to {n}"
            ));
        }
        crate::println!("b: resumed #{n} (not rebooted), state intact");
        injected.arrived(n + 1);
    }
}
