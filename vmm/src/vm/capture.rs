//! Capture and restore of a vCPU's complete state through KVM: the only
//! place that reads a [`VcpuState`] from a vCPU or writes one back.

use std::collections::BTreeMap;

use kjump_core::state::{VcpuState, XSAVE_SIZE};
use kvm_bindings::{
    KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SIPI_VECTOR, Msrs, kvm_msr_entry,
    kvm_xsave,
};
use kvm_ioctls::VcpuFd;

/// `KVM_GET_MSRS`/`KVM_SET_MSRS` take at most this many entries at once.
/// (KVM refuses a batch of `MAX_IO_MSRS`, 256, or more.)
const MSR_BATCH: usize = kvm_bindings::KVM_MAX_MSR_ENTRIES - 1;

/// Reading or writing a part of the vCPU state failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// KVM refused to read a part of the vCPU state.
    #[error("cannot read vCPU {what}")]
    Get {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM refused to write a part of the vCPU state.
    #[error("cannot restore vCPU {what}")]
    Set {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM read or wrote only part of the MSRs: the first one it stopped at.
    #[error("KVM stopped at MSR {index:#x} ({done} of {total} done)")]
    Msr {
        index: u32,
        done: usize,
        total: usize,
    },
    /// The MSR batch could not be built.
    #[error("cannot build the MSR list")]
    MsrList(#[source] vmm_sys_util::fam::Error),
    /// The saved XSAVE area does not have the size `KVM_SET_XSAVE` takes.
    #[error("saved XSAVE area is {0} bytes, expected {XSAVE_SIZE}")]
    XsaveSize(usize),
}

/// Reads the complete state of a stopped vCPU.
///
/// The order is Firecracker's, and it matters because some `KVM_GET_*`
/// ioctls change state as a side effect:
/// 1. `mp_state` first: `KVM_GET_MP_STATE` runs `kvm_apic_accept_events()`,
///    which can deliver a pending INIT/SIPI and so change registers and the
///    local APIC; everything read after it sees the settled state.
/// 2. regs, sregs, xsave, xcrs, debug registers: plain reads.
/// 3. the local APIC (KVM computes the current timer count on the way out),
///    then the MSRs (the TSC deadline is read after the APIC it depends on).
/// 4. vCPU events last: pending/injected exceptions, interrupts and NMIs
///    can be changed by the reads above (sregs carries a pending interrupt
///    too), so they are taken when nothing else will touch them.
///
/// The caller must have completed any pending I/O first (`KVM_RUN` with
/// `immediate_exit`), or the state is from before the instruction finished.
pub fn capture(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, SnapshotError> {
    let get = |what| move |source| SnapshotError::Get { what, source };
    let mp_state = vcpu.get_mp_state().map_err(get("mp_state"))?;
    let regs = vcpu.get_regs().map_err(get("regs"))?;
    let sregs = vcpu.get_sregs().map_err(get("sregs"))?;
    let xsave = vcpu.get_xsave().map_err(get("xsave"))?;
    let xcrs = vcpu.get_xcrs().map_err(get("xcrs"))?;
    let debugregs = vcpu.get_debug_regs().map_err(get("debug registers"))?;
    let lapic = vcpu.get_lapic().map_err(get("local APIC"))?;
    let msrs = get_msrs(vcpu, msr_indices)?;
    let events = vcpu.get_vcpu_events().map_err(get("events"))?;
    Ok(VcpuState {
        mp_state,
        regs,
        sregs,
        xsave: xsave.region.iter().flat_map(|w| w.to_le_bytes()).collect(),
        xcrs,
        debugregs,
        lapic,
        msrs,
        events,
    })
}

fn get_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<BTreeMap<u32, u64>, SnapshotError> {
    let mut out = BTreeMap::new();
    for batch in indices.chunks(MSR_BATCH) {
        let entries: Vec<kvm_msr_entry> = batch
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(SnapshotError::MsrList)?;
        let n = vcpu
            .get_msrs(&mut msrs)
            .map_err(|source| SnapshotError::Get {
                what: "MSRs",
                source,
            })?;
        if n != batch.len() {
            return Err(SnapshotError::Msr {
                index: batch[n],
                done: out.len() + n,
                total: indices.len(),
            });
        }
        out.extend(msrs.as_slice().iter().map(|e| (e.index, e.data)));
    }
    Ok(out)
}

/// Writes a captured state back into a vCPU (to resume from a dump).
///
/// The order follows the dependencies between the parts:
/// 1. sregs first: CR0/CR4/EFER set the mode the rest is interpreted in,
///    and `apic_base` enables the local APIC (and x2APIC mode), which
///    `KVM_SET_LAPIC` needs to know to take the APIC page.
/// 2. regs, then xcrs before xsave (XCR0 says which XSAVE components are
///    enabled), then the debug registers.
/// 3. the local APIC before the MSRs: a write to `IA32_TSC_DEADLINE` is
///    dropped unless the LVT timer is already in TSC-deadline mode. MSRs go
///    in index order, so the TSC is set before the deadline that refers to it.
/// 4. vCPU events after everything that can queue an event (sregs' interrupt
///    bitmap, the APIC), so the captured pending events win; NMI-pending and
///    the SIPI vector are marked valid so that they are restored too.
/// 5. mp_state last: whether the vCPU is runnable, halted or waiting for
///    SIPI is judged by KVM against the APIC and events just restored.
pub fn restore(vcpu: &VcpuFd, state: &VcpuState) -> Result<(), SnapshotError> {
    let set = |what| move |source| SnapshotError::Set { what, source };
    vcpu.set_sregs(&state.sregs).map_err(set("sregs"))?;
    vcpu.set_regs(&state.regs).map_err(set("regs"))?;
    vcpu.set_xcrs(&state.xcrs).map_err(set("xcrs"))?;
    set_xsave(vcpu, &state.xsave)?;
    vcpu.set_debug_regs(&state.debugregs)
        .map_err(set("debug registers"))?;
    vcpu.set_lapic(&state.lapic).map_err(set("local APIC"))?;
    set_msrs(vcpu, &state.msrs)?;
    let mut events = state.events;
    events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
    vcpu.set_vcpu_events(&events).map_err(set("events"))?;
    vcpu.set_mp_state(state.mp_state).map_err(set("mp_state"))?;
    Ok(())
}

fn set_xsave(vcpu: &VcpuFd, bytes: &[u8]) -> Result<(), SnapshotError> {
    if bytes.len() != XSAVE_SIZE {
        return Err(SnapshotError::XsaveSize(bytes.len()));
    }
    let mut xsave = kvm_xsave::default();
    for (w, b) in xsave.region.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_le_bytes(b.try_into().expect("chunks of 4"));
    }
    // SAFETY: KVM_SET_XSAVE reads `guest_fpu.uabi_size` bytes, which is
    // sizeof(struct kvm_xsave) (4096, all of `xsave`) unless the VMM asked
    // for dynamically enabled XSTATE features for its guests
    // (`arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM)`, e.g. AMX), which kjump never
    // does. `xsave` is a complete, initialised kvm_xsave that outlives the call.
    unsafe { vcpu.set_xsave(&xsave) }.map_err(|source| SnapshotError::Set {
        what: "xsave",
        source,
    })
}

/// Writes `msrs` back. KVM writes a batch in order and stops at the first
/// MSR it refuses; an MSR it refuses to write but that already holds the
/// value (a read-only one such as MTRRcap or MCG_CAP, captured so that it is
/// compared) is passed over, any other refusal is an error.
fn set_msrs(vcpu: &VcpuFd, msrs: &BTreeMap<u32, u64>) -> Result<(), SnapshotError> {
    let all: Vec<kvm_msr_entry> = msrs
        .iter()
        .map(|(&index, &data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let mut done = 0;
    while done < all.len() {
        let batch = &all[done..all.len().min(done + MSR_BATCH)];
        let list = Msrs::from_entries(batch).map_err(SnapshotError::MsrList)?;
        let n = vcpu.set_msrs(&list).map_err(|source| SnapshotError::Set {
            what: "MSRs",
            source,
        })?;
        done += n;
        if n < batch.len() {
            let refused = batch[n];
            let now = get_msrs(vcpu, &[refused.index])?;
            if now.get(&refused.index) != Some(&refused.data) {
                return Err(SnapshotError::Msr {
                    index: refused.index,
                    done,
                    total: all.len(),
                });
            }
            done += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod kvm_tests {
    use super::*;
    use kjump_abi::abi::{ANSWER_BACK, ANSWER_JUMP, CHECKPOINT_PORT};
    use kjump_core::state::msr_field;
    use kvm_bindings::kvm_regs;
    use kvm_bindings::kvm_userspace_memory_region;
    use kvm_ioctls::{Kvm, VcpuExit, VmFd};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

    const CODE: u64 = 0x1000;
    /// `in eax, dx` (0x66 prefix in 16-bit code), then `jmp` back to it.
    const LOOP: [u8; 4] = [0x66, 0xed, 0xeb, 0xfc];

    struct Guest {
        _vm: VmFd,
        vcpu: VcpuFd,
        _mem: kjump_core::GuestMem,
        msrs: Vec<u32>,
    }

    fn guest() -> Option<Guest> {
        let kvm = match Kvm::new() {
            Ok(k) => k,
            Err(e) => {
                eprintln!("no KVM ({e}): skipped");
                return None;
            }
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let mem = kjump_core::GuestMem::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        mem.write_slice(&LOOP, GuestAddress(CODE)).unwrap();
        let r = mem.iter().next().unwrap();
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: r.len(),
            userspace_addr: mem.get_host_address(GuestAddress(0)).unwrap() as u64,
            flags: 0,
        };
        // SAFETY: the region is the mapping of `mem`, which `Guest` keeps
        // alive as long as the VM.
        unsafe { vm.set_user_memory_region(region) }.unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        vcpu.set_cpuid2(
            &kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
                .unwrap(),
        )
        .unwrap();
        let mut sregs = vcpu.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).unwrap();
        let regs = kvm_regs {
            rip: CODE,
            rdx: CHECKPOINT_PORT.into(),
            rflags: 2,
            ..Default::default()
        };
        vcpu.set_regs(&regs).unwrap();
        // Keep the MSRs KVM lists that this vCPU can read.
        let msrs = kvm
            .get_msr_index_list()
            .unwrap()
            .as_slice()
            .iter()
            .copied()
            .filter(|&i| get_msrs(&vcpu, &[i]).is_ok())
            .collect();
        Some(Guest {
            _vm: vm,
            vcpu,
            _mem: mem,
            msrs,
        })
    }

    /// Runs to the checkpoint, answers, completes the `in` and captures.
    fn checkpoint(g: &mut Guest, answer: u32) -> VcpuState {
        match g.vcpu.run().unwrap() {
            VcpuExit::IoIn(port, data) => {
                assert_eq!(port, CHECKPOINT_PORT);
                data.copy_from_slice(&answer.to_le_bytes());
            }
            other => panic!("unexpected exit {other:?}"),
        }
        g.vcpu.set_kvm_immediate_exit(1);
        let r = g.vcpu.run();
        assert!(matches!(r, Err(ref e) if e.errno() == libc::EINTR), "{r:?}");
        g.vcpu.set_kvm_immediate_exit(0);
        capture(&g.vcpu, &g.msrs).unwrap()
    }

    fn diff(a: &VcpuState, b: &VcpuState) -> Vec<String> {
        let fb = b.fields();
        a.fields()
            .into_iter()
            .zip(fb)
            .filter(|((_, x), (_, y))| x != y)
            .map(|((n, x), (_, y))| format!("{n}: {x} -> {y}"))
            .collect()
    }

    #[test]
    fn checkpoint_state_is_stable_and_restores() {
        let Some(mut g) = guest() else { return };
        let names: Vec<String> = g.msrs.iter().map(|&i| msr_field(i)).collect();
        eprintln!("{} readable MSRs: {names:?}", g.msrs.len());
        let s1 = checkpoint(&mut g, ANSWER_JUMP);
        assert_eq!(s1.rax(), u64::from(ANSWER_JUMP));
        assert_eq!(s1.regs.rip, CODE + 2, "rip is after the completed `in`");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let s2 = checkpoint(&mut g, ANSWER_BACK);
        assert_eq!(s2.rax(), u64::from(ANSWER_BACK));
        let d = diff(&s1, &s2);
        eprintln!("fields that changed between two checkpoints: {d:#?}");
        assert!(d.iter().any(|l| l.starts_with("rax:")));
        assert!(d.iter().any(|l| l.starts_with("msr[0x00000010] TSC:")));
        // The standard allowlist is exactly enough for an idle vCPU.
        let allow = kjump_core::oracle::Allowlist::standard();
        assert_eq!(
            kjump_core::oracle::compare_vcpu(&s1, &s2, ANSWER_BACK, &allow),
            vec![]
        );
        let t = std::time::Instant::now();
        for _ in 0..100 {
            capture(&g.vcpu, &g.msrs).unwrap();
        }
        eprintln!(
            "capture with {} MSRs: {:?}",
            g.msrs.len(),
            t.elapsed() / 100
        );

        // Restore the first state: the vCPU reads back what was written,
        // except what runs with time.
        restore(&g.vcpu, &s1).unwrap();
        let s3 = capture(&g.vcpu, &g.msrs).unwrap();
        let d = diff(&s1, &s3);
        eprintln!("fields that changed across restore: {d:#?}");
        assert!(
            d.iter().all(|l| l.starts_with("msr[0x00000010] TSC:")),
            "{d:#?}"
        );
        // And the guest goes on from there.
        let s4 = checkpoint(&mut g, ANSWER_JUMP);
        assert_eq!(s4.regs.rip, CODE + 2);
    }
}
