//! What a run tells its user: the JSON report (`--report FILE`) and the
//! summary printed at the end.
//!
//! The report is plain serde data; the scenario fills it as checkpoints
//! pass ([`Report::push_checkpoint`], [`Report::push_mismatches`]) and
//! [`Report::finish`]es it with the verdict. Files are written atomically
//! ([`crate::files::write_atomic`]): a crash never leaves half a report
//! under its name.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::oracle::{AllowEntry, DeviceMismatch, MemoryMismatch, RegisterMismatch};

/// Mismatches the terminal summary explains in full; the JSON has them all.
const SUMMARY_MISMATCHES: usize = 20;

/// The report could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Writing the file failed.
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The report is not valid JSON for this format.
    #[error("invalid report JSON")]
    Json(#[from] serde_json::Error),
}

/// The outcome of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every check passed.
    Pass,
    /// A check failed.
    Fail,
    /// The run could not be carried out.
    Error,
    /// The guests ran with capture and comparison off (`--no-check`, for
    /// measuring the harness): nothing was verified, so it is no pass.
    Unchecked,
}

impl Verdict {
    /// The process exit code for this verdict: 0, 1, 2, or 3 (unchecked).
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Pass => 0,
            Self::Fail => 1,
            Self::Error => 2,
            Self::Unchecked => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::Error => "ERROR",
            Self::Unchecked => "UNCHECKED",
        }
    }
}

/// An allowlisted field and why, as printed in the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowedField {
    pub field: String,
    pub reason: String,
}

impl From<&AllowEntry> for AllowedField {
    fn from(e: &AllowEntry) -> Self {
        Self {
            field: e.field.clone(),
            reason: e.reason.clone(),
        }
    }
}

/// One checkpoint of the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// Counts from 0 over the run.
    pub index: u64,
    pub cycle: u64,
    /// `"a"` or `"b"`.
    pub kernel: String,
    /// `"suspend"` or `"resume"`.
    pub direction: String,
    /// The answer the VMM gave (ANSWER_JUMP or ANSWER_BACK).
    pub answer: u32,
    pub rip: u64,
    pub dirty_pages: u64,
    pub pages_compared: u64,
    /// State capture, dirty-log harvest and page store together
    /// (`state_us + dirty_log_us + store_us`).
    pub capture_us: u64,
    /// The oracle's judgement: record the suspend or check the resume, and
    /// the kernel that is away.
    pub compare_us: u64,
    pub mismatches: u64,
    /// When the checkpoint reached the VMM, in µs since the run started.
    #[serde(default)]
    pub t_us: u64,
    /// The guest's own time since the previous checkpoint (the jump that
    /// ends here): time inside `KVM_RUN`.
    #[serde(default)]
    pub guest_us: u64,
    /// The VMM's time handling the guest's exits since the previous
    /// checkpoint (port I/O, harness messages, completing this `in`).
    #[serde(default)]
    pub exit_us: u64,
    /// Capturing the vCPU and device state.
    #[serde(default)]
    pub state_us: u64,
    /// Harvesting the dirty logs (KVM's and vm-memory's).
    #[serde(default)]
    pub dirty_log_us: u64,
    /// Reading and storing the written pages (in `full` mode: all of RAM).
    #[serde(default)]
    pub store_us: u64,
    /// Dumps and the report's record of the checkpoint.
    #[serde(default)]
    pub report_us: u64,
}

/// A page a kernel may change after its checkpoint, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExcusedPage {
    pub kernel: String,
    pub address: u64,
    pub why: String,
}

/// Which checkpoint a mismatch was found at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct At {
    pub checkpoint: u64,
    pub cycle: u64,
    /// The kernel whose state differs: `"a"` or `"b"`.
    pub kernel: String,
    /// `"suspend"` or `"resume"`.
    pub direction: String,
}

impl CheckpointRecord {
    /// The record of checkpoint `id` (the answer it was given), its figures
    /// zero.
    pub fn of(id: &crate::checkpoint::CheckpointId) -> Self {
        Self {
            index: id.index,
            cycle: id.cycle,
            kernel: id.kernel.name().to_owned(),
            direction: id.direction.name().to_owned(),
            answer: id.direction.answer(),
            ..Self::default()
        }
    }
}

impl At {
    /// Where checkpoint `id` is.
    pub fn of(id: &crate::checkpoint::CheckpointId) -> Self {
        Self {
            checkpoint: id.index,
            cycle: id.cycle,
            kernel: id.kernel.name().to_owned(),
            direction: id.direction.name().to_owned(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "checkpoint {} (cycle {}, kernel {}, {})",
            self.checkpoint, self.cycle, self.kernel, self.direction
        )
    }
}

/// What kind of state differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MismatchKind {
    Register,
    Memory,
    Device,
    /// A jump about to enter the peer somewhere else than where the peer
    /// asked to be re-entered.
    Entry,
}

/// A byte range `[start, end)` of guest-physical addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
}

/// One difference found by the oracle, flattened for the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    #[serde(flatten)]
    pub at: At,
    pub kind: MismatchKind,
    /// Register field or device register (`rbx`, `uart lcr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Memory: the page's address in the kernel's view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<u64>,
    /// Memory: where the page was looked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<u64>,
    /// The value or page hash the kernel left.
    pub expected: String,
    /// The value or page hash it found.
    pub actual: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<ByteRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hexdump: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Mismatch {
    /// A mismatch of `kind` named `name`, with no address, byte ranges or
    /// hexdump (set them with struct update syntax where there are some).
    pub fn named(
        at: &At,
        kind: MismatchKind,
        name: String,
        (expected, actual): (String, String),
        note: String,
    ) -> Self {
        Self {
            at: at.clone(),
            kind,
            name: Some(name),
            address: None,
            location: None,
            expected,
            actual,
            ranges: Vec::new(),
            hexdump: None,
            symbol: None,
            note: Some(note),
        }
    }

    pub fn register(at: &At, m: &RegisterMismatch) -> Self {
        Self {
            at: at.clone(),
            kind: MismatchKind::Register,
            name: Some(m.field.clone()),
            address: None,
            location: None,
            expected: m.expected.to_string(),
            actual: m.actual.to_string(),
            ranges: Vec::new(),
            hexdump: None,
            symbol: None,
            note: m.note.clone(),
        }
    }

    pub fn memory(at: &At, m: &MemoryMismatch) -> Self {
        Self {
            at: at.clone(),
            kind: MismatchKind::Memory,
            // Whose page it is: the away kernel's pages are checked at the
            // running kernel's checkpoints too.
            name: Some(format!("page of kernel {}", m.kernel)),
            address: Some(m.home),
            location: Some(m.location),
            expected: m.expected.to_string(),
            actual: m
                .actual
                .map_or_else(|| "(not guest RAM)".to_string(), |h| h.to_string()),
            ranges: m
                .ranges
                .iter()
                .map(|r| ByteRange {
                    start: r.start,
                    end: r.end,
                    symbol: r.symbol.clone(),
                })
                .collect(),
            hexdump: (!m.hexdump.is_empty()).then(|| m.hexdump.clone()),
            symbol: m.symbol.clone(),
            note: None,
        }
    }

    pub fn device(at: &At, m: &DeviceMismatch) -> Self {
        Self {
            at: at.clone(),
            kind: MismatchKind::Device,
            name: Some(m.name()),
            address: None,
            location: None,
            expected: m.expected.to_string(),
            actual: m.actual.to_string(),
            ranges: Vec::new(),
            hexdump: None,
            symbol: None,
            note: m.note.clone(),
        }
    }

    /// The kernel whose state differs: for memory the page's owner (the
    /// away kernel's pages are checked at the running kernel's
    /// checkpoints), else the checkpoint's kernel.
    pub fn kernel(&self) -> &str {
        match (self.kind, self.name.as_deref()) {
            (MismatchKind::Memory, Some(n)) => match n.strip_prefix("page of kernel ") {
                Some(k) if !k.is_empty() && !k.contains(char::is_whitespace) => k,
                _ => &self.at.kernel,
            },
            _ => &self.at.kernel,
        }
    }

    /// The mismatch in a few lines of text.
    pub fn explain(&self) -> String {
        let mut s = String::new();
        let where_ = self.at.describe();
        match self.kind {
            MismatchKind::Register | MismatchKind::Device => {
                let kind = if self.kind == MismatchKind::Register {
                    "register"
                } else {
                    "device"
                };
                let name = self.name.as_deref().unwrap_or("?");
                let _ = write!(
                    s,
                    "{where_}: {kind} {name}: {} -> {}",
                    self.expected, self.actual
                );
                if let Some(n) = &self.note {
                    let _ = write!(s, " ({n})");
                }
                s.push('\n');
            }
            MismatchKind::Entry => {
                let name = self.name.as_deref().unwrap_or("entry");
                let _ = write!(s, "{where_}: {name}: {} -> {}", self.expected, self.actual);
                if let Some(a) = self.address {
                    let _ = write!(s, "\n    held at {a:#x}");
                    if let Some(sym) = &self.symbol {
                        let _ = write!(s, " ({sym})");
                    }
                }
                s.push('\n');
                if let Some(n) = &self.note {
                    let _ = writeln!(s, "    {n}");
                }
            }
            MismatchKind::Memory => {
                let home = self.address.unwrap_or(0);
                let whose = self.name.as_deref().unwrap_or("page");
                let _ = write!(s, "{where_}: memory: {whose} {home:#x}");
                if let Some(l) = self.location.filter(|&l| l != home) {
                    let _ = write!(s, " (looked for at {l:#x})");
                }
                if let Some(sym) = &self.symbol {
                    let _ = write!(s, " in {sym}");
                }
                s.push('\n');
                // A mismatch about memory that is not one page's bytes (a
                // region, a kimage's claim, a guest's pointer) says why.
                if let Some(n) = &self.note {
                    let _ = writeln!(
                        s,
                        "    {n} (expected {}, found {})",
                        self.expected, self.actual
                    );
                }
                if self.actual == "(not guest RAM)" {
                    s.push_str("    the page's location is not guest RAM\n");
                }
                for r in &self.ranges {
                    let _ = write!(s, "    bytes [{:#x}..{:#x})", r.start, r.end);
                    if let Some(sym) = &r.symbol {
                        let _ = write!(s, " {sym}");
                    }
                    s.push('\n');
                }
                for line in self.hexdump.as_deref().unwrap_or("").lines() {
                    let _ = writeln!(s, "    {line}");
                }
            }
        }
        s
    }
}

/// Run-wide timing totals, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// The whole run, boot to verdict.
    pub wall_us: u64,
    /// Sum over checkpoints: capturing vCPU state and reading dirty pages.
    pub capture_us: u64,
    /// Sum over checkpoints: running the oracle.
    pub compare_us: u64,
    /// Sum over checkpoints: the guests' own time (inside `KVM_RUN`).
    #[serde(default)]
    pub guest_us: u64,
    /// Sum over checkpoints: handling the guests' exits.
    #[serde(default)]
    pub exit_us: u64,
    /// Sum over checkpoints: dumps and report records.
    #[serde(default)]
    pub report_us: u64,
    /// The guest's time per jump (a checkpoint's `guest_us`, the first
    /// two, which include booting A and B, left out): median and maximum.
    #[serde(default)]
    pub guest_per_jump_us: GuestPerJump,
}

/// The guests' time per jump.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestPerJump {
    pub median: u64,
    pub max: u64,
}

/// The JSON report of one run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub verdict: Verdict,
    pub exit_code: i32,
    pub cycles_requested: u64,
    pub cycles_completed: u64,
    /// `"dirty"` (dirty log) or `"full"` (all of RAM, cross-checking the log).
    pub compare_mode: String,
    pub allowlist: Vec<AllowedField>,
    pub checkpoints: Vec<CheckpointRecord>,
    pub excused_pages: Vec<ExcusedPage>,
    pub mismatches: Vec<Mismatch>,
    /// The MSRs captured at every checkpoint (KVM's index list and the
    /// architectural MSRs it reads without listing them), by index.
    #[serde(default)]
    pub msrs_captured: Vec<u32>,
    /// The candidate MSRs this KVM refused to read (not captured).
    #[serde(default)]
    pub msrs_refused: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What a debugger attached to the run changed in the guest (registers,
    /// memory): the verdict judges what the oracle found after that.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub debugger_changes: Vec<String>,
    /// The kernel that failed (`"a"`/`"b"`): the one a guest error happened
    /// in, or whose state differs in the first mismatch; absent on a pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_kernel: Option<String>,
    /// The dump files the run wrote, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dumps: Vec<String>,
    pub timing: Timing,
    /// Distinct guest pages the dirty logs named over the run (what the
    /// guest and the VMM wrote): the scale of what the page store holds.
    #[serde(default)]
    pub pages_touched: u64,
}

impl Report {
    /// An empty report for a run that is starting (verdict: error until
    /// [`finish`](Self::finish)ed, so a report of an aborted run says so).
    pub fn new(
        scenario: &str,
        cycles_requested: u64,
        compare_mode: &str,
        allowlist: &[AllowEntry],
    ) -> Self {
        Self {
            scenario: scenario.to_string(),
            verdict: Verdict::Error,
            exit_code: Verdict::Error.exit_code(),
            cycles_requested,
            cycles_completed: 0,
            compare_mode: compare_mode.to_string(),
            allowlist: allowlist.iter().map(AllowedField::from).collect(),
            checkpoints: Vec::new(),
            excused_pages: Vec::new(),
            mismatches: Vec::new(),
            msrs_captured: Vec::new(),
            msrs_refused: Vec::new(),
            error: None,
            debugger_changes: Vec::new(),
            failed_kernel: None,
            dumps: Vec::new(),
            timing: Timing::default(),
            pages_touched: 0,
        }
    }

    /// Records a checkpoint and adds its times to the totals.
    pub fn push_checkpoint(&mut self, c: CheckpointRecord) {
        self.timing.capture_us += c.capture_us;
        self.timing.compare_us += c.compare_us;
        self.timing.guest_us += c.guest_us;
        self.timing.exit_us += c.exit_us;
        self.timing.report_us += c.report_us;
        self.checkpoints.push(c);
    }

    /// Adds time spent on the last checkpoint's record (the record itself
    /// and its dumps, measured once it is pushed).
    pub fn add_report_time(&mut self, us: u64) {
        if let Some(c) = self.checkpoints.last_mut() {
            c.report_us += us;
            self.timing.report_us += us;
        }
    }

    /// Records mismatches.
    pub fn push_mismatches(&mut self, m: impl IntoIterator<Item = Mismatch>) {
        self.mismatches.extend(m);
    }

    /// Sets the verdict: `error` if `error` is given, else `fail` if any
    /// mismatch was recorded, else `pass`; and the matching exit code.
    pub fn finish(&mut self, error: Option<String>, wall_us: u64) {
        self.verdict = if error.is_some() {
            Verdict::Error
        } else if self.mismatches.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        };
        self.exit_code = self.verdict.exit_code();
        self.error = error;
        self.timing.wall_us = wall_us;
        let mut jumps: Vec<u64> = self
            .checkpoints
            .iter()
            .skip(2)
            .map(|c| c.guest_us)
            .collect();
        jumps.sort_unstable();
        self.timing.guest_per_jump_us = GuestPerJump {
            median: jumps.get(jumps.len() / 2).copied().unwrap_or(0),
            max: jumps.last().copied().unwrap_or(0),
        };
    }

    /// Pages compared over all checkpoints.
    pub fn pages_compared(&self) -> u64 {
        self.checkpoints.iter().map(|c| c.pages_compared).sum()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report is always serialisable")
    }

    pub fn from_json(s: &str) -> Result<Self, ReportError> {
        Ok(serde_json::from_str(s)?)
    }

    /// Writes the JSON report atomically.
    pub fn write(&self, path: &Path) -> Result<(), ReportError> {
        let mut json = self.to_json();
        json.push('\n');
        crate::files::write_atomic(path, json.as_bytes()).map_err(|source| ReportError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The verdict line that ends a run: `kjump: ping-pong: pass (10 of 10
    /// cycles, 39 checkpoints, 0.68 s)`; a failure or error names the
    /// kernel that failed, and `why` follows.
    pub fn verdict_line(&self, why: Option<&str>) -> String {
        let word = match self.verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Error => "ERROR",
            Verdict::Unchecked => "UNCHECKED",
        };
        let mut parts = Vec::new();
        if self.verdict != Verdict::Pass
            && let Some(k) = &self.failed_kernel
        {
            parts.push(format!("kernel {k}"));
        }
        if self.cycles_requested > 0 {
            parts.push(format!(
                "{} of {} cycles",
                self.cycles_completed, self.cycles_requested
            ));
            parts.push(format!("{} checkpoints", self.checkpoints.len()));
        }
        if !self.debugger_changes.is_empty() {
            parts.push(format!(
                "{} change(s) made by the debugger",
                self.debugger_changes.len()
            ));
        }
        parts.push(format!("{:.2} s", self.timing.wall_us as f64 / 1e6));
        let mut line = format!("kjump: {}: {word} ({})", self.scenario, parts.join(", "));
        if let Some(why) = why {
            line.push_str(": ");
            line.push_str(why);
        }
        line
    }

    /// The details `-v` adds: pages compared, compare mode, where the time
    /// went, what the allowlist excuses and the excused pages.
    pub fn details(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "  pages compared: {}, compare mode: {}",
            self.pages_compared(),
            self.compare_mode
        );
        let _ = writeln!(
            s,
            "  time: {} (capture {}, compare {})",
            duration(self.timing.wall_us),
            duration(self.timing.capture_us),
            duration(self.timing.compare_us)
        );
        if self.timing.guest_us > 0 {
            let _ = writeln!(
                s,
                "  guests: {} (per jump: median {}, max {}), exit handling {}",
                duration(self.timing.guest_us),
                duration(self.timing.guest_per_jump_us.median),
                duration(self.timing.guest_per_jump_us.max),
                duration(self.timing.exit_us)
            );
        }
        if !self.allowlist.is_empty() {
            s.push_str("  allowed to differ:\n");
            for a in &self.allowlist {
                let _ = writeln!(s, "    {}: {}", a.field, a.reason);
            }
        }
        for (kernel, why, runs) in excused_runs(&self.excused_pages) {
            let list: Vec<String> = runs
                .iter()
                .map(|(a, b)| format!("[{a:#x}..{b:#x})"))
                .collect();
            let _ = writeln!(
                s,
                "  excused pages of {kernel} ({why}): {}",
                list.join(", ")
            );
        }
        s
    }

    /// What the verdict rests on, shown above it: what a debugger changed
    /// in the guest, and every mismatch explained (the first
    /// [`SUMMARY_MISMATCHES`]; the JSON has them all); empty when there is
    /// neither.
    pub fn explain_mismatches(&self) -> String {
        let mut s = String::new();
        if !self.debugger_changes.is_empty() {
            let _ = writeln!(s, "the debugger changed the guest:");
            for c in &self.debugger_changes {
                let _ = writeln!(s, "    {c}");
            }
        }
        if self.mismatches.is_empty() {
            return s;
        }
        let n = self.mismatches.len();
        let _ = writeln!(s, "{n} mismatch{}:", if n == 1 { "" } else { "es" });
        for m in self.mismatches.iter().take(SUMMARY_MISMATCHES) {
            s.push_str(&m.explain());
        }
        if n > SUMMARY_MISMATCHES {
            let _ = writeln!(
                s,
                "... and {} more (all are in the JSON report)",
                n - SUMMARY_MISMATCHES
            );
        }
        s
    }
}

/// Excused pages of one kernel for one reason, as contiguous `[start, end)` runs.
type ExcusedRuns = (String, String, Vec<(u64, u64)>);

/// Excused pages grouped by kernel and reason.
fn excused_runs(pages: &[ExcusedPage]) -> Vec<ExcusedRuns> {
    let mut out: Vec<ExcusedRuns> = Vec::new();
    let mut sorted: Vec<&ExcusedPage> = pages.iter().collect();
    sorted.sort_by(|a, b| (&a.kernel, &a.why, a.address).cmp(&(&b.kernel, &b.why, b.address)));
    for p in sorted {
        let end = p.address + crate::pages::PAGE_SIZE as u64;
        match out.last_mut() {
            Some((k, w, runs)) if *k == p.kernel && *w == p.why => match runs.last_mut() {
                Some(run) if run.1 == p.address => run.1 = end,
                _ => runs.push((p.address, end)),
            },
            _ => out.push((p.kernel.clone(), p.why.clone(), vec![(p.address, end)])),
        }
    }
    out
}

fn duration(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::{Allowlist, DiffRange};
    use crate::pages::PageHash;
    use crate::state::FieldValue;
    use std::fs;

    fn at() -> At {
        At {
            checkpoint: 7,
            cycle: 2,
            kernel: "a".into(),
            direction: "resume".into(),
        }
    }

    #[test]
    fn a_memory_mismatch_with_a_note_explains_it_on_the_console() {
        let m = Mismatch::named(
            &at(),
            MismatchKind::Memory,
            "kernel a's crash information, at 0x1800000".to_owned(),
            (
                "in [0x800000..0x1800000)".to_owned(),
                "0x1800000".to_owned(),
            ),
            "the crash notes are not in the reserved region".to_owned(),
        );
        let text = m.explain();
        assert!(
            text.contains(
                "\n    the crash notes are not in the reserved region (expected in [0x800000..0x1800000), found 0x1800000)\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_memory_mismatch_blames_the_page_owner_or_else_the_checkpoint_kernel() {
        let page = |name: &str| {
            Mismatch::named(
                &at(),
                MismatchKind::Memory,
                name.to_owned(),
                (String::new(), String::new()),
                String::new(),
            )
        };
        assert_eq!(page("page of kernel b").kernel(), "b");
        // A name that is not a page's owner never becomes the kernel.
        assert_eq!(page("kernel b's region in a's kimage").kernel(), "a");
        assert_eq!(page("page of kernel b's kimage list").kernel(), "a");
        assert_eq!(page("page of kernel ").kernel(), "a");
    }

    fn failing_report() -> Report {
        let mut r = Report::new("ping-pong", 100, "dirty", Allowlist::standard().entries());
        for i in 0..4 {
            r.push_checkpoint(CheckpointRecord {
                index: i,
                cycle: i / 2,
                kernel: if i % 2 == 0 { "a" } else { "b" }.into(),
                direction: "suspend".into(),
                answer: kjump_abi::abi::ANSWER_JUMP,
                rip: 0x20_1000,
                dirty_pages: 10,
                pages_compared: 2048,
                capture_us: 100,
                compare_us: 400,
                mismatches: 0,
                guest_us: 1000 * (i + 1),
                exit_us: 10,
                ..Default::default()
            });
        }
        r.cycles_completed = 2;
        for (i, a) in [0x38_0000u64, 0x38_1000, 0x38_2000, 0x50_0000]
            .iter()
            .enumerate()
        {
            let kernel = if i < 3 { "a" } else { "b" };
            r.excused_pages.push(ExcusedPage {
                kernel: kernel.into(),
                address: *a,
                why: "control page".into(),
            });
        }
        r.push_mismatches([Mismatch::register(
            &at(),
            &RegisterMismatch {
                field: "rbx".into(),
                expected: FieldValue::U64(0x1111),
                actual: FieldValue::U64(0x2222),
                note: None,
            },
        )]);
        let mm = MemoryMismatch {
            kernel: "a".into(),
            home: 0x20_4000,
            location: 0x30_4000,
            expected: PageHash(1),
            actual: Some(PageHash(2)),
            ranges: vec![DiffRange {
                start: 0x20_4123,
                end: 0x20_4124,
                symbol: Some("kjump_kernel::PATTERN+0x1123 (.bss)".into()),
            }],
            hexdump: "0x0000204120 -  00 ...\n             +  00 ...\n".into(),
            symbol: Some("kjump_kernel::PATTERN+0x1123 (.bss)".into()),
        };
        r.push_mismatches([Mismatch::memory(&at(), &mm)]);
        r.finish(None, 1_500_000);
        r
    }

    #[test]
    fn verdict_follows_mismatches_and_errors() {
        let mut r = Report::new("ping-pong", 1, "full", &[]);
        assert_eq!(r.verdict, Verdict::Error, "an unfinished run is not a pass");
        r.finish(None, 10);
        assert_eq!((r.verdict, r.exit_code), (Verdict::Pass, 0));
        let r = failing_report();
        assert_eq!((r.verdict, r.exit_code), (Verdict::Fail, 1));
        let mut r = failing_report();
        r.finish(Some("guest panicked".into()), 10);
        assert_eq!((r.verdict, r.exit_code), (Verdict::Error, 2));
    }

    #[test]
    fn json_round_trips_and_has_the_documented_shape() {
        let r = failing_report();
        let j = r.to_json();
        assert_eq!(Report::from_json(&j).unwrap(), r);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["verdict"], "fail");
        assert_eq!(v["exit_code"], 1);
        assert_eq!(v["allowlist"][0]["field"], "msr[0x00000010] TSC");
        assert_eq!(v["checkpoints"][1]["kernel"], "b");
        assert_eq!(v["timing"]["compare_us"], 1600);
        // The guests' time per jump, boots (the first two) left out.
        assert_eq!(v["timing"]["guest_us"], 10_000);
        assert_eq!(v["timing"]["guest_per_jump_us"]["median"], 4000);
        assert_eq!(v["timing"]["guest_per_jump_us"]["max"], 4000);
        assert_eq!(v["checkpoints"][3]["guest_us"], 4000);
        let m = &v["mismatches"][1];
        assert_eq!(m["kind"], "memory");
        assert_eq!(m["checkpoint"], 7);
        assert_eq!(m["direction"], "resume");
        assert_eq!(m["address"], 0x20_4000);
        assert_eq!(m["ranges"][0]["start"], 0x20_4123);
        assert_eq!(v["mismatches"][0]["name"], "rbx");
        assert!(v["mismatches"][0].get("address").is_none());
        assert!(matches!(Report::from_json("{}"), Err(ReportError::Json(_))));
    }

    #[test]
    fn the_verdict_line_is_short_and_the_details_wait_for_v() {
        let r = failing_report();
        assert_eq!(
            r.verdict_line(Some("1 mismatch")),
            "kjump: ping-pong: FAIL (2 of 100 cycles, 4 checkpoints, 1.50 s): 1 mismatch"
        );
        let mut pass = Report::new("ping-pong", 2, "dirty", &[]);
        pass.cycles_completed = 2;
        pass.finish(None, 680_900);
        assert_eq!(
            pass.verdict_line(None),
            "kjump: ping-pong: pass (2 of 2 cycles, 0 checkpoints, 0.68 s)"
        );
        let mut boot = Report::new("boot", 0, "none", &[]);
        boot.failed_kernel = Some("b".into());
        boot.finish(Some("guest b panicked".into()), 120_000);
        assert_eq!(
            boot.verdict_line(None),
            "kjump: boot: ERROR (kernel b, 0.12 s)"
        );

        let s = r.details();
        assert!(
            s.contains("pages compared: 8192, compare mode: dirty"),
            "{s}"
        );
        assert!(
            s.contains("time: 1.50 s (capture 400 µs, compare 1.6 ms)"),
            "{s}"
        );
        assert!(
            s.contains(
                "guests: 10.0 ms (per jump: median 4.0 ms, max 4.0 ms), exit handling 40 µs"
            ),
            "{s}"
        );
        assert!(
            s.contains("msr[0x00000010] TSC: the TSC counts time"),
            "{s}"
        );
        assert!(
            s.contains("excused pages of a (control page): [0x380000..0x383000)"),
            "{s}"
        );
        assert!(
            s.contains("excused pages of b (control page): [0x500000..0x501000)"),
            "{s}"
        );
    }

    #[test]
    fn mismatches_are_explained_each() {
        let s = failing_report().explain_mismatches();
        assert!(s.starts_with("2 mismatches:\n"), "{s}");
        assert!(
            s.contains("checkpoint 7 (cycle 2, kernel a, resume): register rbx: 0x1111 -> 0x2222"),
            "{s}"
        );
        assert!(s.contains("memory: page of kernel a 0x204000 (looked for at 0x304000) in kjump_kernel::PATTERN+0x1123 (.bss)"), "{s}");
        assert!(
            s.contains("    bytes [0x204123..0x204124) kjump_kernel::PATTERN"),
            "{s}"
        );
        assert!(s.contains("    0x0000204120 -  00"), "{s}");
        assert_eq!(Report::new("boot", 0, "none", &[]).explain_mismatches(), "");
    }

    #[test]
    fn explanations_are_bounded() {
        let mut r = failing_report();
        let m = r.mismatches[0].clone();
        r.push_mismatches(std::iter::repeat_n(m, 100));
        let s = r.explain_mismatches();
        assert!(
            s.contains("... and 82 more (all are in the JSON report)"),
            "{s}"
        );
        assert!(s.lines().count() < 60);
    }

    #[test]
    fn atomic_write_replaces_whole_files_and_leaves_no_temporaries() {
        let dir = std::env::temp_dir().join(format!("kjump-report-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("report.json");
        let r = failing_report();
        r.write(&path).unwrap();
        assert_eq!(
            Report::from_json(&fs::read_to_string(&path).unwrap()).unwrap(),
            r
        );
        crate::files::write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["report.json"]);
        let err = r.write(&dir.join("missing-dir/report.json")).unwrap_err();
        assert!(matches!(err, ReportError::Write { .. }));
        fs::remove_dir_all(&dir).unwrap();
    }
}
