//! Architectural MSRs to capture beyond KVM's MSR index list.
//!
//! `KVM_GET_MSR_INDEX_LIST` names the MSRs KVM wants a VMM to migrate, but
//! KVM reads and writes more for the guest: on the test machines it leaves
//! out TSC_AUX, the MTRRs and the machine-check banks, all of which a guest
//! can change and a kexec jump must preserve. [`ARCH_MSRS`] lists the MSRs
//! QEMU saves and restores around a migration (`kvm_get_msrs` /
//! `kvm_put_msrs` in QEMU's target/i386/kvm/kvm.c), those Firecracker
//! serializes (`arch/x86_64/msr.rs`), and a few more KVM emulates (CET,
//! AMD's VM_CR and OSVW); the machine-check banks come from MCG_CAP.
//! [`candidates`] merges them with the index list; the VMM probes each
//! candidate once and keeps the ones this KVM reads.
//!
//! Left out on purpose: the PMU counters and event selects (they count
//! while the guest runs, and KVM refuses them unless CPUID enables a PMU),
//! the VMX capability MSRs (read-only, nested only), Hyper-V and SGX MSRs
//! (features kjump does not enable), LBR and Intel PT (off), and the x2APIC
//! range (the LAPIC is captured whole with `KVM_GET_LAPIC`).

use std::borrow::Cow;

/// An MSR of the probe table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchMsr {
    /// The MSR index (`ecx` of `rdmsr`).
    pub index: u32,
    /// Its name, as in the SDM / APM without the `IA32_`/`MSR_` prefix.
    pub name: &'static str,
}

/// IA32_MCG_CAP: bits 7:0 give the number of machine-check banks.
pub const MCG_CAP: u32 = 0x179;
/// IA32_MC0_CTL: bank `i` has CTL, STATUS, ADDR, MISC at `0x400 + 4 i`.
pub const MC0_CTL: u32 = 0x400;
/// IA32_MC0_CTL2: bank `i` has CTL2 at `0x280 + i` (Intel CMCI).
pub const MC0_CTL2: u32 = 0x280;
/// The most banks KVM gives a vCPU (`KVM_MAX_MCE_BANKS`), and the most
/// the MSR range 0x400–0x47f holds.
pub const MAX_MC_BANKS: u32 = 32;

const fn msr(index: u32, name: &'static str) -> ArchMsr {
    ArchMsr { index, name }
}

/// MSRs a VMM should try to capture whether or not KVM's index list names
/// them, sorted by index. The machine-check banks are not in it: see
/// [`mc_bank_msrs`].
pub const ARCH_MSRS: &[ArchMsr] = &[
    msr(0x0000_0010, "TSC"),
    msr(0x0000_0011, "KVM_WALL_CLOCK"),
    msr(0x0000_0012, "KVM_SYSTEM_TIME"),
    msr(0x0000_001b, "APIC_BASE"),
    msr(0x0000_0034, "SMI_COUNT"),
    msr(0x0000_003a, "FEATURE_CONTROL"),
    msr(0x0000_003b, "TSC_ADJUST"),
    msr(0x0000_0048, "SPEC_CTRL"),
    msr(0x0000_008b, "BIOS_SIGN_ID"),
    msr(0x0000_009e, "SMBASE"),
    msr(0x0000_00ce, "PLATFORM_INFO"),
    msr(0x0000_00e1, "UMWAIT_CONTROL"),
    msr(0x0000_00fe, "MTRRCAP"),
    msr(0x0000_010a, "ARCH_CAPABILITIES"),
    msr(0x0000_0122, "TSX_CTRL"),
    msr(0x0000_0140, "MISC_FEATURES_ENABLES"),
    msr(0x0000_0174, "SYSENTER_CS"),
    msr(0x0000_0175, "SYSENTER_ESP"),
    msr(0x0000_0176, "SYSENTER_EIP"),
    msr(MCG_CAP, "MCG_CAP"),
    msr(0x0000_017a, "MCG_STATUS"),
    msr(0x0000_017b, "MCG_CTL"),
    msr(0x0000_01a0, "MISC_ENABLE"),
    msr(0x0000_01c4, "XFD"),
    msr(0x0000_01c5, "XFD_ERR"),
    msr(0x0000_01d9, "DEBUGCTL"),
    msr(0x0000_01db, "LASTBRANCH_FROM_IP"),
    msr(0x0000_01dc, "LASTBRANCH_TO_IP"),
    msr(0x0000_01dd, "LASTINT_FROM_IP"),
    msr(0x0000_01de, "LASTINT_TO_IP"),
    msr(0x0000_01fc, "POWER_CTL"),
    msr(0x0000_0200, "MTRR_PHYSBASE0"),
    msr(0x0000_0201, "MTRR_PHYSMASK0"),
    msr(0x0000_0202, "MTRR_PHYSBASE1"),
    msr(0x0000_0203, "MTRR_PHYSMASK1"),
    msr(0x0000_0204, "MTRR_PHYSBASE2"),
    msr(0x0000_0205, "MTRR_PHYSMASK2"),
    msr(0x0000_0206, "MTRR_PHYSBASE3"),
    msr(0x0000_0207, "MTRR_PHYSMASK3"),
    msr(0x0000_0208, "MTRR_PHYSBASE4"),
    msr(0x0000_0209, "MTRR_PHYSMASK4"),
    msr(0x0000_020a, "MTRR_PHYSBASE5"),
    msr(0x0000_020b, "MTRR_PHYSMASK5"),
    msr(0x0000_020c, "MTRR_PHYSBASE6"),
    msr(0x0000_020d, "MTRR_PHYSMASK6"),
    msr(0x0000_020e, "MTRR_PHYSBASE7"),
    msr(0x0000_020f, "MTRR_PHYSMASK7"),
    msr(0x0000_0250, "MTRR_FIX64K_00000"),
    msr(0x0000_0258, "MTRR_FIX16K_80000"),
    msr(0x0000_0259, "MTRR_FIX16K_A0000"),
    msr(0x0000_0268, "MTRR_FIX4K_C0000"),
    msr(0x0000_0269, "MTRR_FIX4K_C8000"),
    msr(0x0000_026a, "MTRR_FIX4K_D0000"),
    msr(0x0000_026b, "MTRR_FIX4K_D8000"),
    msr(0x0000_026c, "MTRR_FIX4K_E0000"),
    msr(0x0000_026d, "MTRR_FIX4K_E8000"),
    msr(0x0000_026e, "MTRR_FIX4K_F0000"),
    msr(0x0000_026f, "MTRR_FIX4K_F8000"),
    msr(0x0000_0277, "PAT"),
    msr(0x0000_02ff, "MTRR_DEF_TYPE"),
    msr(0x0000_0345, "PERF_CAPABILITIES"),
    msr(0x0000_04d0, "MCG_EXT_CTL"),
    msr(0x0000_06a0, "U_CET"),
    msr(0x0000_06a2, "S_CET"),
    msr(0x0000_06a4, "PL0_SSP"),
    msr(0x0000_06a5, "PL1_SSP"),
    msr(0x0000_06a6, "PL2_SSP"),
    msr(0x0000_06a7, "PL3_SSP"),
    msr(0x0000_06a8, "INT_SSP_TAB"),
    msr(0x0000_06e0, "TSC_DEADLINE"),
    msr(0x0000_06e1, "PKRS"),
    msr(0x0000_0d90, "BNDCFGS"),
    msr(0x0000_0da0, "XSS"),
    msr(0x4b56_4d00, "KVM_WALL_CLOCK_NEW"),
    msr(0x4b56_4d01, "KVM_SYSTEM_TIME_NEW"),
    msr(0x4b56_4d02, "KVM_ASYNC_PF_EN"),
    msr(0x4b56_4d03, "KVM_STEAL_TIME"),
    msr(0x4b56_4d04, "KVM_PV_EOI_EN"),
    msr(0x4b56_4d05, "KVM_POLL_CONTROL"),
    msr(0x4b56_4d06, "KVM_ASYNC_PF_INT"),
    msr(0x4b56_4d07, "KVM_ASYNC_PF_ACK"),
    msr(0xc000_0080, "EFER"),
    msr(0xc000_0081, "STAR"),
    msr(0xc000_0082, "LSTAR"),
    msr(0xc000_0083, "CSTAR"),
    msr(0xc000_0084, "SFMASK"),
    msr(0xc000_0100, "FS_BASE"),
    msr(0xc000_0101, "GS_BASE"),
    msr(0xc000_0102, "KERNEL_GS_BASE"),
    msr(0xc000_0103, "TSC_AUX"),
    msr(0xc000_0104, "TSC_RATIO"),
    msr(0xc001_0015, "AMD_HWCR"),
    msr(0xc001_0114, "AMD_VM_CR"),
    msr(0xc001_0117, "AMD_VM_HSAVE_PA"),
    msr(0xc001_011f, "AMD_VIRT_SPEC_CTRL"),
    msr(0xc001_0140, "AMD_OSVW_ID_LENGTH"),
    msr(0xc001_0141, "AMD_OSVW_STATUS"),
];

/// The number of machine-check banks MCG_CAP announces (bits 7:0), at most
/// [`MAX_MC_BANKS`].
pub fn mc_bank_count(mcg_cap: u64) -> u32 {
    ((mcg_cap & 0xff) as u32).min(MAX_MC_BANKS)
}

/// The MSRs of `banks` machine-check banks: each bank's CTL, STATUS, ADDR
/// and MISC from 0x400, then each bank's CTL2 from 0x280, each run in
/// index order.
pub fn mc_bank_msrs(banks: u32) -> Vec<u32> {
    let banks = banks.min(MAX_MC_BANKS);
    (MC0_CTL..MC0_CTL + 4 * banks)
        .chain(MC0_CTL2..MC0_CTL2 + banks)
        .collect()
}

/// The name of an MSR of the table or of a machine-check bank
/// (`MC3_STATUS`, `MC3_CTL2`).
pub fn msr_name(index: u32) -> Option<Cow<'static, str>> {
    if let Ok(i) = ARCH_MSRS.binary_search_by_key(&index, |m| m.index) {
        return Some(Cow::Borrowed(ARCH_MSRS[i].name));
    }
    if (MC0_CTL..MC0_CTL + 4 * MAX_MC_BANKS).contains(&index) {
        let kind = ["CTL", "STATUS", "ADDR", "MISC"][(index % 4) as usize];
        return Some(Cow::Owned(format!("MC{}_{kind}", (index - MC0_CTL) / 4)));
    }
    if (MC0_CTL2..MC0_CTL2 + MAX_MC_BANKS).contains(&index) {
        return Some(Cow::Owned(format!("MC{}_CTL2", index - MC0_CTL2)));
    }
    None
}

/// The MSRs to probe: KVM's index list, the table and the MSRs of
/// `mc_banks` machine-check banks, sorted, each once.
///
/// The MSRs `kvm_sregs` already carries ([`IN_SREGS`]: EFER, APIC_BASE,
/// FS_BASE, GS_BASE) are left out, so one change is one mismatch, under
/// the sregs field's name.
pub fn candidates(index_list: &[u32], mc_banks: u32) -> Vec<u32> {
    let mut all: Vec<u32> = index_list
        .iter()
        .copied()
        .chain(ARCH_MSRS.iter().map(|m| m.index))
        .chain(mc_bank_msrs(mc_banks))
        .filter(|i| !IN_SREGS.contains(i))
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// MSRs whose value `KVM_GET_SREGS` reports already (`efer`, `apic_base`,
/// `fs.base`, `gs.base`).
pub const IN_SREGS: [u32; 4] = [0x1b, 0xc000_0080, 0xc000_0100, 0xc000_0101];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msrs_sregs_carries_are_not_captured_twice() {
        let c = candidates(&[0x10, 0xc000_0080, 0x1b], 1);
        assert!(IN_SREGS.iter().all(|i| !c.contains(i)), "{c:x?}");
        assert!(c.contains(&0x10) && c.contains(&0x2ff) && c.contains(&0x400));
    }

    #[test]
    fn the_table_is_sorted_without_duplicates_or_unnamed_entries() {
        assert!(ARCH_MSRS.windows(2).all(|w| w[0].index < w[1].index));
        assert!(ARCH_MSRS.iter().all(|m| !m.name.is_empty()));
        let mut names: Vec<&str> = ARCH_MSRS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ARCH_MSRS.len());
    }

    #[test]
    fn the_table_has_what_the_index_list_leaves_out_here() {
        let mut wanted = vec![
            0xfe,
            0x2ff,
            0x250,
            0x258,
            0x259,
            0x277,
            0x179,
            0x17a,
            0x17b,
            0x1a0,
            0x3b,
            0x48,
            0xc000_0103,
            0x4b56_4d00,
        ];
        wanted.extend(0x200..=0x20f);
        wanted.extend(0x268..=0x26f);
        for index in wanted {
            assert!(msr_name(index).is_some(), "{index:#x} missing");
        }
    }

    #[test]
    fn the_bank_count_comes_from_mcg_cap_bits_7_to_0() {
        // KVM's default MCG_CAP: 32 banks, MCG_CTL_P (bit 8) clear.
        assert_eq!(mc_bank_count(0x20), 32);
        assert_eq!(mc_bank_count(0x0000_0000_0100_0a0a), 10);
        assert_eq!(mc_bank_count(0xff), MAX_MC_BANKS);
        assert_eq!(mc_bank_msrs(0), Vec::<u32>::new());
        assert_eq!(
            mc_bank_msrs(2),
            [
                0x400, 0x401, 0x402, 0x403, 0x404, 0x405, 0x406, 0x407, 0x280, 0x281
            ]
        );
    }

    #[test]
    fn bank_msrs_are_named_by_bank_and_kind() {
        assert_eq!(msr_name(0x400).as_deref(), Some("MC0_CTL"));
        assert_eq!(msr_name(0x40d).as_deref(), Some("MC3_STATUS"));
        assert_eq!(msr_name(0x47f).as_deref(), Some("MC31_MISC"));
        assert_eq!(msr_name(0x283).as_deref(), Some("MC3_CTL2"));
        assert_eq!(msr_name(0x480), None);
        assert_eq!(msr_name(0x2ff).as_deref(), Some("MTRR_DEF_TYPE"));
        assert_eq!(msr_name(0xc000_0103).as_deref(), Some("TSC_AUX"));
    }

    #[test]
    fn candidates_merge_sorted_and_once() {
        let list = [0xc000_0103, 0x10, 0x4b56_4d00, 0x1234];
        let c = candidates(&list, 1);
        assert!(c.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(c.len(), ARCH_MSRS.len() + 1 + 5 - IN_SREGS.len());
        for index in [0x1234, 0x10, 0x400, 0x403, 0x280, 0x2ff] {
            assert!(c.contains(&index), "{index:#x}");
        }
        assert!(!c.contains(&0x404));
    }
}
