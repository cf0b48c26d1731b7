//! Reading a dump back: untrusted bytes, every offset and size checked.

use super::*;
/// Little-endian integers from a slice whose length the caller checked.
pub(super) fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"))
}
pub(super) fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
pub(super) fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// One note as found in the file.
pub(crate) struct RawNote<'a> {
    pub(crate) name: String,
    pub(crate) kind: u32,
    pub(crate) desc: &'a [u8],
}

/// Splits a note segment into notes, checking every size against it.
pub(crate) fn parse_notes(b: &[u8]) -> Result<Vec<RawNote<'_>>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < b.len() {
        if b.len() - at < 12 {
            return Err(format!("note header at note offset {at} is cut short"));
        }
        let namesz = u32_at(b, at) as usize;
        let descsz = u32_at(b, at + 4) as usize;
        let kind = u32_at(b, at + 8);
        let name_at = at + 12;
        let desc_at = name_at
            .checked_add(align_up(namesz, NOTE_ALIGN))
            .filter(|&e| e <= b.len());
        let Some(desc_at) = desc_at else {
            return Err(format!(
                "note name at note offset {name_at} ({namesz} bytes) runs past the notes"
            ));
        };
        let end = desc_at.checked_add(descsz).filter(|&e| e <= b.len());
        let Some(end) = end else {
            return Err(format!(
                "note descriptor at note offset {desc_at} ({descsz} bytes) runs past the notes"
            ));
        };
        let raw = &b[name_at..name_at + namesz];
        let name = match raw.split_last() {
            Some((0, n)) => String::from_utf8_lossy(n).into_owned(),
            None => String::new(),
            _ => {
                return Err(format!(
                    "note name at note offset {name_at} is not NUL-terminated"
                ));
            }
        };
        // Padding is zero (a flipped bit anywhere in a note is noticed);
        // the padding after the last descriptor may be missing.
        let next = align_up(end, NOTE_ALIGN).min(b.len());
        if b[name_at + namesz..desc_at]
            .iter()
            .chain(&b[end..next])
            .any(|&x| x != 0)
        {
            return Err(format!("note padding at note offset {name_at} is not zero"));
        }
        out.push(RawNote {
            name,
            kind,
            desc: &b[desc_at..end],
        });
        at = next;
    }
    Ok(out)
}

/// Decodes the KJUMP note (layout: [`KjumpNote`]).
type KjumpParts = (KjumpNote, VcpuState, Option<ResumeRecord>, Vec<RamChecksum>);

pub(super) fn parse_kjump(desc: &[u8], path: &Path) -> Result<KjumpParts, DumpError> {
    let corrupt = |what: String| DumpError::Corrupt {
        path: path.to_path_buf(),
        what,
    };
    if desc.len() < 12 || desc[..8] != KJUMP_MAGIC {
        return Err(corrupt("KJUMP note has no KJUMP magic".into()));
    }
    let version = u32_at(desc, 8);
    if !(KJUMP_MIN_VERSION..=KJUMP_VERSION).contains(&version) {
        return Err(DumpError::Version {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let header_size = if version >= 3 {
        KJUMP_HEADER_SIZE_V3
    } else {
        KJUMP_HEADER_SIZE
    };
    if desc.len() < header_size {
        return Err(corrupt(format!(
            "KJUMP note is {} bytes, shorter than its header",
            desc.len()
        )));
    }
    let header = u32_at(desc, 12) as usize;
    if header != header_size {
        return Err(corrupt(format!(
            "KJUMP note header size {header}, expected {header_size}"
        )));
    }
    let ram_len = if version >= 3 {
        if u32_at(desc, 76) != 0 {
            return Err(corrupt("KJUMP note has reserved bits set".into()));
        }
        u32_at(desc, KJUMP_RAM_SIZE) as usize
    } else {
        0
    };
    let state_len = u32_at(desc, 36) as usize;
    let name_len = usize::from(u16_at(desc, 56));
    let version_len = usize::from(u16_at(desc, 58));
    // Version 1: reserved, and zero (checked with the flags below).
    let resume_len = if version >= 2 {
        u32_at(desc, KJUMP_RESUME_SIZE) as usize
    } else {
        0
    };
    let want = header_size as u64
        + state_len as u64
        + name_len as u64
        + version_len as u64
        + resume_len as u64
        + ram_len as u64;
    if want != desc.len() as u64 {
        return Err(corrupt(format!(
            "KJUMP note is {} bytes, its header describes {want}",
            desc.len()
        )));
    }
    let sum = u64_at(desc, KJUMP_CHECKSUM);
    if checksum(desc) != sum {
        return Err(corrupt("KJUMP note checksum mismatch".into()));
    }
    let kernel = match desc[32] {
        0 => Kernel::A,
        1 => Kernel::B,
        k => return Err(corrupt(format!("KJUMP note names kernel {k}"))),
    };
    let direction = match desc[33] {
        0 => Direction::Suspend,
        1 => Direction::Resume,
        d => return Err(corrupt(format!("KJUMP note names direction {d}"))),
    };
    let flags = u16_at(desc, 34);
    if flags & !KJUMP_FLAG_RESUMABLE != 0 || (version < 2 && u32_at(desc, KJUMP_RESUME_SIZE) != 0) {
        return Err(corrupt(format!(
            "KJUMP note has unknown flags {flags:#x} or reserved bits set"
        )));
    }
    let mut at = header_size;
    let mut take = |n: usize| {
        let s = &desc[at..at + n];
        at += n;
        s
    };
    let state_bytes = take(state_len);
    let state = parse_state(state_bytes).map_err(|e| corrupt(format!("KJUMP note's {e}")))?;
    if state.xsave.len() != XSAVE_SIZE {
        return Err(corrupt(format!(
            "KJUMP note's XSAVE area is {} bytes, expected {XSAVE_SIZE}",
            state.xsave.len()
        )));
    }
    let text = |b: &[u8], what: &str| {
        String::from_utf8(b.to_vec())
            .map_err(|_| corrupt(format!("KJUMP note's {what} is not UTF-8")))
    };
    let kernel_name = text(take(name_len), "kernel name")?;
    let kjump_version = text(take(version_len), "kjump version")?;
    let id = CheckpointId {
        index: u64_at(desc, 16),
        cycle: u64_at(desc, 24),
        kernel,
        direction,
    };
    let resume = match resume_len {
        0 => None,
        n => Some(parse_resume(take(n), &id).map_err(corrupt)?),
    };
    let ram: Vec<RamChecksum> = match ram_len {
        0 => Vec::new(),
        n => serde_json::from_slice(take(n))
            .map_err(|e| corrupt(format!("KJUMP note's RAM checksums do not decode: {e}")))?,
    };
    // (A version 3 note whose list does not name every PT_LOAD, an empty
    // one included, is refused by `Dump::verify_ram`.)
    let meta = KjumpNote {
        version,
        id,
        jump_back_entry: u64_at(desc, 40),
        resumable: flags & KJUMP_FLAG_RESUMABLE != 0,
        mem_size: u64_at(desc, 48),
        kernel_name,
        kjump_version,
    };
    Ok((meta, state, resume, ram))
}

/// The raw KVM structs of a vCPU state, with the size each must have: a
/// member of another length is refused, not padded or cut.
const STATE_MEMBERS: [(&str, usize); 7] = [
    (
        "mp_state",
        std::mem::size_of::<kvm_bindings::kvm_mp_state>(),
    ),
    ("regs", std::mem::size_of::<kvm_bindings::kvm_regs>()),
    ("sregs", std::mem::size_of::<kvm_bindings::kvm_sregs>()),
    ("xcrs", std::mem::size_of::<kvm_bindings::kvm_xcrs>()),
    (
        "debugregs",
        std::mem::size_of::<kvm_bindings::kvm_debugregs>(),
    ),
    (
        "lapic",
        std::mem::size_of::<kvm_bindings::kvm_lapic_state>(),
    ),
    (
        "events",
        std::mem::size_of::<kvm_bindings::kvm_vcpu_events>(),
    ),
];

/// Decodes a vCPU state from a dump: every KVM struct member exactly its
/// size, the XSAVE area exactly [`XSAVE_SIZE`] bytes.
pub(super) fn parse_state(b: &[u8]) -> Result<VcpuState, String> {
    let v: serde_json::Value =
        serde_json::from_slice(b).map_err(|e| format!("vCPU state does not decode: {e}"))?;
    check_state_members(&v)?;
    let state: VcpuState =
        serde_json::from_value(v).map_err(|e| format!("vCPU state does not decode: {e}"))?;
    if state.xsave.len() != XSAVE_SIZE {
        return Err(format!(
            "XSAVE area is {} bytes, expected {XSAVE_SIZE}",
            state.xsave.len()
        ));
    }
    Ok(state)
}

pub(super) fn check_state_members(v: &serde_json::Value) -> Result<(), String> {
    for (name, size) in STATE_MEMBERS {
        match v.get(name).and_then(|m| m.as_array()) {
            Some(a) if a.len() == size => {}
            Some(a) => {
                return Err(format!(
                    "vCPU state member {name} is {} bytes, KVM's struct is {size}",
                    a.len()
                ));
            }
            None => {
                return Err(format!(
                    "vCPU state has no member {name} (an array of bytes)"
                ));
            }
        }
    }
    Ok(())
}

/// Decodes a resume record and checks what can be checked on its own.
pub(super) fn parse_resume(b: &[u8], id: &CheckpointId) -> Result<ResumeRecord, String> {
    let v: serde_json::Value = serde_json::from_slice(b)
        .map_err(|e| format!("KJUMP note's resume record does not decode: {e}"))?;
    if let Some(state) = v.get("peer").and_then(|p| p.get("state")) {
        check_state_members(state)
            .map_err(|e| format!("KJUMP note's resume record: the peer's {e}"))?;
    }
    let r: ResumeRecord = serde_json::from_value(v)
        .map_err(|e| format!("KJUMP note's resume record does not decode: {e}"))?;
    if let Some(p) = &r.peer {
        if p.state.xsave.len() != XSAVE_SIZE {
            return Err(format!(
                "KJUMP note's resume record: the peer's XSAVE area is {} bytes, expected {XSAVE_SIZE}",
                p.state.xsave.len()
            ));
        }
        let s = &p.suspended_at;
        if p.kernel != id.kernel.peer()
            || s.kernel != p.kernel
            || s.direction != Direction::Suspend
            || s.index >= id.index
        {
            return Err(format!(
                "KJUMP note's resume record: peer {} suspended at {} does not fit checkpoint {}",
                p.kernel.name(),
                checkpoint_text(s),
                checkpoint_text(id)
            ));
        }
    }
    Ok(r)
}

/// Reads and validates a dump. The file is untrusted: whatever is wrong
/// with it is a [`DumpError`] naming the first problem found.
pub fn read_dump(path: &Path) -> Result<Dump, DumpError> {
    let rerr = |source| DumpError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(rerr)?;
    let len = file.metadata().map_err(rerr)?.len();
    parse_dump(Backing::File(file), len, path)
}

/// [`read_dump`] on a dump already in memory; `path` only names it in
/// errors and [`inspect`]. Checks exactly what [`read_dump`] checks.
pub fn read_dump_bytes(bytes: Vec<u8>, path: &Path) -> Result<Dump, DumpError> {
    let len = bytes.len() as u64;
    parse_dump(Backing::Bytes(bytes), len, path)
}

pub(super) fn parse_dump(file: Backing, len: u64, path: &Path) -> Result<Dump, DumpError> {
    let p = || path.to_path_buf();
    let rerr = |source| DumpError::Read { path: p(), source };
    let not_dump = |why: &str| DumpError::NotADump {
        path: p(),
        why: why.to_string(),
    };
    let truncated = |what: String| DumpError::Truncated { path: p(), what };
    let corrupt = |what: String| DumpError::Corrupt { path: p(), what };

    let read = |off: u64, n: usize| -> Result<Vec<u8>, DumpError> {
        let mut b = vec![0u8; n];
        file.read_exact_at(&mut b, off).map_err(rerr)?;
        Ok(b)
    };

    if len < 4 {
        return Err(not_dump("shorter than an ELF header"));
    }
    let ident = read(0, 4)?;
    if ident[..] != ELF_MAGIC {
        return Err(not_dump("no ELF magic"));
    }
    if len < EHDR_SIZE as u64 {
        return Err(truncated(format!(
            "{len} bytes, shorter than the ELF header"
        )));
    }
    let h = read(0, EHDR_SIZE)?;
    if h[4] != ELFCLASS64 || h[5] != ELFDATA2LSB || h[6] != EV_CURRENT {
        return Err(not_dump("not a little-endian ELF64 file"));
    }
    if u16_at(&h, 16) != ET_CORE {
        return Err(not_dump("not an ELF core file (e_type is not ET_CORE)"));
    }
    if u16_at(&h, 18) != EM_X86_64 {
        return Err(not_dump("not an x86_64 core file"));
    }
    let entry = u64_at(&h, 24);
    let phoff = u64_at(&h, 32);
    let phentsize = usize::from(u16_at(&h, 54));
    let phnum = u16_at(&h, 56);
    if phentsize != PHDR_SIZE {
        return Err(corrupt(format!(
            "program header size {phentsize}, expected {PHDR_SIZE}"
        )));
    }
    if phnum == 0 || phnum == PN_XNUM {
        return Err(corrupt(format!("{phnum:#x} program headers")));
    }
    let ph_len = PHDR_SIZE as u64 * u64::from(phnum);
    match phoff.checked_add(ph_len) {
        Some(end) if end <= len => {}
        _ => {
            return Err(truncated(format!(
                "program headers at {phoff:#x} ({ph_len} bytes) end past the file's {len} bytes"
            )));
        }
    }
    let ph = read(phoff, ph_len as usize)?;
    // Segments hold data after the headers, never the headers themselves.
    let headers_end = phoff + ph_len;

    let mut loads = Vec::new();
    let mut notes = Vec::new();
    let mut kjump = None;
    for i in 0..usize::from(phnum) {
        let e = &ph[i * PHDR_SIZE..(i + 1) * PHDR_SIZE];
        let (p_type, offset, paddr) = (u32_at(e, 0), u64_at(e, 8), u64_at(e, 24));
        let (filesz, memsz) = (u64_at(e, 32), u64_at(e, 40));
        let file_end = offset.checked_add(filesz);
        if matches!(p_type, PT_LOAD | PT_NOTE) && file_end.is_none_or(|end| end > len) {
            return Err(truncated(format!(
                "segment {i} at file offset {offset:#x} ({filesz:#x} bytes) ends past the file's {len:#x} bytes"
            )));
        }
        let overlaps_headers = filesz > 0 && offset < headers_end;
        if matches!(p_type, PT_LOAD | PT_NOTE) && overlaps_headers {
            return Err(corrupt(format!(
                "segment {i} at file offset {offset:#x} overlaps the ELF and program headers (up to {headers_end:#x})"
            )));
        }
        match p_type {
            PT_NOTE => {
                if filesz > MAX_NOTES {
                    return Err(corrupt(format!("note segment {i} is {filesz} bytes")));
                }
                let b = read(offset, filesz as usize)?;
                let raw = parse_notes(&b).map_err(|w| corrupt(format!("note segment {i}: {w}")))?;
                for n in raw {
                    if n.name == KJUMP_NOTE_NAME && n.kind == NT_KJUMP {
                        if kjump.is_some() {
                            return Err(corrupt("more than one KJUMP note".into()));
                        }
                        kjump = Some(parse_kjump(n.desc, path)?);
                    }
                    notes.push(NoteInfo {
                        name: n.name,
                        kind: n.kind,
                        size: n.desc.len() as u64,
                    });
                }
            }
            PT_LOAD => {
                if filesz > memsz
                    || !paddr.is_multiple_of(PAGE)
                    || !memsz.is_multiple_of(PAGE)
                    || memsz == 0
                {
                    return Err(corrupt(format!(
                        "PT_LOAD {i} at {paddr:#x}: sizes {filesz:#x}/{memsz:#x} are not whole pages"
                    )));
                }
                if paddr.checked_add(memsz).is_none() {
                    return Err(corrupt(format!("PT_LOAD {i} at {paddr:#x} wraps around")));
                }
                loads.push(Load {
                    paddr,
                    memsz,
                    offset,
                    filesz,
                });
            }
            _ => {}
        }
    }
    let Some((meta, state, resume, checksums)) = kjump else {
        return Err(not_dump("no KJUMP note"));
    };
    if meta.jump_back_entry != entry {
        return Err(corrupt(format!(
            "ELF entry {entry:#x} differs from the KJUMP note's jump-back entry {:#x}",
            meta.jump_back_entry
        )));
    }
    loads.sort_by_key(|l| l.paddr);
    for w in loads.windows(2) {
        if w[1].paddr < w[0].end() {
            return Err(corrupt(format!(
                "PT_LOADs [{:#x}..{:#x}) and [{:#x}..{:#x}) overlap",
                w[0].paddr,
                w[0].end(),
                w[1].paddr,
                w[1].end()
            )));
        }
    }
    let dump = Dump {
        path: p(),
        file,
        len,
        entry,
        meta,
        state,
        resume,
        loads,
        notes,
        checksums,
    };
    dump.verify_ram()?;
    Ok(dump)
}

impl Dump {
    /// Checks every RAM range against its checksum (version 3): the ranges
    /// must be exactly the `PT_LOAD`s, and each must hash to what the
    /// writer hashed. A byte changed anywhere in the dump's RAM is a
    /// corrupt dump naming its range.
    fn verify_ram(&self) -> Result<(), DumpError> {
        if self.meta.version < 3 {
            return Ok(());
        }
        let corrupt = |what: String| DumpError::Corrupt {
            path: self.path.clone(),
            what,
        };
        let listed: Vec<(u64, u64)> = self.checksums.iter().map(|c| (c.start, c.len)).collect();
        let loads: Vec<(u64, u64)> = self.loads.iter().map(|l| (l.paddr, l.memsz)).collect();
        if listed != loads {
            return Err(corrupt(
                "the KJUMP note's RAM checksums do not list the PT_LOADs".into(),
            ));
        }
        let mut buf = vec![0u8; CHUNK];
        for c in &self.checksums {
            let mut hash = xxhash_rust::xxh3::Xxh3::new();
            let mut pos = 0u64;
            while pos < c.len {
                let n = (c.len - pos).min(CHUNK as u64) as usize;
                self.read_at(c.start + pos, &mut buf[..n])?;
                hash.update(&buf[..n]);
                pos += n as u64;
            }
            let found = hash.digest();
            if found != c.xxh3 {
                return Err(corrupt(format!(
                    "RAM range [{:#x}..{:#x}) does not match its checksum (xxh3 {:016x}, the note says {:016x})",
                    c.start,
                    c.start + c.len,
                    found,
                    c.xxh3
                )));
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The KJUMP note's metadata.
    pub fn meta(&self) -> &KjumpNote {
        &self.meta
    }

    /// The complete vCPU state, as `kjump resume` restores it.
    pub fn state(&self) -> &VcpuState {
        &self.state
    }

    /// What `kjump resume` needs besides memory and vCPU (version 2 notes
    /// of dumps taken at a checkpoint of a run).
    pub fn resume(&self) -> Option<&ResumeRecord> {
        self.resume.as_ref()
    }

    /// The notes, in file order.
    pub fn notes(&self) -> &[NoteInfo] {
        &self.notes
    }

    /// RAM ranges `(start, len)`, sorted.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.loads.iter().map(|l| (l.paddr, l.memsz)).collect()
    }

    pub(super) fn load_of(&self, addr: u64) -> Option<&Load> {
        let i = self.loads.partition_point(|l| l.paddr <= addr);
        self.loads[..i].last().filter(|l| l.contains(addr))
    }

    /// Reads `buf.len()` bytes at guest-physical `addr`; the span must lie
    /// in one RAM range. Holes read as zeros.
    pub fn read_at(&self, addr: u64, buf: &mut [u8]) -> Result<(), DumpError> {
        let Some(l) = self.load_of(addr).filter(|l| {
            addr.checked_add(buf.len() as u64)
                .is_some_and(|e| e <= l.end())
        }) else {
            return Err(DumpError::Memory(addr));
        };
        let rel = addr - l.paddr;
        // Bytes stored in the file, then the zero tail past p_filesz.
        let stored = l.filesz.saturating_sub(rel).min(buf.len() as u64) as usize;
        let (head, tail) = buf.split_at_mut(stored);
        self.file
            .read_exact_at(head, l.offset + rel)
            .map_err(|source| DumpError::Read {
                path: self.path.clone(),
                source,
            })?;
        tail.fill(0);
        Ok(())
    }

    /// The page at `addr` (rounded down), or `None` if it is not RAM in
    /// this dump (or the file became unreadable since it was opened).
    pub fn read_page(&self, addr: u64) -> Option<Page> {
        let mut p = [0u8; PAGE_SIZE];
        match self.read_at(addr & !(PAGE - 1), &mut p) {
            Ok(()) => Some(p),
            Err(DumpError::Memory(_)) => None,
            Err(e) => {
                log::warn!("{e}");
                None
            }
        }
    }

    /// The first page at or after `addr` (page-aligned, below `end`, in
    /// the load holding `addr`) that may hold data; `end` if all that
    /// follows up to `end` is a hole. Uses `SEEK_DATA`, so a sparse dump of
    /// a big guest is walked at the cost of its data.
    pub(super) fn next_data(&self, addr: u64, end: u64) -> u64 {
        let Some(l) = self.load_of(addr) else {
            return end;
        };
        let rel = addr - l.paddr;
        if rel >= l.filesz {
            return end;
        }
        match self.file.seek_data(l.offset + rel) {
            Some(off) if off < l.offset + l.filesz => (l.paddr + (off - l.offset)) & !(PAGE - 1),
            Some(_) => end,
            None => end,
        }
        .max(addr & !(PAGE - 1))
        .min(end)
    }

    /// Non-zero pages in each RAM range, in [`Dump::ranges`] order.
    pub fn nonzero_pages(&self) -> Result<Vec<u64>, DumpError> {
        let mut buf = vec![0u8; CHUNK];
        let mut out = Vec::with_capacity(self.loads.len());
        for l in &self.loads {
            let mut count = 0;
            let mut pos = l.paddr;
            while pos < l.end() {
                pos = self.next_data(pos, l.end());
                if pos >= l.end() {
                    break;
                }
                let n = (l.end() - pos).min(CHUNK as u64) as usize;
                self.read_at(pos, &mut buf[..n])?;
                count += buf[..n]
                    .chunks(PAGE_SIZE)
                    .filter(|p| *p != &ZERO_PAGE[..p.len()])
                    .count() as u64;
                pos += n as u64;
            }
            out.push(count);
        }
        Ok(out)
    }
}

/// `lseek(SEEK_DATA)`: the first offset at or after `off` that is not in a
/// hole. `None` past the last data. File systems without hole tracking
/// report everything as data, so this only ever skips real holes.
pub(super) fn seek_data(file: &File, off: u64) -> Option<u64> {
    let off_t = libc::off_t::try_from(off).ok()?;
    // SAFETY: lseek on a file descriptor `file` owns and keeps open for the
    // call; it moves the file position only, which kjump never relies on
    // (all reads are positioned, `read_exact_at`), and touches no memory.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off_t, libc::SEEK_DATA) };
    if r >= 0 {
        return u64::try_from(r).ok();
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::ENXIO) => None,
        // Any other failure: assume data, and let the read find out.
        _ => Some(off),
    }
}

impl RamSource for Dump {
    fn ram_ranges(&self) -> Vec<(u64, u64)> {
        self.ranges()
    }
    fn read_ram(&self, addr: u64, buf: &mut [u8]) -> Result<(), DumpError> {
        self.read_at(addr, buf)
    }
    fn skip_zeros(&self, addr: u64, end: u64) -> u64 {
        self.next_data(addr, end)
    }
}
