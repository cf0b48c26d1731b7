//! The machine state outside the CPU's registers that a kernel carries
//! across a jump, as Linux's `syscore_suspend()`/`syscore_resume()` do
//! around a preserve-context kexec (kernel/kexec_core.c `kernel_kexec`):
//! the 8259 masks (`i8259A_suspend`/`i8259A_resume`), the IOAPIC's routing
//! (`ioapic_suspend`/`ioapic_resume`) and the MTRRs (`mtrr_save`/
//! `mtrr_restore`). [`save`] writes them into the control page
//! (`control::SAVED_*`) before the jump; the re-entry path (relocate.rs,
//! `kjump_reentry`) puts them back before the resume checkpoint, so the VMM
//! finds each kernel's own.
//!
//! Kernel B programs each its own way at boot ([`program_b`]), as it does
//! its control bits: a re-entry path that forgets one leaves the peer's
//! value in exactly the field B changed (the 8259 masks, IOAPIC pin 4,
//! MTRR_DEF_TYPE).
//!
//! Only the ping-pong scenario runs this; the VMM gives it KVM's in-kernel
//! irqchip (the 8259 pair and the IOAPIC).

use core::fmt::Write;

use kjump_abi::abi::Role;
use kjump_abi::arch::{
    CR0_CD, CR4_PGE, IOAPIC_BASE, IOAPIC_REG_ID, IOAPIC_REG_REDTBL, IOAPIC_REG_VER, IOAPIC_REGSEL,
    IOAPIC_WINDOW, MSR_MTRR_CAP, MSR_MTRR_DEF_TYPE, MSR_MTRR_FIXED, MSR_MTRR_PHYSBASE0,
    MTRR_DEF_TYPE_E, MTRR_DEF_TYPE_FE, MTRR_TYPE_WB, MTRR_VAR_MAX, PIC_MASTER_IMR, PIC_SLAVE_IMR,
};
use kjump_abi::control::{self, SAVED_IOAPIC_MAX_PINS, SAVED_MTRR_MAX};

use super::{fail, phys_write_u64};
use crate::cpu::{self, inb, outb};
use crate::{harness, paging};

/// B's 8259 masks (master, slave): all lines masked but the cascade
/// (IRQ 2), as Linux's `init_8259A` leaves them. A keeps what it booted
/// with (KVM's reset value: all clear).
const B_PIC_MASKS: [u8; 2] = [0xfb, 0xff];
/// The IOAPIC pin B routes differently from A (ISA IRQ 4, COM1's line,
/// which the VMM never raises: the UART has no interrupt in kjump).
const B_IOAPIC_PIN: u32 = 4;
/// B's entry for that pin: vector 0x34, fixed delivery, physical
/// destination APIC 0, edge, active high, unmasked. A keeps KVM's reset
/// value (masked, vector 0).
const B_IOAPIC_ENTRY: u64 = 0x34;
/// B's MTRR_DEF_TYPE: MTRRs and fixed ranges enabled, default type WB (as
/// firmware leaves a PC). A keeps KVM's reset value (0: disabled, UC).
const B_MTRR_DEF_TYPE: u64 = MTRR_DEF_TYPE_E | MTRR_DEF_TYPE_FE | MTRR_TYPE_WB;

/// What [`save`] wrote into the control page, kept by the kernel across
/// the jump for its debug report.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Saved {
    pic: [u8; 2],
    ioapic: Ioapic,
    mtrrs: Mtrrs,
}

/// Checks that the kernel can reach the devices: its own page tables map
/// the IOAPIC's registers, uncached.
pub(super) fn init(role: Role) {
    if !paging::maps_uncached(IOAPIC_BASE) {
        fail(format_args!(
            "{}: the IOAPIC at {IOAPIC_BASE:#x} is not mapped uncached",
            role.name()
        ))
    }
}

/// Saves the 8259 masks, the IOAPIC and the MTRRs into control page `cp`,
/// for the re-entry path; changes none of them (IOREGSEL ends as found).
pub(super) fn save(role: Role, cp: u64) -> Saved {
    let saved = Saved {
        pic: pic_masks(),
        ioapic: Ioapic::read(),
        mtrrs: Mtrrs::read(),
    };
    let [master, slave] = saved.pic;
    phys_write_u64(
        cp + control::SAVED_PIC,
        u64::from_le_bytes([master, slave, 0, 0, 0, 0, 0, 0]),
    );
    let io = &saved.ioapic;
    phys_write_u64(
        cp + control::SAVED_IOAPIC_SEL_ID,
        u64::from(io.sel) | u64::from(io.id) << 32,
    );
    phys_write_u64(cp + control::SAVED_IOAPIC_PINS, u64::from(io.pins));
    for (pin, e) in io.entries().iter().enumerate() {
        phys_write_u64(cp + control::SAVED_IOAPIC_REDIR + 8 * pin as u64, *e);
    }
    let m = &saved.mtrrs;
    phys_write_u64(cp + control::SAVED_MTRR_COUNT, m.count as u64);
    for (i, (msr, value)) in m.pairs().iter().enumerate() {
        let at = cp + control::SAVED_MTRRS + 16 * i as u64;
        phys_write_u64(at, u64::from(*msr));
        phys_write_u64(at + 8, *value);
    }
    log::debug!(
        "{}: saved for the jump: 8259 masks {master:#04x}/{slave:#04x}; ioapic id {:#x}, ioregsel {:#x}, {} pins, pin {B_IOAPIC_PIN} {:#x}; {} mtrrs, def type {:#x}",
        role.name(),
        io.id,
        io.sel,
        io.pins,
        io.redir[B_IOAPIC_PIN as usize],
        m.count,
        m.def_type(),
    );
    saved
}

/// At `kjump.log=debug`: after the jump back, what the re-entry path left
/// in the 8259 masks, the IOAPIC and the MTRRs, against what [`save`]
/// saved. Only reports (the VMM is the judge); reading the IOAPIC puts
/// IOREGSEL back as found.
pub(super) fn report_resumed(role: Role, saved: &Saved) {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    let now = Saved {
        pic: pic_masks(),
        ioapic: Ioapic::read(),
        mtrrs: Mtrrs::read(),
    };
    if now == *saved {
        log::debug!(
            "{}: back: 8259 masks, ioapic ({} pins, id, ioregsel) and {} mtrrs restored as saved",
            role.name(),
            saved.ioapic.pins,
            saved.mtrrs.count
        );
        return;
    }
    let mut t = harness::TextBuf::new();
    if now.pic != saved.pic {
        let _ = write!(
            t,
            " 8259 masks {:#04x}/{:#04x} (saved {:#04x}/{:#04x});",
            now.pic[0], now.pic[1], saved.pic[0], saved.pic[1]
        );
    }
    let (n, s) = (&now.ioapic, &saved.ioapic);
    if (n.id, n.sel) != (s.id, s.sel) {
        let _ = write!(
            t,
            " ioapic id {:#x} ioregsel {:#x} (saved {:#x} {:#x});",
            n.id, n.sel, s.id, s.sel
        );
    }
    for (pin, (a, b)) in n.entries().iter().zip(s.entries()).enumerate() {
        if a != b {
            let _ = write!(t, " ioapic pin {pin} {a:#x} (saved {b:#x});");
        }
    }
    for ((msr, a), (_, b)) in now.mtrrs.pairs().iter().zip(saved.mtrrs.pairs()) {
        if a != b {
            let _ = write!(t, " mtrr {msr:#x} {a:#x} (saved {b:#x});");
        }
    }
    log::debug!("{}: back, not as saved:{}", role.name(), t.as_str());
}

/// Kernel B's own 8259 masks, IOAPIC pin 4 and MTRR_DEF_TYPE (see the
/// `B_*` values); A keeps the ones it booted with.
pub(super) fn program_b() {
    set_pic_masks(B_PIC_MASKS);
    // IOREGSEL as found, as A leaves it: only the pin differs.
    let sel = ioapic_sel();
    ioapic_write_entry(B_IOAPIC_PIN, B_IOAPIC_ENTRY);
    set_ioapic_sel(sel);
    let mut mtrr = harness::TextBuf::new();
    if Mtrrs::read().count != 0 {
        set_mtrr_def_type(B_MTRR_DEF_TYPE);
        let _ = write!(mtrr, ", mtrr def type {B_MTRR_DEF_TYPE:#x}");
    }
    crate::println!(
        "b: 8259 masks {:#04x}/{:#04x}, ioapic pin {B_IOAPIC_PIN} {B_IOAPIC_ENTRY:#x}{}: mine differ from a's",
        B_PIC_MASKS[0],
        B_PIC_MASKS[1],
        mtrr.as_str(),
    );
}

// ---------------------------------------------------------------------------
// The 8259 pair.

fn pic_masks() -> [u8; 2] {
    // SAFETY: reading an 8259's IMR (OCW1 port) has no side effect; the
    // pair is this kernel's, interrupts are off.
    unsafe { [inb(PIC_MASTER_IMR), inb(PIC_SLAVE_IMR)] }
}

fn set_pic_masks([master, slave]: [u8; 2]) {
    // SAFETY: OCW1 only sets which lines the 8259s mask; the kernel runs
    // with interrupts off and the VMM raises no line.
    unsafe {
        outb(PIC_MASTER_IMR, master);
        outb(PIC_SLAVE_IMR, slave);
    }
}

// ---------------------------------------------------------------------------
// The IOAPIC: an index register and a data window (82093AA datasheet,
// 3.0), 32-bit accesses.

fn ioapic_reg(offset: u64) -> *mut u32 {
    (IOAPIC_BASE + offset) as *mut u32
}

fn ioapic_sel() -> u32 {
    // SAFETY: IOREGSEL, identity-mapped uncached (checked by `init`); a
    // read has no side effect; interrupts are off and only this kernel
    // touches the IOAPIC.
    unsafe { ioapic_reg(IOAPIC_REGSEL).read_volatile() }
}

fn set_ioapic_sel(reg: u32) {
    // SAFETY: as `ioapic_sel`; selecting a register changes nothing else.
    unsafe { ioapic_reg(IOAPIC_REGSEL).write_volatile(reg) }
}

fn ioapic_read(reg: u32) -> u32 {
    set_ioapic_sel(reg);
    // SAFETY: IOWIN, as `ioapic_sel`; reading a register has no side
    // effect.
    unsafe { ioapic_reg(IOAPIC_WINDOW).read_volatile() }
}

fn ioapic_write(reg: u32, value: u32) {
    set_ioapic_sel(reg);
    // SAFETY: IOWIN, as `ioapic_sel`. Callers write redirection entries
    // that route a line the VMM never raises, or values read back before.
    unsafe { ioapic_reg(IOAPIC_WINDOW).write_volatile(value) }
}

/// Writes redirection entry `pin`, high dword first (Linux's
/// `__ioapic_write_entry`).
fn ioapic_write_entry(pin: u32, entry: u64) {
    ioapic_write(IOAPIC_REG_REDTBL + 2 * pin + 1, (entry >> 32) as u32);
    ioapic_write(IOAPIC_REG_REDTBL + 2 * pin, entry as u32);
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Ioapic {
    /// IOREGSEL as found.
    sel: u32,
    id: u32,
    pins: u32,
    redir: [u64; SAVED_IOAPIC_MAX_PINS as usize],
}

impl Ioapic {
    /// The IOAPIC's programmable state; IOREGSEL ends as found.
    fn read() -> Self {
        let sel = ioapic_sel();
        let id = ioapic_read(IOAPIC_REG_ID);
        let max_entry = (ioapic_read(IOAPIC_REG_VER) >> 16) & 0xff;
        let pins = (max_entry + 1).min(SAVED_IOAPIC_MAX_PINS as u32);
        let mut redir = [0; SAVED_IOAPIC_MAX_PINS as usize];
        for (pin, e) in redir.iter_mut().take(pins as usize).enumerate() {
            let reg = IOAPIC_REG_REDTBL + 2 * pin as u32;
            *e = u64::from(ioapic_read(reg)) | u64::from(ioapic_read(reg + 1)) << 32;
        }
        set_ioapic_sel(sel);
        Self {
            sel,
            id,
            pins,
            redir,
        }
    }

    fn entries(&self) -> &[u64] {
        &self.redir[..self.pins as usize]
    }
}

// ---------------------------------------------------------------------------
// MTRRs (SDM vol. 3A, 12.11).

#[derive(Clone, Copy, PartialEq, Eq)]
struct Mtrrs {
    /// (MSR, value): MTRR_DEF_TYPE first, then the variable ranges, then
    /// the fixed ones; `count` used.
    pairs: [(u32, u64); SAVED_MTRR_MAX as usize],
    count: usize,
}

impl Mtrrs {
    /// The MTRRs the CPU has (CPUID.1:EDX.MTRR; IA32_MTRRCAP's VCNT, at
    /// most 8, and FIX); none without MTRRs.
    fn read() -> Self {
        let mut m = Self {
            pairs: [(0, 0); SAVED_MTRR_MAX as usize],
            count: 0,
        };
        if core::arch::x86_64::__cpuid(1).edx & (1 << 12) == 0 {
            return m;
        }
        let cap = crate::rdmsr(MSR_MTRR_CAP);
        let vcnt = (cap as u32 & 0xff).min(MTRR_VAR_MAX);
        let fixed: &[u32] = if cap & (1 << 8) != 0 {
            &MSR_MTRR_FIXED
        } else {
            &[]
        };
        let var = (0..2 * vcnt).map(|i| MSR_MTRR_PHYSBASE0 + i);
        for msr in [MSR_MTRR_DEF_TYPE]
            .into_iter()
            .chain(var)
            .chain(fixed.iter().copied())
        {
            m.pairs[m.count] = (msr, crate::rdmsr(msr));
            m.count += 1;
        }
        m
    }

    fn pairs(&self) -> &[(u32, u64)] {
        &self.pairs[..self.count]
    }

    fn def_type(&self) -> u64 {
        self.pairs().first().map_or(0, |p| p.1)
    }
}

/// Writes MTRR_DEF_TYPE the way Linux changes MTRRs (cacheinfo.c
/// `cache_disable`/`cache_enable`; SDM vol. 3A, 12.11.7.2): caches off
/// (CR0.CD) and flushed, global pages off and the TLB flushed, MTRRs
/// disabled; then the TLB flushed, the new value, CR0 and CR4 as they were.
fn set_mtrr_def_type(value: u64) {
    let (cr0, cr4): (u64, u64);
    // SAFETY: reads of CR0 and CR4.
    unsafe { core::arch::asm!("mov {}, cr0", "mov {}, cr4", out(reg) cr0, out(reg) cr4) };
    // SAFETY: CR0.CD (NW clear) only stops cache fills and wbinvd writes
    // the caches back; clearing CR4.PGE only flushes global TLB entries.
    // Memory stays coherent and mapped as before.
    unsafe {
        core::arch::asm!(
            "mov cr0, {cr0}", "wbinvd", "mov cr4, {cr4}",
            cr0 = in(reg) cr0 | CR0_CD, cr4 = in(reg) cr4 & !CR4_PGE,
        )
    };
    flush_tlb();
    // SAFETY: MTRR_DEF_TYPE exists (the caller checked the CPU has MTRRs);
    // 0 (disabled, UC) is valid.
    unsafe { crate::wrmsr(MSR_MTRR_DEF_TYPE, 0) };
    // SAFETY: wbinvd only writes back and invalidates the caches.
    unsafe { core::arch::asm!("wbinvd") };
    flush_tlb();
    // SAFETY: as above; `value` has a valid type (WB) and no reserved bit.
    unsafe { crate::wrmsr(MSR_MTRR_DEF_TYPE, value) };
    // SAFETY: CR0 and CR4 as they were read above.
    unsafe { core::arch::asm!("mov cr0, {}", "mov cr4, {}", in(reg) cr0, in(reg) cr4) };
}

fn flush_tlb() {
    // SAFETY: reloading CR3 with its own value keeps every mapping.
    unsafe { cpu::write_cr3(cpu::read_cr3()) };
}
