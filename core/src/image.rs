//! A kernel image checked and placed before anything boots: the ELF's
//! class, machine, type and segments ([`inspect_kernel`]), that they lie in
//! guest RAM above 1 MiB ([`check_kernel_fits`]), and where the initramfs and
//! command line go ([`plan`]). The file is untrusted: every offset and size
//! is checked, and a bad one is a one-line [`BootError`].

use linux_loader::cmdline::Cmdline;

use crate::layout::{self};

/// Why a guest could not be put into RAM.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// the kernel file is empty
    #[error("the kernel file is empty")]
    EmptyKernel,
    /// not an ELF file
    #[error("the kernel is not an ELF file (no \\x7fELF magic); kjump boots ELF kernels")]
    NotElf,
    /// wrong ELF class or byte order
    #[error("the kernel is not a 64-bit little-endian ELF")]
    NotElf64,
    /// wrong machine
    #[error("the kernel ELF is for machine {0} (not x86_64, 62)")]
    WrongMachine(u16),
    /// wrong ELF type
    #[error(
        "the kernel ELF has type {0} (not ET_EXEC); link it at a fixed address (-C relocation-model=static)"
    )]
    NotExecutable(u16),
    /// something in the file lies outside it
    #[error("the kernel ELF is truncated or malformed: {0}")]
    Malformed(&'static str),
    /// a segment below 1 MiB
    #[error(
        "kernel segment at {start:#x}..{end:#x} is below 1 MiB, where the VMM keeps its boot data"
    )]
    SegmentTooLow { start: u64, end: u64 },
    /// a segment outside RAM
    #[error(
        "kernel segment at {start:#x}..{end:#x} is outside guest RAM ({ram} MiB); give more --mem"
    )]
    SegmentOutsideRam { start: u64, end: u64, ram: u64 },
    /// the entry point is not in the image
    #[error("the kernel's entry point {0:#x} is not inside any of its loaded segments")]
    EntryOutsideImage(u64),
    /// linux-loader refused the kernel
    #[error("cannot load the kernel")]
    Load(#[source] linux_loader::loader::Error),
    /// the initramfs does not fit
    #[error(
        "the initramfs ({size} bytes) does not fit in guest RAM below {ceiling:#x} above 1 MiB; give more --mem"
    )]
    InitramfsTooLarge { size: u64, ceiling: u64 },
    /// initramfs and kernel overlap
    #[error(
        "the initramfs at {start:#x}..{end:#x} would overlap the kernel (ends at {kernel_end:#x}); give more --mem"
    )]
    InitramfsOverlapsKernel {
        start: u64,
        end: u64,
        kernel_end: u64,
    },
    /// the command line is too long
    #[error("the guest command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong { len: usize, max: u64 },
    /// a character outside printable ASCII
    #[error("the guest command line has {0:?}; only printable ASCII is allowed")]
    CmdlineChar(char),
    /// the command line has characters the boot protocol does not allow
    #[error("invalid guest command line {cmdline:?}")]
    Cmdline {
        cmdline: String,
        #[source]
        source: linux_loader::cmdline::Error,
    },
    /// writing the command line failed
    #[error("cannot write the guest command line")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
    /// writing `boot_params` failed
    #[error("cannot write boot_params")]
    ZeroPage(#[source] linux_loader::configurator::Error),
    /// a guest memory write failed
    #[error("cannot write the {what} into guest RAM")]
    Memory {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// too much RAM for the boot page tables
    #[error("guest RAM ends at {0:#x}, beyond what the boot page tables map")]
    TooMuchRam(u64),
}

/// A PT_LOAD segment of the kernel: where it goes and how much RAM it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub paddr: u64,
    pub memsz: u64,
}

/// What [`inspect_kernel`] learnt about a kernel ELF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelInfo {
    pub entry: u64,
    pub segments: Vec<Segment>,
    /// Lowest and one past the highest guest-physical address the image uses.
    pub start: u64,
    pub end: u64,
}

const ELF_HEADER_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
use kjump_abi::elf::{EM_X86_64, ET_EXEC, PT_LOAD};

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Checks a kernel ELF before anything is loaded, so that a bad file gives a
/// precise error (linux-loader checks less: neither the machine nor that
/// segments lie inside the file).
pub fn inspect_kernel(elf: &[u8]) -> Result<KernelInfo, BootError> {
    if elf.is_empty() {
        return Err(BootError::EmptyKernel);
    }
    if elf.len() < 4 || &elf[..4] != b"\x7fELF" {
        return Err(BootError::NotElf);
    }
    if elf.len() < ELF_HEADER_SIZE {
        return Err(BootError::Malformed("the ELF header is cut short"));
    }
    // EI_CLASS = ELFCLASS64, EI_DATA = ELFDATA2LSB.
    if elf[4] != 2 || elf[5] != 1 {
        return Err(BootError::NotElf64);
    }
    let machine = u16_at(elf, 18);
    if machine != EM_X86_64 {
        return Err(BootError::WrongMachine(machine));
    }
    let kind = u16_at(elf, 16);
    if kind != ET_EXEC {
        return Err(BootError::NotExecutable(kind));
    }
    let entry = u64_at(elf, 24);
    let phoff = u64_at(elf, 32);
    let phentsize = u16_at(elf, 54);
    let phnum = u16_at(elf, 56);
    if usize::from(phentsize) != PHDR_SIZE {
        return Err(BootError::Malformed(
            "program header entries are not 56 bytes",
        ));
    }
    let table_end = phoff
        .checked_add(u64::from(phnum) * PHDR_SIZE as u64)
        .filter(|&e| e <= elf.len() as u64)
        .ok_or(BootError::Malformed(
            "the program headers lie past the end of the file",
        ))?;
    if phoff < ELF_HEADER_SIZE as u64 {
        return Err(BootError::Malformed(
            "the program headers overlap the ELF header",
        ));
    }
    let mut segments = Vec::new();
    for off in (phoff..table_end).step_by(PHDR_SIZE) {
        let ph = &elf[off as usize..off as usize + PHDR_SIZE];
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        let (offset, paddr, filesz, memsz) = (
            u64_at(ph, 8),
            u64_at(ph, 24),
            u64_at(ph, 32),
            u64_at(ph, 40),
        );
        if offset
            .checked_add(filesz)
            .is_none_or(|e| e > elf.len() as u64)
        {
            return Err(BootError::Malformed(
                "a segment's bytes lie past the end of the file",
            ));
        }
        if filesz > memsz {
            return Err(BootError::Malformed(
                "a segment has more file bytes than memory bytes",
            ));
        }
        if paddr.checked_add(memsz).is_none() {
            return Err(BootError::Malformed(
                "a segment wraps around the address space",
            ));
        }
        if memsz > 0 {
            segments.push(Segment { paddr, memsz });
        }
    }
    if segments.is_empty() {
        return Err(BootError::Malformed("no loadable segment"));
    }
    let start = segments.iter().map(|s| s.paddr).min().expect("not empty");
    let end = segments
        .iter()
        .map(|s| s.paddr + s.memsz)
        .max()
        .expect("not empty");
    if !segments
        .iter()
        .any(|s| (s.paddr..s.paddr + s.memsz).contains(&entry))
    {
        return Err(BootError::EntryOutsideImage(entry));
    }
    Ok(KernelInfo {
        entry,
        segments,
        start,
        end,
    })
}

/// Checks that every segment lies in RAM above 1 MiB.
pub fn check_kernel_fits(info: &KernelInfo, ram: u64) -> Result<(), BootError> {
    let (ranges, n) = layout::ram_ranges(ram);
    for s in &info.segments {
        let (start, end) = (s.paddr, s.paddr + s.memsz);
        if start < layout::HIGH_RAM_START {
            return Err(BootError::SegmentTooLow { start, end });
        }
        if !ranges[..n].iter().any(|&(b, l)| start >= b && end <= b + l) {
            return Err(BootError::SegmentOutsideRam {
                start,
                end,
                ram: ram >> 20,
            });
        }
    }
    Ok(())
}

/// The checks the VMM's boot makes before it writes anything, and where things
/// will go: a bad kernel, initramfs or command line is refused here, before
/// the VMM even opens `/dev/kvm`.
#[derive(Clone, Debug)]
pub struct BootPlan {
    pub kernel: KernelInfo,
    /// `(address, size)` of a non-empty initramfs.
    pub initramfs: Option<(u64, u64)>,
    pub cmdline: Cmdline,
}

/// Checks a kernel, an initramfs of `initramfs_len` bytes and a command line
/// against a VM with `ram` bytes.
pub fn plan(
    ram: u64,
    kernel: &[u8],
    initramfs_len: Option<u64>,
    cmdline: &str,
) -> Result<BootPlan, BootError> {
    let info = inspect_kernel(kernel)?;
    check_kernel_fits(&info, ram)?;

    let initramfs = match initramfs_len.filter(|&n| n > 0) {
        None => None,
        Some(size) => {
            let addr = layout::initramfs_addr(ram, size).ok_or(BootError::InitramfsTooLarge {
                size,
                ceiling: layout::low_ram_top(ram),
            })?;
            if addr < info.end && info.start < addr + size {
                return Err(BootError::InitramfsOverlapsKernel {
                    start: addr,
                    end: addr + size,
                    kernel_end: info.end,
                });
            }
            Some((addr, size))
        }
    };

    if cmdline.len() as u64 >= layout::CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: layout::CMDLINE_MAX - 1,
        });
    }
    if let Some(c) = cmdline.chars().find(|c| !matches!(c, ' '..='~')) {
        return Err(BootError::CmdlineChar(c));
    }
    let cmdline = Cmdline::try_from(cmdline, layout::CMDLINE_MAX as usize).map_err(|source| {
        BootError::Cmdline {
            cmdline: cmdline.to_owned(),
            source,
        }
    })?;
    Ok(BootPlan {
        kernel: info,
        initramfs,
        cmdline,
    })
}
