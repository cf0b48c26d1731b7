//! x86-64 and PC-platform numbers that more than one part of kjump uses,
//! defined once: MSR indices (SDM vol. 4, "Model-Specific Registers"), the
//! flat segment descriptors of the kernels' GDTs, and the I/O base of the
//! console UART. The guest kernel's Rust and assembly use them; so may the
//! VMM.

/// IA32_EFER: SYSCALL enable, long mode, NX enable.
pub const MSR_EFER: u32 = 0xc000_0080;
/// IA32_STAR: SYSCALL/SYSRET segment selectors.
pub const MSR_STAR: u32 = 0xc000_0081;
/// IA32_LSTAR: the 64-bit SYSCALL entry.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// IA32_CSTAR: the compatibility-mode SYSCALL entry.
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// IA32_FMASK: the rflags bits SYSCALL clears.
pub const MSR_SFMASK: u32 = 0xc000_0084;
/// IA32_FS_BASE.
pub const MSR_FS_BASE: u32 = 0xc000_0100;
/// IA32_GS_BASE.
pub const MSR_GS_BASE: u32 = 0xc000_0101;
/// IA32_KERNEL_GS_BASE: what `swapgs` exchanges with GS base.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// A flat 64-bit code segment: present, DPL 0, execute/read, accessed,
/// long mode (L), 4 KiB granularity. The accessed bit is preset so that
/// the CPU never writes the GDT on a segment load (the oracle sees fewer
/// spurious changes).
pub const GDT_CODE64: u64 = 0x00af_9b00_0000_ffff;
/// A flat data segment: present, DPL 0, read/write, accessed, 4 KiB
/// granularity, 32-bit.
pub const GDT_DATA: u64 = 0x00cf_9300_0000_ffff;

/// I/O base of the console UART, a 16550 at COM1.
pub const COM1: u16 = 0x3f8;

/// CR0.WP: ring 0 honours read-only pages.
pub const CR0_WP: u64 = 1 << 16;
/// CR0.CD: caching disabled (no fills); with NW clear, the mode Linux
/// changes MTRRs in.
pub const CR0_CD: u64 = 1 << 30;
/// CR4.PGE: global pages.
pub const CR4_PGE: u64 = 1 << 7;
/// EFER.NXE: the no-execute bit of page-table entries.
pub const EFER_NXE: u64 = 1 << 11;

// The 8259A pair: the interrupt mask register (OCW1) of each is read and
// written at its odd port.
/// The master 8259's IMR.
pub const PIC_MASTER_IMR: u16 = 0x21;
/// The slave 8259's IMR.
pub const PIC_SLAVE_IMR: u16 = 0xa1;

// The I/O APIC (82093AA datasheet, 3.0): two 32-bit registers, an index
// and a window onto the register it selects.
/// Physical address of the I/O APIC's registers (the PC default, where
/// KVM's in-kernel IOAPIC sits).
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// Offset of IOREGSEL, the index register.
pub const IOAPIC_REGSEL: u64 = 0x00;
/// Offset of IOWIN, the data window.
pub const IOAPIC_WINDOW: u64 = 0x10;
/// Register index of IOAPICID (the ID in bits 24..28).
pub const IOAPIC_REG_ID: u32 = 0x00;
/// Register index of IOAPICVER (the highest redirection entry in bits
/// 16..24).
pub const IOAPIC_REG_VER: u32 = 0x01;
/// Register index of the low dword of redirection entry 0; entry `n` is
/// at `IOAPIC_REG_REDTBL + 2 * n` (low) and the next index (high).
pub const IOAPIC_REG_REDTBL: u32 = 0x10;

// MTRRs (SDM vol. 3A, 12.11 "Memory Type Range Registers").
/// IA32_MTRRCAP: VCNT in bits 0..8, FIX (fixed ranges supported) bit 8.
pub const MSR_MTRR_CAP: u32 = 0xfe;
/// IA32_MTRR_DEF_TYPE: default type in bits 0..8, FE (fixed ranges
/// enabled) bit 10, E (MTRRs enabled) bit 11.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// IA32_MTRR_PHYSBASE0; PHYSBASEn is at `+ 2 * n`, PHYSMASKn right after.
pub const MSR_MTRR_PHYSBASE0: u32 = 0x200;
/// Variable ranges kjump saves at most (PHYSBASE0..PHYSMASK7, the ones
/// KVM offers).
pub const MTRR_VAR_MAX: u32 = 8;
/// The fixed-range MTRRs: FIX64K_00000, FIX16K_80000, FIX16K_A0000,
/// FIX4K_C0000 .. FIX4K_F8000.
pub const MSR_MTRR_FIXED: [u32; 11] = [
    0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f,
];
/// MTRR_DEF_TYPE.E: MTRRs enabled.
pub const MTRR_DEF_TYPE_E: u64 = 1 << 11;
/// MTRR_DEF_TYPE.FE: fixed-range MTRRs enabled.
pub const MTRR_DEF_TYPE_FE: u64 = 1 << 10;
/// PHYSMASKn.V: the range is valid.
pub const MTRR_PHYSMASK_V: u64 = 1 << 11;
/// Memory type uncacheable.
pub const MTRR_TYPE_UC: u64 = 0;
/// Memory type write-back.
pub const MTRR_TYPE_WB: u64 = 6;
