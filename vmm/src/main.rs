//! `kjump`: parses the command line, runs, and turns the result into one
//! line and an exit code (0 pass, 1 a check failed, 2 could not run).

use std::error::Error;
use std::io::Write;
use std::process::ExitCode;

use kjump::cli::{Cli, Command};
use kjump::scenario::{self, RunOptions};
use kjump_core::report::Report;

fn main() -> ExitCode {
    let cli = match Cli::try_parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    init_logging(cli.log_level());
    // For the subcommands that open KVM (run, resume).
    let opts = RunOptions {
        handle_signals: true,
        ..cli.run_options()
    };
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
        Command::Kernel { output } => {
            match kjump_core::files::write_atomic(&output, kjump::DEFAULT_KERNEL) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kjump: error: cannot write {}: {e}", output.display());
                    ExitCode::from(2)
                }
            }
        }
        Command::Diff { a, b, kernel } => {
            let elf = match kernel.map(std::fs::read).transpose() {
                Ok(k) => k.unwrap_or_else(|| kjump::DEFAULT_KERNEL.to_vec()),
                Err(e) => {
                    report_error(&e, None);
                    return ExitCode::from(2);
                }
            };
            match kjump::commands::diff(&a, &b, &elf) {
                Ok((text, differs)) => {
                    out(&text);
                    ExitCode::from(u8::from(differs))
                }
                Err(e) => {
                    report_error(&e, None);
                    ExitCode::from(2)
                }
            }
        }
        Command::Run(args) if args.inject.as_ref().is_some_and(|i| i.kind == "list") => {
            out(&kjump::faults::catalog());
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            let (report, what) = (args.report.clone(), (args.scenario.name(), args.cycles));
            let result = args
                .into_config()
                .map_err(scenario::RunError::from)
                .and_then(|cfg| scenario::run_scenario_with(&cfg, &opts));
            finish(
                result.map_err(|e| {
                    let regs = e.regs().map(ToString::to_string);
                    (Box::new(e) as Box<dyn Error>, regs)
                }),
                report.as_deref(),
                what,
            )
        }
        Command::Resume(args) => {
            let args = args.into_config();
            let result = kjump::scenario::resume::resume(&args, &opts);
            finish(
                result.map_err(|e| {
                    let regs = e.regs().map(ToString::to_string);
                    (Box::new(e) as Box<dyn Error>, regs)
                }),
                args.report.as_deref(),
                // The cycles asked for are in the dump, which may not read.
                ("ping-pong", 0),
            )
        }
    }
}

/// Prints a run's summary, writes its report, and gives its exit code; a
/// run that could not be carried out is one error line (and the registers
/// of a guest that failed), a report saying so with the error, and exit
/// code 2.
fn finish(
    result: Result<scenario::Outcome, (Box<dyn Error>, Option<String>)>,
    report: Option<&std::path::Path>,
    (scenario_name, cycles): (&str, u64),
) -> ExitCode {
    match result {
        Ok(outcome) => {
            if !outcome.report.checkpoints.is_empty() {
                print!("{}", outcome.report.summary());
            }
            println!("{}", outcome.summary());
            if let Some(path) = report
                && let Err(e) = outcome.report.write(path)
            {
                report_error(&e, None);
                return ExitCode::from(2);
            }
            ExitCode::from(outcome.exit_code())
        }
        Err((e, regs)) => {
            report_error(&*e, regs);
            if let Some(path) = report {
                let mut r = Report::new(scenario_name, cycles, "none", &[]);
                r.finish(Some(error_line(&*e)), 0);
                if let Err(e) = r.write(path) {
                    report_error(&e, None);
                }
            }
            ExitCode::from(2)
        }
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
