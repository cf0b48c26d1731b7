//! The kexec control pages: what a jumping kernel keeps outside the memory
//! the peer may touch, and what the VMM reads (and, for fault injection,
//! writes) there. Linux keeps the same things in its control page
//! (`arch/x86/kernel/relocate_kernel_64.S`: `DATA(...)` slots, the saved
//! CR0/CR3/CR4 and stack pointer, a stack, and the identity-map page tables
//! in the other control pages).
//!
//! Control pages are contiguous: [`PAGE_CONTROL`] (code, data, saved context,
//! stack), [`PAGE_SWAP`], then the identity-map page tables from
//! [`PAGE_TABLES`] on (PML4, PDPT, one PD per GiB mapped).

/// Index of the control page proper among the control pages.
pub const PAGE_CONTROL: u64 = 0;
/// Index of the swap page used to exchange a source and a destination page.
pub const PAGE_SWAP: u64 = 1;
/// Index of the first page-table page (the PML4).
pub const PAGE_TABLES: u64 = 2;

/// The relocation code is copied here, and is at most this long.
pub const CODE: u64 = 0x000;
pub const CODE_MAX: u64 = 0x600;

// Data slots (u64) written by the jumping kernel before it jumps.
/// Where to transfer control to once the pages are swapped: B's ELF entry
/// for its first boot, later the peer's own re-entry point.
pub const DATA_PEER_ENTRY: u64 = 0x600;
/// The owning kernel's re-entry routine, run after the swap-back.
pub const DATA_REENTRY: u64 = 0x608;
/// Head of the indirection list.
pub const DATA_HEAD: u64 = 0x610;
/// CR3 of the control page tables.
pub const DATA_PAGE_TABLE: u64 = 0x618;
/// Physical address of the swap page.
pub const DATA_SWAP_PAGE: u64 = 0x620;
/// 0: swap pages (`MODE_SWAP`), 1: copy through backup pages (`MODE_BACKUP`).
pub const DATA_MODE: u64 = 0x628;
/// `rsi` for the peer's first entry (B's zero page).
pub const DATA_PEER_ARG: u64 = 0x630;
/// Non-zero once the peer has been entered at least once.
pub const DATA_PEER_BOOTED: u64 = 0x638;
/// Number of page pairs swapped by the last transfer (for self-checks).
pub const DATA_PAIRS: u64 = 0x640;
/// Backup mode only: head of the list of (destination, peer's backup page).
pub const DATA_HEAD2: u64 = 0x648;
/// 16 bytes of scratch for `sgdt`/`lgdt` (limit and base, packed).
pub const DATA_SCRATCH: u64 = 0x650;

pub const MODE_SWAP: u64 = 0;
pub const MODE_BACKUP: u64 = 1;

/// The saved CPU context: one u64 slot per item of [`Slot`], from here on.
pub const CONTEXT: u64 = 0x700;
/// FXSAVE area (512 bytes, 16-byte aligned).
pub const FXSAVE: u64 = 0x840;
/// Top of the stack the relocation code runs on.
pub const STACK_TOP: u64 = 0x1000;

/// Slots of the saved context, each a u64 at `CONTEXT + 8 * slot`.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Rax = 0,
    Rbx,
    Rcx,
    Rdx,
    Rsi,
    Rdi,
    Rbp,
    Rsp,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
    Rflags,
    Cr0,
    Cr3,
    Cr4,
    Efer,
    FsBase,
    GsBase,
    KernelGsBase,
    GdtrLimit,
    GdtrBase,
    IdtrLimit,
    IdtrBase,
    Tr,
    Cs,
    Ds,
    Es,
    Fs,
    Gs,
    Ss,
    /// The UART registers: IER, LCR, MCR, SCR, DLL, DLM in bytes 0..6.
    Uart,
}

/// Number of context slots.
pub const SLOTS: u64 = Slot::Uart as u64 + 1;
const _: () = assert!(CONTEXT + 8 * SLOTS <= FXSAVE);
const _: () = assert!(FXSAVE % 16 == 0 && FXSAVE + 512 + 0x200 <= STACK_TOP);

/// Names of the slots, for reports and `--inject`.
pub const SLOT_NAMES: [&str; SLOTS as usize] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
    "r13", "r14", "r15", "rflags", "cr0", "cr3", "cr4", "efer", "fs_base", "gs_base",
    "kernel_gs_base", "gdtr.limit", "gdtr.base", "idtr.limit", "idtr.base", "tr", "cs", "ds",
    "es", "fs", "gs", "ss", "uart",
];

/// The offset of `slot` in the control page.
pub const fn slot_offset(slot: Slot) -> u64 {
    CONTEXT + 8 * slot as u64
}

/// Finds a slot by its name.
pub fn slot_by_name(name: &str) -> Option<u64> {
    SLOT_NAMES.iter().position(|n| *n == name).map(|i| i as u64)
}

/// Number of control pages needed to identity-map `[0, top)` with 2 MiB pages.
pub const fn control_pages(top: u64) -> u64 {
    let gib = top.div_ceil(1 << 30);
    PAGE_TABLES + 2 + if gib == 0 { 1 } else { gib }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_have_names_and_do_not_overlap_data() {
        assert_eq!(slot_by_name("r15"), Some(Slot::R15 as u64));
        assert_eq!(slot_by_name("uart"), Some(Slot::Uart as u64));
        assert_eq!(slot_by_name("xmm0"), None);
        assert!(DATA_SCRATCH + 16 <= CONTEXT);
        assert_eq!(slot_offset(Slot::Rax), CONTEXT);
    }

    #[test]
    fn control_pages_cover_the_map() {
        assert_eq!(control_pages(256 << 20), 5);
        assert_eq!(control_pages(4 << 30), 8);
    }
}
