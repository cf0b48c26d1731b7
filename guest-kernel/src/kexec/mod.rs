//! kexec jump with preserved context: kernel A loads kernel B, and the two
//! jump to each other for as many cycles as asked (the `ping-pong`
//! scenario).
//!
//! A builds the kimage like `kexec -l --load-preserve-context` does: B's
//! PT_LOADs, B's zero page and command line, and zero pages for the rest of
//! the RAM B is given ([peer_start, peer_end), like kexec-tools'
//! `--mem-min/--mem-max`), each destination page with a source page that
//! holds its content, in a Linux-format indirection list. Every jump swaps
//! each source page with its destination page (`relocate.rs`), so both
//! kernels' memory survives. B boots once; every later jump resumes the peer
//! where it last left (its re-entry point is the return address it pushed
//! when it called us).
//!
//! By job:
//! - `load`: the control pages and the kimage (A's of B, B's empty one
//!   back to A);
//! - `jump`: the jump itself and the two kernels' jump loops ([`run_a`],
//!   [`run_b`]);
//! - `cpu_state`: the CPU state each kernel keeps as its own (B's control
//!   bits and SSE values) and the self-check of it after a jump;
//! - `pattern`: the memory pattern each kernel checks after a jump;
//! - `syscore`: the interrupt controllers' and MTRRs' state each kernel
//!   saves before it jumps (B's differs from A's), which its re-entry path
//!   restores;
//! - `faults`: the jump faults of the catalog, armed per cycle.

use core::fmt::Write;

use kjump_abi::cmdline;
use kjump_abi::layout::{HIGH_RAM_START, PAGE_SIZE};

use crate::harness;

mod cpu_state;
pub mod crash;
mod faults;
pub mod hibernate;
mod jump;
mod load;
mod pattern;
mod syscore;

pub use jump::{run_a, run_b};

const GIB: u64 = 1 << 30;

/// Settings from the command line.
struct Config {
    cycles: u64,
    peer_start: u64,
    peer_end: u64,
    backup: bool,
    pattern_bytes: u64,
    /// The crash scenario: where A's ELF core header is, for B's command
    /// line (`elfcorehdr=`).
    elfcorehdr: Option<u64>,
}

impl Config {
    fn parse(cmd: &str) -> Result<Self, &'static str> {
        let num = |k, d| cmdline::get(cmd, k).map_or(Some(d), cmdline::parse_u64);
        let size = |k, d| cmdline::get(cmd, k).map_or(Some(d), cmdline::parse_size);
        let cycles = num(cmdline::CYCLES_KEY, 10).ok_or("bad kjump.cycles")?;
        let peer_mem = size(cmdline::PEER_MEM_KEY, kjump_abi::layout::DEFAULT_PEER_MEM)
            .ok_or("bad kjump.peer_mem")?;
        let backup = match cmdline::get(cmd, cmdline::MODE_KEY).unwrap_or("swap") {
            "swap" => false,
            "backup" => true,
            _ => return Err("kjump.mode must be swap or backup"),
        };
        let pattern_bytes = size("kjump.pattern", 1 << 20).ok_or("bad kjump.pattern")?;
        if peer_mem % PAGE_SIZE != 0 || peer_mem < (4 << 20) {
            return Err("kjump.peer_mem must be a multiple of 4 KiB and at least 4 MiB");
        }
        Ok(Self {
            cycles,
            peer_start: HIGH_RAM_START,
            peer_end: HIGH_RAM_START + peer_mem,
            backup,
            pattern_bytes,
            elfcorehdr: None,
        })
    }
}

// ---------------------------------------------------------------------------
// Physical memory access. The kernel runs identity-mapped, so a physical
// address is a pointer; the callers only pass pages they allocated.

/// Writes `bytes` at physical address `pa`.
fn phys_write(pa: u64, bytes: &[u8]) {
    // SAFETY: callers pass pages this kernel allocated from its frame
    // allocator (or its own control pages); RAM is identity-mapped.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), pa as *mut u8, bytes.len()) }
}

fn phys_write_u64(pa: u64, v: u64) {
    // SAFETY: as `phys_write`; `pa` is 8-byte aligned in every caller.
    unsafe { core::ptr::write_volatile(pa as *mut u64, v) }
}

fn phys_read_u64(pa: u64) -> u64 {
    // SAFETY: as `phys_write`; reads of this kernel's own pages.
    unsafe { core::ptr::read_volatile(pa as *const u64) }
}

/// Reports a failed run (console and verdict) and halts.
fn fail(args: core::fmt::Arguments<'_>) -> ! {
    let mut buf = harness::TextBuf::new();
    let _ = buf.write_fmt(args);
    crate::println!("{}", buf.as_str());
    harness::verdict(false, buf.as_str());
    crate::halt_forever()
}
