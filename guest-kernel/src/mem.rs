//! The physical frame allocator: e820 RAM minus what is in use at boot,
//! handed out in contiguous, zeroed 4 KiB pages from the top of memory down
//! (so that low memory, where kernel B's region is by default, stays free
//! the longest). The range logic is `kjump_abi::frames` (host-tested);
//! this module owns the one global instance.

use core::sync::atomic::{AtomicU64, Ordering};

use kjump_abi::bootparams::E820_RAM;
use kjump_abi::frames::FrameSet;
use kjump_abi::layout::{HIGH_RAM_START, PAGE_SIZE};

use crate::bootinfo::BootInfo;
use crate::sync::Exclusive;

/// Room for every e820 entry plus the holes cut at boot and by `reserve`.
const MAX_RANGES: usize = 256;

static FREE: Exclusive<FrameSet<MAX_RANGES>> = Exclusive::new(FrameSet::new());
static RAM_TOP: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" {
    // Linker symbols (linker.ld): only their addresses mean something.
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// The kernel image `[start, end)` (text, data, bss and the boot stack).
pub fn kernel_image() -> (u64, u64) {
    (
        &raw const __kernel_start as u64,
        &raw const __kernel_end as u64,
    )
}

/// Builds the free set: usable e820 RAM minus low memory (the VMM's boot
/// structures below 1 MiB), the kernel image, the initramfs, the zero page
/// and the command line.
pub fn init(boot: &BootInfo) {
    let mut set = FrameSet::<MAX_RANGES>::new();
    let mut top = 0;
    for e in boot.e820().iter().filter(|e| e.kind == E820_RAM) {
        let end = e.addr.saturating_add(e.size);
        set.add(e.addr, end)
            .expect("fewer e820 entries than MAX_RANGES");
        top = top.max(end);
    }
    let (kstart, kend) = kernel_image();
    let holes = [
        (0, HIGH_RAM_START),
        (kstart, kend),
        (
            boot.initramfs_addr,
            boot.initramfs_addr + boot.initramfs.len() as u64,
        ),
        (boot.zero_page, boot.zero_page + PAGE_SIZE),
        (boot.cmdline_addr, boot.cmdline_end()),
    ];
    for (start, end) in holes {
        set.remove(start, end).expect("room for the boot holes");
    }
    // `mem=` (Linux's): use no RAM from there on. The hibernate scenario's
    // restore kernel keeps to the region A's image does not cover.
    if let Some(max) = boot.arg("mem").and_then(kjump_abi::cmdline::parse_size) {
        set.remove(max, u64::MAX).expect("room for the mem= limit");
        top = top.min(max);
    }
    RAM_TOP.store(top, Ordering::Relaxed);
    FREE.with(|f| *f = set);
}

/// The control page whose ring-3 trip zeroes new pages, once there is one
/// (0 before).
static ZERO_IN_RING3: AtomicU64 = AtomicU64::new(0);

/// From now on, zero allocated pages in ring 3 through the trip of the
/// control page at `cp` (see relocate.rs: on the software KVM backend of
/// the test machines every ring-0 instruction is emulated, and zeroing a
/// 64 MiB peer region in ring 0 took ~8 s). `cp` must be set up for
/// `kjump_ring3_call` (relocation code, user-accessible identity map of
/// all RAM, ring-3 tables) and stay so.
pub fn zero_in_ring3(cp: u64) {
    ZERO_IN_RING3.store(cp, Ordering::Relaxed);
}

/// Ring 3: zeroes the block `[start, start + size)` given as `&(start,
/// size)`.
extern "sysv64" fn zero_ring3(block: u64) -> u64 {
    // SAFETY: `block` is the `&(u64, u64)` that `zero` passed.
    let (start, size) = unsafe { *(block as *const (u64, u64)) };
    // SAFETY: as in `zero`: the block is the caller's alone and mapped (the
    // control map is user-accessible over all RAM).
    unsafe { core::ptr::write_bytes(start as *mut u8, 0, size as usize) };
    0
}

/// `count` contiguous zeroed pages, all below `max_end`, not overlapping the
/// half-open range `avoid` (`(0, 0)` for none); the highest such block.
pub fn alloc_pages(count: u64, max_end: u64, avoid: (u64, u64)) -> Option<u64> {
    let size = count.checked_mul(PAGE_SIZE)?;
    let start = FREE.with(|f| f.alloc_top(size, PAGE_SIZE, max_end, avoid))?;
    // SAFETY: the block was free RAM and is now ours alone.
    unsafe { zero(start, size) };
    Some(start)
}

/// Zeroes `[start, start + size)`, in ring 3 once [`zero_in_ring3`] was
/// called.
///
/// # Safety
/// The block is RAM that belongs to the caller alone, identity-mapped.
pub unsafe fn zero(start: u64, size: u64) {
    let cp = ZERO_IN_RING3.load(Ordering::Relaxed);
    if cp != 0 {
        let block = (start, size);
        // SAFETY: `cp` was set up for the trip (`zero_in_ring3`'s
        // contract); interrupts are off for the kernel's whole life;
        // `zero_ring3` writes only the block, which is the caller's, and
        // reads `block`, alive for the call.
        unsafe { crate::relocate::kjump_ring3_call(cp, zero_ring3, &raw const block as u64) };
    } else {
        // SAFETY: the block is the caller's alone; all RAM is
        // identity-mapped (boot map, then the kernel's own map of
        // [0, ram_top)).
        unsafe { core::ptr::write_bytes(start as *mut u8, 0, size as usize) };
    }
}

/// Takes `[start, end)` (widened to whole pages) out of the free set, e.g.
/// the peer's region. Panics when the range list is full.
#[allow(dead_code, reason = "API for the kexec scenarios (kexec/)")]
pub fn reserve(start: u64, end: u64) {
    FREE.with(|f| f.remove(start, end))
        .expect("free-range list has room to reserve a range");
}

/// Runs `f` with the allocator handing out pages of `[start, end)` only
/// (page-aligned, free RAM), then takes the whole range out of the free
/// set: what `f` allocated stays allocated, the rest of the range is
/// never handed out again. The crash scenario loads its capture kernel
/// so, into the region reserved for it (Linux's `crashkernel=`).
pub fn within<R>(start: u64, end: u64, f: impl FnOnce() -> R) -> R {
    let saved = FREE.with(|set| {
        let saved = *set;
        let mut only = FrameSet::<MAX_RANGES>::new();
        only.add(start, end).expect("one range fits");
        *set = only;
        saved
    });
    let r = f();
    FREE.with(|set| {
        *set = saved;
        set.remove(start, end)
    })
    .expect("free-range list has room to reserve a range");
    r
}

/// The free ranges `[start, end)`, sorted (a copy: allocation may go on).
pub fn free_ranges() -> impl Iterator<Item = (u64, u64)> {
    FREE.with(|f| *f).into_ranges()
}

/// Free bytes in total.
pub fn free_bytes() -> u64 {
    FREE.with(|f| f.total())
}

/// End of the highest usable e820 RAM.
pub fn ram_top() -> u64 {
    RAM_TOP.load(Ordering::Relaxed)
}
