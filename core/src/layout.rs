//! Guest-physical layout of a kjump VM.
//!
//! The contract with the guest kernel lives in [`kjump_abi::layout`] (both
//! sides compile it) and is re-exported here; what follows it are the
//! placement rules only the VMM needs.

pub use kjump_abi::layout::*;

/// The initramfs ends at or below this address: the top of the RAM below the
/// 32-bit hole, as Linux boot loaders place it (`initrd_addr_max`).
pub const INITRAMFS_CEILING: u64 = MMIO_HOLE_START;

/// Alignment of the initramfs (a page, as the boot protocol asks).
pub const INITRAMFS_ALIGN: u64 = PAGE_SIZE;

/// Where KVM puts the three pages of its real-mode TSS on Intel hosts
/// (`KVM_SET_TSS_ADDR`): in the 32-bit hole, where no RAM is.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
const _: () =
    assert!(KVM_TSS_ADDR >= MMIO_HOLE_START && KVM_TSS_ADDR + 3 * PAGE_SIZE <= MMIO_HOLE_END);

/// The end of the RAM below the 32-bit hole for a VM with `ram` bytes.
pub fn low_ram_top(ram: u64) -> u64 {
    let (ranges, _) = ram_ranges(ram);
    (ranges[0].0 + ranges[0].1).min(INITRAMFS_CEILING)
}

/// Where an initramfs of `size` bytes goes in a VM with `ram` bytes: the
/// highest page-aligned address at which it ends at or below
/// [`low_ram_top`]. `None` when it does not fit above 1 MiB.
pub fn initramfs_addr(ram: u64, size: u64) -> Option<u64> {
    let start = low_ram_top(ram).checked_sub(size)? & !(INITRAMFS_ALIGN - 1);
    (start >= HIGH_RAM_START).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initramfs_goes_to_the_top_of_low_ram() {
        assert_eq!(initramfs_addr(256 << 20, 4096), Some((256 << 20) - 4096));
        // Rounded down to a page; the end stays below the top.
        assert_eq!(initramfs_addr(256 << 20, 100), Some((256 << 20) - 4096));
        // With more RAM than the hole allows, it stays below 3 GiB.
        assert_eq!(initramfs_addr(8 << 30, 8192), Some(MMIO_HOLE_START - 8192));
        assert_eq!(low_ram_top(8 << 30), MMIO_HOLE_START);
    }

    #[test]
    fn initramfs_that_does_not_fit_is_refused() {
        assert_eq!(initramfs_addr(32 << 20, 32 << 20), None);
        assert_eq!(initramfs_addr(32 << 20, u64::MAX), None);
        assert_eq!(initramfs_addr(32 << 20, (31 << 20) + 1), None);
        assert_eq!(initramfs_addr(32 << 20, 31 << 20), Some(HIGH_RAM_START));
    }
}
