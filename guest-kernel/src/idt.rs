//! The IDT: the 32 exception vectors, each through a small assembly stub
//! into [`exception`], which reports the exception on the UART and through
//! the harness port and stops the CPU. The kernel never enables interrupts,
//! so vectors 32..255 are left not-present (a stray one shows up as #NP).
//!
//! Stable Rust has no `x86-interrupt` ABI, hence the stubs: they give every
//! vector the same frame (a dummy error code where the CPU pushes none, SDM
//! vol. 3A table 6-1), push the vector and all GPRs, and call Rust with a
//! pointer to the frame.

use core::arch::{asm, global_asm};
use core::mem::size_of;
use core::sync::atomic::{AtomicBool, Ordering};

use kjump_abi::abi::{ExceptionArgs, MsgKind, vector_name};
use kjump_abi::textbuf::TextBuf;

use crate::gdt::{IST_DOUBLE_FAULT, IST_NMI, KERNEL_CS};
use crate::println;
use crate::sync::Exclusive;
use crate::{cpu, harness};

/// Number of exception vectors.
pub const EXCEPTIONS: usize = 32;
const GATES: usize = 256;
/// Present, DPL 0, 64-bit interrupt gate (IF cleared on entry).
const INTERRUPT_GATE: u8 = 0x8e;

// Stubs for vectors without an error code push 0 first, so that every
// frame is: GPRs, vector, error code, then the CPU's RIP, CS, RFLAGS, RSP,
// SS. The CPU aligns RSP to 16 before pushing its frame (5 words); with the
// error code, the vector and 15 GPRs that is 22 words: RSP stays 16-byte
// aligned at the `call`, as the SysV ABI wants.
global_asm!(
    r#"
    .section .text.kjump_exceptions, "ax"
    .irp vec, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
    kjump_exc_\vec:
        push 0
        push \vec
        jmp kjump_exc_common
    .endr
    .irp vec, 8,10,11,12,13,14,17,21,29,30
    kjump_exc_\vec:
        push \vec
        jmp kjump_exc_common
    .endr

    // State expected: the frame above on the current stack (an IST stack for
    // #DF and NMI). State left: none, the Rust handler does not return.
    kjump_exc_common:
        push rax
        push rbx
        push rcx
        push rdx
        push rsi
        push rdi
        push rbp
        push r8
        push r9
        push r10
        push r11
        push r12
        push r13
        push r14
        push r15
        mov rdi, rsp
        cld
        call kjump_exception
    2:
        cli
        hlt
        jmp 2b

    .section .rodata.kjump_exceptions, "a"
    .balign 8
    kjump_exc_table:
    .irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .quad kjump_exc_\vec
    .endr
    "#
);

unsafe extern "C" {
    /// Entry addresses of the 32 stubs, by vector.
    static kjump_exc_table: [u64; EXCEPTIONS];
}

/// What the stubs leave on the stack, lowest address first.
#[repr(C)]
pub struct ExceptionFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// One 16-byte IDT gate (SDM vol. 3A, figure 6-8).
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}
const _: () = assert!(size_of::<Gate>() == 16);

impl Gate {
    const MISSING: Self = Self {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    const fn interrupt(handler: u64, ist: u8) -> Self {
        Self {
            offset_low: handler as u16,
            selector: KERNEL_CS,
            ist,
            type_attr: INTERRUPT_GATE,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; GATES]);

static IDT: Exclusive<Idt> = Exclusive::new(Idt([Gate::MISSING; GATES]));
/// Set by the first exception; a second one (inside the handler) only halts.
static IN_HANDLER: AtomicBool = AtomicBool::new(false);
/// The report's text (the handler runs at most once, see `IN_HANDLER`).
static TEXT: Exclusive<TextBuf<512>> = Exclusive::new(TextBuf::new());

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

/// Loads an IDT pseudo-descriptor.
///
/// # Safety
/// The table must stay valid while loaded, or every exception is a triple
/// fault (which the `triple` fault wants).
unsafe fn lidt(base: u64, limit: u16) {
    let ptr = Pointer { limit, base };
    // SAFETY: `lidt` reads the 10-byte pseudo-descriptor on our stack; the
    // caller answers for the table itself.
    unsafe { asm!("lidt [{}]", in(reg) &raw const ptr, options(nostack, preserves_flags)) };
}

/// Fills the IDT (exceptions only; #DF and NMI on their IST stacks) and loads it.
/// Needs the kernel GDT ([`crate::gdt::init`]) for its code selector and TSS.
pub fn init() {
    // SAFETY: the table is an immutable array of 32 addresses emitted by the
    // `global_asm!` above.
    let stubs = unsafe { kjump_exc_table };
    let base = IDT.with(|idt| {
        for (v, &stub) in stubs.iter().enumerate() {
            let ist = match v {
                2 => IST_NMI,
                8 => IST_DOUBLE_FAULT,
                _ => 0,
            };
            idt.0[v] = Gate::interrupt(stub, ist);
        }
        idt.0.as_ptr() as u64
    });
    // SAFETY: the IDT is a static (it lives forever); its gates point at the
    // stubs above with the kernel's code selector.
    unsafe { lidt(base, (GATES * size_of::<Gate>() - 1) as u16) };
}

/// Loads an IDT of limit 0: the next exception cannot be delivered, nor can
/// the #GP and #DF that follow, and the CPU shuts down (triple fault).
pub fn load_empty() {
    // SAFETY: a zero-limit IDT is never read; every exception after this is
    // a triple fault, which is what the caller asks for.
    unsafe { lidt(0, 0) };
}

/// Called by `kjump_exc_common` with the frame it built. Reports the
/// exception and halts.
#[unsafe(no_mangle)]
extern "C" fn kjump_exception(frame: &ExceptionFrame) -> ! {
    if IN_HANDLER.swap(true, Ordering::Relaxed) {
        // An exception while reporting one: the report cannot be trusted to
        // finish, so stop here (the VMM's watchdog notices the halt).
        cpu::halt_forever();
    }
    let cr2 = cpu::read_cr2();
    let mut args = [0u64; 8];
    args[ExceptionArgs::VECTOR] = frame.vector;
    args[ExceptionArgs::ERROR_CODE] = frame.error_code;
    args[ExceptionArgs::RIP] = frame.rip;
    args[ExceptionArgs::CS] = frame.cs;
    args[ExceptionArgs::RFLAGS] = frame.rflags;
    args[ExceptionArgs::RSP] = frame.rsp;
    args[ExceptionArgs::CR2] = cr2;
    println!(
        "exception {} (vector {}), error code {:#x}, rip {:#x}, cs {:#x}, rflags {:#x}, rsp {:#x}, cr2 {:#x}",
        vector_name(frame.vector),
        frame.vector,
        frame.error_code,
        frame.rip,
        frame.cs,
        frame.rflags,
        frame.rsp,
        cr2
    );
    println!(
        "  rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}\n  rsi {:#018x} rdi {:#018x} rbp {:#018x} r8  {:#018x}\n  r9  {:#018x} r10 {:#018x} r11 {:#018x} r12 {:#018x}\n  r13 {:#018x} r14 {:#018x} r15 {:#018x} ss  {:#x}",
        frame.rax,
        frame.rbx,
        frame.rcx,
        frame.rdx,
        frame.rsi,
        frame.rdi,
        frame.rbp,
        frame.r8,
        frame.r9,
        frame.r10,
        frame.r11,
        frame.r12,
        frame.r13,
        frame.r14,
        frame.r15,
        frame.ss
    );
    TEXT.with(|buf| {
        let text = buf.format(format_args!(
            "{} (vector {}) at rip {:#x}, error code {:#x}, cr2 {:#x}",
            vector_name(frame.vector),
            frame.vector,
            frame.rip,
            frame.error_code,
            cr2
        ));
        harness::send_text(MsgKind::Exception, args, text);
    });
    cpu::halt_forever()
}
