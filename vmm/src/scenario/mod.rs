//! Scenarios: what the VMM does with the guest between boot and verdict.
//!
//! [`run_scenario`] turns the command line into a [`VmConfig`] (kernel,
//! initramfs, guest command line), runs the scenario on the vCPU thread
//! under the [`crate::vm::watchdog`], and returns its [`Outcome`]. Each scenario
//! is a loop over [`Vm::run_until_event`]; the messages every scenario
//! treats alike (hello, log, panic, exception, verdict) go through
//! [`handle_message`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use kjump_abi::abi::vector_name;

pub mod boot;
pub mod crash;
pub mod disk;
pub mod hibernate;
pub mod pingpong;
pub mod resume;
pub mod resume_image;

use crate::config::{RunConfig, Scenario, format_size};
use crate::faults::FaultError;
use crate::vm::serial::ConsoleSink;
use crate::vm::vcpu::RegDump;
use crate::vm::watchdog::{self, WatchdogConfig, WatchdogError};
use crate::vm::{Vm, VmConfig, VmError, VmEvent};
use kjump_core::checkpoint::{CheckpointId, Tracker};
use kjump_core::files::{self, InputError};
use kjump_core::harness::HarnessEvent;
use kjump_core::report::Report;
use kjump_core::text::{QUOTE_MAX, escape, quote};

/// The guest's (or the oracle's) judgement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
    /// The guests ran to their end with capture and comparison off
    /// (`--no-check`): nothing was verified. Never a pass (exit code 3).
    Unchecked,
}

/// How a run that could be carried out ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub scenario: Scenario,
    pub verdict: Verdict,
    /// The kernel that gave the verdict.
    pub guest: String,
    pub elapsed: Duration,
    /// Checkpoints answered.
    pub checkpoints: u64,
    /// The last cycle count the guest reported.
    pub cycles: u64,
    /// The checkpoint-by-checkpoint report.
    pub report: kjump_core::report::Report,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Pass
    }

    /// 0 when every check passed, 1 when one failed, 3 when nothing was
    /// checked (`--no-check`).
    pub fn exit_code(&self) -> u8 {
        match self.verdict {
            Verdict::Pass => 0,
            Verdict::Fail(_) => 1,
            Verdict::Unchecked => 3,
        }
    }

    /// The verdict line: `kjump: ping-pong: pass (10 of 10 cycles, 39
    /// checkpoints, 0.68 s)`, and for a failure the kernel and why.
    pub fn summary(&self) -> String {
        match &self.verdict {
            Verdict::Pass => self.report.verdict_line(None),
            Verdict::Fail(why) => self.report.verdict_line(Some(why)),
            Verdict::Unchecked => self.report.verdict_line(Some(
                "the guests ran with capture and comparison off (--no-check); nothing was verified",
            )),
        }
    }
}

/// Why a run could not be carried out (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// the kernel file could not be read (the cause names it)
    #[error("cannot read the kernel")]
    ReadKernel(#[source] InputError),
    /// the initramfs file could not be read (the cause names it)
    #[error("cannot read the initramfs")]
    ReadInitramfs(#[source] InputError),
    /// an output the run was asked for cannot be written
    #[error("cannot write {what} {}", .path.display())]
    Output {
        /// The option: `--report`, `--junit`.
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// the default initramfs could not be built
    #[error("cannot build the initramfs")]
    Initramfs(#[source] kjump_initramfs::ArchiveError),
    /// known, not implemented
    #[error("scenario {0} is not built yet")]
    NotBuilt(Scenario),
    /// the VM failed
    #[error(transparent)]
    Vm(#[from] VmError),
    /// the guest panicked (its message quoted, escaped and cut: one line)
    #[error("guest {guest} panicked: {}", quote(.text, QUOTE_MAX))]
    GuestPanic {
        guest: String,
        text: String,
        regs: Box<RegDump>,
    },
    /// a CPU exception reached the guest's IDT
    #[error(
        "guest {guest}: exception {} at rip={rip:#x}{} (vector {vector}, error code {error_code:#x}, cr2={cr2:#x}, rsp={rsp:#x}, rflags={rflags:#x}, cs={cs:#x})",
        vector_name(*.vector),
        crate::vm::vcpu::in_parens(.rip_symbol.as_deref())
    )]
    GuestException {
        guest: String,
        vector: u64,
        error_code: u64,
        rip: u64,
        cs: u64,
        rflags: u64,
        rsp: u64,
        cr2: u64,
        /// The guest kernel symbol of `rip`, once looked up.
        rip_symbol: Option<String>,
        regs: Box<RegDump>,
    },
    /// the watchdog or the vCPU thread failed
    #[error(transparent)]
    Watchdog(#[from] WatchdogError),
    /// The guest broke the harness protocol.
    #[error("guest protocol error: {0}")]
    Protocol(&'static str),
    /// Settings the run cannot be carried out with.
    #[error("{0}")]
    Settings(String),
    /// `--dump-dir` is in use by another run.
    #[error("cannot use the dump directory: {0}")]
    DumpDirLock(#[source] files::LockError),
    /// Dumps would not fit: the disk, or the `--dump-max-bytes` budget.
    #[error("{0}")]
    DumpSpace(String),
    /// A user-supplied initramfs the scenario cannot use.
    #[error("initramfs {}: {why}", .path.display())]
    BadInitramfs { path: PathBuf, why: String },
    /// `--inject` named no known fault, or one this run cannot catch.
    #[error(transparent)]
    Fault(#[from] FaultError),
    /// `--gdb` cannot listen where asked.
    #[error(transparent)]
    Gdb(#[from] crate::gdb::GdbError),
    #[error("cannot capture the vCPU state")]
    Snapshot(#[from] crate::vm::capture::SnapshotError),
    #[error("cannot read guest memory")]
    Pages(#[from] kjump_core::pages::PageError),
    #[error(transparent)]
    Kimage(#[from] kjump_core::kimage::KimageError),
    #[error(transparent)]
    Oracle(#[from] kjump_core::oracle::OracleError),
    #[error(transparent)]
    Dump(#[from] kjump_core::dump::DumpError),
    /// The disk file could not be prepared.
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    /// `--dump-dir` cannot be created or written.
    #[error("cannot use the dump directory {}", .path.display())]
    DumpDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl RunError {
    /// Whether this is about an output file the run was asked to write
    /// (then no report is written either).
    pub fn is_output_error(&self) -> bool {
        matches!(self, Self::Output { .. })
    }

    /// The kernel a guest failure happened in.
    pub fn guest(&self) -> Option<&str> {
        match self {
            Self::Vm(VmError::Guest { guest, .. })
            | Self::GuestPanic { guest, .. }
            | Self::GuestException { guest, .. } => Some(guest),
            _ => None,
        }
    }

    /// The vCPU registers to print under the message, for guest failures.
    pub fn regs(&self) -> Option<&RegDump> {
        match self {
            Self::Vm(e) => e.regs(),
            Self::GuestPanic { regs, .. } | Self::GuestException { regs, .. } => Some(regs),
            _ => None,
        }
    }

    /// Names the guest symbols of the failing rip (and of the vCPU's) from
    /// the guest kernel's ELF, so that a hang, a triple fault or an
    /// exception says where.
    pub fn symbolize(mut self, kernel_elf: &[u8]) -> Self {
        let Ok(symbols) = kjump_core::symbols::Symbols::from_elf(kernel_elf) else {
            return self;
        };
        match &mut self {
            Self::Vm(e) => e.symbolize(&symbols),
            Self::GuestException {
                rip,
                rip_symbol,
                regs,
                ..
            } => {
                *rip_symbol = symbols.lookup(*rip);
                regs.rip_symbol = symbols.lookup(regs.regs.rip);
            }
            Self::GuestPanic { regs, .. } => regs.rip_symbol = symbols.lookup(regs.regs.rip),
            _ => {}
        }
        self
    }
}

/// How the run is hosted (not on the command line).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Where the guest's console lines go.
    pub console: ConsoleSink,
    /// Stop on SIGINT/SIGTERM (for the command line; tests leave it off).
    pub handle_signals: bool,
    /// The KVM device to open (`--kvm-device`; `None`: /dev/kvm).
    pub kvm_device: Option<std::path::PathBuf>,
    /// Where the run records what it has done, for the caller to report
    /// however the run ends.
    pub ledger: Ledger,
}

/// What a run has done so far, shared by the vCPU thread that does it and
/// the caller: a run that ends in an error — a guest crash, a signal, the
/// watchdog, even a vCPU thread the watchdog gave up on — still reports
/// the cycles and checkpoints it completed and the kernel that failed.
#[derive(Clone, Debug, Default)]
pub struct Ledger(Arc<Mutex<LedgerState>>);

#[derive(Debug, Default)]
struct LedgerState {
    /// The report as it grows (`None` before the scenario starts).
    report: Option<Report>,
    /// The kernel the run failed in, once known.
    failed_kernel: Option<String>,
    /// When the scenario started.
    started: Option<Instant>,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, LedgerState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the scenario started, if it did.
    pub fn started(&self) -> Option<Instant> {
        self.lock().started
    }

    /// Records the kernel the run failed in.
    pub fn set_failed_kernel(&self, kernel: &str) {
        self.lock().failed_kernel = Some(kernel.to_owned());
    }

    /// The report of a run that ended with `error`: everything it did
    /// before (or an empty report of `scenario` with `cycles` asked for, if
    /// it did not start), verdict `error`.
    pub fn error_report(&self, scenario: &str, cycles: u64, error: String, wall_us: u64) -> Report {
        let mut st = self.lock();
        let mut r = st
            .report
            .clone()
            .unwrap_or_else(|| Report::new(scenario, cycles, "none", &[]));
        r.failed_kernel = st.failed_kernel.take().or(r.failed_kernel);
        r.finish(Some(error), wall_us);
        r
    }
}

/// [`RunState::report`]: the ledger's report, locked.
pub struct ReportGuard<'a>(MutexGuard<'a, LedgerState>);

impl std::ops::Deref for ReportGuard<'_> {
    type Target = Report;
    fn deref(&self) -> &Report {
        self.0
            .report
            .as_ref()
            .expect("RunState::new puts a report in")
    }
}

impl std::ops::DerefMut for ReportGuard<'_> {
    fn deref_mut(&mut self) -> &mut Report {
        self.0
            .report
            .as_mut()
            .expect("RunState::new puts a report in")
    }
}

/// The guest command line for a run.
pub fn guest_cmdline(args: &RunConfig) -> String {
    use kjump_abi::cmdline::{CYCLES_KEY, MODE_KEY, PEER_MEM_KEY, ROLE_KEY, SCENARIO_KEY};
    let mut c = format!(
        "{ROLE_KEY}=a {SCENARIO_KEY}={} {CYCLES_KEY}={} {MODE_KEY}={} {PEER_MEM_KEY}={}",
        args.scenario,
        args.cycles,
        args.mode.name(),
        format_size(args.peer_mem)
    );
    let injected = args
        .inject
        .as_ref()
        .map(|i| i.guest_words())
        .unwrap_or_default();
    if args.scenario.has_disk() {
        c.push_str(&format!(" {}", crate::vm::BLOCK_DEVICE));
    }
    for word in injected.iter().chain(&args.append) {
        c.push(' ');
        c.push_str(word);
    }
    c
}

/// The settings file put into the default initramfs (`kjump/config`).
pub fn config_text(args: &RunConfig) -> String {
    format!(
        "scenario={}\ncycles={}\nmode={}\npeer_mem={}\n",
        args.scenario,
        args.cycles,
        args.mode.name(),
        format_size(args.peer_mem)
    )
}

/// Reads the kernel and initramfs and puts the VM's configuration together.
pub fn vm_config(args: &RunConfig, opts: &RunOptions) -> Result<VmConfig, RunError> {
    // Neither can be larger than guest RAM: a device, a FIFO or a huge
    // file is refused before it is read.
    let bound = format!("guest RAM (--mem {})", format_size(args.mem));
    let kernel = match &args.kernel {
        Some(path) => files::read_input(path, args.mem, &bound).map_err(RunError::ReadKernel)?,
        None => crate::DEFAULT_KERNEL.to_vec(),
    };
    let initramfs = match &args.initramfs {
        Some(path) => {
            let bytes =
                files::read_input(path, args.mem, &bound).map_err(RunError::ReadInitramfs)?;
            // Ping-pong cannot run without the kernel A jumps to: refuse
            // the archive up front. (The boot scenario hands any archive to
            // the guest, whose own reader is what it tests.)
            if args.scenario == Scenario::PingPong {
                check_initramfs(&bytes).map_err(|why| RunError::BadInitramfs {
                    path: path.clone(),
                    why,
                })?;
            }
            bytes
        }
        // Kernel B is the same kernel as A.
        None => kjump_initramfs::scenario_initramfs(&kernel, &config_text(args))
            .map_err(RunError::Initramfs)?,
    };
    let mut cfg = VmConfig::new(kernel, guest_cmdline(args));
    cfg.mem_size = args.mem;
    cfg.initramfs = Some(initramfs);
    cfg.timeout = args.timeout();
    cfg.console = opts.console.clone();
    if let Some(dev) = &opts.kvm_device {
        cfg.kvm_device = dev.clone();
    }
    Ok(cfg)
}

/// Runs the scenario `args` names, console on stdout, without signal handling.
/// The initramfs must be a valid newc archive holding kernel B's ELF.
fn check_initramfs(bytes: &[u8]) -> Result<(), String> {
    use kjump_abi::cpio::Reader;
    use kjump_abi::layout::KERNEL_B_PATH;
    match Reader::find(bytes, KERNEL_B_PATH) {
        Err(e) => Err(e.to_string()),
        Ok(None) => Err(format!("no {KERNEL_B_PATH} in the archive")),
        Ok(Some(e)) if !e.data.starts_with(b"\x7fELF") || e.data.len() <= 64 => {
            Err(format!("{KERNEL_B_PATH} is not an ELF file"))
        }
        Ok(Some(_)) => match Reader::find(bytes, kjump_abi::layout::CONFIG_PATH) {
            Err(e) => Err(e.to_string()),
            Ok(Some(c)) if std::str::from_utf8(c.data).is_err() => Err(format!(
                "{} is not UTF-8 text",
                kjump_abi::layout::CONFIG_PATH
            )),
            Ok(_) => Ok(()),
        },
    }
}

/// Refuses, before anything boots, settings the guest would only refuse
/// later with a self-check failure: a ping-pong of no cycles (a run that
/// checks nothing does not pass), and a `--peer-mem` the guest does not
/// take (below 4 MiB, not whole pages) or that RAM cannot hold (B's
/// region from 1 MiB, the source pages that keep its image, the
/// initramfs and a MiB for A's own tables).
pub fn check_settings(args: &RunConfig, initramfs_len: u64) -> Result<(), RunError> {
    if args.scenario != Scenario::PingPong {
        if args.unchecked {
            return Err(RunError::Settings(format!(
                "--no-check measures ping-pong only; {} would check anyway",
                args.scenario
            )));
        }
        return Ok(());
    }
    let bad = |why: String| Err(RunError::Settings(why));
    if args.cycles == 0 {
        return bad("--cycles 0: a ping-pong of no cycles checks nothing; give 1 or more".into());
    }
    let pm = args.peer_mem;
    if pm < MIN_PEER_MEM || !pm.is_multiple_of(kjump_abi::layout::PAGE_SIZE) {
        return bad(format!(
            "--peer-mem {}: the guest takes whole 4 KiB pages, at least 4M",
            format_size(pm)
        ));
    }
    let low_top = kjump_core::layout::low_ram_top(args.mem);
    let need = kjump_abi::layout::HIGH_RAM_START
        .saturating_add(pm.saturating_mul(2))
        .saturating_add(initramfs_len)
        .saturating_add(1 << 20);
    if kjump_abi::layout::HIGH_RAM_START + pm > low_top || need > args.mem {
        let max = args
            .mem
            .min(low_top * 2)
            .saturating_sub(kjump_abi::layout::HIGH_RAM_START + initramfs_len + (1 << 20))
            / 2;
        return bad(format!(
            "--peer-mem {} does not fit in --mem {}: B's region and the pages that keep its image need twice it plus the initramfs; at most about {} here",
            format_size(pm),
            format_size(args.mem),
            format_size(max & !((1 << 20) - 1))
        ));
    }
    Ok(())
}

/// The smallest `--peer-mem` the guest takes.
pub const MIN_PEER_MEM: u64 = 4 << 20;

/// Where checkpoint `id`'s dump goes in `dir`:
/// `cCCCCC-IIIII-KERNEL-DIRECTION{what}.core` (`what` is "" for the VM as
/// it is, "-left" for a kernel as it left, "-found" as it was found).
pub(crate) fn dump_path(dir: &Path, id: &CheckpointId, what: &str) -> PathBuf {
    dir.join(format!(
        "c{:05}-{:05}-{}-{}{what}.core",
        id.cycle,
        id.index,
        id.kernel.name(),
        id.direction.name()
    ))
}

/// The kernel a dump names: the `--kernel` file, or "built-in".
pub(crate) fn dump_kernel_name(cfg: &RunConfig) -> String {
    cfg.kernel
        .as_ref()
        .map_or("built-in".into(), |p| p.display().to_string())
}

/// Creates the dump directory and proves it writable before the run, so a
/// bad `--dump-dir` is refused up front, not at the first mismatch; and
/// removes the temporary files that runs killed while writing a dump left
/// there.
pub(crate) fn check_dump_dir(dir: &Path) -> Result<files::DirLock, RunError> {
    let err = |source| RunError::DumpDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let probe = dir.join(format!(".kjump-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)?;
    // One run at a time: two runs' dumps would mix under the same names.
    let lock = files::lock_dir(dir).map_err(RunError::DumpDirLock)?;
    let stale = files::remove_stale_temps(dir).map_err(err)?;
    if stale > 0 {
        log::info!(
            "removed {stale} temporary file(s) of dead kjump runs from {}",
            dir.display()
        );
    }
    Ok(lock)
}

/// Checks every output file a run was asked for (`--report FILE`, ...)
/// before the guest boots: a directory, a missing or unwritable directory,
/// a block device is refused now, not after the run.
pub(crate) fn check_outputs(outputs: &[(&'static str, Option<&Path>)]) -> Result<(), RunError> {
    for &(what, path) in outputs {
        if let Some(path) = path {
            files::check_output(path).map_err(|source| RunError::Output {
                what,
                path: path.to_path_buf(),
                source,
            })?;
        }
    }
    Ok(())
}

pub fn run_scenario(args: &RunConfig) -> Result<Outcome, RunError> {
    run_scenario_with(args, &RunOptions::default())
}

/// Runs the scenario `args` names on the vCPU thread, under the watchdog.
pub fn run_scenario_with(args: &RunConfig, opts: &RunOptions) -> Result<Outcome, RunError> {
    if !args.scenario.is_built() {
        return Err(RunError::NotBuilt(args.scenario));
    }
    if args.scenario == Scenario::Hibernate {
        // Two VMs, one after the other (hibernate.rs).
        return hibernate::run(args, opts);
    }
    if args.scenario == Scenario::Crash {
        // One VM whose result is on the disk (crash.rs).
        return crash::run(args, opts);
    }
    args.check_injection()?;
    check_outputs(&[
        ("--report", args.report.as_deref()),
        ("--junit", args.junit.as_deref()),
    ])?;
    // Held until the run ends.
    let _dump_lock = args.dump_dir.as_deref().map(check_dump_dir).transpose()?;
    let mut cfg = vm_config(args, opts)?;
    check_settings(args, cfg.initramfs.as_ref().map_or(0, |i| i.len() as u64))?;
    let gdb_listener = crate::gdb::bind_at_start(&args.gdb)?;
    let disk = args
        .scenario
        .has_disk()
        .then(|| disk::Disk::prepare(args.disk.as_deref(), disk::BOOT_DISK_SIZE, 0))
        .transpose()?;
    cfg.disk = disk.as_ref().map(|d| d.path().to_owned());
    let wd = watchdog_config(args.timeout(), args.max_time(), opts);
    let scenario = args.scenario;
    let start = Instant::now();
    let args = args.clone();
    let ledger = opts.ledger.clone();
    watchdog::run_guarded(&wd, move |stop| {
        let mut cfg = cfg;
        cfg.stop = stop;
        // The oracle captures the local APIC, which needs KVM's in-kernel
        // irqchip.
        cfg.irqchip = scenario == Scenario::PingPong;
        let mut vm = Vm::new(&cfg).map_err(|e| RunError::from(e).symbolize(&cfg.kernel))?;
        if let Some(l) = gdb_listener {
            crate::gdb::attach_at_start(&mut vm, l, "before its first instruction");
        }
        let mut run = RunState::new(scenario, start, &ledger);
        let result = match scenario {
            Scenario::Boot => boot::run(&mut vm, &mut run),
            Scenario::PingPong => {
                crate::scenario::pingpong::run(&mut vm, &mut run, &args, &cfg.kernel)
            }
            other => Err(RunError::NotBuilt(other)),
        };
        let result = crate::gdb::after_run(&mut vm, result, &args.gdb);
        // A temporary disk lives as long as the run.
        drop(disk);
        result.map_err(|e| run.failed(e.symbolize(&cfg.kernel), &vm))
    })?
}

/// Runs `body` on the vCPU thread under the watchdog `wd`, with `cfg`
/// (its stop flag the watchdog's) and the run's state, a run of
/// `scenario` started now, its report in `opts`' ledger.
pub(crate) fn run_watched<F>(
    wd: &WatchdogConfig,
    opts: &RunOptions,
    scenario: Scenario,
    mut cfg: VmConfig,
    body: F,
) -> Result<Outcome, RunError>
where
    F: FnOnce(VmConfig, RunState) -> Result<Outcome, RunError> + Send + 'static,
{
    let start = Instant::now();
    let ledger = opts.ledger.clone();
    watchdog::run_guarded(wd, move |stop| {
        cfg.stop = stop;
        body(cfg, RunState::new(scenario, start, &ledger))
    })?
}

/// The watchdog of a run: `--timeout` and `--max-time` as given.
pub(crate) fn watchdog_config(
    timeout: Duration,
    max_time: Option<Duration>,
    opts: &RunOptions,
) -> WatchdogConfig {
    WatchdogConfig {
        timeout,
        max_time,
        handle_signals: opts.handle_signals,
        grace: watchdog::DEFAULT_GRACE,
    }
}

/// What a scenario has seen so far. Its report lives in the run's
/// [`Ledger`], where the caller finds it whatever happens.
#[derive(Debug)]
pub struct RunState {
    pub scenario: Scenario,
    pub start: Instant,
    pub checkpoints: u64,
    /// Cycles the VMM has seen completed.
    pub cycles: u64,
    ledger: Ledger,
    /// How much of the guest's chatter (hello, log, progress) is logged.
    chatter: RateLimit,
}

impl RunState {
    /// A run starting now, its report in `ledger`.
    pub fn new(scenario: Scenario, start: Instant, ledger: &Ledger) -> Self {
        {
            let mut l = ledger.lock();
            l.report = Some(Report::new(scenario.name(), 0, "none", &[]));
            l.started = Some(start);
        }
        Self {
            scenario,
            start,
            checkpoints: 0,
            cycles: 0,
            ledger: ledger.clone(),
            chatter: RateLimit::new(CHATTER_PER_SEC, CHATTER_BURST),
        }
    }

    /// The run's report, as far as it goes.
    pub fn report(&self) -> ReportGuard<'_> {
        ReportGuard(self.ledger.lock())
    }

    /// `n` cycles are completed (as the VMM saw them).
    pub fn set_cycles(&mut self, n: u64) {
        self.cycles = n;
        self.report().cycles_completed = n;
    }

    /// Records the kernel that `e` happened in: the guest it names, or the
    /// one running; returns `e`.
    pub fn failed(&self, e: RunError, vm: &Vm) -> RunError {
        self.ledger
            .set_failed_kernel(e.guest().unwrap_or(vm.console_name()));
        e
    }

    /// The outcome, given the verdict and the kernel that gave it (or, for
    /// a failure, that failed).
    pub fn outcome(&mut self, verdict: Verdict, guest: &str) -> Outcome {
        let mut report = self
            .ledger
            .lock()
            .report
            .take()
            .unwrap_or_else(|| Report::new(self.scenario.name(), 0, "none", &[]));
        report.cycles_completed = self.cycles;
        report.finish(None, self.start.elapsed().as_micros() as u64);
        if let Verdict::Fail(why) = &verdict {
            report.failed_kernel = Some(guest.to_owned());
            if report.mismatches.is_empty() {
                // A failure the guest itself reported (a self-check).
                report.verdict = kjump_core::report::Verdict::Fail;
                report.exit_code = 1;
                report.error = Some(why.clone());
            }
        }
        if verdict == Verdict::Unchecked {
            report.verdict = kjump_core::report::Verdict::Unchecked;
            report.exit_code = report.verdict.exit_code();
        }
        Outcome {
            report,
            scenario: self.scenario,
            verdict,
            guest: guest.to_owned(),
            elapsed: self.start.elapsed(),
            checkpoints: self.checkpoints,
            cycles: self.cycles,
        }
    }
}

/// Guest messages logged per second, and in a burst, before the rest are
/// only counted: a guest that floods the harness must not flood the log.
const CHATTER_PER_SEC: u32 = 20;
const CHATTER_BURST: u32 = 100;

/// A token bucket: `allow` says whether one more message may be logged.
#[derive(Debug)]
pub struct RateLimit {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
    /// Messages refused since the last one allowed.
    suppressed: u64,
}

impl RateLimit {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: None,
            suppressed: 0,
        }
    }

    /// At `now`: `Some(n)` if a message may be logged, `n` being how many
    /// were suppressed before it; `None` if this one is suppressed.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.per_sec;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Runs `vm` to its next event, answering a checkpoint as `tracker`'s next
/// checkpoint goes: the event, and for a checkpoint the identity the
/// tracker gave it (what ping-pong, hibernate and `kjump resume` of an
/// image number their checkpoints by).
pub(crate) fn run_tracked(
    vm: &mut Vm,
    tracker: &mut Tracker,
) -> Result<(VmEvent, Option<CheckpointId>), VmError> {
    let mut id = None;
    let event = vm.run_until_event(&mut || {
        let i = tracker.next();
        id = Some(i);
        i.direction.answer()
    })?;
    Ok((event, id))
}

/// What every scenario does with a message: a hello names the console, logs
/// go to the log, panics and exceptions end the run, a verdict is returned.
/// `Kimage` messages are the scenario's own business; here they are logged.
pub fn handle_message(
    vm: &mut Vm,
    run: &mut RunState,
    event: HarnessEvent,
) -> Result<Option<Verdict>, RunError> {
    let guest = vm.console_name().to_owned();
    // Chatter neither moves the run forward (the watchdog does not count
    // it) nor may it flood the log.
    let chatter = matches!(
        event,
        HarnessEvent::Hello { .. } | HarnessEvent::Log { .. } | HarnessEvent::Progress { .. }
    );
    if chatter {
        match run.chatter.allow(Instant::now()) {
            None => return Ok(None),
            Some(0) => {}
            Some(n) => log::info!("[{guest}] {n} harness messages not logged (rate limit)"),
        }
    }
    match event {
        HarnessEvent::Hello { role, text } => {
            vm.set_console_name(role.name());
            log::info!("kernel {} is up: {}", role.name(), escape(&text));
        }
        HarnessEvent::Log { text } => log::info!("[{guest}] {}", escape(&text)),
        // The guest's count is not trusted: cycles are what the VMM saw.
        HarnessEvent::Progress { cycles } => log::debug!("[{guest}] says {cycles} cycles"),
        HarnessEvent::Verdict { pass: true, text } => {
            log::info!("[{guest}] verdict: pass {}", escape(&text));
            return Ok(Some(Verdict::Pass));
        }
        HarnessEvent::Verdict { pass: false, text } => {
            return Ok(Some(Verdict::Fail(format!(
                "kernel {guest} reports a failure: {}",
                quote(&text, QUOTE_MAX)
            ))));
        }
        HarnessEvent::Panic { text } => {
            return Err(RunError::GuestPanic {
                guest,
                text,
                regs: Box::new(vm.registers()),
            });
        }
        HarnessEvent::Exception {
            vector,
            error_code,
            rip,
            cs,
            rflags,
            rsp,
            cr2,
        } => {
            return Err(RunError::GuestException {
                guest,
                vector,
                error_code,
                rip,
                cs,
                rflags,
                rsp,
                cr2,
                rip_symbol: None,
                regs: Box::new(vm.registers()),
            });
        }
        ev @ HarnessEvent::Kimage { .. } => log::debug!("[{guest}] {ev}"),
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JumpMode;
    use kjump_core::report::Verdict as ReportVerdict;

    #[test]
    fn guest_command_line_carries_the_settings() {
        let a = RunConfig {
            cycles: 3,
            mode: JumpMode::Backup,
            append: vec!["kjump.fault=ud2".into(), "kjump.log=debug".into()],
            ..Default::default()
        };
        assert_eq!(
            guest_cmdline(&a),
            "kjump.role=a kjump.scenario=ping-pong kjump.cycles=3 kjump.mode=backup kjump.peer_mem=8M \
             kjump.fault=ud2 kjump.log=debug"
        );
        // Ping-pong has no disk to announce; boot has.
        let p = RunConfig {
            scenario: Scenario::Boot,
            ..Default::default()
        };
        assert!(guest_cmdline(&p).contains(" virtio_mmio.device=4K@0xd0000000:5"));
        let c = guest_cmdline(&a);
        assert_eq!(
            kjump_abi::cmdline::get(&c, "kjump.peer_mem").and_then(kjump_abi::cmdline::parse_size),
            Some(8 << 20)
        );
        assert!(config_text(&a).contains("mode=backup\n"));
    }

    #[test]
    fn every_scenario_is_built_and_the_error_for_one_that_is_not_reads_clearly() {
        assert!(Scenario::ALL.iter().all(|s| s.is_built()));
        let e = RunError::NotBuilt(Scenario::Hibernate);
        assert_eq!(e.to_string(), "scenario hibernate is not built yet");
    }

    #[test]
    fn missing_files_are_named() {
        let a = RunConfig {
            kernel: Some("/no/such/kernel".into()),
            ..Default::default()
        };
        let e = run_scenario(&a).unwrap_err();
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        assert!(
            cause
                .as_deref()
                .unwrap_or("")
                .starts_with("/no/such/kernel: "),
            "{e}: {cause:?}"
        );
        assert!(matches!(e, RunError::ReadKernel(_)));
        // A device is refused before it is read.
        let a = RunConfig {
            initramfs: Some("/dev/zero".into()),
            ..Default::default()
        };
        let e = run_scenario(&a).unwrap_err();
        assert!(
            matches!(&e, RunError::ReadInitramfs(InputError::NotRegular { .. })),
            "{e:?}"
        );
        // A directory as the report is refused before the run.
        let a = RunConfig {
            report: Some(std::env::temp_dir()),
            ..Default::default()
        };
        let e = run_scenario(&a).unwrap_err();
        assert!(
            matches!(
                &e,
                RunError::Output {
                    what: "--report",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn a_guest_panic_message_stays_one_quoted_escaped_line() {
        let text = format!("\x1b[2Jkjump: ping-pong: pass\n{}", "x\n".repeat(4000));
        let e = RunError::GuestPanic {
            guest: "b".into(),
            text,
            regs: Box::default(),
        };
        let s = e.to_string();
        assert!(
            s.starts_with("guest b panicked: \"\\x1b[2Jkjump: ping-pong: pass\\nx\\n"),
            "{s}"
        );
        assert!(s.ends_with("\"… (cut: 7827 more characters)"), "{s}");
        assert!(!s.chars().any(char::is_control), "{s}");
    }

    #[test]
    fn chatter_is_rate_limited() {
        let mut r = RateLimit::new(10, 3);
        let t0 = Instant::now();
        assert_eq!(r.allow(t0), Some(0));
        assert_eq!(r.allow(t0), Some(0));
        assert_eq!(r.allow(t0), Some(0));
        // The burst is spent: the rest of the flood is only counted.
        for _ in 0..1000 {
            assert_eq!(r.allow(t0), None);
        }
        // A tenth of a second later one more is logged, saying how many
        // were not.
        assert_eq!(r.allow(t0 + Duration::from_millis(100)), Some(1000));
        assert_eq!(r.allow(t0 + Duration::from_millis(100)), None);
        // Quiet for long: the burst is back, no more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(r.allow(later).is_some());
        }
        assert_eq!(r.allow(later), None);
    }

    #[test]
    fn an_error_report_keeps_what_the_run_did() {
        let ledger = Ledger::default();
        // Before the run starts: an empty error report.
        let r = ledger.error_report("ping-pong", 10, "no KVM".into(), 5);
        assert_eq!((r.verdict, r.cycles_requested), (ReportVerdict::Error, 10));
        assert!(r.checkpoints.is_empty() && r.failed_kernel.is_none());
        let mut run = RunState::new(Scenario::PingPong, Instant::now(), &ledger);
        run.report().push_checkpoint(Default::default());
        run.set_cycles(3);
        ledger.set_failed_kernel("b");
        let r = ledger.error_report("ping-pong", 10, "guest b: hung".into(), 7);
        assert_eq!((r.verdict, r.exit_code), (ReportVerdict::Error, 2));
        assert_eq!((r.cycles_completed, r.checkpoints.len()), (3, 1));
        assert_eq!(r.failed_kernel.as_deref(), Some("b"));
        assert_eq!(r.error.as_deref(), Some("guest b: hung"));
    }

    #[test]
    fn summary_lines() {
        let mut run = RunState::new(Scenario::Boot, Instant::now(), &Ledger::default());
        let o = run.outcome(Verdict::Pass, "a");
        assert!(
            o.summary().starts_with("kjump: boot: pass (0.") && o.summary().ends_with(" s)"),
            "{}",
            o.summary()
        );
        assert_eq!(o.exit_code(), 0);
        let o = run.outcome(Verdict::Fail("e820 is wrong".into()), "b");
        assert!(
            o.summary().starts_with("kjump: boot: FAIL (kernel b, ")
                && o.summary().ends_with(" s): e820 is wrong"),
            "{}",
            o.summary()
        );
        assert_eq!(o.exit_code(), 1);
    }

    #[test]
    fn exception_error_names_vector_rip_and_cr2() {
        let e = RunError::GuestException {
            guest: "a".into(),
            vector: 14,
            error_code: 2,
            rip: 0x20_1000,
            cs: 8,
            rflags: 0x10046,
            rsp: 0x40_0000,
            cr2: 0xdead_b000,
            rip_symbol: None,
            regs: Box::default(),
        };
        let s = e.to_string();
        assert!(
            s.starts_with("guest a: exception #PF page fault at rip=0x201000 (vector"),
            "{s}"
        );
        assert!(s.contains("cr2=0xdeadb000"));
        assert!(e.regs().is_some());
        // With the kernel's symbols, the rip is named.
        let k = crate::DEFAULT_KERNEL;
        let sym = kjump_core::symbols::Symbols::from_elf(k).unwrap();
        let at = sym.address_of_suffix("kjump_kernel::fault::fire").unwrap();
        let e = RunError::GuestException {
            guest: "a".into(),
            vector: 6,
            error_code: 0,
            rip: at + 4,
            cs: 8,
            rflags: 2,
            rsp: 0,
            cr2: 0,
            rip_symbol: None,
            regs: Box::default(),
        }
        .symbolize(k);
        let s = e.to_string();
        assert!(s.contains("kjump_kernel::fault::fire+0x4"), "{s}");
    }

    #[test]
    fn boot_scenario_with_the_embedded_kernel() {
        if !crate::vm::kvm_or_skip("boot_scenario_with_the_embedded_kernel") {
            return;
        }
        let (console, lines) = ConsoleSink::capture();
        let a = RunConfig {
            scenario: Scenario::Boot,
            timeout: 60,
            ..Default::default()
        };
        let r = run_scenario_with(
            &a,
            &RunOptions {
                console,
                ..RunOptions::default()
            },
        );
        let lines = lines.lock().unwrap().clone();
        match r {
            Ok(o) => assert!(o.passed(), "{}\n{}", o.summary(), lines.join("\n")),
            Err(e) => panic!("{e}\n{}", lines.join("\n")),
        }
        assert!(lines.iter().any(|l| l.starts_with("[a] ")), "{lines:?}");
    }
}
