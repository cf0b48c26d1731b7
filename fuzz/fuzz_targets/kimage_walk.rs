//! The kimage indirection list: the guest-side walker on hostile memory, the
//! builder and walker together, and the VMM's read of a reported kimage
//! (`Kimage::read_parked`) over a small guest memory. The first input byte
//! picks which (0, 1, 2 modulo 3); the rest is described at each.
//!
//! Asserts: the walker reads at most `max_entries + 1` entries and never
//! yields more pairs than that, every pair is page-aligned, `Ok(n)` counts
//! the pairs it visited, `TooLong` comes only after the whole budget; a list
//! the builder made walks back to exactly the pairs given, in exactly the
//! reads it needs (one fewer is `TooLong`), and the builder runs out of
//! pages exactly when the list needs more than it has; the VMM accepts a
//! report exactly when a plain model of its rules over a plain copy of RAM
//! does, and then every page it names lies in RAM and its maps are the
//! model's.
#![no_main]

use std::collections::{BTreeMap, HashMap};

use kjump_abi::abi::KimageArgs;
use kjump_abi::control::{self, MODE_BACKUP, MODE_SWAP};
use kjump_abi::kimage::{Builder, ENTRIES_PER_PAGE, ListMemory, OutOfPages, Pair, WalkError, walk};
use kjump_abi::layout::PAGE_SIZE;
use kjump_core::kimage::{Kimage, KimageError};
use kjump_fuzz::{RAM, Ram};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => hostile_walk(rest),
        1 => {
            let _ = round_trip(rest);
        }
        _ => {
            let _ = vmm_read(rest);
        }
    }
});

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Input: `head` (8 bytes), `max_entries` (2 bytes), then the memory the
/// list is read from, at guest-physical `BASE`.
fn hostile_walk(data: &[u8]) {
    const BASE: u64 = 0x10_0000;
    if data.len() < 10 {
        return;
    }
    let head = u64_at(data, 0);
    let max = usize::from(u16::from_le_bytes([data[8], data[9]]));
    let mem = &data[10..];
    let mut reads = 0usize;
    let read = |a: u64| {
        reads += 1;
        let off = usize::try_from(a.checked_sub(BASE)?).ok()?;
        let b = mem.get(off..off.checked_add(8)?)?;
        Some(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let mut pairs = Vec::new();
    let r = walk(head, max, read, |p| pairs.push(p));
    assert!(reads <= max + 1, "{reads} reads with a budget of {max}");
    assert!(pairs.len() <= max + 1);
    for p in &pairs {
        assert_eq!((p.dest | p.src) % PAGE_SIZE, 0, "unaligned pair {p:x?}");
    }
    match r {
        Ok(n) => assert_eq!(n, pairs.len()),
        Err(WalkError::TooLong(n)) => {
            assert_eq!(n, max);
            assert_eq!(reads, max + 1, "TooLong before the budget was spent");
        }
        Err(e) => assert!(!e.to_string().contains('\n')),
    }
}

/// Guest memory for the builder: entries by address, pages from a pool.
struct Mem {
    words: HashMap<u64, u64>,
    next: u64,
    left: usize,
}

impl ListMemory for Mem {
    fn alloc_page(&mut self) -> Option<u64> {
        self.left = self.left.checked_sub(1)?;
        self.next += PAGE_SIZE;
        Some(self.next)
    }
    fn write_u64(&mut self, addr: u64, value: u64) {
        assert!(addr.is_multiple_of(8));
        assert!(
            self.words.insert(addr, value).is_none(),
            "slot {addr:#x} written twice"
        );
    }
}

/// Input: a page budget, then runs of pairs (destination page, count,
/// source page), destinations below 2^52 (physical addresses).
fn round_trip(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let budget = u.int_in_range(0..=5)?;
    let mut pairs = Vec::new();
    while !u.is_empty() && pairs.len() < 4000 {
        let dest = u.int_in_range(0..=(1u64 << 40) - 1)? * PAGE_SIZE;
        let src = u.int_in_range(0..=(1u64 << 40) - 1)? * PAGE_SIZE;
        let count: u64 = u.int_in_range(1..=700)?;
        pairs.extend((0..count).map(|i| Pair {
            dest: dest + i * PAGE_SIZE,
            src: src + i * PAGE_SIZE,
        }));
    }
    // What the list needs: a destination entry at each jump, a source
    // entry per page, the done entry; a page holds ENTRIES_PER_PAGE - 1
    // entries and the link to the next.
    let jumps = pairs
        .iter()
        .enumerate()
        .filter(|&(i, p)| i == 0 || pairs[i - 1].dest + PAGE_SIZE != p.dest)
        .count() as u64;
    let entries = jumps + pairs.len() as u64 + 1;
    let pages = entries.div_ceil(ENTRIES_PER_PAGE - 1);

    let mut m = Mem {
        words: HashMap::new(),
        next: 0xf000_0000_0000,
        left: budget,
    };
    let mut b = Builder::new();
    let built = pairs
        .iter()
        .try_for_each(|p| b.add_page(&mut m, p.dest, p.src))
        .and_then(|()| b.finish(&mut m));
    let (head, used) = match built {
        Ok(r) => r,
        Err(OutOfPages) => {
            assert!(
                pages > budget as u64,
                "out of pages with {budget} for {pages}"
            );
            return Ok(());
        }
    };
    assert_eq!(used as u64, pages);
    assert_eq!(
        m.words.len() as u64,
        entries + pages - 1,
        "entries and links"
    );

    // Every entry and link is read once; the head is not read.
    let reads = (entries + pages - 1) as usize;
    let mut got = Vec::new();
    let r = walk(head, reads, |a| m.words.get(&a).copied(), |p| got.push(p));
    assert_eq!(r, Ok(pairs.len()));
    assert_eq!(got, pairs);
    let r = walk(head, reads - 1, |a| m.words.get(&a).copied(), |_| {});
    assert_eq!(r, Err(WalkError::TooLong(reads - 1)));
    Ok(())
}

/// Where byte `addr` is when its page moved as `moves` says.
fn moved(moves: &BTreeMap<u64, u64>, addr: u64) -> u64 {
    let page = addr & !(PAGE_SIZE - 1);
    moves.get(&page).map_or(addr, |p| p + (addr - page))
}

/// The model: walks a list over the plain copy of RAM.
fn model_walk(
    ram: &Ram,
    head: u64,
    parked: &BTreeMap<u64, u64>,
) -> std::result::Result<BTreeMap<u64, u64>, WalkError> {
    // A list that ends reads each entry address once: no more than RAM
    // (and the parked pages) hold.
    let ram_bytes: u64 = RAM.iter().map(|r| r.1).sum();
    let slots = (ram_bytes + parked.len() as u64 * PAGE_SIZE) / 8;
    let mut map = BTreeMap::new();
    let read = |a: u64| {
        if !a.is_multiple_of(8) {
            return None;
        }
        ram.read_u64(moved(parked, a))
    };
    walk(head, slots as usize, read, |p| {
        map.insert(p.dest, p.src);
    })?;
    Ok(map)
}

/// Input: the eight kimage arguments (64 bytes), a count and that many
/// parked pages (home page, index of a RAM page), then guest RAM.
fn vmm_read(data: &[u8]) -> Result<()> {
    if data.len() < 64 {
        return Ok(());
    }
    let mut args = [0u64; 8];
    for (i, a) in args.iter_mut().enumerate() {
        *a = u64_at(data, 8 * i);
    }
    let mut u = Unstructured::new(&data[64..]);
    let ram_pages: Vec<u64> = RAM
        .iter()
        .flat_map(|&(s, l)| (s..s + l).step_by(PAGE_SIZE as usize))
        .collect();
    let mut parked = BTreeMap::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let home = u.arbitrary::<u64>()? & !(PAGE_SIZE - 1);
        parked.insert(home, *u.choose(&ram_pages)?);
    }
    let ram = Ram::new(u.take_rest());

    let got = Kimage::read_parked(&ram.mem, &args, &parked);

    // The model of read_parked's checks, in its order.
    let control = args[KimageArgs::CONTROL];
    let control_pages = args[KimageArgs::CONTROL_PAGES];
    let (peer_start, peer_end) = (args[KimageArgs::PEER_START], args[KimageArgs::PEER_END]);
    let bad = if args[KimageArgs::ROLE] > 1 {
        Some("role")
    } else if ![MODE_SWAP, MODE_BACKUP].contains(&args[KimageArgs::MODE]) {
        Some("mode")
    } else if !control.is_multiple_of(PAGE_SIZE)
        || !(control::PAGE_TABLES + 3..=4096).contains(&control_pages)
    {
        Some("control pages")
    } else if !Ram::contains(control, control_pages * PAGE_SIZE) {
        Some("control outside RAM")
    } else if peer_start >= peer_end
        || !peer_start.is_multiple_of(PAGE_SIZE)
        || !peer_end.is_multiple_of(PAGE_SIZE)
    {
        Some("peer region")
    } else if !Ram::contains(peer_start, peer_end - peer_start) {
        Some("peer outside RAM")
    } else {
        None
    };
    let backup = args[KimageArgs::MODE] == MODE_BACKUP;
    // Each list is walked, then its pages checked, list 1 first.
    let list = |head: u64| {
        let map = model_walk(&ram, head, &parked).map_err(|_| "walk")?;
        let outside = map
            .iter()
            .any(|(&d, &s)| !Ram::contains(d, PAGE_SIZE) || !Ram::contains(s, PAGE_SIZE));
        if outside {
            Err("page outside RAM")
        } else {
            Ok(map)
        }
    };
    let model = match bad {
        Some(why) => Err(why),
        None => list(args[KimageArgs::HEAD]).and_then(|one| {
            let two = if backup {
                list(args[KimageArgs::HEAD2])?
            } else {
                BTreeMap::new()
            };
            Ok((one, two))
        }),
    };
    match (got, model) {
        (Ok(k), Ok((one, two))) => {
            assert_eq!(k.parked, one);
            assert_eq!(k.peer_parked, two);
            assert_eq!(k.backup, backup);
            assert_eq!(
                k.control_range(),
                (control, control + control_pages * PAGE_SIZE)
            );
            for (&home, &at) in &one {
                assert_eq!(k.owner_parked_at(home + 5), at + 5);
            }
            for (&home, &at) in k.peer_moves() {
                assert_eq!(k.peer_parked_at(home), at);
            }
            assert_eq!(k.parking_pages().count(), one.len() + two.len());
        }
        (Err(e), Err(why)) => {
            let matches = match &e {
                KimageError::Bad(_) => {
                    ["role", "mode", "control pages", "peer region"].contains(&why)
                }
                KimageError::OutsideRam { what, .. } => {
                    why == match *what {
                        "control page" => "control outside RAM",
                        "peer region" => "peer outside RAM",
                        _ => "page outside RAM",
                    }
                }
                KimageError::Walk(_) => why == "walk",
            };
            assert!(matches, "VMM: {e}; model: {why}");
            assert!(!e.to_string().contains('\n'));
        }
        (got, model) => panic!("VMM: {got:?}\nmodel: {model:?}"),
    }
    Ok(())
}
