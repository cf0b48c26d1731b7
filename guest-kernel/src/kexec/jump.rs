//! The jump and the two kernels' jump loops: A jumps to B and checks
//! itself when it is back, `cycles` times; B jumps back to A and checks
//! itself each time it is resumed.

use core::fmt::Write;

use kjump_abi::abi::{KimageArgs, Role};
use kjump_abi::bootparams::E820_RAM;
use kjump_abi::cmdline;
use kjump_abi::control::{self, Slot, slot_offset};
use kjump_abi::fault::{Fault, JumpFault};
use kjump_abi::layout::PAGE_SIZE;

use super::cpu_state::{check_cpu, cpu_view, load_sse_pattern, set_b_control_bits};
use super::faults::Injected;
use super::pattern::Pattern;
use super::syscore;
use super::{Config, GIB, fail, load, phys_read_u64, phys_write_u64};
use crate::bootinfo::BootInfo;
use crate::relocate::kjump_jump;
use crate::{harness, mem, serial};

/// A loaded jump image: the control pages and the list(s) they point to.
#[derive(Clone, Copy)]
pub(super) struct JumpImage {
    pub(super) role: Role,
    pub(super) cp: u64,
    pub(super) control_pages: u64,
    pub(super) head: u64,
    pub(super) head2: u64,
    pub(super) backup: bool,
    pub(super) peer_start: u64,
    pub(super) peer_end: u64,
    /// Pages moved per transfer (for the self-check).
    pub(super) pages_per_transfer: u64,
    /// A's kimage of B: the first source page (0 for B's kimage back).
    pub(super) sources: u64,
    /// Backup mode: where the jumping kernel's pages of the peer region
    /// are saved, page for page (0 in swap mode).
    pub(super) save: u64,
}

impl JumpImage {
    fn report(&self) {
        let mut args = [0u64; 8];
        args[KimageArgs::HEAD] = self.head;
        args[KimageArgs::CONTROL] = self.cp;
        args[KimageArgs::CONTROL_PAGES] = self.control_pages;
        args[KimageArgs::MODE] = if self.backup {
            control::MODE_BACKUP
        } else {
            control::MODE_SWAP
        };
        args[KimageArgs::ROLE] = self.role as u64;
        args[KimageArgs::PEER_START] = self.peer_start;
        args[KimageArgs::PEER_END] = self.peer_end;
        args[KimageArgs::HEAD2] = self.head2;
        harness::kimage(args);
    }

    /// Quiesces, reports the kimage, jumps; returns once resumed.
    pub(super) fn jump(&self) {
        // Interrupts stay off for the whole run; the UART is the device to
        // quiesce: its registers go into the context, and the re-entry path
        // programs them back before the checkpoint. So it does with the
        // interrupt controllers and the MTRRs (syscore.rs).
        let uart = serial::save();
        let mut slot = [0u8; 8];
        slot[..6].copy_from_slice(&uart);
        phys_write_u64(self.cp + slot_offset(Slot::Uart), u64::from_le_bytes(slot));
        let saved = syscore::save(self.role, self.cp);
        self.report();
        // SAFETY: the control page was set up by `setup_control_pages` and
        // the list by `Builder`; kjump_jump saves and restores every
        // register and returns like a function once this kernel is resumed.
        unsafe { kjump_jump(self.cp) };
        syscore::report_resumed(self.role, &saved);
    }

    /// Self-check once back: the relocation code moved every page of
    /// the kimage on the way back.
    pub(super) fn check_pairs_moved(&self) {
        let moved = phys_read_u64(self.cp + control::DATA_PAIRS);
        if moved != self.pages_per_transfer {
            fail(format_args!(
                "a: self-check: the jump back moved {moved} pages, expected {}",
                self.pages_per_transfer
            ));
        }
    }
}

/// Kernel A: load B, then jump A→B→A `cycles` times.
pub fn run_a(boot: &BootInfo) -> ! {
    let cfg = Config::parse(boot.cmdline).unwrap_or_else(|e| fail(format_args!("a: {e}")));
    let injected = Injected::from_cmdline(boot);
    syscore::init(Role::A);
    let img = load::load_b(boot, &cfg);
    let cp = img.cp;
    let pattern = Pattern::new(
        Role::A,
        cfg.pattern_bytes,
        (img.peer_start, img.peer_end),
        cp,
    );
    load_sse_pattern(Role::A);
    crate::println!(
        "a: pattern over {} bytes; {} cycles",
        pattern.bytes(),
        cfg.cycles
    );
    // The kimage A reports in the armed cycle(s) instead of the one its
    // relocation code walks (nothing moves differently), and the page it
    // claims: `claim-live-page`, `claim-own-text` claim a page of A's own
    // as a source page parked at itself (the page just past B's region,
    // A's memory; one of A's text); `claim-control-page` lists B's first
    // page again, parked in A's control page; `move-b-region` gives B's
    // region one page more at its end.
    let claim = |dest, src| {
        let head = load::claim_list(img.head, dest, src, (img.peer_start, img.peer_end));
        Some((JumpImage { head, ..img }, Some(src)))
    };
    let reported = match injected.fault() {
        Some(Fault::Jump(JumpFault::ClaimLivePage)) => claim(img.peer_end, img.peer_end),
        Some(Fault::Jump(JumpFault::ClaimOwnText)) => {
            let page = run_a as *const () as u64 & !(PAGE_SIZE - 1);
            claim(page, page)
        }
        Some(Fault::Jump(JumpFault::ClaimControlPage)) => claim(img.peer_start, img.cp),
        Some(Fault::Jump(JumpFault::MoveBRegion)) => Some((
            JumpImage {
                peer_end: img.peer_end + PAGE_SIZE,
                ..img
            },
            None,
        )),
        _ => None,
    };
    for cycle in 1..=cfg.cycles {
        let before = cpu_view();
        injected.arm(cp, cycle);
        // Only these faults report another kimage, and only when armed.
        match (&reported, injected.jump(cycle)) {
            (Some((r, claimed)), Some(_)) => {
                match claimed {
                    Some(page) => crate::println!("a: my kimage claims page {page:#x}"),
                    None => crate::println!(
                        "a: my kimage gives b {:#x}..{:#x}",
                        r.peer_start,
                        r.peer_end
                    ),
                }
                r.jump()
            }
            _ => img.jump(),
        }
        injected.arm(cp, 0);
        check_cpu(Role::A, &before);
        pattern.check(Role::A);
        img.check_pairs_moved();
        crate::println!("a: cycle {cycle}: back from b, state intact");
        harness::progress(cycle);
        injected.arrived(cycle);
    }
    let mut msg = harness::TextBuf::new();
    let _ = write!(
        msg,
        "ping-pong: {} cycles, kernel a and kernel b self-checks passed",
        cfg.cycles
    );
    harness::verdict(true, msg.as_str());
    crate::halt_forever()
}

/// Kernel B: booted once by A; jumps back, and is resumed again and again.
pub fn run_b(boot: &BootInfo) -> ! {
    let Some(entry) =
        cmdline::get(boot.cmdline, "kexec_jump_back_entry").and_then(cmdline::parse_u64)
    else {
        fail(format_args!(
            "b: no kexec_jump_back_entry= on the command line"
        ))
    };
    set_b_control_bits();
    syscore::init(Role::B);
    syscore::program_b();
    let map_top = mem::ram_top().max(4 * GIB);
    let (cp, control_pages) = load::setup_control_pages(Role::B, map_top);
    let injected = Injected::from_cmdline(boot);
    injected.arrived(1);
    let ram_end = boot
        .e820()
        .iter()
        .filter(|e| e.kind == E820_RAM)
        .map(|e| e.addr + e.size)
        .max()
        .unwrap_or(0);
    let img = load::jump_back_image(cp, control_pages, entry);
    let pattern = Pattern::new(Role::B, 64 << 10, (0, 0), cp);
    load_sse_pattern(Role::B);
    crate::println!("b: jump-back entry {entry:#x}, control page {cp:#x}; jumping back to a");
    // The resume counter is kept twice: in .bss (swapped out with B) and in
    // a local on B's stack across the jump.
    static mut RESUMES: u64 = 0;
    loop {
        // SAFETY: single CPU, interrupts off: nothing else touches RESUMES.
        let before_count = unsafe { RESUMES };
        // B's jump number n + 1 is in cycle n + 1 (it boots in cycle 1).
        let cycle = before_count + 1;
        if injected.jump(cycle) == Some(JumpFault::WriteOutside) {
            // One word just past the RAM B was given: A's memory, which
            // B's identity map reaches but B must never touch.
            crate::println!(
                "b: writing one word at {:#x}, outside my RAM",
                ram_end + 0x100
            );
            phys_write_u64(ram_end + 0x100, 0xbad0_b0b0_bad0_b0b0);
        }
        let before = cpu_view();
        injected.arm(cp, cycle);
        img.jump();
        injected.arm(cp, 0);
        check_cpu(Role::B, &before);
        pattern.check(Role::B);
        // SAFETY: as above.
        let n = unsafe {
            RESUMES += 1;
            RESUMES
        };
        if n != before_count + 1 {
            fail(format_args!(
                "b: resume counter went from {before_count} to {n}"
            ));
        }
        crate::println!("b: resumed #{n} (not rebooted), state intact");
        injected.arrived(n + 1);
    }
}
