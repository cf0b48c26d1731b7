//! Guest RAM as hashes: a content-addressed store of 4 KiB pages and a
//! shadow that knows the current hash of every guest page.
//!
//! The shadow of a fresh VM starts as all zero pages without reading RAM
//! ([`Shadow::zeroed`]: anonymous memory is zero until written, and the
//! first dirty list names every page written since the VM was made); a
//! shadow of RAM of unknown content is built by one full read
//! ([`Shadow::build`]). After that each checkpoint re-reads only the pages
//! the dirty log reports ([`Shadow::update`]), so a checkpoint costs what
//! the guest wrote, not the size of RAM. The paranoid mode re-reads
//! everything ([`Shadow::full_check`]) and so also checks the dirty log
//! itself (and the zero start): a page that changed but was not reported
//! is a failure.
//!
//! Guest memory is read with `VolatileSlice::copy_to`, which does not mark
//! vm-memory's dirty bitmap (that bitmap records the VMM's own writes).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::GuestMem;

/// Size of a guest page.
pub const PAGE_SIZE: usize = 4096;
const PAGE: u64 = PAGE_SIZE as u64;
/// One guest page.
pub type Page = [u8; PAGE_SIZE];
/// The all-zero page, content of [`PageHash::ZERO`].
pub static ZERO_PAGE: Page = [0; PAGE_SIZE];

/// Pages read from guest memory at once on full reads (1 MiB).
const READ_BATCH: usize = 256;
/// The store does not collect garbage below this many pages (4 MiB).
const MIN_GC_PAGES: usize = 1024;

/// Reading guest RAM for the shadow failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PageError {
    /// An address given as a page is not page-aligned guest RAM.
    #[error("{0:#x} is not a page of guest RAM")]
    NotRam(u64),
    /// A RAM region does not start or end on a page boundary.
    #[error("guest RAM region at {start:#x} ({len:#x} bytes) is not page-aligned")]
    Unaligned { start: u64, len: u64 },
    /// vm-memory refused the read.
    #[error("cannot read guest memory at {0:#x}")]
    Read(u64),
    /// The RAM layout is not the one the shadow was built for.
    #[error("guest RAM layout changed since the shadow was built")]
    Layout,
}

/// The hash of a page's content: xxh3-128, with the all-zero page mapped to
/// 0 (checked before hashing, which is cheaper for the many zero pages).
/// Two different pages share a hash with probability ~2^-128: the oracle
/// treats equal hashes as equal content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PageHash(pub u128);

impl std::hash::Hash for PageHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(self.0);
    }
}

impl PageHash {
    /// The hash of [`ZERO_PAGE`].
    pub const ZERO: Self = Self(0);
    /// Never the hash of a page: marks "no page here" in dense tables.
    pub const ABSENT: Self = Self(u128::MAX);

    /// Hashes one page.
    pub fn of(page: &Page) -> Self {
        if is_zero(page) {
            return Self::ZERO;
        }
        // 0 is the zero page's and MAX is ABSENT; a page that hashes to
        // either (probability 2^-127) is moved aside.
        Self(xxhash_rust::xxh3::xxh3_128(page).clamp(1, u128::MAX - 1))
    }

    pub fn is_zero(self) -> bool {
        self == Self::ZERO
    }
}

impl std::fmt::Display for PageHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

fn is_zero(page: &Page) -> bool {
    // Compares 8 words at a time; the compiler vectorises the inner fold.
    page.chunks_exact(64).all(|c| {
        c.chunks_exact(8).fold(0u64, |acc, w| {
            acc | u64::from_ne_bytes(w.try_into().expect("8 bytes"))
        }) == 0
    })
}

/// The keys are already uniform hashes: use their low bits as they are.
#[derive(Default)]
struct KeyIsHash(u64);

impl Hasher for KeyIsHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

type HashBuild = BuildHasherDefault<KeyIsHash>;

/// Content-addressed page storage: each distinct page is stored once. The
/// zero page is never stored. Pages nobody refers to any more are dropped
/// by [`PageStore::gc`], which the owner calls when [`PageStore::needs_gc`]
/// says the store has doubled since the last collection: the cost is
/// amortised over the pages inserted in between.
///
/// Pages live in slabs of [`SLAB_PAGES`] and freed slots are reused: a
/// fresh allocation costs a page fault per page (~3 µs here, more than
/// hashing and copying the page), a reused slot only the copy.
#[derive(Default)]
pub struct PageStore {
    index: HashMap<PageHash, u32, HashBuild>,
    slabs: Vec<Box<[Page]>>,
    free: Vec<u32>,
    gc_at: usize,
    inserted: u64,
}

/// Pages per slab of the store (1 MiB).
pub const SLAB_PAGES: usize = 256;

impl PageStore {
    pub fn new() -> Self {
        Self {
            gc_at: MIN_GC_PAGES,
            ..Default::default()
        }
    }

    /// A store with room for `pages` distinct pages, already faulted in.
    pub fn with_capacity(pages: usize) -> Self {
        let mut s = Self::new();
        while s.free.len() < pages {
            s.grow();
        }
        s
    }

    fn grow(&mut self) {
        // Filled with a non-zero byte so that the memory is really written
        // (faulted in) now, not on first use.
        self.slabs
            .push(vec![[0xa5u8; PAGE_SIZE]; SLAB_PAGES].into_boxed_slice());
        let first = (self.slabs.len() - 1) * SLAB_PAGES;
        self.free
            .extend((first..first + SLAB_PAGES).rev().map(|s| s as u32));
    }

    fn slot(&self, slot: u32) -> &Page {
        let s = slot as usize;
        &self.slabs[s / SLAB_PAGES][s % SLAB_PAGES]
    }

    /// Stores a page (if its content is new) and returns its hash.
    pub fn insert(&mut self, page: &Page) -> PageHash {
        let h = PageHash::of(page);
        if !h.is_zero() && !self.index.contains_key(&h) {
            if self.free.is_empty() {
                self.grow();
            }
            let slot = self.free.pop().expect("grow() added free slots");
            let s = slot as usize;
            self.slabs[s / SLAB_PAGES][s % SLAB_PAGES] = *page;
            self.index.insert(h, slot);
            self.inserted += 1;
        }
        h
    }

    /// Whether the store holds the content of `h` (the zero page always).
    pub fn contains(&self, h: PageHash) -> bool {
        h.is_zero() || self.index.contains_key(&h)
    }

    /// The content of a page by hash; the zero page is always there.
    pub fn get(&self, h: PageHash) -> Option<&Page> {
        if h.is_zero() {
            Some(&ZERO_PAGE)
        } else {
            self.index.get(&h).map(|&s| self.slot(s))
        }
    }

    /// Distinct non-zero pages held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes of memory the store holds for page content (used or free).
    pub fn bytes(&self) -> usize {
        self.slabs.len() * SLAB_PAGES * PAGE_SIZE
    }

    /// Distinct pages ever stored (a statistic: it only grows).
    pub fn inserted(&self) -> u64 {
        self.inserted
    }

    /// Whether the store has grown enough since the last collection that a
    /// [`gc`](Self::gc) is worth its cost.
    pub fn needs_gc(&self) -> bool {
        self.index.len() >= self.gc_at
    }

    /// Drops every page not in `live` (all the hashes that the shadow and
    /// every recorded view still refer to). Returns how many were dropped.
    pub fn gc(&mut self, live: impl IntoIterator<Item = PageHash>) -> usize {
        let live: HashSet<PageHash, HashBuild> = live.into_iter().collect();
        let before = self.index.len();
        let free = &mut self.free;
        self.index.retain(|h, slot| {
            let keep = live.contains(h);
            if !keep {
                free.push(*slot);
            }
            keep
        });
        self.gc_at = (2 * self.index.len()).max(MIN_GC_PAGES);
        log::debug!("page store gc: {} of {before} pages kept", self.index.len());
        before - self.index.len()
    }
}

/// Summaries only: the content is megabytes.
impl std::fmt::Debug for PageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageStore")
            .field("pages", &self.index.len())
            .field("bytes", &self.bytes())
            .field("free", &self.free.len())
            .field("inserted", &self.inserted)
            .finish()
    }
}

/// Pages per chunk of the shadow's table of hashes: 8 KiB of hashes for
/// 2 MiB of RAM. Chunks, and groups of [`GROUP_CHUNKS`] of them, are shared
/// copy-on-write between the shadow and the snapshots views keep
/// ([`Shadow::clone`] copies a pointer per group, not hashes): recording a
/// view costs a pointer per 128 MiB of RAM, and the guest's writes copy
/// only the chunks (and groups) they touch.
pub const CHUNK_PAGES: usize = 512;
type Chunk = [PageHash; CHUNK_PAGES];
/// Chunks per group: 128 MiB of RAM.
pub const GROUP_CHUNKS: usize = 64;
type Group = Vec<Arc<Chunk>>;

/// The hashes of one RAM region's pages, in groups of chunks.
#[derive(Clone)]
struct Region {
    start: u64,
    pages: usize,
    groups: Vec<Arc<Group>>,
}

impl Region {
    fn end(&self) -> u64 {
        self.start + self.pages as u64 * PAGE
    }

    /// Chunk `c` of the region.
    fn chunk(&self, c: usize) -> &Arc<Chunk> {
        &self.groups[c / GROUP_CHUNKS][c % GROUP_CHUNKS]
    }

    fn hash(&self, i: usize) -> PageHash {
        self.chunk(i / CHUNK_PAGES)[i % CHUNK_PAGES]
    }

    /// Sets page `i`'s hash; a chunk (and group) shared with a snapshot is
    /// copied first, and only when the hash really changes.
    fn set(&mut self, i: usize, h: PageHash) -> bool {
        if self.hash(i) == h {
            return false;
        }
        let c = i / CHUNK_PAGES;
        let group = Arc::make_mut(&mut self.groups[c / GROUP_CHUNKS]);
        Arc::make_mut(&mut group[c % GROUP_CHUNKS])[i % CHUNK_PAGES] = h;
        true
    }
}

/// The current hash of every guest RAM page. Cloning it is cheap (a
/// pointer per 2 MiB of RAM): that is how a view keeps the shadow as it was
/// when it was recorded.
#[derive(Clone)]
pub struct Shadow {
    regions: Vec<Region>,
}

/// Summaries only: a hash per page of RAM is too much to print.
impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let regions: Vec<String> = self
            .regions
            .iter()
            .map(|r| format!("[{:#x}..{:#x})", r.start, r.end()))
            .collect();
        f.debug_struct("Shadow")
            .field("regions", &regions)
            .field("pages", &self.len())
            .finish()
    }
}

/// Two shadows are equal when they cover the same RAM with the same hashes.
impl PartialEq for Shadow {
    fn eq(&self, other: &Self) -> bool {
        self.regions.len() == other.regions.len()
            && self.regions.iter().zip(&other.regions).all(|(a, b)| {
                a.start == b.start
                    && a.pages == b.pages
                    && a.groups.iter().zip(&b.groups).all(|(g, h)| {
                        Arc::ptr_eq(g, h)
                            || g.iter()
                                .zip(h.iter())
                                .all(|(x, y)| Arc::ptr_eq(x, y) || x == y)
                    })
            })
    }
}

impl Eq for Shadow {}

/// A reusable buffer of whole pages.
fn page_buffer(pages: usize) -> Vec<Page> {
    vec![[0u8; PAGE_SIZE]; pages]
}

/// Reads `buf.len()` pages starting at guest address `addr`.
fn read_pages(mem: &GuestMem, addr: u64, buf: &mut [Page]) -> Result<(), PageError> {
    let bytes = buf.as_flattened_mut();
    let slice = mem
        .get_slice(GuestAddress(addr), bytes.len())
        .map_err(|_| PageError::Read(addr))?;
    if slice.copy_to(bytes) != bytes.len() {
        return Err(PageError::Read(addr));
    }
    Ok(())
}

/// The hash of the guest page at `addr`, read where it is. A checkpoint
/// reads the pages a kexec jump rewrites at every checkpoint, and copying
/// each one out of guest memory before hashing it took twice as long
/// (measured: 500 against 260 µs for 2,048 pages).
fn hash_in_place(mem: &GuestMem, addr: u64) -> Result<PageHash, PageError> {
    let slice = mem
        .get_slice(GuestAddress(addr), PAGE_SIZE)
        .map_err(|_| PageError::Read(addr))?;
    let guard = slice.ptr_guard();
    // SAFETY: `guard` points at PAGE_SIZE bytes of mapped guest memory (the
    // slice was bounds-checked), alive while `guard` is, and a page of
    // bytes has no alignment. Guest memory is not Rust's: the reference
    // holds only while nothing writes the page, which is so where the
    // shadow is brought up to date: the VMM does it on the vCPU thread
    // between two KVM_RUNs (the guest is stopped, and KVM writes guest RAM
    // only as the vCPU enters), and the VMM's own writes (fault injection,
    // the debugger) are made on that thread too.
    let page = unsafe { &*guard.as_ptr().cast::<Page>() };
    Ok(PageHash::of(page))
}

fn ram_layout(mem: &GuestMem) -> Result<Vec<(u64, usize)>, PageError> {
    let mut v: Vec<(u64, usize)> = mem
        .iter()
        .map(|r| {
            let (start, len) = (r.start_addr().0, r.len());
            if !start.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
                return Err(PageError::Unaligned { start, len });
            }
            Ok((start, (len / PAGE) as usize))
        })
        .collect::<Result<_, _>>()?;
    v.sort_unstable();
    Ok(v)
}

impl Shadow {
    /// A shadow of RAM laid out as `mem`, every page the zero page,
    /// without reading RAM: all chunks share one all-zero chunk.
    fn zeroed_layout(layout: &[(u64, usize)]) -> Self {
        let zero = Arc::new([PageHash::ZERO; CHUNK_PAGES]);
        let zero_group = Arc::new(vec![zero.clone(); GROUP_CHUNKS]);
        let regions = layout
            .iter()
            .map(|&(start, pages)| {
                let chunks = pages.div_ceil(CHUNK_PAGES);
                let mut groups = vec![zero_group.clone(); chunks / GROUP_CHUNKS];
                if !chunks.is_multiple_of(GROUP_CHUNKS) {
                    groups.push(Arc::new(vec![zero.clone(); chunks % GROUP_CHUNKS]));
                }
                Region {
                    start,
                    pages,
                    groups,
                }
            })
            .collect();
        Self { regions }
    }

    /// The shadow of guest RAM that is known to be all zero (a fresh VM's,
    /// before anything was written), built without reading it: a page costs
    /// nothing until it is written. Pages written since must then be given
    /// to [`update`](Self::update): the shadow is only as right as that.
    pub fn zeroed(mem: &GuestMem) -> Result<Self, PageError> {
        Ok(Self::zeroed_layout(&ram_layout(mem)?))
    }

    /// Reads all of guest RAM once, storing every page.
    pub fn build(mem: &GuestMem, store: &mut PageStore) -> Result<Self, PageError> {
        let mut shadow = Self::zeroed(mem)?;
        let mut buf = page_buffer(READ_BATCH);
        for r in &mut shadow.regions {
            let mut i = 0;
            while i < r.pages {
                let n = (r.pages - i).min(READ_BATCH);
                read_pages(mem, r.start + i as u64 * PAGE, &mut buf[..n])?;
                for (j, p) in buf[..n].iter().enumerate() {
                    r.set(i + j, store.insert(p));
                }
                i += n;
            }
        }
        Ok(shadow)
    }

    fn locate(&self, addr: u64) -> Option<(usize, usize)> {
        if !addr.is_multiple_of(PAGE) {
            return None;
        }
        self.regions
            .iter()
            .position(|r| (r.start..r.end()).contains(&addr))
            .map(|i| (i, ((addr - self.regions[i].start) / PAGE) as usize))
    }

    /// The current hash of the page at `addr`, if it is a page of RAM.
    pub fn get(&self, addr: u64) -> Option<PageHash> {
        self.locate(addr).map(|(r, i)| self.regions[r].hash(i))
    }

    /// The hashes of up to `n` pages from `addr` on, as far as they lie in
    /// one chunk (at least one page when `addr` is a page of RAM).
    pub fn run(&self, addr: u64, n: usize) -> Option<&[PageHash]> {
        let (r, i) = self.locate(addr)?;
        let reg = &self.regions[r];
        let off = i % CHUNK_PAGES;
        let n = n.min(CHUNK_PAGES - off).min(reg.pages - i);
        Some(&reg.chunk(i / CHUNK_PAGES)[off..off + n])
    }

    /// Whether the page at `addr` lies in the same chunk, shared, in both
    /// shadows: then the whole chunk is identical without looking.
    pub fn shares_chunk(&self, other: &Shadow, addr: u64) -> bool {
        match (self.locate(addr), other.locate(addr)) {
            (Some((r, i)), Some((q, j))) => Arc::ptr_eq(
                self.regions[r].chunk(i / CHUNK_PAGES),
                other.regions[q].chunk(j / CHUNK_PAGES),
            ),
            _ => false,
        }
    }

    /// Re-reads the pages at `dirty` (page addresses, best sorted) and
    /// returns how many of them changed content. Guest memory must not
    /// change while this runs (see [`hash_in_place`]): the VMM calls it
    /// with the vCPU stopped.
    pub fn update(
        &mut self,
        mem: &GuestMem,
        dirty: &[u64],
        store: &mut PageStore,
    ) -> Result<usize, PageError> {
        let mut page = page_buffer(1);
        let mut changed = 0;
        for &addr in dirty {
            let (r, i) = self.locate(addr).ok_or(PageError::NotRam(addr))?;
            // Hashed where it is; copied out only when its content is new.
            let mut h = hash_in_place(mem, addr)?;
            if !store.contains(h) {
                read_pages(mem, addr, &mut page)?;
                h = store.insert(&page[0]);
            }
            if self.regions[r].set(i, h) {
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Reads all of RAM and returns the pages whose content differs from the
    /// shadow: after an [`update`](Self::update) with the dirty log, each is
    /// a page that changed without the dirty log reporting it.
    pub fn full_check(&self, mem: &GuestMem) -> Result<Vec<u64>, PageError> {
        let layout = ram_layout(mem)?;
        if layout.len() != self.regions.len()
            || layout
                .iter()
                .zip(&self.regions)
                .any(|(&(s, n), r)| s != r.start || n != r.pages)
        {
            return Err(PageError::Layout);
        }
        let mut buf = page_buffer(READ_BATCH);
        let mut differ = Vec::new();
        for r in &self.regions {
            let mut i = 0;
            while i < r.pages {
                let n = (r.pages - i).min(READ_BATCH);
                let at = r.start + i as u64 * PAGE;
                read_pages(mem, at, &mut buf[..n])?;
                for (j, p) in buf[..n].iter().enumerate() {
                    if PageHash::of(p) != r.hash(i + j) {
                        differ.push(at + j as u64 * PAGE);
                    }
                }
                i += n;
            }
        }
        Ok(differ)
    }

    /// The address of every page of RAM, in order.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.regions
            .iter()
            .flat_map(|r| (r.start..r.end()).step_by(PAGE_SIZE))
    }

    /// The RAM regions, `[start, end)`, in order.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.regions.iter().map(|r| (r.start, r.end()))
    }

    /// Every hash the shadow refers to, page by page.
    pub fn hashes(&self) -> impl Iterator<Item = PageHash> + '_ {
        self.regions
            .iter()
            .flat_map(|r| (0..r.pages).map(|i| r.hash(i)))
    }

    /// The non-zero hashes `shadows` refer to, for [`PageStore::gc`]: each
    /// group and chunk they share is read once, so this costs a pointer per
    /// 128 MiB of RAM and shadow plus the chunks the guest wrote.
    pub fn live_hashes<'a>(shadows: impl IntoIterator<Item = &'a Shadow>) -> Vec<PageHash> {
        let (mut groups, mut chunks) = (HashSet::new(), HashSet::new());
        let mut live = Vec::new();
        for s in shadows {
            for g in s.regions.iter().flat_map(|r| &r.groups) {
                if !groups.insert(Arc::as_ptr(g)) {
                    continue;
                }
                for c in g.iter() {
                    if chunks.insert(Arc::as_ptr(c)) {
                        live.extend(c.iter().copied().filter(|h| !h.is_zero()));
                    }
                }
            }
        }
        live
    }

    /// Pages of RAM.
    pub fn len(&self) -> usize {
        self.regions.iter().map(|r| r.pages).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A set of page addresses, kept as sorted, disjoint ranges: a view of all
/// of RAM but a few pages is a handful of ranges, however large RAM is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageSet {
    /// `[start, end)`, page-aligned, sorted, neither overlapping nor touching.
    ranges: Vec<(u64, u64)>,
    len: usize,
}

impl PageSet {
    /// The pages of `ranges` (page-aligned `[start, end)`, any order,
    /// overlaps allowed); `Err` names an address that is not page-aligned.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Result<Self, u64> {
        let mut v: Vec<(u64, u64)> = Vec::new();
        for (s, e) in ranges {
            for a in [s, e] {
                if !a.is_multiple_of(PAGE) {
                    return Err(a);
                }
            }
            if s < e {
                v.push((s, e));
            }
        }
        v.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (s, e) in v {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        Ok(Self::of(out))
    }

    /// The pages `pages` names (page addresses, any order).
    pub fn from_pages(pages: impl IntoIterator<Item = u64>) -> Result<Self, u64> {
        Self::from_ranges(pages.into_iter().map(|p| (p, p.wrapping_add(PAGE))))
    }

    fn of(ranges: Vec<(u64, u64)>) -> Self {
        let len = ranges.iter().map(|(s, e)| ((e - s) / PAGE) as usize).sum();
        Self { ranges, len }
    }

    /// This set without the pages of `[start, end)` and of `pages`.
    pub fn without(&self, start: u64, end: u64, pages: impl IntoIterator<Item = u64>) -> Self {
        let mut cut: Vec<(u64, u64)> = pages.into_iter().map(|p| (p, p + PAGE)).collect();
        if start < end {
            cut.push((start, end));
        }
        cut.sort_unstable();
        let mut out = Vec::with_capacity(self.ranges.len() + cut.len());
        let mut c = 0;
        for &(mut s, e) in &self.ranges {
            while c < cut.len() && cut[c].1 <= s {
                c += 1;
            }
            let mut k = c;
            while s < e {
                match cut.get(k) {
                    Some(&(cs, ce)) if cs < e => {
                        if cs > s {
                            out.push((s, cs));
                        }
                        s = s.max(ce);
                        k += 1;
                    }
                    _ => {
                        out.push((s, e));
                        break;
                    }
                }
            }
        }
        Self::of(out)
    }

    pub fn contains(&self, addr: u64) -> bool {
        let i = self.ranges.partition_point(|&(_, e)| e <= addr);
        self.ranges
            .get(i)
            .is_some_and(|&(s, _)| s <= addr && addr.is_multiple_of(PAGE))
    }

    /// Pages in the set.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ranges, `[start, end)`, in order.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Every page, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges
            .iter()
            .flat_map(|&(s, e)| (s..e).step_by(PAGE_SIZE))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Instant;
    use vm_memory::Bytes;

    /// A xorshift generator for the randomised tests: `rnd(n)` is in `0..n`.
    pub(crate) fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        }
    }

    /// A guest memory with two regions, like a VM with the 32-bit hole.
    pub(crate) fn mem(low: u64, high: u64) -> GuestMem {
        let mut ranges = vec![(GuestAddress(0), low as usize)];
        if high > 0 {
            ranges.push((GuestAddress(1 << 32), high as usize));
        }
        GuestMem::from_ranges(&ranges).unwrap()
    }

    fn page_of(b: u8) -> Page {
        let mut p = [0u8; PAGE_SIZE];
        p[100] = b;
        p[4095] = b ^ 0xff;
        p
    }

    #[test]
    fn zero_page_is_special() {
        let mut s = PageStore::new();
        assert_eq!(s.insert(&ZERO_PAGE), PageHash::ZERO);
        assert!(s.is_empty());
        assert_eq!(s.get(PageHash::ZERO), Some(&ZERO_PAGE));
        let mut p = ZERO_PAGE;
        p[4095] = 1;
        assert_ne!(PageHash::of(&p), PageHash::ZERO);
    }

    #[test]
    fn identical_pages_are_stored_once_and_gc_frees_the_dead() {
        let mut s = PageStore::new();
        let a = s.insert(&page_of(1));
        let b = s.insert(&page_of(2));
        assert_eq!(s.insert(&page_of(1)), a);
        assert_ne!(a, b);
        assert_eq!(s.len(), 2);
        assert_eq!(s.get(a), Some(&page_of(1)));
        assert_eq!(s.gc([a]), 1);
        assert_eq!(s.get(b), None);
        assert_eq!(s.get(a), Some(&page_of(1)));
        assert_eq!(s.inserted(), 2);
    }

    #[test]
    fn store_stays_bounded_over_many_checkpoints() {
        // A guest that writes a new value into the same page at every
        // checkpoint: with gc the store holds a bounded number of pages.
        let m = mem(1 << 20, 0);
        let mut store = PageStore::new();
        let mut sh = Shadow::build(&m, &mut store).unwrap();
        for i in 0..20_000u32 {
            m.write_obj(i + 1, GuestAddress(0x3000)).unwrap();
            sh.update(&m, &[0x3000], &mut store).unwrap();
            if store.needs_gc() {
                store.gc(sh.hashes());
            }
        }
        assert!(store.len() <= MIN_GC_PAGES, "{}", store.len());
        assert!(
            store.bytes() <= (MIN_GC_PAGES + SLAB_PAGES) * PAGE_SIZE,
            "{}",
            store.bytes()
        );
        assert_eq!(store.inserted(), 20_000);
        let mut p = [0u8; PAGE_SIZE];
        p[..4].copy_from_slice(&20_000u32.to_le_bytes());
        assert_eq!(store.get(sh.get(0x3000).unwrap()), Some(&p));
    }

    #[test]
    fn shadow_tracks_both_regions() {
        let m = mem(0x10_0000, 0x4_0000);
        let mut store = PageStore::new();
        m.write_slice(&page_of(7), GuestAddress((1 << 32) + 0x1000))
            .unwrap();
        let sh = Shadow::build(&m, &mut store).unwrap();
        assert_eq!(sh.len(), 256 + 64);
        assert_eq!(sh.pages().nth(256), Some(1 << 32));
        assert_eq!(sh.get((1 << 32) + 0x1000), Some(PageHash::of(&page_of(7))));
        assert_eq!(sh.get(0x1000), Some(PageHash::ZERO));
        assert_eq!(sh.get(0x10_0000), None, "past the low region");
        assert_eq!(sh.get(0x1001), None, "not a page address");
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn reading_does_not_mark_the_vmm_dirty_bitmap() {
        use vm_memory::bitmap::Bitmap;
        let m = mem(0x10_0000, 0x1_0000);
        let mut store = PageStore::new();
        let mut sh = Shadow::build(&m, &mut store).unwrap();
        sh.update(&m, &[0x1000, 1 << 32], &mut store).unwrap();
        sh.full_check(&m).unwrap();
        for r in m.iter() {
            assert!(
                (0..r.len() as usize)
                    .step_by(PAGE_SIZE)
                    .all(|o| !r.bitmap().dirty_at(o))
            );
        }
        // While a VMM write does mark it.
        m.write_obj(1u8, GuestAddress(0x2000)).unwrap();
        assert!(m.iter().next().unwrap().bitmap().dirty_at(0x2000));
    }

    #[test]
    fn update_with_dirty_list_and_full_check_catches_unreported_writes() {
        let m = mem(0x20_0000, 0x1_0000);
        let mut store = PageStore::new();
        let mut sh = Shadow::build(&m, &mut store).unwrap();
        assert_eq!(sh.full_check(&m).unwrap(), Vec::<u64>::new());

        // Two writes, both reported: the shadow follows, full check agrees.
        m.write_obj(0xdead_beefu32, GuestAddress(0x5008)).unwrap();
        m.write_obj(0x42u8, GuestAddress((1 << 32) + 0xfff))
            .unwrap();
        assert_eq!(
            sh.update(&m, &[0x5000, 0x6000, (1 << 32)], &mut store)
                .unwrap(),
            2
        );
        assert_eq!(sh.full_check(&m).unwrap(), Vec::<u64>::new());
        let mut want = [0u8; PAGE_SIZE];
        want[8..12].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        assert_eq!(store.get(sh.get(0x5000).unwrap()), Some(&want));

        // A write nobody reports: only the full check sees it.
        m.write_obj(1u8, GuestAddress(0x1f_f000)).unwrap();
        assert_eq!(sh.update(&m, &[0x5000], &mut store).unwrap(), 0);
        assert_eq!(sh.full_check(&m).unwrap(), vec![0x1f_f000]);

        // Rewriting a page with its old content is no change.
        m.write_obj(0u8, GuestAddress(0x1f_f000)).unwrap();
        assert_eq!(sh.full_check(&m).unwrap(), Vec::<u64>::new());

        // Bad dirty addresses are refused.
        assert_eq!(
            sh.update(&m, &[0x20_0000], &mut store),
            Err(PageError::NotRam(0x20_0000))
        );
        assert_eq!(
            sh.update(&m, &[0x5008], &mut store),
            Err(PageError::NotRam(0x5008))
        );
        let other = mem(0x10_0000, 0);
        assert_eq!(sh.full_check(&other), Err(PageError::Layout));
    }

    #[test]
    fn checkpoint_costs_grow_with_dirty_pages() {
        // Not a benchmark, no timed assertions: prints what a checkpoint
        // costs so that a regression is visible in `--nocapture` output.
        let m = mem(256 << 20, 0);
        for i in 0..(256u64 << 20) / PAGE / 2 {
            m.write_obj(i, GuestAddress(i * 2 * PAGE)).unwrap();
        }
        let mut store = PageStore::with_capacity(64 << 10);
        let t = Instant::now();
        let mut sh = Shadow::build(&m, &mut store).unwrap();
        let build = t.elapsed();
        let dirty: Vec<u64> = (0..2048).map(|i| 0x100_0000 + i * PAGE).collect();
        for &a in &dirty {
            m.write_obj(a ^ 0x55, GuestAddress(a + 16)).unwrap();
        }
        let t = Instant::now();
        assert_eq!(sh.update(&m, &dirty[..4], &mut store).unwrap(), 4);
        let few = t.elapsed();
        let t = Instant::now();
        assert_eq!(sh.update(&m, &dirty, &mut store).unwrap(), 2044);
        let many = t.elapsed();
        let t = Instant::now();
        assert!(sh.full_check(&m).unwrap().is_empty());
        let full = t.elapsed();
        eprintln!(
            "256 MiB: build {build:?}, 4 dirty {few:?}, 2048 dirty {many:?}, full check {full:?}"
        );
    }

    /// The pages vm-memory's bitmap says were written since the last call,
    /// as the VMM harvests them.
    pub(crate) fn harvest(m: &GuestMem) -> Vec<u64> {
        let mut out = Vec::new();
        for r in m.iter() {
            let mmap: &vm_memory::mmap::MmapRegion<crate::write_log::WriteLog> = r;
            for (w, mut bits) in mmap.bitmap().take() {
                while bits != 0 {
                    let b = u64::from(bits.trailing_zeros());
                    out.push(r.start_addr().0 + (w as u64 * 64 + b) * PAGE);
                    bits &= bits - 1;
                }
            }
        }
        out
    }

    #[test]
    fn a_zero_start_and_the_dirty_list_equal_a_full_read() {
        let m = mem(0x30_0000, 0x8_0000);
        m.write_obj(7u8, GuestAddress(0x1234)).unwrap();
        m.write_slice(&page_of(3), GuestAddress(0x2f_f000)).unwrap();
        m.write_obj(9u64, GuestAddress((1 << 32) + 0x7_fff8))
            .unwrap();
        let mut store = PageStore::new();
        let mut lazy = Shadow::zeroed(&m).unwrap();
        let written = harvest(&m);
        assert_eq!(written, [0x1000, 0x2f_f000, (1 << 32) + 0x7_f000]);
        assert_eq!(lazy.update(&m, &written, &mut store).unwrap(), 3);
        assert_eq!(lazy, Shadow::build(&m, &mut store).unwrap());
        assert!(lazy.full_check(&m).unwrap().is_empty());
        // A write the list leaves out: only a full read sees it, which is
        // why --compare full reads all of RAM from the first checkpoint on.
        m.write_obj(1u8, GuestAddress(0x10_0000)).unwrap();
        let mut missed = Shadow::zeroed(&m).unwrap();
        missed.update(&m, &written, &mut store).unwrap();
        assert_eq!(missed.full_check(&m).unwrap(), [0x10_0000]);
    }

    #[test]
    fn snapshots_share_chunks_until_written() {
        let m = mem(0x40_0000, 0);
        let mut store = PageStore::new();
        let mut sh = Shadow::zeroed(&m).unwrap();
        m.write_slice(&page_of(1), GuestAddress(0x1000)).unwrap();
        sh.update(&m, &harvest(&m), &mut store).unwrap();
        let snap = sh.clone();
        assert!(sh.shares_chunk(&snap, 0x1000));
        // Rewriting a page with its content copies nothing.
        m.write_slice(&page_of(1), GuestAddress(0x1000)).unwrap();
        assert_eq!(sh.update(&m, &harvest(&m), &mut store).unwrap(), 0);
        assert!(sh.shares_chunk(&snap, 0x1000));
        // A change copies its chunk only; the snapshot keeps the old hash.
        m.write_slice(&page_of(2), GuestAddress(0x1000)).unwrap();
        sh.update(&m, &harvest(&m), &mut store).unwrap();
        assert!(!sh.shares_chunk(&snap, 0x1000));
        assert!(sh.shares_chunk(&snap, (CHUNK_PAGES * PAGE_SIZE) as u64));
        assert_eq!(snap.get(0x1000), Some(PageHash::of(&page_of(1))));
        assert_eq!(sh.get(0x1000), Some(PageHash::of(&page_of(2))));
        // Both stay live for the store; each shared chunk is read once.
        let mut live = Shadow::live_hashes([&sh, &snap]);
        live.sort();
        let mut want = vec![PageHash::of(&page_of(1)), PageHash::of(&page_of(2))];
        want.sort();
        assert_eq!(live, want);
        assert_eq!(sh.run(0x1000, 4).map(<[_]>::len), Some(4));
        assert_eq!(
            sh.run(((CHUNK_PAGES - 1) * PAGE_SIZE) as u64, 4)
                .map(<[_]>::len),
            Some(1),
            "a run ends at its chunk"
        );
        assert_eq!(
            sh.run(0x3f_f000, 9).map(<[_]>::len),
            Some(1),
            "and at RAM's end"
        );
        assert_eq!(sh.run(0x40_0000, 1), None);
    }

    /// Kernel page-table bytes of this process (`VmPTE`): they grow by 8
    /// bytes for every page of memory touched, read or written.
    fn page_table_bytes() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmPTE:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |k| k << 10)
    }

    #[test]
    fn a_16_gib_guest_costs_what_it_wrote() {
        // 16 GiB of guest RAM, mapped lazily: the zero start, updates and
        // snapshots must never touch the RAM nobody wrote (reading it all
        // would fault in 32 MiB of page tables and take seconds).
        let m = mem(3 << 30, 13 << 30);
        let before = page_table_bytes();
        let t = Instant::now();
        let mut store = PageStore::new();
        let mut sh = Shadow::zeroed(&m).unwrap();
        // 2,048 pages: 1,792 close together, 256 spread over all of RAM.
        for i in 0..2048u64 {
            let at = match i {
                0..1792 => (1 << 32) + i * 0x8000,
                _ => (5 << 30) + (i - 1792) * (45 << 20),
            };
            m.write_obj(i + 1, GuestAddress(at)).unwrap();
        }
        let dirty = harvest(&m);
        assert_eq!(dirty.len(), 2048);
        sh.update(&m, &dirty, &mut store).unwrap();
        let snaps: Vec<Shadow> = (0..100).map(|_| sh.clone()).collect();
        let live = Shadow::live_hashes(snaps.iter().chain([&sh]));
        assert_eq!(live.len(), 2048);
        // A write copies its chunk and group; the snapshots keep the old.
        m.write_obj(7u8, GuestAddress(10 << 30)).unwrap();
        sh.update(&m, &harvest(&m), &mut store).unwrap();
        assert_ne!(sh, snaps[0]);
        assert!(!sh.shares_chunk(&snaps[0], 10 << 30));
        assert!(sh.shares_chunk(&snaps[0], 12 << 30));
        assert_eq!(snaps[0].get(10 << 30), Some(PageHash::ZERO));
        assert_eq!(snaps[0], snaps[99]);
        let took = t.elapsed();
        let grew = page_table_bytes().saturating_sub(before);
        // Touched: 56 MiB and 256 scattered 2 MiB areas, 1.1 MiB of page
        // tables; all of RAM would be 32 MiB.
        assert!(grew < 4 << 20, "page tables grew by {grew} bytes");
        eprintln!("16 GiB: zero start, 2048 pages written, 100 snapshots: {took:?}");
    }

    #[test]
    fn page_sets_agree_with_a_plain_set() {
        use std::collections::BTreeSet;
        let mut rnd = xorshift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200 {
            let ranges: Vec<(u64, u64)> = (0..rnd(6))
                .map(|_| {
                    let s = rnd(64) * PAGE;
                    (s, s + rnd(16) * PAGE)
                })
                .collect();
            let set = PageSet::from_ranges(ranges.iter().copied()).unwrap();
            let mut model: BTreeSet<u64> = ranges
                .iter()
                .flat_map(|&(s, e)| (s..e).step_by(PAGE_SIZE))
                .collect();
            assert!(set.iter().eq(model.iter().copied()));
            assert_eq!(set.len(), model.len());
            assert!(set.ranges().windows(2).all(|w| w[0].1 < w[1].0));
            let (cs, ce) = (rnd(64) * PAGE, rnd(64) * PAGE);
            let cut: Vec<u64> = (0..rnd(10)).map(|_| rnd(80) * PAGE).collect();
            let rest = set.without(cs, ce, cut.iter().copied());
            model.retain(|p| !(cs..ce).contains(p) && !cut.contains(p));
            assert!(
                rest.iter().eq(model.iter().copied()),
                "{set:?} - {cs:#x}..{ce:#x} {cut:x?}"
            );
            assert_eq!(rest.len(), model.len());
            for p in (0..90).map(|i| i * PAGE) {
                assert_eq!(rest.contains(p), model.contains(&p));
                assert!(!rest.contains(p + 8), "not a page address");
            }
            assert_eq!(PageSet::from_pages(model.iter().copied()).unwrap(), rest);
        }
        assert_eq!(PageSet::from_pages([0x1008]), Err(0x1008));
    }
}
