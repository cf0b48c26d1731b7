//! Guest RAM as a dump reads and writes it: [`RamSource`].

use super::*;
/// Guest RAM as a dump sees it: ranges, and a way to read them. Implemented
/// for the VM's [`GuestMem`] and for a [`Dump`] (to copy or rewrite one).
pub trait RamSource {
    /// RAM ranges `(start, len)`: page-aligned, sorted, not overlapping.
    fn ram_ranges(&self) -> Vec<(u64, u64)>;
    /// Fills `buf` from guest-physical `addr`; the span lies in one range.
    fn read_ram(&self, addr: u64, buf: &mut [u8]) -> Result<(), DumpError>;
    /// The first page at or after `addr` (rounded down to its page), below
    /// `end` and in the range holding `addr`, that may hold non-zero bytes;
    /// `end` if none does. Lets a reader skip the holes of a sparse dump;
    /// by default nothing is skipped.
    fn skip_zeros(&self, addr: u64, end: u64) -> u64 {
        (addr & !(PAGE - 1)).min(end)
    }
}

/// Fills `buf` from guest-physical `addr` a page at a time: `read(page,
/// off, part)` fills `part` with the bytes from offset `off` of the page
/// at `page` (never past its end). For a [`RamSource`] whose pages do not
/// all lie where they belong (kept in a page store, parked elsewhere).
pub fn read_by_page(
    addr: u64,
    buf: &mut [u8],
    mut read: impl FnMut(u64, usize, &mut [u8]) -> Result<(), DumpError>,
) -> Result<(), DumpError> {
    let mut done = 0usize;
    while done < buf.len() {
        let at = addr + done as u64;
        let page = at & !(PAGE - 1);
        let off = (at - page) as usize;
        let n = (PAGE_SIZE - off).min(buf.len() - done);
        read(page, off, &mut buf[done..done + n])?;
        done += n;
    }
    Ok(())
}

impl RamSource for GuestMem {
    /// The regions, with adjacent ones merged (one `PT_LOAD` per range).
    fn ram_ranges(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.iter().map(|r| (r.start_addr().0, r.len())).collect();
        v.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (start, len) in v {
            match out.last_mut() {
                Some(last) if last.0 + last.1 == start => last.1 += len,
                _ => out.push((start, len)),
            }
        }
        out
    }

    fn read_ram(&self, addr: u64, buf: &mut [u8]) -> Result<(), DumpError> {
        // Region by region: a merged range may span several. `copy_to`
        // does not mark vm-memory's dirty bitmap.
        let mut done = 0;
        while done < buf.len() {
            let at = addr + done as u64;
            let region = self
                .iter()
                .find(|r| r.start_addr().0 <= at && at - r.start_addr().0 < r.len())
                .ok_or(DumpError::Memory(at))?;
            let room = (region.len() - (at - region.start_addr().0)) as usize;
            let n = room.min(buf.len() - done);
            let slice = self
                .get_slice(GuestAddress(at), n)
                .map_err(|_| DumpError::Memory(at))?;
            if slice.copy_to(&mut buf[done..done + n]) != n {
                return Err(DumpError::Memory(at));
            }
            done += n;
        }
        Ok(())
    }
}
