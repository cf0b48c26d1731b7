//! What the loader (the VMM, or kernel A for kernel B) tells the kernel in
//! `boot_params`: the e820 map, the command line and the initramfs. Copied
//! out of the zero page at boot, so that later code need not trust or keep
//! the loader's memory.

use kjump_abi::abi::Role;
use kjump_abi::bootparams::{E820_MAX, E820_RAM, E820Entry, SIZE as ZERO_PAGE_SIZE, ZeroPage};
use kjump_abi::cmdline;
use kjump_abi::layout::CMDLINE_MAX;

use crate::sync::Once;

/// Everything the kernel learned from `boot_params`.
pub struct BootInfo {
    /// Physical address of the zero page the kernel was entered with.
    pub zero_page: u64,
    e820: [E820Entry; E820_MAX],
    e820_len: usize,
    /// The command line, copied into the kernel (checked UTF-8).
    pub cmdline: &'static str,
    /// Physical address of the loader's command line (0 when none).
    pub cmdline_addr: u64,
    /// `kjump.role=` (default a).
    pub role: Role,
    /// `kjump.scenario=` (empty when absent).
    pub scenario: &'static str,
    /// The initramfs bytes, in place (empty when there is none). The frame
    /// allocator keeps its pages reserved, and nothing writes them.
    pub initramfs: &'static [u8],
    /// Physical address of the initramfs (0 when none).
    pub initramfs_addr: u64,
}

static BOOT_INFO: Once<BootInfo> = Once::new();
/// The kernel's copy of the command line.
static CMDLINE: Once<[u8; CMDLINE_MAX as usize]> = Once::new();

impl BootInfo {
    /// The e820 map as the loader gave it.
    pub fn e820(&self) -> &[E820Entry] {
        &self.e820[..self.e820_len]
    }

    /// The value of `key=` on the command line.
    pub fn arg(&self, key: &str) -> Option<&'static str> {
        cmdline::get(self.cmdline, key)
    }

    /// `kjump.fault=`, if any.
    pub fn fault(&self) -> Option<&'static str> {
        self.arg(kjump_abi::fault::KEY)
    }

    /// End of the loader's command line, NUL included (for reservations).
    pub fn cmdline_end(&self) -> u64 {
        self.cmdline_addr + self.cmdline.len() as u64 + 1
    }
}

/// True when `[start, start + len)` lies inside one e820 RAM entry.
fn in_ram(e820: &[E820Entry], start: u64, len: u64) -> bool {
    let Some(end) = start.checked_add(len) else {
        return false;
    };
    e820.iter()
        .any(|e| e.kind == E820_RAM && e.addr <= start && end <= e.addr.saturating_add(e.size))
}

/// Reads `len` bytes of physical memory below the boot identity map.
///
/// # Safety
/// `[addr, addr + len)` must be mapped, readable memory that nothing
/// writes while the slice is alive.
unsafe fn phys_slice(addr: u64, len: usize) -> &'static [u8] {
    // SAFETY: as the caller guarantees.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

/// Parses the zero page at `zero_page` (the `rsi` the kernel was entered
/// with) and keeps the result for [`get`]. Panics with a clear message on a
/// zero page the kernel cannot run with.
pub fn init(zero_page: u64) -> &'static BootInfo {
    assert!(
        zero_page != 0 && zero_page.is_multiple_of(8),
        "boot_params address {zero_page:#x} is not valid (rsi at entry)"
    );
    // SAFETY: the loader puts boot_params in RAM covered by the boot
    // identity map and does not touch it while the kernel runs; it is read
    // here, before the frame allocator exists, and copied out.
    let zp: &[u8; ZERO_PAGE_SIZE] = unsafe { phys_slice(zero_page, ZERO_PAGE_SIZE) }
        .try_into()
        .expect("ZERO_PAGE_SIZE bytes");
    let zp = ZeroPage(zp);

    let mut e820 = [E820Entry::default(); E820_MAX];
    let mut e820_len = 0;
    for (slot, e) in e820.iter_mut().zip(zp.e820()) {
        *slot = e;
        e820_len += 1;
    }
    assert!(e820_len > 0, "boot_params has an empty e820 map");
    let e820_used = &e820[..e820_len];

    let cmdline_addr = zp.cmd_line_ptr();
    let mut copy = [0u8; CMDLINE_MAX as usize];
    if cmdline_addr != 0 {
        // Read up to CMDLINE_MAX bytes, but not past the end of the RAM entry
        // holding the line (the loader may put it near the end of RAM).
        let avail = e820_used
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .find(|e| e.addr <= cmdline_addr && cmdline_addr < e.addr.saturating_add(e.size))
            .map_or(CMDLINE_MAX, |e| {
                (e.addr + e.size - cmdline_addr).min(CMDLINE_MAX)
            });
        // SAFETY: boot_params' command line is in identity-mapped memory the
        // loader owns and leaves alone; at most CMDLINE_MAX bytes are read.
        let raw = unsafe { phys_slice(cmdline_addr, avail as usize) };
        let line = cmdline::from_nul_terminated(raw)
            .unwrap_or_else(|e| panic!("bad command line at {cmdline_addr:#x}: {e}"));
        copy[..line.len()].copy_from_slice(line.as_bytes());
    }
    // The copy holds the checked line and NULs after it.
    let copy = CMDLINE.init(copy);
    let cmdline =
        cmdline::from_nul_terminated(copy).expect("a checked line shorter than CMDLINE_MAX");

    let (initramfs_addr, size) = zp.ramdisk();
    let initramfs: &'static [u8] = if size == 0 {
        &[]
    } else {
        assert!(
            in_ram(e820_used, initramfs_addr, size),
            "the initramfs [{initramfs_addr:#x}, +{size:#x}) is not inside e820 RAM"
        );
        // SAFETY: the range lies inside e820 RAM, which is identity-mapped;
        // `mem` excludes it from allocation and nothing writes it, so it
        // stays unchanged for the kernel's lifetime.
        unsafe { phys_slice(initramfs_addr, size as usize) }
    };

    let role = match cmdline::get(cmdline, cmdline::ROLE_KEY) {
        None | Some("a") => Role::A,
        Some("b") => Role::B,
        Some("c") => Role::C,
        Some(other) => panic!("{}={other}: expected a, b or c", cmdline::ROLE_KEY),
    };
    BOOT_INFO.init(BootInfo {
        zero_page,
        e820,
        e820_len,
        cmdline,
        cmdline_addr,
        role,
        scenario: cmdline::get(cmdline, cmdline::SCENARIO_KEY).unwrap_or(""),
        initramfs,
        initramfs_addr: if size == 0 { 0 } else { initramfs_addr },
    })
}

/// The boot information, once [`init`] ran.
#[allow(dead_code, reason = "API for the kexec scenarios (kernel/kexec.rs)")]
pub fn get() -> Option<&'static BootInfo> {
    BOOT_INFO.get()
}
