//! The oracle without KVM: `MachineState` values and an in-memory guest
//! RAM, with the relocation's page swap done by hand, as A and B would.

use super::*;
use crate::checkpoint::Tracker;
use crate::state::testing::sample_state;
use crate::state::{UART, UartState};
use kjump_abi::abi::{ANSWER_JUMP, KimageArgs};
use kjump_abi::control::MODE_SWAP;
use kjump_abi::kimage::{Builder, ListMemory};
use vm_memory::{Bytes, GuestAddress};

const RAM: u64 = 16 << 20;
/// The region A gives B, and where A's kimage parks A's pages of it.
const PEER: (u64, u64) = (0x10_0000, 0x20_0000);
const PARK: u64 = 0xa0_0000;
const CONTROL_A: u64 = 0x80_0000;
const CONTROL_B: u64 = 0x1f_0000;
const CONTROL_PAGES: u64 = 6;
const ENTRY_A: u64 = 0x20_a0a0;
const ENTRY_B: u64 = 0x10_b0b0;

struct Alloc<'a>(&'a GuestMem, u64);

impl ListMemory for Alloc<'_> {
    fn alloc_page(&mut self) -> Option<u64> {
        self.1 += PAGE;
        Some(self.1)
    }
    fn write_u64(&mut self, addr: u64, value: u64) {
        self.0.write_obj(value, GuestAddress(addr)).unwrap();
    }
}

/// A guest with A and B set up as after B's boot: A's kimage swaps B's
/// region with pages at `PARK`; B's kimage (in its region) has no pages.
struct Guest {
    mem: GuestMem,
    oracle: Oracle,
    tracker: Tracker,
    args: [[u64; 8]; 2],
}

fn args(head: u64, control: u64, role: u64) -> [u64; 8] {
    let mut a = [0u64; 8];
    a[KimageArgs::HEAD] = head;
    a[KimageArgs::CONTROL] = control;
    a[KimageArgs::CONTROL_PAGES] = CONTROL_PAGES;
    a[KimageArgs::MODE] = MODE_SWAP;
    a[KimageArgs::ROLE] = role;
    a[KimageArgs::PEER_START] = PEER.0;
    a[KimageArgs::PEER_END] = PEER.1;
    a
}

impl Guest {
    fn new() -> Self {
        Self::with(CompareMode::Dirty)
    }

    /// A fresh guest (RAM zero until written, every write in vm-memory's
    /// dirty bitmap, which stands in for KVM's log here).
    fn with(compare: CompareMode) -> Self {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        // Something in every page of A, so that pages differ.
        for p in (0..RAM).step_by(PAGE_SIZE) {
            mem.write_obj(p ^ 0x5a5a, GuestAddress(p + 8)).unwrap();
        }
        let mut list = Alloc(&mem, 0x90_0000);
        let mut b = Builder::new();
        for p in (PEER.0..PEER.1).step_by(PAGE_SIZE) {
            b.add_page(&mut list, p, PARK + (p - PEER.0)).unwrap();
        }
        let (head_a, _) = b.finish(&mut list).unwrap();
        mem.write_obj(ENTRY_A, GuestAddress(CONTROL_A + control::DATA_OWN_ENTRY))
            .unwrap();
        let mut oracle = Oracle::new(None, Allowlist::standard(), compare);
        oracle.ram_starts_zero();
        Self {
            mem,
            oracle,
            tracker: Tracker::new(),
            args: [args(head_a, CONTROL_A, 0), args(0, CONTROL_B, 1)],
        }
    }

    fn report_kimage(&mut self, k: Kernel) {
        if k == Kernel::B {
            // B's (empty) list, in B's region as B runs.
            let mut list_b = Alloc(&self.mem, 0x1e_0000);
            let (head_b, _) = Builder::new().finish(&mut list_b).unwrap();
            self.args[1][KimageArgs::HEAD] = head_b;
        }
        let a = self.args[k.idx()];
        let ki = Kimage::read(&self.mem, &a).unwrap();
        self.oracle.kimage_reported(k, ki, a);
    }

    /// The relocation code: swaps B's region with A's parking pages.
    fn swap(&self) {
        let mut x = vec![0u8; PAGE_SIZE];
        let mut y = vec![0u8; PAGE_SIZE];
        for p in (PEER.0..PEER.1).step_by(PAGE_SIZE) {
            let q = PARK + (p - PEER.0);
            self.mem.read_slice(&mut x, GuestAddress(p)).unwrap();
            self.mem.read_slice(&mut y, GuestAddress(q)).unwrap();
            self.mem.write_slice(&y, GuestAddress(p)).unwrap();
            self.mem.write_slice(&x, GuestAddress(q)).unwrap();
        }
    }

    fn checkpoint(&mut self, m: &MachineState) -> Vec<Mismatch> {
        self.judge(m).mismatches
    }

    /// A checkpoint with the pages written since the last one as the dirty
    /// list.
    fn judge(&mut self, m: &MachineState) -> Judgement {
        let id = self.tracker.next();
        let dirty = crate::pages::tests::harvest(&self.mem);
        self.oracle.checkpoint(&id, m, &self.mem, &dirty).unwrap()
    }

    fn write(&self, addr: u64, v: u64) {
        self.mem.write_obj(v, GuestAddress(addr)).unwrap();
    }
}

fn machine(rip: u64, answer: u32) -> MachineState {
    let mut s = sample_state();
    s.regs.rip = rip;
    s.regs.rax = answer.into();
    MachineState::new(s, UartState::default())
}

/// A suspends (#0), B boots and jumps back (#1), A resumes (#2): returns
/// A's machine as it left, and the mismatches of B's suspend.
fn first_cycle(g: &mut Guest) -> (MachineState, Vec<Mismatch>) {
    g.report_kimage(Kernel::A);
    let a = machine(0x20_1234, ANSWER_JUMP);
    assert_eq!(g.checkpoint(&a), vec![], "A's suspend");
    g.swap();
    // B booted in its region: its control page says where it is re-entered,
    // and where it enters A (A's own entry).
    g.write(CONTROL_B + control::DATA_OWN_ENTRY, ENTRY_B);
    g.write(CONTROL_B + control::DATA_PEER_ENTRY, ENTRY_A);
    g.report_kimage(Kernel::B);
    let b = g.checkpoint(&machine(0x10_4321, ANSWER_JUMP));
    (a, b)
}

#[test]
fn a_suspend_and_its_resume_pass() {
    let mut g = Guest::new();
    let (a, b) = first_cycle(&mut g);
    assert_eq!(b, vec![], "B's suspend (A away, parked)");
    g.swap();
    let back = machine(0x20_1234, ANSWER_BACK);
    let found = g.checkpoint(&back);
    assert_eq!(found, vec![], "A's resume");
    assert!(g.oracle.record(Kernel::A).machine.as_ref() == Some(&a));
}

#[test]
fn a_changed_register_is_caught_by_name() {
    let mut g = Guest::new();
    first_cycle(&mut g);
    g.swap();
    let mut back = machine(0x20_1234, ANSWER_BACK);
    back.vcpus[0].regs.rbx ^= 0x40;
    let found = g.checkpoint(&back);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].kind, MismatchKind::Register);
    assert_eq!(found[0].name.as_deref(), Some("rbx"));
    assert_eq!(found[0].at.direction, "resume");
}

#[test]
fn a_changed_device_field_is_caught_by_name() {
    let mut g = Guest::new();
    first_cycle(&mut g);
    g.swap();
    let mut back = machine(0x20_1234, ANSWER_BACK);
    back.devices.insert(
        UART.to_owned(),
        DeviceState::Uart(UartState {
            scratch: 0xb0,
            ..UartState::default()
        }),
    );
    let found = g.checkpoint(&back);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].kind, MismatchKind::Device);
    assert!(
        found[0].explain().contains("uart scr"),
        "{}",
        found[0].explain()
    );
}

#[test]
fn a_changed_page_at_home_is_caught_with_its_address() {
    let mut g = Guest::new();
    first_cycle(&mut g);
    g.swap();
    // Outside B's region: A's own page, never parked.
    g.mem.write_obj(0xffu8, GuestAddress(0x30_0123)).unwrap();
    let found = g.checkpoint(&machine(0x20_1234, ANSWER_BACK));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].kind, MismatchKind::Memory);
    assert_eq!(found[0].address, Some(0x30_0000));
    assert_eq!(found[0].ranges[0].start, 0x30_0123);
}

#[test]
fn a_changed_page_where_it_is_parked_is_caught_while_its_kernel_is_away() {
    let mut g = Guest::new();
    g.report_kimage(Kernel::A);
    assert_eq!(g.checkpoint(&machine(0x20_1234, ANSWER_JUMP)), vec![]);
    g.swap();
    // A's page 0x10_1000 is parked at PARK + 0x1000 while B runs.
    g.mem
        .write_obj(0x77u8, GuestAddress(PARK + 0x1000 + 0x42))
        .unwrap();
    g.write(CONTROL_B + control::DATA_OWN_ENTRY, ENTRY_B);
    g.write(CONTROL_B + control::DATA_PEER_ENTRY, ENTRY_A);
    g.report_kimage(Kernel::B);
    let found = g.checkpoint(&machine(0x10_4321, ANSWER_JUMP));
    assert_eq!(found.len(), 1, "{found:#?}");
    let m = &found[0];
    assert_eq!(m.kind, MismatchKind::Memory);
    assert_eq!((m.at.kernel.as_str(), m.address), ("b", Some(0x10_1000)));
    assert_eq!(m.location, Some(PARK + 0x1000), "found where it is parked");
    // Damage to the page at home (B's page now) is not A's business.
    let mut g = Guest::new();
    g.report_kimage(Kernel::A);
    g.checkpoint(&machine(0x20_1234, ANSWER_JUMP));
    g.swap();
    g.mem.write_obj(0x77u8, GuestAddress(0x10_1042)).unwrap();
    g.write(CONTROL_B + control::DATA_OWN_ENTRY, ENTRY_B);
    g.write(CONTROL_B + control::DATA_PEER_ENTRY, ENTRY_A);
    g.report_kimage(Kernel::B);
    assert_eq!(g.checkpoint(&machine(0x10_4321, ANSWER_JUMP)), vec![]);
}

#[test]
fn a_jump_into_the_wrong_place_of_a_booted_peer_is_caught_before_it_happens() {
    let mut g = Guest::new();
    first_cycle(&mut g);
    g.swap();
    assert_eq!(g.checkpoint(&machine(0x20_1234, ANSWER_BACK)), vec![]);
    // A jumps again (cycle 2): B asked to be re-entered at ENTRY_B.
    g.write(CONTROL_A + control::DATA_PEER_ENTRY, ENTRY_B + 8);
    let found = g.checkpoint(&machine(0x20_1234, ANSWER_JUMP));
    assert_eq!(found.len(), 1, "{found:#?}");
    let m = &found[0];
    assert_eq!(m.kind, MismatchKind::Entry);
    assert_eq!(m.address, Some(CONTROL_A + control::DATA_PEER_ENTRY));
    assert!(m.expected.starts_with(&format!("{ENTRY_B:#x}")), "{m:?}");
    assert!(
        m.actual.starts_with(&format!("{:#x}", ENTRY_B + 8)),
        "{m:?}"
    );
}

#[test]
fn a_resume_without_a_suspend_is_a_protocol_error() {
    let mut g = Guest::new();
    g.report_kimage(Kernel::A);
    let id = CheckpointId {
        index: 2,
        cycle: 1,
        kernel: Kernel::A,
        direction: Direction::Resume,
    };
    let e = g
        .oracle
        .checkpoint(&id, &machine(0, ANSWER_BACK), &g.mem, &[])
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "guest protocol error: a kernel resumed that never suspended"
    );
}

#[test]
fn time_may_advance_across_a_jump_never_run_back() {
    let tsc = "msr[0x00000010] TSC";
    let mut g = Guest::new();
    first_cycle(&mut g);
    g.swap();
    // The TSC ran on while B ran: excused.
    let mut back = machine(0x20_1234, ANSWER_BACK);
    back.vcpus[0].msrs.insert(0x10, 123_456 + 1_000_000);
    assert_eq!(g.checkpoint(&back), vec![]);

    // The TSC set back: a register mismatch with both values.
    let mut g = Guest::new();
    first_cycle(&mut g);
    g.swap();
    let mut back = machine(0x20_1234, ANSWER_BACK);
    back.vcpus[0].msrs.insert(0x10, 5);
    let found = g.checkpoint(&back);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].name.as_deref(), Some(tsc));
    assert_eq!(
        (found[0].expected.as_str(), found[0].actual.as_str()),
        ("0x1e240", "0x5")
    );
    assert!(
        found[0]
            .note
            .as_deref()
            .unwrap_or("")
            .contains("never run back")
    );

    // TSC_ADJUST is not time: any change is a mismatch.
    let mut g = Guest::new();
    first_cycle(&mut g);
    g.swap();
    let mut back = machine(0x20_1234, ANSWER_BACK);
    back.vcpus[0].msrs.insert(0x3b, 1);
    let found = g.checkpoint(&back);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0]
            .name
            .as_deref()
            .unwrap_or("")
            .contains("TSC_ADJUST"),
        "{found:?}"
    );
}

/// Pages of A's view across all of RAM: the first and last, B's region
/// (parked while B runs), around the control pages, and every 127th.
fn victims() -> Vec<u64> {
    let mut v: Vec<u64> = (0..RAM).step_by(127 * PAGE_SIZE).collect();
    v.extend([
        0,
        PEER.0,
        PEER.1 - PAGE,
        CONTROL_A - PAGE,
        CONTROL_A + CONTROL_PAGES * PAGE,
        RAM - PAGE,
    ]);
    let parking = PARK..PARK + (PEER.1 - PEER.0);
    let control = CONTROL_A..CONTROL_A + CONTROL_PAGES * PAGE;
    v.retain(|p| !parking.contains(p) && !control.contains(p));
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn damage_anywhere_in_as_view_is_caught_where_the_page_is() {
    // One byte of any page of A's view, changed while B runs (where its
    // kimage parks it, or at home) or after the swap back (at home), is
    // caught at the next checkpoint with its address and where it was
    // found: the dirty log reports the write, and the check looks there.
    // The full check agrees.
    for (i, victim) in victims().into_iter().enumerate() {
        // The full check on every fourth (each reads all of RAM).
        let modes = [CompareMode::Dirty, CompareMode::Full];
        for compare in modes.into_iter().take(if i % 4 == 0 { 2 } else { 1 }) {
            let mut g = Guest::with(compare);
            g.report_kimage(Kernel::A);
            assert_eq!(g.checkpoint(&machine(0x20_1234, ANSWER_JUMP)), vec![]);
            g.swap();
            let parked = g.oracle.parked_at(Kernel::A, victim);
            g.mem
                .write_obj(0xa5u8 ^ (victim as u8), GuestAddress(parked + 0x9))
                .unwrap();
            g.write(CONTROL_B + control::DATA_OWN_ENTRY, ENTRY_B);
            g.write(CONTROL_B + control::DATA_PEER_ENTRY, ENTRY_A);
            g.report_kimage(Kernel::B);
            let found = g.checkpoint(&machine(0x10_4321, ANSWER_JUMP));
            let got: Vec<_> = found.iter().map(|m| (m.address, m.location)).collect();
            assert_eq!(
                got,
                [(Some(victim), Some(parked))],
                "{victim:#x} {compare:?}: {found:#?}"
            );

            // The same damage after the swap back, at A's resume.
            let mut g = Guest::with(compare);
            first_cycle(&mut g);
            g.swap();
            g.mem
                .write_obj(0x5au8 ^ (victim as u8), GuestAddress(victim + 0xff9))
                .unwrap();
            let found = g.checkpoint(&machine(0x20_1234, ANSWER_BACK));
            let got: Vec<_> = found
                .iter()
                .map(|m| (m.address, m.ranges[0].start))
                .collect();
            assert_eq!(
                got,
                [(Some(victim), victim + 0xff9)],
                "{victim:#x} {compare:?}"
            );
        }
    }
}

#[test]
fn a_checkpoint_compares_what_was_written_and_parked_not_the_view() {
    let mut views = Vec::new();
    for compare in [CompareMode::Dirty, CompareMode::Full] {
        let mut g = Guest::with(compare);
        first_cycle(&mut g);
        g.swap();
        g.write(0x30_0010, 1);
        let j = g.judge(&machine(0x20_1234, ANSWER_BACK));
        assert_eq!(j.mismatches.len(), 1);
        let view = g.oracle.record(Kernel::A).view.as_ref().unwrap().len() as u64;
        // A's resume: A's view at home, B's where A's kimage parks it.
        let b = g.oracle.record(Kernel::B).view.as_ref().unwrap().len() as u64;
        views.push((view, b, j.pages_compared));
    }
    let [(a_view, b_view, dirty), (_, _, full)] = views[..] else {
        unreachable!()
    };
    assert_eq!(full, a_view + b_view, "full: every page of both views");
    // Dirty: the swap wrote B's region and the parking pages (512 pages)
    // and the test one more; B's pages are parked (256).
    assert!(dirty <= 512 + 1 + 256 + 8, "{dirty} of {a_view} + {b_view}");
    assert!(dirty * 4 < a_view, "{dirty} of {a_view}");
}

#[test]
fn a_kernel_checked_in_a_new_machine_is_compared_page_for_page() {
    // Hibernation: A is recorded in one machine and checked in another,
    // whose RAM starts zero and whose first dirty list names only what was
    // written there. A page of A's that nobody wrote in the new machine
    // (a restore that missed it) is zero there, and must be caught though
    // no dirty list names it.
    let restored = |skip: Option<u64>| {
        let mut g = Guest::new();
        g.report_kimage(Kernel::A);
        let left = machine(0x20_1234, ANSWER_JUMP);
        assert_eq!(g.checkpoint(&left), vec![], "A's suspend");
        let new = GuestMem::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let mut page = vec![0u8; PAGE_SIZE];
        for p in (0..RAM).step_by(PAGE_SIZE).filter(|&p| Some(p) != skip) {
            g.mem.read_slice(&mut page, GuestAddress(p)).unwrap();
            new.write_slice(&page, GuestAddress(p)).unwrap();
        }
        g.oracle.forget_memory();
        let id = CheckpointId {
            index: 2,
            cycle: 1,
            kernel: Kernel::A,
            direction: Direction::Resume,
        };
        let dirty = crate::pages::tests::harvest(&new);
        let mut found = g.oracle.observe_memory(&new, &dirty, &At::of(&id)).unwrap();
        found.extend(
            g.oracle
                .check_resume(&id, &machine(0x20_1234, ANSWER_BACK))
                .unwrap()
                .mismatches,
        );
        found
    };
    assert_eq!(restored(None), vec![], "a complete restore");
    let found = restored(Some(0x30_0000));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].kind, MismatchKind::Memory);
    assert_eq!(found[0].address, Some(0x30_0000));
}

/// A guest after cycle 1 (A back from B, all clean).
fn one_cycle_done() -> Guest {
    let mut g = Guest::new();
    first_cycle(&mut g);
    g.swap();
    assert_eq!(g.checkpoint(&machine(0x20_1234, ANSWER_BACK)), vec![]);
    g
}

/// A's kimage, re-reported at a later cycle, keeps `extra` out of A's view
/// as a source page (a pair that parks `extra` at itself: nothing moves).
fn claim(g: &mut Guest, extra: u64) {
    let mut list = Alloc(&g.mem, 0xe0_0000);
    let mut b = Builder::new();
    for p in (PEER.0..PEER.1).step_by(PAGE_SIZE) {
        b.add_page(&mut list, p, PARK + (p - PEER.0)).unwrap();
    }
    b.add_page(&mut list, extra, extra).unwrap();
    let (head, _) = b.finish(&mut list).unwrap();
    g.args[0][KimageArgs::HEAD] = head;
    g.report_kimage(Kernel::A);
    g.write(CONTROL_A + control::DATA_PEER_ENTRY, ENTRY_B);
}

#[test]
fn a_page_of_the_view_a_later_kimage_claims_is_caught_and_stays_checked() {
    let mut g = one_cycle_done();
    // Cycle 2: A's kimage claims one of its live pages.
    let live = 0x50_0000;
    claim(&mut g, live);
    let a = machine(0x20_1234, ANSWER_JUMP);
    let found = g.checkpoint(&a);
    // The claim, and the pair that delivers outside B's region.
    assert_eq!(found.len(), 2, "{found:#?}");
    for (m, says) in found.iter().zip([
        "in kernel a's view at its last suspend",
        "outside the region it gives b",
    ]) {
        assert_eq!(m.kind, MismatchKind::Memory);
        assert_eq!(m.name.as_deref(), Some("page of kernel a"));
        assert_eq!(m.address, Some(live));
        assert!(
            m.note.as_deref().is_some_and(|n| n.contains(says)),
            "{:?}",
            m.note
        );
    }
    // The page stays in A's view: damage there while A is away is caught.
    g.swap();
    assert_eq!(g.checkpoint(&machine(0x10_4321, ANSWER_BACK)), vec![]);
    g.report_kimage(Kernel::B);
    assert_eq!(g.checkpoint(&machine(0x10_4321, ANSWER_JUMP)), vec![]);
    g.write(live + 0x10, 0xdead);
    g.swap();
    let found = g.checkpoint(&machine(0x20_1234, ANSWER_BACK));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].address, Some(live));
}

#[test]
fn a_reload_may_keep_pages_the_last_view_had() {
    let mut g = one_cycle_done();
    // The same kimage again passes; a fresh load of B may take free pages.
    g.report_kimage(Kernel::A);
    g.oracle.peer_reloaded();
    claim(&mut g, 0x50_0000);
    let found = g.checkpoint(&machine(0x20_1234, ANSWER_JUMP));
    // Only the pair outside B's region is wrong.
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0]
            .note
            .as_deref()
            .is_some_and(|n| n.contains("outside the region it gives b")),
        "{found:#?}"
    );
}

#[test]
fn a_kimage_may_not_keep_a_own_image_b_region_or_a_page_twice() {
    let mut g = Guest::new();
    // A's image: .text at 0x30_0000, one page.
    g.oracle.symbols = Some(Symbols::from_parts(
        vec![("kernel_text".to_owned(), 0x30_0000, 0x1000)],
        vec![(".text".to_owned(), 0x30_0000, 0x1000)],
    ));
    let mut list = Alloc(&g.mem, 0xe0_0000);
    let mut b = Builder::new();
    b.add_page(&mut list, PEER.0, 0x30_0000).unwrap();
    b.add_page(&mut list, PEER.0 + PAGE, PEER.0 + 2 * PAGE)
        .unwrap();
    b.add_page(&mut list, PEER.0 + 3 * PAGE, CONTROL_A).unwrap();
    let (head, _) = b.finish(&mut list).unwrap();
    g.args[0][KimageArgs::HEAD] = head;
    g.report_kimage(Kernel::A);
    let found = g.checkpoint(&machine(0x20_1234, ANSWER_JUMP));
    let text: Vec<String> = found
        .iter()
        .map(|m| m.note.clone().unwrap_or_default())
        .collect();
    assert_eq!(found.len(), 3, "{text:#?}");
    assert_eq!(found[0].address, Some(0x30_0000), "{text:#?}");
    assert!(text[0].contains("own loaded image (.text)"), "{text:#?}");
    assert_eq!(found[0].symbol.as_deref(), Some("kernel_text (.text)"));
    assert_eq!(found[1].address, Some(PEER.0 + 2 * PAGE));
    assert!(text[1].contains("b's region"), "{text:#?}");
    assert_eq!(found[2].address, Some(CONTROL_A));
    assert!(text[2].contains("kept twice"), "{text:#?}");
}

#[test]
fn a_kimage_may_not_move_b_region_between_suspends() {
    let mut g = one_cycle_done();
    g.args[0][KimageArgs::PEER_END] = PEER.1 - PAGE;
    g.report_kimage(Kernel::A);
    g.write(CONTROL_A + control::DATA_PEER_ENTRY, ENTRY_B);
    let found = g.checkpoint(&machine(0x20_1234, ANSWER_JUMP));
    let moved: Vec<_> = found
        .iter()
        .filter(|m| m.name.as_deref() == Some("kernel b's region in a's kimage"))
        .collect();
    assert_eq!(moved.len(), 1, "{found:#?}");
    assert_eq!(moved[0].expected, "[0x100000..0x200000)");
    assert_eq!(moved[0].actual, "[0x100000..0x1ff000)");
}
