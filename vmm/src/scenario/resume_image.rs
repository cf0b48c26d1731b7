//! `kjump resume IMAGE`: kernel A brought back from a hibernation image on
//! the host side, the VMM doing what restore kernel C does, and checked
//! against the image.
//!
//! ```text
//! VMM:  a fresh VM (the image's RAM size, a disk, the in-kernel irqchip),
//!       every range of the image written in place; the vCPU, in its boot
//!       state, entered at the image's entry (A's relocation code in its
//!       control page) on A's control page tables, as C's jump enters it
//! A:    swaps its pages of B's region back from its source pages, its
//!       re-entry path restores its registers and devices (the disk reset)
//!       ── resume checkpoint: every register of the context A saved in
//!       the image and rip at A's checkpoint; every page of A's view of the
//!       image, at home ── A checks its CPU state and pattern, reloads B
//!       and jumps to a fresh B once (ping-pong, judged by an oracle as in
//!       a run) ── A reports pass
//! ```
//!
//! The image holds A's memory and its saved context, not a vCPU state of
//! KVM's or the oracle's record (devices, the full XSAVE area, MSRs): what
//! it holds is what is checked. The hibernate scenario checks all of A
//! against the oracle's record from VM 1.

use kjump_core::checkpoint::{CheckpointId, Direction, Kernel, Tracker};
use kjump_core::harness::HarnessEvent;
use kjump_core::hibimage::{DiskImage, check_restored};
use kjump_core::kimage::Kimage;
use kjump_core::oracle::{Allowlist, Oracle};
use kjump_core::report::{At, CheckpointRecord};
use kjump_core::symbols::Symbols;

use crate::config::{ResumeConfig, Scenario};
use crate::scenario::disk::Disk;
use crate::scenario::resume::ResumeError;
use crate::scenario::{
    Outcome, RunError, RunOptions, RunState, Verdict, handle_message, run_tracked, run_watched,
};
use crate::vm::{BLOCK_DEVICE, Vm, VmConfig, VmEvent};

/// Where the VMM enters A: the image's entry on A's control page stack
/// and page tables, both read from the control page the entry lies in.
struct Entry {
    rip: u64,
    rsp: u64,
    cr3: u64,
}

fn entry_of(img: &DiskImage) -> Result<Entry, String> {
    use kjump_abi::control;
    use kjump_core::dump::RamSource;
    let cp = img.entry() & !(kjump_abi::layout::PAGE_SIZE - 1);
    let mut w = [0u8; 8];
    img.read_ram(cp + control::DATA_PAGE_TABLE, &mut w)
        .map_err(|_| format!("its entry's control page {cp:#x} is not in the image"))?;
    Ok(Entry {
        rip: img.entry(),
        rsp: cp + control::STACK_TOP - 8,
        cr3: u64::from_le_bytes(w),
    })
}

/// The new VM's RAM: the image's ranges, and poison where the image holds
/// nothing (B's region: where C ran, here the VMM): every word
/// `HANDOVER_POISON + its address`, so a page of A's that its relocation
/// code does not bring back is seen even where A had zeros.
struct Poisoned<'a> {
    image: &'a DiskImage,
    mem: u64,
}

impl kjump_core::dump::RamSource for Poisoned<'_> {
    fn ram_ranges(&self) -> Vec<(u64, u64)> {
        vec![(0, self.mem)]
    }

    fn read_ram(&self, addr: u64, buf: &mut [u8]) -> Result<(), kjump_core::dump::DumpError> {
        let page = kjump_abi::layout::PAGE_SIZE;
        let mut done = 0usize;
        while done < buf.len() {
            let at = addr + done as u64;
            let n = ((at & !(page - 1)) + page - at).min((buf.len() - done) as u64) as usize;
            let out = &mut buf[done..done + n];
            if self.image.read_ram(at, out).is_err() {
                for (i, b) in out.iter_mut().enumerate() {
                    let a = at + i as u64;
                    let w = kjump_abi::control::HANDOVER_POISON + (a & !7);
                    *b = w.to_le_bytes()[(a & 7) as usize];
                }
            }
            done += n;
        }
        Ok(())
    }
}

/// `kjump resume IMAGE`: the image verified, A entered in a fresh VM and
/// checked at its resume checkpoint; A's own verdict ends the run.
pub fn resume_image(args: &ResumeConfig, opts: &RunOptions) -> Result<Outcome, ResumeError> {
    let not = |why: String| ResumeError::NotResumable {
        path: args.file.clone(),
        why,
    };
    let img = DiskImage::open_any(&args.file).map_err(|source| {
        ResumeError::Image(kjump_core::dump::CoreFileError::Image {
            path: args.file.clone(),
            source,
        })
    })?;
    if img.is_vmcore() {
        return Err(not(
            "it is a vmcore (a crashed kernel's memory, never resumed: kjump inspect, kjump diff or gdb read it)"
                .into(),
        ));
    }
    if !img.resumable() {
        return Err(not("the image is not marked resumable".into()));
    }
    let view = img.view().map_err(|e| not(e.to_string()))?;
    let ranges = kjump_core::dump::RamSource::ram_ranges(&view);
    let mem = match ranges[..] {
        [(0, len)] if len <= kjump_abi::layout::MMIO_HOLE_START => len,
        _ => {
            return Err(not(
                "kernel a's view is not one run of RAM from 0 below the 32-bit hole".into(),
            ));
        }
    };
    let entry = entry_of(&img).map_err(not)?;
    let kernel = match &args.kernel {
        Some(p) => kjump_core::files::read_input(p, mem, "the image's guest RAM")
            .map_err(ResumeError::ReadKernel)?,
        None => crate::DEFAULT_KERNEL.to_vec(),
    };
    let symbols = Symbols::from_elf(&kernel).ok();
    let Some(checkpoint) = symbols
        .as_ref()
        .and_then(|s| s.address_of("kjump_checkpoint"))
    else {
        return Err(not(
            "the kernel has no kjump_checkpoint symbol to find a's checkpoint".into(),
        ));
    };
    crate::scenario::check_outputs(&[
        ("--report", args.report.as_deref()),
        ("--junit", args.junit.as_deref()),
    ])?;
    // A's device resume resets the disk it hands over: the VM has one (a
    // temporary file; the image is never written).
    let disk = Disk::prepare(None, 1 << 20, 1 << 20).map_err(RunError::Disk)?;
    let mut cfg = VmConfig::new(
        kernel.clone(),
        format!(
            "{}=a {}=hibernate {BLOCK_DEVICE}",
            kjump_abi::cmdline::ROLE_KEY,
            kjump_abi::cmdline::SCENARIO_KEY
        ),
    );
    cfg.mem_size = mem;
    cfg.irqchip = true;
    cfg.disk = Some(disk.path().to_owned());
    cfg.console = opts.console.clone();
    cfg.console_name = "a".into();
    if let Some(dev) = &opts.kvm_device {
        cfg.kvm_device = dev.clone();
    }
    let wd = crate::scenario::watchdog_config(args.timeout(), args.max_time(), opts);
    log::info!(
        "resuming kernel a from the image {}: entry {:#x}, {} pages, {} parked",
        args.file.display(),
        img.entry(),
        img.pages(),
        view.parked_pages()
    );
    drop(view);
    let outcome = run_watched(&wd, opts, Scenario::Hibernate, cfg, move |cfg, mut run| {
        let result = (|| {
            let view = img
                .view()
                .map_err(|_| RunError::Protocol("the image's view went away"))?;
            let mut vm = Vm::new(&cfg)?;
            let ram = Poisoned { image: &img, mem };
            vm.enter_image(&ram, entry.rip, entry.rsp, entry.cr3)?;
            vm.set_checkpoint_rip(Some(checkpoint));
            run_restored(&mut vm, &mut run, &view, checkpoint, symbols.as_ref())
                .map_err(|e| run.failed(e, &vm))
        })();
        drop(disk);
        result.map_err(|e| e.symbolize(&cfg.kernel))
    })?;
    Ok(outcome)
}

/// Runs A from its entry to its verdict: its resume checkpoint checked
/// against the image ([`check_restored`]); then, as after a restore by C,
/// A reloads B and jumps to a fresh B once, ping-pong fashion, each
/// checkpoint judged by an oracle as in a run (A recorded at its suspend
/// and checked in full at its resume).
fn run_restored(
    vm: &mut Vm,
    run: &mut RunState,
    view: &kjump_core::hibimage::ImageView<'_>,
    checkpoint: u64,
    symbols: Option<&Symbols>,
) -> Result<Outcome, RunError> {
    let mut oracle = Oracle::new(
        symbols.cloned(),
        Allowlist::standard(),
        kjump_core::oracle::CompareMode::Dirty,
    );
    *run.report() =
        kjump_core::report::Report::new("hibernate", 1, "dirty", oracle.allowlist().entries());
    // Numbered as in the hibernate run: A's suspend #0 (saved), the
    // restore kernel's jump in B's place #1, A's resume #2 (here).
    let mut tracker = Tracker::resume_after(CheckpointId {
        index: 0,
        cycle: 1,
        kernel: Kernel::A,
        direction: Direction::Suspend,
    })
    .ok_or(RunError::Protocol("no checkpoint after a's suspend"))?;
    tracker.next();
    let mut checked = false;
    loop {
        let (event, id) = run_tracked(vm, &mut tracker)?;
        match event {
            VmEvent::Checkpoint { .. } => {
                let id = id.ok_or(RunError::Protocol("checkpoint without identity"))?;
                let first = !checked;
                if first && (id.kernel, id.direction) != (Kernel::A, Direction::Resume) {
                    return Err(RunError::Protocol(
                        "the first checkpoint after the image's entry is not kernel a's resume",
                    ));
                }
                checked = true;
                let machine = vm.capture_machine()?;
                let dirty = vm.dirty_pages()?;
                let at = At::of(&id);
                let (pages_compared, mismatches) = if first {
                    let c = check_restored(
                        view,
                        machine.vcpu(),
                        checkpoint,
                        Direction::Resume.answer(),
                        vm.memory(),
                        &at,
                        symbols,
                    )?;
                    (c.pages_compared, c.mismatches)
                } else {
                    let j = oracle.checkpoint(&id, &machine, vm.memory(), &dirty)?;
                    (j.pages_compared, j.mismatches)
                };
                run.checkpoints += 1;
                run.set_cycles(1);
                run.report().push_checkpoint(CheckpointRecord {
                    rip: machine.vcpu().regs.rip,
                    dirty_pages: dirty.len() as u64,
                    pages_compared,
                    mismatches: mismatches.len() as u64,
                    ..CheckpointRecord::of(&id)
                });
                if !mismatches.is_empty() {
                    let n = mismatches.len();
                    let first_line = mismatches[0].explain();
                    run.report().push_mismatches(mismatches);
                    let what = if first {
                        "at kernel a's resume from its image".to_owned()
                    } else {
                        format!("at kernel {}'s {}", id.kernel.name(), id.direction.name())
                    };
                    let why = format!(
                        "{n} mismatch(es) {what}: first: {}",
                        first_line.lines().next().unwrap_or_default()
                    );
                    return Ok(run.outcome(Verdict::Fail(why), id.kernel.name()));
                }
                if first {
                    log::info!(
                        "kernel a resumed from its image: {pages_compared} pages of its view and its saved registers as the image holds them"
                    );
                    // A loads B afresh now: B boots at A's next jump.
                    tracker.peer_reloaded();
                    oracle.peer_reloaded();
                }
                vm.set_console_name(match (id.kernel, id.direction) {
                    (Kernel::A, Direction::Suspend) => "b",
                    _ => "a",
                });
            }
            VmEvent::Breakpoint { .. } => {
                return Err(RunError::Protocol(
                    "a breakpoint fired that the VMM did not set",
                ));
            }
            VmEvent::Message(HarnessEvent::Kimage { args }) => {
                let k = Kimage::read(vm.memory(), &args)?;
                let kernel = Kernel::from(k.role);
                if !checked || kernel != tracker.running() {
                    return Err(RunError::Protocol(
                        "a kimage reported out of turn after the image's entry",
                    ));
                }
                oracle.kimage_reported(kernel, k, args);
            }
            VmEvent::Message(ev) => {
                let guest = vm.console_name().to_owned();
                match handle_message(vm, run, ev)? {
                    None => {}
                    Some(Verdict::Pass) if checked && guest == "a" => {
                        return Ok(run.outcome(Verdict::Pass, "a"));
                    }
                    Some(Verdict::Pass) => {
                        return Err(RunError::Protocol(
                            "a kernel reported pass before kernel a's resume from its image",
                        ));
                    }
                    Some(fail) => return Ok(run.outcome(fail, &guest)),
                }
            }
        }
    }
}
