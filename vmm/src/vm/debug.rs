//! Guest debugging through KVM: hardware breakpoints and watchpoints in
//! DR0–DR3, single-step, `KVM_EXIT_DEBUG` decoded, the vCPU's registers
//! and the guest's memory at virtual addresses, for a [`Debugger`] (the gdb
//! stub, `crate::gdb`) that the run loop hands every stop to.
//!
//! KVM's guest debugging (`KVM_SET_GUEST_DEBUG`, Linux
//! `Documentation/virt/kvm/api.rst`): with `KVM_GUESTDBG_USE_HW_BP` the
//! VMM's `debugreg[0..4]` and `debugreg[7]` are loaded while the guest runs
//! (the guest's own debug registers are kept apart and are what the capture
//! reads), and a hit exits with `KVM_EXIT_DEBUG` instead of a #DB in the
//! guest. An execution breakpoint is fault-like (SDM vol. 3B, 17.3.1.1): it
//! fires before the instruction and again on resume, so a guest resumed at
//! an enabled breakpoint first runs one instruction single-stepped with that
//! breakpoint left out. Data breakpoints are trap-like: the stop is after
//! the access. `int3` is not emulated by the software KVM of the test
//! machines, so gdb's software breakpoints are hardware ones too.
//!
//! That software KVM honours execution breakpoints and single-steps only in
//! guest ring 0 (which it emulates; ring 3 runs natively and is stepped
//! over as one instruction), and no data breakpoints at all. So while a
//! write watchpoint is set the guest is single-stepped and the watched
//! bytes are compared after every step: a write in ring 0 stops right
//! after its instruction, one in ring 3 at the first ring-0 instruction
//! after it. The debug registers are programmed too, which is all a
//! hardware KVM needs.
//!
//! The debugger stops the guest only between two `KVM_RUN`s, so the oracle
//! always sees a checkpoint as the guest left it; while it is stopped the
//! watchdog is held ([`crate::vm::watchdog::StopFlag::hold`]).

use kvm_bindings::{
    KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP, kvm_fpu, kvm_guest_debug,
    kvm_guest_debug_arch, kvm_msr_entry, kvm_regs, kvm_sregs,
};
use vm_memory::{Bytes, GuestAddress};

use super::vcpu::{GuestFault, msr};
use super::{Vm, VmError, kvm_err};
use kjump_core::paging::{self, PagingRegs, WalkError};

/// DR6.B0..B3: which of DR0–DR3 matched.
const DR6_HITS: u64 = 0xf;
/// DR6.BS: the exit is a single step.
const DR6_BS: u64 = 1 << 14;
/// DR7 bit 10 is always one; GE (bit 9) asks for exact data breakpoints.
const DR7_FIXED: u64 = (1 << 10) | (1 << 9);
/// The #DB vector, as `KVM_EXIT_DEBUG` reports it.
const DB_VECTOR: u32 = 1;

/// What a hardware breakpoint slot watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HwKind {
    /// An instruction fetch at the address (gdb's `break` and `hbreak`).
    Exec,
    /// A write of any of `len` bytes (`watch`).
    Write,
    /// A read or write (`awatch`; x86 has no read-only data breakpoint).
    Access,
}

/// One of DR0–DR3 in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwSlot {
    pub addr: u64,
    pub kind: HwKind,
    /// 1, 2, 4 or 8 bytes; 1 for an execution breakpoint.
    pub len: u64,
    /// Set for gdb's software breakpoints, which are hardware ones here.
    pub soft: bool,
}

/// The four debug address registers as the debugger set them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwBreakpoints {
    slots: [Option<HwSlot>; 4],
}

impl HwBreakpoints {
    /// Takes a free slot; false when all four are in use, or the slot is
    /// not one the hardware can watch (a data length other than 1, 2, 4, 8
    /// or an address not aligned to it).
    pub fn add(&mut self, slot: HwSlot) -> bool {
        let fits = match slot.kind {
            HwKind::Exec => slot.len == 1,
            HwKind::Write | HwKind::Access => {
                matches!(slot.len, 1 | 2 | 4 | 8) && slot.addr.is_multiple_of(slot.len)
            }
        };
        if !fits || self.slots.contains(&Some(slot)) {
            return fits;
        }
        match self.slots.iter_mut().find(|s| s.is_none()) {
            Some(free) => {
                *free = Some(slot);
                true
            }
            None => false,
        }
    }

    /// Frees the slot holding exactly `slot`; false when none does.
    pub fn remove(&mut self, slot: HwSlot) -> bool {
        match self.slots.iter_mut().find(|s| **s == Some(slot)) {
            Some(s) => {
                *s = None;
                true
            }
            None => false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// The write watchpoints (which are also checked by comparing).
    pub fn writes(&self) -> impl Iterator<Item = (usize, HwSlot)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.filter(|s| s.kind == HwKind::Write).map(|s| (i, s)))
    }

    /// Whether an execution breakpoint is set at `addr`.
    pub fn exec_at(&self, addr: u64) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|s| s.kind == HwKind::Exec && s.addr == addr)
    }

    /// DR0–DR3 and DR7 (SDM vol. 3B, 17.2.4): each used slot enabled
    /// globally, with its R/W and LEN fields; an execution breakpoint at
    /// `skip_exec_at` is left out (stepping over it).
    pub fn debugregs(&self, skip_exec_at: Option<u64>) -> [u64; 8] {
        let mut r = [0u64; 8];
        let mut dr7 = DR7_FIXED;
        for (i, s) in self.slots.iter().enumerate() {
            let Some(s) = s else { continue };
            if s.kind == HwKind::Exec && Some(s.addr) == skip_exec_at {
                continue;
            }
            r[i] = s.addr;
            let rw: u64 = match s.kind {
                HwKind::Exec => 0b00,
                HwKind::Write => 0b01,
                HwKind::Access => 0b11,
            };
            let len: u64 = match (s.kind, s.len) {
                (HwKind::Exec, _) | (_, 1) => 0b00,
                (_, 2) => 0b01,
                (_, 8) => 0b10,
                _ => 0b11,
            };
            dr7 |= 2 << (2 * i);
            dr7 |= (rw | len << 2) << (16 + 4 * i);
        }
        r[7] = dr7;
        r
    }

    /// The slot a debug exit reports: the lowest DR6.Bn of a used slot, or
    /// (when this KVM leaves DR6 empty) an execution breakpoint at `pc`.
    pub fn hit(&self, exit: &DebugExit) -> Option<HwSlot> {
        let by_dr6 = (0..4)
            .filter(|i| exit.dr6 & DR6_HITS & (1 << i) != 0)
            .find_map(|i| self.slots[i]);
        by_dr6.or_else(|| {
            (exit.dr6 & (DR6_HITS | DR6_BS) == 0)
                .then(|| {
                    self.slots
                        .iter()
                        .flatten()
                        .find(|s| s.kind == HwKind::Exec && s.addr == exit.pc)
                        .copied()
                })
                .flatten()
        })
    }
}

/// A `KVM_EXIT_DEBUG`, as a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugExit {
    /// The exception vector (1: #DB, 3: #BP).
    pub exception: u32,
    pub pc: u64,
    pub dr6: u64,
}

impl DebugExit {
    /// Whether the exit is the end of a single step.
    fn is_step(&self) -> bool {
        self.exception == DB_VECTOR && self.dr6 & DR6_BS != 0
    }
}

/// Why the guest is stopped for the debugger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The run starts stopped (`--gdb`), or a dump's VM (`resume --gdb`).
    Attach,
    /// One instruction ran (`stepi`).
    Step,
    /// An execution breakpoint; the instruction has not run.
    Breakpoint { addr: u64, soft: bool },
    /// A data breakpoint; the access is done, `rip` is past it.
    Watchpoint { addr: u64, kind: HwKind },
    /// The debugger asked (gdb's Ctrl-C).
    Interrupt,
    /// The oracle found a mismatch at this checkpoint; the run is over.
    Mismatch,
}

/// What the debugger wants when it lets the guest go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Resume {
    /// Run to the next breakpoint, watchpoint or interrupt.
    #[default]
    Continue,
    /// Run one instruction.
    Step,
    /// The session is over (detached, or the client went away): run on
    /// without breakpoints.
    Detach,
}

/// What the debugger's connection says while the guest runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Nothing: the guest runs on.
    Running,
    /// Stop the guest (gdb's Ctrl-C).
    Stop(Stop),
    /// The session ended (the client went away): run on without it.
    Ended,
}

/// A debugger the run loop hands its stops to (the gdb stub). It runs on
/// the vCPU thread with the VM in hand; while it serves a stop the guest
/// does not run and the watchdog is held.
pub trait Debugger: Send {
    /// The guest stopped for `why`: serve the debugger until it lets the
    /// guest go.
    fn stopped(&mut self, vm: &mut Vm, why: Stop) -> Result<Resume, VmError>;
    /// Between two `KVM_RUN`s while the guest runs: has the debugger said
    /// anything? Must not block.
    fn poll(&mut self, vm: &mut Vm) -> Result<Poll, VmError>;
    /// The run is over with this exit code while the debugger is attached.
    fn finish(&mut self, vm: &mut Vm, exit_code: u8);
}

/// The VM's debugging state: the debugger, its breakpoints, how the guest
/// was let go, and what the debugger changed.
#[derive(Default)]
pub(super) struct Debugging {
    hook: Option<Box<dyn Debugger>>,
    hw: HwBreakpoints,
    mode: Resume,
    /// The debugger asked for this when it let the guest go.
    requested: Option<Resume>,
    /// An execution breakpoint at this address is left out until one
    /// instruction has run (the guest was resumed on it).
    step_over: Option<u64>,
    /// A stop to hand the debugger before the next `KVM_RUN`.
    pending: Option<Stop>,
    /// What `KVM_SET_GUEST_DEBUG` was last given.
    applied: Option<(u32, [u64; 8])>,
    /// The bytes under each write watchpoint when last looked at (`None`
    /// where they do not translate).
    watched: [Option<Vec<u8>>; 4],
    /// The VMM's own execution breakpoint ([`Vm::set_exec_breakpoint`]),
    /// in a debug register the debugger leaves free.
    pub(super) vmm_break: Option<u64>,
    /// What the debugger changed in the guest, for the verdict.
    changes: Vec<String>,
}

/// The vCPU's registers as the debugger sees them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CpuRegs {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: kvm_fpu,
    pub kernel_gs_base: u64,
}

/// Why the debugger cannot write guest memory.
#[derive(Debug, thiserror::Error)]
pub enum DebugMemError {
    #[error(transparent)]
    Walk(#[from] WalkError),
    #[error("cannot read the vCPU's control registers")]
    Regs(#[source] kvm_ioctls::Error),
}

impl Debugging {
    /// Whether the run loop must ask [`Vm::debug_serve`] before a run.
    pub(super) fn active(&self) -> bool {
        self.hook.is_some() || self.pending.is_some()
    }
}

impl Vm {
    /// Hands the run's stops to `hook` from now on; with `stop`, the guest
    /// is stopped for it before it runs again.
    pub fn attach_debugger(&mut self, hook: Box<dyn Debugger>, stop: Option<Stop>) {
        self.debug.hook = Some(hook);
        self.debug.pending = stop;
        self.debug.mode = Resume::Continue;
    }

    /// Whether a debugger is attached.
    pub fn debugger_attached(&self) -> bool {
        self.debug.hook.is_some()
    }

    /// Stops for the debugger now, outside the run loop (at a mismatch),
    /// and serves it until it lets go.
    pub fn serve_debugger(&mut self, why: Stop) -> Result<Resume, VmError> {
        self.debug.pending = Some(why);
        self.debug_serve()?;
        Ok(self.debug.mode)
    }

    /// The run is over: tells an attached debugger the exit code and ends
    /// the session.
    pub fn finish_debugging(&mut self, exit_code: u8) {
        if let Some(mut hook) = self.debug.hook.take() {
            hook.finish(self, exit_code);
        }
        self.end_debugging();
    }

    /// When kjump was told to stop (^C, SIGTERM) while the debugger waits:
    /// the error that ends the run, with the registers.
    pub fn stop_requested_error(&mut self) -> Option<VmError> {
        let fault = GuestFault::from(self.stop.reason()?);
        Some(self.guest_error(fault))
    }

    /// What the debugger changed in the guest (registers, memory).
    pub fn debugger_changes(&self) -> &[String] {
        &self.debug.changes
    }

    /// Records a change the debugger made (`rbx 0x1 -> 0x2`).
    pub fn note_debugger_change(&mut self, what: String) {
        log::warn!("the debugger changed the guest: {what}");
        self.debug.changes.push(what);
    }

    /// The debugger's breakpoints and watchpoints (applied at the next run).
    pub fn hw_breakpoints(&mut self) -> &mut HwBreakpoints {
        &mut self.debug.hw
    }

    /// How the debugger lets the guest go, once it is done (gdb's
    /// `continue` or `stepi`).
    pub fn request_resume(&mut self, how: Resume) {
        self.debug.requested = Some(how);
    }

    /// Takes what [`Vm::request_resume`] asked.
    pub fn take_resume_request(&mut self) -> Option<Resume> {
        self.debug.requested.take()
    }

    /// The vCPU's registers now.
    pub fn cpu_regs(&self) -> Result<CpuRegs, VmError> {
        let v = &self.vcpu;
        let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_msr_entry {
            index: msr::KERNEL_GS_BASE,
            ..Default::default()
        }])
        .expect("one MSR entry fits");
        let n = v
            .get_msrs(&mut msrs)
            .map_err(kvm_err("read KERNEL_GS_BASE"))?;
        Ok(CpuRegs {
            regs: v.get_regs().map_err(kvm_err("read the registers"))?,
            sregs: v
                .get_sregs()
                .map_err(kvm_err("read the special registers"))?,
            fpu: v.get_fpu().map_err(kvm_err("read the FPU state"))?,
            kernel_gs_base: if n == 1 { msrs.as_slice()[0].data } else { 0 },
        })
    }

    /// Sets the parts of `new` that differ from the vCPU's registers now.
    pub fn set_cpu_regs(&mut self, new: &CpuRegs) -> Result<(), VmError> {
        let old = self.cpu_regs()?;
        let v = &self.vcpu;
        if new.regs != old.regs {
            v.set_regs(&new.regs)
                .map_err(kvm_err("set the registers"))?;
        }
        if new.sregs != old.sregs {
            v.set_sregs(&new.sregs)
                .map_err(kvm_err("set the special registers"))?;
        }
        if new.fpu != old.fpu {
            v.set_fpu(&new.fpu).map_err(kvm_err("set the FPU state"))?;
        }
        if new.kernel_gs_base != old.kernel_gs_base {
            let msrs = kvm_bindings::Msrs::from_entries(&[kvm_msr_entry {
                index: msr::KERNEL_GS_BASE,
                data: new.kernel_gs_base,
                ..Default::default()
            }])
            .expect("one MSR entry fits");
            v.set_msrs(&msrs).map_err(kvm_err("set KERNEL_GS_BASE"))?;
        }
        Ok(())
    }

    fn paging_regs(&self) -> Result<PagingRegs, kvm_ioctls::Error> {
        let s = self.vcpu.get_sregs()?;
        Ok(PagingRegs {
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
        })
    }

    /// Reads guest memory at virtual `addr`, translated through the
    /// guest's page tables now; returns how many bytes could be read (a
    /// prefix of `buf`) and, when not all, why the next one cannot.
    pub fn read_virtual(&self, addr: u64, buf: &mut [u8]) -> (usize, Option<String>) {
        let regs = match self.paging_regs() {
            Ok(r) => r,
            Err(e) => return (0, Some(format!("cannot read the control registers: {e}"))),
        };
        let (pieces, err) = paging::pieces(&self.mem, &regs, addr, buf.len());
        let mut done = 0;
        for (phys, n) in pieces {
            if self
                .mem
                .read_slice(&mut buf[done..done + n], GuestAddress(phys))
                .is_err()
            {
                return (done, Some(format!("cannot read guest RAM at {phys:#x}")));
            }
            done += n;
        }
        (done, err.map(|e| e.to_string()))
    }

    /// Writes `data` to guest memory at virtual `addr`: all of it or, when
    /// any byte does not translate, none. Returns whether any byte changed.
    pub fn write_virtual(&self, addr: u64, data: &[u8]) -> Result<bool, DebugMemError> {
        let regs = self.paging_regs().map_err(DebugMemError::Regs)?;
        let (pieces, err) = paging::pieces(&self.mem, &regs, addr, data.len());
        if let Some(e) = err {
            return Err(e.into());
        }
        let mut done = 0;
        let mut changed = false;
        for (phys, n) in pieces {
            let mut old = vec![0u8; n];
            let at = GuestAddress(phys);
            let mapped = |_| WalkError::OutsideRam { addr, phys };
            self.mem.read_slice(&mut old, at).map_err(mapped)?;
            if old != data[done..done + n] {
                self.mem
                    .write_slice(&data[done..done + n], at)
                    .map_err(mapped)?;
                changed = true;
            }
            done += n;
        }
        Ok(changed)
    }

    /// Before a `KVM_RUN` with a debugger attached: asks it whether it
    /// wants the guest stopped, serves a pending stop, and gives KVM the
    /// breakpoints and single-step the debugger asked for.
    pub(super) fn debug_serve(&mut self) -> Result<(), VmError> {
        if self.debug.pending.is_none() {
            let Some(mut hook) = self.debug.hook.take() else {
                return Ok(());
            };
            let polled = hook.poll(self);
            self.debug.hook = Some(hook);
            match polled? {
                Poll::Running => {}
                Poll::Stop(why) => self.debug.pending = Some(why),
                Poll::Ended => {
                    self.end_debugging();
                    return Ok(());
                }
            }
        }
        if let Some(why) = self.debug.pending.take() {
            let Some(mut hook) = self.debug.hook.take() else {
                return Ok(());
            };
            let served = {
                // The watchdog does not count time in the debugger.
                let _held = self.stop.hold();
                hook.stopped(self, why)
            };
            self.debug.hook = Some(hook);
            match served? {
                Resume::Detach => {
                    self.end_debugging();
                    return Ok(());
                }
                how => {
                    self.debug.mode = how;
                    let rip = self
                        .vcpu
                        .get_regs()
                        .map_err(kvm_err("read the registers"))?
                        .rip;
                    self.debug.step_over = self.debug.hw.exec_at(rip).then_some(rip);
                    self.watched_changed();
                }
            }
        }
        self.apply_guest_debug()
    }

    /// Gives KVM the breakpoints and single-step now wanted, if they changed.
    pub(super) fn apply_guest_debug(&mut self) -> Result<(), VmError> {
        let d = &self.debug;
        let mut debugreg = d.hw.debugregs(d.step_over);
        if let Some(a) = d.vmm_break {
            // The first slot the debugger does not use (its fourth gives
            // way while the VMM's breakpoint is armed).
            let i = (0..4)
                .find(|&i| debugreg[7] & (3 << (2 * i)) == 0)
                .unwrap_or_else(|| {
                    log::warn!(
                        "gdb: the VMM needs DR3 for a moment; gdb's fourth breakpoint is off"
                    );
                    3
                });
            debugreg[i] = a;
            debugreg[7] &= !((0xf << (16 + 4 * i)) | (3 << (2 * i)));
            debugreg[7] |= DR7_FIXED | (2 << (2 * i));
        }
        let mut control = 0;
        if d.hook.is_some() || d.vmm_break.is_some() {
            control = KVM_GUESTDBG_ENABLE;
            if debugreg[7] & 0xff != 0 {
                control |= KVM_GUESTDBG_USE_HW_BP;
            }
        }
        if d.hook.is_some() {
            let watching = d.hw.writes().next().is_some();
            if d.mode == Resume::Step || d.step_over.is_some() || watching {
                control |= KVM_GUESTDBG_SINGLESTEP;
            }
        }
        let want = (control, debugreg);
        if d.applied == Some(want) || (d.applied.is_none() && control == 0) {
            return Ok(());
        }
        let dbg = kvm_guest_debug {
            control,
            pad: 0,
            arch: kvm_guest_debug_arch { debugreg },
        };
        self.vcpu.set_guest_debug(&dbg).map_err(kvm_err(
            "set the guest debug registers (KVM_SET_GUEST_DEBUG)",
        ))?;
        self.debug.applied = Some(want);
        Ok(())
    }

    /// A `KVM_EXIT_DEBUG`: the VMM's own breakpoint (its address, for the
    /// run loop to return), or the stop it means for the debugger, or
    /// nothing (the single step over a breakpoint the guest was resumed
    /// on).
    pub(super) fn debug_exit(&mut self, exit: DebugExit) -> Result<Option<u64>, VmError> {
        if let Some(a) = self.debug.vmm_break.filter(|&a| a == exit.pc) {
            let d = &mut self.debug;
            if d.hook.is_some() {
                // The debugger sees its own stop there after the VMM's.
                if d.hw.exec_at(a) {
                    d.pending = Some(Stop::Breakpoint {
                        addr: a,
                        soft: false,
                    });
                } else if d.mode == Resume::Step && exit.is_step() {
                    d.pending = Some(Stop::Step);
                }
                d.step_over = None;
            }
            return Ok(Some(a));
        }
        if self.debug.hook.is_none() {
            return Err(self.guest_error(GuestFault::UnexpectedExit(format!(
                "KVM_EXIT_DEBUG without a debugger: {exit:?}"
            ))));
        }
        // A write under a watchpoint that the debug registers missed.
        let compared = if exit.is_step() {
            self.watched_changed()
        } else {
            None
        };
        let d = &mut self.debug;
        let over = d.step_over.take();
        if let Some(slot) =
            d.hw.hit(&exit)
                .filter(|s| Some(s.addr) != over)
                .or(compared)
        {
            d.pending = Some(match slot.kind {
                HwKind::Exec => Stop::Breakpoint {
                    addr: slot.addr,
                    soft: slot.soft,
                },
                kind => Stop::Watchpoint {
                    addr: slot.addr,
                    kind,
                },
            });
        } else if d.mode == Resume::Step || !exit.is_step() {
            // A step the debugger asked for, or a #DB nothing explains
            // (reported as a plain SIGTRAP).
            d.pending = Some(Stop::Step);
        }
        // Otherwise: the step over a breakpoint while continuing is done;
        // the breakpoint goes back in at the next run.
        Ok(None)
    }

    /// Reads the bytes under each write watchpoint; returns the first
    /// watchpoint whose bytes changed since the last look.
    fn watched_changed(&mut self) -> Option<HwSlot> {
        let mut changed = None;
        let slots: Vec<(usize, HwSlot)> = self.debug.hw.writes().collect();
        let mut seen = [const { None }; 4];
        for (i, slot) in slots {
            let mut now = vec![0u8; slot.len as usize];
            let now = match self.read_virtual(slot.addr, &mut now) {
                (n, _) if n == now.len() => Some(now),
                _ => None,
            };
            if let (Some(old), Some(new)) = (&self.debug.watched[i], &now)
                && old != new
                && changed.is_none()
            {
                changed = Some(slot);
            }
            // Where the bytes do not translate now, keep the last value.
            seen[i] = now.or_else(|| self.debug.watched[i].take());
        }
        self.debug.watched = seen;
        changed
    }

    /// Ends the debugging session: no debugger, no breakpoints, no step.
    fn end_debugging(&mut self) {
        let d = &mut self.debug;
        d.hook = None;
        d.hw = HwBreakpoints::default();
        d.mode = Resume::Continue;
        d.pending = None;
        d.step_over = None;
        d.requested = None;
        d.watched = Default::default();
        if let Err(e) = self.apply_guest_debug() {
            log::warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(addr: u64) -> HwSlot {
        HwSlot {
            addr,
            kind: HwKind::Exec,
            len: 1,
            soft: false,
        }
    }

    #[test]
    fn four_slots_and_no_more() {
        let mut hw = HwBreakpoints::default();
        assert!(hw.is_empty());
        for a in 0..4 {
            assert!(hw.add(exec(0x1000 + a)));
        }
        assert!(hw.add(exec(0x1002)), "the same breakpoint again is fine");
        assert!(!hw.add(exec(0x2000)), "a fifth does not fit");
        assert!(hw.remove(exec(0x1001)));
        assert!(!hw.remove(exec(0x1001)));
        assert!(hw.add(exec(0x2000)));
        assert!(hw.exec_at(0x2000) && !hw.exec_at(0x1001));
    }

    #[test]
    fn data_breakpoints_must_fit_the_hardware() {
        let mut hw = HwBreakpoints::default();
        let w = |addr, len| HwSlot {
            addr,
            kind: HwKind::Write,
            len,
            soft: false,
        };
        assert!(hw.add(w(0x2000, 8)));
        assert!(!hw.add(w(0x2004, 8)), "unaligned");
        assert!(!hw.add(w(0x2000, 16)), "too long");
        assert!(!hw.add(w(0x2000, 3)));
        assert!(!hw.add(HwSlot { len: 4, ..exec(0) }));
    }

    #[test]
    fn dr7_encodes_enable_type_and_length() {
        let mut hw = HwBreakpoints::default();
        hw.add(exec(0x20_1000));
        hw.add(HwSlot {
            addr: 0x21_2008,
            kind: HwKind::Write,
            len: 8,
            soft: false,
        });
        hw.add(HwSlot {
            addr: 0x3000,
            kind: HwKind::Access,
            len: 4,
            soft: false,
        });
        let r = hw.debugregs(None);
        assert_eq!(&r[..4], &[0x20_1000, 0x21_2008, 0x3000, 0]);
        // G0 G1 G2; slot 1: RW=01 LEN=10 (8 bytes); slot 2: RW=11 LEN=11.
        assert_eq!(r[7], 0x600 | 0b10_1010 | (0b1001 << 20) | (0b1111 << 24));
        // Stepping over the execution breakpoint leaves it out.
        let r = hw.debugregs(Some(0x20_1000));
        assert_eq!(r[0], 0);
        assert_eq!(r[7] & 0b11, 0);
        assert_eq!(
            HwBreakpoints::default().debugregs(None),
            [0, 0, 0, 0, 0, 0, 0, 0x600]
        );
    }

    #[test]
    fn a_debug_exit_names_its_slot() {
        let mut hw = HwBreakpoints::default();
        hw.add(exec(0x20_1000));
        let w = HwSlot {
            addr: 0x21_2008,
            kind: HwKind::Write,
            len: 8,
            soft: false,
        };
        hw.add(w);
        let exit = |pc, dr6| DebugExit {
            exception: 1,
            pc,
            dr6,
        };
        assert_eq!(hw.hit(&exit(0x20_5000, 0xffff_0ff2)), Some(w));
        assert_eq!(hw.hit(&exit(0x20_1000, 0xffff_0ff1)), Some(exec(0x20_1000)));
        // A KVM that leaves DR6 empty: the execution breakpoint at pc.
        assert_eq!(hw.hit(&exit(0x20_1000, 0)), Some(exec(0x20_1000)));
        assert_eq!(hw.hit(&exit(0x20_1000, DR6_BS)), None, "a step");
        assert!(exit(0, DR6_BS | 0xffff_0ff0).is_step());
        assert!(!exit(0, 0xffff_0ff1).is_step());
    }
}
