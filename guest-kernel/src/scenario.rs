//! Scenario dispatch on `kjump.scenario=`. Every scenario ends with a
//! verdict on the harness port (the VMM ends the run there); the kernel then
//! halts.

use core::fmt;

use kjump_abi::abi::Role;
use kjump_abi::bootparams::{E820_RAM, E820_RESERVED};
use kjump_abi::cpio::{CpioError, Reader};
use kjump_abi::layout::{CONFIG_PATH, KERNEL_B_PATH, PAGE_SIZE};
use kjump_abi::virtio::{BOOT_CHECK_SECTOR, BOOT_CHECK_SECTORS, SECTOR_SIZE, boot_check_byte};

use crate::bootinfo::BootInfo;
use crate::println;
use crate::virtio::{Blk, VirtioError};
use crate::{cpu, gdt, harness, kexec, mem, paging, serial};

/// Runs the scenario the command line names, then halts.
pub fn run(boot: &'static BootInfo) -> ! {
    match boot.scenario {
        "boot" => match boot_scenario(boot) {
            Ok(s) => harness::verdict_fmt(
                true,
                format_args!(
                    "boot: {} e820 entries, {} initramfs entries, {KERNEL_B_PATH} {} bytes, {}",
                    s.e820_entries, s.initramfs_entries, s.kernel_b_size, s.disk
                ),
            ),
            Err(why) => harness::verdict_fmt(false, format_args!("boot: {why}")),
        },
        // kexec jump with preserved context (kexec/): A loads B and
        // they jump to each other; B is booted by A with the same scenario.
        "ping-pong" => match boot.role {
            Role::A => kexec::run_a(boot),
            Role::B => kexec::run_b(boot),
            Role::C => harness::verdict(false, "ping-pong has no kernel c"),
        },
        // A jumps to B, which saves A's image to the disk and powers off
        // (kexec/hibernate.rs).
        "hibernate" => match boot.role {
            Role::A => kexec::hibernate::run_a(boot),
            Role::B => kexec::hibernate::run_b(boot),
            Role::C => kexec::hibernate::run_c(boot),
        },
        // A crashes on purpose; B, the capture kernel, saves A's memory
        // as a vmcore to the disk and powers off (kexec/crash.rs).
        "crash" => match boot.role {
            Role::A => kexec::crash::run_a(boot),
            Role::B => kexec::crash::run_b(boot),
            Role::C => harness::verdict(false, "crash has no kernel c"),
        },
        "" => harness::verdict(false, "no kjump.scenario= on the command line"),
        other => harness::verdict_fmt(false, format_args!("unknown scenario {other:?}")),
    }
    cpu::halt_forever()
}

/// Why the `boot` scenario failed.
#[derive(Debug)]
enum BootError {
    NoInitramfs,
    Initramfs(CpioError),
    NoKernelB,
    KernelBTooSmall(usize),
    KernelBNotElf,
    ConfigNotUtf8(core::str::Utf8Error),
    WrongTr(u16),
    WrongCr3 {
        found: u64,
        expected: u64,
    },
    WrongUart {
        found: [u8; 6],
        expected: [u8; 6],
    },
    UartRestore {
        found: [u8; 6],
        expected: [u8; 6],
    },
    Disk(VirtioError),
    DiskReadBack {
        offset: usize,
        found: u8,
        expected: u8,
    },
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoInitramfs => write!(f, "no initramfs"),
            Self::Initramfs(e) => write!(f, "initramfs: {e}"),
            Self::NoKernelB => write!(f, "{KERNEL_B_PATH} is not in the initramfs"),
            Self::KernelBTooSmall(n) => write!(f, "{KERNEL_B_PATH} is only {n} bytes"),
            Self::KernelBNotElf => write!(f, "{KERNEL_B_PATH} is not an ELF file"),
            Self::ConfigNotUtf8(e) => write!(f, "{CONFIG_PATH} is not UTF-8: {e}"),
            Self::WrongTr(tr) => write!(f, "TR is {tr:#x}, expected {:#x}", gdt::TSS_SELECTOR),
            Self::WrongCr3 { found, expected } => {
                write!(f, "CR3 is {found:#x}, expected {expected:#x}")
            }
            Self::WrongUart { found, expected } => {
                write!(f, "UART registers {found:02x?}, expected {expected:02x?}")
            }
            Self::Disk(e) => write!(f, "virtio-blk: {e}"),
            Self::DiskReadBack {
                offset,
                found,
                expected,
            } => write!(
                f,
                "virtio-blk: byte {offset} read back as {found:#04x}, written {expected:#04x}"
            ),
            Self::UartRestore { found, expected } => {
                write!(
                    f,
                    "UART restore gave {found:02x?}, expected {expected:02x?}"
                )
            }
        }
    }
}

/// What the `boot` scenario found.
struct BootSummary {
    e820_entries: usize,
    initramfs_entries: usize,
    kernel_b_size: usize,
    disk: DiskSummary,
}

/// What the disk check did.
enum DiskSummary {
    None,
    Checked { capacity: u64 },
}

impl fmt::Display for DiskSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => write!(f, "no disk"),
            Self::Checked { capacity } => write!(
                f,
                "disk of {capacity} sectors: {BOOT_CHECK_SECTORS} sectors at {BOOT_CHECK_SECTOR} written and read back"
            ),
        }
    }
}

/// Writes the check pattern to the disk the command line announces,
/// reads it back into another buffer and compares.
fn disk_check(boot: &BootInfo) -> Result<DiskSummary, BootError> {
    let Some(blk) = Blk::probe(boot.cmdline) else {
        return Ok(DiskSummary::None);
    };
    let mut blk = blk.map_err(BootError::Disk)?;
    let len = (BOOT_CHECK_SECTORS * SECTOR_SIZE) as usize;
    let page =
        mem::alloc_pages(1, u64::MAX, (0, 0)).ok_or(BootError::Disk(VirtioError::NoMemory))?;
    const { assert!(2 * BOOT_CHECK_SECTORS * SECTOR_SIZE <= PAGE_SIZE) };
    // SAFETY: the page is ours alone (just allocated, zeroed) and
    // identity-mapped; the two halves do not overlap.
    let (out, back) = unsafe {
        (
            core::slice::from_raw_parts_mut(page as *mut u8, len),
            core::slice::from_raw_parts_mut((page + len as u64) as *mut u8, len),
        )
    };
    for (i, b) in out.iter_mut().enumerate() {
        *b = boot_check_byte(i as u64);
    }
    blk.write(BOOT_CHECK_SECTOR, out).map_err(BootError::Disk)?;
    blk.flush().map_err(BootError::Disk)?;
    blk.read(BOOT_CHECK_SECTOR, back).map_err(BootError::Disk)?;
    if let Some(offset) = (0..len).find(|&i| back[i] != out[i]) {
        return Err(BootError::DiskReadBack {
            offset,
            found: back[offset],
            expected: out[offset],
        });
    }
    println!(
        "virtio-blk: {} sectors; wrote {BOOT_CHECK_SECTORS} sectors at {BOOT_CHECK_SECTOR} and read them back",
        blk.capacity()
    );
    Ok(DiskSummary::Checked {
        capacity: blk.capacity(),
    })
}

/// `boot`: the kernel came up; show what it was given, check its own
/// setup, and check that the initramfs carries kernel B.
fn boot_scenario(boot: &BootInfo) -> Result<BootSummary, BootError> {
    println!("e820 map ({} entries):", boot.e820().len());
    for e in boot.e820() {
        let kind = match e.kind {
            E820_RAM => "usable",
            E820_RESERVED => "reserved",
            _ => "other",
        };
        let end = e.addr.saturating_add(e.size);
        println!("  [{:#014x}-{end:#014x}) {kind} ({})", e.addr, e.kind);
    }
    let (kstart, kend) = mem::kernel_image();
    println!(
        "kernel [{kstart:#x}-{kend:#x}), page tables at {:#x} mapping [0-{:#x}), ram top {:#x}, {} KiB free:",
        paging::kernel_cr3(),
        paging::mapped_top(),
        mem::ram_top(),
        mem::free_bytes() >> 10
    );
    for (start, end) in mem::free_ranges() {
        println!("  free [{start:#014x}-{end:#014x})");
    }
    self_checks(boot)?;
    let disk = disk_check(boot)?;

    let initramfs = boot.initramfs;
    if initramfs.is_empty() {
        return Err(BootError::NoInitramfs);
    }
    println!(
        "initramfs at {:#x}, {} bytes:",
        boot.initramfs_addr,
        initramfs.len()
    );
    let mut initramfs_entries = 0;
    for entry in Reader::new(initramfs) {
        let e = entry.map_err(BootError::Initramfs)?;
        println!("  {:06o} {:>10} {}", e.mode, e.data.len(), e.name);
        initramfs_entries += 1;
    }

    let kernel_b = find(initramfs, KERNEL_B_PATH)?.ok_or(BootError::NoKernelB)?;
    if kernel_b.len() <= 64 {
        return Err(BootError::KernelBTooSmall(kernel_b.len()));
    }
    if !kernel_b.starts_with(b"\x7fELF") {
        return Err(BootError::KernelBNotElf);
    }
    println!("{KERNEL_B_PATH}: ELF, {} bytes", kernel_b.len());

    if let Some(config) = find(initramfs, CONFIG_PATH)? {
        let text = core::str::from_utf8(config).map_err(BootError::ConfigNotUtf8)?;
        println!("{CONFIG_PATH}:");
        for line in text.lines() {
            println!("  {line}");
        }
    }
    Ok(BootSummary {
        e820_entries: boot.e820().len(),
        initramfs_entries,
        kernel_b_size: kernel_b.len(),
        disk,
    })
}

/// What the kernel set up at boot is what the CPU and the UART hold, and
/// the UART's save/restore (which the kexec code relies on) round-trips.
fn self_checks(boot: &BootInfo) -> Result<(), BootError> {
    let tr = gdt::current_tr();
    if tr != gdt::TSS_SELECTOR {
        return Err(BootError::WrongTr(tr));
    }
    let cr3 = cpu::read_cr3();
    if cr3 != paging::kernel_cr3() {
        return Err(BootError::WrongCr3 {
            found: cr3,
            expected: paging::kernel_cr3(),
        });
    }
    // IER, LCR, MCR, SCR, DLL, DLM as serial::init programmed them.
    let expected = [0, 0x03, 0x0b, serial::scratch(boot.role), 1, 0];
    let uart = serial::save();
    if uart != expected {
        return Err(BootError::WrongUart {
            found: uart,
            expected,
        });
    }
    serial::restore(&uart);
    let again = serial::save();
    if again != uart {
        return Err(BootError::UartRestore {
            found: again,
            expected: uart,
        });
    }
    println!("self-checks: tr {tr:#x}, cr3 {cr3:#x}, uart {uart:02x?}");
    Ok(())
}

/// The data of the regular file `name` in the archive, if present.
fn find<'a>(archive: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, BootError> {
    Reader::find(archive, name)
        .map(|e| e.map(|e| e.data))
        .map_err(BootError::Initramfs)
}
