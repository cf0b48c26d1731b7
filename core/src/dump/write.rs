//! Writing a dump: the ELF header, the notes, one `PT_LOAD` per RAM range,
//! atomically.

use super::*;
pub(super) fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

pub(super) fn align_up(v: usize, a: usize) -> usize {
    v.div_ceil(a) * a
}

/// Appends one note: `Elf64_Nhdr`, the NUL-terminated name, the descriptor,
/// each padded to 4 bytes.
pub(super) fn push_note(out: &mut Vec<u8>, name: &str, kind: u32, desc: &[u8]) {
    let namesz = name.len() + 1;
    out.extend_from_slice(&(namesz as u32).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(align_up(out.len(), NOTE_ALIGN), 0);
    out.extend_from_slice(desc);
    out.resize(align_up(out.len(), NOTE_ALIGN), 0);
}

/// Linux's x86_64 `struct elf_prstatus` of the vCPU state `s`
/// (`kjump_abi::vmcore::prstatus`: signal info, pids and times are zero,
/// except `pr_pid` 1, gdb names the thread after it).
pub(crate) fn prstatus(s: &VcpuState) -> Vec<u8> {
    kjump_abi::vmcore::prstatus(&prstatus_regs(s), true).to_vec()
}

/// The registers of `pr_reg` (a `user_regs_struct`) of the vCPU state `s`,
/// in `kjump_abi::vmcore::PRSTATUS_REG_NAMES` order.
pub(crate) fn prstatus_regs(s: &VcpuState) -> [u64; kjump_abi::vmcore::PRSTATUS_NREGS] {
    let (r, sr) = (&s.regs, &s.sregs);
    let sel = |seg: &kvm_segment| u64::from(seg.selector);
    [
        r.r15,
        r.r14,
        r.r13,
        r.r12,
        r.rbp,
        r.rbx,
        r.r11,
        r.r10,
        r.r9,
        r.r8,
        r.rax,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        u64::MAX, // orig_rax: -1, not in a system call
        r.rip,
        sel(&sr.cs),
        r.rflags,
        r.rsp,
        sel(&sr.ss),
        sr.fs.base,
        sr.gs.base,
        sel(&sr.ds),
        sel(&sr.es),
        sel(&sr.fs),
        sel(&sr.gs),
    ]
}

/// The FXSAVE area: the start of the XSAVE area (zeros if it is short).
pub(super) fn fpregs(s: &VcpuState) -> Vec<u8> {
    let mut b = vec![0u8; FXSAVE_SIZE];
    let n = s.xsave.len().min(FXSAVE_SIZE);
    b[..n].copy_from_slice(&s.xsave[..n]);
    b
}

/// Descriptor attribute bits of a segment, as QEMU keeps them (bits 8..23
/// of the descriptor's high dword: type, S, DPL, P, AVL, L, D/B, G).
pub(super) fn segment_flags(s: &kvm_segment) -> u32 {
    let present = s.present != 0 && s.unusable == 0;
    (u32::from(s.type_) & 0xf) << 8
        | u32::from(s.s & 1) << 12
        | (u32::from(s.dpl) & 3) << 13
        | u32::from(present) << 15
        | u32::from(s.avl & 1) << 20
        | u32::from(s.l & 1) << 21
        | u32::from(s.db & 1) << 22
        | u32::from(s.g & 1) << 23
}

/// QEMU's `QEMUCPUState` as `dump-guest-memory` writes it for x86_64.
pub(super) fn qemu_cpu_state(s: &VcpuState) -> Vec<u8> {
    let (r, sr) = (&s.regs, &s.sregs);
    let mut b = Vec::with_capacity(QEMU_CPUSTATE_SIZE);
    b.extend_from_slice(&QEMU_CPUSTATE_VERSION.to_le_bytes());
    b.extend_from_slice(&(QEMU_CPUSTATE_SIZE as u32).to_le_bytes());
    for v in [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip, r.rflags,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    let mut seg = |selector: u32, limit: u32, flags: u32, base: u64| {
        b.extend_from_slice(&selector.to_le_bytes());
        b.extend_from_slice(&limit.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&base.to_le_bytes());
    };
    for s in [
        &sr.cs, &sr.ds, &sr.es, &sr.fs, &sr.gs, &sr.ss, &sr.ldt, &sr.tr,
    ] {
        seg(s.selector.into(), s.limit, segment_flags(s), s.base);
    }
    seg(0, sr.gdt.limit.into(), 0, sr.gdt.base);
    seg(0, sr.idt.limit.into(), 0, sr.idt.base);
    for v in [sr.cr0, 0, sr.cr2, sr.cr3, sr.cr4] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    let kgs = s.msrs.get(&MSR_KERNEL_GS_BASE).copied().unwrap_or(0);
    b.extend_from_slice(&kgs.to_le_bytes());
    debug_assert_eq!(b.len(), QEMU_CPUSTATE_SIZE);
    b
}

pub(super) fn checksum(desc: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    h.update(&desc[..KJUMP_CHECKSUM]);
    h.update(&[0; 8]);
    h.update(&desc[KJUMP_CHECKSUM + 8..]);
    h.digest()
}

/// The KJUMP note's descriptor (layout: [`KjumpNote`]).
pub(super) fn kjump_desc(d: &DumpInput<'_>, ram: &[RamChecksum]) -> Result<Vec<u8>, DumpError> {
    let state = serde_json::to_vec(d.state).map_err(DumpError::Encode)?;
    let ram = serde_json::to_vec(ram).map_err(DumpError::Encode)?;
    let resume = match d.resume {
        Some(r) => serde_json::to_vec(r).map_err(DumpError::Encode)?,
        None => Vec::new(),
    };
    // Names longer than a u16 are cut (at a character boundary).
    let cut = |s: &str| {
        let mut n = s.len().min(u16::MAX as usize);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        s.as_bytes()[..n].to_vec()
    };
    let (name, version) = (cut(d.kernel_name), cut(d.kjump_version));
    let mut b = vec![0u8; KJUMP_HEADER_SIZE_V3];
    put(&mut b, 0, &KJUMP_MAGIC);
    put(&mut b, 8, &KJUMP_VERSION.to_le_bytes());
    put(&mut b, 12, &(KJUMP_HEADER_SIZE_V3 as u32).to_le_bytes());
    put(&mut b, 16, &d.id.index.to_le_bytes());
    put(&mut b, 24, &d.id.cycle.to_le_bytes());
    b[32] = match d.id.kernel {
        Kernel::A => 0,
        Kernel::B => 1,
    };
    b[33] = match d.id.direction {
        Direction::Suspend => 0,
        Direction::Resume => 1,
    };
    let flags = if d.resumable { KJUMP_FLAG_RESUMABLE } else { 0 };
    put(&mut b, 34, &flags.to_le_bytes());
    put(&mut b, 36, &(state.len() as u32).to_le_bytes());
    put(&mut b, 40, &d.jump_back_entry.to_le_bytes());
    put(&mut b, 48, &d.mem_size.to_le_bytes());
    put(&mut b, 56, &(name.len() as u16).to_le_bytes());
    put(&mut b, 58, &(version.len() as u16).to_le_bytes());
    put(
        &mut b,
        KJUMP_RESUME_SIZE,
        &(resume.len() as u32).to_le_bytes(),
    );
    put(&mut b, KJUMP_RAM_SIZE, &(ram.len() as u32).to_le_bytes());
    b.extend_from_slice(&state);
    b.extend_from_slice(&name);
    b.extend_from_slice(&version);
    b.extend_from_slice(&resume);
    b.extend_from_slice(&ram);
    let sum = checksum(&b);
    put(&mut b, KJUMP_CHECKSUM, &sum.to_le_bytes());
    Ok(b)
}

pub(super) fn elf_header(entry: u64, phnum: u16) -> [u8; EHDR_SIZE] {
    let mut h = [0u8; EHDR_SIZE];
    put(&mut h, 0, &ELF_MAGIC);
    h[4] = ELFCLASS64;
    h[5] = ELFDATA2LSB;
    h[6] = EV_CURRENT;
    put(&mut h, 16, &ET_CORE.to_le_bytes());
    put(&mut h, 18, &EM_X86_64.to_le_bytes());
    put(&mut h, 20, &u32::from(EV_CURRENT).to_le_bytes());
    put(&mut h, 24, &entry.to_le_bytes());
    put(&mut h, 32, &(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    put(&mut h, 52, &(EHDR_SIZE as u16).to_le_bytes());
    put(&mut h, 54, &(PHDR_SIZE as u16).to_le_bytes());
    put(&mut h, 56, &phnum.to_le_bytes());
    h
}

pub(super) fn phdr(
    p_type: u32,
    flags: u32,
    offset: u64,
    addr: u64,
    size: u64,
    align: u64,
) -> [u8; PHDR_SIZE] {
    let mut p = [0u8; PHDR_SIZE];
    put(&mut p, 0, &p_type.to_le_bytes());
    put(&mut p, 4, &flags.to_le_bytes());
    put(&mut p, 8, &offset.to_le_bytes());
    put(&mut p, 16, &addr.to_le_bytes()); // p_vaddr
    put(&mut p, 24, &addr.to_le_bytes()); // p_paddr
    put(&mut p, 32, &size.to_le_bytes()); // p_filesz
    put(&mut p, 40, &size.to_le_bytes()); // p_memsz
    put(&mut p, 48, &align.to_le_bytes());
    p
}

/// Writes a dump to `path` atomically ([`crate::files::write_atomic_with`]:
/// a temporary file in the same directory, fsynced, renamed over `path`,
/// and the directory fsynced). On error nothing is left behind and `path`
/// is untouched. A dump is sparse and written at offsets, so `path` must
/// be a regular file or nothing.
pub fn write_dump(path: &Path, d: &DumpInput<'_>) -> Result<(), DumpError> {
    let werr = |source| DumpError::Write {
        path: path.to_path_buf(),
        source,
    };
    if crate::files::check_output(path).map_err(werr)? != crate::files::OutputKind::Replace {
        return Err(werr(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a dump is written to a regular file only",
        )));
    }
    let mut failed = None;
    crate::files::write_atomic_with(path, |file| {
        write_into(file, d, path).map_err(|e| {
            let io = io::Error::other(e.to_string());
            failed = Some(e);
            io
        })
    })
    .map_err(|source| failed.take().unwrap_or_else(|| werr(source)))?;
    log::debug!("wrote dump {}", path.display());
    Ok(())
}

pub(super) fn write_into(file: &File, d: &DumpInput<'_>, path: &Path) -> Result<(), DumpError> {
    let werr = |source| DumpError::Write {
        path: path.to_path_buf(),
        source,
    };
    let ranges = d.memory.ram_ranges();
    let mut prev_end = 0;
    for (i, &(start, len)) in ranges.iter().enumerate() {
        let bad = !start.is_multiple_of(PAGE)
            || !len.is_multiple_of(PAGE)
            || len == 0
            || (i > 0 && start < prev_end);
        if bad || start.checked_add(len).is_none() {
            return Err(DumpError::Layout { start, len });
        }
        prev_end = start + len;
    }
    let phnum = u16::try_from(ranges.len() + 1)
        .ok()
        .filter(|&n| n < PN_XNUM)
        .ok_or(DumpError::Layout { start: 0, len: 0 })?;

    // The notes are laid out with placeholder checksums of the same size
    // (16 hex digits each), and written again once RAM is hashed.
    let notes_with = |ram: &[RamChecksum]| -> Result<Vec<u8>, DumpError> {
        let mut notes = Vec::new();
        push_note(&mut notes, "CORE", NT_PRSTATUS, &prstatus(d.state));
        push_note(&mut notes, "CORE", NT_PRFPREG, &fpregs(d.state));
        push_note(&mut notes, "QEMU", NT_QEMU, &qemu_cpu_state(d.state));
        push_note(&mut notes, KJUMP_NOTE_NAME, NT_KJUMP, &kjump_desc(d, ram)?);
        Ok(notes)
    };
    let mut sums: Vec<RamChecksum> = ranges
        .iter()
        .map(|&(start, len)| RamChecksum {
            start,
            len,
            xxh3: 0,
        })
        .collect();
    let notes = notes_with(&sums)?;

    let notes_off = EHDR_SIZE + PHDR_SIZE * usize::from(phnum);
    let mut head = Vec::with_capacity(notes_off + notes.len());
    head.extend_from_slice(&elf_header(d.jump_back_entry, phnum));
    head.extend_from_slice(&phdr(
        PT_NOTE,
        0,
        notes_off as u64,
        0,
        notes.len() as u64,
        NOTE_ALIGN as u64,
    ));
    let mut offset = align_up(notes_off + notes.len(), PAGE_SIZE) as u64;
    let mut loads = Vec::with_capacity(ranges.len());
    for &(start, len) in &ranges {
        head.extend_from_slice(&phdr(PT_LOAD, PF_RWX, offset, start, len, PAGE));
        loads.push((start, len, offset));
        offset += len;
    }
    head.extend_from_slice(&notes);
    file.write_all_at(&head, 0).map_err(werr)?;

    // Memory: runs of non-zero pages are written, zero pages skipped;
    // every byte is hashed.
    let mut buf = vec![0u8; CHUNK];
    for ((start, len, off), sum) in loads.into_iter().zip(&mut sums) {
        let mut hash = xxhash_rust::xxh3::Xxh3::new();
        let mut pos = 0u64;
        while pos < len {
            let n = (len - pos).min(CHUNK as u64) as usize;
            let chunk = &mut buf[..n];
            d.memory.read_ram(start + pos, chunk)?;
            hash.update(chunk);
            let mut run: Option<usize> = None; // start of the current non-zero run
            for (i, page) in chunk.chunks(PAGE_SIZE).enumerate() {
                let zero = page == &ZERO_PAGE[..page.len()];
                match (zero, run) {
                    (false, None) => run = Some(i * PAGE_SIZE),
                    (true, Some(r)) => {
                        file.write_all_at(&chunk[r..i * PAGE_SIZE], off + pos + r as u64)
                            .map_err(werr)?;
                        run = None;
                    }
                    _ => {}
                }
            }
            if let Some(r) = run {
                file.write_all_at(&chunk[r..], off + pos + r as u64)
                    .map_err(werr)?;
            }
            pos += n as u64;
        }
        sum.xxh3 = hash.digest();
    }
    let notes_final = notes_with(&sums)?;
    debug_assert_eq!(notes_final.len(), notes.len());
    file.write_all_at(&notes_final, notes_off as u64)
        .map_err(werr)?;
    // Trailing zero pages become a hole too, but the file has its full size.
    file.set_len(offset).map_err(werr)?;
    Ok(())
}
