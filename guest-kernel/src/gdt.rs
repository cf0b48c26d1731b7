//! The kernel's own GDT and TSS (the VMM's boot GDT at 0x500 lives in low
//! memory the kernel does not own). Long mode ignores most of a segment
//! descriptor; what remains is the L bit of CS and the TSS, whose IST
//! stacks give #DF and NMI a known-good stack (SDM vol. 3A, 6.14.5).

use core::arch::asm;
use core::mem::size_of;

use kjump_abi::arch::{GDT_CODE64, GDT_DATA};

use crate::sync::Exclusive;

/// Selector of the 64-bit kernel code segment.
pub const KERNEL_CS: u16 = 0x08;
/// Selector of the kernel data segment.
pub const KERNEL_DS: u16 = 0x10;
/// Selector of the TSS (a 16-byte system descriptor: entries 3 and 4).
pub const TSS_SELECTOR: u16 = 0x18;
/// IST index (1-based, as in the IDT gate) of the double-fault stack.
pub const IST_DOUBLE_FAULT: u8 = 1;
/// IST index of the NMI stack.
pub const IST_NMI: u8 = 2;

/// System-descriptor type of an available 64-bit TSS; `ltr` makes it busy (0xb).
const TSS_AVAILABLE: u64 = 0x9;

const IST_STACK_SIZE: usize = 16 * 1024;

/// The 64-bit TSS (SDM vol. 3A, figure 8-11): 104 bytes, 4-byte aligned
/// fields.
#[repr(C, packed(4))]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}
const _: () = assert!(size_of::<Tss>() == 104);

#[repr(C, align(16))]
struct Tables {
    gdt: [u64; 5],
    tss: Tss,
}

#[repr(C, align(16))]
struct IstStack([u8; IST_STACK_SIZE]);

static TABLES: Exclusive<Tables> = Exclusive::new(Tables {
    gdt: [0; 5],
    tss: Tss {
        reserved0: 0,
        rsp: [0; 3],
        reserved1: 0,
        ist: [0; 7],
        reserved2: 0,
        reserved3: 0,
        iomap_base: 0,
    },
});
static DOUBLE_FAULT_STACK: Exclusive<IstStack> = Exclusive::new(IstStack([0; IST_STACK_SIZE]));
static NMI_STACK: Exclusive<IstStack> = Exclusive::new(IstStack([0; IST_STACK_SIZE]));

/// The two GDT entries of an available 64-bit TSS at `base` with `limit`.
const fn tss_descriptor(base: u64, limit: u64) -> [u64; 2] {
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (TSS_AVAILABLE << 40)
        | (1 << 47)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    [low, base >> 32]
}

fn stack_top(stack: &Exclusive<IstStack>) -> u64 {
    stack.as_ptr() as u64 + IST_STACK_SIZE as u64
}

/// Builds the GDT and TSS, loads them, reloads every segment register and
/// the task register. Run once, early at boot.
pub fn init() {
    let gdt_base = TABLES.with(|t| {
        let mut ist = [0u64; 7];
        ist[usize::from(IST_DOUBLE_FAULT - 1)] = stack_top(&DOUBLE_FAULT_STACK);
        ist[usize::from(IST_NMI - 1)] = stack_top(&NMI_STACK);
        t.tss = Tss {
            reserved0: 0,
            rsp: [0; 3],
            reserved1: 0,
            ist,
            reserved2: 0,
            reserved3: 0,
            // No I/O bitmap: the base points past the TSS limit.
            iomap_base: size_of::<Tss>() as u16,
        };
        let tss = tss_descriptor(&raw const t.tss as u64, size_of::<Tss>() as u64 - 1);
        t.gdt = [0, GDT_CODE64, GDT_DATA, tss[0], tss[1]];
        t.gdt.as_ptr() as u64
    });
    let limit = (5 * size_of::<u64>() - 1) as u16;
    // SAFETY: the GDT is a static that lives forever; it has the code and
    // data descriptors the selectors below name, and a TSS descriptor for a
    // static TSS whose IST stacks are static too.
    unsafe { load(gdt_base, limit) };
}

/// `lgdt`, far return into the new CS, reload the data segments, `ltr`.
///
/// # Safety
/// `base`/`limit` must describe a GDT that stays valid and has the layout of
/// this module (code at 0x08, data at 0x10, an available TSS at 0x18).
unsafe fn load(base: u64, limit: u16) {
    // lgdt takes a 10-byte pseudo-descriptor: limit, then base.
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let ptr = Pointer { limit, base };
    // SAFETY: the caller guarantees the table. State expected: long mode,
    // any valid CS/SS. The far return pops RIP and CS (our code selector),
    // after which the data selectors and TR are loaded; the stack is the
    // same (SS is reloaded with a flat data segment).
    unsafe {
        asm!(
            "lgdt [{ptr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "mov fs, {ds:x}",
            "mov gs, {ds:x}",
            "ltr {tss:x}",
            ptr = in(reg) &raw const ptr,
            cs = in(reg) u64::from(KERNEL_CS),
            ds = in(reg) u64::from(KERNEL_DS),
            tss = in(reg) u64::from(TSS_SELECTOR),
            tmp = out(reg) _,
        )
    };
}

/// The task register (`str`): `TSS_SELECTOR` once [`init`] ran.
pub fn current_tr() -> u16 {
    let tr: u16;
    // SAFETY: `str` only reads the task register.
    unsafe { asm!("str {:x}", out(reg) tr, options(nomem, nostack, preserves_flags)) };
    tr
}
