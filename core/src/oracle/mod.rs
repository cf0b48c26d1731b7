//! The identity oracle: what a kernel left must be what it finds.
//!
//! [`Oracle`] owns everything kjump knows about the kernels of a run: each
//! kernel's record (its kimage, the machine state and the logical view of
//! memory it left at its last suspend, where it asked to be re-entered), the
//! page store and the shadow of guest RAM. It is fed values, never KVM: a
//! checkpoint's [`MachineState`] and the guest RAM, and answers three
//! questions:
//!
//! * [`Oracle::record_suspend`]: a kernel jumps away; record what it leaves,
//!   and check that its jump enters the peer where the peer asked;
//! * [`Oracle::check_resume`]: a kernel is back; does it find every
//!   register, device field and page of its view as it left them?
//! * [`Oracle::check_away`]: the other kernel is away; are its pages intact
//!   where its kimage parked them?
//!
//! [`Oracle::checkpoint`] asks them in order for one checkpoint of a run.
//! The oracle outlives a VM: its records can be seeded from a dump
//! ([`Oracle::seed`]), and checked against another VM's RAM.
//!
//! The comparisons themselves are plain functions ([`compare_vcpu`],
//! [`check_view`], [`compare_uart`]) on plain values.

mod compare;
#[cfg(test)]
mod tests;

pub use compare::*;

use std::collections::BTreeMap;

use kjump_abi::abi::ANSWER_BACK;
use kjump_abi::control;
use vm_memory::{Bytes, GuestAddress};

use crate::GuestMem;
use crate::checkpoint::{CheckpointId, Direction, Kernel};
use crate::devices;
use crate::dump::{DumpError, RamSource, ResumeRecord, SuspendRecord, read_by_page};
use crate::kimage::Kimage;
use crate::pages::{PAGE_SIZE, PageError, PageSet, PageStore, Shadow};
use crate::report::{At, ExcusedPage, Mismatch, MismatchKind};
use crate::state::{DeviceState, FieldValue, MachineState};
use crate::symbols::Symbols;

const PAGE: u64 = PAGE_SIZE as u64;

/// How much of guest RAM is read at a checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompareMode {
    /// After the first checkpoint, only the pages the dirty log reports.
    #[default]
    Dirty,
    /// All of RAM at every checkpoint; a page that changed without being
    /// reported is itself a mismatch.
    Full,
}

impl CompareMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Dirty => "dirty",
            Self::Full => "full",
        }
    }
}

/// What the oracle keeps about one kernel.
#[derive(Clone, Debug, Default)]
pub struct KernelRecord {
    /// Its last kimage (where its pages and its peer's are parked).
    pub kimage: Option<Kimage>,
    /// The report `kimage` was read from (the `Kimage` message's arguments).
    pub kimage_args: Option<[u64; 8]>,
    /// Its last suspend checkpoint.
    pub suspended_at: Option<CheckpointId>,
    /// The machine as it left it there.
    pub machine: Option<MachineState>,
    /// Its logical view of memory there.
    pub view: Option<View>,
    /// Where it asked to be re-entered (its control page's
    /// `DATA_OWN_ENTRY`), read at its suspends.
    pub own_entry: Option<u64>,
}

/// What the oracle found at one checkpoint.
#[derive(Clone, Debug, Default)]
pub struct Judgement {
    pub mismatches: Vec<Mismatch>,
    /// Pages of views compared.
    pub pages_compared: u64,
    /// Pages the oracle excuses from views, reported once per kernel.
    pub excused: Vec<ExcusedPage>,
}

impl Judgement {
    fn add(&mut self, other: Judgement) {
        self.mismatches.extend(other.mismatches);
        self.pages_compared += other.pages_compared;
        self.excused.extend(other.excused);
    }
}

/// The oracle could not judge: the guest broke the protocol, or its memory
/// could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OracleError {
    /// A page of the view is not a page of guest RAM.
    #[error("page {0:#x} of the view is not guest RAM")]
    NotRam(u64),
    /// The guest broke the harness protocol.
    #[error("guest protocol error: {0}")]
    Protocol(&'static str),
    /// Guest RAM could not be read into the shadow.
    #[error("cannot read guest memory")]
    Pages(#[from] PageError),
}

/// The identity oracle of one run (see the module docs).
#[derive(Debug)]
pub struct Oracle {
    /// B's first delivery, as A's kimage asks for it: destination page →
    /// the hash of the page that is to land there (recorded at A's first
    /// suspend), and where B is entered.
    delivery: Option<Delivery>,
    store: PageStore,
    shadow: Option<Shadow>,
    kernels: [KernelRecord; 2],
    symbols: Option<Symbols>,
    allow: Allowlist,
    compare: CompareMode,
    excused_reported: [bool; 2],
    /// A kernel loaded its peer afresh since its last suspend
    /// ([`Oracle::peer_reloaded`]): its next kimage may keep pages its view
    /// had (a fresh load allocates them from free memory).
    reloaded: [bool; 2],
    /// The peer region of A's kimage at A's last suspend (B's view).
    peer_region: Option<(u64, u64)>,
    /// Guest RAM was all zero when the dirty logs began: the first shadow
    /// is built from the dirty list alone ([`Oracle::ram_starts_zero`]).
    zero_start: bool,
    /// Every page any dirty list named, one bit per page address.
    touched: Vec<u64>,
    touched_count: u64,
}

impl Oracle {
    /// An oracle that names addresses with `symbols` and excuses what
    /// `allow` lists.
    pub fn new(symbols: Option<Symbols>, allow: Allowlist, compare: CompareMode) -> Self {
        Self {
            delivery: None,
            store: PageStore::new(),
            shadow: None,
            kernels: Default::default(),
            symbols,
            allow,
            compare,
            excused_reported: [false; 2],
            reloaded: [false; 2],
            peer_region: None,
            zero_start: false,
            touched: Vec::new(),
            touched_count: 0,
        }
    }

    /// Distinct pages the dirty lists named so far: what the guest (and
    /// the VMM) touched, the measure of what the page store may hold.
    pub fn pages_touched(&self) -> u64 {
        self.touched_count
    }

    fn note_touched(&mut self, dirty: &[u64]) {
        for &p in dirty {
            let i = (p / PAGE) as usize;
            if i / 64 >= self.touched.len() {
                self.touched.resize(i / 64 + 1, 0);
            }
            let (w, bit) = (&mut self.touched[i / 64], 1u64 << (i % 64));
            if *w & bit == 0 {
                *w |= bit;
                self.touched_count += 1;
            }
        }
    }

    /// Says that guest RAM was all zero when the dirty logs began, and that
    /// the first dirty list given to [`Oracle::observe_memory`] names every
    /// page written since (the VMM's writes and the guest's): a fresh VM's
    /// RAM is anonymous memory, zero until written. The first shadow is then
    /// built from that list, at a cost that grows with the pages written,
    /// not with RAM, and RAM nobody wrote is never read (nor faulted in).
    /// Without this the first observation reads all of RAM.
    /// [`CompareMode::Full`] reads all of RAM at every checkpoint anyway,
    /// the first included, and reports any page this would have missed.
    pub fn ram_starts_zero(&mut self) {
        self.zero_start = true;
    }

    pub fn allowlist(&self) -> &Allowlist {
        &self.allow
    }

    pub fn symbols(&self) -> Option<&Symbols> {
        self.symbols.as_ref()
    }

    /// What the oracle keeps about `k`.
    pub fn record(&self, k: Kernel) -> &KernelRecord {
        &self.kernels[k.idx()]
    }

    /// `k`'s last kimage, if it reported one.
    pub fn kimage(&self, k: Kernel) -> Option<&Kimage> {
        self.kernels[k.idx()].kimage.as_ref()
    }

    /// Kernel `k` reported the kimage it jumps with.
    pub fn kimage_reported(&mut self, k: Kernel, kimage: Kimage, args: [u64; 8]) {
        let r = &mut self.kernels[k.idx()];
        r.kimage = Some(kimage);
        r.kimage_args = Some(args);
    }

    /// Kernel A loaded kernel B afresh (hibernate: A restored from its
    /// image loads B again; Linux user space runs `kexec -l` again): the
    /// next kimages may keep pages the kernels' last views had, and B's
    /// region may move. Everything else [`Oracle::record_suspend`] checks
    /// of a kimage still holds.
    pub fn peer_reloaded(&mut self) {
        self.reloaded = [true, true];
    }

    /// The pages a kexec jump rewrites every time: A's kimage's
    /// destination pages (B's region) and where it parks them (swap mode:
    /// the source pages; backup mode: both save areas), sorted. A VMM may
    /// leave them writable between checkpoints (no dirty-log fault when
    /// the relocation code writes them) provided it reads them at every
    /// checkpoint: they are then in every dirty list, written or not.
    pub fn rewritten_every_jump(&self) -> Vec<u64> {
        let Some(a) = self.kimage(Kernel::A) else {
            return Vec::new();
        };
        let mut pages: Vec<u64> = [&a.parked, &a.peer_parked]
            .into_iter()
            .flat_map(|m| m.iter().flat_map(|(&home, &at)| [home, at]))
            .collect();
        pages.sort_unstable();
        pages.dedup();
        pages
    }

    fn kimage_a(&self) -> Result<&Kimage, OracleError> {
        self.kimage(Kernel::A).ok_or(OracleError::Protocol(
            "kernel a jumped without reporting its kimage",
        ))
    }

    fn own_kimage(&self, k: Kernel) -> Result<&Kimage, OracleError> {
        self.kimage(k).ok_or(OracleError::Protocol(
            "a kernel jumped without reporting its kimage",
        ))
    }

    /// One checkpoint of a run: brings the shadow of RAM up to date from
    /// `dirty` ([`Oracle::observe_memory`]), then [`Oracle::judge`]s it.
    pub fn checkpoint(
        &mut self,
        id: &CheckpointId,
        machine: &MachineState,
        mem: &GuestMem,
        dirty: &[u64],
    ) -> Result<Judgement, OracleError> {
        let mut j = Judgement {
            mismatches: self.observe_memory(mem, dirty, &At::of(id))?,
            ..Judgement::default()
        };
        j.add(self.judge(id, machine, mem)?);
        Ok(j)
    }

    /// Judges checkpoint `id` (the shadow of RAM must be up to date):
    /// records its kernel at a suspend or checks it at a resume, and checks
    /// the kernel that is away where it is parked.
    pub fn judge(
        &mut self,
        id: &CheckpointId,
        machine: &MachineState,
        mem: &GuestMem,
    ) -> Result<Judgement, OracleError> {
        let mut j = match id.direction {
            Direction::Suspend => self.record_suspend(id, machine, mem)?,
            Direction::Resume => self.check_resume(id, machine)?,
        };
        j.add(self.check_away(id)?);
        self.collect_garbage();
        Ok(j)
    }

    /// Brings the shadow of guest RAM up to date: the whole of RAM the first
    /// time, then the pages `dirty` names. In [`CompareMode::Full`] every
    /// page is read again, and one that changed unreported is a mismatch.
    pub fn observe_memory(
        &mut self,
        mem: &GuestMem,
        dirty: &[u64],
        at: &At,
    ) -> Result<Vec<Mismatch>, OracleError> {
        let shadow = match self.shadow.take() {
            None if self.zero_start => {
                let mut s = Shadow::zeroed(mem)?;
                s.update(mem, dirty, &mut self.store)?;
                s
            }
            None => {
                for v in self.kernels.iter_mut().filter_map(|r| r.view.as_mut()) {
                    v.note_all_dirty();
                }
                Shadow::build(mem, &mut self.store)?
            }
            Some(mut s) => {
                s.update(mem, dirty, &mut self.store)?;
                s
            }
        };
        // What each recorded view finds can only have changed here.
        for v in self.kernels.iter_mut().filter_map(|r| r.view.as_mut()) {
            v.note_dirty(dirty);
        }
        self.note_touched(dirty);
        let mut out = Vec::new();
        if self.compare == CompareMode::Full {
            for page in shadow.full_check(mem)? {
                let h = shadow.get(page).map(|h| h.to_string()).unwrap_or_default();
                out.push(Mismatch {
                    at: at.clone(),
                    kind: MismatchKind::Memory,
                    name: None,
                    address: Some(page),
                    location: Some(page),
                    expected: h,
                    actual: "changed".to_owned(),
                    ranges: Vec::new(),
                    hexdump: None,
                    symbol: self.symbols.as_ref().and_then(|s| s.lookup(page)),
                    note: Some("the page changed but neither KVM's dirty log nor the VMM's write log reported it".to_owned()),
                });
            }
        }
        self.shadow = Some(shadow);
        Ok(out)
    }

    /// Forgets the shadow of guest RAM: the next [`Oracle::observe_memory`]
    /// reads RAM afresh (all of it, or with [`Oracle::ram_starts_zero`] the
    /// pages its dirty list names). For a kernel checked in another VM than
    /// the one it was recorded in (hibernation): its records stay, and
    /// every page of their views is compared at their next check (in a new
    /// machine a page nobody wrote is zero, whatever the view holds).
    pub fn forget_memory(&mut self) {
        self.shadow = None;
        for v in self.kernels.iter_mut().filter_map(|r| r.view.as_mut()) {
            v.note_all_dirty();
        }
    }

    fn shadow(&self) -> Result<&Shadow, OracleError> {
        self.shadow.as_ref().ok_or(OracleError::Protocol(
            "a checkpoint was judged before guest memory was observed",
        ))
    }

    /// Kernel `id.kernel` jumps away: checks that it stopped at its
    /// checkpoint with the answer, and that its jump enters a booted peer
    /// where the peer asked to be re-entered; records its machine state and
    /// logical view of memory (the shadow must be up to date).
    pub fn record_suspend(
        &mut self,
        id: &CheckpointId,
        machine: &MachineState,
        mem: &GuestMem,
    ) -> Result<Judgement, OracleError> {
        let k = id.kernel;
        let at = At::of(id);
        self.own_kimage(k).map_err(|_| {
            OracleError::Protocol("a kernel reached its checkpoint without reporting its kimage")
        })?;
        let mut j = Judgement::default();
        if let Some(m) = check_answer(machine.vcpu(), id.direction.answer(), "suspend") {
            j.mismatches.push(Mismatch::register(&at, &m));
        }
        j.mismatches.extend(self.check_peer_entry(mem, k, &at)?);
        let (claims, kept) = self.check_claims(k, &at)?;
        j.mismatches.extend(claims);
        // A page the kimage may not keep stays in the view: damage there
        // is caught too.
        let pages = self.view_pages(k)?;
        let pages = if kept.is_empty() {
            pages
        } else {
            PageSet::from_ranges(
                pages
                    .ranges()
                    .iter()
                    .copied()
                    .chain(kept.iter().map(|&p| (p, p + PAGE))),
            )
            .map_err(OracleError::NotRam)?
        };
        let view = View::record(k.name(), self.shadow()?, pages)?;
        let r = &mut self.kernels[k.idx()];
        r.suspended_at = Some(*id);
        r.machine = Some(machine.clone());
        r.view = Some(view);
        self.reloaded[k.idx()] = false;
        if k == Kernel::A {
            let a = self.kimage_a()?;
            self.peer_region = Some((a.peer_start, a.peer_end));
        }
        j.excused = self.excused(k);
        Ok(j)
    }

    /// Kernel `id.kernel` is back: every register (but the answer in
    /// `rax`), every device field and every page of its view must be as it
    /// left them.
    pub fn check_resume(
        &mut self,
        id: &CheckpointId,
        machine: &MachineState,
    ) -> Result<Judgement, OracleError> {
        let k = id.kernel;
        let at = At::of(id);
        let r = &self.kernels[k.idx()];
        let (Some(left), Some(view)) = (&r.machine, &r.view) else {
            return Err(OracleError::Protocol(
                "a kernel resumed that never suspended",
            ));
        };
        let mut j = Judgement::default();
        for mut m in compare_vcpu(left.vcpu(), machine.vcpu(), ANSWER_BACK, &self.allow) {
            // A register left pointing into a control page (a GDT, IDT or
            // TSS the relocation code loaded), or holding a handover
            // poison, says which.
            if let (None, FieldValue::U64(v)) = (&m.note, &m.actual) {
                m.note = poison_of(*v).or_else(|| {
                    self.control_place(*v)
                        .map(|p| format!("found value is in {p}"))
                });
            }
            j.mismatches.push(Mismatch::register(&at, &m));
        }
        for m in compare_devices(left, machine) {
            j.mismatches.push(Mismatch::device(&at, &m));
        }
        let found = self.check_memory(view, &BTreeMap::new())?;
        for m in found.mismatches {
            j.mismatches.push(Mismatch::memory(&at, &m));
        }
        j.pages_compared += found.compared as u64;
        Ok(j)
    }

    /// The kernel that is away at `id` (its peer) must find its pages
    /// where its kimage parks them; nothing to check before it has
    /// suspended once.
    pub fn check_away(&self, id: &CheckpointId) -> Result<Judgement, OracleError> {
        let peer = id.kernel.peer();
        let at = At::of(id);
        let mut j = Judgement::default();
        if let Some(view) = &self.kernels[peer.idx()].view {
            let found = self.check_memory(view, self.away_moves(peer)?)?;
            for m in found.mismatches {
                j.mismatches.push(Mismatch::memory(&at, &m));
            }
            j.pages_compared += found.compared as u64;
        }
        Ok(j)
    }

    /// Checks `view` where `moved` says its pages are: every page in
    /// [`CompareMode::Full`], else the pages written since it was recorded
    /// and the pages parked (the same answer, see [`check_view_dirtied`]).
    fn check_memory(
        &self,
        view: &View,
        moved: &BTreeMap<u64, u64>,
    ) -> Result<ViewCheck, OracleError> {
        let (shadow, store, symbols) = (self.shadow()?, &self.store, self.symbols.as_ref());
        Ok(match self.compare {
            CompareMode::Full => ViewCheck {
                mismatches: check_view(view, shadow, moved, store, symbols),
                compared: view.len(),
            },
            CompareMode::Dirty => check_view_dirtied(view, shadow, moved, store, symbols),
        })
    }

    /// Records B's first delivery as A's kimage asks for it, at A's first
    /// suspend (the shadow up to date, before the relocation code runs):
    /// every destination page of B's region must receive the page that
    /// waits in A's source pages now (B's PT_LOADs, its boot data, zero
    /// pages), and B is to be entered at `entry`.
    pub fn expect_delivery(&mut self, entry: u64) -> Result<(), OracleError> {
        let a = self.kimage_a()?;
        let shadow = self.shadow()?;
        let mut pages = BTreeMap::new();
        for (&dest, &src) in a.peer_moves() {
            let h = shadow.get(src).ok_or(OracleError::NotRam(src))?;
            pages.insert(dest, h);
        }
        self.delivery = Some(Delivery {
            entry,
            pages,
            checked: false,
        });
        Ok(())
    }

    /// Where B's first delivery is to enter B, while it is not checked yet.
    pub fn delivery_entry(&self) -> Option<u64> {
        self.delivery
            .as_ref()
            .filter(|d| !d.checked)
            .map(|d| d.entry)
    }

    /// Whether B's first delivery was asked for and not checked yet.
    pub fn delivery_pending(&self) -> bool {
        self.delivery_entry().is_some()
    }

    /// B is about to run its first instruction (the shadow brought up to
    /// date): every destination page must hold what A's kimage delivered
    /// to it. A page that does not is a memory mismatch of kernel b, with
    /// the byte ranges and the symbol of B's image.
    pub fn check_delivery(&mut self, at: &At) -> Result<Judgement, OracleError> {
        let Some(d) = self.delivery.as_mut() else {
            return Err(OracleError::Protocol(
                "kernel b was entered before kernel a's first jump",
            ));
        };
        d.checked = true;
        let shadow = self.shadow.as_ref().ok_or(OracleError::Protocol(
            "kernel b was entered before guest memory was observed",
        ))?;
        let mut j = Judgement::default();
        for (&dest, &want) in &d.pages {
            let now = shadow.get(dest).ok_or(OracleError::NotRam(dest))?;
            if now != want {
                let m = explain_found("b", dest, want, now, &self.store, self.symbols.as_ref());
                let mut m = Mismatch::memory(at, &m);
                m.note = Some(
                    "kernel b's first delivery: the page differs from what kernel a's kimage placed for it"
                        .to_owned(),
                );
                j.mismatches.push(m);
            }
        }
        j.pages_compared = d.pages.len() as u64;
        Ok(j)
    }

    /// Keeps the page store bounded: only what the shadow and the views use
    /// stays.
    pub fn collect_garbage(&mut self) {
        if !self.store.needs_gc() {
            return;
        }
        let views = self.kernels.iter().filter_map(|r| r.view.as_ref());
        let live = Shadow::live_hashes(self.shadow.iter().chain(views.map(|v| v.snapshot())));
        self.store.gc(live);
    }

    /// The pages of `k`'s logical view: for A all of RAM but its control
    /// pages and the source pages that park B; for B the region A gave it,
    /// but its control pages.
    fn view_pages(&self, k: Kernel) -> Result<PageSet, OracleError> {
        let own = self.own_kimage(k)?;
        let (c0, c1) = own.control_range();
        let pages = match k {
            Kernel::A => PageSet::from_ranges(self.shadow()?.ranges())
                .map(|all| all.without(c0, c1, own.parking_pages())),
            Kernel::B => {
                let a = self.kimage_a()?;
                PageSet::from_ranges([(a.peer_start, a.peer_end)])
                    .map(|b| b.without(c0, c1, std::iter::empty()))
            }
        };
        pages.map_err(OracleError::NotRam)
    }

    /// What `k`'s kimage keeps out of `k`'s view (its control pages, the
    /// pages it parks pages in) must not hide `k`'s own memory: such a
    /// page may not hold A's loaded image (a section of its ELF), lie in
    /// B's region (A's kimage: those are the pages it moves), be kept twice
    /// (a source page that is also a control page or another pair's), or
    /// have been in `k`'s view at its last suspend (unless `k` reloaded its
    /// peer since); A's kimage may deliver only into B's region, and may
    /// not move it between suspends. One memory mismatch per such page,
    /// named with its address and symbol; returns them and the pages of
    /// the last view the kimage keeps (to stay in the view).
    fn check_claims(&self, k: Kernel, at: &At) -> Result<(Vec<Mismatch>, Vec<u64>), OracleError> {
        let ki = self.own_kimage(k)?;
        let (c0, c1) = ki.control_range();
        let kept = (c0..c1)
            .step_by(PAGE_SIZE)
            .map(|p| (p, "control page"))
            .chain(ki.parked.values().map(|&p| (p, "source page")))
            .chain(ki.peer_parked.values().map(|&p| (p, "peer save page")));
        let last_view = self.kernels[k.idx()]
            .view
            .as_ref()
            .filter(|_| !self.reloaded[k.idx()]);
        let name = k.name();
        let mut out = Vec::new();
        let mut claimed = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (page, what) in kept {
            let why = if !seen.insert(page) {
                Some(
                    "kept twice (a source page that is also a control page or another pair's)"
                        .to_owned(),
                )
            } else if let Some(sec) = self
                .symbols
                .as_ref()
                .filter(|_| k == Kernel::A)
                .and_then(|s| s.section_in(page, page + PAGE))
            {
                Some(format!("in kernel a's own loaded image ({sec})"))
            } else if k == Kernel::A && (ki.peer_start..ki.peer_end).contains(&page) {
                Some("in b's region, the pages the kimage moves".to_owned())
            } else if last_view.is_some_and(|v| v.get(page).is_some()) {
                claimed.push(page);
                Some(format!("in kernel {name}'s view at its last suspend"))
            } else {
                None
            };
            if let Some(why) = why {
                out.push(self.page_mismatch(
                    at,
                    k,
                    page,
                    (
                        "not kept by its kimage".to_owned(),
                        format!("kept by its kimage as a {what}"),
                    ),
                    format!(
                        "kernel {name}'s kimage keeps page {page:#x} out of its view as a {what}, but it is {why}: damage there would go unseen"
                    ),
                ));
            }
        }
        // A's kimage gives B its region: a page it delivers elsewhere is
        // A's memory (and a pair that parks a page at itself, which hides
        // it from A's view and moves nothing, is one).
        if k == Kernel::A {
            let outside = ki
                .parked
                .keys()
                .chain(ki.peer_parked.keys())
                .filter(|&&d| !(ki.peer_start..ki.peer_end).contains(&d));
            for &page in outside {
                out.push(self.page_mismatch(
                    at,
                    k,
                    page,
                    (
                        format!(
                            "not a destination of its kimage (b's region is [{:#x}..{:#x}))",
                            ki.peer_start, ki.peer_end
                        ),
                        "a destination of its kimage".to_owned(),
                    ),
                    format!(
                        "kernel a's kimage delivers to page {page:#x}, a's memory outside the region it gives b"
                    ),
                ));
            }
        }
        if let (Kernel::A, Some(was), false) = (k, self.peer_region, self.reloaded[0]) {
            let now = (ki.peer_start, ki.peer_end);
            if now != was {
                out.push(Mismatch {
                    address: Some(ki.peer_start),
                    ..Mismatch::named(
                        at,
                        MismatchKind::Memory,
                        "kernel b's region in a's kimage".to_owned(),
                        (
                            format!("[{:#x}..{:#x})", was.0, was.1),
                            format!("[{:#x}..{:#x})", now.0, now.1),
                        ),
                        "kernel a's kimage moved b's region (b's view) since its last suspend without loading b afresh".to_owned(),
                    )
                });
            }
        }
        Ok((out, claimed))
    }

    /// A memory mismatch of `k`'s page `page`, found by a check of its
    /// kimage (not by comparing content), with the page's symbol.
    fn page_mismatch(
        &self,
        at: &At,
        k: Kernel,
        page: u64,
        expected_actual: (String, String),
        note: String,
    ) -> Mismatch {
        Mismatch {
            address: Some(page),
            location: Some(page),
            symbol: self.symbols.as_ref().and_then(|s| s.lookup(page)),
            ..Mismatch::named(
                at,
                MismatchKind::Memory,
                format!("page of kernel {}", k.name()),
                expected_actual,
                note,
            )
        }
    }

    /// Home page -> where it is parked, for `k`'s pages while `k` is away.
    fn away_moves(&self, k: Kernel) -> Result<&BTreeMap<u64, u64>, OracleError> {
        let a = self.kimage_a()?;
        Ok(if k == Kernel::A {
            a.owner_moves()
        } else {
            a.peer_moves()
        })
    }

    /// Where `k`'s page `home` is while `k` is away.
    pub fn parked_at(&self, k: Kernel, home: u64) -> u64 {
        match (k, self.kimage(Kernel::A)) {
            (Kernel::A, Some(a)) => a.owner_parked_at(home),
            (Kernel::B, Some(a)) => a.peer_parked_at(home),
            (_, None) => home,
        }
    }

    /// Seeds the oracle for a run that goes on from a dump taken at `at`,
    /// whose RAM is `mem`: the kernels' records as the dump's resume record
    /// gives them, the shadow of RAM, and the views the run had there. The
    /// dump's kernel is at home: at a suspend its view is recorded as the
    /// run recorded it. The other kernel, when `peer_away`, is away: its
    /// view is recorded where its kimage parks its pages (where the run
    /// that wrote the dump had just checked them).
    pub fn seed(
        &mut self,
        at: CheckpointId,
        kernels: [KernelRecord; 2],
        peer_away: bool,
        mem: &GuestMem,
    ) -> Result<(), OracleError> {
        self.kernels = kernels;
        // B's region as the run had it: A's kimage may not move it later.
        self.peer_region = self.kimage(Kernel::A).map(|a| (a.peer_start, a.peer_end));
        self.shadow = Some(Shadow::build(mem, &mut self.store)?);
        let k = at.kernel;
        if at.direction == Direction::Suspend {
            let pages = self.view_pages(k)?;
            let view = View::record(k.name(), self.shadow()?, pages)?;
            self.kernels[k.idx()].view = Some(view);
        }
        let p = k.peer();
        if peer_away {
            let pages = self.view_pages(p)?;
            let view = View::record_moved(p.name(), self.shadow()?, pages, self.away_moves(p)?)?;
            self.kernels[p.idx()].view = Some(view);
        }
        // The re-entry points: the dump's kernel's from its control page at
        // home, the away kernel's (once booted) from where it is parked.
        if self.kimage(k).is_some() {
            self.kernels[k.idx()].own_entry = self.read_own_entry(mem, k, false)?;
        }
        if peer_away && self.kimage(p).is_some() {
            self.kernels[p.idx()].own_entry = self.read_own_entry(mem, p, true)?;
        }
        Ok(())
    }

    /// What `kjump resume` needs to go on from checkpoint `id` (written
    /// into the dump): the kimage reports, the UART now, and the record of
    /// the kernel that is away.
    pub fn resume_record(
        &self,
        scenario: &str,
        cycles: u64,
        id: &CheckpointId,
        machine: &MachineState,
    ) -> ResumeRecord {
        let peer = id.kernel.peer();
        let r = &self.kernels[peer.idx()];
        ResumeRecord {
            scenario: scenario.to_owned(),
            cycles,
            kimage_a: self.kernels[0].kimage_args,
            kimage_b: self.kernels[1].kimage_args,
            uart: machine.uart().cloned().unwrap_or_default(),
            devices: machine.other_devices(),
            peer: match (&r.suspended_at, &r.machine) {
                (Some(at), Some(m)) => Some(SuspendRecord {
                    kernel: peer,
                    suspended_at: *at,
                    state: m.vcpu().clone(),
                    uart: m.uart().cloned().unwrap_or_default(),
                    devices: m.other_devices(),
                }),
                _ => None,
            },
        }
    }

    /// Where kernel `k` is re-entered (its `DATA_OWN_ENTRY`, the copy of
    /// `relocate_peer_returned` in its control page: what B is given as
    /// `kexec_jump_back_entry`); 0 when unknown.
    pub fn jump_back_entry(&self, k: Kernel) -> u64 {
        self.kernels[k.idx()].own_entry.unwrap_or(0)
    }

    /// Kernel `k` as it left: its checkpoint, its machine there and its
    /// memory (its view's pages from the store; pages outside its view are
    /// not the kernel's and are taken from `found`), for a `-left` dump.
    pub fn left<'a>(
        &'a self,
        k: Kernel,
        found: &'a GuestMem,
    ) -> Option<(CheckpointId, &'a MachineState, LeftRam<'a>)> {
        let r = &self.kernels[k.idx()];
        let (Some(at), Some(m), Some(view)) = (&r.suspended_at, &r.machine, &r.view) else {
            return None;
        };
        Some((
            *at,
            m,
            LeftRam {
                found,
                view,
                store: &self.store,
            },
        ))
    }

    /// Reads a u64 of `k`'s control page at `offset`, where the page is
    /// now: at home, or parked when `k` is away.
    pub fn read_control(
        &self,
        mem: &GuestMem,
        k: Kernel,
        offset: u64,
        away: bool,
    ) -> Result<u64, OracleError> {
        let home = self.own_kimage(k)?.control + offset;
        let page = home & !(PAGE - 1);
        let at = if away {
            self.parked_at(k, page) + (home - page)
        } else {
            home
        };
        mem.read_obj(GuestAddress(at))
            .map_err(|_| OracleError::Protocol("a control page is outside guest RAM"))
    }

    /// Where `k` asks to be re-entered (`DATA_OWN_ENTRY` of its control
    /// page, at home or parked when `k` is away); `None` for a kernel that
    /// does not say (0: one older than the slot, e.g. in an old dump), whose
    /// entries are then not checked.
    fn read_own_entry(
        &self,
        mem: &GuestMem,
        k: Kernel,
        away: bool,
    ) -> Result<Option<u64>, OracleError> {
        let e = self.read_control(mem, k, control::DATA_OWN_ENTRY, away)?;
        Ok((e != 0).then_some(e))
    }

    /// A jump must enter a booted peer exactly where the peer asked to be
    /// re-entered (the return address it pushed when it jumped to us,
    /// which the relocation code records in `DATA_PEER_ENTRY`). Checked at
    /// `k`'s suspend, before the relocation code runs: a wrong entry is
    /// reported with the slot that holds it instead of as the crash it
    /// would become. Also records `k`'s own entry for the peer's jumps.
    fn check_peer_entry(
        &mut self,
        mem: &GuestMem,
        k: Kernel,
        at: &At,
    ) -> Result<Option<Mismatch>, OracleError> {
        self.kernels[k.idx()].own_entry = self.read_own_entry(mem, k, false)?;
        let peer = k.peer();
        // A peer that never jumped has not been booted: its first entry
        // is its ELF entry, nothing to hold it to.
        let Some(expected) = self.kernels[peer.idx()].own_entry else {
            return Ok(None);
        };
        let found = self.read_control(mem, k, control::DATA_PEER_ENTRY, false)?;
        if found == expected {
            return Ok(None);
        }
        let show = |a: u64| match self.place_of(a) {
            Some(p) => format!("{a:#x} ({p})"),
            None => format!("{a:#x}"),
        };
        let slot = self.own_kimage(k)?.control + control::DATA_PEER_ENTRY;
        Ok(Some(Mismatch {
            at: at.clone(),
            kind: MismatchKind::Entry,
            name: Some(format!("{}'s entry into {}", k.name(), peer.name())),
            address: Some(slot),
            location: None,
            expected: show(expected),
            actual: show(found),
            ranges: Vec::new(),
            hexdump: None,
            symbol: self.place_of(slot),
            note: Some(format!(
                "kernel {} is about to jump to kernel {} at {found:#x}, but {} left asking to be re-entered at {expected:#x}; its context would not be resumed",
                k.name(),
                peer.name(),
                peer.name()
            )),
        }))
    }

    /// What an address is, for reports: a place in a kernel's control
    /// pages, or a symbol of the kernel image.
    pub fn place_of(&self, addr: u64) -> Option<String> {
        self.control_place(addr)
            .or_else(|| self.symbols.as_ref().and_then(|s| s.lookup(addr)))
    }

    /// What an address in a kernel's control pages is: "a's control page
    /// 0x… + 0xa40: the relocation code's GDT".
    pub fn control_place(&self, addr: u64) -> Option<String> {
        for k in [Kernel::A, Kernel::B] {
            let Some(ki) = self.kimage(k) else { continue };
            let (c0, c1) = ki.control_range();
            if !(c0..c1).contains(&addr) {
                continue;
            }
            let off = addr - c0;
            let what = match off {
                o if o < control::CODE_MAX => {
                    let sym = self.symbols.as_ref().and_then(|s| {
                        let start = s.address_of_suffix("relocate_start")?;
                        s.lookup(start.checked_add(o)?)
                    });
                    sym.map_or_else(|| "relocation code".to_owned(), |s| format!("copy of {s}"))
                }
                o if (control::RELOC_GDT..control::RELOC_GDT_PTR).contains(&o) => {
                    "the relocation code's GDT".to_owned()
                }
                o if (control::RELOC_IDT..control::RELOC_TSS).contains(&o) => {
                    "the relocation code's IDT".to_owned()
                }
                o if (control::RELOC_TSS..control::RELOC_END).contains(&o) => {
                    "the relocation code's TSS".to_owned()
                }
                control::STACK_TOP => "the top of the relocation code's stack".to_owned(),
                control::DATA_PEER_ENTRY => "the peer's entry (DATA_PEER_ENTRY)".to_owned(),
                control::DATA_OWN_ENTRY => "its own re-entry point (DATA_OWN_ENTRY)".to_owned(),
                o if (control::CONTEXT..control::CONTEXT + 8 * control::SLOTS).contains(&o) => {
                    let slot = ((o - control::CONTEXT) / 8) as usize;
                    format!("saved {}", control::SLOT_NAMES[slot])
                }
                o if (control::FXSAVE..control::FXSAVE + 512).contains(&o) => {
                    "saved FXSAVE area".to_owned()
                }
                o if o < PAGE => "control page".to_owned(),
                o if o < 2 * PAGE => "swap page".to_owned(),
                _ => "identity-map page tables".to_owned(),
            };
            return Some(format!(
                "{}'s control page {c0:#x} + {off:#x}: {what}",
                k.name()
            ));
        }
        None
    }

    /// The pages excused from `k`'s view (its control pages), once per
    /// kernel.
    fn excused(&mut self, k: Kernel) -> Vec<ExcusedPage> {
        if self.excused_reported[k.idx()] {
            return Vec::new();
        }
        let Some(ki) = self.kimage(k) else {
            return Vec::new();
        };
        let (c0, c1) = ki.control_range();
        let out = (c0..c1)
            .step_by(PAGE_SIZE)
            .enumerate()
            .map(|(i, p)| {
                let why = match i as u64 {
                    control::PAGE_CONTROL => "control page: relocation code, saved context, stack",
                    control::PAGE_SWAP => "swap page of the relocation code",
                    _ => "identity-map page table of the relocation code",
                };
                ExcusedPage {
                    kernel: k.name().to_owned(),
                    address: p,
                    why: why.to_owned(),
                }
            })
            .collect();
        self.excused_reported[k.idx()] = true;
        out
    }
}

/// B's first delivery (see [`Oracle::expect_delivery`]).
#[derive(Clone, Debug)]
struct Delivery {
    entry: u64,
    pages: BTreeMap<u64, crate::pages::PageHash>,
    checked: bool,
}

/// Compares the devices a kernel left with the ones it finds, field by
/// field; a device that is gone is a mismatch too.
pub fn compare_devices(left: &MachineState, found: &MachineState) -> Vec<DeviceMismatch> {
    let mut out = Vec::new();
    for (name, dev) in &left.devices {
        match (dev, found.devices.get(name)) {
            // The usual case, without naming every field.
            (l, Some(f)) if l == f => {}
            (DeviceState::Uart(l), Some(DeviceState::Uart(f))) => out.extend(compare_uart(l, f)),
            (_, None) => out.push(DeviceMismatch {
                device: name.clone(),
                register: "present".to_owned(),
                expected: FieldValue::U64(1),
                actual: FieldValue::U64(0),
                note: Some("the device is gone".to_owned()),
            }),
            (l, Some(f)) => out.extend(devices::compare(l, f).into_iter().map(|d| {
                let value = |v: Option<u64>| v.map_or(FieldValue::Absent, FieldValue::U64);
                let note = match d.rule {
                    devices::Rule::Monotonic { reason } => {
                        Some(format!("may only advance: it went back; {reason}"))
                    }
                    _ => None,
                };
                DeviceMismatch {
                    device: d.name,
                    register: String::new(),
                    expected: value(d.expected),
                    actual: value(d.actual),
                    note,
                }
            })),
        }
    }
    out
}

/// A kernel's memory as it left it: its view's pages from the page store;
/// pages outside its view (its control pages, the pages parking the peer)
/// are not the kernel's and are taken as found, so that a diff of the two
/// dumps shows exactly what the oracle compared.
pub struct LeftRam<'a> {
    found: &'a GuestMem,
    view: &'a View,
    store: &'a PageStore,
}

impl RamSource for LeftRam<'_> {
    fn ram_ranges(&self) -> Vec<(u64, u64)> {
        self.found.ram_ranges()
    }

    fn read_ram(&self, addr: u64, buf: &mut [u8]) -> Result<(), DumpError> {
        read_by_page(addr, buf, |page, off, part| {
            match self.view.get(page).and_then(|h| self.store.get(h)) {
                Some(p) => part.copy_from_slice(&p[off..off + part.len()]),
                None => self.found.read_ram(page + off as u64, part)?,
            }
            Ok(())
        })
    }
}
