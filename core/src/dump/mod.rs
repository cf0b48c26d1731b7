//! Guest memory dumps: ELF64 core files that gdb, `readelf` and crash tools
//! open, and that carry everything `kjump resume` needs.
//!
//! The layout is the one of `/proc/vmcore` and QEMU's `dump-guest-memory`:
//!
//! ```text
//! ELF header      ET_CORE, EM_X86_64, e_entry = the jump-back entry
//! PT_NOTE         the notes below, 4-byte aligned
//! PT_LOAD ...     one per RAM range: p_vaddr = p_paddr = guest-physical
//!                 address, p_filesz = p_memsz, page-aligned p_offset;
//!                 all-zero pages are holes of a sparse file
//! ```
//!
//! Notes, in this order:
//! * `CORE`/`NT_PRSTATUS` (1): Linux's x86_64 `struct elf_prstatus`, so
//!   that gdb shows the registers and a backtrace;
//! * `CORE`/`NT_PRFPREG` (2): the FXSAVE area (x87/SSE registers for gdb);
//! * `QEMU` (0): QEMU's `QEMUCPUState` (version 1), the system registers
//!   crash tools read from QEMU dumps;
//! * `KJUMP` ([`NT_KJUMP`]): the checkpoint, the jump-back entry, the
//!   complete vCPU state and (version 2) the [`ResumeRecord`] that lets
//!   `kjump resume` go on from the dump, in the versioned layout
//!   [`KjumpNote`] documents.
//!
//! A dump is written to a temporary name in the target directory, fsynced,
//! and renamed: a crash never leaves a partial file under the final name.
//! [`read_dump`] treats the file as untrusted: every offset and size is
//! checked, and a damaged file is a one-line [`DumpError`], never a panic.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use kvm_bindings::kvm_segment;
use serde::{Deserialize, Serialize};
use serde_json::json;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::GuestMem;
use crate::checkpoint::{CheckpointId, Direction, Kernel, Tracker};
use crate::oracle::{self, Allowlist, DiffRange, diff_ranges, hexdump};
use crate::pages::{PAGE_SIZE, Page, ZERO_PAGE};
use crate::state::{FieldValue, VcpuState, XSAVE_SIZE};
use crate::symbols::{SymbolError, Symbols};

const PAGE: u64 = PAGE_SIZE as u64;

/// ELF constants (System V gABI; Linux `include/uapi/linux/elf.h`); the
/// segment and file types are kjump_abi's.
use kjump_abi::elf::{EM_X86_64, ET_CORE, PT_LOAD, PT_NOTE};
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EV_CURRENT: u8 = 1;
const PF_RWX: u32 = 7;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
/// `e_phnum` value meaning "more than 0xfffe, see section 0": never written.
const PN_XNUM: u16 = 0xffff;
/// Core-file notes are 4-byte aligned (`Elf64_Nhdr` is 12 bytes).
const NOTE_ALIGN: usize = 4;

/// `NT_PRSTATUS`: `struct elf_prstatus` (the vmcore's contract has it too).
pub use kjump_abi::vmcore::NT_PRSTATUS;
/// `NT_PRFPREG`: `struct user_fpregs_struct`, i.e. the FXSAVE area.
pub const NT_PRFPREG: u32 = 2;
/// Type of QEMU's `QEMU` note (`QEMUCPUState`).
pub const NT_QEMU: u32 = 0;
/// Type of the `KJUMP` note: "KJ" and a note number.
pub const NT_KJUMP: u32 = 0x4b4a_0001;
/// Owner name of the kjump note.
pub const KJUMP_NOTE_NAME: &str = "KJUMP";

/// Size of the legacy FXSAVE area (`user_fpregs_struct`).
const FXSAVE_SIZE: usize = 512;
/// QEMU's `QEMU_CPUSTATE_VERSION`.
const QEMU_CPUSTATE_VERSION: u32 = 1;
/// `sizeof(QEMUCPUState)`: version and size, 18 registers, 10 segments of
/// 24 bytes, cr[5], kernel_gs_base.
const QEMU_CPUSTATE_SIZE: usize = 8 + 18 * 8 + 10 * 24 + 5 * 8 + 8;
/// `IA32_KERNEL_GS_BASE`, which the QEMU note carries.
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// Magic at the start of the KJUMP note's descriptor.
pub const KJUMP_MAGIC: [u8; 8] = *b"KJUMPDMP";
/// Version of the KJUMP note layout this kjump writes (it reads it and
/// every version from [`KJUMP_MIN_VERSION`]).
pub const KJUMP_VERSION: u32 = 3;
/// The oldest KJUMP note layout this kjump reads: version 1 has no resume
/// record.
pub const KJUMP_MIN_VERSION: u32 = 1;
/// Size of the KJUMP note's fixed header in versions 1 and 2 (see
/// [`KjumpNote`]).
pub const KJUMP_HEADER_SIZE: usize = 72;
/// Size of the fixed header from version 3: `ram_size` follows.
pub const KJUMP_HEADER_SIZE_V3: usize = 80;
/// Offset of `ram_size` (version 3): bytes of the RAM checksums.
const KJUMP_RAM_SIZE: usize = 72;
/// Offset of the checksum in the KJUMP note's fixed header.
const KJUMP_CHECKSUM: usize = 64;
/// Offset of `resume_size` (version 2; reserved and zero in version 1).
const KJUMP_RESUME_SIZE: usize = 60;
/// `flags` bit: the image can be resumed at its jump-back entry.
pub const KJUMP_FLAG_RESUMABLE: u16 = 1;

/// Notes larger than this are refused when reading (a corrupted size must
/// not make the reader allocate gigabytes).
const MAX_NOTES: u64 = 64 << 20;
/// Guest memory is read and compared in chunks of this size.
const CHUNK: usize = 1 << 20;
/// Pages of a diff after this many get ranges but no hexdump.
const MAX_DETAILED: usize = 64;

/// Writing or reading a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The dump file could not be created, written or renamed into place.
    #[error("cannot write dump {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Guest memory could not be read for the dump.
    #[error("cannot read guest memory at {0:#x} for the dump")]
    Memory(u64),
    /// The memory to dump has RAM ranges a core file cannot describe.
    #[error(
        "guest RAM range at {start:#x} ({len:#x} bytes) is unaligned or overlaps the previous one"
    )]
    Layout { start: u64, len: u64 },
    /// The vCPU state could not be encoded.
    #[error("cannot encode the vCPU state")]
    Encode(#[source] serde_json::Error),
    /// The dump file could not be opened or read.
    #[error("cannot read dump {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not a kjump dump (wrong ELF header, no KJUMP note).
    #[error("{}: not a kjump dump: {why}", path.display())]
    NotADump { path: PathBuf, why: String },
    /// The file ends before something its headers describe.
    #[error("{}: truncated dump: {what}", path.display())]
    Truncated { path: PathBuf, what: String },
    /// The headers or notes contradict themselves.
    #[error("{}: corrupt dump: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    /// The KJUMP note has a layout version this kjump does not read.
    #[error("{}: KJUMP note version {found}, this kjump reads versions {KJUMP_MIN_VERSION} to {KJUMP_VERSION}", path.display())]
    Version { path: PathBuf, found: u32 },
    /// The kernel ELF given for symbols is unreadable.
    #[error("cannot read the kernel's symbols")]
    Symbols(#[source] SymbolError),
}

mod diff;
mod image;
mod inspect;
mod ram;
mod read;
mod record;
#[cfg(test)]
mod tests;
pub(crate) mod write;

pub use crate::state::UartState;
pub use diff::{DumpDiff, ExpectedDiff, PageDiff, RegisterDiff, diff};
pub use image::{
    CoreFile, CoreFileError, diff_image_dump, diff_images, image_view_state, inspect_image,
    inspect_image_json, state_value,
};
pub use inspect::{inspect, inspect_json};
pub use ram::{RamSource, read_by_page};
pub(crate) use read::parse_notes;
pub use read::{read_dump, read_dump_bytes};
pub use record::{ResumeRecord, SuspendRecord};
pub use write::write_dump;

// What the parts share: each part `use super::*`.
#[allow(unused_imports)]
use self::{diff::*, inspect::*, read::*, write::*};

/// What [`write_dump`] writes.
pub struct DumpInput<'a> {
    /// The vCPU, captured after the checkpoint's I/O completed.
    pub state: &'a VcpuState,
    pub id: &'a CheckpointId,
    /// Where the kernel resumes (its jump-back entry); 0 if unknown.
    pub jump_back_entry: u64,
    /// Whether `kjump resume` may restart the image at `jump_back_entry`.
    pub resumable: bool,
    /// Guest RAM (the VM's [`GuestMem`], or another [`RamSource`]).
    pub memory: &'a dyn RamSource,
    /// The kernel image's name (a file name, or "built-in").
    pub kernel_name: &'a str,
    /// Guest RAM size in bytes, the 32-bit hole not counted.
    pub mem_size: u64,
    /// The kjump version that wrote the dump (free-form).
    pub kjump_version: &'a str,
    /// What `kjump resume` needs to go on from here (none: the dump can be
    /// inspected and diffed, not resumed by kjump).
    pub resume: Option<&'a ResumeRecord>,
}

/// The KJUMP note's metadata, as read back.
///
/// The note's descriptor, version 3, all integers little-endian:
///
/// ```text
/// offset size field
///      0    8 magic            "KJUMPDMP"
///      8    4 version          3
///     12    4 header_size      80: offset of the variable part
///     16    8 index            checkpoint index in the run, from 0
///     24    8 cycle            A->B->A cycle, from 1
///     32    1 kernel           0 = A, 1 = B
///     33    1 direction        0 = suspend, 1 = resume
///     34    2 flags            bit 0: resumable
///     36    4 state_size       bytes of the vCPU state
///     40    8 jump_back_entry  guest address the kernel resumes at; 0 = unknown
///     48    8 mem_size         guest RAM bytes (the 32-bit hole not counted)
///     56    2 kernel_name_size
///     58    2 kjump_version_size
///     60    4 resume_size      bytes of the resume record; 0 = none
///     64    8 checksum         xxh3-64 of the descriptor with this field zero
///     72    4 ram_size         bytes of the RAM checksums
///     76    4 reserved         zero
///     80      state            the vCPU state: UTF-8 JSON of kjump's VcpuState
///             kernel_name      UTF-8
///             kjump_version    UTF-8
///             resume           UTF-8 JSON of kjump's ResumeRecord
///             ram              UTF-8 JSON: one {"start", "len", "xxh3"} per
///                              PT_LOAD, xxh3-64 of its bytes as 16 hex digits
/// ```
///
/// The descriptor is exactly `80 + state_size + kernel_name_size +
/// kjump_version_size + resume_size + ram_size` bytes. Versions 1 and 2
/// have a 72-byte header and no RAM checksums (version 1 no resume record
/// either: its bytes 60..64 are reserved and zero); kjump reads them (a
/// version 1 dump is inspected and diffed, but not resumed). The vCPU
/// state is a JSON object with the members `mp_state`, `regs`, `sregs`,
/// `xcrs`, `debugregs`, `lapic`, `events`: the raw bytes of KVM's `struct
/// kvm_mp_state`, `kvm_regs`, `kvm_sregs`, `kvm_xcrs`, `kvm_debugregs`,
/// `kvm_lapic_state`, `kvm_vcpu_events` (the KVM UAPI layout, x86_64, as
/// `KVM_GET_*` returns them) as arrays of numbers of exactly the struct's
/// size, which is how kvm-bindings serialises them; `xsave`, the 4096-byte
/// `KVM_GET_XSAVE` area as an array of numbers; `msrs`, an object of MSR
/// index (decimal, as a string) to value: every MSR captured, KVM's index
/// list and the architectural MSRs it reads unlisted.
///
/// The resume record is a JSON object with exactly these members:
/// `scenario` (string) and `cycles` (the cycles the run was asked for);
/// `kimage_a`, `kimage_b` (the eight numbers of each kernel's last kimage
/// report, or null); `uart` (the UART's registers at the checkpoint:
/// `baud_divisor_low`, `baud_divisor_high`, `interrupt_enable`,
/// `interrupt_identification`, `line_control`, `line_status`,
/// `modem_control`, `modem_status`, `scratch`, `in_buffer`); `devices`
/// (version 3; the in-kernel devices at the checkpoint, each an object
/// tagged `"device": "pic" | "ioapic" | "pit" | "kvmclock"` with the fields
/// of kjump's state types); `peer` (null before the other kernel has
/// booted, or what the oracle recorded at its last suspend: `kernel`,
/// `suspended_at` (`index`, `cycle`, `kernel`, `direction`), `state` (a vCPU
/// state as above), `uart`, `devices`). Readers refuse unknown members. A
/// change to any of this bumps the version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KjumpNote {
    pub version: u32,
    pub id: CheckpointId,
    pub jump_back_entry: u64,
    pub resumable: bool,
    pub mem_size: u64,
    pub kernel_name: String,
    pub kjump_version: String,
}

/// The checksum of one RAM range of a dump (KJUMP note version 3): xxh3-64
/// of the range's `len` bytes from `start`, holes read as zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RamChecksum {
    pub start: u64,
    pub len: u64,
    /// 16 hex digits.
    #[serde(with = "hex64")]
    pub xxh3: u64,
}

/// A u64 as exactly 16 hex digits: the KJUMP note's size does not depend on
/// the checksums' values (the note is laid out before RAM is hashed).
mod hex64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let t = String::deserialize(d)?;
        if t.len() != 16 {
            return Err(serde::de::Error::custom("a checksum is 16 hex digits"));
        }
        u64::from_str_radix(&t, 16).map_err(serde::de::Error::custom)
    }
}

/// One note of a dump, as listed by [`inspect`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NoteInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: u32,
    pub size: u64,
}

impl NoteInfo {
    /// What the note is, for people.
    pub fn describe(&self) -> &'static str {
        match (self.name.as_str(), self.kind) {
            ("CORE", NT_PRSTATUS) => "NT_PRSTATUS (registers)",
            ("CORE", NT_PRFPREG) => "NT_PRFPREG (FXSAVE area)",
            ("QEMU", NT_QEMU) => "QEMUCPUState",
            (KJUMP_NOTE_NAME, NT_KJUMP) => "kjump checkpoint and vCPU state",
            (KJUMP_NOTE_NAME, kjump_abi::hibimage::NT_KJUMP_IMAGE) => {
                "kjump image header and range table"
            }
            _ => "unknown",
        }
    }
}

/// A `PT_LOAD`: guest-physical `[paddr, paddr + memsz)` from file offset
/// `offset`; bytes past `filesz` read as zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Load {
    paddr: u64,
    memsz: u64,
    offset: u64,
    filesz: u64,
}

impl Load {
    fn end(&self) -> u64 {
        self.paddr + self.memsz
    }
    fn contains(&self, addr: u64) -> bool {
        addr >= self.paddr && addr < self.end()
    }
}

/// Where a dump's bytes are: its file, read on demand (a dump is as large
/// as guest RAM), or a buffer ([`read_dump_bytes`]).
#[derive(Debug)]
pub(crate) enum Backing {
    File(File),
    Bytes(Vec<u8>),
}

impl Backing {
    /// Fills `buf` from offset `off`; past the end is an error, as for a file
    /// (and as for a file, reading nothing is never one).
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        match self {
            Self::File(f) => f.read_exact_at(buf, off),
            Self::Bytes(_) if buf.is_empty() => Ok(()),
            Self::Bytes(b) => {
                let src = usize::try_from(off)
                    .ok()
                    .and_then(|o| b.get(o..o.checked_add(buf.len())?))
                    .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
                buf.copy_from_slice(src);
                Ok(())
            }
        }
    }

    /// The first offset at or after `off` that is not in a hole (see
    /// [`seek_data`]); a buffer has no holes.
    fn seek_data(&self, off: u64) -> Option<u64> {
        match self {
            Self::File(f) => seek_data(f, off),
            Self::Bytes(b) => (off < b.len() as u64).then_some(off),
        }
    }
}

/// A dump read back and validated. Memory is read from the file on demand.
#[derive(Debug)]
pub struct Dump {
    path: PathBuf,
    file: Backing,
    len: u64,
    entry: u64,
    meta: KjumpNote,
    state: VcpuState,
    resume: Option<ResumeRecord>,
    /// Sorted by address, not overlapping.
    loads: Vec<Load>,
    notes: Vec<NoteInfo>,
    /// The RAM ranges' checksums (version 3), verified when read.
    checksums: Vec<RamChecksum>,
}
