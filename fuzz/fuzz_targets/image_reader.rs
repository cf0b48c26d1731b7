//! The hibernation image reader (`kjump inspect`, `diff`, `image extract`
//! and `image view` on a disk someone hands over): `kjump_abi`'s
//! `Header::parse_any` (kernel C's parser too) and `DiskImage::from_bytes`,
//! which checks exactly what reading a disk file checks, then everything a
//! command does with an image that reads.
//!
//! Input: an image; or a 0 byte and an image whose range and table
//! checksums are recomputed first, so that mutations reach the checks
//! behind them (ranges, kernel a's view through its kimage).
//!
//! Asserts, for an image that reads: ranges page-aligned, non-empty,
//! sorted, disjoint, within the file; the first and last page of every
//! range read; `copy_bytes` gives exactly the image's bytes; `inspect`
//! works; an image diffed with itself differs in nothing; kernel a's view,
//! when there is one, has aligned disjoint ranges whose pages read.
//! Errors are one line.
#![no_main]

use std::path::Path;

use kjump_abi::hibimage::Header;
use kjump_core::dump::{RamSource, diff_images, inspect_image, inspect_image_json};
use kjump_core::hibimage::DiskImage;
use kjump_fuzz::fix_image_checksums;
use libfuzzer_sys::fuzz_target;

const PAGE: u64 = 4096;

fn check_ranges(ranges: &[(u64, u64)]) {
    for &(start, len) in ranges {
        assert!(start % PAGE == 0 && len % PAGE == 0 && len > 0);
        assert!(start.checked_add(len).is_some());
    }
    for w in ranges.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "ranges overlap or are unsorted");
    }
}

fn read_ends(ram: &dyn RamSource) {
    let mut page = [0u8; PAGE as usize];
    for (start, len) in ram.ram_ranges() {
        for addr in [start, start + len - PAGE] {
            assert!(ram.read_ram(addr, &mut page).is_ok(), "page {addr:#x}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let bytes = match data.split_first() {
        Some((0, rest)) => {
            let mut b = rest.to_vec();
            fix_image_checksums(&mut b);
            b
        }
        _ => data.to_vec(),
    };
    let parsed = Header::parse_any(&bytes).map(|h| (h.entry, h.ranges().count()));
    let img = match DiskImage::from_bytes(bytes.clone(), Path::new("fuzz.img")) {
        Ok(i) => i,
        Err(e) => {
            assert!(!e.to_string().contains('\n'), "{e}");
            return;
        }
    };
    // What the host reads, C's parser reads the same way.
    assert_eq!(parsed, Ok((img.entry(), img.ranges().len())));
    let ranges = img.ram_ranges();
    check_ranges(&ranges);
    assert!(img.image_size() <= img.file_size());
    read_ends(&img);
    let mut out = Vec::new();
    img.copy_bytes(&mut out).expect("an in-memory image copies");
    assert_eq!(out[..], bytes[..img.image_size() as usize]);
    assert!(!inspect_image(&img).is_empty());
    let _ = inspect_image_json(&img).to_string();
    let _ = img.registers();
    assert!(!diff_images(&img, &img, None).differs());
    match img.view() {
        Ok(v) => {
            check_ranges(&v.ram_ranges());
            read_ends(&v);
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
    }
});
