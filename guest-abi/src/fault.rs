//! The guest-side fault catalog: the deliberately buggy kernels kjump must
//! catch. One table for both sides: the guest parses its command line with
//! it (`kjump.fault=KIND`, `kjump.fault_cycle=N`; for B, A's
//! `kjump.b.fault=` and `kjump.b.fault_cycle=`), and the VMM validates
//! `--inject` and prints `--inject list` from it.

use crate::control::{self, Slot};

/// Command-line key of a kernel's own fault.
pub const KEY: &str = "kjump.fault";
/// Command-line key of the cycle the fault is armed in.
pub const CYCLE_KEY: &str = "kjump.fault_cycle";
/// On A's command line: the fault A passes on to B as its `kjump.fault`.
pub const B_KEY: &str = "kjump.b.fault";
/// On A's command line: B's `kjump.fault_cycle`.
pub const B_CYCLE_KEY: &str = "kjump.b.fault_cycle";

/// Faults that stop a kernel outright. Without a cycle they fire at boot;
/// with `kjump.fault_cycle=N`, when the kernel arrives in cycle N (A once
/// it is back from B in cycle N, B when it is booted in cycle 1 or
/// resumed in cycle N).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopFault {
    /// Execute `ud2`: #UD, reported by the IDT handler.
    Ud2,
    /// `panic!`: reported by the panic handler.
    Panic,
    /// Spin forever with interrupts off and no `hlt`: the VMM's watchdog.
    Hang,
    /// Load a zero-limit IDT and fault: a triple fault.
    Triple,
    /// A harness message whose text pointer is far outside RAM.
    WildPointer,
    /// Read above the identity map: #PF with CR2 = that address.
    PageFault,
    /// Overflow onto an unmapped stack: #DF on the IST stack.
    DoubleFault,
    /// Talk forever without moving on: hello, log and progress messages
    /// and console lines (with terminal escapes in them), never a
    /// checkpoint: the watchdog must stop it all the same.
    Flood,
}

/// Bugs of the jump itself. Without a cycle they are armed for every jump;
/// with `kjump.fault_cycle=N`, for the kernel's jump in cycle N only (the
/// re-entry bugs show when it comes back from that jump).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JumpFault {
    /// The re-entry path does not restore this saved-context slot (a GPR
    /// but rax and rdi; rflags, cr0, cr3, cr4, efer): `forget-REG`.
    Forget(u64),
    /// The re-entry path does not reload the GDT (`no-gdt-restore`) or the
    /// IDT (`no-idt-restore`): the slot of the table's base.
    NoTableRestore(u64),
    /// The re-entry path skips `fxrstor`: `no-fpu-restore`.
    NoFpuRestore,
    /// The re-entry path does not reprogram the UART: `no-uart-restore`.
    NoUartRestore,
    /// The re-entry path does not restore the 8259 masks:
    /// `no-pic-restore`.
    NoPicRestore,
    /// The re-entry path does not restore the IOAPIC (redirection
    /// entries, ID, IOREGSEL): `no-ioapic-restore`.
    NoIoapicRestore,
    /// The re-entry path does not restore the MTRRs: `no-mtrr-restore`.
    NoMtrrRestore,
    /// The relocation code does not swap the first page back:
    /// `skip-swap-back` (A: only A's list has pages).
    SkipSwapBack,
    /// The relocation code takes the peer's re-entry point from the wrong
    /// stack slot: `wrong-reentry-slot`.
    WrongReentrySlot,
    /// The relocation code records the peer's boot entry instead of its
    /// re-entry point, so the next jump boots the peer again:
    /// `lose-preserve` (A: B cannot boot A).
    LosePreserve,
    /// The kernel writes one word just past the end of the RAM it was
    /// given, before it jumps: `write-outside` (B: A has all the RAM).
    WriteOutside,
    /// The re-entry path does not reset the virtio device after a restore
    /// from a hibernation image: `no-device-resume` (A, hibernate).
    NoDeviceResume,
    /// Hibernating B leaves a page of A out of A's image (zeros on the
    /// disk, the checksums made over them): `image-skip-page` (B, in the
    /// hibernate scenario).
    ImageSkipPage,
    /// The restore kernel skips the seed's second stage: it enters A's
    /// re-entry routine directly instead of A's relocation code (the
    /// trampoline in the restored image), so A's pages of the region C
    /// ran in are never swapped back: `no-trampoline` (C, hibernate).
    NoTrampoline,
    /// The restore kernel leaves an MSR A never set changed
    /// (IA32_SYSENTER_ESP) when it jumps to A: `leave-msr` (C, hibernate).
    LeaveMsr,
    /// The restore kernel leaves the PIT (channel 0) programmed its own
    /// way when it jumps to A: `leave-pit` (C, hibernate).
    LeavePit,
    /// Crashing A jumps to the capture kernel without backing up low
    /// memory first: `no-backup` (A, crash).
    NoBackup,
    /// The relocation code overwrites the crash notes' rsp (A's saved
    /// context) with its own after the checkpoint: the notes no longer
    /// hold A's registers as at the panic: `stale-crash-notes` (A, crash).
    StaleCrashNotes,
    /// The capture kernel reads A's low memory in place (where it runs
    /// itself) instead of from the backup region: `no-backup-read` (B,
    /// crash).
    NoBackupRead,
    /// The capture kernel leaves A's last memory range out of the vmcore:
    /// `vmcore-skip` (B, crash).
    VmcoreSkip,
    /// The capture kernel writes one word just past its region, into A's
    /// memory: `write-outside-reserved` (B, crash).
    WriteOutsideReserved,
    /// Crashing A's `kexec -p` loads the capture kernel (its staged image,
    /// the backup region, the lists, the control pages) into A's own
    /// memory instead of the reserved region: `load-outside-reserved` (A,
    /// crash).
    LoadOutsideReserved,
    /// Crashing A's crash information (after its ELF core header) points
    /// its crash notes at the first page past the reserved region, A's own
    /// memory: `bad-crash-info` (A, crash).
    BadCrashInfo,
    /// Kernel A's kimage report (not the list its relocation code walks)
    /// also lists the first page past B's region, A's own memory, parked
    /// at itself: a claim that keeps that page out of A's view; and B,
    /// given `write-outside` in the same cycle, damages that page while A
    /// is away: `claim-live-page` (A).
    ClaimLivePage,
    /// Kernel A's kimage report (as for `claim-live-page`) lists a page of
    /// A's own text (`run_a`'s), parked at itself: `claim-own-text` (A).
    ClaimOwnText,
    /// Kernel A's kimage report (as for `claim-live-page`) lists the first
    /// page of B's region a second time, parked in A's control page: a
    /// source page that is also a control page, kept twice:
    /// `claim-control-page` (A).
    ClaimControlPage,
    /// Kernel A's kimage report (not what A loaded) gives B's region one
    /// page more at its end than the reports before it: a region moved
    /// between suspends without loading B afresh: `move-b-region` (A,
    /// `@N` with N >= 2).
    MoveBRegion,
    /// The saving kernel powers off without writing anything to the disk
    /// (its vmcore or image of A): `power-off-early` (B, crash and
    /// hibernate).
    PowerOffEarly,
}

/// A guest-side fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Stop(StopFault),
    Jump(JumpFault),
}

/// Which kernel a fault can be given to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    Both,
    AOnly,
    BOnly,
    /// The hibernate scenario's restore kernel (`--inject c:KIND`).
    COnly,
}

/// One catalog entry: the name (`REG` stands for a register name), which
/// kernel can have it, and what it does.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub name: &'static str,
    pub who: Who,
    pub what: &'static str,
}

/// The catalog, in the order `--inject list` prints it.
pub const CATALOG: &[Entry] = &[
    Entry {
        name: "forget-REG",
        who: Who::Both,
        what: "the re-entry path does not restore REG (a GPR but rax, rdi; rflags, cr0, cr3, cr4, efer)",
    },
    Entry {
        name: "no-gdt-restore",
        who: Who::Both,
        what: "the re-entry path keeps the relocation code's GDT (and the TR in it)",
    },
    Entry {
        name: "no-idt-restore",
        who: Who::Both,
        what: "the re-entry path keeps the relocation code's IDT",
    },
    Entry {
        name: "no-fpu-restore",
        who: Who::Both,
        what: "the re-entry path skips fxrstor",
    },
    Entry {
        name: "no-uart-restore",
        who: Who::Both,
        what: "the re-entry path does not reprogram the UART",
    },
    Entry {
        name: "no-pic-restore",
        who: Who::Both,
        what: "the re-entry path does not restore the 8259 interrupt masks",
    },
    Entry {
        name: "no-ioapic-restore",
        who: Who::Both,
        what: "the re-entry path does not restore the IOAPIC's redirection entries",
    },
    Entry {
        name: "no-mtrr-restore",
        who: Who::Both,
        what: "the re-entry path does not restore the MTRRs",
    },
    Entry {
        name: "wrong-reentry-slot",
        who: Who::Both,
        what: "the relocation code reads the peer's re-entry point one stack slot too high",
    },
    Entry {
        name: "lose-preserve",
        who: Who::AOnly,
        what: "the relocation code records the peer's boot entry, not its re-entry point: the next jump reboots it",
    },
    Entry {
        name: "skip-swap-back",
        who: Who::AOnly,
        what: "the relocation code leaves the first page of the list unswapped on the way back",
    },
    Entry {
        name: "write-outside",
        who: Who::BOnly,
        what: "kernel b writes one word past the RAM it was given",
    },
    Entry {
        name: "no-device-resume",
        who: Who::AOnly,
        what: "restored from its hibernation image, kernel a's re-entry path does not take the virtio-blk device back (reset it)",
    },
    Entry {
        name: "image-skip-page",
        who: Who::BOnly,
        what: "hibernating kernel b leaves a page of a out of a's image (consistently: its checksums agree)",
    },
    Entry {
        name: "no-trampoline",
        who: Who::COnly,
        what: "the restore kernel enters a's re-entry routine directly, skipping a's relocation code (the trampoline in the image that swaps back a's pages of the region c ran in)",
    },
    Entry {
        name: "leave-msr",
        who: Who::COnly,
        what: "the restore kernel leaves IA32_SYSENTER_ESP (an MSR a never set, so never restores) changed when it jumps to a",
    },
    Entry {
        name: "leave-pit",
        who: Who::COnly,
        what: "the restore kernel leaves the PIT's channel 0 programmed its own way (a device a never set, so never restores) when it jumps to a",
    },
    Entry {
        name: "no-backup",
        who: Who::AOnly,
        what: "crashing kernel a jumps to the capture kernel without backing up low memory",
    },
    Entry {
        name: "stale-crash-notes",
        who: Who::AOnly,
        what: "the crash notes lose a's rsp at the panic (the relocation code's own is stored over it)",
    },
    Entry {
        name: "no-backup-read",
        who: Who::BOnly,
        what: "the capture kernel reads a's low memory in place, not from the backup region",
    },
    Entry {
        name: "vmcore-skip",
        who: Who::BOnly,
        what: "the capture kernel leaves a's last memory range out of the vmcore",
    },
    Entry {
        name: "write-outside-reserved",
        who: Who::BOnly,
        what: "the capture kernel writes one word just past its region, into a's memory",
    },
    Entry {
        name: "load-outside-reserved",
        who: Who::AOnly,
        what: "a's kexec -p loads the capture kernel into a's own memory, not the reserved region",
    },
    Entry {
        name: "bad-crash-info",
        who: Who::AOnly,
        what: "a's crash information points its crash notes at a's own memory, outside the reserved region",
    },
    Entry {
        name: "claim-live-page",
        who: Who::AOnly,
        what: "a's kimage report claims one of a's own live pages (the first past b's region) as a source page, hiding it from a's view, and b damages that page (write-outside) in the same cycle",
    },
    Entry {
        name: "claim-own-text",
        who: Who::AOnly,
        what: "a's kimage report claims a page of a's own text as a source page, hiding it from a's view",
    },
    Entry {
        name: "claim-control-page",
        who: Who::AOnly,
        what: "a's kimage report lists b's first page again, parked in a's control page: a page kept twice (source and control page)",
    },
    Entry {
        name: "move-b-region",
        who: Who::AOnly,
        what: "a's kimage report of cycle N (N >= 2) gives b's region one page more at its end than the reports before it",
    },
    Entry {
        name: "power-off-early",
        who: Who::BOnly,
        what: "b powers off without writing a's vmcore or image to the disk",
    },
    Entry {
        name: "hang",
        who: Who::Both,
        what: "the kernel spins with interrupts off: the watchdog stops it",
    },
    Entry {
        name: "triple",
        who: Who::Both,
        what: "the kernel triple-faults: KVM_EXIT_SHUTDOWN",
    },
    Entry {
        name: "ud2",
        who: Who::Both,
        what: "the kernel executes ud2: a #UD reported with its rip",
    },
    Entry {
        name: "pf",
        who: Who::Both,
        what: "the kernel reads unmapped memory: a #PF reported with cr2",
    },
    Entry {
        name: "df",
        who: Who::Both,
        what: "the kernel overflows its stack: a #DF on the IST stack",
    },
    Entry {
        name: "panic",
        who: Who::Both,
        what: "the kernel panics: its message and location",
    },
    Entry {
        name: "wild-pointer",
        who: Who::Both,
        what: "the kernel hands the harness a pointer outside RAM",
    },
    Entry {
        name: "flood",
        who: Who::Both,
        what: "the kernel sends messages and console lines (with terminal escapes) forever: the watchdog stops it",
    },
];

impl Fault {
    /// Parses a fault name (`forget-rbx`, `no-gdt-restore`, `hang`, ...).
    pub fn parse(name: &str) -> Option<Self> {
        use JumpFault as J;
        use StopFault as S;
        Some(match name {
            "ud2" => Self::Stop(S::Ud2),
            "panic" => Self::Stop(S::Panic),
            "hang" => Self::Stop(S::Hang),
            "triple" => Self::Stop(S::Triple),
            "wild-pointer" => Self::Stop(S::WildPointer),
            "pf" => Self::Stop(S::PageFault),
            "df" => Self::Stop(S::DoubleFault),
            "flood" => Self::Stop(S::Flood),
            "no-gdt-restore" => Self::Jump(J::NoTableRestore(Slot::GdtrBase as u64)),
            "no-idt-restore" => Self::Jump(J::NoTableRestore(Slot::IdtrBase as u64)),
            "no-fpu-restore" => Self::Jump(J::NoFpuRestore),
            "no-uart-restore" => Self::Jump(J::NoUartRestore),
            "no-pic-restore" => Self::Jump(J::NoPicRestore),
            "no-ioapic-restore" => Self::Jump(J::NoIoapicRestore),
            "no-mtrr-restore" => Self::Jump(J::NoMtrrRestore),
            "skip-swap-back" => Self::Jump(J::SkipSwapBack),
            "wrong-reentry-slot" => Self::Jump(J::WrongReentrySlot),
            "lose-preserve" => Self::Jump(J::LosePreserve),
            "write-outside" => Self::Jump(J::WriteOutside),
            "image-skip-page" => Self::Jump(J::ImageSkipPage),
            "no-device-resume" => Self::Jump(J::NoDeviceResume),
            "no-trampoline" => Self::Jump(J::NoTrampoline),
            "leave-msr" => Self::Jump(J::LeaveMsr),
            "leave-pit" => Self::Jump(J::LeavePit),
            "no-backup" => Self::Jump(J::NoBackup),
            "stale-crash-notes" => Self::Jump(J::StaleCrashNotes),
            "no-backup-read" => Self::Jump(J::NoBackupRead),
            "vmcore-skip" => Self::Jump(J::VmcoreSkip),
            "write-outside-reserved" => Self::Jump(J::WriteOutsideReserved),
            "power-off-early" => Self::Jump(J::PowerOffEarly),
            "load-outside-reserved" => Self::Jump(J::LoadOutsideReserved),
            "bad-crash-info" => Self::Jump(J::BadCrashInfo),
            "claim-live-page" => Self::Jump(J::ClaimLivePage),
            "claim-own-text" => Self::Jump(J::ClaimOwnText),
            "claim-control-page" => Self::Jump(J::ClaimControlPage),
            "move-b-region" => Self::Jump(J::MoveBRegion),
            _ => {
                let slot = control::slot_by_name(name.strip_prefix("forget-")?)?;
                // rdi carries the control page into the re-entry path and
                // equals its saved value, and the checkpoint's `in eax, dx`
                // overwrites rax with the VMM's answer: neither can be
                // forgotten. Past EFER, the slots are restored by other
                // means (tables, selectors, MSRs) or by `no-*-restore`.
                if slot == Slot::Rdi as u64 || slot == Slot::Rax as u64 || slot > Slot::Efer as u64
                {
                    return None;
                }
                Self::Jump(J::Forget(slot))
            }
        })
    }

    /// The catalog entry of this fault.
    pub fn entry(self) -> &'static Entry {
        use JumpFault as J;
        use StopFault as S;
        let name = match self {
            Self::Stop(S::Ud2) => "ud2",
            Self::Stop(S::Panic) => "panic",
            Self::Stop(S::Hang) => "hang",
            Self::Stop(S::Triple) => "triple",
            Self::Stop(S::WildPointer) => "wild-pointer",
            Self::Stop(S::PageFault) => "pf",
            Self::Stop(S::DoubleFault) => "df",
            Self::Stop(S::Flood) => "flood",
            Self::Jump(J::Forget(_)) => "forget-REG",
            Self::Jump(J::NoTableRestore(s)) if s == Slot::GdtrBase as u64 => "no-gdt-restore",
            Self::Jump(J::NoTableRestore(_)) => "no-idt-restore",
            Self::Jump(J::NoFpuRestore) => "no-fpu-restore",
            Self::Jump(J::NoUartRestore) => "no-uart-restore",
            Self::Jump(J::NoPicRestore) => "no-pic-restore",
            Self::Jump(J::NoIoapicRestore) => "no-ioapic-restore",
            Self::Jump(J::NoMtrrRestore) => "no-mtrr-restore",
            Self::Jump(J::SkipSwapBack) => "skip-swap-back",
            Self::Jump(J::WrongReentrySlot) => "wrong-reentry-slot",
            Self::Jump(J::LosePreserve) => "lose-preserve",
            Self::Jump(J::WriteOutside) => "write-outside",
            Self::Jump(J::ImageSkipPage) => "image-skip-page",
            Self::Jump(J::NoDeviceResume) => "no-device-resume",
            Self::Jump(J::NoTrampoline) => "no-trampoline",
            Self::Jump(J::LeaveMsr) => "leave-msr",
            Self::Jump(J::LeavePit) => "leave-pit",
            Self::Jump(J::NoBackup) => "no-backup",
            Self::Jump(J::StaleCrashNotes) => "stale-crash-notes",
            Self::Jump(J::NoBackupRead) => "no-backup-read",
            Self::Jump(J::VmcoreSkip) => "vmcore-skip",
            Self::Jump(J::WriteOutsideReserved) => "write-outside-reserved",
            Self::Jump(J::PowerOffEarly) => "power-off-early",
            Self::Jump(J::LoadOutsideReserved) => "load-outside-reserved",
            Self::Jump(J::BadCrashInfo) => "bad-crash-info",
            Self::Jump(J::ClaimLivePage) => "claim-live-page",
            Self::Jump(J::ClaimOwnText) => "claim-own-text",
            Self::Jump(J::ClaimControlPage) => "claim-control-page",
            Self::Jump(J::MoveBRegion) => "move-b-region",
        };
        CATALOG
            .iter()
            .find(|e| e.name == name)
            .expect("every fault has a catalog entry")
    }
}

impl JumpFault {
    /// The bits of [`control::DATA_FAULT`] that arm this fault in the
    /// relocation and re-entry code (none for `write-outside`,
    /// `image-skip-page` and `no-trampoline`, which the kernel itself does).
    pub fn mask(self) -> u64 {
        match self {
            Self::Forget(slot) | Self::NoTableRestore(slot) => 1 << slot,
            Self::NoFpuRestore => 1 << control::FAULT_NO_FPU_RESTORE,
            Self::NoUartRestore => 1 << control::FAULT_NO_UART_RESTORE,
            Self::NoPicRestore => 1 << control::FAULT_NO_PIC_RESTORE,
            Self::NoIoapicRestore => 1 << control::FAULT_NO_IOAPIC_RESTORE,
            Self::NoMtrrRestore => 1 << control::FAULT_NO_MTRR_RESTORE,
            Self::NoDeviceResume => 1 << control::FAULT_NO_DEVICE_RESUME,
            Self::SkipSwapBack => 1 << control::FAULT_SKIP_SWAP_BACK,
            Self::WrongReentrySlot => 1 << control::FAULT_WRONG_REENTRY_SLOT,
            Self::LosePreserve => 1 << control::FAULT_LOSE_PRESERVE,
            Self::StaleCrashNotes => 1 << control::FAULT_STALE_CRASH_NOTES,
            Self::WriteOutside
            | Self::ImageSkipPage
            | Self::NoTrampoline
            | Self::LeaveMsr
            | Self::LeavePit
            | Self::NoBackup
            | Self::NoBackupRead
            | Self::VmcoreSkip
            | Self::WriteOutsideReserved
            | Self::PowerOffEarly
            | Self::LoadOutsideReserved
            | Self::BadCrashInfo
            | Self::ClaimLivePage
            | Self::ClaimOwnText
            | Self::ClaimControlPage
            | Self::MoveBRegion => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalog_entry_parses_back_to_itself() {
        for e in CATALOG {
            let name = e.name.replace("REG", "rbx");
            let f = Fault::parse(&name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(f.entry().name, e.name);
        }
    }

    #[test]
    fn forget_takes_the_restorable_registers_only() {
        for ok in ["rbx", "r15", "rsp", "rflags", "cr0", "cr3", "cr4", "efer"] {
            let f = Fault::parse(&format!("forget-{ok}"));
            let slot = control::slot_by_name(ok).unwrap();
            assert_eq!(f, Some(Fault::Jump(JumpFault::Forget(slot))), "{ok}");
        }
        for bad in ["rax", "rdi", "gdtr.base", "tr", "cs", "uart", "xmm0", ""] {
            assert_eq!(Fault::parse(&format!("forget-{bad}")), None, "{bad}");
        }
        assert_eq!(Fault::parse("forget"), None);
        assert_eq!(Fault::parse("hang2"), None);
    }

    #[test]
    fn masks_are_distinct_single_bits() {
        let faults: [JumpFault; 13] = [
            JumpFault::StaleCrashNotes,
            JumpFault::Forget(Slot::Rbx as u64),
            JumpFault::NoTableRestore(Slot::GdtrBase as u64),
            JumpFault::NoTableRestore(Slot::IdtrBase as u64),
            JumpFault::NoFpuRestore,
            JumpFault::NoUartRestore,
            JumpFault::NoPicRestore,
            JumpFault::NoIoapicRestore,
            JumpFault::NoMtrrRestore,
            JumpFault::SkipSwapBack,
            JumpFault::WrongReentrySlot,
            JumpFault::LosePreserve,
            JumpFault::NoDeviceResume,
        ];
        let mut all = 0u64;
        for f in faults {
            let m = f.mask();
            assert_eq!(m.count_ones(), 1, "{f:?}");
            assert_eq!(all & m, 0, "{f:?} overlaps");
            all |= m;
        }
        assert_eq!(JumpFault::WriteOutside.mask(), 0);
        assert_eq!(JumpFault::ImageSkipPage.mask(), 0);
        assert_eq!(JumpFault::NoTrampoline.mask(), 0);
    }
}
