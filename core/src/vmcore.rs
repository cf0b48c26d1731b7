//! The crash scenario's checks of what the capture kernel did, beyond
//! the vmcore's pages (`hibimage::check_pages`): the registers of its
//! `NT_PRSTATUS` note against the VMM's own capture of the crashed kernel,
//! and the pages the capture kernel wrote where it must not.

use std::io;

use crate::checkpoint::Kernel;
use crate::hibimage::{DiskImage, page_mismatch};
use crate::oracle::Oracle;
use crate::pages::{PAGE_SIZE, Page};
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
        if !same_page(&left, p, found, p, (&mut expected, &mut actual))? {
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

/// Reads kernel page `p` as `left` holds it into `expected` and `found`'s
/// page `at` into `actual`: whether they are the same.
fn same_page(
    left: &crate::oracle::LeftRam<'_>,
    p: u64,
    found: &crate::GuestMem,
    at: u64,
    (expected, actual): (&mut Page, &mut Page),
) -> Result<bool, io::Error> {
    use crate::dump::RamSource;
    use vm_memory::Bytes;
    let other = |e: &dyn std::fmt::Display| io::Error::other(e.to_string());
    left.read_ram(p, &mut expected[..]).map_err(|e| other(&e))?;
    found
        .read_slice(&mut actual[..], vm_memory::GuestAddress(at))
        .map_err(|e| other(&e))?;
    Ok(*actual == *expected)
}

/// Checks a vmcore's `NT_PRSTATUS` note against the vCPU state `vcpu` of
/// the kernel it claims to hold (the VMM's own capture at the kernel's
/// last checkpoint): every register of `pr_reg` must be the same, and
/// every other byte of the note what the contract puts there
/// ([`kjump_abi::vmcore::prstatus`]: `pr_pid` 1, no signal, no times, no
/// FPU registers; a note claiming a signal or FPU state the kernel never
/// had is as wrong as a wrong register). One mismatch per register or
/// field that differs, named.
pub fn check_prstatus(image: &DiskImage, vcpu: &crate::state::VcpuState, at: &At) -> Vec<Mismatch> {
    use kjump_abi::vmcore::{PRSTATUS_FIELDS, prstatus, prstatus_regs};
    let expected = crate::dump::write::prstatus_regs(vcpu);
    let contract = prstatus(&expected, false);
    let note = image.prstatus().unwrap_or_default();
    let fields: Vec<Mismatch> = PRSTATUS_FIELDS
        .iter()
        .filter(|(_, o, n)| note.len() >= o + n && note[*o..o + n] != contract[*o..o + n])
        .map(|&(name, o, n)| {
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            let (e, f) = (hex(&contract[o..o + n]), hex(&note[o..o + n]));
            let why = format!(
                "the vmcore's NT_PRSTATUS holds {name} = {f} (bytes {o}..{}, little-endian); the crashed kernel's is {e}",
                o + n
            );
            Mismatch::named(at, MismatchKind::Register, format!("NT_PRSTATUS.{name}"), (e, f), why)
        })
        .collect();
    let Some(found) = image.prstatus().and_then(prstatus_regs) else {
        return vec![Mismatch::named(
            at,
            MismatchKind::Register,
            "NT_PRSTATUS".to_owned(),
            ("a note".to_owned(), "(none)".to_owned()),
            "the vmcore has no NT_PRSTATUS note".to_owned(),
        )];
    };
    let mut out = compare_regs(&expected, &found, "the vmcore's NT_PRSTATUS holds", at);
    out.extend(fields);
    out
}

/// One register mismatch per register of `found` (what `holder`, "… holds", holds,
/// in `PRSTATUS_REG_NAMES` order) that differs from `expected` (the
/// kernel's at its checkpoint), named.
fn compare_regs(
    expected: &[u64; kjump_abi::vmcore::PRSTATUS_NREGS],
    found: &[u64; kjump_abi::vmcore::PRSTATUS_NREGS],
    holder: &str,
    at: &At,
) -> Vec<Mismatch> {
    kjump_abi::vmcore::PRSTATUS_REG_NAMES
        .iter()
        .zip(expected.iter().zip(found.iter()))
        .filter(|(_, (e, f))| e != f)
        .map(|(name, (e, f))| {
            Mismatch::named(
                at,
                MismatchKind::Register,
                (*name).to_owned(),
                (format!("{e:#x}"), format!("{f:#x}")),
                format!("{holder} {name} {f:#x}; the kernel had {e:#x} at its checkpoint"),
            )
        })
        .collect()
}

/// Checks the crash notes a crashed kernel left for the capture kernel
/// (`found`: its saved context read at `notes`, as
/// [`kjump_abi::vmcore::notes_regs`] orders it, with the crash
/// information's rip) against `vcpu`, the VMM's own capture at its panic
/// checkpoint: one register mismatch per register that differs, named.
pub fn check_crash_notes(
    found: &[u64; kjump_abi::vmcore::PRSTATUS_NREGS],
    notes: u64,
    vcpu: &crate::state::VcpuState,
    at: &At,
) -> Vec<Mismatch> {
    let expected = crate::dump::write::prstatus_regs(vcpu);
    compare_regs(
        &expected,
        found,
        &format!("the crash notes at {notes:#x} (rip: the crash information) hold"),
        at,
    )
}

/// Checks the backup of kernel `k`'s low memory `[start, end)` the
/// crashed kernel made before entering the capture kernel: the page at
/// `backup_at + (p - start)` of `found` must hold `k`'s page `p` as its
/// checkpoint left it. A page that differs is a memory mismatch of `k`,
/// named by `k`'s page (and symbol), looked for at its backup page.
pub fn check_backup(
    oracle: &Oracle,
    k: Kernel,
    found: &crate::GuestMem,
    (start, end): (u64, u64),
    backup_at: u64,
    at: &At,
) -> Result<Vec<Mismatch>, io::Error> {
    let mut out = Vec::new();
    let Some((_, _, left)) = oracle.left(k, found) else {
        return Ok(out);
    };
    let mut expected = Box::new([0u8; PAGE_SIZE]);
    let mut actual = Box::new([0u8; PAGE_SIZE]);
    for p in (start..end).step_by(PAGE_SIZE) {
        let b = backup_at + (p - start);
        if !same_page(&left, p, found, b, (&mut expected, &mut actual))? {
            out.push(page_mismatch(
                at,
                oracle.symbols(),
                (p, b),
                &expected,
                &actual,
                format!(
                    "kernel {}'s page {p:#x} is not in its backup at {b:#x} when the capture kernel is entered",
                    k.name()
                ),
            ));
        }
    }
    Ok(out)
}

/// Checks the vmcore's ELF entry (`e_entry`: where the crashed kernel
/// was, its rip at death) against `vcpu`'s rip, the VMM's own capture:
/// one register mismatch named `e_entry` when they differ.
pub fn check_entry(image: &DiskImage, vcpu: &crate::state::VcpuState, at: &At) -> Option<Mismatch> {
    let (e, f) = (vcpu.regs.rip, image.entry());
    (e != f).then(|| {
        Mismatch::named(
            at,
            MismatchKind::Register,
            "e_entry".to_owned(),
            (format!("{e:#x}"), format!("{f:#x}")),
            format!(
                "the vmcore's ELF entry (the crashed kernel's rip) is {f:#x}; the kernel was at {e:#x}"
            ),
        )
    })
}

/// The runs `[start, end)` of the pages `pages` (ascending page
/// addresses), adjacent pages merged.
pub fn page_runs(pages: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let page = PAGE_SIZE as u64;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for p in pages {
        match runs.last_mut() {
            Some((_, end)) if *end == p => *end += page,
            _ => runs.push((p, p + page)),
        }
    }
    runs
}

/// Checks that every page the image (`what`: "vmcore", "image") holds is
/// one of kernel `k`'s pages it should hold (`ks`: for a vmcore a page of
/// `k`'s view at its checkpoint outside the reserved region; for a
/// hibernation image RAM outside B's region): an image that holds pages
/// the kernel never had (beyond its RAM, in the region reserved for the
/// capture kernel, where the restore kernel runs) claims memory that was
/// not there. One memory mismatch per run of such pages.
pub fn check_claimed(
    image: &DiskImage,
    what: &str,
    k: Kernel,
    ks: impl Fn(u64) -> bool,
    at: &At,
) -> Vec<Mismatch> {
    let pages = image
        .ranges()
        .iter()
        .flat_map(|r| (r.start..r.start.saturating_add(r.len)).step_by(PAGE_SIZE))
        .filter(|&p| !ks(p));
    page_runs(pages)
        .into_iter()
        .map(|(s, e)| {
            let n = (e - s) / PAGE_SIZE as u64;
            Mismatch {
                address: Some(s),
                location: Some(s),
                ..Mismatch::named(
                    at,
                    MismatchKind::Memory,
                    format!("{n} page(s) not kernel {}'s in the {what}, from", k.name()),
                    (format!("(not in the {what})"), format!("{n} page(s)")),
                    format!(
                        "the {what} holds [{s:#x}..{e:#x}), which was not kernel {}'s memory (outside its RAM, or in a region the {what} leaves out)",
                        k.name()
                    ),
                )
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kjump_abi::hibimage::{Range, checksum, header_size, write_vmcore_headers};

    fn vmcore(path: &std::path::Path, regs: &[u64; kjump_abi::vmcore::PRSTATUS_NREGS]) {
        let p = kjump_abi::vmcore::prstatus(regs, false);
        vmcore_of(path, regs[16], &[(0x10_0000, 1)], &p);
    }

    /// A vmcore entered at `entry` of `(start, pages)` ranges, with the
    /// note `p`.
    fn vmcore_of(
        path: &std::path::Path,
        entry: u64,
        ranges: &[(u64, usize)],
        p: &[u8; kjump_abi::vmcore::PRSTATUS_SIZE],
    ) {
        let data: Vec<Vec<u8>> = ranges
            .iter()
            .map(|&(_, n)| vec![3u8; n * PAGE_SIZE])
            .collect();
        let r: Vec<Range> = ranges
            .iter()
            .zip(&data)
            .map(|(&(start, _), d)| Range {
                start,
                len: d.len() as u64,
                checksum: checksum(d),
            })
            .collect();
        let mut img = vec![0u8; header_size(r.len()) as usize];
        write_vmcore_headers(&mut img, entry, &r, p).unwrap();
        data.iter().for_each(|d| img.extend_from_slice(d));
        std::fs::write(path, img).unwrap();
    }

    fn at() -> At {
        At {
            checkpoint: 0,
            cycle: 1,
            kernel: "a".into(),
            direction: "vmcore".into(),
        }
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("kjump-vmcore-{}-{name}", std::process::id()))
    }

    #[test]
    fn every_byte_of_nt_prstatus_beyond_the_registers_is_checked_and_named() {
        let mut vcpu = crate::state::VcpuState::default();
        vcpu.regs.rip = 0x20_1001;
        let regs = crate::dump::write::prstatus_regs(&vcpu);
        let p = tmp("fields");
        // The registers right, but a signal A never got, a pid and FPU
        // registers claimed.
        let mut note = kjump_abi::vmcore::prstatus(&regs, false);
        note[12] = 11;
        note[32] = 7;
        note[328] = 1;
        vmcore_of(&p, regs[16], &[(0x10_0000, 1)], &note);
        let img = DiskImage::open_vmcore(&p).unwrap();
        let m = check_prstatus(&img, &vcpu, &at());
        let names: Vec<_> = m.iter().map(|m| m.name.as_deref().unwrap()).collect();
        assert_eq!(
            names,
            [
                "NT_PRSTATUS.pr_cursig",
                "NT_PRSTATUS.pr_pid",
                "NT_PRSTATUS.pr_fpvalid"
            ]
        );
        assert_eq!(
            (m[0].expected.as_str(), m[0].actual.as_str()),
            ("0000", "0b00")
        );
        assert_eq!(m[1].actual, "07000000");
        assert!(
            m[2].note.as_deref().unwrap().contains("bytes 328..332"),
            "{m:?}"
        );
        // Any byte outside pr_reg: the padding too.
        let mut note = kjump_abi::vmcore::prstatus(&regs, false);
        note[335] = 0xff;
        vmcore_of(&p, regs[16], &[(0x10_0000, 1)], &note);
        let img = DiskImage::open_vmcore(&p).unwrap();
        let m = check_prstatus(&img, &vcpu, &at());
        assert_eq!(m.len(), 1);
        assert_eq!(
            m[0].name.as_deref(),
            Some("NT_PRSTATUS.(padding at the end)")
        );
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn the_vmcore_entry_is_the_crashed_kernels_rip() {
        let mut vcpu = crate::state::VcpuState::default();
        vcpu.regs.rip = 0x20_1001;
        let regs = crate::dump::write::prstatus_regs(&vcpu);
        let note = kjump_abi::vmcore::prstatus(&regs, false);
        let p = tmp("entry");
        vmcore_of(&p, 0x20_1001, &[(0x10_0000, 1)], &note);
        let img = DiskImage::open_vmcore(&p).unwrap();
        assert!(check_entry(&img, &vcpu, &at()).is_none());
        // NT_PRSTATUS right, e_entry elsewhere.
        vmcore_of(&p, 0x20_5000, &[(0x10_0000, 1)], &note);
        let img = DiskImage::open_vmcore(&p).unwrap();
        assert!(check_prstatus(&img, &vcpu, &at()).is_empty());
        let m = check_entry(&img, &vcpu, &at()).expect("caught");
        assert_eq!(m.name.as_deref(), Some("e_entry"));
        assert_eq!(
            (m.expected.as_str(), m.actual.as_str()),
            ("0x201001", "0x205000")
        );
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn pages_the_kernel_never_had_are_named_in_runs() {
        let regs = [0u64; kjump_abi::vmcore::PRSTATUS_NREGS];
        let note = kjump_abi::vmcore::prstatus(&regs, false);
        let p = tmp("claimed");
        // A's memory is [0, 16 MiB) but the reserved [4 MiB, 8 MiB).
        let ks = |a: u64| a < 0x100_0000 && !(0x40_0000..0x80_0000).contains(&a);
        vmcore_of(&p, 0, &[(0x10_0000, 2), (0xff_e000, 2)], &note);
        let img = DiskImage::open_vmcore(&p).unwrap();
        assert!(check_claimed(&img, "vmcore", Kernel::A, ks, &at()).is_empty());
        // Two pages of the reserved region and one past the end of RAM.
        vmcore_of(&p, 0, &[(0x3f_f000, 3), (0xff_f000, 2)], &note);
        let img = DiskImage::open_vmcore(&p).unwrap();
        let m = check_claimed(&img, "vmcore", Kernel::A, ks, &at());
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0].address, Some(0x40_0000));
        assert_eq!(m[0].actual, "2 page(s)");
        assert_eq!(m[1].address, Some(0x100_0000));
        assert!(
            m[1].note
                .as_deref()
                .unwrap()
                .contains("[0x1000000..0x1001000)"),
            "{m:?}"
        );
        std::fs::remove_file(&p).unwrap();
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
