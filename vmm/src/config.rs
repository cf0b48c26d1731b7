//! What a run is asked to do, as plain values: the CLI builds a
//! [`RunConfig`] (and a [`ResumeConfig`]), and everything below the CLI
//! works on these. Nothing here knows clap.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use kjump_core::oracle::CompareMode;

use kjump_abi::fault::{Fault, JumpFault};
use kjump_core::checkpoint::Kernel;

use crate::faults::{FaultError, HostFault, InjectKind, Injection};
use crate::gdb::GdbOptions;

/// The scenarios kjump knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Boot kernel A and let it check its boot data.
    Boot,
    /// A→B→A→B… for --cycles, checked at every checkpoint.
    PingPong,
    /// A jumps to B, B saves A's image, a fresh kernel restores A.
    Hibernate,
    /// A panics, B (the capture kernel) saves A's memory as a vmcore.
    Crash,
}

impl Scenario {
    /// Every scenario, built or not.
    pub const ALL: [Scenario; 4] = [Self::Boot, Self::PingPong, Self::Hibernate, Self::Crash];

    /// The name on the command lines (kjump's and the guest's).
    pub fn name(self) -> &'static str {
        match self {
            Self::Boot => "boot",
            Self::PingPong => "ping-pong",
            Self::Hibernate => "hibernate",
            Self::Crash => "crash",
        }
    }

    /// What it does, for `--help`.
    pub fn about(self) -> &'static str {
        match self {
            Self::Boot => "Boot kernel A and let it check its boot data",
            Self::PingPong => "A→B→A→B… for --cycles, checked at every checkpoint",
            Self::Hibernate => "A jumps to B, B saves A's image, a fresh kernel restores A",
            Self::Crash => {
                "A panics, the capture kernel B saves A's memory as a vmcore, checked page by page"
            }
        }
    }

    /// Whether the VM has a virtio-blk disk: `boot` writes and reads it
    /// back, `hibernate` keeps A's image on it. Ping-pong has none (its
    /// dumps resume without one).
    pub fn has_disk(self) -> bool {
        matches!(self, Self::Boot | Self::Hibernate | Self::Crash)
    }

    /// Whether this build can run it.
    pub fn is_built(self) -> bool {
        matches!(
            self,
            Self::Boot | Self::PingPong | Self::Hibernate | Self::Crash
        )
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// When dumps are written (`--dump`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DumpPolicy {
    Never,
    #[default]
    OnMismatch,
    EveryJump,
}

/// How kexec keeps the jumping kernel's memory (`--mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JumpMode {
    /// Swap source and destination pages (Linux's `relocate_kernel`).
    #[default]
    Swap,
    /// Back up the peer's region instead.
    Backup,
}

impl JumpMode {
    /// As written on the guest command line (`kjump.mode=`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Swap => "swap",
            Self::Backup => "backup",
        }
    }
}

/// Default guest RAM.
pub const DEFAULT_MEM: u64 = 256 << 20;
/// Default RAM kernel A gives kernel B.
pub const DEFAULT_PEER_MEM: u64 = 8 << 20;
/// Default low memory the crash scenario backs up (`--backup-size`).
pub const DEFAULT_BACKUP_SIZE: u64 = 16 << 20;
/// Default cycles of ping-pong.
pub const DEFAULT_CYCLES: u64 = 10;
/// Default watchdog: seconds without progress before a guest is hung.
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;

/// A scenario run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunConfig {
    pub scenario: Scenario,
    /// A→B→A cycles.
    pub cycles: u64,
    /// Guest RAM in bytes.
    pub mem: u64,
    /// Guest kernel ELF (`None`: the embedded one).
    pub kernel: Option<PathBuf>,
    /// Initramfs (`None`: built from the kernel and the run's settings).
    pub initramfs: Option<PathBuf>,
    /// Watchdog: seconds without progress before the guest is declared hung.
    pub timeout: u64,
    /// Seconds the whole run may take (`None`: no limit).
    pub max_time: Option<u64>,
    /// Extra words for the guest command line.
    pub append: Vec<String>,
    /// Where the JSON report goes.
    pub report: Option<PathBuf>,
    /// Where the JUnit XML goes.
    pub junit: Option<PathBuf>,
    /// Where dumps go.
    pub dump_dir: Option<PathBuf>,
    pub dump: DumpPolicy,
    /// The most bytes of dumps a run may write (`--dump-max-bytes`).
    pub dump_max_bytes: Option<u64>,
    pub compare: CompareMode,
    pub mode: JumpMode,
    /// RAM kernel A gives kernel B.
    pub peer_mem: u64,
    /// Crash: low memory backed up before the capture kernel runs there.
    pub backup_size: u64,
    /// Damage to inject, parsed against the fault catalog.
    pub inject: Option<Injection>,
    /// `--gdb`, `--gdb-on-mismatch`.
    pub gdb: GdbOptions,
    /// The raw file behind the virtio-blk disk (`None`: a temporary one).
    pub disk: Option<PathBuf>,
    /// Hibernate: the kernel that restores A (`None`: the embedded one, in
    /// role c).
    pub restore_kernel: Option<PathBuf>,
    /// Run the same guests with capture and comparison off, to measure
    /// what the harness costs (`--no-check`); the verdict is "unchecked".
    pub unchecked: bool,
}

impl Default for RunConfig {
    /// The defaults of `kjump` with no options.
    fn default() -> Self {
        Self {
            scenario: Scenario::PingPong,
            cycles: DEFAULT_CYCLES,
            mem: DEFAULT_MEM,
            kernel: None,
            initramfs: None,
            timeout: DEFAULT_TIMEOUT_SECS,
            max_time: None,
            append: Vec::new(),
            report: None,
            junit: None,
            dump_dir: None,
            dump: DumpPolicy::default(),
            dump_max_bytes: None,
            compare: CompareMode::default(),
            mode: JumpMode::default(),
            peer_mem: DEFAULT_PEER_MEM,
            backup_size: DEFAULT_BACKUP_SIZE,
            inject: None,
            gdb: GdbOptions::default(),
            disk: None,
            restore_kernel: None,
            unchecked: false,
        }
    }
}

impl RunConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }

    pub fn max_time(&self) -> Option<Duration> {
        self.max_time.map(Duration::from_secs)
    }

    /// Refuses an `--inject` that this run could not catch: in a scenario it
    /// does not belong to, or in a cycle too late for the run's `cycles` to
    /// see its effect (an injected fault that the run could not catch would
    /// pass silently).
    pub fn check_injection(&self) -> Result<(), FaultError> {
        let Some(inj) = &self.inject else {
            return Ok(());
        };
        if self.unchecked {
            return Err(FaultError::NotFor(format!(
                "--inject {} with --no-check: an unchecked run catches nothing",
                inj.name()
            )));
        }
        let (scenario, cycles) = (self.scenario, self.cycles);
        let refuse = |why: String| {
            Err(FaultError::NotFor(format!(
                "--inject {}: {why}",
                inj.name()
            )))
        };
        if inj.cycle == Some(0) {
            return refuse("cycles count from 1".into());
        }
        let next_cycle = |c: u64| {
            c.checked_add(1).ok_or_else(|| {
                FaultError::NotFor(format!(
                    "--inject {}: its effect shows in the cycle after {c}, past the most cycles a run has",
                    inj.name()
                ))
            })
        };
        if scenario == Scenario::Hibernate {
            // Its image faults (B's, A's, C's and the host's, in any of
            // the run's hibernations), B's first delivery in any cycle,
            // and A's stop faults at boot.
            let of_a_hibernation = matches!(
                &inj.kind,
                InjectKind::Guest {
                    fault: Fault::Jump(
                        JumpFault::ImageSkipPage
                            | JumpFault::NoDeviceResume
                            | JumpFault::PowerOffEarly,
                    ),
                    ..
                } | InjectKind::Host(HostFault::Image(_))
                    | InjectKind::Restore { .. }
            );
            return match &inj.kind {
                _ if of_a_hibernation && inj.cycle.unwrap_or(1) > cycles => refuse(format!(
                    "the run saves and restores kernel a {cycles} time(s) (use --cycles {} or more)",
                    inj.cycle.unwrap_or(1)
                )),
                _ if of_a_hibernation => Ok(()),
                // A fresh B boots in each cycle, the last one's included.
                InjectKind::Host(HostFault::FlipBImage)
                    if inj.host_cycle() <= cycles.saturating_add(1) =>
                {
                    Ok(())
                }
                InjectKind::Host(HostFault::FlipBImage) => refuse(format!(
                    "b boots in cycles 1 to {} of this run (use --cycles {} or more)",
                    cycles.saturating_add(1),
                    inj.host_cycle() - 1
                )),
                InjectKind::Guest {
                    fault: Fault::Stop(_),
                    kernel: Kernel::A,
                    ..
                } if inj.cycle.is_none() => Ok(()),
                _ => refuse(format!("not a fault of --scenario {scenario}")),
            };
        }
        if scenario == Scenario::Crash {
            // A crashes once: the crash faults, and A's stop faults at boot.
            return match &inj.kind {
                InjectKind::Guest {
                    fault:
                        Fault::Jump(
                            JumpFault::NoBackup
                            | JumpFault::StaleCrashNotes
                            | JumpFault::NoBackupRead
                            | JumpFault::VmcoreSkip
                            | JumpFault::WriteOutsideReserved
                            | JumpFault::PowerOffEarly
                            | JumpFault::LoadOutsideReserved
                            | JumpFault::BadCrashInfo,
                        ),
                    ..
                } if inj.cycle.is_none_or(|c| c == 1) => Ok(()),
                InjectKind::Guest {
                    fault: Fault::Stop(_),
                    kernel: Kernel::A,
                    ..
                } if inj.cycle.is_none() => Ok(()),
                _ => refuse(format!("not a fault of --scenario {scenario}")),
            };
        }
        if matches!(inj.kind, InjectKind::Restore { .. }) {
            return refuse("needs --scenario hibernate (kernel c restores a there)".into());
        }
        if scenario != Scenario::PingPong {
            // Only a stop fault of kernel a, at boot, means anything there.
            return match &inj.kind {
                InjectKind::Guest {
                    fault: Fault::Stop(_),
                    kernel: Kernel::A,
                    ..
                } if inj.cycle.is_none() => Ok(()),
                _ => refuse(format!("needs --scenario ping-pong (this is {scenario})")),
            };
        }
        if matches!(inj.kind, InjectKind::Host(HostFault::Image(_))) {
            return refuse("needs --scenario hibernate".into());
        }
        let c = inj.cycle.unwrap_or(1);
        if matches!(inj.kind, InjectKind::Host(HostFault::FlipBImage)) && c != 1 {
            return refuse("B's image is delivered in cycle 1 only".into());
        }
        let shows_in = match &inj.kind {
            // flip-b damages B's parked pages as A resumes: seen at the next
            // checkpoint, in the next cycle.
            InjectKind::Host(HostFault::FlipB) => c + 1,
            InjectKind::Restore { .. } => return refuse("needs --scenario hibernate".into()),
            InjectKind::Host(_)
            | InjectKind::Guest {
                fault: Fault::Stop(_),
                ..
            } => c,
            InjectKind::Guest {
                fault: Fault::Jump(j),
                kernel,
                ..
            } => match (j, kernel) {
                // Recorded wrong on the way back, seen at the next jump.
                (JumpFault::WrongReentrySlot | JumpFault::LosePreserve, Kernel::A) => {
                    next_cycle(c)?
                }
                (JumpFault::WriteOutside, _) => c,
                (
                    JumpFault::ImageSkipPage
                    | JumpFault::NoDeviceResume
                    | JumpFault::NoTrampoline
                    | JumpFault::LeaveMsr
                    | JumpFault::LeavePit,
                    _,
                ) => {
                    return refuse("needs --scenario hibernate".into());
                }
                (
                    JumpFault::NoBackup
                    | JumpFault::StaleCrashNotes
                    | JumpFault::NoBackupRead
                    | JumpFault::VmcoreSkip
                    | JumpFault::WriteOutsideReserved
                    | JumpFault::LoadOutsideReserved
                    | JumpFault::BadCrashInfo,
                    _,
                ) => return refuse("needs --scenario crash".into()),
                (JumpFault::PowerOffEarly, _) => {
                    return refuse("needs --scenario crash or hibernate".into());
                }
                // Caught against the region A's report of the cycle before
                // gave: without `@N` every report gives the same.
                (JumpFault::MoveBRegion, _) if c == 1 => {
                    return refuse(
                        "a's first kimage report has no earlier region of b to move (use @2 or later)"
                            .into(),
                    );
                }
                (_, Kernel::A) => c,
                // B's jump in cycle c comes back in cycle c + 1.
                (_, Kernel::B) => next_cycle(c)?,
            },
        };
        if shows_in > cycles {
            return refuse(format!(
                "its effect shows in cycle {shows_in}, the run has {cycles} (use --cycles {shows_in} or more)"
            ));
        }
        Ok(())
    }
}

/// A run resumed from a dump (`kjump resume`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeConfig {
    /// The dump to go on from.
    pub file: PathBuf,
    pub report: Option<PathBuf>,
    pub junit: Option<PathBuf>,
    pub timeout: u64,
    pub max_time: Option<u64>,
    /// Kernel ELF for symbols (`None`: the embedded one).
    pub kernel: Option<PathBuf>,
    pub dump_dir: Option<PathBuf>,
    pub dump: DumpPolicy,
    /// The most bytes of dumps a run may write (`--dump-max-bytes`).
    pub dump_max_bytes: Option<u64>,
    pub compare: CompareMode,
    /// `--gdb`, `--gdb-on-mismatch`.
    pub gdb: GdbOptions,
}

impl ResumeConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }

    pub fn max_time(&self) -> Option<Duration> {
        self.max_time.map(Duration::from_secs)
    }
}

/// The options given on the command line (`given`, by their long names)
/// that a run of `scenario` (`None`: a resumed run) with `dump` and
/// `dump_dir` ignores, each as a warning: kjump does not drop what it was
/// asked for silently.
pub fn ignored_options(
    scenario: Option<Scenario>,
    given: &[String],
    dump: DumpPolicy,
    dump_dir: bool,
) -> Vec<String> {
    let given = |name: &str| given.iter().any(|g| g == name);
    let mut w = Vec::new();
    if scenario == Some(Scenario::Boot) {
        for opt in [
            "cycles",
            "mode",
            "peer-mem",
            "compare",
            "dump",
            "dump-dir",
            "restore-kernel",
            "backup-size",
        ] {
            if given(opt) {
                w.push(format!(
                    "--{opt} is ignored by --scenario boot (it has no jumps to check or dump)"
                ));
            }
        }
        return w;
    }
    if scenario == Some(Scenario::Crash) {
        for opt in [
            "cycles",
            "dump",
            "dump-dir",
            "mode",
            "peer-mem",
            "restore-kernel",
        ] {
            if given(opt) {
                w.push(format!(
                    "--{opt} is ignored by --scenario crash (one crash, backup mode, B runs in --backup-size)"
                ));
            }
        }
        return w;
    }
    if scenario == Some(Scenario::Hibernate) {
        for opt in ["dump", "dump-dir"] {
            // Kernel a's suspends are dumped with --dump every-jump.
            let dumped = dump == DumpPolicy::EveryJump && dump_dir;
            if given(opt) && !dumped {
                w.push(format!(
                    "--{opt} is ignored by --scenario hibernate (dumps only with --dump every-jump --dump-dir: a's suspends; the image on the disk is one too)"
                ));
            }
        }
        if given("backup-size") {
            w.push("--backup-size is ignored by --scenario hibernate (it is crash's)".into());
        }
        return w;
    }
    for opt in ["disk", "restore-kernel", "backup-size"] {
        if given(opt) {
            w.push(format!(
                "--{opt} is ignored by --scenario ping-pong (it has no disk)"
            ));
        }
    }
    if given("dump") && !dump_dir {
        let name = match dump {
            DumpPolicy::Never => "never",
            DumpPolicy::OnMismatch => "on-mismatch",
            DumpPolicy::EveryJump => "every-jump",
        };
        w.push(format!(
            "--dump {name} is ignored without --dump-dir (no dump is written)"
        ));
    }
    if given("dump-dir") && dump == DumpPolicy::Never {
        w.push("--dump-dir is ignored with --dump never".into());
    }
    w
}

/// Formats a size the way the CLI's size parser reads it back, as short
/// as exact.
pub fn format_size(n: u64) -> String {
    match n {
        0 => "0".into(),
        n if n % (1 << 30) == 0 => format!("{}G", n >> 30),
        n if n % (1 << 20) == 0 => format!("{}M", n >> 20),
        n if n % (1 << 10) == 0 => format!("{}K", n >> 10),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_options_are_named() {
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let boot = ignored_options(
            Some(Scenario::Boot),
            &g(&["cycles", "mem", "dump-dir"]),
            DumpPolicy::OnMismatch,
            true,
        );
        assert_eq!(
            boot,
            [
                "--cycles is ignored by --scenario boot (it has no jumps to check or dump)",
                "--dump-dir is ignored by --scenario boot (it has no jumps to check or dump)"
            ]
        );
        let pp = Some(Scenario::PingPong);
        assert_eq!(
            ignored_options(pp, &g(&["dump"]), DumpPolicy::EveryJump, false),
            ["--dump every-jump is ignored without --dump-dir (no dump is written)"]
        );
        assert_eq!(
            ignored_options(pp, &g(&["dump-dir", "dump"]), DumpPolicy::Never, true),
            ["--dump-dir is ignored with --dump never"]
        );
        // Defaults are not warned about, nor what a run uses.
        assert!(
            ignored_options(
                pp,
                &g(&["cycles", "dump-dir"]),
                DumpPolicy::OnMismatch,
                true
            )
            .is_empty()
        );
        assert!(ignored_options(pp, &[], DumpPolicy::EveryJump, false).is_empty());
    }

    #[test]
    fn faults_the_run_cannot_catch_are_refused() {
        let check = |spec: &str, cycle, scenario, cycles| {
            RunConfig {
                scenario,
                cycles,
                inject: Some(Injection::parse(spec, cycle).unwrap()),
                ..RunConfig::default()
            }
            .check_injection()
        };
        assert!(check("b:forget-r12", Some(3), Scenario::PingPong, 3).is_err());
        assert!(check("b:forget-r12", Some(3), Scenario::PingPong, 4).is_ok());
        assert!(check("b:forget-r12", Some(3), Scenario::Boot, 10).is_err());
        assert!(check("ud2", None, Scenario::Boot, 10).is_ok());
        assert!(check("flip-a", Some(0), Scenario::PingPong, 10).is_err());
        // The most cycles there are: no overflow counting the last B's.
        assert!(check("flip-b-image", Some(5), Scenario::Hibernate, u64::MAX).is_ok());
        assert!(check("flip-b-image", Some(3), Scenario::Hibernate, 1).is_err());
        assert!(check("b:forget-r12", Some(u64::MAX), Scenario::PingPong, u64::MAX).is_err());
        // A region moved needs a region before it.
        for cycle in [None, Some(1)] {
            assert!(matches!(
                check("move-b-region", cycle, Scenario::PingPong, 3),
                Err(FaultError::NotFor(m)) if m.contains("use @2 or later")
            ));
        }
        assert!(check("move-b-region", Some(2), Scenario::PingPong, 3).is_ok());
        assert!(check("move-b-region", Some(4), Scenario::PingPong, 3).is_err());
        assert!(check("claim-control-page", None, Scenario::PingPong, 1).is_ok());
        assert!(check("claim-control-page", None, Scenario::Hibernate, 1).is_err());
        // A crash fault only where A crashes, once.
        assert!(check("bad-crash-info", None, Scenario::Crash, 1).is_ok());
        assert!(check("bad-crash-info", Some(2), Scenario::Crash, 1).is_err());
        for scenario in [Scenario::PingPong, Scenario::Hibernate, Scenario::Boot] {
            assert!(
                check("bad-crash-info", None, scenario, 3).is_err(),
                "{scenario}"
            );
        }
        assert!(matches!(
            check("bad-crash-info", None, Scenario::PingPong, 3),
            Err(FaultError::NotFor(m)) if m.contains("needs --scenario crash")
        ));
    }
}
