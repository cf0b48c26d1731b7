//! Fault injection: damage a run on purpose, to show the oracle catches it.
//!
//! `--inject [a:|b:|c:]KIND[@CYCLE]` is parsed once, against the catalog, into
//! an [`Injection`]: a host-side fault ([`HostFault`], damage the VMM does
//! through the VM) or a guest-side one (a deliberately buggy kernel, from
//! the catalog both sides share, `kjump_abi::fault`). [`Injection::check_for`]
//! refuses, before anything boots, a fault the run could not catch.

use kjump_abi::control::slot_by_name;
use kjump_abi::fault::{self, Fault, Who};
use kjump_core::checkpoint::Kernel;

/// The faults the VMM itself can inject (`--inject KIND[@CYCLE]`).
pub const HOST_FAULTS: &[(&str, &str)] = &[
    (
        "flip-a",
        "flip a byte of a page of A, parked in a source page, while B runs",
    ),
    (
        "flip-b",
        "flip a byte of a page of B, parked in a source page, while A runs",
    ),
    (
        "flip-b-image",
        "flip a byte of B's image where A's kimage keeps it, at A's first jump (cycle 1)",
    ),
    (
        "saved-REG",
        "change a saved register (e.g. saved-rbx) in A's control page after A suspends",
    ),
    (
        "uart-lcr",
        "change the UART's line control register when A resumes, behind its back",
    ),
    (
        "vcpu-dr0",
        "change debug register DR0 of the vCPU at A's suspend (no kernel saves it)",
    ),
    (
        "vcpu-sysenter-eip",
        "change MSR SYSENTER_EIP of the vCPU at A's suspend (no kernel saves it)",
    ),
    (
        "vcpu-tsc-aux",
        "change MSR TSC_AUX (which this KVM does not list) at A's suspend",
    ),
    (
        "vcpu-lapic-tpr",
        "change the local APIC's task-priority register at A's suspend",
    ),
    (
        "vcpu-mtrr",
        "change MSR MTRR_DEF_TYPE (which this KVM does not list) when A resumes, behind its back",
    ),
    (
        "vcpu-mc0-ctl",
        "change MSR MC0_CTL, machine-check bank 0 (not listed by KVM), at A's suspend",
    ),
    (
        "irqchip-pic-imr",
        "mask IRQ 3 in the master 8259 (KVM_SET_IRQCHIP) when A resumes, behind its back",
    ),
    (
        "irqchip-ioapic-mask",
        "flip the mask of IOAPIC pin 4 when A resumes, behind its back",
    ),
    (
        "pit-count",
        "change the PIT's channel 0 count (KVM_SET_PIT2) when A resumes",
    ),
    (
        "kvmclock-backwards",
        "set the KVM clock back by a second (KVM_SET_CLOCK) when A resumes",
    ),
    (
        "image-flip",
        "hibernate: flip a byte of A's image on the disk between the two VMs",
    ),
    (
        "image-truncate",
        "hibernate: cut the disk short of A's image between the two VMs",
    ),
    (
        "image-magic",
        "hibernate: change the magic of A's image on the disk between the two VMs",
    ),
];

/// vCPU state the jump does not save and no kernel touches: damage to it
/// at A's suspend (a VMM or hypervisor bug) is seen only by the VMM's
/// capture, at the next resume (A's in cycle 1: B is booted, not resumed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuField {
    Dr0,
    /// An MSR: its index, name, and the bits to flip (valid for the MSR,
    /// or KVM refuses the write).
    Msr(u32, &'static str, u64),
    LapicTpr,
}

impl VcpuField {
    /// Whether a kernel saves and restores this field across its jump (the
    /// MTRRs, as Linux's syscore does): damage to it must land as the
    /// kernel resumes, after its restore, or the kernel repairs it.
    pub fn kernel_restores(self) -> bool {
        matches!(self, Self::Msr(0x2ff, ..))
    }
}

/// State of an in-kernel device the VMM can change behind a kernel's back
/// (the device faults land as A resumes, before the capture).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceField {
    /// The master 8259's interrupt mask register.
    PicImr,
    /// The mask bit of IOAPIC pin 4's redirection entry.
    IoapicMask,
    /// The PIT's channel 0 count.
    PitCount,
    /// The KVM clock, set back.
    ClockBack,
}

/// Damage the VMM does.
/// Damage to the hibernation image on the disk, between the two VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageDamage {
    /// One byte of the last range's data flipped.
    Flip,
    /// The disk cut short by a page of the image's end.
    Truncate,
    /// The image header's magic changed.
    Magic,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostFault {
    /// Hibernate: the image on the disk damaged between the VMs.
    Image(ImageDamage),
    FlipA,
    FlipB,
    /// A byte of B's image in A's source pages, before the first jump.
    FlipBImage,
    /// A saved register in A's control page: its slot and name.
    SavedReg(u64, String),
    UartLcr,
    Vcpu(VcpuField),
    Device(DeviceField),
}

/// What an `--inject` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InjectKind {
    Host(HostFault),
    /// A buggy kernel: the fault, the kernel that is to have it, and the
    /// fault's bare name.
    Guest {
        fault: Fault,
        kernel: Kernel,
        name: String,
    },
    /// A buggy restore kernel (hibernate's kernel c, `c:KIND`): the
    /// fault and its bare name, for c's command line.
    Restore {
        fault: Fault,
        name: String,
    },
}

/// An `--inject`, parsed against the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    /// As given (`b:forget-r12`), without the cycle.
    pub spec: String,
    pub kind: InjectKind,
    /// The cycle to inject at (the scenario's default when absent).
    pub cycle: Option<u64>,
}

/// Why an `--inject` was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    /// No such fault.
    #[error("unknown fault {0:?} (see --inject list)")]
    Unknown(String),
    /// A fault this run could not have or catch.
    #[error("{0} (see --inject list)")]
    NotFor(String),
}

impl Injection {
    /// Parses `[a:|b:|c:]KIND` (with an optional cycle): a guest fault of
    /// the shared catalog, else a host fault.
    pub fn parse(spec: &str, cycle: Option<u64>) -> Result<Self, FaultError> {
        let (kernel, name) = match spec.split_once(':') {
            Some(("a", n)) => (Kernel::A, n),
            Some(("b", n)) => (Kernel::B, n),
            Some(("c", n)) => {
                return match Fault::parse(n) {
                    Some(fault) if fault.entry().who == Who::COnly => Ok(Self {
                        spec: spec.to_owned(),
                        kind: InjectKind::Restore {
                            fault,
                            name: n.to_owned(),
                        },
                        cycle,
                    }),
                    Some(_) => Err(FaultError::NotFor(format!(
                        "fault {n} is not the restore kernel's (kernel c has no-trampoline, leave-msr, leave-pit)"
                    ))),
                    None => Err(FaultError::Unknown(spec.to_owned())),
                };
            }
            Some(_) => return Err(FaultError::Unknown(spec.to_owned())),
            None => (Kernel::A, spec),
        };
        let kind = if let Some(f) = Fault::parse(name) {
            match (f.entry().who, kernel) {
                (Who::COnly, _) => {
                    return Err(FaultError::NotFor(format!(
                        "fault {name} is the restore kernel's: use --inject c:{name}"
                    )));
                }
                (Who::AOnly, Kernel::B) => {
                    return Err(FaultError::NotFor(format!(
                        "fault {name} is kernel a's only"
                    )));
                }
                (Who::BOnly, Kernel::A) => {
                    return Err(FaultError::NotFor(format!(
                        "fault {name} is kernel b's only: use --inject b:{name}"
                    )));
                }
                _ => InjectKind::Guest {
                    fault: f,
                    kernel,
                    name: name.to_owned(),
                },
            }
        } else {
            InjectKind::Host(match spec {
                "flip-a" => HostFault::FlipA,
                "flip-b" => HostFault::FlipB,
                "flip-b-image" => HostFault::FlipBImage,
                "uart-lcr" => HostFault::UartLcr,
                "vcpu-dr0" => HostFault::Vcpu(VcpuField::Dr0),
                "vcpu-sysenter-eip" => HostFault::Vcpu(VcpuField::Msr(0x176, "SYSENTER_EIP", 0x5a)),
                "vcpu-tsc-aux" => HostFault::Vcpu(VcpuField::Msr(0xc000_0103, "TSC_AUX", 0x5a)),
                "vcpu-lapic-tpr" => HostFault::Vcpu(VcpuField::LapicTpr),
                // Memory type 0 (UC) <-> 6 (WB): both valid.
                "vcpu-mtrr" => HostFault::Vcpu(VcpuField::Msr(0x2ff, "MTRR_DEF_TYPE", 0x6)),
                // MCi_CTL takes 0 or all ones only.
                "vcpu-mc0-ctl" => HostFault::Vcpu(VcpuField::Msr(0x400, "MC0_CTL", u64::MAX)),
                "irqchip-pic-imr" => HostFault::Device(DeviceField::PicImr),
                "irqchip-ioapic-mask" => HostFault::Device(DeviceField::IoapicMask),
                "pit-count" => HostFault::Device(DeviceField::PitCount),
                "kvmclock-backwards" => HostFault::Device(DeviceField::ClockBack),
                "image-flip" => HostFault::Image(ImageDamage::Flip),
                "image-truncate" => HostFault::Image(ImageDamage::Truncate),
                "image-magic" => HostFault::Image(ImageDamage::Magic),
                k => match k
                    .strip_prefix("saved-")
                    .and_then(|r| slot_by_name(r).map(|s| (s, r)))
                {
                    Some((slot, name)) => HostFault::SavedReg(slot, name.to_owned()),
                    None => return Err(FaultError::Unknown(k.to_owned())),
                },
            })
        };
        Ok(Self {
            spec: spec.to_owned(),
            kind,
            cycle,
        })
    }

    /// `KIND` or `KIND@CYCLE`, as given.
    pub fn name(&self) -> String {
        match self.cycle {
            Some(c) => format!("{}@{c}", self.spec),
            None => self.spec.clone(),
        }
    }

    /// The cycle a host fault lands in (cycle 1 unless given).
    pub fn host_cycle(&self) -> u64 {
        self.cycle.unwrap_or(1)
    }

    /// The host-side fault, if this is one.
    pub fn host(&self) -> Option<&HostFault> {
        match &self.kind {
            InjectKind::Host(h) => Some(h),
            InjectKind::Guest { .. } | InjectKind::Restore { .. } => None,
        }
    }

    /// The restore kernel's command-line word of a `c:` fault.
    pub fn restore_word(&self) -> Option<String> {
        match &self.kind {
            InjectKind::Restore { name, .. } => Some(format!("{}={name}", fault::KEY)),
            _ => None,
        }
    }

    /// The guest command-line words of a guest-side fault (none for a
    /// host-side one).
    pub fn guest_words(&self) -> Vec<String> {
        let InjectKind::Guest { kernel, name, .. } = &self.kind else {
            return Vec::new();
        };
        let (key, cycle_key) = match kernel {
            Kernel::A => (fault::KEY, fault::CYCLE_KEY),
            Kernel::B => (fault::B_KEY, fault::B_CYCLE_KEY),
        };
        let mut w = vec![format!("{key}={name}")];
        if let Some(c) = self.cycle {
            w.push(format!("{cycle_key}={c}"));
        }
        w
    }
}

/// Takes the fault words out of guest command-line words (`--append
/// kjump.fault=KIND kjump.fault_cycle=N`, or `kjump.b.…` for kernel b) and
/// parses them as `--inject` would, so that such a fault is validated and
/// judged exactly as an injected one. Returns the other words and the
/// fault, if any; more than one fault is refused.
pub fn take_guest_fault(words: &[String]) -> Result<(Vec<String>, Option<Injection>), FaultError> {
    let mut rest = Vec::new();
    let mut found: Vec<(Kernel, String)> = Vec::new();
    let mut cycles: [Option<u64>; 2] = [None, None];
    for w in words {
        let (k, v) = w.split_once('=').unwrap_or((w.as_str(), ""));
        let bad_cycle = || FaultError::NotFor(format!("{w}: not a cycle number"));
        match k {
            fault::KEY => found.push((Kernel::A, v.to_owned())),
            fault::B_KEY => found.push((Kernel::B, v.to_owned())),
            fault::CYCLE_KEY => {
                cycles[0] = Some(kjump_abi::cmdline::parse_u64(v).ok_or_else(bad_cycle)?)
            }
            fault::B_CYCLE_KEY => {
                cycles[1] = Some(kjump_abi::cmdline::parse_u64(v).ok_or_else(bad_cycle)?)
            }
            _ => rest.push(w.clone()),
        }
    }
    match found.as_slice() {
        [] if cycles.iter().any(Option::is_some) => Err(FaultError::NotFor(
            "--append names a fault cycle but no fault".into(),
        )),
        [] => Ok((rest, None)),
        [(k, name)] => {
            let spec = match k {
                Kernel::A => name.clone(),
                Kernel::B => format!("b:{name}"),
            };
            let inj = Injection::parse(&spec, cycles[k.idx()])?;
            Ok((rest, Some(inj)))
        }
        _ => Err(FaultError::NotFor(
            "--append names more than one fault; one at a time".into(),
        )),
    }
}

/// `--inject list`: the fault catalog.
pub fn catalog() -> String {
    let mut s =
        String::from("host-side faults (--inject KIND[@CYCLE]; the VMM damages the run):\n");
    for (k, what) in HOST_FAULTS {
        s.push_str(&format!("  {k:<20} {what}\n"));
    }
    s.push_str(
        "guest-side faults (--inject KIND[@CYCLE] for kernel a, --inject b:KIND[@CYCLE] for kernel b,\n\
         --inject c:KIND for hibernate's restore kernel c;\n\
         or --append kjump.fault=KIND / kjump.b.fault=KIND; without @CYCLE armed from boot):\n",
    );
    for e in fault::CATALOG {
        let who = match e.who {
            Who::Both => "a, b",
            Who::AOnly => "a",
            Who::BOnly => "b",
            Who::COnly => "c",
        };
        s.push_str(&format!("  {:<20} {who:<5} {}\n", e.name, e.what));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_once_into_typed_values() {
        let i = Injection::parse("b:forget-r12", Some(3)).unwrap();
        assert_eq!(i.name(), "b:forget-r12@3");
        assert!(i.host().is_none());
        assert_eq!(
            i.guest_words(),
            ["kjump.b.fault=forget-r12", "kjump.b.fault_cycle=3"]
        );
        let h = Injection::parse("saved-rbx", None).unwrap();
        assert!(matches!(h.host(), Some(HostFault::SavedReg(_, n)) if n == "rbx"));
        assert!(h.guest_words().is_empty());
        assert_eq!(
            Injection::parse("no-such", None),
            Err(FaultError::Unknown("no-such".into()))
        );
        assert!(matches!(
            Injection::parse("write-outside", None),
            Err(FaultError::NotFor(_))
        ));
        assert!(matches!(
            Injection::parse("c:ud2", None),
            Err(FaultError::NotFor(_))
        ));
        assert!(matches!(
            Injection::parse("d:ud2", None),
            Err(FaultError::Unknown(_))
        ));
        assert!(matches!(
            Injection::parse("no-trampoline", None),
            Err(FaultError::NotFor(_))
        ));
        let c = Injection::parse("c:no-trampoline", None).unwrap();
        assert!(c.guest_words().is_empty() && c.host().is_none());
        assert_eq!(
            c.restore_word().as_deref(),
            Some("kjump.fault=no-trampoline")
        );
    }
}
