//! The crash scenario's checks of what the capture kernel did, beyond
//! the vmcore's pages (`hibimage::check_pages`): the registers of its
//! `NT_PRSTATUS` note against the VMM's own capture of the crashed kernel,
//! and the pages the capture kernel wrote where it must not.

use std::io;

use crate::checkpoint::Kernel;
use crate::hibimage::{DiskImage, page_mismatch};
use crate::oracle::Oracle;
use crate::pages::PAGE_SIZE;
use crate::report::{At, Mismatch, MismatchKind};

/// Checks that the pages `written` (what the dirty log reported written
/// since kernel `k`'s checkpoint) that `allowed` does not allow hold what
/// `k` left there: a page written other than it was left is a memory
/// mismatch of `k` ("`who` wrote ..."). Pages outside `k`'s view are not
/// `k`'s and not checked.
pub fn check_untouched(
    oracle: &Oracle,
    k: Kernel,
    found: &crate::GuestMem,
    written: &[u64],
    allowed: impl Fn(u64) -> bool,
    who: &str,
    at: &At,
) -> Result<Vec<Mismatch>, io::Error> {
    use crate::dump::RamSource;
    use vm_memory::Bytes;
    let mut out = Vec::new();
    let (Some((_, _, left)), Some(view)) = (oracle.left(k, found), oracle.record(k).view.as_ref())
    else {
        return Ok(out);
    };
    let mut expected = Box::new([0u8; PAGE_SIZE]);
    let mut actual = Box::new([0u8; PAGE_SIZE]);
    for &p in written {
        if allowed(p) || view.get(p).is_none() {
            continue;
        }
        left.read_ram(p, &mut expected[..])
            .map_err(|e| io::Error::other(e.to_string()))?;
        found
            .read_slice(&mut actual[..], vm_memory::GuestAddress(p))
            .map_err(|e| io::Error::other(e.to_string()))?;
        if *actual != *expected {
            out.push(Mismatch {
                name: Some(format!("page written by {who}")),
                ..page_mismatch(
                    at,
                    oracle.symbols(),
                    (p, p),
                    &expected,
                    &actual,
                    format!(
                        "{who} wrote kernel {}'s page {p:#x}, outside the memory it may write",
                        k.name()
                    ),
                )
            });
        }
    }
    Ok(out)
}

/// Checks the registers of a vmcore's `NT_PRSTATUS` note against the vCPU
/// state `vcpu` of the kernel it claims to hold (the VMM's own capture at
/// the kernel's last checkpoint): every register of `pr_reg` must be the
/// same. One register mismatch per register that differs, named.
pub fn check_prstatus(image: &DiskImage, vcpu: &crate::state::VcpuState, at: &At) -> Vec<Mismatch> {
    use kjump_abi::vmcore::{PRSTATUS_REG_NAMES, prstatus_regs};
    let expected = crate::dump::write::prstatus_regs(vcpu);
    let Some(found) = image.prstatus().and_then(prstatus_regs) else {
        return vec![Mismatch {
            at: at.clone(),
            kind: MismatchKind::Register,
            name: Some("NT_PRSTATUS".to_owned()),
            address: None,
            location: None,
            expected: "a note".to_owned(),
            actual: "(none)".to_owned(),
            ranges: Vec::new(),
            hexdump: None,
            symbol: None,
            note: Some("the vmcore has no NT_PRSTATUS note".to_owned()),
        }];
    };
    PRSTATUS_REG_NAMES
        .iter()
        .zip(expected.iter().zip(found.iter()))
        .filter(|(_, (e, f))| e != f)
        .map(|(name, (e, f))| Mismatch {
            at: at.clone(),
            kind: MismatchKind::Register,
            name: Some((*name).to_owned()),
            address: None,
            location: None,
            expected: format!("{e:#x}"),
            actual: format!("{f:#x}"),
            ranges: Vec::new(),
            hexdump: None,
            symbol: None,
            note: Some(format!(
                "the vmcore's NT_PRSTATUS holds {name} {f:#x}; the kernel had {e:#x} at its checkpoint"
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kjump_abi::hibimage::{Range, checksum, header_size, write_vmcore_headers};

    fn vmcore(path: &std::path::Path, regs: &[u64; kjump_abi::vmcore::PRSTATUS_NREGS]) {
        let data = vec![3u8; PAGE_SIZE];
        let r = [Range {
            start: 0x10_0000,
            len: PAGE_SIZE as u64,
            checksum: checksum(&data),
        }];
        let mut img = vec![0u8; header_size(1) as usize];
        let p = kjump_abi::vmcore::prstatus(regs, false);
        write_vmcore_headers(&mut img, regs[16], &r, &p).unwrap();
        img.extend_from_slice(&data);
        std::fs::write(path, img).unwrap();
    }

    #[test]
    fn every_register_of_nt_prstatus_is_compared_and_named() {
        let mut vcpu = crate::state::VcpuState::default();
        vcpu.regs.rip = 0x20_1001;
        vcpu.regs.rsp = 0x22_d818;
        vcpu.regs.rax = 0x504d_554a;
        vcpu.sregs.cs.selector = 8;
        let regs = crate::dump::write::prstatus_regs(&vcpu);
        let at = At {
            checkpoint: 0,
            cycle: 1,
            kernel: "a".into(),
            direction: "vmcore".into(),
        };
        let p = std::env::temp_dir().join(format!("kjump-vmcore-{}", std::process::id()));
        vmcore(&p, &regs);
        let img = DiskImage::open_vmcore(&p).unwrap();
        assert!(check_prstatus(&img, &vcpu, &at).is_empty());
        // The crash notes with another rsp: that register, named.
        let mut stale = regs;
        stale[19] = 0x2ff_7000;
        vmcore(&p, &stale);
        let img = DiskImage::open_vmcore(&p).unwrap();
        let m = check_prstatus(&img, &vcpu, &at);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].name.as_deref(), Some("rsp"));
        assert_eq!(m[0].expected, "0x22d818");
        assert_eq!(m[0].actual, "0x2ff7000");
        // A resumable image is no vmcore.
        assert!(matches!(
            DiskImage::open(&p),
            Err(crate::hibimage::DiskImageError::Image(
                kjump_abi::hibimage::ImageError::NotResumable
            ))
        ));
        std::fs::remove_file(&p).unwrap();
    }
}
