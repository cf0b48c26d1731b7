//! The complete state of a vCPU at a checkpoint, as a plain value.
//!
//! The VMM's `vm::capture` reads it from KVM and writes it back; everything
//! here ([`VcpuState::fields`], and the oracle, the report and dumps that
//! use it) works on the value alone, so it is unit-tested without
//! `/dev/kvm`.
//!
//! [`VcpuState::fields`] flattens the state into named fields (`rbx`,
//! `cs.base`, `xmm3`, `lapic.tpr`, `msr[0xc0000080] EFER`, ...): the unit the
//! oracle compares and the report names.

use std::collections::BTreeMap;
use std::fmt;

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_regs, kvm_segment, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs,
};
use serde::{Deserialize, Serialize};

use crate::devices::{ClockState, IoapicState, PicState, PitState};

/// Size of the XSAVE area `KVM_GET_XSAVE` returns (`struct kvm_xsave`).
pub const XSAVE_SIZE: usize = 4096;
/// Size of the legacy FXSAVE region at the start of the XSAVE area.
const FXSAVE_SIZE: usize = 512;
/// The XSAVE header follows the legacy region (SDM vol. 1, 13.4.2).
const XSAVE_HEADER: usize = 512;
/// Extended components start after the 64-byte header.
const XSAVE_EXTENDED: usize = 576;
/// The extended area is compared in chunks of this many bytes.
const XSAVE_CHUNK: usize = 64;
/// Size of the local APIC register page KVM hands out.
pub const LAPIC_SIZE: usize = 1024;

/// Everything KVM holds about one vCPU that the guest can observe, in the
/// layouts of KVM's own structures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VcpuState {
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// The `KVM_GET_XSAVE` area (standard, non-compacted format): the legacy
    /// FXSAVE region, the XSAVE header, then the extended components.
    pub xsave: Vec<u8>,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// MSR index → value, for the indices `capture` was given.
    pub msrs: BTreeMap<u32, u64>,
    pub events: kvm_vcpu_events,
}

impl Default for VcpuState {
    fn default() -> Self {
        Self {
            mp_state: kvm_mp_state::default(),
            regs: kvm_regs::default(),
            sregs: kvm_sregs::default(),
            xsave: vec![0; XSAVE_SIZE],
            xcrs: kvm_xcrs::default(),
            debugregs: kvm_debugregs::default(),
            lapic: kvm_lapic_state {
                regs: [0; LAPIC_SIZE],
            },
            msrs: BTreeMap::new(),
            events: kvm_vcpu_events::default(),
        }
    }
}

/// The value of one named field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldValue {
    U64(u64),
    /// 80-bit x87 registers and 128-bit XMM registers, as little-endian numbers.
    U128(u128),
    /// Raw bytes in memory order (XSAVE chunks).
    Bytes(Vec<u8>),
    /// The field exists in one state only (e.g. an MSR captured in one).
    Absent,
}

impl fmt::Display for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::U64(v) => write!(f, "{v:#x}"),
            Self::U128(v) => write!(f, "{v:#x}"),
            Self::Bytes(b) => {
                for x in b {
                    write!(f, "{x:02x}")?;
                }
                Ok(())
            }
            Self::Absent => f.write_str("(absent)"),
        }
    }
}

/// Known local APIC registers by offset in the APIC page (SDM vol. 3A,
/// table 11-1). Every other 16-byte slot is named `lapic[0xNNN]`.
const LAPIC_REGS: &[(usize, &str)] = &[
    (0x020, "id"),
    (0x030, "version"),
    (0x080, "tpr"),
    (0x090, "apr"),
    (0x0a0, "ppr"),
    (0x0b0, "eoi"),
    (0x0c0, "rrd"),
    (0x0d0, "ldr"),
    (0x0e0, "dfr"),
    (0x0f0, "spiv"),
    (0x280, "esr"),
    (0x2f0, "lvt_cmci"),
    (0x300, "icr_lo"),
    (0x310, "icr_hi"),
    (0x320, "lvt_timer"),
    (0x330, "lvt_thermal"),
    (0x340, "lvt_pmc"),
    (0x350, "lvt_lint0"),
    (0x360, "lvt_lint1"),
    (0x370, "lvt_error"),
    (0x380, "timer_icr"),
    (0x390, "timer_ccr"),
    (0x3e0, "timer_dcr"),
    (0x3f0, "self_ipi"),
];

/// The field name of a local APIC register slot: `lapic.tpr`,
/// `lapic.isr3`, or `lapic[0x040]` for a slot without a name.
pub fn lapic_field(offset: usize) -> String {
    if let Some((_, n)) = LAPIC_REGS.iter().find(|(o, _)| *o == offset) {
        return format!("lapic.{n}");
    }
    let banked = [(0x100, "isr"), (0x180, "tmr"), (0x200, "irr")];
    for (base, n) in banked {
        if (base..base + 0x80).contains(&offset) {
            return format!("lapic.{n}{}", (offset - base) / 0x10);
        }
    }
    format!("lapic[{offset:#05x}]")
}

/// Names of the MSRs a report is likely to show (SDM vol. 4; KVM's
/// paravirtual MSRs from Documentation/virt/kvm/x86/msr.rst).
const MSR_NAMES: &[(u32, &str)] = &[
    (0x0000_0010, "TSC"),
    (0x0000_0011, "KVM_WALL_CLOCK"),
    (0x0000_0012, "KVM_SYSTEM_TIME"),
    (0x0000_001b, "APIC_BASE"),
    (0x0000_0034, "SMI_COUNT"),
    (0x0000_003a, "FEATURE_CONTROL"),
    (0x0000_003b, "TSC_ADJUST"),
    (0x0000_0048, "SPEC_CTRL"),
    (0x0000_0049, "PRED_CMD"),
    (0x0000_008b, "BIOS_SIGN_ID"),
    (0x0000_00e7, "MPERF"),
    (0x0000_00e8, "APERF"),
    (0x0000_00fe, "MTRRCAP"),
    (0x0000_010a, "ARCH_CAPABILITIES"),
    (0x0000_00ce, "PLATFORM_INFO"),
    (0x0000_0122, "TSX_CTRL"),
    (0x0000_0140, "MISC_FEATURES_ENABLES"),
    (0x0000_0174, "SYSENTER_CS"),
    (0x0000_0175, "SYSENTER_ESP"),
    (0x0000_0176, "SYSENTER_EIP"),
    (0x0000_0179, "MCG_CAP"),
    (0x0000_017a, "MCG_STATUS"),
    (0x0000_017b, "MCG_CTL"),
    (0x0000_01a0, "MISC_ENABLE"),
    (0x0000_01c4, "XFD"),
    (0x0000_01c5, "XFD_ERR"),
    (0x0000_01d9, "DEBUGCTL"),
    (0x0000_01db, "LASTBRANCH_FROM_IP"),
    (0x0000_01dc, "LASTBRANCH_TO_IP"),
    (0x0000_01dd, "LASTINT_FROM_IP"),
    (0x0000_01de, "LASTINT_TO_IP"),
    (0x0000_01fc, "POWER_CTL"),
    (0x0000_0277, "PAT"),
    (0x0000_02ff, "MTRR_DEF_TYPE"),
    (0x0000_0250, "MTRR_FIX64K_00000"),
    (0x0000_0258, "MTRR_FIX16K_80000"),
    (0x0000_0259, "MTRR_FIX16K_A0000"),
    (0x0000_0268, "MTRR_FIX4K_C0000"),
    (0x0000_0269, "MTRR_FIX4K_C8000"),
    (0x0000_026a, "MTRR_FIX4K_D0000"),
    (0x0000_026b, "MTRR_FIX4K_D8000"),
    (0x0000_026c, "MTRR_FIX4K_E0000"),
    (0x0000_026d, "MTRR_FIX4K_E8000"),
    (0x0000_026e, "MTRR_FIX4K_F0000"),
    (0x0000_026f, "MTRR_FIX4K_F8000"),
    (0x0000_0345, "PERF_CAPABILITIES"),
    (0x0000_038d, "FIXED_CTR_CTRL"),
    (0x0000_038e, "PERF_GLOBAL_STATUS"),
    (0x0000_038f, "PERF_GLOBAL_CTRL"),
    (0x0000_0390, "PERF_GLOBAL_OVF_CTRL"),
    (0x0000_06a0, "U_CET"),
    (0x0000_06a2, "S_CET"),
    (0x0000_06e0, "TSC_DEADLINE"),
    (0x0000_0d90, "BNDCFGS"),
    (0x0000_0da0, "XSS"),
    (0x4000_0000, "HV_GUEST_OS_ID"),
    (0x4000_0001, "HV_HYPERCALL"),
    (0x4b56_4d00, "KVM_WALL_CLOCK_NEW"),
    (0x4b56_4d01, "KVM_SYSTEM_TIME_NEW"),
    (0x4b56_4d02, "KVM_ASYNC_PF_EN"),
    (0x4b56_4d03, "KVM_STEAL_TIME"),
    (0x4b56_4d04, "KVM_PV_EOI_EN"),
    (0x4b56_4d05, "KVM_POLL_CONTROL"),
    (0x4b56_4d06, "KVM_ASYNC_PF_INT"),
    (0x4b56_4d07, "KVM_ASYNC_PF_ACK"),
    (0x4b56_4d08, "KVM_MIGRATION_CONTROL"),
    (0xc000_0080, "EFER"),
    (0xc000_0081, "STAR"),
    (0xc000_0082, "LSTAR"),
    (0xc000_0083, "CSTAR"),
    (0xc000_0084, "SFMASK"),
    (0xc000_0100, "FS_BASE"),
    (0xc000_0101, "GS_BASE"),
    (0xc000_0102, "KERNEL_GS_BASE"),
    (0xc000_0103, "TSC_AUX"),
    (0xc000_0104, "TSC_RATIO"),
    (0xc001_0015, "AMD_HWCR"),
    (0xc001_0117, "AMD_VM_HSAVE_PA"),
    (0xc001_011f, "AMD_VIRT_SPEC_CTRL"),
];

/// The name of an MSR, for the ones in the table, e.g. `Some("LSTAR")`.
pub fn msr_name(index: u32) -> Option<String> {
    if let Some((_, n)) = MSR_NAMES.iter().find(|(i, _)| *i == index) {
        return Some((*n).to_string());
    }
    match index {
        0x200..=0x20f => Some(format!(
            "MTRR_PHYS{}{}",
            if index.is_multiple_of(2) {
                "BASE"
            } else {
                "MASK"
            },
            (index - 0x200) / 2
        )),
        0xc1..=0xc8 => Some(format!("PMC{}", index - 0xc1)),
        0x186..=0x18d => Some(format!("PERFEVTSEL{}", index - 0x186)),
        0x309..=0x30c => Some(format!("FIXED_CTR{}", index - 0x309)),
        0x400..=0x47f => {
            let kind = ["CTL", "STATUS", "ADDR", "MISC"][(index % 4) as usize];
            Some(format!("MC{}_{kind}", (index - 0x400) / 4))
        }
        0x280..=0x29f => Some(format!("MC{}_CTL2", index - 0x280)),
        _ => None,
    }
}

/// The field name of an MSR: `msr[0x00000010] TSC`, or `msr[0x0000004e]`.
pub fn msr_field(index: u32) -> String {
    match msr_name(index) {
        Some(n) => format!("msr[{index:#010x}] {n}"),
        None => format!("msr[{index:#010x}]"),
    }
}

/// Name of the XSAVE header's component bitmap field.
pub const XSTATE_BV: &str = "xsave.xstate_bv";

/// A reader for the little-endian integers of a byte area.
fn le(b: &[u8], off: usize, len: usize) -> u128 {
    b[off..off + len]
        .iter()
        .rev()
        .fold(0u128, |v, &x| (v << 8) | u128::from(x))
}

impl VcpuState {
    /// The value `rax` holds.
    pub fn rax(&self) -> u64 {
        self.regs.rax
    }

    /// The general-purpose registers, rip and rflags, by name.
    pub fn general_regs(&self) -> [(&'static str, u64); 18] {
        let r = &self.regs;
        [
            ("rax", r.rax),
            ("rbx", r.rbx),
            ("rcx", r.rcx),
            ("rdx", r.rdx),
            ("rsi", r.rsi),
            ("rdi", r.rdi),
            ("rsp", r.rsp),
            ("rbp", r.rbp),
            ("r8", r.r8),
            ("r9", r.r9),
            ("r10", r.r10),
            ("r11", r.r11),
            ("r12", r.r12),
            ("r13", r.r13),
            ("r14", r.r14),
            ("r15", r.r15),
            ("rip", r.rip),
            ("rflags", r.rflags),
        ]
    }

    /// The state as named fields, in a stable order: general registers,
    /// segments and system registers, FPU/SSE and the rest of the XSAVE
    /// area, XCRs, debug registers, the local APIC, events, mp_state, MSRs.
    /// Padding and reserved fields of KVM's structures are left out; the
    /// XSAVE area is covered completely (the legacy region by register, the
    /// rest in 64-byte chunks `xsave[0x240..0x280]`).
    pub fn fields(&self) -> Vec<(String, FieldValue)> {
        let mut f = Vec::with_capacity(320);
        let mut u = |name: &str, v: u64| f.push((name.to_string(), FieldValue::U64(v)));
        for (n, v) in self.general_regs() {
            u(n, v);
        }
        let s = &self.sregs;
        for (n, seg) in [
            ("cs", &s.cs),
            ("ds", &s.ds),
            ("es", &s.es),
            ("fs", &s.fs),
            ("gs", &s.gs),
            ("ss", &s.ss),
            ("tr", &s.tr),
            ("ldt", &s.ldt),
        ] {
            segment_fields(&mut u, n, seg);
        }
        u("gdt.base", s.gdt.base);
        u("gdt.limit", s.gdt.limit.into());
        u("idt.base", s.idt.base);
        u("idt.limit", s.idt.limit.into());
        for (n, v) in [
            ("cr0", s.cr0),
            ("cr2", s.cr2),
            ("cr3", s.cr3),
            ("cr4", s.cr4),
            ("cr8", s.cr8),
            ("efer", s.efer),
            ("apic_base", s.apic_base),
        ] {
            u(n, v);
        }
        for (i, v) in s.interrupt_bitmap.iter().enumerate() {
            u(&format!("interrupt_bitmap[{i}]"), *v);
        }

        // The legacy FXSAVE region, 64-bit layout (SDM vol. 1, table 10-2).
        let x = &self.xsave;
        if x.len() >= XSAVE_EXTENDED {
            let w = |off, len| le(x, off, len) as u64;
            for (n, v) in [
                ("fcw", w(0, 2)),
                ("fsw", w(2, 2)),
                ("ftw", w(4, 1)),
                ("fop", w(6, 2)),
                ("fip", w(8, 8)),
                ("fdp", w(16, 8)),
                ("mxcsr", w(24, 4)),
                ("mxcsr_mask", w(28, 4)),
            ] {
                u(n, v);
            }
            for i in 0..8 {
                f.push((format!("st{i}"), FieldValue::U128(le(x, 32 + 16 * i, 10))));
            }
            for i in 0..16 {
                f.push((format!("xmm{i}"), FieldValue::U128(le(x, 160 + 16 * i, 16))));
            }
            f.push(chunk(x, 416, FXSAVE_SIZE));
            f.push((
                XSTATE_BV.to_string(),
                FieldValue::U64(le(x, XSAVE_HEADER, 8) as u64),
            ));
            f.push((
                "xsave.xcomp_bv".to_string(),
                FieldValue::U64(le(x, XSAVE_HEADER + 8, 8) as u64),
            ));
            f.push(chunk(x, XSAVE_HEADER + 16, XSAVE_EXTENDED));
            let mut off = XSAVE_EXTENDED;
            while off < x.len() {
                let end = (off + XSAVE_CHUNK).min(x.len());
                f.push(chunk(x, off, end));
                off = end;
            }
        } else {
            f.push(("xsave".to_string(), FieldValue::Bytes(x.clone())));
        }
        let mut u = |name: &str, v: u64| f.push((name.to_string(), FieldValue::U64(v)));

        let nr = (self.xcrs.nr_xcrs as usize).min(self.xcrs.xcrs.len());
        u("xcrs.count", self.xcrs.nr_xcrs.into());
        for xcr in &self.xcrs.xcrs[..nr] {
            u(&format!("xcr{}", xcr.xcr), xcr.value);
        }

        let d = &self.debugregs;
        for (i, v) in d.db.iter().enumerate() {
            u(&format!("dr{i}"), *v);
        }
        u("dr6", d.dr6);
        u("dr7", d.dr7);
        u("debugregs.flags", d.flags);

        for off in (0..LAPIC_SIZE).step_by(16) {
            let b: Vec<u8> = self.lapic.regs[off..off + 4]
                .iter()
                .map(|&c| c as u8)
                .collect();
            u(&lapic_field(off), le(&b, 0, 4) as u64);
        }

        let e = &self.events;
        for (n, v) in [
            ("events.exception.injected", e.exception.injected),
            ("events.exception.nr", e.exception.nr),
            (
                "events.exception.has_error_code",
                e.exception.has_error_code,
            ),
            ("events.exception.pending", e.exception.pending),
            ("events.interrupt.injected", e.interrupt.injected),
            ("events.interrupt.nr", e.interrupt.nr),
            ("events.interrupt.soft", e.interrupt.soft),
            ("events.interrupt.shadow", e.interrupt.shadow),
            ("events.nmi.injected", e.nmi.injected),
            ("events.nmi.pending", e.nmi.pending),
            ("events.nmi.masked", e.nmi.masked),
            ("events.smi.smm", e.smi.smm),
            ("events.smi.pending", e.smi.pending),
            ("events.smi.smm_inside_nmi", e.smi.smm_inside_nmi),
            ("events.smi.latched_init", e.smi.latched_init),
            ("events.triple_fault.pending", e.triple_fault.pending),
            ("events.exception_has_payload", e.exception_has_payload),
        ] {
            u(n, v.into());
        }
        u("events.exception.error_code", e.exception.error_code.into());
        u("events.exception_payload", e.exception_payload);
        u("events.sipi_vector", e.sipi_vector.into());
        u("events.flags", e.flags.into());
        u("mp_state", self.mp_state.mp_state.into());

        for (&index, &v) in &self.msrs {
            u(&msr_field(index), v);
        }
        f
    }
}

fn segment_fields(u: &mut impl FnMut(&str, u64), n: &str, s: &kvm_segment) {
    for (field, v) in [
        ("selector", u64::from(s.selector)),
        ("base", s.base),
        ("limit", s.limit.into()),
        ("type", s.type_.into()),
        ("present", s.present.into()),
        ("dpl", s.dpl.into()),
        ("db", s.db.into()),
        ("s", s.s.into()),
        ("l", s.l.into()),
        ("g", s.g.into()),
        ("avl", s.avl.into()),
        ("unusable", s.unusable.into()),
    ] {
        u(&format!("{n}.{field}"), v);
    }
}

fn chunk(x: &[u8], start: usize, end: usize) -> (String, FieldValue) {
    (
        format!("xsave[{start:#x}..{end:#x}]"),
        FieldValue::Bytes(x[start..end].to_vec()),
    )
}

/// The whole machine at a checkpoint, as plain values: every vCPU's state
/// (one today; several when SMP guests come) and every device's state by
/// name. The VMM captures it from KVM; the oracle, the dumps and the report
/// work on it alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineState {
    pub vcpus: Vec<VcpuState>,
    pub devices: BTreeMap<String, DeviceState>,
}

/// The name of the UART in [`MachineState::devices`].
pub const UART: &str = "uart";

impl MachineState {
    /// A machine of one vCPU and a UART.
    pub fn new(vcpu: VcpuState, uart: UartState) -> Self {
        Self {
            vcpus: vec![vcpu],
            devices: BTreeMap::from([(UART.to_owned(), DeviceState::Uart(uart))]),
        }
    }

    /// A machine of one vCPU, a UART and `devices` (the in-kernel ones).
    pub fn with_devices(vcpu: VcpuState, uart: UartState, devices: Vec<DeviceState>) -> Self {
        let mut m = Self::new(vcpu, uart);
        for d in devices {
            m.devices.insert(d.name().to_owned(), d);
        }
        m
    }

    /// The devices but the UART (which dumps keep apart).
    pub fn other_devices(&self) -> Vec<DeviceState> {
        self.devices
            .values()
            .filter(|d| !matches!(d, DeviceState::Uart(_)))
            .cloned()
            .collect()
    }

    /// The boot vCPU.
    pub fn vcpu(&self) -> &VcpuState {
        &self.vcpus[0]
    }

    /// The UART's registers, when the machine has one.
    pub fn uart(&self) -> Option<&UartState> {
        match self.devices.get(UART) {
            Some(DeviceState::Uart(u)) => Some(u),
            _ => None,
        }
    }
}

/// The state of one device of the machine: the UART, and the devices KVM
/// emulates in the kernel (the 8259 pair, the IOAPIC, the PIT, kvmclock);
/// [`crate::devices`] flattens each into named fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "device", rename_all = "snake_case")]
pub enum DeviceState {
    /// The 16550 UART; compared register by register (`uart lcr`).
    Uart(UartState),
    /// The 8259 pair; fields `pic.master.*`, `pic.slave.*`.
    Pic(PicState),
    /// The IOAPIC; fields `ioapic.*`.
    Ioapic(IoapicState),
    /// The PIT; fields `pit.*`.
    Pit(PitState),
    /// kvmclock; fields `kvmclock.*`.
    Kvmclock(ClockState),
    /// The virtio-blk device (the VMM's own); fields `virtio_blk.*`.
    VirtioBlk(crate::virtio::VirtioBlkState),
}

/// The UART's registers (`vm_superio::serial::SerialState`), as a dump
/// keeps them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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

impl From<&vm_superio::serial::SerialState> for UartState {
    fn from(s: &vm_superio::serial::SerialState) -> Self {
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

impl From<&UartState> for vm_superio::serial::SerialState {
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

/// Values for tests, here and in the crates that use this one.
#[doc(hidden)]
pub mod testing {
    use super::*;

    /// A plausible 64-bit kernel state for unit tests.
    pub fn sample_state() -> VcpuState {
        let mut s = VcpuState::default();
        s.regs.rax = u64::from(kjump_abi::abi::ANSWER_JUMP);
        s.regs.rbx = 0x1111;
        s.regs.rsp = 0x30_0ff0;
        s.regs.rip = 0x20_1234;
        s.regs.rflags = 0x2;
        s.sregs.cs = kvm_segment {
            selector: 8,
            type_: 11,
            present: 1,
            s: 1,
            l: 1,
            g: 1,
            limit: 0xffff_ffff,
            ..Default::default()
        };
        s.sregs.cr0 = 0x8000_0011;
        s.sregs.cr3 = 0x9000;
        s.sregs.cr4 = 0x20;
        s.sregs.efer = 0x500;
        s.sregs.apic_base = 0xfee0_0900;
        s.sregs.gdt.base = 0x500;
        s.sregs.gdt.limit = 0x1f;
        s.xsave[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
        s.xsave[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        s.xsave[XSAVE_HEADER] = 0x3;
        s.xcrs.nr_xcrs = 1;
        s.xcrs.xcrs[0].value = 0x7;
        s.debugregs.dr6 = 0xffff_0ff0;
        s.debugregs.dr7 = 0x400;
        s.lapic.regs[0xf0] = -1; // spiv 0xff
        s.lapic.regs[0xf1] = 1;
        s.msrs.insert(0x10, 123_456);
        s.msrs.insert(0xc000_0080, 0x500);
        s.msrs.insert(0xc000_0082, 0x20_4000);
        s.msrs.insert(0x4e, 7);
        s
    }
}

#[cfg(test)]
pub(crate) mod tests {
    pub(crate) use super::testing::sample_state;
    use super::*;

    fn field(s: &VcpuState, name: &str) -> FieldValue {
        s.fields()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no field {name}"))
    }

    #[test]
    fn fields_are_named_and_unique() {
        let s = sample_state();
        let f = s.fields();
        let mut names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate field names");
        for want in [
            "rax",
            "r15",
            "rip",
            "rflags",
            "cs.selector",
            "cs.base",
            "ldt.unusable",
            "tr.type",
            "gdt.base",
            "idt.limit",
            "cr3",
            "cr8",
            "efer",
            "apic_base",
            "interrupt_bitmap[3]",
            "fcw",
            "ftw",
            "fip",
            "mxcsr",
            "st7",
            "xmm15",
            "xsave.xstate_bv",
            "xsave[0x240..0x280]",
            "xsave[0xfc0..0x1000]",
            "xcr0",
            "dr3",
            "dr7",
            "lapic.id",
            "lapic.tpr",
            "lapic.isr7",
            "lapic.irr0",
            "lapic.timer_ccr",
            "lapic.lvt_lint1",
            "lapic[0x040]",
            "events.nmi.pending",
            "mp_state",
            "msr[0x00000010] TSC",
            "msr[0xc0000082] LSTAR",
            "msr[0x0000004e]",
        ] {
            assert!(names.contains(&want), "missing field {want}");
        }
    }

    #[test]
    fn fields_decode_the_right_bytes() {
        let mut s = sample_state();
        s.xsave[160 + 16 * 3] = 0xaa; // xmm3, lowest byte
        s.xsave[160 + 16 * 3 + 15] = 0x55; // xmm3, highest byte
        s.xsave[32 + 9] = 0x40; // st0, exponent's top byte
        assert_eq!(field(&s, "xmm3"), FieldValue::U128(0x55 << 120 | 0xaa));
        assert_eq!(field(&s, "xmm2"), FieldValue::U128(0));
        assert_eq!(field(&s, "st0"), FieldValue::U128(0x40 << 72));
        assert_eq!(field(&s, "fcw"), FieldValue::U64(0x37f));
        assert_eq!(field(&s, "mxcsr"), FieldValue::U64(0x1f80));
        assert_eq!(field(&s, "xsave.xstate_bv"), FieldValue::U64(3));
        assert_eq!(field(&s, "lapic.spiv"), FieldValue::U64(0x1ff));
        assert_eq!(field(&s, "xcr0"), FieldValue::U64(7));
        assert_eq!(field(&s, "cs.l"), FieldValue::U64(1));
        assert_eq!(field(&s, "msr[0x00000010] TSC"), FieldValue::U64(123_456));
        assert_eq!(
            FieldValue::U128(0x55 << 120 | 0xaa).to_string(),
            "0x550000000000000000000000000000aa"
        );
        assert_eq!(FieldValue::Bytes(vec![0, 0xab]).to_string(), "00ab");
    }

    #[test]
    fn register_names() {
        assert_eq!(lapic_field(0x390), "lapic.timer_ccr");
        assert_eq!(lapic_field(0x1f0), "lapic.tmr7");
        assert_eq!(lapic_field(0x270), "lapic.irr7");
        assert_eq!(lapic_field(0x40), "lapic[0x040]");
        assert_eq!(msr_field(0xc000_0084), "msr[0xc0000084] SFMASK");
        assert_eq!(msr_name(0x203).as_deref(), Some("MTRR_PHYSMASK1"));
        assert_eq!(msr_name(0x40d).as_deref(), Some("MC3_STATUS"));
        assert_eq!(
            msr_name(0x4b56_4d01).as_deref(),
            Some("KVM_SYSTEM_TIME_NEW")
        );
        assert_eq!(msr_name(0x4e), None);
    }

    #[test]
    fn state_round_trips_through_json() {
        let s = sample_state();
        let j = serde_json::to_string(&s).unwrap();
        let back: VcpuState = serde_json::from_str(&j).unwrap();
        assert_eq!(back, s);
    }
}
