//! The hibernation image: what kernel B writes to the disk (kernel A's
//! memory as A left it), what the VMM checks against its record of A, and
//! what kernel C verifies and loads to bring A back. One definition, three
//! users.
//!
//! It is a resumable ELF core, as seed 2008's review asks ("a resumable
//! core file … an ELF note to mark an image as resumable"), laid out from
//! byte 0 of the disk:
//!
//! ```text
//! ELF64 header     ET_CORE, EM_X86_64, e_entry = A's re-entry point
//! program headers  PT_NOTE, then one PT_LOAD per range of A's memory
//!                  (p_paddr = p_vaddr = the range's address,
//!                  p_filesz = p_memsz, p_offset page-aligned)
//! PT_NOTE          "KJUMP" note of type NT_KJUMP_IMAGE: the image header
//!                  (magic "KJHIBIMG", version, flags with RESUMABLE, the
//!                  entry, the range count, the checksum of the table)
//!                  and the range table (address, length, checksum)
//! data             each range's bytes, in table order, from its p_offset
//! ```
//!
//! Like the seed 2007 header, the magic and version are what C checks
//! before it trusts anything else ("a magic value that has to be equal in
//! both kernels"); the per-range checksums are what it checks before it
//! jumps. The checksum ([`Checksum`]) folds 64-bit words through a
//! bijective step, so any change confined to one word always changes it.

use crate::elf::{EM_X86_64, PT_LOAD};
pub use crate::elf::{ET_CORE, PT_NOTE};
use crate::layout::PAGE_SIZE;
/// Owner of the image note.
pub const NOTE_NAME: &[u8; 6] = b"KJUMP\0";
/// Type of the image note ("KJ" and note number 2; the dumps' note is 1).
pub const NT_KJUMP_IMAGE: u32 = 0x4b4a_0002;
/// The image header's magic.
pub const MAGIC: [u8; 8] = *b"KJHIBIMG";
/// The image layout version this code writes and reads.
pub const VERSION: u32 = 1;
/// `flags`: the image can be resumed at its entry.
pub const FLAG_RESUMABLE: u32 = 1;
/// `flags`: the image is a vmcore (the crash scenario: a crashed kernel's
/// memory, for the debugger, never resumed; its entry is where the kernel
/// died). A "CORE" `NT_PRSTATUS` note with the kernel's registers follows
/// the KJUMP note in the PT_NOTE segment, within the header pages (see
/// [`crate::vmcore`]).
pub const FLAG_VMCORE: u32 = 2;
/// Most ranges an image may have (A's memory is a few runs of pages).
pub const MAX_RANGES: usize = 64;

const EHDR: usize = 64;
const PHDR: usize = 56;
/// Note header: namesz, descsz, type; then the name padded to 8.
const NOTE_HDR: usize = 12 + 8;
/// The image header in the note: magic, version, flags, entry, ranges,
/// reserved, table checksum.
const IMAGE_HDR: usize = 8 + 4 + 4 + 8 + 4 + 4 + 8;
/// One range entry: address, length, checksum.
const RANGE: usize = 24;
/// A vmcore's "CORE" note: header, "CORE\0" padded to 8, the prstatus.
const CORE_NOTE: usize = 12 + 8 + crate::vmcore::PRSTATUS_SIZE;

/// One range of memory in the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// Guest-physical address (page-aligned).
    pub start: u64,
    /// Bytes (whole pages).
    pub len: u64,
    /// [`Checksum`] of the bytes.
    pub checksum: u64,
}

/// Why an image is not a usable hibernation image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// Fewer bytes than the headers need.
    TooShort { need: u64, have: u64 },
    /// Not an ELF64 little-endian x86_64 core.
    NotElfCore,
    /// No KJUMP image note where the first program header points.
    NoNote,
    /// The image header's magic is not [`MAGIC`].
    BadMagic([u8; 8]),
    /// Another layout version.
    Version(u32),
    /// Not marked resumable.
    NotResumable,
    /// Not marked a vmcore, or without its `NT_PRSTATUS` note.
    NotVmcore,
    /// More ranges than [`MAX_RANGES`], or none.
    RangeCount(u64),
    /// The range table does not match its checksum.
    TableChecksum { expected: u64, found: u64 },
    /// Range `index` is not page-aligned, overlaps the one before, or its
    /// PT_LOAD disagrees with the table.
    BadRange { index: usize },
    /// The data of range `index` ends beyond the image.
    Truncated { index: usize, end: u64, size: u64 },
    /// The data of range `index` does not match its checksum.
    RangeChecksum {
        index: usize,
        start: u64,
        len: u64,
        expected: u64,
        found: u64,
    },
}

impl core::fmt::Display for ImageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::TooShort { need, have } => {
                write!(f, "image too short: {have} bytes, the headers need {need}")
            }
            Self::NotElfCore => write!(f, "not an ELF64 x86_64 core file"),
            Self::NoNote => write!(f, "no KJUMP image note"),
            Self::BadMagic(m) => write!(f, "wrong magic {m:02x?} (expected \"KJHIBIMG\")"),
            Self::Version(v) => write!(f, "image version {v}, this kernel reads {VERSION}"),
            Self::NotResumable => write!(f, "the image is not marked resumable"),
            Self::NotVmcore => write!(f, "the image is not a vmcore with an NT_PRSTATUS note"),
            Self::RangeCount(n) => write!(f, "{n} ranges (1 to {MAX_RANGES} allowed)"),
            Self::TableChecksum { expected, found } => write!(
                f,
                "range table checksum {found:#018x}, the header says {expected:#018x}"
            ),
            Self::BadRange { index } => write!(f, "range {index} is malformed"),
            Self::Truncated { index, end, size } => write!(
                f,
                "image truncated: range {index} ends at byte {end}, the image has {size}"
            ),
            Self::RangeChecksum {
                index,
                start,
                len,
                expected,
                found,
            } => write!(
                f,
                "range {index} [{start:#x}..{:#x}) checksum {found:#018x}, the table says {expected:#018x}",
                start + len
            ),
        }
    }
}

/// The image checksum: 64-bit little-endian words `w` folded as
/// `h = rotl((h ^ w) * K, 23)`. Each step is a bijection of `h`, so two
/// inputs of the same length that differ in one word always differ in
/// the result. Fed in any split of whole words.
#[derive(Clone, Copy, Debug)]
pub struct Checksum(u64);

impl Checksum {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;

    pub const fn new() -> Self {
        Self(0x6b6a_756d_7068_6962)
    }

    /// Feeds `bytes` (a multiple of 8 long).
    pub fn update(&mut self, bytes: &[u8]) {
        debug_assert!(bytes.len().is_multiple_of(8));
        for w in bytes.chunks_exact(8) {
            let w = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            self.0 = (self.0 ^ w).wrapping_mul(Self::K).rotate_left(23);
        }
    }

    /// Feeds one word.
    pub fn update_word(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(Self::K).rotate_left(23);
    }

    pub const fn value(&self) -> u64 {
        self.0
    }
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

/// The checksum of `bytes` (a multiple of 8 long).
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut c = Checksum::new();
    c.update(bytes);
    c.value()
}

/// The checksum of a range table (what the image header's
/// `table checksum` holds).
pub fn table_checksum(ranges: impl Iterator<Item = Range>) -> u64 {
    let mut c = Checksum::new();
    for r in ranges {
        c.update_word(r.start);
        c.update_word(r.len);
        c.update_word(r.checksum);
    }
    c.value()
}

/// Bytes of the headers (ELF header, program headers, note) of an image
/// of `n` ranges, rounded up to a page: where the first range's data
/// starts.
pub const fn header_size(n: usize) -> u64 {
    let raw = EHDR + (1 + n) * PHDR + NOTE_HDR + IMAGE_HDR + n * RANGE;
    (raw as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE
}

/// Where each range's data starts: after the headers, one after the other.
pub fn data_offset(ranges: &[Range], index: usize) -> u64 {
    header_size(ranges.len()) + ranges[..index].iter().map(|r| r.len).sum::<u64>()
}

fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}
fn get16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn get32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn get64(b: &[u8], o: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(w)
}

/// Writes the headers of an image of `ranges` (checksums filled in)
/// entered at `entry` into `out`, which must hold [`header_size`] bytes;
/// returns that size. Zero-fills the rest of the header pages.
pub fn write_headers(out: &mut [u8], entry: u64, ranges: &[Range]) -> Result<u64, ImageError> {
    write_any_headers(out, entry, ranges, None)
}

/// Writes the headers of a vmcore ([`FLAG_VMCORE`]) of `ranges`, whose
/// kernel died at `entry` with the registers of `prstatus` (a Linux
/// `struct elf_prstatus`), into `out`, which must hold [`header_size`]
/// bytes; returns that size. The "CORE" note must fit in the header
/// pages: a vmcore has at most 44 ranges, or 50 to [`MAX_RANGES`].
pub fn write_vmcore_headers(
    out: &mut [u8],
    entry: u64,
    ranges: &[Range],
    prstatus: &[u8; crate::vmcore::PRSTATUS_SIZE],
) -> Result<u64, ImageError> {
    write_any_headers(out, entry, ranges, Some(prstatus))
}

fn write_any_headers(
    out: &mut [u8],
    entry: u64,
    ranges: &[Range],
    prstatus: Option<&[u8; crate::vmcore::PRSTATUS_SIZE]>,
) -> Result<u64, ImageError> {
    let n = ranges.len();
    let core_note = if prstatus.is_some() { CORE_NOTE } else { 0 };
    let raw = EHDR + (1 + n) * PHDR + NOTE_HDR + IMAGE_HDR + n * RANGE + core_note;
    if n == 0 || n > MAX_RANGES || raw as u64 > header_size(n) {
        return Err(ImageError::RangeCount(n as u64));
    }
    let size = header_size(n);
    if (out.len() as u64) < size {
        return Err(ImageError::TooShort {
            need: size,
            have: out.len() as u64,
        });
    }
    let out = &mut out[..size as usize];
    out.fill(0);
    // ELF header (System V gABI).
    out[0..4].copy_from_slice(b"\x7fELF");
    out[4] = 2; // ELFCLASS64
    out[5] = 1; // ELFDATA2LSB
    out[6] = 1; // EV_CURRENT
    put16(out, 16, ET_CORE);
    put16(out, 18, EM_X86_64);
    put32(out, 20, 1);
    put64(out, 24, entry);
    put64(out, 32, EHDR as u64); // e_phoff
    put16(out, 52, EHDR as u16);
    put16(out, 54, PHDR as u16);
    put16(out, 56, (1 + n) as u16);
    // PT_NOTE.
    let note = EHDR + (1 + n) * PHDR;
    let desc_len = IMAGE_HDR + n * RANGE;
    let ph = EHDR;
    put32(out, ph, PT_NOTE);
    put64(out, ph + 8, note as u64);
    put64(out, ph + 32, (NOTE_HDR + desc_len + core_note) as u64);
    put64(out, ph + 40, (NOTE_HDR + desc_len + core_note) as u64);
    put64(out, ph + 48, 4);
    // PT_LOADs.
    for (i, r) in ranges.iter().enumerate() {
        let ph = EHDR + (1 + i) * PHDR;
        put32(out, ph, PT_LOAD);
        put32(out, ph + 4, 7); // PF_R | PF_W | PF_X
        put64(out, ph + 8, data_offset(ranges, i));
        put64(out, ph + 16, r.start);
        put64(out, ph + 24, r.start);
        put64(out, ph + 32, r.len);
        put64(out, ph + 40, r.len);
        put64(out, ph + 48, PAGE_SIZE);
    }
    // The note.
    put32(out, note, NOTE_NAME.len() as u32);
    put32(out, note + 4, desc_len as u32);
    put32(out, note + 8, NT_KJUMP_IMAGE);
    out[note + 12..note + 18].copy_from_slice(NOTE_NAME);
    let d = note + NOTE_HDR;
    out[d..d + 8].copy_from_slice(&MAGIC);
    put32(out, d + 8, VERSION);
    put32(
        out,
        d + 12,
        if prstatus.is_some() {
            FLAG_VMCORE
        } else {
            FLAG_RESUMABLE
        },
    );
    put64(out, d + 16, entry);
    put32(out, d + 24, n as u32);
    put64(out, d + 32, table_checksum(ranges.iter().copied()));
    for (i, r) in ranges.iter().enumerate() {
        let e = d + IMAGE_HDR + i * RANGE;
        put64(out, e, r.start);
        put64(out, e + 8, r.len);
        put64(out, e + 16, r.checksum);
    }
    if let Some(p) = prstatus {
        let c = d + desc_len;
        put32(out, c, 5);
        put32(out, c + 4, p.len() as u32);
        put32(out, c + 8, crate::vmcore::NT_PRSTATUS);
        out[c + 12..c + 17].copy_from_slice(b"CORE\0");
        out[c + 20..c + 20 + p.len()].copy_from_slice(p);
    }
    Ok(size)
}

/// A parsed image header: the entry and the range table, checked for
/// magic, version, resumability, the table checksum and consistency with
/// the program headers (the data is not read: see [`Header::check_size`]
/// and the per-range checksums).
#[derive(Clone, Copy, Debug)]
pub struct Header<'a> {
    /// Where the image is resumed (A's re-entry point).
    pub entry: u64,
    /// The header's flags ([`FLAG_RESUMABLE`], ...).
    pub flags: u32,
    table: &'a [u8],
    n: usize,
}

impl<'a> Header<'a> {
    /// Parses the first [`header_size`] bytes of an image (give at least
    /// one page; more is fine). Refuses an image not marked resumable.
    pub fn parse(b: &'a [u8]) -> Result<Self, ImageError> {
        let h = Self::parse_any(b)?;
        if h.flags & FLAG_RESUMABLE == 0 {
            return Err(ImageError::NotResumable);
        }
        Ok(h)
    }

    /// [`Header::parse`] for readers that also take an image not marked
    /// resumable (a memory image to inspect, not to resume): every check
    /// but that one. The caller looks at [`Header::flags`].
    pub fn parse_any(b: &'a [u8]) -> Result<Self, ImageError> {
        let have = b.len() as u64;
        let short = |need: usize| ImageError::TooShort {
            need: need as u64,
            have,
        };
        if b.len() < EHDR {
            return Err(short(EHDR));
        }
        if &b[0..4] != b"\x7fELF"
            || b[4] != 2
            || b[5] != 1
            || get16(b, 16) != ET_CORE
            || get16(b, 18) != EM_X86_64
            || get64(b, 32) != EHDR as u64
            || get16(b, 54) != PHDR as u16
        {
            return Err(ImageError::NotElfCore);
        }
        let phnum = usize::from(get16(b, 56));
        let n = phnum.saturating_sub(1);
        if n == 0 || n > MAX_RANGES {
            return Err(ImageError::RangeCount(n as u64));
        }
        let note = EHDR + phnum * PHDR;
        let desc = note + NOTE_HDR;
        let end = desc + IMAGE_HDR + n * RANGE;
        if b.len() < end {
            return Err(short(end));
        }
        if get32(b, EHDR) != PT_NOTE
            || get64(b, EHDR + 8) != note as u64
            || get32(b, note) != NOTE_NAME.len() as u32
            || get32(b, note + 8) != NT_KJUMP_IMAGE
            || &b[note + 12..note + 18] != NOTE_NAME
            || get32(b, note + 4) as usize != IMAGE_HDR + n * RANGE
        {
            return Err(ImageError::NoNote);
        }
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[desc..desc + 8]);
        if magic != MAGIC {
            return Err(ImageError::BadMagic(magic));
        }
        let version = get32(b, desc + 8);
        if version != VERSION {
            return Err(ImageError::Version(version));
        }
        if get32(b, desc + 24) as usize != n {
            return Err(ImageError::RangeCount(get32(b, desc + 24).into()));
        }
        let h = Self {
            entry: get64(b, desc + 16),
            flags: get32(b, desc + 12),
            table: &b[desc + IMAGE_HDR..end],
            n,
        };
        let expected = get64(b, desc + 32);
        let found = table_checksum(h.ranges());
        if found != expected {
            return Err(ImageError::TableChecksum { expected, found });
        }
        if get64(b, 24) != h.entry {
            return Err(ImageError::NotElfCore);
        }
        let mut prev_end = 0;
        let mut offset = header_size(n);
        for (i, r) in h.ranges().enumerate() {
            let ph = EHDR + (1 + i) * PHDR;
            let aligned =
                r.start.is_multiple_of(PAGE_SIZE) && r.len.is_multiple_of(PAGE_SIZE) && r.len > 0;
            let ordered = i == 0 || r.start >= prev_end;
            let loads = get32(b, ph) == PT_LOAD
                && get64(b, ph + 8) == offset
                && get64(b, ph + 16) == r.start
                && get64(b, ph + 24) == r.start
                && get64(b, ph + 32) == r.len
                && get64(b, ph + 40) == r.len;
            let Some(next) = r.start.checked_add(r.len) else {
                return Err(ImageError::BadRange { index: i });
            };
            if !(aligned && ordered && loads) {
                return Err(ImageError::BadRange { index: i });
            }
            prev_end = next;
            offset = offset
                .checked_add(r.len)
                .ok_or(ImageError::BadRange { index: i })?;
        }
        Ok(h)
    }

    /// Parses the headers of a vmcore ([`FLAG_VMCORE`]) as
    /// [`Header::parse_any`] does, and finds its `NT_PRSTATUS` note right
    /// after the image note: the header and the note's descriptor (a
    /// `struct elf_prstatus`).
    pub fn parse_vmcore(b: &'a [u8]) -> Result<(Self, &'a [u8]), ImageError> {
        let h = Self::parse_any(b)?;
        if h.flags & FLAG_VMCORE == 0 {
            return Err(ImageError::NotVmcore);
        }
        let c = EHDR + (1 + h.n) * PHDR + NOTE_HDR + IMAGE_HDR + h.n * RANGE;
        let p = c + 20;
        if b.len() < c + CORE_NOTE {
            return Err(ImageError::TooShort {
                need: (c + CORE_NOTE) as u64,
                have: b.len() as u64,
            });
        }
        let note_len = get64(b, EHDR + 32) as usize;
        if note_len != NOTE_HDR + IMAGE_HDR + h.n * RANGE + CORE_NOTE
            || get32(b, c) != 5
            || get32(b, c + 4) as usize != crate::vmcore::PRSTATUS_SIZE
            || get32(b, c + 8) != crate::vmcore::NT_PRSTATUS
            || &b[c + 12..c + 17] != b"CORE\0"
        {
            return Err(ImageError::NotVmcore);
        }
        Ok((h, &b[p..p + crate::vmcore::PRSTATUS_SIZE]))
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Range `i` of the table.
    pub fn range(&self, i: usize) -> Range {
        let e = i * RANGE;
        Range {
            start: get64(self.table, e),
            len: get64(self.table, e + 8),
            checksum: get64(self.table, e + 16),
        }
    }

    /// The ranges in table order.
    pub fn ranges(&self) -> impl Iterator<Item = Range> + '_ {
        (0..self.n).map(|i| self.range(i))
    }

    /// Where range `i`'s data starts in the image.
    pub fn data_offset(&self, i: usize) -> u64 {
        header_size(self.n) + (0..i).map(|j| self.range(j).len).sum::<u64>()
    }

    /// Bytes the whole image takes.
    pub fn image_size(&self) -> u64 {
        self.data_offset(self.n)
    }

    /// Pages of memory the image holds.
    pub fn pages(&self) -> u64 {
        self.ranges().map(|r| r.len / PAGE_SIZE).sum()
    }

    /// Refuses an image of `size` bytes that is shorter than its ranges
    /// say.
    pub fn check_size(&self, size: u64) -> Result<(), ImageError> {
        let mut end = header_size(self.n);
        for (index, r) in self.ranges().enumerate() {
            end += r.len;
            if end > size {
                return Err(ImageError::Truncated { index, end, size });
            }
        }
        Ok(())
    }

    /// Compares range `index`'s checksum with `found`.
    pub fn check_range(&self, index: usize, found: u64) -> Result<(), ImageError> {
        let r = self.range(index);
        if r.checksum == found {
            Ok(())
        } else {
            Err(ImageError::RangeChecksum {
                index,
                start: r.start,
                len: r.len,
                expected: r.checksum,
                found,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    /// An image of two ranges with distinct data.
    fn image() -> (Vec<u8>, Vec<Range>) {
        let data: [(u64, Vec<u8>); 2] = [
            (0x1000, (0..0x2000u32).map(|i| (i * 7) as u8).collect()),
            (0x10_0000, vec![0xab; 0x1000]),
        ];
        let ranges: Vec<Range> = data
            .iter()
            .map(|(s, d)| Range {
                start: *s,
                len: d.len() as u64,
                checksum: checksum(d),
            })
            .collect();
        let mut img = vec![0u8; header_size(2) as usize];
        assert_eq!(write_headers(&mut img, 0x20_1234, &ranges), Ok(PAGE_SIZE));
        for (_, d) in &data {
            img.extend_from_slice(d);
        }
        (img, ranges)
    }

    fn verify(img: &[u8]) -> Result<Header<'_>, ImageError> {
        let h = Header::parse(img)?;
        h.check_size(img.len() as u64)?;
        for i in 0..h.len() {
            let off = h.data_offset(i) as usize;
            let r = h.range(i);
            h.check_range(i, checksum(&img[off..off + r.len as usize]))?;
        }
        Ok(h)
    }

    #[test]
    fn an_image_reads_back_as_written() {
        let (img, ranges) = image();
        let h = verify(&img).unwrap();
        assert_eq!(h.entry, 0x20_1234);
        assert_eq!(h.ranges().collect::<Vec<_>>(), ranges);
        assert_eq!(h.data_offset(1), 0x3000);
        assert_eq!(h.image_size(), img.len() as u64);
        assert_eq!(h.pages(), 3);
    }

    #[test]
    fn a_flipped_data_byte_names_its_range_and_checksums() {
        let (mut img, ranges) = image();
        img[0x1000 + 0x123] ^= 1;
        match verify(&img) {
            Err(ImageError::RangeChecksum {
                index: 0,
                start: 0x1000,
                len: 0x2000,
                expected,
                found,
            }) => {
                assert_eq!(expected, ranges[0].checksum);
                assert_ne!(found, expected);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrong_magic_version_truncation_and_table_damage_are_refused() {
        let (img, _) = image();
        let desc = EHDR + 3 * PHDR + NOTE_HDR;
        let mut m = img.clone();
        m[desc] = b'X';
        assert!(matches!(verify(&m), Err(ImageError::BadMagic(_))));
        let mut v = img.clone();
        v[desc + 8] = 9;
        assert_eq!(verify(&v).err(), Some(ImageError::Version(9)));
        let t = &img[..img.len() - 1];
        assert_eq!(
            verify(t).err(),
            Some(ImageError::Truncated {
                index: 1,
                end: 0x4000,
                size: 0x3fff
            })
        );
        let mut c = img.clone();
        c[desc + IMAGE_HDR + 8] ^= 0x10; // range 0's length
        assert!(matches!(verify(&c), Err(ImageError::TableChecksum { .. })));
        let mut r = img.clone();
        r[desc + 12] = 0;
        assert_eq!(verify(&r).err(), Some(ImageError::NotResumable));
        // Read, not resumed: the flags are the reader's to judge.
        assert_eq!(Header::parse_any(&r).map(|h| h.flags), Ok(0));
        assert_eq!(
            verify(&img[..10]).err(),
            Some(ImageError::TooShort { need: 64, have: 10 })
        );
        assert_eq!(verify(&vec![0u8; 4096]).err(), Some(ImageError::NotElfCore));
    }

    #[test]
    fn a_vmcore_carries_its_prstatus_and_is_not_resumable() {
        let data = vec![0x5au8; 0x2000];
        let ranges = [Range {
            start: 0x10_0000,
            len: 0x2000,
            checksum: checksum(&data),
        }];
        let regs = core::array::from_fn(|i| i as u64 * 3);
        let p = crate::vmcore::prstatus(&regs, false);
        let mut img = vec![0u8; header_size(1) as usize];
        assert_eq!(
            write_vmcore_headers(&mut img, 0x20_0042, &ranges, &p),
            Ok(PAGE_SIZE)
        );
        img.extend_from_slice(&data);
        let (h, found) = Header::parse_vmcore(&img).unwrap();
        assert_eq!(h.entry, 0x20_0042);
        assert_eq!(h.flags, FLAG_VMCORE);
        assert_eq!(found, &p[..]);
        assert_eq!(h.data_offset(0), PAGE_SIZE);
        h.check_size(img.len() as u64).unwrap();
        assert_eq!(Header::parse(&img).err(), Some(ImageError::NotResumable));
        let (resumable, _) = image();
        assert_eq!(
            Header::parse_vmcore(&resumable).err(),
            Some(ImageError::NotVmcore)
        );
        // The CORE note must fit in the header pages.
        let many: Vec<Range> = (0..45)
            .map(|i| Range {
                start: i * 0x1000,
                len: 0x1000,
                checksum: 0,
            })
            .collect();
        let mut big = vec![0u8; header_size(45) as usize];
        assert_eq!(
            write_vmcore_headers(&mut big, 0, &many, &p),
            Err(ImageError::RangeCount(45))
        );
        assert!(write_vmcore_headers(&mut big, 0, &many[..44], &p).is_ok());
    }

    #[test]
    fn a_single_word_change_always_changes_the_checksum() {
        let base = vec![0u8; 512];
        let c0 = checksum(&base);
        for w in 0..64 {
            for bit in [0, 17, 63] {
                let mut d = base.clone();
                let v = 1u64 << bit;
                d[w * 8..w * 8 + 8].copy_from_slice(&v.to_le_bytes());
                assert_ne!(checksum(&d), c0, "word {w} bit {bit}");
            }
        }
        // Fed in pieces, the same.
        let mut c = Checksum::new();
        c.update(&base[..8]);
        c.update(&base[8..]);
        assert_eq!(c.value(), c0);
    }

    #[test]
    fn overlapping_or_unaligned_ranges_are_refused_by_the_writer_and_reader() {
        let bad = [
            Range {
                start: 0x2000,
                len: 0x2000,
                checksum: 0,
            },
            Range {
                start: 0x3000,
                len: 0x1000,
                checksum: 0,
            },
        ];
        let mut img = vec![0u8; 0x4000];
        write_headers(&mut img, 0, &bad).unwrap();
        assert_eq!(
            Header::parse(&img).err(),
            Some(ImageError::BadRange { index: 1 })
        );
        assert_eq!(
            write_headers(&mut img, 0, &[]),
            Err(ImageError::RangeCount(0))
        );
    }
}
