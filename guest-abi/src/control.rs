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

use crate::arch::{GDT_CODE64, GDT_DATA};

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
/// Fault injection only: a bit mask of what the re-entry path "forgets".
/// Bit `n` < [`SLOTS`] for a [`Slot`] `n` leaves that register as found:
/// the GPRs but rdi, rflags, CR0, CR3, CR4 and EFER; the bit of
/// [`Slot::GdtrBase`] skips `lgdt` (and so leaves TR, which lives in the
/// GDT, as found too), the bit of [`Slot::IdtrBase`] skips `lidt`. The
/// `FAULT_*` bits below are the other bugs. Zero in a correct kernel.
pub const DATA_FAULT: u64 = 0x660;
/// Where a peer enters this kernel to resume it: the copy of the
/// relocation code's `relocate_peer_returned` in this control page (what B
/// is given as `kexec_jump_back_entry`). Written once, at set-up; the VMM
/// checks every jump against it (a jump must enter a booted peer exactly
/// here).
pub const DATA_OWN_ENTRY: u64 = 0x668;
/// The peer's boot entry (B's ELF entry, in A's control page; 0 in B's),
/// for the `lose-preserve` fault only: the jump that forgets it preserves
/// context enters the peer there next time.
pub const DATA_PEER_BOOT_ENTRY: u64 = 0x670;
/// The register window of a virtio-mmio device the re-entry path resets
/// (status 0), 0 for none: after a restore from a hibernation image the
/// device is the restore kernel's, live on its queues, and the resumed
/// kernel must take it back as Linux's device resume after hibernation
/// does (`virtio_device_restore` resets first).
pub const DATA_DEVICE_RESUME: u64 = 0x678;
/// Bit of [`DATA_FAULT`]: skip `fxrstor`.
pub const FAULT_NO_FPU_RESTORE: u64 = 40;
/// Bit of [`DATA_FAULT`]: skip restoring the UART.
pub const FAULT_NO_UART_RESTORE: u64 = 41;
/// Bit of [`DATA_FAULT`]: on the way back, do not swap the list's first page.
pub const FAULT_SKIP_SWAP_BACK: u64 = 42;
/// Bit of [`DATA_FAULT`]: take the peer's re-entry point from the stack
/// slot above its return address (past the top of the peer's control-page
/// stack: the first word of its swap page), not from the return address.
pub const FAULT_WRONG_REENTRY_SLOT: u64 = 43;
/// Bit of [`DATA_FAULT`]: on the way back, forget that the jump preserves
/// context: the peer's next entry is recorded as its boot entry
/// ([`DATA_PEER_BOOT_ENTRY`]), not the re-entry point it pushed, so the
/// next jump boots it afresh.
pub const FAULT_LOSE_PRESERVE: u64 = 44;
/// Bit of [`DATA_FAULT`]: skip restoring the 8259 masks.
pub const FAULT_NO_PIC_RESTORE: u64 = 45;
/// Bit of [`DATA_FAULT`]: skip restoring the IOAPIC.
pub const FAULT_NO_IOAPIC_RESTORE: u64 = 46;
/// Bit of [`DATA_FAULT`]: skip restoring the MTRRs.
pub const FAULT_NO_MTRR_RESTORE: u64 = 47;
/// Bit of [`DATA_FAULT`]: skip the device resume ([`DATA_DEVICE_RESUME`]).
pub const FAULT_NO_DEVICE_RESUME: u64 = 48;
/// Bit of [`DATA_FAULT`]: on the way out, the relocation code stores its
/// own rsp over the saved one (the crash scenario's `stale-crash-notes`:
/// the saved context is the crash notes the capture kernel reads).
pub const FAULT_STALE_CRASH_NOTES: u64 = 49;

/// What the relocation code leaves in each GPR (but rdi and rsp) when it
/// hands over to the re-entry path: this plus the register's [`Slot`]
/// index ("kjump" in ASCII, then the slot). A register the re-entry path
/// forgets to restore shows as this value.
pub const HANDOVER_POISON: u64 = 0x6b6a_756d_7000_0000;

pub const MODE_SWAP: u64 = 0;
pub const MODE_BACKUP: u64 = 1;

/// The saved CPU context: one u64 slot per item of [`Slot`], from here on.
pub const CONTEXT: u64 = 0x700;
/// FXSAVE area (512 bytes, 16-byte aligned).
pub const FXSAVE: u64 = 0x840;
/// Top of the stack the relocation code runs on.
pub const STACK_TOP: u64 = 0x1000;

// The descriptor tables of the relocation code's trip to ring 3 (see the
// guest kernel's relocate.rs: it copies pages in ring 3 and comes back
// through an interrupt gate), between the FXSAVE area and the stack. Filled
// by the jumping kernel when it sets up its control pages; absolute
// addresses, so they are built for one control page.
/// The GDT: [`reloc_gdt`], [`RELOC_GDT_ENTRIES`] entries.
pub const RELOC_GDT: u64 = 0xa40;
/// `lgdt` operand: limit (u16), then base (u64).
pub const RELOC_GDT_PTR: u64 = 0xa80;
/// `lidt` operand: limit (u16), then base (u64).
pub const RELOC_IDT_PTR: u64 = 0xa90;
/// The IDT: [`RELOC_IDT_GATES`] gates of 16 bytes, only
/// [`RELOC_RETURN_VECTOR`]'s present.
pub const RELOC_IDT: u64 = 0xaa0;
/// The 64-bit TSS ([`reloc_tss`], [`TSS_SIZE`] bytes): RSP0 for the way back.
pub const RELOC_TSS: u64 = 0xb20;
/// End of the tables.
pub const RELOC_END: u64 = RELOC_TSS + TSS_SIZE;

// What the kernel saves of the machine outside the CPU before it jumps and
// its re-entry path puts back, as Linux's syscore_suspend() and
// syscore_resume() do around a preserve-context kexec (kernel/kexec_core.c
// `kernel_kexec`): the 8259 masks (`i8259A_resume`), the IOAPIC's routing
// (`ioapic_resume`), the MTRRs (`mtrr_restore`). Between the ring-3 tables
// and the CPU's frame under RSP0.
/// The 8259 masks: byte 0 the master's IMR, byte 1 the slave's.
pub const SAVED_PIC: u64 = 0xb90;
/// The IOAPIC's IOREGSEL (u32) as the kernel left it, then its IOAPICID
/// register (u32).
pub const SAVED_IOAPIC_SEL_ID: u64 = 0xb98;
/// How many redirection entries follow (0: no IOAPIC state saved).
pub const SAVED_IOAPIC_PINS: u64 = 0xba0;
/// The redirection entries, a u64 each (bits 0..32 the entry's low
/// register), at most [`SAVED_IOAPIC_MAX_PINS`].
pub const SAVED_IOAPIC_REDIR: u64 = 0xba8;
/// KVM's IOAPIC has 24 pins, as the 82093AA.
pub const SAVED_IOAPIC_MAX_PINS: u64 = 24;
/// How many MTRRs follow (0: none saved, the CPU has no MTRRs).
pub const SAVED_MTRR_COUNT: u64 = SAVED_IOAPIC_REDIR + 8 * SAVED_IOAPIC_MAX_PINS;
/// The MTRRs, a (u64 MSR index, u64 value) pair each; the first is
/// MTRR_DEF_TYPE, which the re-entry path writes last.
pub const SAVED_MTRRS: u64 = SAVED_MTRR_COUNT + 8;
/// MTRR_DEF_TYPE, 8 variable pairs, 11 fixed ranges.
pub const SAVED_MTRR_MAX: u64 = 1 + 2 * 8 + 11;
/// End of the saved machine state.
pub const SAVED_END: u64 = SAVED_MTRRS + 16 * SAVED_MTRR_MAX;
const _: () = assert!(RELOC_END <= SAVED_PIC && SAVED_PIC + 8 <= SAVED_IOAPIC_SEL_ID);
const _: () = assert!(SAVED_IOAPIC_SEL_ID + 8 <= SAVED_IOAPIC_PINS);
const _: () = assert!(SAVED_IOAPIC_PINS + 8 <= SAVED_IOAPIC_REDIR);
const _: () = assert!(SAVED_MTRRS.is_multiple_of(8));

/// RSP0: where the CPU pushes its frame when ring 3 comes back. Below
/// anything the ring-3 code pushes (a return address or two under the
/// stack top), above the tables.
pub const RELOC_RSP0: u64 = STACK_TOP - 0x100;

/// Selectors of [`reloc_gdt`]: kernel code and data, user data and code
/// (RPL 3), the TSS.
pub const RELOC_KERNEL_CS: u16 = 0x08;
pub const RELOC_KERNEL_DS: u16 = 0x10;
pub const RELOC_USER_DS: u16 = 0x18 | 3;
pub const RELOC_USER_CS: u16 = 0x20 | 3;
pub const RELOC_TSS_SEL: u16 = 0x28;
pub const RELOC_GDT_ENTRIES: usize = 7;
/// Ring 3 comes back with `ud2`: its #UD goes through the one present
/// gate of the IDT. (kvm-pvm turns `int n` in ring 3 into a #UD, and its
/// `syscall` lands at LSTAR still in ring 3, so neither is used.) The copy
/// loop cannot raise a #UD of its own; any other exception in ring 3 finds
/// no gate and escalates to a triple fault (loud).
pub const RELOC_RETURN_VECTOR: u8 = 6;
pub const RELOC_IDT_GATES: usize = RELOC_RETURN_VECTOR as usize + 1;
pub const TSS_SIZE: u64 = 104;

const _: () = assert!(FXSAVE + 512 <= RELOC_GDT && RELOC_GDT.is_multiple_of(16));
const _: () = assert!(RELOC_GDT + 8 * RELOC_GDT_ENTRIES as u64 <= RELOC_GDT_PTR);
const _: () = assert!(RELOC_GDT_PTR + 10 <= RELOC_IDT_PTR && RELOC_IDT_PTR + 10 <= RELOC_IDT);
const _: () =
    assert!(RELOC_IDT.is_multiple_of(16) && RELOC_IDT + 16 * RELOC_IDT_GATES as u64 <= RELOC_TSS);
const _: () = assert!(RELOC_TSS.is_multiple_of(8));
// Between the tables and RSP0: the CPU's frame (5 words below RSP0, which
// is 16-byte aligned). Above RSP0: the relocation code's stack (a return
// address or two, kjump_reentry's far return).
const _: () = assert!(RELOC_RSP0.is_multiple_of(16) && SAVED_END + 48 <= RELOC_RSP0);
const _: () = assert!(STACK_TOP - RELOC_RSP0 >= 0x100);

/// DPL 3 in a descriptor's access byte.
const DPL3: u64 = 3 << 45;

/// The relocation GDT for a TSS at `tss_base`: null, kernel code, kernel
/// data, user data, user code, then the 16-byte descriptor of an available
/// 64-bit TSS. Accessed bits preset: the CPU never writes the table except
/// for the TSS busy bit, which `ltr` sets (the relocation code clears it
/// before each `ltr`).
pub const fn reloc_gdt(tss_base: u64) -> [u64; RELOC_GDT_ENTRIES] {
    let limit = TSS_SIZE - 1;
    let tss_low = (limit & 0xffff)
        | ((tss_base & 0xff_ffff) << 16)
        | (0x89 << 40) // present, type 9: available 64-bit TSS
        | (((limit >> 16) & 0xf) << 48)
        | (((tss_base >> 24) & 0xff) << 56);
    [
        0,
        GDT_CODE64,
        GDT_DATA,
        GDT_DATA | DPL3,
        GDT_CODE64 | DPL3,
        tss_low,
        tss_base >> 32,
    ]
}

/// A 64-bit interrupt gate to `handler` in [`RELOC_KERNEL_CS`], present,
/// DPL 0 (exceptions only, no `int n`), no IST.
pub const fn reloc_idt_gate(handler: u64) -> [u64; 2] {
    let low = (handler & 0xffff)
        | ((RELOC_KERNEL_CS as u64) << 16)
        | (0x8e << 40) // present, DPL 0, type 0xe: interrupt gate
        | (((handler >> 16) & 0xffff) << 48);
    [low, handler >> 32]
}

/// The TSS: only RSP0 matters; no I/O bitmap (its base is past the limit).
pub fn reloc_tss(rsp0: u64) -> [u8; TSS_SIZE as usize] {
    let mut t = [0u8; TSS_SIZE as usize];
    t[4..12].copy_from_slice(&rsp0.to_le_bytes());
    t[102..104].copy_from_slice(&(TSS_SIZE as u16).to_le_bytes());
    t
}

/// An `lgdt`/`lidt` operand: limit, then base, packed.
pub fn pseudo_descriptor(base: u64, bytes: u64) -> [u8; 10] {
    let mut p = [0u8; 10];
    p[..2].copy_from_slice(&((bytes - 1) as u16).to_le_bytes());
    p[2..].copy_from_slice(&base.to_le_bytes());
    p
}

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
    /// The SYSCALL MSRs: a peer may program its own (Linux does), so each
    /// kernel keeps its values here.
    Star,
    Lstar,
    Cstar,
    Sfmask,
    /// The UART registers: IER, LCR, MCR, SCR, DLL, DLM in bytes 0..6.
    Uart,
}

/// Number of context slots.
pub const SLOTS: u64 = Slot::Uart as u64 + 1;
const _: () = assert!(CONTEXT + 8 * SLOTS <= FXSAVE);
const _: () = assert!(FXSAVE.is_multiple_of(16) && FXSAVE + 512 + 0x200 <= STACK_TOP);

/// Names of the slots, for reports and `--inject`.
pub const SLOT_NAMES: [&str; SLOTS as usize] = [
    "rax",
    "rbx",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "rbp",
    "rsp",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
    "rflags",
    "cr0",
    "cr3",
    "cr4",
    "efer",
    "fs_base",
    "gs_base",
    "kernel_gs_base",
    "gdtr.limit",
    "gdtr.base",
    "idtr.limit",
    "idtr.base",
    "tr",
    "cs",
    "ds",
    "es",
    "fs",
    "gs",
    "ss",
    "star",
    "lstar",
    "cstar",
    "sfmask",
    "uart",
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
        const { assert!(DATA_SCRATCH + 16 <= DATA_FAULT && DATA_FAULT + 8 <= DATA_OWN_ENTRY) };
        const { assert!(DATA_OWN_ENTRY + 8 <= DATA_PEER_BOOT_ENTRY) };
        const { assert!(DATA_PEER_BOOT_ENTRY + 8 <= DATA_DEVICE_RESUME) };
        const { assert!(DATA_DEVICE_RESUME + 8 <= CONTEXT) };
        const { assert!(SLOTS <= FAULT_NO_FPU_RESTORE && FAULT_NO_MTRR_RESTORE < 64) };
        assert_eq!(slot_offset(Slot::Rax), CONTEXT);
    }

    #[test]
    fn syscall_msr_slots_have_names() {
        assert_eq!(slot_by_name("star"), Some(Slot::Star as u64));
        assert_eq!(slot_by_name("sfmask"), Some(Slot::Sfmask as u64));
        assert_eq!(SLOT_NAMES[Slot::Uart as usize], "uart");
        assert!(slot_offset(Slot::Uart) + 8 <= FXSAVE);
    }

    /// Access byte (bits 40..48) and the L/D flags of a descriptor.
    fn access(d: u64) -> (u64, bool, bool) {
        ((d >> 40) & 0xff, d & (1 << 53) != 0, d & (1 << 54) != 0)
    }

    #[test]
    fn reloc_gdt_has_the_selectors_the_trip_uses() {
        let tss = 0x1_2345_6b20;
        let gdt = reloc_gdt(tss);
        let desc = |sel: u16| gdt[usize::from(sel >> 3)];
        assert_eq!(gdt[0], 0);
        assert_eq!(access(desc(RELOC_KERNEL_CS)), (0x9b, true, false));
        assert_eq!(access(desc(RELOC_KERNEL_DS)).0, 0x93);
        assert_eq!(access(desc(RELOC_USER_DS)).0, 0xf3);
        assert_eq!(access(desc(RELOC_USER_CS)), (0xfb, true, false));
        // The TSS: available 64-bit, base split over both words, limit 103.
        let (lo, hi) = (
            desc(RELOC_TSS_SEL),
            gdt[usize::from(RELOC_TSS_SEL >> 3) + 1],
        );
        assert_eq!(access(lo).0, 0x89);
        let base = ((lo >> 16) & 0xff_ffff) | (((lo >> 56) & 0xff) << 24) | (hi << 32);
        assert_eq!(base, tss);
        assert_eq!(lo & 0xffff, TSS_SIZE - 1);
        assert_eq!(usize::from(RELOC_TSS_SEL >> 3) + 2, RELOC_GDT_ENTRIES);
    }

    #[test]
    fn reloc_idt_gate_and_tss() {
        let h = 0x0000_7fff_1234_5678;
        let [lo, hi] = reloc_idt_gate(h);
        let offset = (lo & 0xffff) | (((lo >> 48) & 0xffff) << 16) | (hi << 32);
        assert_eq!(offset, h);
        assert_eq!((lo >> 16) & 0xffff, u64::from(RELOC_KERNEL_CS));
        assert_eq!((lo >> 40) & 0xff, 0x8e);
        assert_eq!((lo >> 32) & 7, 0, "no IST");
        let t = reloc_tss(0xabc0);
        assert_eq!(u64::from_le_bytes(t[4..12].try_into().unwrap()), 0xabc0);
        assert_eq!(u16::from_le_bytes([t[102], t[103]]), 104);
        let p = pseudo_descriptor(0x1000, 56);
        assert_eq!(u16::from_le_bytes([p[0], p[1]]), 55);
        assert_eq!(u64::from_le_bytes(p[2..].try_into().unwrap()), 0x1000);
    }

    #[test]
    fn control_pages_cover_the_map() {
        assert_eq!(control_pages(256 << 20), 5);
        assert_eq!(control_pages(4 << 30), 8);
    }
}
