//! Boot: puts the guest kernel, its `boot_params`, command line, boot GDT,
//! page tables and initramfs into guest RAM, as [`kjump_core::layout`] says.
//!
//! The guest is entered directly in 64-bit mode, the way Firecracker boots a
//! `vmlinux`: the VMM does what a 64-bit boot loader would (Linux's
//! `Documentation/arch/x86/boot.rst`, "64-bit boot protocol"): identity-mapped
//! page tables, a flat GDT, `rsi` = the zero page. The pure parts (ELF
//! checks, e820, page tables, GDT) are plain functions tested without KVM.

use std::io::Cursor;

use kjump_abi::bootparams::{E820_RAM, E820_RESERVED, E820Entry};
use kjump_core::image::{BootError, BootPlan, plan};
use kvm_bindings::kvm_segment;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{KernelLoader, elf::Elf, load_cmdline};
use vm_memory::{Bytes, GuestAddress};

use kjump_core::GuestMem;
use kjump_core::layout::{self, PAGE_SIZE};

/// Where everything went; kept by the VM for scenarios and reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootInfo {
    pub entry: u64,
    pub kernel_start: u64,
    pub kernel_end: u64,
    /// `(address, size)` of the initramfs, when there is one.
    pub initramfs: Option<(u64, u64)>,
    pub cmdline: String,
    pub e820: Vec<E820Entry>,
}

/// The e820 map of a VM with `ram` bytes: low RAM, the EBDA and legacy hole
/// reserved, RAM from 1 MiB, and above 4 GiB what did not fit below the
/// 32-bit hole (the hole itself is left out, as on a PC).
pub fn e820_map(ram: u64) -> Vec<E820Entry> {
    let (ranges, n) = layout::ram_ranges(ram);
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: layout::LOW_RAM_END,
            kind: E820_RAM,
        },
        E820Entry {
            addr: layout::LOW_RAM_END,
            size: layout::HIGH_RAM_START - layout::LOW_RAM_END,
            kind: E820_RESERVED,
        },
    ];
    let low_end = ranges[0].0 + ranges[0].1;
    if low_end > layout::HIGH_RAM_START {
        map.push(E820Entry {
            addr: layout::HIGH_RAM_START,
            size: low_end - layout::HIGH_RAM_START,
            kind: E820_RAM,
        });
    }
    for &(addr, size) in &ranges[1..n] {
        map.push(E820Entry {
            addr,
            size,
            kind: E820_RAM,
        });
    }
    map
}

/// Number of GiB the boot page tables map for `ram` bytes: everything up to
/// the end of the highest RAM range.
pub fn mapped_gib(ram: u64) -> u64 {
    let (ranges, n) = layout::ram_ranges(ram);
    let end = ranges[n - 1].0 + ranges[n - 1].1;
    end.div_ceil(1 << 30).max(1)
}

/// Page-table entry bits: present, writable, and (in a PD) a 2 MiB page.
const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_PS: u64 = 1 << 7;

/// The boot page tables as bytes to be written at [`layout::BOOT_PML4`]:
/// one PML4, one PDPT, then one PD per GiB, identity-mapping
/// `0..mapped_gib(ram)` GiB with 2 MiB pages.
pub fn page_tables(ram: u64) -> Result<Vec<u8>, BootError> {
    let gib = mapped_gib(ram);
    if gib > layout::BOOT_MAX_GIB {
        return Err(BootError::TooMuchRam(gib << 30));
    }
    let page = PAGE_SIZE as usize;
    let mut t = vec![0u8; (2 + gib as usize) * page];
    let pdpt = layout::BOOT_PML4 + PAGE_SIZE;
    let pd0 = pdpt + PAGE_SIZE;
    t[..8].copy_from_slice(&(pdpt | PTE_P | PTE_RW).to_le_bytes());
    for g in 0..gib as usize {
        let pd = pd0 + g as u64 * PAGE_SIZE;
        t[page + 8 * g..page + 8 * g + 8].copy_from_slice(&(pd | PTE_P | PTE_RW).to_le_bytes());
        for e in 0..512 {
            let addr = ((g as u64) << 30) | ((e as u64) << 21);
            let o = (2 + g) * page + 8 * e;
            t[o..o + 8].copy_from_slice(&(addr | PTE_P | PTE_RW | PTE_PS).to_le_bytes());
        }
    }
    Ok(t)
}

/// Builds a GDT descriptor from the access/flags word (`flags` bits 0..8 are
/// the access byte, bits 12..16 the G/DB/L/AVL nibble), base and 20-bit
/// limit (SDM vol. 3A, 3.4.5 "Segment Descriptors").
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0xf_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// Selector of the boot code segment.
pub const BOOT_CS: u16 = 0x08;
/// Selector of the boot data segment.
pub const BOOT_DS: u16 = 0x10;

/// The boot GDT: null, 64-bit code (0x08), data (0x10). The accessed bits
/// are preset so the CPU never writes the table.
pub const BOOT_GDT_ENTRIES: [u64; 3] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // G, L, present, code exec/read, accessed
    gdt_entry(0xc093, 0, 0xfffff), // G, D/B, present, data read/write, accessed
];

/// The segment register contents (hidden part included) that loading
/// `selector` from a GDT whose entry is `entry` gives.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = bit(55);
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        s: bit(44),
        dpl: ((entry >> 45) & 3) as u8,
        present: bit(47),
        avl: bit(52),
        l: bit(53),
        db: bit(54),
        g,
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

/// Fills Linux's `boot_params` for the e820 map, command line and initramfs.
pub fn build_boot_params(
    e820: &[E820Entry],
    cmdline_len: usize,
    initramfs: Option<(u64, u64)>,
) -> boot_params {
    let mut p = boot_params::default();
    p.hdr.boot_flag = 0xaa55;
    p.hdr.header = u32::from_le_bytes(*b"HdrS");
    // 0xff: "undefined" boot loader (Documentation/arch/x86/boot.rst).
    p.hdr.type_of_loader = 0xff;
    p.hdr.cmd_line_ptr = layout::CMDLINE as u32;
    p.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initramfs {
        p.hdr.ramdisk_image = addr as u32;
        p.hdr.ramdisk_size = size as u32;
        p.ext_ramdisk_image = (addr >> 32) as u32;
        p.ext_ramdisk_size = (size >> 32) as u32;
    }
    p.e820_entries = e820.len() as u8;
    for (slot, e) in p.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    p
}

/// Loads everything a guest needs to boot into `mem` (a VM with `ram` bytes).
pub fn load(
    mem: &GuestMem,
    ram: u64,
    kernel: &[u8],
    initramfs: Option<&[u8]>,
    cmdline: &str,
) -> Result<BootInfo, BootError> {
    let BootPlan {
        kernel: info,
        initramfs: ramdisk,
        cmdline: cl,
    } = plan(ram, kernel, initramfs.map(|b| b.len() as u64), cmdline)?;

    let loaded = Elf::load(
        mem,
        None,
        &mut Cursor::new(kernel),
        Some(GuestAddress(layout::HIGH_RAM_START)),
    )
    .map_err(BootError::Load)?;
    log::debug!(
        "kernel loaded at {:#x}..{:#x}, entry {:#x}",
        info.start,
        loaded.kernel_end,
        info.entry
    );

    if let (Some((addr, _)), Some(bytes)) = (ramdisk, initramfs) {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|source| BootError::Memory {
                what: "initramfs",
                source,
            })?;
        log::debug!("initramfs at {addr:#x}, {} bytes", bytes.len());
    }

    load_cmdline(mem, GuestAddress(layout::CMDLINE), &cl).map_err(BootError::CmdlineWrite)?;

    let e820 = e820_map(ram);
    let params = build_boot_params(&e820, cmdline.len(), ramdisk);
    LinuxBootConfigurator::write_bootparams::<GuestMem>(
        &BootParams::new(&params, GuestAddress(layout::ZERO_PAGE)),
        mem,
    )
    .map_err(BootError::ZeroPage)?;

    let gdt: Vec<u8> = BOOT_GDT_ENTRIES
        .iter()
        .flat_map(|e| e.to_le_bytes())
        .collect();
    mem.write_slice(&gdt, GuestAddress(layout::BOOT_GDT))
        .map_err(|source| BootError::Memory {
            what: "boot GDT",
            source,
        })?;
    mem.write_slice(&page_tables(ram)?, GuestAddress(layout::BOOT_PML4))
        .map_err(|source| BootError::Memory {
            what: "boot page tables",
            source,
        })?;

    Ok(BootInfo {
        entry: info.entry,
        kernel_start: info.start,
        kernel_end: info.end,
        initramfs: ramdisk,
        cmdline: cmdline.to_owned(),
        e820,
    })
}

/// Test helpers shared with the other modules' tests.
#[cfg(test)]
pub(crate) mod testing {
    /// A minimal x86_64 ELF executable: one PT_LOAD with `code` at `paddr`,
    /// entry at its start.
    pub fn tiny_elf(code: &[u8], paddr: u64) -> Vec<u8> {
        let mut e = vec![0u8; 64 + 56];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2; // ELFCLASS64
        e[5] = 1; // little endian
        e[6] = 1; // EV_CURRENT
        e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        e[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
        e[20..24].copy_from_slice(&1u32.to_le_bytes());
        e[24..32].copy_from_slice(&paddr.to_le_bytes()); // entry
        e[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        e[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        e[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        e[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let ph = 64;
        e[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        e[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        e[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes()); // offset
        e[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
        e[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        e[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        e[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64).to_le_bytes());
        e[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
        e.extend_from_slice(code);
        e
    }
}

#[cfg(test)]
mod tests {
    use super::testing::tiny_elf;
    use super::*;
    use kjump_abi::bootparams::ZeroPage;
    use kjump_core::image::*;
    use vm_memory::GuestMemoryBackend;

    fn mem(ram: u64) -> GuestMem {
        let (r, n) = layout::ram_ranges(ram);
        let ranges: Vec<_> = r[..n]
            .iter()
            .map(|&(a, l)| (GuestAddress(a), l as usize))
            .collect();
        GuestMem::from_ranges(&ranges).unwrap()
    }

    #[test]
    fn e820_for_small_ram() {
        let m = e820_map(256 << 20);
        assert_eq!(
            m,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9_fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9_fc00,
                    size: 0x10_0000 - 0x9_fc00,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x10_0000,
                    size: (256 << 20) - 0x10_0000,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn e820_leaves_the_hole_at_3_gib() {
        let m = e820_map(4 << 30);
        assert_eq!(m.len(), 4);
        assert_eq!(
            m[2],
            E820Entry {
                addr: 1 << 20,
                size: (3 << 30) - (1 << 20),
                kind: E820_RAM
            }
        );
        assert_eq!(
            m[3],
            E820Entry {
                addr: 4 << 30,
                size: 1 << 30,
                kind: E820_RAM
            }
        );
        let ram: u64 = m
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        // All RAM but the EBDA and the legacy hole is usable.
        assert_eq!(ram, (4 << 30) - (0x10_0000 - 0x9_fc00));
        // Nothing is listed inside the hole.
        assert!(
            m.iter()
                .all(|e| e.addr + e.size <= 3 << 30 || e.addr >= 4 << 30)
        );
    }

    #[test]
    fn page_tables_identity_map_all_ram() {
        let t = page_tables(256 << 20).unwrap();
        assert_eq!(t.len(), 3 * 4096);
        let q = |o: usize| u64::from_le_bytes(t[o..o + 8].try_into().unwrap());
        assert_eq!(q(0), 0xa000 | 3);
        assert_eq!(q(8), 0, "only one PML4 entry");
        assert_eq!(q(4096), 0xb000 | 3);
        assert_eq!(q(4096 + 8), 0, "one GiB is enough for 256 MiB");
        assert_eq!(q(8192), 0x83);
        assert_eq!(q(8192 + 8 * 511), (511 << 21) | 0x83);

        // 5 GiB of RAM ends at 6 GiB: six PDs.
        let t = page_tables(5 << 30).unwrap();
        assert_eq!(t.len(), 8 * 4096);
        let q = |o: usize| u64::from_le_bytes(t[o..o + 8].try_into().unwrap());
        assert_eq!(q(4096 + 8 * 5), (0xb000 + 5 * 4096) | 3);
        let last = 7 * 4096 + 8 * 511;
        assert_eq!(q(last), ((5u64 << 30) | (511 << 21)) | 0x83);
        assert!(page_tables(layout::MAX_RAM).is_ok());
        assert!(matches!(
            page_tables(layout::MAX_RAM + (1 << 30)),
            Err(BootError::TooMuchRam(_))
        ));
    }

    #[test]
    fn gdt_entries_decode_to_flat_long_mode_segments() {
        assert_eq!(BOOT_GDT_ENTRIES[1], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT_ENTRIES[2], 0x00cf_9300_0000_ffff);
        let cs = segment_from_gdt(BOOT_GDT_ENTRIES[1], BOOT_CS);
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 8));
        assert_eq!(
            (cs.type_, cs.s, cs.dpl, cs.present, cs.l, cs.db, cs.g),
            (0xb, 1, 0, 1, 1, 0, 1)
        );
        assert_eq!(cs.unusable, 0);
        let ds = segment_from_gdt(BOOT_GDT_ENTRIES[2], BOOT_DS);
        assert_eq!(
            (ds.type_, ds.l, ds.db, ds.g, ds.limit),
            (0x3, 0, 1, 1, 0xffff_ffff)
        );
        let null = segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
        // Base and byte-granular limit bits land where the SDM puts them.
        let e = gdt_entry(0x0089, 0x1234_5678, 0x67);
        let s = segment_from_gdt(e, 0x18);
        assert_eq!((s.base, s.limit, s.type_, s.g), (0x1234_5678, 0x67, 9, 0));
    }

    #[test]
    fn bad_kernels_are_refused_with_a_reason() {
        let good = tiny_elf(&[0xf4], 0x20_0000);
        assert_eq!(inspect_kernel(&good).unwrap().entry, 0x20_0000);
        assert!(matches!(inspect_kernel(&[]), Err(BootError::EmptyKernel)));
        assert!(matches!(
            inspect_kernel(b"#!/bin/sh\n"),
            Err(BootError::NotElf)
        ));
        assert!(matches!(
            inspect_kernel(b"\x7fELF"),
            Err(BootError::Malformed(_))
        ));
        let mut arm = good.clone();
        arm[18] = 183;
        assert!(matches!(
            inspect_kernel(&arm),
            Err(BootError::WrongMachine(183))
        ));
        let mut elf32 = good.clone();
        elf32[4] = 1;
        assert!(matches!(inspect_kernel(&elf32), Err(BootError::NotElf64)));
        let mut dynamic = good.clone();
        dynamic[16] = 3;
        assert!(matches!(
            inspect_kernel(&dynamic),
            Err(BootError::NotExecutable(3))
        ));
        // Cut inside the program headers, then inside the segment's bytes.
        assert!(matches!(
            inspect_kernel(&good[..100]),
            Err(BootError::Malformed(_))
        ));
        let mut long_seg = good.clone();
        long_seg[64 + 32] = 50;
        assert!(matches!(
            inspect_kernel(&long_seg),
            Err(BootError::Malformed(_))
        ));
        let mut huge_phnum = good.clone();
        huge_phnum[56..58].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(
            inspect_kernel(&huge_phnum),
            Err(BootError::Malformed(_))
        ));
        let mut wild_entry = good.clone();
        wild_entry[24..32].copy_from_slice(&0x1000u64.to_le_bytes());
        assert!(matches!(
            inspect_kernel(&wild_entry),
            Err(BootError::EntryOutsideImage(0x1000))
        ));
        let mut wrap = good.clone();
        wrap[64 + 24..64 + 32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            inspect_kernel(&wrap),
            Err(BootError::Malformed(_))
        ));
        // Every prefix of a good kernel is refused without a panic.
        for n in 0..good.len() {
            assert!(inspect_kernel(&good[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn kernel_must_lie_in_ram_above_1_mib() {
        let ram = 64 << 20;
        let low = inspect_kernel(&tiny_elf(&[0xf4], 0x8_0000)).unwrap();
        assert!(matches!(
            check_kernel_fits(&low, ram),
            Err(BootError::SegmentTooLow { .. })
        ));
        let high = inspect_kernel(&tiny_elf(&[0xf4], 64 << 20)).unwrap();
        assert!(matches!(
            check_kernel_fits(&high, ram),
            Err(BootError::SegmentOutsideRam { .. })
        ));
        let hole = inspect_kernel(&tiny_elf(&[0xf4], 0xc000_0000)).unwrap();
        assert!(check_kernel_fits(&hole, 8 << 30).is_err());
        let above = inspect_kernel(&tiny_elf(&[0xf4], 0x1_0000_0000)).unwrap();
        assert!(check_kernel_fits(&above, 8 << 30).is_ok());
    }

    #[test]
    fn load_writes_everything_the_guest_reads() {
        let ram = 64 << 20;
        let m = mem(ram);
        let initrd = vec![0xabu8; 5000];
        let code = [0xf4, 0xeb, 0xfd];
        let info = load(
            &m,
            ram,
            &tiny_elf(&code, 0x20_0000),
            Some(&initrd),
            "kjump.role=a x=1",
        )
        .unwrap();
        assert_eq!(info.entry, 0x20_0000);
        let (ia, is) = info.initramfs.unwrap();
        assert_eq!((ia, is), ((64 << 20) - 8192, 5000));
        assert_eq!(ia % 4096, 0);

        let mut got = [0u8; 3];
        m.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(got, code);
        let mut rd = vec![0u8; 5000];
        m.read_slice(&mut rd, GuestAddress(ia)).unwrap();
        assert_eq!(rd, initrd);

        let mut zp = [0u8; 4096];
        m.read_slice(&mut zp, GuestAddress(layout::ZERO_PAGE))
            .unwrap();
        let v = ZeroPage(&zp);
        assert_eq!(v.ramdisk(), (ia, 5000));
        assert_eq!(v.cmd_line_ptr(), layout::CMDLINE);
        assert_eq!(v.cmdline_size(), 16);
        assert_eq!(v.e820().collect::<Vec<_>>(), e820_map(ram));
        assert_eq!(zp[kjump_abi::bootparams::TYPE_OF_LOADER], 0xff);
        assert_eq!(&zp[0x202..0x206], b"HdrS");
        assert_eq!(&zp[0x1fe..0x200], &[0x55, 0xaa]);

        let mut cl = [0u8; 17];
        m.read_slice(&mut cl, GuestAddress(layout::CMDLINE))
            .unwrap();
        assert_eq!(&cl, b"kjump.role=a x=1\0");

        let mut gdt = [0u8; 24];
        m.read_slice(&mut gdt, GuestAddress(layout::BOOT_GDT))
            .unwrap();
        assert_eq!(
            u64::from_le_bytes(gdt[8..16].try_into().unwrap()),
            BOOT_GDT_ENTRIES[1]
        );
        let pml4: u64 = m.read_obj(GuestAddress(layout::BOOT_PML4)).unwrap();
        assert_eq!(pml4, 0xa003);
        assert!(m.iter().count() == 1);
    }

    #[test]
    fn empty_initramfs_means_none_and_garbage_is_copied() {
        let ram = 64 << 20;
        let m = mem(ram);
        let k = tiny_elf(&[0xf4], 0x20_0000);
        assert_eq!(load(&m, ram, &k, Some(&[]), "").unwrap().initramfs, None);
        let garbage = b"not a cpio archive".to_vec();
        let info = load(&m, ram, &k, Some(&garbage), "").unwrap();
        assert_eq!(info.initramfs.unwrap().1, garbage.len() as u64);
    }

    #[test]
    fn initramfs_that_does_not_fit_is_a_clear_error() {
        let ram = 32 << 20;
        let m = mem(ram);
        let k = tiny_elf(&[0xf4], 0x20_0000);
        let big = vec![0u8; 32 << 20];
        assert!(matches!(
            load(&m, ram, &k, Some(&big), ""),
            Err(BootError::InitramfsTooLarge { size, .. }) if size == 32 << 20
        ));
        // Fits in RAM, but not beside the kernel.
        let mid = vec![0u8; 30 << 20];
        assert!(matches!(
            load(&m, ram, &k, Some(&mid), ""),
            Err(BootError::InitramfsOverlapsKernel { .. })
        ));
    }

    #[test]
    fn bad_command_lines_are_refused() {
        let ram = 32 << 20;
        let m = mem(ram);
        let k = tiny_elf(&[0xf4], 0x20_0000);
        let long = "x".repeat(5000);
        assert!(matches!(
            load(&m, ram, &k, None, &long),
            Err(BootError::CmdlineTooLong { .. })
        ));
        assert!(matches!(
            load(&m, ram, &k, None, "a=\u{e9}"),
            Err(BootError::CmdlineChar('\u{e9}'))
        ));
        assert!(matches!(
            load(&m, ram, &k, None, "a=1\nb=2"),
            Err(BootError::CmdlineChar('\n'))
        ));
    }
}
