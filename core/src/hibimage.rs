//! The host side of the hibernation image (`kjump_abi::hibimage`, written
//! by kernel B onto the virtio-blk disk; the crash scenario's vmcore is one
//! of kind vmcore): read it from the disk file
//! checking its magic, version, size and every range's checksum, and
//! check it page by page against the oracle's record of the kernel it
//! claims to be (what kernel A left at its suspend), before anything
//! restores it.
//!
//! The image holds A's RAM as it lay while B ran: every page of A's
//! logical view sits where A's kimage parked it ([`Oracle::parked_at`]),
//! so the check reads each view page there and names the first bytes that
//! differ, as the oracle does at a resume.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use kjump_abi::hibimage::{Checksum, Header, ImageError, Range};

use crate::checkpoint::Kernel;
use crate::oracle::{Oracle, diff_ranges, hexdump};
use crate::pages::{PAGE_SIZE, Page, PageHash};
use crate::report::{At, ByteRange, Mismatch, MismatchKind};

const PAGE: u64 = PAGE_SIZE as u64;
/// The file is read in chunks of this size.
const CHUNK: usize = 1 << 20;

/// Why the image on the disk cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskImageError {
    /// The disk file could not be read.
    #[error("cannot read the disk image {}", .path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    /// The image is not well formed or fails a checksum.
    #[error("the image on the disk is refused: {0}")]
    Image(ImageError),
}

/// A verified image in a disk file.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    /// The header pages (ELF header, program headers, note).
    header: Vec<u8>,
    entry: u64,
    ranges: Vec<Range>,
    /// A vmcore's `struct elf_prstatus`.
    prstatus: Option<Vec<u8>>,
}

impl DiskImage {
    /// Opens the resumable image at the start of the disk file `path` and
    /// verifies it: headers, size, every range's checksum.
    pub fn open(path: &Path) -> Result<Self, DiskImageError> {
        Self::open_kind(path, false, true)
    }

    /// Opens and verifies the vmcore at the start of the disk file `path`
    /// (the crash scenario's: not resumable, with an `NT_PRSTATUS` note).
    pub fn open_vmcore(path: &Path) -> Result<Self, DiskImageError> {
        Self::open_kind(path, true, true)
    }

    /// Opens the vmcore at the start of `path` checking its headers and
    /// size but not its ranges' checksums: to find the pages of a range
    /// whose checksum [`DiskImage::open_vmcore`] refused.
    pub fn open_vmcore_unchecked(path: &Path) -> Result<Self, DiskImageError> {
        Self::open_kind(path, true, false)
    }

    fn open_kind(path: &Path, vmcore: bool, sums: bool) -> Result<Self, DiskImageError> {
        let read = |source| DiskImageError::Read {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(read)?;
        let size = file.metadata().map_err(read)?.len();
        let mut first = vec![
            0u8;
            (size.min(kjump_abi::hibimage::header_size(
                kjump_abi::hibimage::MAX_RANGES
            ))) as usize
        ];
        file.read_exact_at(&mut first, 0).map_err(read)?;
        let (h, prstatus) = if vmcore {
            Header::parse_vmcore(&first).map(|(h, p)| (h, Some(p.to_vec())))
        } else {
            Header::parse(&first).map(|h| (h, None))
        }
        .map_err(DiskImageError::Image)?;
        h.check_size(size).map_err(DiskImageError::Image)?;
        let ranges: Vec<Range> = h.ranges().collect();
        let entry = h.entry;
        let mut buf = vec![0u8; CHUNK];
        for (i, r) in ranges.iter().enumerate().filter(|_| sums) {
            let mut sum = Checksum::new();
            let base = h.data_offset(i);
            let mut off = 0;
            while off < r.len {
                let n = (r.len - off).min(CHUNK as u64) as usize;
                file.read_exact_at(&mut buf[..n], base + off)
                    .map_err(read)?;
                sum.update(&buf[..n]);
                off += n as u64;
            }
            h.check_range(i, sum.value())
                .map_err(DiskImageError::Image)?;
        }
        let header_len = kjump_abi::hibimage::header_size(ranges.len()) as usize;
        first.truncate(header_len);
        Ok(Self {
            file,
            header: first,
            entry,
            ranges,
            prstatus,
        })
    }

    /// Where the image is to be resumed.
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// The ranges of memory it holds.
    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    /// Pages of memory it holds.
    pub fn pages(&self) -> u64 {
        self.ranges.iter().map(|r| r.len / PAGE).sum()
    }

    /// The image's headers.
    pub fn header_bytes(&self) -> &[u8] {
        &self.header
    }

    /// A vmcore's `struct elf_prstatus` (`None` for a resumable image).
    pub fn prstatus(&self) -> Option<&[u8]> {
        self.prstatus.as_deref()
    }

    /// The page of memory at `addr` as the image holds it; `None` when the
    /// image does not hold it.
    pub fn page(&self, addr: u64) -> io::Result<Option<Box<Page>>> {
        let mut off = kjump_abi::hibimage::header_size(self.ranges.len());
        for r in &self.ranges {
            if (r.start..r.start + r.len).contains(&addr) {
                let mut p = Box::new([0u8; PAGE_SIZE]);
                self.file
                    .read_exact_at(&mut p[..], off + (addr & !(PAGE - 1)) - r.start)?;
                return Ok(Some(p));
            }
            off += r.len;
        }
        Ok(None)
    }
}

/// What [`check_against_record`] compared.
#[derive(Debug, Default)]
pub struct ImageCheck {
    pub pages_compared: u64,
    /// Pages of the view the check was told not to compare.
    pub pages_excused: u64,
    pub mismatches: Vec<Mismatch>,
}

/// Checks every page of kernel `k`'s view as the oracle recorded it at its
/// suspend against the image: each page where `k`'s kimage parked it.
/// `at` names the checkpoint the record is from. Pages missing from the
/// image, and pages that differ (with their byte ranges and a hexdump),
/// are memory mismatches of `k`.
pub fn check_against_record(
    image: &DiskImage,
    oracle: &Oracle,
    k: Kernel,
    found: &crate::GuestMem,
    at: &At,
) -> Result<ImageCheck, io::Error> {
    check_pages(image, oracle, k, found, at, "hibernation image", |home| {
        Some(oracle.parked_at(k, home))
    })
}

/// Checks every page of kernel `k`'s view as the oracle recorded it at its
/// suspend against `image` (a "`what`"), each page `home` where
/// `place(home)` says the image holds it; `None` excuses the page (counted
/// in `pages_excused`). A run of pages missing from the image is one
/// memory mismatch (its first page, and how many); a page that differs is
/// one with its byte ranges, a hexdump and the symbol.
pub fn check_pages(
    image: &DiskImage,
    oracle: &Oracle,
    k: Kernel,
    found: &crate::GuestMem,
    at: &At,
    what: &str,
    place: impl Fn(u64) -> Option<u64>,
) -> Result<ImageCheck, io::Error> {
    use crate::dump::RamSource;
    let mut out = ImageCheck::default();
    let Some((_, _, left)) = oracle.left(k, found) else {
        return Ok(out);
    };
    let Some(view) = oracle.record(k).view.as_ref() else {
        return Ok(out);
    };
    let symbols = oracle.symbols();
    let mut expected = Box::new([0u8; PAGE_SIZE]);
    // A run of pages missing from the image: (first home, its location,
    // the next home after the run, pages).
    let mut missing: Option<(u64, u64, u64, u64)> = None;
    let missing_mismatch = |(home, location, _, pages): (u64, u64, u64, u64)| Mismatch {
        at: at.clone(),
        kind: MismatchKind::Memory,
        name: Some(format!("{pages} page(s) missing from the {what}, from")),
        address: Some(home),
        location: Some(location),
        expected: format!("{pages} page(s)"),
        actual: format!("(not in the {what})"),
        ranges: Vec::new(),
        hexdump: None,
        symbol: symbols.and_then(|s| s.lookup(home)),
        note: Some(format!(
            "kernel {}'s pages [{home:#x}..{:#x}) ({pages} page(s), from {location:#x}) are not in the {what}",
            k.name(),
            home + pages * PAGE
        )),
    };
    for home in view.pages() {
        let Some(location) = place(home) else {
            out.pages_excused += 1;
            continue;
        };
        left.read_ram(home, &mut expected[..])
            .map_err(|e| io::Error::other(e.to_string()))?;
        out.pages_compared += 1;
        let Some(actual) = image.page(location)? else {
            missing = match missing {
                Some((h, l, next, n)) if next == home => Some((h, l, home + PAGE, n + 1)),
                other => {
                    if let Some(run) = other {
                        out.mismatches.push(missing_mismatch(run));
                    }
                    Some((home, location, home + PAGE, 1))
                }
            };
            continue;
        };
        if *actual == *expected {
            continue;
        }
        out.mismatches.push(page_mismatch(
            at,
            symbols,
            (home, location),
            &expected,
            &actual,
            format!(
                "the {what} holds kernel {}'s page {home:#x} (at {location:#x}) other than it was left",
                k.name()
            ),
        ));
    }
    if let Some(run) = missing {
        out.mismatches.push(missing_mismatch(run));
    }
    Ok(out)
}

/// A memory mismatch of the page `home` (looked for at `location`): its
/// differing byte ranges with their symbols, and a hexdump.
pub(crate) fn page_mismatch(
    at: &At,
    symbols: Option<&crate::symbols::Symbols>,
    (home, location): (u64, u64),
    expected: &Page,
    actual: &Page,
    note: String,
) -> Mismatch {
    let diff = diff_ranges(expected, actual);
    let ranges = diff
        .iter()
        .map(|&(s, e)| ByteRange {
            start: home + s as u64,
            end: home + e as u64,
            symbol: symbols.and_then(|sy| sy.lookup(home + s as u64)),
        })
        .collect();
    Mismatch {
        at: at.clone(),
        kind: MismatchKind::Memory,
        name: None,
        address: Some(home),
        location: Some(location),
        expected: PageHash::of(expected).to_string(),
        actual: PageHash::of(actual).to_string(),
        ranges,
        hexdump: Some(hexdump(home, expected, actual, &diff)),
        symbol: symbols.and_then(|s| s.lookup(home)),
        note: Some(note),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kjump_abi::hibimage::{checksum, header_size, write_headers};

    fn write_image(path: &Path, ranges: &[(u64, Vec<u8>)]) -> Vec<Range> {
        let rs: Vec<Range> = ranges
            .iter()
            .map(|(s, d)| Range {
                start: *s,
                len: d.len() as u64,
                checksum: checksum(d),
            })
            .collect();
        let mut img = vec![0u8; header_size(rs.len()) as usize];
        write_headers(&mut img, 0x20_0000, &rs).unwrap();
        for (_, d) in ranges {
            img.extend_from_slice(d);
        }
        std::fs::write(path, img).unwrap();
        rs
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("kjump-hibimage-{}-{name}", std::process::id()))
    }

    #[test]
    fn an_image_file_is_verified_and_read_by_page() {
        let p = tmp("ok");
        let data = (0..2 * PAGE_SIZE).map(|i| (i % 251) as u8).collect();
        write_image(&p, &[(0x1000, data), (0x9000, vec![7; PAGE_SIZE])]);
        let img = DiskImage::open(&p).unwrap();
        assert_eq!(img.entry(), 0x20_0000);
        assert_eq!(img.pages(), 3);
        let page = img.page(0x2000).unwrap().unwrap();
        assert_eq!(page[0], (PAGE_SIZE % 251) as u8);
        assert_eq!(img.page(0x9000).unwrap().unwrap()[5], 7);
        assert!(img.page(0x3000).unwrap().is_none());
        // A zero tail after the image (the rest of the disk) is fine.
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.extend_from_slice(&[0; 8192]);
        std::fs::write(&p, &bytes).unwrap();
        assert!(DiskImage::open(&p).is_ok());
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_flipped_byte_on_the_disk_names_the_range_and_checksums() {
        let p = tmp("flip");
        let rs = write_image(
            &p,
            &[(0x1000, vec![1; PAGE_SIZE]), (0x5000, vec![2; PAGE_SIZE])],
        );
        let mut bytes = std::fs::read(&p).unwrap();
        let at = header_size(2) as usize + PAGE_SIZE + 100;
        bytes[at] ^= 0x20;
        std::fs::write(&p, &bytes).unwrap();
        let e = DiskImage::open(&p).unwrap_err();
        match e {
            DiskImageError::Image(ImageError::RangeChecksum {
                index: 1,
                start: 0x5000,
                len: 0x1000,
                expected,
                found,
            }) => {
                assert_eq!(expected, rs[1].checksum);
                assert_ne!(found, expected);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            e.to_string()
                .starts_with("the image on the disk is refused: range 1 [0x5000..0x6000) checksum"),
            "{e}"
        );
        // Cut short: truncated.
        std::fs::write(&p, &bytes[..at]).unwrap();
        assert!(matches!(
            DiskImage::open(&p),
            Err(DiskImageError::Image(ImageError::Truncated {
                index: 1,
                ..
            }))
        ));
        // An empty disk is no image.
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        assert!(matches!(
            DiskImage::open(&p),
            Err(DiskImageError::Image(ImageError::NotElfCore))
        ));
        std::fs::remove_file(&p).unwrap();
    }
}
