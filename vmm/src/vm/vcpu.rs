//! The vCPU: its boot state (64-bit mode, as a Linux boot loader leaves it)
//! and the handling of its exits.
//!
//! [`handle_exit`] is a plain function over a `VcpuExit` value, so unit tests
//! drive it without `KVM_RUN` (Firecracker's habit). Everything that needs
//! the KVM file descriptors is in the small `setup_*` functions.

use std::fmt;
use std::time::Duration;

use kjump_abi::abi::{CHECKPOINT_PORT, HARNESS_PORT, HARNESS_PORT_END};
use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};

use crate::vm::boot::{BOOT_CS, BOOT_DS, BOOT_GDT_ENTRIES, segment_from_gdt};
use crate::vm::serial::{SERIAL_PORT, SERIAL_PORT_END};
use kjump_core::harness::HarnessError;
use kjump_core::layout;

/// Architectural MSRs set at boot (SDM vol. 4, table 2-2).
pub mod msr {
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const IA32_PAT: u32 = 0x277;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    /// `IA32_MISC_ENABLE` bit 0: fast string operations.
    pub const MISC_ENABLE_FAST_STRING: u64 = 1;
    /// The PAT value after reset (WB, WT, UC-, UC, repeated).
    pub const PAT_DEFAULT: u64 = 0x0007_0406_0007_0406;
}

pub const CR0_PE: u64 = 1 << 0;
pub const CR0_MP: u64 = 1 << 1;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_NE: u64 = 1 << 5;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_OSFXSR: u64 = 1 << 9;
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
/// `rflags` bit 1 is always set.
pub const RFLAGS_FIXED: u64 = 1 << 1;
pub const RFLAGS_IF: u64 = 1 << 9;

/// Why the vCPU could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// a vCPU ioctl failed
    #[error("cannot {what}")]
    Ioctl {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM took fewer MSRs than given
    #[error("KVM accepted {set} of the {want} boot MSRs")]
    Msrs { set: usize, want: usize },
    /// a FAM structure could not be built
    #[error("too many MSR entries")]
    Fam(#[source] vmm_sys_util::fam::Error),
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Ioctl { what, source }
}

/// The MSR values a 64-bit Linux entry expects (what Firecracker and
/// QEMU give a direct-booted kernel).
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let e = |index, data| kvm_msr_entry {
        index,
        reserved: 0,
        data,
    };
    vec![
        e(msr::IA32_SYSENTER_CS, 0),
        e(msr::IA32_SYSENTER_ESP, 0),
        e(msr::IA32_SYSENTER_EIP, 0),
        e(msr::STAR, 0),
        e(msr::CSTAR, 0),
        e(msr::KERNEL_GS_BASE, 0),
        e(msr::SFMASK, 0),
        e(msr::LSTAR, 0),
        e(msr::IA32_TSC, 0),
        e(msr::IA32_MISC_ENABLE, msr::MISC_ENABLE_FAST_STRING),
        e(msr::IA32_PAT, msr::PAT_DEFAULT),
    ]
}

/// The special registers at entry: long mode with paging on the boot page
/// tables, segments from the boot GDT (hidden parts included), no IDT (an
/// exception before the guest loads its own is a triple fault, which the
/// VMM reports). Starts from what KVM returned so that fields kjump does
/// not set (APIC base, ...) keep KVM's values.
pub fn boot_sregs(mut s: kvm_sregs) -> kvm_sregs {
    let code = segment_from_gdt(BOOT_GDT_ENTRIES[1], BOOT_CS);
    let data = segment_from_gdt(BOOT_GDT_ENTRIES[2], BOOT_DS);
    s.cs = code;
    for seg in [&mut s.ds, &mut s.es, &mut s.fs, &mut s.gs, &mut s.ss] {
        *seg = data;
    }
    s.gdt.base = layout::BOOT_GDT;
    s.gdt.limit = (BOOT_GDT_ENTRIES.len() * 8 - 1) as u16;
    s.idt.base = 0;
    s.idt.limit = 0;
    s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG;
    s.cr3 = layout::BOOT_PML4;
    s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    s.efer = EFER_LME | EFER_LMA;
    s
}

/// The general registers at entry (Linux's 64-bit boot protocol: `rsi` =
/// the zero page; the guest sets up its own stack).
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsi: layout::ZERO_PAGE,
        rflags: RFLAGS_FIXED,
        ..Default::default()
    }
}

/// The x87/SSE state at entry (the values after `fninit` and reset).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Gives the vCPU KVM's supported CPUID, with the APIC ID of vCPU 0.
pub fn setup_cpuid(kvm: &Kvm, vcpu: &VcpuFd) -> Result<(), VcpuError> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl("get KVM's supported CPUID"))?;
    for e in cpuid.as_mut_slice() {
        match e.function {
            // Initial APIC ID in EBX[31:24].
            1 => e.ebx &= 0x00ff_ffff,
            // x2APIC ID in EDX of the topology leaves.
            0xb | 0x1f => e.edx = 0,
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid)
        .map_err(ioctl("set the vCPU's CPUID"))
}

/// Puts the vCPU into its boot state: MSRs, special and general registers, FPU.
pub fn setup_registers(vcpu: &VcpuFd, entry: u64) -> Result<(), VcpuError> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(VcpuError::Fam)?;
    let set = vcpu.set_msrs(&msrs).map_err(ioctl("set the boot MSRs"))?;
    if set != entries.len() {
        return Err(VcpuError::Msrs {
            set,
            want: entries.len(),
        });
    }
    let sregs = vcpu
        .get_sregs()
        .map_err(ioctl("read the special registers"))?;
    vcpu.set_sregs(&boot_sregs(sregs))
        .map_err(ioctl("set the special registers"))?;
    vcpu.set_regs(&boot_regs(entry))
        .map_err(ioctl("set the registers"))?;
    vcpu.set_fpu(&boot_fpu())
        .map_err(ioctl("set the FPU state"))
}

/// KVM's MSR index list.
pub fn msr_index_list(kvm: &Kvm) -> Result<Vec<u32>, VcpuError> {
    let list = kvm
        .get_msr_index_list()
        .map_err(ioctl("get KVM's MSR index list"))?;
    Ok(list.as_slice().to_vec())
}

/// The registers of a stopped guest, for error messages.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RegDump {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// The guest kernel symbol `rip` is in, once looked up.
    pub rip_symbol: Option<String>,
}

impl RegDump {
    /// Reads the vCPU's registers; what cannot be read stays zero.
    pub fn read(vcpu: &VcpuFd) -> Self {
        Self {
            regs: vcpu.get_regs().unwrap_or_default(),
            sregs: vcpu.get_sregs().unwrap_or_default(),
            rip_symbol: None,
        }
    }

    /// One line: `rip=0x... (symbol) rsp=0x... rflags=0x...`.
    pub fn summary(&self) -> String {
        format!(
            "rip={:#x}{} rsp={:#x} rflags={:#x}",
            self.regs.rip,
            in_parens(self.rip_symbol.as_deref()),
            self.regs.rsp,
            self.regs.rflags
        )
    }
}

fn fmt_segment(f: &mut fmt::Formatter<'_>, name: &str, s: &kvm_segment) -> fmt::Result {
    writeln!(
        f,
        "  {name:<3} sel={:#06x} base={:#018x} limit={:#010x} type={:#x} s={} dpl={} p={} l={} db={} g={}{}",
        s.selector,
        s.base,
        s.limit,
        s.type_,
        s.s,
        s.dpl,
        s.present,
        s.l,
        s.db,
        s.g,
        if s.unusable != 0 { " unusable" } else { "" }
    )
}

/// ` (text)`, or nothing.
pub fn in_parens(text: Option<&str>) -> String {
    text.map(|t| format!(" ({t})")).unwrap_or_default()
}

/// The multi-line register dump printed under a guest failure.
impl fmt::Display for RegDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.regs;
        let s = &self.sregs;
        writeln!(
            f,
            "  rip={:#018x} rsp={:#018x} rflags={:#010x}",
            r.rip, r.rsp, r.rflags
        )?;
        writeln!(
            f,
            "  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}",
            r.rax, r.rbx, r.rcx, r.rdx
        )?;
        writeln!(
            f,
            "  rsi={:#018x} rdi={:#018x} rbp={:#018x} r8 ={:#018x}",
            r.rsi, r.rdi, r.rbp, r.r8
        )?;
        writeln!(
            f,
            "  r9 ={:#018x} r10={:#018x} r11={:#018x} r12={:#018x}",
            r.r9, r.r10, r.r11, r.r12
        )?;
        writeln!(
            f,
            "  r13={:#018x} r14={:#018x} r15={:#018x}",
            r.r13, r.r14, r.r15
        )?;
        writeln!(
            f,
            "  cr0={:#010x} cr2={:#018x} cr3={:#018x} cr4={:#010x} cr8={:#x} efer={:#x}",
            s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer
        )?;
        writeln!(
            f,
            "  gdt={:#x}/{:#x} idt={:#x}/{:#x} apic_base={:#x}",
            s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit, s.apic_base
        )?;
        for (name, seg) in [
            ("cs", &s.cs),
            ("ss", &s.ss),
            ("ds", &s.ds),
            ("es", &s.es),
            ("fs", &s.fs),
            ("gs", &s.gs),
            ("tr", &s.tr),
        ] {
            fmt_segment(f, name, seg)?;
        }
        Ok(())
    }
}

/// Why a guest stopped in a way the run cannot go on from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuestFault {
    /// `hlt`: without an interrupt controller nothing can wake the vCPU.
    #[error("halted (hlt) with interrupts {}", if *.interrupts_enabled { "on, but kjump VMs have no interrupt sources" } else { "off" })]
    Halted { interrupts_enabled: bool },
    /// KVM_EXIT_SHUTDOWN.
    #[error("triple fault (KVM_EXIT_SHUTDOWN)")]
    TripleFault,
    /// KVM_EXIT_INTERNAL_ERROR.
    #[error(
        "KVM internal error (suberror {suberror}{}); a software KVM cannot emulate some instructions (xsave, xgetbv, int3)",
        if *.suberror == 1 { ": emulation failure" } else { "" }
    )]
    InternalError { suberror: u32 },
    /// KVM_EXIT_FAIL_ENTRY.
    #[error("KVM could not enter the guest (hardware entry failure reason {reason:#x})")]
    FailEntry { reason: u64 },
    /// An MMIO exit: an access to guest-physical memory with nothing behind it.
    #[error("{} of {len} bytes at {addr:#x}, where there is neither RAM nor a device", if *.write { "write" } else { "read" })]
    Mmio { addr: u64, len: usize, write: bool },
    /// Any other exit.
    #[error("unexpected KVM exit {0}")]
    UnexpectedExit(String),
    /// A bad harness message or port access.
    #[error("protocol error: {0}")]
    Protocol(HarnessError),
    /// The checkpoint instruction (`in eax, dx`) read another port.
    #[error(
        "the checkpoint instruction read port {port:#x}, not the checkpoint port {:#x}: rdx = {rdx:#x}{}",
        CHECKPOINT_PORT,
        crate::vm::vcpu::in_parens(kjump_core::oracle::poison_of(*.rdx).as_deref())
    )]
    CheckpointPort { port: u16, rdx: u64 },
    /// The watchdog fired.
    #[error("hung: no progress for {} s (watchdog)", .after.as_secs_f64())]
    Timeout { after: Duration },
    /// The run's total time limit passed.
    #[error("stopped at the run's time limit of {} s (--max-time)", .limit.as_secs_f64())]
    OutOfTime { limit: Duration },
    /// SIGINT or SIGTERM.
    #[error("run interrupted by {}", signal_name(*.signal))]
    Interrupted { signal: i32 },
}

pub use crate::vm::watchdog::signal_name;

impl From<crate::vm::watchdog::StopReason> for GuestFault {
    /// A run stopped from outside: how the guest it stopped is reported.
    fn from(reason: crate::vm::watchdog::StopReason) -> Self {
        use crate::vm::watchdog::StopReason;
        match reason {
            StopReason::Timeout(after) => Self::Timeout { after },
            StopReason::MaxTime(limit) => Self::OutOfTime { limit },
            StopReason::Signal(signal) => Self::Interrupted { signal },
        }
    }
}

/// Port I/O devices, behind a trait so that exits are handled in tests
/// without KVM.
pub trait PortIo {
    /// An `in`: fill `data`.
    fn pio_in(&mut self, port: u16, data: &mut [u8]);
    /// An `out` of `data`.
    fn pio_out(&mut self, port: u16, data: &[u8]);
    /// A read of guest-physical `addr` outside RAM: `true` when a device
    /// answered (and filled `data`).
    fn mmio_read(&mut self, _addr: u64, _data: &mut [u8]) -> bool {
        false
    }
    /// A write of guest-physical `addr` outside RAM: `true` when a device
    /// took it.
    fn mmio_write(&mut self, _addr: u64, _data: &[u8]) -> bool {
        false
    }
}

/// What the run loop does after an exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Handled; run the vCPU again.
    Continue,
    /// The checkpoint instruction ran and `answer` was put in its data; the
    /// I/O must be completed before the registers are read.
    Checkpoint { answer: u32 },
    /// A harness message at this guest-physical address.
    HarnessMessage { addr: u64 },
    /// The guest cannot go on.
    Fault(GuestFault),
    /// A read of a port kjump does not emulate (answered with all ones):
    /// the VM checks it was not the checkpoint instruction.
    StrayIn { port: u16 },
    /// A breakpoint, watchpoint or single step of the debugger.
    Debug(crate::vm::debug::DebugExit),
}

/// Legacy ports a PC guest may touch that kjump does not emulate (POST
/// codes, PIC, PIT, CMOS, other COM ports, PCI config): reads give all
/// ones, writes are dropped.
fn ignored_port(port: u16) -> bool {
    !(HARNESS_PORT..HARNESS_PORT_END).contains(&port)
}

/// Decides what an exit means. `answer` gives the checkpoint's answer.
///
/// The `data` of an I/O exit is `count * size` bytes; a string I/O (`rep
/// outsb`) to the UART sends each byte to the same register, which is what
/// [`crate::vm::serial::Console`] does with several bytes.
pub fn handle_exit(
    exit: VcpuExit<'_>,
    io: &mut dyn PortIo,
    answer: &mut dyn FnMut() -> u32,
) -> ExitAction {
    match exit {
        VcpuExit::IoIn(CHECKPOINT_PORT, data) if data.len() == 4 => {
            let a = answer();
            data.copy_from_slice(&a.to_le_bytes());
            ExitAction::Checkpoint { answer: a }
        }
        VcpuExit::IoOut(HARNESS_PORT, data) if data.len() == 4 => ExitAction::HarnessMessage {
            addr: u64::from(u32::from_le_bytes(data.try_into().expect("4 bytes"))),
        },
        VcpuExit::IoIn(port, data) if (SERIAL_PORT..SERIAL_PORT_END).contains(&port) => {
            io.pio_in(port, data);
            ExitAction::Continue
        }
        VcpuExit::IoOut(port, data) if (SERIAL_PORT..SERIAL_PORT_END).contains(&port) => {
            io.pio_out(port, data);
            ExitAction::Continue
        }
        VcpuExit::IoIn(port, data) if ignored_port(port) => {
            data.fill(0xff);
            ExitAction::StrayIn { port }
        }
        VcpuExit::IoOut(port, _) if ignored_port(port) => ExitAction::Continue,
        VcpuExit::IoIn(port, data) => {
            ExitAction::Fault(GuestFault::Protocol(HarnessError::BadPortAccess {
                port,
                len: data.len(),
                dir: "in",
            }))
        }
        VcpuExit::IoOut(port, data) => {
            ExitAction::Fault(GuestFault::Protocol(HarnessError::BadPortAccess {
                port,
                len: data.len(),
                dir: "out",
            }))
        }
        VcpuExit::Debug(a) => ExitAction::Debug(crate::vm::debug::DebugExit {
            exception: a.exception,
            pc: a.pc,
            dr6: a.dr6,
        }),
        VcpuExit::Hlt => ExitAction::Fault(GuestFault::Halted {
            interrupts_enabled: false,
        }),
        VcpuExit::Shutdown => ExitAction::Fault(GuestFault::TripleFault),
        VcpuExit::InternalError => ExitAction::Fault(GuestFault::InternalError { suberror: 0 }),
        VcpuExit::FailEntry(reason, _) => ExitAction::Fault(GuestFault::FailEntry { reason }),
        // A device's register window, or an access nothing answers.
        VcpuExit::MmioRead(addr, data) => {
            if io.mmio_read(addr, data) {
                ExitAction::Continue
            } else {
                ExitAction::Fault(GuestFault::Mmio {
                    addr,
                    len: data.len(),
                    write: false,
                })
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if io.mmio_write(addr, data) {
                ExitAction::Continue
            } else {
                ExitAction::Fault(GuestFault::Mmio {
                    addr,
                    len: data.len(),
                    write: true,
                })
            }
        }
        other => ExitAction::Fault(GuestFault::UnexpectedExit(format!("{other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kjump_abi::abi::ANSWER_BACK;

    #[derive(Default)]
    struct Log {
        ins: Vec<u16>,
        outs: Vec<(u16, Vec<u8>)>,
    }
    impl PortIo for Log {
        fn pio_in(&mut self, port: u16, data: &mut [u8]) {
            self.ins.push(port);
            data.fill(0x60);
        }
        fn pio_out(&mut self, port: u16, data: &[u8]) {
            self.outs.push((port, data.to_vec()));
        }
    }

    fn no_answer() -> u32 {
        panic!("not a checkpoint")
    }

    #[test]
    fn checkpoint_puts_the_answer_in_the_data() {
        let mut data = [0u8; 4];
        let mut calls = 0;
        let mut answer = || {
            calls += 1;
            ANSWER_BACK
        };
        let a = handle_exit(
            VcpuExit::IoIn(CHECKPOINT_PORT, &mut data),
            &mut Log::default(),
            &mut answer,
        );
        assert_eq!(
            a,
            ExitAction::Checkpoint {
                answer: ANSWER_BACK
            }
        );
        assert_eq!(data, *b"BACK");
        assert_eq!(calls, 1);
    }

    #[test]
    fn harness_out_gives_the_message_address() {
        let data = 0x12_3450u32.to_le_bytes();
        let a = handle_exit(
            VcpuExit::IoOut(HARNESS_PORT, &data),
            &mut Log::default(),
            &mut no_answer,
        );
        assert_eq!(a, ExitAction::HarnessMessage { addr: 0x12_3450 });
    }

    #[test]
    fn wrong_width_on_harness_ports_is_a_protocol_error() {
        let mut one = [0u8; 1];
        let a = handle_exit(
            VcpuExit::IoIn(CHECKPOINT_PORT, &mut one),
            &mut Log::default(),
            &mut no_answer,
        );
        assert_eq!(
            a,
            ExitAction::Fault(GuestFault::Protocol(HarnessError::BadPortAccess {
                port: CHECKPOINT_PORT,
                len: 1,
                dir: "in"
            }))
        );
        let a = handle_exit(
            VcpuExit::IoOut(HARNESS_PORT, &[1, 2]),
            &mut Log::default(),
            &mut no_answer,
        );
        assert!(matches!(a, ExitAction::Fault(GuestFault::Protocol(_))));
        let a = handle_exit(
            VcpuExit::IoOut(CHECKPOINT_PORT, &[0; 4]),
            &mut Log::default(),
            &mut no_answer,
        );
        assert!(matches!(a, ExitAction::Fault(GuestFault::Protocol(_))));
        let a = handle_exit(
            VcpuExit::IoIn(HARNESS_PORT + 2, &mut [0; 4]),
            &mut Log::default(),
            &mut no_answer,
        );
        assert!(matches!(a, ExitAction::Fault(GuestFault::Protocol(_))));
    }

    #[test]
    fn uart_ports_go_to_the_device_and_others_are_ignored() {
        let mut log = Log::default();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x3f8, b"hi"), &mut log, &mut no_answer),
            ExitAction::Continue
        );
        let mut lsr = [0u8];
        handle_exit(VcpuExit::IoIn(0x3fd, &mut lsr), &mut log, &mut no_answer);
        assert_eq!(lsr, [0x60]);
        assert_eq!(log.outs, vec![(0x3f8, b"hi".to_vec())]);
        assert_eq!(log.ins, vec![0x3fd]);

        for port in [0x80u16, 0x61, 0x2f8, 0xcf8, 0x3ff + 1, 0x7df, 0x7e8] {
            let mut d = [0u8; 2];
            assert_eq!(
                handle_exit(VcpuExit::IoIn(port, &mut d), &mut log, &mut no_answer),
                ExitAction::StrayIn { port }
            );
            assert_eq!(d, [0xff, 0xff], "port {port:#x}");
            assert_eq!(
                handle_exit(VcpuExit::IoOut(port, &[1]), &mut log, &mut no_answer),
                ExitAction::Continue
            );
        }
        assert_eq!(log.outs.len(), 1, "ignored ports do not reach the UART");
    }

    #[test]
    fn fatal_exits_are_faults() {
        let mut log = Log::default();
        let mut f = |e| handle_exit(e, &mut log, &mut no_answer);
        assert_eq!(
            f(VcpuExit::Hlt),
            ExitAction::Fault(GuestFault::Halted {
                interrupts_enabled: false
            })
        );
        assert_eq!(
            f(VcpuExit::Shutdown),
            ExitAction::Fault(GuestFault::TripleFault)
        );
        assert_eq!(
            f(VcpuExit::InternalError),
            ExitAction::Fault(GuestFault::InternalError { suberror: 0 })
        );
        assert_eq!(
            f(VcpuExit::FailEntry(0x21, 0)),
            ExitAction::Fault(GuestFault::FailEntry { reason: 0x21 })
        );
        assert_eq!(
            f(VcpuExit::MmioWrite(0xfee0_0300, &[0; 4])),
            ExitAction::Fault(GuestFault::Mmio {
                addr: 0xfee0_0300,
                len: 4,
                write: true
            })
        );
        assert!(matches!(
            f(VcpuExit::Intr),
            ExitAction::Fault(GuestFault::UnexpectedExit(_))
        ));
    }

    /// A device that answers MMIO in one page.
    struct Window(Vec<(u64, Vec<u8>)>);
    impl PortIo for Window {
        fn pio_in(&mut self, _: u16, _: &mut [u8]) {}
        fn pio_out(&mut self, _: u16, _: &[u8]) {}
        fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
            data.fill(0x76);
            (0xd000_0000..0xd000_1000).contains(&addr)
        }
        fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
            self.0.push((addr, data.to_vec()));
            (0xd000_0000..0xd000_1000).contains(&addr)
        }
    }

    #[test]
    fn mmio_a_device_answers_runs_on_and_the_rest_is_a_fault() {
        let mut dev = Window(Vec::new());
        let mut data = [0u8; 4];
        let a = handle_exit(
            VcpuExit::MmioRead(0xd000_0000, &mut data),
            &mut dev,
            &mut no_answer,
        );
        assert_eq!((a, data), (ExitAction::Continue, [0x76; 4]));
        let a = handle_exit(
            VcpuExit::MmioWrite(0xd000_0050, &[0; 4]),
            &mut dev,
            &mut no_answer,
        );
        assert_eq!(a, ExitAction::Continue);
        assert_eq!(dev.0, [(0xd000_0050, vec![0; 4])]);
        let a = handle_exit(
            VcpuExit::MmioRead(0xd000_1000, &mut data),
            &mut dev,
            &mut no_answer,
        );
        assert_eq!(
            a,
            ExitAction::Fault(GuestFault::Mmio {
                addr: 0xd000_1000,
                len: 4,
                write: false
            })
        );
    }

    #[test]
    fn fault_messages_are_one_line() {
        let faults = [
            GuestFault::Halted {
                interrupts_enabled: false,
            },
            GuestFault::Halted {
                interrupts_enabled: true,
            },
            GuestFault::TripleFault,
            GuestFault::InternalError { suberror: 1 },
            GuestFault::Mmio {
                addr: 0xd000_0000,
                len: 1,
                write: false,
            },
            GuestFault::Timeout {
                after: Duration::from_secs(5),
            },
            GuestFault::Interrupted {
                signal: libc::SIGINT,
            },
        ];
        for f in faults {
            let s = f.to_string();
            assert!(!s.contains('\n') && !s.is_empty(), "{s}");
        }
        assert_eq!(
            GuestFault::Timeout {
                after: Duration::from_secs(5)
            }
            .to_string(),
            "hung: no progress for 5 s (watchdog)"
        );
        assert!(
            GuestFault::InternalError { suberror: 1 }
                .to_string()
                .contains("emulation failure")
        );
        assert_eq!(
            GuestFault::Interrupted { signal: 15 }.to_string(),
            "run interrupted by SIGTERM"
        );
    }

    #[test]
    fn boot_state_is_64_bit_mode() {
        let s = boot_sregs(kvm_sregs {
            apic_base: 0xfee0_0900,
            ..Default::default()
        });
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(s.cr4 & CR4_PAE, CR4_PAE);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, layout::BOOT_PML4);
        assert_eq!((s.cs.selector, s.cs.l, s.cs.db, s.cs.present), (8, 1, 0, 1));
        assert_eq!((s.ss.selector, s.ss.type_, s.ss.present), (0x10, 3, 1));
        assert_eq!((s.gdt.base, s.gdt.limit), (layout::BOOT_GDT, 23));
        assert_eq!(s.apic_base, 0xfee0_0900, "kept from KVM");
        let r = boot_regs(0x20_0000);
        assert_eq!(
            (r.rip, r.rsi, r.rflags, r.rsp),
            (0x20_0000, layout::ZERO_PAGE, 2, 0)
        );
        let fpu = boot_fpu();
        assert_eq!((fpu.fcw, fpu.mxcsr), (0x37f, 0x1f80));
        let m = boot_msrs();
        let pat = m.iter().find(|e| e.index == msr::IA32_PAT).unwrap();
        assert_eq!(pat.data, 0x0007_0406_0007_0406);
        let misc = m.iter().find(|e| e.index == msr::IA32_MISC_ENABLE).unwrap();
        assert_eq!(misc.data & 1, 1);
    }

    #[test]
    fn register_dump_shows_the_key_registers() {
        let mut d = RegDump::default();
        d.regs.rip = 0x20_1234;
        d.sregs.cr3 = 0x9000;
        let text = d.to_string();
        assert!(text.contains("rip=0x0000000000201234"));
        assert!(text.contains("cr3=0x0000000000009000"));
        assert!(text.contains("cr0=") && text.contains("cr4=") && text.contains("rflags="));
        assert_eq!(d.summary(), "rip=0x201234 rsp=0x0 rflags=0x0");
    }
}
