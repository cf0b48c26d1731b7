//! The first hour: what a newcomer types and sees. A bare `kjump` runs the
//! main job; the terminal shows a short summary (`-q` the verdict line
//! only, `-v` the details); a failing run ends with where its dumps and
//! report went; CI gets JUnit XML; and the README's debugging walkthrough
//! works verbatim.

mod common;
use common::{assert_exit, kjump, kvm_or_skip, scratch};

use std::path::Path;
use std::process::Command;

/// The verdict line of a pass: `kjump: ping-pong: pass (N of N cycles, ...`.
fn pass_line(cycles: u64) -> String {
    let checkpoints = 3 + 4 * (cycles - 1);
    format!("kjump: ping-pong: pass ({cycles} of {cycles} cycles, {checkpoints} checkpoints, ")
}

#[test]
fn a_bare_kjump_runs_ping_pong() {
    if !kvm_or_skip("a_bare_kjump_runs_ping_pong") {
        return;
    }
    let (out, err) = assert_exit(&kjump(&[]), 0);
    let last = out.lines().last().unwrap_or_default();
    assert!(last.starts_with(&pass_line(10)), "{out}\n{err}");
    assert!(out.contains("[b] kjump guest kernel b: ping-pong"), "{out}");
}

#[test]
fn quiet_prints_the_verdict_line_only_and_the_summary_is_short() {
    if !kvm_or_skip("quiet_prints_the_verdict_line_only_and_the_summary_is_short") {
        return;
    }
    let (out, err) = assert_exit(&kjump(&["-q", "--cycles", "2"]), 0);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with(&pass_line(2)), "{out}");
    assert_eq!(err, "");
    // A failure too: one line, that names the kernel and the first mismatch.
    let (out, _) = assert_exit(&kjump(&["-q", "--cycles", "2", "--inject", "flip-a@2"]), 1);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.starts_with("kjump: ping-pong: FAIL (kernel a, 1 of 2 cycles, 7 checkpoints, ")
            && out.contains("): 1 mismatch, the first: checkpoint 6 (cycle 2, kernel a, resume): memory: page of kernel a "),
        "{out}"
    );
    // The mismatch is named once in the line, not twice.
    assert_eq!(out.matches("checkpoint 6 (").count(), 1, "{out}");

    // By default: the guests' console, then the verdict line; no details.
    let (out, _) = assert_exit(&kjump(&["--cycles", "2"]), 0);
    let own: Vec<&str> = out.lines().filter(|l| !l.starts_with('[')).collect();
    assert_eq!(own.len(), 1, "{out}");
    assert!(own[0].starts_with(&pass_line(2)), "{out}");
    // -v adds them.
    let (out, _) = assert_exit(&kjump(&["-v", "--cycles", "2"]), 0);
    for detail in [
        "pages compared: ",
        "allowed to differ:",
        "excused pages of a (",
    ] {
        assert!(out.contains(detail), "no {detail:?}:\n{out}");
    }
}

#[test]
fn a_failing_run_ends_with_its_dumps_report_and_junit() {
    if !kvm_or_skip("a_failing_run_ends_with_its_dumps_report_and_junit") {
        return;
    }
    let d = scratch("newcomer-fail");
    let (dumps, report, junit) = (d.join("dumps"), d.join("r.json"), d.join("j.xml"));
    let (out, _) = assert_exit(
        &kjump(&[
            "--cycles",
            "3",
            "--inject",
            "flip-a@2",
            "--dump-dir",
            dumps.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
        ]),
        1,
    );
    let tail: Vec<&str> = out.lines().rev().take(4).collect();
    let dump = |n: &str| dumps.join(n).to_str().unwrap().to_owned();
    assert_eq!(
        tail,
        [
            format!("junit: {}", junit.display()).as_str(),
            format!("report: {}", report.display()).as_str(),
            format!(
                "dumps: {} {}",
                dump("c00002-00003-a-suspend-left.core"),
                dump("c00002-00006-a-resume-found.core")
            )
            .as_str(),
            tail[3],
        ],
        "{out}"
    );
    assert!(
        tail[3].starts_with("kjump: ping-pong: FAIL (kernel a, 1 of 3 cycles, "),
        "{out}"
    );
    // The mismatch is explained above, once.
    assert_eq!(out.matches("\n1 mismatch:\n").count(), 1, "{out}");

    // JUnit: the failing cycle and check group are named.
    let xml = std::fs::read_to_string(&junit).unwrap();
    let j = quick_junit::Report::deserialize_from_str(&xml).unwrap();
    let status = |name: &str| {
        let c = j.test_suites[0]
            .test_cases
            .iter()
            .find(|c| c.name.as_str() == name)
            .unwrap_or_else(|| panic!("no {name} in {xml}"));
        match &c.status {
            quick_junit::TestCaseStatus::Success { .. } => "ok",
            quick_junit::TestCaseStatus::NonSuccess { .. } => "fail",
            quick_junit::TestCaseStatus::Skipped { .. } => "skipped",
        }
    };
    assert_eq!(status("cycle 1: memory"), "ok");
    assert_eq!(status("cycle 1: registers"), "ok");
    assert_eq!(status("cycle 2: memory"), "fail");
    assert_eq!(status("cycle 2: registers"), "skipped");
    assert_eq!(status("cycle 3: entry"), "skipped");
    assert_eq!(j.test_suites[0].test_cases.len(), 12);
    assert_eq!(j.test_suites[0].failures, 1);
}

/// `kjump | head`: a reader that goes away early is no reason to fail.
#[test]
fn a_closed_stdout_does_not_end_the_run() {
    if !kvm_or_skip("a_closed_stdout_does_not_end_the_run") {
        return;
    }
    let mut child = common::kjump_command(&["--cycles", "2", "--inject", "flip-a@2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn options_the_run_ignores_are_warned_about() {
    if !kvm_or_skip("options_the_run_ignores_are_warned_about") {
        return;
    }
    let (_, err) = assert_exit(&kjump(&["--scenario", "boot", "--cycles", "3"]), 0);
    assert!(
        err.contains("kjump: warn: --cycles is ignored by --scenario boot"),
        "{err}"
    );
    let (_, err) = assert_exit(&kjump(&["--cycles", "1", "--dump", "every-jump"]), 0);
    assert!(
        err.contains("kjump: warn: --dump every-jump is ignored without --dump-dir"),
        "{err}"
    );
}

#[test]
fn help_offers_what_is_built() {
    let (out, _) = assert_exit(&kjump(&["--help"]), 0);
    assert!(
        out.contains("ping-pong") && out.contains("hibernate"),
        "{out}"
    );
    assert!(
        out.contains("--junit") && out.contains("--max-time"),
        "{out}"
    );
}

// ------------------------------------------------ the README walkthrough

/// The README's walkthrough: the commands of its `sh` blocks, each with the
/// exit code its comment announces ("exit code N", else 0), and the lines
/// of its `text` blocks (what the README says they print).
fn walkthrough() -> (Vec<(String, i32)>, Vec<String>) {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("the README");
    let start = readme
        .find("<!-- walkthrough")
        .expect("the walkthrough's start marker");
    let end = readme
        .find("<!-- /walkthrough -->")
        .expect("its end marker");
    let (mut commands, mut shown) = (Vec::new(), Vec::new());
    let mut block = None;
    for line in readme[start..end].lines() {
        match (block, line.trim_end()) {
            (None, "```sh") => block = Some("sh"),
            (None, "```text") => block = Some("text"),
            (Some(_), "```") => block = None,
            (Some("sh"), l) if !l.trim().is_empty() => {
                let (cmd, comment) = split_comment(l);
                let code = comment
                    .and_then(|c| c.split("exit code ").nth(1))
                    .and_then(|c| c.split(|ch: char| !ch.is_ascii_digit()).next())
                    .map_or(0, |n| n.parse().expect("an exit code"));
                commands.push((cmd.trim().to_owned(), code));
            }
            (Some("text"), l) => shown.push(l.to_owned()),
            _ => {}
        }
    }
    (commands, shown)
}

/// A shell line and its trailing `# comment`, a `#` in quotes not counted.
fn split_comment(line: &str) -> (&str, Option<&str>) {
    let mut quote = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev.is_whitespace() => return (&line[..i], Some(&line[i..])),
            _ => {}
        }
        prev = c;
    }
    (line, None)
}

#[test]
fn comments_are_split_off_shell_lines() {
    assert_eq!(
        split_comment("kjump x   # fails: exit code 1"),
        ("kjump x   ", Some("# fails: exit code 1"))
    );
    assert_eq!(
        split_comment("gdb -ex 'p #x' f"),
        ("gdb -ex 'p #x' f", None)
    );
}

/// Every command of the README's walkthrough, run as written (`cargo run
/// --` is the kjump binary this test was built with) in an empty
/// directory: each exits as announced, the dumps it names exist, and what
/// the README shows of their output (the lines that do not depend on
/// addresses) is what they print.
#[test]
fn the_readme_walkthrough_works_verbatim() {
    if !kvm_or_skip("the_readme_walkthrough_works_verbatim") {
        return;
    }
    let gdb = Command::new("gdb").arg("--version").output();
    if !gdb.is_ok_and(|o| o.status.success()) {
        common::skip(
            "the_readme_walkthrough_works_verbatim",
            "gdb is not installed",
        );
        return;
    }
    let (commands, shown) = walkthrough();
    assert!(commands.len() >= 4, "{commands:?}");
    let dir = scratch("readme-walkthrough");
    let kjump_bin = env!("CARGO_BIN_EXE_kjump");
    let mut output = String::new();
    for (cmd, code) in &commands {
        let run = match cmd.strip_prefix("cargo run -- ") {
            Some(args) => format!("'{kjump_bin}' {args}"),
            None => {
                assert!(cmd.starts_with("gdb "), "an unexpected command: {cmd}");
                cmd.clone()
            }
        };
        let o = Command::new("sh")
            .args(["-c", &run])
            .current_dir(&dir)
            .env("RUST_LOG", "warn")
            .env_remove("KJUMP_KVM_DEVICE")
            .output()
            .unwrap();
        let (out, err) = common::text(&o);
        assert_eq!(
            o.status.code(),
            Some(*code),
            "{cmd}\n--- stdout\n{out}\n--- stderr\n{err}"
        );
        output.push_str(&out);
        output.push_str(&err);
    }
    // Every dump the walkthrough names is one the run wrote.
    let names: Vec<&str> = commands
        .iter()
        .flat_map(|(c, _)| c.split_whitespace())
        .filter(|w| w.starts_with("dumps/"))
        .collect();
    assert!(names.len() >= 3, "{names:?}");
    for n in &names {
        assert!(Path::new(&dir).join(n).is_file(), "{n} was not written");
    }
    // The lines the README shows that name no address are printed as shown.
    let stable = [
        "dumps: ",
        "report: ",
        "meta: ",
        "pair: ",
        "registers: ",
        "pages: ",
        "1 mismatch:",
    ];
    let checked: Vec<&String> = shown
        .iter()
        .filter(|l| stable.iter().any(|p| l.starts_with(p)))
        .collect();
    assert!(checked.len() >= 7, "{checked:?}");
    for l in checked {
        assert!(
            output.lines().any(|o| o == l),
            "the README shows {l:?}; the run printed:\n{output}"
        );
    }
    // gdb: the checkpoint instruction, named.
    for s in [
        "<kjump_checkpoint+1>",
        "<kjump_checkpoint>:\tin     (%dx),%eax",
        "#1  0x",
    ] {
        assert!(
            shown.iter().any(|l| l.contains(s)),
            "the README shows no {s:?}"
        );
        assert!(output.contains(s), "gdb printed no {s:?}:\n{output}");
    }
}
