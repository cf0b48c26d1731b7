//! `kjump diff`: what differs between two dumps, judged as the oracle
//! judges a suspend and its resume.

use super::*;
/// A field of [`VcpuState::fields`] that differs between two dumps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RegisterDiff {
    pub name: String,
    pub old: FieldValue,
    pub new: FieldValue,
}

/// A page that differs between two dumps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PageDiff {
    pub addr: u64,
    /// Differing bytes, in guest-physical addresses, with their symbols.
    pub ranges: Vec<DiffRange>,
    /// Old (`-`) / new (`+`) hexdump; empty past the first pages.
    pub hexdump: String,
    /// The symbol or section of the first differing byte.
    pub symbol: Option<String>,
}

/// A register difference the oracle allows between a kernel's suspend and
/// its resume, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExpectedDiff {
    #[serde(flatten)]
    pub register: RegisterDiff,
    pub why: String,
}

/// Why `rax` differs between a kernel's suspend and its resume.
pub(super) const ANSWER_WHY: &str = "checkpoint answer: JUMP at the suspend, BACK at the resume";

/// What differs from dump `a` (old) to dump `b` (new).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DumpDiff {
    pub a: String,
    pub b: String,
    /// Differing metadata (checkpoint, entry, ...): shown, but not a
    /// difference of the guest's state.
    pub meta: Vec<String>,
    /// When the dumps are one kernel's suspend and its next resume (in
    /// either order), the two checkpoints, suspend first: the oracle's
    /// pair, whose allowed differences are `expected`.
    pub pair: Option<[CheckpointId; 2]>,
    /// Register differences the oracle allows for `pair` (none without
    /// one): not differences of the kernel's state.
    pub expected: Vec<ExpectedDiff>,
    /// Register differences not expected.
    pub registers: Vec<RegisterDiff>,
    pub pages: Vec<PageDiff>,
    /// RAM ranges in one dump only, and pages that could not be read.
    pub problems: Vec<String>,
}

impl DumpDiff {
    /// No difference yet between `a` (old) and `b` (new), named so.
    pub(super) fn between(a: String, b: String) -> Self {
        Self {
            a,
            b,
            meta: Vec::new(),
            pair: None,
            expected: Vec::new(),
            registers: Vec::new(),
            pages: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// True when the guest states differ (registers, memory or layout)
    /// beyond the expected differences.
    pub fn differs(&self) -> bool {
        !self.registers.is_empty() || !self.pages.is_empty() || !self.problems.is_empty()
    }
}

impl fmt::Display for DumpDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "--- {}", self.a)?;
        writeln!(f, "+++ {}", self.b)?;
        for m in &self.meta {
            writeln!(f, "meta: {m}")?;
        }
        if let Some([s, r]) = &self.pair {
            writeln!(
                f,
                "pair: kernel {}'s suspend #{} and its resume #{}: what the oracle allows is expected",
                s.kernel.name(),
                s.index,
                r.index
            )?;
        }
        for e in &self.expected {
            let r = &e.register;
            writeln!(
                f,
                "expected: {}: {} -> {} ({})",
                r.name, r.old, r.new, e.why
            )?;
        }
        if !self.differs() {
            return match self.expected.len() {
                0 => writeln!(f, "identical: registers and memory"),
                n => writeln!(
                    f,
                    "identical: registers and memory, but for the {n} expected difference(s)"
                ),
            };
        }
        writeln!(f, "registers: {} differ", self.registers.len())?;
        for r in &self.registers {
            writeln!(f, "  {}: {} -> {}", r.name, r.old, r.new)?;
        }
        writeln!(f, "pages: {} differ", self.pages.len())?;
        for p in &self.pages {
            write!(f, "  page {:#x}: {} range(s)", p.addr, p.ranges.len())?;
            for r in &p.ranges {
                write!(f, ", [{:#x}..{:#x})", r.start, r.end)?;
                if let Some(s) = &r.symbol {
                    write!(f, " {s}")?;
                }
            }
            writeln!(f)?;
            for line in p.hexdump.lines() {
                writeln!(f, "    {line}")?;
            }
        }
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        Ok(())
    }
}

pub(super) fn register_diffs(a: &VcpuState, b: &VcpuState) -> Vec<RegisterDiff> {
    let fa = a.fields();
    let fb = b.fields();
    let in_b: HashMap<&str, &FieldValue> = fb.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let in_a: HashMap<&str, &FieldValue> = fa.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let mut out: Vec<RegisterDiff> = fa
        .iter()
        .filter_map(|(n, old)| {
            let new = in_b
                .get(n.as_str())
                .copied()
                .cloned()
                .unwrap_or(FieldValue::Absent);
            (*old != new).then(|| RegisterDiff {
                name: n.clone(),
                old: old.clone(),
                new,
            })
        })
        .collect();
    out.extend(
        fb.iter()
            .filter(|(n, _)| !in_a.contains_key(n.as_str()))
            .map(|(n, v)| RegisterDiff {
                name: n.clone(),
                old: FieldValue::Absent,
                new: v.clone(),
            }),
    );
    out
}

/// The checkpoint at which the kernel that suspends at `suspend` resumes
/// next: its first checkpoint after `suspend` in the ping-pong sequence.
pub(super) fn resume_of(suspend: CheckpointId) -> Option<CheckpointId> {
    if suspend.direction != Direction::Suspend {
        return None;
    }
    // The ids come from files: leave room for the steps below.
    suspend.index.checked_add(8)?;
    suspend.cycle.checked_add(2)?;
    let mut t = Tracker::resume_after(suspend)?;
    // The peer runs one or two checkpoints before control comes back.
    (0..4)
        .map(|_| t.next())
        .find(|id| id.kernel == suspend.kernel)
}

/// `[suspend, resume]` when checkpoints `a` and `b` are one kernel's
/// suspend and its next resume, in either order: the states the oracle
/// compares.
pub(super) fn suspend_resume_pair(a: &CheckpointId, b: &CheckpointId) -> Option<[CheckpointId; 2]> {
    let (s, r) = match (a.direction, b.direction) {
        (Direction::Suspend, Direction::Resume) => (a, b),
        (Direction::Resume, Direction::Suspend) => (b, a),
        _ => return None,
    };
    (resume_of(*s) == Some(*r)).then_some([*s, *r])
}

/// Splits the register differences between a kernel's `suspend` and
/// `resume` states as the oracle judges them: `rax` is expected when each
/// state holds its checkpoint's answer ([`oracle::check_answer`]), another
/// field when the oracle's allowlist excuses it ([`Allowlist::excuse`]).
/// Returns the unexpected differences and the expected ones.
pub(super) fn split_expected(
    diffs: Vec<RegisterDiff>,
    suspend: &VcpuState,
    resume: &VcpuState,
    suspend_first: bool,
) -> (Vec<RegisterDiff>, Vec<ExpectedDiff>) {
    let answered = oracle::check_answer(suspend, Direction::Suspend.answer(), "suspend").is_none()
        && oracle::check_answer(resume, Direction::Resume.answer(), "resume").is_none();
    let (rax, rest): (Vec<_>, Vec<_>) =
        diffs.into_iter().partition(|d| answered && d.name == "rax");
    let allow = Allowlist::standard();
    let values = |d: &RegisterDiff| match (&d.old, &d.new) {
        (FieldValue::U64(o), FieldValue::U64(n)) if suspend_first => Some((*o, *n)),
        (FieldValue::U64(o), FieldValue::U64(n)) => Some((*n, *o)),
        _ => None,
    };
    let (unexpected, excused) = allow.excuse_values(rest, |d| &d.name, values);
    let expected = rax
        .into_iter()
        .map(|register| ExpectedDiff {
            register,
            why: ANSWER_WHY.to_owned(),
        })
        .chain(excused.into_iter().map(|(register, e)| ExpectedDiff {
            register,
            why: e.reason.clone(),
        }))
        .collect();
    (unexpected, expected)
}

pub(super) fn meta_diffs(a: &KjumpNote, b: &KjumpNote) -> Vec<String> {
    let mut out = Vec::new();
    let mut cmp = |what: &str, x: String, y: String| {
        if x != y {
            out.push(format!("{what}: {x} -> {y}"));
        }
    };
    cmp("checkpoint", checkpoint_text(&a.id), checkpoint_text(&b.id));
    cmp(
        "jump-back entry",
        format!("{:#x}", a.jump_back_entry),
        format!("{:#x}", b.jump_back_entry),
    );
    cmp(
        "resumable",
        a.resumable.to_string(),
        b.resumable.to_string(),
    );
    cmp("mem size", a.mem_size.to_string(), b.mem_size.to_string());
    cmp("kernel", a.kernel_name.clone(), b.kernel_name.clone());
    out
}

pub(super) fn page_diff(
    addr: u64,
    old: &Page,
    new: &Page,
    symbols: Option<&Symbols>,
    detailed: bool,
) -> PageDiff {
    let offs = diff_ranges(old, new);
    let sym = |a: u64| symbols.and_then(|s| s.lookup(a));
    let ranges = offs
        .iter()
        .map(|&(s, e)| DiffRange {
            start: addr + s as u64,
            end: addr + e as u64,
            symbol: sym(addr + s as u64),
        })
        .collect();
    PageDiff {
        addr,
        ranges,
        hexdump: if detailed {
            hexdump(addr, old, new, &offs)
        } else {
            String::new()
        },
        symbol: offs.first().and_then(|&(s, _)| sym(addr + s as u64)),
    }
}

/// Compares dump `a` (old) with dump `b` (new): every field of the vCPU
/// state, and every page of the RAM both have. Holes in both files are
/// skipped without reading. When the dumps are one kernel's suspend and
/// its next resume, the register differences the oracle allows there
/// (the checkpoint's answer in `rax`, the allowlist) are `expected`, apart
/// from the others; memory is compared as is.
pub fn diff(a: &Dump, b: &Dump, symbols: Option<&Symbols>) -> DumpDiff {
    let pair = suspend_resume_pair(&a.meta.id, &b.meta.id);
    let registers = register_diffs(&a.state, &b.state);
    let (registers, expected) = match pair {
        Some([s, _]) if s == a.meta.id => split_expected(registers, &a.state, &b.state, true),
        Some(_) => split_expected(registers, &b.state, &a.state, false),
        None => (registers, Vec::new()),
    };
    let mut out = DumpDiff {
        a: a.path.display().to_string(),
        b: b.path.display().to_string(),
        meta: meta_diffs(&a.meta, &b.meta),
        pair,
        expected,
        registers,
        pages: Vec::new(),
        problems: Vec::new(),
    };
    ram_ranges_problem(a, b, &mut out);
    diff_ram(a, b, &|_| true, symbols, &mut out);
    out
}

/// RAM ranges in one of `a` (old) and `b` (new) only: a problem in `out`.
pub(super) fn ram_ranges_problem(a: &dyn RamSource, b: &dyn RamSource, out: &mut DumpDiff) {
    let (ra, rb) = (a.ram_ranges(), b.ram_ranges());
    if ra != rb {
        let show = |r: &[(u64, u64)]| {
            r.iter()
                .map(|(s, l)| format!("[{s:#x}..{:#x})", s + l))
                .collect::<Vec<_>>()
        };
        out.problems.push(format!(
            "RAM ranges differ: {:?} -> {:?}",
            show(&ra),
            show(&rb)
        ));
    }
}

/// Compares the RAM of `a` (old) and `b` (new) into `out`: every page both
/// have and `compared` takes (what both skip as zeros is not read). RAM in
/// one only is the caller's to account for ([`ram_ranges_problem`]).
/// Shared by dumps, hibernation images and vmcores.
pub(super) fn diff_ram(
    a: &dyn RamSource,
    b: &dyn RamSource,
    compared: &dyn Fn(u64) -> bool,
    symbols: Option<&Symbols>,
    out: &mut DumpDiff,
) {
    let (ra, rb) = (a.ram_ranges(), b.ram_ranges());
    let mut common = Vec::new();
    for &(sa, la) in &ra {
        for &(sb, lb) in &rb {
            let (s, e) = (sa.max(sb), (sa + la).min(sb + lb));
            if s < e {
                common.push((s, e));
            }
        }
    }
    let (mut ba, mut bb) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    for (start, end) in common {
        let mut pos = start;
        while pos < end {
            pos = a.skip_zeros(pos, end).min(b.skip_zeros(pos, end));
            if pos >= end {
                break;
            }
            let n = (end - pos).min(CHUNK as u64) as usize;
            if let Err(e) = a
                .read_ram(pos, &mut ba[..n])
                .and_then(|()| b.read_ram(pos, &mut bb[..n]))
            {
                out.problems.push(format!(
                    "cannot compare [{pos:#x}..{:#x}): {e}",
                    pos + n as u64
                ));
                pos += n as u64;
                continue;
            }
            if ba[..n] != bb[..n] {
                for (i, (pa, pb)) in ba[..n]
                    .chunks_exact(PAGE_SIZE)
                    .zip(bb[..n].chunks_exact(PAGE_SIZE))
                    .enumerate()
                {
                    let addr = pos + (i * PAGE_SIZE) as u64;
                    if pa != pb && compared(addr) {
                        let (pa, pb): (&Page, &Page) = (
                            pa.try_into().expect("whole pages"),
                            pb.try_into().expect("whole pages"),
                        );
                        let detailed = out.pages.len() < MAX_DETAILED;
                        out.pages.push(page_diff(addr, pa, pb, symbols, detailed));
                    }
                }
            }
            pos += n as u64;
        }
    }
}
