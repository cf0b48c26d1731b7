//! The dump reader (`kjump inspect`, `diff`, `resume` on a file someone
//! hands over): `read_dump_bytes`, which checks exactly what `read_dump`
//! checks, then everything a command does with a dump that reads.
//!
//! Input: a dump image; or a 0 byte and a dump image whose KJUMP note
//! checksum is recomputed first, so that mutations of the note reach its
//! decoder instead of all failing the checksum.
//!
//! Asserts, for a dump that reads: RAM ranges are page-aligned, non-empty,
//! sorted and disjoint; every page of every range reads (and a page outside
//! them does not); `nonzero_pages` counts at most the pages a range has;
//! `inspect` and `inspect_json` work; a dump diffed with itself differs in
//! nothing; written out again (`write_dump`, from the dump itself) it reads
//! back with the same metadata, vCPU state, resume record, ranges and
//! bytes. Errors are one line.
#![no_main]

use std::path::Path;

use kjump_core::dump::{
    Dump, DumpInput, diff, inspect, inspect_json, read_dump, read_dump_bytes, write_dump,
};
use kjump_fuzz::fix_kjump_checksum;
use libfuzzer_sys::fuzz_target;

const PAGE: u64 = 4096;
/// Pages read per range: its first and last few.
const PAGES_READ: u64 = 4;
/// Dumps with at most this much RAM are also rewritten and read back (the
/// writer reads every page).
const MAX_REWRITE: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let bytes = match data.split_first() {
        Some((0, rest)) => {
            let mut b = rest.to_vec();
            fix_kjump_checksum(&mut b);
            b
        }
        _ => data.to_vec(),
    };
    let d = match read_dump_bytes(bytes, Path::new("fuzz.core")) {
        Ok(d) => d,
        Err(e) => {
            assert!(!e.to_string().contains('\n'), "{e}");
            return;
        }
    };
    let ranges = d.ranges();
    for &(start, len) in &ranges {
        assert!(
            start % PAGE == 0 && len % PAGE == 0 && len > 0,
            "{start:#x}+{len:#x}"
        );
        assert!(start.checked_add(len).is_some());
    }
    for w in ranges.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "ranges overlap or are unsorted");
    }
    for &(start, len) in &ranges {
        let pages = len / PAGE;
        for i in (0..pages.min(PAGES_READ)).chain(pages.saturating_sub(PAGES_READ)..pages) {
            let addr = start + i * PAGE;
            assert!(d.read_page(addr).is_some(), "page {addr:#x} of a range");
            assert!(d.read_page(addr + PAGE - 1).is_some());
        }
        let outside = |a: u64| !ranges.iter().any(|&(s, l)| a >= s && a - s < l);
        for a in [start.wrapping_sub(1), start + len] {
            if outside(a) {
                assert!(d.read_page(a).is_none(), "{a:#x} is outside RAM");
            }
        }
    }
    let counts = d.nonzero_pages().expect("an in-memory dump reads");
    assert_eq!(counts.len(), ranges.len());
    for (c, &(_, len)) in counts.iter().zip(&ranges) {
        assert!(*c <= len / PAGE);
    }
    assert!(!inspect(&d).is_empty());
    let _ = inspect_json(&d).to_string();
    let same = diff(&d, &d, None);
    assert!(!same.differs(), "a dump differs from itself: {same}");
    if ranges.iter().map(|r| r.1).sum::<u64>() <= MAX_REWRITE {
        rewrite(&d);
    }
});

/// Rewritten from itself, a dump reads back the same.
fn rewrite(d: &Dump) {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("kjump-fuzz-{}.core", std::process::id()));
    let m = d.meta();
    let input = DumpInput {
        state: d.state(),
        id: &m.id,
        jump_back_entry: m.jump_back_entry,
        resumable: m.resumable,
        memory: d,
        kernel_name: &m.kernel_name,
        mem_size: m.mem_size,
        kjump_version: &m.kjump_version,
        resume: d.resume(),
    };
    write_dump(&path, &input).expect("a dump that reads can be written");
    let back = read_dump(&path).expect("a rewritten dump reads");
    std::fs::remove_file(&path).expect("remove the rewritten dump");
    let m2 = back.meta();
    assert_eq!(
        (m2.id, m2.jump_back_entry, m2.resumable, m2.mem_size),
        (m.id, m.jump_back_entry, m.resumable, m.mem_size)
    );
    assert_eq!(
        (&m2.kernel_name, &m2.kjump_version),
        (&m.kernel_name, &m.kjump_version)
    );
    assert_eq!(back.state(), d.state());
    assert_eq!(back.resume(), d.resume());
    assert_eq!(back.ranges(), d.ranges());
    let changed = diff(d, &back, None);
    assert!(!changed.differs(), "rewriting changed the dump: {changed}");
}
