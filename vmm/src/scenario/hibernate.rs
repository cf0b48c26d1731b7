//! The `hibernate` scenario, as far as it is built: its save half.
//!
//! ```text
//! VM 1:  A boots ── A's suspend checkpoint (recorded by the oracle) ──▶ B
//!        B writes A's image to the virtio-blk disk ── B powers off
//! VMM:   the image on the disk, checked against the oracle's record of A
//!        (magic, version, every range's checksum, every page of A's view
//!        where A's kimage parked it)
//! ```
//!
//! What is not built is the restore: a fresh VM booting kernel C, which
//! verifies and loads the image with the two-stage final copy and jumps to
//! A's re-entry point, and the oracle's check of A in that second VM.
//! Until it is, `--scenario hibernate` is refused (`Scenario::is_built`),
//! and [`save`] is reached by the library (its tests) only.

use std::path::Path;
use std::time::Instant;

use kjump_core::checkpoint::{Direction, Kernel, Tracker};
use kjump_core::harness::HarnessEvent;
use kjump_core::hibimage::{DiskImage, check_against_record};
use kjump_core::kimage::Kimage;
use kjump_core::oracle::{Allowlist, Oracle};
use kjump_core::report::{At, CheckpointRecord};
use kjump_core::symbols::Symbols;

use crate::config::RunConfig;
use crate::scenario::disk::Disk;
use crate::scenario::{
    Outcome, RunError, RunOptions, RunState, Verdict, check_settings, handle_message, vm_config,
};
use crate::vm::watchdog::{self, WatchdogConfig};
use crate::vm::{Vm, VmEvent};

/// What the save half found, besides the verdict.
#[derive(Debug, Default)]
pub struct Saved {
    /// Pages of A's view checked in the image.
    pub pages_checked: u64,
    /// Pages the image holds.
    pub image_pages: u64,
    /// The image's entry (A's re-entry point).
    pub entry: u64,
}

/// Bytes of disk a hibernation image of a VM of `mem` bytes needs at most
/// (its RAM and the header pages).
pub fn disk_size(mem: u64) -> u64 {
    mem + kjump_abi::hibimage::header_size(kjump_abi::hibimage::MAX_RANGES)
}

/// Runs the save half on the embedded or given kernel: boots VM 1 with a
/// disk, lets A jump to B and B save A and power off, then checks the
/// image on the disk. Refuses a `--mem` above the 32-bit hole (B saves one
/// run of RAM).
pub fn save(args: &RunConfig, opts: &RunOptions) -> Result<(Outcome, Saved), RunError> {
    if args.mem > kjump_abi::layout::MMIO_HOLE_START {
        return Err(RunError::Settings(format!(
            "--mem {}: hibernate saves RAM below the 32-bit hole, at most 3G",
            crate::config::format_size(args.mem)
        )));
    }
    args.check_injection()?;
    let mut cfg = vm_config(args, opts)?;
    check_settings(args, cfg.initramfs.as_ref().map_or(0, |i| i.len() as u64))?;
    let size = disk_size(args.mem);
    let disk = Disk::prepare(args.disk.as_deref(), size, size)?;
    cfg.disk = Some(disk.path().to_owned());
    // Kernel A saves the interrupt controllers and B reprograms them: the
    // in-kernel irqchip, as for ping-pong.
    cfg.irqchip = true;
    let wd = WatchdogConfig {
        timeout: args.timeout(),
        max_time: args.max_time(),
        handle_signals: opts.handle_signals,
        grace: watchdog::DEFAULT_GRACE,
    };
    let start = Instant::now();
    let args = args.clone();
    let ledger = opts.ledger.clone();
    watchdog::run_guarded(&wd, move |stop| {
        let mut cfg = cfg;
        cfg.stop = stop;
        let run = || {
            let mut vm = Vm::new(&cfg)?;
            let mut run = RunState::new(args.scenario, start, &ledger);
            save_on(&mut vm, &mut run, &args, &cfg.kernel, disk.path())
        };
        let result = run().map_err(|e| e.symbolize(&cfg.kernel));
        drop(disk);
        result
    })?
}

/// The save half on a booted VM 1 whose disk is `disk`.
fn save_on(
    vm: &mut Vm,
    run: &mut RunState,
    cfg: &RunConfig,
    kernel: &[u8],
    disk: &Path,
) -> Result<(Outcome, Saved), RunError> {
    let symbols = Symbols::from_elf(kernel).ok();
    vm.set_checkpoint_rip(
        symbols
            .as_ref()
            .and_then(|s| s.address_of("kjump_checkpoint")),
    );
    let mut oracle = Oracle::new(symbols, Allowlist::standard(), cfg.compare);
    *run.report() = kjump_core::report::Report::new(
        cfg.scenario.name(),
        1,
        cfg.compare.name(),
        oracle.allowlist().entries(),
    );
    let mut tracker = Tracker::new();
    let mut suspended = None;
    loop {
        let mut id = None;
        let event = vm.run_until_event(&mut || {
            let i = tracker.next();
            id = Some(i);
            i.direction.answer()
        })?;
        match event {
            VmEvent::Message(HarnessEvent::Kimage { args: a }) => {
                let k = Kimage::read(vm.memory(), &a)?;
                if Kernel::from(k.role) != Kernel::A || suspended.is_some() {
                    return Err(RunError::Protocol(
                        "in hibernate only kernel a reports a kimage, once",
                    ));
                }
                oracle.kimage_reported(Kernel::A, k, a);
            }
            VmEvent::Checkpoint { .. } => {
                let id = id.ok_or(RunError::Protocol("checkpoint without identity"))?;
                if id.kernel != Kernel::A || id.direction != Direction::Suspend {
                    return Err(RunError::Protocol(
                        "in hibernate kernel b saves kernel a and powers off: it never jumps back",
                    ));
                }
                // A's suspend: recorded as in ping-pong (its registers,
                // devices and view), and its jump checked.
                let machine = vm.capture_machine()?;
                let dirty = vm.dirty_pages()?;
                let at = At::of(&id);
                let mut mismatches = oracle.observe_memory(vm.memory(), &dirty, &at)?;
                let j = oracle.judge(&id, &machine, vm.memory())?;
                mismatches.extend(j.mismatches);
                run.checkpoints += 1;
                run.report().push_checkpoint(CheckpointRecord {
                    index: id.index,
                    cycle: id.cycle,
                    kernel: id.kernel.name().to_owned(),
                    direction: id.direction.name().to_owned(),
                    answer: id.direction.answer(),
                    rip: machine.vcpu().regs.rip,
                    dirty_pages: dirty.len() as u64,
                    pages_compared: j.pages_compared,
                    capture_us: 0,
                    compare_us: 0,
                    mismatches: mismatches.len() as u64,
                });
                if !mismatches.is_empty() {
                    run.report().push_mismatches(mismatches);
                    let why = first_line("at kernel a's suspend", &first_mismatch(run));
                    return Ok((run.outcome(Verdict::Fail(why), "a"), Saved::default()));
                }
                suspended = Some(id);
                vm.set_console_name("b");
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
                    Some(Verdict::Pass) if guest == "b" && suspended.is_some() => break,
                    Some(Verdict::Pass) => {
                        return Err(RunError::Protocol(
                            "kernel a reported pass before it was saved",
                        ));
                    }
                    Some(fail) => return Ok((run.outcome(fail, &guest), Saved::default())),
                }
            }
        }
    }
    // B has powered the machine off: the image on the disk, checked
    // against what A left, before anything could restore it.
    let at = At {
        checkpoint: suspended.map_or(0, |i| i.index),
        cycle: 1,
        kernel: Kernel::A.name().to_owned(),
        direction: "image".to_owned(),
    };
    let image = match DiskImage::open(disk) {
        Ok(i) => i,
        Err(e) => {
            return Ok((
                run.outcome(Verdict::Fail(format!("kernel b's image of a: {e}")), "b"),
                Saved::default(),
            ));
        }
    };
    let expected_entry = oracle.jump_back_entry(Kernel::A);
    if image.entry() != expected_entry {
        return Ok((
            run.outcome(
                Verdict::Fail(format!(
                    "kernel b's image of a is entered at {:#x}, a asked to be re-entered at {expected_entry:#x}",
                    image.entry()
                )),
                "b",
            ),
            Saved::default(),
        ));
    }
    let check =
        check_against_record(&image, &oracle, Kernel::A, vm.memory(), &at).map_err(|source| {
            RunError::Disk(crate::scenario::disk::DiskError::Stat {
                path: disk.to_owned(),
                source,
            })
        })?;
    let saved = Saved {
        pages_checked: check.pages_compared,
        image_pages: image.pages(),
        entry: image.entry(),
    };
    log::info!(
        "the image on the disk: {} pages in {} ranges, entry {:#x}; {} pages of a's view checked",
        saved.image_pages,
        image.ranges().len(),
        saved.entry,
        saved.pages_checked
    );
    if !check.mismatches.is_empty() {
        let n = check.mismatches.len();
        run.report().push_mismatches(check.mismatches);
        let why = first_line(
            &format!("{n} page(s) of kernel a's image on the disk differ from its record"),
            &first_mismatch(run),
        );
        return Ok((run.outcome(Verdict::Fail(why), "b"), saved));
    }
    if let Some(inj) = &cfg.inject {
        let why = format!(
            "the injected fault {} was not caught: the run passed",
            inj.spec
        );
        return Ok((run.outcome(Verdict::Fail(why), "b"), saved));
    }
    Ok((run.outcome(Verdict::Pass, "b"), saved))
}

fn first_mismatch(run: &RunState) -> kjump_core::report::Mismatch {
    run.report().mismatches[0].clone()
}

fn first_line(what: &str, m: &kjump_core::report::Mismatch) -> String {
    format!(
        "{what}: first: {}",
        m.explain().lines().next().unwrap_or_default()
    )
}
