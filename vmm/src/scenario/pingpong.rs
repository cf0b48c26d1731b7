//! The `ping-pong` scenario: A→B→A→B… with every checkpoint checked.
//!
//! The loop runs the VM to its next event. A kimage report goes to the
//! oracle; a checkpoint (see [`kjump_core::checkpoint`]) takes one path,
//! top-down ([`checkpoint`]): capture the machine, hand it and guest RAM to
//! the [`Oracle`], let a host-side fault land, write dumps, record the
//! checkpoint in the report. The first mismatch ends the run with exit
//! code 1 and a report.

use std::path::PathBuf;
use std::time::Instant;

use kjump_abi::control;
use kjump_core::checkpoint::{CheckpointId, Direction, Kernel, Tracker};
use kjump_core::dump::{self, DumpInput, RamSource, ResumeRecord};
use kjump_core::harness::HarnessEvent;
use kjump_core::kimage::Kimage;
use kjump_core::oracle::{Allowlist, KernelRecord, Oracle};
use kjump_core::report::{CheckpointRecord, Mismatch};
use kjump_core::state::MachineState;
use kjump_core::symbols::Symbols;

use crate::config::{DumpPolicy, RunConfig};
use crate::faults::HostFault;
use crate::progress::Progress;
use crate::scenario::{Outcome, RunError, RunState, Verdict, handle_message, run_tracked};
use crate::vm::{Vm, VmEvent};

/// Where a run resumed from a dump starts (`kjump resume`): the dump's
/// checkpoint, and what the oracle knew of each kernel there (kimages, the
/// record of the away kernel's last suspend, and of the dump's kernel if
/// it suspends there). Views are not given: the oracle records them from
/// the VM's RAM.
pub(crate) struct Seed {
    pub(crate) at: CheckpointId,
    pub(crate) kernels: [KernelRecord; 2],
}

/// A ping-pong run in progress: where the sequence is, the oracle, and the
/// host-side fault to inject.
struct PingPong<'a> {
    cfg: &'a RunConfig,
    tracker: Tracker,
    oracle: Oracle,
    injector: Injector,
    /// Bytes of dumps written so far (on disk), and how many.
    dumped: std::cell::Cell<(u64, u64)>,
    /// Harness time spent between checkpoints (kimage reports, B's first
    /// delivery), charged to the next checkpoint.
    carried: CheckpointRecord,
    /// The pages the VM keeps writable (A's kimage's, as last reported).
    kept: Vec<u64>,
}

/// Runs ping-pong on a booted VM.
pub fn run(
    vm: &mut Vm,
    run: &mut RunState,
    cfg: &RunConfig,
    kernel: &[u8],
) -> Result<Outcome, RunError> {
    run_from(vm, run, cfg, kernel, None)
}

/// Runs ping-pong on a booted VM, or (with a seed) on one built from a
/// dump, going on from the dump's checkpoint. `kernel` is the ELF the
/// symbols come from.
pub(crate) fn run_from(
    vm: &mut Vm,
    run: &mut RunState,
    cfg: &RunConfig,
    kernel: &[u8],
    seed: Option<Seed>,
) -> Result<Outcome, RunError> {
    let symbols = Symbols::from_elf(kernel).ok();
    vm.set_checkpoint_rip(
        symbols
            .as_ref()
            .and_then(|s| s.address_of("kjump_checkpoint")),
    );
    let mut oracle = Oracle::new(symbols, Allowlist::standard(), cfg.compare);
    if seed.is_none() && vm.dirty_log_covers_all_writes() {
        // A fresh VM: the first checkpoint's baseline costs the pages
        // written since boot, not RAM.
        oracle.ram_starts_zero();
    }
    *run.report() = kjump_core::report::Report::new(
        cfg.scenario.name(),
        cfg.cycles,
        if cfg.unchecked {
            "unchecked"
        } else {
            cfg.compare.name()
        },
        oracle.allowlist().entries(),
    );
    run.report().msrs_captured = vm.msr_index_list().to_vec();
    run.report().msrs_refused = vm.msrs_refused().to_vec();
    let mut pp = PingPong {
        cfg,
        tracker: Tracker::new(),
        oracle,
        injector: Injector::new(cfg),
        dumped: std::cell::Cell::new((0, 0)),
        carried: CheckpointRecord::default(),
        kept: Vec::new(),
    };
    let progress = Progress::new(cfg.cycles);
    if let Some(seed) = seed {
        pp.tracker = Tracker::resume_after(seed.at).ok_or(RunError::Protocol(
            "the dump's checkpoint is not one of the ping-pong sequence",
        ))?;
        let peer_away = pp.tracker.is_away(seed.at.kernel.peer());
        pp.oracle
            .seed(seed.at, seed.kernels, peer_away, vm.memory())?;
        vm.set_console_name(pp.tracker.running().name());
        run.set_cycles(pp.tracker.cycles_completed());
        progress.set_cycle(run.cycles);
    }
    loop {
        let (event, id) = run_tracked(vm, &mut pp.tracker)?;
        let id = match event {
            VmEvent::Message(HarnessEvent::Kimage { .. }) if cfg.unchecked => continue,
            VmEvent::Message(HarnessEvent::Kimage { args: a }) => {
                let t = Instant::now();
                let k = Kimage::read(vm.memory(), &a)?;
                let kernel = Kernel::from(k.role);
                if kernel != pp.tracker.running() {
                    return Err(RunError::Protocol(
                        "a kernel reported a kimage for the other role",
                    ));
                }
                log::debug!(
                    "kernel {} kimage: {} pages, control {:#x}",
                    kernel.name(),
                    k.parked.len(),
                    k.control
                );
                pp.oracle.kimage_reported(kernel, k, a);
                if kernel == Kernel::A {
                    // The relocation code rewrites these at every jump: no
                    // dirty-log fault for them; read at every checkpoint.
                    let pages = pp.oracle.rewritten_every_jump();
                    if pages != pp.kept {
                        vm.keep_writable(&pages);
                        pp.kept = pages;
                    }
                }
                pp.carried.exit_us += micros(t);
                continue;
            }
            // A kernel says hello once, when it boots, as itself: a hello in
            // the other's role would put the blame for what follows on it.
            VmEvent::Message(HarnessEvent::Hello { role, .. })
                if Kernel::from(role) != pp.tracker.running() =>
            {
                return Err(RunError::Protocol(
                    "a kernel said hello in the other kernel's role",
                ));
            }
            VmEvent::Message(ev) => {
                if let Some(verdict) = handle_message(vm, run, ev)? {
                    progress.finish();
                    return Ok(run.outcome(pp.judge_verdict(verdict), vm.console_name()));
                }
                continue;
            }
            VmEvent::Breakpoint { rip } => {
                if pp.oracle.delivery_entry() != Some(rip) {
                    return Err(RunError::Protocol(
                        "a breakpoint fired that the VMM did not set",
                    ));
                }
                let first = CheckpointId {
                    index: 0,
                    cycle: 1,
                    kernel: Kernel::A,
                    direction: Direction::Suspend,
                };
                let mismatches = first_delivery(vm, &mut pp.oracle, &mut pp.carried, rip, &first)?;
                if !mismatches.is_empty() {
                    progress.finish();
                    return Ok(failed(run, mismatches));
                }
                continue;
            }
            VmEvent::Checkpoint { .. } => {
                id.ok_or(RunError::Protocol("checkpoint without identity"))?
            }
        };
        vm.set_console_name(pp.tracker.running().name());
        let mismatches = checkpoint(vm, &mut pp, run, &id)?;
        run.set_cycles(pp.tracker.cycles_completed());
        progress.set_cycle(run.cycles);
        if !mismatches.is_empty() {
            progress.finish();
            return Ok(failed(run, mismatches));
        }
        // A checkpoint that advanced the sequence and passed: the run
        // moved forward, and the watchdog starts counting again.
        vm.advanced();
    }
}

/// The run failed with `mismatches`: into the report; the verdict names
/// the first, and the kernel whose state differs there.
fn failed(run: &mut RunState, mismatches: Vec<Mismatch>) -> Outcome {
    // The cycle that failed is not completed, even at its last checkpoint.
    run.set_cycles(run.cycles.min(mismatches[0].at.cycle.saturating_sub(1)));
    let n = mismatches.len();
    let first = mismatches[0].explain();
    let kernel = mismatches[0].kernel().to_owned();
    run.report().push_mismatches(mismatches);
    let why = format!(
        "{n} mismatch{}, the first: {}",
        if n == 1 { "" } else { "es" },
        first.lines().next().unwrap_or_default()
    );
    run.outcome(Verdict::Fail(why), &kernel)
}

/// Kernel b is about to run its first instruction, at `entry`: the VMM's
/// breakpoint stopped it there. Its memory must hold exactly what a's
/// kimage delivered (checked before b can run, so a relocation that
/// corrupts the first delivery is caught in the cycle of a's jump `after`,
/// not when b crashes). The harness time goes to `carried`.
pub(crate) fn first_delivery(
    vm: &mut Vm,
    oracle: &mut Oracle,
    carried: &mut CheckpointRecord,
    entry: u64,
    after: &CheckpointId,
) -> Result<Vec<Mismatch>, RunError> {
    vm.set_exec_breakpoint(None)?;
    let at = kjump_core::report::At {
        checkpoint: after.index,
        cycle: after.cycle,
        kernel: Kernel::B.name().to_owned(),
        direction: "first entry".to_owned(),
    };
    let mut t = Instant::now();
    let dirty = vm.dirty_pages()?;
    carried.dirty_log_us += lap(&mut t);
    let mut mismatches = oracle.observe_memory(vm.memory(), &dirty, &at)?;
    carried.store_us += lap(&mut t);
    let j = oracle.check_delivery(&at)?;
    carried.compare_us += lap(&mut t);
    log::info!(
        "kernel b entered at {entry:#x}: {} pages of its first delivery checked",
        j.pages_compared
    );
    mismatches.extend(j.mismatches);
    Ok(mismatches)
}

/// Flips a byte of B's page of the pattern where A's kimage keeps it
/// until the relocation code delivers it (`flip-b-image`, at A's suspend
/// before B boots); says what it did.
pub(crate) fn flip_b_image(vm: &Vm, oracle: &Oracle) -> Result<String, RunError> {
    let (home, sym) = pattern_target(oracle)?;
    let at = oracle.parked_at(Kernel::B, home);
    vm.flip_byte(at)?;
    Ok(format!(
        "flipped a byte of b's image at {home:#x} ({sym}), waiting at {at:#x} in a's source pages"
    ))
}

/// The byte the memory faults damage: in the kernels' pattern, by symbol.
fn pattern_target(oracle: &Oracle) -> Result<(u64, String), RunError> {
    let s = oracle
        .symbols()
        .ok_or(RunError::Protocol("no pattern symbol in the kernel"))?;
    let a = s
        .address_of_suffix("kexec::pattern::STATIC_PATTERN")
        .ok_or(RunError::Protocol("no pattern symbol in the kernel"))?
        + 0x123;
    Ok((a, s.lookup(a).unwrap_or_default()))
}

/// Microseconds since `t`.
pub(crate) fn micros(t: Instant) -> u64 {
    t.elapsed().as_micros() as u64
}

/// Microseconds since `t`, and `t` moved to now.
pub(crate) fn lap(t: &mut Instant) -> u64 {
    let us = micros(*t);
    *t = Instant::now();
    us
}

/// One checkpoint, top-down: capture → oracle → fault → dump → report.
fn checkpoint(
    vm: &mut Vm,
    pp: &mut PingPong<'_>,
    run: &mut RunState,
    id: &CheckpointId,
) -> Result<Vec<Mismatch>, RunError> {
    // The jump that ends here: the guest's time and the VMM's on its
    // exits, and harness work done on the way.
    let ran = vm.take_run_time();
    let carried = std::mem::take(&mut pp.carried);
    let mut rec = CheckpointRecord {
        index: id.index,
        cycle: id.cycle,
        kernel: id.kernel.name().to_owned(),
        direction: id.direction.name().to_owned(),
        answer: id.direction.answer(),
        t_us: micros(run.start),
        guest_us: ran.guest.as_micros() as u64,
        exit_us: ran.exits.as_micros() as u64 + carried.exit_us,
        ..carried
    };
    let mut t = Instant::now();
    if pp.cfg.unchecked {
        // --no-check: the same guests, nothing captured or compared.
        run.checkpoints += 1;
        run.report().push_checkpoint(rec);
        run.report().add_report_time(lap(&mut t));
        return Ok(Vec::new());
    }

    // Capture: the machine as the kernel left it at this instruction, and
    // what the guest wrote since the last checkpoint. (A device fault
    // lands before it, behind the kernel's back.)
    pp.injector.before_capture(vm, id)?;
    let machine = vm.capture_machine()?;
    rec.state_us += lap(&mut t);
    let dirty = vm.dirty_pages()?;
    rec.dirty_log_us += lap(&mut t);
    let at = kjump_core::report::At::of(id);
    let mut mismatches = pp.oracle.observe_memory(vm.memory(), &dirty, &at)?;
    run.report().pages_touched = pp.oracle.pages_touched();
    rec.store_us += lap(&mut t);
    if run.checkpoints == 0 {
        // The device fields that move with time, and their rules.
        let devices = machine.other_devices();
        for (field, reason) in kjump_core::devices::allowlist(&devices) {
            run.report()
                .allowlist
                .push(kjump_core::report::AllowedField {
                    field,
                    reason: reason.to_owned(),
                });
        }
    }
    rec.capture_us = rec.state_us + rec.dirty_log_us + rec.store_us;

    // The oracle: record the suspend or check the resume, and check the
    // kernel that is away.
    let judgement = pp.oracle.judge(id, &machine, vm.memory())?;
    mismatches.extend(judgement.mismatches);
    if id.index == 0 {
        // A jumps to B for the first time: B's memory is to be checked at
        // B's entry, before its first instruction.
        let entry =
            pp.oracle
                .read_control(vm.memory(), Kernel::A, control::DATA_PEER_ENTRY, false)?;
        pp.oracle.expect_delivery(entry)?;
        vm.set_exec_breakpoint(Some(entry))?;
    } else if id.kernel == Kernel::B && pp.oracle.delivery_pending() {
        // B ran without passing its entry: whatever entered it skipped the
        // check of its first delivery.
        vm.set_exec_breakpoint(None)?;
        mismatches.push(Mismatch {
            at: kjump_core::report::At::of(id),
            kind: kjump_core::report::MismatchKind::Entry,
            name: Some("b's first entry".to_owned()),
            address: pp.oracle.delivery_entry(),
            location: None,
            expected: format!("{:#x}", pp.oracle.delivery_entry().unwrap_or(0)),
            actual: "never executed".to_owned(),
            ranges: Vec::new(),
            hexdump: None,
            symbol: None,
            note: Some("kernel b reached its checkpoint without being entered where kernel a's jump said: its first delivery was not checked".to_owned()),
        });
    }
    rec.compare_us += lap(&mut t);
    run.report().excused_pages.extend(judgement.excused);

    // Host-side faults land after the state they damage was recorded.
    pp.injector.after_capture(vm, &pp.oracle, id)?;

    if pp.cfg.dump_dir.is_some() {
        let written = match pp.cfg.dump {
            DumpPolicy::EveryJump => pp.dump_now(vm, id, &machine)?,
            DumpPolicy::OnMismatch if !mismatches.is_empty() => {
                pp.dump_mismatch(vm, id, &machine)?
            }
            _ => Vec::new(),
        };
        run.report()
            .dumps
            .extend(written.iter().map(|p| p.display().to_string()));
    }

    run.checkpoints += 1;
    rec.rip = machine.vcpu().regs.rip;
    rec.dirty_pages = dirty.len() as u64;
    rec.pages_compared = judgement.pages_compared;
    rec.mismatches = mismatches.len() as u64;
    run.report().push_checkpoint(rec);
    run.report().add_report_time(lap(&mut t));
    Ok(mismatches)
}

impl PingPong<'_> {
    /// A's verdict, held to what the VMM saw: every cycle it was asked for
    /// must have been checked by the VMM too, and an injected fault must
    /// have been caught.
    fn judge_verdict(&self, verdict: Verdict) -> Verdict {
        match verdict {
            // A's own self-checks passed, but the VMM checked nothing.
            Verdict::Pass if self.cfg.unchecked => Verdict::Unchecked,
            Verdict::Pass if self.cfg.inject.is_some() => Verdict::Fail(format!(
                "the injected fault {} was not caught: the run passed",
                self.cfg
                    .inject
                    .as_ref()
                    .map_or(String::new(), |i| i.spec.clone())
            )),
            Verdict::Pass if self.tracker.cycles_completed() != self.cfg.cycles => {
                Verdict::Fail(format!(
                    "kernel a reported pass after {} verified cycles, {} were asked",
                    self.tracker.cycles_completed(),
                    self.cfg.cycles
                ))
            }
            v => v,
        }
    }

    fn dump_path(&self, id: &CheckpointId, what: &str) -> std::path::PathBuf {
        let dir = self
            .cfg
            .dump_dir
            .as_deref()
            .expect("dumps only with --dump-dir");
        crate::scenario::dump_path(dir, id, what)
    }

    fn write(
        &self,
        path: &std::path::Path,
        machine: &MachineState,
        id: &CheckpointId,
        mem: &dyn RamSource,
        size: u64,
        resume: Option<&ResumeRecord>,
    ) -> Result<(), RunError> {
        let kernel_name = crate::scenario::dump_kernel_name(self.cfg);
        let input = DumpInput {
            state: machine.vcpu(),
            id,
            jump_back_entry: self.oracle.jump_back_entry(id.kernel),
            resumable: true,
            memory: mem,
            kernel_name: &kernel_name,
            mem_size: size,
            kjump_version: env!("CARGO_PKG_VERSION"),
            resume,
        };
        if let Some(max) = self.cfg.dump_max_bytes {
            let (bytes, n) = self.dumped.get();
            // The next dump is about as large as the last ones.
            let next = bytes.checked_div(n).unwrap_or(0);
            if bytes + next > max {
                return Err(RunError::DumpSpace(format!(
                    "--dump-max-bytes {max}: {n} dump(s) took {bytes} bytes, the next would pass the budget; {} not written",
                    path.display()
                )));
            }
        }
        dump::write_dump(path, &input)?;
        log::info!("dump written: {}", path.display());
        let size = kjump_core::files::allocated_bytes(path).unwrap_or(0);
        let (bytes, n) = self.dumped.get();
        self.dumped.set((bytes + size, n + 1));
        Ok(())
    }

    fn resume_record(&self, id: &CheckpointId, machine: &MachineState) -> ResumeRecord {
        self.oracle
            .resume_record(self.cfg.scenario.name(), self.cfg.cycles, id, machine)
    }

    /// `--dump every-jump`: the VM as it is at this checkpoint, resumable.
    /// Returns the file written. After the first dump, the space the run's
    /// dumps will take is estimated from it: a run whose dumps would not
    /// fit on the file system (or in `--dump-max-bytes`) stops there, not
    /// when the disk is full.
    fn dump_now(
        &self,
        vm: &Vm,
        id: &CheckpointId,
        machine: &MachineState,
    ) -> Result<Vec<PathBuf>, RunError> {
        let path = self.dump_path(id, "");
        self.write(
            &path,
            machine,
            id,
            vm.memory(),
            vm.mem_size(),
            Some(&self.resume_record(id, machine)),
        )?;
        let (bytes, n) = self.dumped.get();
        if n == 1 {
            let total = 3 + 4 * self.cfg.cycles.saturating_sub(1);
            let left = total.saturating_sub(id.index + 1);
            let need = bytes.saturating_mul(left);
            let dir = self
                .cfg
                .dump_dir
                .as_deref()
                .unwrap_or(std::path::Path::new("."));
            let free = kjump_core::files::free_bytes(dir).unwrap_or(u64::MAX);
            let budget = self
                .cfg
                .dump_max_bytes
                .unwrap_or(u64::MAX)
                .saturating_sub(bytes);
            if need > free || need > budget {
                let fmt = crate::config::format_size;
                return Err(RunError::DumpSpace(format!(
                    "--dump every-jump would write about {} more in {left} dumps of ~{} each, but {} has {} free{}; use --dump on-mismatch, fewer --cycles, or more room",
                    fmt(need),
                    fmt(bytes),
                    dir.display(),
                    fmt(free),
                    self.cfg
                        .dump_max_bytes
                        .map(|m| format!(" and --dump-max-bytes is {}", fmt(m)))
                        .unwrap_or_default()
                )));
            }
        }
        Ok(vec![path])
    }

    /// `--dump on-mismatch`: the kernel when it jumped away (its registers
    /// and view) and as it is now. Returns the files written.
    fn dump_mismatch(
        &self,
        vm: &Vm,
        id: &CheckpointId,
        machine: &MachineState,
    ) -> Result<Vec<PathBuf>, RunError> {
        let mut written = Vec::new();
        // The kernel whose state differs: the resuming one, or else the
        // one that is away.
        let k = if id.direction == Direction::Resume {
            id.kernel
        } else {
            id.kernel.peer()
        };
        if let Some((at, left, ram)) = self.oracle.left(k, vm.memory()) {
            // A mix of then and now: for diffing, not for resuming.
            let path = self.dump_path(&at, "-left");
            self.write(&path, left, &at, &ram, vm.mem_size(), None)?;
            written.push(path);
        }
        let path = self.dump_path(id, "-found");
        self.write(
            &path,
            machine,
            id,
            vm.memory(),
            vm.mem_size(),
            Some(&self.resume_record(id, machine)),
        )?;
        written.push(path);
        Ok(written)
    }
}

/// Lands the run's host-side fault (`--inject`) at its moment, once.
struct Injector {
    fault: Option<HostFault>,
    cycle: u64,
    injected: Option<String>,
}

impl Injector {
    fn new(cfg: &RunConfig) -> Self {
        let inject = cfg.inject.as_ref();
        Self {
            fault: inject.and_then(|i| i.host().cloned()),
            cycle: inject.map_or(1, |i| i.host_cycle()),
            injected: None,
        }
    }

    fn due(&self, id: &CheckpointId) -> Option<&HostFault> {
        self.fault
            .as_ref()
            .filter(|_| self.injected.is_none() && id.cycle == self.cycle)
    }

    /// Device damage, before the capture: the kernel finds it at a resume.
    fn before_capture(&mut self, vm: &mut Vm, id: &CheckpointId) -> Result<(), RunError> {
        let note = match (self.due(id), id.kernel, id.direction) {
            (Some(HostFault::Device(field)), Kernel::A, Direction::Resume) => {
                vm.change_device_field(*field)?
            }
            (Some(HostFault::Vcpu(field)), Kernel::A, Direction::Resume)
                if field.kernel_restores() =>
            {
                vm.change_vcpu_field(*field)?
            }
            (Some(HostFault::UartLcr), Kernel::A, Direction::Resume) => {
                let mut s = vm.serial_state();
                let old = s.line_control;
                s.line_control ^= 0x04;
                vm.set_serial_state(&s)?;
                format!(
                    "changed the UART's LCR {old:#x} -> {:#x} as a resumed",
                    s.line_control
                )
            }
            _ => return Ok(()),
        };
        self.landed(note);
        Ok(())
    }

    /// Memory and vCPU damage, after the state it damages was recorded.
    fn after_capture(
        &mut self,
        vm: &mut Vm,
        oracle: &Oracle,
        id: &CheckpointId,
    ) -> Result<(), RunError> {
        let Some(fault) = self.due(id).cloned() else {
            return Ok(());
        };
        // Damage the away kernel's parked copy of its pattern: A's while B
        // runs (at B's suspend), B's while A runs (at A's resume).
        let flip = |vm: &Vm, victim: Kernel| -> Result<String, RunError> {
            let (home, sym) = pattern_target(oracle)?;
            let at = oracle.parked_at(victim, home);
            vm.flip_byte(at)?;
            Ok(format!(
                "flipped a byte of {}'s page {home:#x} ({sym}) parked at {at:#x}",
                victim.name()
            ))
        };
        let note = match (&fault, id.kernel, id.direction) {
            (HostFault::FlipA, Kernel::B, Direction::Suspend) => flip(vm, Kernel::A)?,
            (HostFault::FlipB, Kernel::A, Direction::Resume) => flip(vm, Kernel::B)?,
            (HostFault::FlipBImage, Kernel::A, Direction::Suspend) if id.index == 0 => {
                flip_b_image(vm, oracle)?
            }
            (HostFault::SavedReg(slot, name), Kernel::A, Direction::Suspend) => {
                let offset = control::CONTEXT + 8 * slot;
                let v = oracle.read_control(vm.memory(), Kernel::A, offset, false)?;
                let cp = oracle.kimage(Kernel::A).map_or(0, |k| k.control);
                vm.write_u64(cp + offset, v ^ 1)?;
                format!(
                    "changed a's saved {name} in its control page {cp:#x}: {v:#x} -> {:#x}",
                    v ^ 1
                )
            }
            (HostFault::Vcpu(field), Kernel::A, Direction::Suspend) if !field.kernel_restores() => {
                vm.change_vcpu_field(*field)?
            }
            _ => return Ok(()),
        };
        self.landed(note);
        Ok(())
    }

    fn landed(&mut self, note: String) {
        log::warn!("injected: {note}");
        self.injected = Some(note);
    }
}
