//! `kjump resume FILE`: a fresh VM is built from a dump alone — its RAM and
//! complete vCPU state, no kernel loaded, nothing booted — and runs on from
//! the dump's checkpoint; the oracle goes on checking every checkpoint as
//! the run that wrote the dump would have, to the scenario's end.
//!
//! The dump carries what the oracle needs besides memory and vCPU (the
//! KJUMP note's [`ResumeRecord`]): the cycles asked for, both kernels' last
//! kimage reports, the UART at the checkpoint, and what the oracle recorded
//! when the kernel that is away last suspended (its vCPU and UART). From
//! them and the dump's RAM the oracle is seeded ([`crate::scenario::pingpong`]):
//! - the tracker is as right after the dump's checkpoint;
//! - the dump's kernel is at home: at a suspend, its registers are the
//!   dump's, its UART the record's, its view recorded from the dump's RAM
//!   (as the run recorded it there);
//! - the kernel that is away (once booted) has its registers and UART from
//!   the record, and its view recorded where its kimage parks its pages.
//!
//! So the first resume of either kernel after the dump is checked in full,
//! registers, device and memory. What a resumed run cannot know is the
//! away kernel's view as it was *recorded* at its suspend: it is taken
//! from its parked pages in the dump, which the run that wrote the dump had
//! just checked against that view at the dump's checkpoint.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kjump_core::checkpoint::{CheckpointId, Direction, Kernel, Tracker};
use kjump_core::dump::{self, Dump, DumpError, ResumeRecord};
use kjump_core::kimage::Kimage;
use kjump_core::oracle::KernelRecord;
use kjump_core::state::MachineState;
use vm_superio::serial::SerialState;

use crate::config::{ResumeConfig, RunConfig, Scenario};
use crate::scenario::pingpong::{self, Seed};
use crate::scenario::{Outcome, RunError, RunOptions, RunState};
use crate::vm::vcpu::RegDump;
use crate::vm::watchdog;
use crate::vm::{Vm, VmConfig};

/// Why a dump cannot be resumed, or the resumed run could not be carried
/// out (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The dump is unreadable, truncated or corrupt.
    #[error(transparent)]
    Dump(#[from] DumpError),
    /// A hibernation image that is refused (the cause says why).
    #[error(transparent)]
    Image(#[from] kjump_core::dump::CoreFileError),
    /// The dump is not a regular file (a FIFO would block the reader).
    #[error("cannot read the dump")]
    DumpFile(#[source] kjump_core::files::InputError),
    /// The dump is sound but lacks what resuming needs.
    #[error("{}: cannot be resumed: {why}", path.display())]
    NotResumable { path: PathBuf, why: String },
    /// The kernel file given for symbols could not be read (the cause
    /// names it).
    #[error("cannot read the kernel")]
    ReadKernel(#[source] kjump_core::files::InputError),
    /// The resumed run failed (the VM, the guest, the oracle's input).
    #[error(transparent)]
    Run(#[from] RunError),
}

impl ResumeError {
    /// The vCPU registers to print under the message, for guest failures.
    pub fn regs(&self) -> Option<&RegDump> {
        match self {
            Self::Run(e) => e.regs(),
            _ => None,
        }
    }
}

/// A dump found fit to resume: its checkpoint and record.
#[derive(Debug)]
pub struct Plan {
    pub at: CheckpointId,
    pub record: ResumeRecord,
}

/// Checks that `dump` can be resumed: a resumable image with a resume
/// record of a ping-pong run, taken at a checkpoint of its sequence, with
/// the kimage reports and the away kernel's record that checkpoint needs.
pub fn plan(dump: &Dump) -> Result<Plan, ResumeError> {
    let not = |why: String| ResumeError::NotResumable {
        path: dump.path().to_path_buf(),
        why,
    };
    let meta = dump.meta();
    let at = meta.id;
    if !meta.resumable {
        return Err(not("it is marked not resumable".into()));
    }
    let Some(record) = dump.resume() else {
        return Err(not(format!(
            "it has no resume record (KJUMP note version {}; kjump writes one in dumps taken at a checkpoint, e.g. with --dump every-jump)",
            meta.version
        )));
    };
    if record.scenario != Scenario::PingPong.name() {
        return Err(not(format!(
            "it was taken in scenario {:?}, kjump resumes ping-pong",
            record.scenario
        )));
    }
    let Some(tracker) = Tracker::resume_after(at) else {
        return Err(not(format!(
            "checkpoint #{} (cycle {}, kernel {}, {}) is not one of the ping-pong sequence",
            at.index,
            at.cycle,
            at.kernel.name(),
            at.direction.name()
        )));
    };
    if tracker.cycles_completed() > record.cycles {
        return Err(not(format!(
            "it is past the end of its run: {} cycles completed of {} asked",
            tracker.cycles_completed(),
            record.cycles
        )));
    }
    // A reports its kimage before its first checkpoint, B before its
    // first (#1); every checkpoint from #1 on has the other kernel away.
    if record.kimage_a.is_none() {
        return Err(not("it has no kimage report of kernel a".into()));
    }
    let b_booted = at.index >= 1;
    if b_booted && record.kimage_b.is_none() {
        return Err(not("it has no kimage report of kernel b".into()));
    }
    // (The reader refuses a peer record at #0: it must predate the dump.)
    if b_booted && record.peer.is_none() {
        return Err(not(format!(
            "it has no record of kernel {}, which is away",
            at.kernel.peer().name()
        )));
    }
    Ok(Plan {
        at,
        record: record.clone(),
    })
}

/// The oracle's records at the dump's checkpoint, the kimages read from the
/// VM built from the dump.
fn seed(vm: &Vm, dump_state: &kjump_core::state::VcpuState, plan: &Plan) -> Result<Seed, RunError> {
    let (at, r) = (plan.at, &plan.record);
    let mem = vm.memory();
    let mut kernels: [KernelRecord; 2] = Default::default();
    // A's list lies in A's own memory outside the region it gives B, which
    // is never parked: it reads in place whichever kernel runs.
    let args_a = r
        .kimage_a
        .ok_or(RunError::Protocol("no kimage of kernel a"))?;
    let a = Kimage::read(mem, &args_a)?;
    if Kernel::from(a.role) != Kernel::A {
        return Err(RunError::Protocol(
            "the dump's kimage of kernel a has role b",
        ));
    }
    if let Some(args_b) = r.kimage_b {
        // B's list is in B's memory: parked while a runs.
        let b = if at.kernel == Kernel::B {
            Kimage::read(mem, &args_b)?
        } else {
            Kimage::read_parked(mem, &args_b, a.peer_moves())?
        };
        if Kernel::from(b.role) != Kernel::B {
            return Err(RunError::Protocol(
                "the dump's kimage of kernel b has role a",
            ));
        }
        kernels[1].kimage = Some(b);
        kernels[1].kimage_args = Some(args_b);
    }
    kernels[0].kimage = Some(a);
    kernels[0].kimage_args = Some(args_a);
    if at.direction == Direction::Suspend {
        let k = &mut kernels[at.kernel.idx()];
        k.suspended_at = Some(at);
        k.machine = Some(MachineState::with_devices(
            dump_state.clone(),
            r.uart.clone(),
            r.devices.clone(),
        ));
    }
    if let Some(p) = &r.peer {
        let k = &mut kernels[p.kernel.idx()];
        k.suspended_at = Some(p.suspended_at);
        k.machine = Some(MachineState::with_devices(
            p.state.clone(),
            p.uart.clone(),
            p.devices.clone(),
        ));
    }
    Ok(Seed { at, kernels })
}

/// The options of the run the resumed one continues.
fn run_config(args: &ResumeConfig, record: &ResumeRecord) -> RunConfig {
    RunConfig {
        scenario: Scenario::PingPong,
        cycles: record.cycles,
        kernel: args.kernel.clone(),
        timeout: args.timeout,
        max_time: args.max_time,
        report: args.report.clone(),
        junit: args.junit.clone(),
        dump_dir: args.dump_dir.clone(),
        dump: args.dump,
        dump_max_bytes: args.dump_max_bytes,
        compare: args.compare,
        gdb: args.gdb.clone(),
        ..RunConfig::default()
    }
}

/// The kernel for symbols: no larger than the dump's guest RAM, which it
/// ran in (a device or a FIFO is refused before it is read).
fn read_kernel(path: Option<&Path>, mem_size: u64) -> Result<Vec<u8>, ResumeError> {
    match path {
        Some(p) => kjump_core::files::read_input(p, mem_size, "the dump's guest RAM")
            .map_err(ResumeError::ReadKernel),
        None => Ok(crate::DEFAULT_KERNEL.to_vec()),
    }
}

/// `kjump resume`: reads and checks the dump, builds the VM from it on the
/// vCPU thread under the watchdog, and runs the scenario on to its end.
pub fn resume(args: &ResumeConfig, opts: &RunOptions) -> Result<Outcome, ResumeError> {
    crate::scenario::check_outputs(&[
        ("--report", args.report.as_deref()),
        ("--junit", args.junit.as_deref()),
    ])?;
    kjump_core::files::check_input(&args.file).map_err(ResumeError::DumpFile)?;
    if kjump_core::hibimage::DiskImage::is_image(&args.file) {
        return crate::scenario::resume_image::resume_image(args, opts);
    }
    let dump = dump::read_dump(&args.file)?;
    let plan = plan(&dump)?;
    let kernel = read_kernel(args.kernel.as_deref(), dump.meta().mem_size)?;
    // Held until the run ends.
    let _dump_lock = args
        .dump_dir
        .as_deref()
        .map(crate::scenario::check_dump_dir)
        .transpose()?;
    let run_cfg = run_config(args, &plan.record);
    let gdb_listener = crate::gdb::bind_at_start(&args.gdb).map_err(ResumeError::Run)?;
    log::info!(
        "resuming {} at checkpoint #{} (cycle {}, kernel {}, {}) of {} cycles",
        args.file.display(),
        plan.at.index,
        plan.at.cycle,
        plan.at.kernel.name(),
        plan.at.direction.name(),
        plan.record.cycles
    );
    let wd = crate::scenario::watchdog_config(args.timeout(), args.max_time(), opts);
    let console = opts.console.clone();
    let kvm_device = opts.kvm_device.clone();
    let ledger = opts.ledger.clone();
    let start = Instant::now();
    let outcome = watchdog::run_guarded(&wd, move |stop| {
        let mut cfg = VmConfig::new(Vec::new(), "");
        cfg.console = console;
        cfg.stop = stop;
        if let Some(dev) = kvm_device {
            cfg.kvm_device = dev;
        }
        let mut vm = Vm::from_image(&cfg, dump.meta().mem_size, &dump, dump.state())
            .map_err(|e| RunError::from(e).symbolize(&kernel))?;
        let mut run = RunState::new(Scenario::PingPong, start, &ledger);
        let result = (|| {
            vm.set_serial_state(&SerialState::from(&plan.record.uart))?;
            vm.restore_devices(&plan.record.devices)?;
            let seed = seed(&vm, dump.state(), &plan)?;
            if let Some(l) = gdb_listener {
                crate::gdb::attach_at_start(&mut vm, l, "at the dump's checkpoint");
            }
            let result = pingpong::run_from(&mut vm, &mut run, &run_cfg, &kernel, Some(seed));
            crate::gdb::after_run(&mut vm, result, &run_cfg.gdb)
        })();
        result.map_err(|e| run.failed(e.symbolize(&kernel), &vm))
    })
    .map_err(RunError::from)??;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kjump_core::dump::{DumpInput, SuspendRecord, UartState, write_dump};
    use kjump_core::state::testing::sample_state;
    use vm_memory::GuestAddress;

    fn record(peer: Option<Kernel>) -> ResumeRecord {
        ResumeRecord {
            scenario: "ping-pong".into(),
            cycles: 3,
            kimage_a: Some([1; 8]),
            kimage_b: Some([2; 8]),
            uart: UartState::from(&SerialState::default()),
            devices: Vec::new(),
            peer: peer.map(|k| SuspendRecord {
                kernel: k,
                suspended_at: CheckpointId {
                    index: 1,
                    cycle: 1,
                    kernel: k,
                    direction: Direction::Suspend,
                },
                state: sample_state(),
                uart: UartState::from(&SerialState::default()),
                devices: Vec::new(),
            }),
        }
    }

    /// Writes a small dump at `id` with `record`, and plans its resume.
    fn plan_of(
        dir: &Path,
        id: CheckpointId,
        record: Option<&ResumeRecord>,
        resumable: bool,
    ) -> Result<Plan, ResumeError> {
        let mem = kjump_core::GuestMem::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let state = sample_state();
        let path = dir.join("d.core");
        let input = DumpInput {
            state: &state,
            id: &id,
            jump_back_entry: 0,
            resumable,
            memory: &mem,
            kernel_name: "built-in",
            mem_size: 1 << 20,
            kjump_version: "test",
            resume: record,
        };
        write_dump(&path, &input).unwrap();
        plan(&dump::read_dump(&path).unwrap())
    }

    #[test]
    fn only_dumps_that_carry_what_resuming_needs_are_planned() {
        let dir = std::env::temp_dir().join(format!("kjump-resume-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let id = |index, cycle, kernel, direction| CheckpointId {
            index,
            cycle,
            kernel,
            direction,
        };
        let b_resume = id(4, 2, Kernel::B, Direction::Resume);
        let p = plan_of(&dir, b_resume, Some(&record(Some(Kernel::A))), true).unwrap();
        assert_eq!((p.at, p.record.cycles), (b_resume, 3));
        let first = id(0, 1, Kernel::A, Direction::Suspend);
        let mut r = record(None);
        r.kimage_b = None;
        assert!(plan_of(&dir, first, Some(&r), true).is_ok());

        let why = |id, r: Option<&ResumeRecord>, resumable| {
            let e = plan_of(&dir, id, r, resumable).unwrap_err();
            assert!(matches!(e, ResumeError::NotResumable { .. }), "{e}");
            let s = e.to_string();
            assert!(!s.contains('\n'), "{s}");
            s
        };
        assert!(why(b_resume, None, true).contains("no resume record"));
        assert!(why(b_resume, Some(&record(Some(Kernel::A))), false).contains("not resumable"));
        let mut other = record(Some(Kernel::A));
        other.scenario = "hibernate".into();
        assert!(why(b_resume, Some(&other), true).contains("scenario"));
        let odd = id(5, 2, Kernel::B, Direction::Resume);
        assert!(why(odd, Some(&record(Some(Kernel::A))), true).contains("not one of"));
        let past = id(14, 4, Kernel::A, Direction::Resume);
        let mut r = record(Some(Kernel::B));
        r.peer.as_mut().unwrap().suspended_at.index = 13;
        r.peer.as_mut().unwrap().suspended_at.cycle = 4;
        assert!(why(past, Some(&r), true).contains("past the end"));
        let mut r = record(Some(Kernel::A));
        r.kimage_b = None;
        assert!(why(b_resume, Some(&r), true).contains("kimage report of kernel b"));
        assert!(why(b_resume, Some(&record(None)), true).contains("no record of kernel a"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
