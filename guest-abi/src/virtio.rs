//! The virtio-blk device over virtio-mmio, as both sides see it: where the
//! VMM puts it, how the command line announces it, and the numbers of the
//! virtio 1.x specification the VMM's device model and the guest's driver
//! must agree on (OASIS virtio v1.2: 4.2.2 "MMIO Device Register Layout",
//! 2.1 "Device Status Field", 5.2 "Block Device").

use crate::cmdline::{parse_size, parse_u64};

/// Where the VMM puts the device's register window: in the 32-bit hole,
/// where no RAM is, away from the IOAPIC (0xfec0_0000) and the local APIC.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Size of the register window (one page: registers and config space).
pub const MMIO_SIZE: u64 = 0x1000;
/// The interrupt line announced for the device (ISA IRQ 5, free on a PC).
/// The kjump driver polls the used ring and the VMM raises no line: the
/// number is there because Linux's `virtio_mmio.device=` syntax wants it.
pub const IRQ: u32 = 5;

/// The command-line key Linux's `virtio_mmio` driver reads
/// (`drivers/virtio/virtio_mmio.c`: `<size>@<baseaddr>:<irq>[:<id>]`).
pub const CMDLINE_KEY: &str = "virtio_mmio.device";

/// `MagicValue`: "virt" in little endian.
pub const MAGIC: u32 = 0x7472_6976;
/// `Version` of the non-legacy virtio-mmio interface.
pub const VERSION: u32 = 2;
/// `DeviceID` of a block device.
pub const DEVICE_ID_BLOCK: u32 = 2;
/// `VendorID` the VMM reports ("kjmp").
pub const VENDOR_ID: u32 = 0x706d_6a6b;

/// Register offsets in the window (virtio v1.2, 4.2.2).
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device's configuration space (`struct virtio_blk_config`:
    /// `capacity`, a little-endian u64 of 512-byte sectors, comes first).
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio v1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// `VIRTIO_F_VERSION_1` (bit 32): the device is a virtio 1.x device.
pub const F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_BLK_F_FLUSH` (bit 9): the device takes flush requests.
pub const BLK_F_FLUSH: u64 = 1 << 9;

/// Block request types (virtio v1.2, 5.2.6).
pub const BLK_T_IN: u32 = 0;
pub const BLK_T_OUT: u32 = 1;
pub const BLK_T_FLUSH: u32 = 4;
/// Block request status values.
pub const BLK_S_OK: u8 = 0;
pub const BLK_S_IOERR: u8 = 1;
pub const BLK_S_UNSUPP: u8 = 2;

/// A block device sector.
pub const SECTOR_SIZE: u64 = 512;
/// Size of a request header (`struct virtio_blk_outhdr`: type u32,
/// reserved/ioprio u32, sector u64).
pub const BLK_HEADER_SIZE: u32 = 16;

/// The queue size the device offers (`QueueNumMax`).
pub const QUEUE_MAX: u16 = 64;

/// Descriptor flags (virtio v1.2, 2.7.5).
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;

/// The `boot` scenario's disk check writes [`BOOT_CHECK_SECTORS`] sectors
/// from [`BOOT_CHECK_SECTOR`] on, byte `i` being [`boot_check_byte`]`(i)`,
/// and reads them back; the host's tests find the same bytes in the file.
pub const BOOT_CHECK_SECTOR: u64 = 1;
/// See [`BOOT_CHECK_SECTOR`].
pub const BOOT_CHECK_SECTORS: u64 = 4;

/// Byte `i` of the `boot` scenario's disk check.
pub fn boot_check_byte(i: u64) -> u8 {
    (i.wrapping_mul(131) ^ (i >> 8) ^ 0x6b) as u8
}

/// One virtio-mmio device as the command line announces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    /// Size of the register window.
    pub size: u64,
    /// Guest-physical base of the window.
    pub base: u64,
    /// Interrupt line.
    pub irq: u32,
}

impl MmioDevice {
    /// The kjump VMM's block device.
    pub const KJUMP_BLOCK: Self = Self {
        size: MMIO_SIZE,
        base: MMIO_BASE,
        irq: IRQ,
    };

    /// Parses the value of `virtio_mmio.device=` (`<size>@<base>:<irq>`,
    /// with an optional `:<id>` that is ignored); sizes take `K`/`M`/`G`.
    pub fn parse(value: &str) -> Option<Self> {
        let (size, rest) = value.split_once('@')?;
        let (base, rest) = rest.split_once(':')?;
        let irq = rest.split(':').next()?;
        let dev = Self {
            size: parse_size(size)?,
            base: parse_u64(base)?,
            irq: u32::try_from(parse_u64(irq)?).ok()?,
        };
        (dev.size > 0 && dev.base.checked_add(dev.size).is_some()).then_some(dev)
    }

    /// The device named on a command line, if any.
    pub fn from_cmdline(cmdline: &str) -> Option<Self> {
        crate::cmdline::get(cmdline, CMDLINE_KEY).and_then(Self::parse)
    }
}

impl core::fmt::Display for MmioDevice {
    /// `virtio_mmio.device=4K@0xd0000000:5`, as Linux reads it.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{CMDLINE_KEY}=")?;
        if self.size.is_multiple_of(1024) {
            write!(f, "{}K", self.size / 1024)?;
        } else {
            write!(f, "{}", self.size)?;
        }
        write!(f, "@{:#x}:{}", self.base, self.irq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announcement_reads_as_linux_writes_it_and_back() {
        let s = format!("{}", MmioDevice::KJUMP_BLOCK);
        assert_eq!(s, "virtio_mmio.device=4K@0xd0000000:5");
        let cmdline = format!("kjump.role=a {s} kjump.scenario=boot");
        assert_eq!(
            MmioDevice::from_cmdline(&cmdline),
            Some(MmioDevice::KJUMP_BLOCK)
        );
    }

    #[test]
    fn the_optional_id_is_ignored_and_bad_values_refused() {
        assert_eq!(
            MmioDevice::parse("0x200@0x1000:7:3"),
            Some(MmioDevice {
                size: 0x200,
                base: 0x1000,
                irq: 7
            })
        );
        for bad in ["", "4K", "4K@", "4K@0xd0000000", "0@0x1000:5", "4K@x:5"] {
            assert_eq!(MmioDevice::parse(bad), None, "{bad}");
        }
        assert_eq!(MmioDevice::from_cmdline("kjump.role=a"), None);
    }

    #[test]
    fn the_window_is_in_the_hole_and_clear_of_the_apics() {
        const { assert!(MMIO_BASE >= crate::layout::MMIO_HOLE_START) };
        const { assert!(MMIO_BASE + MMIO_SIZE <= crate::arch::IOAPIC_BASE) };
    }
}
