//! `--junit FILE`: the run's report as JUnit XML (quick-junit), for CI
//! systems that show test results.
//!
//! One test case per check group and cycle — `cycle 2: memory` — so that a
//! CI page shows which cycle failed and how: the groups are the kinds of
//! mismatch the oracle reports (registers, memory, device, entry). A case
//! fails with its mismatches; a cycle the run did not finish has its other
//! groups skipped; a run that could not be carried out has an error case
//! `cycle N: run` in the cycle it stopped in; a failure without a mismatch
//! (a guest's self-check, an injected fault not caught) is a failing
//! `cycle N: verdict`. A scenario without cycles (boot)
//! is one case named after it.

use std::time::Duration;

use kjump_core::report::{MismatchKind, Report, Verdict};
use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};

/// The check groups, in the order of the cases of a cycle.
const GROUPS: [(MismatchKind, &str); 4] = [
    (MismatchKind::Register, "registers"),
    (MismatchKind::Memory, "memory"),
    (MismatchKind::Device, "device"),
    (MismatchKind::Entry, "entry"),
];

/// The JUnit XML of `report`.
pub fn junit_xml(report: &Report) -> Result<String, quick_junit::SerializeError> {
    let mut suite = TestSuite::new(report.scenario.as_str());
    suite.set_time(Duration::from_micros(report.timing.wall_us));
    let class = format!("kjump.{}", report.scenario);
    let case = |name: String, status: TestCaseStatus| {
        let mut c = TestCase::new(name, status);
        c.set_classname(class.as_str());
        c
    };
    let failure = |kind, message: &str, description: String| {
        let mut s = TestCaseStatus::non_success(kind);
        s.set_message(message);
        if !description.is_empty() {
            s.set_description(description);
        }
        s
    };
    let error = report.error.as_deref().unwrap_or("");

    if report.cycles_requested == 0 {
        let status = match report.verdict {
            Verdict::Pass => TestCaseStatus::success(),
            Verdict::Fail => failure(NonSuccessKind::Failure, error, String::new()),
            Verdict::Error => failure(NonSuccessKind::Error, error, String::new()),
            Verdict::Unchecked => TestCaseStatus::skipped(),
        };
        suite.add_test_case(case(report.scenario.clone(), status));
        return finish(suite);
    }

    // The cycle the run stopped in, if it stopped before its end.
    let stopped_in = (!matches!(report.verdict, Verdict::Pass | Verdict::Unchecked))
        .then(|| {
            report
                .mismatches
                .first()
                .map_or(report.cycles_completed + 1, |m| m.at.cycle)
        })
        .map(|c| c.min(report.cycles_requested));
    for cycle in 1..=report.cycles_requested {
        let unchecked = report.verdict == Verdict::Unchecked;
        let checked = !unchecked && report.checkpoints.iter().any(|c| c.cycle == cycle);
        for (kind, group) in GROUPS {
            let found: Vec<_> = report
                .mismatches
                .iter()
                .filter(|m| m.at.cycle == cycle && m.kind == kind)
                .collect();
            let status = if let Some(first) = found.first() {
                let text: String = found.iter().map(|m| m.explain()).collect();
                let message = first.explain().lines().next().unwrap_or("").to_owned();
                failure(NonSuccessKind::Failure, &message, text)
            } else if cycle <= report.cycles_completed && checked {
                TestCaseStatus::success()
            } else {
                let mut s = TestCaseStatus::skipped();
                s.set_message(if unchecked {
                    "not checked: the run had capture and comparison off (--no-check)"
                } else if cycle <= report.cycles_completed {
                    "not checked by this run (it resumed from a dump taken later)"
                } else if Some(cycle) == stopped_in {
                    "the cycle did not complete"
                } else {
                    "the run ended before this cycle"
                });
                s
            };
            suite.add_test_case(case(format!("cycle {cycle}: {group}"), status));
        }
        if Some(cycle) == stopped_in && report.mismatches.is_empty() {
            let (name, kind) = match report.verdict {
                Verdict::Error => ("run", NonSuccessKind::Error),
                _ => ("verdict", NonSuccessKind::Failure),
            };
            suite.add_test_case(case(
                format!("cycle {cycle}: {name}"),
                failure(kind, error, String::new()),
            ));
        }
    }
    finish(suite)
}

fn finish(suite: TestSuite) -> Result<String, quick_junit::SerializeError> {
    let mut r = quick_junit::Report::new("kjump");
    r.add_test_suite(suite);
    r.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kjump_core::report::{At, CheckpointRecord, Mismatch};

    fn report(cycles: u64, completed: u64) -> Report {
        let mut r = Report::new("ping-pong", cycles, "dirty", &[]);
        for cycle in 1..=completed {
            r.push_checkpoint(CheckpointRecord {
                cycle,
                ..Default::default()
            });
        }
        r.cycles_completed = completed;
        r
    }

    /// (name, status) of every case: "ok", "failure: MESSAGE", "error:
    /// MESSAGE", "skipped: MESSAGE".
    fn cases(xml: &str) -> Vec<(String, String)> {
        let r = quick_junit::Report::deserialize_from_str(xml).unwrap();
        assert_eq!(r.test_suites.len(), 1);
        r.test_suites[0]
            .test_cases
            .iter()
            .map(|c| {
                let status = match &c.status {
                    TestCaseStatus::Success { .. } => "ok".to_owned(),
                    TestCaseStatus::NonSuccess { kind, message, .. } => format!(
                        "{}: {}",
                        if *kind == NonSuccessKind::Error {
                            "error"
                        } else {
                            "failure"
                        },
                        message.as_ref().map_or("", |m| m.as_str())
                    ),
                    TestCaseStatus::Skipped { message, .. } => {
                        format!("skipped: {}", message.as_ref().map_or("", |m| m.as_str()))
                    }
                };
                (c.name.as_str().to_owned(), status)
            })
            .collect()
    }

    fn find<'a>(cases: &'a [(String, String)], name: &str) -> &'a str {
        &cases
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no case {name}: {cases:?}"))
            .1
    }

    #[test]
    fn a_passing_run_has_a_passing_case_per_group_and_cycle() {
        let mut r = report(2, 2);
        r.finish(None, 1000);
        let c = cases(&junit_xml(&r).unwrap());
        assert_eq!(c.len(), 8);
        assert_eq!(
            c[..4].iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            [
                "cycle 1: registers",
                "cycle 1: memory",
                "cycle 1: device",
                "cycle 1: entry"
            ]
        );
        assert!(c.iter().all(|(_, s)| s == "ok"), "{c:?}");
    }

    #[test]
    fn a_mismatch_fails_its_cycle_and_group_only() {
        let mut r = report(3, 1);
        r.push_checkpoint(CheckpointRecord {
            cycle: 2,
            ..Default::default()
        });
        let at = At {
            checkpoint: 6,
            cycle: 2,
            kernel: "a".into(),
            direction: "resume".into(),
        };
        r.push_mismatches([Mismatch {
            at,
            kind: MismatchKind::Memory,
            name: Some("page of kernel a".into()),
            address: Some(0x21_5000),
            location: Some(0x21_5000),
            expected: "1".into(),
            actual: "2".into(),
            ranges: Vec::new(),
            hexdump: None,
            symbol: None,
            note: None,
        }]);
        r.finish(None, 1000);
        let c = cases(&junit_xml(&r).unwrap());
        assert_eq!(find(&c, "cycle 1: memory"), "ok");
        assert_eq!(
            find(&c, "cycle 2: memory"),
            "failure: checkpoint 6 (cycle 2, kernel a, resume): memory: page of kernel a 0x215000"
        );
        assert_eq!(
            find(&c, "cycle 2: registers"),
            "skipped: the cycle did not complete"
        );
        assert_eq!(
            find(&c, "cycle 3: entry"),
            "skipped: the run ended before this cycle"
        );
        assert_eq!(c.len(), 12);
    }

    #[test]
    fn an_error_is_an_error_case_in_the_cycle_it_stopped_in() {
        let mut r = report(3, 1);
        r.finish(Some("guest b: hung".into()), 1000);
        let c = cases(&junit_xml(&r).unwrap());
        assert_eq!(find(&c, "cycle 1: device"), "ok");
        assert_eq!(find(&c, "cycle 2: run"), "error: guest b: hung");
        assert!(!c.iter().any(|(n, _)| n == "cycle 3: run"));
        // A scenario without cycles is one case.
        let mut boot = Report::new("boot", 0, "none", &[]);
        boot.finish(Some("guest a panicked".into()), 10);
        assert_eq!(
            cases(&junit_xml(&boot).unwrap()),
            [("boot".to_owned(), "error: guest a panicked".to_owned())]
        );
    }
}
