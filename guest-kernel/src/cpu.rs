//! Thin wrappers around the privileged instructions the kernel uses. Only
//! instructions that this KVM emulates (see DESIGN.md, "Facts"): never
//! `int3`, `xsave`/`xrstor` or `xgetbv`/`xsetbv`.

use core::arch::asm;

/// Writes a byte to an I/O port.
///
/// # Safety
/// The port must belong to a device the caller drives; the write's side
/// effects are the caller's responsibility.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller owns the device behind `port`; `out` touches no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// As for [`outb`]: reads may have side effects on the device.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller owns the device behind `port`; `in` touches no memory.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Disables interrupts and halts forever. The kernel never enables
/// interrupts, so only an NMI or a reset leaves `hlt`; then it halts again.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: `cli; hlt` only stops this CPU; nothing else depends on it.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Spins forever with interrupts off and no `hlt` (the `hang` fault: the
/// VMM's watchdog must notice a guest that burns CPU without exiting).
/// Never inlined: the VMM names the hang's rip by this symbol.
#[inline(never)]
pub fn spin_forever() -> ! {
    // SAFETY: `cli` only masks interrupts, which the kernel never uses.
    unsafe { asm!("cli", options(nomem, nostack)) };
    loop {
        core::hint::spin_loop();
    }
}

/// CR2: the linear address of the last page fault.
pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// CR3: the physical address of the current PML4 (and PCID/flag bits).
pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Loads CR3 (switches page tables and flushes the TLB).
///
/// # Safety
/// `pml4` must be a valid PML4 that maps the running code, its stack and all
/// data the kernel uses at the same addresses as now.
pub unsafe fn write_cr3(pml4: u64) {
    // SAFETY: the caller guarantees the new tables map everything in use
    // identically; the asm may affect memory (translation), so no `nomem`.
    unsafe { asm!("mov cr3, {}", in(reg) pml4, options(nostack, preserves_flags)) };
}

/// Reads a model-specific register.
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdmsr only reads; the MSRs read here (EFER, FS/GS bases) exist
    // on every x86_64 CPU, and a missing one raises #GP, which the IDT
    // handler reports.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes a model-specific register.
///
/// # Safety
/// The MSR must exist and the value must be one the caller has checked is
/// valid and harmless for the running kernel (an invalid one raises #GP).
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller vouches for the MSR and the value.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nomem, nostack, preserves_flags))
    };
}
