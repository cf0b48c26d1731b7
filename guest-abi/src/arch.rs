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
