//! The kernel's own identity map, replacing the VMM's boot page tables (in
//! low memory the kernel does not own): `[0, max(4 GiB, ram_top))` with
//! 2 MiB pages, in frames from the allocator. The kexec code builds the
//! control-page tables with [`build_user_identity_map`]: the same map with
//! the U/S bit on every level, so that the relocation code's ring-3 part
//! (see `relocate.rs`) can reach all RAM. The kernels' own maps stay
//! supervisor-only. Device registers the kernels touch (the IOAPIC's,
//! and the virtio-blk device's) are mapped uncached, as Linux's `ioremap`
//! maps them.

use core::sync::atomic::{AtomicU64, Ordering};

use kjump_abi::arch::IOAPIC_BASE;
use kjump_abi::layout::PAGE_SIZE;

use crate::{cpu, mem};

/// A 2 MiB page.
pub const LARGE_PAGE: u64 = 2 << 20;
/// What one page directory maps (512 large pages).
pub const PD_SPAN: u64 = 1 << 30;
/// What one PDPT maps; the kernel maps at most this much (one PML4 entry).
pub const PDPT_SPAN: u64 = 512 << 30;
/// The kernel maps at least the 32-bit address space.
const MIN_TOP: u64 = 4 << 30;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
/// U/S: ring 3 may access what the entry maps (needed at every level).
const USER: u64 = 1 << 2;
/// PWT and PCD: with the reset PAT, the page is uncacheable (UC).
const UNCACHED: u64 = (1 << 3) | (1 << 4);
/// PS in a PD entry: the entry maps a 2 MiB page.
const HUGE: u64 = 1 << 7;
/// The 2 MiB page of the IOAPIC's registers (it holds no RAM and no other
/// device the kernels use: the local APIC is in the next one).
const IOAPIC_PAGE: u64 = IOAPIC_BASE & !(LARGE_PAGE - 1);
/// The 2 MiB page of the virtio-blk device's registers (no RAM there: the
/// 32-bit hole).
const VIRTIO_PAGE: u64 = kjump_abi::virtio::MMIO_BASE & !(LARGE_PAGE - 1);
const ENTRIES: usize = 512;
/// The physical-address bits of a table entry.
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

static KERNEL_CR3: AtomicU64 = AtomicU64::new(0);
static MAPPED_TOP: AtomicU64 = AtomicU64::new(0);

/// Number of page directories [`build_identity_map`] fills for `top`.
pub const fn pd_pages(top: u64) -> u64 {
    let n = top.div_ceil(PD_SPAN);
    if n == 0 { 1 } else { n }
}

/// Writes an identity map of `[0, top)` (rounded up to 2 MiB) with 2 MiB
/// pages: the PML4 at `pml4_page`, one PDPT at `pdpt_page`, and
/// [`pd_pages`]`(top)` page directories from `pd_pages_start` on. Every
/// entry of every table is written (unused ones zero), so the pages need not
/// be zeroed first. Returns the CR3 value (`pml4_page`).
///
/// Contract (not checkable here, hence on the caller): the table pages are
/// the caller's own, from [`mem::alloc_pages`], and mapped at their physical
/// address: they are overwritten. Alignment, overlap and `top` (at most
/// [`PDPT_SPAN`]) are checked.
pub fn build_identity_map(pml4_page: u64, pdpt_page: u64, pd_pages_start: u64, top: u64) -> u64 {
    build(pml4_page, pdpt_page, pd_pages_start, top, 0)
}

/// [`build_identity_map`] with every entry user-accessible (U/S set at
/// every level): only for the kexec control pages, whose relocation code
/// copies pages in ring 3. Same contract.
pub fn build_user_identity_map(
    pml4_page: u64,
    pdpt_page: u64,
    pd_pages_start: u64,
    top: u64,
) -> u64 {
    build(pml4_page, pdpt_page, pd_pages_start, top, USER)
}

/// The identity map with `extra` flags in every present entry.
fn build(pml4_page: u64, pdpt_page: u64, pd_pages_start: u64, top: u64, extra: u64) -> u64 {
    assert!(
        top <= PDPT_SPAN,
        "identity map top {top:#x} beyond one PDPT"
    );
    assert!(
        [pml4_page, pdpt_page, pd_pages_start]
            .iter()
            .all(|p| p.is_multiple_of(PAGE_SIZE)),
        "page-table pages must be page-aligned"
    );
    let top = top.next_multiple_of(LARGE_PAGE);
    let pds = pd_pages(top);
    let pd_end = pd_pages_start + pds * PAGE_SIZE;
    let outside_pds = |p: u64| p < pd_pages_start || pd_end <= p;
    assert!(
        pml4_page != pdpt_page && outside_pds(pml4_page) && outside_pds(pdpt_page),
        "page-table pages overlap"
    );
    // SAFETY: the pages are the caller's own and identity-mapped (the
    // contract above), page-aligned and distinct (checked above); each table
    // is one page of 512 entries.
    let table = |page: u64| unsafe { &mut *(page as *mut [u64; ENTRIES]) };

    let pml4 = table(pml4_page);
    pml4.fill(0);
    pml4[0] = pdpt_page | PRESENT | WRITABLE | extra;

    let pdpt = table(pdpt_page);
    pdpt.fill(0);
    for (i, e) in pdpt.iter_mut().take(pds as usize).enumerate() {
        *e = (pd_pages_start + i as u64 * PAGE_SIZE) | PRESENT | WRITABLE | extra;
    }

    // The tightest loop that fills a directory: on the software KVM backend
    // every ring-0 instruction is emulated, and these entries (2,048 per
    // 4 GiB map, four maps a run) were a quarter of a run's guest
    // instructions at ten instructions each.
    for d in 0..pds {
        let pd = table(pd_pages_start + d * PAGE_SIZE);
        let base = d * PD_SPAN;
        let used = (top.saturating_sub(base) / LARGE_PAGE).min(ENTRIES as u64) as usize;
        let mut entry = base | PRESENT | WRITABLE | HUGE | extra;
        let mut runs = pd[..used].chunks_exact_mut(8);
        for run in &mut runs {
            for (k, e) in run.iter_mut().enumerate() {
                *e = entry.wrapping_add(k as u64 * LARGE_PAGE);
            }
            entry = entry.wrapping_add(8 * LARGE_PAGE);
        }
        for e in runs.into_remainder() {
            *e = entry;
            entry = entry.wrapping_add(LARGE_PAGE);
        }
        for e in &mut pd[used..] {
            *e = 0;
        }
        // Device pages are uncached.
        for device in [IOAPIC_PAGE, VIRTIO_PAGE] {
            if (base..base + used as u64 * LARGE_PAGE).contains(&device) {
                pd[((device - base) / LARGE_PAGE) as usize] |= UNCACHED;
            }
        }
    }
    pml4_page
}

/// Builds the kernel's map in freshly allocated frames and switches to it.
/// Needs [`mem::init`].
pub fn init() {
    let top = mem::ram_top().max(MIN_TOP).next_multiple_of(LARGE_PAGE);
    let pds = pd_pages(top);
    let pages = 2 + pds;
    let base =
        mem::alloc_pages(pages, u64::MAX, (0, 0)).expect("memory for the kernel's page tables");
    // The pages were just allocated (ours alone) and are mapped by the boot
    // page tables, which cover all RAM.
    let cr3 = build_identity_map(base, base + PAGE_SIZE, base + 2 * PAGE_SIZE, top);
    // SAFETY: the new map is an identity map of all RAM (and more), a
    // superset of what the boot tables map, so code, stack and data stay
    // where they are.
    unsafe { cpu::write_cr3(cr3) };
    KERNEL_CR3.store(cr3, Ordering::Relaxed);
    MAPPED_TOP.store(top, Ordering::Relaxed);
}

/// The kernel's CR3 (its PML4), once [`init`] ran.
pub fn kernel_cr3() -> u64 {
    KERNEL_CR3.load(Ordering::Relaxed)
}

/// End of the kernel's identity map: the first unmapped address.
pub fn mapped_top() -> u64 {
    MAPPED_TOP.load(Ordering::Relaxed)
}

/// Whether the kernel's own map (see [`init`]) maps `addr` writable and
/// uncached, as device registers must be: a walk of its tables.
pub fn maps_uncached(addr: u64) -> bool {
    let cr3 = kernel_cr3();
    if cr3 == 0 || addr >= mapped_top() {
        return false;
    }
    // `addr` is below `mapped_top`, at most PDPT_SPAN: PML4 entry 0.
    let pml4e = table_entry(cr3 & ADDRESS, 0);
    if pml4e & PRESENT == 0 {
        return false;
    }
    let pdpte = table_entry(pml4e & ADDRESS, addr / PD_SPAN);
    if pdpte & PRESENT == 0 {
        return false;
    }
    let pde = table_entry(pdpte & ADDRESS, (addr % PD_SPAN) / LARGE_PAGE);
    let need = PRESENT | WRITABLE | HUGE | UNCACHED;
    pde & need == need
}

/// Entry `i` of the kernel's page-table page at `table`.
fn table_entry(table: u64, i: u64) -> u64 {
    assert!(i < ENTRIES as u64);
    // SAFETY: `table` is a page of the kernel's own tables (built by
    // `init` in its frames, identity-mapped, reached from its CR3 through
    // present entries), 512 entries of which `i` is one.
    unsafe { (table as *const u64).add(i as usize).read() }
}
