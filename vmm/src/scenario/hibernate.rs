//! The `hibernate` scenario: kernel A is saved by kernel B in one VM and
//! restored by kernel C in another, and checked across the two; `--cycles
//! N` times, then A jumps to a fresh B once more, ping-pong fashion.
//!
//! ```text
//! VM 1:  A boots ── A's suspend checkpoint (recorded by the oracle) ──▶ B
//!        B writes A's image to the virtio-blk disk ── B powers off
//! VMM:   the image on the disk, checked against the oracle's record of A
//!        (magic, version, every range's checksum, every page of A's view
//!        where A's kimage parked it); VM 1 destroyed
//! VM 2:  C boots (same disk) ── verifies and loads the image ── jumps to
//!        A's re-entry point ── A's re-entry path: registers, UART, 8259s,
//!        IOAPIC, MTRRs, and the disk taken back (device resume)
//!        ── A's resume checkpoint: the oracle checks A against its record
//!        from VM 1 ── A checks itself, loads B afresh, and either
//!        hibernates again (VM 2 plays VM 1's part, VM 3 VM 2's, ...) or,
//!        after the N-th restore, jumps to B, which jumps straight back:
//!        A.suspend, B.suspend, A.resume, checked as in ping-pong
//! ```
//!
//! The oracle outlives the VMs: its record of A (registers, devices,
//! view) is what A is judged by in the next VM, where only its shadow of
//! RAM is new. B is a fresh kernel every time (it powered the machine
//! off); A reloads its kimage of B after each restore (see the guest's
//! `load::reload_b`), and the tracker is told so.

use std::path::Path;
use std::time::Instant;

use kjump_abi::abi::Role;
use kjump_abi::cmdline::{LOG_KEY, ROLE_KEY, SCENARIO_KEY};
use kjump_abi::control;
use kjump_core::checkpoint::{CheckpointId, Direction, Kernel, Tracker};
use kjump_core::harness::HarnessEvent;
use kjump_core::hibimage::{DiskImage, check_against_record};
use kjump_core::kimage::Kimage;
use kjump_core::oracle::{Allowlist, Oracle};
use kjump_core::report::{At, CheckpointRecord, Mismatch, MismatchKind};
use kjump_core::symbols::Symbols;

use crate::config::RunConfig;
use crate::faults::{HostFault, ImageDamage};
use crate::scenario::disk::Disk;
use crate::scenario::pingpong::{first_delivery, flip_b_image, lap, micros};
use crate::scenario::{
    Outcome, RunError, RunOptions, RunState, Verdict, check_settings, handle_message, run_tracked,
    run_watched, vm_config,
};
use crate::vm::{BLOCK_DEVICE, Vm, VmConfig, VmEvent};

/// Bytes of disk a hibernation image of a VM of `mem` bytes needs at most
/// (its RAM and the header pages).
pub fn disk_size(mem: u64) -> u64 {
    mem + kjump_abi::hibimage::header_size(kjump_abi::hibimage::MAX_RANGES)
}

/// Runs the scenario: VM 1 (A saved by B), the check of the image, VM 2
/// (A restored by C and checked), as many times as `--cycles` says, and
/// the ping-pong jump at the end. Refuses a `--mem` above the 32-bit hole
/// (B saves one run of RAM).
pub fn run(args: &RunConfig, opts: &RunOptions) -> Result<Outcome, RunError> {
    if args.cycles == 0 {
        return Err(RunError::Settings(
            "--cycles 0: hibernate saves and restores kernel a at least once; give 1 or more"
                .into(),
        ));
    }
    // Held until the run ends (kernel a's suspend dump).
    let _dump_lock = match (&args.dump_dir, args.dump) {
        (Some(dir), crate::config::DumpPolicy::EveryJump) => {
            Some(crate::scenario::check_dump_dir(dir)?)
        }
        _ => None,
    };
    let (cfg, disk) = disk_scenario_config(
        args,
        opts,
        "two VMs, one after the other",
        disk_size(args.mem),
        |_| Ok(()),
    )?;
    let restore_kernel = match &args.restore_kernel {
        Some(path) => kjump_core::files::read_input(
            path,
            args.mem,
            &format!("guest RAM (--mem {})", crate::config::format_size(args.mem)),
        )
        .map_err(RunError::ReadKernel)?,
        None => crate::DEFAULT_KERNEL.to_vec(),
    };
    if let Some(path) = &args.restore_kernel {
        let b_end = kjump_abi::layout::HIGH_RAM_START + args.peer_mem;
        check_restore_kernel(&restore_kernel, args.mem, b_end).map_err(|why| {
            RunError::Settings(format!("--restore-kernel {}: {why}", path.display()))
        })?;
    }
    let wd = crate::scenario::watchdog_config(args.timeout(), args.max_time(), opts);
    let args = args.clone();
    run_watched(&wd, opts, args.scenario, cfg, move |cfg, mut run| {
        let mut restoring = false;
        let result = (|| -> Result<Outcome, RunError> {
            let mut hib = Hibernation::new(&args, &cfg.kernel, &mut run);
            hib.disk = Some(disk.path().to_owned());
            let mut vm = Vm::new(&cfg)?;
            hib.new_vm(&mut vm, false);
            loop {
                if let Some(done) = hib.drive(&mut vm, &mut run)? {
                    return Ok(done);
                }
                // B powered the VM off: its image is checked before
                // anything could restore it.
                if let Some(failed) = hib.check_image(&vm, &mut run, disk.path())? {
                    return Ok(failed);
                }
                drop(vm);
                if args
                    .inject
                    .as_ref()
                    .is_some_and(|i| i.host_cycle() == hib.hibernations)
                {
                    damage_image(&args, disk.path())?;
                }
                let c = restore_config(&cfg, &args, &hib, restore_kernel.clone())?;
                restoring = true;
                vm = Vm::new(&c)?;
                hib.new_vm(&mut vm, true);
            }
        })();
        drop(disk);
        result.map_err(|e| {
            // In a restore VM the failing code may be A's or C's (a C
            // linked elsewhere): A's symbols first, then C's.
            let e = e.symbolize(&cfg.kernel);
            match e.regs() {
                Some(r) if restoring && r.rip_symbol.is_none() => e.symbolize(&restore_kernel),
                _ => e,
            }
        })
    })
}

/// The checks and the VM configuration of a scenario whose kernel B saves
/// A's RAM below the 32-bit hole onto the disk (hibernate, crash): `--mem`
/// at most 3G, no `--gdb` (`why_no_gdb`), the fault, the outputs and the
/// settings checked before anything boots (and by `check`, which may
/// amend the configuration, before the disk is made); the disk (`--disk`,
/// or a temporary file) of at least `disk_size` bytes attached, and the
/// in-kernel irqchip (kernel A saves the interrupt controllers and its
/// re-entry path reprograms them, as for ping-pong).
pub(crate) fn disk_scenario_config(
    args: &RunConfig,
    opts: &RunOptions,
    why_no_gdb: &str,
    disk_size: u64,
    check: impl FnOnce(&mut VmConfig) -> Result<(), RunError>,
) -> Result<(VmConfig, Disk), RunError> {
    let scenario = args.scenario;
    if args.mem > kjump_abi::layout::MMIO_HOLE_START {
        return Err(RunError::Settings(format!(
            "--mem {}: {scenario} saves RAM below the 32-bit hole, at most 3G",
            crate::config::format_size(args.mem)
        )));
    }
    if args.gdb.at_start.is_some() || args.gdb.on_mismatch.is_some() {
        return Err(RunError::Settings(format!(
            "--gdb and --gdb-on-mismatch are not offered for {scenario} ({why_no_gdb})"
        )));
    }
    args.check_injection()?;
    crate::scenario::check_outputs(&[
        ("--report", args.report.as_deref()),
        ("--junit", args.junit.as_deref()),
    ])?;
    let mut cfg = vm_config(args, opts)?;
    check_settings(args, cfg.initramfs.as_ref().map_or(0, |i| i.len() as u64))?;
    check(&mut cfg)?;
    let disk = Disk::prepare(args.disk.as_deref(), disk_size, disk_size)?;
    // B's image (or vmcore) is to be found on the disk after B ran: an
    // image a disk kept from an earlier run is not B's work.
    disk.wipe()?;
    cfg.disk = Some(disk.path().to_owned());
    cfg.irqchip = true;
    Ok((cfg, disk))
}

/// A hibernate run across its VMs: the oracle with A's record, where the
/// checkpoint sequence is, and how far the run has come. The crash
/// scenario drives its one VM with it too (A's suspend is its panic, B
/// powers off after writing the vmcore).
pub(crate) struct Hibernation<'a> {
    cfg: &'a RunConfig,
    oracle: Oracle,
    tracker: Tracker,
    symbols_rip: Option<u64>,
    /// Images B wrote and the VMM checked so far.
    hibernations: u64,
    /// A's last suspend, and whether it was a jump to a hibernating B
    /// (else the ping-pong jump at the end).
    a_suspended: Option<(CheckpointId, bool)>,
    /// This VM was made to restore A and A has not resumed in it yet.
    restoring: bool,
    /// C jumped to A's re-entry point in this VM.
    c_jumped: bool,
    /// Harness time between checkpoints (B's first delivery), charged to
    /// the next checkpoint.
    carried: CheckpointRecord,
    /// The disk B saves A to, wiped once C has restored A from it when
    /// another B is to save A, so the next image found there is that B's.
    disk: Option<std::path::PathBuf>,
    /// Checked at B's entry once B's first delivery passed: A's hand-over
    /// (the crash scenario's backup and crash notes). Its mismatches fail
    /// the run there, blamed on kernel a.
    hand_over: Option<HandOver<'a>>,
}

/// A check of kernel a's hand-over to B at B's entry (B's memory in `Vm`,
/// A's record in the oracle, after A's suspend `CheckpointId`).
pub(crate) type HandOver<'a> =
    Box<dyn Fn(&Vm, &Oracle, &CheckpointId) -> Result<Vec<Mismatch>, RunError> + 'a>;

impl<'a> Hibernation<'a> {
    pub(crate) fn new(cfg: &'a RunConfig, kernel: &[u8], run: &mut RunState) -> Self {
        let symbols = Symbols::from_elf(kernel).ok();
        let symbols_rip = symbols
            .as_ref()
            .and_then(|s| s.address_of("kjump_checkpoint"));
        let oracle = Oracle::new(symbols, Allowlist::standard(), cfg.compare);
        let crash = cfg.scenario == crate::config::Scenario::Crash;
        *run.report() = kjump_core::report::Report::new(
            cfg.scenario.name(),
            cfg.cycles,
            cfg.compare.name(),
            oracle.allowlist().entries(),
        );
        // A crash restores nothing.
        for (field, reason) in RESTORE_ALLOWLIST.iter().filter(|_| !crash) {
            run.report()
                .allowlist
                .push(kjump_core::report::AllowedField {
                    field: (*field).to_owned(),
                    reason: (*reason).to_owned(),
                });
        }
        Self {
            cfg,
            oracle,
            tracker: Tracker::new(),
            symbols_rip,
            hibernations: 0,
            a_suspended: None,
            restoring: false,
            c_jumped: false,
            carried: CheckpointRecord::default(),
            disk: None,
            hand_over: None,
        }
    }

    /// Checks A's hand-over with `check` at B's entry, after B's first
    /// delivery.
    pub(crate) fn check_hand_over(&mut self, check: HandOver<'a>) {
        self.hand_over = Some(check);
    }

    /// A new VM runs (`restore`: one booting kernel C to restore A; else
    /// VM 1, booting A). Its RAM is new: the oracle reads it afresh (from
    /// the first dirty list alone when the VM's RAM started zero), its
    /// records stay.
    pub(crate) fn new_vm(&mut self, vm: &mut Vm, restore: bool) {
        self.oracle.forget_memory();
        if vm.dirty_log_covers_all_writes() {
            self.oracle.ram_starts_zero();
        }
        self.restoring = restore;
        self.c_jumped = false;
        // C may be another kernel: its checkpoint's address is not known
        // (A's is set again once C has jumped).
        vm.set_checkpoint_rip(if restore { None } else { self.symbols_rip });
        if restore {
            vm.set_console_name("c");
        }
    }

    /// Runs `vm` to its end: `Some` with the outcome when the run ends
    /// here, `None` when B saved A and powered the machine off.
    pub(crate) fn drive(
        &mut self,
        vm: &mut Vm,
        run: &mut RunState,
    ) -> Result<Option<Outcome>, RunError> {
        loop {
            let (event, id) = run_tracked(vm, &mut self.tracker)?;
            match event {
                VmEvent::Message(HarnessEvent::Kimage { args: a }) => {
                    let k = Kimage::read(vm.memory(), &a)?;
                    if k.role == Role::C {
                        // C's kimage back to A: it has no pages (A's
                        // relocation code finishes the restore).
                        if !self.restoring || self.c_jumped {
                            return Err(RunError::Protocol(
                                "a kernel c reported a kimage outside a restore",
                            ));
                        }
                        log::debug!("kernel c reported its kimage");
                        continue;
                    }
                    let kernel = Kernel::from(k.role);
                    if kernel != self.tracker.running() {
                        return Err(RunError::Protocol(
                            "a kernel reported a kimage for the other role",
                        ));
                    }
                    self.oracle.kimage_reported(kernel, k, a);
                }
                VmEvent::Checkpoint { .. } => {
                    let id = id.ok_or(RunError::Protocol("checkpoint without identity"))?;
                    if let Some(failed) = self.checkpoint(vm, run, &id)? {
                        return Ok(Some(failed));
                    }
                }
                VmEvent::Breakpoint { rip } if self.oracle.delivery_entry() == Some(rip) => {
                    let (after, _) = self
                        .a_suspended
                        .ok_or(RunError::Protocol("kernel b was entered before a jumped"))?;
                    let mismatches =
                        first_delivery(vm, &mut self.oracle, &mut self.carried, rip, &after)?;
                    if !mismatches.is_empty() {
                        let what = format!(
                            "{} page(s) of kernel b's first delivery differ from what a's kimage placed",
                            mismatches.len()
                        );
                        return Ok(Some(fail(run, mismatches, &what, "b")));
                    }
                    if let Some(check) = &self.hand_over {
                        let mismatches = check(vm, &self.oracle, &after)?;
                        if !mismatches.is_empty() {
                            let what = format!(
                                "{} mismatch(es) in kernel a's hand-over to kernel b, found at b's entry (b is not run: what it would save follows from them)",
                                mismatches.len()
                            );
                            return Ok(Some(fail(run, mismatches, &what, "a")));
                        }
                    }
                }
                VmEvent::Breakpoint { .. } => {
                    return Err(RunError::Protocol(
                        "a breakpoint fired that the VMM did not set",
                    ));
                }
                VmEvent::Message(ev) => {
                    let guest = vm.console_name().to_owned();
                    match handle_message(vm, run, ev)? {
                        None => {}
                        Some(Verdict::Pass) if guest == "b" && self.oracle.delivery_pending() => {
                            return Ok(Some(run.outcome(Verdict::Fail(NOT_ENTERED.into()), "b")));
                        }
                        Some(Verdict::Pass)
                            if guest == "b" && matches!(self.a_suspended, Some((_, true))) =>
                        {
                            return Ok(None);
                        }
                        Some(Verdict::Pass)
                            if guest == "a"
                                && self.tracker.cycles_completed()
                                    == self.cfg.cycles.saturating_add(1) =>
                        {
                            let verdict = match &self.cfg.inject {
                                Some(inj) => Verdict::Fail(format!(
                                    "the injected fault {} was not caught: the run passed",
                                    inj.spec
                                )),
                                None => Verdict::Pass,
                            };
                            return Ok(Some(run.outcome(verdict, "a")));
                        }
                        Some(Verdict::Pass) => {
                            return Err(RunError::Protocol(
                                "a kernel reported pass before kernel a was saved, restored and checked as often as asked",
                            ));
                        }
                        Some(fail) => return Ok(Some(run.outcome(fail, &guest))),
                    }
                }
            }
        }
    }

    /// One checkpoint: C's jump to A (not judged: C stands in B's place),
    /// or A's or B's, judged by the oracle. `Some` with the outcome when
    /// it fails the run.
    fn checkpoint(
        &mut self,
        vm: &mut Vm,
        run: &mut RunState,
        id: &CheckpointId,
    ) -> Result<Option<Outcome>, RunError> {
        let hibernating = matches!(self.a_suspended, Some((_, true)));
        match (id.kernel, id.direction) {
            (Kernel::B, Direction::Suspend) if self.restoring && !self.c_jumped => {
                self.c_jumped = true;
                log::info!("kernel c jumps to a's re-entry point");
                vm.set_console_name("a");
                vm.set_checkpoint_rip(self.symbols_rip);
                return Ok(None);
            }
            (Kernel::B, Direction::Suspend) if hibernating => {
                return Err(RunError::Protocol(
                    "kernel b was to save kernel a and power off, but it jumped back",
                ));
            }
            (Kernel::B, Direction::Suspend) if self.oracle.delivery_pending() => {
                vm.set_exec_breakpoint(None)?;
                return Ok(Some(run.outcome(Verdict::Fail(NOT_ENTERED.into()), "b")));
            }
            (Kernel::B, Direction::Resume) => {
                return Err(RunError::Protocol(
                    "in hibernate kernel b boots afresh every time: it is never resumed",
                ));
            }
            (Kernel::A, Direction::Resume) if hibernating && !self.restoring => {
                return Err(RunError::Protocol(
                    "kernel a resumed in the VM it hibernated in",
                ));
            }
            _ => {}
        }
        let restored = id.kernel == Kernel::A && id.direction == Direction::Resume && hibernating;
        let ran = vm.take_run_time();
        let carried = std::mem::take(&mut self.carried);
        let mut rec = CheckpointRecord {
            t_us: micros(run.start),
            guest_us: ran.guest.as_micros() as u64,
            exit_us: ran.exits.as_micros() as u64 + carried.exit_us,
            ..CheckpointRecord::of(id)
        };
        rec.dirty_log_us = carried.dirty_log_us;
        rec.store_us = carried.store_us;
        rec.compare_us = carried.compare_us;
        let mut t = Instant::now();
        let machine = vm.capture_machine()?;
        rec.state_us += lap(&mut t);
        let dirty = vm.dirty_pages()?;
        rec.dirty_log_us += lap(&mut t);
        let at = At::of(id);
        let mut mismatches = self.oracle.observe_memory(vm.memory(), &dirty, &at)?;
        rec.store_us += lap(&mut t);
        rec.capture_us = rec.state_us + rec.dirty_log_us + rec.store_us;
        let j = self.oracle.judge(id, &machine, vm.memory())?;
        rec.compare_us += lap(&mut t);
        if restored {
            let (excused, kept): (Vec<Mismatch>, Vec<Mismatch>) =
                j.mismatches.into_iter().partition(restore_excuses);
            for m in &excused {
                log::info!("excused after the restore: {}", m.explain());
            }
            mismatches.extend(kept);
        } else {
            mismatches.extend(j.mismatches);
        }
        run.checkpoints += 1;
        run.report().excused_pages.extend(j.excused);
        run.report().push_checkpoint(CheckpointRecord {
            rip: machine.vcpu().regs.rip,
            dirty_pages: dirty.len() as u64,
            pages_compared: j.pages_compared,
            mismatches: mismatches.len() as u64,
            ..rec
        });
        if !mismatches.is_empty() {
            let n = mismatches.len();
            let what = match (id.kernel, id.direction) {
                (Kernel::A, Direction::Resume) if restored => format!(
                    "{n} mismatch(es) at kernel a's resume in a new VM (restored from its image)"
                ),
                (k, d) => format!("{n} mismatch(es) at kernel {}'s {}", k.name(), d.name()),
            };
            return Ok(Some(fail(run, mismatches, &what, id.kernel.name())));
        }
        match (id.kernel, id.direction) {
            (Kernel::A, Direction::Suspend) => {
                if let Some(path) = dump_suspend(vm, self.cfg, &self.oracle, id, &machine)? {
                    run.report().dumps.push(path);
                }
                let hibernation = self.hibernations < self.cfg.cycles;
                self.a_suspended = Some((*id, hibernation));
                vm.set_console_name("b");
                // B boots afresh every time here: its memory is checked at
                // its entry, before its first instruction, against what
                // A's (re)loaded kimage placed for it, as in ping-pong's
                // first cycle.
                let entry = self.oracle.read_control(
                    vm.memory(),
                    Kernel::A,
                    control::DATA_PEER_ENTRY,
                    false,
                )?;
                self.oracle.expect_delivery(entry)?;
                vm.set_exec_breakpoint(Some(entry))?;
                if self.cfg.inject.as_ref().is_some_and(|i| {
                    matches!(i.host(), Some(HostFault::FlipBImage)) && i.host_cycle() == id.cycle
                }) {
                    let note = flip_b_image(vm, &self.oracle)?;
                    log::warn!("injected: {note}");
                }
            }
            (Kernel::B, _) => vm.set_console_name("a"),
            (Kernel::A, Direction::Resume) => {
                if restored {
                    self.restoring = false;
                    // Another B is to save A here: the image C restored
                    // from goes (after the last restore the disk keeps it).
                    if let Some(disk) = self
                        .disk
                        .as_ref()
                        .filter(|_| self.hibernations < self.cfg.cycles)
                    {
                        crate::scenario::disk::wipe(disk)?;
                    }
                    log::info!(
                        "kernel a resumed in a new VM: {} pages of its view, its registers and devices as it left them",
                        j.pages_compared
                    );
                    // A loads B afresh now: B boots at A's next jump.
                    self.tracker.peer_reloaded();
                    self.oracle.peer_reloaded();
                }
                run.set_cycles(self.tracker.cycles_completed().min(self.cfg.cycles));
                vm.advanced();
            }
        }
        Ok(None)
    }

    /// The oracle, with A's record.
    pub(crate) fn oracle(&self) -> &Oracle {
        &self.oracle
    }

    /// A's last suspend checkpoint.
    pub(crate) fn a_suspended(&self) -> Option<CheckpointId> {
        self.a_suspended.map(|(id, _)| id)
    }

    /// B has powered the machine off: the image on the disk, checked
    /// against the oracle's record of A. `Some` with the outcome when it
    /// fails the run.
    fn check_image(
        &mut self,
        vm: &Vm,
        run: &mut RunState,
        disk: &Path,
    ) -> Result<Option<Outcome>, RunError> {
        let Some((suspended, _)) = self.a_suspended else {
            return Err(RunError::Protocol("kernel b powered off before a jumped"));
        };
        let at = At {
            direction: "image".to_owned(),
            ..At::of(&suspended)
        };
        let image = match DiskImage::open(disk) {
            Ok(i) => i,
            Err(e) => {
                return Ok(Some(run.outcome(
                    Verdict::Fail(format!("kernel b's image of a: {e}")),
                    "b",
                )));
            }
        };
        let expected_entry = self.oracle.jump_back_entry(Kernel::A);
        if image.entry() != expected_entry {
            return Ok(Some(run.outcome(
                Verdict::Fail(format!(
                    "kernel b's image of a is entered at {:#x}, a asked to be re-entered at {expected_entry:#x}",
                    image.entry()
                )),
                "b",
            )));
        }
        let mut check = check_against_record(&image, &self.oracle, Kernel::A, vm.memory(), &at)
            .map_err(|source| {
                RunError::Disk(crate::scenario::disk::DiskError::Stat {
                    path: disk.to_owned(),
                    source,
                })
            })?;
        // Nothing in the image but A's RAM outside B's region (where C
        // will run): C would refuse it, and B is the one to blame.
        let b_region = self.peer_start_end()?;
        let mem = self.cfg.mem;
        check.mismatches.extend(kjump_core::vmcore::check_claimed(
            &image,
            "image",
            Kernel::A,
            |p| p < mem && !(b_region.0..b_region.1).contains(&p),
            &at,
        ));
        self.hibernations += 1;
        log::info!(
            "hibernation {}: the image on the disk: {} pages in {} ranges, entry {:#x}; {} pages of a's view checked",
            self.hibernations,
            image.pages(),
            image.ranges().len(),
            image.entry(),
            check.pages_compared
        );
        if !check.mismatches.is_empty() {
            let n = check.mismatches.len();
            run.report().push_mismatches(check.mismatches);
            let why = first_line(
                &format!("{n} page(s) of kernel a's image on the disk differ from its record"),
                &first_mismatch(run),
            );
            return Ok(Some(run.outcome(Verdict::Fail(why), "b")));
        }
        Ok(None)
    }

    /// The end of B's region, which the image does not cover: C keeps
    /// below it.
    fn peer_end(&self) -> Result<u64, RunError> {
        Ok(self.peer_start_end()?.1)
    }

    /// B's region, as A's kimage says.
    fn peer_start_end(&self) -> Result<(u64, u64), RunError> {
        self.oracle
            .kimage(Kernel::A)
            .map(|k| (k.peer_start, k.peer_end))
            .ok_or(RunError::Protocol("kernel a jumped without a kimage"))
    }
}

/// Why the restore kernel `elf` cannot restore A in a VM of `mem` bytes
/// whose B's region ends at `b_end`, checked before anything boots: it
/// must be a kernel the VMM boots, and lie in B's region (C runs with
/// `mem=` there and lets the device write A's image everywhere else, so a
/// C linked elsewhere would load the image over itself).
fn check_restore_kernel(elf: &[u8], mem: u64, b_end: u64) -> Result<(), String> {
    let info = kjump_core::image::inspect_kernel(elf).map_err(|e| e.to_string())?;
    kjump_core::image::check_kernel_fits(&info, mem).map_err(|e| e.to_string())?;
    if info.end > b_end {
        return Err(format!(
            "the kernel is linked at {:#x}..{:#x}, past the end of kernel b's region at {b_end:#x} \
             (1 MiB + --peer-mem): kernel c would load a's image over itself",
            info.start, info.end
        ));
    }
    Ok(())
}

/// The VM that restores A: the restore kernel, the same RAM size and disk,
/// no initramfs; `mem=` keeps C to the region A's image does not cover.
fn restore_config(
    cfg: &VmConfig,
    args: &RunConfig,
    hib: &Hibernation<'_>,
    kernel: Vec<u8>,
) -> Result<VmConfig, RunError> {
    let peer_end = hib.peer_end()?;
    // A's kimage says where B's region ends; C must fit below it.
    check_restore_kernel(&kernel, args.mem, peer_end).map_err(|why| {
        RunError::Settings(format!("the restore kernel cannot restore a here: {why}"))
    })?;
    let mut cmdline =
        format!("{ROLE_KEY}=c {SCENARIO_KEY}=hibernate mem={peer_end:#x} {BLOCK_DEVICE}");
    if let Some(level) = kjump_abi::cmdline::get(&cfg.cmdline, LOG_KEY) {
        cmdline.push_str(&format!(" {LOG_KEY}={level}"));
    }
    // A fault of the restore kernel's, in the restore it is armed for.
    if let Some(word) = args.inject.as_ref().and_then(|i| {
        i.restore_word()
            .filter(|_| i.cycle.is_none_or(|c| c == hib.hibernations))
    }) {
        cmdline.push_str(&format!(" {word}"));
    }
    let mut c = VmConfig::new(kernel, cmdline);
    c.mem_size = args.mem;
    c.timeout = cfg.timeout;
    c.console = cfg.console.clone();
    c.console_name = "c".into();
    c.stop = cfg.stop.clone();
    c.irqchip = true;
    c.kvm_device = cfg.kvm_device.clone();
    c.disk = cfg.disk.clone();
    Ok(c)
}

/// `--dump every-jump --dump-dir DIR`: kernel a at each suspend, as
/// ping-pong dumps it (`c00001-00000-a-suspend.core` the first), what
/// `kjump diff` compares the image on the disk with. Returns the file
/// written.
fn dump_suspend(
    vm: &Vm,
    cfg: &RunConfig,
    oracle: &Oracle,
    id: &kjump_core::checkpoint::CheckpointId,
    machine: &kjump_core::state::MachineState,
) -> Result<Option<String>, RunError> {
    let Some(dir) = cfg
        .dump_dir
        .as_deref()
        .filter(|_| cfg.dump == crate::config::DumpPolicy::EveryJump)
    else {
        return Ok(None);
    };
    let path = crate::scenario::dump_path(dir, id, "");
    let kernel_name = crate::scenario::dump_kernel_name(cfg);
    let resume = oracle.resume_record(cfg.scenario.name(), cfg.cycles, id, machine);
    let input = kjump_core::dump::DumpInput {
        state: machine.vcpu(),
        id,
        jump_back_entry: oracle.jump_back_entry(id.kernel),
        resumable: true,
        memory: vm.memory(),
        kernel_name: &kernel_name,
        mem_size: vm.mem_size(),
        kjump_version: env!("CARGO_PKG_VERSION"),
        resume: Some(&resume),
    };
    kjump_core::dump::write_dump(&path, &input)?;
    log::info!("dump written: {}", path.display());
    Ok(Some(path.display().to_string()))
}

/// Host-side damage to the image between the two VMs (`--inject
/// image-flip`, `image-truncate`, `image-magic`), for C to refuse.
fn damage_image(args: &RunConfig, disk: &Path) -> Result<(), RunError> {
    use std::os::unix::fs::FileExt;
    let Some(HostFault::Image(damage)) = args.inject.as_ref().and_then(|i| i.host()) else {
        return Ok(());
    };
    let io = |source| {
        RunError::Disk(crate::scenario::disk::DiskError::Stat {
            path: disk.to_owned(),
            source,
        })
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(io)?;
    let mut head =
        vec![0u8; kjump_abi::hibimage::header_size(kjump_abi::hibimage::MAX_RANGES) as usize];
    file.read_exact_at(&mut head, 0).map_err(io)?;
    let h = kjump_abi::hibimage::Header::parse(&head)
        .map_err(|_| RunError::Protocol("the image to damage does not parse"))?;
    let last = h.len() - 1;
    match damage {
        ImageDamage::Flip => {
            let r = h.range(last);
            let at = h.data_offset(last) + r.len / 2;
            let mut b = [0u8];
            file.read_exact_at(&mut b, at).map_err(io)?;
            file.write_all_at(&[b[0] ^ 0x10], at).map_err(io)?;
            log::warn!(
                "INJECTED FAULT: flipped a byte of the image on the disk, at byte {at} (memory {:#x}, range {last})",
                r.start + r.len / 2
            );
        }
        ImageDamage::Truncate => {
            let size = h.image_size() - kjump_abi::layout::PAGE_SIZE;
            file.set_len(size).map_err(io)?;
            log::warn!("INJECTED FAULT: cut the disk to {size} bytes, a page short of the image");
        }
        ImageDamage::Magic => {
            let at = head
                .windows(8)
                .position(|w| w == kjump_abi::hibimage::MAGIC)
                .ok_or(RunError::Protocol("the image has no magic to damage"))?;
            file.write_all_at(b"KJHIBIMX", at as u64).map_err(io)?;
            log::warn!("INJECTED FAULT: changed the image's magic to KJHIBIMX");
        }
    }
    file.sync_all().map_err(io)
}

/// What a restore into a new machine legitimately changes, with why: the
/// only field the fresh vCPU and devices were found to change (the TSC
/// may advance anyway: the standard allowlist). Nothing else is excused.
pub const RESTORE_ALLOWLIST: &[(&str, &str)] = &[(
    "kvmclock.clock",
    "the restored kernel runs in a new VM, whose KVM clock counts from that VM's start: \
     after hibernation it may be behind the clock the kernel left (Linux re-reads its \
     clocksource on resume from hibernation)",
)];

/// Whether [`RESTORE_ALLOWLIST`] excuses a mismatch at A's resume in the
/// new VM.
fn restore_excuses(m: &Mismatch) -> bool {
    m.kind == MismatchKind::Device
        && m.name
            .as_deref()
            .is_some_and(|n| RESTORE_ALLOWLIST.iter().any(|(f, _)| *f == n))
}

/// What a fresh B that ran without the check of its first delivery is
/// told.
const NOT_ENTERED: &str = "kernel b ran without being entered where kernel a's jump said: its first delivery was not checked";

/// The run fails with `mismatches` (`what` says where), blamed on `kernel`.
pub(crate) fn fail(
    run: &mut RunState,
    mismatches: Vec<Mismatch>,
    what: &str,
    kernel: &str,
) -> Outcome {
    run.report().push_mismatches(mismatches);
    let why = first_line(what, &first_mismatch(run));
    run.outcome(Verdict::Fail(why), kernel)
}

pub(crate) fn first_mismatch(run: &RunState) -> kjump_core::report::Mismatch {
    run.report().mismatches[0].clone()
}

pub(crate) fn first_line(what: &str, m: &kjump_core::report::Mismatch) -> String {
    format!(
        "{what}: first: {}",
        m.explain().lines().next().unwrap_or_default()
    )
}
