//! The kjump guest kernel: a `no_std` x86_64 kernel that the kjump VMM
//! boots directly in 64-bit mode (see DESIGN.md, "Boot contract"). It sets
//! up its own GDT, IDT, console, frame allocator and page tables, reports
//! through the harness port, and runs the scenario named on its command
//! line.
//!
//! Boot order (`kmain`): descriptor tables first, so that any fault after
//! that is reported; then boot_params, the UART, `Hello`, the allocator and
//! the kernel's own page tables, fault injection, and the scenario.
#![no_std]
#![no_main]

use core::arch::global_asm;

mod bootinfo;
mod cpu;
mod fault;
mod gdt;
mod harness;
mod idt;
mod kexec;
mod logger;
mod mem;
mod paging;
mod panic;
mod relocate;
mod scenario;
mod serial;
mod sync;
mod virtio;

pub use cpu::{halt_forever, rdmsr, wrmsr};

/// Size of the boot stack (in .bss; `_start` zeroes .bss before using it).
const BOOT_STACK_SIZE: usize = 64 * 1024;

global_asm!(
    r#"
    .section .bss.kjump_boot_stack, "aw", @nobits
    .balign 16
    .global kjump_boot_stack_bottom
    kjump_boot_stack_bottom:
    .skip {stack_size}
    .global kjump_boot_stack_top
    kjump_boot_stack_top:

    .section .text.entry, "ax"
    .global _start
    _start:
        // State expected (boot contract): 64-bit mode, the VMM's flat GDT and
        // identity-mapped boot page tables, interrupts off, rsi = physical
        // address of boot_params; rsp is not valid.
        cli
        cld

        // Zero .bss with rep stosq (rdi, rcx, rax), touching no stack: the
        // boot stack is in .bss itself. rsi is kept for kmain. The linker
        // script page-aligns both ends; quadwords, because on a KVM that
        // emulates ring 0 every iteration costs about a microsecond.
        lea rdi, [rip + __bss_start]
        lea rcx, [rip + __bss_end]
        sub rcx, rdi
        shr rcx, 3
        xor eax, eax
        rep stosq

        // Own stack (16-byte aligned top), an empty frame-pointer chain for
        // backtraces, and boot_params as kmain's first argument.
        lea rsp, [rip + kjump_boot_stack_top]
        xor ebp, ebp
        mov rdi, rsi
        call kmain

        // kmain does not return; should it, stop here.
    2:
        cli
        hlt
        jmp 2b
    "#,
    stack_size = const BOOT_STACK_SIZE,
);

/// The Rust entry, on the boot stack with .bss zeroed.
#[unsafe(no_mangle)]
extern "C" fn kmain(boot_params: u64) -> ! {
    gdt::init();
    idt::init();
    let boot = bootinfo::init(boot_params);
    serial::init(boot.role);
    harness::hello(boot.role);
    println!("kjump guest kernel {}: {}", boot.role.name(), boot.scenario);
    if !logger::init(boot.arg(kjump_abi::cmdline::LOG_KEY)) {
        log::warn!(
            "unknown {} level {:?}; using info",
            kjump_abi::cmdline::LOG_KEY,
            boot.arg(kjump_abi::cmdline::LOG_KEY)
        );
    }
    log::debug!("command line: {}", boot.cmdline);
    mem::init(boot);
    paging::init();
    log::debug!(
        "identity map [0, {:#x}) at cr3 {:#x}; tr {:#x}",
        paging::mapped_top(),
        paging::kernel_cr3(),
        gdt::current_tr()
    );
    fault::inject(boot);
    scenario::run(boot)
}
