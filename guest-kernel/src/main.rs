//! The kjump guest kernel (placeholder entry; replaced by the real kernel).
#![no_std]
#![no_main]

use core::arch::global_asm;

global_asm!(
    ".section .text.entry, \"ax\"",
    ".global _start",
    "_start:",
    "cli",
    "2: hlt",
    "jmp 2b",
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
