//! The parts of Linux's `struct boot_params` (the "zero page",
//! `arch/x86/include/uapi/asm/bootparam.h`) that kjump writes and reads.
//! The VMM writes it with linux-loader's `boot_params`; the guest reads these
//! offsets, and kernel A writes B's with the same offsets.

/// `boot_params.ext_ramdisk_image`: high 32 bits of the initramfs address.
pub const EXT_RAMDISK_IMAGE: usize = 0x0c0;
/// `boot_params.ext_ramdisk_size`.
pub const EXT_RAMDISK_SIZE: usize = 0x0c4;
/// `boot_params.ext_cmd_line_ptr`.
pub const EXT_CMD_LINE_PTR: usize = 0x0c8;
/// `boot_params.e820_entries` (u8).
pub const E820_ENTRIES: usize = 0x1e8;
/// `boot_params.hdr` (the setup header) starts here.
pub const HDR: usize = 0x1f1;
/// `hdr.type_of_loader` (u8).
pub const TYPE_OF_LOADER: usize = 0x210;
/// `hdr.ramdisk_image` (u32).
pub const RAMDISK_IMAGE: usize = 0x218;
/// `hdr.ramdisk_size` (u32).
pub const RAMDISK_SIZE: usize = 0x21c;
/// `hdr.cmd_line_ptr` (u32).
pub const CMD_LINE_PTR: usize = 0x228;
/// `hdr.cmdline_size` (u32).
pub const CMDLINE_SIZE: usize = 0x238;
/// `boot_params.e820_table`: up to 128 entries of 20 bytes.
pub const E820_TABLE: usize = 0x2d0;
/// Capacity of the e820 table in the zero page.
pub const E820_MAX: usize = 128;
/// Size of the zero page.
pub const SIZE: usize = 4096;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One e820 entry: `(addr, size, type)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

fn u32_at(zp: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(zp[off..off + 4].try_into().expect("4 bytes"))
}
fn u64_at(zp: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(zp[off..off + 8].try_into().expect("8 bytes"))
}

/// A read-only view of a zero page.
pub struct ZeroPage<'a>(pub &'a [u8; SIZE]);

impl ZeroPage<'_> {
    /// The e820 entries (the count is clamped to the table's capacity).
    pub fn e820(&self) -> impl Iterator<Item = E820Entry> + '_ {
        let n = (self.0[E820_ENTRIES] as usize).min(E820_MAX);
        (0..n).map(move |i| {
            let o = E820_TABLE + 20 * i;
            E820Entry {
                addr: u64_at(self.0, o),
                size: u64_at(self.0, o + 8),
                kind: u32_at(self.0, o + 16),
            }
        })
    }
    pub fn cmd_line_ptr(&self) -> u64 {
        u64::from(u32_at(self.0, CMD_LINE_PTR))
            | (u64::from(u32_at(self.0, EXT_CMD_LINE_PTR)) << 32)
    }
    pub fn cmdline_size(&self) -> u32 {
        u32_at(self.0, CMDLINE_SIZE)
    }
    pub fn ramdisk(&self) -> (u64, u64) {
        let addr = u64::from(u32_at(self.0, RAMDISK_IMAGE))
            | (u64::from(u32_at(self.0, EXT_RAMDISK_IMAGE)) << 32);
        let size = u64::from(u32_at(self.0, RAMDISK_SIZE))
            | (u64::from(u32_at(self.0, EXT_RAMDISK_SIZE)) << 32);
        (addr, size)
    }
}

/// Writes a zero page the way kernel A writes B's: e820, command line,
/// no initramfs. Returns `None` when there are too many e820 entries.
pub fn write_zero_page(
    zp: &mut [u8; SIZE],
    e820: &[E820Entry],
    cmd_line_ptr: u64,
    cmdline_size: u32,
) -> Option<()> {
    if e820.len() > E820_MAX {
        return None;
    }
    zp.fill(0);
    zp[E820_ENTRIES] = e820.len() as u8;
    for (i, e) in e820.iter().enumerate() {
        let o = E820_TABLE + 20 * i;
        zp[o..o + 8].copy_from_slice(&e.addr.to_le_bytes());
        zp[o + 8..o + 16].copy_from_slice(&e.size.to_le_bytes());
        zp[o + 16..o + 20].copy_from_slice(&e.kind.to_le_bytes());
    }
    // 0xff: "undefined" boot loader, as in Documentation/arch/x86/boot.rst.
    zp[TYPE_OF_LOADER] = 0xff;
    zp[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    zp[0x202..0x206].copy_from_slice(b"HdrS");
    zp[CMD_LINE_PTR..CMD_LINE_PTR + 4].copy_from_slice(&(cmd_line_ptr as u32).to_le_bytes());
    zp[EXT_CMD_LINE_PTR..EXT_CMD_LINE_PTR + 4]
        .copy_from_slice(&((cmd_line_ptr >> 32) as u32).to_le_bytes());
    zp[CMDLINE_SIZE..CMDLINE_SIZE + 4].copy_from_slice(&cmdline_size.to_le_bytes());
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_page_round_trips() {
        let mut zp = [0u8; SIZE];
        let e = [
            E820Entry {
                addr: 0x10_0000,
                size: 0x80_0000,
                kind: E820_RAM,
            },
            E820Entry {
                addr: 0x1_0000_0000,
                size: 0x1000,
                kind: E820_RESERVED,
            },
        ];
        write_zero_page(&mut zp, &e, 0x1_2345_6000, 77).unwrap();
        let v = ZeroPage(&zp);
        assert_eq!(v.e820().collect::<Vec<_>>(), e);
        assert_eq!(v.cmd_line_ptr(), 0x1_2345_6000);
        assert_eq!(v.cmdline_size(), 77);
        assert_eq!(v.ramdisk(), (0, 0));
    }

    #[test]
    fn e820_count_is_clamped() {
        let mut zp = [0u8; SIZE];
        zp[E820_ENTRIES] = 255;
        assert_eq!(ZeroPage(&zp).e820().count(), E820_MAX);
    }
}
