//! The CPU state each kernel keeps as its own across a jump, and the
//! self-check of it: what a kernel can see of itself (control registers,
//! EFER, descriptor tables, TR, x87/SSE state) before and after the jump.
//! B sets control bits and SSE values of its own, as two different kernels
//! would, so that a re-entry path that restores too little shows.

use kjump_abi::abi::Role;
use kjump_abi::arch::{CR0_WP, CR4_PGE, EFER_NXE, MSR_EFER};

use super::fail;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct CpuView {
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

pub(super) fn cpu_view() -> CpuView {
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
        efer: crate::rdmsr(MSR_EFER),
        gdtr: dt(&gdt),
        idtr: dt(&idt),
        tr,
        fx: fx.0,
    }
}

/// Loads a role-specific pattern into MXCSR and XMM0..15, so a peer whose
/// FPU/SSE state leaked into ours would be seen.
pub(super) fn load_sse_pattern(role: Role) {
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

pub(super) fn check_cpu(role: Role, before: &CpuView) {
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
    // x87 control/status and the XMM registers. Compared as slices first
    // (a few wide compares): on the software KVM backend every ring-0
    // instruction is emulated, and a byte loop over these 260 bytes was a
    // quarter of a cycle's guest instructions.
    for (lo, hi, what) in [(0usize, 4usize, "fcw/fsw"), (160, 416, "xmm0..15")] {
        if same_words(&before.fx[lo..hi], &after.fx[lo..hi]) {
            continue;
        }
        if let Some(i) = (lo..hi).find(|&i| before.fx[i] != after.fx[i]) {
            fail(format_args!(
                "{who}: self-check: FPU/SSE state {what} differs at fxsave byte {i}"
            ));
        }
    }
}

/// Whether two byte strings are equal, compared eight bytes at a time
/// (`memcmp` here compares byte by byte).
fn same_words(a: &[u8], b: &[u8]) -> bool {
    let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().expect("8 bytes"));
    let (x, y) = (a.chunks_exact(8), b.chunks_exact(8));
    a.len() == b.len()
        && x.remainder() == y.remainder()
        && x.zip(y).all(|(p, q)| word(p) == word(q))
}

fn fx_u32(fx: &[u8; 512], off: usize) -> u32 {
    u32::from_le_bytes(fx[off..off + 4].try_into().expect("4 bytes"))
}

/// B runs with CR0, CR4 and EFER of its own (A keeps the values it booted
/// with), as two different kernels would: a re-entry path that forgets to
/// restore one of them leaves the peer's value, which the oracle sees.
/// All three bits are harmless here: every page is writable, no entry is
/// global or no-execute.
pub(super) fn set_b_control_bits() {
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
