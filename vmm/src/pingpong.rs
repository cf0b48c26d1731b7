//! The `ping-pong` scenario: A→B→A→B… with every checkpoint checked.
//!
//! At each checkpoint (see [`crate::checkpoint`]) the VMM captures the vCPU
//! and the UART, brings its shadow of guest RAM up to date from the dirty
//! log, and then:
//! - at a suspend, records the kernel's registers, device state and
//!   logical view of memory;
//! - at a resume, demands that the kernel's registers, device state and
//!   view are exactly what it left;
//! - at every checkpoint, demands that the kernel that is away finds its
//!   pages parked where its kimage says (the source pages of A's list).
//!
//! The first mismatch ends the run with exit code 1 and a report.

use std::collections::BTreeMap;
use std::time::Instant;

use kjump_abi::abi::ANSWER_BACK;
use kjump_abi::control::{self, slot_by_name};
use kjump_abi::fault::{self, Fault, JumpFault, Who};
use kjump_abi::layout::PAGE_SIZE;
use vm_memory::{Bytes, GuestAddress};
use vm_superio::serial::SerialState;

use crate::checkpoint::{CheckpointId, Direction, Kernel, Tracker};
use crate::cli::{CompareMode, DumpPolicy, Inject, RunArgs};
use crate::dump::{self, DumpError, DumpInput, RamSource, ResumeRecord, SuspendRecord, UartState};
use crate::harness::HarnessEvent;
use crate::kimage::Kimage;
use crate::oracle::{self, Allowlist, View};
use crate::pages::{PageStore, Shadow};
use crate::report::{At, CheckpointRecord, ExcusedPage, Mismatch, MismatchKind, Progress};
use crate::scenario::{RunError, RunState, Scenario, Verdict, handle_message};
use crate::snapshot::{self, FieldValue, VcpuState};
use crate::symbols::Symbols;
use crate::vm::{Vm, VmEvent};

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
];

/// vCPU state the jump does not save and no kernel touches: damage to it
/// at A's suspend (a VMM or hypervisor bug) is seen only by the VMM's
/// capture, at the next resume (A's in cycle 1: B is booted, not resumed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VcpuField {
    Dr0,
    /// An MSR: its index and name.
    Msr(u32, &'static str),
    LapicTpr,
}

/// Offset of the TPR in the local APIC register page.
const LAPIC_TPR: usize = 0x80;

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostFault {
    FlipA,
    FlipB,
    SavedReg(u64, String),
    UartLcr,
    Vcpu(VcpuField),
}

/// `--inject list`: the fault catalog.
pub fn catalog() -> String {
    let mut s =
        String::from("host-side faults (--inject KIND[@CYCLE]; the VMM damages the run):\n");
    for (k, what) in HOST_FAULTS {
        s.push_str(&format!("  {k:<20} {what}\n"));
    }
    s.push_str(
        "guest-side faults (--inject KIND[@CYCLE] for kernel a, --inject b:KIND[@CYCLE] for kernel b;\n\
         or --append kjump.fault=KIND / kjump.b.fault=KIND; without @CYCLE armed from boot):\n",
    );
    for e in fault::CATALOG {
        let who = match e.who {
            Who::Both => "a, b",
            Who::AOnly => "a",
            Who::BOnly => "b",
        };
        s.push_str(&format!("  {:<20} {who:<5} {}\n", e.name, e.what));
    }
    s
}

/// Refuses, before anything boots, an unknown `--inject` kind, and one
/// that this run could not catch: in a scenario it does not belong to, or
/// in a cycle too late for the run's `--cycles` to see its effect (an
/// injected fault that the run could not catch would pass silently).
pub fn check_fault(inject: &Inject, scenario: Scenario, cycles: u64) -> Result<(), RunError> {
    let injection = parse_injection(inject)?;
    let name = match inject.cycle {
        Some(c) => format!("{}@{c}", inject.kind),
        None => inject.kind.clone(),
    };
    let refuse = |why: String| Err(RunError::FaultNotFor(format!("--inject {name}: {why}")));
    if inject.cycle == Some(0) {
        return refuse("cycles count from 1".into());
    }
    if scenario != Scenario::PingPong {
        // Only a stop fault of kernel a, at boot, means anything there.
        return match injection {
            Injection::Guest(Fault::Stop(_), Kernel::A, _) if inject.cycle.is_none() => Ok(()),
            _ => refuse(format!("needs --scenario ping-pong (this is {scenario})")),
        };
    }
    let c = inject.cycle.unwrap_or(1);
    let shows_in = match injection {
        // flip-b damages B's parked pages as A resumes: seen at the next
        // checkpoint, in the next cycle.
        Injection::Host(HostFault::FlipB) => c + 1,
        Injection::Host(_) | Injection::Guest(Fault::Stop(_), _, _) => c,
        Injection::Guest(Fault::Jump(j), k, _) => match (j, k) {
            // Recorded wrong on the way back, seen at the next jump.
            (JumpFault::WrongReentrySlot | JumpFault::LosePreserve, Kernel::A) => c + 1,
            (JumpFault::WriteOutside, _) => c,
            (_, Kernel::A) => c,
            // B's jump in cycle c comes back in cycle c + 1.
            (_, Kernel::B) => c + 1,
        },
    };
    if shows_in > cycles {
        return refuse(format!(
            "its effect shows in cycle {shows_in}, the run has {cycles} (use --cycles {shows_in} or more)"
        ));
    }
    Ok(())
}

/// What an `--inject` asks for: damage the VMM does, or a buggy kernel
/// (the fault, the kernel that is to have it, and the fault's bare name).
enum Injection<'a> {
    Host(HostFault),
    Guest(Fault, Kernel, &'a str),
}

/// Parses `--inject KIND`: a guest fault of the shared catalog
/// (`[a:|b:]NAME`), else a host fault.
fn parse_injection(inject: &Inject) -> Result<Injection<'_>, RunError> {
    let kind = inject.kind.as_str();
    let (kernel, name) = match kind.split_once(':') {
        Some(("a", n)) => (Kernel::A, n),
        Some(("b", n)) => (Kernel::B, n),
        Some(_) => return Err(RunError::UnknownFault(kind.to_owned())),
        None => (Kernel::A, kind),
    };
    if let Some(f) = Fault::parse(name) {
        return match (f.entry().who, kernel) {
            (Who::AOnly, Kernel::B) => Err(RunError::FaultNotFor(format!(
                "fault {name} is kernel a's only"
            ))),
            (Who::BOnly, Kernel::A) => Err(RunError::FaultNotFor(format!(
                "fault {name} is kernel b's only: use --inject b:{name}"
            ))),
            _ => Ok(Injection::Guest(f, kernel, name)),
        };
    }
    Ok(Injection::Host(match kind {
        "flip-a" => HostFault::FlipA,
        "flip-b" => HostFault::FlipB,
        "uart-lcr" => HostFault::UartLcr,
        "vcpu-dr0" => HostFault::Vcpu(VcpuField::Dr0),
        "vcpu-sysenter-eip" => HostFault::Vcpu(VcpuField::Msr(0x176, "SYSENTER_EIP")),
        "vcpu-tsc-aux" => HostFault::Vcpu(VcpuField::Msr(0xc000_0103, "TSC_AUX")),
        "vcpu-lapic-tpr" => HostFault::Vcpu(VcpuField::LapicTpr),
        k => match k
            .strip_prefix("saved-")
            .and_then(|r| slot_by_name(r).map(|s| (s, r)))
        {
            Some((slot, name)) => HostFault::SavedReg(slot, name.to_owned()),
            None => return Err(RunError::UnknownFault(k.to_owned())),
        },
    }))
}

/// The guest command-line words of a guest-side `--inject` (none for a
/// host-side fault).
pub fn guest_fault_words(inject: &Inject) -> Vec<String> {
    let Ok(Injection::Guest(_, kernel, name)) = parse_injection(inject) else {
        return Vec::new();
    };
    let (key, cycle_key) = match kernel {
        Kernel::A => (fault::KEY, fault::CYCLE_KEY),
        Kernel::B => (fault::B_KEY, fault::B_CYCLE_KEY),
    };
    let mut w = vec![format!("{key}={name}")];
    if let Some(c) = inject.cycle {
        w.push(format!("{cycle_key}={c}"));
    }
    w
}

/// The host-side fault of an `--inject`, if it names one.
fn parse_fault(inject: &Inject) -> Result<Option<HostFault>, RunError> {
    Ok(match parse_injection(inject)? {
        Injection::Host(h) => Some(h),
        Injection::Guest(..) => None,
    })
}

/// What the oracle keeps about one kernel.
#[derive(Default)]
pub(crate) struct KernelRecord {
    pub(crate) kimage: Option<Kimage>,
    /// The report `kimage` was read from (the `Kimage` message's arguments).
    pub(crate) kimage_args: Option<[u64; 8]>,
    /// The kernel's last suspend checkpoint.
    pub(crate) suspended_at: Option<CheckpointId>,
    pub(crate) regs: Option<VcpuState>,
    pub(crate) uart: Option<SerialState>,
    pub(crate) view: Option<View>,
    /// Where the kernel asked to be re-entered (its control page's
    /// `DATA_OWN_ENTRY`), read at its suspends.
    pub(crate) own_entry: Option<u64>,
}

/// Where a run resumed from a dump starts (`kjump resume`): the dump's
/// checkpoint, and what the oracle knew of each kernel there (kimages, the
/// record of the away kernel's last suspend, and of the dump's kernel if
/// it suspends there). Views are not given: [`run_from`] records them from
/// the VM's RAM.
pub(crate) struct Seed {
    pub(crate) at: CheckpointId,
    pub(crate) kernels: [KernelRecord; 2],
}

struct Checker<'a> {
    args: &'a RunArgs,
    tracker: Tracker,
    store: PageStore,
    shadow: Option<Shadow>,
    kernels: [KernelRecord; 2],
    symbols: Option<Symbols>,
    allow: Allowlist,
    fault: Option<HostFault>,
    fault_cycle: u64,
    injected: Option<String>,
    excused_reported: [bool; 2],
}

fn idx(k: Kernel) -> usize {
    match k {
        Kernel::A => 0,
        Kernel::B => 1,
    }
}

impl Checker<'_> {
    fn rec(&mut self, k: Kernel) -> &mut KernelRecord {
        &mut self.kernels[idx(k)]
    }

    fn kimage_a(&self) -> Result<&Kimage, RunError> {
        self.kernels[0].kimage.as_ref().ok_or(RunError::Protocol(
            "kernel a jumped without reporting its kimage",
        ))
    }

    /// The pages of `k`'s logical view.
    fn view_pages(&self, k: Kernel, shadow: &Shadow) -> Result<Vec<u64>, RunError> {
        let own = self.kernels[idx(k)]
            .kimage
            .as_ref()
            .ok_or(RunError::Protocol(
                "a kernel jumped without reporting its kimage",
            ))?;
        let (c0, c1) = own.control_range();
        let not_control = |p: &u64| !(c0..c1).contains(p);
        Ok(match k {
            Kernel::A => {
                let parking: std::collections::HashSet<u64> = own.parking_pages().collect();
                shadow
                    .pages()
                    .filter(not_control)
                    .filter(|p| !parking.contains(p))
                    .collect()
            }
            Kernel::B => {
                let a = self.kimage_a()?;
                (a.peer_start..a.peer_end)
                    .step_by(PAGE_SIZE as usize)
                    .filter(not_control)
                    .collect()
            }
        })
    }

    /// Home page -> where it is parked, for `k`'s pages while `k` is away.
    fn away_moves(&self, k: Kernel) -> Result<&BTreeMap<u64, u64>, RunError> {
        let a = self.kimage_a()?;
        Ok(if k == Kernel::A {
            a.owner_moves()
        } else {
            a.peer_moves()
        })
    }

    /// Seeds the oracle for a run that goes on from a dump taken at
    /// `seed.at`, whose RAM the VM holds: the tracker as after that
    /// checkpoint, the kernels' records, the shadow of RAM, and the views
    /// the run had there. The dump's kernel is at home: at a suspend its
    /// view is recorded as the run recorded it. The other kernel, once
    /// booted, is away: its view is recorded where its kimage parks its
    /// pages (where the run that wrote the dump had just checked them).
    fn seed(&mut self, vm: &Vm, seed: Seed) -> Result<(), RunError> {
        let at = seed.at;
        self.tracker = Tracker::resume_after(at).ok_or(RunError::Protocol(
            "the dump's checkpoint is not one of the ping-pong sequence",
        ))?;
        self.kernels = seed.kernels;
        let shadow = Shadow::build(vm.memory(), &mut self.store)?;
        let k = at.kernel;
        if at.direction == Direction::Suspend {
            let pages = self.view_pages(k, &shadow)?;
            let view = oracle::record_view(k.name(), &shadow, pages)?;
            self.rec(k).view = Some(view);
        }
        let p = k.peer();
        if self.tracker.is_away(p) {
            let pages = self.view_pages(p, &shadow)?;
            let view = oracle::record_view_moved(p.name(), &shadow, pages, self.away_moves(p)?)?;
            self.rec(p).view = Some(view);
        }
        self.shadow = Some(shadow);
        // The re-entry points: the dump's kernel's from its control page at
        // home, the away kernel's (once booted) from where it is parked.
        if self.kernels[idx(k)].kimage.is_some() {
            self.kernels[idx(k)].own_entry = self.read_own_entry(vm, k, false)?;
        }
        if self.tracker.is_away(p) && self.kernels[idx(p)].kimage.is_some() {
            self.kernels[idx(p)].own_entry = self.read_own_entry(vm, p, true)?;
        }
        Ok(())
    }

    /// What `kjump resume` needs to go on from checkpoint `id` (written
    /// into the dump): the kimage reports, the UART now, and the record of
    /// the kernel that is away.
    fn resume_record(&self, id: &CheckpointId, uart: &SerialState) -> ResumeRecord {
        let peer = id.kernel.peer();
        let r = &self.kernels[idx(peer)];
        ResumeRecord {
            scenario: self.args.scenario.name().to_owned(),
            cycles: self.args.cycles,
            kimage_a: self.kernels[0].kimage_args,
            kimage_b: self.kernels[1].kimage_args,
            uart: UartState::from(uart),
            peer: match (&r.suspended_at, &r.regs, &r.uart) {
                (Some(at), Some(regs), Some(u)) => Some(SuspendRecord {
                    kernel: peer,
                    suspended_at: *at,
                    state: regs.clone(),
                    uart: UartState::from(u),
                }),
                _ => None,
            },
        }
    }

    /// Reads a u64 of `k`'s control page at `offset`, where the page is
    /// now: at home, or parked when `k` is away.
    fn read_control(&self, vm: &Vm, k: Kernel, offset: u64, away: bool) -> Result<u64, RunError> {
        let cp = self.kernels[idx(k)]
            .kimage
            .as_ref()
            .ok_or(RunError::Protocol(
                "a kernel jumped without reporting its kimage",
            ))?
            .control;
        let home = cp + offset;
        let page = home & !(PAGE_SIZE - 1);
        let at = if away {
            self.parked_at(k, page) + (home - page)
        } else {
            home
        };
        vm.memory()
            .read_obj(GuestAddress(at))
            .map_err(|_| RunError::Protocol("a control page is outside guest RAM"))
    }

    /// Where `k` asks to be re-entered (`DATA_OWN_ENTRY` of its control
    /// page, at home or parked when `k` is away); `None` for a kernel that
    /// does not say (0: one older than the slot, e.g. in an old dump), whose
    /// entries are then not checked.
    fn read_own_entry(&self, vm: &Vm, k: Kernel, away: bool) -> Result<Option<u64>, RunError> {
        let e = self.read_control(vm, k, control::DATA_OWN_ENTRY, away)?;
        Ok((e != 0).then_some(e))
    }

    /// What an address is, for reports: a place in a kernel's control
    /// pages, or a symbol of the kernel image.
    fn place_of(&self, addr: u64) -> Option<String> {
        self.control_place(addr)
            .or_else(|| self.symbols.as_ref().and_then(|s| s.lookup(addr)))
    }

    /// What an address in a kernel's control pages is: "a's control page
    /// 0x… + 0xa40: the relocation code's GDT".
    fn control_place(&self, addr: u64) -> Option<String> {
        for k in [Kernel::A, Kernel::B] {
            if let Some(ki) = &self.kernels[idx(k)].kimage {
                let (c0, c1) = ki.control_range();
                if (c0..c1).contains(&addr) {
                    let off = addr - c0;
                    let what = match off {
                        o if o < control::CODE_MAX => {
                            let sym = self.symbols.as_ref().and_then(|s| {
                                let start = s.address_of_suffix("relocate_start")?;
                                s.lookup(start.checked_add(o)?)
                            });
                            sym.map_or_else(
                                || "relocation code".to_owned(),
                                |s| format!("copy of {s}"),
                            )
                        }
                        o if (control::RELOC_GDT..control::RELOC_GDT_PTR).contains(&o) => {
                            "the relocation code's GDT".to_owned()
                        }
                        o if (control::RELOC_IDT..control::RELOC_TSS).contains(&o) => {
                            "the relocation code's IDT".to_owned()
                        }
                        o if (control::RELOC_TSS..control::RELOC_END).contains(&o) => {
                            "the relocation code's TSS".to_owned()
                        }
                        control::STACK_TOP => "the top of the relocation code's stack".to_owned(),
                        control::DATA_PEER_ENTRY => "the peer's entry (DATA_PEER_ENTRY)".to_owned(),
                        control::DATA_OWN_ENTRY => {
                            "its own re-entry point (DATA_OWN_ENTRY)".to_owned()
                        }
                        o if (control::CONTEXT..control::CONTEXT + 8 * control::SLOTS)
                            .contains(&o) =>
                        {
                            let slot = ((o - control::CONTEXT) / 8) as usize;
                            format!("saved {}", control::SLOT_NAMES[slot])
                        }
                        o if (control::FXSAVE..control::FXSAVE + 512).contains(&o) => {
                            "saved FXSAVE area".to_owned()
                        }
                        o if o < PAGE_SIZE => "control page".to_owned(),
                        o if o < 2 * PAGE_SIZE => "swap page".to_owned(),
                        _ => "identity-map page tables".to_owned(),
                    };
                    return Some(format!(
                        "{}'s control page {c0:#x} + {off:#x}: {what}",
                        k.name()
                    ));
                }
            }
        }
        None
    }

    /// A jump must enter a booted peer exactly where the peer asked to be
    /// re-entered (the return address it pushed when it jumped to us,
    /// which the relocation code records in `DATA_PEER_ENTRY`). Checked at
    /// `k`'s suspend, before the relocation code runs: a wrong entry is
    /// reported with the slot that holds it instead of as the crash it
    /// would become. Also records `k`'s own entry for the peer's jumps.
    fn check_peer_entry(
        &mut self,
        vm: &Vm,
        k: Kernel,
        at: &At,
    ) -> Result<Option<Mismatch>, RunError> {
        self.rec(k).own_entry = self.read_own_entry(vm, k, false)?;
        let peer = k.peer();
        // A peer that never jumped has not been booted: its first entry
        // is its ELF entry, nothing to hold it to.
        let Some(expected) = self.kernels[idx(peer)].own_entry else {
            return Ok(None);
        };
        let found = self.read_control(vm, k, control::DATA_PEER_ENTRY, false)?;
        if found == expected {
            return Ok(None);
        }
        let show = |a: u64| match self.place_of(a) {
            Some(p) => format!("{a:#x} ({p})"),
            None => format!("{a:#x}"),
        };
        let cp = self.kernels[idx(k)]
            .kimage
            .as_ref()
            .map_or(0, |ki| ki.control);
        let slot = cp + control::DATA_PEER_ENTRY;
        Ok(Some(Mismatch {
            at: at.clone(),
            kind: MismatchKind::Entry,
            name: Some(format!("{}'s entry into {}", k.name(), peer.name())),
            address: Some(slot),
            location: None,
            expected: show(expected),
            actual: show(found),
            ranges: Vec::new(),
            hexdump: None,
            symbol: self.place_of(slot),
            note: Some(format!(
                "kernel {} is about to jump to kernel {} at {found:#x}, but {} left asking to be re-entered at {expected:#x}; its context would not be resumed",
                k.name(),
                peer.name(),
                peer.name()
            )),
        }))
    }

    /// Where `k`'s page `home` is while `k` is away.
    fn parked_at(&self, k: Kernel, home: u64) -> u64 {
        match (k, self.kernels[0].kimage.as_ref()) {
            (Kernel::A, Some(a)) => a.owner_parked_at(home),
            (Kernel::B, Some(a)) => a.peer_parked_at(home),
            (_, None) => home,
        }
    }

    fn excused(&mut self, k: Kernel, out: &mut Vec<ExcusedPage>) {
        if self.excused_reported[idx(k)] {
            return;
        }
        if let Some(ki) = &self.kernels[idx(k)].kimage {
            self.excused_reported[idx(k)] = true;
            let (c0, c1) = ki.control_range();
            for (i, p) in (c0..c1).step_by(PAGE_SIZE as usize).enumerate() {
                let why = match i as u64 {
                    control::PAGE_CONTROL => "control page: relocation code, saved context, stack",
                    control::PAGE_SWAP => "swap page of the relocation code",
                    _ => "identity-map page table of the relocation code",
                };
                out.push(ExcusedPage {
                    kernel: k.name().to_owned(),
                    address: p,
                    why: why.to_owned(),
                });
            }
        }
    }

    /// Injects the host-side fault when its moment has come (called after
    /// the checkpoint's state was captured).
    fn inject(&mut self, vm: &mut Vm, id: &CheckpointId) -> Result<(), RunError> {
        let Some(fault) = self.fault.clone() else {
            return Ok(());
        };
        if self.injected.is_some() || id.cycle != self.fault_cycle {
            return Ok(());
        }
        let target = |sym: &str| -> Option<(u64, String)> {
            let s = self.symbols.as_ref()?;
            let a = s.address_of_suffix(sym)? + 0x123;
            Some((a, s.lookup(a).unwrap_or_default()))
        };
        // Damage the away kernel's parked copy of its pattern: A's while B
        // runs (at B's suspend), B's while A runs (at A's resume).
        let flip = |victim: Kernel| -> Result<String, RunError> {
            let (home, sym) = target("kexec::pattern::STATIC_PATTERN")
                .ok_or(RunError::Protocol("no pattern symbol in the kernel"))?;
            let at = self.parked_at(victim, home);
            flip_byte(vm, at)?;
            Ok(format!(
                "flipped a byte of {}'s page {home:#x} ({sym}) parked at {at:#x}",
                victim.name()
            ))
        };
        let note = match (&fault, id.kernel, id.direction) {
            (HostFault::FlipA, Kernel::B, Direction::Suspend) => flip(Kernel::A)?,
            (HostFault::FlipB, Kernel::A, Direction::Resume) => flip(Kernel::B)?,
            (HostFault::SavedReg(slot, name), Kernel::A, Direction::Suspend) => {
                let cp = self.kimage_a()?.control;
                let at = GuestAddress(cp + control::CONTEXT + 8 * slot);
                let v: u64 = vm
                    .memory()
                    .read_obj(at)
                    .map_err(|_| RunError::Protocol("control page unreadable"))?;
                vm.memory()
                    .write_obj(v ^ 1, at)
                    .map_err(|_| RunError::Protocol("control page unwritable"))?;
                format!(
                    "changed a's saved {name} in its control page {cp:#x}: {v:#x} -> {:#x}",
                    v ^ 1
                )
            }
            (HostFault::Vcpu(field), Kernel::A, Direction::Suspend) => {
                change_vcpu_field(vm, *field)?
            }
            (HostFault::UartLcr, Kernel::A, Direction::Resume) => {
                let mut s = vm.serial_state();
                let old = s.line_control;
                s.line_control ^= 0x04;
                vm.set_serial_state(&s)?;
                format!(
                    "changed the UART's LCR {old:#x} -> {:#x} as a resumed",
                    s.line_control
                )
            }
            _ => return Ok(()),
        };
        log::warn!("injected: {note}");
        self.injected = Some(note);
        Ok(())
    }
}

/// A kernel's memory as it left it: its view's pages from the page store;
/// pages outside its view (its control pages, the pages parking the peer)
/// are not the kernel's and are taken as found, so that a diff of the two
/// dumps shows exactly what the oracle compared.
struct ViewRam<'a> {
    found: &'a crate::GuestMem,
    view: &'a View,
    store: &'a PageStore,
}

impl RamSource for ViewRam<'_> {
    fn ram_ranges(&self) -> Vec<(u64, u64)> {
        self.found.ram_ranges()
    }

    fn read_ram(&self, addr: u64, buf: &mut [u8]) -> Result<(), DumpError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = addr + done as u64;
            let page = at & !(PAGE_SIZE - 1);
            let off = (at - page) as usize;
            let n = (PAGE_SIZE as usize - off).min(buf.len() - done);
            match self.view.get(page).and_then(|h| self.store.get(h)) {
                Some(p) => buf[done..done + n].copy_from_slice(&p[off..off + n]),
                None => self.found.read_ram(at, &mut buf[done..done + n])?,
            }
            done += n;
        }
        Ok(())
    }
}

impl Checker<'_> {
    fn dump_path(&self, id: &CheckpointId, what: &str) -> std::path::PathBuf {
        let dir = self
            .args
            .dump_dir
            .as_deref()
            .expect("dumps only with --dump-dir");
        dir.join(format!(
            "c{:05}-{:05}-{}-{}{what}.core",
            id.cycle,
            id.index,
            id.kernel.name(),
            id.direction.name()
        ))
    }

    /// Where kernel `k` is re-entered (its `DATA_OWN_ENTRY`, the copy of
    /// `relocate_peer_returned` in its control page: what B is given as
    /// `kexec_jump_back_entry`); 0 when unknown.
    fn jump_back_entry(&self, k: Kernel) -> u64 {
        self.kernels[idx(k)].own_entry.unwrap_or(0)
    }

    fn write(
        &self,
        path: &std::path::Path,
        state: &VcpuState,
        id: &CheckpointId,
        mem: &dyn RamSource,
        size: u64,
        resume: Option<&ResumeRecord>,
    ) -> Result<(), RunError> {
        let kernel_name = self
            .args
            .kernel
            .as_ref()
            .map_or("built-in".into(), |p| p.display().to_string());
        let input = DumpInput {
            state,
            id,
            jump_back_entry: self.jump_back_entry(id.kernel),
            resumable: true,
            memory: mem,
            kernel_name: &kernel_name,
            mem_size: size,
            kjump_version: env!("CARGO_PKG_VERSION"),
            resume,
        };
        dump::write_dump(path, &input)?;
        log::info!("dump written: {}", path.display());
        Ok(())
    }

    /// `--dump every-jump`: the VM as it is at this checkpoint, resumable.
    fn dump_now(
        &self,
        vm: &Vm,
        id: &CheckpointId,
        state: &VcpuState,
        uart: &SerialState,
    ) -> Result<(), RunError> {
        self.write(
            &self.dump_path(id, ""),
            state,
            id,
            vm.memory(),
            vm.mem_size(),
            Some(&self.resume_record(id, uart)),
        )
    }

    /// `--dump on-mismatch`: the kernel when it jumped away (its registers
    /// and view) and as it is now.
    fn dump_mismatch(
        &self,
        vm: &Vm,
        id: &CheckpointId,
        state: &VcpuState,
        uart: &SerialState,
    ) -> Result<(), RunError> {
        // The kernel whose state differs: the resuming one, or else the
        // one that is away.
        let k = if id.direction == Direction::Resume {
            id.kernel
        } else {
            id.kernel.peer()
        };
        let r = &self.kernels[idx(k)];
        if let (Some(old), Some(view), Some(at)) = (&r.regs, &r.view, &r.suspended_at) {
            let ram = ViewRam {
                found: vm.memory(),
                view,
                store: &self.store,
            };
            // A mix of then and now: for diffing, not for resuming.
            self.write(
                &self.dump_path(at, "-left"),
                old,
                at,
                &ram,
                vm.mem_size(),
                None,
            )?;
        }
        self.write(
            &self.dump_path(id, "-found"),
            state,
            id,
            vm.memory(),
            vm.mem_size(),
            Some(&self.resume_record(id, uart)),
        )
    }
}

/// Changes `field` of the vCPU (the `vcpu-*` faults); says what it did.
fn change_vcpu_field(vm: &Vm, field: VcpuField) -> Result<String, RunError> {
    let vcpu = vm.vcpu_fd();
    let failed = |_| RunError::Protocol("the vcpu-* fault could not change the vCPU");
    Ok(match field {
        VcpuField::Dr0 => {
            let mut d = vcpu.get_debug_regs().map_err(failed)?;
            let old = d.db[0];
            d.db[0] ^= 0x1000;
            vcpu.set_debug_regs(&d).map_err(failed)?;
            format!("changed the vCPU's dr0 {old:#x} -> {:#x}", d.db[0])
        }
        VcpuField::Msr(index, name) => {
            let entry = |data| kvm_bindings::kvm_msr_entry {
                index,
                data,
                ..Default::default()
            };
            let mut msrs = kvm_bindings::Msrs::from_entries(&[entry(0)])
                .map_err(|_| RunError::Protocol("cannot build an MSR list"))?;
            if vcpu.get_msrs(&mut msrs).map_err(failed)? != 1 {
                return Err(RunError::Protocol("this KVM does not expose the MSR"));
            }
            let old = msrs.as_slice()[0].data;
            let new = kvm_bindings::Msrs::from_entries(&[entry(old ^ 0x5a)])
                .map_err(|_| RunError::Protocol("cannot build an MSR list"))?;
            if vcpu.set_msrs(&new).map_err(failed)? != 1 {
                return Err(RunError::Protocol("KVM refused to set the MSR"));
            }
            format!("changed the vCPU's {name} {old:#x} -> {:#x}", old ^ 0x5a)
        }
        VcpuField::LapicTpr => {
            let mut l = vcpu.get_lapic().map_err(failed)?;
            let old = l.regs[LAPIC_TPR] as u8;
            l.regs[LAPIC_TPR] = (old ^ 0x10) as _;
            vcpu.set_lapic(&l).map_err(failed)?;
            format!("changed the local APIC's TPR {old:#x} -> {:#x}", old ^ 0x10)
        }
    })
}

fn flip_byte(vm: &Vm, at: u64) -> Result<(), RunError> {
    let a = GuestAddress(at);
    let b: u8 = vm
        .memory()
        .read_obj(a)
        .map_err(|_| RunError::Protocol("fault target outside RAM"))?;
    vm.memory()
        .write_obj(b ^ 0x01, a)
        .map_err(|_| RunError::Protocol("fault target outside RAM"))
}

/// Runs ping-pong on a booted VM.
pub fn run(
    vm: &mut Vm,
    run: &mut RunState,
    args: &RunArgs,
    kernel: &[u8],
) -> Result<crate::scenario::Outcome, RunError> {
    run_from(vm, run, args, kernel, None)
}

/// Runs ping-pong on a booted VM, or (with a seed) on one built from a
/// dump, going on from the dump's checkpoint. `kernel` is the ELF the
/// symbols come from.
pub(crate) fn run_from(
    vm: &mut Vm,
    run: &mut RunState,
    args: &RunArgs,
    kernel: &[u8],
    seed: Option<Seed>,
) -> Result<crate::scenario::Outcome, RunError> {
    let symbols = Symbols::from_elf(kernel).ok();
    vm.set_checkpoint_rip(
        symbols
            .as_ref()
            .and_then(|s| s.address_of("kjump_checkpoint")),
    );
    let fault = args.inject.as_ref().map(parse_fault).transpose()?.flatten();
    let mut ck = Checker {
        args,
        tracker: Tracker::new(),
        store: PageStore::new(),
        shadow: None,
        kernels: Default::default(),
        symbols,
        allow: Allowlist::standard(),
        fault,
        fault_cycle: args.inject.as_ref().and_then(|i| i.cycle).unwrap_or(1),
        injected: None,
        excused_reported: [false; 2],
    };
    run.report = crate::report::Report::new(
        args.scenario.name(),
        args.cycles,
        compare_name(args.compare),
        ck.allow.entries(),
    );
    let progress = Progress::new(args.cycles);
    if let Some(seed) = seed {
        ck.seed(vm, seed)?;
        vm.set_console_name(ck.tracker.running().name());
        run.cycles = ck.tracker.cycles_completed();
        progress.set_cycle(run.cycles);
    }
    loop {
        let mut id = None;
        let tracker = &mut ck.tracker;
        let event = vm.run_until_event(&mut || {
            let i = tracker.next();
            id = Some(i);
            i.direction.answer()
        })?;
        let id = match event {
            VmEvent::Message(HarnessEvent::Kimage { args: a }) => {
                let k = Kimage::read(vm.memory(), &a)?;
                let kernel = Kernel::from(k.role);
                if kernel != ck.tracker.running() {
                    return Err(RunError::Protocol(
                        "a kernel reported a kimage for the other role",
                    ));
                }
                log::debug!(
                    "kernel {} kimage: {} pages, control {:#x}",
                    kernel.name(),
                    k.parked.len(),
                    k.control
                );
                ck.rec(kernel).kimage = Some(k);
                ck.rec(kernel).kimage_args = Some(a);
                continue;
            }
            VmEvent::Message(HarnessEvent::Progress { cycles }) => {
                run.cycles = cycles;
                progress.set_cycle(cycles);
                continue;
            }
            VmEvent::Message(ev) => {
                if let Some(verdict) = handle_message(vm, run, ev)? {
                    progress.finish();
                    // A's verdict: every cycle it was asked for must have been
                    // checked by the VMM too.
                    let verdict = match verdict {
                        // An injected fault must be caught.
                        Verdict::Pass if args.inject.is_some() => Verdict::Fail(format!(
                            "the injected fault {} was not caught: the run passed",
                            args.inject.as_ref().map_or("", |i| i.kind.as_str())
                        )),
                        Verdict::Pass if ck.tracker.cycles_completed() != args.cycles => {
                            Verdict::Fail(format!(
                                "kernel a reported pass after {} verified cycles, {} were asked",
                                ck.tracker.cycles_completed(),
                                args.cycles
                            ))
                        }
                        v => v,
                    };
                    return Ok(run.outcome(verdict, vm.console_name()));
                }
                continue;
            }
            VmEvent::Checkpoint { .. } => {
                id.ok_or(RunError::Protocol("checkpoint without identity"))?
            }
        };
        vm.set_console_name(ck.tracker.running().name());
        let mismatches = checkpoint(vm, &mut ck, run, &id)?;
        if !mismatches.is_empty() {
            progress.finish();
            let n = mismatches.len();
            run.report.push_mismatches(mismatches);
            let first = &run.report.mismatches[0];
            let why = format!(
                "{n} mismatch(es) at checkpoint {} (cycle {}, kernel {}, {}): first: {}",
                id.index,
                id.cycle,
                id.kernel.name(),
                id.direction.name(),
                first.explain().lines().next().unwrap_or_default()
            );
            run.cycles = ck.tracker.cycles_completed();
            return Ok(run.outcome(Verdict::Fail(why), id.kernel.name()));
        }
    }
}

/// One checkpoint: capture, update the shadow, compare, record.
fn checkpoint(
    vm: &mut Vm,
    ck: &mut Checker<'_>,
    run: &mut RunState,
    id: &CheckpointId,
) -> Result<Vec<Mismatch>, RunError> {
    let t0 = Instant::now();
    let k = id.kernel;
    // Device state as the kernel left it at this instruction.
    if ck.fault == Some(HostFault::UartLcr) {
        ck.inject(vm, id)?;
    }
    let state = snapshot::capture(vm.vcpu_fd(), vm.msr_index_list())?;
    let rip = state.regs.rip;
    let uart = vm.serial_state();
    let dirty = vm.dirty_pages()?;
    let shadow = match ck.shadow.take() {
        None => Shadow::build(vm.memory(), &mut ck.store)?,
        Some(mut s) => {
            s.update(vm.memory(), &dirty, &mut ck.store)?;
            s
        }
    };
    let capture_us = t0.elapsed().as_micros() as u64;
    let t1 = Instant::now();
    let mut out = Vec::new();
    let at = At {
        checkpoint: id.index,
        cycle: id.cycle,
        kernel: k.name().to_owned(),
        direction: id.direction.name().to_owned(),
    };

    if ck.args.compare == CompareMode::Full {
        for page in shadow.full_check(vm.memory())? {
            let h = shadow.get(page).map(|h| h.to_string()).unwrap_or_default();
            out.push(Mismatch {
                at: at.clone(),
                kind: MismatchKind::Memory,
                name: None,
                address: Some(page),
                location: Some(page),
                expected: h,
                actual: "changed".to_owned(),
                ranges: Vec::new(),
                hexdump: None,
                symbol: ck.symbols.as_ref().and_then(|s| s.lookup(page)),
                note: Some("the page changed but neither KVM's dirty log nor the VMM's write log reported it".to_owned()),
            });
        }
    }

    let mut pages_compared = 0u64;
    match id.direction {
        Direction::Suspend => {
            if ck.kernels[idx(k)].kimage.is_none() {
                return Err(RunError::Protocol(
                    "a kernel reached its checkpoint without reporting its kimage",
                ));
            }
            if let Some(m) = oracle::check_answer(&state, id.direction.answer(), "suspend") {
                out.push(Mismatch::register(&at, &m));
            }
            out.extend(ck.check_peer_entry(vm, k, &at)?);
            let pages = ck.view_pages(k, &shadow)?;
            let view = oracle::record_view(k.name(), &shadow, pages)?;
            let r = ck.rec(k);
            r.suspended_at = Some(*id);
            r.regs = Some(state.clone());
            r.uart = Some(uart.clone());
            r.view = Some(view);
            let mut ex = Vec::new();
            ck.excused(k, &mut ex);
            run.report.excused_pages.extend(ex);
        }
        Direction::Resume => {
            let r = &ck.kernels[idx(k)];
            let (Some(regs), Some(old_uart), Some(view)) = (&r.regs, &r.uart, &r.view) else {
                return Err(RunError::Protocol("a kernel resumed that never suspended"));
            };
            for mut m in oracle::compare_vcpu(regs, &state, ANSWER_BACK, &ck.allow) {
                // A register left pointing into a control page (a GDT, IDT
                // or TSS the relocation code loaded) says which.
                if let (None, FieldValue::U64(v)) = (&m.note, &m.actual) {
                    m.note = oracle::poison_of(*v).or_else(|| {
                        ck.control_place(*v)
                            .map(|p| format!("found value is in {p}"))
                    });
                }
                out.push(Mismatch::register(&at, &m));
            }
            for m in oracle::compare_uart(old_uart, &uart) {
                out.push(Mismatch::device(&at, &m));
            }
            for m in oracle::check_view(
                view,
                &shadow,
                &BTreeMap::new(),
                &ck.store,
                ck.symbols.as_ref(),
            ) {
                out.push(Mismatch::memory(&at, &m));
            }
            pages_compared += view.len() as u64;
        }
    }
    // The kernel that is away must find its pages where they are parked.
    let peer = k.peer();
    if let Some(view) = &ck.kernels[idx(peer)].view {
        let moves = ck.away_moves(peer)?;
        for m in oracle::check_view(view, &shadow, moves, &ck.store, ck.symbols.as_ref()) {
            out.push(Mismatch::memory(&at, &m));
        }
        pages_compared += view.len() as u64;
    }
    let compare_us = t1.elapsed().as_micros() as u64;

    // Host-side faults land after the state they damage was recorded.
    if !matches!(ck.fault, Some(HostFault::UartLcr) | None) {
        ck.inject(vm, id)?;
    }

    if ck.args.dump_dir.is_some() {
        match ck.args.dump {
            DumpPolicy::EveryJump => ck.dump_now(vm, id, &state, &uart)?,
            DumpPolicy::OnMismatch if !out.is_empty() => ck.dump_mismatch(vm, id, &state, &uart)?,
            _ => {}
        }
    }

    // Keep the page store bounded: only what the shadow and views use.
    if ck.store.needs_gc() {
        let live = shadow.hashes().chain(
            ck.kernels
                .iter()
                .filter_map(|r| r.view.as_ref())
                .flat_map(|v| v.hashes()),
        );
        ck.store.gc(live.collect::<Vec<_>>());
    }
    ck.shadow = Some(shadow);
    run.checkpoints += 1;
    run.report.push_checkpoint(CheckpointRecord {
        index: id.index,
        cycle: id.cycle,
        kernel: k.name().to_owned(),
        direction: id.direction.name().to_owned(),
        answer: id.direction.answer(),
        rip,
        dirty_pages: dirty.len() as u64,
        pages_compared,
        capture_us,
        compare_us,
        mismatches: out.len() as u64,
    });
    Ok(out)
}

fn compare_name(c: CompareMode) -> &'static str {
    match c {
        CompareMode::Dirty => "dirty",
        CompareMode::Full => "full",
    }
}
