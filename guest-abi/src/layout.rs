//! Guest-physical layout of a kjump VM at boot. The VMM places things here;
//! the guest kernel keeps its frame allocator off them.
//!
//! ```text
//! 0x0000_0000  real-mode IVT/BDA (left alone, reserved in e820)
//! 0x0000_0500  boot GDT (VMM)
//! 0x0000_7000  boot_params, the "zero page" (VMM → guest, rsi at entry)
//! 0x0000_9000  boot page tables: PML4, PDPT, then one PD per GiB (VMM)
//! 0x0008_0000  kernel command line (VMM)
//! 0x0009_fc00  end of low RAM; 0xa_0000..1 MiB is the legacy hole
//! 0x0010_0000  1 MiB: start of the peer's (B's) region by default
//! 0x0020_0000  2 MiB: the guest kernel's PT_LOADs (linked here)
//! ...          the initramfs, near the top of RAM below 4 GiB
//! ```

/// Size of a page.
pub const PAGE_SIZE: u64 = 4096;
/// Where the VMM puts the boot GDT.
pub const BOOT_GDT: u64 = 0x500;
/// Where the VMM puts `boot_params` (the zero page).
pub const ZERO_PAGE: u64 = 0x7000;
/// Boot page tables: PML4 here, the PDPT at +4 KiB, PDs after it.
pub const BOOT_PML4: u64 = 0x9000;
/// At most this many GiB are identity-mapped by the boot page tables.
pub const BOOT_MAX_GIB: u64 = 64;
/// Where the VMM puts the kernel command line.
pub const CMDLINE: u64 = 0x8_0000;
/// Longest command line, NUL included.
pub const CMDLINE_MAX: u64 = 4096;
/// End of usable low memory (the EBDA and the legacy hole follow).
pub const LOW_RAM_END: u64 = 0x9_fc00;
/// 1 MiB: start of the RAM above the legacy hole.
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// The guest kernel is linked at 2 MiB.
pub const KERNEL_START: u64 = 0x20_0000;
/// Start of the 32-bit PCI hole when RAM is larger than this.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit hole: RAM beyond `MMIO_HOLE_START` continues here.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;

/// Smallest RAM a kjump VM accepts (kernel, B's region, sources, slack).
pub const MIN_RAM: u64 = 32 << 20;
/// Largest RAM the boot page tables can map.
pub const MAX_RAM: u64 = (BOOT_MAX_GIB << 30) - (MMIO_HOLE_END - MMIO_HOLE_START);

/// Default size of the RAM kernel A gives kernel B.
pub const DEFAULT_PEER_MEM: u64 = 8 << 20;

/// The initramfs file that holds kernel B's ELF image (kernel A loads it).
pub const KERNEL_B_PATH: &str = "kjump/kernel-b";
/// The optional initramfs file with the run's configuration (text).
pub const CONFIG_PATH: &str = "kjump/config";

/// The RAM ranges `(start, len)` of a VM with `ram` bytes: below the 32-bit
/// hole, and above 4 GiB what did not fit below it.
pub fn ram_ranges(ram: u64) -> ([(u64, u64); 2], usize) {
    if ram <= MMIO_HOLE_START {
        ([(0, ram), (0, 0)], 1)
    } else {
        (
            [(0, MMIO_HOLE_START), (MMIO_HOLE_END, ram - MMIO_HOLE_START)],
            2,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), ([(0, 256 << 20), (0, 0)], 1));
    }

    #[test]
    fn large_ram_leaves_the_32bit_hole() {
        let (r, n) = ram_ranges(4 << 30);
        assert_eq!(n, 2);
        assert_eq!(r[0], (0, 3 << 30));
        assert_eq!(r[1], (4 << 30, 1 << 30));
        assert_eq!(r[0].1 + r[1].1, 4 << 30);
    }

    #[test]
    fn fixed_areas_do_not_overlap() {
        let areas = [
            (BOOT_GDT, 0x100),
            (ZERO_PAGE, PAGE_SIZE),
            (BOOT_PML4, (2 + BOOT_MAX_GIB) * PAGE_SIZE),
            (CMDLINE, CMDLINE_MAX),
        ];
        for (i, a) in areas.iter().enumerate() {
            assert!(a.0 + a.1 <= LOW_RAM_END);
            for b in &areas[i + 1..] {
                assert!(
                    a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0,
                    "{a:x?} overlaps {b:x?}"
                );
            }
        }
    }
}
