//! The kimage a kernel reported before jumping, read back from guest memory
//! and checked: the VMM walks the indirection list itself (the guest is
//! untrusted; every entry is bounds-checked through vm-memory) to learn
//! where each kernel's pages are parked while its peer runs.

use std::collections::BTreeMap;

use kjump_abi::abi::{KimageArgs, Role};
use kjump_abi::control::{self, MODE_BACKUP, MODE_SWAP};
use kjump_abi::kimage::{self, Pair, WalkError};
use kjump_abi::layout::PAGE_SIZE;
use vm_memory::{Bytes, GuestAddress};

use crate::GuestMem;

/// Longest list the VMM walks: every page of a 64 GiB guest, twice.
pub const MAX_ENTRIES: usize = 1 << 25;

/// Why a reported kimage is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KimageError {
    /// The list is unreadable, loops or is malformed.
    #[error("guest protocol error: kimage indirection list: {0}")]
    Walk(String),
    /// A page named by the report or the list lies outside guest RAM.
    #[error("guest protocol error: kimage {what} {addr:#x} is outside guest RAM")]
    OutsideRam { what: &'static str, addr: u64 },
    /// Mode is not swap or backup, role is not a or b, or sizes are absurd.
    #[error("guest protocol error: kimage report: {0}")]
    Bad(&'static str),
}

/// A kimage as the VMM understands it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kimage {
    pub role: Role,
    pub head: u64,
    pub head2: u64,
    pub backup: bool,
    /// First control page and count.
    pub control: u64,
    pub control_pages: u64,
    /// The region the owner gives its peer (A) or runs in (B).
    pub peer_start: u64,
    pub peer_end: u64,
    /// Swap mode: destination → source. Backup mode: destination → the
    /// owner's save page (list 1).
    pub parked: BTreeMap<u64, u64>,
    /// Backup mode only: destination → the peer's save page (list 2).
    pub peer_parked: BTreeMap<u64, u64>,
}

fn in_ram(mem: &GuestMem, addr: u64, len: u64) -> bool {
    use vm_memory::GuestMemoryBackend;
    usize::try_from(len).is_ok_and(|len| len > 0 && mem.check_range(GuestAddress(addr), len))
}

/// Where byte `addr` is when its page moved as `moves` says.
fn moved(moves: &BTreeMap<u64, u64>, addr: u64) -> u64 {
    let page = addr & !(PAGE_SIZE - 1);
    moves.get(&page).map_or(addr, |p| p + (addr - page))
}

/// The most entries a list that ends can have in `mem`: a walk that reads
/// an entry address a second time goes round from there forever, so a list
/// that ends reads each 8-byte slot of RAM (and of the pages `parked` moves
/// elsewhere) at most once. A looping list is refused after that many
/// reads rather than after [`MAX_ENTRIES`], seconds in a small guest.
fn max_entries(mem: &GuestMem, parked: &BTreeMap<u64, u64>) -> usize {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let ram: u64 = mem.iter().map(|r| r.len()).sum();
    let slots = ram.saturating_add((parked.len() as u64).saturating_mul(PAGE_SIZE)) / 8;
    usize::try_from(slots).map_or(MAX_ENTRIES, |n| n.min(MAX_ENTRIES))
}

/// Walks the list at `head`, its entries read where `parked` says their
/// pages are (empty: in place).
fn walk(
    mem: &GuestMem,
    head: u64,
    parked: &BTreeMap<u64, u64>,
) -> Result<BTreeMap<u64, u64>, KimageError> {
    let mut map = BTreeMap::new();
    let mut outside = None;
    let read = |a: u64| {
        if !a.is_multiple_of(8) {
            return None;
        }
        mem.read_obj::<u64>(GuestAddress(moved(parked, a))).ok()
    };
    kimage::walk(head, max_entries(mem, parked), read, |p: Pair| {
        if outside.is_none() {
            if !in_ram(mem, p.dest, PAGE_SIZE) {
                outside = Some(("destination page", p.dest));
            } else if !in_ram(mem, p.src, PAGE_SIZE) {
                outside = Some(("source page", p.src));
            }
        }
        map.insert(p.dest, p.src);
    })
    .map_err(|e: WalkError| KimageError::Walk(e.to_string()))?;
    if let Some((what, addr)) = outside {
        return Err(KimageError::OutsideRam { what, addr });
    }
    Ok(map)
}

impl Kimage {
    /// Reads the kimage described by a `Kimage` harness message.
    pub fn read(mem: &GuestMem, args: &[u64; 8]) -> Result<Self, KimageError> {
        Self::read_parked(mem, args, &BTreeMap::new())
    }

    /// Reads the kimage of a kernel that is away, whose pages (the list's
    /// among them) are parked as `parked` says (home page -> where it is),
    /// e.g. kernel b's while a runs, for `kjump resume`.
    pub fn read_parked(
        mem: &GuestMem,
        args: &[u64; 8],
        parked: &BTreeMap<u64, u64>,
    ) -> Result<Self, KimageError> {
        // Kernels a and b jump with a kimage; c jumps with b's role.
        let role = match Role::from_u64(args[KimageArgs::ROLE]) {
            Some(r @ (Role::A | Role::B)) => r,
            _ => return Err(KimageError::Bad("unknown role")),
        };
        let backup = match args[KimageArgs::MODE] {
            MODE_SWAP => false,
            MODE_BACKUP => true,
            _ => return Err(KimageError::Bad("unknown mode")),
        };
        let control = args[KimageArgs::CONTROL];
        let control_pages = args[KimageArgs::CONTROL_PAGES];
        if !control.is_multiple_of(PAGE_SIZE)
            || !(control::PAGE_TABLES + 3..=4096).contains(&control_pages)
        {
            return Err(KimageError::Bad(
                "control pages misaligned or of absurd count",
            ));
        }
        if !in_ram(mem, control, control_pages * PAGE_SIZE) {
            return Err(KimageError::OutsideRam {
                what: "control page",
                addr: control,
            });
        }
        let (peer_start, peer_end) = (args[KimageArgs::PEER_START], args[KimageArgs::PEER_END]);
        if peer_start >= peer_end
            || !peer_start.is_multiple_of(PAGE_SIZE)
            || !peer_end.is_multiple_of(PAGE_SIZE)
        {
            return Err(KimageError::Bad("peer region empty or misaligned"));
        }
        // The VMM boots the restore kernel with `mem=` its end and checks
        // the peer's pages there: it must be RAM.
        if !in_ram(mem, peer_start, peer_end - peer_start) {
            return Err(KimageError::OutsideRam {
                what: "peer region",
                addr: peer_start,
            });
        }
        let head = args[KimageArgs::HEAD];
        let head2 = args[KimageArgs::HEAD2];
        let moves = parked;
        let parked = walk(mem, head, moves)?;
        let peer_parked = if backup {
            walk(mem, head2, moves)?
        } else {
            BTreeMap::new()
        };
        Ok(Self {
            role,
            head,
            head2,
            backup,
            control,
            control_pages,
            peer_start,
            peer_end,
            parked,
            peer_parked,
        })
    }

    /// The control pages, which change after the owner's checkpoint.
    pub fn control_range(&self) -> (u64, u64) {
        (self.control, self.control + self.control_pages * PAGE_SIZE)
    }

    /// Where the owner's page `home` is while the owner is away.
    pub fn owner_parked_at(&self, home: u64) -> u64 {
        moved(&self.parked, home)
    }

    /// Where the peer's page `home` is while the peer is away (the owner
    /// runs): the source page in swap mode, the peer's save page in backup
    /// mode.
    pub fn peer_parked_at(&self, home: u64) -> u64 {
        moved(self.peer_moves(), home)
    }

    /// Home → parked page of the owner's pages while it is away.
    pub fn owner_moves(&self) -> &BTreeMap<u64, u64> {
        &self.parked
    }

    /// Home → parked page of the peer's pages while the owner runs.
    pub fn peer_moves(&self) -> &BTreeMap<u64, u64> {
        if self.backup {
            &self.peer_parked
        } else {
            &self.parked
        }
    }

    /// Pages that hold the peer's (or a saved) content rather than the
    /// owner's: not part of the owner's view.
    pub fn parking_pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.parked
            .values()
            .chain(self.peer_parked.values())
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kjump_abi::kimage::{Builder, ListMemory};
    use vm_memory::GuestAddress;

    struct M<'a>(&'a GuestMem, u64);
    impl ListMemory for M<'_> {
        fn alloc_page(&mut self) -> Option<u64> {
            self.1 += PAGE_SIZE;
            Some(self.1)
        }
        fn write_u64(&mut self, addr: u64, value: u64) {
            self.0.write_obj(value, GuestAddress(addr)).unwrap();
        }
    }

    fn mem() -> GuestMem {
        GuestMem::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    fn args(head: u64) -> [u64; 8] {
        let mut a = [0u64; 8];
        a[KimageArgs::HEAD] = head;
        a[KimageArgs::CONTROL] = 0x80_0000;
        a[KimageArgs::CONTROL_PAGES] = 6;
        a[KimageArgs::PEER_START] = 0x10_0000;
        a[KimageArgs::PEER_END] = 0x20_0000;
        a
    }

    #[test]
    fn reads_a_list_the_guest_built() {
        let m = mem();
        let mut lm = M(&m, 0x90_0000);
        let mut b = Builder::new();
        for i in 0..600 {
            b.add_page(
                &mut lm,
                0x10_0000 + i * PAGE_SIZE,
                0xa0_0000 + i * PAGE_SIZE,
            )
            .unwrap();
        }
        let (head, _) = b.finish(&mut lm).unwrap();
        let k = Kimage::read(&m, &args(head)).unwrap();
        assert_eq!(k.parked.len(), 600);
        assert_eq!(k.owner_parked_at(0x10_1000), 0xa0_1000);
        assert_eq!(k.peer_parked_at(0x10_1000), 0xa0_1000);
        assert_eq!(k.owner_parked_at(0x5000), 0x5000);
        assert_eq!(k.owner_parked_at(0x10_1123), 0xa0_1123);
        assert_eq!(k.control_range(), (0x80_0000, 0x80_6000));
    }

    #[test]
    fn a_peer_region_outside_ram_is_refused() {
        let m = mem();
        let mut lm = M(&m, 0x90_0000);
        let mut b = Builder::new();
        b.add_page(&mut lm, 0x10_0000, 0xa0_0000).unwrap();
        let (head, _) = b.finish(&mut lm).unwrap();
        for end in [!(PAGE_SIZE - 1), 1 << 40] {
            let mut a = args(head);
            a[KimageArgs::PEER_END] = end;
            assert!(matches!(
                Kimage::read(&m, &a),
                Err(KimageError::OutsideRam {
                    what: "peer region",
                    ..
                })
            ));
        }
    }

    #[test]
    fn a_parked_list_is_read_where_it_is_parked() {
        let m = mem();
        let mut lm = M(&m, 0x90_0000);
        let mut b = Builder::new();
        b.add_page(&mut lm, 0x10_0000, 0xa0_0000).unwrap();
        let (head, _) = b.finish(&mut lm).unwrap();
        // The list's page moves away, and its home is overwritten.
        let list = head & !(PAGE_SIZE - 1);
        let mut page = [0u8; PAGE_SIZE as usize];
        m.read_slice(&mut page, GuestAddress(list)).unwrap();
        m.write_slice(&page, GuestAddress(0xc0_0000)).unwrap();
        m.write_slice(&[0xff; PAGE_SIZE as usize], GuestAddress(list))
            .unwrap();
        let want: BTreeMap<u64, u64> = [(0x10_0000, 0xa0_0000)].into();
        assert_ne!(
            Kimage::read(&m, &args(head)).ok().map(|k| k.parked),
            Some(want.clone())
        );
        let parked: BTreeMap<u64, u64> = [(list, 0xc0_0000)].into();
        let k = Kimage::read_parked(&m, &args(head), &parked).unwrap();
        assert_eq!(k.parked, want);
    }

    #[test]
    fn a_loop_is_refused_after_as_many_entries_as_ram_holds() {
        // Eight pages, every slot an entry: destinations, a link at the end
        // of each page, done in the very last slot. It ends, so it reads:
        // 4096 entries, all of RAM.
        let m = GuestMem::from_ranges(&[(GuestAddress(0), 0x8000)]).unwrap();
        for page in (0..0x8000).step_by(PAGE_SIZE as usize) {
            for slot in (page..page + PAGE_SIZE - 8).step_by(8) {
                m.write_obj(kimage::IND_DESTINATION, GuestAddress(slot))
                    .unwrap();
            }
            let link = (page + PAGE_SIZE) | kimage::IND_INDIRECTION;
            m.write_obj(link, GuestAddress(page + PAGE_SIZE - 8))
                .unwrap();
        }
        m.write_obj(kimage::IND_DONE, GuestAddress(0x7ff8)).unwrap();
        let mut a = args(kimage::IND_INDIRECTION);
        a[KimageArgs::CONTROL] = 0;
        // The peer region in this RAM.
        a[KimageArgs::PEER_START] = 0x1000;
        a[KimageArgs::PEER_END] = 0x2000;
        assert!(Kimage::read(&m, &a).unwrap().parked.is_empty());
        // The last page links back to the first: refused after 4096
        // entries (not MAX_ENTRIES, seconds of walking).
        m.write_obj(kimage::IND_INDIRECTION, GuestAddress(0x7ff8))
            .unwrap();
        let e = Kimage::read(&m, &a).unwrap_err();
        assert!(e.to_string().contains("longer than 4096 entries"), "{e}");
        // Parked pages hold entries too.
        let parked: BTreeMap<u64, u64> = [(0x10_0000, 0x1000)].into();
        let e = Kimage::read_parked(&m, &a, &parked).unwrap_err();
        assert!(e.to_string().contains("longer than 4608 entries"), "{e}");
    }

    #[test]
    fn hostile_reports_are_protocol_errors() {
        let m = mem();
        // A list that loops on itself.
        m.write_obj(0x3000u64 | kimage::IND_INDIRECTION, GuestAddress(0x3000))
            .unwrap();
        assert!(matches!(
            Kimage::read(&m, &args(0x3002)),
            Err(KimageError::Walk(_))
        ));
        // A list outside RAM.
        assert!(matches!(
            Kimage::read(&m, &args(0xdead_0000_0002)),
            Err(KimageError::Walk(_))
        ));
        // A source page outside RAM.
        m.write_obj(0x10_0000u64 | kimage::IND_DESTINATION, GuestAddress(0x4000))
            .unwrap();
        m.write_obj(0x7fff_f000u64 | kimage::IND_SOURCE, GuestAddress(0x4008))
            .unwrap();
        m.write_obj(kimage::IND_DONE, GuestAddress(0x4010)).unwrap();
        assert_eq!(
            Kimage::read(&m, &args(0x4002)),
            Err(KimageError::OutsideRam {
                what: "source page",
                addr: 0x7fff_f000
            })
        );
        // Control pages beyond RAM, a bad mode.
        let mut a = args(0x4002);
        a[KimageArgs::CONTROL] = 0xfff_f000;
        assert!(matches!(
            Kimage::read(&m, &a),
            Err(KimageError::OutsideRam {
                what: "control page",
                ..
            })
        ));
        let mut a = args(0x4002);
        a[KimageArgs::MODE] = 7;
        assert_eq!(Kimage::read(&m, &a), Err(KimageError::Bad("unknown mode")));
    }
}
