//! Guest-virtual to guest-physical addresses, through the guest's own page
//! tables (for the debugger: `x/4gx $rsp` and symbols are virtual).
//!
//! x86-64 4-level paging (SDM vol. 3A, 4.5): PML4 → PDPT (PS: a 1 GiB page)
//! → page directory (PS: a 2 MiB page) → page table. Every entry must be
//! present; its frame must lie in guest RAM (the walk reads the next table
//! there); reserved bits of large-page frames must be clear; the address
//! must be canonical. With paging off (CR0.PG clear) virtual is physical.
//! 5-level paging (CR4.LA57) and 32-bit paging are refused: no kjump
//! guest uses them.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::GuestMem;

const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;

const PRESENT: u64 = 1 << 0;
/// PS: the entry maps a large page (in a PDPT or page directory entry).
const LARGE: u64 = 1 << 7;
/// Bits 51:12 of an entry: the physical frame (MAXPHYADDR is at most 52).
const FRAME: u64 = 0x000f_ffff_ffff_f000;

/// What the walk needs of the vCPU's control registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagingRegs {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

/// Why a virtual address does not translate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// bits 63:47 are not all equal
    #[error("{0:#x} is not a canonical address")]
    NonCanonical(u64),
    /// an entry on the way is not present
    #[error("{addr:#x} is not mapped (no present {level} entry)")]
    NotPresent { addr: u64, level: &'static str },
    /// a table, or the final frame, lies outside guest RAM
    #[error("{addr:#x} maps to {phys:#x}, outside guest RAM")]
    OutsideRam { addr: u64, phys: u64 },
    /// a large page's frame has reserved low bits set
    #[error("{addr:#x}: the {level} entry {entry:#x} has reserved bits set")]
    Reserved {
        addr: u64,
        level: &'static str,
        entry: u64,
    },
    /// a paging mode kjump does not walk
    #[error("the guest uses {0}, which the debugger does not translate")]
    Unsupported(&'static str),
}

/// Translates `addr` through the page tables `regs` point at, reading them
/// from `mem`; the physical address is checked to lie in `mem`.
pub fn translate(mem: &GuestMem, regs: &PagingRegs, addr: u64) -> Result<u64, WalkError> {
    let phys = if regs.cr0 & CR0_PG == 0 {
        addr
    } else if regs.cr4 & CR4_PAE == 0 {
        return Err(WalkError::Unsupported("32-bit paging"));
    } else if regs.efer & EFER_LMA == 0 {
        return Err(WalkError::Unsupported("PAE paging outside long mode"));
    } else if regs.cr4 & CR4_LA57 != 0 {
        return Err(WalkError::Unsupported("5-level paging"));
    } else {
        walk4(mem, regs.cr3, addr)?
    };
    if !mem.address_in_range(GuestAddress(phys)) {
        return Err(WalkError::OutsideRam { addr, phys });
    }
    Ok(phys)
}

fn walk4(mem: &GuestMem, cr3: u64, addr: u64) -> Result<u64, WalkError> {
    // Canonical: bits 63:47 are copies of bit 47.
    let top = (addr as i64) >> 47;
    if top != 0 && top != -1 {
        return Err(WalkError::NonCanonical(addr));
    }
    let levels: [(&'static str, u32, Option<u64>); 4] = [
        ("PML4", 39, None),
        ("PDPT", 30, Some(1 << 30)),
        ("page directory", 21, Some(2 << 20)),
        ("page table", 12, None),
    ];
    let mut table = cr3 & FRAME;
    for (level, shift, large) in levels {
        let index = (addr >> shift) & 0x1ff;
        let at = table + index * 8;
        let entry: u64 = mem
            .read_obj(GuestAddress(at))
            .map_err(|_| WalkError::OutsideRam { addr, phys: at })?;
        if entry & PRESENT == 0 {
            return Err(WalkError::NotPresent { addr, level });
        }
        if let Some(size) = large.filter(|_| entry & LARGE != 0) {
            // Bit 12 is PAT in a large-page entry; the frame's bits below
            // the page size (but PAT) are reserved.
            let frame = entry & FRAME & !(size - 1);
            if entry & FRAME & (size - 1) & !(1 << 12) != 0 {
                return Err(WalkError::Reserved { addr, level, entry });
            }
            return Ok(frame | (addr & (size - 1)));
        }
        table = entry & FRAME;
    }
    Ok(table | (addr & 0xfff))
}

/// The guest-physical pieces of `[addr, addr + len)`: one per page crossed,
/// as (physical address, length). Stops at the first byte that does not
/// translate: the pieces cover a prefix of the range, and the error says
/// why the rest does not (`None` when all of it translates).
pub fn pieces(
    mem: &GuestMem,
    regs: &PagingRegs,
    addr: u64,
    len: usize,
) -> (Vec<(u64, usize)>, Option<WalkError>) {
    let mut out = Vec::new();
    let mut done = 0usize;
    while done < len {
        let v = addr.wrapping_add(done as u64);
        let in_page = (0x1000 - (v & 0xfff)) as usize;
        let n = in_page.min(len - done);
        match translate(mem, regs, v) {
            // The piece must lie in RAM to its end (a range may end there).
            Ok(p) if mem.address_in_range(GuestAddress(p + n as u64 - 1)) => out.push((p, n)),
            Ok(p) => return (out, Some(WalkError::OutsideRam { addr: v, phys: p })),
            Err(e) => return (out, Some(e)),
        }
        done += n;
    }
    (out, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PML4: u64 = 0x1000;
    const PDPT: u64 = 0x2000;
    const PD: u64 = 0x3000;
    const PT: u64 = 0x4000;

    fn long_mode() -> PagingRegs {
        PagingRegs {
            cr0: CR0_PG | 1,
            cr3: PML4,
            cr4: CR4_PAE,
            efer: EFER_LMA | (1 << 8),
        }
    }

    /// 16 MiB of RAM with: [0, 1 GiB) by one PDPT entry of a PD whose first
    /// entry is a page table mapping 0x20_0000.. 4 KiB pages to 0x80_0000..,
    /// whose second is a 2 MiB page at 0x40_0000; 1 GiB..2 GiB by a 1 GiB
    /// page at 0 (so most of it lies outside RAM); and the top half's first
    /// PML4 entry mapping the same PDPT.
    fn mem() -> GuestMem {
        let m = GuestMem::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let w = |at: u64, v: u64| m.write_obj(v, GuestAddress(at)).unwrap();
        w(PML4, PDPT | 3);
        w(PML4 + 256 * 8, PDPT | 3);
        w(PDPT, PD | 3);
        w(PDPT + 8, LARGE | 3);
        w(PD, PT | 3);
        w(PD + 8, 0x40_0000 | LARGE | 3);
        // A 2 MiB entry whose frame has a reserved bit.
        w(PD + 16, 0x60_0000 | 0x2000 | LARGE | 3);
        for i in 0..512u64 {
            if i != 7 {
                w(PT + i * 8, (0x80_0000 + i * 0x1000) | 3);
            }
        }
        m
    }

    #[test]
    fn four_level_walks_with_4k_2m_and_1g_pages() {
        let m = mem();
        let r = long_mode();
        assert_eq!(translate(&m, &r, 0x1234), Ok(0x80_1234));
        assert_eq!(translate(&m, &r, 0x20_5678), Ok(0x40_5678));
        assert_eq!(translate(&m, &r, (1 << 30) + 0x9abc), Ok(0x9abc));
        // The higher half, through PML4 entry 256.
        assert_eq!(translate(&m, &r, 0xffff_8000_0000_1234), Ok(0x80_1234));
    }

    #[test]
    fn every_failure_is_named() {
        let m = mem();
        let r = long_mode();
        assert_eq!(
            translate(&m, &r, 0x7000),
            Err(WalkError::NotPresent {
                addr: 0x7000,
                level: "page table"
            })
        );
        assert_eq!(
            translate(&m, &r, 0x8000_0000),
            Err(WalkError::NotPresent {
                addr: 0x8000_0000,
                level: "PDPT"
            })
        );
        assert_eq!(
            translate(&m, &r, 0x0000_8000_0000_0000),
            Err(WalkError::NonCanonical(0x0000_8000_0000_0000))
        );
        assert!(matches!(
            translate(&m, &r, 0x40_0000),
            Err(WalkError::Reserved { .. })
        ));
        assert_eq!(
            translate(&m, &r, (1 << 30) + (20 << 20)),
            Err(WalkError::OutsideRam {
                addr: (1 << 30) + (20 << 20),
                phys: 20 << 20
            })
        );
        // A CR3 outside RAM.
        let far = PagingRegs {
            cr3: 1 << 40,
            ..long_mode()
        };
        assert!(matches!(
            translate(&m, &far, 0),
            Err(WalkError::OutsideRam { .. })
        ));
        let la57 = PagingRegs {
            cr4: CR4_PAE | CR4_LA57,
            ..long_mode()
        };
        assert_eq!(
            translate(&m, &la57, 0),
            Err(WalkError::Unsupported("5-level paging"))
        );
        let legacy = PagingRegs {
            cr4: 0,
            ..long_mode()
        };
        assert!(matches!(
            translate(&m, &legacy, 0),
            Err(WalkError::Unsupported(_))
        ));
        assert!(!WalkError::NonCanonical(1).to_string().contains('\n'));
    }

    #[test]
    fn without_paging_virtual_is_physical_in_ram() {
        let m = mem();
        let off = PagingRegs::default();
        assert_eq!(translate(&m, &off, 0x12_3456), Ok(0x12_3456));
        assert!(matches!(
            translate(&m, &off, 32 << 20),
            Err(WalkError::OutsideRam { .. })
        ));
    }

    #[test]
    fn a_range_is_cut_into_pages_up_to_the_first_hole() {
        let m = mem();
        let r = long_mode();
        let (p, e) = pieces(&m, &r, 0xff8, 0x10);
        assert_eq!(p, vec![(0x80_0ff8, 8), (0x80_1000, 8)]);
        assert_eq!(e, None);
        // Page 7 is not mapped: the range stops there.
        let (p, e) = pieces(&m, &r, 0x6ffc, 8);
        assert_eq!(p, vec![(0x80_6ffc, 4)]);
        assert!(matches!(
            e,
            Some(WalkError::NotPresent { addr: 0x7000, .. })
        ));
        assert_eq!(pieces(&m, &r, 0x1000, 0), (vec![], None));
    }
}
