//! The kimage indirection list, in Linux's format (`include/linux/kexec.h`,
//! `kernel/kexec_core.c`): a chain of 64-bit entries, each a page-aligned
//! physical address ORed with one flag. `IND_DESTINATION` sets where the
//! next source pages go, each `IND_SOURCE` is one page copied (or, with
//! preserved context, swapped) to the current destination, which then
//! advances by a page; `IND_INDIRECTION` continues the list in another page;
//! `IND_DONE` ends it. The list starts at the `head` entry, which is itself
//! an `IND_INDIRECTION` entry.
//!
//! Kernel A builds the list with [`Builder`]; the relocation code and the VMM
//! walk it ([`walk`]), the VMM on untrusted guest memory.

use crate::layout::PAGE_SIZE;

pub const IND_DESTINATION: u64 = 0x1;
pub const IND_INDIRECTION: u64 = 0x2;
pub const IND_DONE: u64 = 0x4;
pub const IND_SOURCE: u64 = 0x8;
/// Entries per indirection page; the last slot is kept for the link.
pub const ENTRIES_PER_PAGE: u64 = PAGE_SIZE / 8;

const FLAGS: u64 = IND_DESTINATION | IND_INDIRECTION | IND_DONE | IND_SOURCE;

/// One swapped (or copied) page: `dest` is where the image runs, `src` the
/// page that holds the image before the jump (and the old content after).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pair {
    pub dest: u64,
    pub src: u64,
}

/// Why a list could not be walked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// An entry could not be read at this physical address.
    Unreadable(u64),
    /// More than the allowed number of entries: a loop, or garbage.
    TooLong(usize),
    /// An entry with no flag or more than one flag.
    BadEntry { at: u64, entry: u64 },
    /// A source entry before any destination entry.
    NoDestination { at: u64 },
    /// The destination advanced past the end of the address space.
    Overflow { at: u64 },
}

impl core::fmt::Display for WalkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Unreadable(a) => write!(f, "indirection entry at {a:#x} is outside guest RAM"),
            Self::TooLong(n) => write!(f, "indirection list longer than {n} entries (a loop?)"),
            Self::BadEntry { at, entry } => {
                write!(
                    f,
                    "indirection entry {entry:#x} at {at:#x} has no single valid flag"
                )
            }
            Self::NoDestination { at } => {
                write!(f, "source entry at {at:#x} comes before any destination")
            }
            Self::Overflow { at } => write!(f, "destination overflows at entry {at:#x}"),
        }
    }
}

/// Walks the list starting at `head`, reading entries with `read` (physical
/// address → u64, `None` when outside RAM) and calling `visit` for every
/// page pair, at most `max_entries` entries. Returns the number of pairs.
pub fn walk(
    head: u64,
    max_entries: usize,
    mut read: impl FnMut(u64) -> Option<u64>,
    mut visit: impl FnMut(Pair),
) -> Result<usize, WalkError> {
    let mut entry = head;
    let mut at = 0u64; // where `entry` was read from (0: the head)
    let mut ptr: Option<u64> = None; // next entry to read
    let mut dest: Option<u64> = None;
    let mut pairs = 0usize;
    for _ in 0..=max_entries {
        let addr = entry & !(PAGE_SIZE - 1);
        match entry & FLAGS {
            IND_DONE => return Ok(pairs),
            IND_INDIRECTION => ptr = Some(addr),
            IND_DESTINATION => dest = Some(addr),
            IND_SOURCE => {
                let d = dest.ok_or(WalkError::NoDestination { at })?;
                visit(Pair { dest: d, src: addr });
                pairs += 1;
                dest = Some(d.checked_add(PAGE_SIZE).ok_or(WalkError::Overflow { at })?);
            }
            // Linux skips 0 entries only when they end a page that was never
            // filled; in a list we built every slot is meaningful, and a zero
            // means a torn or hostile list.
            _ => return Err(WalkError::BadEntry { at, entry }),
        }
        let p = ptr.ok_or(WalkError::BadEntry { at, entry })?;
        at = p;
        entry = read(p).ok_or(WalkError::Unreadable(p))?;
        ptr = Some(p.checked_add(8).ok_or(WalkError::Unreadable(p))?);
    }
    Err(WalkError::TooLong(max_entries))
}

/// Where [`Builder`] gets indirection pages and writes entries.
pub trait ListMemory {
    /// A fresh page for entries, or `None` when out of memory.
    fn alloc_page(&mut self) -> Option<u64>;
    /// Stores one entry at a physical address.
    fn write_u64(&mut self, addr: u64, value: u64);
}

/// Builds an indirection list the way `kimage_add_entry` does.
#[derive(Debug)]
pub struct Builder {
    head: u64,
    /// Address of the next free slot, and of the page's last (link) slot.
    slot: Option<(u64, u64)>,
    next_dest: Option<u64>,
    pages: usize,
}

/// The builder ran out of indirection pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfPages;

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    pub const fn new() -> Self {
        Self {
            head: 0,
            slot: None,
            next_dest: None,
            pages: 0,
        }
    }

    fn add(&mut self, mem: &mut impl ListMemory, entry: u64) -> Result<(), OutOfPages> {
        let (slot, last) = match self.slot {
            Some((slot, last)) if slot != last => (slot, last),
            prev => {
                let page = mem.alloc_page().ok_or(OutOfPages)?;
                self.pages += 1;
                match prev {
                    None => self.head = page | IND_INDIRECTION,
                    Some((link, _)) => mem.write_u64(link, page | IND_INDIRECTION),
                }
                (page, page + PAGE_SIZE - 8)
            }
        };
        mem.write_u64(slot, entry);
        self.slot = Some((slot + 8, last));
        Ok(())
    }

    /// Adds one page: `src` goes to `dest`. Emits a destination entry only
    /// when `dest` does not follow the previous page.
    pub fn add_page(
        &mut self,
        mem: &mut impl ListMemory,
        dest: u64,
        src: u64,
    ) -> Result<(), OutOfPages> {
        debug_assert!(dest.is_multiple_of(PAGE_SIZE) && src.is_multiple_of(PAGE_SIZE));
        if self.next_dest != Some(dest) {
            self.add(mem, dest | IND_DESTINATION)?;
        }
        self.add(mem, src | IND_SOURCE)?;
        self.next_dest = Some(dest + PAGE_SIZE);
        Ok(())
    }

    /// Ends the list and returns its head entry.
    pub fn finish(mut self, mem: &mut impl ListMemory) -> Result<(u64, usize), OutOfPages> {
        self.add(mem, IND_DONE)?;
        Ok((self.head, self.pages))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Mem {
        words: BTreeMap<u64, u64>,
        next_page: u64,
        pages_left: usize,
    }
    impl ListMemory for Mem {
        fn alloc_page(&mut self) -> Option<u64> {
            self.pages_left = self.pages_left.checked_sub(1)?;
            self.next_page += PAGE_SIZE;
            Some(self.next_page)
        }
        fn write_u64(&mut self, addr: u64, value: u64) {
            self.words.insert(addr, value);
        }
    }

    fn build(pairs: &[Pair], pages: usize) -> (Mem, Result<(u64, usize), OutOfPages>) {
        let mut m = Mem {
            next_page: 0x100_0000,
            pages_left: pages,
            ..Default::default()
        };
        let mut b = Builder::new();
        for p in pairs {
            if let Err(e) = b.add_page(&mut m, p.dest, p.src) {
                return (m, Err(e));
            }
        }
        let r = b.finish(&mut m);
        (m, r)
    }

    fn walk_all(m: &Mem, head: u64) -> Result<Vec<Pair>, WalkError> {
        let mut v = Vec::new();
        walk(head, 1 << 20, |a| m.words.get(&a).copied(), |p| v.push(p))?;
        Ok(v)
    }

    #[test]
    fn round_trips_a_list_over_several_indirection_pages() {
        // 3000 pages in two runs: needs ceil((3000 + 2 + 1) / 511) = 6 pages.
        let mut pairs: Vec<Pair> = (0..2000)
            .map(|i| Pair {
                dest: 0x10_0000 + i * PAGE_SIZE,
                src: 0x4000_0000 + i * PAGE_SIZE,
            })
            .collect();
        pairs.extend((0..1000).map(|i| Pair {
            dest: 0x800_0000 + i * PAGE_SIZE,
            src: 0x5000_0000 + i * PAGE_SIZE,
        }));
        let (m, r) = build(&pairs, 100);
        let (head, npages) = r.unwrap();
        assert_eq!(head & FLAGS, IND_INDIRECTION);
        assert_eq!(npages, 6);
        assert_eq!(walk_all(&m, head).unwrap(), pairs);
    }

    #[test]
    fn destination_only_when_not_contiguous() {
        let pairs = [
            Pair {
                dest: 0x1000,
                src: 0x9000,
            },
            Pair {
                dest: 0x2000,
                src: 0x7000,
            },
            Pair {
                dest: 0x5000,
                src: 0x8000,
            },
        ];
        let (m, r) = build(&pairs, 1);
        let (head, _) = r.unwrap();
        let first = head & !FLAGS;
        let entries: Vec<u64> = (0..6).map(|i| m.words[&(first + 8 * i)]).collect();
        assert_eq!(entries, [0x1001, 0x9008, 0x7008, 0x5001, 0x8008, IND_DONE]);
        assert_eq!(walk_all(&m, head).unwrap(), pairs);
    }

    #[test]
    fn empty_list_is_just_done() {
        let (m, r) = build(&[], 1);
        let (head, _) = r.unwrap();
        assert_eq!(walk_all(&m, head).unwrap(), []);
    }

    #[test]
    fn out_of_pages_is_reported() {
        let pairs: Vec<Pair> = (0..600)
            .map(|i| Pair {
                dest: i * PAGE_SIZE,
                src: (1 << 30) + i * PAGE_SIZE,
            })
            .collect();
        assert_eq!(build(&pairs, 1).1, Err(OutOfPages));
    }

    #[test]
    fn hostile_lists_are_refused() {
        // A loop: the page links to itself.
        let mut m = Mem::default();
        m.words.insert(0x1000, 0x5001);
        m.words.insert(0x1008, 0x1002);
        assert_eq!(walk_all(&m, 0x1002), Err(WalkError::TooLong(1 << 20)));
        // A pointer outside RAM.
        assert_eq!(
            walk_all(&m, 0xdead_0002),
            Err(WalkError::Unreadable(0xdead_0000))
        );
        // A source before any destination, and an entry with two flags.
        m.words.insert(0x3000, 0x4008);
        assert_eq!(
            walk_all(&m, 0x3002),
            Err(WalkError::NoDestination { at: 0x3000 })
        );
        m.words.insert(0x6000, 0x4009);
        assert!(matches!(
            walk_all(&m, 0x6002),
            Err(WalkError::BadEntry { at: 0x6000, .. })
        ));
        // A destination that would wrap the address space.
        m.words.insert(0x7000, !0xfff | IND_DESTINATION);
        m.words.insert(0x7008, 0x4008);
        m.words.insert(0x7010, 0x5008);
        assert_eq!(
            walk_all(&m, 0x7002),
            Err(WalkError::Overflow { at: 0x7008 })
        );
        // The head must be an indirection (or done) entry.
        assert!(matches!(
            walk_all(&m, 0x4008),
            Err(WalkError::NoDestination { .. })
        ));
    }
}
