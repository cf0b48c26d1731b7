//! Just enough ELF64 to load a kernel: the header and its `PT_LOAD`s, every
//! offset and size checked against the file. Kernel A uses it to place
//! kernel B's segments in the kimage; the VMM's own loader is linux-loader.

/// `p_type` of a loadable segment.
pub const PT_LOAD: u32 = 1;
/// `e_machine` of x86_64.
pub const EM_X86_64: u16 = 62;
/// `e_type` of an executable.
pub const ET_EXEC: u16 = 2;
/// `p_type` of a note segment.
pub const PT_NOTE: u32 = 4;
/// `e_type` of a core file.
pub const ET_CORE: u16 = 4;

/// What is wrong with an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than a header, or not `\x7fELF`.
    NotElf,
    /// Not a little-endian ELF64 for x86_64.
    WrongMachine,
    /// Not an executable (ET_EXEC).
    NotExecutable,
    /// The program header table, or a segment's bytes, lie outside the file.
    Truncated,
    /// A segment's size or address wraps, or `filesz > memsz`.
    BadSegment,
}

impl core::fmt::Display for ElfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::NotElf => "not an ELF file",
            Self::WrongMachine => "not a little-endian ELF64 for x86_64",
            Self::NotExecutable => "not an ELF executable",
            Self::Truncated => "ELF file is truncated",
            Self::BadSegment => "ELF segment has inconsistent sizes or addresses",
        })
    }
}

/// A loadable segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Physical load address.
    pub paddr: u64,
    pub memsz: u64,
    /// The bytes to copy (`filesz` of them); the rest of `memsz` is zero.
    pub data: &'a [u8],
}

/// A parsed executable.
#[derive(Clone, Copy, Debug)]
pub struct Elf<'a> {
    image: &'a [u8],
    pub entry: u64,
    phoff: usize,
    phentsize: usize,
    phnum: usize,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

impl<'a> Elf<'a> {
    pub fn parse(image: &'a [u8]) -> Result<Self, ElfError> {
        if image.len() < 64 || &image[..4] != b"\x7fELF" {
            return Err(ElfError::NotElf);
        }
        // EI_CLASS 2 = 64-bit, EI_DATA 1 = little endian.
        if image[4] != 2 || image[5] != 1 || u16_at(image, 18) != EM_X86_64 {
            return Err(ElfError::WrongMachine);
        }
        if u16_at(image, 16) != ET_EXEC {
            return Err(ElfError::NotExecutable);
        }
        let phoff = usize::try_from(u64_at(image, 32)).map_err(|_| ElfError::Truncated)?;
        let phentsize = usize::from(u16_at(image, 54));
        let phnum = usize::from(u16_at(image, 56));
        if phentsize < 56 {
            return Err(ElfError::Truncated);
        }
        let end = phentsize
            .checked_mul(phnum)
            .and_then(|n| n.checked_add(phoff))
            .ok_or(ElfError::Truncated)?;
        if end > image.len() {
            return Err(ElfError::Truncated);
        }
        let elf = Self {
            image,
            entry: u64_at(image, 24),
            phoff,
            phentsize,
            phnum,
        };
        // Validate every segment once, so iteration cannot fail later.
        for i in 0..phnum {
            elf.segment(i)?;
        }
        Ok(elf)
    }

    fn segment(&self, i: usize) -> Result<Option<Segment<'a>>, ElfError> {
        let ph = &self.image[self.phoff + i * self.phentsize..];
        if u32_at(ph, 0) != PT_LOAD {
            return Ok(None);
        }
        let offset = u64_at(ph, 8);
        let paddr = u64_at(ph, 24);
        let filesz = u64_at(ph, 32);
        let memsz = u64_at(ph, 40);
        if filesz > memsz || paddr.checked_add(memsz).is_none() {
            return Err(ElfError::BadSegment);
        }
        let start = usize::try_from(offset).map_err(|_| ElfError::Truncated)?;
        let len = usize::try_from(filesz).map_err(|_| ElfError::Truncated)?;
        let end = start.checked_add(len).ok_or(ElfError::Truncated)?;
        let data = self.image.get(start..end).ok_or(ElfError::Truncated)?;
        Ok(Some(Segment { paddr, memsz, data }))
    }

    /// The `PT_LOAD` segments, in file order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'a>> + '_ {
        (0..self.phnum).filter_map(|i| self.segment(i).ok().flatten())
    }

    /// Lowest and highest (exclusive) physical address loaded.
    pub fn extent(&self) -> Option<(u64, u64)> {
        self.segments().fold(None, |acc, s| {
            let (lo, hi) = (s.paddr, s.paddr + s.memsz);
            Some(match acc {
                None => (lo, hi),
                Some((a, b)) => (a.min(lo), b.max(hi)),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 executable with the given (paddr, file bytes, memsz)
    /// segments.
    pub fn build(entry: u64, segs: &[(u64, &[u8], u64)]) -> Vec<u8> {
        let mut v = vec![0u8; 64 + 56 * segs.len()];
        v[..4].copy_from_slice(b"\x7fELF");
        v[4] = 2;
        v[5] = 1;
        v[6] = 1;
        v[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        v[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        v[24..32].copy_from_slice(&entry.to_le_bytes());
        v[32..40].copy_from_slice(&64u64.to_le_bytes());
        v[54..56].copy_from_slice(&56u16.to_le_bytes());
        v[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for (i, (paddr, data, memsz)) in segs.iter().enumerate() {
            let off = v.len() as u64;
            v.extend_from_slice(data);
            let ph = 64 + 56 * i;
            v[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            v[ph + 8..ph + 16].copy_from_slice(&off.to_le_bytes());
            v[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
            v[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            v[ph + 32..ph + 40].copy_from_slice(&(data.len() as u64).to_le_bytes());
            v[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        }
        v
    }

    #[test]
    fn reads_segments_and_extent() {
        let img = build(
            0x20_0010,
            &[(0x20_0000, b"code", 4), (0x20_1000, b"data", 0x2000)],
        );
        let e = Elf::parse(&img).unwrap();
        assert_eq!(e.entry, 0x20_0010);
        let s: Vec<_> = e.segments().collect();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[1],
            Segment {
                paddr: 0x20_1000,
                memsz: 0x2000,
                data: b"data"
            }
        );
        assert_eq!(e.extent(), Some((0x20_0000, 0x20_3000)));
    }

    #[test]
    fn refuses_bad_images() {
        assert_eq!(Elf::parse(b"hello").unwrap_err(), ElfError::NotElf);
        let img = build(0, &[(0x1000, b"abcdef", 6)]);
        for cut in [10, 64, 100, img.len() - 1] {
            assert!(Elf::parse(&img[..cut]).is_err(), "cut at {cut}");
        }
        let mut m = img.clone();
        m[18] = 3; // EM_386
        assert_eq!(Elf::parse(&m).unwrap_err(), ElfError::WrongMachine);
        let mut m = img.clone();
        m[16] = 3; // ET_DYN
        assert_eq!(Elf::parse(&m).unwrap_err(), ElfError::NotExecutable);
        let mut m = img.clone();
        m[64 + 40..64 + 48].copy_from_slice(&1u64.to_le_bytes()); // memsz < filesz
        assert_eq!(Elf::parse(&m).unwrap_err(), ElfError::BadSegment);
        let mut m = img.clone();
        m[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes()); // offset wraps
        assert_eq!(Elf::parse(&m).unwrap_err(), ElfError::Truncated);
        let mut m = img;
        m[56..58].copy_from_slice(&u16::MAX.to_le_bytes()); // too many headers
        assert_eq!(Elf::parse(&m).unwrap_err(), ElfError::Truncated);
    }
}
