//! The `hibernate` scenario's kernels A and B (seed 2008: "kexec a
//! hibernating kernel, save the memory image of original system and
//! shutdown the system").
//!
//! A loads B exactly as for ping-pong and jumps to it once. B saves A: the
//! RAM A had outside B's region, which holds every page of A's logical view
//! (the pages of A's that lay in B's region are parked in A's source pages,
//! outside it) and A's control pages (its saved context and re-entry
//! code), as a `kjump_abi::hibimage` image on the virtio-blk disk, entered
//! at A's re-entry point (`kexec_jump_back_entry`). Then B powers the
//! machine off (its verdict on the harness port ends the VM). The
//! checksums are computed in ring 3 (the control page's trip): ring 0 is
//! emulated an instruction at a time here. The data goes to the disk
//! straight from A's memory: the device reads it, B never copies it.

use core::arch::asm;
use core::fmt::Write;

use kjump_abi::abi::Role;
use kjump_abi::bootparams::E820_RAM;
use kjump_abi::cmdline;
use kjump_abi::fault::JumpFault;
use kjump_abi::hibimage::{self, Checksum, MAX_RANGES, Range};
use kjump_abi::layout::PAGE_SIZE;
use kjump_abi::virtio::SECTOR_SIZE;

use super::cpu_state::{check_cpu, cpu_view, load_sse_pattern};
use super::faults::Injected;
use super::pattern::Pattern;
use super::{Config, GIB, fail, load, phys_write_u64, syscore};
use crate::bootinfo::BootInfo;
use crate::relocate::kjump_ring3_call;
use crate::virtio::Blk;
use crate::{harness, mem};
use kjump_abi::control;

/// The key on B's command line with the end of A's RAM.
pub const A_RAM_TOP_KEY: &str = "kjump.a.ram_top";
/// The key on B's command line with the number of A's hibernation it
/// saves (from 1): B's faults are armed for it.
pub const CYCLE_KEY: &str = "kjump.hibernation";

/// Bytes the disk takes per request.
const CHUNK: u64 = 4 << 20;

/// Kernel A: load B, fill the pattern, and `cycles` times jump to B (which
/// saves A and powers off) and come back restored from the image; then
/// jump to a fresh B once more, ping-pong fashion (B jumps straight back).
/// Each time A is back it checks its CPU state and pattern, and reloads B
/// (see `load::reload_b`).
pub fn run_a(boot: &BootInfo) -> ! {
    let cfg = Config::parse(boot.cmdline).unwrap_or_else(|e| fail(format_args!("a: {e}")));
    syscore::init(Role::A);
    let img = load::load_b(boot, &cfg);
    let pattern = Pattern::new(
        Role::A,
        cfg.pattern_bytes,
        (img.peer_start, img.peer_end),
        img.cp,
    );
    load_sse_pattern(Role::A);
    let (k0, k1) = mem::kernel_image();
    crate::println!(
        "a: kernel a at {k0:#x}..{k1:#x}; pattern over {} bytes; {} hibernation(s), then a ping-pong jump",
        pattern.bytes(),
        cfg.cycles
    );
    let injected = Injected::from_cmdline(boot);
    let disk = kjump_abi::virtio::MmioDevice::from_cmdline(boot.cmdline);
    for cycle in 1..=cfg.cycles {
        // Restored from the image, A comes back through its re-entry path
        // in a machine whose devices another kernel (C) drove: the path
        // resets the disk (the device resume), as it reprograms the UART
        // and the interrupt controllers. Before the jump A quiesces the
        // disk (Linux freezes devices before the snapshot), which also
        // makes its page tables' accessed and dirty bits for the window
        // what the re-entry path's reset leaves them.
        if let Some(dev) = &disk {
            if let Err(e) = crate::virtio::reset(dev.base) {
                fail(format_args!("a: virtio-blk: {e}"));
            }
            phys_write_u64(img.cp + control::DATA_DEVICE_RESUME, dev.base);
        }
        injected.arm(img.cp, cycle);
        let before = cpu_view();
        img.jump();
        injected.arm(img.cp, 0);
        check_cpu(Role::A, &before);
        pattern.check(Role::A);
        crate::println!(
            "a: restored from hibernation {cycle} of {}, state intact",
            cfg.cycles
        );
        harness::progress(cycle);
        // B is gone and the kimage is stale: load B again, to hibernate
        // once more or, the last time, to jump back at once.
        let next = if cycle < cfg.cycles {
            "hibernate"
        } else {
            "ping-pong"
        };
        load::reload_b(boot, &cfg, &img, (next, cycle + 1));
    }
    let before = cpu_view();
    img.jump();
    check_cpu(Role::A, &before);
    pattern.check(Role::A);
    img.check_pairs_moved();
    crate::println!("a: back from the ping-pong jump to a fresh b, state intact");
    let mut msg = harness::TextBuf::new();
    let _ = write!(
        msg,
        "hibernate: kernel a restored {} time(s) and back from a ping-pong jump, state intact",
        cfg.cycles
    );
    harness::verdict(true, msg.as_str());
    crate::halt_forever()
}

/// A range to checksum or scan in ring 3; `skip` is a page read as zeros
/// (the `image-skip-page` fault), or `NO_PAGE`.
#[repr(C)]
struct Job {
    start: u64,
    len: u64,
    skip: u64,
}

pub(super) const NO_PAGE: u64 = u64::MAX;

/// Reads the word at physical `addr` (page 0 included, which a Rust
/// pointer may not point at). Callers: ring 3 on a control page's user
/// identity map, or ring 0 on the kernel's, both of RAM below 4 GiB.
fn read_word(addr: u64) -> u64 {
    let v: u64;
    // SAFETY: `addr` is 8-byte aligned RAM of this VM below 4 GiB, mapped
    // by the map this runs on (the control page's user identity map in
    // ring 3, the kernel's in ring 0); a plain load, no side effect.
    unsafe {
        asm!("mov {v}, qword ptr [{a}]", a = in(reg) addr, v = out(reg) v,
             options(nostack, readonly, preserves_flags))
    };
    v
}

/// Ring 3: the image checksum of the `Job` at `job`.
pub(super) extern "sysv64" fn checksum_ring3(job: u64) -> u64 {
    // SAFETY: `job` is the `&Job` `checksum` passed, alive for the call.
    let job = unsafe { &*(job as *const Job) };
    let mut c = Checksum::new();
    for a in (job.start..job.start + job.len).step_by(8) {
        let skipped = a & !(PAGE_SIZE - 1) == job.skip;
        c.update_word(if skipped { 0 } else { read_word(a) });
    }
    c.value()
}

/// Ring 3: the first page of the `Job` at `job` that is not all zeros,
/// or `NO_PAGE`.
extern "sysv64" fn first_nonzero_ring3(job: u64) -> u64 {
    // SAFETY: `job` is the `&Job` `in_ring3` passed, alive for the call.
    let job = unsafe { &*(job as *const Job) };
    (job.start..job.start + job.len)
        .step_by(8)
        .find(|&a| read_word(a) != 0)
        .map_or(NO_PAGE, |a| a & !(PAGE_SIZE - 1))
}

pub(super) fn in_ring3(
    cp: u64,
    f: extern "sysv64" fn(u64) -> u64,
    start: u64,
    len: u64,
    skip: u64,
) -> u64 {
    let job = Job { start, len, skip };
    // SAFETY: `cp` is B's control page, set up by `setup_control_pages`
    // (relocation code, user identity map of all RAM, ring-3 tables);
    // interrupts are off; `f` only reads RAM and `job`, alive for the call.
    unsafe { kjump_ring3_call(cp, f, &raw const job as u64) }
}

/// Kernel B: write A's image to the disk and power off.
pub fn run_b(boot: &BootInfo) -> ! {
    let arg = |k| cmdline::get(boot.cmdline, k).and_then(cmdline::parse_u64);
    let Some(entry) = arg("kexec_jump_back_entry") else {
        fail(format_args!(
            "b: no kexec_jump_back_entry= on the command line"
        ))
    };
    let Some(a_top) = arg(A_RAM_TOP_KEY) else {
        fail(format_args!("b: no {A_RAM_TOP_KEY}= on the command line"))
    };
    let Some(own) = boot.e820().iter().find(|e| e.kind == E820_RAM) else {
        fail(format_args!("b: no RAM in my e820 map"))
    };
    let (own_start, own_end) = (own.addr, own.addr + own.size);
    let map_top = mem::ram_top().max(4 * GIB);
    if a_top > map_top {
        fail(format_args!(
            "b: a's RAM ends at {a_top:#x}, beyond what I map"
        ));
    }
    let (cp, _) = load::setup_control_pages(Role::B, map_top);
    // `image-skip-page`: the first page of A's with data above B's region
    // is left out.
    let cycle = arg(CYCLE_KEY).unwrap_or(1);
    let fault = super::faults::Injected::from_cmdline(boot).jump(cycle);
    if fault == Some(JumpFault::PowerOffEarly) {
        power_off_early();
    }
    let skip = match fault {
        Some(JumpFault::ImageSkipPage) => in_ring3(
            cp,
            first_nonzero_ring3,
            own_end,
            a_top.saturating_sub(own_end),
            NO_PAGE,
        ),
        _ => NO_PAGE,
    };

    // A's RAM outside mine, with its checksums.
    let mut ranges = [Range {
        start: 0,
        len: 0,
        checksum: 0,
    }; 2];
    let mut n = 0;
    for (start, end) in [(0, own_start), (own_end, a_top)] {
        if end > start {
            ranges[n] = Range {
                start,
                len: end - start,
                checksum: in_ring3(cp, checksum_ring3, start, end - start, skip),
            };
            n += 1;
        }
    }
    const { assert!(MAX_RANGES >= 2) };
    let ranges = &ranges[..n];

    let mut blk = match Blk::probe(boot.cmdline) {
        Some(Ok(b)) => b,
        Some(Err(e)) => fail(format_args!("b: virtio-blk: {e}")),
        None => fail(format_args!("b: no disk on the command line")),
    };
    let size = write_image(
        &mut blk,
        hibimage::header_size(n),
        ranges,
        |out| hibimage::write_headers(out, entry, ranges),
        |i| ranges[i].start,
    );
    let pages = hibimage::header_size(n) / PAGE_SIZE;
    let io = |r: Result<(), crate::virtio::VirtioError>| {
        r.unwrap_or_else(|e| fail(format_args!("b: writing a's image: {e}")))
    };
    if skip != NO_PAGE {
        let (i, r) = ranges
            .iter()
            .enumerate()
            .find(|(_, r)| (r.start..r.start + r.len).contains(&skip))
            .expect("the skipped page is in a range");
        let Some(zero) = mem::alloc_pages(1, u64::MAX, (0, 0)) else {
            fail(format_args!("b: no room for a zero page"))
        };
        crate::println!("b: INJECTED FAULT: leaving page {skip:#x} of a out of its image");
        let at = hibimage::data_offset(ranges, i) + (skip - r.start);
        io(blk.write_phys(at / SECTOR_SIZE, zero, PAGE_SIZE as usize));
    }
    io(blk.flush());
    let mut msg = harness::TextBuf::new();
    let _ = write!(
        msg,
        "hibernate: b wrote a's image: {} pages in {n} ranges, {size} bytes, entry {entry:#x}; powering off",
        size / PAGE_SIZE - pages
    );
    crate::println!("{}", msg.as_str());
    harness::verdict(true, msg.as_str());
    crate::halt_forever()
}

/// Writes an image of A (hibernation image or vmcore) to the disk: the
/// headers, `header` bytes that `write_header` fills in pages allocated
/// here, at byte 0, then each range's data in table order, which the
/// device reads straight from `from(i)` (B copies nothing). Fails the run
/// when the image does not fit on the disk or a request fails; returns
/// the image's size. The caller flushes.
pub(super) fn write_image(
    blk: &mut Blk,
    header: u64,
    ranges: &[Range],
    write_header: impl FnOnce(&mut [u8]) -> Result<u64, hibimage::ImageError>,
    from: impl Fn(usize) -> u64,
) -> u64 {
    let size = header + ranges.iter().map(|r| r.len).sum::<u64>();
    if size > blk.capacity() * SECTOR_SIZE {
        fail(format_args!(
            "b: a's image takes {size} bytes, the disk has {}",
            blk.capacity() * SECTOR_SIZE
        ));
    }
    let pages = header / PAGE_SIZE;
    let Some(hdr) = mem::alloc_pages(pages, u64::MAX, (0, 0)) else {
        fail(format_args!("b: no room for the image header"))
    };
    // SAFETY: `pages` pages at `hdr` are ours alone (just allocated) and
    // identity-mapped.
    let hdr_bytes = unsafe { core::slice::from_raw_parts_mut(hdr as *mut u8, header as usize) };
    if let Err(e) = write_header(hdr_bytes) {
        fail(format_args!("b: image header: {e}"));
    }
    let io = |r: Result<(), crate::virtio::VirtioError>| {
        r.unwrap_or_else(|e| fail(format_args!("b: writing a's image: {e}")))
    };
    io(blk.write(0, hdr_bytes));
    let mut base = header;
    for (i, r) in ranges.iter().enumerate() {
        let mut off = 0;
        while off < r.len {
            let len = (r.len - off).min(CHUNK);
            io(blk.write_phys((base + off) / SECTOR_SIZE, from(i) + off, len as usize));
            off += len;
        }
        base += r.len;
    }
    size
}

/// Kernel C, in a fresh machine: verify A's image on the disk and load it,
/// then jump to A's re-entry point as B would have.
///
/// C runs in the region A's image does not cover (`mem=` keeps all of C's
/// memory there: A's B region, from 1 MiB), so it can read every range
/// straight into place (the device writes it), verify each range's
/// checksum there (in ring 3), and never overwrite itself. The last part
/// of the restore is A's own: C enters A's relocation code, restored from
/// the image, which swaps A's pages of the region C ran in back from A's
/// source pages (the seed's second stage, run by the image kernel's code).
/// A bad image is refused with one verdict; C never jumps into it.
pub fn run_c(boot: &BootInfo) -> ! {
    let own_end = mem::ram_top();
    let map_top = own_end.max(4 * GIB);
    let (cp, control_pages) = load::setup_control_pages(Role::C, map_top);
    let mut blk = match Blk::probe(boot.cmdline) {
        Some(Ok(b)) => b,
        Some(Err(e)) => fail(format_args!("c: virtio-blk: {e}")),
        None => fail(format_args!("c: no disk on the command line")),
    };
    // The headers: at most header_size(MAX_RANGES) bytes.
    let hdr_len = hibimage::header_size(MAX_RANGES);
    let Some(hdr) = mem::alloc_pages(hdr_len / PAGE_SIZE, u64::MAX, (0, 0)) else {
        fail(format_args!("c: no room for the image header"))
    };
    let disk_bytes = blk.capacity() * SECTOR_SIZE;
    let want = hdr_len.min(disk_bytes) as usize;
    if let Err(e) = blk.read_phys(0, hdr, want) {
        fail(format_args!("c: reading the image: {e}"));
    }
    // SAFETY: the header pages are ours alone (just allocated) and
    // identity-mapped; `want` is within them.
    let bytes = unsafe { core::slice::from_raw_parts(hdr as *const u8, want) };
    let refuse = |e: hibimage::ImageError| -> ! {
        let mut msg = harness::TextBuf::new();
        let _ = write!(msg, "c: refusing the image: {e}");
        crate::println!("{}", msg.as_str());
        harness::verdict(false, msg.as_str());
        crate::halt_forever()
    };
    let h = hibimage::Header::parse(bytes).unwrap_or_else(|e| refuse(e));
    h.check_size(disk_bytes).unwrap_or_else(|e| refuse(e));
    for r in h.ranges() {
        // Nothing of the image may land in C's own memory.
        if r.start < own_end && r.start + r.len > kjump_abi::layout::HIGH_RAM_START {
            fail(format_args!(
                "c: the image's range [{:#x}..{:#x}) overlaps my memory [{:#x}..{own_end:#x})",
                r.start,
                r.start + r.len,
                kjump_abi::layout::HIGH_RAM_START
            ));
        }
    }
    let (entry, n, pages) = (h.entry, h.len(), h.pages());
    // C jumps there (and with `no-trampoline` reads A's control page
    // there): it must be restored memory.
    if !h
        .ranges()
        .any(|r| r.start <= entry && entry - r.start < r.len)
    {
        fail(format_args!(
            "c: refusing the image: its entry {entry:#x} lies in none of its ranges"
        ));
    }
    let (k0, k1) = mem::kernel_image();
    crate::println!(
        "c: kernel c at {k0:#x}..{k1:#x}; image of {pages} pages in {n} ranges, entry {entry:#x}; loading it"
    );
    for i in 0..n {
        let r = h.range(i);
        let base = h.data_offset(i);
        let mut off = 0;
        while off < r.len {
            let len = (r.len - off).min(CHUNK);
            if let Err(e) = blk.read_phys((base + off) / SECTOR_SIZE, r.start + off, len as usize) {
                fail(format_args!("c: reading the image: {e}"));
            }
            off += len;
        }
        let found = in_ring3(cp, checksum_ring3, r.start, r.len, NO_PAGE);
        h.check_range(i, found).unwrap_or_else(|e| refuse(e));
    }
    crate::println!("c: every range verified; jumping to a's re-entry point {entry:#x}");
    // C leaves the disk as it drove it: A's device resume takes it back.
    syscore::init(Role::C);
    let img = load::jump_back_image(cp, control_pages, entry);
    match Injected::from_cmdline(boot).jump(1) {
        Some(JumpFault::NoTrampoline) => skip_trampoline(cp, entry),
        Some(JumpFault::LeaveMsr) => {
            crate::println!("c: INJECTED FAULT: leaving IA32_SYSENTER_ESP changed for a");
            // SAFETY: IA32_SYSENTER_ESP (architectural, no side effect
            // until a sysenter, which no kjump kernel executes) takes any
            // canonical address.
            unsafe { crate::cpu::wrmsr(LEAVE_MSR, 0x6b6a_7000) };
        }
        Some(JumpFault::LeavePit) => {
            crate::println!("c: INJECTED FAULT: leaving the PIT's channel 0 programmed for a");
            // SAFETY: the PIT (ports 0x43, 0x40) is driven by no kjump
            // kernel, and no kjump kernel sets rflags.IF (there is no
            // `sti`), so the IRQ 0 it raises is never taken.
            unsafe {
                crate::cpu::outb(0x43, 0x34); // channel 0, lobyte/hibyte, mode 2
                crate::cpu::outb(0x40, 0x34);
                crate::cpu::outb(0x40, 0x12);
            }
        }
        _ => {}
    }
    img.jump();
    fail(format_args!("c: a came back to me"))
}

/// IA32_SYSENTER_ESP: what `c:leave-msr` leaves changed.
const LEAVE_MSR: u32 = 0x175;

/// The `power-off-early` fault: B reports its verdict (pass) and powers
/// off without writing a byte to the disk, so what the VMM finds there is
/// whatever the disk held before.
pub(super) fn power_off_early() -> ! {
    let msg = "b: INJECTED FAULT: powering off without writing a's image to the disk";
    crate::println!("{msg}");
    crate::harness::verdict(true, msg);
    crate::halt_forever()
}

/// The `no-trampoline` fault: C's jump enters A's re-entry routine
/// directly (its address is in A's restored control page, the page of
/// A's re-entry point), through [`kjump_enter_reentry`], instead of A's
/// relocation code: A's pages of the region C ran in are never swapped
/// back from where A's kimage parked them. `entry` is in the image.
fn skip_trampoline(cp: u64, entry: u64) {
    let a_cp = entry & !(PAGE_SIZE - 1);
    // A plain load from restored RAM below 4 GiB, which C's own identity
    // map covers (it maps at least the first 4 GiB).
    let reentry = read_word(a_cp + control::DATA_REENTRY);
    crate::println!(
        "c: INJECTED FAULT: skipping the trampoline: entering a's re-entry routine {reentry:#x} directly"
    );
    phys_write_u64(
        cp + control::DATA_PEER_ENTRY,
        &raw const kjump_enter_reentry as u64,
    );
    phys_write_u64(cp + control::DATA_PEER_ARG, a_cp);
}

unsafe extern "C" {
    /// Fault injection only: enters the re-entry routine of the control
    /// page in `rsi` as its relocation code would, without the swap.
    static kjump_enter_reentry: u8;
}

core::arch::global_asm!(
    // Called by C's relocation code as its peer's entry (rsi = the peer
    // argument: A's control page), ring 0, on C's control page's stack
    // and identity map. kjump_reentry wants its control page in rdi.
    ".section .text.kjump, \"ax\"",
    ".global kjump_enter_reentry",
    "kjump_enter_reentry:",
    "mov rdi, rsi",
    "jmp qword ptr [rdi + {reentry}]",
    ".previous",
    reentry = const control::DATA_REENTRY,
);
