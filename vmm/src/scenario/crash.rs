//! The `crash` scenario: kernel A panics on purpose, the capture kernel B
//! saves A's memory as a vmcore on the virtio-blk disk, and the VMM checks
//! the vmcore page by page against its own snapshot of A as it died.
//!
//! ```text
//! A boots: crashkernel=SIZE@ADDR reserved (A never uses it), B loaded
//!   there by a plain copy with A's ELF core header (elfcorehdr=)
//! A panics: crash notes (its saved context) ── the panic checkpoint: the
//!   oracle records A (registers, devices, every page) ── the relocation
//!   code backs up low memory [1 MiB, --backup-size) into the reserved
//!   region, copies B over it and enters B (no context preserved)
//! VMM: at B's entry, B's first delivery (what A's kimage placed)
//! B runs in low memory, writes A's vmcore (low memory from the backup,
//!   A's registers from the crash notes in NT_PRSTATUS), powers off
//! VMM: the vmcore's headers and checksums; its NT_PRSTATUS against A's
//!   vCPU at the checkpoint; every page of A but the reserved region
//!   against the snapshot; and every page written since B's entry
//!   outside B's region and the reserved region (B must not write A)
//! ```

use std::path::Path;
use std::time::Instant;

use kjump_abi::bootparams;
use kjump_abi::cmdline;
use kjump_abi::control;
use kjump_abi::hibimage::Header;
use kjump_abi::hibimage::ImageError;
use kjump_abi::vmcore::{CRASH_INFO_SIZE, CrashInfo};
use kjump_core::checkpoint::Kernel;
use kjump_core::hibimage::{DiskImage, DiskImageError, check_pages};
use kjump_core::oracle::Oracle;
use kjump_core::report::{AllowedField, At, Mismatch, MismatchKind};
use kjump_core::vmcore::{
    check_backup, check_claimed, check_crash_notes, check_entry, check_prstatus, check_untouched,
    page_runs,
};
use vm_memory::{Bytes, GuestAddress};

use super::hibernate::{Hibernation, disk_scenario_config, fail};
use crate::config::{RunConfig, format_size};
use crate::scenario::disk::DiskError;
use crate::scenario::{Outcome, RunError, RunOptions, RunState, Verdict, run_watched};
use crate::vm::Vm;

const MIB: u64 = 1 << 20;
/// RAM A keeps for itself above the reserved region (its page tables,
/// pattern, stack): the reserved region must leave this much.
const A_ROOM: u64 = 16 * MIB;

/// Where the crash scenario puts things in guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Low memory `[1 MiB, backup)` is backed up and B runs there.
    pub backup: u64,
    /// The region reserved for the capture kernel (`crashkernel=`):
    /// B's image, the backup region, the lists, A's control pages, the
    /// ELF core header.
    pub reserved: (u64, u64),
}

impl Layout {
    /// The layout of a VM of `mem` bytes whose initramfs takes
    /// `initramfs_len`, backing up `backup` bytes; why not when the
    /// backup size is unusable.
    pub fn new(mem: u64, backup: u64, initramfs_len: u64) -> Result<Self, String> {
        let high = kjump_abi::layout::HIGH_RAM_START;
        let min = high + super::MIN_PEER_MEM;
        if backup == 0 || !backup.is_multiple_of(kjump_abi::layout::PAGE_SIZE) || backup < min {
            return Err(format!(
                "--backup-size {}: the low memory the capture kernel runs in is whole 4 KiB pages, at least {}",
                format_size(backup),
                format_size(min)
            ));
        }
        let top = kjump_core::layout::initramfs_addr(mem, initramfs_len).unwrap_or(0);
        let end = |b: u64| b.next_multiple_of(2 * MIB) + Self::reserved_size(b) + A_ROOM;
        if end(backup) > top {
            // The largest whole MiB that fits, down from an estimate (the
            // reserved region is about twice the backup).
            let mut max = (top.saturating_sub(A_ROOM + 2 * MIB) / 3) & !(MIB - 1);
            while max >= min && end(max) > top {
                max -= MIB;
            }
            if max < min {
                return Err(format!(
                    "--mem {} is too small for --scenario crash: the reserved region takes twice --backup-size (at least {}), and kernel a needs room of its own",
                    format_size(mem),
                    format_size(min)
                ));
            }
            return Err(format!(
                "--backup-size {} does not fit in --mem {}: the reserved region takes twice it, and kernel a needs room of its own; at most {} here",
                format_size(backup),
                format_size(mem),
                format_size(max)
            ));
        }
        let start = backup.next_multiple_of(2 * MIB);
        let size = Self::reserved_size(backup);
        Ok(Self {
            backup,
            reserved: (start, start + size),
        })
    }

    /// Bytes of the reserved region for a backup of `[1 MiB, backup)`:
    /// B's image and the backup region, page for page each; the lists,
    /// control pages and core header in the rest, 2 MiB, and more when the
    /// two indirection lists (B's image, the backup; an entry a page, 511
    /// a page) need more than 1 MiB of it; in 2 MiB pages.
    fn reserved_size(backup: u64) -> u64 {
        let low = backup - kjump_abi::layout::HIGH_RAM_START;
        let lists =
            2 * (low / kjump_abi::layout::PAGE_SIZE).div_ceil(511) * kjump_abi::layout::PAGE_SIZE;
        (2 * low + 2 * MIB + lists.saturating_sub(MIB)).next_multiple_of(2 * MIB)
    }

    /// The words A's command line gets.
    pub fn cmdline(&self) -> String {
        let (s, e) = self.reserved;
        format!(
            "{}={:#x} {}={:#x}@{s:#x}",
            kjump_abi::vmcore::BACKUP_SIZE_KEY,
            self.backup,
            kjump_abi::vmcore::CRASHKERNEL_KEY,
            e - s
        )
    }

    fn in_reserved(&self, p: u64) -> bool {
        (self.reserved.0..self.reserved.1).contains(&p)
    }

    /// `Ok` when `[a, a + len)` lies in the reserved region; else `a` and
    /// why not (`what` is there).
    fn check_reserved(&self, what: &str, a: u64, len: u64) -> Result<(), (u64, String)> {
        let (r0, r1) = self.reserved;
        if a >= r0 && a.checked_add(len).is_some_and(|end| end <= r1) {
            Ok(())
        } else {
            Err((
                a,
                format!(
                    "{what} [{a:#x}..+{len:#x}) is not in the reserved region [{r0:#x}..{r1:#x})"
                ),
            ))
        }
    }

    fn in_b_region(&self, p: u64) -> bool {
        (kjump_abi::layout::HIGH_RAM_START..self.backup).contains(&p)
    }
}

/// Bytes of disk a vmcore of a VM of `mem` bytes needs at most.
pub fn disk_size(mem: u64) -> u64 {
    mem + kjump_abi::hibimage::header_size(kjump_abi::hibimage::MAX_RANGES)
}

/// Runs the scenario (one VM).
pub fn run(args: &RunConfig, opts: &RunOptions) -> Result<Outcome, RunError> {
    // One crash: A's one jump, to the capture kernel (`--cycles` does not
    // apply).
    let args = &RunConfig {
        cycles: 1,
        ..args.clone()
    };
    // Held until the run ends.
    let dump_lock = args
        .dump_dir
        .as_deref()
        .map(crate::scenario::check_dump_dir)
        .transpose()?;
    let mut layout = None;
    let (cfg, disk) = disk_scenario_config(
        args,
        opts,
        "one VM that powers off; open the vmcore in gdb instead",
        disk_size(args.mem),
        |cfg| {
            let initramfs_len = cfg.initramfs.as_ref().map_or(0, |i| i.len() as u64);
            let l = Layout::new(args.mem, args.backup_size, initramfs_len)
                .map_err(RunError::Settings)?;
            cfg.cmdline = format!("{} {}", cfg.cmdline, l.cmdline());
            layout = Some(l);
            Ok(())
        },
    )?;
    let layout = layout.expect("disk_scenario_config ran the check");
    let wd = crate::scenario::watchdog_config(args.timeout(), args.max_time(), opts);
    let args = args.clone();
    run_watched(&wd, opts, args.scenario, cfg, move |cfg, mut run| {
        let result = (|| {
            let mut vm = Vm::new(&cfg)?;
            // A boots, loads B, panics (its one suspend: recorded), B is
            // checked at its entry and runs until it powers off.
            let mut driver = Hibernation::new(&args, &cfg.kernel, &mut run);
            driver.new_vm(&mut vm, false);
            driver.check_hand_over(Box::new(move |vm, oracle, panicked| {
                let at = At {
                    checkpoint: panicked.index,
                    cycle: 1,
                    kernel: Kernel::A.name().to_owned(),
                    direction: "hand-over".to_owned(),
                };
                check_hand_over(vm, oracle, &layout, &at)
            }));
            if let Some(done) = driver.drive(&mut vm, &mut run)? {
                return Ok(done);
            }
            let oracle = driver.oracle();
            let panicked = driver
                .a_suspended()
                .ok_or(RunError::Protocol("kernel b powered off before a panicked"))?;
            if let Some(dir) = &args.dump_dir {
                write_panic_dump(&vm, &args, oracle, dir)?;
            }
            let at = At {
                checkpoint: panicked.index,
                cycle: 1,
                kernel: Kernel::A.name().to_owned(),
                direction: "vmcore".to_owned(),
            };
            check_vmcore(&mut vm, &mut run, &args, oracle, &layout, disk.path(), &at)
        })();
        drop(disk);
        drop(dump_lock);
        result.map_err(|e| e.symbolize(&cfg.kernel))
    })
}

/// `--dump-dir`: kernel A as it died (the VMM's snapshot at the panic
/// checkpoint, the truth the vmcore is checked against) as a dump,
/// `c00001-00000-a-suspend-left.core`, not resumable.
fn write_panic_dump(
    vm: &Vm,
    args: &RunConfig,
    oracle: &Oracle,
    dir: &Path,
) -> Result<(), RunError> {
    let Some((id, machine, left)) = oracle.left(Kernel::A, vm.memory()) else {
        return Ok(());
    };
    let path = crate::scenario::dump_path(dir, &id, "-left");
    let kernel_name = crate::scenario::dump_kernel_name(args);
    let input = kjump_core::dump::DumpInput {
        state: machine.vcpu(),
        id: &id,
        jump_back_entry: oracle.jump_back_entry(Kernel::A),
        resumable: false,
        memory: &left,
        kernel_name: &kernel_name,
        mem_size: args.mem,
        kjump_version: env!("CARGO_PKG_VERSION"),
        resume: None,
    };
    kjump_core::dump::write_dump(&path, &input)?;
    log::info!("dump of a at its panic written: {}", path.display());
    Ok(())
}

/// B has powered the machine off: its vmcore on the disk against the
/// oracle's record of A at the panic checkpoint, and B's writes since its
/// entry (where B's first delivery was checked).
fn check_vmcore(
    vm: &mut Vm,
    run: &mut RunState,
    args: &RunConfig,
    oracle: &Oracle,
    layout: &Layout,
    disk: &Path,
    at: &At,
) -> Result<Outcome, RunError> {
    let started = Instant::now();
    let io = |source| {
        RunError::Disk(DiskError::Stat {
            path: disk.to_owned(),
            source,
        })
    };
    let mut mismatches = Vec::new();
    // A range whose checksum fails is a mismatch, and its pages are still
    // compared: which ones differ says more than the checksum.
    let opened = DiskImage::open_vmcore(disk).or_else(|e| match e {
        DiskImageError::Image(ImageError::RangeChecksum {
            start,
            len,
            expected,
            found,
            ..
        }) => {
            mismatches.push(Mismatch {
                at: at.clone(),
                kind: MismatchKind::Memory,
                name: Some("checksum of the vmcore's range at".to_owned()),
                address: Some(start),
                location: Some(start),
                expected: format!("{expected:#018x}"),
                actual: format!("{found:#018x}"),
                ranges: Vec::new(),
                hexdump: None,
                symbol: None,
                note: Some(format!(
                    "the vmcore's range [{start:#x}..{:#x}) does not match its checksum: kernel b's data changed while it wrote it",
                    start + len
                )),
            });
            DiskImage::open_vmcore_unchecked(disk)
        }
        e => Err(e),
    });
    let image = match opened {
        Ok(i) => i,
        Err(e) => {
            return Ok(run.outcome(Verdict::Fail(format!("kernel b's vmcore of a: {e}")), "b"));
        }
    };
    let (res_start, res_end) = layout.reserved;
    run.report().allowlist.push(AllowedField {
        field: format!("memory [{res_start:#x}..{res_end:#x})"),
        reason: "the region kernel a reserved for the capture kernel (crashkernel=): never a's \
                 memory, it holds b's staged image, the backup of low memory, the lists and a's \
                 control pages; not in the vmcore"
            .to_owned(),
    });
    let Some((_, machine, _)) = oracle.left(Kernel::A, vm.memory()) else {
        return Err(RunError::Protocol("kernel a panicked without a record"));
    };
    // A's own doing (where it loaded B, its backup, its crash notes) was
    // checked at B's entry: what differs now is B's.
    mismatches.extend(check_entry(&image, machine.vcpu(), at));
    mismatches.extend(check_prstatus(&image, machine.vcpu(), at));
    // Nothing in the vmcore but A's memory outside the reserved region.
    let view = oracle.record(Kernel::A).view.as_ref();
    mismatches.extend(check_claimed(
        &image,
        "vmcore",
        Kernel::A,
        |p| !layout.in_reserved(p) && view.is_some_and(|v| v.get(p).is_some()),
        at,
    ));
    let pages = check_pages(
        &image,
        oracle,
        Kernel::A,
        vm.memory(),
        at,
        "vmcore",
        |home| (!layout.in_reserved(home)).then_some(home),
    )
    .map_err(io)?;
    mismatches.extend(pages.mismatches);
    // B may write its own region (low memory, backed up) only; the
    // reserved region is the capture kernel's too.
    let written = vm.dirty_pages()?;
    let outside = check_untouched(
        oracle,
        Kernel::A,
        vm.memory(),
        &written,
        |p| layout.in_b_region(p) || layout.in_reserved(p),
        "kernel b",
        &At {
            direction: "b's writes".to_owned(),
            ..at.clone()
        },
    )
    .map_err(io)?;
    mismatches.extend(outside);
    log::info!(
        "the vmcore on the disk: {} pages in {} ranges; {} pages of a's memory checked against the panic checkpoint, {} excused (the reserved region [{res_start:#x}..{res_end:#x})); NT_PRSTATUS checked; {} pages written since b's entry; checked in {} ms",
        image.pages(),
        image.ranges().len(),
        pages.pages_compared,
        pages.pages_excused,
        written.len(),
        started.elapsed().as_millis()
    );
    run.set_cycles(1);
    if !mismatches.is_empty() {
        let what = format!(
            "{} mismatch(es) between kernel b's vmcore of a and a as it died",
            mismatches.len()
        );
        return Ok(fail(run, mismatches, &what, "b"));
    }
    let verdict = match &args.inject {
        Some(inj) => Verdict::Fail(format!(
            "the injected fault {} was not caught: the run passed",
            inj.spec
        )),
        None => Verdict::Pass,
    };
    Ok(run.outcome(verdict, "b"))
}

/// A's hand-over to the capture kernel, checked at B's entry (before B's
/// first instruction, once its first delivery passed), against the
/// oracle's record of A at its panic checkpoint: where A's kimage put
/// things ([`check_kimage_placed`]); then, where A's crash information
/// says (every address it gives validated first: it is the guest's),
/// that the backup region holds A's low memory `[1 MiB, --backup-size)`
/// page for page, and that the crash notes hold A's registers. Each
/// difference is A's: at `at` (kernel a, "hand-over").
fn check_hand_over(
    vm: &Vm,
    oracle: &Oracle,
    layout: &Layout,
    at: &At,
) -> Result<Vec<Mismatch>, RunError> {
    let started = Instant::now();
    let placed = check_kimage_placed(oracle, layout, at)?;
    if !placed.is_empty() {
        return Ok(placed);
    }
    let mem = vm.memory();
    let info = match crash_info(mem, oracle, layout) {
        Ok(i) => i,
        Err((addr, why)) => {
            return Ok(vec![Mismatch {
                address: Some(addr),
                location: Some(addr),
                ..Mismatch::named(
                    at,
                    MismatchKind::Memory,
                    "kernel a's crash information, at".to_owned(),
                    ("a valid one".to_owned(), "(not valid)".to_owned()),
                    why,
                )
            }]);
        }
    };
    let Some((_, machine, _)) = oracle.left(Kernel::A, mem) else {
        return Err(RunError::Protocol("kernel a panicked without a record"));
    };
    let mut out = check_backup(
        oracle,
        Kernel::A,
        mem,
        (info.backup_start, info.backup_end),
        info.backup_at,
        at,
    )
    .map_err(|_| RunError::Protocol("the backup region is outside guest RAM"))?;
    let read = |o: u64| {
        mem.read_obj::<u64>(GuestAddress(info.notes + o))
            .unwrap_or(0)
    };
    let notes = kjump_abi::vmcore::notes_regs(read, info.rip);
    out.extend(check_crash_notes(&notes, info.notes, machine.vcpu(), at));
    log::info!(
        "kernel a's hand-over at b's entry: its backup of [{:#x}..{:#x}) at {:#x} and its crash notes at {:#x} checked in {} ms",
        info.backup_start,
        info.backup_end,
        info.backup_at,
        info.notes,
        started.elapsed().as_millis()
    );
    Ok(out)
}

/// A's crash information, found as B finds it: B's zero page (A's
/// control page's `DATA_PEER_ARG`), its command line's `elfcorehdr=`, the
/// ELF core header there, the crash information after it. Every address
/// is checked before it is read: the zero page and command line in B's
/// region, the header, the crash information, the backup region and the
/// crash notes in the reserved region; the backed-up memory must be
/// `[1 MiB, --backup-size)`. Else the address and why it is not valid.
fn crash_info(
    mem: &kjump_core::GuestMem,
    oracle: &Oracle,
    layout: &Layout,
) -> Result<CrashInfo, (u64, String)> {
    let page = kjump_abi::layout::PAGE_SIZE;
    let within = |(s, e): (u64, u64), a: u64, len: u64| {
        a >= s && a.checked_add(len).is_some_and(|end| end <= e)
    };
    let b_region = (kjump_abi::layout::HIGH_RAM_START, layout.backup);
    let read = |a: u64, buf: &mut [u8]| {
        mem.read_slice(buf, GuestAddress(a))
            .map_err(|_| (a, format!("{a:#x} is outside guest RAM")))
    };
    let zp = oracle
        .read_control(mem, Kernel::A, control::DATA_PEER_ARG, false)
        .map_err(|e| (0, format!("a's control page: {e}")))?;
    if !within(b_region, zp, bootparams::SIZE as u64) {
        return Err((
            zp,
            format!(
                "kernel b's zero page {zp:#x} (a's DATA_PEER_ARG) is not in b's region [{:#x}..{:#x})",
                b_region.0, b_region.1
            ),
        ));
    }
    let mut zero_page = [0u8; bootparams::SIZE];
    read(zp, &mut zero_page)?;
    let cmd_at = bootparams::ZeroPage(&zero_page).cmd_line_ptr();
    let cmd_len = kjump_abi::layout::CMDLINE_MAX.min(b_region.1.saturating_sub(cmd_at));
    if !within(b_region, cmd_at, 1) {
        return Err((
            cmd_at,
            format!(
                "kernel b's command line {cmd_at:#x} is not in b's region [{:#x}..{:#x})",
                b_region.0, b_region.1
            ),
        ));
    }
    let mut cmd = vec![0u8; cmd_len as usize];
    read(cmd_at, &mut cmd)?;
    let cmd = cmd.split(|&c| c == 0).next().unwrap_or_default();
    let hdr = std::str::from_utf8(cmd)
        .ok()
        .and_then(|c| cmdline::get(c, "elfcorehdr"))
        .and_then(cmdline::parse_u64)
        .ok_or((
            cmd_at,
            "kernel b's command line has no valid elfcorehdr=".to_owned(),
        ))?;
    let reserved = |what: &str, a: u64, len: u64| layout.check_reserved(what, a, len);
    reserved("the ELF core header (elfcorehdr=)", hdr, page)?;
    let mut header = vec![0u8; page as usize];
    read(hdr, &mut header)?;
    let (h, _) = Header::parse_vmcore(&header)
        .map_err(|e| (hdr, format!("a's ELF core header at {hdr:#x}: {e}")))?;
    let info_at = hdr.saturating_add(h.data_offset(0));
    reserved("the crash information", info_at, CRASH_INFO_SIZE as u64)?;
    let mut bytes = [0u8; CRASH_INFO_SIZE];
    read(info_at, &mut bytes)?;
    let info = CrashInfo::from_bytes(&bytes).ok_or((
        info_at,
        format!("no crash information at {info_at:#x} (no magic)"),
    ))?;
    check_crash_info(&info, info_at, layout)?;
    Ok(info)
}

/// Checks the addresses A's crash information (found at `info_at`) gives:
/// the memory it backs up must be B's region `[1 MiB, --backup-size)`,
/// the backup region (page-aligned) and the crash notes must lie in the
/// reserved region. Else the address and why not.
fn check_crash_info(info: &CrashInfo, info_at: u64, layout: &Layout) -> Result<(), (u64, String)> {
    let page = kjump_abi::layout::PAGE_SIZE;
    let b_region = (kjump_abi::layout::HIGH_RAM_START, layout.backup);
    if (info.backup_start, info.backup_end) != b_region {
        return Err((
            info_at,
            format!(
                "the crash information backs up [{:#x}..{:#x}), not b's region [{:#x}..{:#x})",
                info.backup_start, info.backup_end, b_region.0, b_region.1
            ),
        ));
    }
    layout.check_reserved("the backup region", info.backup_at, b_region.1 - b_region.0)?;
    if !info.backup_at.is_multiple_of(page) {
        return Err((
            info.backup_at,
            format!(
                "the backup region {:#x} is not page-aligned",
                info.backup_at
            ),
        ));
    }
    layout.check_reserved("the crash notes", info.notes, kjump_abi::vmcore::NOTES_SIZE)?;
    Ok(())
}

/// Checks where A's `kexec -p` put the capture kernel, as A's kimage
/// reports it: B's region must be the low memory the VMM gave (`[1 MiB,
/// --backup-size)`), and every page the kimage keeps (control pages,
/// B's staged image, the backup region) must lie in the reserved region.
/// The oracle excuses those pages from A's memory, so one outside the
/// reserved region would be A's memory overwritten unseen (and the vmcore
/// would hold the capture kernel's staging as A's). One memory mismatch
/// per run of such pages.
fn check_kimage_placed(
    oracle: &Oracle,
    layout: &Layout,
    at: &At,
) -> Result<Vec<Mismatch>, RunError> {
    let k = oracle
        .kimage(Kernel::A)
        .ok_or(RunError::Protocol("kernel a panicked without a kimage"))?;
    let mut out = Vec::new();
    let b_region = (kjump_abi::layout::HIGH_RAM_START, layout.backup);
    if (k.peer_start, k.peer_end) != b_region {
        out.push(Mismatch {
            address: Some(k.peer_start),
            ..Mismatch::named(
                at,
                MismatchKind::Memory,
                "kernel b's region in a's kimage".to_owned(),
                (
                    format!("[{:#x}..{:#x})", b_region.0, b_region.1),
                    format!("[{:#x}..{:#x})", k.peer_start, k.peer_end),
                ),
                "kernel a's kimage puts the capture kernel elsewhere than the low memory it backs up"
                    .to_owned(),
            )
        });
    }
    let (c0, c1) = k.control_range();
    let mut pages: Vec<u64> = (c0..c1)
        .step_by(kjump_abi::layout::PAGE_SIZE as usize)
        .chain(k.parking_pages())
        .filter(|&p| !layout.in_reserved(p))
        .collect();
    pages.sort_unstable();
    pages.dedup();
    let (r0, r1) = layout.reserved;
    out.extend(page_runs(pages).into_iter().map(|(s, e)| Mismatch {
        address: Some(s),
        location: Some(s),
        symbol: oracle.symbols().and_then(|sy| sy.lookup(s)),
        ..Mismatch::named(
            at,
            MismatchKind::Memory,
            format!(
                "{} page(s) of a's kimage outside the reserved region, from",
                (e - s) / kjump_abi::layout::PAGE_SIZE
            ),
            (format!("in [{r0:#x}..{r1:#x})"), format!("[{s:#x}..{e:#x})")),
            format!(
                "kernel a's kexec -p keeps [{s:#x}..{e:#x}) (control pages, b's staged image or the backup) outside the region reserved for it [{r0:#x}..{r1:#x}): a's memory there is the capture kernel's"
            ),
        )
    }));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout of a 64M VM backing up 8M (reserved [8M, 24M)), and a
    /// crash information that is valid there.
    fn layout_and_good_info() -> (Layout, CrashInfo) {
        let l = Layout::new(64 * MIB, 8 * MIB, 4 * MIB).unwrap();
        let good = CrashInfo {
            notes: 20 * MIB + 0x700,
            rip: 0x20_1001,
            backup_start: MIB,
            backup_end: 8 * MIB,
            backup_at: 9 * MIB,
        };
        (l, good)
    }

    #[test]
    fn every_address_of_a_s_crash_information_is_checked() {
        let (l, good) = layout_and_good_info();
        assert_eq!(check_crash_info(&good, 0, &l), Ok(()));
        let bad = [
            CrashInfo {
                backup_end: 9 * MIB,
                ..good
            },
            CrashInfo {
                backup_at: 20 * MIB,
                ..good
            },
            CrashInfo {
                backup_at: u64::MAX - 0x1000,
                ..good
            },
            CrashInfo {
                backup_at: 9 * MIB + 8,
                ..good
            },
            CrashInfo {
                notes: 24 * MIB - 8,
                ..good
            },
            CrashInfo {
                notes: 0x200_0000_0000,
                ..good
            },
            CrashInfo {
                notes: 2 * MIB,
                ..good
            },
        ];
        for b in bad {
            let (at, why) = check_crash_info(&b, 0x10, &l).unwrap_err();
            assert!([0x10, b.notes, b.backup_at].contains(&at), "{why}");
        }
        assert!(
            l.check_reserved("x", 8 * MIB, 16 * MIB).is_ok()
                && l.check_reserved("x", 8 * MIB, 16 * MIB + 1).is_err()
                && l.check_reserved("x", 8 * MIB - 1, 1).is_err()
        );
    }

    #[test]
    fn addresses_that_overflow_are_refused_without_a_panic() {
        let (l, good) = layout_and_good_info();
        // Each address plus its length wraps past u64::MAX: refused, at
        // the address the guest gave, naming the field.
        for (bad, field) in [
            (
                CrashInfo {
                    notes: u64::MAX - 8,
                    ..good
                },
                "the crash notes",
            ),
            (
                CrashInfo {
                    notes: u64::MAX,
                    ..good
                },
                "the crash notes",
            ),
            (
                CrashInfo {
                    backup_at: u64::MAX - 7 * MIB + 1,
                    ..good
                },
                "the backup region",
            ),
            (
                CrashInfo {
                    backup_start: u64::MAX - 0xfff,
                    backup_end: 0xfff,
                    ..good
                },
                "backs up",
            ),
        ] {
            let (at, why) = check_crash_info(&bad, 0x10, &l).unwrap_err();
            assert!(why.contains(field), "{why}");
            assert!([0x10, bad.notes, bad.backup_at].contains(&at), "{why}");
        }
        for (a, len) in [(u64::MAX, 1), (u64::MAX - 4, 8), (8 * MIB, u64::MAX)] {
            let (at, why) = l.check_reserved("the ELF core header", a, len).unwrap_err();
            assert_eq!(at, a);
            assert!(why.contains("is not in the reserved region"), "{why}");
        }
    }

    #[test]
    fn the_layout_refuses_bad_backup_sizes() {
        let l = Layout::new(256 * MIB, 16 * MIB, 4 * MIB).unwrap();
        assert_eq!(l.reserved, (16 * MIB, 48 * MIB));
        assert_eq!(
            l.cmdline(),
            "kjump.backup_size=0x1000000 crashkernel=0x2000000@0x1000000"
        );
        assert!(l.in_reserved(16 * MIB) && !l.in_reserved(48 * MIB));
        assert!(l.in_b_region(MIB) && !l.in_b_region(16 * MIB) && !l.in_b_region(0));
        for bad in [0, 16 * MIB + 1, 4 * MIB, 200 * MIB] {
            let e = Layout::new(256 * MIB, bad, 4 * MIB).unwrap_err();
            assert!(e.starts_with("--backup-size"), "{e}");
        }
        // A large backup: the lists take more than the 2 MiB's half.
        let l = Layout::new(3 << 30, 900 * MIB, 4 * MIB).unwrap();
        assert_eq!(l.reserved, (900 * MIB, 900 * MIB + 1804 * MIB));
        // The most it names fits, a MiB more does not.
        for mem in [256 * MIB, 3 << 30] {
            let e = Layout::new(mem, 2000 * MIB, 4 * MIB).unwrap_err();
            let max = e
                .rsplit("at most ")
                .next()
                .unwrap()
                .trim_end_matches(" here");
            let max = crate::cli::parse_size(max).unwrap();
            assert!(Layout::new(mem, max, 4 * MIB).is_ok(), "{e}");
            assert!(Layout::new(mem, max + MIB, 4 * MIB).is_err(), "{e}");
        }
        // Where no backup size fits, --mem is what is wrong.
        for mem in [0, 32 * MIB] {
            let e = Layout::new(mem, 5 * MIB, 4 * MIB).unwrap_err();
            assert!(e.contains("is too small for --scenario crash"), "{e}");
        }
    }
}
