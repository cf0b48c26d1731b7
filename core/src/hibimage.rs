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

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use kjump_abi::control;
use kjump_abi::hibimage::{
    Checksum, FLAG_RESUMABLE, FLAG_VMCORE, Header, ImageError, MAX_RANGES, NOTE_NAME, Range,
    data_offset, header_size,
};
use kjump_abi::vmcore::{PRSTATUS_NREGS, PRSTATUS_REG_NAMES};

use crate::dump::{Backing, DumpError, NoteInfo, RamSource, read_by_page};

use crate::checkpoint::Kernel;
use crate::oracle::{Oracle, RegisterMismatch, diff_ranges, hexdump};
use crate::pages::{PAGE_SIZE, Page, PageHash};
use crate::report::{At, ByteRange, Mismatch, MismatchKind};
use crate::state::FieldValue;

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
    /// The notes after the image header are malformed.
    #[error("the image on the disk is refused: {0}")]
    Notes(String),
    /// The image is sound but kernel A's view cannot be read from it: no
    /// control page at its entry, or a kimage list that does not walk.
    #[error("kernel a's view of the image: {0}")]
    View(String),
}

/// A verified image in a disk file.
#[derive(Debug)]
pub struct DiskImage {
    path: PathBuf,
    file: Backing,
    /// The header pages (ELF header, program headers, note).
    header: Vec<u8>,
    entry: u64,
    flags: u32,
    ranges: Vec<Range>,
    /// The notes of the PT_NOTE segment, the image header's first.
    notes: Vec<NoteInfo>,
    /// A `CORE`/`NT_PRSTATUS` note's descriptor, if the image has one (a
    /// vmcore's).
    prstatus: Option<Vec<u8>>,
    /// Bytes of the disk file (the image and what follows it).
    file_size: u64,
    /// The ranges whose checksum failed, when opened by
    /// [`DiskImage::open_to_compare`] (every other opener refuses them).
    bad_sums: Vec<ImageError>,
}

/// What opening an image does with its ranges' checksums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sums {
    /// Refuses the image at the first range that fails its checksum.
    Check,
    /// Does not read the ranges.
    Skip,
    /// Keeps every failure ([`DiskImage::checksum_failures`]).
    Report,
}

impl DiskImage {
    /// Opens the image at the start of the disk file `path` and verifies
    /// it: headers, size, every range's checksum. Refuses an image not
    /// marked resumable (what C and the hibernate scenario need).
    pub fn open(path: &Path) -> Result<Self, DiskImageError> {
        let img = Self::open_any(path)?;
        if !img.resumable() {
            return Err(DiskImageError::Image(ImageError::NotResumable));
        }
        Ok(img)
    }

    /// Opens and verifies the vmcore at the start of the disk file `path`
    /// (the crash scenario's: not resumable, with an `NT_PRSTATUS` note).
    pub fn open_vmcore(path: &Path) -> Result<Self, DiskImageError> {
        Self::open_kind(path, Sums::Check)?.vmcore_only()
    }

    /// Opens the vmcore at the start of `path` checking its headers and
    /// size but not its ranges' checksums: to find the pages of a range
    /// whose checksum [`DiskImage::open_vmcore`] refused.
    pub fn open_vmcore_unchecked(path: &Path) -> Result<Self, DiskImageError> {
        Self::open_kind(path, Sums::Skip)?.vmcore_only()
    }

    /// [`DiskImage::open`] for readers (`inspect`, `diff`, gdb's
    /// `image view`): takes an image of any kind (resumable or a vmcore),
    /// with every other check.
    pub fn open_any(path: &Path) -> Result<Self, DiskImageError> {
        Self::open_kind(path, Sums::Check)
    }

    /// [`DiskImage::open_any`] for `kjump diff`, which shows where an image
    /// differs: a range that fails its checksum does not refuse the image
    /// but is kept in [`DiskImage::checksum_failures`] (a vmcore whose
    /// capture kernel changed the memory it was writing is compared page
    /// by page); every other check refuses as `open_any` does.
    pub fn open_to_compare(path: &Path) -> Result<Self, DiskImageError> {
        Self::open_kind(path, Sums::Report)
    }

    /// The ranges that failed their checksum (only
    /// [`DiskImage::open_to_compare`] opens such an image).
    pub fn checksum_failures(&self) -> &[ImageError] {
        &self.bad_sums
    }

    /// Refuses an image that is not a vmcore.
    fn vmcore_only(self) -> Result<Self, DiskImageError> {
        if self.is_vmcore() {
            Ok(self)
        } else {
            Err(DiskImageError::Image(ImageError::NotVmcore))
        }
    }

    fn open_kind(path: &Path, sums: Sums) -> Result<Self, DiskImageError> {
        let read = |source| DiskImageError::Read {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(read)?;
        let size = file.metadata().map_err(read)?.len();
        Self::parse(Backing::File(file), size, path, sums)
    }

    /// [`DiskImage::open_any`] on an image already in memory; `path` only
    /// names it. Checks exactly what `open_any` checks.
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Self, DiskImageError> {
        let size = bytes.len() as u64;
        Self::parse(Backing::Bytes(bytes), size, path, Sums::Check)
    }

    fn parse(file: Backing, size: u64, path: &Path, sums: Sums) -> Result<Self, DiskImageError> {
        let read = |source| DiskImageError::Read {
            path: path.to_owned(),
            source,
        };
        let mut first = vec![0u8; size.min(header_size(MAX_RANGES)) as usize];
        file.read_exact_at(&mut first, 0).map_err(read)?;
        let h = Header::parse_any(&first).map_err(DiskImageError::Image)?;
        if h.flags & FLAG_VMCORE != 0 {
            // A vmcore's NT_PRSTATUS note sits right after the image note.
            Header::parse_vmcore(&first).map_err(DiskImageError::Image)?;
        }
        h.check_size(size).map_err(DiskImageError::Image)?;
        let ranges: Vec<Range> = h.ranges().collect();
        let (entry, flags) = (h.entry, h.flags);
        let mut buf = vec![0u8; CHUNK];
        let mut bad_sums = Vec::new();
        for (i, r) in ranges.iter().enumerate().filter(|_| sums != Sums::Skip) {
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
            match h.check_range(i, sum.value()) {
                Err(e) if sums == Sums::Report => bad_sums.push(e),
                r => r.map_err(DiskImageError::Image)?,
            }
        }
        let header_len = header_size(ranges.len()) as usize;
        first.truncate(header_len);
        let (notes, prstatus) = read_notes(&first).map_err(DiskImageError::Notes)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            header: first,
            entry,
            flags,
            ranges,
            notes,
            prstatus,
            file_size: size,
            bad_sums,
        })
    }

    /// Whether `path` holds a hibernation image (its first note is the
    /// KJUMP image note), sound or not: what `inspect` and `diff` read
    /// with [`DiskImage::open_any`] rather than as a dump.
    pub fn is_image(path: &Path) -> bool {
        let Ok(file) = File::open(path) else {
            return false;
        };
        let mut b = vec![0u8; header_size(MAX_RANGES) as usize];
        let n = file_read_upto(&file, &mut b);
        match Header::parse_any(&b[..n]) {
            Ok(_) => true,
            // The note was found and is the image's; what follows is wrong.
            Err(
                ImageError::BadMagic(_)
                | ImageError::Version(_)
                | ImageError::RangeCount(_)
                | ImageError::TableChecksum { .. }
                | ImageError::BadRange { .. }
                | ImageError::TooShort { .. },
            ) => image_note_at_start(&b[..n]),
            Err(_) => false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the image is to be resumed.
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// The header's flags.
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// Whether the image is marked resumable.
    pub fn resumable(&self) -> bool {
        self.flags & FLAG_RESUMABLE != 0
    }

    /// Whether the image is a vmcore (the crash scenario's: a crashed
    /// kernel's memory in place, its registers in an `NT_PRSTATUS` note).
    pub fn is_vmcore(&self) -> bool {
        self.flags & FLAG_VMCORE != 0 && self.prstatus.is_some()
    }

    /// The kind of image, for people: "vmcore", "resumable image", or
    /// "image not marked resumable".
    pub fn kind(&self) -> &'static str {
        if self.is_vmcore() {
            "vmcore"
        } else if self.resumable() {
            "resumable image"
        } else {
            "image not marked resumable"
        }
    }

    /// The ranges of memory it holds.
    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    /// Pages of memory it holds.
    pub fn pages(&self) -> u64 {
        self.ranges.iter().map(|r| r.len / PAGE).sum()
    }

    /// Bytes of the image (headers and ranges), from byte 0 of the file.
    pub fn image_size(&self) -> u64 {
        data_offset(&self.ranges, self.ranges.len())
    }

    /// Bytes of the file holding it (a disk is larger than its image).
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// Where range `i`'s data starts in the file.
    pub fn data_offset(&self, i: usize) -> u64 {
        data_offset(&self.ranges, i)
    }

    /// The image's notes, in file order.
    pub fn notes(&self) -> &[NoteInfo] {
        &self.notes
    }

    /// The image's headers.
    pub fn header_bytes(&self) -> &[u8] {
        &self.header
    }

    /// Copies the image's bytes (its [`DiskImage::image_size`] from byte
    /// 0, not the rest of the disk) to `out`.
    pub fn copy_bytes(&self, out: &mut dyn io::Write) -> io::Result<()> {
        let mut buf = vec![0u8; CHUNK];
        let mut off = 0;
        let size = self.image_size();
        while off < size {
            let n = (size - off).min(CHUNK as u64) as usize;
            self.file.read_exact_at(&mut buf[..n], off)?;
            out.write_all(&buf[..n])?;
            off += n as u64;
        }
        Ok(())
    }

    /// A vmcore's `struct elf_prstatus` (`None` for a resumable image).
    pub fn prstatus(&self) -> Option<&[u8]> {
        self.prstatus.as_deref()
    }

    /// The page of memory at `addr` as the image holds it; `None` when the
    /// image does not hold it.
    pub fn page(&self, addr: u64) -> io::Result<Option<Box<Page>>> {
        let mut off = header_size(self.ranges.len());
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

    /// The word at `addr`, if the image holds it.
    fn word(&self, addr: u64) -> Option<u64> {
        let mut w = [0u8; 8];
        self.read_ram(addr, &mut w).ok()?;
        Some(u64::from_le_bytes(w))
    }

    /// The registers the image carries: its `NT_PRSTATUS` note when it has
    /// one (a vmcore); otherwise, for a resumable image, the context kernel
    /// A saved in its control page before the jump (the page of the
    /// entry, `kjump_abi::control`), which its re-entry path restores: the
    /// image keeps A's registers in A's own memory, as Linux's hibernation
    /// image keeps `saved_context`. `None` when neither is there.
    pub fn registers(&self) -> Option<SavedRegisters> {
        if let Some(p) = &self.prstatus {
            return SavedRegisters::from_prstatus(p);
        }
        if !self.resumable() {
            return None;
        }
        let cp = self.entry & !(PAGE - 1);
        let mut slots = [0u64; control::SLOTS as usize];
        for (i, v) in slots.iter_mut().enumerate() {
            *v = self.word(cp + control::CONTEXT + 8 * i as u64)?;
        }
        Some(SavedRegisters::Context {
            control_page: cp,
            slots,
        })
    }

    /// Kernel A's logical view of the image: its pages where A had them,
    /// those its kimage parked in source pages read from there. The
    /// kimage is found as A's re-entry path finds it: the control page is
    /// the entry's page, its list head and mode are in that page's data
    /// slots; the list is walked in the image (every entry checked).
    pub fn view(&self) -> Result<ImageView<'_>, DiskImageError> {
        let bad = |w: String| DiskImageError::View(w);
        if self.is_vmcore() {
            // B wrote the crashed kernel's pages from where they were (low
            // memory from the backup region) to their own addresses: they
            // are in place, and the entry is A's rip, not a control page.
            return Ok(ImageView {
                image: self,
                parked: BTreeMap::new(),
                sources: std::collections::BTreeSet::new(),
                control: None,
                ranges: self.ram_ranges(),
            });
        }
        if !self.resumable() {
            return Err(bad(
                "the image is not marked resumable: it has no re-entry point to find kernel a's kimage from".into(),
            ));
        }
        let cp = self.entry & !(PAGE - 1);
        let slot = |o: u64| {
            self.word(cp + o).ok_or_else(|| {
                bad(format!(
                    "the entry's control page {cp:#x} is not in the image"
                ))
            })
        };
        let head = slot(control::DATA_HEAD)?;
        let mode = slot(control::DATA_MODE)?;
        if mode != control::MODE_SWAP && mode != control::MODE_BACKUP {
            return Err(bad(format!(
                "control page {cp:#x}: kimage mode {mode:#x} is neither swap nor backup"
            )));
        }
        let max = (self.pages().saturating_mul(PAGE) / 8).min(crate::kimage::MAX_ENTRIES as u64);
        let mut parked = BTreeMap::new();
        let mut outside = None;
        kjump_abi::kimage::walk(
            head,
            max as usize,
            |a| a.is_multiple_of(8).then(|| self.word(a)).flatten(),
            |p| {
                if outside.is_none() && self.page_index(p.src).is_none() {
                    outside = Some(p.src);
                }
                parked.insert(p.dest, p.src);
            },
        )
        .map_err(|e| bad(format!("control page {cp:#x}: kimage list: {e}")))?;
        if let Some(src) = outside {
            return Err(bad(format!(
                "kimage source page {src:#x} is not in the image"
            )));
        }
        let mut spans: Vec<(u64, u64)> = self.ranges.iter().map(|r| (r.start, r.len)).collect();
        spans.extend(
            parked
                .keys()
                .filter(|d| self.page_index(**d).is_none())
                .map(|&d| (d, PAGE)),
        );
        spans.sort_unstable();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (s, l) in spans {
            match ranges.last_mut() {
                Some(last) if last.0 + last.1 == s => last.1 += l,
                Some(last) if last.0 + last.1 > s => {
                    return Err(bad(format!("kimage destination page {s:#x} listed twice")));
                }
                _ => ranges.push((s, l)),
            }
        }
        let control_end = cp + control::control_pages(4 << 30) * PAGE;
        Ok(ImageView {
            image: self,
            sources: parked.values().copied().collect(),
            parked,
            control: Some((cp, control_end)),
            ranges,
        })
    }

    /// The index of the range holding `addr`.
    fn page_index(&self, addr: u64) -> Option<usize> {
        self.ranges
            .iter()
            .position(|r| (r.start..r.start + r.len).contains(&addr))
    }
}

/// Reads into `buf` what the file has of it; returns the bytes read.
fn file_read_upto(file: &File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

/// Whether the first program header is a note segment whose first note
/// is the KJUMP image note (what a damaged image still shows).
fn image_note_at_start(b: &[u8]) -> bool {
    let get = |o: usize, n: usize| b.get(o..o + n);
    let (Some(ph), Some(elf)) = (get(64, 56), get(0, 4)) else {
        return false;
    };
    if elf != b"\x7fELF" || ph[0..4] != 4u32.to_le_bytes() {
        return false;
    }
    let off = u64::from_le_bytes(ph[8..16].try_into().expect("8 bytes"));
    let Ok(off) = usize::try_from(off) else {
        return false;
    };
    match (get(off + 8, 4), get(off + 12, 6)) {
        (Some(t), Some(name)) => {
            t == kjump_abi::hibimage::NT_KJUMP_IMAGE.to_le_bytes() && name == &NOTE_NAME[..]
        }
        _ => false,
    }
}

/// The notes of the image's PT_NOTE segment, which must lie in the header
/// pages; and the descriptor of an `NT_PRSTATUS` note among them.
fn read_notes(header: &[u8]) -> Result<(Vec<NoteInfo>, Option<Vec<u8>>), String> {
    let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().expect("8 bytes"));
    // Header::parse checked the first program header is the PT_NOTE.
    let (off, size) = (u64_at(64 + 8), u64_at(64 + 32));
    let end = off
        .checked_add(size)
        .filter(|&e| e <= header.len() as u64)
        .ok_or_else(|| {
            format!(
                "the note segment at byte {off} ({size} bytes) runs past the headers ({} bytes)",
                header.len()
            )
        })?;
    let notes = crate::dump::parse_notes(&header[off as usize..end as usize])
        .map_err(|w| format!("note segment: {w}"))?;
    let mut prstatus = None;
    let mut info = Vec::new();
    for n in notes {
        if n.name == "CORE" && n.kind == crate::dump::NT_PRSTATUS {
            if prstatus.is_some() {
                return Err("more than one NT_PRSTATUS note".into());
            }
            prstatus = Some(n.desc.to_vec());
        }
        info.push(NoteInfo {
            name: n.name,
            kind: n.kind,
            size: n.desc.len() as u64,
        });
    }
    Ok((info, prstatus))
}

/// The registers an image carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SavedRegisters {
    /// Kernel A's saved context in its control page (`control::Slot`
    /// order).
    Context {
        control_page: u64,
        slots: [u64; control::SLOTS as usize],
    },
    /// An `NT_PRSTATUS` note's `pr_reg` (Linux's `user_regs_struct`).
    Prstatus([u64; PRSTATUS_NREGS]),
}

impl SavedRegisters {
    fn from_prstatus(desc: &[u8]) -> Option<Self> {
        kjump_abi::vmcore::prstatus_regs(desc).map(Self::Prstatus)
    }

    /// Where they come from, for people.
    pub fn source(&self) -> String {
        match self {
            Self::Context { control_page, .. } => format!(
                "kernel a's saved context in its control page {control_page:#x} (restored by its re-entry path)"
            ),
            Self::Prstatus(_) => "the NT_PRSTATUS note".into(),
        }
    }

    /// The registers by name, in their order (the UART slot left out).
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        match self {
            Self::Context { slots, .. } => control::SLOT_NAMES
                .iter()
                .zip(slots)
                .filter(|(n, _)| **n != "uart")
                .map(|(n, v)| (*n, *v))
                .collect(),
            Self::Prstatus(r) => PRSTATUS_REG_NAMES
                .iter()
                .copied()
                .zip(r.iter().copied())
                .collect(),
        }
    }
}

/// Kernel A's logical view of a resumable image ([`DiskImage::view`]):
/// every page of A's at its home address. RAM ranges are the image's
/// plus the pages A's kimage parked elsewhere (B's region).
#[derive(Debug)]
pub struct ImageView<'a> {
    image: &'a DiskImage,
    /// Home page -> the source page holding it in the image.
    parked: BTreeMap<u64, u64>,
    /// The source pages: in the image they hold A's parked pages, in A's
    /// own view (as A left) what A loaded there for B.
    sources: std::collections::BTreeSet<u64>,
    /// A's control pages: written after A's checkpoint (the swap's
    /// bookkeeping), not part of its view (none in a vmcore).
    control: Option<(u64, u64)>,
    ranges: Vec<(u64, u64)>,
}

impl ImageView<'_> {
    pub fn image(&self) -> &DiskImage {
        self.image
    }

    /// Pages A's kimage parked in source pages.
    pub fn parked_pages(&self) -> usize {
        self.parked.len()
    }

    /// A's first control page and the end of its control pages (`None`
    /// for a vmcore: its pages are in place).
    pub fn control_range(&self) -> Option<(u64, u64)> {
        self.control
    }

    /// Whether the page at `page` is A's own as A left it: not a source
    /// page (holding the parked pages here, B's pages in A's memory) and
    /// not a control page.
    pub fn is_own(&self, page: u64) -> bool {
        !self.sources.contains(&page)
            && !self
                .control
                .is_some_and(|(c0, c1)| (c0..c1).contains(&page))
    }

    /// Where A's page `home` lies in the image.
    pub fn parked_at(&self, home: u64) -> u64 {
        self.parked.get(&home).copied().unwrap_or(home)
    }
}

impl RamSource for DiskImage {
    fn ram_ranges(&self) -> Vec<(u64, u64)> {
        self.ranges.iter().map(|r| (r.start, r.len)).collect()
    }

    fn read_ram(&self, addr: u64, buf: &mut [u8]) -> Result<(), DumpError> {
        let i = self.page_index(addr).ok_or(DumpError::Memory(addr))?;
        let r = self.ranges[i];
        if addr + buf.len() as u64 > r.start + r.len {
            return Err(DumpError::Memory(addr));
        }
        self.file
            .read_exact_at(buf, self.data_offset(i) + (addr - r.start))
            .map_err(|source| DumpError::Read {
                path: self.path.clone(),
                source,
            })
    }
}

impl RamSource for ImageView<'_> {
    fn ram_ranges(&self) -> Vec<(u64, u64)> {
        self.ranges.clone()
    }

    fn read_ram(&self, addr: u64, buf: &mut [u8]) -> Result<(), DumpError> {
        read_by_page(addr, buf, |page, off, part| {
            self.image.read_ram(self.parked_at(page) + off as u64, part)
        })
    }
}

/// The differing byte ranges `diff` (offsets in the page at `home`) as
/// guest-physical ranges with their symbols.
fn byte_ranges(
    home: u64,
    diff: &[(usize, usize)],
    symbols: Option<&crate::symbols::Symbols>,
) -> Vec<ByteRange> {
    diff.iter()
        .map(|&(s, e)| ByteRange {
            start: home + s as u64,
            end: home + e as u64,
            symbol: symbols.and_then(|sy| sy.lookup(home + s as u64)),
        })
        .collect()
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
    let ranges = byte_ranges(home, &diff, symbols);
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

/// Checks a kernel restored from an image in a new VM (`kjump resume
/// IMAGE`), at its resume checkpoint, against what the image holds:
/// every register of its saved context ([`SavedRegisters::Context`]);
/// every page of its view ([`ImageView::is_own`]) in `found`, the VM's
/// memory, at home. `state` is captured with the checkpoint's `in eax,
/// dx` (one byte, at `checkpoint`) completed, so exactly two registers
/// differ from the context by design and are expected to: `rip` is
/// `checkpoint + 1` and `rax` is `answer` (the `in` writes eax, clearing
/// the upper half). Each difference is a mismatch at `at`, a page's with
/// its byte ranges, hexdump and symbol.
pub fn check_restored(
    view: &ImageView<'_>,
    state: &crate::state::VcpuState,
    checkpoint: u64,
    answer: u32,
    found: &crate::GuestMem,
    at: &At,
    symbols: Option<&crate::symbols::Symbols>,
) -> Result<ImageCheck, DumpError> {
    let mut out = ImageCheck::default();
    let mut regs: Vec<(&str, u64)> = view
        .image()
        .registers()
        .map(|r| r.named())
        .unwrap_or_default();
    for (name, v) in regs.iter_mut() {
        if *name == "rax" {
            *v = u64::from(answer);
        }
    }
    regs.push(("rip", checkpoint + 1));
    for (name, expected) in regs {
        let Some(actual) = crate::dump::state_value(state, name) else {
            continue;
        };
        if actual != expected {
            out.mismatches.push(Mismatch::register(
                at,
                &RegisterMismatch {
                    field: name.to_owned(),
                    expected: FieldValue::U64(expected),
                    actual: FieldValue::U64(actual),
                    note: Some(match name {
                        "rax" => "the checkpoint's answer (BACK)".into(),
                        "rip" => "after the checkpoint instruction".into(),
                        _ => "as saved in the image's context".into(),
                    }),
                },
            ));
        }
    }
    let mut expected = Box::new([0u8; PAGE_SIZE]);
    let mut actual = Box::new([0u8; PAGE_SIZE]);
    for (start, len) in view.ram_ranges() {
        for home in (start..start + len).step_by(PAGE_SIZE) {
            if !view.is_own(home) {
                continue;
            }
            view.read_ram(home, &mut expected[..])?;
            found.read_ram(home, &mut actual[..])?;
            out.pages_compared += 1;
            if *actual == *expected {
                continue;
            }
            out.mismatches.push(page_mismatch(
                at,
                symbols,
                (home, home),
                &expected,
                &actual,
                format!(
                    "the restored kernel's page {home:#x} is not as the image holds it (at {:#x})",
                    view.parked_at(home)
                ),
            ));
        }
    }
    Ok(out)
}

/// Images for tests, here and in the fuzz seeds.
#[doc(hidden)]
pub mod testing {
    use kjump_abi::control;
    use kjump_abi::hibimage::{Range, checksum, header_size, write_headers};
    use kjump_abi::kimage::{IND_DESTINATION, IND_DONE, IND_INDIRECTION, IND_SOURCE};

    /// An image of `ranges` of a 64 KiB RAM, entered in the control page
    /// 0x9000 (`rdi` = 0x9000 and `rsp` = 0x2345 in its context) whose
    /// kimage (list at 0xa000, `mode`) parks a's page 0x4000 at `source`;
    /// page 0xb000 is all 0x5a, byte 0x3000 is 7.
    pub fn image_with_view(ranges: &[(u64, u64)], mode: u64, source: u64) -> Vec<u8> {
        let cp = 0x9000u64;
        let mut ram = vec![0u8; 0x10000];
        let mut put =
            |a: u64, v: u64| ram[a as usize..a as usize + 8].copy_from_slice(&v.to_le_bytes());
        let list = 0xa000;
        put(cp + control::DATA_HEAD, list | IND_INDIRECTION);
        put(cp + control::DATA_MODE, mode);
        put(list, 0x4000 | IND_DESTINATION);
        put(list + 8, source | IND_SOURCE);
        put(list + 16, IND_DONE);
        put(control::slot_offset(control::Slot::Rdi) + cp, cp);
        put(control::slot_offset(control::Slot::Rsp) + cp, 0x2345);
        ram[0xb000..0xc000].fill(0x5a);
        ram[0x3000] = 7;
        let data: Vec<(u64, &[u8])> = ranges
            .iter()
            .map(|&(start, len)| (start, &ram[start as usize..(start + len) as usize]))
            .collect();
        image_of(cp + 0x25, &data).0
    }

    /// The image entered at `entry` of `ranges` (each its start and its
    /// bytes), its checksums filled in; and its range table.
    pub fn image_of(entry: u64, ranges: &[(u64, &[u8])]) -> (Vec<u8>, Vec<Range>) {
        let rs: Vec<Range> = ranges
            .iter()
            .map(|&(start, d)| Range {
                start,
                len: d.len() as u64,
                checksum: checksum(d),
            })
            .collect();
        let mut img = vec![0u8; header_size(rs.len()) as usize];
        write_headers(&mut img, entry, &rs).expect("a valid image");
        for (_, d) in ranges {
            img.extend_from_slice(d);
        }
        (img, rs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kjump_abi::hibimage::{checksum, header_size};

    fn write_image(path: &Path, ranges: &[(u64, Vec<u8>)]) -> Vec<Range> {
        let data: Vec<(u64, &[u8])> = ranges.iter().map(|(s, d)| (*s, d.as_slice())).collect();
        let (img, rs) = testing::image_of(0x20_0000, &data);
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

    fn image_with_view(head_ok: bool) -> Vec<u8> {
        let source = if head_ok { 0xb000 } else { 0x5000 };
        testing::image_with_view(&[(0, 0x4000), (0x8000, 0x8000)], control::MODE_SWAP, source)
    }

    #[test]
    fn a_view_reads_parked_pages_at_home_and_the_registers_from_the_control_page() {
        let img = DiskImage::from_bytes(image_with_view(true), Path::new("v.img")).unwrap();
        assert!(img.resumable());
        assert_eq!(img.image_size(), 0x1000 + 0xc000);
        let regs = img.registers().unwrap();
        let named = regs.named();
        assert!(named.contains(&("rdi", 0x9000)) && named.contains(&("rsp", 0x2345)));
        assert!(!named.iter().any(|(n, _)| *n == "uart"));
        let v = img.view().unwrap();
        assert_eq!(v.ram_ranges(), [(0, 0x5000), (0x8000, 0x8000)]);
        assert_eq!(v.parked_pages(), 1);
        let mut p = [0u8; PAGE_SIZE];
        v.read_ram(0x4000, &mut p).unwrap();
        assert!(
            p.iter().all(|&b| b == 0x5a),
            "a's page read where it is parked"
        );
        v.read_ram(0x3000, &mut p).unwrap();
        assert_eq!(p[0], 7, "a page at home read in place");
        // Source and control pages are not a's own; the rest is.
        assert!(!v.is_own(0xb000) && !v.is_own(0x9000) && v.is_own(0x3000) && v.is_own(0x4000));
        // Across a page boundary into the parked page.
        let mut two = [0u8; 16];
        v.read_ram(0x4000 - 8, &mut two).unwrap();
        assert_eq!(two[8..], [0x5a; 8]);
        // The image itself holds nothing at 0x4000.
        assert!(img.read_ram(0x4000, &mut p).is_err());
    }

    #[test]
    fn a_kimage_source_outside_the_image_is_no_view_and_the_reason_is_given() {
        let img = DiskImage::from_bytes(image_with_view(false), Path::new("v.img")).unwrap();
        let e = img.view().unwrap_err();
        assert_eq!(
            e.to_string(),
            "kernel a's view of the image: kimage source page 0x5000 is not in the image"
        );
    }

    #[test]
    fn an_image_not_marked_resumable_is_read_but_not_resumed_and_its_prstatus_is_its_registers() {
        use kjump_abi::hibimage::{FLAG_VMCORE, write_vmcore_headers};
        use kjump_abi::vmcore::prstatus;
        let mut b = image_with_view(true);
        // The note segment's offset and length (the first program header's
        // p_offset and p_filesz).
        let word =
            |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
        let (note_off, image_note) = (word(&b, 64 + 8), word(&b, 64 + 32));
        // The same image with an NT_PRSTATUS note after the image note (a
        // vmcore's headers), then its flags word (after the ELF header, 3
        // program headers and the note's header) cleared: neither
        // resumable nor a vmcore.
        let h = Header::parse_any(&b).unwrap();
        let (entry, rs): (u64, Vec<Range>) = (h.entry, h.ranges().collect());
        let mut regs = [0u64; PRSTATUS_NREGS];
        regs[16] = 0x20_1234; // rip
        write_vmcore_headers(&mut b, entry, &rs, &prstatus(&regs, false)).unwrap();
        let flags = 64 + 3 * 56 + 20 + 12;
        assert_eq!(b[flags..flags + 4], FLAG_VMCORE.to_le_bytes());
        b[flags..flags + 4].fill(0);
        let at = note_off + word(&b, 64 + 32);
        let note = b[note_off + image_note..at].to_vec();
        let p = tmp("vmcore");
        std::fs::write(&p, &b).unwrap();
        assert!(matches!(
            DiskImage::open(&p),
            Err(DiskImageError::Image(ImageError::NotResumable))
        ));
        let img = DiskImage::open_any(&p).unwrap();
        assert!(!img.resumable());
        assert!(DiskImage::is_image(&p));
        assert_eq!(img.notes().len(), 2);
        let regs = img.registers().unwrap();
        assert_eq!(regs.source(), "the NT_PRSTATUS note");
        assert!(regs.named().contains(&("rip", 0x20_1234)));
        assert!(
            img.view()
                .unwrap_err()
                .to_string()
                .contains("not marked resumable")
        );
        // A second NT_PRSTATUS is refused.
        let mut twice = b.clone();
        twice[at..at + note.len()].copy_from_slice(&note);
        let total = (image_note + 2 * note.len()) as u64;
        twice[64 + 32..64 + 40].copy_from_slice(&total.to_le_bytes());
        let e = DiskImage::from_bytes(twice, Path::new("t")).unwrap_err();
        assert!(
            e.to_string().ends_with("more than one NT_PRSTATUS note"),
            "{e}"
        );
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_vmcore_is_read_in_place_and_compared_despite_a_failed_checksum() {
        use kjump_abi::hibimage::write_vmcore_headers;
        use kjump_abi::vmcore::prstatus;
        let data: Vec<u8> = (0..2 * PAGE_SIZE).map(|i| (i % 13) as u8).collect();
        let rs = [
            Range {
                start: 0x10_0000,
                len: 2 * PAGE,
                checksum: checksum(&data),
            },
            Range {
                start: 0x40_0000,
                len: PAGE,
                checksum: checksum(&[9; PAGE_SIZE]),
            },
        ];
        let mut regs = [0u64; PRSTATUS_NREGS];
        regs[16] = 0x20_1001;
        let mut b = vec![0u8; header_size(2) as usize];
        write_vmcore_headers(&mut b, 0x20_1001, &rs, &prstatus(&regs, false)).unwrap();
        b.extend_from_slice(&data);
        b.extend_from_slice(&[9; PAGE_SIZE]);
        let p = tmp("vmcore-in-place");
        std::fs::write(&p, &b).unwrap();
        let img = DiskImage::open_any(&p).unwrap();
        assert!(img.is_vmcore() && !img.resumable());
        assert_eq!(img.kind(), "vmcore");
        assert!(DiskImage::open_vmcore(&p).is_ok());
        assert!(matches!(
            DiskImage::open(&p),
            Err(DiskImageError::Image(ImageError::NotResumable))
        ));
        assert!(
            img.registers()
                .unwrap()
                .named()
                .contains(&("rip", 0x20_1001))
        );
        // Its entry is a's rip, not a control page: the view is the pages
        // as they lie, every one a's own.
        let view = img.view().unwrap();
        assert_eq!(view.control_range(), None);
        assert_eq!(view.parked_pages(), 0);
        assert_eq!(
            view.ram_ranges(),
            [(0x10_0000, 2 * PAGE), (0x40_0000, PAGE)]
        );
        let mut page = [0u8; PAGE_SIZE];
        view.read_ram(0x10_1000, &mut page).unwrap();
        assert_eq!(page[..], data[PAGE_SIZE..]);
        assert!(view.is_own(0x10_0000) && view.is_own(0x40_0000));

        // A byte of range 1 changed: refused, but opened to compare with
        // the failure kept; unchecked, nothing is kept.
        b[header_size(2) as usize + 2 * PAGE_SIZE + 5] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert!(matches!(
            DiskImage::open_any(&p),
            Err(DiskImageError::Image(ImageError::RangeChecksum {
                index: 1,
                ..
            }))
        ));
        let img = DiskImage::open_to_compare(&p).unwrap();
        assert!(matches!(
            img.checksum_failures(),
            [ImageError::RangeChecksum { index: 1, .. }]
        ));
        assert_eq!(img.page(0x40_0000).unwrap().unwrap()[5], 9 ^ 1);
        let unchecked = DiskImage::open_vmcore_unchecked(&p).unwrap();
        assert!(unchecked.checksum_failures().is_empty());
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_damaged_image_is_still_recognised_as_one_and_a_dump_is_not() {
        let p = tmp("sniff");
        let mut b = image_with_view(true);
        let desc = 64 + 3 * 56 + 20;
        b[desc] = b'X'; // the magic
        std::fs::write(&p, &b).unwrap();
        assert!(DiskImage::is_image(&p));
        let e = DiskImage::open_any(&p).unwrap_err();
        assert!(e.to_string().contains("wrong magic"), "{e}");
        std::fs::write(&p, b"\x7fELF not an image").unwrap();
        assert!(!DiskImage::is_image(&p));
        std::fs::remove_file(&p).unwrap();
        assert!(!DiskImage::is_image(&p));
    }
}
