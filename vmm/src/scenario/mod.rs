//! Scenarios: what the VMM does with the guest between boot and verdict.
//!
//! [`run_scenario`] turns the command line into a [`VmConfig`] (kernel,
//! initramfs, guest command line), runs the scenario on the vCPU thread
//! under the [`crate::vm::watchdog`], and returns its [`Outcome`]. Each scenario
//! is a loop over [`Vm::run_until_event`]; the messages every scenario
//! treats alike (hello, log, panic, exception, verdict) go through
//! [`handle_message`].

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kjump_abi::abi::vector_name;

pub mod boot;
pub mod pingpong;
pub mod resume;

use crate::config::{RunConfig, Scenario, format_size};
use crate::faults::FaultError;
use crate::vm::serial::ConsoleSink;
use crate::vm::vcpu::RegDump;
use crate::vm::watchdog::{self, WatchdogConfig, WatchdogError};
use crate::vm::{Vm, VmConfig, VmError};
use kjump_core::harness::HarnessEvent;
use kjump_core::text::{QUOTE_MAX, escape, quote};

/// The guest's (or the oracle's) judgement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
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

    /// 0 when every check passed, 1 when one failed.
    pub fn exit_code(&self) -> u8 {
        if self.passed() { 0 } else { 1 }
    }

    /// `kjump: boot: pass (kernel a, 0.12 s)`.
    pub fn summary(&self) -> String {
        let head = format!(
            "kjump: {}: {} (kernel {}, {:.2} s",
            self.scenario,
            if self.passed() { "pass" } else { "FAIL" },
            self.guest,
            self.elapsed.as_secs_f64()
        );
        let mut cycles = if self.cycles > 0 {
            format!(", {} cycles", self.cycles)
        } else {
            String::new()
        };
        let changed = self.report.debugger_changes.len();
        if changed > 0 {
            cycles += &format!(", {changed} change(s) made by the debugger");
        }
        match &self.verdict {
            Verdict::Pass => format!("{head}{cycles})"),
            Verdict::Fail(why) => format!("{head}{cycles}): {why}"),
        }
    }
}

/// Why a run could not be carried out (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// the kernel file could not be read
    #[error("cannot read the kernel {}", .path.display())]
    ReadKernel {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// the initramfs file could not be read
    #[error("cannot read the initramfs {}", .path.display())]
    ReadInitramfs {
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
    /// `--dump-dir` cannot be created or written.
    #[error("cannot use the dump directory {}", .path.display())]
    DumpDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl RunError {
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
}

/// The guest command line for a run.
pub fn guest_cmdline(args: &RunConfig) -> String {
    let mut c = format!(
        "kjump.role=a kjump.scenario={} kjump.cycles={} kjump.mode={} kjump.peer_mem={}",
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
    let kernel = match &args.kernel {
        Some(path) => std::fs::read(path).map_err(|source| RunError::ReadKernel {
            path: path.clone(),
            source,
        })?,
        None => crate::DEFAULT_KERNEL.to_vec(),
    };
    let initramfs = match &args.initramfs {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|source| RunError::ReadInitramfs {
                path: path.clone(),
                source,
            })?;
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

/// Creates the dump directory and proves it writable before the run, so a
/// bad `--dump-dir` is refused up front, not at the first mismatch.
pub(crate) fn check_dump_dir(dir: &std::path::Path) -> Result<(), RunError> {
    let err = |source| RunError::DumpDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let probe = dir.join(format!(".kjump-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)
}

pub fn run_scenario(args: &RunConfig) -> Result<Outcome, RunError> {
    run_scenario_with(args, &RunOptions::default())
}

/// Runs the scenario `args` names on the vCPU thread, under the watchdog.
pub fn run_scenario_with(args: &RunConfig, opts: &RunOptions) -> Result<Outcome, RunError> {
    if !args.scenario.is_built() {
        return Err(RunError::NotBuilt(args.scenario));
    }
    args.check_injection()?;
    if let Some(dir) = &args.dump_dir {
        check_dump_dir(dir)?;
    }
    let cfg = vm_config(args, opts)?;
    check_settings(args, cfg.initramfs.as_ref().map_or(0, |i| i.len() as u64))?;
    let gdb_listener = crate::gdb::bind_at_start(&args.gdb)?;
    let wd = WatchdogConfig {
        timeout: args.timeout(),
        handle_signals: opts.handle_signals,
        grace: watchdog::DEFAULT_GRACE,
    };
    let scenario = args.scenario;
    let start = Instant::now();
    let args = args.clone();
    watchdog::run_guarded(&wd, move |stop| {
        let mut cfg = cfg;
        cfg.stop = stop;
        // The oracle captures the local APIC, which needs KVM's in-kernel
        // irqchip.
        cfg.irqchip = scenario == Scenario::PingPong;
        let run = || {
            let mut vm = Vm::new(&cfg)?;
            if let Some(l) = gdb_listener {
                crate::gdb::attach_at_start(&mut vm, l, "before its first instruction");
            }
            let mut run = RunState::new(scenario, start);
            let result = match scenario {
                Scenario::Boot => boot::run(&mut vm, &mut run),
                Scenario::PingPong => {
                    crate::scenario::pingpong::run(&mut vm, &mut run, &args, &cfg.kernel)
                }
                other => Err(RunError::NotBuilt(other)),
            };
            crate::gdb::after_run(&mut vm, result, &args.gdb)
        };
        run().map_err(|e| e.symbolize(&cfg.kernel))
    })?
}

/// What a scenario has seen so far.
#[derive(Debug)]
pub struct RunState {
    pub scenario: Scenario,
    pub start: Instant,
    pub checkpoints: u64,
    pub cycles: u64,
    pub report: kjump_core::report::Report,
}

impl RunState {
    pub fn new(scenario: Scenario, start: Instant) -> Self {
        Self {
            scenario,
            start,
            checkpoints: 0,
            cycles: 0,
            report: kjump_core::report::Report::new(scenario.name(), 0, "none", &[]),
        }
    }

    /// The outcome, given the verdict and who gave it.
    pub fn outcome(&mut self, verdict: Verdict, guest: &str) -> Outcome {
        let mut report = std::mem::replace(
            &mut self.report,
            kjump_core::report::Report::new(self.scenario.name(), 0, "none", &[]),
        );
        report.cycles_completed = self.cycles;
        report.finish(None, self.start.elapsed().as_micros() as u64);
        if let (Verdict::Fail(why), true) = (&verdict, report.mismatches.is_empty()) {
            // A failure the guest itself reported (a self-check).
            report.verdict = kjump_core::report::Verdict::Fail;
            report.exit_code = 1;
            report.error = Some(why.clone());
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

/// What every scenario does with a message: a hello names the console, logs
/// go to the log, panics and exceptions end the run, a verdict is returned.
/// `Kimage` messages are the scenario's own business; here they are logged.
pub fn handle_message(
    vm: &mut Vm,
    run: &mut RunState,
    event: HarnessEvent,
) -> Result<Option<Verdict>, RunError> {
    let guest = vm.console_name().to_owned();
    match event {
        HarnessEvent::Hello { role, text } => {
            vm.set_console_name(role.name());
            log::info!("kernel {} is up: {}", role.name(), escape(&text));
        }
        HarnessEvent::Log { text } => log::info!("[{guest}] {}", escape(&text)),
        HarnessEvent::Progress { cycles } => {
            run.cycles = cycles;
            log::debug!("[{guest}] {cycles} cycles");
        }
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
        let c = guest_cmdline(&a);
        assert_eq!(
            kjump_abi::cmdline::get(&c, "kjump.peer_mem").and_then(kjump_abi::cmdline::parse_size),
            Some(8 << 20)
        );
        assert!(config_text(&a).contains("mode=backup\n"));
    }

    #[test]
    fn unbuilt_scenarios_are_a_clear_error() {
        let a = RunConfig {
            scenario: Scenario::Hibernate,
            ..Default::default()
        };
        let e = run_scenario(&a).unwrap_err();
        assert!(matches!(e, RunError::NotBuilt(Scenario::Hibernate)));
        assert_eq!(e.to_string(), "scenario hibernate is not built yet");
    }

    #[test]
    fn missing_files_are_named() {
        let a = RunConfig {
            kernel: Some("/no/such/kernel".into()),
            ..Default::default()
        };
        let e = run_scenario(&a).unwrap_err();
        assert!(e.to_string().contains("/no/such/kernel"), "{e}");
        assert!(matches!(e, RunError::ReadKernel { .. }));
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
    fn summary_lines() {
        let mut run = RunState::new(Scenario::Boot, Instant::now());
        let o = run.outcome(Verdict::Pass, "a");
        assert!(
            o.summary().starts_with("kjump: boot: pass (kernel a, "),
            "{}",
            o.summary()
        );
        assert_eq!(o.exit_code(), 0);
        let o = run.outcome(Verdict::Fail("e820 is wrong".into()), "b");
        assert!(o.summary().ends_with("): e820 is wrong"));
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
                handle_signals: false,
                kvm_device: None,
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
