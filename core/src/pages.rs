//! Guest RAM as hashes: a content-addressed store of 4 KiB pages and a
//! shadow that knows the current hash of every guest page.
//!
//! The shadow is built by one full read of RAM; after that each checkpoint
//! re-reads only the pages the dirty log reports ([`Shadow::update`]), so a
//! checkpoint costs what the guest wrote, not the size of RAM. The paranoid
//! mode re-reads everything ([`Shadow::full_check`]) and so also checks the
//! dirty log itself: a page that changed but was not reported is a failure.
//!
//! Guest memory is read with `VolatileSlice::copy_to`, which does not mark
//! vm-memory's dirty bitmap (that bitmap records the VMM's own writes).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

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
/// The store does not collect garbage below this many pages (16 MiB).
const MIN_GC_PAGES: usize = 4096;

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

/// The hashes of one RAM region's pages.
#[derive(Clone)]
struct Region {
    start: u64,
    hashes: Vec<PageHash>,
}

impl Region {
    fn end(&self) -> u64 {
        self.start + self.hashes.len() as u64 * PAGE
    }
}

/// The current hash of every guest RAM page.
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
    /// Reads all of guest RAM once, storing every page.
    pub fn build(mem: &GuestMem, store: &mut PageStore) -> Result<Self, PageError> {
        let mut buf = page_buffer(READ_BATCH);
        let mut regions = Vec::new();
        for (start, npages) in ram_layout(mem)? {
            let mut hashes = Vec::with_capacity(npages);
            while hashes.len() < npages {
                let n = (npages - hashes.len()).min(READ_BATCH);
                read_pages(mem, start + hashes.len() as u64 * PAGE, &mut buf[..n])?;
                hashes.extend(buf[..n].iter().map(|p| store.insert(p)));
            }
            regions.push(Region { start, hashes });
        }
        Ok(Self { regions })
    }

    fn locate(&self, addr: u64) -> Option<(usize, usize)> {
        if !addr.is_multiple_of(PAGE) {
            return None;
        }
        self.regions
            .iter()
            .enumerate()
            .find(|(_, r)| (r.start..r.end()).contains(&addr))
            .map(|(i, r)| (i, ((addr - r.start) / PAGE) as usize))
    }

    /// The current hash of the page at `addr`, if it is a page of RAM.
    pub fn get(&self, addr: u64) -> Option<PageHash> {
        self.locate(addr).map(|(r, i)| self.regions[r].hashes[i])
    }

    /// Re-reads the pages at `dirty` (page addresses, best sorted) and
    /// returns how many of them changed content.
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
            read_pages(mem, addr, &mut page)?;
            let h = store.insert(&page[0]);
            let slot = &mut self.regions[r].hashes[i];
            if *slot != h {
                *slot = h;
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
                .any(|(&(s, n), r)| s != r.start || n != r.hashes.len())
        {
            return Err(PageError::Layout);
        }
        let mut buf = page_buffer(READ_BATCH);
        let mut differ = Vec::new();
        for r in &self.regions {
            for (b, hashes) in r.hashes.chunks(READ_BATCH).enumerate() {
                let at = r.start + (b * READ_BATCH) as u64 * PAGE;
                read_pages(mem, at, &mut buf[..hashes.len()])?;
                for (i, (p, h)) in buf.iter().zip(hashes).enumerate() {
                    if PageHash::of(p) != *h {
                        differ.push(at + i as u64 * PAGE);
                    }
                }
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

    /// The RAM regions: start address and the hash of each page.
    pub fn regions(&self) -> impl Iterator<Item = (u64, &[PageHash])> + '_ {
        self.regions.iter().map(|r| (r.start, r.hashes.as_slice()))
    }

    /// Every hash the shadow refers to (for [`PageStore::gc`]).
    pub fn hashes(&self) -> impl Iterator<Item = PageHash> + '_ {
        self.regions.iter().flat_map(|r| r.hashes.iter().copied())
    }

    /// Pages of RAM.
    pub fn len(&self) -> usize {
        self.regions.iter().map(|r| r.hashes.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Instant;
    use vm_memory::Bytes;

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
}
