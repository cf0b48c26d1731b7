//! Data that shows damage: a deterministic pattern over part of the kernel's
//! memory, inside its image (swapped when it is in the peer's region) and in
//! pages from its allocator, checked after every jump. Written and checked
//! in ring 3 through the control page's trip (`kjump_ring3_call`): in ring 0
//! the software KVM backend emulates every instruction (~2 µs each), and a
//! 1 MiB check took seconds; in ring 3 it takes about a millisecond.

use kjump_abi::abi::Role;
use kjump_abi::layout::PAGE_SIZE;

use super::cpu_state::{check_cpu, cpu_view};
use super::{fail, phys_read_u64, phys_write_u64};
use crate::mem;
use crate::relocate::kjump_ring3_call;

fn pattern_word(addr: u64, seed: u64) -> u64 {
    // splitmix64 of the address: every word differs, and a word moved to
    // another address no longer matches.
    let mut z = addr ^ seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const STATIC_PATTERN_WORDS: usize = 8192;
/// Part of the pattern lives in the kernel's .bss (which lies inside the
/// peer's region, so it is swapped out at every jump). The VMM's `flip-a`
/// and `flip-b` faults damage it, and its tests find it, by this symbol.
static mut STATIC_PATTERN: [u64; STATIC_PATTERN_WORDS] = [0; STATIC_PATTERN_WORDS];

pub(super) struct Pattern {
    seed: u64,
    ranges: [(u64, u64); 2],
    /// The control page whose trip runs fill and check in ring 3.
    cp: u64,
}

impl Pattern {
    pub(super) fn new(role: Role, heap_bytes: u64, avoid: (u64, u64), cp: u64) -> Self {
        let seed = if role == Role::A {
            0xa11c_e000
        } else {
            0xb0b0_0000
        };
        let s = (&raw mut STATIC_PATTERN) as u64;
        let static_range = (s, s + 8 * STATIC_PATTERN_WORDS as u64);
        let pages = heap_bytes.div_ceil(PAGE_SIZE);
        let heap = if pages == 0 {
            (0, 0)
        } else {
            match mem::alloc_pages(pages, u64::MAX, avoid) {
                Some(p) => (p, p + pages * PAGE_SIZE),
                None => fail(format_args!(
                    "{}: no room for a {heap_bytes}-byte pattern",
                    role.name()
                )),
            }
        };
        let p = Self {
            seed,
            ranges: [static_range, heap],
            cp,
        };
        // The first trip to ring 3 also shows that the trip puts back what
        // it changes.
        let before = cpu_view();
        p.in_ring3(pattern_fill_ring3);
        let after = cpu_view();
        if after != before {
            check_cpu(role, &before);
            fail(format_args!(
                "{}: self-check: the ring-3 trip changed the CPU state",
                role.name()
            ));
        }
        p
    }

    /// Every word of the pattern: (address, value).
    fn words(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges
            .iter()
            .flat_map(|&(lo, hi)| (lo..hi).step_by(8))
            .map(|a| (a, pattern_word(a, self.seed)))
    }

    pub(super) fn bytes(&self) -> u64 {
        self.ranges.iter().map(|(l, h)| h - l).sum()
    }

    /// Runs `f(&self)` in ring 3.
    fn in_ring3(&self, f: extern "sysv64" fn(u64) -> u64) -> u64 {
        // SAFETY: `cp` is this kernel's control page, set up by
        // `setup_control_pages` (relocation code, user-accessible identity
        // map, ring-3 tables) before any Pattern exists; interrupts are off;
        // `f` is one of the `pattern_*_ring3` functions, which touch only
        // the pattern's words (this kernel's own pages) and `self`, alive
        // for the call.
        unsafe { kjump_ring3_call(self.cp, f, self as *const Self as u64) }
    }

    pub(super) fn check(&self, role: Role) {
        let bad = self.in_ring3(pattern_check_ring3);
        if bad != 0 {
            let w = pattern_word(bad, self.seed);
            fail(format_args!(
                "{}: self-check: pattern damaged at {bad:#x}: expected {w:#018x}, found {:#018x}",
                role.name(),
                phys_read_u64(bad)
            ));
        }
    }
}

/// Ring 3: writes the pattern of the `Pattern` at `p`.
extern "sysv64" fn pattern_fill_ring3(p: u64) -> u64 {
    // SAFETY: `p` is the `&Pattern` that `Pattern::in_ring3` passed.
    let p = unsafe { &*(p as *const Pattern) };
    p.words().for_each(|(a, w)| phys_write_u64(a, w));
    0
}

/// Ring 3: the address of the first damaged word of the `Pattern` at `p`,
/// or 0 (no pattern word is at address 0).
extern "sysv64" fn pattern_check_ring3(p: u64) -> u64 {
    // SAFETY: `p` is the `&Pattern` that `Pattern::in_ring3` passed.
    let p = unsafe { &*(p as *const Pattern) };
    p.words()
        .find(|&(a, w)| phys_read_u64(a) != w)
        .map_or(0, |(a, _)| a)
}
