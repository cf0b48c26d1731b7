//! The VM as gdbstub's target: registers, memory at guest-virtual
//! addresses, hardware breakpoints and watchpoints, continue and step, all
//! through [`Vm`]'s debugging methods ([`crate::vm::debug`]).

use gdbstub::common::Signal;
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep,
    SingleThreadSingleStepOps,
};
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::{Target, TargetError, TargetResult};

use super::arch::{KjumpX86_64, Regs};
use crate::vm::Vm;
use crate::vm::debug::{HwKind, HwSlot, Resume};

/// EFAULT: what gdb gets for memory that does not translate.
const EFAULT: u8 = 14;

/// A fatal error of the target: the session cannot go on.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TargetFailure(pub String);

impl Target for Vm {
    type Arch = KjumpX86_64;
    type Error = TargetFailure;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }
}

fn fatal(e: impl std::fmt::Display) -> TargetError<TargetFailure> {
    TargetError::Fatal(TargetFailure(e.to_string()))
}

impl SingleThreadBase for Vm {
    fn read_registers(&mut self, regs: &mut Regs) -> TargetResult<(), Self> {
        *regs = Regs::from_cpu(&self.cpu_regs().map_err(fatal)?);
        Ok(())
    }

    fn write_registers(&mut self, regs: &Regs) -> TargetResult<(), Self> {
        let now = self.cpu_regs().map_err(fatal)?;
        let changes = Regs::from_cpu(&now).changes(regs);
        if changes.is_empty() {
            return Ok(());
        }
        self.set_cpu_regs(&regs.apply(&now)).map_err(|e| {
            log::warn!("gdb: {e}");
            TargetError::Errno(EFAULT)
        })?;
        let rip = now.regs.rip;
        for c in changes {
            self.note_debugger_change(format!("register {c} (stopped at rip {rip:#x})"));
        }
        Ok(())
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        match self.read_virtual(start, data) {
            (0, Some(why)) => {
                log::debug!("gdb: read of {start:#x}: {why}");
                Err(TargetError::Errno(EFAULT))
            }
            (n, _) => Ok(n),
        }
    }

    fn write_addrs(&mut self, start: u64, data: &[u8]) -> TargetResult<(), Self> {
        match self.write_virtual(start, data) {
            Ok(false) => Ok(()),
            Ok(true) => {
                let rip = self.cpu_regs().map(|c| c.regs.rip).unwrap_or_default();
                self.note_debugger_change(format!(
                    "memory [{start:#x}..{:#x}) (stopped at rip {rip:#x})",
                    start + data.len() as u64
                ));
                Ok(())
            }
            Err(e) => {
                log::debug!("gdb: write of {start:#x}: {e}");
                Err(TargetError::Errno(EFAULT))
            }
        }
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for Vm {
    fn resume(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        // A signal gdb passes is not delivered: there are no signals in a
        // kernel (gdb asks for one only if a stop had one and it was
        // not cleared).
        self.request_resume(Resume::Continue);
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for Vm {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.request_resume(Resume::Step);
        Ok(())
    }
}

impl Breakpoints for Vm {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

fn exec(addr: u64, soft: bool) -> HwSlot {
    HwSlot {
        addr,
        kind: HwKind::Exec,
        len: 1,
        soft,
    }
}

// gdb's software breakpoints (`break`) become hardware ones: this KVM does
// not emulate `int3`, and a hardware breakpoint needs no write to the
// guest's code (which the oracle would see).
impl SwBreakpoint for Vm {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.hw_breakpoints().add(exec(addr, true)))
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.hw_breakpoints().remove(exec(addr, true)))
    }
}

impl HwBreakpoint for Vm {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.hw_breakpoints().add(exec(addr, false)))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.hw_breakpoints().remove(exec(addr, false)))
    }
}

fn watch(addr: u64, len: u64, kind: WatchKind) -> Option<HwSlot> {
    let kind = match kind {
        WatchKind::Write => HwKind::Write,
        WatchKind::ReadWrite => HwKind::Access,
        // x86 debug registers cannot watch reads alone.
        WatchKind::Read => return None,
    };
    Some(HwSlot {
        addr,
        kind,
        len,
        soft: false,
    })
}

impl HwWatchpoint for Vm {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(watch(addr, len, kind).is_some_and(|s| self.hw_breakpoints().add(s)))
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(watch(addr, len, kind).is_some_and(|s| self.hw_breakpoints().remove(s)))
    }
}
