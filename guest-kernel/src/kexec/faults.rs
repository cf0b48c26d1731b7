//! The jump faults of the catalog (`kjump_abi::fault`) in a kernel's jump
//! loop: which one this kernel was given, and in which cycle it is armed.
//! The relocation and re-entry code read the armed bits from the control
//! page (`control::DATA_FAULT`); the stop faults fire here, when the
//! kernel arrives in their cycle.

use kjump_abi::cmdline;
use kjump_abi::control;
use kjump_abi::fault::{self, Fault, JumpFault};

use super::phys_write_u64;
use crate::bootinfo::BootInfo;

/// The fault this kernel was asked to have (`kjump.fault=`, for B
/// `kjump.b.fault=` on A's) and the cycle it is armed in
/// (`kjump.fault_cycle=`; every cycle when absent): see
/// `kjump_abi::fault`. kjump must catch each.
#[derive(Clone, Copy)]
pub(super) struct Injected {
    fault: Option<Fault>,
    cycle: Option<u64>,
}

impl Injected {
    pub(super) fn from_cmdline(boot: &BootInfo) -> Self {
        let fault = cmdline::get(boot.cmdline, fault::KEY).and_then(Fault::parse);
        let cycle = cmdline::get(boot.cmdline, fault::CYCLE_KEY).and_then(cmdline::parse_u64);
        if let Some(f) = fault {
            crate::println!(
                "{}: INJECTED FAULT: {f:?}{}",
                boot.role.name(),
                if cycle.is_some() { " in one cycle" } else { "" }
            );
        }
        Self { fault, cycle }
    }

    /// The fault this kernel was given, armed or not.
    pub(super) fn fault(&self) -> Option<Fault> {
        self.fault
    }

    fn armed(&self, cycle: u64) -> bool {
        self.cycle.is_none_or(|c| c == cycle)
    }

    /// The jump fault armed for the kernel's jump in `cycle`.
    pub(super) fn jump(&self, cycle: u64) -> Option<JumpFault> {
        match self.fault {
            Some(Fault::Jump(j)) if self.armed(cycle) => Some(j),
            _ => None,
        }
    }

    /// Arms the relocation and re-entry code for the jump in `cycle` (or
    /// disarms it).
    pub(super) fn arm(&self, cp: u64, cycle: u64) {
        phys_write_u64(
            cp + control::DATA_FAULT,
            self.jump(cycle).map_or(0, JumpFault::mask),
        );
    }

    /// The kernel has arrived in `cycle` (A: back from B; B: booted or
    /// resumed): a stop fault chosen for this cycle fires now. (Without a
    /// cycle, stop faults fired at boot.)
    pub(super) fn arrived(&self, cycle: u64) {
        if let (Some(Fault::Stop(f)), Some(c)) = (self.fault, self.cycle)
            && c == cycle
        {
            crate::fault::fire(f)
        }
    }
}
