//! The crash scenario's contract between the crashed kernel (A), the
//! capture kernel (B) and the VMM: the `NT_PRSTATUS` layout B writes into
//! the vmcore and the VMM reads back, and the crash information A leaves
//! next to its ELF core header (Linux's `elfcorehdr=`).
//!
//! The vmcore itself is a `hibimage` image of kind vmcore
//! ([`crate::hibimage::FLAG_VMCORE`]): the same ELF core layout as a
//! hibernation image, not resumable, with a "CORE" `NT_PRSTATUS` note
//! after the KJUMP note, so gdb shows A's registers.

/// `NT_PRSTATUS`: Linux's x86_64 `struct elf_prstatus`.
pub const NT_PRSTATUS: u32 = 1;
/// Size of x86_64 `struct elf_prstatus`.
pub const PRSTATUS_SIZE: usize = 336;
/// Offset of `pr_reg` (a `user_regs_struct`) in it.
pub const PRSTATUS_REGS: usize = 112;
/// Offset of `pr_pid` (gdb names the thread after it).
pub const PRSTATUS_PID: usize = 32;
/// Offset of `pr_fpvalid`.
pub const PRSTATUS_FPVALID: usize = 328;
/// Registers in `pr_reg`, in `user_regs_struct` order
/// (arch/x86/include/asm/user_64.h).
pub const PRSTATUS_REG_NAMES: [&str; PRSTATUS_NREGS] = [
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi",
    "rdi", "orig_rax", "rip", "cs", "rflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs",
    "gs",
];
/// The fields of `struct elf_prstatus` around `pr_reg`, as `(name,
/// offset, size)` in byte order (include/uapi/linux/elfcore.h; x86_64:
/// `pr_info` is three ints, the times two longs each); the padding after
/// `pr_cursig` and at the end is named too, so every byte has a name.
pub const PRSTATUS_FIELDS: [(&str, usize, usize); 15] = [
    ("pr_info", 0, 12),
    ("pr_cursig", 12, 2),
    ("(padding after pr_cursig)", 14, 2),
    ("pr_sigpend", 16, 8),
    ("pr_sighold", 24, 8),
    ("pr_pid", PRSTATUS_PID, 4),
    ("pr_ppid", 36, 4),
    ("pr_pgrp", 40, 4),
    ("pr_sid", 44, 4),
    ("pr_utime", 48, 16),
    ("pr_stime", 64, 16),
    ("pr_cutime", 80, 16),
    ("pr_cstime", 96, 16),
    ("pr_fpvalid", PRSTATUS_FPVALID, 4),
    ("(padding at the end)", PRSTATUS_FPVALID + 4, 4),
];

/// Number of registers in `pr_reg`.
pub const PRSTATUS_NREGS: usize = 27;
/// Index of `orig_rax` (-1: not in a system call).
pub const ORIG_RAX: usize = 15;

/// The `struct elf_prstatus` of the registers `regs` (in
/// [`PRSTATUS_REG_NAMES`] order): signal info, pids and times zero but
/// `pr_pid` 1; `pr_fpvalid` as given.
pub fn prstatus(regs: &[u64; PRSTATUS_NREGS], fpvalid: bool) -> [u8; PRSTATUS_SIZE] {
    let mut b = [0u8; PRSTATUS_SIZE];
    b[PRSTATUS_PID..PRSTATUS_PID + 4].copy_from_slice(&1u32.to_le_bytes());
    for (i, v) in regs.iter().enumerate() {
        let o = PRSTATUS_REGS + 8 * i;
        b[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }
    b[PRSTATUS_FPVALID..PRSTATUS_FPVALID + 4].copy_from_slice(&u32::from(fpvalid).to_le_bytes());
    b
}

/// The registers of a `struct elf_prstatus`; `None` when `b` is too short.
pub fn prstatus_regs(b: &[u8]) -> Option<[u64; PRSTATUS_NREGS]> {
    if b.len() < PRSTATUS_SIZE {
        return None;
    }
    let mut regs = [0u64; PRSTATUS_NREGS];
    for (i, r) in regs.iter_mut().enumerate() {
        let o = PRSTATUS_REGS + 8 * i;
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[o..o + 8]);
        *r = u64::from_le_bytes(w);
    }
    Some(regs)
}

/// The `pr_reg` registers (in [`PRSTATUS_REG_NAMES`] order) the crash
/// notes hold: crashed kernel A's saved context (`control::CONTEXT` of
/// its control page), each slot read by `read` at its byte offset from
/// the notes; `rip` is the crash information's (the context has none),
/// `orig_rax` -1 (not in a system call). The capture kernel builds its
/// `NT_PRSTATUS` from it, the VMM checks the notes with it.
pub fn notes_regs(read: impl Fn(u64) -> u64, rip: u64) -> [u64; PRSTATUS_NREGS] {
    use crate::control::{CONTEXT, Slot, slot_offset};
    let slot = |s: Slot| read(slot_offset(s) - CONTEXT);
    [
        slot(Slot::R15),
        slot(Slot::R14),
        slot(Slot::R13),
        slot(Slot::R12),
        slot(Slot::Rbp),
        slot(Slot::Rbx),
        slot(Slot::R11),
        slot(Slot::R10),
        slot(Slot::R9),
        slot(Slot::R8),
        slot(Slot::Rax),
        slot(Slot::Rcx),
        slot(Slot::Rdx),
        slot(Slot::Rsi),
        slot(Slot::Rdi),
        u64::MAX, // orig_rax: not in a system call
        rip,
        slot(Slot::Cs),
        slot(Slot::Rflags),
        slot(Slot::Rsp),
        slot(Slot::Ss),
        slot(Slot::FsBase),
        slot(Slot::GsBase),
        slot(Slot::Ds),
        slot(Slot::Es),
        slot(Slot::Fs),
        slot(Slot::Gs),
    ]
}

/// Bytes of the crash notes (the saved context's slots).
pub const NOTES_SIZE: u64 = 8 * crate::control::SLOTS;

/// The key on crashed kernel A's command line with the region reserved
/// for the capture kernel, `SIZE@ADDR` (Linux's `crashkernel=`).
pub const CRASHKERNEL_KEY: &str = "crashkernel";

/// The key on crashed kernel A's command line with the size of its low
/// memory `[0, SIZE)` the capture kernel runs in, backed up into the
/// reserved region first.
pub const BACKUP_SIZE_KEY: &str = "kjump.backup_size";

/// The region `crashkernel=SIZE@ADDR` on the command line `cmdline`
/// reserves: `(ADDR, ADDR + SIZE)`; `None` without a valid one.
pub fn crashkernel(cmdline: &str) -> Option<(u64, u64)> {
    let (size, at) = crate::cmdline::get(cmdline, CRASHKERNEL_KEY)?.split_once('@')?;
    let (size, at) = (
        crate::cmdline::parse_size(size)?,
        crate::cmdline::parse_size(at)?,
    );
    Some((at, at.checked_add(size)?))
}

/// What crashed kernel A leaves for the capture kernel right after its ELF
/// core header (at `elfcorehdr + header_size(n)`): where its crash
/// notes are and where its low memory was backed up (seed 2004's
/// "backup region"), as Linux's kexec-tools put the backup region in the
/// elfcorehdr's first `PT_LOAD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashInfo {
    /// The saved-context slots of A's control page (`control::CONTEXT`):
    /// A's registers as its panic's checkpoint left them (the crash
    /// notes; rax is the checkpoint's answer, stored by the relocation
    /// code).
    pub notes: u64,
    /// A's rip there: just past the checkpoint instruction.
    pub rip: u64,
    /// Low memory `[backup_start, backup_end)` was copied, page for page,
    /// to `backup_at` before B was copied over it.
    pub backup_start: u64,
    pub backup_end: u64,
    pub backup_at: u64,
}

/// Magic of [`CrashInfo`]'s bytes.
pub const CRASH_INFO_MAGIC: [u8; 8] = *b"KJCRASH1";
/// Bytes of [`CrashInfo`]: the magic and five words.
pub const CRASH_INFO_SIZE: usize = 8 + 5 * 8;

impl CrashInfo {
    pub fn to_bytes(&self) -> [u8; CRASH_INFO_SIZE] {
        let mut b = [0u8; CRASH_INFO_SIZE];
        b[..8].copy_from_slice(&CRASH_INFO_MAGIC);
        let words = [
            self.notes,
            self.rip,
            self.backup_start,
            self.backup_end,
            self.backup_at,
        ];
        for (i, w) in words.iter().enumerate() {
            b[8 + 8 * i..16 + 8 * i].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    /// Reads it back; `None` without the magic.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() < CRASH_INFO_SIZE || b[..8] != CRASH_INFO_MAGIC {
            return None;
        }
        let w = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[8 + 8 * i..16 + 8 * i]);
            u64::from_le_bytes(x)
        };
        Some(Self {
            notes: w(0),
            rip: w(1),
            backup_start: w(2),
            backup_end: w(3),
            backup_at: w(4),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crash_notes_give_each_register_its_slot() {
        use crate::control::{CONTEXT, SLOT_NAMES, slot_offset};
        // Each slot read as its own offset: every register but orig_rax
        // and rip names the slot it came from.
        let regs = notes_regs(|o| o, 0x20_1001);
        for (name, v) in PRSTATUS_REG_NAMES.iter().zip(regs) {
            match *name {
                "orig_rax" => assert_eq!(v, u64::MAX),
                "rip" => assert_eq!(v, 0x20_1001),
                _ => {
                    let i = SLOT_NAMES.iter().position(|s| s == name).unwrap();
                    assert_eq!(v, 8 * i as u64, "{name}");
                }
            }
        }
        assert_eq!(slot_offset(crate::control::Slot::Rax) - CONTEXT, 0);
        assert_eq!(NOTES_SIZE, 8 * SLOT_NAMES.len() as u64);
    }

    #[test]
    fn prstatus_and_crash_info_round_trip() {
        let mut regs = [0u64; PRSTATUS_NREGS];
        for (i, r) in regs.iter_mut().enumerate() {
            *r = 0x1000 + i as u64;
        }
        let b = prstatus(&regs, true);
        assert_eq!(prstatus_regs(&b), Some(regs));
        assert_eq!(prstatus_regs(&b[..100]), None);
        assert_eq!(PRSTATUS_REG_NAMES[16], "rip");
        assert_eq!(PRSTATUS_REGS + 8 * PRSTATUS_NREGS, 328);
        // The fields and pr_reg cover every byte once.
        let mut covered = [0u8; PRSTATUS_SIZE];
        for (_, o, n) in PRSTATUS_FIELDS {
            covered[o..o + n].iter_mut().for_each(|c| *c += 1);
        }
        covered[PRSTATUS_REGS..PRSTATUS_FPVALID]
            .iter_mut()
            .for_each(|c| *c += 1);
        assert!(covered.iter().all(|&c| c == 1));
        let c = CrashInfo {
            notes: 1,
            rip: 2,
            backup_start: 3,
            backup_end: 4,
            backup_at: 5,
        };
        assert_eq!(CrashInfo::from_bytes(&c.to_bytes()), Some(c));
        assert_eq!(CrashInfo::from_bytes(&[0; CRASH_INFO_SIZE]), None);
        assert_eq!(
            crashkernel("kjump.backup_size=0x800000 crashkernel=0x1000000@0x800000"),
            Some((0x80_0000, 0x180_0000))
        );
        assert_eq!(crashkernel("crashkernel=16M@8M"), Some((8 << 20, 24 << 20)));
        assert_eq!(crashkernel("crashkernel=16M"), None);
        assert_eq!(crashkernel("crashkernel=1@0xffffffffffffffff"), None);
    }
}
