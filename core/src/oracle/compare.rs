//! The identity oracle: a resumed kernel must find exactly what it left.
//!
//! * Registers ([`compare_vcpu`]): the kernel's vCPU state at its resume
//!   checkpoint against its state at its suspend checkpoint, field by field
//!   ([`VcpuState::fields`]). Only `rax` may differ, and only by the answer
//!   the VMM itself put there; anything else needs an entry on a short,
//!   explicit [`Allowlist`] with a reason, which the report prints.
//! * Memory ([`View`], [`check_view`]): a kernel's pages, recorded at its
//!   suspend checkpoint, must be found unchanged at every later checkpoint,
//!   wherever kexec parked them (the placement).
//! * Devices ([`compare_uart`]): the UART registers the kernel programmed.
//!
//! Everything here works on plain values; nothing touches KVM.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};

use kjump_abi::abi::ANSWER_JUMP;
use serde::{Deserialize, Serialize};

use crate::pages::{PAGE_SIZE, Page, PageHash, PageSet, PageStore, Shadow};
use crate::state::{FieldValue, UartState, VcpuState, XSTATE_BV, msr_field};
use crate::symbols::Symbols;

use super::OracleError;

/// Differing bytes closer than this are reported as one range.
const MERGE_GAP: usize = 8;
/// Memory mismatches after this many get ranges but no hexdump.
const MAX_DETAILED: usize = 64;
/// Ranges of one page shown in its hexdump.
const MAX_DUMPED_RANGES: usize = 8;
/// Hexdump lines (16 bytes each) shown per range, context included.
const MAX_LINES_PER_RANGE: usize = 8;

/// When an allowlisted field is excused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllowRule {
    /// Always: the field changes with time.
    Always,
    /// Only while every value of the XSAVE area is identical: for
    /// `xsave.xstate_bv`, see [`Allowlist::standard`].
    XsaveValuesEqual,
    /// Only when the value moved forward: a counter of time may advance
    /// while the peer runs, never go back.
    Advances,
}

/// One excused field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowEntry {
    /// The field name as [`VcpuState::fields`] spells it.
    pub field: String,
    pub reason: String,
    pub rule: AllowRule,
}

/// The fields that may legitimately differ between a kernel's suspend and
/// resume checkpoints. Short on purpose: nothing else is excused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<AllowEntry>,
}

impl Allowlist {
    /// Nothing excused at all.
    pub fn strict() -> Self {
        Self::default()
    }

    /// The list kjump runs with. Measured on KVM: between two checkpoints
    /// of an idle vCPU (41 readable MSRs, APIC, events, XSAVE) only `rax`
    /// (the answer) and the TSC change.
    ///
    /// `xsave.xstate_bv`: a set bit says a component may be in use, a clear
    /// bit that it is in its init state (SDM vol. 1, 13.6); the processor
    /// tracks this conservatively, so the bit can differ while the register
    /// values do not. `KVM_GET_XSAVE` writes the init values of every
    /// component whose bit is clear (Linux `copy_xstate_to_uabi_buf`), so
    /// the values are already normalised: when every value of the area is
    /// identical the state is identical, and only then is a difference in
    /// `xstate_bv` excused. Any differing value is reported with it.
    pub fn standard() -> Self {
        Self::strict()
            .allow_when(
                &msr_field(0x10),
                "the TSC counts time: it may advance while the peer kernel runs, never go back",
                AllowRule::Advances,
            )
            .allow_when(
                XSTATE_BV,
                "only whether components are in their init state; excused only when every \
                 XSAVE value is identical (KVM reports cleared components with their init values)",
                AllowRule::XsaveValuesEqual,
            )
    }

    /// Adds a field excused always.
    pub fn allow(self, field: &str, reason: &str) -> Self {
        self.allow_when(field, reason, AllowRule::Always)
    }

    /// Adds a field excused by `rule`.
    pub fn allow_when(mut self, field: &str, reason: &str, rule: AllowRule) -> Self {
        self.entries.push(AllowEntry {
            field: field.to_string(),
            reason: reason.to_string(),
            rule,
        });
        self
    }

    /// The entries, for the report.
    pub fn entries(&self) -> &[AllowEntry] {
        &self.entries
    }

    fn entry(&self, field: &str) -> Option<&AllowEntry> {
        self.entries.iter().find(|e| e.field == field)
    }

    /// Splits the fields that differ between a kernel's suspend and resume
    /// states (`rax` aside: see [`check_answer`]) into those nothing
    /// excuses and those this list excuses, with the entry that does. A
    /// rule may depend on the other differences ([`AllowRule::XsaveValuesEqual`]),
    /// so all of them are passed at once; `field` names each.
    ///
    /// Without the values ([`Allowlist::excuse_values`]) a field excused
    /// only when it advances ([`AllowRule::Advances`]) is not excused.
    pub fn excuse<T>(
        &self,
        diffs: Vec<T>,
        field: impl Fn(&T) -> &str,
    ) -> (Vec<T>, Vec<(T, &AllowEntry)>) {
        self.excuse_values(diffs, field, |_| None)
    }

    /// [`Allowlist::excuse`], with `values` giving a difference's expected
    /// and actual value where they are numbers.
    pub fn excuse_values<T>(
        &self,
        diffs: Vec<T>,
        field: impl Fn(&T) -> &str,
        values: impl Fn(&T) -> Option<(u64, u64)>,
    ) -> (Vec<T>, Vec<(T, &AllowEntry)>) {
        let xsave_values_differ = diffs.iter().any(|d| {
            let f = field(d);
            f != XSTATE_BV && is_xsave_field(f)
        });
        let mut unexcused = Vec::new();
        let mut excused = Vec::new();
        for d in diffs {
            match self.entry(field(&d)) {
                Some(e) if e.rule == AllowRule::Always => excused.push((d, e)),
                Some(e) if e.rule == AllowRule::XsaveValuesEqual && !xsave_values_differ => {
                    excused.push((d, e))
                }
                Some(e)
                    if e.rule == AllowRule::Advances
                        && values(&d).is_some_and(|(old, new)| new >= old) =>
                {
                    excused.push((d, e))
                }
                _ => unexcused.push(d),
            }
        }
        (unexcused, excused)
    }
}

/// One register field that differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterMismatch {
    pub field: String,
    pub expected: FieldValue,
    pub actual: FieldValue,
    /// Why the expected value is what it is, when it is not simply the old one.
    pub note: Option<String>,
}

impl fmt::Display for RegisterMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {}", self.field, self.expected, self.actual)?;
        if let Some(n) = &self.note {
            write!(f, " ({n})")?;
        }
        Ok(())
    }
}

/// Checks that `rax` holds the checkpoint's answer. The VMM completes the
/// `in eax, dx` before capturing, and a 32-bit `in` zero-extends into rax,
/// so rax must be exactly the answer.
pub fn check_answer(state: &VcpuState, answer: u32, at: &str) -> Option<RegisterMismatch> {
    (state.regs.rax != u64::from(answer)).then(|| RegisterMismatch {
        field: "rax".to_string(),
        expected: FieldValue::U64(answer.into()),
        actual: FieldValue::U64(state.regs.rax),
        note: Some(format!("rax at {at} must be the answer the VMM gave")),
    })
}

/// The note for a register found holding the relocation code's handover
/// poison ([`kjump_abi::control::HANDOVER_POISON`] + slot): which register's it is.
pub fn poison_of(v: u64) -> Option<String> {
    // The GPRs are slots 0..16.
    let slot = v
        .checked_sub(kjump_abi::control::HANDOVER_POISON)
        .filter(|&s| s < 16)?;
    Some(format!(
        "the relocation code's handover poison for {}: the re-entry path did not restore it",
        kjump_abi::control::SLOT_NAMES[slot as usize]
    ))
}

/// Fields taken from the XSAVE area (the legacy region and the rest).
fn is_xsave_field(name: &str) -> bool {
    let numbered = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|n| n.parse::<u8>().is_ok())
    };
    name.starts_with("xsave")
        || matches!(
            name,
            "fcw" | "fsw" | "ftw" | "fop" | "fip" | "fdp" | "mxcsr" | "mxcsr_mask"
        )
        || numbered("st")
        || numbered("xmm")
}

/// Whether `actual` equals `expected` but for `rax` and MSRs whose
/// difference `allow` excuses on its own (a rule of its value, not of the
/// other differences): then [`compare_vcpu`] finds nothing but what
/// [`check_answer`] does, without naming every field.
fn same_but_answer_and_time(expected: &VcpuState, actual: &VcpuState, allow: &Allowlist) -> bool {
    let mut regs = actual.regs;
    regs.rax = expected.regs.rax;
    let msrs_excused = expected.msrs.len() == actual.msrs.len()
        && expected
            .msrs
            .iter()
            .zip(&actual.msrs)
            .all(|((ke, ve), (ka, va))| {
                ke == ka
                    && (ve == va
                        || allow.entry(&msr_field(*ke)).is_some_and(|e| match e.rule {
                            AllowRule::Always => true,
                            AllowRule::Advances => va >= ve,
                            AllowRule::XsaveValuesEqual => false,
                        }))
            });
    msrs_excused
        && regs == expected.regs
        && actual.mp_state == expected.mp_state
        && actual.sregs == expected.sregs
        && actual.xsave == expected.xsave
        && actual.xcrs == expected.xcrs
        && actual.debugregs == expected.debugregs
        && actual.lapic == expected.lapic
        && actual.events == expected.events
}

/// Compares a kernel's vCPU state at its resume checkpoint (`actual`) with
/// its state at its suspend checkpoint (`expected`).
///
/// `rax` is never skipped: the suspend state must hold [`ANSWER_JUMP`] and
/// the resume state `expected_answer` (the answer the VMM gave there, BACK).
/// Every other field must be bit-identical unless `allow` excuses it.
pub fn compare_vcpu(
    expected: &VcpuState,
    actual: &VcpuState,
    expected_answer: u32,
    allow: &Allowlist,
) -> Vec<RegisterMismatch> {
    let mut out: Vec<RegisterMismatch> = [
        check_answer(expected, ANSWER_JUMP, "suspend"),
        check_answer(actual, expected_answer, "resume"),
    ]
    .into_iter()
    .flatten()
    .collect();

    // Fast path: identical apart from rax and what the allowlist excuses
    // of the MSRs (the usual case: the TSC ran on) needs no named fields.
    if same_but_answer_and_time(expected, actual, allow) {
        return out;
    }

    let exp = expected.fields();
    let mut act: HashMap<String, FieldValue> = actual.fields().into_iter().collect();
    let mut diffs = Vec::new();
    for (name, e) in exp {
        let a = act.remove(&name).unwrap_or(FieldValue::Absent);
        if name != "rax" && a != e {
            diffs.push(RegisterMismatch {
                field: name,
                expected: e,
                actual: a,
                note: None,
            });
        }
    }
    let mut extra: Vec<_> = act.into_iter().collect();
    extra.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, a) in extra {
        diffs.push(RegisterMismatch {
            field: name,
            expected: FieldValue::Absent,
            actual: a,
            note: None,
        });
    }

    let values = |d: &RegisterMismatch| match (&d.expected, &d.actual) {
        (FieldValue::U64(e), FieldValue::U64(a)) => Some((*e, *a)),
        _ => None,
    };
    for mut d in allow.excuse_values(diffs, |d| &d.field, values).0 {
        if d.note.is_none()
            && allow
                .entry(&d.field)
                .is_some_and(|e| e.rule == AllowRule::Advances)
        {
            d.note = Some("it went back: time may advance across a jump, never run back".into());
        }
        out.push(d);
    }
    out
}

/// A kernel's logical view of memory: the content of each of its pages,
/// by the address the kernel knows it at ("home"), as it was when the
/// kernel suspended.
///
/// Kept as the shadow of RAM at that moment, which shares every chunk the
/// guest has not written since with the live shadow, and the set of the
/// view's pages (a few ranges): recording a view of all of RAM costs a
/// pointer per 2 MiB, not a hash per page. The view also keeps which pages
/// of RAM were written since it was recorded ([`View::note_dirty`]): the
/// shadow changes nowhere else, so [`check_view_dirtied`] need look nowhere
/// else.
#[derive(Clone)]
pub struct View {
    kernel: String,
    /// The shadow of RAM when the view was recorded.
    at: Shadow,
    /// The view's pages (home addresses).
    pages: PageSet,
    /// Pages whose content was read away from home (a view recorded while
    /// its kernel was away): home → where.
    recorded_at: BTreeMap<u64, u64>,
    /// Pages of RAM written since the view was recorded, sorted.
    dirtied: Vec<u64>,
    /// The shadow was rebuilt since: every page may have changed.
    all_dirtied: bool,
}

/// Summaries only: a view can stand for every page of RAM.
impl fmt::Debug for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges: Vec<String> = self
            .pages
            .ranges()
            .iter()
            .take(8)
            .map(|(s, e)| format!("[{s:#x}..{e:#x})"))
            .collect();
        f.debug_struct("View")
            .field("kernel", &self.kernel)
            .field("ranges", &ranges)
            .field("pages", &self.pages.len())
            .field("recorded_away", &self.recorded_at.len())
            .field("dirtied", &self.dirtied.len())
            .field("all_dirtied", &self.all_dirtied)
            .finish()
    }
}

/// Two views are equal when they hold the same pages with the same content.
impl PartialEq for View {
    fn eq(&self, other: &Self) -> bool {
        self.kernel == other.kernel
            && self.pages == other.pages
            && self.pages.iter().all(|p| self.get(p) == other.get(p))
    }
}

impl Eq for View {}

impl View {
    /// Records `kernel`'s view over `pages`, at home, from the shadow's
    /// current hashes.
    pub fn record(kernel: &str, shadow: &Shadow, pages: PageSet) -> Result<View, OracleError> {
        Self::record_moved(kernel, shadow, pages, &BTreeMap::new())
    }

    /// Records the view of a kernel that is away, as [`check_view`] with
    /// the same `moved` finds it: page `home` of `pages` from where `moved`
    /// parks it (`home` itself when `moved` does not name it).
    pub fn record_moved(
        kernel: &str,
        shadow: &Shadow,
        pages: PageSet,
        moved: &BTreeMap<u64, u64>,
    ) -> Result<View, OracleError> {
        for &(s, e) in pages.ranges() {
            in_ram(shadow, s, e)?;
        }
        let mut recorded_at = BTreeMap::new();
        for (&home, &at) in moved {
            if home != at && pages.contains(home) {
                shadow.get(at).ok_or(OracleError::NotRam(at))?;
                recorded_at.insert(home, at);
            }
        }
        Ok(View {
            kernel: kernel.to_string(),
            at: shadow.clone(),
            pages,
            recorded_at,
            dirtied: Vec::new(),
            all_dirtied: false,
        })
    }

    /// The kernel this view belongs to.
    pub fn kernel(&self) -> &str {
        &self.kernel
    }

    /// Pages in the view.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// The recorded hash of the page at `addr`.
    pub fn get(&self, addr: u64) -> Option<PageHash> {
        if !self.pages.contains(addr) {
            return None;
        }
        self.at
            .get(self.recorded_at.get(&addr).copied().unwrap_or(addr))
    }

    /// The page addresses of the view, in order.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.pages.iter()
    }

    /// The shadow of RAM the view was recorded from (for
    /// [`PageStore::gc`]: the view refers to its hashes).
    pub fn snapshot(&self) -> &Shadow {
        &self.at
    }

    /// Pages of RAM were written (a dirty list, page addresses): the
    /// content the view finds may have changed there.
    pub fn note_dirty(&mut self, dirty: &[u64]) {
        if self.all_dirtied || dirty.is_empty() {
            return;
        }
        let mut new = dirty.to_vec();
        if !new.is_sorted() {
            new.sort_unstable();
        }
        let old = std::mem::take(&mut self.dirtied);
        let mut merged = Vec::with_capacity(old.len() + new.len());
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            let next = match (old.get(i), new.get(j)) {
                (Some(&x), Some(&y)) if x <= y => {
                    i += 1;
                    x
                }
                (_, Some(&y)) => {
                    j += 1;
                    y
                }
                (Some(&x), None) => {
                    i += 1;
                    x
                }
                (None, None) => unreachable!("the loop condition"),
            };
            if merged.last() != Some(&next) {
                merged.push(next);
            }
        }
        self.dirtied = merged;
    }

    /// The shadow was rebuilt from RAM: any page may have changed.
    pub fn note_all_dirty(&mut self) {
        self.all_dirtied = true;
        self.dirtied = Vec::new();
    }

    /// The pages written since the view was recorded (`None`: any page may
    /// have been).
    pub fn dirtied(&self) -> Option<&[u64]> {
        (!self.all_dirtied).then_some(self.dirtied.as_slice())
    }
}

/// `[start, end)` must be pages of RAM.
fn in_ram(shadow: &Shadow, start: u64, end: u64) -> Result<(), OracleError> {
    let mut a = start;
    while a < end {
        let (_, re) = shadow
            .ranges()
            .find(|&(s, e)| (s..e).contains(&a))
            .ok_or(OracleError::NotRam(a))?;
        a = re;
    }
    Ok(())
}

/// Records the view of `kernel` over `pages` (page addresses, any order)
/// from the shadow's current hashes.
pub fn record_view(
    kernel: &str,
    shadow: &Shadow,
    pages: impl IntoIterator<Item = u64>,
) -> Result<View, OracleError> {
    record_view_moved(kernel, shadow, pages, &BTreeMap::new())
}

/// Records the view of a kernel that is away, as [`check_view`] with the
/// same `moved` finds it: page `home` of `pages` from where `moved` parks
/// it (`home` itself when `moved` does not name it). For `kjump resume`,
/// which learns the view of a kernel that is away from a dump.
pub fn record_view_moved(
    kernel: &str,
    shadow: &Shadow,
    pages: impl IntoIterator<Item = u64>,
    moved: &BTreeMap<u64, u64>,
) -> Result<View, OracleError> {
    let pages = PageSet::from_pages(pages).map_err(OracleError::NotRam)?;
    View::record_moved(kernel, shadow, pages, moved)
}

/// A run of differing bytes, in home addresses: `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffRange {
    pub start: u64,
    pub end: u64,
    pub symbol: Option<String>,
}

/// One page of a view that is not where and what it should be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryMismatch {
    pub kernel: String,
    /// The page's address in the kernel's view.
    pub home: u64,
    /// Where the page was looked for (the placement of `home`).
    pub location: u64,
    pub expected: PageHash,
    /// `None` when `location` is not guest RAM.
    pub actual: Option<PageHash>,
    /// Differing bytes (the whole page when a content is unavailable).
    pub ranges: Vec<DiffRange>,
    /// Expected/actual hexdump of the ranges (bounded; empty past the
    /// first mismatches of a check).
    pub hexdump: String,
    /// The symbol or section of the first differing byte.
    pub symbol: Option<String>,
}

impl fmt::Display for MemoryMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kernel {} page {:#x}", self.kernel, self.home)?;
        if self.location != self.home {
            write!(f, " (parked at {:#x})", self.location)?;
        }
        if self.actual.is_none() {
            return write!(f, ": {:#x} is not guest RAM", self.location);
        }
        write!(f, ": {} range(s) differ", self.ranges.len())?;
        for r in &self.ranges {
            write!(f, ", [{:#x}..{:#x})", r.start, r.end)?;
            if let Some(s) = &r.symbol {
                write!(f, " {s}")?;
            }
        }
        Ok(())
    }
}

/// Runs of differing bytes of two pages, as offsets `[start, end)`, with
/// runs fewer than 8 equal bytes apart merged.
pub fn diff_ranges(expected: &Page, actual: &Page) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    // Word-wise first: most of a page is usually equal.
    for (w, (e, a)) in expected
        .chunks_exact(8)
        .zip(actual.chunks_exact(8))
        .enumerate()
    {
        if e == a {
            continue;
        }
        for i in (0..8).filter(|&i| e[i] != a[i]) {
            let at = w * 8 + i;
            match out.last_mut() {
                Some(last) if at - last.1 < MERGE_GAP => last.1 = at + 1,
                _ => out.push((at, at + 1)),
            }
        }
    }
    out
}

fn hex_line(out: &mut String, bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        let sep = if i == 8 { "  " } else { " " };
        let _ = write!(out, "{sep}{b:02x}");
    }
    out.push_str("  |");
    out.extend(bytes.iter().map(|&b| {
        if b.is_ascii_graphic() || b == b' ' {
            b as char
        } else {
            '.'
        }
    }));
    out.push_str("|\n");
}

/// An expected (`-`) / actual (`+`) hexdump of the differing `ranges`
/// (offsets in the page), 16 bytes a line with a line of context around
/// each range and `^^` under the differing bytes; bounded in size.
pub fn hexdump(home: u64, expected: &Page, actual: &Page, ranges: &[(usize, usize)]) -> String {
    const LINE: usize = 16;
    let mut out = String::new();
    let mut next_line = 0; // first line offset not printed yet
    for &(start, end) in ranges.iter().take(MAX_DUMPED_RANGES) {
        let first = (start / LINE * LINE).saturating_sub(LINE).max(next_line);
        let last = (end.div_ceil(LINE) * LINE + LINE).min(PAGE_SIZE);
        let lines: Vec<usize> = (first..last).step_by(LINE).collect();
        if lines.is_empty() {
            continue;
        }
        if first > next_line && next_line > 0 {
            out.push_str("            ...\n");
        }
        let shown: Vec<Option<usize>> = if lines.len() > MAX_LINES_PER_RANGE {
            let head = MAX_LINES_PER_RANGE / 2;
            let tail = MAX_LINES_PER_RANGE - head - 1;
            let mut v: Vec<Option<usize>> = lines[..head].iter().copied().map(Some).collect();
            v.push(None);
            v.extend(lines[lines.len() - tail..].iter().copied().map(Some));
            v
        } else {
            lines.iter().copied().map(Some).collect()
        };
        for l in shown {
            let Some(l) = l else {
                out.push_str("            ...\n");
                continue;
            };
            let (e, a) = (&expected[l..l + LINE], &actual[l..l + LINE]);
            if e == a {
                let _ = write!(out, "{:#012x}   ", home + l as u64);
                hex_line(&mut out, e);
                continue;
            }
            let _ = write!(out, "{:#012x} - ", home + l as u64);
            hex_line(&mut out, e);
            out.push_str("             + ");
            hex_line(&mut out, a);
            out.push_str("               ");
            for i in 0..LINE {
                let sep = if i == 8 { "  " } else { " " };
                out.push_str(sep);
                out.push_str(if e[i] != a[i] { "^^" } else { "  " });
            }
            let trimmed = out.trim_end_matches(' ').len();
            out.truncate(trimmed);
            out.push('\n');
        }
        next_line = last;
    }
    if ranges.len() > MAX_DUMPED_RANGES {
        let _ = writeln!(
            out,
            "            ... and {} more range(s)",
            ranges.len() - MAX_DUMPED_RANGES
        );
    }
    out
}

/// Checks every page of `view` where it should be now: page `home` must be
/// found, with the recorded content, at `moved[home]` if `moved` has it
/// (e.g. a kimage's destination → source pages while they are swapped, or
/// backup pages), and at `home` otherwise.
///
/// Returns the pages that are not, each explained with its differing byte
/// ranges, a hexdump (for the first 64) and the symbol at
/// the first difference.
///
/// Every page of the view is compared (a chunk of hashes the view shares
/// with the shadow at once); [`check_view_dirtied`] gives the same answer
/// from the pages written since the view was recorded.
pub fn check_view(
    view: &View,
    shadow: &Shadow,
    moved: &BTreeMap<u64, u64>,
    store: &PageStore,
    symbols: Option<&Symbols>,
) -> Vec<MemoryMismatch> {
    const PAGE: u64 = PAGE_SIZE as u64;
    let mut out = Vec::new();
    for &(start, end) in view.pages.ranges() {
        let mut a = start;
        while a < end {
            let left = ((end - a) / PAGE) as usize;
            // A block of pages inside one chunk of both shadows.
            let (recorded, current) = (view.at.run(a, left), shadow.run(a, left));
            let n = match (recorded, current) {
                (Some(r), Some(c)) => r.len().min(c.len()),
                _ => 1,
            };
            let e = a + n as u64 * PAGE;
            let all_home =
                moved.range(a..e).next().is_none() && view.recorded_at.range(a..e).next().is_none();
            let same = match (recorded, current) {
                (Some(r), Some(c)) => std::ptr::eq(r.as_ptr(), c.as_ptr()) || r[..n] == c[..n],
                _ => false,
            };
            if !(all_home && same) {
                for home in (a..e).step_by(PAGE_SIZE) {
                    let detailed = out.len() < MAX_DETAILED;
                    out.extend(check_page(
                        view, shadow, moved, home, store, symbols, detailed,
                    ));
                }
            }
            a = e;
        }
    }
    out
}

/// What [`check_view_dirtied`] found, and how many pages it compared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViewCheck {
    pub mismatches: Vec<MemoryMismatch>,
    pub compared: usize,
}

/// [`check_view`] from what changed: the shadow changes only at the pages
/// written since the view was recorded ([`View::note_dirty`]), so only the
/// view's pages that are found there, and those found elsewhere than they
/// were recorded (every page `moved` or the view's recording parks), can
/// differ. Those are compared, in order; the answer is [`check_view`]'s,
/// at a cost that grows with the pages written and parked, not with the
/// view. A view whose shadow was rebuilt is checked whole.
pub fn check_view_dirtied(
    view: &View,
    shadow: &Shadow,
    moved: &BTreeMap<u64, u64>,
    store: &PageStore,
    symbols: Option<&Symbols>,
) -> ViewCheck {
    let Some(dirtied) = view.dirtied() else {
        return ViewCheck {
            mismatches: check_view(view, shadow, moved, store, symbols),
            compared: view.len(),
        };
    };
    // The candidates in order (each list is sorted), the view's pages only.
    let candidates = merge_sorted(
        merge_sorted(dirtied.iter().copied(), moved.keys().copied()),
        view.recorded_at.keys().copied(),
    );
    let ranges = view.pages.ranges();
    let mut r = 0;
    let mut moves = moved.iter().peekable();
    let mut mismatches = Vec::new();
    let mut compared = 0;
    let mut last = None;
    for home in candidates {
        if last == Some(home) {
            continue;
        }
        last = Some(home);
        while ranges.get(r).is_some_and(|&(_, e)| e <= home) {
            r += 1;
        }
        if ranges.get(r).is_none_or(|&(s, _)| s > home) {
            continue;
        }
        while moves.next_if(|(h, _)| **h < home).is_some() {}
        let location = moves
            .next_if(|(h, _)| **h == home)
            .map_or(home, |(_, l)| *l);
        compared += 1;
        let detailed = mismatches.len() < MAX_DETAILED;
        mismatches.extend(check_page_at(
            view, shadow, home, location, store, symbols, detailed,
        ));
    }
    ViewCheck {
        mismatches,
        compared,
    }
}

/// Two ascending sequences merged into one (duplicates kept).
fn merge_sorted(
    a: impl Iterator<Item = u64>,
    b: impl Iterator<Item = u64>,
) -> impl Iterator<Item = u64> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if x <= y => a.next(),
        (_, Some(_)) => b.next(),
        _ => a.next(),
    })
}

/// Page `home` of `view` where `moved` says it is now (its home if not
/// moved): `None` when it holds what the view recorded.
fn check_page(
    view: &View,
    shadow: &Shadow,
    moved: &BTreeMap<u64, u64>,
    home: u64,
    store: &PageStore,
    symbols: Option<&Symbols>,
    detailed: bool,
) -> Option<MemoryMismatch> {
    let location = moved.get(&home).copied().unwrap_or(home);
    check_page_at(view, shadow, home, location, store, symbols, detailed)
}

/// Page `home` of `view` at `location`: `None` when it holds what the view
/// recorded.
fn check_page_at(
    view: &View,
    shadow: &Shadow,
    home: u64,
    location: u64,
    store: &PageStore,
    symbols: Option<&Symbols>,
    detailed: bool,
) -> Option<MemoryMismatch> {
    let expected = view.get(home)?;
    let actual = shadow.get(location);
    (actual != Some(expected)).then(|| {
        let page = Found {
            home,
            location,
            expected,
            actual,
        };
        explain_page(&view.kernel, page, store, symbols, detailed)
    })
}

/// Explains page `home` of `kernel`, expected to hash to `expected`,
/// found hashing to `actual`: its differing ranges with their symbols and
/// a hexdump (both pages must be in `store`).
pub(crate) fn explain_found(
    kernel: &str,
    home: u64,
    expected: PageHash,
    actual: PageHash,
    store: &PageStore,
    symbols: Option<&Symbols>,
) -> MemoryMismatch {
    let f = Found {
        home,
        location: home,
        expected,
        actual: Some(actual),
    };
    explain_page(kernel, f, store, symbols, true)
}

/// A page of a view found different.
struct Found {
    home: u64,
    location: u64,
    expected: PageHash,
    actual: Option<PageHash>,
}

/// Describes one page found different: ranges, symbol, hexdump.
fn explain_page(
    kernel: &str,
    f: Found,
    store: &PageStore,
    symbols: Option<&Symbols>,
    detailed: bool,
) -> MemoryMismatch {
    let sym = |a: u64| symbols.and_then(|s| s.lookup(a));
    let (ranges, hexdump) = match (store.get(f.expected), f.actual.and_then(|h| store.get(h))) {
        (Some(e), Some(a)) => {
            let r = diff_ranges(e, a);
            let dump = if detailed {
                hexdump(f.home, e, a, &r)
            } else {
                String::new()
            };
            (r, dump)
        }
        // A page that is not RAM, or content the store no longer holds (a
        // gc that was not told about a view): the whole page.
        _ => (vec![(0, PAGE_SIZE)], String::new()),
    };
    let ranges: Vec<DiffRange> = ranges
        .into_iter()
        .map(|(s, e)| DiffRange {
            start: f.home + s as u64,
            end: f.home + e as u64,
            symbol: sym(f.home + s as u64),
        })
        .collect();
    let symbol = ranges.first().and_then(|r| r.symbol.clone());
    MemoryMismatch {
        kernel: kernel.to_owned(),
        home: f.home,
        location: f.location,
        expected: f.expected,
        actual: f.actual,
        ranges,
        hexdump,
        symbol,
    }
}

/// One device register that differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMismatch {
    pub device: String,
    /// The register or field within the device; empty when `device` is the
    /// field's full name (`pic.master.imr`).
    pub register: String,
    pub expected: FieldValue,
    pub actual: FieldValue,
    /// How the field was judged, when not bit for bit (a counter that
    /// went back).
    pub note: Option<String>,
}

impl DeviceMismatch {
    /// `uart lcr`, `pic.master.imr`.
    pub fn name(&self) -> String {
        if self.register.is_empty() {
            self.device.clone()
        } else {
            format!("{} {}", self.device, self.register)
        }
    }
}

impl fmt::Display for DeviceMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {}", self.name(), self.expected, self.actual)?;
        if let Some(n) = &self.note {
            write!(f, " ({n})")?;
        }
        Ok(())
    }
}

fn uart_registers(s: &UartState) -> Vec<(&'static str, FieldValue)> {
    let b = |v: u8| FieldValue::U64(v.into());
    vec![
        ("ier", b(s.interrupt_enable)),
        ("iir", b(s.interrupt_identification)),
        ("lcr", b(s.line_control)),
        ("lsr", b(s.line_status)),
        ("mcr", b(s.modem_control)),
        ("msr", b(s.modem_status)),
        ("scr", b(s.scratch)),
        ("dll", b(s.baud_divisor_low)),
        ("dlm", b(s.baud_divisor_high)),
        ("rx_fifo", FieldValue::Bytes(s.in_buffer.clone())),
    ]
}

/// Compares the 16550 UART's registers (and its receive FIFO) by name.
pub fn compare_uart(expected: &UartState, actual: &UartState) -> Vec<DeviceMismatch> {
    uart_registers(expected)
        .into_iter()
        .zip(uart_registers(actual))
        .filter(|((_, e), (_, a))| e != a)
        .map(|((name, e), (_, a))| DeviceMismatch {
            device: "uart".to_string(),
            register: name.to_string(),
            expected: e,
            actual: a,
            note: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::tests::mem;
    use crate::state::tests::sample_state;
    use kjump_abi::abi::ANSWER_BACK;
    use vm_memory::{Bytes, GuestAddress};

    fn resumed(s: &VcpuState) -> VcpuState {
        let mut r = s.clone();
        r.regs.rax = ANSWER_BACK.into();
        r
    }

    fn one(m: Vec<RegisterMismatch>) -> RegisterMismatch {
        assert_eq!(m.len(), 1, "{m:#?}");
        m.into_iter().next().unwrap()
    }

    #[test]
    fn identical_state_with_the_right_answers_passes() {
        let s = sample_state();
        assert_eq!(
            compare_vcpu(&s, &resumed(&s), ANSWER_BACK, &Allowlist::strict()),
            vec![]
        );
    }

    #[test]
    fn finds_exactly_the_changed_field() {
        let s = sample_state();
        type Change = Box<dyn Fn(&mut VcpuState)>;
        let cases: Vec<(&str, Change)> = vec![
            ("rbx", Box::new(|r| r.regs.rbx ^= 1)),
            ("cr3", Box::new(|r| r.sregs.cr3 = 0xa000)),
            ("gdt.base", Box::new(|r| r.sregs.gdt.base += 8)),
            ("cs.dpl", Box::new(|r| r.sregs.cs.dpl = 3)),
            ("xmm3", Box::new(|r| r.xsave[160 + 16 * 3 + 7] = 1)),
            ("xsave[0x240..0x280]", Box::new(|r| r.xsave[0x250] = 1)),
            ("lapic.tpr", Box::new(|r| r.lapic.regs[0x80] = 0x10)),
            (
                "msr[0xc0000082] LSTAR",
                Box::new(|r| *r.msrs.get_mut(&0xc000_0082).unwrap() += 1),
            ),
            ("events.nmi.pending", Box::new(|r| r.events.nmi.pending = 1)),
            ("dr7", Box::new(|r| r.debugregs.dr7 |= 1)),
        ];
        for (name, change) in cases {
            let mut r = resumed(&s);
            change(&mut r);
            let m = one(compare_vcpu(&s, &r, ANSWER_BACK, &Allowlist::standard()));
            assert_eq!(m.field, name);
            assert_ne!(m.expected, m.actual);
        }
        let mut r = resumed(&s);
        r.regs.rbx = 0x2222;
        assert_eq!(
            one(compare_vcpu(&s, &r, ANSWER_BACK, &Allowlist::strict())).to_string(),
            "rbx: 0x1111 -> 0x2222"
        );
    }

    #[test]
    fn rax_is_checked_in_both_directions() {
        let s = sample_state();
        // Resumed with the wrong answer (e.g. the guest clobbered rax).
        let mut r = resumed(&s);
        r.regs.rax = u64::from(ANSWER_BACK) | 1 << 32;
        let m = one(compare_vcpu(&s, &r, ANSWER_BACK, &Allowlist::standard()));
        assert_eq!(
            (m.field.as_str(), m.expected, m.actual),
            (
                "rax",
                FieldValue::U64(ANSWER_BACK.into()),
                FieldValue::U64(r.regs.rax)
            )
        );
        // Resumed with the old rax (the answer never reached it).
        let m = one(compare_vcpu(&s, &s, ANSWER_BACK, &Allowlist::standard()));
        assert_eq!(m.actual, FieldValue::U64(ANSWER_JUMP.into()));
        // A suspend state whose rax is not JUMP.
        let mut bad = s.clone();
        bad.regs.rax = 0;
        let m = one(compare_vcpu(
            &bad,
            &resumed(&bad),
            ANSWER_BACK,
            &Allowlist::standard(),
        ));
        assert!(m.note.unwrap().contains("suspend"));
    }

    #[test]
    fn allowlist_excuses_the_tsc_and_nothing_else() {
        let s = sample_state();
        let mut r = resumed(&s);
        *r.msrs.get_mut(&0x10).unwrap() += 1_000_000;
        assert_eq!(
            compare_vcpu(&s, &r, ANSWER_BACK, &Allowlist::standard()),
            vec![]
        );
        let m = one(compare_vcpu(&s, &r, ANSWER_BACK, &Allowlist::strict()));
        assert_eq!(m.field, "msr[0x00000010] TSC");
        let standard = Allowlist::standard();
        let names: Vec<&str> = standard
            .entries()
            .iter()
            .map(|e| e.field.as_str())
            .collect();
        assert_eq!(names, ["msr[0x00000010] TSC", "xsave.xstate_bv"]);
        assert!(
            Allowlist::standard()
                .entries()
                .iter()
                .all(|e| !e.reason.is_empty())
        );
    }

    #[test]
    fn xstate_bv_is_excused_only_when_values_are_equal() {
        let s = sample_state();
        let mut r = resumed(&s);
        r.xsave[512] |= 0x4; // AVX marked in use, values unchanged
        assert_eq!(
            compare_vcpu(&s, &r, ANSWER_BACK, &Allowlist::standard()),
            vec![]
        );
        assert_eq!(
            one(compare_vcpu(&s, &r, ANSWER_BACK, &Allowlist::strict())).field,
            XSTATE_BV
        );
        r.xsave[576] = 0x80; // and a YMM upper half changed
        let m = compare_vcpu(&s, &r, ANSWER_BACK, &Allowlist::standard());
        let names: Vec<&str> = m.iter().map(|m| m.field.as_str()).collect();
        assert_eq!(names, [XSTATE_BV, "xsave[0x240..0x280]"]);
    }

    #[test]
    fn excuse_names_the_entry_and_keeps_the_order() {
        let tsc = "msr[0x00000010] TSC";
        let allow = Allowlist::standard();
        // The TSC is excused when it advanced, not when it went back.
        let forward = |d: &&str| (*d == tsc).then_some((5, 9));
        let (rest, excused) =
            allow.excuse_values(vec!["rbx", tsc, XSTATE_BV, "cr3"], |d| d, forward);
        assert_eq!(rest, ["rbx", "cr3"]);
        let by: Vec<_> = excused
            .iter()
            .map(|(d, e)| (*d, e.field.as_str(), e.reason.is_empty()))
            .collect();
        assert_eq!(by, [(tsc, tsc, false), (XSTATE_BV, XSTATE_BV, false)]);
        // A differing XSAVE value takes the excuse of xstate_bv back.
        let (rest, excused) = allow.excuse_values(vec![XSTATE_BV, "xmm0", tsc], |d| d, forward);
        assert_eq!((rest, excused.len()), (vec![XSTATE_BV, "xmm0"], 1));
        assert_eq!(Allowlist::strict().excuse(vec![tsc], |d| d).0, [tsc]);
        let back = |d: &&str| (*d == tsc).then_some((9, 5));
        assert_eq!(allow.excuse_values(vec![tsc], |d| d, back).0, [tsc]);
        assert_eq!(
            allow.excuse(vec![tsc], |d| d).0,
            [tsc],
            "no values: not excused"
        );
    }

    #[test]
    fn a_tsc_that_ran_on_hides_no_other_change() {
        // The fast path excuses the TSC alone; any other change still
        // gets the named comparison.
        let tsc = 0x10;
        let s = sample_state();
        let mut r = resumed(&s);
        *r.msrs.entry(tsc).or_default() += 1_000;
        assert_eq!(
            compare_vcpu(&s, &r, ANSWER_BACK, &Allowlist::standard()),
            vec![]
        );
        assert_eq!(
            one(compare_vcpu(&s, &r, ANSWER_BACK, &Allowlist::strict())).field,
            msr_field(tsc)
        );
        for change in 0..4 {
            let mut c = r.clone();
            let want = match change {
                0 => {
                    c.regs.rbx ^= 1;
                    "rbx".to_owned()
                }
                1 => {
                    c.sregs.cr4 ^= 1 << 7;
                    "cr4".to_owned()
                }
                2 => {
                    c.msrs.insert(0x3b, 7);
                    msr_field(0x3b)
                }
                _ => {
                    c.lapic.regs[0x80] ^= 0x10;
                    "lapic.tpr".to_owned()
                }
            };
            let m = compare_vcpu(&s, &c, ANSWER_BACK, &Allowlist::standard());
            assert_eq!(m.len(), 1, "{want}: {m:#?}");
            assert!(m[0].field.starts_with(&want), "{want}: {m:#?}");
        }
    }

    #[test]
    fn msr_present_on_one_side_only_is_a_mismatch() {
        let s = sample_state();
        let mut r = resumed(&s);
        r.msrs.insert(0xc000_0103, 5);
        let m = one(compare_vcpu(&s, &r, ANSWER_BACK, &Allowlist::standard()));
        assert_eq!(
            (m.field.as_str(), m.expected),
            ("msr[0xc0000103] TSC_AUX", FieldValue::Absent)
        );
    }

    // Memory oracle.

    fn symbols() -> Symbols {
        Symbols::from_parts(
            vec![(
                "_ZN12kjump_kernel7PATTERN17h0123456789abcdefE".into(),
                0x20_3000,
                0x2000,
            )],
            vec![(".bss".into(), 0x20_3000, 0x4000)],
        )
    }

    struct World {
        mem: crate::GuestMem,
        store: PageStore,
        shadow: Shadow,
    }

    fn world() -> World {
        let mem = mem(0x40_0000, 0);
        for p in 0..0x400u64 {
            mem.write_obj(p * 0x1000 + 0xabc, GuestAddress(p * 0x1000 + 8))
                .unwrap();
        }
        let mut store = PageStore::new();
        let shadow = Shadow::build(&mem, &mut store).unwrap();
        World { mem, store, shadow }
    }

    impl World {
        fn write(&mut self, addr: u64, bytes: &[u8]) {
            self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
            let page = addr & !0xfff;
            self.shadow
                .update(&self.mem, &[page], &mut self.store)
                .unwrap();
        }
        fn swap(&mut self, a: u64, b: u64) {
            let (mut x, mut y) = ([0u8; PAGE_SIZE], [0u8; PAGE_SIZE]);
            self.mem.read_slice(&mut x, GuestAddress(a)).unwrap();
            self.mem.read_slice(&mut y, GuestAddress(b)).unwrap();
            self.mem.write_slice(&y, GuestAddress(a)).unwrap();
            self.mem.write_slice(&x, GuestAddress(b)).unwrap();
            self.shadow
                .update(&self.mem, &[a, b], &mut self.store)
                .unwrap();
        }
    }

    #[test]
    fn one_byte_flip_is_found_with_address_range_and_symbol() {
        let mut w = world();
        let view = record_view("a", &w.shadow, w.shadow.pages()).unwrap();
        assert_eq!(view.len(), 0x400);
        let home = BTreeMap::new();
        assert_eq!(check_view(&view, &w.shadow, &home, &w.store, None), vec![]);

        w.write(0x20_4123, &[0xff]);
        let syms = symbols();
        let m = check_view(&view, &w.shadow, &home, &w.store, Some(&syms));
        assert_eq!(m.len(), 1, "{m:#?}");
        let m = &m[0];
        assert_eq!((m.home, m.location), (0x20_4000, 0x20_4000));
        assert_eq!(m.ranges.len(), 1);
        assert_eq!((m.ranges[0].start, m.ranges[0].end), (0x20_4123, 0x20_4124));
        assert_eq!(
            m.symbol.as_deref(),
            Some("kjump_kernel::PATTERN+0x1123 (.bss)")
        );
        assert!(m.hexdump.contains("0x0000204120 - "), "{}", m.hexdump);
        assert!(m.hexdump.contains("             + "), "{}", m.hexdump);
        assert!(
            m.to_string()
                .contains("[0x204123..0x204124) kjump_kernel::PATTERN+0x1123"),
            "{m}"
        );
        // The caret sits under the flipped byte of the actual (+) line.
        let lines: Vec<&str> = m.hexdump.lines().collect();
        let plus = lines.iter().position(|l| l.contains(" + ")).unwrap();
        assert_eq!(
            lines[plus + 1].find("^^"),
            lines[plus].find("ff"),
            "{}",
            m.hexdump
        );
        assert_eq!(lines[plus + 1].matches("^^").count(), 1);
    }

    #[test]
    fn swapped_pages_are_found_where_they_are_parked() {
        let mut w = world();
        let (dest, src) = (0x10_0000, 0x30_0000);
        // A's view leaves out its source pages: they hold B's image.
        let a = record_view("a", &w.shadow, w.shadow.pages().filter(|&p| p != src)).unwrap();
        // kexec swaps A's page at dest with B's image page at src.
        w.swap(dest, src);
        let parked_map = BTreeMap::from([(dest, src)]);
        let swapped = parked_map;
        assert_eq!(check_view(&a, &w.shadow, &swapped, &w.store, None), vec![]);
        // Checked in place instead, the page is wrong.
        let m = check_view(&a, &w.shadow, &BTreeMap::new(), &w.store, None);
        assert_eq!(
            m.iter().map(|m| (m.home, m.location)).collect::<Vec<_>>(),
            [(dest, dest)]
        );
        // B now writes its page: A's parked copy is untouched, but if B
        // writes into A's parked copy at src it is caught there.
        w.write(dest + 8, &[1]);
        assert_eq!(check_view(&a, &w.shadow, &swapped, &w.store, None), vec![]);
        w.write(src + 0x10, &[1, 2, 3]);
        let m = check_view(&a, &w.shadow, &swapped, &w.store, None);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].home, m[0].location), (dest, src));
        assert_eq!(
            (m[0].ranges[0].start, m[0].ranges[0].end),
            (dest + 0x10, dest + 0x13)
        );
        // A placement outside RAM is reported, not a crash.
        let m = check_view(
            &a,
            &w.shadow,
            &BTreeMap::from([(dest, 1 << 40)]),
            &w.store,
            None,
        );
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].actual, None);
        assert_eq!(
            (m[0].ranges[0].start, m[0].ranges[0].end),
            (dest, dest + 0x1000)
        );
    }

    #[test]
    fn a_moved_page_is_checked_even_inside_an_unchanged_block() {
        let w = world(); // every page has distinct content
        let view = record_view("a", &w.shadow, w.shadow.pages()).unwrap();
        // Nothing was written, but the map says page 0x10_1000 is parked at
        // 0x20_0000, which holds something else.
        let moved = BTreeMap::from([(0x10_1000, 0x20_0000)]);
        let m = check_view(&view, &w.shadow, &moved, &w.store, None);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].home, m[0].location), (0x10_1000, 0x20_0000));
        // A moved entry for a page outside the view does not shift the others.
        let partial =
            record_view("a", &w.shadow, w.shadow.pages().filter(|&p| p != 0x10_0000)).unwrap();
        let moved = BTreeMap::from([(0x10_0000, 0x30_0000), (0x10_1000, 0x10_1000)]);
        assert_eq!(
            check_view(&partial, &w.shadow, &moved, &w.store, None),
            vec![]
        );
    }

    #[test]
    fn a_view_recorded_where_it_is_parked_checks_clean_there() {
        let mem = mem(0x20_0000, 0x8_0000);
        let mut store = PageStore::new();
        for (i, p) in (0..0x20_0000u64).step_by(PAGE_SIZE).enumerate() {
            mem.write_obj(i as u32 + 1, GuestAddress(p)).unwrap();
        }
        let shadow = Shadow::build(&mem, &mut store).unwrap();
        let pages: Vec<u64> = (0x1000..0x8000).step_by(PAGE_SIZE).collect();
        let moved: BTreeMap<u64, u64> = [(0x2000, 0x10_0000), (0x5000, 0x1_0000_2000)].into();
        let view = record_view_moved("b", &shadow, pages.iter().copied(), &moved).unwrap();
        assert_eq!(view.len(), pages.len());
        assert_eq!(view.get(0x2000), shadow.get(0x10_0000));
        assert_eq!(view.get(0x5000), shadow.get(0x1_0000_2000));
        assert_eq!(view.get(0x3000), shadow.get(0x3000));
        assert!(check_view(&view, &shadow, &moved, &store, None).is_empty());
        // At home, the moved pages differ.
        let home: Vec<u64> = check_view(&view, &shadow, &BTreeMap::new(), &store, None)
            .iter()
            .map(|m| m.home)
            .collect();
        assert_eq!(home, [0x2000, 0x5000]);
        // Parked outside RAM: refused.
        let out: BTreeMap<u64, u64> = [(0x2000, 0x9000_0000)].into();
        assert!(matches!(
            record_view_moved("b", &shadow, pages, &out),
            Err(OracleError::NotRam(0x9000_0000))
        ));
    }

    #[test]
    fn check_view_agrees_with_a_page_by_page_reference() {
        // Pseudo-random views, placements and writes over two RAM regions,
        // against the obvious definition.
        let mem = mem(0x20_0000, 0x8_0000);
        let mut store = PageStore::new();
        let mut shadow = Shadow::build(&mem, &mut store).unwrap();
        let all: Vec<u64> = shadow.pages().collect();
        let mut next = crate::pages::tests::xorshift(0x2545_f491_4f6c_dd1d);
        let mut rnd = move |n: usize| next(n as u64) as usize;
        for round in 0..50 {
            for _ in 0..20 {
                let p = all[rnd(all.len())];
                mem.write_obj(round as u8 + 1, GuestAddress(p + rnd(4096) as u64))
                    .unwrap();
                shadow.update(&mem, &[p], &mut store).unwrap();
            }
            let pages: Vec<u64> = all.iter().copied().filter(|_| rnd(10) != 0).collect();
            let view = record_view("a", &shadow, pages.iter().copied()).unwrap();
            assert_eq!(view.len(), pages.len());
            assert!(view.pages().eq(pages.iter().copied()));
            let moved: BTreeMap<u64, u64> = (0..rnd(200))
                .map(|_| (all[rnd(all.len())], all[rnd(all.len())]))
                .collect();
            for _ in 0..rnd(30) {
                let p = all[rnd(all.len())];
                mem.write_obj(0xeeu8, GuestAddress(p + rnd(4096) as u64))
                    .unwrap();
                shadow.update(&mem, &[p], &mut store).unwrap();
            }
            let got: Vec<(u64, u64)> = check_view(&view, &shadow, &moved, &store, None)
                .iter()
                .map(|m| (m.home, m.location))
                .collect();
            let want: Vec<(u64, u64)> = pages
                .iter()
                .map(|&p| (p, moved.get(&p).copied().unwrap_or(p)))
                .filter(|&(p, l)| shadow.get(l) != view.get(p))
                .collect();
            assert_eq!(got, want, "round {round}");
        }
    }

    #[test]
    fn checking_what_was_written_agrees_with_checking_every_page() {
        // Views at home and recorded where parked, random writes (as the
        // dirty log reports them), random placements at check time, swaps:
        // the incremental check must give exactly the full check's answer,
        // hexdumps included, while comparing only what was written or is
        // parked.
        use crate::pages::tests::harvest;
        let mem = mem(0x20_0000, 0x8_0000);
        let mut store = PageStore::new();
        let mut shadow = Shadow::zeroed(&mem).unwrap();
        let all: Vec<u64> = shadow.pages().collect();
        let mut next = crate::pages::tests::xorshift(0x2545_f491_4f6c_dd1d);
        let mut rnd = move |n: usize| next(n as u64) as usize;
        let write = |mem: &crate::GuestMem, p: u64, v: u8, rnd: &mut dyn FnMut(usize) -> usize| {
            mem.write_obj(v, GuestAddress(p + rnd(4096) as u64))
                .unwrap();
        };
        for p in all.iter().step_by(3) {
            write(&mem, *p, 0x11, &mut rnd);
        }
        shadow.update(&mem, &harvest(&mem), &mut store).unwrap();
        let mut differing = 0;
        for round in 0..40 {
            let pages: Vec<u64> = all.iter().copied().filter(|_| rnd(8) != 0).collect();
            let parked: BTreeMap<u64, u64> = (0..rnd(40))
                .map(|_| (all[rnd(all.len())], all[rnd(all.len())]))
                .collect();
            let mut view = if round % 3 == 0 {
                record_view_moved("b", &shadow, pages.iter().copied(), &parked).unwrap()
            } else {
                record_view("a", &shadow, pages.iter().copied()).unwrap()
            };
            if round % 10 == 9 {
                view.note_all_dirty();
            }
            for step in 0..4 {
                for _ in 0..rnd(25) {
                    let p = all[rnd(all.len())];
                    write(&mem, p, (round * 4 + step) as u8 + 1, &mut rnd);
                }
                if rnd(2) == 0 {
                    // A swap, as the relocation code does it.
                    let (x, y) = (all[rnd(all.len())], all[rnd(all.len())]);
                    let (mut a, mut b) = ([0u8; PAGE_SIZE], [0u8; PAGE_SIZE]);
                    mem.read_slice(&mut a, GuestAddress(x)).unwrap();
                    mem.read_slice(&mut b, GuestAddress(y)).unwrap();
                    mem.write_slice(&b, GuestAddress(x)).unwrap();
                    mem.write_slice(&a, GuestAddress(y)).unwrap();
                }
                let dirty = harvest(&mem);
                shadow.update(&mem, &dirty, &mut store).unwrap();
                view.note_dirty(&dirty);
                let moved: BTreeMap<u64, u64> = match rnd(3) {
                    0 => BTreeMap::new(),
                    1 => parked.clone(),
                    _ => (0..rnd(40))
                        .map(|_| (all[rnd(all.len())], all[rnd(all.len())]))
                        .collect(),
                };
                let full = check_view(&view, &shadow, &moved, &store, None);
                let inc = check_view_dirtied(&view, &shadow, &moved, &store, None);
                assert_eq!(inc.mismatches, full, "round {round} step {step}");
                differing += full.len();
                if let Some(d) = view.dirtied() {
                    let bound = d.len() + moved.len() + parked.len();
                    assert!(inc.compared <= bound, "{} > {bound}", inc.compared);
                } else {
                    assert_eq!(inc.compared, view.len());
                }
            }
        }
        assert!(differing > 100, "the rounds found differences: {differing}");
    }

    #[test]
    fn damage_anywhere_in_a_view_is_caught_by_the_incremental_check() {
        // One byte changed in any page of a view, at home or where it is
        // parked, reaches the dirty log and so the check.
        use crate::pages::tests::harvest;
        let mem = mem(0x10_0000, 0x4_0000);
        let mut store = PageStore::new();
        let mut shadow = Shadow::zeroed(&mem).unwrap();
        for p in (0..0x10_0000u64).step_by(PAGE_SIZE * 2) {
            mem.write_obj(p | 1, GuestAddress(p)).unwrap();
        }
        shadow.update(&mem, &harvest(&mem), &mut store).unwrap();
        let parked: BTreeMap<u64, u64> = [(0x1000, 1 << 32), (0x2000, (1 << 32) + 0x1000)].into();
        // The parking pages are not the kernel's (as A's view leaves out
        // its source pages).
        let pages: Vec<u64> = shadow
            .pages()
            .filter(|p| !parked.values().any(|v| v == p))
            .collect();
        for &victim in &pages {
            let mut view = record_view("a", &shadow, pages.iter().copied()).unwrap();
            let at = parked.get(&victim).copied().unwrap_or(victim);
            // Park the two pages as a kimage would (copy, reported).
            for (&home, &to) in &parked {
                let mut b = [0u8; PAGE_SIZE];
                mem.read_slice(&mut b, GuestAddress(home)).unwrap();
                mem.write_slice(&b, GuestAddress(to)).unwrap();
            }
            let mut old = [0u8; 1];
            mem.read_slice(&mut old, GuestAddress(at + 0x7ff)).unwrap();
            mem.write_slice(&[old[0] ^ 0x20], GuestAddress(at + 0x7ff))
                .unwrap();
            let dirty = harvest(&mem);
            let mut sh = shadow.clone();
            sh.update(&mem, &dirty, &mut store).unwrap();
            view.note_dirty(&dirty);
            let found = check_view_dirtied(&view, &sh, &parked, &store, None);
            let got: Vec<(u64, u64, u64)> = found
                .mismatches
                .iter()
                .map(|m| (m.home, m.location, m.ranges[0].start))
                .collect();
            assert_eq!(got, [(victim, at, victim + 0x7ff)], "victim {victim:#x}");
            assert!(found.compared <= 4, "{} pages compared", found.compared);
            // Undo, so the next victim starts from the same RAM.
            mem.write_slice(&old, GuestAddress(at + 0x7ff)).unwrap();
            let dirty = harvest(&mem);
            sh.update(&mem, &dirty, &mut store).unwrap();
        }
    }

    #[test]
    fn control_pages_left_out_of_a_view_may_change() {
        let mut w = world();
        let control = 0x38_0000..0x38_3000;
        let view = record_view(
            "a",
            &w.shadow,
            w.shadow.pages().filter(|p| !control.contains(p)),
        )
        .unwrap();
        w.write(0x38_1000, b"saved context");
        assert_eq!(
            check_view(&view, &w.shadow, &BTreeMap::new(), &w.store, None),
            vec![]
        );
        w.write(0x38_3000, b"not a control page");
        assert_eq!(
            check_view(&view, &w.shadow, &BTreeMap::new(), &w.store, None).len(),
            1
        );
        assert!(matches!(
            record_view("b", &w.shadow, [0x40_0000]),
            Err(OracleError::NotRam(0x40_0000))
        ));
    }

    #[test]
    fn views_survive_store_gc() {
        let mut w = world();
        let view = record_view("b", &w.shadow, (0x10_0000..0x18_0000).step_by(PAGE_SIZE)).unwrap();
        w.write(0x10_0010, &[9]);
        w.store
            .gc(Shadow::live_hashes([&w.shadow, view.snapshot()]));
        let m = check_view(&view, &w.shadow, &BTreeMap::new(), &w.store, None);
        assert_eq!(m.len(), 1);
        assert_eq!(
            (m[0].ranges[0].start, m[0].ranges[0].end),
            (0x10_0010, 0x10_0011)
        );
        assert!(!m[0].hexdump.is_empty());
    }

    #[test]
    fn ranges_merge_close_runs_and_hexdump_is_bounded() {
        let e = [0u8; PAGE_SIZE];
        let mut a = [0u8; PAGE_SIZE];
        a[0x10] = 1;
        a[0x14] = 1; // within MERGE_GAP of the previous one
        a[0x40] = 1;
        a[0x47] = 1; // 6 equal bytes between: merged
        a[0x50] = 1; // MERGE_GAP equal bytes between: separate
        assert_eq!(
            diff_ranges(&e, &a),
            vec![(0x10, 0x15), (0x40, 0x48), (0x50, 0x51)]
        );
        let all = [0xffu8; PAGE_SIZE];
        let r = diff_ranges(&e, &all);
        assert_eq!(r, vec![(0, PAGE_SIZE)]);
        let d = hexdump(0x1000, &e, &all, &r);
        assert!(d.lines().count() <= 3 * MAX_LINES_PER_RANGE, "{d}");
        let mut many = [0u8; PAGE_SIZE];
        for i in 0..40 {
            many[i * 64] = 1;
        }
        let d = hexdump(0, &e, &many, &diff_ranges(&e, &many));
        assert!(d.contains("and 32 more range(s)"), "{d}");
    }

    #[test]
    fn uart_registers_are_compared_by_name() {
        let s = UartState::from(&vm_superio::serial::SerialState::default());
        assert_eq!(compare_uart(&s, &s.clone()), vec![]);
        let mut t = s.clone();
        t.line_control = 0x83;
        t.scratch = 0x5a;
        let m = compare_uart(&s, &t);
        assert_eq!(
            m.iter().map(|m| m.register.as_str()).collect::<Vec<_>>(),
            ["lcr", "scr"]
        );
        assert_eq!(m[0].to_string(), "uart lcr: 0x3 -> 0x83");
    }
}
