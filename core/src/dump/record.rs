//! What a dump keeps for `kjump resume` beyond the vCPU: the UART and the
//! oracle's record of the kernel that is away ([`ResumeRecord`]).

use super::*;
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
    /// The in-kernel devices there (version 3; none in older dumps).
    #[serde(default)]
    pub devices: Vec<crate::state::DeviceState>,
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
    /// The in-kernel devices at the dump's checkpoint (version 3; none in
    /// older dumps).
    #[serde(default)]
    pub devices: Vec<crate::state::DeviceState>,
    /// The kernel that is away (the peer of the dump's kernel), as it was
    /// when it last suspended; absent when it has not booted yet.
    pub peer: Option<SuspendRecord>,
}
