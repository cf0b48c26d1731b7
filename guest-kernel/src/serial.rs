//! The console: a 16550 UART at COM1 (0x3f8), driven by hand. The VMM
//! emulates it with `vm-superio` and copies what the guest writes to its
//! console line by line. No loopback self-test (the emulation may not do
//! loopback), and a bounded wait for THRE so that a stuck UART cannot hang
//! the kernel.
//!
//! Register map (port offsets), DLAB = LCR bit 7:
//! 0 THR/RBR (DLL with DLAB), 1 IER (DLM with DLAB), 2 FCR, 3 LCR, 4 MCR,
//! 5 LSR, 7 SCR.

use core::fmt;

use kjump_abi::abi::Role;
use kjump_abi::arch::COM1;

use crate::cpu::{inb, outb};

const DATA: u16 = 0;
const IER: u16 = 1;
const FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const SCR: u16 = 7;
const DLL: u16 = 0;
const DLM: u16 = 1;

const LCR_DLAB: u8 = 0x80;
/// 8 data bits, no parity, 1 stop bit.
const LCR_8N1: u8 = 0x03;
/// Enable and clear both FIFOs, 14-byte trigger.
const FCR_ENABLE_CLEAR: u8 = 0xc7;
/// DTR, RTS, OUT2.
const MCR_DTR_RTS_OUT2: u8 = 0x0b;
const LSR_THRE: u8 = 0x20;
/// How many LSR reads to wait for THRE before writing anyway.
const THRE_SPINS: u32 = 100_000;

/// The scratch register value per role: lets the oracle see that a resumed
/// kernel finds its own UART state, not the peer's.
pub const fn scratch(role: Role) -> u8 {
    match role {
        Role::A => 0xa0,
        Role::B => 0xb0,
        Role::C => 0xc0,
    }
}

fn write_reg(reg: u16, value: u8) {
    // SAFETY: COM1 is the kernel's console, driven only from this module.
    unsafe { outb(COM1 + reg, value) }
}

fn read_reg(reg: u16) -> u8 {
    // SAFETY: COM1 is the kernel's console, driven only from this module;
    // none of the registers read here has read side effects except RBR,
    // which is never read.
    unsafe { inb(COM1 + reg) }
}

/// Programs the UART: interrupts off, 115200 baud (divisor 1), 8N1, FIFOs,
/// DTR/RTS/OUT2, and the role's scratch value.
pub fn init(role: Role) {
    write_reg(IER, 0);
    write_reg(LCR, LCR_DLAB);
    write_reg(DLL, 1);
    write_reg(DLM, 0);
    write_reg(LCR, LCR_8N1);
    write_reg(FCR, FCR_ENABLE_CLEAR);
    write_reg(MCR, MCR_DTR_RTS_OUT2);
    write_reg(SCR, scratch(role));
}

/// Writes bytes, waiting (bounded) for the transmit holding register.
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        let mut spins = 0;
        while read_reg(LSR) & LSR_THRE == 0 && spins < THRE_SPINS {
            spins += 1;
            core::hint::spin_loop();
        }
        write_reg(DATA, b);
    }
}

/// The UART's programmable state, in the order of the control page's `Uart`
/// slot: IER, LCR, MCR, SCR, DLL, DLM.
pub fn save() -> [u8; 6] {
    let lcr = read_reg(LCR);
    // IER shares its port with DLM: read it with DLAB clear.
    write_reg(LCR, lcr & !LCR_DLAB);
    let ier = read_reg(IER);
    let mcr = read_reg(MCR);
    let scr = read_reg(SCR);
    write_reg(LCR, lcr | LCR_DLAB);
    let dll = read_reg(DLL);
    let dlm = read_reg(DLM);
    write_reg(LCR, lcr);
    [ier, lcr, mcr, scr, dll, dlm]
}

/// Restores what [`save`] returned; LCR ends as saved.
pub fn restore(state: &[u8; 6]) {
    let [ier, lcr, mcr, scr, dll, dlm] = *state;
    write_reg(LCR, LCR_DLAB);
    write_reg(DLL, dll);
    write_reg(DLM, dlm);
    write_reg(LCR, lcr & !LCR_DLAB);
    write_reg(IER, ier);
    write_reg(MCR, mcr);
    write_reg(SCR, scr);
    write_reg(LCR, lcr);
}

/// `core::fmt` onto the UART (stateless: every writer is the same port).
pub struct Writer;

impl fmt::Write for Writer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    // Writing to the UART cannot fail; a failing `Display` impl only cuts
    // the line short.
    let _ = fmt::write(&mut Writer, args);
}

/// Prints onto the UART console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::serial::_print(format_args!($($arg)*)));
}

/// Prints a line onto the UART console.
#[macro_export]
macro_rules! println {
    () => ($crate::print!("\n"));
    ($($arg:tt)*) => ($crate::serial::_print(format_args!("{}\n", format_args!($($arg)*))));
}
