//! `kjump inspect`: what a dump holds, as text or JSON.

use super::*;
pub(super) fn segment_json(s: &kvm_segment) -> serde_json::Value {
    json!({
        "selector": s.selector, "base": s.base, "limit": s.limit, "type": s.type_,
        "present": s.present, "dpl": s.dpl, "db": s.db, "s": s.s, "l": s.l, "g": s.g,
        "avl": s.avl, "unusable": s.unusable,
    })
}

pub(super) fn segments(s: &VcpuState) -> [(&'static str, &kvm_segment); 8] {
    let sr = &s.sregs;
    [
        ("cs", &sr.cs),
        ("ds", &sr.ds),
        ("es", &sr.es),
        ("fs", &sr.fs),
        ("gs", &sr.gs),
        ("ss", &sr.ss),
        ("tr", &sr.tr),
        ("ldt", &sr.ldt),
    ]
}

pub(super) fn control_regs(s: &VcpuState) -> [(&'static str, u64); 7] {
    let sr = &s.sregs;
    [
        ("cr0", sr.cr0),
        ("cr2", sr.cr2),
        ("cr3", sr.cr3),
        ("cr4", sr.cr4),
        ("cr8", sr.cr8),
        ("efer", sr.efer),
        ("apic_base", sr.apic_base),
    ]
}

pub(super) fn checkpoint_text(id: &CheckpointId) -> String {
    format!(
        "#{} cycle {} kernel {} {}",
        id.index,
        id.cycle,
        id.kernel.name(),
        id.direction.name()
    )
}

pub(super) fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b.is_multiple_of(1 << 30) => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b.is_multiple_of(1 << 20) => format!("{} MiB", b >> 20),
        b if b.is_multiple_of(1024) => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// Counts of non-zero pages per range, `None` where the file is unreadable.
pub(super) fn page_counts(d: &Dump) -> Vec<Option<u64>> {
    match d.nonzero_pages() {
        Ok(v) => v.into_iter().map(Some).collect(),
        Err(e) => {
            log::warn!("{e}");
            vec![None; d.loads.len()]
        }
    }
}

/// A human-readable summary of a dump: header, checkpoint, registers,
/// memory ranges, notes.
pub fn inspect(d: &Dump) -> String {
    let m = &d.meta;
    let s = &d.state;
    let mut o = String::new();
    let _ = writeln!(o, "kjump dump {}", d.path.display());
    let _ = writeln!(
        o,
        "  ELF64 core, x86_64, {} bytes ({} program headers), KJUMP note version {}, written by kjump {}",
        d.len,
        d.loads.len() + 1,
        m.version,
        m.kjump_version
    );
    let _ = writeln!(o, "  checkpoint {}", checkpoint_text(&m.id));
    let _ = writeln!(
        o,
        "  kernel {}, {} of RAM",
        m.kernel_name,
        size_text(m.mem_size)
    );
    match &d.resume {
        Some(r) => {
            let peer = r.peer.as_ref().map_or_else(
                || "the other kernel not booted yet".to_string(),
                |p| {
                    format!(
                        "kernel {} away since {}",
                        p.kernel.name(),
                        checkpoint_text(&p.suspended_at)
                    )
                },
            );
            let _ = writeln!(
                o,
                "  resume record: {} of {} cycles, {peer}",
                r.scenario, r.cycles
            );
        }
        None => o.push_str("  no resume record (kjump resume refuses it)\n"),
    }
    let _ = writeln!(
        o,
        "  jump-back entry {:#x} (ELF entry {:#x}), {}",
        m.jump_back_entry,
        d.entry,
        if m.resumable {
            "resumable"
        } else {
            "not resumable"
        }
    );
    o.push_str("registers:\n");
    for row in s.general_regs().chunks(4) {
        o.push(' ');
        for (n, v) in row {
            let _ = write!(o, " {n:>6} {v:#018x}");
        }
        o.push('\n');
    }
    o.push_str("segments:\n");
    for (n, g) in segments(s) {
        let _ = writeln!(
            o,
            "  {n:<3} selector {:#06x} base {:#018x} limit {:#010x} type {:#x} s {} dpl {} p {} db {} l {} g {} avl {} unusable {}",
            g.selector,
            g.base,
            g.limit,
            g.type_,
            g.s,
            g.dpl,
            g.present,
            g.db,
            g.l,
            g.g,
            g.avl,
            g.unusable
        );
    }
    for (n, t) in [("gdt", &s.sregs.gdt), ("idt", &s.sregs.idt)] {
        let _ = writeln!(o, "  {n} base {:#018x} limit {:#06x}", t.base, t.limit);
    }
    o.push_str("control:\n");
    for row in control_regs(s).chunks(4) {
        o.push(' ');
        for (n, v) in row {
            let _ = write!(o, " {n:>9} {v:#018x}");
        }
        o.push('\n');
    }
    let msrs: Vec<String> = s_msr_names(&d.state);
    let _ = writeln!(o, "msrs: {} captured", msrs.len());
    for chunk in msrs.chunks(6) {
        let _ = writeln!(o, "  {}", chunk.join("  "));
    }
    if let Some(r) = &d.resume {
        let names: Vec<&str> = std::iter::once("uart")
            .chain(r.devices.iter().map(|dev| dev.name()))
            .collect();
        let _ = writeln!(o, "devices: {}", names.join(", "));
    }
    if !d.checksums.is_empty() {
        let _ = writeln!(
            o,
            "RAM checksums: {} range(s), verified (xxh3-64)",
            d.checksums.len()
        );
    }
    let counts = page_counts(d);
    let _ = writeln!(o, "memory: {} range(s)", d.loads.len());
    for (l, c) in d.loads.iter().zip(counts) {
        let c = c.map_or_else(|| "?".to_string(), |c| c.to_string());
        let _ = writeln!(
            o,
            "  [{:#x}..{:#x}) {}, {c} non-zero page(s) of {}, at file offset {:#x}",
            l.paddr,
            l.end(),
            size_text(l.memsz),
            l.memsz / PAGE,
            l.offset
        );
    }
    notes_text(&mut o, &d.notes);
    o
}

/// The `notes:` part of `inspect`: one line a note.
pub(super) fn notes_text(o: &mut String, notes: &[NoteInfo]) {
    let _ = writeln!(o, "notes: {}", notes.len());
    for n in notes {
        let _ = writeln!(
            o,
            "  {:<6} type {:#010x} {:>6} bytes  {}",
            n.name,
            n.kind,
            n.size,
            n.describe()
        );
    }
}

/// The captured MSRs, `0x2ff MTRR_DEF_TYPE`, in index order.
fn s_msr_names(s: &VcpuState) -> Vec<String> {
    s.msrs
        .keys()
        .map(|&i| match crate::state::msr_name(i) {
            Some(n) => format!("{i:#x} {n}"),
            None => format!("{i:#x}"),
        })
        .collect()
}

/// [`inspect`] as JSON: `file`, `size`, `kjump` (the KJUMP note),
/// `registers`, `segments`, `tables`, `control`, `fields` (every field of
/// [`VcpuState::fields`] as text), `memory`, `notes`.
pub fn inspect_json(d: &Dump) -> serde_json::Value {
    let s = &d.state;
    let regs: serde_json::Map<_, _> = s
        .general_regs()
        .iter()
        .map(|(n, v)| (n.to_string(), json!(v)))
        .collect();
    let segs: serde_json::Map<_, _> = segments(s)
        .iter()
        .map(|(n, g)| (n.to_string(), segment_json(g)))
        .collect();
    let ctrl: serde_json::Map<_, _> = control_regs(s)
        .iter()
        .map(|(n, v)| (n.to_string(), json!(v)))
        .collect();
    let fields: serde_json::Map<_, _> = s
        .fields()
        .into_iter()
        .map(|(n, v)| (n, serde_json::Value::String(v.to_string())))
        .collect();
    let memory: Vec<_> = d
        .loads
        .iter()
        .zip(page_counts(d))
        .map(|(l, c)| json!({"start": l.paddr, "len": l.memsz, "file_offset": l.offset, "nonzero_pages": c}))
        .collect();
    json!({
        "file": d.path.display().to_string(),
        "size": d.len,
        "elf_entry": d.entry,
        "kjump": &d.meta,
        "resume": d.resume.as_ref().map(|r| json!({
            "scenario": r.scenario,
            "cycles": r.cycles,
            "peer_suspended_at": r.peer.as_ref().map(|p| p.suspended_at),
            "devices": &r.devices,
        })),
        "msrs_captured": s.msrs.keys().collect::<Vec<_>>(),
        "ram_checksums": &d.checksums,
        "registers": regs,
        "segments": segs,
        "tables": {
            "gdt": {"base": s.sregs.gdt.base, "limit": s.sregs.gdt.limit},
            "idt": {"base": s.sregs.idt.base, "limit": s.sregs.idt.limit},
        },
        "control": ctrl,
        "fields": fields,
        "memory": memory,
        "notes": &d.notes,
    })
}
