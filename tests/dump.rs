//! Dumps opened by the real tools: gdb reads a kjump dump together with the
//! guest kernel's ELF and shows the registers and a backtrace with the
//! kernel's symbols. Needs no KVM: the dump is written from plain values
//! (the kernel image placed in guest memory at its load addresses).

mod common;
use common::scratch;

use std::process::Command;

use kjump::GuestMem;
use kjump::checkpoint::{CheckpointId, Direction, Kernel};
use kjump::dump::{DumpInput, cmd_inspect, read_dump, write_dump};
use kjump::snapshot::VcpuState;
use kjump::symbols::Symbols;
use kjump_guest::elf::Elf;
use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress};

/// Whether gdb runs here. Without it the test skips, loudly; with
/// `KJUMP_REQUIRE_KVM=1` (CI) a skip is a failure.
fn gdb_or_skip(test: &str) -> bool {
    let ok = Command::new("gdb")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let msg = format!("SKIPPED {test}: gdb is not installed");
        if std::env::var("KJUMP_REQUIRE_KVM").as_deref() == Ok("1") {
            panic!("{msg} (KJUMP_REQUIRE_KVM=1 turns the skip into a failure)");
        }
        eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
    }
    ok
}

/// A 64-bit kernel state stopped at `rip`, with `rsp` pointing at a return
/// address.
fn state_at(rip: u64, rsp: u64) -> VcpuState {
    let mut s = VcpuState::default();
    s.regs.rip = rip;
    s.regs.rsp = rsp;
    s.regs.rbx = 0x1234_5678_9abc_def0;
    s.regs.rflags = 0x2;
    let data = kvm_segment {
        selector: 0x10,
        type_: 3,
        present: 1,
        s: 1,
        g: 1,
        limit: 0xffff_ffff,
        ..Default::default()
    };
    s.sregs.cs = kvm_segment {
        selector: 8,
        type_: 11,
        l: 1,
        ..data
    };
    (s.sregs.ds, s.sregs.es, s.sregs.ss) = (data, data, data);
    s.sregs.cr0 = 0x8000_0011;
    s.sregs.cr3 = 0x9000;
    s.sregs.cr4 = 0x20;
    s.sregs.efer = 0x500;
    s
}

#[test]
fn gdb_shows_registers_and_backtrace_of_a_dump() {
    if !gdb_or_skip("gdb_shows_registers_and_backtrace_of_a_dump") {
        return;
    }
    let dir = scratch("gdb-dump");
    let kernel = dir.join("kjump-guest");
    std::fs::write(&kernel, kjump::DEFAULT_KERNEL).unwrap();
    let syms = Symbols::from_elf(kjump::DEFAULT_KERNEL).unwrap();
    let rip = syms
        .address_of("kjump_checkpoint")
        .expect("the guest kernel has kjump_checkpoint");
    let entry = object_entry();
    let caller = syms.lookup(entry).expect("the entry point has a symbol");
    let caller = caller.split([' ', '+']).next().unwrap().to_string();

    // Guest RAM with the kernel at its load addresses and a stack above it
    // whose top holds a return address into the entry function.
    let elf = Elf::parse(kjump::DEFAULT_KERNEL).unwrap();
    let (_, end) = elf.extent().unwrap();
    let ram = (end + (4 << 20)) & !((2 << 20) - 1);
    let mem = GuestMem::from_ranges(&[(GuestAddress(0), ram as usize)]).unwrap();
    for seg in elf.segments() {
        mem.write_slice(seg.data, GuestAddress(seg.paddr)).unwrap();
    }
    let rsp = ram - 0x1000;
    mem.write_obj(entry + 1, GuestAddress(rsp)).unwrap();

    let state = state_at(rip, rsp);
    let id = CheckpointId {
        index: 0,
        cycle: 1,
        kernel: Kernel::A,
        direction: Direction::Suspend,
    };
    let dump = dir.join("a.core");
    let input = DumpInput {
        state: &state,
        id: &id,
        jump_back_entry: rip,
        resumable: true,
        memory: &mem,
        kernel_name: "built-in",
        mem_size: ram,
        kjump_version: env!("CARGO_PKG_VERSION"),
    };
    write_dump(&dump, &input).unwrap();
    assert_eq!(read_dump(&dump).unwrap().state(), &state);
    let inspect = cmd_inspect(&dump, false).unwrap();
    assert!(inspect.contains(&format!("rip {rip:#018x}")), "{inspect}");

    let out = Command::new("gdb")
        .args([
            "-batch",
            "-nx",
            "-ex",
            "info registers rip",
            "-ex",
            "info registers rbx",
            "-ex",
            "bt 2",
        ])
        .arg(&kernel)
        .arg(&dump)
        .output()
        .expect("gdb runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let all = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(out.status.success(), "{all}");
    let line = |start: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start}: {all}"))
    };
    let rip_line = line("rip");
    assert!(
        rip_line.contains(&format!("{rip:#x}")) && rip_line.contains("<kjump_checkpoint>"),
        "{all}"
    );
    assert!(line("rbx").contains("0x123456789abcdef0"), "{all}");
    let frame0 = line("#0");
    assert!(frame0.contains("kjump_checkpoint"), "{all}");
    // The return address on the dump's stack, resolved in the kernel.
    let frame1 = line("#1");
    assert!(
        frame1.contains(&format!("{:#018x}", entry + 1)) && frame1.contains(&caller),
        "{all}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The kernel's ELF entry point.
fn object_entry() -> u64 {
    Elf::parse(kjump::DEFAULT_KERNEL).unwrap().entry
}
