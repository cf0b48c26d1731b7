//! Fault switches for the harness's own tests: `kjump.fault=NAME` makes the
//! kernel misbehave right after boot, so that tests can show the VMM
//! catches and reports each kind of guest failure. Names this module does
//! not know are left to the scenario code (the kexec faults).

use core::arch::asm;

use super::bootinfo::BootInfo;
use super::{cpu, harness, idt, paging};

/// The boot-time faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootFault {
    /// Execute `ud2`: #UD, reported by the IDT handler.
    Ud2,
    /// `panic!("injected panic")`: reported by the panic handler.
    Panic,
    /// Spin forever with interrupts off and no `hlt`: the VMM's watchdog.
    Hang,
    /// Load a zero-limit IDT and fault: a triple fault (KVM_EXIT_SHUTDOWN).
    Triple,
    /// A harness message whose text pointer is far outside RAM.
    WildPointer,
    /// Read above the identity map: #PF with CR2 = that address.
    PageFault,
    /// Point RSP above the identity map and push: the #PF cannot be
    /// delivered on that stack, so the CPU raises #DF, which runs on its IST
    /// stack and is reported.
    DoubleFault,
}

impl BootFault {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "ud2" => Self::Ud2,
            "panic" => Self::Panic,
            "hang" => Self::Hang,
            "triple" => Self::Triple,
            "wild-pointer" => Self::WildPointer,
            "pf" => Self::PageFault,
            "df" => Self::DoubleFault,
            _ => return None,
        })
    }
}

/// Injects the fault named by `kjump.fault=`, if it is a boot fault. Only
/// returns when there is none.
pub fn inject(boot: &BootInfo) {
    let Some(name) = boot.fault() else { return };
    let Some(fault) = BootFault::parse(name) else {
        log::info!("kjump.fault={name} is not a boot fault; left to the scenario");
        return;
    };
    log::info!("injecting fault {fault:?}");
    match fault {
        BootFault::Ud2 => {
            // SAFETY: ud2 raises #UD, which the IDT handler reports; it never
            // returns here.
            unsafe { asm!("ud2", options(nomem, nostack, noreturn)) }
        }
        BootFault::Panic => panic!("injected panic"),
        BootFault::Hang => cpu::spin_forever(),
        BootFault::Triple => {
            idt::load_empty();
            // SAFETY: with no IDT, #UD escalates to a triple fault; the CPU
            // shuts down and never comes back here.
            unsafe { asm!("ud2", options(nomem, nostack, noreturn)) }
        }
        BootFault::WildPointer => {
            harness::wild_pointer();
            // The VMM must end the run on the bad message; if it does not,
            // stop without a verdict.
            cpu::halt_forever()
        }
        BootFault::PageFault => {
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
        BootFault::DoubleFault => {
            // A push stores below RSP: keep the whole slot above the map.
            let top = paging::mapped_top() + 0x1000;
            // SAFETY: the push to an unmapped stack faults, and so does the
            // delivery of that #PF: the CPU raises #DF, which the IDT sends
            // to its IST stack; the handler reports it and never returns.
            unsafe { asm!("mov rsp, {}", "push 0", in(reg) top, options(noreturn)) }
        }
    }
}
