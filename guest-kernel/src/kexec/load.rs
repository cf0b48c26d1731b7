//! Loading: the control pages every jumping kernel needs, and the kimage
//! it jumps with. Kernel A's is B's (`kexec -l --load-preserve-context`:
//! B's PT_LOADs, zero page and command line, and zero pages for the rest
//! of B's RAM, each destination page with its source page, in Linux-format
//! indirection lists); kernel B's is empty (A's relocation code swaps A's
//! pages back when B enters it).

use core::fmt::Write;

use kjump_abi::abi::Role;
use kjump_abi::bootparams::{self, E820_RAM, E820Entry};
use kjump_abi::cmdline;
use kjump_abi::control;
use kjump_abi::elf::Elf;
use kjump_abi::fault;
use kjump_abi::kimage::{Builder, ListMemory};
use kjump_abi::layout::{KERNEL_B_PATH, PAGE_SIZE};

use super::jump::JumpImage;
use super::{Config, GIB, fail, phys_read_u64, phys_write, phys_write_u64};
use crate::bootinfo::BootInfo;
use crate::relocate::{
    kjump_reentry, relocate_end, relocate_peer_returned, relocate_ring0_return, relocate_start,
};
use crate::{harness, mem, paging};

/// Control pages must be reachable from the peer's identity map, which
/// covers at least the first 4 GiB.
const CONTROL_MAX_END: u64 = 4 * GIB;

/// The frame allocator, for the indirection lists: pages outside `avoid`.
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

// ---------------------------------------------------------------------------
// The control pages.

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

/// Allocates and fills this kernel's control pages (relocation code,
/// user-accessible identity map of `[0, map_top)`, ring-3 tables, the data
/// slots that do not depend on the kimage); returns the first one and
/// their number.
pub(super) fn setup_control_pages(role: Role, map_top: u64) -> (u64, u64) {
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
// Kernel A's kimage of kernel B.

/// Kernel A loads kernel B (from the initramfs) into the peer region of
/// `cfg`: reserves the region, sets up A's control pages and builds the
/// kimage. B boots in `scenario` (A's own, but see [`reload_b`]). Fails
/// the run when B cannot be loaded.
pub(super) fn load_b(boot: &BootInfo, cfg: &Config) -> JumpImage {
    let (peer_start, peer_end) = (cfg.peer_start, cfg.peer_end);
    let elf = kernel_b(boot);
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

    // Source pages: B's image, page for page (zeroed by the allocator).
    let Some(sources) = mem::alloc_pages(npages, u64::MAX, avoid) else {
        fail(format_args!("a: no room for {npages} source pages"))
    };
    let jump_back_entry = place_b(boot, cfg, &elf, cp, sources, (boot.scenario, 1));

    let (head, head2, pages_per_transfer, save) = build_lists(cfg, cp, npages, sources);
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
    crate::println!(
        "a: kimage: {npages} pages for b at {peer_start:#x}..{peer_end:#x}, sources at {sources:#x}, control page {cp:#x}, {} mode, jump-back entry {jump_back_entry:#x}",
        if cfg.backup { "backup" } else { "swap" },
    );
    JumpImage {
        role: Role::A,
        cp,
        control_pages,
        head,
        head2,
        backup: cfg.backup,
        peer_start,
        peer_end,
        pages_per_transfer,
        sources,
        save,
    }
}

/// Kernel B's ELF, from the initramfs.
fn kernel_b(boot: &BootInfo) -> Elf<'static> {
    let image = match kjump_abi::cpio::Reader::find(boot.initramfs, KERNEL_B_PATH) {
        Ok(Some(e)) => e.data,
        Ok(None) => fail(format_args!("a: no {KERNEL_B_PATH} in the initramfs")),
        Err(e) => fail(format_args!("a: initramfs: {e}")),
    };
    Elf::parse(image).unwrap_or_else(|e| fail(format_args!("a: {KERNEL_B_PATH}: {e}")))
}

/// Puts B's image into the source pages (zeroed) from `sources` on: its
/// PT_LOADs, its zero page and command line (B to boot in `scenario`, in
/// A's cycle `cycle`); B is to be entered at its ELF entry. Returns A's
/// jump-back entry.
fn place_b(
    boot: &BootInfo,
    cfg: &Config,
    elf: &Elf<'_>,
    cp: u64,
    sources: u64,
    (scenario, cycle): (&str, u64),
) -> u64 {
    let src_of = |d: u64| sources + (d - cfg.peer_start);
    for seg in elf.segments() {
        phys_write(src_of(seg.paddr), seg.data);
    }
    let jump_back_entry = phys_read_u64(cp + control::DATA_OWN_ENTRY);
    write_b_boot_pages(
        boot,
        cfg,
        jump_back_entry,
        src_of(cfg.peer_start),
        (scenario, cycle),
    );
    phys_write_u64(cp + control::DATA_PEER_ENTRY, elf.entry);
    phys_write_u64(cp + control::DATA_PEER_BOOT_ENTRY, elf.entry);
    phys_write_u64(cp + control::DATA_PEER_ARG, cfg.peer_start);
    phys_write_u64(cp + control::DATA_PEER_BOOTED, 0);
    jump_back_entry
}

/// Kernel A loads kernel B again into the kimage `img` (`kexec -l` once
/// more, into the same source pages and lists): the next jump boots a
/// fresh B, in `scenario` and A's cycle `cycle`. After a restore from a hibernation image the
/// kimage is stale: B powered the machine off, the source pages hold what
/// the restore kernel left in B's region (A's relocation code swapped it
/// out when the restore kernel entered A), and the recorded peer entry is
/// the restore kernel's. So Linux's user space loads the kernel to jump to
/// again after a resume; so does A.
pub(super) fn reload_b(
    boot: &BootInfo,
    cfg: &Config,
    img: &JumpImage,
    (scenario, cycle): (&str, u64),
) {
    let elf = kernel_b(boot);
    // SAFETY: the source pages are A's (allocated by `load_b`, outside
    // every view but their kimage's) and identity-mapped.
    unsafe { mem::zero(img.sources, img.peer_end - img.peer_start) };
    let entry = place_b(boot, cfg, &elf, img.cp, img.sources, (scenario, cycle));
    crate::println!(
        "a: kimage reloaded: a fresh b ({scenario}) at {:#x}..{:#x}, jump-back entry {entry:#x}",
        img.peer_start,
        img.peer_end
    );
}

/// B's zero page and command line, in the source pages of B's first two
/// pages (`zero_page_src` and the page after it): B's RAM in the e820 map,
/// the scenario, and where to jump back to.
fn write_b_boot_pages(
    boot: &BootInfo,
    cfg: &Config,
    jump_back_entry: u64,
    zero_page_src: u64,
    (scenario, cycle): (&str, u64),
) {
    let (peer_start, peer_end) = (cfg.peer_start, cfg.peer_end);
    let mut cmd = harness::TextBuf::new();
    let _ = write!(
        cmd,
        "{}=b {}={scenario} {}={} {}={} kexec_jump_back_entry={jump_back_entry:#x}",
        cmdline::ROLE_KEY,
        cmdline::SCENARIO_KEY,
        cmdline::CYCLES_KEY,
        cfg.cycles,
        cmdline::MODE_KEY,
        if cfg.backup { "backup" } else { "swap" },
    );
    // Faults meant for B travel on A's command line as `kjump.b.fault=`.
    if let Some(f) = cmdline::get(boot.cmdline, fault::B_KEY) {
        let _ = write!(cmd, " {}={f}", fault::KEY);
    }
    if let Some(c) = cmdline::get(boot.cmdline, fault::B_CYCLE_KEY) {
        let _ = write!(cmd, " {}={c}", fault::CYCLE_KEY);
    }
    // `claim-live-page`: the page A's report claims is damaged while A is
    // away, by B writing it (B's `write-outside`) in the same cycle.
    if cmdline::get(boot.cmdline, fault::KEY) == Some("claim-live-page") {
        let _ = write!(cmd, " {}=write-outside", fault::KEY);
        if let Some(c) = cmdline::get(boot.cmdline, fault::CYCLE_KEY) {
            let _ = write!(cmd, " {}={c}", fault::CYCLE_KEY);
        }
    }
    // A hibernating B saves A's RAM: it needs to know where it ends, and
    // which of A's hibernations this is (for its faults).
    if scenario == "hibernate" {
        let _ = write!(
            cmd,
            " {}={:#x} {}={cycle}",
            super::hibernate::A_RAM_TOP_KEY,
            mem::ram_top(),
            super::hibernate::CYCLE_KEY,
        );
    }
    // A crashing kernel's capture kernel finds A's ELF core header there.
    if let Some(hdr) = cfg.elfcorehdr {
        let _ = write!(cmd, " elfcorehdr={hdr:#x}");
    }
    // The disk is the machine's: B finds it where A did.
    if let Some(dev) = cmdline::get(boot.cmdline, kjump_abi::virtio::CMDLINE_KEY) {
        let _ = write!(cmd, " {}={dev}", kjump_abi::virtio::CMDLINE_KEY);
    }
    // So does the log level: both kernels log alike.
    if let Some(level) = cmdline::get(boot.cmdline, cmdline::LOG_KEY) {
        let _ = write!(cmd, " {}={level}", cmdline::LOG_KEY);
    }
    let mut cmd_bytes = [0u8; 512];
    let n = cmd.as_str().len().min(cmd_bytes.len() - 1);
    cmd_bytes[..n].copy_from_slice(&cmd.as_str().as_bytes()[..n]);
    phys_write(zero_page_src + PAGE_SIZE, &cmd_bytes[..=n]);
    let mut zp = [0u8; bootparams::SIZE];
    let e820 = [E820Entry {
        addr: peer_start,
        size: peer_end - peer_start,
        kind: E820_RAM,
    }];
    bootparams::write_zero_page(&mut zp, &e820, peer_start + PAGE_SIZE, n as u32 + 1)
        .expect("one e820 entry fits");
    phys_write(zero_page_src, &zp);
}

/// The indirection list(s) of B's `npages` pages, whose contents are in
/// the source pages from `sources` on: `(head, head2, pages moved per
/// transfer, A's save pages)`, `head2` and the save pages 0 in swap mode.
///
/// Built in ring 3 through control page `cp`'s trip, in frames allocated
/// here: on the software KVM backend every ring-0 instruction is emulated,
/// and building the lists in ring 0 (some 60 instructions a page) was half
/// of a run's guest instructions.
fn build_lists(cfg: &Config, cp: u64, npages: u64, sources: u64) -> (u64, u64, u64, u64) {
    let avoid = (cfg.peer_start, cfg.peer_end);
    let save = if cfg.backup {
        // Backup mode: A's content of each page is saved to a page of its
        // own backup area; B's lives in the source pages between jumps.
        let Some(save) = mem::alloc_pages(npages, u64::MAX, avoid) else {
            fail(format_args!("a: no room for {npages} backup pages"))
        };
        save
    } else {
        0
    };
    // A list page holds 511 entries and the link to the next; a list has
    // a destination entry, a source entry per page and its end.
    let lists = if cfg.backup { 2 } else { 1 };
    let frames = lists * ((npages + 2).div_ceil(ENTRIES_PER_LIST_PAGE) + 1);
    let Some(first) = mem::alloc_pages(frames, u64::MAX, avoid) else {
        fail(format_args!("a: out of memory for the indirection lists"))
    };
    let mut job = ListJob {
        peer_start: cfg.peer_start,
        npages,
        sources,
        save,
        next_frame: first,
        frames_end: first + frames * PAGE_SIZE,
        head: 0,
        head2: 0,
    };
    // SAFETY: `cp` is set up for the trip (`setup_control_pages`);
    // interrupts are off for the kernel's whole life; `build_lists_ring3`
    // reads and writes `job` (alive for the call) and writes only the
    // frames allocated for it above.
    let ok =
        unsafe { crate::relocate::kjump_ring3_call(cp, build_lists_ring3, &raw mut job as u64) };
    if ok == 0 {
        fail(format_args!("a: out of memory for the indirection lists"));
    }
    if cfg.backup {
        (job.head, job.head2, 2 * npages, save)
    } else {
        (job.head, 0, npages, 0)
    }
}

/// Entries a list page holds besides the link to the next.
const ENTRIES_PER_LIST_PAGE: u64 = PAGE_SIZE / 8 - 1;

/// What [`build_lists_ring3`] is given, and gives back in `head`/`head2`.
#[repr(C)]
struct ListJob {
    peer_start: u64,
    npages: u64,
    sources: u64,
    /// Backup mode: A's save pages (0 in swap mode).
    save: u64,
    /// The frames to build in: `[next_frame, frames_end)`.
    next_frame: u64,
    frames_end: u64,
    head: u64,
    head2: u64,
}

impl ListMemory for ListJob {
    fn alloc_page(&mut self) -> Option<u64> {
        (self.next_frame < self.frames_end).then(|| {
            self.next_frame += PAGE_SIZE;
            self.next_frame - PAGE_SIZE
        })
    }
    fn write_u64(&mut self, addr: u64, value: u64) {
        phys_write_u64(addr, value);
    }
}

/// Ring 3 (see [`build_lists`]): builds B's list, and in backup mode A's
/// save list, into the job's frames; 1 when done, 0 when they ran out.
/// Does nothing privileged and cannot panic.
extern "sysv64" fn build_lists_ring3(job: u64) -> u64 {
    // SAFETY: `job` is the `&mut ListJob` that `build_lists` passed, alive
    // and not otherwise borrowed for the call.
    let job = unsafe { &mut *(job as *mut ListJob) };
    let (peer_start, npages) = (job.peer_start, job.npages);
    let list = |job: &mut ListJob, to: u64| -> Option<u64> {
        let mut l = Builder::new();
        for i in 0..npages {
            let off = i * PAGE_SIZE;
            l.add_page(job, peer_start + off, to + off).ok()?;
        }
        l.finish(job).ok().map(|(head, _)| head)
    };
    let (sources, save) = (job.sources, job.save);
    let heads = if save != 0 {
        list(job, save).zip(list(job, sources))
    } else {
        list(job, sources).map(|h| (h, 0))
    };
    match heads {
        Some((head, head2)) => {
            (job.head, job.head2) = (head, head2);
            1
        }
        None => 0,
    }
}

/// The claim faults (`claim-live-page`, `claim-own-text`,
/// `claim-control-page`): a copy of the list at `head` with one more pair,
/// `dest` parked at `src`, built outside `avoid` (B's region). A reports it
/// instead of the list its relocation code walks, so nothing moves
/// differently: the report alone claims `src`.
pub(super) fn claim_list(head: u64, dest: u64, src: u64, avoid: (u64, u64)) -> u64 {
    let mut frames = Frames { avoid };
    let mut b = Builder::new();
    let mut ok = true;
    let walked = kjump_abi::kimage::walk(
        head,
        1 << 24,
        |a| Some(phys_read_u64(a)),
        |p| ok &= b.add_page(&mut frames, p.dest, p.src).is_ok(),
    );
    if walked.is_err() || !ok || b.add_page(&mut frames, dest, src).is_err() {
        fail(format_args!("a: cannot build the claimed list"));
    }
    b.finish(&mut frames)
        .unwrap_or_else(|_| fail(format_args!("a: out of memory")))
        .0
}

// ---------------------------------------------------------------------------
// Kernel B's kimage back to A.

/// Kernel B's kimage for its jumps back to A, in B's control pages at
/// `cp`: no pages (A's relocation code swaps A's pages back when B enters
/// it), A entered at `entry` (its `kexec_jump_back_entry`).
pub(super) fn jump_back_image(cp: u64, control_pages: u64, entry: u64) -> JumpImage {
    let mut frames = Frames { avoid: (0, 0) };
    let (head, _) = Builder::new()
        .finish(&mut frames)
        .unwrap_or_else(|_| fail(format_args!("b: out of memory")));
    phys_write_u64(cp + control::DATA_HEAD, head);
    phys_write_u64(cp + control::DATA_HEAD2, head);
    phys_write_u64(cp + control::DATA_MODE, control::MODE_SWAP);
    phys_write_u64(cp + control::DATA_PEER_ENTRY, entry);
    let (lo, hi) = mem::free_ranges().fold((u64::MAX, 0), |(l, h), (a, b)| (l.min(a), h.max(b)));
    JumpImage {
        role: Role::B,
        cp,
        control_pages,
        head,
        head2: head,
        backup: false,
        peer_start: lo,
        peer_end: hi,
        pages_per_transfer: 0,
        sources: 0,
        save: 0,
    }
}
