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
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use kvm_bindings::kvm_segment;
use serde::{Deserialize, Serialize};
use serde_json::json;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vm_superio::serial::SerialState;

use crate::GuestMem;
use crate::checkpoint::{CheckpointId, Direction, Kernel, Tracker};
use crate::oracle::{self, Allowlist, DiffRange, diff_ranges, hexdump};
use crate::pages::{PAGE_SIZE, Page, ZERO_PAGE};
use crate::snapshot::{FieldValue, VcpuState, XSAVE_SIZE};
use crate::symbols::{SymbolError, Symbols};

const PAGE: u64 = PAGE_SIZE as u64;

/// ELF constants (System V gABI; Linux `include/uapi/linux/elf.h`).
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EV_CURRENT: u8 = 1;
const ET_CORE: u16 = 4;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_RWX: u32 = 7;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
/// `e_phnum` value meaning "more than 0xfffe, see section 0": never written.
const PN_XNUM: u16 = 0xffff;
/// Core-file notes are 4-byte aligned (`Elf64_Nhdr` is 12 bytes).
const NOTE_ALIGN: usize = 4;

/// `NT_PRSTATUS`: `struct elf_prstatus`.
pub const NT_PRSTATUS: u32 = 1;
/// `NT_PRFPREG`: `struct user_fpregs_struct`, i.e. the FXSAVE area.
pub const NT_PRFPREG: u32 = 2;
/// Type of QEMU's `QEMU` note (`QEMUCPUState`).
pub const NT_QEMU: u32 = 0;
/// Type of the `KJUMP` note: "KJ" and a note number.
pub const NT_KJUMP: u32 = 0x4b4a_0001;
/// Owner name of the kjump note.
pub const KJUMP_NOTE_NAME: &str = "KJUMP";

/// Size of x86_64 `struct elf_prstatus`.
const PRSTATUS_SIZE: usize = 336;
/// Offset of `pr_reg` (the `elf_gregset_t`) in it.
const PRSTATUS_REGS: usize = 112;
/// Offset of `pr_pid`.
const PRSTATUS_PID: usize = 32;
/// Offset of `pr_fpvalid`.
const PRSTATUS_FPVALID: usize = 328;
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
pub const KJUMP_VERSION: u32 = 2;
/// The oldest KJUMP note layout this kjump reads: version 1 has no resume
/// record.
pub const KJUMP_MIN_VERSION: u32 = 1;
/// Size of the KJUMP note's fixed header (see [`KjumpNote`]).
pub const KJUMP_HEADER_SIZE: usize = 72;
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

/// The UART's registers (`vm_superio::serial::SerialState`), as a dump
/// keeps them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UartState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl From<&SerialState> for UartState {
    fn from(s: &SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

impl From<&UartState> for SerialState {
    fn from(s: &UartState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// What the oracle recorded when a kernel last suspended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuspendRecord {
    pub kernel: Kernel,
    /// Its last suspend checkpoint.
    pub suspended_at: CheckpointId,
    /// Its vCPU there.
    pub state: VcpuState,
    /// The UART there.
    pub uart: UartState,
}

/// The KJUMP note's resume record (version 2): with the dump's memory and
/// vCPU, everything `kjump resume` needs to run the scenario on from the
/// dump's checkpoint and check it as the run would have.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeRecord {
    /// The scenario the dump was taken in (`ping-pong`).
    pub scenario: String,
    /// The cycles the run was asked for.
    pub cycles: u64,
    /// The last kimage report of kernel a and of kernel b: the eight
    /// `u64` arguments of their `Kimage` harness message (`abi::KimageArgs`);
    /// absent before the kernel's first.
    pub kimage_a: Option<[u64; 8]>,
    pub kimage_b: Option<[u64; 8]>,
    /// The UART at the dump's checkpoint.
    pub uart: UartState,
    /// The kernel that is away (the peer of the dump's kernel), as it was
    /// when it last suspended; absent when it has not booted yet.
    pub peer: Option<SuspendRecord>,
}

/// The KJUMP note's metadata, as read back.
///
/// The note's descriptor, version 2, all integers little-endian:
///
/// ```text
/// offset size field
///      0    8 magic            "KJUMPDMP"
///      8    4 version          2
///     12    4 header_size      72: offset of the variable part
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
///     72      state            the vCPU state: UTF-8 JSON of kjump's VcpuState
///             kernel_name      UTF-8
///             kjump_version    UTF-8
///             resume           UTF-8 JSON of kjump's ResumeRecord
/// ```
///
/// The descriptor is exactly `72 + state_size + kernel_name_size +
/// kjump_version_size + resume_size` bytes. Version 1 is the same without
/// the resume record: its bytes 60..64 are reserved and zero; kjump reads
/// it (such a dump is inspected and diffed, but not resumed). The JSON object has the members `mp_state`,
/// `regs`, `sregs`, `xcrs`, `debugregs`, `lapic`, `events`: the raw bytes
/// of KVM's `struct kvm_mp_state`, `kvm_regs`, `kvm_sregs`, `kvm_xcrs`,
/// `kvm_debugregs`, `kvm_lapic_state`, `kvm_vcpu_events` (the KVM UAPI
/// layout, x86_64, as `KVM_GET_*` returns them) as arrays of numbers, which
/// is how kvm-bindings serialises them; `xsave`, the 4096-byte
/// `KVM_GET_XSAVE` area as an array of numbers; `msrs`, an object of MSR
/// index (decimal, as a string) to value.
///
/// The resume record is a JSON object with exactly these members:
/// `scenario` (string) and `cycles` (the cycles the run was asked for);
/// `kimage_a`, `kimage_b` (the eight numbers of each kernel's last kimage
/// report, or null); `uart` (the UART's registers at the checkpoint:
/// `baud_divisor_low`, `baud_divisor_high`, `interrupt_enable`,
/// `interrupt_identification`, `line_control`, `line_status`,
/// `modem_control`, `modem_status`, `scratch`, `in_buffer`); `peer` (null
/// before the other kernel has booted, or what the oracle recorded at its
/// last suspend: `kernel`, `suspended_at` (`index`, `cycle`, `kernel`,
/// `direction`), `state` (a vCPU state as above), `uart`). Readers refuse
/// unknown members. A change to any of this bumps
/// the version.
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
enum Backing {
    File(File),
    Bytes(Vec<u8>),
}

impl Backing {
    /// Fills `buf` from offset `off`; past the end is an error, as for a file
    /// (and as for a file, reading nothing is never one).
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
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
}

// ---------------------------------------------------------------- writing

fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

fn align_up(v: usize, a: usize) -> usize {
    v.div_ceil(a) * a
}

/// Appends one note: `Elf64_Nhdr`, the NUL-terminated name, the descriptor,
/// each padded to 4 bytes.
fn push_note(out: &mut Vec<u8>, name: &str, kind: u32, desc: &[u8]) {
    let namesz = name.len() + 1;
    out.extend_from_slice(&(namesz as u32).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(align_up(out.len(), NOTE_ALIGN), 0);
    out.extend_from_slice(desc);
    out.resize(align_up(out.len(), NOTE_ALIGN), 0);
}

/// Linux's x86_64 `struct elf_prstatus`: signal info, pids and times are
/// zero, except `pr_pid` 1 (gdb names the thread after it); `pr_reg` is a
/// `user_regs_struct`.
fn prstatus(s: &VcpuState) -> Vec<u8> {
    let (r, sr) = (&s.regs, &s.sregs);
    let sel = |seg: &kvm_segment| u64::from(seg.selector);
    let regs = [
        r.r15,
        r.r14,
        r.r13,
        r.r12,
        r.rbp,
        r.rbx,
        r.r11,
        r.r10,
        r.r9,
        r.r8,
        r.rax,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        u64::MAX, // orig_rax: -1, not in a system call
        r.rip,
        sel(&sr.cs),
        r.rflags,
        r.rsp,
        sel(&sr.ss),
        sr.fs.base,
        sr.gs.base,
        sel(&sr.ds),
        sel(&sr.es),
        sel(&sr.fs),
        sel(&sr.gs),
    ];
    let mut b = vec![0u8; PRSTATUS_SIZE];
    put(&mut b, PRSTATUS_PID, &1u32.to_le_bytes());
    for (i, v) in regs.iter().enumerate() {
        put(&mut b, PRSTATUS_REGS + 8 * i, &v.to_le_bytes());
    }
    put(&mut b, PRSTATUS_FPVALID, &1u32.to_le_bytes());
    b
}

/// The FXSAVE area: the start of the XSAVE area (zeros if it is short).
fn fpregs(s: &VcpuState) -> Vec<u8> {
    let mut b = vec![0u8; FXSAVE_SIZE];
    let n = s.xsave.len().min(FXSAVE_SIZE);
    b[..n].copy_from_slice(&s.xsave[..n]);
    b
}

/// Descriptor attribute bits of a segment, as QEMU keeps them (bits 8..23
/// of the descriptor's high dword: type, S, DPL, P, AVL, L, D/B, G).
fn segment_flags(s: &kvm_segment) -> u32 {
    let present = s.present != 0 && s.unusable == 0;
    (u32::from(s.type_) & 0xf) << 8
        | u32::from(s.s & 1) << 12
        | (u32::from(s.dpl) & 3) << 13
        | u32::from(present) << 15
        | u32::from(s.avl & 1) << 20
        | u32::from(s.l & 1) << 21
        | u32::from(s.db & 1) << 22
        | u32::from(s.g & 1) << 23
}

/// QEMU's `QEMUCPUState` as `dump-guest-memory` writes it for x86_64.
fn qemu_cpu_state(s: &VcpuState) -> Vec<u8> {
    let (r, sr) = (&s.regs, &s.sregs);
    let mut b = Vec::with_capacity(QEMU_CPUSTATE_SIZE);
    b.extend_from_slice(&QEMU_CPUSTATE_VERSION.to_le_bytes());
    b.extend_from_slice(&(QEMU_CPUSTATE_SIZE as u32).to_le_bytes());
    for v in [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip, r.rflags,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    let mut seg = |selector: u32, limit: u32, flags: u32, base: u64| {
        b.extend_from_slice(&selector.to_le_bytes());
        b.extend_from_slice(&limit.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&base.to_le_bytes());
    };
    for s in [
        &sr.cs, &sr.ds, &sr.es, &sr.fs, &sr.gs, &sr.ss, &sr.ldt, &sr.tr,
    ] {
        seg(s.selector.into(), s.limit, segment_flags(s), s.base);
    }
    seg(0, sr.gdt.limit.into(), 0, sr.gdt.base);
    seg(0, sr.idt.limit.into(), 0, sr.idt.base);
    for v in [sr.cr0, 0, sr.cr2, sr.cr3, sr.cr4] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    let kgs = s.msrs.get(&MSR_KERNEL_GS_BASE).copied().unwrap_or(0);
    b.extend_from_slice(&kgs.to_le_bytes());
    debug_assert_eq!(b.len(), QEMU_CPUSTATE_SIZE);
    b
}

fn checksum(desc: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    h.update(&desc[..KJUMP_CHECKSUM]);
    h.update(&[0; 8]);
    h.update(&desc[KJUMP_CHECKSUM + 8..]);
    h.digest()
}

/// The KJUMP note's descriptor (layout: [`KjumpNote`]).
fn kjump_desc(d: &DumpInput<'_>) -> Result<Vec<u8>, DumpError> {
    let state = serde_json::to_vec(d.state).map_err(DumpError::Encode)?;
    let resume = match d.resume {
        Some(r) => serde_json::to_vec(r).map_err(DumpError::Encode)?,
        None => Vec::new(),
    };
    // Names longer than a u16 are cut (at a character boundary).
    let cut = |s: &str| {
        let mut n = s.len().min(u16::MAX as usize);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        s.as_bytes()[..n].to_vec()
    };
    let (name, version) = (cut(d.kernel_name), cut(d.kjump_version));
    let mut b = vec![0u8; KJUMP_HEADER_SIZE];
    put(&mut b, 0, &KJUMP_MAGIC);
    put(&mut b, 8, &KJUMP_VERSION.to_le_bytes());
    put(&mut b, 12, &(KJUMP_HEADER_SIZE as u32).to_le_bytes());
    put(&mut b, 16, &d.id.index.to_le_bytes());
    put(&mut b, 24, &d.id.cycle.to_le_bytes());
    b[32] = match d.id.kernel {
        Kernel::A => 0,
        Kernel::B => 1,
    };
    b[33] = match d.id.direction {
        Direction::Suspend => 0,
        Direction::Resume => 1,
    };
    let flags = if d.resumable { KJUMP_FLAG_RESUMABLE } else { 0 };
    put(&mut b, 34, &flags.to_le_bytes());
    put(&mut b, 36, &(state.len() as u32).to_le_bytes());
    put(&mut b, 40, &d.jump_back_entry.to_le_bytes());
    put(&mut b, 48, &d.mem_size.to_le_bytes());
    put(&mut b, 56, &(name.len() as u16).to_le_bytes());
    put(&mut b, 58, &(version.len() as u16).to_le_bytes());
    put(
        &mut b,
        KJUMP_RESUME_SIZE,
        &(resume.len() as u32).to_le_bytes(),
    );
    b.extend_from_slice(&state);
    b.extend_from_slice(&name);
    b.extend_from_slice(&version);
    b.extend_from_slice(&resume);
    let sum = checksum(&b);
    put(&mut b, KJUMP_CHECKSUM, &sum.to_le_bytes());
    Ok(b)
}

fn elf_header(entry: u64, phnum: u16) -> [u8; EHDR_SIZE] {
    let mut h = [0u8; EHDR_SIZE];
    put(&mut h, 0, &ELF_MAGIC);
    h[4] = ELFCLASS64;
    h[5] = ELFDATA2LSB;
    h[6] = EV_CURRENT;
    put(&mut h, 16, &ET_CORE.to_le_bytes());
    put(&mut h, 18, &EM_X86_64.to_le_bytes());
    put(&mut h, 20, &u32::from(EV_CURRENT).to_le_bytes());
    put(&mut h, 24, &entry.to_le_bytes());
    put(&mut h, 32, &(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    put(&mut h, 52, &(EHDR_SIZE as u16).to_le_bytes());
    put(&mut h, 54, &(PHDR_SIZE as u16).to_le_bytes());
    put(&mut h, 56, &phnum.to_le_bytes());
    h
}

fn phdr(p_type: u32, flags: u32, offset: u64, addr: u64, size: u64, align: u64) -> [u8; PHDR_SIZE] {
    let mut p = [0u8; PHDR_SIZE];
    put(&mut p, 0, &p_type.to_le_bytes());
    put(&mut p, 4, &flags.to_le_bytes());
    put(&mut p, 8, &offset.to_le_bytes());
    put(&mut p, 16, &addr.to_le_bytes()); // p_vaddr
    put(&mut p, 24, &addr.to_le_bytes()); // p_paddr
    put(&mut p, 32, &size.to_le_bytes()); // p_filesz
    put(&mut p, 40, &size.to_le_bytes()); // p_memsz
    put(&mut p, 48, &align.to_le_bytes());
    p
}

/// Temporary files of dumps being written get distinct names.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The temporary file of a dump being written: removed unless committed.
struct TempFile {
    path: PathBuf,
    committed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes a dump to `path` atomically: a temporary file in the same
/// directory, fsynced, renamed over `path`, and the directory fsynced. On
/// error nothing is left behind and `path` is untouched.
pub fn write_dump(path: &Path, d: &DumpInput<'_>) -> Result<(), DumpError> {
    let werr = |source| DumpError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| werr(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let mut temp = TempFile {
        path: dir.join(format!(
            ".{}.tmp-{}-{seq}",
            name.to_string_lossy(),
            std::process::id()
        )),
        committed: false,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp.path)
        .map_err(werr)?;
    write_into(&file, d, path)?;
    file.sync_all().map_err(werr)?;
    drop(file);
    std::fs::rename(&temp.path, path).map_err(werr)?;
    temp.committed = true;
    // The rename is durable once the directory is.
    File::open(&dir).and_then(|f| f.sync_all()).map_err(werr)?;
    log::debug!("wrote dump {}", path.display());
    Ok(())
}

fn write_into(file: &File, d: &DumpInput<'_>, path: &Path) -> Result<(), DumpError> {
    let werr = |source| DumpError::Write {
        path: path.to_path_buf(),
        source,
    };
    let ranges = d.memory.ram_ranges();
    let mut prev_end = 0;
    for (i, &(start, len)) in ranges.iter().enumerate() {
        let bad = !start.is_multiple_of(PAGE)
            || !len.is_multiple_of(PAGE)
            || len == 0
            || (i > 0 && start < prev_end);
        if bad || start.checked_add(len).is_none() {
            return Err(DumpError::Layout { start, len });
        }
        prev_end = start + len;
    }
    let phnum = u16::try_from(ranges.len() + 1)
        .ok()
        .filter(|&n| n < PN_XNUM)
        .ok_or(DumpError::Layout { start: 0, len: 0 })?;

    let mut notes = Vec::new();
    push_note(&mut notes, "CORE", NT_PRSTATUS, &prstatus(d.state));
    push_note(&mut notes, "CORE", NT_PRFPREG, &fpregs(d.state));
    push_note(&mut notes, "QEMU", NT_QEMU, &qemu_cpu_state(d.state));
    push_note(&mut notes, KJUMP_NOTE_NAME, NT_KJUMP, &kjump_desc(d)?);

    let notes_off = EHDR_SIZE + PHDR_SIZE * usize::from(phnum);
    let mut head = Vec::with_capacity(notes_off + notes.len());
    head.extend_from_slice(&elf_header(d.jump_back_entry, phnum));
    head.extend_from_slice(&phdr(
        PT_NOTE,
        0,
        notes_off as u64,
        0,
        notes.len() as u64,
        NOTE_ALIGN as u64,
    ));
    let mut offset = align_up(notes_off + notes.len(), PAGE_SIZE) as u64;
    let mut loads = Vec::with_capacity(ranges.len());
    for &(start, len) in &ranges {
        head.extend_from_slice(&phdr(PT_LOAD, PF_RWX, offset, start, len, PAGE));
        loads.push((start, len, offset));
        offset += len;
    }
    head.extend_from_slice(&notes);
    file.write_all_at(&head, 0).map_err(werr)?;

    // Memory: runs of non-zero pages are written, zero pages skipped.
    let mut buf = vec![0u8; CHUNK];
    for (start, len, off) in loads {
        let mut pos = 0u64;
        while pos < len {
            let n = (len - pos).min(CHUNK as u64) as usize;
            let chunk = &mut buf[..n];
            d.memory.read_ram(start + pos, chunk)?;
            let mut run: Option<usize> = None; // start of the current non-zero run
            for (i, page) in chunk.chunks(PAGE_SIZE).enumerate() {
                let zero = page == &ZERO_PAGE[..page.len()];
                match (zero, run) {
                    (false, None) => run = Some(i * PAGE_SIZE),
                    (true, Some(r)) => {
                        file.write_all_at(&chunk[r..i * PAGE_SIZE], off + pos + r as u64)
                            .map_err(werr)?;
                        run = None;
                    }
                    _ => {}
                }
            }
            if let Some(r) = run {
                file.write_all_at(&chunk[r..], off + pos + r as u64)
                    .map_err(werr)?;
            }
            pos += n as u64;
        }
    }
    // Trailing zero pages become a hole too, but the file has its full size.
    file.set_len(offset).map_err(werr)?;
    Ok(())
}

// ---------------------------------------------------------------- reading

/// Little-endian integers from a slice whose length the caller checked.
fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"))
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// One note as found in the file.
struct RawNote<'a> {
    name: String,
    kind: u32,
    desc: &'a [u8],
}

/// Splits a note segment into notes, checking every size against it.
fn parse_notes(b: &[u8]) -> Result<Vec<RawNote<'_>>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < b.len() {
        if b.len() - at < 12 {
            return Err(format!("note header at note offset {at} is cut short"));
        }
        let namesz = u32_at(b, at) as usize;
        let descsz = u32_at(b, at + 4) as usize;
        let kind = u32_at(b, at + 8);
        let name_at = at + 12;
        let desc_at = name_at
            .checked_add(align_up(namesz, NOTE_ALIGN))
            .filter(|&e| e <= b.len());
        let Some(desc_at) = desc_at else {
            return Err(format!(
                "note name at note offset {name_at} ({namesz} bytes) runs past the notes"
            ));
        };
        let end = desc_at.checked_add(descsz).filter(|&e| e <= b.len());
        let Some(end) = end else {
            return Err(format!(
                "note descriptor at note offset {desc_at} ({descsz} bytes) runs past the notes"
            ));
        };
        let raw = &b[name_at..name_at + namesz];
        let name = match raw.split_last() {
            Some((0, n)) => String::from_utf8_lossy(n).into_owned(),
            None => String::new(),
            _ => {
                return Err(format!(
                    "note name at note offset {name_at} is not NUL-terminated"
                ));
            }
        };
        // Padding is zero (a flipped bit anywhere in a note is noticed);
        // the padding after the last descriptor may be missing.
        let next = align_up(end, NOTE_ALIGN).min(b.len());
        if b[name_at + namesz..desc_at]
            .iter()
            .chain(&b[end..next])
            .any(|&x| x != 0)
        {
            return Err(format!("note padding at note offset {name_at} is not zero"));
        }
        out.push(RawNote {
            name,
            kind,
            desc: &b[desc_at..end],
        });
        at = next;
    }
    Ok(out)
}

/// Decodes the KJUMP note (layout: [`KjumpNote`]).
type KjumpParts = (KjumpNote, VcpuState, Option<ResumeRecord>);

fn parse_kjump(desc: &[u8], path: &Path) -> Result<KjumpParts, DumpError> {
    let corrupt = |what: String| DumpError::Corrupt {
        path: path.to_path_buf(),
        what,
    };
    if desc.len() < 12 || desc[..8] != KJUMP_MAGIC {
        return Err(corrupt("KJUMP note has no KJUMP magic".into()));
    }
    let version = u32_at(desc, 8);
    if !(KJUMP_MIN_VERSION..=KJUMP_VERSION).contains(&version) {
        return Err(DumpError::Version {
            path: path.to_path_buf(),
            found: version,
        });
    }
    if desc.len() < KJUMP_HEADER_SIZE {
        return Err(corrupt(format!(
            "KJUMP note is {} bytes, shorter than its header",
            desc.len()
        )));
    }
    let header = u32_at(desc, 12) as usize;
    if header != KJUMP_HEADER_SIZE {
        return Err(corrupt(format!(
            "KJUMP note header size {header}, expected {KJUMP_HEADER_SIZE}"
        )));
    }
    let state_len = u32_at(desc, 36) as usize;
    let name_len = usize::from(u16_at(desc, 56));
    let version_len = usize::from(u16_at(desc, 58));
    // Version 1: reserved, and zero (checked with the flags below).
    let resume_len = if version >= 2 {
        u32_at(desc, KJUMP_RESUME_SIZE) as usize
    } else {
        0
    };
    let want = KJUMP_HEADER_SIZE as u64
        + state_len as u64
        + name_len as u64
        + version_len as u64
        + resume_len as u64;
    if want != desc.len() as u64 {
        return Err(corrupt(format!(
            "KJUMP note is {} bytes, its header describes {want}",
            desc.len()
        )));
    }
    let sum = u64_at(desc, KJUMP_CHECKSUM);
    if checksum(desc) != sum {
        return Err(corrupt("KJUMP note checksum mismatch".into()));
    }
    let kernel = match desc[32] {
        0 => Kernel::A,
        1 => Kernel::B,
        k => return Err(corrupt(format!("KJUMP note names kernel {k}"))),
    };
    let direction = match desc[33] {
        0 => Direction::Suspend,
        1 => Direction::Resume,
        d => return Err(corrupt(format!("KJUMP note names direction {d}"))),
    };
    let flags = u16_at(desc, 34);
    if flags & !KJUMP_FLAG_RESUMABLE != 0 || (version < 2 && u32_at(desc, KJUMP_RESUME_SIZE) != 0) {
        return Err(corrupt(format!(
            "KJUMP note has unknown flags {flags:#x} or reserved bits set"
        )));
    }
    let mut at = KJUMP_HEADER_SIZE;
    let mut take = |n: usize| {
        let s = &desc[at..at + n];
        at += n;
        s
    };
    let state_bytes = take(state_len);
    let state: VcpuState = serde_json::from_slice(state_bytes)
        .map_err(|e| corrupt(format!("KJUMP note's vCPU state does not decode: {e}")))?;
    if state.xsave.len() != XSAVE_SIZE {
        return Err(corrupt(format!(
            "KJUMP note's XSAVE area is {} bytes, expected {XSAVE_SIZE}",
            state.xsave.len()
        )));
    }
    let text = |b: &[u8], what: &str| {
        String::from_utf8(b.to_vec())
            .map_err(|_| corrupt(format!("KJUMP note's {what} is not UTF-8")))
    };
    let kernel_name = text(take(name_len), "kernel name")?;
    let kjump_version = text(take(version_len), "kjump version")?;
    let id = CheckpointId {
        index: u64_at(desc, 16),
        cycle: u64_at(desc, 24),
        kernel,
        direction,
    };
    let resume = match resume_len {
        0 => None,
        n => Some(parse_resume(take(n), &id).map_err(corrupt)?),
    };
    let meta = KjumpNote {
        version,
        id,
        jump_back_entry: u64_at(desc, 40),
        resumable: flags & KJUMP_FLAG_RESUMABLE != 0,
        mem_size: u64_at(desc, 48),
        kernel_name,
        kjump_version,
    };
    Ok((meta, state, resume))
}

/// Decodes a resume record and checks what can be checked on its own.
fn parse_resume(b: &[u8], id: &CheckpointId) -> Result<ResumeRecord, String> {
    let r: ResumeRecord = serde_json::from_slice(b)
        .map_err(|e| format!("KJUMP note's resume record does not decode: {e}"))?;
    if let Some(p) = &r.peer {
        if p.state.xsave.len() != XSAVE_SIZE {
            return Err(format!(
                "KJUMP note's resume record: the peer's XSAVE area is {} bytes, expected {XSAVE_SIZE}",
                p.state.xsave.len()
            ));
        }
        let s = &p.suspended_at;
        if p.kernel != id.kernel.peer()
            || s.kernel != p.kernel
            || s.direction != Direction::Suspend
            || s.index >= id.index
        {
            return Err(format!(
                "KJUMP note's resume record: peer {} suspended at {} does not fit checkpoint {}",
                p.kernel.name(),
                checkpoint_text(s),
                checkpoint_text(id)
            ));
        }
    }
    Ok(r)
}

/// Reads and validates a dump. The file is untrusted: whatever is wrong
/// with it is a [`DumpError`] naming the first problem found.
pub fn read_dump(path: &Path) -> Result<Dump, DumpError> {
    let rerr = |source| DumpError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(rerr)?;
    let len = file.metadata().map_err(rerr)?.len();
    parse_dump(Backing::File(file), len, path)
}

/// [`read_dump`] on a dump already in memory; `path` only names it in
/// errors and [`inspect`]. Checks exactly what [`read_dump`] checks.
pub fn read_dump_bytes(bytes: Vec<u8>, path: &Path) -> Result<Dump, DumpError> {
    let len = bytes.len() as u64;
    parse_dump(Backing::Bytes(bytes), len, path)
}

fn parse_dump(file: Backing, len: u64, path: &Path) -> Result<Dump, DumpError> {
    let p = || path.to_path_buf();
    let rerr = |source| DumpError::Read { path: p(), source };
    let not_dump = |why: &str| DumpError::NotADump {
        path: p(),
        why: why.to_string(),
    };
    let truncated = |what: String| DumpError::Truncated { path: p(), what };
    let corrupt = |what: String| DumpError::Corrupt { path: p(), what };

    let read = |off: u64, n: usize| -> Result<Vec<u8>, DumpError> {
        let mut b = vec![0u8; n];
        file.read_exact_at(&mut b, off).map_err(rerr)?;
        Ok(b)
    };

    if len < 4 {
        return Err(not_dump("shorter than an ELF header"));
    }
    let ident = read(0, 4)?;
    if ident[..] != ELF_MAGIC {
        return Err(not_dump("no ELF magic"));
    }
    if len < EHDR_SIZE as u64 {
        return Err(truncated(format!(
            "{len} bytes, shorter than the ELF header"
        )));
    }
    let h = read(0, EHDR_SIZE)?;
    if h[4] != ELFCLASS64 || h[5] != ELFDATA2LSB || h[6] != EV_CURRENT {
        return Err(not_dump("not a little-endian ELF64 file"));
    }
    if u16_at(&h, 16) != ET_CORE {
        return Err(not_dump("not an ELF core file (e_type is not ET_CORE)"));
    }
    if u16_at(&h, 18) != EM_X86_64 {
        return Err(not_dump("not an x86_64 core file"));
    }
    let entry = u64_at(&h, 24);
    let phoff = u64_at(&h, 32);
    let phentsize = usize::from(u16_at(&h, 54));
    let phnum = u16_at(&h, 56);
    if phentsize != PHDR_SIZE {
        return Err(corrupt(format!(
            "program header size {phentsize}, expected {PHDR_SIZE}"
        )));
    }
    if phnum == 0 || phnum == PN_XNUM {
        return Err(corrupt(format!("{phnum:#x} program headers")));
    }
    let ph_len = PHDR_SIZE as u64 * u64::from(phnum);
    match phoff.checked_add(ph_len) {
        Some(end) if end <= len => {}
        _ => {
            return Err(truncated(format!(
                "program headers at {phoff:#x} ({ph_len} bytes) end past the file's {len} bytes"
            )));
        }
    }
    let ph = read(phoff, ph_len as usize)?;
    // Segments hold data after the headers, never the headers themselves.
    let headers_end = phoff + ph_len;

    let mut loads = Vec::new();
    let mut notes = Vec::new();
    let mut kjump = None;
    for i in 0..usize::from(phnum) {
        let e = &ph[i * PHDR_SIZE..(i + 1) * PHDR_SIZE];
        let (p_type, offset, paddr) = (u32_at(e, 0), u64_at(e, 8), u64_at(e, 24));
        let (filesz, memsz) = (u64_at(e, 32), u64_at(e, 40));
        let file_end = offset.checked_add(filesz);
        if matches!(p_type, PT_LOAD | PT_NOTE) && file_end.is_none_or(|end| end > len) {
            return Err(truncated(format!(
                "segment {i} at file offset {offset:#x} ({filesz:#x} bytes) ends past the file's {len:#x} bytes"
            )));
        }
        let overlaps_headers = filesz > 0 && offset < headers_end;
        if matches!(p_type, PT_LOAD | PT_NOTE) && overlaps_headers {
            return Err(corrupt(format!(
                "segment {i} at file offset {offset:#x} overlaps the ELF and program headers (up to {headers_end:#x})"
            )));
        }
        match p_type {
            PT_NOTE => {
                if filesz > MAX_NOTES {
                    return Err(corrupt(format!("note segment {i} is {filesz} bytes")));
                }
                let b = read(offset, filesz as usize)?;
                let raw = parse_notes(&b).map_err(|w| corrupt(format!("note segment {i}: {w}")))?;
                for n in raw {
                    if n.name == KJUMP_NOTE_NAME && n.kind == NT_KJUMP {
                        if kjump.is_some() {
                            return Err(corrupt("more than one KJUMP note".into()));
                        }
                        kjump = Some(parse_kjump(n.desc, path)?);
                    }
                    notes.push(NoteInfo {
                        name: n.name,
                        kind: n.kind,
                        size: n.desc.len() as u64,
                    });
                }
            }
            PT_LOAD => {
                if filesz > memsz
                    || !paddr.is_multiple_of(PAGE)
                    || !memsz.is_multiple_of(PAGE)
                    || memsz == 0
                {
                    return Err(corrupt(format!(
                        "PT_LOAD {i} at {paddr:#x}: sizes {filesz:#x}/{memsz:#x} are not whole pages"
                    )));
                }
                if paddr.checked_add(memsz).is_none() {
                    return Err(corrupt(format!("PT_LOAD {i} at {paddr:#x} wraps around")));
                }
                loads.push(Load {
                    paddr,
                    memsz,
                    offset,
                    filesz,
                });
            }
            _ => {}
        }
    }
    let Some((meta, state, resume)) = kjump else {
        return Err(not_dump("no KJUMP note"));
    };
    if meta.jump_back_entry != entry {
        return Err(corrupt(format!(
            "ELF entry {entry:#x} differs from the KJUMP note's jump-back entry {:#x}",
            meta.jump_back_entry
        )));
    }
    loads.sort_by_key(|l| l.paddr);
    for w in loads.windows(2) {
        if w[1].paddr < w[0].end() {
            return Err(corrupt(format!(
                "PT_LOADs [{:#x}..{:#x}) and [{:#x}..{:#x}) overlap",
                w[0].paddr,
                w[0].end(),
                w[1].paddr,
                w[1].end()
            )));
        }
    }
    Ok(Dump {
        path: p(),
        file,
        len,
        entry,
        meta,
        state,
        resume,
        loads,
        notes,
    })
}

impl Dump {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The KJUMP note's metadata.
    pub fn meta(&self) -> &KjumpNote {
        &self.meta
    }

    /// The complete vCPU state, as `kjump resume` restores it.
    pub fn state(&self) -> &VcpuState {
        &self.state
    }

    /// What `kjump resume` needs besides memory and vCPU (version 2 notes
    /// of dumps taken at a checkpoint of a run).
    pub fn resume(&self) -> Option<&ResumeRecord> {
        self.resume.as_ref()
    }

    /// The notes, in file order.
    pub fn notes(&self) -> &[NoteInfo] {
        &self.notes
    }

    /// RAM ranges `(start, len)`, sorted.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.loads.iter().map(|l| (l.paddr, l.memsz)).collect()
    }

    fn load_of(&self, addr: u64) -> Option<&Load> {
        let i = self.loads.partition_point(|l| l.paddr <= addr);
        self.loads[..i].last().filter(|l| l.contains(addr))
    }

    /// Reads `buf.len()` bytes at guest-physical `addr`; the span must lie
    /// in one RAM range. Holes read as zeros.
    pub fn read_at(&self, addr: u64, buf: &mut [u8]) -> Result<(), DumpError> {
        let Some(l) = self.load_of(addr).filter(|l| {
            addr.checked_add(buf.len() as u64)
                .is_some_and(|e| e <= l.end())
        }) else {
            return Err(DumpError::Memory(addr));
        };
        let rel = addr - l.paddr;
        // Bytes stored in the file, then the zero tail past p_filesz.
        let stored = l.filesz.saturating_sub(rel).min(buf.len() as u64) as usize;
        let (head, tail) = buf.split_at_mut(stored);
        self.file
            .read_exact_at(head, l.offset + rel)
            .map_err(|source| DumpError::Read {
                path: self.path.clone(),
                source,
            })?;
        tail.fill(0);
        Ok(())
    }

    /// The page at `addr` (rounded down), or `None` if it is not RAM in
    /// this dump (or the file became unreadable since it was opened).
    pub fn read_page(&self, addr: u64) -> Option<Page> {
        let mut p = [0u8; PAGE_SIZE];
        match self.read_at(addr & !(PAGE - 1), &mut p) {
            Ok(()) => Some(p),
            Err(DumpError::Memory(_)) => None,
            Err(e) => {
                log::warn!("{e}");
                None
            }
        }
    }

    /// The first page at or after `addr` (page-aligned, below `end`, in
    /// the load holding `addr`) that may hold data; `end` if all that
    /// follows up to `end` is a hole. Uses `SEEK_DATA`, so a sparse dump of
    /// a big guest is walked at the cost of its data.
    fn next_data(&self, addr: u64, end: u64) -> u64 {
        let Some(l) = self.load_of(addr) else {
            return end;
        };
        let rel = addr - l.paddr;
        if rel >= l.filesz {
            return end;
        }
        match self.file.seek_data(l.offset + rel) {
            Some(off) if off < l.offset + l.filesz => (l.paddr + (off - l.offset)) & !(PAGE - 1),
            Some(_) => end,
            None => end,
        }
        .max(addr & !(PAGE - 1))
        .min(end)
    }

    /// Non-zero pages in each RAM range, in [`Dump::ranges`] order.
    pub fn nonzero_pages(&self) -> Result<Vec<u64>, DumpError> {
        let mut buf = vec![0u8; CHUNK];
        let mut out = Vec::with_capacity(self.loads.len());
        for l in &self.loads {
            let mut count = 0;
            let mut pos = l.paddr;
            while pos < l.end() {
                pos = self.next_data(pos, l.end());
                if pos >= l.end() {
                    break;
                }
                let n = (l.end() - pos).min(CHUNK as u64) as usize;
                self.read_at(pos, &mut buf[..n])?;
                count += buf[..n]
                    .chunks(PAGE_SIZE)
                    .filter(|p| *p != &ZERO_PAGE[..p.len()])
                    .count() as u64;
                pos += n as u64;
            }
            out.push(count);
        }
        Ok(out)
    }
}

/// `lseek(SEEK_DATA)`: the first offset at or after `off` that is not in a
/// hole. `None` past the last data. File systems without hole tracking
/// report everything as data, so this only ever skips real holes.
fn seek_data(file: &File, off: u64) -> Option<u64> {
    let off_t = libc::off_t::try_from(off).ok()?;
    // SAFETY: lseek on a file descriptor `file` owns and keeps open for the
    // call; it moves the file position only, which kjump never relies on
    // (all reads are positioned, `read_exact_at`), and touches no memory.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off_t, libc::SEEK_DATA) };
    if r >= 0 {
        return u64::try_from(r).ok();
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::ENXIO) => None,
        // Any other failure: assume data, and let the read find out.
        _ => Some(off),
    }
}

impl RamSource for Dump {
    fn ram_ranges(&self) -> Vec<(u64, u64)> {
        self.ranges()
    }
    fn read_ram(&self, addr: u64, buf: &mut [u8]) -> Result<(), DumpError> {
        self.read_at(addr, buf)
    }
    fn skip_zeros(&self, addr: u64, end: u64) -> u64 {
        self.next_data(addr, end)
    }
}

// ---------------------------------------------------------------- inspect

fn segment_json(s: &kvm_segment) -> serde_json::Value {
    json!({
        "selector": s.selector, "base": s.base, "limit": s.limit, "type": s.type_,
        "present": s.present, "dpl": s.dpl, "db": s.db, "s": s.s, "l": s.l, "g": s.g,
        "avl": s.avl, "unusable": s.unusable,
    })
}

fn segments(s: &VcpuState) -> [(&'static str, &kvm_segment); 8] {
    let sr = &s.sregs;
    [
        ("cs", &sr.cs),
        ("ds", &sr.ds),
        ("es", &sr.es),
        ("fs", &sr.fs),
        ("gs", &sr.gs),
        ("ss", &sr.ss),
        ("tr", &sr.tr),
        ("ldt", &sr.ldt),
    ]
}

fn control_regs(s: &VcpuState) -> [(&'static str, u64); 7] {
    let sr = &s.sregs;
    [
        ("cr0", sr.cr0),
        ("cr2", sr.cr2),
        ("cr3", sr.cr3),
        ("cr4", sr.cr4),
        ("cr8", sr.cr8),
        ("efer", sr.efer),
        ("apic_base", sr.apic_base),
    ]
}

fn checkpoint_text(id: &CheckpointId) -> String {
    format!(
        "#{} cycle {} kernel {} {}",
        id.index,
        id.cycle,
        id.kernel.name(),
        id.direction.name()
    )
}

fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b.is_multiple_of(1 << 30) => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b.is_multiple_of(1 << 20) => format!("{} MiB", b >> 20),
        b if b.is_multiple_of(1024) => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// Counts of non-zero pages per range, `None` where the file is unreadable.
fn page_counts(d: &Dump) -> Vec<Option<u64>> {
    match d.nonzero_pages() {
        Ok(v) => v.into_iter().map(Some).collect(),
        Err(e) => {
            log::warn!("{e}");
            vec![None; d.loads.len()]
        }
    }
}

/// A human-readable summary of a dump: header, checkpoint, registers,
/// memory ranges, notes.
pub fn inspect(d: &Dump) -> String {
    let m = &d.meta;
    let s = &d.state;
    let mut o = String::new();
    let _ = writeln!(o, "kjump dump {}", d.path.display());
    let _ = writeln!(
        o,
        "  ELF64 core, x86_64, {} bytes ({} program headers), KJUMP note version {}, written by kjump {}",
        d.len,
        d.loads.len() + 1,
        m.version,
        m.kjump_version
    );
    let _ = writeln!(o, "  checkpoint {}", checkpoint_text(&m.id));
    let _ = writeln!(
        o,
        "  kernel {}, {} of RAM",
        m.kernel_name,
        size_text(m.mem_size)
    );
    match &d.resume {
        Some(r) => {
            let peer = r.peer.as_ref().map_or_else(
                || "the other kernel not booted yet".to_string(),
                |p| {
                    format!(
                        "kernel {} away since {}",
                        p.kernel.name(),
                        checkpoint_text(&p.suspended_at)
                    )
                },
            );
            let _ = writeln!(
                o,
                "  resume record: {} of {} cycles, {peer}",
                r.scenario, r.cycles
            );
        }
        None => o.push_str("  no resume record (kjump resume refuses it)\n"),
    }
    let _ = writeln!(
        o,
        "  jump-back entry {:#x} (ELF entry {:#x}), {}",
        m.jump_back_entry,
        d.entry,
        if m.resumable {
            "resumable"
        } else {
            "not resumable"
        }
    );
    o.push_str("registers:\n");
    for row in s.general_regs().chunks(4) {
        o.push(' ');
        for (n, v) in row {
            let _ = write!(o, " {n:>6} {v:#018x}");
        }
        o.push('\n');
    }
    o.push_str("segments:\n");
    for (n, g) in segments(s) {
        let _ = writeln!(
            o,
            "  {n:<3} selector {:#06x} base {:#018x} limit {:#010x} type {:#x} s {} dpl {} p {} db {} l {} g {} avl {} unusable {}",
            g.selector,
            g.base,
            g.limit,
            g.type_,
            g.s,
            g.dpl,
            g.present,
            g.db,
            g.l,
            g.g,
            g.avl,
            g.unusable
        );
    }
    for (n, t) in [("gdt", &s.sregs.gdt), ("idt", &s.sregs.idt)] {
        let _ = writeln!(o, "  {n} base {:#018x} limit {:#06x}", t.base, t.limit);
    }
    o.push_str("control:\n");
    for row in control_regs(s).chunks(4) {
        o.push(' ');
        for (n, v) in row {
            let _ = write!(o, " {n:>9} {v:#018x}");
        }
        o.push('\n');
    }
    let counts = page_counts(d);
    let _ = writeln!(o, "memory: {} range(s)", d.loads.len());
    for (l, c) in d.loads.iter().zip(counts) {
        let c = c.map_or_else(|| "?".to_string(), |c| c.to_string());
        let _ = writeln!(
            o,
            "  [{:#x}..{:#x}) {}, {c} non-zero page(s) of {}, at file offset {:#x}",
            l.paddr,
            l.end(),
            size_text(l.memsz),
            l.memsz / PAGE,
            l.offset
        );
    }
    let _ = writeln!(o, "notes: {}", d.notes.len());
    for n in &d.notes {
        let _ = writeln!(
            o,
            "  {:<6} type {:#010x} {:>6} bytes  {}",
            n.name,
            n.kind,
            n.size,
            n.describe()
        );
    }
    o
}

/// [`inspect`] as JSON: `file`, `size`, `kjump` (the KJUMP note),
/// `registers`, `segments`, `tables`, `control`, `fields` (every field of
/// [`VcpuState::fields`] as text), `memory`, `notes`.
pub fn inspect_json(d: &Dump) -> serde_json::Value {
    let s = &d.state;
    let regs: serde_json::Map<_, _> = s
        .general_regs()
        .iter()
        .map(|(n, v)| (n.to_string(), json!(v)))
        .collect();
    let segs: serde_json::Map<_, _> = segments(s)
        .iter()
        .map(|(n, g)| (n.to_string(), segment_json(g)))
        .collect();
    let ctrl: serde_json::Map<_, _> = control_regs(s)
        .iter()
        .map(|(n, v)| (n.to_string(), json!(v)))
        .collect();
    let fields: serde_json::Map<_, _> = s
        .fields()
        .into_iter()
        .map(|(n, v)| (n, serde_json::Value::String(v.to_string())))
        .collect();
    let memory: Vec<_> = d
        .loads
        .iter()
        .zip(page_counts(d))
        .map(|(l, c)| json!({"start": l.paddr, "len": l.memsz, "file_offset": l.offset, "nonzero_pages": c}))
        .collect();
    json!({
        "file": d.path.display().to_string(),
        "size": d.len,
        "elf_entry": d.entry,
        "kjump": &d.meta,
        "resume": d.resume.as_ref().map(|r| json!({
            "scenario": r.scenario,
            "cycles": r.cycles,
            "peer_suspended_at": r.peer.as_ref().map(|p| p.suspended_at),
        })),
        "registers": regs,
        "segments": segs,
        "tables": {
            "gdt": {"base": s.sregs.gdt.base, "limit": s.sregs.gdt.limit},
            "idt": {"base": s.sregs.idt.base, "limit": s.sregs.idt.limit},
        },
        "control": ctrl,
        "fields": fields,
        "memory": memory,
        "notes": &d.notes,
    })
}

// ---------------------------------------------------------------- diff

/// A field of [`VcpuState::fields`] that differs between two dumps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RegisterDiff {
    pub name: String,
    pub old: FieldValue,
    pub new: FieldValue,
}

/// A page that differs between two dumps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PageDiff {
    pub addr: u64,
    /// Differing bytes, in guest-physical addresses, with their symbols.
    pub ranges: Vec<DiffRange>,
    /// Old (`-`) / new (`+`) hexdump; empty past the first pages.
    pub hexdump: String,
    /// The symbol or section of the first differing byte.
    pub symbol: Option<String>,
}

/// A register difference the oracle allows between a kernel's suspend and
/// its resume, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExpectedDiff {
    #[serde(flatten)]
    pub register: RegisterDiff,
    pub why: String,
}

/// Why `rax` differs between a kernel's suspend and its resume.
const ANSWER_WHY: &str = "checkpoint answer: JUMP at the suspend, BACK at the resume";

/// What differs from dump `a` (old) to dump `b` (new).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DumpDiff {
    pub a: String,
    pub b: String,
    /// Differing metadata (checkpoint, entry, ...): shown, but not a
    /// difference of the guest's state.
    pub meta: Vec<String>,
    /// When the dumps are one kernel's suspend and its next resume (in
    /// either order), the two checkpoints, suspend first: the oracle's
    /// pair, whose allowed differences are `expected`.
    pub pair: Option<[CheckpointId; 2]>,
    /// Register differences the oracle allows for `pair` (none without
    /// one): not differences of the kernel's state.
    pub expected: Vec<ExpectedDiff>,
    /// Register differences not expected.
    pub registers: Vec<RegisterDiff>,
    pub pages: Vec<PageDiff>,
    /// RAM ranges in one dump only, and pages that could not be read.
    pub problems: Vec<String>,
}

impl DumpDiff {
    /// True when the guest states differ (registers, memory or layout)
    /// beyond the expected differences.
    pub fn differs(&self) -> bool {
        !self.registers.is_empty() || !self.pages.is_empty() || !self.problems.is_empty()
    }
}

impl fmt::Display for DumpDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "--- {}", self.a)?;
        writeln!(f, "+++ {}", self.b)?;
        for m in &self.meta {
            writeln!(f, "meta: {m}")?;
        }
        if let Some([s, r]) = &self.pair {
            writeln!(
                f,
                "pair: kernel {}'s suspend #{} and its resume #{}: what the oracle allows is expected",
                s.kernel.name(),
                s.index,
                r.index
            )?;
        }
        for e in &self.expected {
            let r = &e.register;
            writeln!(
                f,
                "expected: {}: {} -> {} ({})",
                r.name, r.old, r.new, e.why
            )?;
        }
        if !self.differs() {
            return match self.expected.len() {
                0 => writeln!(f, "identical: registers and memory"),
                n => writeln!(
                    f,
                    "identical: registers and memory, but for the {n} expected difference(s)"
                ),
            };
        }
        writeln!(f, "registers: {} differ", self.registers.len())?;
        for r in &self.registers {
            writeln!(f, "  {}: {} -> {}", r.name, r.old, r.new)?;
        }
        writeln!(f, "pages: {} differ", self.pages.len())?;
        for p in &self.pages {
            write!(f, "  page {:#x}: {} range(s)", p.addr, p.ranges.len())?;
            for r in &p.ranges {
                write!(f, ", [{:#x}..{:#x})", r.start, r.end)?;
                if let Some(s) = &r.symbol {
                    write!(f, " {s}")?;
                }
            }
            writeln!(f)?;
            for line in p.hexdump.lines() {
                writeln!(f, "    {line}")?;
            }
        }
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        Ok(())
    }
}

fn register_diffs(a: &VcpuState, b: &VcpuState) -> Vec<RegisterDiff> {
    let fa = a.fields();
    let fb = b.fields();
    let in_b: HashMap<&str, &FieldValue> = fb.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let in_a: HashMap<&str, &FieldValue> = fa.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let mut out: Vec<RegisterDiff> = fa
        .iter()
        .filter_map(|(n, old)| {
            let new = in_b
                .get(n.as_str())
                .copied()
                .cloned()
                .unwrap_or(FieldValue::Absent);
            (*old != new).then(|| RegisterDiff {
                name: n.clone(),
                old: old.clone(),
                new,
            })
        })
        .collect();
    out.extend(
        fb.iter()
            .filter(|(n, _)| !in_a.contains_key(n.as_str()))
            .map(|(n, v)| RegisterDiff {
                name: n.clone(),
                old: FieldValue::Absent,
                new: v.clone(),
            }),
    );
    out
}

/// The checkpoint at which the kernel that suspends at `suspend` resumes
/// next: its first checkpoint after `suspend` in the ping-pong sequence.
fn resume_of(suspend: CheckpointId) -> Option<CheckpointId> {
    if suspend.direction != Direction::Suspend {
        return None;
    }
    // The ids come from files: leave room for the steps below.
    suspend.index.checked_add(8)?;
    suspend.cycle.checked_add(2)?;
    let mut t = Tracker::resume_after(suspend)?;
    // The peer runs one or two checkpoints before control comes back.
    (0..4)
        .map(|_| t.next())
        .find(|id| id.kernel == suspend.kernel)
}

/// `[suspend, resume]` when checkpoints `a` and `b` are one kernel's
/// suspend and its next resume, in either order: the states the oracle
/// compares.
fn suspend_resume_pair(a: &CheckpointId, b: &CheckpointId) -> Option<[CheckpointId; 2]> {
    let (s, r) = match (a.direction, b.direction) {
        (Direction::Suspend, Direction::Resume) => (a, b),
        (Direction::Resume, Direction::Suspend) => (b, a),
        _ => return None,
    };
    (resume_of(*s) == Some(*r)).then_some([*s, *r])
}

/// Splits the register differences between a kernel's `suspend` and
/// `resume` states as the oracle judges them: `rax` is expected when each
/// state holds its checkpoint's answer ([`oracle::check_answer`]), another
/// field when the oracle's allowlist excuses it ([`Allowlist::excuse`]).
/// Returns the unexpected differences and the expected ones.
fn split_expected(
    diffs: Vec<RegisterDiff>,
    suspend: &VcpuState,
    resume: &VcpuState,
) -> (Vec<RegisterDiff>, Vec<ExpectedDiff>) {
    let answered = oracle::check_answer(suspend, Direction::Suspend.answer(), "suspend").is_none()
        && oracle::check_answer(resume, Direction::Resume.answer(), "resume").is_none();
    let (rax, rest): (Vec<_>, Vec<_>) =
        diffs.into_iter().partition(|d| answered && d.name == "rax");
    let allow = Allowlist::standard();
    let (unexpected, excused) = allow.excuse(rest, |d| &d.name);
    let expected = rax
        .into_iter()
        .map(|register| ExpectedDiff {
            register,
            why: ANSWER_WHY.to_owned(),
        })
        .chain(excused.into_iter().map(|(register, e)| ExpectedDiff {
            register,
            why: e.reason.clone(),
        }))
        .collect();
    (unexpected, expected)
}

fn meta_diffs(a: &KjumpNote, b: &KjumpNote) -> Vec<String> {
    let mut out = Vec::new();
    let mut cmp = |what: &str, x: String, y: String| {
        if x != y {
            out.push(format!("{what}: {x} -> {y}"));
        }
    };
    cmp("checkpoint", checkpoint_text(&a.id), checkpoint_text(&b.id));
    cmp(
        "jump-back entry",
        format!("{:#x}", a.jump_back_entry),
        format!("{:#x}", b.jump_back_entry),
    );
    cmp(
        "resumable",
        a.resumable.to_string(),
        b.resumable.to_string(),
    );
    cmp("mem size", a.mem_size.to_string(), b.mem_size.to_string());
    cmp("kernel", a.kernel_name.clone(), b.kernel_name.clone());
    out
}

fn page_diff(
    addr: u64,
    old: &Page,
    new: &Page,
    symbols: Option<&Symbols>,
    detailed: bool,
) -> PageDiff {
    let offs = diff_ranges(old, new);
    let sym = |a: u64| symbols.and_then(|s| s.lookup(a));
    let ranges = offs
        .iter()
        .map(|&(s, e)| DiffRange {
            start: addr + s as u64,
            end: addr + e as u64,
            symbol: sym(addr + s as u64),
        })
        .collect();
    PageDiff {
        addr,
        ranges,
        hexdump: if detailed {
            hexdump(addr, old, new, &offs)
        } else {
            String::new()
        },
        symbol: offs.first().and_then(|&(s, _)| sym(addr + s as u64)),
    }
}

/// Compares dump `a` (old) with dump `b` (new): every field of the vCPU
/// state, and every page of the RAM both have. Holes in both files are
/// skipped without reading. When the dumps are one kernel's suspend and
/// its next resume, the register differences the oracle allows there
/// (the checkpoint's answer in `rax`, the allowlist) are `expected`, apart
/// from the others; memory is compared as is.
pub fn diff(a: &Dump, b: &Dump, symbols: Option<&Symbols>) -> DumpDiff {
    let pair = suspend_resume_pair(&a.meta.id, &b.meta.id);
    let registers = register_diffs(&a.state, &b.state);
    let (registers, expected) = match pair {
        Some([s, _]) if s == a.meta.id => split_expected(registers, &a.state, &b.state),
        Some(_) => split_expected(registers, &b.state, &a.state),
        None => (registers, Vec::new()),
    };
    let mut out = DumpDiff {
        a: a.path.display().to_string(),
        b: b.path.display().to_string(),
        meta: meta_diffs(&a.meta, &b.meta),
        pair,
        expected,
        registers,
        pages: Vec::new(),
        problems: Vec::new(),
    };
    let (ra, rb) = (a.ranges(), b.ranges());
    if ra != rb {
        let show = |r: &[(u64, u64)]| {
            r.iter()
                .map(|(s, l)| format!("[{s:#x}..{:#x})", s + l))
                .collect::<Vec<_>>()
        };
        out.problems.push(format!(
            "RAM ranges differ: {:?} -> {:?}",
            show(&ra),
            show(&rb)
        ));
    }
    let mut common = Vec::new();
    for la in &a.loads {
        for lb in &b.loads {
            let (s, e) = (la.paddr.max(lb.paddr), la.end().min(lb.end()));
            if s < e {
                common.push((s, e));
            }
        }
    }
    let (mut ba, mut bb) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    for (start, end) in common {
        let mut pos = start;
        while pos < end {
            pos = a.next_data(pos, end).min(b.next_data(pos, end));
            if pos >= end {
                break;
            }
            let n = (end - pos).min(CHUNK as u64) as usize;
            if let Err(e) = a
                .read_at(pos, &mut ba[..n])
                .and_then(|()| b.read_at(pos, &mut bb[..n]))
            {
                out.problems.push(format!(
                    "cannot compare [{pos:#x}..{:#x}): {e}",
                    pos + n as u64
                ));
                pos += n as u64;
                continue;
            }
            if ba[..n] != bb[..n] {
                for (i, (pa, pb)) in ba[..n]
                    .chunks_exact(PAGE_SIZE)
                    .zip(bb[..n].chunks_exact(PAGE_SIZE))
                    .enumerate()
                {
                    if pa != pb {
                        let (pa, pb): (&Page, &Page) = (
                            pa.try_into().expect("whole pages"),
                            pb.try_into().expect("whole pages"),
                        );
                        let detailed = out.pages.len() < MAX_DETAILED;
                        out.pages.push(page_diff(
                            pos + (i * PAGE_SIZE) as u64,
                            pa,
                            pb,
                            symbols,
                            detailed,
                        ));
                    }
                }
            }
            pos += n as u64;
        }
    }
    out
}

// ---------------------------------------------------------------- commands

/// `kjump inspect FILE [--json]`: the text (or pretty JSON) to print.
pub fn cmd_inspect(path: &Path, json: bool) -> Result<String, DumpError> {
    let d = read_dump(path)?;
    if json {
        let v = inspect_json(&d);
        Ok(serde_json::to_string_pretty(&v).map_err(DumpError::Encode)? + "\n")
    } else {
        Ok(inspect(&d))
    }
}

/// `kjump diff A B [--kernel K]`: the text to print and whether the guest
/// states differ. `kernel_elf` names addresses (empty: no symbols).
pub fn cmd_diff(a: &Path, b: &Path, kernel_elf: &[u8]) -> Result<(String, bool), DumpError> {
    let symbols = if kernel_elf.is_empty() {
        None
    } else {
        Some(Symbols::from_elf(kernel_elf).map_err(DumpError::Symbols)?)
    };
    let (da, db) = (read_dump(a)?, read_dump(b)?);
    let d = diff(&da, &db, symbols.as_ref());
    Ok((d.to_string(), d.differs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests::sample_state;
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;
    use vm_memory::Bytes;

    const RAM: (u64, u64) = (0, 4 << 20);
    /// A second range, as above the 32-bit hole.
    const HIGH: (u64, u64) = (0x1_0000_0000, 1 << 20);

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kjump-dump-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn id() -> CheckpointId {
        CheckpointId {
            index: 5,
            cycle: 3,
            kernel: Kernel::B,
            direction: Direction::Resume,
        }
    }

    /// Pattern pages at a few addresses, everything else zero.
    fn memory() -> GuestMem {
        let mem = GuestMem::from_ranges(&[
            (GuestAddress(RAM.0), RAM.1 as usize),
            (GuestAddress(HIGH.0), HIGH.1 as usize),
        ])
        .unwrap();
        for (i, addr) in [0x1000u64, 0x2000, 0x20_0000, 0x1f_f000, HIGH.0 + 0xf_f000]
            .into_iter()
            .enumerate()
        {
            let page: Vec<u8> = (0..PAGE_SIZE).map(|b| (b * 7 + i * 13 + 1) as u8).collect();
            mem.write_slice(&page, GuestAddress(addr)).unwrap();
        }
        // A page with a single non-zero byte at its end is not a zero page.
        mem.write_slice(&[0x5a], GuestAddress(0x8_0fff)).unwrap();
        mem
    }

    fn input<'a>(state: &'a VcpuState, id: &'a CheckpointId, mem: &'a GuestMem) -> DumpInput<'a> {
        DumpInput {
            state,
            id,
            jump_back_entry: 0x20_4321,
            resumable: true,
            memory: mem,
            kernel_name: "built-in",
            mem_size: RAM.1 + HIGH.1,
            kjump_version: "kjump 0.1.0 test",
            resume: None,
        }
    }

    fn write_sample(dir: &Path, name: &str) -> PathBuf {
        write_with(dir, name, &memory())
    }

    fn write_with(dir: &Path, name: &str, mem: &GuestMem) -> PathBuf {
        let (s, id) = (sample_state(), id());
        let path = dir.join(name);
        write_dump(&path, &input(&s, &id, mem)).unwrap();
        path
    }

    #[test]
    fn round_trip_keeps_state_metadata_and_every_page() {
        let dir = scratch("round-trip");
        let path = write_sample(&dir, "a.core");
        let d = read_dump(&path).unwrap();
        assert_eq!(d.state(), &sample_state());
        let m = d.meta();
        assert_eq!(
            (m.version, m.id, m.jump_back_entry, m.resumable),
            (KJUMP_VERSION, id(), 0x20_4321, true)
        );
        assert_eq!(
            (m.mem_size, m.kernel_name.as_str(), m.kjump_version.as_str()),
            (5 << 20, "built-in", "kjump 0.1.0 test")
        );
        assert_eq!(d.ranges(), vec![RAM, HIGH]);
        let mem = memory();
        let mut expect = [0u8; PAGE_SIZE];
        for (start, len) in [RAM, HIGH] {
            for addr in (start..start + len).step_by(PAGE_SIZE) {
                mem.read_slice(&mut expect, GuestAddress(addr)).unwrap();
                assert!(d.read_page(addr) == Some(expect), "page {addr:#x}");
            }
        }
        assert_eq!(
            d.read_page(0x1234).unwrap()[0x234],
            (0x234 * 7 + 1) as u8,
            "unaligned address: its page"
        );
        assert_eq!(d.read_page(RAM.1), None, "past RAM");
        assert_eq!(d.read_page(HIGH.0 - PAGE), None, "in the hole");
        assert_eq!(d.nonzero_pages().unwrap(), vec![5, 1]);
        let names: Vec<(&str, u32)> = d
            .notes()
            .iter()
            .map(|n| (n.name.as_str(), n.kind))
            .collect();
        assert_eq!(
            names,
            [
                ("CORE", NT_PRSTATUS),
                ("CORE", NT_PRFPREG),
                ("QEMU", NT_QEMU),
                ("KJUMP", NT_KJUMP)
            ]
        );
        // Rewriting a dump from itself gives the same bytes.
        let again = dir.join("b.core");
        let (s, id) = (d.state().clone(), d.meta().id);
        let inp = DumpInput {
            memory: &d,
            ..input(&s, &id, &mem)
        };
        write_dump(&again, &inp).unwrap();
        assert!(std::fs::read(&path).unwrap() == std::fs::read(&again).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_buffer_reads_as_a_file_does() {
        let dir = scratch("backing");
        let path = dir.join("bytes");
        let bytes: Vec<u8> = (0..100u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = Backing::File(File::open(&path).unwrap());
        let buf = Backing::Bytes(bytes);
        // Found by fuzzing: an empty read past the end (a page in a
        // PT_LOAD's zero tail beyond the end of the file) failed.
        for (off, len) in [
            (0, 100),
            (99, 1),
            (100, 0),
            (4096, 0),
            (u64::MAX, 0),
            (98, 3),
            (100, 1),
        ] {
            let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
            let (ra, rb) = (
                file.read_exact_at(&mut a, off),
                buf.read_exact_at(&mut b, off),
            );
            assert_eq!(ra.is_ok(), rb.is_ok(), "{len} bytes at {off}");
            if ra.is_ok() {
                assert_eq!(a, b);
            }
        }
        for off in [0, 5, 4096, 8192] {
            assert_eq!(buf.seek_data(off), (off < 100).then_some(off));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dump_in_memory_reads_as_its_file_does() {
        let dir = scratch("bytes");
        let path = write_sample(&dir, "a.core");
        let bytes = std::fs::read(&path).unwrap();
        let (f, b) = (
            read_dump(&path).unwrap(),
            read_dump_bytes(bytes.clone(), &path).unwrap(),
        );
        assert_eq!(
            (b.meta(), b.state(), b.ranges()),
            (f.meta(), f.state(), f.ranges())
        );
        assert_eq!(b.nonzero_pages().unwrap(), f.nonzero_pages().unwrap());
        for addr in [0, 0x1000, 0x20_0000, 0x8_0000, HIGH.0 + 0xf_f000, RAM.1] {
            assert!(b.read_page(addr) == f.read_page(addr), "page {addr:#x}");
        }
        assert_eq!(inspect(&b), inspect(&f));
        assert!(!diff(&b, &f, None).differs());
        // A damaged buffer is the same error as the damaged file.
        let cut = dir.join("cut.core");
        for n in [0, 3, 63, 200, 3000, bytes.len() - 1] {
            assert_eq!(
                read_dump_bytes(bytes[..n].to_vec(), &cut)
                    .unwrap_err()
                    .to_string(),
                read_bytes(&cut, &bytes[..n]).unwrap_err().to_string(),
                "cut at {n}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn zero_pages_are_holes() {
        let dir = scratch("sparse");
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        mem.write_slice(&[1; 3 * PAGE_SIZE], GuestAddress(0x30_0000))
            .unwrap();
        let (s, id) = (sample_state(), id());
        let path = dir.join("sparse.core");
        write_dump(&path, &input(&s, &id, &mem)).unwrap();
        let md = std::fs::metadata(&path).unwrap();
        assert!(md.len() > 64 << 20, "{} bytes", md.len());
        // Headers and notes (~20 KiB) and the three pages.
        assert!(
            md.blocks() * 512 < 256 << 10,
            "{} blocks of 512 bytes allocated",
            md.blocks()
        );
        let d = read_dump(&path).unwrap();
        assert_eq!(d.nonzero_pages().unwrap(), vec![3]);
        assert_eq!(d.read_page(0x30_2000), Some([1; PAGE_SIZE]));
        assert_eq!(d.read_page(0x3ff_f000), Some([0; PAGE_SIZE]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn le64(b: &[u8], o: usize) -> u64 {
        u64_at(b, o)
    }

    /// The notes of a written dump, decoded with the reader's own parser.
    fn notes_of(bytes: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let off = le64(bytes, EHDR_SIZE + 8) as usize;
        let size = le64(bytes, EHDR_SIZE + 32) as usize;
        parse_notes(&bytes[off..off + size])
            .unwrap()
            .into_iter()
            .map(|n| (n.name, n.kind, n.desc.to_vec()))
            .collect()
    }

    #[test]
    fn prstatus_and_qemu_notes_have_the_linux_and_qemu_layouts() {
        let dir = scratch("layouts");
        let path = write_sample(&dir, "a.core");
        let bytes = std::fs::read(&path).unwrap();
        let s = sample_state();
        let notes = notes_of(&bytes);
        let pr = &notes[0].2;
        assert_eq!(pr.len(), 336);
        // user_regs_struct: rbx 5th, rax 10th, rip 16th, cs, eflags, rsp.
        assert_eq!(le64(pr, 112 + 5 * 8), s.regs.rbx);
        assert_eq!(le64(pr, 112 + 10 * 8), s.regs.rax);
        assert_eq!(le64(pr, 112 + 15 * 8), u64::MAX, "orig_rax");
        assert_eq!(le64(pr, 112 + 16 * 8), s.regs.rip);
        assert_eq!(le64(pr, 112 + 17 * 8), 8, "cs selector");
        assert_eq!(le64(pr, 112 + 18 * 8), s.regs.rflags);
        assert_eq!(le64(pr, 112 + 19 * 8), s.regs.rsp);
        assert_eq!(u32_at(pr, 328), 1, "pr_fpvalid");
        assert_eq!(notes[1].2, s.xsave[..512]);
        let q = &notes[2].2;
        assert_eq!(
            (u32_at(q, 0), u32_at(q, 4) as usize, q.len()),
            (1, 440, 440)
        );
        assert_eq!(le64(q, 8 + 16 * 8), s.regs.rip);
        assert_eq!(le64(q, 8 + 17 * 8), s.regs.rflags);
        // cs: selector, limit, flags (type 11, S, P, L, G), pad, base.
        assert_eq!((u32_at(q, 152), u32_at(q, 156)), (8, 0xffff_ffff));
        assert_eq!(
            u32_at(q, 160),
            0xb << 8 | 1 << 12 | 1 << 15 | 1 << 21 | 1 << 23
        );
        // gdt is the 9th segment; then cr0, cr1, cr2, cr3, cr4, kernel_gs_base.
        assert_eq!(
            (u32_at(q, 152 + 8 * 24 + 4), le64(q, 152 + 8 * 24 + 16)),
            (0x1f, 0x500)
        );
        assert_eq!(le64(q, 392), s.sregs.cr0);
        assert_eq!(le64(q, 392 + 3 * 8), s.sregs.cr3);
        assert_eq!(le64(q, 392 + 4 * 8), s.sregs.cr4);
        assert_eq!(
            le64(bytes.as_slice(), 24),
            0x20_4321,
            "e_entry is the jump-back entry"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn readelf(args: &[&str], path: &Path) -> String {
        let o = Command::new("readelf")
            .args(args)
            .arg(path)
            .output()
            .expect("readelf is installed");
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(
            o.status.success() && err.is_empty(),
            "readelf {args:?}: {err}\n{out}"
        );
        out.into_owned()
    }

    #[test]
    fn readelf_reads_the_headers_notes_and_loads() {
        let dir = scratch("readelf");
        let path = write_sample(&dir, "a.core");
        let h = readelf(&["-h"], &path);
        assert!(
            h.contains("CORE (Core file)") && h.contains("X86-64") && h.contains("0x204321"),
            "{h}"
        );
        let n = readelf(&["-n"], &path);
        for want in [
            "CORE",
            "NT_PRSTATUS",
            "NT_FPREGSET",
            "QEMU",
            "KJUMP",
            "0x4b4a0001",
        ] {
            assert!(n.contains(want), "no {want} in readelf -n:\n{n}");
        }
        let l = readelf(&["-l", "-W"], &path);
        let loads: Vec<&str> = l
            .lines()
            .filter(|x| x.trim_start().starts_with("LOAD"))
            .collect();
        assert_eq!(loads.len(), 2, "{l}");
        // Type Offset VirtAddr PhysAddr FileSiz MemSiz Flg Align.
        let f: Vec<&str> = loads[1].split_whitespace().collect();
        assert_eq!(
            &f[2..6],
            [
                "0x0000000100000000",
                "0x0000000100000000",
                "0x100000",
                "0x100000"
            ],
            "{l}"
        );
        assert!(
            u64::from_str_radix(&f[1][2..], 16)
                .unwrap()
                .is_multiple_of(PAGE),
            "{l}"
        );
        assert!(l.contains("NOTE"), "{l}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Writes `bytes` to a file and reads it as a dump.
    fn read_bytes(path: &Path, bytes: &[u8]) -> Result<Dump, DumpError> {
        std::fs::write(path, bytes).unwrap();
        read_dump(path)
    }

    #[test]
    fn every_truncation_is_an_error() {
        let dir = scratch("truncated");
        let path = write_sample(&dir, "a.core");
        let bytes = std::fs::read(&path).unwrap();
        let notes_end = le64(&bytes, EHDR_SIZE + 8) + le64(&bytes, EHDR_SIZE + 32);
        let cut = dir.join("cut.core");
        let notes_end = notes_end as usize;
        // Every cut in the headers and around the end of the notes, a
        // sample inside them (each write and read costs ~0.3 ms here).
        let mut cuts: Vec<usize> = (0..EHDR_SIZE + 3 * PHDR_SIZE + 64).collect();
        cuts.extend((0..notes_end).step_by(31));
        cuts.extend(notes_end - 64..notes_end + 8);
        cuts.extend([0x5000, 0x10_0000, bytes.len() - PAGE_SIZE, bytes.len() - 1]);
        for n in cuts {
            let e = read_bytes(&cut, &bytes[..n]).expect_err(&format!("cut at {n}"));
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{msg}");
            if n >= 64 {
                assert!(
                    matches!(e, DumpError::Truncated { .. }),
                    "cut at {n}: {msg}"
                );
            }
        }
        assert!(matches!(
            read_bytes(&cut, &bytes[..3]),
            Err(DumpError::NotADump { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupted_headers_and_notes_are_errors_never_panics() {
        let dir = scratch("corrupt");
        // Small, so that the thousands of variants below are written fast.
        let mem =
            GuestMem::from_ranges(&[(GuestAddress(0), 0x4000), (GuestAddress(HIGH.0), 0x1000)])
                .unwrap();
        mem.write_slice(&[0xab; 0x10], GuestAddress(0x1000))
            .unwrap();
        let path = write_with(&dir, "a.core", &mem);
        let bytes = std::fs::read(&path).unwrap();
        let bad = dir.join("bad.core");
        let with = |edits: &[(usize, &[u8])]| {
            let mut b = bytes.clone();
            for (o, v) in edits {
                b[*o..*o + v.len()].copy_from_slice(v);
            }
            read_bytes(&bad, &b)
        };
        let ph = |i: usize, field: usize| EHDR_SIZE + i * PHDR_SIZE + field;
        let is = |r: Result<Dump, DumpError>, what: &str| match r {
            Err(e) => {
                assert!(!e.to_string().contains('\n'));
                e
            }
            Ok(_) => panic!("{what}: accepted"),
        };
        assert!(matches!(
            is(with(&[(0, b"\x7fELG")]), "magic"),
            DumpError::NotADump { .. }
        ));
        assert!(matches!(
            is(with(&[(4, &[1])]), "ELF32"),
            DumpError::NotADump { .. }
        ));
        assert!(matches!(
            is(with(&[(5, &[2])]), "big-endian"),
            DumpError::NotADump { .. }
        ));
        assert!(matches!(
            is(with(&[(16, &2u16.to_le_bytes())]), "ET_EXEC"),
            DumpError::NotADump { .. }
        ));
        assert!(matches!(
            is(with(&[(18, &3u16.to_le_bytes())]), "i386"),
            DumpError::NotADump { .. }
        ));
        assert!(matches!(
            is(with(&[(54, &32u16.to_le_bytes())]), "phentsize"),
            DumpError::Corrupt { .. }
        ));
        assert!(matches!(
            is(with(&[(56, &0u16.to_le_bytes())]), "no phdrs"),
            DumpError::Corrupt { .. }
        ));
        assert!(matches!(
            is(with(&[(56, &0x8u16.to_le_bytes())]), "phnum"),
            DumpError::Corrupt { .. }
        ));
        assert!(matches!(
            is(with(&[(56, &0x800u16.to_le_bytes())]), "phnum"),
            DumpError::Truncated { .. }
        ));
        assert!(matches!(
            is(with(&[(32, &u64::MAX.to_le_bytes())]), "phoff"),
            DumpError::Truncated { .. }
        ));
        assert!(matches!(
            is(with(&[(24, &1u64.to_le_bytes())]), "entry"),
            DumpError::Corrupt { .. }
        ));
        // A load's data past the end of the file, or its offset wrapping.
        assert!(matches!(
            is(with(&[(ph(1, 40), &PAGE.to_le_bytes())]), "filesz"),
            DumpError::Corrupt { .. }
        ));
        assert!(matches!(
            is(with(&[(ph(2, 8), &(u64::MAX - 2).to_le_bytes())]), "offset"),
            DumpError::Truncated { .. }
        ));
        // Overlapping loads: the high range moved onto the low one.
        let over = with(&[
            (ph(2, 16), &0x3000u64.to_le_bytes()),
            (ph(2, 24), &0x3000u64.to_le_bytes()),
        ]);
        let e = is(over, "overlap");
        assert!(e.to_string().contains("overlap"), "{e}");
        // A note whose name or descriptor runs past the notes.
        let notes = le64(&bytes, ph(0, 8)) as usize;
        assert!(matches!(
            is(with(&[(notes, &u32::MAX.to_le_bytes())]), "namesz"),
            DumpError::Corrupt { .. }
        ));
        assert!(matches!(
            is(with(&[(notes + 4, &0x10_0000u32.to_le_bytes())]), "descsz"),
            DumpError::Corrupt { .. }
        ));
        assert!(matches!(
            is(
                with(&[(ph(0, 32), &(u64::MAX / 2).to_le_bytes())]),
                "notes size"
            ),
            DumpError::Truncated { .. }
        ));

        // Every byte of the KJUMP note (its header, name and descriptor):
        // flipped, the dump is refused.
        let note_size = le64(&bytes, ph(0, 32)) as usize;
        let b = &bytes[notes..notes + note_size];
        let at = notes + b.windows(6).position(|w| w == b"KJUMP\0").unwrap() - 12;
        let desc = at + 12 + 8;
        let version = u32::from_le_bytes(bytes[desc + 8..desc + 12].try_into().unwrap());
        assert_eq!(version, KJUMP_VERSION);
        // Every byte but those of the vCPU state's JSON, of which every
        // 7th (each costs a file write).
        let json = desc + KJUMP_HEADER_SIZE..notes + note_size - 64;
        for o in (at..notes + note_size).filter(|o| !json.contains(o) || o % 7 == 0) {
            let mut b = bytes.clone();
            b[o] ^= 0x41;
            is(
                read_bytes(&bad, &b),
                &format!("KJUMP note byte {o:#x} flipped"),
            );
        }
        let e = is(
            with(&[(desc + 8, &(KJUMP_VERSION + 1).to_le_bytes())]),
            "version",
        );
        assert!(
            matches!(e, DumpError::Version { found, .. } if found == KJUMP_VERSION + 1),
            "{e}"
        );
        assert!(e.to_string().contains("reads versions 1 to"), "{e}");
        let e = is(with(&[(desc + 8, &0u32.to_le_bytes())]), "version 0");
        assert!(matches!(e, DumpError::Version { found: 0, .. }), "{e}");
        // Without the KJUMP note, the file is a core file but not a dump.
        let e = is(with(&[(at + 8, &7u32.to_le_bytes())]), "note type");
        assert!(
            matches!(e, DumpError::NotADump { ref why, .. } if why == "no KJUMP note"),
            "{e}"
        );

        // Flipping any other byte of the headers and notes never panics.
        for o in 0..at {
            let mut b = bytes.clone();
            b[o] = b[o].wrapping_add(0x80);
            let _ = read_bytes(&bad, &b);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Memory that fails to read halfway.
    struct Failing<'a>(&'a GuestMem);
    impl RamSource for Failing<'_> {
        fn ram_ranges(&self) -> Vec<(u64, u64)> {
            self.0.ram_ranges()
        }
        fn read_ram(&self, addr: u64, buf: &mut [u8]) -> Result<(), DumpError> {
            if addr >= 1 << 20 {
                return Err(DumpError::Memory(addr));
            }
            self.0.read_ram(addr, buf)
        }
    }

    #[test]
    fn a_failed_write_leaves_nothing_and_keeps_the_old_dump() {
        let dir = scratch("atomic");
        let path = write_sample(&dir, "a.core");
        let before = std::fs::read(&path).unwrap();
        let (mut s, id, mem) = (sample_state(), id(), memory());
        s.regs.rbx = 0xdead;
        let inp = DumpInput {
            memory: &Failing(&mem),
            ..input(&s, &id, &mem)
        };
        assert!(matches!(
            write_dump(&path, &inp),
            Err(DumpError::Memory(0x10_0000))
        ));
        assert!(
            std::fs::read(&path).unwrap() == before,
            "the old dump was changed"
        );
        let fresh = dir.join("fresh.core");
        assert!(write_dump(&fresh, &inp).is_err());
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            [std::ffi::OsString::from("a.core")],
            "temporary files left behind"
        );
        // A directory that does not exist: a write error naming the path.
        let e = write_dump(&dir.join("no/such/dir.core"), &input(&s, &id, &mem)).unwrap_err();
        assert!(
            matches!(e, DumpError::Write { .. }) && e.to_string().contains("no/such/dir.core"),
            "{e}"
        );
        // Overwriting works.
        write_dump(&path, &input(&s, &id, &mem)).unwrap();
        assert_eq!(read_dump(&path).unwrap().state().regs.rbx, 0xdead);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn diff_names_exactly_the_register_and_byte_that_differ() {
        let dir = scratch("diff");
        let a = write_sample(&dir, "a.core");
        let (mut s, mut id, mem) = (sample_state(), id(), memory());
        s.regs.rbx = 0x2222;
        id.index = 6;
        mem.write_slice(&[0xee], GuestAddress(0x20_0123)).unwrap();
        let b = dir.join("b.core");
        write_dump(&b, &input(&s, &id, &mem)).unwrap();
        let (da, db) = (read_dump(&a).unwrap(), read_dump(&b).unwrap());
        let syms = Symbols::from_parts(
            vec![("PATTERN".into(), 0x20_0100, 0x100)],
            vec![(".data".into(), 0x20_0000, 0x1000)],
        );
        let d = diff(&da, &db, Some(&syms));
        assert!(d.differs());
        let regs: Vec<_> = d
            .registers
            .iter()
            .map(|r| (r.name.as_str(), &r.old, &r.new))
            .collect();
        assert_eq!(
            regs,
            [("rbx", &FieldValue::U64(0x1111), &FieldValue::U64(0x2222))]
        );
        assert_eq!(d.pages.len(), 1);
        let p = &d.pages[0];
        assert_eq!(p.addr, 0x20_0000);
        assert_eq!(
            p.ranges,
            [DiffRange {
                start: 0x20_0123,
                end: 0x20_0124,
                symbol: Some("PATTERN+0x23 (.data)".into())
            }]
        );
        assert_eq!(p.symbol.as_deref(), Some("PATTERN+0x23 (.data)"));
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(
            d.meta,
            ["checkpoint: #5 cycle 3 kernel b resume -> #6 cycle 3 kernel b resume"]
        );
        let text = d.to_string();
        assert!(text.contains("rbx: 0x1111 -> 0x2222"), "{text}");
        assert!(
            text.contains("page 0x200000: 1 range(s), [0x200123..0x200124) PATTERN+0x23 (.data)"),
            "{text}"
        );
        assert!(
            text.contains("0x0000200120 - ") && text.contains("^^"),
            "{text}"
        );
        // The same dump twice: nothing differs.
        let same = diff(&da, &read_dump(&a).unwrap(), None);
        assert!(!same.differs() && same.meta.is_empty(), "{same}");
        let (out, differs) = cmd_diff(&a, &a, &[]).unwrap();
        assert!(!differs && out.contains("identical"), "{out}");
        let (out, differs) = cmd_diff(&a, &b, crate::DEFAULT_KERNEL).unwrap();
        assert!(differs && out.contains("rbx"), "{out}");
        assert!(matches!(
            cmd_diff(&a, &b, b"not an elf"),
            Err(DumpError::Symbols(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn ck(index: u64, cycle: u64, kernel: Kernel, direction: Direction) -> CheckpointId {
        CheckpointId {
            index,
            cycle,
            kernel,
            direction,
        }
    }

    #[test]
    fn a_suspend_pairs_with_the_kernels_next_resume_only() {
        use Direction::{Resume, Suspend};
        use Kernel::{A, B};
        assert_eq!(resume_of(ck(0, 1, A, Suspend)), Some(ck(2, 1, A, Resume)));
        assert_eq!(resume_of(ck(1, 1, B, Suspend)), Some(ck(4, 2, B, Resume)));
        assert_eq!(resume_of(ck(3, 2, A, Suspend)), Some(ck(6, 2, A, Resume)));
        assert_eq!(resume_of(ck(5, 2, B, Suspend)), Some(ck(8, 3, B, Resume)));
        // Over a long sequence: each suspend pairs with the same kernel's
        // next checkpoint, a resume, in either order of the dumps.
        let mut t = Tracker::new();
        let seq: Vec<CheckpointId> = (0..41).map(|_| t.next()).collect();
        for (i, s) in seq.iter().enumerate() {
            let next = seq[i + 1..].iter().find(|n| n.kernel == s.kernel);
            match (s.direction, next) {
                (Suspend, Some(r)) => {
                    assert_eq!(r.direction, Resume);
                    assert_eq!(suspend_resume_pair(s, r), Some([*s, *r]));
                    assert_eq!(suspend_resume_pair(r, s), Some([*s, *r]));
                }
                (Resume, _) => assert_eq!(resume_of(*s), None),
                _ => {}
            }
        }
        // Not a pair: two suspends, a later resume, the other kernel, a
        // checkpoint not in the sequence, ids at the end of the range.
        for (a, b) in [
            (ck(3, 2, A, Suspend), ck(3, 2, A, Suspend)),
            (ck(3, 2, A, Suspend), ck(10, 3, A, Resume)),
            (ck(3, 2, A, Suspend), ck(4, 2, B, Resume)),
            (ck(4, 2, A, Suspend), ck(7, 2, A, Resume)),
            (
                ck(u64::MAX - 1, u64::MAX / 4 + 2, A, Suspend),
                ck(u64::MAX, 1, A, Resume),
            ),
        ] {
            assert_eq!(suspend_resume_pair(&a, &b), None, "{a:?} {b:?}");
        }
        let top = (u64::MAX - 3) / 4 + 2;
        assert_eq!(resume_of(ck(u64::MAX - 3, top, A, Suspend)), None);
    }

    /// Dumps of kernel A at its suspend #3 (`suspend`) and at `resume_id`
    /// (`resume`), with the sample memory; `touch` changes the resume's
    /// memory.
    fn pair_dumps(
        dir: &Path,
        suspend: &VcpuState,
        resume: &VcpuState,
        resume_id: CheckpointId,
        touch: Option<u64>,
    ) -> (PathBuf, PathBuf) {
        let (sid, mem) = (ck(3, 2, Kernel::A, Direction::Suspend), memory());
        let a = dir.join("c00002-00003-a-suspend.core");
        write_dump(&a, &input(suspend, &sid, &mem)).unwrap();
        if let Some(at) = touch {
            mem.write_slice(&[0xee], GuestAddress(at)).unwrap();
        }
        let b = dir.join("c00002-00006-a-resume.core");
        write_dump(&b, &input(resume, &resume_id, &mem)).unwrap();
        (a, b)
    }

    fn names(regs: &[RegisterDiff]) -> Vec<&str> {
        regs.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn a_suspend_and_its_resume_expect_the_answer_and_the_tsc() {
        use kjump_abi::abi::{ANSWER_BACK, ANSWER_JUMP};
        let dir = scratch("diff-pair");
        let s = sample_state();
        let mut r = s.clone();
        r.regs.rax = ANSWER_BACK.into();
        *r.msrs.get_mut(&0x10).unwrap() += 1_000_000;
        let rid = ck(6, 2, Kernel::A, Direction::Resume);
        let tsc = "msr[0x00000010] TSC";

        // Only what the oracle allows differs: the dumps do not differ.
        let (a, b) = pair_dumps(&dir, &s, &r, rid, None);
        let (da, db) = (read_dump(&a).unwrap(), read_dump(&b).unwrap());
        let d = diff(&da, &db, None);
        assert_eq!(d.pair, Some([da.meta().id, rid]));
        assert!(
            !d.differs() && d.registers.is_empty() && d.pages.is_empty(),
            "{d}"
        );
        let expected: Vec<_> = d
            .expected
            .iter()
            .map(|e| (e.register.name.as_str(), &e.register.old, &e.register.new))
            .collect();
        assert_eq!(
            expected,
            [
                (
                    "rax",
                    &FieldValue::U64(ANSWER_JUMP.into()),
                    &FieldValue::U64(ANSWER_BACK.into())
                ),
                (tsc, &FieldValue::U64(123_456), &FieldValue::U64(1_123_456)),
            ]
        );
        assert_eq!(d.expected[0].why, ANSWER_WHY);
        assert_eq!(
            d.expected[1].why,
            Allowlist::standard().entries()[0].reason,
            "the oracle's own reason"
        );
        let text = d.to_string();
        for want in [
            "pair: kernel a's suspend #3 and its resume #6: what the oracle allows is expected",
            "expected: rax: 0x504d554a -> 0x4b434142 (checkpoint answer: JUMP at the suspend, BACK at the resume)",
            "expected: msr[0x00000010] TSC: 0x1e240 -> 0x112480 (the TSC counts time",
            "identical: registers and memory, but for the 2 expected difference(s)",
        ] {
            assert!(text.contains(want), "no {want:?} in:\n{text}");
        }
        assert!(!text.contains("registers:"), "{text}");
        let (out, differs) = cmd_diff(&a, &b, &[]).unwrap();
        assert!(!differs, "{out}");
        // Either order: the same differences are expected.
        let back = diff(&db, &da, None);
        assert_eq!(back.pair, d.pair);
        assert_eq!(names(&back.registers), Vec::<&str>::new());
        assert_eq!(back.expected.len(), 2);

        // Anything else still differs, next to the expected: a register,
        // a byte, XSAVE values (then xstate_bv is not excused either).
        let mut r2 = r.clone();
        r2.regs.rbx = 0x2222;
        r2.xsave[512] |= 0x4; // xstate_bv (the XSAVE header)
        r2.xsave[576] = 0x80;
        let (a, b) = pair_dumps(&dir, &s, &r2, rid, Some(0x20_0123));
        let d = diff(&read_dump(&a).unwrap(), &read_dump(&b).unwrap(), None);
        assert!(d.differs());
        assert_eq!(
            names(&d.registers),
            ["rbx", "xsave.xstate_bv", "xsave[0x240..0x280]"]
        );
        assert_eq!(
            d.expected
                .iter()
                .map(|e| e.register.name.as_str())
                .collect::<Vec<_>>(),
            ["rax", tsc]
        );
        assert_eq!(d.pages.len(), 1);
        assert_eq!(d.pages[0].ranges[0].start, 0x20_0123);
        let text = d.to_string();
        assert!(
            text.contains("registers: 3 differ") && text.contains("rbx: 0x1111 -> 0x2222"),
            "{text}"
        );
        assert!(text.contains("expected: rax: "), "{text}");
        // xstate_bv alone (values equal) is expected, as in the oracle.
        let mut r3 = r.clone();
        r3.xsave[512] |= 0x4;
        let (a, b) = pair_dumps(&dir, &s, &r3, rid, None);
        let d = diff(&read_dump(&a).unwrap(), &read_dump(&b).unwrap(), None);
        assert!(!d.differs(), "{d}");
        assert_eq!(d.expected.len(), 3, "{d}");

        // A wrong answer is not expected: rax differs, the TSC is still
        // excused.
        let mut wrong = r.clone();
        wrong.regs.rax = 0x1234;
        let (a, b) = pair_dumps(&dir, &s, &wrong, rid, None);
        let d = diff(&read_dump(&a).unwrap(), &read_dump(&b).unwrap(), None);
        assert!(d.differs());
        assert_eq!(names(&d.registers), ["rax"]);
        assert_eq!(d.expected.len(), 1);
        let (out, differs) = cmd_diff(&a, &b, &[]).unwrap();
        assert!(
            differs && out.contains("rax: 0x504d554a -> 0x1234"),
            "{out}"
        );

        // Not the pair (A's resume a cycle later): nothing is expected,
        // the raw differences are shown.
        let later = ck(10, 3, Kernel::A, Direction::Resume);
        let (a, b) = pair_dumps(&dir, &s, &r, later, None);
        let d = diff(&read_dump(&a).unwrap(), &read_dump(&b).unwrap(), None);
        assert_eq!((d.pair, d.expected.len()), (None, 0));
        assert_eq!(names(&d.registers), ["rax", tsc]);
        let text = d.to_string();
        assert!(
            text.contains("registers: 2 differ") && !text.contains("expected"),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn diff_reports_ram_in_one_dump_only() {
        let dir = scratch("diff-layout");
        let a = write_sample(&dir, "a.core");
        let (s, id) = (sample_state(), id());
        let mem = GuestMem::from_ranges(&[(GuestAddress(RAM.0), RAM.1 as usize)]).unwrap();
        let b = dir.join("b.core");
        write_dump(&b, &input(&s, &id, &mem)).unwrap();
        let d = diff(&read_dump(&a).unwrap(), &read_dump(&b).unwrap(), None);
        assert!(d.registers.is_empty());
        assert_eq!(d.problems.len(), 1, "{d}");
        assert!(d.problems[0].contains("RAM ranges differ"), "{d}");
        // The common range is compared: memory() has 5 non-zero pages there.
        assert_eq!(d.pages.len(), 5, "{d}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn record() -> ResumeRecord {
        let mut peer_state = sample_state();
        peer_state.regs.rbx = 0xa11ce;
        ResumeRecord {
            scenario: "ping-pong".into(),
            cycles: 7,
            kimage_a: Some([1, 2, 3, 4, 5, 6, 7, 8]),
            kimage_b: None,
            uart: UartState::from(&SerialState {
                line_control: 0x03,
                in_buffer: vec![b'x'],
                ..Default::default()
            }),
            peer: Some(SuspendRecord {
                kernel: Kernel::A,
                suspended_at: CheckpointId {
                    index: 3,
                    cycle: 3,
                    kernel: Kernel::A,
                    direction: Direction::Suspend,
                },
                state: peer_state,
                uart: UartState::from(&SerialState::default()),
            }),
        }
    }

    #[test]
    fn the_resume_record_round_trips_and_is_checked() {
        let dir = scratch("resume-record");
        let (s, id, mem, r) = (sample_state(), id(), memory(), record());
        let path = dir.join("r.core");
        let inp = DumpInput {
            resume: Some(&r),
            ..input(&s, &id, &mem)
        };
        write_dump(&path, &inp).unwrap();
        let d = read_dump(&path).unwrap();
        assert_eq!(d.resume(), Some(&r));
        assert_eq!(d.meta().version, KJUMP_VERSION);
        let uart = SerialState::from(&d.resume().unwrap().uart);
        assert_eq!((uart.line_control, uart.in_buffer), (0x03, vec![b'x']));
        let text = inspect(&d);
        assert!(
            text.contains("resume record: ping-pong of 7 cycles, kernel a away since #3 cycle 3 kernel a suspend"),
            "{text}"
        );
        assert_eq!(inspect_json(&d)["resume"]["cycles"], 7);
        // Without a record: nothing to resume, said so.
        let plain = read_dump(&write_sample(&dir, "plain.core")).unwrap();
        assert!(plain.resume().is_none());
        assert!(inspect(&plain).contains("no resume record"));

        // A peer that cannot be the peer of this checkpoint (kernel b
        // resumes at #5: the peer is a, suspended before #5).
        for (what, edit) in [
            (
                "peer is b",
                (|p: &mut SuspendRecord| p.kernel = Kernel::B) as fn(&mut SuspendRecord),
            ),
            ("suspended later", |p| p.suspended_at.index = 9),
            ("at a resume", |p| {
                p.suspended_at.direction = Direction::Resume
            }),
            ("short xsave", |p| p.state.xsave.truncate(100)),
        ] {
            let mut bad = record();
            edit(bad.peer.as_mut().unwrap());
            let inp = DumpInput {
                resume: Some(&bad),
                ..input(&s, &id, &mem)
            };
            write_dump(&path, &inp).unwrap();
            let e = read_dump(&path).expect_err(what);
            assert!(matches!(e, DumpError::Corrupt { .. }), "{what}: {e}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Rewrites the KJUMP note of a version 2 dump without a resume record
    /// as version 1, as an older kjump wrote it.
    fn as_version_1(bytes: &mut [u8]) {
        let at = bytes.windows(6).position(|w| w == b"KJUMP\0").unwrap() - 12;
        let descsz = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let desc = &mut bytes[at + 20..at + 20 + descsz];
        assert_eq!(u32_at(desc, KJUMP_RESUME_SIZE), 0);
        desc[8..12].copy_from_slice(&1u32.to_le_bytes());
        let sum = checksum(desc);
        desc[KJUMP_CHECKSUM..KJUMP_CHECKSUM + 8].copy_from_slice(&sum.to_le_bytes());
    }

    #[test]
    fn version_1_dumps_are_still_read() {
        let dir = scratch("v1");
        let path = write_sample(&dir, "a.core");
        let mut bytes = std::fs::read(&path).unwrap();
        as_version_1(&mut bytes);
        let d = read_bytes(&dir.join("v1.core"), &bytes).unwrap();
        assert_eq!((d.meta().version, d.meta().id), (1, id()));
        assert_eq!(d.state(), &sample_state());
        assert!(d.resume().is_none());
        // Version 1's reserved field must stay zero.
        let at = bytes.windows(6).position(|w| w == b"KJUMP\0").unwrap() - 12 + 20;
        bytes[at + KJUMP_RESUME_SIZE] = 1;
        let sum = checksum(&bytes[at..at + u32_at(&bytes, at - 16) as usize]);
        bytes[at + KJUMP_CHECKSUM..at + KJUMP_CHECKSUM + 8].copy_from_slice(&sum.to_le_bytes());
        let e = read_bytes(&dir.join("v1.core"), &bytes).unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dump_skips_its_holes_for_readers() {
        let dir = scratch("skip");
        let d = read_dump(&write_sample(&dir, "a.core")).unwrap();
        // memory(): data at 0x1000, 0x2000, 0x80000 (one byte), ...
        // (A file system without hole tracking skips nothing.)
        let next = d.skip_zeros(0x3000, RAM.1);
        assert!(
            (0x3000..=0x8_0000).contains(&next) && next.is_multiple_of(PAGE),
            "{next:#x}"
        );
        assert_eq!(d.skip_zeros(0x10_0000, 0x10_0000), 0x10_0000);
        assert_eq!(d.skip_zeros(0x1234, RAM.1), 0x1000);
        let mem = memory();
        assert_eq!(
            mem.skip_zeros(0x3456, RAM.1),
            0x3000,
            "GuestMem skips nothing"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn inspect_shows_checkpoint_registers_memory_and_notes() {
        let dir = scratch("inspect");
        let path = write_sample(&dir, "a.core");
        let text = cmd_inspect(&path, false).unwrap();
        for want in [
            "checkpoint #5 cycle 3 kernel b resume",
            "kernel built-in, 5 MiB of RAM",
            "jump-back entry 0x204321",
            "resumable",
            "rbx 0x0000000000001111",
            "rip 0x0000000000201234",
            "cs  selector 0x0008",
            "gdt base 0x0000000000000500 limit 0x001f",
            "cr3 0x0000000000009000",
            "memory: 2 range(s)",
            "[0x0..0x400000) 4 MiB, 5 non-zero page(s) of 1024",
            "[0x100000000..0x100100000) 1 MiB, 1 non-zero page(s)",
            "NT_PRSTATUS",
            "KJUMP  type 0x4b4a0001",
        ] {
            assert!(text.contains(want), "no {want:?} in\n{text}");
        }
        let j: serde_json::Value =
            serde_json::from_str(&cmd_inspect(&path, true).unwrap()).unwrap();
        assert_eq!(j["kjump"]["id"]["kernel"], "b");
        assert_eq!(j["kjump"]["jump_back_entry"], 0x20_4321);
        assert_eq!(j["registers"]["rbx"], 0x1111);
        assert_eq!(j["segments"]["cs"]["selector"], 8);
        assert_eq!(j["control"]["cr0"], 0x8000_0011u64);
        assert_eq!(j["fields"]["msr[0x00000010] TSC"], "0x1e240");
        assert_eq!(j["memory"][0]["nonzero_pages"], 5);
        assert_eq!(j["notes"][3]["type"], NT_KJUMP);
        let e = cmd_inspect(&dir.join("missing.core"), false).unwrap_err();
        assert!(matches!(e, DumpError::Read { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
