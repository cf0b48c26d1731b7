//! The ELF code kjump owns: the guest's loader (`kjump_abi::elf`, kernel
//! A on kernel B's image), the VMM's checks before a kernel is loaded
//! (`boot::inspect_kernel`, `check_kernel_fits`, `plan`; linux-loader's own
//! parsing is not ours) and the symbol table reports use (`Symbols`).
//!
//! Asserts: every segment the guest's parser returns lies inside the image,
//! has `filesz <= memsz` and does not wrap, there is one per `PT_LOAD`
//! header, and `extent` bounds them all; whatever the VMM accepts the guest
//! accepts too, with the same segments; an accepted kernel's entry lies in a
//! segment, and a planned boot puts every segment in RAM above 1 MiB and the
//! initramfs in RAM off the kernel; a symbol lookup names the innermost
//! symbol that covers the address, or the size-less label right before it,
//! and a section lookup a section that holds it.
#![no_main]

use kjump_abi::elf::{Elf, PT_LOAD};
use kjump_abi::layout;
use kjump_core::image::{self as boot, KernelInfo};
use kjump_core::symbols::Symbols;
use kjump_fuzz::within;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let guest = guest(data);
    host(data, guest.as_ref());
    symbols(data);
    let _ = symbol_tables(data);
});

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// The guest's parser; returns `(paddr, memsz)` of its segments.
fn guest(data: &[u8]) -> Option<Vec<(u64, u64)>> {
    let elf = Elf::parse(data).ok()?;
    let mut segs = Vec::new();
    for s in elf.segments() {
        assert!(within(data, s.data), "segment bytes outside the image");
        assert!(s.data.len() as u64 <= s.memsz, "filesz > memsz");
        assert!(s.paddr.checked_add(s.memsz).is_some(), "segment wraps");
        segs.push((s.paddr, s.memsz));
    }
    // One segment per PT_LOAD header (a header the parser accepted).
    let (phoff, phentsize, phnum) = (
        u64_at(data, 32) as usize,
        usize::from(u16_at(data, 54)),
        usize::from(u16_at(data, 56)),
    );
    let loads = (0..phnum)
        .filter(|i| data[phoff + i * phentsize..][..4] == PT_LOAD.to_le_bytes())
        .count();
    assert_eq!(segs.len(), loads, "a PT_LOAD went missing");
    let lo = segs.iter().map(|s| s.0).min();
    let hi = segs.iter().map(|s| s.0 + s.1).max();
    assert_eq!(elf.extent(), lo.zip(hi));
    Some(segs)
}

/// The VMM's checks before loading a kernel.
fn host(data: &[u8], guest: Option<&Vec<(u64, u64)>>) {
    let Ok(info) = boot::inspect_kernel(data) else {
        return;
    };
    let KernelInfo {
        entry,
        ref segments,
        start,
        end,
    } = info;
    assert!(!segments.is_empty());
    assert!(
        segments
            .iter()
            .any(|s| s.paddr <= entry && entry - s.paddr < s.memsz),
        "entry {entry:#x} outside the image"
    );
    for s in segments {
        assert!(s.memsz > 0);
        assert!(start <= s.paddr && s.paddr + s.memsz <= end);
    }
    // The guest reads kernels the VMM accepts, with the same segments
    // (the empty ones aside, which the VMM drops).
    let guest = guest.expect("the VMM accepts an ELF the guest's parser refuses");
    let nonempty: Vec<(u64, u64)> = guest.iter().copied().filter(|s| s.1 > 0).collect();
    let host: Vec<(u64, u64)> = segments.iter().map(|s| (s.paddr, s.memsz)).collect();
    assert_eq!(
        host, nonempty,
        "the VMM and the guest see different segments"
    );

    for ram in [layout::MIN_RAM, 256 << 20, 4 << 30] {
        let fits = boot::check_kernel_fits(&info, ram).is_ok();
        let (ranges, n) = layout::ram_ranges(ram);
        let model = segments.iter().all(|s| {
            s.paddr >= layout::HIGH_RAM_START
                && ranges[..n]
                    .iter()
                    .any(|&(b, l)| s.paddr >= b && s.paddr + s.memsz <= b + l)
        });
        assert_eq!(fits, model, "check_kernel_fits with {ram:#x} bytes of RAM");
    }
    // A whole boot plan: an initramfs of a size from the input.
    let initramfs = data.len() as u64 * 4096;
    for ram in [layout::MIN_RAM, 256 << 20] {
        if let Ok(plan) = boot::plan(ram, data, Some(initramfs), "console=ttyS0") {
            let (addr, size) = plan.initramfs.expect("a non-empty initramfs");
            assert_eq!(size, initramfs);
            assert!(
                addr >= layout::HIGH_RAM_START && addr + size <= ram.min(layout::MMIO_HOLE_START)
            );
            assert!(addr + size <= plan.kernel.start || plan.kernel.end <= addr);
        }
    }
}

/// Symbols read from the input as an ELF file: every lookup names something
/// that covers the address.
fn symbols(data: &[u8]) {
    let Ok(t) = Symbols::from_elf(data) else {
        return;
    };
    let mut addrs: Vec<u64> = data
        .chunks_exact(8)
        .take(64)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    addrs.extend([0, 1, u64::MAX, layout::KERNEL_START]);
    for a in addrs {
        if let Some((name, off)) = t.symbol_at(a) {
            assert!(off <= a);
            assert!(
                t.address_of(name).is_some(),
                "{name} cannot be found by name"
            );
        }
        if let Some((_, off)) = t.section_at(a) {
            assert!(off <= a);
        }
        let _ = t.lookup(a);
    }
}

/// Symbol tables built from the input, checked against a brute-force
/// search: an address resolves to the innermost symbol that covers it, or
/// else to the size-less label (an assembly entry point) right before it.
fn symbol_tables(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let small = |u: &mut Unstructured<'_>| -> Result<u64> {
        // Mostly small addresses and sizes, so that they meet.
        Ok(if u.ratio(7, 8)? {
            u.int_in_range(0..=0x400)?
        } else {
            u.arbitrary()?
        })
    };
    let mut syms = Vec::new();
    for i in 0..u.int_in_range(0..=24)? {
        syms.push((format!("s{i}"), small(&mut u)?, small(&mut u)?));
    }
    let mut secs = Vec::new();
    for i in 0..u.int_in_range(0..=6)? {
        // `.text…` sections hold code (labels name the code after them).
        let name = if u.arbitrary()? {
            format!(".text{i}")
        } else {
            format!(".data{i}")
        };
        secs.push((name, small(&mut u)?, small(&mut u)?));
    }
    // The section holding an address, as the table finds it: the last (in
    // a stable sort by start) that starts at or below it, if it reaches it.
    let mut by_start: Vec<(usize, &(String, u64, u64))> = secs.iter().enumerate().collect();
    by_start.sort_by_key(|(_, s)| s.1);
    let section_of = |x: u64| {
        by_start
            .iter()
            .rfind(|(_, s)| s.1 <= x)
            .filter(|(_, s)| x < s.1.saturating_add(s.2))
            .map(|(i, s)| (*i, s.0.starts_with(".text")))
    };
    let same_code = |a: u64, b: u64| matches!((section_of(a), section_of(b)), (Some((i, true)), Some((j, _))) if i == j);
    let t = Symbols::from_parts(syms.clone(), secs.clone());
    assert_eq!(t.len(), syms.len(), "distinct names, none dropped");
    let covers = |start: u64, size: u64, a: u64| a == start || (a > start && a - start < size);
    while !u.is_empty() {
        let a = small(&mut u)?;
        // Symbols starting nearest below (or at) the address: the first
        // lookup looks at (back MAX_OVERLAP = 16 symbols; the checks on
        // what it missed hold when they are that few).
        let nearest = syms.iter().filter(|s| s.1 <= a).map(|s| s.1).max();
        let at_nearest: Vec<_> = syms.iter().filter(|s| Some(s.1) == nearest).collect();
        // A covering symbol the lookup should have found first.
        let missed = at_nearest.len() <= 16 && at_nearest.iter().any(|s| covers(s.1, s.2, a));
        let label = at_nearest.iter().any(|s| s.2 == 0 && same_code(s.1, a));
        match t.symbol_at(a) {
            Some((name, off)) => {
                let &(_, start, size) = syms.iter().find(|s| s.0 == name).expect("a known symbol");
                assert_eq!(start, a - off);
                if covers(start, size, a) {
                    // The innermost: no covering symbol starts later.
                    assert!(!syms.iter().any(|s| covers(s.1, s.2, a) && s.1 > start));
                } else {
                    // Else the size-less label right before it, in the
                    // same code section.
                    assert!(
                        size == 0 && Some(start) == nearest && !missed && same_code(start, a),
                        "{name} ({start:#x}+{size:#x}) for {a:#x}"
                    );
                }
            }
            None => assert!(
                !label && !missed,
                "{a:#x}: missed a symbol that starts right below it"
            ),
        }
        let in_section = secs.iter().any(|s| a >= s.1 && a < s.1.saturating_add(s.2));
        match t.section_at(a) {
            Some((name, off)) => {
                let &(_, start, size) = secs.iter().find(|s| s.0 == name).expect("a known section");
                assert_eq!(start, a - off);
                assert!(a < start.saturating_add(size));
            }
            None => assert!(!in_section, "{a:#x} is in a section"),
        }
    }
    Ok(())
}
