//! The command line: `kjump [run] [--scenario NAME] [options]`.
//!
//! Running a scenario is the default; other subcommands (`inspect`, `diff`,
//! `resume` on dumps) take their place beside `run` in [`Command`].

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::config::{CompareMode, DumpPolicy, JumpMode, ResumeConfig, RunConfig, Scenario};
use crate::faults::{FaultError, Injection};
use crate::gdb::{GdbAddr, GdbOptions};
use crate::scenario::RunOptions;

/// A KVM harness that proves kexec jump right.
#[derive(Debug, Parser)]
#[command(name = "kjump", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Run options, when no subcommand is given.
    #[command(flatten)]
    pub run: RunArgs,

    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Errors only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// The KVM device that `run` and `resume` open.
    #[arg(long, global = true, value_name = "PATH", env = "KJUMP_KVM_DEVICE",
          default_value = crate::vm::DEFAULT_KVM_DEVICE)]
    pub kvm_device: PathBuf,

    /// The options of `run`/`resume` given on the command line (long names).
    #[arg(skip)]
    pub given: Vec<String>,
}

impl Cli {
    /// Parses `args` (the program name first). Run options belong either
    /// before no subcommand or after `run`; `-v`/`-q` go anywhere.
    pub fn try_parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut cmd = Self::command();
        let m = cmd.try_get_matches_from_mut(args)?;
        if let Some((sub, _)) = m.subcommand() {
            let run_ids = RunArgs::augment_args(clap::Command::new("run"));
            for arg in run_ids.get_arguments() {
                if m.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
                    return Err(cmd.error(
                        clap::error::ErrorKind::ArgumentConflict,
                        format!("--{} must come after the subcommand `{sub}`", arg.get_id()),
                    ));
                }
            }
        }
        let mut cli = Self::from_arg_matches(&m).map_err(|e| e.format(&mut cmd))?;
        let (sub, args) = match m.subcommand() {
            Some((name, sm)) => (Some(name), sm),
            None => (None, &m),
        };
        if matches!(sub, None | Some("run") | Some("resume")) {
            cli.given = args
                .ids()
                .filter(|id| args.value_source(id.as_str()) == Some(ValueSource::CommandLine))
                .map(|id| id.as_str().replace('_', "-"))
                .collect();
        }
        Ok(cli)
    }

    /// Warnings for the options given that the run will ignore.
    pub fn ignored_options(&self) -> Vec<String> {
        match &self.command {
            None => crate::config::ignored_options(
                Some(self.run.scenario),
                &self.given,
                self.run.dump,
                self.run.dump_dir.is_some(),
            ),
            Some(Command::Run(r)) => crate::config::ignored_options(
                Some(r.scenario),
                &self.given,
                r.dump,
                r.dump_dir.is_some(),
            ),
            Some(Command::Resume(r)) => {
                crate::config::ignored_options(None, &self.given, r.dump, r.dump_dir.is_some())
            }
            _ => Vec::new(),
        }
    }

    /// The subcommand to carry out (`run` when none was named).
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Run(self.run))
    }

    /// How a run or resume is hosted, from the global options.
    pub fn run_options(&self) -> RunOptions {
        RunOptions {
            kvm_device: Some(self.kvm_device.clone()),
            ..RunOptions::default()
        }
    }

    /// The log level that -v/-q ask for (default: warnings).
    pub fn log_level(&self) -> log::LevelFilter {
        if self.quiet {
            return log::LevelFilter::Error;
        }
        match self.verbose {
            0 => log::LevelFilter::Warn,
            1 => log::LevelFilter::Info,
            2 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario (the default).
    Run(RunArgs),
    /// Show a dump or a hibernation image: checkpoint or image header,
    /// registers, memory ranges (with their checksums), notes.
    Inspect {
        /// The dump (an ELF core written by kjump), or a disk holding a
        /// hibernation image (or such an image on its own).
        file: PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the embedded guest kernel ELF (with its symbols and debug
    /// info) to a file, for gdb.
    Kernel {
        /// Where to write it.
        output: PathBuf,
    },
    /// What differs between two dumps or images: registers, then pages
    /// with byte ranges, hexdump and guest symbol. An image is compared
    /// with a dump as kernel a's view (its pages at home). Exit code 1 when
    /// they differ.
    Diff {
        a: PathBuf,
        b: PathBuf,
        /// Kernel ELF for symbols (default: the embedded kjump guest).
        #[arg(long)]
        kernel: Option<PathBuf>,
    },
    /// The hibernation image on a disk file.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Build a fresh VM from a dump alone (memory and complete vCPU state)
    /// and run the scenario on from the dump's checkpoint to its end, every
    /// checkpoint checked as in the run; or kernel a from a hibernation
    /// image, checked against it. Exit codes as a run.
    Resume(ResumeArgs),
    /// Measure what a checkpoint costs (ping-pong at 256M, 1G, 4G and 16G,
    /// checked and --no-check) and judge issue 13's targets; exit 0 when
    /// measured (the table says which targets are missed), 2 when not.
    Bench {
        /// Fewer cycles and runs (about 20 s instead of a minute).
        #[arg(long)]
        quick: bool,
        /// JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
}

/// `kjump image ...`: the hibernation image on a disk.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Write the image out of the disk file: exactly its bytes (headers
    /// and ranges, not the rest of the disk), atomically, after every check
    /// of its headers and checksums.
    Extract {
        /// The disk file (the image from byte 0).
        disk: PathBuf,
        /// Where to write the image.
        output: PathBuf,
    },
    /// Write kernel a's view of the image as a kjump dump that gdb opens
    /// with a's symbols: a's pages at home (those its kimage parked in
    /// source pages read from there), its saved registers in NT_PRSTATUS
    /// (rip at its checkpoint). Marked not resumable.
    View {
        /// The disk file (the image from byte 0).
        disk: PathBuf,
        /// Where to write the dump.
        output: PathBuf,
        /// Kernel a's ELF, for the checkpoint's address (default: the
        /// embedded kjump guest).
        #[arg(long)]
        kernel: Option<PathBuf>,
    },
}

/// Options of `kjump resume`.
#[derive(Clone, Debug, Args)]
pub struct ResumeArgs {
    /// The dump to go on from (an ELF core kjump wrote at a checkpoint,
    /// e.g. with --dump every-jump), or a disk holding a hibernation image
    /// (kernel a is entered at its re-entry point and checked against the
    /// image).
    pub file: PathBuf,

    /// Write a JSON report here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Write JUnit XML here (a test case per check group and cycle).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,

    /// Watchdog: the guest is declared hung after this many seconds without a checkpoint that moves the run forward.
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400 * 7))]
    pub timeout: u64,

    /// Stop the run after this many seconds in all (default: no limit).
    #[arg(long, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=86_400 * 365))]
    pub max_time: Option<u64>,

    /// Kernel ELF for symbols in reports (default: the embedded kjump guest).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Where ELF core dumps of the resumed run go.
    #[arg(long, value_name = "DIR")]
    pub dump_dir: Option<PathBuf>,

    /// When to write dumps.
    #[arg(long, value_enum, default_value_t = DumpPolicy::OnMismatch)]
    pub dump: DumpPolicy,

    /// The most bytes of dumps the run may write (on disk; K/M/G). An
    /// every-jump run also stops up front when its dumps would not fit on
    /// the file system.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub dump_max_bytes: Option<u64>,

    /// How memory is compared at a resume.
    #[arg(long, value_enum, default_value_t = CompareArg::Dirty)]
    pub compare: CompareArg,

    #[command(flatten)]
    pub gdb: GdbArgs,
}

/// The gdb stub's options, on `run` and `resume`.
#[derive(Clone, Debug, Default, Args)]
pub struct GdbArgs {
    /// Start stopped and wait for gdb on ADDR: PORT or HOST:PORT (loopback
    /// only unless --gdb-allow-remote), or unix:PATH [default: 127.0.0.1:1234].
    #[arg(long, value_name = "ADDR", value_parser = GdbAddr::parse)]
    pub gdb: Option<Option<GdbAddr>>,

    /// At a mismatch, keep the VM stopped at that checkpoint and wait for
    /// gdb on ADDR [default: --gdb's, or 127.0.0.1:1234]; exit 1 when the
    /// session ends.
    #[arg(long, value_name = "ADDR", value_parser = GdbAddr::parse)]
    pub gdb_on_mismatch: Option<Option<GdbAddr>>,

    /// Let the gdb stub listen on an address other machines can reach.
    #[arg(long)]
    pub gdb_allow_remote: bool,
}

impl GdbArgs {
    /// The addresses to use, defaults filled in.
    pub fn options(&self) -> GdbOptions {
        let default = || GdbAddr::parse(crate::gdb::DEFAULT_ADDR).expect("the default parses");
        let at_start = self.gdb.clone().map(|a| a.unwrap_or_else(default));
        let on_mismatch = self
            .gdb_on_mismatch
            .clone()
            .map(|a| a.or_else(|| at_start.clone()).unwrap_or_else(default));
        GdbOptions {
            at_start,
            on_mismatch,
            allow_remote: self.gdb_allow_remote,
        }
    }
}

impl ResumeArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }

    /// The resumed run these options ask for.
    pub fn into_config(self) -> ResumeConfig {
        ResumeConfig {
            file: self.file,
            report: self.report,
            junit: self.junit,
            timeout: self.timeout,
            max_time: self.max_time,
            kernel: self.kernel,
            dump_dir: self.dump_dir,
            dump: self.dump,
            dump_max_bytes: self.dump_max_bytes,
            compare: self.compare.into(),
            gdb: self.gdb.options(),
        }
    }
}

/// Options of a scenario run.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// The scenario to run.
    #[arg(long, value_enum, default_value_t = Scenario::PingPong)]
    pub scenario: Scenario,

    /// A→B→A cycles [default: 10; hibernate: 1 (saves and restores)].
    #[arg(long, value_name = "N")]
    pub cycles: Option<u64>,

    /// Guest RAM: bytes, or with a K/M/G suffix (512M, 2G, 0x...).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    pub mem: u64,

    /// Guest kernel ELF (default: the embedded kjump guest).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Initramfs (default: built from the kernel and the run's settings).
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,

    /// Watchdog: the guest is declared hung after this many seconds without a checkpoint that moves the run forward.
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400 * 7))]
    pub timeout: u64,

    /// Stop the run after this many seconds in all (default: no limit).
    #[arg(long, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=86_400 * 365))]
    pub max_time: Option<u64>,

    /// Extra words for the guest command line (repeatable).
    #[arg(long, value_name = "STR", allow_hyphen_values = true)]
    pub append: Vec<String>,

    /// Write a JSON report here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Write JUnit XML here (a test case per check group and cycle).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,

    /// Where ELF core dumps go.
    #[arg(long, value_name = "DIR")]
    pub dump_dir: Option<PathBuf>,

    /// When to write dumps.
    #[arg(long, value_enum, default_value_t = DumpPolicy::OnMismatch)]
    pub dump: DumpPolicy,

    /// The most bytes of dumps the run may write (on disk; K/M/G). An
    /// every-jump run also stops up front when its dumps would not fit on
    /// the file system.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub dump_max_bytes: Option<u64>,

    /// How memory is compared at a resume.
    #[arg(long, value_enum, default_value_t = CompareArg::Dirty)]
    pub compare: CompareArg,

    /// How kexec keeps the jumping kernel's memory.
    #[arg(long, value_enum, default_value_t = JumpMode::Swap)]
    pub mode: JumpMode,

    /// RAM kernel A gives kernel B.
    #[arg(long, value_name = "SIZE", default_value = "8M", value_parser = parse_size)]
    pub peer_mem: u64,

    /// Crash: the low memory kernel A backs up before the capture kernel
    /// runs there (seed 2004's backup region), from 0; whole pages, at
    /// least 5M.
    #[arg(long, value_name = "SIZE", default_value = "16M", value_parser = parse_size)]
    pub backup_size: u64,

    /// Inject a fault to show the oracle catches it: KIND, or KIND@CYCLE.
    #[arg(long, value_name = "KIND[@CYCLE]")]
    pub inject: Option<Inject>,

    #[command(flatten)]
    pub gdb: GdbArgs,
    /// Raw file behind the virtio-blk disk (boot, hibernate): used as is, or created when missing (default: a temporary file).
    #[arg(long, value_name = "FILE")]
    pub disk: Option<PathBuf>,

    /// Hibernate: the kernel that restores A in the new VM (default: the embedded kernel, in role c).
    #[arg(long, value_name = "PATH")]
    pub restore_kernel: Option<PathBuf>,
    /// Measurement only: run the same guests with capture and comparison
    /// off. Nothing is verified: the verdict is "unchecked", exit code 3.
    #[arg(long, conflicts_with_all = ["compare", "dump"])]
    pub no_check: bool,
}

impl RunArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }

    /// `--cycles`, or the scenario's default: 10, hibernate 1 (each cycle
    /// there is two VMs).
    pub fn cycles(&self) -> u64 {
        self.cycles.unwrap_or(match self.scenario {
            Scenario::Hibernate => 1,
            _ => crate::config::DEFAULT_CYCLES,
        })
    }

    /// The run these options ask for; `--inject` is parsed against the
    /// fault catalog here, once.
    pub fn into_config(self) -> Result<RunConfig, FaultError> {
        let cycles = self.cycles();
        let inject = self
            .inject
            .map(|i| Injection::parse(&i.kind, i.cycle))
            .transpose()?;
        // A fault on the guest command line is one too: validated and
        // judged as --inject.
        let (append, appended) = crate::faults::take_guest_fault(&self.append)?;
        let inject = match (inject, appended) {
            (Some(_), Some(_)) => {
                return Err(FaultError::NotFor(
                    "--inject and --append kjump.fault=… both name a fault; give one".into(),
                ));
            }
            (i, a) => i.or(a),
        };
        Ok(RunConfig {
            scenario: self.scenario,
            cycles,
            mem: self.mem,
            kernel: self.kernel,
            initramfs: self.initramfs,
            timeout: self.timeout,
            max_time: self.max_time,
            append,
            report: self.report,
            junit: self.junit,
            dump_dir: self.dump_dir,
            dump: self.dump,
            dump_max_bytes: self.dump_max_bytes,
            compare: self.compare.into(),
            mode: self.mode,
            peer_mem: self.peer_mem,
            backup_size: self.backup_size,
            inject,
            gdb: self.gdb.options(),
            disk: self.disk,
            restore_kernel: self.restore_kernel,
            unchecked: self.no_check,
        })
    }
}

impl Default for RunArgs {
    /// The defaults of `kjump` with no options.
    fn default() -> Self {
        Cli::try_parse_args(["kjump"])
            .expect("no arguments parse")
            .run
    }
}

/// clap's view of the config enums: their names on the command line.
macro_rules! value_enum {
    ($t:ty, [$($v:expr => $name:literal $(: $help:literal)?),* $(,)?]) => {
        impl ValueEnum for $t {
            fn value_variants<'a>() -> &'a [Self] {
                &[$($v),*]
            }
            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                match self {
                    $(x if *x == $v => Some(clap::builder::PossibleValue::new($name)$(.help($help))?),)*
                    _ => None,
                }
            }
        }
    };
}

value_enum!(DumpPolicy, [
    DumpPolicy::Never => "never",
    DumpPolicy::OnMismatch => "on-mismatch",
    DumpPolicy::EveryJump => "every-jump",
]);
/// `--compare` (the oracle's [`CompareMode`], whose crate knows no clap).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompareArg {
    /// Only the pages the dirty log reports.
    Dirty,
    /// All of RAM, cross-checking the dirty log.
    Full,
}

impl From<CompareArg> for CompareMode {
    fn from(c: CompareArg) -> Self {
        match c {
            CompareArg::Dirty => Self::Dirty,
            CompareArg::Full => Self::Full,
        }
    }
}
value_enum!(JumpMode, [
    JumpMode::Swap => "swap": "Swap source and destination pages (Linux's relocate_kernel)",
    JumpMode::Backup => "backup": "Back up the peer's region instead",
]);
/// `--scenario`: every scenario parses, but `--help` offers only those this
/// build runs (an unbuilt one is refused with a clear error).
impl ValueEnum for Scenario {
    fn value_variants<'a>() -> &'a [Self] {
        &Scenario::ALL
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(
            clap::builder::PossibleValue::new(self.name())
                .help(self.about())
                .hide(!self.is_built()),
        )
    }
}

/// `--inject KIND[@CYCLE]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inject {
    pub kind: String,
    /// The cycle to inject at (the scenario's default when absent).
    pub cycle: Option<u64>,
}

impl FromStr for Inject {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, cycle) = match s.split_once('@') {
            Some((k, c)) => {
                let c = kjump_abi::cmdline::parse_u64(c)
                    .ok_or_else(|| format!("{c:?} is not a cycle number"))?;
                (k, Some(c))
            }
            None => (s, None),
        };
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
        // `b:KIND`: a guest-side fault for kernel b (`c:KIND`: for
        // hibernate's restore kernel).
        let bare = ["a:", "b:", "c:"]
            .iter()
            .find_map(|p| kind.strip_prefix(p))
            .unwrap_or(kind);
        if bare.is_empty() || !bare.chars().all(valid) {
            return Err(format!(
                "{kind:?} is not a fault kind (lowercase letters, digits, '-'; b:KIND for kernel b, c:KIND for kernel c)"
            ));
        }
        Ok(Self {
            kind: kind.to_owned(),
            cycle,
        })
    }
}

/// Parses `--mem`-style sizes (`512M`, `2G`, `0x1000`, `1048576`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    kjump_abi::cmdline::parse_size(s)
        .ok_or_else(|| format!("{s:?} is not a size (use bytes, or a K/M/G suffix: 512M, 2G)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_args(std::iter::once("kjump").chain(args.iter().copied()))
    }

    fn run(args: &[&str]) -> RunArgs {
        match parse(args).unwrap().into_command() {
            Command::Run(r) => r,
            other => panic!("not a run: {other:?}"),
        }
    }

    #[test]
    fn dump_subcommands() {
        match parse(&["inspect", "d.core", "--json"])
            .unwrap()
            .into_command()
        {
            Command::Inspect { file, json } => {
                assert_eq!((file, json), (PathBuf::from("d.core"), true))
            }
            other => panic!("{other:?}"),
        }
        match parse(&["diff", "a.core", "b.core", "--kernel", "k"])
            .unwrap()
            .into_command()
        {
            Command::Diff { a, b, kernel } => {
                assert_eq!(
                    (a, b, kernel),
                    ("a.core".into(), "b.core".into(), Some("k".into()))
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["diff", "a.core"]).is_err());
        match parse(&["image", "extract", "disk.raw", "i.core"])
            .unwrap()
            .into_command()
        {
            Command::Image(ImageCommand::Extract { disk, output }) => {
                assert_eq!((disk, output), ("disk.raw".into(), "i.core".into()))
            }
            other => panic!("{other:?}"),
        }
        match parse(&["image", "view", "disk.raw", "v.core", "--kernel", "k"])
            .unwrap()
            .into_command()
        {
            Command::Image(ImageCommand::View {
                disk,
                output,
                kernel,
            }) => assert_eq!(
                (disk, output, kernel),
                ("disk.raw".into(), "v.core".into(), Some("k".into()))
            ),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["image"]).is_err());
        assert!(parse(&["image", "extract", "disk.raw"]).is_err());
        assert!(parse(&["image", "view", "disk.raw", "v.core", "--cycles", "2"]).is_err());
        match parse(&[
            "resume",
            "d.core",
            "--report",
            "r.json",
            "--timeout",
            "9",
            "--dump-dir",
            "out",
            "--dump",
            "every-jump",
        ])
        .unwrap()
        .into_command()
        {
            Command::Resume(r) => {
                assert_eq!(
                    (
                        r.file.clone(),
                        r.report.clone(),
                        r.timeout(),
                        r.dump_dir.clone(),
                        r.dump
                    ),
                    (
                        PathBuf::from("d.core"),
                        Some(PathBuf::from("r.json")),
                        Duration::from_secs(9),
                        Some(PathBuf::from("out")),
                        DumpPolicy::EveryJump
                    )
                );
                assert_eq!((r.compare, r.kernel), (CompareArg::Dirty, None));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["resume", "d.core"]).unwrap().into_command() {
            Command::Resume(r) => {
                assert_eq!(
                    (r.timeout, r.report, r.dump),
                    (60, None, DumpPolicy::OnMismatch)
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["resume"]).is_err());
        assert!(parse(&["resume", "d.core", "--cycles", "3"]).is_err());
        assert!(parse(&["--report", "r.json", "resume", "d.core"]).is_err());
    }

    #[test]
    fn defaults() {
        let r = run(&[]);
        // A bare `kjump` runs the main job.
        assert_eq!(r.scenario, Scenario::PingPong);
        assert_eq!(
            (r.cycles, r.mem, r.timeout, r.peer_mem),
            (None, 256 << 20, 60, 8 << 20)
        );
        assert_eq!(
            (r.dump, r.compare, r.mode),
            (DumpPolicy::OnMismatch, CompareArg::Dirty, JumpMode::Swap)
        );
        assert!(r.kernel.is_none() && r.initramfs.is_none() && r.inject.is_none());
        assert!(r.append.is_empty());
        assert_eq!(RunArgs::default().mem, 256 << 20);
        assert_eq!(parse(&[]).unwrap().log_level(), log::LevelFilter::Warn);
    }

    #[test]
    fn help_offers_only_the_scenarios_this_build_runs() {
        let help = Cli::command().render_long_help().to_string();
        assert!(
            help.contains("ping-pong") && help.contains("boot") && help.contains("hibernate"),
            "{help}"
        );
        assert!(
            help.contains("--disk") && help.contains("--restore-kernel"),
            "{help}"
        );
        assert_eq!(
            run(&["--scenario", "hibernate"]).scenario,
            Scenario::Hibernate
        );
    }

    #[test]
    fn every_option_parses() {
        let r = run(&[
            "--scenario",
            "ping-pong",
            "--cycles",
            "100",
            "--mem",
            "2G",
            "--kernel",
            "/k",
            "--initramfs",
            "/i",
            "--timeout",
            "5",
            "--max-time",
            "3600",
            "--append",
            "kjump.fault=ud2",
            "--append",
            "-x",
            "--report",
            "r.json",
            "--junit",
            "j.xml",
            "--dump-dir",
            "d",
            "--dump",
            "every-jump",
            "--compare",
            "full",
            "--mode",
            "backup",
            "--peer-mem",
            "0x1000000",
            "--inject",
            "flip-page@3",
        ]);
        assert_eq!(r.scenario, Scenario::PingPong);
        assert_eq!(
            (r.cycles, r.mem, r.timeout, r.peer_mem),
            (Some(100), 2 << 30, 5, 16 << 20)
        );
        assert_eq!(r.kernel.as_deref(), Some(std::path::Path::new("/k")));
        assert_eq!(r.append, ["kjump.fault=ud2", "-x"]);
        assert_eq!(
            (r.dump, r.compare, r.mode),
            (DumpPolicy::EveryJump, CompareArg::Full, JumpMode::Backup)
        );
        assert_eq!(
            r.inject,
            Some(Inject {
                kind: "flip-page".into(),
                cycle: Some(3)
            })
        );
        assert_eq!(r.timeout(), Duration::from_secs(5));
        assert_eq!(r.max_time, Some(3600));
        assert_eq!(r.junit.as_deref(), Some(std::path::Path::new("j.xml")));
    }

    #[test]
    fn options_a_run_ignores_are_found() {
        let w = parse(&["--scenario", "boot", "--cycles", "3"])
            .unwrap()
            .ignored_options();
        assert_eq!(
            w,
            ["--cycles is ignored by --scenario boot (it has no jumps to check or dump)"]
        );
        let w = parse(&["run", "--dump", "every-jump"])
            .unwrap()
            .ignored_options();
        assert_eq!(
            w,
            ["--dump every-jump is ignored without --dump-dir (no dump is written)"]
        );
        let w = parse(&["resume", "d.core", "--dump", "every-jump"])
            .unwrap()
            .ignored_options();
        assert_eq!(w.len(), 1, "{w:?}");
        // The defaults a scenario does not use are not warned about.
        assert!(
            parse(&["--scenario", "boot"])
                .unwrap()
                .ignored_options()
                .is_empty()
        );
        assert!(parse(&[]).unwrap().ignored_options().is_empty());
    }

    /// The CI workflow's own kjump run parses, and writes its report,
    /// JUnit file and dumps where the workflow uploads them from.
    #[test]
    fn the_ci_workflows_run_uploads_what_it_writes() {
        let yml = include_str!("../../ci/github/kjump.yml");
        let line = yml
            .lines()
            .find_map(|l| l.trim().strip_prefix("run: cargo run --release -- "))
            .expect("the workflow runs kjump");
        let r = run(&line.split_whitespace().collect::<Vec<_>>());
        let (report, junit, dumps) = (
            r.report.expect("--report"),
            r.junit.expect("--junit"),
            r.dump_dir.expect("--dump-dir"),
        );
        assert_eq!(r.scenario, Scenario::PingPong);
        for p in [&report, &junit, &dumps] {
            assert!(p.starts_with("kjump-out"), "{p:?}");
        }
        let uploads: Vec<&str> = yml
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("kjump-out") || l.starts_with("path: kjump-out"))
            .map(|l| l.trim_start_matches("path: "))
            .collect();
        for p in [&report, &junit] {
            assert!(
                uploads.contains(&p.to_str().unwrap()),
                "{p:?} in {uploads:?}"
            );
        }
        assert!(uploads.contains(&"kjump-out/"), "{uploads:?}");
        assert!(
            yml.contains("if: failure()"),
            "dumps are uploaded on failure"
        );
    }

    #[test]
    fn run_subcommand_is_the_same_as_none() {
        let a = run(&["run", "--cycles", "7", "--mem", "512M"]);
        assert_eq!((a.cycles, a.mem), (Some(7), 512 << 20));
        // Run flags and a subcommand do not mix.
        assert!(parse(&["--cycles", "7", "run"]).is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            &["--scenario", "no-such-thing"][..],
            &["--mem", "lots"],
            &["--mem", "99999999999999G"],
            &["--cycles", "-1"],
            &["--timeout", "0"],
            &["--dump", "sometimes"],
            &["--inject", ""],
            &["--inject", "Flip"],
            &["--inject", "flip@x"],
            &["--frobnicate"],
            &["-v", "-q"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        let e = parse(&["--scenario", "no-such-thing"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no-such-thing") && e.contains("ping-pong"),
            "{e}"
        );
    }

    #[test]
    fn kvm_device_is_global_and_defaults_to_dev_kvm() {
        // The environment variable is not set under `cargo test` (it would
        // change the default); clap reads it, which the integration tests
        // show.
        if std::env::var_os("KJUMP_KVM_DEVICE").is_none() {
            let c = parse(&[]).unwrap();
            assert_eq!(c.kvm_device, PathBuf::from("/dev/kvm"));
            assert_eq!(
                c.run_options().kvm_device.as_deref(),
                Some(std::path::Path::new("/dev/kvm"))
            );
        }
        for args in [
            &["--kvm-device", "/dev/kvm1", "--scenario", "boot"][..],
            &["run", "--kvm-device", "/dev/kvm1"],
            &["--kvm-device", "/dev/kvm1", "run"],
            &["resume", "d.core", "--kvm-device", "/dev/kvm1"],
            &["--kvm-device", "/dev/kvm1", "resume", "d.core"],
        ] {
            let c = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(c.kvm_device, PathBuf::from("/dev/kvm1"), "{args:?}");
            assert_eq!(c.run_options().kvm_device, Some(PathBuf::from("/dev/kvm1")));
        }
        assert!(parse(&["--kvm-device", ""]).is_err());
        assert!(parse(&["--kvm-device"]).is_err());
    }

    #[test]
    fn verbosity() {
        assert_eq!(parse(&["-v"]).unwrap().log_level(), log::LevelFilter::Info);
        assert_eq!(
            parse(&["-vv", "run"]).unwrap().log_level(),
            log::LevelFilter::Debug
        );
        assert_eq!(
            parse(&["run", "-v"]).unwrap().log_level(),
            log::LevelFilter::Info
        );
        assert_eq!(parse(&["-q"]).unwrap().log_level(), log::LevelFilter::Error);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert!(parse_size("").is_err());
        assert!(parse_size("1.5G").is_err());
        for n in [0, 1, 4096, 8 << 20, 3 << 30, (1 << 20) + 1024, 12345] {
            assert_eq!(parse_size(&crate::config::format_size(n)), Ok(n), "{n}");
        }
        assert_eq!(crate::config::format_size(8 << 20), "8M");
    }
}
