//! `kjump`: parses the command line, runs, and turns the result into one
//! line and an exit code (0 pass, 1 a check failed, 2 could not run).

use std::error::Error;
use std::io::Write;
use std::process::ExitCode;

use std::path::PathBuf;

use kjump::cli::{Cli, Command, ImageCommand};
use kjump::scenario::resume::ResumeError;
use kjump::scenario::{self, Ledger, RunOptions};
use kjump::vm::serial::ConsoleSink;
use kjump_core::report::Report;

fn main() -> ExitCode {
    let cli = match Cli::try_parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    init_logging(cli.log_level());
    let shown = Shown {
        quiet: cli.quiet,
        verbose: cli.verbose > 0,
    };
    // For the subcommands that open KVM (run, resume).
    let ledger = Ledger::default();
    let opts = RunOptions {
        handle_signals: true,
        ledger: ledger.clone(),
        console: if cli.quiet {
            ConsoleSink::Discard
        } else {
            ConsoleSink::Stdout
        },
        ..cli.run_options()
    };
    for w in cli.ignored_options() {
        log::warn!("{w}");
    }
    match cli.into_command() {
        Command::Inspect { file, json } => match kjump::commands::inspect(&file, json) {
            Ok(text) => {
                out(&text);
                ExitCode::SUCCESS
            }
            Err(e) => {
                report_error(&e, None);
                ExitCode::from(2)
            }
        },
        Command::Image(ImageCommand::Extract { disk, output }) => {
            match kjump::commands::image_extract(&disk, &output) {
                Ok(bytes) => {
                    log::info!("{bytes} bytes of image written to {}", output.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    report_error(&e, None);
                    ExitCode::from(2)
                }
            }
        }
        Command::Image(ImageCommand::View {
            disk,
            output,
            kernel,
        }) => match kjump::commands::image_view(&disk, &output, kernel.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                report_error(&e, None);
                ExitCode::from(2)
            }
        },
        Command::Kernel { output } => {
            match kjump_core::files::write_atomic(&output, kjump::DEFAULT_KERNEL) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kjump: error: cannot write {}: {e}", output.display());
                    ExitCode::from(2)
                }
            }
        }
        Command::Diff { a, b, kernel } => match kjump::commands::diff(&a, &b, kernel.as_deref()) {
            Ok((text, differs)) => {
                out(&text);
                ExitCode::from(u8::from(differs))
            }
            Err(e) => {
                report_error(&e, None);
                ExitCode::from(2)
            }
        },
        Command::Run(args) if args.inject.as_ref().is_some_and(|i| i.kind == "list") => {
            out(&kjump::faults::catalog());
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            let files = Outputs {
                report: args.report.clone(),
                junit: args.junit.clone(),
            };
            let what = (args.scenario.name(), args.cycles());
            let result = args
                .into_config()
                .map_err(scenario::RunError::from)
                .and_then(|cfg| scenario::run_scenario_with(&cfg, &opts));
            let result = result.map_err(|e| Failure {
                line: error_line(&e),
                regs: e.regs().map(ToString::to_string),
                outputs_ok: !e.is_output_error(),
            });
            finish(result, &ledger, &files, what, shown)
        }
        Command::Bench { quick, json } => {
            let cfg = kjump::bench::BenchConfig {
                quick,
                kvm_device: opts.kvm_device.clone(),
            };
            match kjump::bench::run(&cfg) {
                Ok(r) => {
                    out(&if json { r.to_json() + "\n" } else { r.table() });
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    report_error(&e, None);
                    ExitCode::from(2)
                }
            }
        }
        Command::Resume(args) => {
            let args = args.into_config();
            let files = Outputs {
                report: args.report.clone(),
                junit: args.junit.clone(),
            };
            let result = kjump::scenario::resume::resume(&args, &opts);
            let result = result.map_err(|e| Failure {
                line: error_line(&e),
                regs: e.regs().map(ToString::to_string),
                outputs_ok: !matches!(&e, ResumeError::Run(r) if r.is_output_error()),
            });
            // The cycles asked for are in the dump, which may not read.
            finish(result, &ledger, &files, ("ping-pong", 0), shown)
        }
    }
}

/// What the terminal shows besides the verdict line.
#[derive(Clone, Copy)]
struct Shown {
    /// `-q`: the verdict line only.
    quiet: bool,
    /// `-v`: the report's details too.
    verbose: bool,
}

/// The files a run writes at its end.
struct Outputs {
    report: Option<PathBuf>,
    junit: Option<PathBuf>,
}

/// A run that could not be carried out.
struct Failure {
    /// The error on one line.
    line: String,
    /// The guest's registers, for a guest failure.
    regs: Option<String>,
    /// False when the error is about an output file: none is written then.
    outputs_ok: bool,
}

/// Ends a run: the mismatches explained, the details with `-v`, the report
/// written, the verdict line, and for a run that did not pass the paths of
/// its dumps and report; the exit code. A run that could not be carried
/// out is one error line (and the registers of a guest that failed), its
/// report an error report with whatever the run completed (from the
/// ledger), and exit code 2.
fn finish(
    result: Result<scenario::Outcome, Failure>,
    ledger: &Ledger,
    files: &Outputs,
    (scenario_name, cycles): (&str, u64),
    shown: Shown,
) -> ExitCode {
    let (report, why, code) = match result {
        Ok(outcome) => {
            let why = match &outcome.verdict {
                scenario::Verdict::Pass => None,
                scenario::Verdict::Fail(why) => Some(why.clone()),
                scenario::Verdict::Unchecked => Some(
                    "the guests ran with capture and comparison off (--no-check); nothing was verified"
                        .to_owned(),
                ),
            };
            let code = outcome.exit_code();
            (outcome.report, why, code)
        }
        Err(f) => {
            eprintln!("kjump: error: {}", f.line);
            if let (Some(regs), false) = (&f.regs, shown.quiet) {
                eprint!("{regs}");
            }
            let wall = ledger
                .started()
                .map_or(0, |t| t.elapsed().as_micros() as u64);
            let report = ledger.error_report(scenario_name, cycles, f.line, wall);
            if f.outputs_ok
                && let Err(e) = write_outputs(&report, files)
            {
                report_error(&*e, None);
            }
            // A run that got somewhere says how far; one refused before
            // the guest ran prints nothing more.
            if !shown.quiet && (!report.checkpoints.is_empty() || report.cycles_completed > 0) {
                out(&format!("{}\n", report.verdict_line(None)));
                print_paths(&report, files);
            }
            return ExitCode::from(2);
        }
    };
    if !shown.quiet {
        out(&report.explain_mismatches());
        if shown.verbose && !report.checkpoints.is_empty() {
            out(&report.details());
        }
    }
    if let Err(e) = write_outputs(&report, files) {
        report_error(&*e, None);
        return ExitCode::from(2);
    }
    out(&format!("{}\n", report.verdict_line(why.as_deref())));
    if code != 0 && !shown.quiet {
        print_paths(&report, files);
    }
    ExitCode::from(code)
}

/// Writes the report and the JUnit XML, as asked.
fn write_outputs(report: &Report, files: &Outputs) -> Result<(), Box<dyn Error>> {
    if let Some(path) = &files.report {
        report.write(path)?;
    }
    if let Some(path) = &files.junit {
        let xml = kjump::junit::junit_xml(report)?;
        kjump_core::files::write_atomic(path, xml.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Where a run that did not pass left its evidence.
fn print_paths(report: &Report, files: &Outputs) {
    if !report.dumps.is_empty() {
        out(&format!("dumps: {}\n", report.dumps.join(" ")));
    }
    if let Some(p) = &files.report {
        out(&format!("report: {}\n", p.display()));
    }
    if let Some(p) = &files.junit {
        out(&format!("junit: {}\n", p.display()));
    }
}

/// Prints to stdout; a closed pipe (`| head`) is not an error.
fn out(text: &str) {
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn init_logging(level: log::LevelFilter) {
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env(env_logger::Env::new().filter("RUST_LOG"))
        .format(|buf, rec| {
            writeln!(
                buf,
                "kjump: {}: {}",
                rec.level().as_str().to_lowercase(),
                rec.args()
            )
        })
        .init();
}

/// `kjump: error: <message>: <cause>: ...` on one line (causes whose text
/// the message already holds are left out), then the register dump.
fn report_error(e: &dyn Error, dump: Option<String>) {
    eprintln!("kjump: error: {}", error_line(e));
    if let Some(dump) = dump {
        eprint!("{dump}");
    }
}

/// The error and its causes on one line.
fn error_line(e: &dyn Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// clap's help and version go to stdout as usual; a usage error becomes one
/// line with exit code 2.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.render().to_string();
    let line = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!("kjump: error: {line}");
    ExitCode::from(2)
}
