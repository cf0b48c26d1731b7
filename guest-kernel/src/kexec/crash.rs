//! The `crash` scenario's kernels: A, which crashes on purpose, and B, the
//! capture kernel that saves A's memory as a vmcore (seed 2004, "memory
//! preserving reboot"; Linux's kdump).
//!
//! A boots with a region reserved for the capture kernel
//! (`crashkernel=SIZE@ADDR`, never used by A) and loads B there by a plain
//! copy (`kexec -p`): B's image in source pages, the backup region for
//! A's low memory, the indirection lists, A's control pages, and an ELF
//! core header of A's memory (`elfcorehdr=` on B's command line) followed
//! by the crash information ([`kjump_abi::vmcore::CrashInfo`]). Then it
//! fills its pattern and panics. The panic path is the jump in backup
//! mode: `kjump_jump` saves A's registers into A's control page (the crash
//! notes), runs the checkpoint (the VMM snapshots A as it died), and the
//! relocation code copies low memory `[1 MiB, backup-size)` into the
//! backup region and B's image over it, and enters B, which never comes
//! back (no context is preserved for it).
//!
//! B runs in that low memory (its text, data, stack and allocations: so
//! A's pages there are gone but for the backup), reads A's memory (low
//! memory from the backup region), writes it to the virtio-blk disk as a
//! vmcore (`kjump_abi::hibimage`, kind vmcore, with A's registers from the
//! crash notes in its `NT_PRSTATUS` note) and powers off.

use core::fmt::Write;

use kjump_abi::abi::Role;
use kjump_abi::bootparams::E820_RAM;
use kjump_abi::cmdline;
use kjump_abi::control;
use kjump_abi::fault::JumpFault;
use kjump_abi::hibimage::{self, Range};
use kjump_abi::kimage::IND_DONE;
use kjump_abi::layout::{HIGH_RAM_START, PAGE_SIZE};
use kjump_abi::vmcore::{self, BACKUP_SIZE_KEY, CrashInfo};

use super::faults::Injected;
use super::hibernate::{NO_PAGE, checksum_ring3, in_ring3, write_image};
use super::jump::JumpImage;
use super::pattern::Pattern;
use super::{Config, GIB, fail, load, phys_read_u64, phys_write, phys_write_u64, syscore};
use crate::bootinfo::BootInfo;
use crate::virtio::Blk;
use crate::{harness, mem};

/// The most ranges A's core header has.
const MAX_RANGES: usize = 4;

/// Kernel A: reserve, load B, fill the pattern, panic.
pub fn run_a(boot: &BootInfo) -> ! {
    let Some(backup) = boot.arg(BACKUP_SIZE_KEY).and_then(cmdline::parse_size) else {
        fail(format_args!(
            "a: no valid {BACKUP_SIZE_KEY}= on the command line"
        ))
    };
    let Some((res_start, res_end)) = vmcore::crashkernel(boot.cmdline) else {
        fail(format_args!(
            "a: no valid {}=SIZE@ADDR on the command line",
            vmcore::CRASHKERNEL_KEY
        ))
    };
    let ram_top = mem::ram_top();
    let aligned = |v: u64| v.is_multiple_of(PAGE_SIZE);
    if !aligned(backup) || backup < HIGH_RAM_START + (4 << 20) || backup > res_start {
        fail(format_args!(
            "a: {BACKUP_SIZE_KEY}={backup:#x} must be whole pages, at least 5 MiB, below the reserved region"
        ));
    }
    // The reserved region must be free RAM (not the kernel, not the
    // initramfs) within what every kernel maps.
    let free = mem::free_ranges().any(|(s, e)| s <= res_start && res_end <= e);
    if !aligned(res_start) || !aligned(res_end) || res_end > ram_top.min(4 * GIB) || !free {
        fail(format_args!(
            "a: the reserved region [{res_start:#x}..{res_end:#x}) is not free RAM below 4 GiB"
        ));
    }
    let pattern_bytes = boot
        .arg("kjump.pattern")
        .map_or(Some(1 << 20), cmdline::parse_size)
        .unwrap_or_else(|| fail(format_args!("a: bad kjump.pattern")));
    let mut cfg = Config {
        cycles: 1,
        peer_start: HIGH_RAM_START,
        peer_end: backup,
        backup: true,
        pattern_bytes,
        elfcorehdr: None,
    };
    syscore::init(Role::A);
    // A's memory as the capture kernel is to save it: all of RAM but the
    // reserved region; low memory in ranges of its own (B reads the
    // backed-up one from the backup region).
    let mut ranges = [Range {
        start: 0,
        len: 0,
        checksum: 0,
    }; MAX_RANGES];
    let mut n = 0;
    for (s, e) in [
        (0, HIGH_RAM_START),
        (HIGH_RAM_START, backup),
        (backup, res_start),
        (res_end, ram_top),
    ] {
        if e > s {
            ranges[n] = Range {
                start: s,
                len: e - s,
                checksum: 0,
            };
            n += 1;
        }
    }
    let ranges = &ranges[..n];
    let hdr_size = hibimage::header_size(n);
    // `kexec -p`: everything the capture kernel needs, in the reserved
    // region only.
    let injected = Injected::from_cmdline(boot);
    let mut load = || {
        let Some(hdr) = mem::alloc_pages(hdr_size / PAGE_SIZE + 1, u64::MAX, (0, 0)) else {
            fail(format_args!("a: no room for the ELF core header"))
        };
        cfg.elfcorehdr = Some(hdr);
        (load::load_b(boot, &cfg), hdr)
    };
    let (img, hdr) = if injected.jump(1) == Some(JumpFault::LoadOutsideReserved) {
        crate::println!("a: INJECTED FAULT: loading the capture kernel into my own memory");
        let loaded = load();
        mem::reserve(res_start, res_end);
        loaded
    } else {
        mem::within(res_start, res_end, load)
    };
    // Nor does A use low memory from now on: it is B's once A crashes.
    mem::reserve(cfg.peer_start, cfg.peer_end);
    // A's rip as its checkpoint leaves it: past the one-byte `in eax, dx`.
    let rip = &raw const crate::relocate::kjump_checkpoint as u64 + 1;
    let mut header = [0u8; PAGE_SIZE as usize];
    let size =
        hibimage::write_vmcore_headers(&mut header, rip, ranges, &[0; vmcore::PRSTATUS_SIZE])
            .unwrap_or_else(|e| fail(format_args!("a: ELF core header: {e}")));
    phys_write(hdr, &header[..size as usize]);
    let mut info = CrashInfo {
        notes: img.cp + control::CONTEXT,
        rip,
        backup_start: cfg.peer_start,
        backup_end: cfg.peer_end,
        backup_at: img.save,
    };
    if injected.jump(1) == Some(JumpFault::BadCrashInfo) {
        // The first page past the reserved region: A's own memory, not
        // its saved context.
        info.notes = res_end;
        crate::println!(
            "a: INJECTED FAULT: my crash information puts the crash notes at {res_end:#x}, my own memory"
        );
    }
    phys_write(hdr + size, &info.to_bytes());
    crate::println!(
        "a: crash kernel loaded in [{res_start:#x}..{res_end:#x}): elfcorehdr at {hdr:#x}, backup of [{:#x}..{backup:#x}) at {:#x}, crash notes at {:#x}",
        cfg.peer_start,
        img.save,
        info.notes
    );
    let pattern = Pattern::new(
        Role::A,
        cfg.pattern_bytes,
        (cfg.peer_start, cfg.peer_end),
        img.cp,
    );
    crate::println!("a: pattern over {} bytes", pattern.bytes());
    injected.arm(img.cp, 1);
    if injected.jump(1) == Some(JumpFault::NoBackup) {
        // An empty save list: the relocation code backs up nothing.
        phys_write_u64(img.cp + control::DATA_HEAD, IND_DONE);
    }
    panic_on_purpose(&img)
}

/// A's panic path: the crash notes and the checkpoint (`kjump_jump`), the
/// backup of low memory and the jump to the capture kernel (the relocation
/// code). Its own function, so a backtrace names it.
#[inline(never)]
fn panic_on_purpose(img: &JumpImage) -> ! {
    crate::println!("a: kernel panic (on purpose): jumping to the capture kernel");
    img.jump();
    fail(format_args!("a: the capture kernel came back"))
}

/// Kernel B, the capture kernel: write A's vmcore to the disk and power
/// off.
pub fn run_b(boot: &BootInfo) -> ! {
    let Some(hdr) = boot.arg("elfcorehdr").and_then(cmdline::parse_u64) else {
        fail(format_args!("b: no elfcorehdr= on the command line"))
    };
    let Some(own) = boot.e820().iter().find(|e| e.kind == E820_RAM) else {
        fail(format_args!("b: no RAM in my e820 map"))
    };
    let (own_start, own_end) = (own.addr, own.addr + own.size);
    let map_top = mem::ram_top().max(4 * GIB);
    if !hdr.is_multiple_of(PAGE_SIZE) || hdr.checked_add(PAGE_SIZE).is_none_or(|e| e > map_top) {
        fail(format_args!("b: elfcorehdr={hdr:#x} is not a page I map"));
    }
    let (cp, _) = load::setup_control_pages(Role::B, map_top);
    let injected = Injected::from_cmdline(boot);
    let fault = injected.jump(1);
    if fault == Some(JumpFault::PowerOffEarly) {
        super::hibernate::power_off_early();
    }

    // A's core header and crash information, where A left them.
    let mut page = [0u8; PAGE_SIZE as usize];
    for (i, w) in page.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&phys_read_u64(hdr + 8 * i as u64).to_le_bytes());
    }
    let (h, _) = hibimage::Header::parse_vmcore(&page)
        .unwrap_or_else(|e| fail(format_args!("b: a's ELF core header: {e}")));
    let info_at = hdr.saturating_add(h.data_offset(0));
    if info_at.saturating_add(vmcore::CRASH_INFO_SIZE as u64) > map_top {
        fail(format_args!(
            "b: a's crash information at {info_at:#x} is beyond what I map"
        ));
    }
    let mut info = [0u8; vmcore::CRASH_INFO_SIZE];
    for (i, w) in info.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&phys_read_u64(info_at + 8 * i as u64).to_le_bytes());
    }
    let Some(info) = CrashInfo::from_bytes(&info) else {
        fail(format_args!(
            "b: no crash information after a's core header"
        ))
    };
    let backup_len = info.backup_end.saturating_sub(info.backup_start);
    if info.backup_at.saturating_add(backup_len) > map_top
        || info.notes.saturating_add(vmcore::NOTES_SIZE) > map_top
    {
        fail(format_args!("b: a's crash information points beyond RAM"));
    }

    // A's registers from the crash notes (its saved context).
    let regs = vmcore::notes_regs(|o| phys_read_u64(info.notes + o), info.rip);
    let prstatus = vmcore::prstatus(&regs, false);

    // Each range of A's memory, from where it is now: low memory from the
    // backup region.
    let mut ranges = [Range {
        start: 0,
        len: 0,
        checksum: 0,
    }; MAX_RANGES];
    let mut from = [0u64; MAX_RANGES];
    let mut n = h.len().min(MAX_RANGES);
    if fault == Some(JumpFault::VmcoreSkip) && n > 1 {
        n -= 1;
        let r = h.range(n);
        crate::println!(
            "b: INJECTED FAULT: leaving a's range [{:#x}..{:#x}) out of the vmcore",
            r.start,
            r.start.saturating_add(r.len)
        );
    }
    for i in 0..n {
        let r = h.range(i);
        let end = r.start.saturating_add(r.len);
        if end > map_top {
            fail(format_args!(
                "b: a's range ends at {end:#x}, beyond what I map"
            ));
        }
        let backed_up = r.start >= info.backup_start && end <= info.backup_end;
        if !backed_up && r.start < info.backup_end && end > info.backup_start {
            fail(format_args!(
                "b: a's range [{:#x}..{end:#x}) is partly backed up",
                r.start
            ));
        }
        from[i] = if backed_up && fault != Some(JumpFault::NoBackupRead) {
            info.backup_at + (r.start - info.backup_start)
        } else {
            r.start
        };
        ranges[i] = Range {
            start: r.start,
            len: r.len,
            checksum: in_ring3(cp, checksum_ring3, from[i], r.len, NO_PAGE),
        };
    }
    let ranges = &ranges[..n];

    let mut blk = match Blk::probe(boot.cmdline) {
        Some(Ok(b)) => b,
        Some(Err(e)) => fail(format_args!("b: virtio-blk: {e}")),
        None => fail(format_args!("b: no disk on the command line")),
    };
    let header = hibimage::header_size(n);
    let size = write_image(
        &mut blk,
        header,
        ranges,
        |out| hibimage::write_vmcore_headers(out, h.entry, ranges, &prstatus),
        |i| from[i],
    );
    let io = |r: Result<(), crate::virtio::VirtioError>| {
        r.unwrap_or_else(|e| fail(format_args!("b: writing a's vmcore: {e}")))
    };
    io(blk.flush());
    if fault == Some(JumpFault::WriteOutsideReserved) {
        // The first page of A's last range: A's memory, neither mine nor
        // the reserved region.
        let at = h.range(h.len() - 1).start;
        crate::println!(
            "b: INJECTED FAULT: writing a word at {at:#x}, a's memory outside my region"
        );
        phys_write_u64(at, 0x6b6a_756d_7062_6164);
    }
    let mut msg = harness::TextBuf::new();
    let _ = write!(
        msg,
        "crash: b ran in [{own_start:#x}..{own_end:#x}) and wrote a's vmcore: {} pages in {n} ranges, {size} bytes; powering off",
        (size - header) / PAGE_SIZE
    );
    crate::println!("{}", msg.as_str());
    harness::verdict(true, msg.as_str());
    crate::halt_forever()
}
