//! The stop faults of the catalog (`kjump_abi::fault`): `kjump.fault=NAME`
//! makes the kernel fail right after boot (or, with `kjump.fault_cycle=`,
//! when the ping-pong scenario reaches that cycle), so that tests can show
//! the VMM catches and reports each kind of guest failure. The jump faults
//! are the scenario's (kexec.rs).

use core::arch::asm;

use kjump_abi::fault::{self, Fault, StopFault};

use crate::bootinfo::BootInfo;
use crate::{cpu, harness, idt, paging};

/// Fires the stop fault named by `kjump.fault=` at boot, unless it is
/// meant for a later cycle (`kjump.fault_cycle=`, see kexec.rs). Only
/// returns when there is none.
pub fn inject(boot: &BootInfo) {
    let Some(name) = boot.fault() else { return };
    match Fault::parse(name) {
        Some(Fault::Stop(f)) if boot.arg(fault::CYCLE_KEY).is_none() => fire(f),
        Some(_) => log::info!("kjump.fault={name} is left to the scenario"),
        None => log::warn!("kjump.fault={name}: no such fault"),
    }
}

/// Makes the kernel fail in the way `fault` names; never returns.
pub fn fire(fault: StopFault) -> ! {
    log::info!("injecting fault {fault:?}");
    match fault {
        StopFault::Ud2 => {
            // SAFETY: ud2 raises #UD, which the IDT handler reports; it never
            // returns here.
            unsafe { asm!("ud2", options(nomem, nostack, noreturn)) }
        }
        StopFault::Panic => panic!("injected panic"),
        StopFault::Hang => cpu::spin_forever(),
        StopFault::Triple => {
            idt::load_empty();
            // SAFETY: with no IDT, #UD escalates to a triple fault; the CPU
            // shuts down and never comes back here.
            unsafe { asm!("ud2", options(nomem, nostack, noreturn)) }
        }
        StopFault::WildPointer => {
            harness::wild_pointer();
            // The VMM must end the run on the bad message; if it does not,
            // stop without a verdict.
            cpu::halt_forever()
        }
        StopFault::PageFault => {
            let addr = paging::mapped_top();
            let _value: u64;
            // SAFETY: `addr` is the first address the kernel's identity map
            // leaves unmapped: the read raises #PF, which the IDT handler
            // reports; it never completes.
            unsafe {
                asm!("mov {}, [{}]", out(reg) _value, in(reg) addr, options(nostack, readonly))
            };
            unreachable!("the read at {addr:#x} above the identity map did not fault");
        }
        StopFault::Flood => flood(),
        StopFault::DoubleFault => {
            // A push stores below RSP: keep the whole slot above the map.
            let top = paging::mapped_top() + 0x1000;
            // SAFETY: the push to an unmapped stack faults, and so does the
            // delivery of that #PF: the CPU raises #DF, which the IDT sends
            // to its IST stack; the handler reports it and never returns.
            unsafe { asm!("mov rsp, {}", "push 0", in(reg) top, options(noreturn)) }
        }
    }
}

/// The `flood` fault: every kind of chatter the harness takes, forever,
/// with a checkpoint never reached. The texts try to drive the terminal
/// (clear the screen, set the title, forge kjump's verdict line); the VMM
/// must print them escaped and stop the kernel by its watchdog.
fn flood() -> ! {
    const HOSTILE: &str = "\x1b[2J\x1b]0;kjump-owned\x07\rkjump: ping-pong: pass";
    let role = crate::bootinfo::get().map_or(kjump_abi::abi::Role::A, |b| b.role);
    let mut n = 0u64;
    loop {
        harness::hello(role);
        harness::log(HOSTILE);
        harness::progress(n);
        crate::println!("{HOSTILE} #{n}");
        n += 1;
    }
}
