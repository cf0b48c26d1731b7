//! The `hibernate` scenario: kernel A is saved by kernel B in one VM and
//! restored by kernel C in another, and checked across the two.
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
//!        from VM 1 ── A checks itself and reports its verdict
//! ```
//!
//! The oracle outlives VM 1: its record of A (registers, devices, view)
//! is what A is judged by in VM 2, where only its shadow of RAM is new.

use std::path::Path;
use std::time::Instant;

use kjump_core::checkpoint::{Direction, Kernel, Tracker};
use kjump_core::harness::HarnessEvent;
use kjump_core::hibimage::{DiskImage, check_against_record};
use kjump_core::kimage::Kimage;
use kjump_core::oracle::{Allowlist, Oracle};
use kjump_core::report::{At, CheckpointRecord, Mismatch, MismatchKind};
use kjump_core::symbols::Symbols;

use crate::config::RunConfig;
use crate::faults::{HostFault, ImageDamage};
use crate::scenario::disk::Disk;
use crate::scenario::{
    Outcome, RunError, RunOptions, RunState, Verdict, check_settings, handle_message, vm_config,
};
use crate::vm::watchdog::{self, WatchdogConfig};
use crate::vm::{BLOCK_DEVICE, Vm, VmConfig, VmEvent};

/// Bytes of disk a hibernation image of a VM of `mem` bytes needs at most
/// (its RAM and the header pages).
pub fn disk_size(mem: u64) -> u64 {
    mem + kjump_abi::hibimage::header_size(kjump_abi::hibimage::MAX_RANGES)
}

/// Runs the scenario: VM 1 (A saved by B), the check of the image, VM 2
/// (A restored by C and checked). Refuses a `--mem` above the 32-bit hole
/// (B saves one run of RAM).
pub fn run(args: &RunConfig, opts: &RunOptions) -> Result<Outcome, RunError> {
    if args.mem > kjump_abi::layout::MMIO_HOLE_START {
        return Err(RunError::Settings(format!(
            "--mem {}: hibernate saves RAM below the 32-bit hole, at most 3G",
            crate::config::format_size(args.mem)
        )));
    }
    if args.gdb.at_start.is_some() || args.gdb.on_mismatch.is_some() {
        return Err(RunError::Settings(
            "--gdb and --gdb-on-mismatch are not offered for hibernate (two VMs, one after the other)"
                .into(),
        ));
    }
    args.check_injection()?;
    crate::scenario::check_outputs(&[
        ("--report", args.report.as_deref()),
        ("--junit", args.junit.as_deref()),
    ])?;
    let mut cfg = vm_config(args, opts)?;
    check_settings(args, cfg.initramfs.as_ref().map_or(0, |i| i.len() as u64))?;
    let restore_kernel = match &args.restore_kernel {
        Some(path) => kjump_core::files::read_input(
            path,
            args.mem,
            &format!("guest RAM (--mem {})", crate::config::format_size(args.mem)),
        )
        .map_err(RunError::ReadKernel)?,
        None => crate::DEFAULT_KERNEL.to_vec(),
    };
    let size = disk_size(args.mem);
    let disk = Disk::prepare(args.disk.as_deref(), size, size)?;
    cfg.disk = Some(disk.path().to_owned());
    // Kernel A saves the interrupt controllers and its re-entry path
    // reprograms them: the in-kernel irqchip, as for ping-pong.
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
        let mut run = RunState::new(args.scenario, start, &ledger);
        let result = (|| {
            let mut vm = Vm::new(&cfg)?;
            let saved = save_on(&mut vm, &mut run, &args, &cfg.kernel, disk.path())?;
            let mut saved = match saved {
                Ok(s) => s,
                Err(failed) => return Ok(failed),
            };
            // B powered VM 1 off; it is gone before VM 2 exists.
            drop(vm);
            damage_image(&args, disk.path())?;
            let vm2 = restore_config(&cfg, &args, &saved, restore_kernel.clone());
            let mut vm2 = Vm::new(&vm2)?;
            restore_on(&mut vm2, &mut run, &args, &mut saved)
        })();
        drop(disk);
        result.map_err(|e| e.symbolize(&cfg.kernel))
    })?
}

/// What VM 1 left for VM 2: the oracle with A's record, where the
/// checkpoint sequence is, the image's facts.
pub struct Saved {
    oracle: Oracle,
    tracker: Tracker,
    /// Pages of A's view checked in the image.
    pub pages_checked: u64,
    /// Pages the image holds.
    pub image_pages: u64,
    /// The image's entry (A's re-entry point).
    pub entry: u64,
    /// The end of B's region: C keeps below it.
    peer_end: u64,
}

/// VM 2: the restore kernel, the same RAM size and disk, no initramfs;
/// `mem=` keeps C to the region A's image does not cover.
fn restore_config(cfg: &VmConfig, args: &RunConfig, saved: &Saved, kernel: Vec<u8>) -> VmConfig {
    let mut c = VmConfig::new(
        kernel,
        format!(
            "kjump.role=c kjump.scenario=hibernate mem={:#x} {BLOCK_DEVICE}{}",
            saved.peer_end,
            kjump_abi::cmdline::get(&cfg.cmdline, "kjump.log")
                .map(|l| format!(" kjump.log={l}"))
                .unwrap_or_default()
        ),
    );
    c.mem_size = args.mem;
    c.timeout = cfg.timeout;
    c.console = cfg.console.clone();
    c.console_name = "c".into();
    c.stop = cfg.stop.clone();
    c.irqchip = true;
    c.kvm_device = cfg.kvm_device.clone();
    c.disk = cfg.disk.clone();
    c
}

/// VM 1 on a booted VM whose disk is `disk`: A's suspend recorded, B's
/// image checked; `Err` with the outcome when the run ends here.
fn save_on(
    vm: &mut Vm,
    run: &mut RunState,
    cfg: &RunConfig,
    kernel: &[u8],
    disk: &Path,
) -> Result<Result<Saved, Outcome>, RunError> {
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
                    rip: machine.vcpu().regs.rip,
                    dirty_pages: dirty.len() as u64,
                    pages_compared: j.pages_compared,
                    capture_us: 0,
                    compare_us: 0,
                    mismatches: mismatches.len() as u64,
                    ..CheckpointRecord::of(&id)
                });
                if !mismatches.is_empty() {
                    run.report().push_mismatches(mismatches);
                    let why = first_line("at kernel a's suspend", &first_mismatch(run));
                    return Ok(Err(run.outcome(Verdict::Fail(why), "a")));
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
                    Some(fail) => return Ok(Err(run.outcome(fail, &guest))),
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
            return Ok(Err(run.outcome(
                Verdict::Fail(format!("kernel b's image of a: {e}")),
                "b",
            )));
        }
    };
    let expected_entry = oracle.jump_back_entry(Kernel::A);
    if image.entry() != expected_entry {
        return Ok(Err(run.outcome(
            Verdict::Fail(format!(
                "kernel b's image of a is entered at {:#x}, a asked to be re-entered at {expected_entry:#x}",
                image.entry()
            )),
            "b",
        )));
    }
    let check =
        check_against_record(&image, &oracle, Kernel::A, vm.memory(), &at).map_err(|source| {
            RunError::Disk(crate::scenario::disk::DiskError::Stat {
                path: disk.to_owned(),
                source,
            })
        })?;
    let peer_end = oracle
        .kimage(Kernel::A)
        .map(|k| k.peer_end)
        .ok_or(RunError::Protocol("kernel a jumped without a kimage"))?;
    let saved = Saved {
        pages_checked: check.pages_compared,
        image_pages: image.pages(),
        entry: image.entry(),
        oracle,
        tracker,
        peer_end,
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
        return Ok(Err(run.outcome(Verdict::Fail(why), "b")));
    }
    Ok(Ok(saved))
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

/// VM 2: C boots, verifies and loads A's image, jumps to A's re-entry
/// point; A's resume checkpoint is checked against its record from VM 1.
fn restore_on(
    vm: &mut Vm,
    run: &mut RunState,
    cfg: &RunConfig,
    saved: &mut Saved,
) -> Result<Outcome, RunError> {
    // A new machine: the oracle's shadow of RAM is read afresh; its record
    // of A stays. C may be another kernel: no checkpoint address is known.
    saved.oracle.forget_memory();
    vm.set_checkpoint_rip(None);
    for (field, reason) in RESTORE_ALLOWLIST {
        run.report()
            .allowlist
            .push(kjump_core::report::AllowedField {
                field: (*field).to_owned(),
                reason: (*reason).to_owned(),
            });
    }
    let mut resumed = false;
    loop {
        let mut id = None;
        let tracker = &mut saved.tracker;
        let event = vm.run_until_event(&mut || {
            let i = tracker.next();
            id = Some(i);
            i.direction.answer()
        })?;
        match event {
            VmEvent::Message(HarnessEvent::Kimage { .. }) => {
                // C's kimage back to A: it has no pages (A's relocation
                // code finishes the restore).
                log::debug!("kernel c reported its kimage");
            }
            VmEvent::Checkpoint { .. } => {
                let id = id.ok_or(RunError::Protocol("checkpoint without identity"))?;
                match (id.kernel, id.direction) {
                    // C's jump to A, in B's place: C is not judged here.
                    (Kernel::B, Direction::Suspend) if !resumed => {
                        log::info!("kernel c jumps to a's re-entry point");
                        vm.set_console_name("a");
                    }
                    (Kernel::A, Direction::Resume) if !resumed => {
                        resumed = true;
                        let machine = vm.capture_machine()?;
                        let dirty = vm.dirty_pages()?;
                        let at = At::of(&id);
                        let mut mismatches =
                            saved.oracle.observe_memory(vm.memory(), &dirty, &at)?;
                        let j = saved.oracle.check_resume(&id, &machine)?;
                        let (excused, kept): (Vec<Mismatch>, Vec<Mismatch>) =
                            j.mismatches.into_iter().partition(restore_excuses);
                        for m in &excused {
                            log::info!("excused after the restore: {}", m.explain());
                        }
                        mismatches.extend(kept);
                        run.checkpoints += 1;
                        run.set_cycles(1);
                        run.report().push_checkpoint(CheckpointRecord {
                            rip: machine.vcpu().regs.rip,
                            dirty_pages: dirty.len() as u64,
                            pages_compared: j.pages_compared,
                            capture_us: 0,
                            compare_us: 0,
                            mismatches: mismatches.len() as u64,
                            ..CheckpointRecord::of(&id)
                        });
                        if !mismatches.is_empty() {
                            let n = mismatches.len();
                            run.report().push_mismatches(mismatches);
                            let why = first_line(
                                &format!(
                                    "{n} mismatch(es) at kernel a's resume in the new VM (restored from its image)"
                                ),
                                &first_mismatch(run),
                            );
                            return Ok(run.outcome(Verdict::Fail(why), "a"));
                        }
                        log::info!(
                            "kernel a resumed in the new VM: {} pages of its view, its registers and devices as it left them",
                            j.pages_compared
                        );
                    }
                    _ => {
                        return Err(RunError::Protocol(
                            "after the restore only c's jump and a's resume are checkpoints",
                        ));
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
                    Some(Verdict::Pass) if guest == "a" && resumed => {
                        let verdict = match &cfg.inject {
                            Some(inj) => Verdict::Fail(format!(
                                "the injected fault {} was not caught: the run passed",
                                inj.spec
                            )),
                            None => Verdict::Pass,
                        };
                        return Ok(run.outcome(verdict, "a"));
                    }
                    Some(Verdict::Pass) => {
                        return Err(RunError::Protocol(
                            "a kernel reported pass before kernel a was checked in the new VM",
                        ));
                    }
                    Some(fail) => return Ok(run.outcome(fail, &guest)),
                }
            }
        }
    }
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
