//! What kjump's fuzz targets share: small guest memories filled from fuzz
//! input, slice containment checks, and the KJUMP note checksum fix-up that
//! lets the dump reader's fuzzer get past the checksum.

use vm_memory::{Bytes, GuestAddress};

pub use kjump_core::GuestMem;

/// Whether `inner` is a sub-slice of `outer` (same allocation, inside it).
pub fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr_range(), inner.as_ptr_range());
    o.start <= i.start && i.end <= o.end
}

/// Offset of sub-slice `inner` in `outer` (which must hold it).
pub fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    assert!(within(outer, inner), "not a sub-slice");
    inner.as_ptr() as usize - outer.as_ptr() as usize
}

/// The RAM of the small guests the fuzz targets use: 64 KiB at 0, a hole,
/// and 16 KiB just below 1 MiB, so that reads can run off the end of a
/// region, into the hole, past the end of RAM or wrap the address space.
pub const RAM: [(u64, u64); 2] = [(0, 0x1_0000), (0xf_c000, 0x4000)];

/// A [`RAM`]-shaped guest memory, and a plain copy of it: the model the
/// VMM's vm-memory accesses are checked against.
pub struct Ram {
    pub mem: GuestMem,
    plain: Vec<Vec<u8>>,
}

impl Ram {
    /// Filled from `fill`, from address 0 up across the hole: byte `i` of
    /// `fill` goes to the `i`th byte of RAM; the rest is zero.
    pub fn new(fill: &[u8]) -> Self {
        let mem =
            GuestMem::from_ranges(&RAM.map(|(start, len)| (GuestAddress(start), len as usize)))
                .expect("fixed, valid layout");
        let mut plain = Vec::new();
        let mut rest = fill;
        for (start, len) in RAM {
            let mut region = vec![0u8; len as usize];
            let n = rest.len().min(region.len());
            region[..n].copy_from_slice(&rest[..n]);
            // The mapping starts zeroed: only the filled part is written.
            mem.write_slice(&rest[..n], GuestAddress(start))
                .expect("inside the region");
            rest = &rest[n..];
            plain.push(region);
        }
        Self { mem, plain }
    }

    /// The region index and offset of `[addr, addr + len)` when it lies in
    /// one region.
    fn place(addr: u64, len: usize) -> Option<(usize, usize)> {
        let end = addr.checked_add(len as u64)?;
        RAM.iter()
            .position(|&(s, l)| addr >= s && end <= s + l)
            .map(|i| (i, (addr - RAM[i].0) as usize))
    }

    /// Whether `[addr, addr + len)` is RAM, by arithmetic alone.
    pub fn contains(addr: u64, len: u64) -> bool {
        usize::try_from(len).is_ok_and(|len| Self::place(addr, len).is_some())
    }

    /// Reads from the plain copy.
    pub fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let (i, off) = Self::place(addr, len)?;
        Some(&self.plain[i][off..off + len])
    }

    /// Reads a little-endian u64 from the plain copy.
    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        self.read(addr, 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// Writes both copies (as much of `bytes` as fits in one region).
    pub fn write(&mut self, addr: u64, bytes: &[u8]) {
        let Some(i) = RAM.iter().position(|&(s, l)| addr >= s && addr - s < l) else {
            return;
        };
        let off = (addr - RAM[i].0) as usize;
        let n = bytes.len().min(self.plain[i].len() - off);
        self.plain[i][off..off + n].copy_from_slice(&bytes[..n]);
        self.mem
            .write_slice(&bytes[..n], GuestAddress(addr))
            .expect("inside the region");
    }
}

/// Magic at the start of the KJUMP note's descriptor.
const KJUMP_MAGIC: &[u8; 8] = b"KJUMPDMP";
/// Offset of the checksum in the KJUMP note's descriptor.
const KJUMP_CHECKSUM: usize = 64;
/// The KJUMP note's header and name ("KJUMP\0" padded to 8) before the
/// descriptor: `namesz`, `descsz`, `type`, name.
const NOTE_PREFIX: usize = 20;

/// Recomputes the checksum of the first KJUMP note in a dump image, so that
/// mutations of the note's fields and JSON reach the decoder instead of
/// failing the checksum. Leaves the bytes alone when no note is found.
pub fn fix_kjump_checksum(dump: &mut [u8]) {
    let Some(at) = dump.windows(8).position(|w| w == KJUMP_MAGIC) else {
        return;
    };
    let Some(size_at) = at.checked_sub(NOTE_PREFIX - 4) else {
        return;
    };
    let size = u32::from_le_bytes(dump[size_at..size_at + 4].try_into().expect("4 bytes"));
    let Some(desc) = at
        .checked_add(size as usize)
        .and_then(|end| dump.get_mut(at..end))
    else {
        return;
    };
    if desc.len() < KJUMP_CHECKSUM + 8 {
        return;
    }
    desc[KJUMP_CHECKSUM..KJUMP_CHECKSUM + 8].fill(0);
    let sum = xxhash_rust::xxh3::xxh3_64(desc);
    desc[KJUMP_CHECKSUM..KJUMP_CHECKSUM + 8].copy_from_slice(&sum.to_le_bytes());
}

/// Makes the checksums of a hibernation image (`kjump_abi::hibimage`)
/// agree with its bytes where its headers can be found: each range's data
/// (where the file holds it) and then the range table, so that mutations
/// of the headers and data reach the checks behind the checksums.
pub fn fix_image_checksums(img: &mut [u8]) {
    use kjump_abi::hibimage::{Range, checksum, header_size, table_checksum};
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    /// Note header with its padded name, then the image header.
    const DESC: usize = 12 + 8;
    const TABLE: usize = 40;
    let get = |b: &[u8], o: usize| -> Option<u64> {
        Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
    };
    let Some(phnum) = img
        .get(56..58)
        .map(|p| u16::from_le_bytes([p[0], p[1]]) as usize)
    else {
        return;
    };
    let n = phnum.saturating_sub(1);
    if n == 0 || n > kjump_abi::hibimage::MAX_RANGES {
        return;
    }
    let desc = EHDR + phnum * PHDR + DESC;
    let mut ranges = Vec::with_capacity(n);
    let mut off = header_size(n);
    for i in 0..n {
        let e = desc + TABLE + 24 * i;
        let (Some(start), Some(len)) = (get(img, e), get(img, e + 8)) else {
            return;
        };
        let data = usize::try_from(off)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(o, l)| img.get(o..o.checked_add(l)?))
            .filter(|d| d.len() % 8 == 0);
        let sum = match data {
            Some(d) => checksum(d),
            None => get(img, e + 16).unwrap_or(0),
        };
        let Some(slot) = img.get_mut(e + 16..e + 24) else {
            return;
        };
        slot.copy_from_slice(&sum.to_le_bytes());
        ranges.push(Range {
            start,
            len,
            checksum: sum,
        });
        off = off.saturating_add(len);
    }
    let t = table_checksum(ranges.into_iter());
    if let Some(slot) = img.get_mut(desc + 32..desc + 40) {
        slot.copy_from_slice(&t.to_le_bytes());
    }
}
