//! Which MSRs this KVM reads for a vCPU: each candidate probed once.
//!
//! `KVM_GET_MSRS` reads its entries in order and stops at the first MSR it
//! cannot read, returning how many it read (arch/x86/kvm/x86.c,
//! `__msr_io`). So one batch reads every candidate up to the first refusal;
//! the probe records that one as refused and goes on with the batch after
//! it: every candidate is asked about exactly once, in `refused + 1`
//! ioctls.
//!
//! A read that succeeds says KVM keeps the MSR for the vCPU; for MSRs KVM
//! lists but the vCPU's CPUID does not enable, host reads succeed with 0.
//! Capturing those is harmless: they cannot change.

use kvm_bindings::{KVM_MAX_MSR_ENTRIES, Msrs, kvm_msr_entry};
use kvm_ioctls::VcpuFd;

use kjump_core::msrs::{MCG_CAP, candidates, mc_bank_count};

/// KVM refuses a `KVM_GET_MSRS` of `MAX_IO_MSRS` (256) entries or more.
const BATCH: usize = KVM_MAX_MSR_ENTRIES - 1;

/// What a probe found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MsrProbe {
    /// The MSRs KVM read, with their values, in the candidates' order.
    pub captured: Vec<(u32, u64)>,
    /// The MSRs KVM refused, in the candidates' order.
    pub refused: Vec<u32>,
}

impl MsrProbe {
    /// The indices of the captured MSRs: the list to read at every capture.
    pub fn indices(&self) -> Vec<u32> {
        self.captured.iter().map(|(index, _)| *index).collect()
    }
}

/// Why a probe could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum MsrProbeError {
    /// `KVM_GET_MSRS` failed as a whole (not one MSR refused).
    #[error("KVM_GET_MSRS of {count} MSRs from {first:#x} failed")]
    GetMsrs {
        /// The first MSR of the batch.
        first: u32,
        /// The batch's size.
        count: usize,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Reads each of `candidates` once with `KVM_GET_MSRS` and sorts them into
/// captured and refused.
pub fn probe_msrs(vcpu: &VcpuFd, candidates: &[u32]) -> Result<MsrProbe, MsrProbeError> {
    let mut probe = MsrProbe::default();
    let mut rest = candidates;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(BATCH)];
        let entries: Vec<kvm_msr_entry> = batch
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .expect("a batch of at most KVM_MAX_MSR_ENTRIES - 1 entries fits an Msrs");
        let read = vcpu
            .get_msrs(&mut msrs)
            .map_err(|source| MsrProbeError::GetMsrs {
                first: batch[0],
                count: batch.len(),
                source,
            })?;
        let read = read.min(batch.len());
        probe
            .captured
            .extend(msrs.as_slice()[..read].iter().map(|e| (e.index, e.data)));
        if read < batch.len() {
            probe.refused.push(batch[read]);
            rest = &rest[read + 1..];
        } else {
            rest = &rest[batch.len()..];
        }
    }
    Ok(probe)
}

/// Probes KVM's index list merged with the table of architectural MSRs,
/// with as many machine-check banks as the vCPU's MCG_CAP announces (none
/// if KVM refuses MCG_CAP).
pub fn probe_arch_msrs(vcpu: &VcpuFd, index_list: &[u32]) -> Result<MsrProbe, MsrProbeError> {
    let mcg_cap = probe_msrs(vcpu, &[MCG_CAP])?
        .captured
        .first()
        .map(|(_, v)| *v);
    let banks = mcg_cap.map_or(0, mc_bank_count);
    probe_msrs(vcpu, &candidates(index_list, banks))
}
